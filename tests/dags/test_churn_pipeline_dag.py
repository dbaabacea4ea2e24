"""DagBag integrity of `dags/churn_pipeline.py`: parses cleanly, with the configuration we promise."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "churn_pipeline"
EXPECTED_PARAMS = {"spark_mode", "emr_cluster_id", "force_retrain", "tune_trials", "dataset_spec",
                   "skip_scoring"}
TASK_ORDER = [("wait_for_raw", "build_features.choose_mode"),
              ("build_features.join", "decide_training"),
              ("decide_training", "train"), ("decide_training", "skip_training"),
              ("train", "gate"), ("gate", "check_champion"), ("skip_training", "check_champion"),
              ("check_champion", "score.choose_mode"), ("check_champion", "scoring_skipped"),
              ("score.join", "publish"), ("scoring_skipped", "publish")]


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    """The project's DagBag, parsed once for the module with a throwaway AIRFLOW_HOME."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
        return DagBag(dag_folder=str(REPO_ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags[DAG_ID]


class TestDagBag:
    def test_no_import_errors(self, dagbag):
        assert dagbag.import_errors == {}
        assert DAG_ID in dagbag.dag_ids

    def test_every_task_retries_with_backoff(self, dag):
        for task in dag.tasks:
            assert task.retries >= 2, task.task_id
            assert task.retry_exponential_backoff, task.task_id

    def test_tags_and_docs(self, dag):
        assert {"churn", "spark", "ray"} <= set(dag.tags)
        assert dag.doc_md and "churn_pipeline" in dag.doc_md

    def test_schedule_and_run_limits(self, dag):
        assert dag.catchup is False
        assert dag.max_active_runs == 1
        assert dag.start_date == dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
        assert dag.schedule == "@daily"


class TestChurnPipelineShape:
    @pytest.mark.parametrize(("upstream", "downstream"), TASK_ORDER)
    def test_edges(self, dag, upstream, downstream):
        assert downstream in dag.task_dict[upstream].downstream_task_ids

    def test_join_points_tolerate_skipped_branches(self, dag):
        for task_id in ("decide_training", "check_champion", "publish"):
            assert dag.task_dict[task_id].trigger_rule == "none_failed_min_one_success", task_id

    def test_branches_only_fan_out_to_their_choices(self, dag):
        # a branch skips every direct downstream task it does not return
        assert dag.task_dict["decide_training"].downstream_task_ids == {"train", "skip_training"}
        assert dag.task_dict["check_champion"].downstream_task_ids == {
            "score.choose_mode", "scoring_skipped"}

    def test_train_is_deferrable_ray_job(self, dag):
        train = dag.task_dict["train"]
        assert type(train).__name__ == "SubmitRayJobOperator"
        assert train.deferrable is True
        assert train.entrypoint.startswith("python train.py ")
        assert "{{ ds }}" in train.entrypoint and "{{ params.tune_trials }}" in train.entrypoint
        # the search plans around the CPUs the Jobs API reserves for the driver
        assert f"--driver-cpus {train.entrypoint_num_cpus}" in train.entrypoint
        assert train.runtime_env["py_modules"] == [str(REPO_ROOT / "include" / "churn")]

    def test_raw_sensor_reschedules_with_timeout(self, dag):
        sensor = dag.task_dict["wait_for_raw"]
        assert sensor.mode == "reschedule"
        assert 0 < sensor.timeout <= 24 * 3600

    def test_publish_emits_the_predictions_asset(self, dag):
        outlets = dag.task_dict["publish"].outlets
        assert [(a.name, a.uri) for a in outlets] == [("churn_predictions", "x-churn://predictions")]


class TestParams:
    def test_form_fields(self, dag):
        assert set(dag.params.keys()) == EXPECTED_PARAMS

    def test_defaults(self, dag):
        values = dag.params.validate()
        assert values["spark_mode"] == "local"
        assert values["force_retrain"] is False
        assert values["skip_scoring"] is False
        assert values["tune_trials"] == 4
        assert values["dataset_spec"] == "include/datasets/synthetic.yaml"

    @pytest.mark.parametrize(("name", "value"), [
        ("spark_mode", "yarn"), ("tune_trials", 0), ("tune_trials", "many"),
        ("emr_cluster_id", "cluster-1"), ("force_retrain", "yes"), ("dataset_spec", "")])
    def test_rejects_invalid_values(self, dag, name, value):
        from airflow.sdk.exceptions import ParamValidationError

        params = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):
            params[name] = value
            params.validate()

    def test_accepts_an_emr_run(self, dag):
        params = copy.deepcopy(dag.params)
        params.update({"spark_mode": "emr", "emr_cluster_id": "j-ABC123XYZ"})
        assert params.validate()["emr_cluster_id"] == "j-ABC123XYZ"
