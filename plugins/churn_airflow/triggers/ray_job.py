"""Trigger that waits for a Ray job in the triggerer, streaming its log into the task log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from churn_airflow.hooks.ray_job import RayJobHook, RayJobNotFoundError, split_new_lines

STOP_GRACE_S = 60.0
# ``job_status`` of the event fired when the cluster no longer knows the job (head restarted).
JOB_NOT_FOUND = "NOT_FOUND"


# A dataclass: its fields are both the constructor's keyword arguments and the kwargs that
# ``serialize()`` returns, so the two cannot drift apart. Equality and repr stay BaseTrigger's.
@dataclass(kw_only=True, eq=False, repr=False)
class RayJobTrigger(BaseTrigger):
    """Poll a Ray job until it is terminal, then fire one event.

    New log lines are logged as they appear (Airflow 3 shows triggerer logs in the task log);
    the event carries ``log_offset`` so the resumed operator prints only what is left.
    Past ``deadline`` the job is stopped and the event reports ``timed_out``.
    A head that is down for a while is waited for (the hook retries); a job the head no longer
    knows (restarted without GCS fault tolerance) fires an error event with ``job_status``
    ``NOT_FOUND`` instead of polling forever.
    A user's kill (mark failed/success, clear) stops the job in ``on_kill``; a triggerer
    restart cancels ``run()`` without stopping the job, which the next triggerer re-attaches.

    :param submission_id: the Ray job's submission id.
    :param ray_conn_id: Airflow connection to the Jobs API.
    :param poll_interval: seconds between status checks.
    :param log_offset: characters of the job's log already shown.
    :param deadline: epoch seconds after which the job is stopped (None: no limit).
    :param stop_on_kill: stop the job when the user kills the task.
    """

    submission_id: str
    ray_conn_id: str = RayJobHook.default_conn_name
    poll_interval: float = 5.0
    log_offset: int = 0
    deadline: float | None = None
    stop_on_kill: bool = True

    def __post_init__(self) -> None:
        """Run ``BaseTrigger.__init__``, which the generated ``__init__`` does not call."""
        super().__init__()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs (every field) that rebuild this trigger in the triggerer."""
        return f"{type(self).__module__}.{type(self).__qualname__}", asdict(self)

    @cached_property
    def hook(self) -> RayJobHook:
        """A hook on the trigger's connection."""
        return RayJobHook(ray_conn_id=self.ray_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll status and log until the job is terminal or past its deadline; fire once."""
        try:
            event = await self._poll_until_done()
        except RayJobNotFoundError as exc:
            self.log.error("%s: the head was probably restarted", exc)
            event = self._event(JOB_NOT_FOUND, self.log_offset, timed_out=False)
        yield TriggerEvent(event)

    async def _poll_until_done(self) -> dict[str, Any]:
        """The polling loop of ``run``; returns the event payload."""
        from ray.job_submission import JobStatus

        offset = self.log_offset
        while True:
            status = JobStatus(await self.hook.async_get_job_status(self.submission_id))
            offset = await self._stream_log(offset, final=status.is_terminal())
            if status.is_terminal():
                return self._event(str(status), offset, timed_out=False)
            if self.deadline is not None and time.time() >= self.deadline:
                self.log.warning("Ray job %s passed its deadline; stopping it", self.submission_id)
                status = await self._stop_and_wait()
                offset = await self._stream_log(offset, final=True)
                return self._event(status, offset, timed_out=True)
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """Stop the Ray job when a user kills the deferred task (no orphan jobs)."""
        if self.stop_on_kill:
            await self.hook.async_stop_job(self.submission_id)

    async def _stream_log(self, offset: int, final: bool) -> int:
        """Log the job's lines after ``offset``; return the new offset."""
        text = await self.hook.async_get_job_logs(self.submission_id)
        lines, offset = split_new_lines(text, offset, final)
        for line in lines:
            self.log.info("[ray %s] %s", self.submission_id, line)
        return offset

    async def _stop_and_wait(self) -> str:
        """Stop the job and wait (bounded) until it is terminal; return its last status."""
        from ray.job_submission import JobStatus

        await self.hook.async_stop_job(self.submission_id)
        give_up_at = time.monotonic() + STOP_GRACE_S
        status = JobStatus(await self.hook.async_get_job_status(self.submission_id))
        while not status.is_terminal() and time.monotonic() < give_up_at:
            await asyncio.sleep(0.5)
            status = JobStatus(await self.hook.async_get_job_status(self.submission_id))
        return str(status)

    def _event(self, job_status: str, log_offset: int, timed_out: bool) -> dict[str, Any]:
        """The event payload: ``status`` is ``success`` only for a SUCCEEDED job."""
        ok = job_status == "SUCCEEDED" and not timed_out
        return {
            "status": "success" if ok else "error",
            "submission_id": self.submission_id,
            "job_status": job_status,
            "log_offset": log_offset,
            "timed_out": timed_out,
        }
