"""spark_jobs/score.py on the shared local SparkSession, plus its command line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churn.modeling import MissingFeatureError
from churn.registry import load_model_dir
from churn.scoring import BUILD_LOG_ENV, model_digest, score_frame
from churn.spec import load_spec
from churn.storage import Layout, read_json
from spark_jobs import score
from tests.support.model_fixture import (ID_COLUMN, VERSION, features_frame, write_features,
                                        write_model_version)

REPO_ROOT = Path(__file__).resolve().parents[2]
DS = "2026-02-03"
ROWS = 240


@contextmanager
def arrow_batch_rows(spark, rows: int) -> Iterator[None]:
    """Hand the scoring UDF Arrow batches of `rows` rows for the duration of the block."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key)
    spark.conf.set(key, str(rows))
    try:
        yield
    finally:
        spark.conf.set(key, previous)


def _read_predictions(root: Path, ds: str = DS) -> pd.DataFrame:
    out = pd.read_parquet(Layout(str(root)).predictions(ds))
    return out.sort_values("customer_id").reset_index(drop=True)


@pytest.fixture()
def scored_root(tmp_path):
    """A data root with a champion model and one features partition (plus an extra column)."""
    frame = features_frame(ROWS, DS)
    model = write_model_version(str(tmp_path), frame)
    write_features(tmp_path, frame.assign(unused_extra="x"), DS)
    return tmp_path, frame, model


class TestRun:
    def test_writes_the_predictions_contract(self, spark, spec_path, scored_root):
        root, frame, model = scored_root
        artifact = load_model_dir(score.resolve_model_uri(str(root), "churn_xgb", None))
        rows = score.run(spark, str(root), load_spec(spec_path), artifact, DS, "models/x")
        got = _read_predictions(root)
        fragment = read_json(Layout(str(root)).run_fragment(DS, "score"))
        assert {k: fragment[k] for k in ("step", "ds", "skipped", "model_uri", "model_version",
                                         "prediction_rows")} == {
            "step": "score", "ds": DS, "skipped": False, "model_uri": "models/x",
            "model_version": VERSION, "prediction_rows": ROWS}
        assert fragment["seconds"] > 0
        expected = score_frame(model.booster, model.schema, frame, id_column=ID_COLUMN,
                               model_version=VERSION, ds=DS)
        assert rows == ROWS
        assert list(got.columns) == ["customer_id", "churn_probability", "model_version", "ds"]
        assert got.dtypes.astype(str).tolist() == ["object", "float64", "object", "object"]
        assert got["customer_id"].tolist() == frame[ID_COLUMN].tolist()
        np.testing.assert_allclose(got["churn_probability"], expected["churn_probability"], rtol=1e-6)
        assert set(got["model_version"]) == {VERSION} and set(got["ds"]) == {DS}

    def test_small_arrow_batches_give_the_same_scores(self, spark, spec_path, scored_root):
        root, frame, model = scored_root
        artifact = load_model_dir(model.version_dir)
        with arrow_batch_rows(spark, 17):
            score.run(spark, str(root), load_spec(spec_path), artifact, DS)
        got = _read_predictions(root)
        expected = score_frame(model.booster, model.schema, frame, id_column=ID_COLUMN,
                               model_version=VERSION, ds=DS)
        np.testing.assert_allclose(got["churn_probability"], expected["churn_probability"], rtol=1e-6)

    def test_rerun_replaces_the_day_and_touches_no_other(self, spark, spec_path, scored_root):
        root, frame, _ = scored_root
        other = Path(Layout(str(root)).predictions("2026-02-02"))
        other.mkdir(parents=True)
        (other / "keep.parquet").write_bytes(b"untouched")
        artifact = load_model_dir(Layout(str(root)).model_version("churn_xgb", VERSION))
        for _ in range(2):
            score.run(spark, str(root), load_spec(spec_path), artifact, DS)
        assert len(_read_predictions(root)) == ROWS
        assert (other / "keep.parquet").read_bytes() == b"untouched"
        assert sorted(p.name for p in (root / "predictions").iterdir()) == [
            "_locks", "ds=2026-02-02", f"ds={DS}"]  # the writer lock folder stays

    def test_missing_feature_fails_and_writes_nothing(self, spark, spec_path, tmp_path):
        frame = features_frame(ROWS, DS)
        model = write_model_version(str(tmp_path), frame)
        write_features(tmp_path, frame.drop(columns=["age"]), DS)
        with pytest.raises(MissingFeatureError, match="age"):
            score.run(spark, str(tmp_path), load_spec(spec_path), load_model_dir(model.version_dir), DS)
        assert not (tmp_path / "predictions").exists() or not any((tmp_path / "predictions").iterdir())


