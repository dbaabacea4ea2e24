"""The DAG under a real scheduler: `airflow standalone`, a run triggered through REST API v2 with a
conf (its Ray task defers to the triggerer), then a 3-day `airflow backfill create`.

Uses the shared e2e world after the `dags test` days (2025-03-15..17): the triggered run is
2025-03-18 (forced training), the backfill 2025-03-21..23 (no cadence day: scoring only).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from churn.storage import Layout, list_partitions, read_json

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.training]

DAG_ID = "churn_pipeline"
TRIGGERED_DAY = "2025-03-18"
BACKFILL_DAYS = ["2025-03-21", "2025-03-22", "2025-03-23"]
READY_TIMEOUT_S = 300
RUN_TIMEOUT_S = 1200


class Standalone:
    """A running `airflow standalone` in its own process group, with a REST v2 client."""

    def __init__(self, world, log_path: Path):
        from tests.support.ray_head import free_port

        self.world = world
        self.port = free_port()
        self.log_path = log_path
        env = {**world.env, "AIRFLOW__API__PORT": str(self.port), "AIRFLOW__API__HOST": "127.0.0.1",
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
               "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
               "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
               # catchup=False still schedules the latest interval once unpaused (a day without
               # data, parked in its reschedule sensor): let our runs proceed next to it.
               "CHURN_MAX_ACTIVE_RUNS": "4"}
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), "standalone"], env=env,
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        self.token: str | None = None

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM the process group (LocalExecutor workers ignore it), SIGKILL the rest."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                continue
            if subprocess.run(["pgrep", "-g", str(self.process.pid)],
                              capture_output=True).returncode != 0:
                return

    def request(self, method: str, path: str, **kwargs):
        import requests

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        reply = requests.request(method, self.base + path, headers=headers, timeout=30, **kwargs)
        reply.raise_for_status()
        return reply.json()

    def wait_until(self, what: str, probe, timeout_s: float, interval_s: float = 2.0):
        """Poll `probe()` until it returns a truthy value (readiness with a deadline)."""
        import requests

        stop_at, last = time.monotonic() + timeout_s, None
        while time.monotonic() < stop_at:
            if self.process.poll() is not None:
                raise AssertionError(f"airflow standalone exited: {self.log_tail()}")
            try:
                value = probe()
                if value:
                    return value
            except (requests.RequestException, OSError, KeyError, ValueError) as exc:
                last = exc
            time.sleep(interval_s)
        raise AssertionError(f"timed out waiting for {what} (last error: {last})\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def login(self) -> None:
        passwords = self.world.airflow_home / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        self.token = self.request("POST", "/auth/token",
                                  json={"username": "admin", "password": password})["access_token"]

    def healthy(self) -> bool:
        health = self.request("GET", "/api/v2/monitor/health")
        return all((health.get(c) or {}).get("status") == "healthy"
                   for c in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    def run_state(self, run_id: str) -> str | None:
        state = self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None


@pytest.fixture(scope="module")
def standalone(e2e_world, tmp_path_factory):
    """`airflow standalone` on a free port, logged in, the DAG parsed and unpaused."""
    server = Standalone(e2e_world, tmp_path_factory.mktemp("standalone") / "standalone.log")
    try:
        server.wait_until("the admin password", lambda: (
            e2e_world.airflow_home / "simple_auth_manager_passwords.json.generated").exists(),
            READY_TIMEOUT_S)
        server.wait_until("a healthy api-server", server.healthy, READY_TIMEOUT_S)
        server.login()
        server.wait_until("the DAG parsed", lambda: server.request(
            "GET", f"/api/v2/dags/{DAG_ID}")["dag_id"], READY_TIMEOUT_S)
        server.request("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
        yield server
    finally:
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
    train = standalone.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train")
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
        runs = standalone.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns",
                                  params={"run_type": "backfill", "limit": 100})["dag_runs"]
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
