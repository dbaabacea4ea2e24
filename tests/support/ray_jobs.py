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


class StateStoreStub(dict):
    """Airflow's `task_state_store` of one task instance: kept across its retries and clears."""

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self[key] = value

    def delete(self, key: str) -> None:
        self.pop(key, None)


@dataclass
class TaskInstanceStub:
    """The few task-instance attributes the operator reads, the XComs it pushes and its state
    store. A retry or a clear is `try_number += 1` on the same stub, as in Airflow."""

    dag_id: str
    run_id: str
    task_id: str = "train"
    map_index: int = -1
    try_number: int = 1
    xcoms: dict[str, Any] = field(default_factory=dict)
    state_store: StateStoreStub = field(default_factory=StateStoreStub)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value

    def context(self) -> dict[str, Any]:
        """The task context the operator gets: this instance and its state store."""
        return {"ti": self, "task_state_store": self.state_store}

    def prefix(self, namespace: str = "airflow") -> str:
        """What every submission id of this task instance starts with."""
        from churn_airflow.operators.ray_job import submission_prefix

        return submission_prefix(namespace, self.dag_id, self.run_id, self.task_id,
                                 self.map_index)


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
        op.execute(ti.context())
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
        return op.execute(ti.context())
    except TaskDeferred as deferred:
        classpath, kwargs = deferred.trigger.serialize()
        trigger = import_string(classpath)(**kwargs)
        event = asyncio.run(trigger.run().__anext__())
        return getattr(op, deferred.method_name)(ti.context(), event.payload)
