"""Which code made an output: three facts, three fields wherever they are written.

* `code_version`: the git commit of the checkout the code runs from, `-dirty` when tracked files
  differ from it; env `CHURN_CODE_VERSION` wins (an image built without `.git` can pin it);
  `unknown` outside git (a job running from a shipped copy of the code).
* `package_version`: the version of the `churn` package that is running (`churn.__version__`).
* `libraries`: the installed versions of the libraries that shape the outputs.

The run manifest (`churn.pipeline.publish_manifest`) and a model version's meta
(`ray_jobs/train.py`) write them under those names; step fragments carry `package_version`.
Standard library only; nothing runs at import.
"""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

CODE_VERSION_ENV = "CHURN_CODE_VERSION"
UNKNOWN = "unknown"
DIRTY_SUFFIX = "-dirty"
LIBRARIES = ("churn", "apache-airflow", "apache-airflow-providers-apache-spark",
             "apache-airflow-providers-amazon", "pyspark", "ray", "xgboost-cpu", "pandas",
             "pyarrow", "scikit-learn")
_GIT_TIMEOUT_S = 10


def code_version(checkout: str | Path) -> str:
    """The code's version: env `CHURN_CODE_VERSION`, else the git commit of `checkout`
    (`git rev-parse HEAD`, plus `-dirty` when a tracked file is modified), else `unknown`.

    Args:
        checkout: a directory inside the git checkout the code runs from.

    Returns:
        The pinned version, `<40-hex sha>[-dirty]`, or `unknown` (no git, or not a checkout).
    """
    pinned = os.environ.get(CODE_VERSION_ENV)
    if pinned:
        return pinned
    try:
        commit = _git(checkout, "rev-parse", "HEAD")
        changed = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return commit + (DIRTY_SUFFIX if changed else "")


def _git(checkout: str | Path, *args: str) -> str:
    """The stripped stdout of `git -C <checkout> <args>` (raises when git fails)."""
    return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                          check=True, timeout=_GIT_TIMEOUT_S).stdout.strip()


def package_version() -> str:
    """The running `churn` package's version (`churn.__version__`, as pyproject declares it).

    Read from the code itself rather than installed metadata: a zip shipped to Spark or Ray
    carries no distribution metadata.
    """
    from churn import __version__

    return __version__


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions of the libraries that shape the outputs (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
