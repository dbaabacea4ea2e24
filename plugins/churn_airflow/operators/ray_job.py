"""Operator that runs one Ray job through the Jobs API and returns its result.

Contract with the entrypoint: it is an argv list (no shell parses a rendered value), and it
prints its result as ONE JSON object on its LAST log line; the operator returns
``{"submission_id": ..., "status": "SUCCEEDED", "result": <that object or None>}`` (the task's
XCom return value) and pushes the submission id as XCom ``submission_id``.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.configuration import conf

from churn_airflow.hooks.ray_job import (
    ACTIVE_STATUSES,
    RayJobError,
    RayJobHook,
    RayJobNotFoundError,
    last_lines,
    parse_result,
)
from churn_airflow.resumable import TryGeneration, new_token
from churn_airflow.triggers.ray_job import JOB_NOT_FOUND, STOP_GRACE_S, RayJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey
    from ray.job_submission import JobDetails

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
STATE_KEY = "ray_submission_id"


def submission_prefix(namespace: str, dag_id: str, run_id: str, task_id: str,
                      map_index: int) -> str:
    """What every submission id of a task instance starts with, in every try generation.

    The deployment namespace and readable dag/task names, then a digest of the exact (dag, run,
    task, map index) tuple.

    Args:
        namespace: the deployment's namespace (``[A-Za-z0-9_.-]``, at most 32 characters).
        dag_id: the DAG's id.
        run_id: the DAG run's id.
        task_id: the task's id.
        map_index: the mapped index (-1 when not mapped).

    Returns:
        ``af-<namespace>-<dag>-<task>-<16 hex>-`` (``[A-Za-z0-9_.-]``, at most 119 long).
    """
    digest = hashlib.sha256(f"{dag_id}\n{run_id}\n{task_id}\n{map_index}".encode()).hexdigest()
    readable = _UNSAFE_ID_CHARS.sub("_", f"{dag_id}-{task_id}")[:60]
    return f"af-{namespace}-{readable}-{digest[:16]}-"


def submission_id(prefix: str, token: str) -> str:
    """The submission id of one try generation: its task's prefix and the generation's token.

    The token (``churn_airflow.resumable.new_token``) is new for every generation, so two
    deployments, a reset metadata DB or a cleared task never reuse an id, while the tries of
    one generation share it (it is kept in the task state store).
    """
    return f"{prefix}{token}"


def exec_command(argv: Sequence[str]) -> str:
    """The shell command Ray runs for an argv list: ``exec`` and every word quoted by ``shlex``.

    Ray runs an entrypoint with ``/bin/sh -c``; quoting each rendered word means no value (a
    param, a Variable) is ever parsed by that shell. ``exec`` makes the driver the job
    supervisor's child instead of a grandchild behind ``sh``: when the head crashes, Ray (2.60)
    kills only the supervisor's children, so without ``exec`` the driver would live on as an
    orphan while the task's retry starts a second copy.

    Args:
        argv: the rendered command, e.g. ``["python", "train.py", "--ds", "2025-03-01"]``.

    Returns:
        ``exec 'python' 'train.py' …`` (words quoted only where needed).
    """
    return f"exec {shlex.join(str(word) for word in argv)}"


class RayJobLink(BaseOperatorLink):
    """The Ray dashboard's page of the task's job (a button on the task in the Airflow UI)."""

    name = "Ray job"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The dashboard URL of the job the operator submitted or re-attached to ("" if none)."""
        return getattr(operator, "job_url", "") or ""


def _seconds(value: timedelta | float | None) -> float | None:
    """A duration in seconds (None stays None)."""
    return value.total_seconds() if isinstance(value, timedelta) else value


@dataclass(frozen=True)
class WaitOptions:
    """How ``SubmitRayJobOperator`` waits for its job: its arguments of the same names."""

    wait_for_completion: bool
    deferrable: bool
    poll_interval: float
    job_timeout: float | None
    log_tail_lines: int

    def __post_init__(self) -> None:
        """Raise ValueError when the options do not fit together."""
        if self.deferrable and not self.wait_for_completion:
            raise ValueError("deferrable=True waits in the triggerer: it needs wait_for_completion")
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {self.poll_interval}")
        if self.job_timeout is not None and self.job_timeout <= 0:
            raise ValueError(f"job_timeout must be > 0 seconds, got {self.job_timeout}")
        if self.job_timeout is not None and not self.wait_for_completion:
            raise ValueError("job_timeout needs wait_for_completion (nobody watches the job)")


