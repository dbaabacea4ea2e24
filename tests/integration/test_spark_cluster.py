"""The feature and scoring jobs on a real Spark standalone cluster: a master and two workers.

Each job goes through `spark-submit` the way Airflow's local Spark task runs it: `--master
spark://127.0.0.1:PORT`, client deploy mode, the `churn` package zipped and shipped with
`--py-files`, executors running the venv's python on workers that do not have the project on
their PYTHONPATH. What they write must be identical to what the shared `local[2]` session
writes from the same input, but for the last bits of float sums: a sum over a day's events adds
them in the order their partitions arrive, which differs between the two (seen: 4e-15).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from churn.generate import generate
from churn.packaging import build_package_zip
from churn.registry import load_model_dir
from churn.spec import load_spec
from churn.storage import Layout, ds_range, read_json
from spark_jobs import score
from spark_jobs.build_features import JobArgs, run
from tests.support.model_fixture import features_frame, write_features, write_model_version
from tests.support.small_data import read_partition, write_small_spec

REPO = Path(__file__).resolve().parents[2]
START, FIRST, LAST = "2025-01-01", "2025-01-09", "2025-01-11"
SCORE_DAY = "2025-01-11"
AREAS = (("features", None), ("labels", None), ("activity", "events"),
         ("activity", "customers"))
JOB_SECONDS = 300  # one small job on two one-core workers of 2 busy cores: ~20-40 s


def submit(cluster, package: Path, job: str, *args: str) -> str:
    """`spark-submit` a job to the cluster; returns its log. Fails the test on a non-zero exit."""
    env = {**os.environ, **cluster.client_env(), "PYTHONPATH": "",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "spark-submit"), "--master", cluster.master_url,
         "--deploy-mode", "client", "--py-files", str(package),
         str(REPO / "spark_jobs" / f"{job}.py"), *args],
        env=env, capture_output=True, text=True, timeout=JOB_SECONDS, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def cores_by_name(cluster) -> dict[str, int]:
    """The cores each completed application was given, by application name."""
    return {app["name"]: app["cores"] for app in cluster.completed_apps().values()}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return build_package_zip(tmp_path_factory.mktemp("pyfiles"))


@pytest.fixture(scope="module")
def built(spark_cluster, spark, package, tmp_path_factory) -> dict:
    """The same raw data built for FIRST..LAST on the cluster and on the local session."""
    base = tmp_path_factory.mktemp("cluster-features")
    spec = write_small_spec(base, "cluster")
    generate(str(base / "source"), customers=60, start=START, days=12, seed=3, spec=spec)
    roots = {name: base / name for name in ("cluster", "local")}
    for root in roots.values():
        shutil.copytree(base / "source" / "raw", root / "raw")
    log = submit(spark_cluster, package, "build_features", "--root", str(roots["cluster"]),
                 "--spec", spec, "--start", FIRST, "--end", LAST)
    summary = run(spark, JobArgs(root=str(roots["local"]), spec=spec, start=FIRST, end=LAST))
    return {"roots": roots, "log": log, "summary": summary}


class TestFeaturesOnTheCluster:
    def test_ran_on_the_cluster_executors(self, built, spark_cluster):
        assert "StandaloneSchedulerBackend" in built["log"]
        # both one-core workers gave the application an executor
        assert cores_by_name(spark_cluster)["churn-build-features"] == 2

    @pytest.mark.parametrize(("area", "table"), AREAS)
    def test_partitions_identical_to_local(self, built, area, table):
        roots, days = built["roots"], ds_range(FIRST, LAST)
        if area == "labels":  # the label days that matured on FIRST..LAST
            days = built["summary"]["label_days"]
        assert len(days) == 3
        for ds in days:
            on_cluster = read_partition(roots["cluster"], area, ds, table)
            assert len(on_cluster) > 0, (area, table, ds)
            # every column exact but float ones, which may differ in their last bits only
            pd.testing.assert_frame_equal(on_cluster, read_partition(roots["local"], area, ds,
                                                                     table),
                                          check_exact=False, rtol=1e-12, atol=1e-12)

    def test_run_records_match(self, built):
        layout = {name: Layout(str(root)) for name, root in built["roots"].items()}
        fragments = {name: read_json(lay.run_fragment(LAST, "features"))
                     for name, lay in layout.items()}
        for key in ("feature_rows", "label_rows", "history_start"):
            assert fragments["cluster"][key] == fragments["local"][key], key
        assert read_json(layout["cluster"].history()) == read_json(layout["local"].history())


class TestScoringOnTheCluster:
    def test_predictions_identical_to_local(self, spark_cluster, spark, package, spec_path,
                                            tmp_path):
        frame = features_frame(400, SCORE_DAY)
        roots = {name: tmp_path / name for name in ("cluster", "local")}
        for root in roots.values():
            write_model_version(str(root), frame)
            write_features(root, frame, SCORE_DAY)
        submit(spark_cluster, package, "score", "--root", str(roots["cluster"]), "--spec",
               str(spec_path), "--ds", SCORE_DAY, "--arrow-batch-size", "64")
        artifact = load_model_dir(score.resolve_model_uri(str(roots["local"]), "churn_xgb", None))
        score.run(spark, str(roots["local"]), load_spec(spec_path), artifact, SCORE_DAY)
        on_cluster, local = (read_partition(root, "predictions", SCORE_DAY)
                             for root in roots.values())
        assert len(on_cluster) == len(frame)
        assert on_cluster.equals(local)
        assert cores_by_name(spark_cluster)["churn-score"] == 2
