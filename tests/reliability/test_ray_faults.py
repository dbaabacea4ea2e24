"""Ray faults while SubmitRayJobOperator waits: job stopped or SIGKILLed from outside, head restarted.

Each case runs try 1 of the operator on a real job (`hold.py`, which ticks until the test
creates its release file), injects the fault while the operator waits (in the worker, or in the
deferrable `RayJobTrigger`), then plays the retry Airflow would run: try 1 saw its job end, so
try 2 must submit exactly one new job of the same task instance and succeed.
The cluster's side is checked with Ray's own `JobSubmissionClient`, the job's processes with
psutil (by a marker on the job's command line). No job is left running and every head a test
starts is stopped, even when it fails.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from churn_airflow.hooks.ray_job import RayJobError
from churn_airflow.operators.ray_job import SubmitRayJobOperator
from tests.support.ray_head import RayHead, restart_ray_head, start_ray_head
from tests.support.ray_jobs import TaskInstanceStub, job_statuses, run_task, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINTS = REPO_ROOT / "tests" / "support" / "ray_entrypoints"
CONN_ID = "ray_faults"
DAG_ID = "ray_faults"
TASK_ID = "train"
ACTIVE = {"PENDING", "RUNNING"}
WAIT_PATHS = pytest.mark.parametrize("deferrable", [False, True], ids=["worker_wait", "trigger"])


@dataclass(frozen=True)
class HoldJob:
    """The `hold.py` job of one test: a unique marker and the file that lets it finish."""

    marker: str
    release_file: Path

    @property
    def entrypoint(self) -> list[str]:
        return [sys.executable, "hold.py", "--release", str(self.release_file),
                "--marker", self.marker, "--max-seconds", "90"]

    def release(self) -> None:
        """Let every run of the job finish (with its result)."""
        self.release_file.touch()

    def processes(self) -> list[psutil.Process]:
        """The live processes whose command line carries the marker."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if self.marker in " ".join(process.info["cmdline"] or []):
                found.append(process)
        return found


@pytest.fixture
def hold_job(tmp_path) -> Iterator[HoldJob]:
    """A fresh hold job; released at teardown so that no run of it outlives the test."""
    job = HoldJob(uuid.uuid4().hex, tmp_path / "release")
    yield job
    job.release()
    wait_until(lambda: not job.processes(), timeout_s=30, what="job processes to end")


@pytest.fixture
def ti(request) -> TaskInstanceStub:
    """A fresh task instance (unique run id per test)."""
    return TaskInstanceStub(dag_id=DAG_ID, task_id=TASK_ID,
                            run_id=f"{request.node.name}__{uuid.uuid4().hex[:8]}")


@pytest.fixture
def prefix(ti) -> str:
    """What the submission id of every try of the task starts with."""
    return ti.prefix()


def sdk_client(head: RayHead):
    """Ray's own client for `head`, independent of the hook under test."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.dashboard_url,
                               headers={"Authorization": f"Bearer {head.token}"})


def connect(head: RayHead, monkeypatch) -> None:
    """Point the Airflow connection `ray_faults` at `head` (token in the password)."""
    host, port = head.dashboard_url.removeprefix("http://").split(":")
    conn = {"conn_type": "http", "host": host, "port": int(port), "password": head.token}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))


def stop_active_jobs(client, prefix: str) -> list[str]:
    """Stop the task's jobs that are still PENDING/RUNNING; return their ids."""
    active = [sid for sid, status in job_statuses(client, prefix).items() if status in ACTIVE]
    for submission_id in active:
        client.stop_job(submission_id)
    return active


@pytest.fixture
def session_cluster(ray_head, monkeypatch, prefix) -> Iterator[Any]:
    """The session's head behind `ray_faults`; afterwards none of the task's jobs may run."""
    connect(ray_head, monkeypatch)
    client = sdk_client(ray_head)
    yield client
    assert stop_active_jobs(client, prefix) == []


class RestartableHead:
    """A head of one test alone, which the test may crash and restart on the same ports."""

    def __init__(self) -> None:
        self.current = start_ray_head(num_cpus=2)

    def crash_and_restart(self) -> None:
        """SIGKILL the head's process group, then start a new head with the same command."""
        self.current.crash()
        self.current = restart_ray_head(self.current)


@pytest.fixture
def own_head(monkeypatch, prefix) -> Iterator[RestartableHead]:
    """A restartable head behind `ray_faults`; its jobs stopped and the head stopped after."""
    head = RestartableHead()
    connect(head.current, monkeypatch)
    try:
        yield head
        assert stop_active_jobs(sdk_client(head.current), prefix) == []
    finally:
        head.current.stop()


def make_operator(hold: HoldJob, deferrable: bool) -> SubmitRayJobOperator:
    """The operator running the hold job (the same for every try, as in a DAG)."""
    return SubmitRayJobOperator(
        task_id=TASK_ID,
        entrypoint=hold.entrypoint,
        runtime_env={"working_dir": str(ENTRYPOINTS)},
        ray_conn_id=CONN_ID,
        deferrable=deferrable,
        poll_interval=0.3,
    )


def is_ticking(client, submission_id: str) -> bool:
    """Whether the job is RUNNING and its entrypoint has printed a couple of ticks."""
    if job_statuses(client, submission_id).get(submission_id) != "RUNNING":
        return False
    return "tick 1" in client.get_job_logs(submission_id)


