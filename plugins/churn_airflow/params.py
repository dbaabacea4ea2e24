"""The DAG's Params that reach a path, a command or the registry, validated by the form itself.

Airflow validates a run's params against these JSON schemas in the trigger form, in the REST API
(`POST /dagRuns` answers 400) and in the CLI, so a hostile value (a quote, `;`, `$()`, a
backtick, a newline, `..`) is refused before any task runs. Commands are argv lists as well
(`SubmitRayJobOperator`), so validation is a second wall, not the only one.

`dataset_spec` is one of the deployment's registered specs: the repo's `include/datasets/*.yaml`
(listed when the DAG file is parsed; no other I/O) plus the specs the env variable
`CHURN_DATASET_SPECS` registers (comma-separated absolute paths or `s3://` URIs). Its default is
env `CHURN_DATASET_SPEC`, else `include/datasets/synthetic.yaml`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from airflow.sdk import Param

DATASETS_DIR = "include/datasets"
DEFAULT_SPEC = f"{DATASETS_DIR}/synthetic.yaml"
# A registered spec outside the repo: an absolute path or an s3:// URI of plain path characters.
_EXTRA_SPEC = re.compile(r"^(s3://[a-z0-9][a-z0-9.-]{1,62}/|/)[A-Za-z0-9_./=+-]*\.ya?ml$")
EMR_CLUSTER_ID_PATTERN = r"^(j-[A-Z0-9]{5,20})?$"


def repo_specs(repo_root: str | Path) -> list[str]:
    """The repo's dataset specs, repo-relative (`include/datasets/<name>.yaml`), sorted."""
    folder = Path(repo_root) / DATASETS_DIR
    return sorted(f"{DATASETS_DIR}/{path.name}" for path in folder.glob("*.yaml")
                  if re.fullmatch(r"[A-Za-z0-9_-]+\.yaml", path.name))


def extra_specs(value: str) -> list[str]:
    """The specs registered by `CHURN_DATASET_SPECS` (comma-separated).

    Raises:
        ValueError: an entry that is not an absolute path or `s3://` URI of plain characters,
            or that holds `..`.
    """
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in entries:
        if not _EXTRA_SPEC.match(entry) or ".." in entry.split("/"):
            raise ValueError(f"CHURN_DATASET_SPECS: {entry!r} is not an absolute path or s3:// "
                             f"URI of a .yaml file (pattern {_EXTRA_SPEC.pattern}, no '..')")
    return entries


def registered_specs(repo_root: str | Path, environ: dict[str, str] | None = None) -> list[str]:
    """Every spec a run may name: the repo's, then those of `CHURN_DATASET_SPECS`."""
    env = os.environ if environ is None else environ
    return list(dict.fromkeys([*repo_specs(repo_root),
                               *extra_specs(env.get("CHURN_DATASET_SPECS", ""))]))


def dataset_spec_param(repo_root: str | Path, environ: dict[str, str] | None = None) -> Param:
    """The `dataset_spec` Param: an enum of the registered specs.

    Raises:
        ValueError: the default (`CHURN_DATASET_SPEC`) is not registered.
    """
    env = os.environ if environ is None else environ
    specs = registered_specs(repo_root, env)
    default = env.get("CHURN_DATASET_SPEC") or DEFAULT_SPEC
    if default not in specs:
        raise ValueError(f"CHURN_DATASET_SPEC={default!r} is not a registered spec {specs}: add "
                         "it to include/datasets/ or to CHURN_DATASET_SPECS")
    return Param(default, type="string", enum=specs,
                 description="dataset spec: one of the deployment's registered specs")


def emr_cluster_id_param() -> Param:
    """The `emr_cluster_id` Param: empty (use the Variable) or an EMR cluster id `j-…`."""
    return Param("", type="string", pattern=EMR_CLUSTER_ID_PATTERN,
                 description="EMR cluster id j-… (empty: Variable churn_emr_cluster_id)")
