"""The DAG under a real scheduler: `airflow standalone`, a run triggered through REST API v2 with a
conf (its Ray task defers to the triggerer), then a 3-day `airflow backfill create`.

Uses the shared e2e world after the `dags test` days (2025-03-15..17): the triggered run is
2025-03-18 (forced training), the backfill 2025-03-21..23 (no cadence day: scoring only).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from churn.storage import Layout, list_partitions, read_json
from tests.support.airflow_world import DAG_ID, start_standalone

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.training]

TRIGGERED_DAY = "2025-03-18"
BACKFILL_DAYS = ["2025-03-21", "2025-03-22", "2025-03-23"]
READY_TIMEOUT_S = 300
RUN_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def standalone(e2e_world, tmp_path_factory):
    """`airflow standalone` on a free port, logged in, the DAG parsed and unpaused."""
    server = start_standalone(e2e_world, tmp_path_factory.mktemp("standalone") / "standalone.log",
                              READY_TIMEOUT_S)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triggered_run(standalone, e2e_world) -> dict:
    """One run triggered through REST v2 with a conf that forces training; waits for its end."""
    run_id = f"rest__{TRIGGERED_DAY}"
    standalone.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={
        "dag_run_id": run_id, "logical_date": f"{TRIGGERED_DAY}T00:00:00Z",
        "conf": json.loads(e2e_world.conf(force_retrain=True))})
    state = standalone.wait_until(f"run {run_id}", lambda: standalone.run_state(run_id),
                                  RUN_TIMEOUT_S, interval_s=5)
    train = standalone.task_instance(run_id, "train")
    log_dir = (e2e_world.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
               / "task_id=train")
    # the worker's log, plus the triggerer's part (`attempt=N.log.trigger.<job>.log`) if split
    logs = sorted(log_dir.glob(f"attempt={train['try_number']}.log*"))
    return {"run_id": run_id, "state": state, "train": train,
            "train_log": "\n".join(path.read_text(errors="replace") for path in logs),
            "manifest": read_json(Layout(str(e2e_world.root)).manifest(TRIGGERED_DAY))}


class TestTriggeredRun:
    def test_run_succeeds(self, triggered_run):
        assert triggered_run["state"] == "success"

    def test_conf_reached_the_run(self, triggered_run):
        manifest = triggered_run["manifest"]
        assert manifest["run"]["run_id"] == triggered_run["run_id"]
        assert manifest["run"]["conf"]["force_retrain"] is True
        assert manifest["steps"]["decide"]["reason"].startswith("forced by the run's params")
        assert manifest["trained"] is True and manifest["scored"] is True

    def test_ray_task_deferred_to_the_triggerer(self, triggered_run):
        assert triggered_run["train"]["state"] == "success"
        log = triggered_run["train_log"]
        assert "DEFERRED" in log  # the worker handed the wait over to the triggerer ...
        assert "[ray af-" in log  # ... whose RayJobTrigger streamed the job's log lines


@pytest.fixture(scope="module")
def backfill(standalone, e2e_world, triggered_run) -> list[dict]:
    """`airflow backfill create` over 3 days, one run at a time; waits for every run."""
    e2e_world.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", BACKFILL_DAYS[0],
                      "--to-date", BACKFILL_DAYS[-1], "--max-active-runs", "1",
                      "--dag-run-conf", e2e_world.conf())

    def finished() -> list[dict] | None:
        runs = standalone.runs("backfill")
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return runs if len(runs) == len(BACKFILL_DAYS) and len(done) == len(runs) else None

    return standalone.wait_until("the backfill", finished, RUN_TIMEOUT_S * 2, interval_s=10)


class TestBackfill:
    def test_one_successful_run_per_day(self, backfill):
        days = sorted(run["logical_date"][:10] for run in backfill)
        assert days == BACKFILL_DAYS
        assert {run["state"] for run in backfill} == {"success"}

    def test_each_day_written_once_by_its_run(self, backfill, e2e_world):
        layout = Layout(str(e2e_world.root))
        run_ids = {run["logical_date"][:10]: run["dag_run_id"] for run in backfill}
        for ds in BACKFILL_DAYS:
            manifest = read_json(layout.manifest(ds))
            assert manifest["run"]["run_id"] == run_ids[ds]
            assert manifest["scored"] is True and manifest["trained"] is False

    def test_outputs_exist_exactly_once(self, backfill, e2e_world):
        import pandas as pd

        layout = Layout(str(e2e_world.root))
        for area in ("features", "predictions"):
            days = list_partitions(layout.area(area))
            assert [d for d in days if d in BACKFILL_DAYS] == BACKFILL_DAYS
            leftovers = [p.name for p in Path(layout.area(area)).iterdir() if p.name.startswith("_")]
            assert leftovers == []
        for ds in BACKFILL_DAYS:
            predictions = pd.read_parquet(layout.predictions(ds))
            assert predictions["customer_id"].is_unique
            assert set(predictions["ds"]) == {ds}
            assert len(predictions) == read_json(layout.manifest(ds))["rows"]["features"]