def fault_during_first_try(op: SubmitRayJobOperator, ti: TaskInstanceStub, client, hold: HoldJob,
                           inject: Callable[[str], None]) -> tuple[BaseException | None, str]:
    """Run try 1 in a thread; once its job ticks, `inject(its submission id)` the fault.

    Returns:
        (the try's error, the submission id of its job).
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        first_try = pool.submit(run_task, op, ti)
        try:
            wait_until(lambda: any(is_ticking(client, sid)
                                   for sid in job_statuses(client, ti.prefix())),
                       what=f"{ti.prefix()}* running")
            (first_id,) = job_statuses(client, ti.prefix())
            inject(first_id)
            return first_try.exception(timeout=120), first_id
        except BaseException:
            hold.release()  # let the try end, so that the pool's shutdown does not hang
            raise


def retry(hold: HoldJob, ti: TaskInstanceStub, deferrable: bool) -> dict:
    """Release the job, then run try 2 with a fresh operator (as Airflow does)."""
    hold.release()
    ti.try_number = 2
    return run_task(make_operator(hold, deferrable), ti)


def assert_resubmitted_once(second: dict, hold: HoldJob, first_id: str) -> None:
    """Try 2 submitted a new job of the same task instance and it succeeded."""
    assert second["submission_id"] != first_id
    assert second["submission_id"].startswith(first_id[:-8])
    assert second["status"] == "SUCCEEDED"
    assert second["result"]["marker"] == hold.marker


def stop_from_outside(client, hold_job: HoldJob) -> Callable[[str], None]:
    """`ray job stop` / the SDK's stop_job, as an operator of the cluster would."""
    return client.stop_job


def sigkill_driver(client, hold_job: HoldJob) -> Callable[[str], None]:
    """SIGKILL the job's driver process (as the OOM killer would)."""
    def inject(_submission_id: str) -> None:
        # `exec` in front of the entrypoint: the driver is the only process with the marker
        [driver] = hold_job.processes()
        os.kill(driver.pid, signal.SIGKILL)
    return inject


# fault -> (injector, status try 1 ends with, what its error also says, the case's fault text)
OUTSIDE_FAULTS = {
    "stopped": (stop_from_outside, "STOPPED", "",
                "Ray job stopped from outside (`ray job stop` / SDK stop_job)"),
    "driver_sigkilled": (sigkill_driver, "FAILED", "exit code -9",
                         "Ray job's driver process SIGKILLed (found by pid via a marker on its "
                         "command line)"),
}


@WAIT_PATHS
@pytest.mark.parametrize("fault", sorted(OUTSIDE_FAULTS))
def test_job_killed_from_outside_fails_then_retry_resubmits_once(
        fault, deferrable, session_cluster, ti, prefix, hold_job, reliability_case):
    client = session_cluster
    injector, status, detail, injected = OUTSIDE_FAULTS[fault]
    error, first_id = fault_during_first_try(make_operator(hold_job, deferrable), ti, client,
                                             hold_job, inject=injector(client, hold_job))

    assert isinstance(error, RayJobError), error
    assert f"Ray job {first_id} ended with status {status}" in str(error)
    assert detail in str(error)
    second = retry(hold_job, ti, deferrable)

    assert_resubmitted_once(second, hold_job, first_id)
    assert job_statuses(client, prefix) == {first_id: status,
                                            second["submission_id"]: "SUCCEEDED"}
    reliability_case(
        f"{injected} while the operator waited "
        f"({'deferrable trigger' if deferrable else 'worker'})",
        f"try 1 failed with RayJobError (status {status}{', ' + detail if detail else ''}); "
        "try 2 submitted a new job of its task instance and succeeded",
        f"list_jobs: exactly {{<id>: {status}, <new id>: SUCCEEDED}}; no job left running")


@WAIT_PATHS
def test_head_restart_fails_clearly_then_retry_resubmits_once_on_new_head(
        deferrable, own_head, ti, prefix, hold_job, reliability_case, capfd):
    old_address = own_head.current.dashboard_url
    error, first_id = fault_during_first_try(make_operator(hold_job, deferrable), ti,
                                             sdk_client(own_head.current), hold_job,
                                             inject=lambda _sid: own_head.crash_and_restart())

    assert isinstance(error, RayJobError), error
    assert str(error) == (
        f"Ray job {first_id} is no longer known to the cluster at {old_address}: the head was "
        "probably restarted (without GCS fault tolerance it forgets its jobs); a retry will "
        "resubmit it")
    # the operator rode out the downtime (backoff), it did not crash on the first refusal
    assert f"Ray head at {old_address} unreachable" in capfd.readouterr().out
    # the crash took the job's driver with it: nothing of try 1 keeps running
    wait_until(lambda: not hold_job.processes(), timeout_s=30, what="old job's driver to die")
    second = retry(hold_job, ti, deferrable)

    assert_resubmitted_once(second, hold_job, first_id)
    assert job_statuses(sdk_client(own_head.current), prefix) == {
        second["submission_id"]: "SUCCEEDED"}
    reliability_case(
        f"Ray head SIGKILLed (process group) and restarted on the same ports/token while the "
        f"operator waited ({'deferrable trigger' if deferrable else 'worker'})",
        "status reads retried with backoff while the head was down; then the job was unknown: "
        "try 1 failed with 'no longer known to the cluster ... a retry will resubmit it'; "
        "try 2 resubmitted <new id> on the new head and succeeded",
        "no process of the old job alive (psutil); new head's list_jobs: exactly "
        "{<new id>: SUCCEEDED}")
