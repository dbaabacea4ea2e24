"""Driving SubmitRayJobOperator in tests without an Airflow scheduler.

A `TaskInstanceStub` stands in for the task instance; `run_task` plays one try the way Airflow
would (execute, and when it defers, the trigger's first event then `execute_complete`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class TaskInstanceStub:
    """The few task-instance attributes the operator reads, and the XComs it pushes."""

    dag_id: str
    run_id: str
    task_id: str = "train"
    map_index: int = -1
    try_number: int = 1
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def job_statuses(client, prefix: str) -> dict[str, str]:
    """`{submission_id: status}` of the submitted jobs whose id starts with `prefix` (all tries
    of a task). Drivers that connected with `ray.init` are listed too, with no submission id."""
    return {j.submission_id: str(j.status) for j in client.list_jobs()
            if (j.submission_id or "").startswith(prefix)}


def wait_until(check: Callable[[], bool], timeout_s: float = 90, what: str = "") -> None:
    """Poll `check` (bounded) until it holds."""
    stop_at = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > stop_at:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def defer(op, ti: TaskInstanceStub):
    """Run `execute` up to its deferral; return the trigger rebuilt from `serialize()`."""
    from airflow.sdk.exceptions import TaskDeferred
    from airflow.sdk.module_loading import import_string

    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": ti})
    assert deferred.value.method_name == "execute_complete"
    classpath, kwargs = deferred.value.trigger.serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    return rebuilt


def run_task(op, ti: TaskInstanceStub) -> dict[str, Any]:
    """One try of the operator, as Airflow runs it: returns its value or raises its error.

    A deferring operator's trigger (rebuilt from `serialize()`, as the triggerer does) runs to
    its first event, which is handed to `execute_complete`.
    """
    from airflow.sdk.exceptions import TaskDeferred
    from airflow.sdk.module_loading import import_string

    try:
        return op.execute({"ti": ti})
    except TaskDeferred as deferred:
        classpath, kwargs = deferred.trigger.serialize()
        trigger = import_string(classpath)(**kwargs)
        event = asyncio.run(trigger.run().__anext__())
        return getattr(op, deferred.method_name)({"ti": ti}, event.payload)
