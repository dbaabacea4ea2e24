"""The remote job of a task's current try generation, kept in Airflow's task state store.

A *try generation* is what a user means by "this run of this task": its retries belong to it, a
clear (from the UI, the API, or `airflow backfill create --reprocess-behavior`) starts a new
one. Within a generation a retry must re-attach to the job it already started (a worker that
died while the job ran must not start a duplicate); a new generation must start a new job
("re-do this day" must recompute, not return the last result).

Airflow 3.3's `task_state_store` holds the job's id across tries of one task instance. It is
*not* wiped by a clear (only by `[state_store] clear_on_success`, a deployment-wide switch), and
`airflow.sdk.ResumableJobMixin` stores the id only after submitting and keeps it after success.
So the operators here use the store directly, with two rules that make generations explicit:

* the id is chosen and stored **before** the job is submitted, so a worker lost between the two
  leaves an id that the retry submits under (no orphaned, untracked job);
* the id is forgotten as soon as the task has seen the job end (success or failure), so the
  next try (a retry after a failed job, or a clear) submits a new job, while a try that died
  before the end re-attaches.

Without a store in the context (Airflow < 3.3 or an unusual runner) every try submits anew, with
a warning.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

# A stored id must outlive any retry delay; the store's own retention default is 30 days.
RETENTION = timedelta(days=30)


def new_token() -> str:
    """A short random token that makes a generation's job id unique (8 hex characters)."""
    return uuid.uuid4().hex[:8]


class TryGeneration:
    """The id of the remote job (Ray submission id, EMR step name) of this try generation.

    :param context: the task's context (holds ``task_state_store`` on Airflow 3.3+).
    :param key: the store key, e.g. ``ray_submission_id``.
    :param log: the operator's logger.
    """

    def __init__(self, context: Mapping[str, Any], key: str, log: Any) -> None:
        self.store = context.get("task_state_store")
        self.key = key
        self.log = log
        if self.store is None:
            log.warning("No task_state_store in the context: every try submits a new job "
                        "(retries cannot re-attach)")

    def current(self) -> str | None:
        """The job id this generation started, or None (a fresh generation)."""
        return self.store.get(self.key) if self.store is not None else None

    def begin(self, job_id: str) -> None:
        """Record the id of the job about to be submitted (call before submitting)."""
        if self.store is not None:
            self.store.set(self.key, job_id, retention=RETENTION)

    def end(self) -> None:
        """Forget the job: the task has seen it end, so the next try starts a new generation."""
        if self.store is not None and self.store.get(self.key) is not None:
            self.store.delete(self.key)
