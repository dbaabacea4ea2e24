"""What a failed day calls: a notifier hook, a no-op beyond one log line by default.

The DAG passes `failure_notifiers()` as its `on_failure_callback`. To be told of failed days,
add one of Airflow's notifiers there (README "Configuration", e.g. `SmtpNotifier` from the smtp
provider, or `SlackNotifier` from the slack provider); each gets the failed run's context.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


def failed_day_message(context: dict[str, Any]) -> str:
    """One line naming the failed run: DAG, run id, the day it processes and the reason."""
    run = context.get("dag_run")
    dag_id = getattr(run, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    run_id = getattr(run, "run_id", None) or context.get("run_id", "?")
    return (f"churn day failed: dag {dag_id} run {run_id} ds={context.get('ds', '?')} "
            f"reason: {context.get('reason') or context.get('exception') or 'see the task logs'}")


class FailedDayLogNotifier(BaseNotifier):
    """The default notifier: log the failed day as an error (nothing leaves the process)."""

    def notify(self, context: dict[str, Any]) -> None:
        """Log `failed_day_message(context)`."""
        log.error("%s", failed_day_message(context))


def failure_notifiers() -> list[BaseNotifier]:
    """The DAG's failure notifiers: the log line, then whatever the deployment adds here."""
    return [FailedDayLogNotifier()]
