"""Unattended: the real scheduler starts the daily run on its own, and it processes yesterday.

A DAG whose start date is three days back is unpaused with catchup off (`airflow standalone`:
scheduler, dag-processor, triggerer, api-server). Its first automatic run must be the run of
yesterday (UTC): logical date, run id, `ds` and the manifest all name yesterday, the day that has
ended, and no run processes today. A manual run without a logical date fails at its first task,
telling the user to pick the day.

The world is its own: raw data for the 15 days up to yesterday (the e2e spec's 14-day windows),
no bulk pass, and too few label days to train, so the run is a cold start: Spark features, no
training, and a skipped score (no champion), with the run still published.
"""

from __future__ import annotations

import datetime as dt

import pytest

from churn.spec import load_spec
from churn.storage import Layout, exists, read_json, shift_ds
from churn.training import matured_days
from tests.support.airflow_world import DAG_ID, E2E_SPEC, build_world, start_standalone

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

READY_TIMEOUT_S = 300
RUN_TIMEOUT_S = 900
HISTORY_DAYS = 15
MIN_LABEL_DAYS = 100
NO_DATE_RUN = "manual__without_logical_date"


@pytest.fixture(scope="module")
def days() -> dict[str, str]:
    """Today and yesterday (UTC) by the real clock the scheduler reads."""
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    return {"today": today, "yesterday": shift_ds(today, -1), "start": shift_ds(today, -3)}


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, ray_head, days) -> dict:
    """Unpause the DAG; wait for the run the scheduler starts by itself, and a dateless run."""
    base = tmp_path_factory.mktemp("scheduled")
    world = build_world(base, ray_head, customers=150,
                        start=shift_ds(days["yesterday"], 1 - HISTORY_DAYS), days=HISTORY_DAYS,
                        bulk_end=None, CHURN_MIN_LABEL_DAYS=str(MIN_LABEL_DAYS))
    server = start_standalone(world, base / "standalone.log", READY_TIMEOUT_S,
                              settings={"CHURN_START_DATE": days["start"]})
    try:
        first = server.wait_until("the first scheduled run", lambda: server.runs("scheduled"),
                                  READY_TIMEOUT_S)[0]
        server.wait_until(f"run {first['dag_run_id']}",
                          lambda: server.run_state(first["dag_run_id"]), RUN_TIMEOUT_S, 5)
        server.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                       json={"dag_run_id": NO_DATE_RUN, "logical_date": None})
        server.wait_until(f"run {NO_DATE_RUN}", lambda: server.run_state(NO_DATE_RUN),
                          RUN_TIMEOUT_S, 2)
        return {
            "world": world,
            "runs": server.runs("scheduled"),
            "run": server.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{first['dag_run_id']}"),
            "no_date": server.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{NO_DATE_RUN}"),
            "no_date_sensor": server.task_instance(NO_DATE_RUN, "wait_for_raw"),
            "no_date_log": server.task_log(NO_DATE_RUN, "wait_for_raw", 1),
        }
    finally:
        server.stop()


class TestFirstScheduledRun:
    def test_processes_yesterday_and_names_it_everywhere(self, scheduled, days):
        run, yesterday = scheduled["run"], days["yesterday"]
        assert run["state"] == "success"
        assert run["logical_date"].startswith(f"{yesterday}T00:00:00")
        assert run["dag_run_id"] == f"scheduled__{yesterday}T00:00:00+00:00"
        # the run's interval is the whole of yesterday; it started once that day had ended
        assert run["data_interval_start"].startswith(f"{yesterday}T00:00:00")
        assert run["data_interval_end"].startswith(f"{days['today']}T00:00:00")
        assert run["run_after"] >= f"{days['today']}T00:00:00"
        manifest = read_json(Layout(str(scheduled["world"].root)).manifest(yesterday))
        assert manifest["ds"] == yesterday
        assert manifest["run"]["run_id"] == run["dag_run_id"]
        assert manifest["run"]["logical_date"].startswith(yesterday)

    def test_only_that_run_and_nothing_for_today(self, scheduled, days):
        # catchup off: the three days since the start date are not backfilled
        assert [r["dag_run_id"] for r in scheduled["runs"]] == [scheduled["run"]["dag_run_id"]]
        layout = Layout(str(scheduled["world"].root))
        assert exists(layout.features(days["yesterday"]))
        assert not exists(layout.features(days["today"]))
        assert not exists(layout.manifest(days["today"]))

    def test_features_come_from_the_finished_day(self, scheduled, days):
        manifest = read_json(Layout(str(scheduled["world"].root)).manifest(days["yesterday"]))
        tables = manifest["tables"]
        assert set(tables) == {"events", "customers"}
        for counts in tables.values():
            assert counts["rows_out"] > 0
            assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
        assert manifest["rows"]["features"] == tables["customers"]["rows_out"]


class TestColdStart:
    def test_no_training_without_enough_matured_labels(self, scheduled, days):
        root, yesterday = str(scheduled["world"].root), days["yesterday"]
        manifest = read_json(Layout(root).manifest(yesterday))
        assert manifest["trained"] is False
        decide = manifest["steps"]["decide"]
        matured = len(matured_days(root, load_spec(E2E_SPEC), yesterday))
        assert decide["label_days"] == matured
        assert decide["reason"] == (f"not enough matured labels: {matured} label day(s) as of "
                                    f"{yesterday}, training needs {MIN_LABEL_DAYS}")

    def test_scoring_skipped_but_run_published(self, scheduled, days):
        layout = Layout(str(scheduled["world"].root))
        manifest = read_json(layout.manifest(days["yesterday"]))
        assert manifest["scored"] is False and manifest["model_version"] is None
        assert "no champion" in manifest["steps"]["score"]["reason"]
        assert not exists(layout.predictions(days["yesterday"]))
        assert not exists(layout.champion(load_spec(E2E_SPEC).model.name))


class TestManualRunWithoutLogicalDate:
    def test_fails_at_its_first_task_saying_to_pick_the_day(self, scheduled):
        assert scheduled["no_date"]["logical_date"] is None
        assert scheduled["no_date"]["state"] == "failed"
        sensor = scheduled["no_date_sensor"]
        assert (sensor["state"], sensor["try_number"]) == ("failed", 1)  # no pointless retries
        log = scheduled["no_date_log"]
        assert "this run has no logical date, so it has no day to process" in log
