"""The DAG under a real scheduler: `airflow standalone` and a run triggered through REST API v2
with a conf (its Ray task defers to the triggerer).

Uses the shared e2e world after the `dags test` days (2025-03-15..17): the triggered run is
2025-03-18 (forced training). Backfills under the scheduler are proven, with faults, two runs
at a time, in tests/reliability/test_backfill_recovery.py.
"""

from __future__ import annotations

import json

import pytest

from churn.storage import Layout, read_json
from tests.support.airflow_world import DAG_ID, start_standalone

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.training]

TRIGGERED_DAY = "2025-03-18"
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
