"""Ray wiring of this repo: the `runtime_env` that ships its Ray jobs and the `churn` package.

The Ray counterpart of `churn_airflow.spark`: `SubmitRayJobOperator` is generic (any entrypoint,
any runtime_env); this module knows where this repo keeps its jobs (`ray_jobs/`) and its package
(`include/churn`), and uploads the package as `churn.packaging` ships it to Spark (without its
`LOCAL_ONLY` modules).

    from churn_airflow.ray_runtime import churn_runtime_env
    SubmitRayJobOperator(task_id="train", entrypoint=[...], runtime_env=churn_runtime_env(REPO))

Pure: no I/O, nothing read from the environment (safe at DAG parse time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from churn.packaging import ray_excludes


def churn_runtime_env(
    repo_root: str | Path,
    *,
    working_dir: str | Path | None = None,
    env_vars: Mapping[str, str] | None = None,
    pip: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A runtime_env that ships the repo's Ray jobs and the `churn` package to the cluster.

    Args:
        repo_root: the project's checkout (holds `ray_jobs/` and `include/churn`).
        working_dir: the job's working directory; defaults to `<repo_root>/ray_jobs`.
        env_vars: environment variables of the job.
        pip: extra pip requirements installed for the job.

    Returns:
        A runtime_env dict (`working_dir`, `py_modules`, `excludes` and the optional keys).
    """
    root = Path(repo_root)
    runtime_env: dict[str, Any] = {
        "working_dir": str(working_dir or root / "ray_jobs"),
        "py_modules": [str(root / "include" / "churn")],
        # what the Spark zip leaves out; bytecode caches would also change the package hash,
        # forcing a new upload per submission
        "excludes": ray_excludes(),
    }
    if env_vars:
        runtime_env["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env