class SubmitRayJobOperator(BaseOperator):
    """Submit a Ray job, wait for it while streaming its log, and return its result.

    Retries re-attach, clears recompute (see ``churn_airflow.resumable``): the submission id of
    a try generation is kept in Airflow's task state store. A retry whose generation's job is
    PENDING/RUNNING re-attaches to it, one whose job SUCCEEDED returns its result; once a try
    has seen its job end, the next try (a retry after a failure, or a clear) submits a new job.

    :param entrypoint: the command as an argv list (templated); it is quoted word by word and
        run with ``exec``, so no rendered value reaches a shell.
    :param runtime_env: Ray runtime_env (``working_dir``, ``py_modules``, ...; templated).
    :param entrypoint_num_cpus: CPUs reserved for the entrypoint process.
    :param metadata: string key/values stored with the job; Airflow ids are added (templated).
    :param namespace: the deployment's namespace in every submission id (templated;
        ``[A-Za-z0-9_.-]``, at most 32 characters), so deployments sharing a cluster never
        collide.
    :param ray_conn_id: Airflow connection to the Jobs API.
    :param wait_for_completion: wait for the job to end; if False, return once submitted.
    :param deferrable: wait in the triggerer (``RayJobTrigger``) instead of the worker.
    :param poll_interval: seconds between status checks.
    :param job_timeout: stop the job and fail the task after this long (from job start).
    :param log_tail_lines: log lines quoted in the error of a failed job.
    """

    template_fields: Sequence[str] = ("entrypoint", "runtime_env", "metadata", "namespace")
    template_fields_renderers = {"runtime_env": "json", "metadata": "json"}
    operator_extra_links = (RayJobLink(),)
    ui_color = "#cfe3f7"

    def __init__(
        self,
        *,
        entrypoint: Sequence[str],
        runtime_env: dict[str, Any] | None = None,
        entrypoint_num_cpus: float | None = None,
        metadata: dict[str, str] | None = None,
        namespace: str = "airflow",
        ray_conn_id: str = RayJobHook.default_conn_name,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 5.0,
        job_timeout: timedelta | float | None = None,
        log_tail_lines: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_entrypoint(entrypoint, entrypoint_num_cpus)
        self.entrypoint = list(entrypoint)
        self.runtime_env = runtime_env
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self.metadata = metadata
        self.namespace = namespace
        self.ray_conn_id = ray_conn_id
        self.wait_options = WaitOptions(wait_for_completion, deferrable, poll_interval,
                                        _seconds(job_timeout), log_tail_lines)
        self.submission_id: str | None = None

    @cached_property
    def hook(self) -> RayJobHook:
        """The Jobs API hook (built on first use, never in ``__init__``)."""
        return RayJobHook(ray_conn_id=self.ray_conn_id)

    @property
    def job_url(self) -> str:
        """The Ray dashboard's page of the current job ("" before one is known)."""
        if not self.submission_id:
            return ""
        return f"{self.hook.settings.address.rstrip('/')}/#/jobs/{self.submission_id}"

    def execute(self, context: Context) -> dict[str, Any]:
        """Re-attach to this generation's job or submit one, then wait, defer or return."""
        generation = TryGeneration(context, STATE_KEY, self.log)
        previous = self._generation_job(generation)
        if previous is not None and previous.status == "SUCCEEDED":
            self.log.info("Ray job %s of this try generation already SUCCEEDED: returning its "
                          "result", previous.submission_id)
            self._record(context, previous.submission_id)
            return self._finish(context, previous.submission_id, "SUCCEEDED")
        if previous is not None and previous.status in ACTIVE_STATUSES:
            self.log.info("Re-attaching to Ray job %s (%s)", previous.submission_id, previous.status)
            self._record(context, previous.submission_id)
        else:
            self._record(context, self._submit(context, generation, previous))
        if not self.wait_options.wait_for_completion:
            generation.end()  # nobody watches the job: a clear must submit a new one
            status = str(self.hook.get_job_status(self.submission_id))
            return {"submission_id": self.submission_id, "status": status, "result": None}
        deadline = self._deadline(self.submission_id)
        if self.wait_options.deferrable:
            self.defer(
                trigger=RayJobTrigger(
                    submission_id=self.submission_id,
                    ray_conn_id=self.ray_conn_id,
                    poll_interval=self.wait_options.poll_interval,
                    deadline=deadline,
                ),
                method_name="execute_complete",
            )
        status, timed_out = self._wait(context, self.submission_id, deadline)
        return self._finish(context, self.submission_id, status, timed_out=timed_out)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after ``RayJobTrigger``: print the rest of the log, then finish or raise."""
        self.submission_id = event["submission_id"]
        if event["job_status"] == JOB_NOT_FOUND:
            TryGeneration(context, STATE_KEY, self.log).end()
            raise RayJobError(self._lost_job_message(self.submission_id))
        self._emit_new_lines(self.submission_id, event["log_offset"], final=True)
        if event["status"] != "success":
            TryGeneration(context, STATE_KEY, self.log).end()
            self._raise_failed(event["submission_id"], event["job_status"], event["timed_out"])
        return self._finish(context, self.submission_id, event["job_status"])

    def on_kill(self) -> None:
        """Stop the job this task is waiting for (no orphan job after a kill)."""
        if self.submission_id and self.wait_options.wait_for_completion:
            self.hook.stop_job(self.submission_id)

    def _generation_job(self, generation: TryGeneration) -> JobDetails | None:
        """The job this try generation recorded, if the cluster knows it."""
        recorded = generation.current()
        if recorded is None:
            return None
        found = self.hook.find_job(recorded)
        if found is None:
            self.log.info("Ray job %s of this try generation was never submitted or is gone",
                          recorded)
        return found

    def _record(self, context: Context, submission_id: str) -> None:
        """Remember the job: on the operator (log lines, link) and as XCom ``submission_id``."""
        self.submission_id = submission_id
        context["ti"].xcom_push(key="submission_id", value=submission_id)

    def _submit(self, context: Context, generation: TryGeneration,
                previous: JobDetails | None) -> str:
        """Submit the job under a new id, recorded in the task state store before submitting.

        An id the generation recorded but the cluster never got (the worker died in between)
        is submitted as it is; a job of this generation that ended FAILED/STOPPED is replaced.
        """
        ti = context["ti"]
        recorded = generation.current()
        if recorded is not None and previous is None:
            new_id = recorded
        else:
            prefix = submission_prefix(_checked_namespace(self.namespace), ti.dag_id, ti.run_id,
                                       ti.task_id, ti.map_index)
            new_id = submission_id(prefix, new_token())
            generation.begin(new_id)
        if previous is not None:
            self.log.info("Ray job %s of this try generation ended %s: submitting %s",
                          previous.submission_id, previous.status, new_id)
        airflow_ids = {
            "airflow_dag_id": ti.dag_id,
            "airflow_run_id": ti.run_id,
            "airflow_task_id": ti.task_id,
            "airflow_map_index": str(ti.map_index),
            "airflow_try_number": str(ti.try_number),
            "airflow_namespace": self.namespace,
        }
        command = exec_command(self.entrypoint)
        self.log.info("Submitting Ray job %s: %s", new_id, command)
        return self.hook.submit_job(
            entrypoint=command,
            submission_id=new_id,
            runtime_env=self.runtime_env,
            metadata={**airflow_ids, **(self.metadata or {})},
            entrypoint_num_cpus=self.entrypoint_num_cpus,
        )

    def _deadline(self, submission_id: str) -> float | None:
        """Epoch seconds at which the job is stopped: job start + ``job_timeout``."""
        job_timeout = self.wait_options.job_timeout
        if job_timeout is None:
            return None
        started_ms = self.hook.get_job_info(submission_id).start_time
        started = started_ms / 1000 if started_ms else time.time()
        return started + job_timeout

    def _wait(self, context: Context, submission_id: str,
              deadline: float | None) -> tuple[str, bool]:
        """Poll in the worker until the job is terminal or past ``deadline``, streaming logs.

        The hook's reads ride out a head that is down for a while; a job the (restarted) head
        no longer knows fails the task at once instead of polling forever.

        Returns:
            (the job's final status, whether it was stopped for passing the deadline).
        """
        try:
            return self._poll_until_done(submission_id, deadline)
        except RayJobNotFoundError as exc:
            TryGeneration(context, STATE_KEY, self.log).end()
            raise RayJobError(self._lost_job_message(submission_id)) from exc

    def _lost_job_message(self, submission_id: str) -> str:
        """Why a job the cluster no longer knows failed the task, and what a retry does."""
        return (
            f"Ray job {submission_id} is no longer known to the cluster at "
            f"{self.hook.settings.address}: the head was probably restarted (without GCS fault "
            "tolerance it forgets its jobs); a retry will resubmit it"
        )

    def _poll_until_done(self, submission_id: str, deadline: float | None) -> tuple[str, bool]:
        """The polling loop of ``_wait``."""
        offset = 0
        while True:
            status = self.hook.get_job_status(submission_id)
            offset = self._emit_new_lines(submission_id, offset, final=status.is_terminal())
            if status.is_terminal():
                return str(status), False
            if deadline is not None and time.time() >= deadline:
                self.log.warning("Ray job %s passed job_timeout; stopping it", submission_id)
                status = self._stop_and_wait(submission_id)
                self._emit_new_lines(submission_id, offset, final=True)
                return status, True
            time.sleep(self.wait_options.poll_interval)

    def _stop_and_wait(self, submission_id: str) -> str:
        """Stop the job and poll (bounded) until it is terminal; return its last status."""
        self.hook.stop_job(submission_id)
        give_up_at = time.monotonic() + STOP_GRACE_S
        status = self.hook.get_job_status(submission_id)
        while not status.is_terminal() and time.monotonic() < give_up_at:
            time.sleep(0.5)
            status = self.hook.get_job_status(submission_id)
        return str(status)

    def _emit_new_lines(self, submission_id: str, offset: int, final: bool) -> int:
        """Log the job's lines after ``offset`` into the task log; return the new offset."""
        lines, offset = self.hook.get_new_log_lines(submission_id, offset, final)
        for line in lines:
            self.log.info("[ray %s] %s", submission_id, line)
        return offset

    def _finish(self, context: Context, submission_id: str, status: str,
                timed_out: bool = False) -> dict[str, Any]:
        """The task's return value for a SUCCEEDED job; raise for any other end.

        Either way the task has seen the job end, so the generation forgets it.
        """
        TryGeneration(context, STATE_KEY, self.log).end()
        if status != "SUCCEEDED" or timed_out:
            self._raise_failed(submission_id, status, timed_out)
        result = parse_result(self.hook.get_job_logs(submission_id), submission_id)
        self.log.info("Ray job %s SUCCEEDED with result %s", submission_id, result)
        return {"submission_id": submission_id, "status": status, "result": result}

    def _raise_failed(self, submission_id: str, status: str, timed_out: bool) -> None:
        """Raise ``RayJobError`` quoting the job's message and its last log lines."""
        info = self.hook.get_job_info(submission_id)
        options = self.wait_options
        tail = last_lines(self.hook.get_job_logs(submission_id), options.log_tail_lines)
        reason = f"stopped after job_timeout={options.job_timeout}s" if timed_out else "ended"
        if status in ACTIVE_STATUSES:
            reason = f"{reason} but Ray has not stopped it yet"
        raise RayJobError(
            f"Ray job {submission_id} {reason} with status {status}: {info.message}\n"
            f"Last {len(tail)} log lines:\n" + "\n".join(tail)
        )


def _checked_namespace(namespace: str) -> str:
    """The rendered namespace, or ValueError when it cannot be part of a submission id."""
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
    return namespace


def _check_entrypoint(entrypoint: Sequence[str], entrypoint_num_cpus: float | None) -> None:
    """Raise ValueError unless the entrypoint is an argv list and its CPUs are not negative."""
    if isinstance(entrypoint, str) or not entrypoint or not all(
            isinstance(word, str) for word in entrypoint):
        raise ValueError("entrypoint must be a non-empty argv list of strings, e.g. "
                         f"['python', 'train.py'], got {entrypoint!r}")
    if entrypoint_num_cpus is not None and entrypoint_num_cpus < 0:
        raise ValueError(f"entrypoint_num_cpus must be >= 0, got {entrypoint_num_cpus}")
