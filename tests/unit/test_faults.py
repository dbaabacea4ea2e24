"""Fault points: `CHURN_KILL_AT` kills at one step, `CHURN_PAUSE_AT` makes callers meet."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from churn import faults
from churn.faults import (KILL_AT_ENV, PAUSE_AT_ENV, PAUSE_DIR_ENV, PAUSE_PARTIES_ENV,
                          MeetingTimeoutError, fault_point)
from tests.support.processes import REPO_ROOT, child_env

KILLED_AT = "from churn.faults import fault_point; fault_point('a'); fault_point('b'); print('end')"


class TestKillAt:
    @pytest.mark.parametrize("step, returncode, out", [("b", -9, ""), ("c", 0, "end\n")])
    def test_dies_only_at_the_named_step(self, step, returncode, out):
        child = subprocess.run([sys.executable, "-c", KILLED_AT], capture_output=True, text=True,
                               env=child_env(**{KILL_AT_ENV: step}), cwd=REPO_ROOT)
        assert (child.returncode, child.stdout) == (returncode, out)


class TestPauseAt:
    @pytest.fixture()
    def meetings(self, tmp_path, monkeypatch):
        monkeypatch.setenv(PAUSE_DIR_ENV, str(tmp_path))
        monkeypatch.setenv(PAUSE_AT_ENV, "first;second,other")
        return tmp_path

    def test_callers_meet_in_order_at_any_step_of_a_meeting(self, meetings):
        def caller(steps: list[str]) -> list[str]:
            passed = []
            for step in steps:
                fault_point(step)
                passed.append(step)
            return passed

        # "second" before "first" is not a meeting yet; then both meet at "first", and at the
        # second meeting through different steps of it.
        plans = [["second", "first", "second"], ["first", "other", "first"]]
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = [pool.submit(caller, plan) for plan in plans]
            done = [future.result(timeout=60) for future in running]
        assert done == plans
        assert [len(list((meetings / f"meeting-{i}").iterdir())) for i in (0, 1)] == [2, 2]

    def test_a_missing_party_fails_the_caller_instead_of_hanging(self, meetings, monkeypatch):
        monkeypatch.setattr(faults, "PAUSE_TIMEOUT_S", 0.2)
        monkeypatch.setenv(PAUSE_PARTIES_ENV, "2")
        with pytest.raises(MeetingTimeoutError, match="only 1 of 2 parties reached meeting-0"):
            fault_point("first")
        fault_point("unlisted")  # a step of no meeting never waits
