"""What `churn.versions` must report, asked of git and of the installed distributions directly."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path


def _git(checkout: str | Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def expected_code_version(checkout: str | Path) -> str:
    """`CHURN_CODE_VERSION` when set, else `git rev-parse HEAD` of the checkout plus `-dirty`
    iff `git status --porcelain` lists a modified tracked file."""
    pinned = os.environ.get("CHURN_CODE_VERSION")
    if pinned:
        return pinned
    dirty = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    return _git(checkout, "rev-parse", "HEAD") + ("-dirty" if dirty else "")


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """`importlib.metadata.version(name)` of each name (the test environment installs them all)."""
    return {name: metadata.version(name) for name in names}