class TestBoosterPerWorker:
    PARTITIONS = 8
    BATCH_ROWS = 7  # about 30 rows a partition: 5 Arrow batches each

    def test_each_python_worker_builds_the_booster_once(self, spark, tmp_path, monkeypatch):
        frame = features_frame(ROWS, DS)
        artifact = load_model_dir(write_model_version(str(tmp_path / "data"), frame).version_dir)
        builds = tmp_path / "builds"
        builds.mkdir()
        # The UDF's workers get the SparkContext's environment; a new one means new workers.
        monkeypatch.setitem(spark.sparkContext.environment, BUILD_LOG_ENV, str(builds))
        broadcast = spark.sparkContext.broadcast(artifact.model_bytes)
        try:
            features = spark.createDataFrame(frame).repartition(self.PARTITIONS)
            with arrow_batch_rows(spark, self.BATCH_ROWS):
                scored = score.score_features(features, artifact, broadcast,
                                              id_column=ID_COLUMN, ds=DS).collect()
        finally:
            broadcast.unpersist()
        per_worker = {log.name: log.read_text().splitlines() for log in builds.iterdir()}
        assert len(scored) == ROWS
        assert per_worker and all(lines == [model_digest(artifact.model_bytes)]
                                  for lines in per_worker.values()), per_worker
        # Fewer builds than partitions (let alone batches): some worker scored several
        # partitions, every batch of them, with the one booster it built.
        assert sum(map(len, per_worker.values())) == len(per_worker) < self.PARTITIONS


class TestCommandLine:
    def test_no_champion_exits_with_a_clear_message(self, spec_path, tmp_path):
        write_features(tmp_path, features_frame(10, DS), DS)
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "spark_jobs" / "score.py"), "--root", str(tmp_path),
             "--spec", str(spec_path), "--ds", DS],
            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert proc.returncode == score.EXIT_NO_CHAMPION
        assert "no champion model for churn_xgb" in proc.stderr
        assert not (tmp_path / "predictions").exists()

    def test_model_uri_overrides_the_champion(self, tmp_path):
        version = f"{tmp_path}/models/churn_xgb/v20260203-0123abcd"
        assert score.resolve_model_uri(str(tmp_path), "churn_xgb", version + "/") == version

    @pytest.mark.parametrize("foreign", [
        "/x/models/churn_xgb/v1",                   # another root
        "{root}/models/other_model/v1",             # another model
        "{root}/models/churn_xgb",                  # the model, not a version
        "{root}/models/churn_xgb/v1/model.ubj",     # a file inside a version
        "{root}/models/churn_xgb/../../../etc",     # climbing out
        "{root}/models/churn_xgb/v1;rm -rf ~",      # not a version name
    ])
    def test_model_uri_from_xcom_must_be_a_version_of_this_registry(self, tmp_path, foreign):
        from churn.registry import RegistryError

        with pytest.raises(RegistryError, match="model URI"):
            score.resolve_model_uri(str(tmp_path), "churn_xgb", foreign.format(root=tmp_path))

    def test_rejects_a_bad_ds(self):
        with pytest.raises(SystemExit):
            score.parse_args(["--root", "r", "--spec", "s", "--ds", "2026-13-01"])
