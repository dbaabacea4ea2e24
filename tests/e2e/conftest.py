"""The end-to-end world: tiny generated data, bulk features, a temp Airflow home, a Ray head.

One world per test session (module tests share it in order: `airflow dags test` days first, then
the real scheduler on later days), so data is generated and Airflow's DB migrated once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_SPEC = Path(__file__).with_name("churn_e2e.yaml")
START = "2025-03-05"  # data: START .. START + DAYS - 1
DAYS = 19
CUSTOMERS = 500
BULK_END = "2025-03-14"  # features/labels before the first DAG day, in one Spark pass
MIN_LABEL_DAYS = 5
TRAIN_EVERY_DAYS = 7  # cadence days (days since epoch % 7 == 0) in range: 2025-03-13, 2025-03-20
RUN_TIMEOUT_S = 900


@dataclass(frozen=True)
class World:
    """Where the e2e data and Airflow live, and the environment every Airflow command gets."""

    root: Path
    airflow_home: Path
    env: dict[str, str]

    def conf(self, **extra: object) -> str:
        """A run conf (JSON) with the e2e spec and 2 Tune trials, plus `extra`."""
        return json.dumps({"dataset_spec": str(E2E_SPEC), "tune_trials": 2, **extra})

    def airflow(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run an `airflow` CLI command in this world; raises with its log tail on failure."""
        done = subprocess.run([str(Path(sys.executable).with_name("airflow")), *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {done.returncode}:\n"
                                 f"{(done.stdout + done.stderr)[-6000:]}")
        return done


def airflow_env(root: Path, airflow_home: Path, ray_head) -> dict[str, str]:
    """Environment of Airflow processes: venv on PATH, project dags/plugins, connections."""
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
        "CHURN_DATA_ROOT": str(root),
        "CHURN_MIN_LABEL_DAYS": str(MIN_LABEL_DAYS),
        "CHURN_TRAIN_EVERY_DAYS": str(TRAIN_EVERY_DAYS),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "AIRFLOW_CONN_RAY_DEFAULT": json.dumps({"conn_type": "http", "host": ray_head.dashboard_url,
                                                "password": ray_head.token}),
        "RAY_AUTH_MODE": "token",
    }


@pytest.fixture(scope="session")
def e2e_world(tmp_path_factory, ray_head) -> World:
    """Generated raw data, features/labels of the days before the DAG runs, a migrated DB."""
    from churn.generate import generate

    base = tmp_path_factory.mktemp("e2e")
    root, home = base / "data", base / "airflow"
    home.mkdir()
    generate(str(root), customers=CUSTOMERS, start=START, days=DAYS, seed=7, spec=E2E_SPEC)
    world = World(root, home, airflow_env(root, home, ray_head))
    subprocess.run([sys.executable, str(REPO_ROOT / "spark_jobs" / "build_features.py"),
                    "--root", str(root), "--spec", str(E2E_SPEC), "--start", START,
                    "--end", BULK_END, "--master", "local[2]"],
                   env=world.env, check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    world.airflow("db", "migrate")
    return world
