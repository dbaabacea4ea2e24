"""A real Airflow around generated data: a temp AIRFLOW_HOME, the CLI, and `airflow standalone`.

Used by the end-to-end tests and the backfill-recovery reliability test. A world is tiny
generated data (features/labels of a range built in one Spark pass), a migrated SQLite DB and
the environment every Airflow process gets (this repo's dags/plugins, Spark and Ray connections).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_SPEC = REPO_ROOT / "tests" / "e2e" / "churn_e2e.yaml"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "churn_pipeline"


@dataclass(frozen=True)
class World:
    """Where the generated data and Airflow live, and the environment every Airflow command gets."""

    root: Path
    airflow_home: Path
    env: dict[str, str]
    command_timeout_s: float = 900

    def conf(self, **extra: object) -> str:
        """A run conf (JSON) with the e2e spec and 2 Tune trials, plus `extra`."""
        return json.dumps({"dataset_spec": str(E2E_SPEC), "tune_trials": 2, **extra})

    def airflow(self, *args: str, timeout: float | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run an `airflow` CLI command in this world (`env`: variables set for this command
        only, e.g. another `spark_default`); raises with its log tail on failure."""
        done = subprocess.run([AIRFLOW, *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True,
                              timeout=timeout or self.command_timeout_s)
        if done.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {done.returncode}:\n"
                                 f"{(done.stdout + done.stderr)[-6000:]}")
        return done


def airflow_env(root: Path, airflow_home: Path, ray_head, **settings: str) -> dict[str, str]:
    """Environment of Airflow processes: venv on PATH, project dags/plugins, connections.

    `settings` are extra variables, e.g. CHURN_MIN_LABEL_DAYS="5".
    """
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'plugins'}",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "churn_airflow.sqlite.CONNECT_ARGS",
        "CHURN_DATA_ROOT": str(root),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "AIRFLOW_CONN_RAY_DEFAULT": json.dumps({"conn_type": "http", "host": ray_head.dashboard_url,
                                                "password": ray_head.token}),
        "RAY_AUTH_MODE": "token",
        # the e2e spec is one of the deployment's registered specs, and the default of a run
        "CHURN_DATASET_SPECS": str(E2E_SPEC),
        "CHURN_DATASET_SPEC": str(E2E_SPEC),
        **settings,
    }


def build_world(base: Path, ray_head, *, customers: int, start: str, days: int,
                bulk_end: str | None, spark=None, **settings: str) -> World:
    """Generate data, build features/labels of `start … bulk_end` in one pass of the job on the
    shared session `spark` (none when `bulk_end` is None), migrate the DB; `settings` go to the
    environment (see `airflow_env`)."""
    from churn.generate import generate

    root, home = base / "data", base / "airflow"
    home.mkdir(parents=True)
    generate(str(root), customers=customers, start=start, days=days, seed=7, spec=E2E_SPEC)
    world = World(root, home, airflow_env(root, home, ray_head, **settings))
    if bulk_end is not None:
        from spark_jobs.build_features import JobArgs, run

        run(spark, JobArgs(root=str(root), spec=str(E2E_SPEC), start=start, end=bulk_end))
    world.airflow("db", "migrate")
    return world


class Standalone:
    """A running `airflow standalone` in its own process group, with a REST v2 client."""

    def __init__(self, world: World, log_path: Path, max_active_runs: int = 4,
                 settings: dict[str, str] | None = None):
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
               "CHURN_MAX_ACTIVE_RUNS": str(max_active_runs), **(settings or {})}
        self.process = subprocess.Popen(
            [AIRFLOW, "standalone"], env=env, stdout=open(log_path, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
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
        """A REST v2 call (JSON reply); raises on an HTTP error."""
        reply = self.raw_request(method, path, **kwargs)
        reply.raise_for_status()
        return reply.json()

    def raw_request(self, method: str, path: str, **kwargs):
        """A REST v2 call; returns the `requests` response whatever its status."""
        import requests

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return requests.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

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
        """A run's state once it has ended (success/failed), else None."""
        state = self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    def task_instance(self, run_id: str, task_id: str) -> dict:
        return self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")

    def runs(self, run_type: str | None = None) -> list[dict]:
        """The DAG's runs (of one type, e.g. `backfill`, when given)."""
        params = {"limit": 100, **({"run_type": run_type} if run_type else {})}
        return self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params=params)["dag_runs"]

    def task_log(self, run_id: str, task_id: str, try_number: int) -> str:
        """A task try's log as written under AIRFLOW_HOME (worker part, plus the triggerer's)."""
        log_dir = (self.world.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
                   / f"task_id={task_id}")
        logs = sorted(log_dir.glob(f"attempt={try_number}.log*"))
        return "\n".join(path.read_text(errors="replace") for path in logs)


def start_standalone(world: World, log_path: Path, ready_timeout_s: float = 300,
                     max_active_runs: int = 4, settings: dict[str, str] | None = None) -> Standalone:
    """`airflow standalone` on a free port, logged in, the DAG parsed and unpaused; `settings`
    are extra environment variables of its processes."""
    server = Standalone(world, log_path, max_active_runs, settings)
    try:
        server.wait_until("the admin password", lambda: (
            world.airflow_home / "simple_auth_manager_passwords.json.generated").exists(),
            ready_timeout_s)
        server.wait_until("a healthy api-server", server.healthy, ready_timeout_s)
        server.login()
        server.wait_until("the DAG parsed", lambda: server.request(
            "GET", f"/api/v2/dags/{DAG_ID}")["dag_id"], ready_timeout_s)
        server.request("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    except BaseException:
        server.stop()
        raise
    return server
