"""Ship the `churn` package to Spark: a deterministic zip for `--py-files` (local or on S3).

The zip is built at run time (never at DAG parse time) from the installed package's sources. Its
name carries a digest of its content, so the same code always gives the same file (and the same
S3 key), and a changed file gives a new one; an existing zip of that content is reused.

What ships is the package minus `LOCAL_ONLY`, the modules no job runs; Ray's upload of the
package (`ray_excludes`, used by `churn_airflow.ray_runtime`) leaves out the same files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path

PACKAGE_NAME = "churn"
# Modules that run only where the repo is checked out, never in a Spark or Ray job: the synthetic
# data generator (raw days, their faults and the oracle, for tests and the demo) and the demo's
# summary. No shipped module imports them (tests/unit/test_packaging.py checks it), so they stay
# out of what is shipped: a job runs only the code it needs.
LOCAL_ONLY = frozenset({"generate.py", "generate_model.py", "generate_faults.py", "demo.py"})
_EXCLUDED_DIRS = {"__pycache__"}
_EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: same sources, same bytes


def package_dir() -> Path:
    """The directory of the installed `churn` package (its sources)."""
    return Path(__file__).resolve().parent


def package_files(source: Path) -> list[Path]:
    """The files to ship from a package directory, sorted, without caches, bytecode and the
    `LOCAL_ONLY` modules.

    Args:
        source: the package directory.

    Returns:
        Paths of every shipped file under `source`.
    """
    return sorted(
        path for path in source.rglob("*")
        if path.is_file()
        and not _EXCLUDED_DIRS.intersection(path.relative_to(source).parts)
        and path.suffix not in _EXCLUDED_SUFFIXES
        and path.relative_to(source).as_posix() not in LOCAL_ONLY
    )


def ray_excludes() -> list[str]:
    """`runtime_env` `excludes` patterns (gitignore syntax, relative to each uploaded directory)
    that leave out of a `py_modules` upload of the package what `package_files` leaves out.

    Ray applies them to the job's `working_dir` as well: a `LOCAL_ONLY` name at its top, a
    cache or bytecode there is not uploaded either.
    """
    return [*(f"{name}/" for name in sorted(_EXCLUDED_DIRS)),
            *(f"*{suffix}" for suffix in sorted(_EXCLUDED_SUFFIXES)),
            *(f"/{name}" for name in sorted(LOCAL_ONLY))]


def digest_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """A SHA-256 hex digest over file names (relative to `root`) and contents.

    Args:
        paths: the files, in a stable order.
        root: names are taken relative to it (default: the bare file name).

    Returns:
        The hex digest.
    """
    sha = hashlib.sha256()
    for path in paths:
        name = path.relative_to(root).as_posix() if root else path.name
        sha.update(name.encode() + b"\0")
        sha.update(path.read_bytes() + b"\0")
    return sha.hexdigest()


def build_package_zip(dest_dir: str | Path | None = None, source: Path | None = None) -> Path:
    """Build (or reuse) `churn-<digest12>.zip` holding `churn/...` for `--py-files`.

    Args:
        dest_dir: where to put the zip (default: `<tmp>/churn-pyfiles`).
        source: the package directory (default: the installed `churn`).

    Returns:
        The zip's path. Written to a temp name then renamed, so concurrent builders are safe.
    """
    source = source or package_dir()
    dest = Path(dest_dir) if dest_dir else Path(tempfile.gettempdir()) / "churn-pyfiles"
    files = package_files(source)
    target = dest / f"{PACKAGE_NAME}-{digest_files(files, source)[:12]}.zip"
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f"_tmp-{uuid.uuid4().hex}.zip"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            name = f"{PACKAGE_NAME}/{path.relative_to(source).as_posix()}"
            entry = zipfile.ZipInfo(name, _ZIP_DATE)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, path.read_bytes())
    os.replace(tmp, target)
    return target
