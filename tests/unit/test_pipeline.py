"""The DAG's decision and publishing steps (`churn.pipeline`), on real files under tmp_path."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from churn import pipeline
from churn.storage import Layout, read_json, write_json_atomic
from churn.versions import LIBRARIES
from tests.support.versions import expected_code_version, installed_versions

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC = str(REPO_ROOT / "include" / "datasets" / "synthetic.yaml")
DS = "2025-03-17"


class TestCadence:
    @pytest.mark.parametrize(("ds", "every", "due"), [
        ("2025-03-13", 7, True), ("2025-03-20", 7, True), ("2025-03-17", 7, False),
        ("1970-01-01", 7, True), ("2025-03-17", 1, True)])
    def test_is_cadence_day(self, ds, every, due):
        assert pipeline.is_cadence_day(ds, every) is due

    def test_next_cadence_day(self):
        assert pipeline.next_cadence_day("2025-03-17", 7) == "2025-03-20"
        assert pipeline.next_cadence_day("2025-03-13", 7) == "2025-03-20"

    def test_rejects_zero_cadence(self):
        with pytest.raises(ValueError, match="N >= 1"):
            pipeline.is_cadence_day(DS, 0)


class TestTrainingDecision:
    def decide(self, **overrides):
        kwargs = {"label_days": 10, "has_champion": True, "every_days": 7, "force": False,
                  "min_label_days": 1, **overrides}
        return pipeline.training_decision(DS, **kwargs)

    def test_not_due_names_the_next_day(self):
        decision = self.decide()
        assert decision.train is False
        assert decision.reason == "not due: training runs every 7 day(s), next on 2025-03-20"

    def test_due_on_cadence_day(self):
        decision = pipeline.training_decision("2025-03-20", label_days=3, has_champion=True,
                                              every_days=7, force=False, min_label_days=1)
        assert (decision.train, decision.reason) == (True, "due: training runs every 7 day(s)")

    def test_cold_start_trains(self):
        assert self.decide(has_champion=False).reason == "no champion yet: first training"

    def test_force_trains(self):
        assert self.decide(force=True).train is True

    @pytest.mark.parametrize(("label_days", "minimum"), [(0, 1), (0, 0), (4, 5)])
    def test_never_without_enough_matured_labels(self, label_days, minimum):
        decision = self.decide(label_days=label_days, min_label_days=minimum, force=True,
                               has_champion=False)
        assert decision.train is False
        assert decision.reason.startswith(f"not enough matured labels: {label_days} label day(s)")


def deliver(uri: str, marker: bool = True) -> None:
    """A producer's delivery of one partition: a data file, then (optionally) `_SUCCESS`."""
    import pandas as pd

    Path(uri).mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"customer_id": ["a", "b"], "ds": [DS, DS]}).to_parquet(f"{uri}/part-0.parquet")
    if marker:
        Path(uri, "_SUCCESS").write_text("")


class TestRawSensorCheck:
    def test_waits_for_every_table_and_logs_what_is_missing(self, tmp_path, caplog):
        layout = Layout(str(tmp_path))
        deliver(layout.raw("events", DS), marker=False)
        with caplog.at_level("INFO", logger="churn.pipeline"):
            missing = pipeline.missing_raw_partitions(str(tmp_path), SPEC, DS)
        assert missing == [layout.raw("events", DS), layout.raw("customers", DS)]
        assert (f"waiting for raw partition {layout.raw('events', DS)}: 1 data file(s) but no "
                "_SUCCESS marker from the producer yet") in caplog.text
        assert f"waiting for raw partition {layout.raw('customers', DS)}: no partition " \
               "directory" in caplog.text

    def test_landed_once_each_producer_marked_its_partition(self, tmp_path):
        layout = Layout(str(tmp_path))
        deliver(layout.raw("events", DS))
        deliver(layout.raw("customers", DS), marker=False)
        assert pipeline.missing_raw_partitions(str(tmp_path), SPEC, DS) == [
            layout.raw("customers", DS)]
        Path(layout.raw("customers", DS), "_SUCCESS").write_text("")
        assert pipeline.missing_raw_partitions(str(tmp_path), SPEC, DS) == []


class TestLogicalDate:
    def test_a_run_without_a_logical_date_is_told_to_pick_the_day(self):
        with pytest.raises(pipeline.NoLogicalDateError, match="trigger it with a logical date"):
            pipeline.require_logical_date(None)
        assert pipeline.require_logical_date(DS) == DS


