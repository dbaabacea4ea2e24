"""
### churn_pipeline: features → (train → gate) → score → publish, one day per run

Every task works on the run's logical date `ds` (the partition key) and nothing else. The
schedule is a data-interval timetable: the run for day D starts once D has ended (with `@daily`
at D+1 00:00 UTC; with `0 6 * * *` at D+1 06:00) and its logical date, `ds`, is D. A manual run
must be given a logical date (the day to process); one without fails at its first task.

1. **wait_for_raw**: waits (reschedule mode, timeout) until `raw/<table>/ds=…` of every table in
   the dataset spec has landed: its producer's ready marker (`_SUCCESS` by default) is there.
2. **build_features**: Spark (`spark_jobs/build_features.py`): features for `ds`, the labels that
   matured on `ds`, quarantined rows. Local `spark-submit` or an EMR step (`params.spark_mode`).
3. **decide_training**: trains when matured labels exist *and* (forced by `params.force_retrain`,
   no champion yet, or a cadence day: every `churn_train_every_days` days); else skips to scoring.
4. **train**: Ray Tune + XGBoost (`ray_jobs/train.py`) through the Ray Jobs API (deferrable).
5. **gate**: the registry's promotion gate: promote the new version or keep the champion (reason
   in the log and XCom).
6. **check_champion** → **score**: Spark vectorized-UDF scoring with the champion. No champion yet
   (first days) or `params.skip_scoring`: scoring is skipped with a message; the run succeeds.
7. **publish**: `runs/ds=…/manifest.json` and an event on the `churn_predictions` asset.

Configuration: Variables `churn_data_root` (else env `CHURN_DATA_ROOT`), `churn_train_every_days`
(else env `CHURN_TRAIN_EVERY_DAYS`, 7), `churn_min_label_days` (else env `CHURN_MIN_LABEL_DAYS`,
1), `churn_ray_namespace` (else env `CHURN_RAY_NAMESPACE`, `churn`: part of every Ray submission
id); env `CHURN_SCHEDULE` (`@daily`), `CHURN_START_DATE`, `CHURN_DATASET_SPEC` and
`CHURN_DATASET_SPECS` (the registered specs); connections `spark_default`, `ray_default`,
`aws_default` (EMR); env `CHURN_MAX_ACTIVE_RUNS` (1) and `CHURN_TASK_RETRIES` (2). See README.md.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from airflow.sdk import Asset, Param, TriggerRule, dag, task

from churn.pipeline import resolve_spec_path
from churn_airflow.notify import failure_notifiers
from churn_airflow.operators.ray_job import SubmitRayJobOperator
from churn_airflow.params import dataset_spec_param, emr_cluster_id_param
from churn_airflow.ray_runtime import churn_runtime_env
from churn_airflow.spark import spark_job, spark_params
from churn_airflow.timetables import DayIntervalTimetable

REPO_ROOT = Path(__file__).resolve().parents[1]
PREDICTIONS = Asset(name="churn_predictions", uri="x-churn://predictions", group="churn")


def churn_env(name: str, default: str = "") -> str:
    """Jinja macro: an environment variable of the worker, read when a task renders."""
    return os.environ.get(name, default)


def churn_spec(spec: str) -> str:
    """Jinja macro: the `dataset_spec` param as an absolute path (repo-relative) or a URI."""
    return resolve_spec_path(spec, REPO_ROOT)


def setting(variable: str, env: str, default: str) -> str:
    """Jinja for a setting: the Airflow Variable, else the worker's env variable, else default."""
    return f"{{{{ var.value.get('{variable}', churn_env('{env}', '{default}')) }}}}"


ROOT = setting("churn_data_root", "CHURN_DATA_ROOT", str(REPO_ROOT / "data"))
SPEC = "{{ churn_spec(params.dataset_spec) }}"
EVERY_DAYS = setting("churn_train_every_days", "CHURN_TRAIN_EVERY_DAYS", "7")
MIN_LABEL_DAYS = setting("churn_min_label_days", "CHURN_MIN_LABEL_DAYS", "1")
RAY_NAMESPACE = setting("churn_ray_namespace", "CHURN_RAY_NAMESPACE", "churn")
TRAIN_DRIVER_CPUS = 0.5  # reserved for the train job's driver; its search plans around it
JOB_ARGS = ["--root", ROOT, "--spec", SPEC, "--ds", "{{ ds }}"]
MODEL_URI = "{{ ti.xcom_pull(task_ids='check_champion', key='model_uri') }}"
SPARK_TIMEOUT = dt.timedelta(hours=3)

PARAMS = {
    **spark_params(),
    "emr_cluster_id": emr_cluster_id_param(),
    "force_retrain": Param(False, type="boolean",
                           description="train today even if training is not due"),
    "tune_trials": Param(4, type="integer", minimum=1, maximum=64,
                         description="Ray Tune trials when training"),
    "dataset_spec": dataset_spec_param(REPO_ROOT),
    "skip_scoring": Param(False, type="boolean", description="skip scoring for this run"),
}


