"""Reliability cases: each test records what it injected, what the system did and what it checked.

Every case prints one line `injected: … / checked: …` and is collected; at session end the table
is merged (by test id) into the cases file and printed in the terminal summary, so the closing
note can quote each fault, the outcome and the rows in/out/rejected. The cases file is
`build/reliability_cases.json` (ignored by git), or the path in `CHURN_RELIABILITY_CASES`
(relative to the repository); `make reliability-table` copies it to the tracked
`bench/results/reliability_cases.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import raw_day

REPO_ROOT = Path(__file__).resolve().parents[2]
CASES_ENV = "CHURN_RELIABILITY_CASES"
DEFAULT_CASES_FILE = REPO_ROOT / "build" / "reliability_cases.json"
_CASES: dict[str, dict] = {}


def cases_file() -> Path:
    """Where this session's cases go: `$CHURN_RELIABILITY_CASES` when set, else build/."""
    chosen = os.environ.get(CASES_ENV)
    return REPO_ROOT / chosen if chosen else DEFAULT_CASES_FILE


@pytest.fixture()
def reliability_case(request) -> Callable[..., dict]:
    """Record one case of the current test: `record(injected, outcome, checked, rows=...)`.

    `rows` is the `rows_in/rows_out/rows_rejected` dict of the table the fault went into (None
    for a case that fails before counting). A test may record several cases (one per table).
    """
    def record(injected: str, outcome: str, checked: str, rows: dict | None = None) -> dict:
        key = f"{request.node.nodeid}#{sum(k.startswith(request.node.nodeid) for k in _CASES)}"
        counts = {k: (rows or {}).get(k) for k in ("rows_in", "rows_out", "rows_rejected")}
        case = {"test": request.node.nodeid, "injected": injected, "system_did": outcome,
                "checked": checked, **counts, "status": "running"}
        _CASES[key] = case
        print(f"injected: {injected} / checked: {checked}")
        return case

    return record


def pytest_runtest_logreport(report) -> None:
    """Mark the cases of a finished test passed or failed."""
    if report.when != "call":
        return
    for case in _CASES.values():
        if case["test"] == report.nodeid:
            case["status"] = report.outcome


def pytest_sessionfinish(session, exitstatus) -> None:
    """Merge this session's cases into the cases file (other tests' entries are kept)."""
    if not _CASES:
        return
    fresh = list(_CASES.values())
    ran = {case["test"] for case in fresh}
    target = cases_file()
    try:
        kept = [c for c in json.loads(target.read_text())["cases"] if c["test"] not in ran]
    except (OSError, ValueError, KeyError, TypeError):
        kept = []
    target.parent.mkdir(parents=True, exist_ok=True)
    cases = sorted(kept + fresh, key=lambda c: c["test"])
    target.write_text(json.dumps({"cases": cases}, indent=2) + "\n")


def pytest_terminal_summary(terminalreporter) -> None:
    """Print this session's cases as a table."""
    if not _CASES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability cases")
    write(f"{'status':7} {'in':>5} {'out':>5} {'rej':>4}  injected -> system did")
    for case in _CASES.values():
        counts = [("-" if case[k] is None else str(case[k]))
                  for k in ("rows_in", "rows_out", "rows_rejected")]
        write(f"{case['status']:7} {counts[0]:>5} {counts[1]:>5} {counts[2]:>4}  "
              f"{case['injected']} -> {case['system_did']}")
    write(f"(table written to {cases_file()})")


# The raw-day world of the bad-input and real-world-file modules; each module's `specs` fixture
# (a dict with at least `csv` and `parquet`) decides the specs it is generated with.
@pytest.fixture(scope="module")
def base_roots(tmp_path_factory, specs) -> dict[str, Path]:
    """Clean generated data sets, one per raw format (copied by each test, never edited)."""
    return raw_day.generate_bases(tmp_path_factory, specs)


@pytest.fixture(scope="module")
def clean_root(spark, tmp_path_factory, base_roots, specs) -> Path:
    """The clean CSV data set with DAY's features built: what a correctly read delivery gives."""
    root = raw_day.copy_world(base_roots["csv"], tmp_path_factory.mktemp("clean"))
    raw_day.build(spark, root, specs["csv"])
    return root


@pytest.fixture()
def root(tmp_path, base_roots) -> Path:
    """A private copy of the clean CSV data set."""
    return raw_day.copy_world(base_roots["csv"], tmp_path)
