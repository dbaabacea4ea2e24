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
HOSTILE_VALUES = ["include/datasets/synthetic.yaml'; touch /tmp/pwned; '",
                  "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "a\ntouch /tmp/pwned",
                  "include/datasets/synthetic.yaml;id", "include/datasets/../../etc/passwd.yaml",
                  "/etc/passwd", "s3://evil/spec.yaml", "j-ABC123XYZ;id"]
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
        assert type(dag.timetable).__name__ == "DayIntervalTimetable"  # a data-interval timetable
        assert (dag.timetable._expression, dag.timetable._timezone.name) == ("0 0 * * *", "UTC")

    def test_a_failed_day_calls_the_notifier_hook(self, dag, caplog):
        from churn_airflow.notify import FailedDayLogNotifier

        (notifier,) = dag.on_failure_callback
        assert isinstance(notifier, FailedDayLogNotifier)
        with caplog.at_level("ERROR", logger="churn_airflow.notify"):
            notifier({"dag": dag, "run_id": "scheduled__2025-03-01", "ds": "2025-03-01",
                      "reason": "task_failure"})
        assert ("churn day failed: dag churn_pipeline run scheduled__2025-03-01 ds=2025-03-01 "
                "reason: task_failure") in caplog.text


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
        assert train.wait_options.deferrable is True
        assert train.entrypoint[:2] == ["python", "train.py"]  # argv: no shell parses a value
        args = dict(zip(train.entrypoint[2::2], train.entrypoint[3::2]))
        assert args["--ds"] == "{{ ds }}" and args["--trials"] == "{{ params.tune_trials }}"
        # the search plans around the CPUs the Jobs API reserves for the driver
        assert args["--driver-cpus"] == str(train.entrypoint_num_cpus)
        assert "churn_ray_namespace" in train.namespace
        assert train.runtime_env["py_modules"] == [str(REPO_ROOT / "include" / "churn")]
        assert {"/generate.py", "/demo.py"} <= set(train.runtime_env["excludes"])  # local only

    def test_spark_and_emr_tasks_have_timeouts(self, dag):
        for task in dag.tasks:
            if task.task_id.startswith(("build_features.", "score.")):
                assert task.execution_timeout is not None, task.task_id
                assert task.execution_timeout <= dt.timedelta(hours=3), task.task_id
        for group in ("build_features", "score"):
            assert dag.task_dict[f"{group}.watch_step"].timeout == 3 * 3600  # not 7 days

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
        assert values["spark_mode"] == ""  # resolved when the task runs
        assert values["force_retrain"] is False
        assert values["skip_scoring"] is False
        assert values["tune_trials"] == 4
        assert values["dataset_spec"] == "include/datasets/synthetic.yaml"

    @pytest.mark.parametrize(("name", "value"), [
        ("spark_mode", "yarn"), ("tune_trials", 0), ("tune_trials", "many"),
        ("emr_cluster_id", "cluster-1"), ("force_retrain", "yes"), ("dataset_spec", ""),
        *[(name, hostile) for name in ("dataset_spec", "emr_cluster_id", "spark_mode")
          for hostile in HOSTILE_VALUES]])
    def test_rejects_invalid_values(self, dag, name, value):
        from airflow.sdk.exceptions import ParamValidationError

        params = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):
            params[name] = value
            params.validate()

    def test_spark_mode_is_read_from_the_env_when_the_task_runs(self, dag, monkeypatch):
        from churn_airflow.spark import choose_branch

        monkeypatch.setenv("CHURN_SPARK_MODE", "emr")
        params = dag.params.validate()
        assert choose_branch("score", params=params) == "score.upload_code"
        monkeypatch.delenv("CHURN_SPARK_MODE")
        assert choose_branch("score", params=params) == "score.spark_submit"
        assert choose_branch("score", params={**params, "spark_mode": "emr"}) == "score.upload_code"

    def test_parsing_reads_no_spark_mode_from_the_env(self, tmp_path, monkeypatch):
        from airflow.dag_processing.dagbag import DagBag

        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
        monkeypatch.setenv("CHURN_SPARK_MODE", "emr")
        parsed = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags[DAG_ID]
        assert parsed.params.validate()["spark_mode"] == ""

    def test_accepts_an_emr_run(self, dag):
        params = copy.deepcopy(dag.params)
        params.update({"spark_mode": "emr", "emr_cluster_id": "j-ABC123XYZ"})
        assert params.validate()["emr_cluster_id"] == "j-ABC123XYZ"


class TestTimetable:
    """Which day a run processes: the run for D starts after D has ended, and its ds is D."""

    @staticmethod
    def first_run(timetable, now: str):
        """The run the scheduler creates when a DAG with catchup off is unpaused at `now`.

        The scheduler's own timetable (the DAG's, deserialized as the scheduler does), with
        the clock it reads pinned to `now`.
        """
        from unittest import mock

        import pendulum
        from airflow.serialization.decoders import decode_timetable
        from airflow.serialization.encoders import encode_timetable
        from airflow.timetables.base import TimeRestriction

        scheduler_timetable = decode_timetable(encode_timetable(timetable))
        with mock.patch("airflow.timetables.interval.utcnow", return_value=pendulum.parse(now)):
            return scheduler_timetable.next_dagrun_info(
                last_automated_data_interval=None,
                restriction=TimeRestriction(earliest=pendulum.datetime(2025, 2, 25),
                                            latest=None, catchup=False))

    def test_daily_run_processes_the_day_that_ended(self, dag):
        info = self.first_run(dag.timetable, "2025-03-02T09:30:00Z")
        assert info.logical_date.isoformat() == "2025-03-01T00:00:00+00:00"  # ds = 2025-03-01
        assert info.run_after.isoformat() == "2025-03-02T00:00:00+00:00"  # after the day ended

    def test_run_id_names_the_day_processed(self, dag):
        from airflow.utils.types import DagRunType

        info = self.first_run(dag.timetable, "2025-03-02T09:30:00Z")
        run_id = dag.timetable.generate_run_id(run_type=DagRunType.SCHEDULED,
                                               run_after=info.run_after,
                                               data_interval=info.data_interval)
        assert run_id == "scheduled__2025-03-01T00:00:00+00:00"

    def test_other_crons_process_the_previous_day(self, tmp_path_factory):
        from airflow.dag_processing.dagbag import DagBag

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home_cron")))
            patch.setenv("CHURN_SCHEDULE", "0 6 * * *")
            dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags[DAG_ID]
        info = self.first_run(dag.timetable, "2025-03-02T09:30:00Z")
        assert info.run_after.isoformat() == "2025-03-02T06:00:00+00:00"
        assert info.logical_date.date().isoformat() == "2025-03-01"  # ds: the previous day
