"""Spark task factory: one TaskGroup that runs a `spark_jobs/<job>.py` locally or as an EMR step.

    from churn_airflow.spark import spark_job, spark_params
    group = spark_job(job="score", job_args=["--root", "{{ ... }}", "--ds", "{{ ds }}"],
                      task_id="score")

Inside the group a branch reads `{{ params.spark_mode }}` (`local` | `emr`; empty, the default:
the worker's env `CHURN_SPARK_MODE` when the task runs, else `local`) and runs one of:

* local: `spark-submit` through `SparkSubmitOperator` (connection `spark_default`, e.g.
  `local[*]`), the `churn` package zipped at run time and shipped with `--py-files`;
* emr: upload the job script and the `churn` zip to `<code uri>/code/<digest>/` (`S3Hook`), add
  one `spark-submit --deploy-mode cluster` step to an existing cluster (a retry reuses the step
  its try generation added; a clear adds a new one: `churn_airflow.resumable`) and wait for it
  with `EmrStepSensor`.

Every task of the group has an execution timeout (`timeout`, 3 h by default); the step sensor's
own `timeout` is the same (its default would be 7 days).

A join task (`none_failed_min_one_success`) ends the group. Nothing here reads Variables, the
environment or the network at parse time: Jinja and the task callables do.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.operators.emr import EmrAddStepsOperator
from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import BranchPythonOperator, PythonOperator
from airflow.sdk import Param, TaskGroup, TriggerRule

from churn_airflow.params import emr_cluster_id_param
from churn_airflow.resumable import TryGeneration, new_token

SPARK_JOBS_DIR = Path(__file__).resolve().parents[2] / "spark_jobs"
SPARK_MODES = ("local", "emr")
AWS_CONN_ID = "aws_default"
SPARK_CONN_ID = "spark_default"
CLUSTER_ID_TEMPLATE = (
    "{{ params.get('emr_cluster_id') or var.value.get('churn_emr_cluster_id', '') }}")
CODE_URI_TEMPLATE = "{{ var.value.get('churn_emr_code_uri', '') }}"
REUSABLE_STEP_STATES = ("PENDING", "RUNNING", "COMPLETED")
STEP_STATE_KEY = "emr_step_name"
DEFAULT_TIMEOUT = timedelta(hours=3)
SHORT_TASK_TIMEOUT = timedelta(minutes=15)  # branch, upload, add-step: seconds of work each


def spark_params() -> dict[str, Param]:
    """The DAG params the factory reads (merge them into the DAG's `params`).

    Returns:
        `spark_mode` (default empty: `resolve_mode` picks the mode when the task runs) and
        `emr_cluster_id`.
    """
    return {
        "spark_mode": Param("", type="string", enum=["", *SPARK_MODES],
                            values_display={"": "default (worker's CHURN_SPARK_MODE, else local)"},
                            description="local spark-submit or a step on an EMR cluster (empty: "
                                        "env CHURN_SPARK_MODE of the worker, else local)"),
        "emr_cluster_id": emr_cluster_id_param(),
    }


def resolve_mode(params: dict[str, Any]) -> str:
    """The Spark mode of this run, read when the task runs: `params.spark_mode`, else the
    worker's env `CHURN_SPARK_MODE`, else `local`.

    Raises:
        ValueError: the mode is not one of `SPARK_MODES`.
    """
    mode = params.get("spark_mode") or os.environ.get("CHURN_SPARK_MODE") or "local"
    if mode not in SPARK_MODES:
        raise ValueError(f"spark_mode must be one of {SPARK_MODES}, got {mode!r}")
    return mode


def step_name(job: str, ds: str, run_id: str, token: str) -> str:
    """The EMR step name of one job in one try generation of a DAG run.

    `churn-<job>-<ds>-<8 hex of run_id>-<token>`: the token (`churn_airflow.resumable.new_token`)
    is new for every try generation, so a cleared task never finds the step of an earlier one.
    """
    return f"churn-{job}-{ds}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}-{token}"


def emr_step(name: str, script_uri: str, py_files_uri: str, job_args: Sequence[str]) -> dict:
    """The boto3 step definition running a job with `spark-submit --deploy-mode cluster`.

    Args:
        name: the step name (see `step_name`).
        script_uri: the job script on S3.
        py_files_uri: the `churn` zip on S3.
        job_args: the job's rendered arguments.

    Returns:
        One `Steps` entry for `add_job_flow_steps`. A failed step leaves the shared cluster up.
    """
    return {
        "Name": name,
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn",
                     "--py-files", py_files_uri, script_uri, *job_args],
        },
    }


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes).

    Raises:
        ValueError: not an `s3://` URI with a bucket.
    """
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ValueError(f"EMR code location must be s3://bucket/prefix, got {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def code_keys(prefix: str, job: str, digest: str) -> dict[str, str]:
    """S3 keys of the job script and the `churn` zip under `<prefix>/code/<digest>/`."""
    base = "/".join(part for part in (prefix, "code", digest) if part)
    return {"script": f"{base}/{job}.py", "py_files": f"{base}/churn.zip"}


def choose_branch(group_id: str, **context: Any) -> str:
    """Branch callable: the first task of this run's mode inside the group."""
    first = {"local": "spark_submit", "emr": "upload_code"}[resolve_mode(context["params"])]
    return f"{group_id}.{first}"


def upload_code(job: str, code_uri: str, aws_conn_id: str = AWS_CONN_ID) -> dict[str, str]:
    """Upload the job script and a fresh `churn` zip to S3, keyed by their digest.

    Args:
        job: the job name (`spark_jobs/<job>.py`).
        code_uri: `s3://bucket/prefix`; env `CHURN_EMR_CODE_URI` wins when set.
        aws_conn_id: the AWS connection.

    Returns:
        `{"script": s3://..., "py_files": s3://...}` (pushed to XCom for the add-step task).
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from churn.packaging import build_package_zip, digest_files

    bucket, prefix = split_s3_uri(os.environ.get("CHURN_EMR_CODE_URI") or code_uri)
    files = {"script": SPARK_JOBS_DIR / f"{job}.py", "py_files": build_package_zip()}
    keys = code_keys(prefix, job, digest_files(files.values())[:16])
    hook = S3Hook(aws_conn_id=aws_conn_id)
    for kind, path in files.items():
        hook.load_file(filename=str(path), key=keys[kind], bucket_name=bucket, replace=True)
    return {kind: f"s3://{bucket}/{key}" for kind, key in keys.items()}


def find_step(client, cluster_id: str, name: str) -> str | None:
    """The id of the step called `name` in a reusable state on the cluster, if any.

    Raises:
        RuntimeError: more than one such step (ambiguous: a human should look).
    """
    pages = client.get_paginator("list_steps").paginate(
        ClusterId=cluster_id, StepStates=list(REUSABLE_STEP_STATES))
    ids = [step["Id"] for page in pages for step in page["Steps"] if step["Name"] == name]
    if len(ids) > 1:
        raise RuntimeError(f"{len(ids)} EMR steps named {name} on {cluster_id}: {ids}")
    return ids[0] if ids else None


class ChurnSparkSubmitOperator(SparkSubmitOperator):
    """`SparkSubmitOperator` that zips `churn` for `--py-files` when it runs, not at parse time."""

    def execute(self, context: Any) -> None:
        from churn.packaging import build_package_zip

        self.py_files = str(build_package_zip())
        python = os.environ.get("PYSPARK_PYTHON")
        if python:
            self.conf = {**(self.conf or {}), "spark.pyspark.python": python}
        self._hook = None  # rebuilt from the run-time py_files and conf
        return super().execute(context)


class IdempotentEmrAddStepOperator(EmrAddStepsOperator):
    """Add one job step to a cluster, or reuse the step this try generation already added.

    The step's name (`step_name`) is recorded in the task state store before the step is added
    and forgotten once the task succeeds. A retry (the worker died after adding) finds the
    recorded name and reuses that step when it is PENDING, RUNNING or COMPLETED; a clear starts
    a new generation and adds a new step. Returns `[step_id]`.
    """

    template_fields: Sequence[str] = (*EmrAddStepsOperator.template_fields, "job_args")

    def __init__(self, *, job: str, job_args: Sequence[str], upload_task_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.job = job
        self.job_args = list(job_args)
        self.upload_task_id = upload_task_id

    def execute(self, context: Any) -> list[str]:
        if not self.job_flow_id:
            raise ValueError("no EMR cluster id: set params.emr_cluster_id or Variable "
                             "churn_emr_cluster_id")
        code = context["ti"].xcom_pull(task_ids=self.upload_task_id)
        generation = TryGeneration(context, STEP_STATE_KEY, self.log)
        recorded = generation.current()
        existing = recorded and find_step(self.hook.conn, self.job_flow_id, recorded)
        if existing:
            self.log.info("Reusing EMR step %s (%s) of this try generation on %s", existing,
                          recorded, self.job_flow_id)
            generation.end()
            return [existing]
        name = step_name(self.job, context["ds"], context["run_id"], new_token())
        generation.begin(name)
        self.steps = [emr_step(name, code["script"], code["py_files"], self.job_args)]
        step_ids = super().execute(context)
        generation.end()
        return step_ids


def spark_job(job: str, job_args: Sequence[str], task_id: str, *, poke_interval: float = 60,
              timeout: timedelta = DEFAULT_TIMEOUT, sensor_deferrable: bool | None = None,
              aws_conn_id: str = AWS_CONN_ID, spark_conn_id: str = SPARK_CONN_ID) -> TaskGroup:
    """A TaskGroup running `spark_jobs/<job>.py` locally or on EMR, chosen per run.

    Args:
        job: the job module name in `spark_jobs/` (e.g. `build_features`, `score`).
        job_args: the job's arguments (Jinja templates, rendered per run).
        task_id: the group id.
        poke_interval: seconds between EMR step polls.
        timeout: how long the Spark job may run: the execution timeout of `spark_submit` and
            the step sensor's timeout (the other tasks get `SHORT_TASK_TIMEOUT`).
        sensor_deferrable: let `EmrStepSensor` wait in the triggerer instead of a worker slot
            (None: the provider's default, `[operators] default_deferrable`).
        aws_conn_id: the AWS connection (S3 upload, EMR).
        spark_conn_id: the Spark connection of the local path (master, e.g. `local[*]`).

    Returns:
        The group: branch >> (spark_submit | upload_code >> add_step >> watch_step) >> join.
    """
    with TaskGroup(group_id=task_id) as group:
        short = {"execution_timeout": SHORT_TASK_TIMEOUT}
        branch = BranchPythonOperator(task_id="choose_mode", python_callable=choose_branch,
                                      op_kwargs={"group_id": group.group_id}, **short)
        local = ChurnSparkSubmitOperator(
            task_id="spark_submit", application=str(SPARK_JOBS_DIR / f"{job}.py"),
            conn_id=spark_conn_id, application_args=list(job_args), name=f"churn-{job}",
            execution_timeout=timeout)
        upload = PythonOperator(
            task_id="upload_code", python_callable=upload_code,
            op_kwargs={"job": job, "code_uri": CODE_URI_TEMPLATE, "aws_conn_id": aws_conn_id},
            **short)
        add_step = IdempotentEmrAddStepOperator(
            task_id="add_step", job=job, job_args=job_args, upload_task_id=upload.task_id,
            job_flow_id=CLUSTER_ID_TEMPLATE, aws_conn_id=aws_conn_id, deferrable=False,
            wait_for_completion=False, **short)
        deferrable = {} if sensor_deferrable is None else {"deferrable": sensor_deferrable}
        watch = EmrStepSensor(
            task_id="watch_step", job_flow_id=CLUSTER_ID_TEMPLATE,
            step_id=f"{{{{ ti.xcom_pull(task_ids='{add_step.task_id}')[0] }}}}",
            aws_conn_id=aws_conn_id, poke_interval=poke_interval, timeout=timeout.total_seconds(),
            execution_timeout=timeout, **deferrable)
        join = EmptyOperator(task_id="join", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
                             **short)
        branch >> [local, upload]
        upload >> add_step >> watch
        [local, watch] >> join
    return group
