"""Fault points: named steps at which a reliability test can make this process die or wait.

A writer calls `fault_point("swap:exchanged")` at each step it must survive being killed at, or
that a test must be able to make concurrent callers meet at. With the variables below unset
(always, outside tests) it does nothing.

* `CHURN_KILL_AT=<step>`: the process SIGKILLs itself at that step: no cleanup, no `finally`,
  as a real crash.
* `CHURN_PAUSE_AT=<meeting>;<meeting>...` with `CHURN_PAUSE_DIR=<dir>` (shared by the parties)
  and `CHURN_PAUSE_PARTIES=<n>` (default 2): each meeting is a comma-separated list of steps, a
  rendezvous. A caller (a process or a thread) that reaches one of a meeting's steps waits there
  until `n` callers have reached that meeting, at any of its steps; then all go on. Each caller
  meets the meetings once each, in the order listed: a step of a later meeting reached before
  the earlier ones have been met, and a meeting met already, are passed without waiting. Two
  gates can so be made to decide before either switches the champion, then to both stand at the
  champion lock's critical section (one inside it, the other at its door) before either
  switches. A meeting not complete within `PAUSE_TIMEOUT_S` raises: a test fails, never hangs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

KILL_AT_ENV = "CHURN_KILL_AT"
PAUSE_AT_ENV = "CHURN_PAUSE_AT"
PAUSE_DIR_ENV = "CHURN_PAUSE_DIR"
PAUSE_PARTIES_ENV = "CHURN_PAUSE_PARTIES"
PAUSE_TIMEOUT_S = 120.0
_POLL_S = 0.005


class MeetingTimeoutError(RuntimeError):
    """Not every party reached a `CHURN_PAUSE_AT` meeting in time."""


def fault_point(step: str) -> None:
    """Die with SIGKILL here when `CHURN_KILL_AT` equals `step`; wait here when `step` belongs
    to the caller's next `CHURN_PAUSE_AT` meeting; otherwise return at once."""
    if os.environ.get(KILL_AT_ENV) == step:
        print(f"fault point {step}: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    meetings = os.environ.get(PAUSE_AT_ENV)
    if meetings:
        _meet_if_next(step, [m.split(",") for m in meetings.split(";")])


def _meet_if_next(step: str, meetings: list[list[str]]) -> None:
    """Meet the caller's first meeting not met yet, when `step` is one of its steps."""
    directory = Path(os.environ[PAUSE_DIR_ENV])
    caller = f"{os.getpid()}-{threading.get_native_id()}"
    for index, steps in enumerate(meetings):
        arrived = directory / f"meeting-{index}"
        if (arrived / caller).exists():
            continue
        if step in steps:
            _meet(arrived, caller, int(os.environ.get(PAUSE_PARTIES_ENV, "2")), step)
        return


def _meet(arrived: Path, caller: str, parties: int, step: str) -> None:
    """Record the caller's arrival, then wait until `parties` callers have arrived.

    The wait is on that condition (the arrival files of every party exist); the short poll is
    only its back-off.

    Raises:
        MeetingTimeoutError: fewer than `parties` arrived within `PAUSE_TIMEOUT_S`.
    """
    arrived.mkdir(parents=True, exist_ok=True)
    (arrived / caller).touch()
    print(f"fault point {step}: waiting for {parties} parties", file=sys.stderr, flush=True)
    stop_at = time.monotonic() + PAUSE_TIMEOUT_S
    while len(os.listdir(arrived)) < parties:
        if time.monotonic() > stop_at:
            raise MeetingTimeoutError(
                f"fault point {step}: only {len(os.listdir(arrived))} of {parties} parties "
                f"reached {arrived.name} within {PAUSE_TIMEOUT_S}s")
        time.sleep(_POLL_S)
