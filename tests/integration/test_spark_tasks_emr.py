"""The Spark task factory in real `airflow dags test` runs: EMR mode against a moto server, and
local mode through `spark-submit`. Airflow runs in a subprocess with a temp AIRFLOW_HOME (SQLite);
moto serves HTTP on 127.0.0.1 from this process, so the test sees the same S3 and EMR state."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from churn_airflow import spark as factory
from tests.support.model_fixture import features_frame, write_model_version
from tests.support.moto_server import emr_steps_finish, start_moto_server

pytestmark = pytest.mark.airflow

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = REPO_ROOT / "tests" / "integration" / "dag_files" / "churn_spark_factory.py"
DAG_ID = "churn_spark_factory_test"
SPEC = str(REPO_ROOT / "include" / "datasets" / "synthetic.yaml")
DS = "2026-02-03"
CODE_BUCKET = "churn-code"
CODE_URI = f"s3://{CODE_BUCKET}/pipeline"
DATA_ROOT = "s3://churn-data/root"


@pytest.fixture(scope="module")
def moto():
    server = start_moto_server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def airflow_env(moto, tmp_path_factory) -> dict[str, str]:
    """Environment of an Airflow with a fresh SQLite DB, the test DAG folder and moto's AWS."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ, **moto.env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "CHURN_EMR_CODE_URI": CODE_URI,
    }
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=180)
    return env


