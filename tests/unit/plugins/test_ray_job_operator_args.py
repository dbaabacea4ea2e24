"""SubmitRayJobOperator without a cluster: argument checks, ids, templated fields, runtime_env."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from churn_airflow.operators.ray_job import (
    SubmitRayJobOperator,
    base_submission_id,
    churn_runtime_env,
    exec_entrypoint,
    submission_id_for_try,
)

DAG_ID = "churn_daily"
RUN_ID = "scheduled__2026-11-26T00:00:00+00:00"
TASK_ID = "train_model"
ENTRYPOINT = "python train.py --ds {{ ds }}"


def operator(**kwargs) -> SubmitRayJobOperator:
    return SubmitRayJobOperator(task_id=TASK_ID, **{"entrypoint": ENTRYPOINT, **kwargs})


class TestSubmitRayJobOperatorArguments:
    def test_init_stores_arguments_without_io(self):
        op = operator(ray_conn_id="no_such_connection", job_timeout=timedelta(minutes=5),
                      entrypoint_num_cpus=1, metadata={"team": "ml"})
        assert (op.entrypoint, op.ray_conn_id, op.job_timeout) == (
            ENTRYPOINT, "no_such_connection", 300.0)
        assert op.entrypoint_num_cpus == 1 and op.metadata == {"team": "ml"}
        assert op.submission_id is None and op.deferrable is False

    def test_templated_fields(self):
        assert tuple(SubmitRayJobOperator.template_fields) == ("entrypoint", "runtime_env", "metadata")

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"entrypoint": "  "}, "entrypoint"),
        ({"entrypoint_num_cpus": -1}, "entrypoint_num_cpus"),
        ({"deferrable": True, "wait_for_completion": False}, "wait_for_completion"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"job_timeout": 0}, "job_timeout"),
        ({"job_timeout": 60, "wait_for_completion": False}, "job_timeout"),
    ])
    def test_arguments_that_do_not_fit_raise(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            operator(**kwargs)


class TestSubmissionIds:
    def test_deterministic_and_safe(self):
        first = base_submission_id(DAG_ID, RUN_ID, TASK_ID, -1)
        assert first == base_submission_id(DAG_ID, RUN_ID, TASK_ID, -1)
        assert re.fullmatch(r"af-churn_daily-train_model-[0-9a-f]{16}", first)

    def test_each_component_changes_the_id(self):
        ids = {
            base_submission_id(DAG_ID, RUN_ID, TASK_ID, -1),
            base_submission_id("other", RUN_ID, TASK_ID, -1),
            base_submission_id(DAG_ID, "manual__2026-11-26", TASK_ID, -1),
            base_submission_id(DAG_ID, RUN_ID, "score", -1),
            base_submission_id(DAG_ID, RUN_ID, TASK_ID, 0),
        }
        assert len(ids) == 5

    def test_unsafe_characters_and_length(self):
        got = base_submission_id("a/b c" * 40, RUN_ID, "t:1", 3)
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", got) and len(got) <= 100

    def test_try_number_suffix(self):
        assert submission_id_for_try("af-x", 1) == "af-x"
        assert submission_id_for_try("af-x", 3) == "af-x-try3"


class TestChurnRuntimeEnv:
    def test_ships_ray_jobs_and_churn(self):
        env = churn_runtime_env("/repo", env_vars={"CHURN_DATA_ROOT": "/data"}, pip=["xgboost-cpu"])
        assert env == {
            "working_dir": str(Path("/repo/ray_jobs")),
            "py_modules": [str(Path("/repo/include/churn"))],
            "excludes": ["__pycache__/", "*.pyc"],
            "env_vars": {"CHURN_DATA_ROOT": "/data"},
            "pip": ["xgboost-cpu"],
        }

    def test_optional_keys_left_out(self):
        env = churn_runtime_env(Path("/repo"), working_dir="/elsewhere")
        assert env["working_dir"] == "/elsewhere" and set(env) == {
            "working_dir", "py_modules", "excludes"}


class TestExecEntrypoint:
    """`exec` makes the driver the job supervisor's child, so it dies with a crashed head."""

    @pytest.mark.parametrize("entrypoint", [
        "python train.py --ds 2026-11-26",
        "  /usr/bin/python3 train.py 'a b' > out.log 2>&1",
    ])
    def test_one_simple_command_gets_exec(self, entrypoint):
        assert exec_entrypoint(entrypoint) == f"exec {entrypoint.strip()}"

    @pytest.mark.parametrize("entrypoint", [
        "cd jobs && python train.py",
        "python a.py; python b.py",
        "python train.py &",
        "python gen.py | python train.py",
        "python train.py --ds $(date)",
        "FLAG=1 python train.py",
        "export FLAG=1",
        "exec python train.py",
        "if true; then python train.py; fi",
        "python a.py\npython b.py",
    ])
    def test_anything_else_is_left_alone(self, entrypoint):
        assert exec_entrypoint(entrypoint) == entrypoint