class TestDecideAndScoreSteps:
    def test_decide_records_fragment(self, tmp_path):
        decision = pipeline.decide_training(str(tmp_path), SPEC, DS, every_days=7, force=True,
                                            min_label_days=1)
        fragment = read_json(Layout(str(tmp_path)).run_fragment(DS, "decide"))
        assert decision.train is False
        assert (fragment["train"], fragment["label_days"], fragment["every_days"]) == (False, 0, 7)

    def test_scoring_skipped_without_champion(self, tmp_path):
        assert pipeline.scoring_model(str(tmp_path), SPEC, DS, skip_scoring=False) is None
        fragment = read_json(Layout(str(tmp_path)).run_fragment(DS, "score"))
        assert fragment["skipped"] is True
        assert "no champion for model 'churn_xgb' yet" in fragment["reason"]

    def test_skip_scoring_param(self, tmp_path):
        assert pipeline.scoring_model(str(tmp_path), SPEC, DS, skip_scoring=True) is None
        fragment = read_json(Layout(str(tmp_path)).run_fragment(DS, "score"))
        assert fragment["reason"] == "scoring skipped by the run's params (skip_scoring=true)"


class TestPublishManifest:
    RUN = {"dag_id": "churn_pipeline", "run_id": "manual__x"}

    def test_merges_only_this_runs_steps(self, tmp_path):
        root, layout = str(tmp_path), Layout(str(tmp_path))
        counts = {"rows_in": 5, "rows_out": 4, "rows_rejected": 1}
        write_json_atomic(layout.run_fragment(DS, "ingest"), {"tables": {"events": counts}})
        write_json_atomic(layout.run_fragment(DS, "features"), {"feature_rows": 2, "seconds": 3.5})
        write_json_atomic(layout.run_fragment(DS, "train"), {"version": "stale-from-earlier-run"})
        pipeline._write_fragment(root, DS, "decide", {"train": False, "reason": "not due"})
        pipeline._write_fragment(root, DS, "score", {"skipped": False, "model_version": "v1"})
        deliver(layout.predictions(DS), marker=False)

        manifest = pipeline.publish_manifest(root, DS, run=self.RUN, repo_root=str(REPO_ROOT))

        assert read_json(layout.manifest(DS)) == manifest
        assert manifest["tables"] == {"events": counts}
        assert sorted(manifest["steps"]) == ["decide", "features", "ingest", "score"]
        assert manifest["trained"] is False and manifest["gate"] is None
        assert (manifest["scored"], manifest["model_version"]) == (True, "v1")
        assert manifest["rows"] == {"features": 2, "predictions": 2}
        assert manifest["timings"]["features"] == 3.5
        assert manifest["run"] == self.RUN

    def test_records_the_code_package_and_library_versions(self, tmp_path, monkeypatch):
        monkeypatch.delenv("CHURN_CODE_VERSION", raising=False)
        pipeline._write_fragment(str(tmp_path), DS, "decide", {"train": False, "reason": "x"})
        manifest = pipeline.publish_manifest(str(tmp_path), DS, run=self.RUN,
                                             repo_root=str(REPO_ROOT))
        assert manifest["code_version"] == expected_code_version(REPO_ROOT)
        assert manifest["package_version"] == metadata.version("churn")
        assert manifest["libraries"] == installed_versions(LIBRARIES)
        assert manifest["steps"]["decide"]["package_version"] == metadata.version("churn")

    def test_skipped_scoring(self, tmp_path):
        root = str(tmp_path)
        pipeline._write_fragment(root, DS, "decide", {"train": False, "reason": "x"})
        pipeline.scoring_model(root, SPEC, DS, skip_scoring=True)
        manifest = pipeline.publish_manifest(root, DS, run=self.RUN, repo_root=str(REPO_ROOT))
        assert (manifest["scored"], manifest["predictions"], manifest["model_version"]) == (
            False, None, None)


class TestStepSeconds:
    def test_seconds_or_training_total(self):
        fragments = {"features": {"seconds": 12.5}, "train": {"timings": {"total_s": 80.0}},
                     "decide": {"train": False}}
        assert pipeline.step_seconds(fragments) == {"features": 12.5, "train": 80.0}


class TestResolveSpecPath:
    def test_relative_to_the_repo_uris_and_absolute_paths_kept(self):
        assert pipeline.resolve_spec_path("s3://b/spec.yaml", "/repo") == "s3://b/spec.yaml"
        assert pipeline.resolve_spec_path("include/x.yaml", "/repo") == "/repo/include/x.yaml"
        assert pipeline.resolve_spec_path("/abs/x.yaml", "/repo") == "/abs/x.yaml"
