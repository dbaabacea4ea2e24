"""Fault points: named steps at which a reliability test can make this process die on purpose.

A writer calls `fault_point("swap:exchanged")` at each step it must survive being killed at.
With `CHURN_KILL_AT` unset (always, outside tests) it does nothing; when the variable names
the step, the process SIGKILLs itself there: no cleanup, no `finally`, as a real crash.
"""

from __future__ import annotations

import os
import signal
import sys

KILL_AT_ENV = "CHURN_KILL_AT"


def fault_point(step: str) -> None:
    """Die with SIGKILL here when `CHURN_KILL_AT` equals `step`; otherwise return at once."""
    if os.environ.get(KILL_AT_ENV) == step:
        print(f"fault point {step}: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
