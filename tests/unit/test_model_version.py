"""`churn.model_version`: the job's train-and-write path, run with a cheap in-process search.

`ray_jobs/train.py` calls the same `train_model` with the Ray Tune search and the Ray Data reader;
here the search is `fixed_search` (one config, `training.fit_booster`) and the reader is pyarrow.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from churn import registry, training
from churn.metrics import roc_auc
from churn.model_version import SearchResult, TrainSettings, train_model
from churn.modeling import load_booster, predict_proba
from churn.storage import Layout, ds_range
from tests.model.synthetic_frames import DAYS, MODEL, RUN_DS, STRONG, fixed_search, write_days

SETTINGS = TrainSettings(trials=1, seed=7, num_boost_round=8, early_stopping_rounds=None)
# Five days of which the last validates once train_days is 5: the window is split in time.
DAYS_WITH_GAP = [*ds_range("2025-12-02", "2025-12-05"), "2026-01-05"]


@pytest.fixture()
def root(tmp_path: Path) -> str:
    write_days(tmp_path, DAYS, rows=200, seed=1)
    return str(tmp_path)


class RecordingSearch:
    """`fixed_search(config)` that keeps its arguments and its result."""

    def __init__(self, config: dict = STRONG) -> None:
        self.calls: list[tuple] = []
        self.result: SearchResult | None = None
        self._search = fixed_search(config)

    def __call__(self, data, frames, schema, settings, root) -> SearchResult:
        self.calls.append((data, frames, schema, settings, root))
        self.result = self._search(data, frames, schema, settings, root)
        return self.result

    @property
    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self.calls[0][1]

    @property
    def schema(self):
        return self.calls[0][2]


class RecordingSession:
    """A session that logs when it is entered and left (and whether a version existed then)."""

    def __init__(self, events: list, models_dir: str) -> None:
        self.events, self.models_dir = events, models_dir

    def __enter__(self) -> None:
        self.events.append("enter")

    def __exit__(self, *exc) -> None:
        self.events.append(f"exit, version written: {Path(self.models_dir).exists()}")


def _written_booster(result: dict):
    return load_booster(registry.load_model_dir(result["version_uri"]).model_bytes)


class TestTrainModel:
    def test_search_gets_the_encoded_split_and_the_settings(self, root, spec):
        search = RecordingSearch()
        result = train_model(root, spec, RUN_DS, SETTINGS, search)
        [(data, (train, valid), schema, settings, searched_root)] = search.calls
        assert settings is SETTINGS and searched_root == root
        assert data.x_train.shape == (len(train), len(schema.features))
        assert data.y_valid.tolist() == valid["label"].tolist()
        assert not set(train["customer_id"]) & set(valid["customer_id"])
        assert (result["metrics"]["train_rows"], result["metrics"]["rows"]) == (len(train),
                                                                                len(valid))

    def test_writes_the_searched_booster_scored_on_the_validation_rows(self, root, spec):
        search = RecordingSearch()
        result = train_model(root, spec, RUN_DS, SETTINGS, search)
        model_bytes = registry.load_model_dir(result["version_uri"]).model_bytes
        assert model_bytes == bytes(search.result.booster.save_raw("ubj"))
        assert result["version"] == registry.version_id(RUN_DS, model_bytes)
        valid = search.frames[1]
        expected_auc = roc_auc(valid["label"], predict_proba(search.result.booster, search.schema,
                                                             valid))
        assert result["metrics"]["roc_auc"] == pytest.approx(expected_auc)
        assert result["metrics"]["best_iteration"] == 7
        assert result["params"]["num_boost_round"] == 8
        assert {k: result["params"][k] for k in STRONG} == STRONG
        assert set(result["timings"]) == {"read_s", "tune_s", "write_s", "total_s"}

    def test_meta_records_the_provenance_window_plan_and_config(self, root, spec):
        provenance = {"created_by": "tests", "code_version": "abc123", "package_version": "9.9"}
        result = train_model(root, spec, RUN_DS, SETTINGS, fixed_search(STRONG),
                             provenance=provenance)
        meta = registry.load_model_dir(result["version_uri"]).meta
        assert {k: meta[k] for k in provenance} == provenance
        assert (meta["ds"], meta["created_at"], meta["model_name"], meta["dataset"]) == (
            RUN_DS, RUN_DS, MODEL, spec.name)
        assert meta["window"] == result["window"]
        assert meta["plan"] == asdict(training.TrialPlan(1, 1.0, 1))
        assert meta["best_config"] == STRONG

    def test_refit_on_full_writes_the_config_retrained_on_every_row(self, root, spec):
        refit = spec.model_copy(update={"model": spec.model.model_copy(
            update={"refit_on_full": True})})
        sampled = {**STRONG, "subsample": 0.7}  # the refit's rows depend on the run's seed
        search = RecordingSearch(sampled)
        result = train_model(root, refit, RUN_DS, SETTINGS, search)
        written, searched = _written_booster(result), search.result.booster
        expected = training.refit_booster(sampled, search.frames, search.schema, 8, 1,
                                          SETTINGS.boost)
        assert bytes(written.save_raw("ubj")) == bytes(expected.save_raw("ubj"))
        assert bytes(written.save_raw("ubj")) != bytes(searched.save_raw("ubj"))
        # The metrics stay the searched booster's: the refit model has seen the validation rows.
        valid = search.frames[1]
        searched_auc = roc_auc(valid["label"], predict_proba(searched, search.schema, valid))
        assert result["metrics"]["roc_auc"] == pytest.approx(searched_auc)
        assert result["metrics"]["refit_on_full"] is True and "refit_s" in result["timings"]

    def test_random_holdout_stores_the_validation_ids(self, root, spec):
        search = RecordingSearch()
        result = train_model(root, spec, RUN_DS, SETTINGS, search)
        stored = pd.read_parquet(Path(result["version_uri"]) / registry.HOLDOUT_IDS_FILE)
        assert result["metrics"]["holdout"] == "random"
        pd.testing.assert_frame_equal(stored, search.frames[1][["customer_id", "ds"]])

    def test_train_days_override_the_spec_and_a_time_holdout_stores_no_ids(self, tmp_path, spec):
        # With the spec's 14 days the two newest days validate and no day is a horizon older.
        write_days(tmp_path, DAYS_WITH_GAP, rows=100, seed=2)
        settings = TrainSettings(train_days=5, num_boost_round=4,
                                          early_stopping_rounds=None)
        result = train_model(str(tmp_path), spec, RUN_DS, settings, fixed_search(STRONG))
        assert result["window"]["holdout"] == "time"
        assert result["window"]["train_days"] == DAYS_WITH_GAP[:4]
        assert not (Path(result["version_uri"]) / registry.HOLDOUT_IDS_FILE).exists()

    def test_the_session_spans_the_read_and_the_search_only(self, root, spec):
        events: list[str] = []

        def reader(*args) -> pd.DataFrame:
            events.append("read")
            return training.read_labelled_frame(*args)

        def search(*args) -> SearchResult:
            events.append("search")
            return fixed_search(STRONG)(*args)

        result = train_model(root, spec, RUN_DS, SETTINGS, search, reader=reader,
                             session=RecordingSession(events, Layout(root).models(MODEL)))
        assert events == ["enter", "read", "search", "exit, version written: False"]
        assert Path(result["version_uri"]).is_dir()

    @pytest.mark.parametrize(("ds", "message"), [("2026-02-30", "out of range"),
                                                 (RUN_DS, "no day ≤ 2026-01-11")])
    def test_a_bad_day_or_no_matured_day_is_refused_before_the_session(self, tmp_path, spec,
                                                                       ds, message):
        write_days(tmp_path, ["2026-02-01"], rows=20)
        events: list[str] = []
        with pytest.raises(ValueError, match=message):
            train_model(str(tmp_path), spec, ds, SETTINGS, fixed_search(STRONG),
                        session=RecordingSession(events, str(tmp_path)))
        assert events == []

    def test_a_failing_search_writes_no_version(self, root, spec):
        def failing_search(*args) -> SearchResult:
            raise RuntimeError("every trial failed")

        with pytest.raises(RuntimeError, match="every trial failed"):
            train_model(root, spec, RUN_DS, SETTINGS, failing_search)
        assert not Path(Layout(root).models(MODEL)).exists()


class TestTrainSettings:
    def test_boost_carries_rounds_early_stopping_and_seed(self):
        settings = TrainSettings(seed=3, num_boost_round=50, early_stopping_rounds=None)
        assert settings.boost == training.BoostSettings(50, None, 3)

    def test_defaults_are_the_command_line_defaults(self):
        settings = TrainSettings()
        assert (settings.trials, settings.workers, settings.seed, settings.num_boost_round,
                settings.early_stopping_rounds, settings.search_space) == (8, 1, 42, 300, 20, True)