def _dags_test(env: dict[str, str], conf: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["airflow", "dags", "test", DAG_ID, DS, "-f", str(DAG_FILE), "-c", json.dumps(conf)],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def _last_run(env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(run_id, {task_id: state}) of the newest run of the test DAG, read from the SQLite DB."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        (run_id,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                               (DAG_ID,)).fetchone()
        rows = db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                          (DAG_ID, run_id)).fetchall()
    return run_id, dict(rows)


def _run_task(env: dict[str, str], run_id: str, task_id: str) -> None:
    """Run one task of an existing run again (`airflow tasks test`)."""
    done = subprocess.run(["airflow", "tasks", "test", DAG_ID, task_id, run_id], env=env,
                          capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _record_step_name(env: dict[str, str], run_id: str, name: str) -> None:
    """Leave in the task state store what a try that died after adding its step leaves."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        (dag_run_id,) = db.execute("SELECT id FROM dag_run WHERE dag_id = ? AND run_id = ?",
                                   (DAG_ID, run_id)).fetchone()
        db.execute("INSERT INTO task_state_store (dag_run_id, task_id, map_index, key, dag_id, "
                   "run_id, value, updated_at) VALUES (?, 'score.add_step', -1, ?, ?, ?, ?, "
                   "datetime('now'))", (dag_run_id, factory.STEP_STATE_KEY, DAG_ID, run_id,
                                        json.dumps(name)))


def _stored_step_name(env: dict[str, str], run_id: str) -> str | None:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        row = db.execute("SELECT value FROM task_state_store WHERE run_id = ? AND key = ?",
                         (run_id, factory.STEP_STATE_KEY)).fetchone()
    return json.loads(row[0]) if row else None


@pytest.fixture()
def cluster_id(moto) -> str:
    """A fresh EMR cluster already running one unrelated step (so ours starts PENDING)."""
    emr = moto.client("emr")
    moto.client("s3").create_bucket(Bucket=CODE_BUCKET)
    cluster = emr.run_job_flow(
        Name="churn-test", ReleaseLabel="emr-7.5.0", ServiceRole="EMR_DefaultRole",
        JobFlowRole="EMR_EC2_DefaultRole",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1,
                   "KeepJobFlowAliveWhenNoSteps": True})["JobFlowId"]
    emr.add_job_flow_steps(JobFlowId=cluster, Steps=[{
        "Name": "warm-up", "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}])
    return cluster


def _our_steps(moto, cluster: str) -> list[dict]:
    steps = moto.client("emr").list_steps(ClusterId=cluster)["Steps"]
    return [s for s in steps if s["Name"].startswith("churn-score-")]


class TestEmrMode:
    def test_uploads_code_adds_one_step_and_waits_for_it(self, moto, airflow_env, cluster_id):
        conf = {"spark_mode": "emr", "emr_cluster_id": cluster_id, "root": DATA_ROOT, "spec": SPEC}
        with emr_steps_finish("COMPLETED") as transitions:
            proc = _dags_test(airflow_env, conf)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        run_id, states = _last_run(airflow_env)
        assert states == {"score.choose_mode": "success", "score.spark_submit": "skipped",
                          "score.upload_code": "success", "score.add_step": "success",
                          "score.watch_step": "success", "score.join": "success"}

        keys = sorted(o["Key"] for o in moto.client("s3").list_objects_v2(
            Bucket=CODE_BUCKET, Prefix="pipeline/code/")["Contents"])
        digest = keys[0].split("/")[2]
        assert keys == [f"pipeline/code/{digest}/churn.zip", f"pipeline/code/{digest}/score.py"]
        s3 = moto.client("s3")
        script = s3.get_object(Bucket=CODE_BUCKET, Key=keys[1])["Body"].read()
        assert script == (REPO_ROOT / "spark_jobs" / "score.py").read_bytes()
        zipped = zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=CODE_BUCKET, Key=keys[0])["Body"].read()))
        assert {"churn/__init__.py", "churn/scoring.py", "churn/storage.py"} <= set(zipped.namelist())
        assert zipped.read("churn/scoring.py") == (REPO_ROOT / "include/churn/scoring.py").read_bytes()

        (step,) = _our_steps(moto, cluster_id)
        detail = moto.client("emr").describe_step(ClusterId=cluster_id, StepId=step["Id"])["Step"]
        assert detail["Name"].startswith(factory.step_name("score", DS, run_id, "")[:-1])
        assert detail["ActionOnFailure"] == "CONTINUE"
        assert detail["Config"]["Jar"] == "command-runner.jar"
        assert detail["Config"]["Args"] == [
            "spark-submit", "--deploy-mode", "cluster", "--master", "yarn",
            "--py-files", f"{CODE_URI}/code/{digest}/churn.zip",
            f"{CODE_URI}/code/{digest}/score.py",
            "--root", DATA_ROOT, "--spec", SPEC, "--ds", DS]
        assert detail["Status"]["State"] == "COMPLETED"
        assert transitions == [(step["Id"], "RUNNING"), (step["Id"], "COMPLETED")]

        # add_step succeeded, so it forgot its step: a clear (a re-run of the task) adds a new one
        assert _stored_step_name(airflow_env, run_id) is None
        _run_task(airflow_env, run_id, "score.add_step")
        steps = _our_steps(moto, cluster_id)
        assert len(steps) == 2 and steps[0]["Name"] != steps[1]["Name"]

        # a retry after a worker lost between adding the step and succeeding finds the step name
        # it recorded in the task state store, and reuses that step instead of adding another
        _record_step_name(airflow_env, run_id, detail["Name"])
        _run_task(airflow_env, run_id, "score.add_step")
        assert sorted(s["Id"] for s in _our_steps(moto, cluster_id)) == sorted(
            s["Id"] for s in steps)
        assert _stored_step_name(airflow_env, run_id) is None

    def test_failed_step_fails_the_group(self, moto, airflow_env, cluster_id):
        conf = {"spark_mode": "emr", "emr_cluster_id": cluster_id, "root": DATA_ROOT, "spec": SPEC}
        with emr_steps_finish("FAILED"):
            _dags_test(airflow_env, conf)
        _, states = _last_run(airflow_env)
        assert states["score.add_step"] == "success"
        assert states["score.watch_step"] == "failed"
        assert states["score.join"] == "upstream_failed"
        (step,) = _our_steps(moto, cluster_id)
        assert step["Status"]["State"] == "FAILED"


class TestLocalMode:
    def test_spark_submit_scores_the_day(self, airflow_env, tmp_path):
        frame = features_frame(60, DS)
        model = write_model_version(str(tmp_path), frame)
        part = tmp_path / "features" / f"ds={DS}"
        part.mkdir(parents=True)
        frame.to_parquet(part / "part-0.parquet", index=False)
        proc = _dags_test(airflow_env, {"spark_mode": "local", "root": str(tmp_path), "spec": SPEC})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        _, states = _last_run(airflow_env)
        assert states == {"score.choose_mode": "success", "score.spark_submit": "success",
                          "score.upload_code": "skipped", "score.add_step": "skipped",
                          "score.watch_step": "skipped", "score.join": "success"}
        got = pd.read_parquet(tmp_path / "predictions" / f"ds={DS}")
        assert sorted(got["customer_id"]) == sorted(frame["customer_id"])
        assert set(got["model_version"]) == {model.version} and set(got["ds"]) == {DS}
        assert got["churn_probability"].between(0, 1).all()
        fragment = json.loads((tmp_path / "runs" / f"ds={DS}" / "score.json").read_text())
        assert (fragment["prediction_rows"], fragment["model_version"]) == (60, model.version)


class TestEmrHelpers:
    def test_find_step_reuses_live_steps_only(self, moto, cluster_id):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.emr.models import emr_backends

        emr = moto.client("emr")
        step = factory.emr_step("churn-score-2026-02-03-abcd1234", "s3://b/s.py", "s3://b/c.zip", [])
        (first,) = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"]
        assert factory.find_step(emr, cluster_id, step["Name"]) == first
        assert factory.find_step(emr, cluster_id, "churn-score-2026-02-03-other") is None
        backend = emr_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
        backend.describe_step(cluster_id, first).state = "FAILED"  # the cluster failed it
        assert factory.find_step(emr, cluster_id, step["Name"]) is None
        emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step, step])
        with pytest.raises(RuntimeError, match="2 EMR steps named"):
            factory.find_step(emr, cluster_id, step["Name"])

    def test_step_name_is_per_job_day_run_and_generation(self):
        name = factory.step_name("score", DS, "manual__2026-02-03T00:00:00+00:00", "ab12cd34")
        assert name.startswith("churn-score-2026-02-03-") and name.endswith("-ab12cd34")
        assert name == factory.step_name("score", DS, "manual__2026-02-03T00:00:00+00:00",
                                         "ab12cd34")
        assert name != factory.step_name("score", DS, "scheduled__2026-02-03T00:00:00+00:00",
                                         "ab12cd34")
        assert name != factory.step_name("score", DS, "manual__2026-02-03T00:00:00+00:00",
                                         "ef56ab78")

    def test_code_location(self):
        assert factory.split_s3_uri("s3://bkt/a/b/") == ("bkt", "a/b")
        assert factory.split_s3_uri("s3://bkt") == ("bkt", "")
        assert factory.code_keys("", "score", "d1") == {"script": "code/d1/score.py",
                                                        "py_files": "code/d1/churn.zip"}
        with pytest.raises(ValueError, match="s3://bucket/prefix"):
            factory.split_s3_uri("/local/path")

    def test_mode_comes_from_params_then_env(self, monkeypatch):
        monkeypatch.setenv("CHURN_SPARK_MODE", "emr")
        assert factory.resolve_mode({"spark_mode": "local"}) == "local"
        assert factory.resolve_mode({}) == "emr"
        assert factory.choose_branch("g", params={}) == "g.upload_code"
        with pytest.raises(ValueError, match="spark_mode"):
            factory.resolve_mode({"spark_mode": "yarn"})


class TestFactoryShape:
    def test_group_wiring(self):
        from airflow.sdk import DAG

        with DAG("shape", schedule=None, params=factory.spark_params()) as dag:
            factory.spark_job(job="build_features", job_args=["--ds", "{{ ds }}"],
                              task_id="build_features")
        tasks = {t.task_id: t for t in dag.tasks}
        prefix = "build_features."
        assert sorted(tasks) == [prefix + n for n in (
            "add_step", "choose_mode", "join", "spark_submit", "upload_code", "watch_step")]
        assert tasks[prefix + "choose_mode"].downstream_task_ids == {
            prefix + "spark_submit", prefix + "upload_code"}
        assert tasks[prefix + "join"].upstream_task_ids == {prefix + "spark_submit",
                                                            prefix + "watch_step"}
        assert tasks[prefix + "join"].trigger_rule == "none_failed_min_one_success"
        local = tasks[prefix + "spark_submit"]
        assert local.application == str(REPO_ROOT / "spark_jobs" / "build_features.py")
        assert local.application_args == ["--ds", "{{ ds }}"] and local._conn_id == "spark_default"
        assert local.py_files is None  # zipped when the task runs, not at parse time
        assert tasks[prefix + "add_step"].job_flow_id == factory.CLUSTER_ID_TEMPLATE
        assert dag.params["spark_mode"] == ""  # resolve_mode picks it when the task runs
