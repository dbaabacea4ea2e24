"""Test-only DAG: one `spark_job` group (the score job), to run the factory in `airflow dags test`."""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag

from churn_airflow.spark import spark_job, spark_params


@dag(
    dag_id="churn_spark_factory_test",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["churn", "test"],
    default_args={"retries": 0},
    params={**spark_params(), "root": Param("", type="string"), "spec": Param("", type="string")},
    doc_md=__doc__,
)
def churn_spark_factory_test():
    spark_job(job="score", task_id="score", poke_interval=0.2,
              job_args=["--root", "{{ params.root }}", "--spec", "{{ params.spec }}", "--ds", "{{ ds }}"])


churn_spark_factory_test()
