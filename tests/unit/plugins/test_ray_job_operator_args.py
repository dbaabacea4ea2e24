"""SubmitRayJobOperator without a cluster: argument checks, ids, templated fields, commands."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from churn_airflow.operators.ray_job import (
    RayJobLink,
    SubmitRayJobOperator,
    exec_command,
    submission_id,
    submission_prefix,
)

DAG_ID = "churn_daily"
RUN_ID = "scheduled__2026-11-26T00:00:00+00:00"
TASK_ID = "train_model"
ENTRYPOINT = ["python", "train.py", "--ds", "{{ ds }}"]


def operator(**kwargs) -> SubmitRayJobOperator:
    return SubmitRayJobOperator(task_id=TASK_ID, **{"entrypoint": ENTRYPOINT, **kwargs})


class TestSubmitRayJobOperatorArguments:
    def test_init_stores_arguments_without_io(self):
        op = operator(ray_conn_id="no_such_connection", job_timeout=timedelta(minutes=5),
                      entrypoint_num_cpus=1, metadata={"team": "ml"})
        assert (op.entrypoint, op.ray_conn_id, op.wait_options.job_timeout) == (
            ENTRYPOINT, "no_such_connection", 300.0)
        assert op.entrypoint_num_cpus == 1 and op.metadata == {"team": "ml"}
        assert op.submission_id is None and op.wait_options.deferrable is False

    def test_templated_fields(self):
        assert tuple(SubmitRayJobOperator.template_fields) == (
            "entrypoint", "runtime_env", "metadata", "namespace")

    def test_dashboard_link(self):
        assert [link.name for link in SubmitRayJobOperator.operator_extra_links] == ["Ray job"]
        assert RayJobLink().get_link(operator(), ti_key=None) == ""  # before any submission

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"entrypoint": "python train.py"}, "argv list"),  # a shell string is refused
        ({"entrypoint": []}, "argv list"),
        ({"entrypoint": ["python", 3]}, "argv list"),
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
    def test_prefix_is_deterministic_and_safe(self):
        first = submission_prefix("churn", DAG_ID, RUN_ID, TASK_ID, -1)
        assert first == submission_prefix("churn", DAG_ID, RUN_ID, TASK_ID, -1)
        assert re.fullmatch(r"af-churn-churn_daily-train_model-[0-9a-f]{16}-", first)

    def test_each_component_changes_the_prefix(self):
        ids = {
            submission_prefix("churn", DAG_ID, RUN_ID, TASK_ID, -1),
            submission_prefix("other-deployment", DAG_ID, RUN_ID, TASK_ID, -1),
            submission_prefix("churn", "other", RUN_ID, TASK_ID, -1),
            submission_prefix("churn", DAG_ID, "manual__2026-11-26", TASK_ID, -1),
            submission_prefix("churn", DAG_ID, RUN_ID, "score", -1),
            submission_prefix("churn", DAG_ID, RUN_ID, TASK_ID, 0),
        }
        assert len(ids) == 6

    def test_unsafe_characters_and_length(self):
        got = submission_id(submission_prefix("n" * 32, "a/b c" * 40, RUN_ID, "t:1", 3), "ab12cd34")
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", got) and len(got) <= 128

    @pytest.mark.parametrize("namespace", ["", "a b", "x'; rm -rf /", "n" * 33, "a/b"])
    def test_unusable_namespace_fails_the_submission(self, namespace):
        from churn_airflow.operators.ray_job import _checked_namespace

        with pytest.raises(ValueError, match="namespace must match"):
            _checked_namespace(namespace)


class TestExecCommand:
    """Every rendered word is quoted for Ray's `/bin/sh -c`; `exec` keeps the driver the
    supervisor's child, so it dies with a crashed head."""

    def test_plain_words_stay_readable(self):
        assert exec_command(["python", "train.py", "--ds", "2026-11-26"]) == (
            "exec python train.py --ds 2026-11-26")

    @pytest.mark.parametrize("hostile", [
        "x'; touch /tmp/pwned; '", "$(touch /tmp/pwned)", "`touch /tmp/pwned`",
        "a\ntouch /tmp/pwned", "a; touch /tmp/pwned", "a && b", "a | b", "> /etc/passwd"])
    def test_a_hostile_value_is_one_word_for_the_shell(self, hostile):
        import shlex

        command = exec_command(["python", "train.py", "--spec", hostile])
        assert shlex.split(command) == ["exec", "python", "train.py", "--spec", hostile]
