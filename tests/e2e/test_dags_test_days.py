"""`airflow dags test churn_pipeline <ds>` on consecutive days of generated data.

Day 1 (2025-03-16): 5 matured label days, no champion: trains (Ray Tune) and the gate promotes.
Day 2 (2025-03-17): not a cadence day: no training, scored with the day-1 champion.
Then day 2 again, its Spark jobs on a Spark standalone cluster (a master, two workers) instead of
`local[2]`: the same predictions, no duplicate rows.
The cold start (too few label days, no champion: no training, scoring skipped) is the first
scheduled run of test_scheduled_run.py.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from churn.storage import Layout, exists, read_json
from churn.versions import LIBRARIES
from tests.support.versions import expected_code_version, installed_versions

pytestmark = [pytest.mark.airflow, pytest.mark.training]

TRAIN_DAY, SCORE_DAY = "2025-03-16", "2025-03-17"
MODEL_NAME = "churn_xgb_e2e"
REPO_ROOT = Path(__file__).resolve().parents[2]


def read_predictions(root: str, ds: str):
    """One day's predictions, sorted by customer (pandas)."""
    import pandas as pd

    frame = pd.read_parquet(Layout(root).predictions(ds))
    return frame.sort_values("customer_id").reset_index(drop=True)


def snapshot(root: str, ds: str) -> dict:
    """What a day left behind: its manifest, its predictions (or None) and the champion."""
    layout = Layout(root)
    champion = layout.champion(MODEL_NAME)
    return {
        "manifest": read_json(layout.manifest(ds)),
        "predictions": read_predictions(root, ds) if exists(layout.predictions(ds)) else None,
        "champion": read_json(champion) if exists(champion) else None,
    }


@pytest.fixture(scope="module")
def daily_runs(e2e_world, spark_cluster) -> dict:
    """Run the two days and the re-run (on the Spark cluster) through `airflow dags test`,
    snapshotting after each; `cluster_apps` are the applications the re-run ran there."""
    root, runs = str(e2e_world.root), {}
    before = spark_cluster.completed_apps()
    for key, ds, env in (("train", TRAIN_DAY, None), ("score", SCORE_DAY, None),
                         ("rerun", SCORE_DAY, spark_cluster.airflow_env())):
        e2e_world.airflow("dags", "test", "churn_pipeline", ds, "--conf", e2e_world.conf(),
                          env=env)
        runs[key] = snapshot(root, ds)
    runs["cluster_apps"] = [app for app_id, app in spark_cluster.completed_apps().items()
                            if app_id not in before]
    return runs


class TestTrainingDay:
    def test_trains_because_no_champion(self, daily_runs):
        manifest = daily_runs["train"]["manifest"]
        assert manifest["trained"] is True
        assert manifest["steps"]["decide"]["reason"] == "no champion yet: first training"
        assert manifest["steps"]["train"]["status"] == "SUCCEEDED"

    def test_gate_promotes_the_first_model(self, daily_runs):
        manifest = daily_runs["train"]["manifest"]
        gate = manifest["gate"]
        assert gate["promoted"] is True
        assert gate["challenger_auc"] >= 0.55
        assert daily_runs["train"]["champion"]["version"] == gate["version"]
        assert gate["version"].startswith("v20250316-")

    def test_scores_with_the_new_champion(self, daily_runs):
        manifest = daily_runs["train"]["manifest"]
        predictions = daily_runs["train"]["predictions"]
        assert manifest["model_version"] == manifest["gate"]["version"]
        assert set(predictions["model_version"]) == {manifest["gate"]["version"]}
        assert len(predictions) == manifest["rows"]["features"] == manifest["rows"]["predictions"]

    def test_manifest_records_versions_and_timings(self, daily_runs):
        manifest = daily_runs["train"]["manifest"]
        assert manifest["libraries"] == installed_versions(LIBRARIES)
        assert manifest["code_version"] == expected_code_version(REPO_ROOT)
        assert manifest["package_version"] == metadata.version("churn")
        assert manifest["timings"]["features"] > 0
        assert manifest["timings"]["gate"] > 0


class TestNonTrainingDay:
    def test_not_due(self, daily_runs):
        manifest = daily_runs["score"]["manifest"]
        assert manifest["trained"] is False and manifest["gate"] is None
        assert manifest["steps"]["decide"]["reason"].startswith("not due")

    def test_scored_with_the_champion(self, daily_runs):
        champion = daily_runs["train"]["champion"]["version"]
        predictions = daily_runs["score"]["predictions"]
        assert set(predictions["model_version"]) == {champion}
        assert set(predictions["ds"]) == {SCORE_DAY}
        assert predictions["customer_id"].is_unique
        assert predictions["churn_probability"].between(0, 1).all()


class TestRerunSameDay:
    def test_rerun_ran_its_spark_jobs_on_the_cluster(self, daily_runs):
        apps = sorted((app["name"], app["cores"]) for app in daily_runs["cluster_apps"])
        assert apps == [("churn-build-features", 2), ("churn-score", 2)]

    def test_predictions_identical(self, daily_runs):
        import pandas as pd

        pd.testing.assert_frame_equal(daily_runs["score"]["predictions"],
                                      daily_runs["rerun"]["predictions"])

    def test_no_duplicate_rows(self, daily_runs):
        rerun = daily_runs["rerun"]["predictions"]
        assert rerun["customer_id"].is_unique
        assert len(rerun) == daily_runs["rerun"]["manifest"]["rows"]["features"]

    def test_manifest_rewritten_with_the_same_outcome(self, daily_runs):
        first, again = daily_runs["score"]["manifest"], daily_runs["rerun"]["manifest"]
        assert again["ds"] == first["ds"] == SCORE_DAY
        assert again["model_version"] == first["model_version"]
        assert again["rows"] == first["rows"]
