"""A real Spark standalone cluster for tests, started and stopped by the project's own script.

`scripts/spark_local.sh up|down` with a state directory and ports of the test's own, so a
developer's `make spark-up` cluster is never touched. The master's JSON status says which
applications ran on it and how many executors they had.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.ray_head import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "spark_local.sh"
WORKERS = 2


@dataclass
class SparkCluster:
    """A running master and its workers: the master URL, its status URL and the script's env."""

    master_url: str
    status_url: str
    port: int
    env: dict[str, str]
    conf_dir: Path

    def status(self) -> dict:
        """The master's JSON status (workers, active and completed applications)."""
        with urllib.request.urlopen(self.status_url, timeout=10) as reply:
            return json.load(reply)

    def completed_apps(self) -> dict[str, dict]:
        """The applications that ran to the end here, by id: their `name` and `cores`."""
        return {app["id"]: {"name": app["name"], "cores": app["cores"]}
                for app in self.status()["completedapps"]}

    def airflow_env(self) -> dict[str, str]:
        """What an Airflow worker needs to run its spark-submit tasks here: `spark_default`
        pointing at this master (client deploy mode) and the client conf dir."""
        connection = json.dumps({"conn_type": "spark", "host": "spark://127.0.0.1",
                                 "port": self.port, "extra": {"deploy-mode": "client"}})
        return {"AIRFLOW_CONN_SPARK_DEFAULT": connection, **self.client_env()}

    def client_env(self) -> dict[str, str]:
        """What a spark-submit client needs besides the master: the script's client conf dir."""
        return {"SPARK_CONF_DIR": str(self.conf_dir)}

    def stop(self) -> None:
        _script("down", self.env)


def _script(command: str, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"spark_local.sh {command} exited {done.returncode}:\n"
                           f"{done.stdout}{done.stderr}")
    return done.stdout


def start_spark_cluster(state_dir: Path) -> SparkCluster:
    """Start a master and `WORKERS` one-core workers on free ports; their state in `state_dir`."""
    port, webui = free_port(), free_port()
    env = {**os.environ, "SPARK_LOCAL_STATE_DIR": str(state_dir), "SPARK_LOCAL_PORT": str(port),
           "SPARK_LOCAL_WEBUI_PORT": str(webui), "SPARK_LOCAL_WORKERS": str(WORKERS),
           "SPARK_LOCAL_WORKER_MEMORY": "1536m"}
    _script("up", env)
    return SparkCluster(master_url=f"spark://127.0.0.1:{port}",
                        status_url=f"http://127.0.0.1:{webui}/json/", port=port, env=env,
                        conf_dir=state_dir / "conf")