@dag(
    dag_id="churn_pipeline",
    # the run for an interval starts when it ends; its logical date and run id name its start
    schedule=DayIntervalTimetable(os.environ.get("CHURN_SCHEDULE", "@daily"), timezone="UTC"),
    start_date=dt.datetime.fromisoformat(os.environ.get("CHURN_START_DATE", "2025-01-01")).replace(
        tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=int(os.environ.get("CHURN_MAX_ACTIVE_RUNS", "1")),
    default_args={
        "owner": "ml-platform",
        "retries": int(os.environ.get("CHURN_TASK_RETRIES", "2")),
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=15),
    },
    params=PARAMS,
    on_failure_callback=failure_notifiers(),
    user_defined_macros={"churn_env": churn_env, "churn_spec": churn_spec},
    render_template_as_native_obj=False,
    doc_md=__doc__,
    tags=["churn", "spark", "ray", "ml"],
)
def churn_pipeline():
    """Daily churn pipeline (see the module docstring)."""

    @task.sensor(mode="reschedule", poke_interval=300, timeout=6 * 3600,
                 exponential_backoff=True, max_wait=1800)
    def wait_for_raw(root: str, spec: str, ds: str | None = None) -> bool:
        from airflow.sdk.exceptions import AirflowFailException

        from churn.pipeline import NoLogicalDateError, missing_raw_partitions, require_logical_date

        try:
            day = require_logical_date(ds)
        except NoLogicalDateError as exc:
            raise AirflowFailException(str(exc)) from exc  # retrying cannot give it a day
        return not missing_raw_partitions(root, spec, day)

    @task.branch(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def decide_training(root: str, spec: str, every_days: str, min_label_days: str,
                        params: dict | None = None, ds: str | None = None) -> str:
        from churn.pipeline import decide_training as decide

        decision = decide(root, spec, ds, every_days=int(every_days),
                          force=bool(params["force_retrain"]), min_label_days=int(min_label_days))
        return "train" if decision.train else "skip_training"

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def skip_training() -> None:
        """Join point of the not-training branch (the reason is in decide_training's log)."""

    train = SubmitRayJobOperator(
        task_id="train",
        entrypoint=["python", "train.py", *JOB_ARGS, "--trials", "{{ params.tune_trials }}",
                    "--driver-cpus", str(TRAIN_DRIVER_CPUS)],
        runtime_env=churn_runtime_env(REPO_ROOT),
        entrypoint_num_cpus=TRAIN_DRIVER_CPUS,
        namespace=RAY_NAMESPACE,
        ray_conn_id="ray_default",
        deferrable=True,
        job_timeout=3 * 3600,
        wait_for_completion=True,
    )

    @task
    def gate(root: str, spec: str, train_result: dict, run_id: str | None = None,
             ds: str | None = None) -> dict:
        from churn.pipeline import run_gate

        return run_gate(root, spec, ds, train_result, decided_by=f"churn_pipeline/{run_id}")

    @task.branch(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def check_champion(root: str, spec: str, params: dict | None = None, ti=None,
                       ds: str | None = None) -> str:
        from churn.pipeline import scoring_model

        model = scoring_model(root, spec, ds, skip_scoring=bool(params["skip_scoring"]))
        ti.xcom_push(key="model_uri", value=model)
        return "score" if model else "scoring_skipped"

    @task
    def scoring_skipped() -> None:
        """Join point of the no-scoring branch (the reason is in check_champion's log)."""

    @task(outlets=[PREDICTIONS], trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def publish(root: str, outlet_events=None, dag_run=None, params: dict | None = None,
                ds: str | None = None) -> dict:
        from churn.pipeline import publish_manifest

        run = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "conf": dag_run.conf,
               "logical_date": str(dag_run.logical_date), "start_date": str(dag_run.start_date),
               "params": dict(params)}
        manifest = publish_manifest(root, ds, run=run, repo_root=str(REPO_ROOT))
        outlet_events[PREDICTIONS].extra = {
            "ds": ds, "scored": manifest["scored"], "uri": manifest["predictions"],
            "model_version": manifest["model_version"]}
        return {"manifest": f"{root}/runs/ds={ds}/manifest.json", "scored": manifest["scored"]}

    raw = wait_for_raw(ROOT, SPEC)
    features = spark_job(job="build_features", job_args=JOB_ARGS, task_id="build_features",
                         timeout=SPARK_TIMEOUT)
    decide = decide_training(ROOT, SPEC, EVERY_DAYS, MIN_LABEL_DAYS)
    not_training = skip_training()
    gated = gate(ROOT, SPEC, train.output)
    champion = check_champion(ROOT, SPEC)
    score = spark_job(job="score", task_id="score", job_args=[*JOB_ARGS, "--model-uri", MODEL_URI],
                      timeout=SPARK_TIMEOUT)
    no_score = scoring_skipped()
    published = publish(ROOT)

    raw >> features >> decide >> [train, not_training]
    [gated, not_training] >> champion >> [score, no_score] >> published


churn_pipeline()
