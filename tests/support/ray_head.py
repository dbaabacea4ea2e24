"""A real local Ray head for tests: its own ports and temp dir, stopped by process group.

`ray stop` would kill every Ray on the machine (a developer's demo head included), so the
fixture runs `ray start --head --block` in a new process group and terminates only that group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import group_alive


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayHead:
    """A running head: the Jobs API address, the GCS address and the token clients need."""

    process: subprocess.Popen
    dashboard_url: str
    gcs_address: str
    token: str
    temp_dir: str
    command: list[str] = field(default_factory=list)  # `ray start`, to restart on the same ports

    def client_env(self) -> dict[str, str]:
        """Environment a Ray client (driver or job submitter) needs for this head."""
        return {"RAY_ADDRESS": self.gcs_address, "RAY_AUTH_MODE": "token"}

    def stop(self, grace_s: float = 5) -> None:
        """Terminate the head; SIGKILL its process group if anything outlives the grace period.

        SIGTERM goes to `ray start` alone: it then stops its children in order (3-7 s here),
        whereas SIGTERM to the whole group leaves the leader hanging until SIGKILL. Its raylet
        sometimes drains for 15 s or more; a test head holds nothing worth that wait.
        """
        try:
            os.kill(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # the leader is gone; its group may still hold children
        stop_at = time.monotonic() + grace_s
        while time.monotonic() < stop_at and group_alive(self.process.pid):
            self.process.poll()
            time.sleep(0.2)
        if group_alive(self.process.pid):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def crash(self) -> None:
        """SIGKILL the head's whole process group at once: a crash, not a shutdown."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _read_token() -> str:
    return (Path.home() / ".ray" / "auth_token").read_text().strip()


def _wait_for_jobs_api(head: RayHead, deadline_s: float) -> None:
    """Poll the Jobs API until it answers (readiness, bounded by a deadline)."""
    import requests

    stop_at = time.monotonic() + deadline_s
    last_error: Exception | None = None
    while time.monotonic() < stop_at:
        if head.process.poll() is not None:
            raise RuntimeError(f"ray head exited early with code {head.process.returncode}")
        try:
            reply = requests.get(
                f"{head.dashboard_url}/api/jobs/",
                headers={"Authorization": f"Bearer {head.token}"},
                timeout=2,
            )
            if reply.status_code == 200:
                return
            last_error = RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
        except requests.RequestException as exc:
            last_error = exc
        time.sleep(0.5)
    raise TimeoutError(f"Ray Jobs API at {head.dashboard_url} not ready: {last_error}")


def start_ray_head(num_cpus: int = 2, ready_timeout_s: float = 120) -> RayHead:
    """Start a Ray head with token auth on free local ports and wait for its Jobs API.

    Args:
        num_cpus: CPUs the head advertises.
        ready_timeout_s: how long to wait for the Jobs API.

    Returns:
        The running head; call `stop()` when done.
    """
    gcs_port, dashboard_port = free_port(), free_port()
    # Agent/metrics ports default to fixed numbers (52365, ...): a second head on the machine
    # (another test session, the demo head) would then have no job agent ("No available agent").
    side_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=_head_env(), check=False,
                   capture_output=True)
    command = [
        ray_bin, "start", "--head", "--block", f"--port={gcs_port}",
        f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
        "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats", *side_ports]
    return _launch(command, f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}",
                   temp_dir, ready_timeout_s)


def restart_ray_head(head: RayHead, ready_timeout_s: float = 120) -> RayHead:
    """Start a new head with the command of a stopped or crashed one: same ports, same token.

    Without GCS fault tolerance the new head knows none of the old head's jobs.

    Args:
        head: the former head (no process of it may hold its ports any more).
        ready_timeout_s: how long to wait for the Jobs API.

    Returns:
        The new running head; call `stop()` when done.
    """
    return _launch(head.command, head.dashboard_url, head.gcs_address, head.temp_dir,
                   ready_timeout_s)


def _head_env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def _launch(command: list[str], dashboard_url: str, gcs_address: str, temp_dir: str,
            ready_timeout_s: float) -> RayHead:
    """Run `ray start --block` in its own process group and wait until its Jobs API answers."""
    process = subprocess.Popen(
        command, env=_head_env(), start_new_session=True,
        stdout=open(Path(temp_dir) / "head.out", "ab"), stderr=subprocess.STDOUT,
    )
    head = RayHead(process, dashboard_url, gcs_address, _read_token(), temp_dir, command)
    try:
        _wait_for_jobs_api(head, ready_timeout_s)
    except BaseException:
        head.stop()
        raise
    return head
