"""Child processes of tests: an environment that imports the repo, and killing a whole group."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """This environment plus a PYTHONPATH under which a child imports `churn`, `tests.support`
    and `spark_jobs` (a child does not inherit pytest's `sys.path`)."""
    paths = [str(REPO_ROOT), str(REPO_ROOT / "include"), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in paths if p)} | extra


def kill_group(child: subprocess.Popen, timeout: float = 30) -> int:
    """SIGKILL the child's whole process group (a Spark driver's JVM and Python workers too);
    the child must have been started with `start_new_session=True`. Returns its exit code."""
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    return child.wait(timeout=timeout)


def group_alive(pgid: int) -> bool:
    """Whether any process of a process group is still running (zombies aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    listed = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    return bool(listed.stdout.split())
