"""Unit tests of RayJobHook's pure parts: connection settings, log offsets, result parsing."""

from __future__ import annotations

import json

import pytest
import requests

from churn_airflow.hooks.ray_job import (
    RayConnSettings,
    RayJobError,
    RayJobHook,
    _is_agent_unavailable,
    _is_connection_error,
    conn_settings,
    last_lines,
    parse_result,
    read_token,
    split_new_lines,
)

CONN_ID = "ray_unit"


def settings(**overrides) -> RayConnSettings:
    fields = {"host": "127.0.0.1", "port": 8265, "schema": None, "password": None,
              "extra": {"token_path": None}}
    return conn_settings(**{**fields, **overrides})


class TestConnSettings:
    def test_password_becomes_bearer_header(self):
        got = settings(password="test-token")
        assert got == RayConnSettings("http://127.0.0.1:8265",
                                      {"Authorization": "Bearer test-token"}, True)

    def test_token_file_is_the_fallback(self, tmp_path):
        token_file = tmp_path / "auth_token"
        token_file.write_text("file-token\n")
        got = settings(extra={"token_path": str(token_file)})
        assert got.headers == {"Authorization": "Bearer file-token"}

    def test_password_wins_over_token_file(self, tmp_path):
        token_file = tmp_path / "auth_token"
        token_file.write_text("file-token")
        assert read_token("pw-token", str(token_file)) == "pw-token"

    def test_no_token_means_no_auth_header(self, tmp_path):
        got = settings(extra={"token_path": str(tmp_path / "missing")})
        assert got.headers == {}

    def test_explicit_authorization_header_is_kept(self):
        got = settings(password="ignored",
                       extra={"token_path": None, "headers": {"authorization": "Basic abc"}})
        assert got.headers == {"authorization": "Basic abc"}

    def test_extra_headers_and_tls(self):
        got = settings(schema="https", port=443, password="t0ken",
                       extra={"verify": "/etc/ca.pem", "headers": {"X-Team": "churn"},
                              "token_path": None})
        assert got.address == "https://127.0.0.1:443"
        assert got.headers == {"X-Team": "churn", "Authorization": "Bearer t0ken"}
        assert got.verify == "/etc/ca.pem"

    def test_host_given_as_url_keeps_its_port(self):
        got = settings(host="http://ray-head.internal:8265/", port=9999)
        assert got.address == "http://ray-head.internal:8265"

    def test_bad_verify_and_missing_host_raise(self):
        with pytest.raises(ValueError, match="verify"):
            settings(extra={"verify": 1})
        with pytest.raises(ValueError, match="host"):
            settings(host="")

    def test_ssl_context_follows_verify(self):
        assert RayConnSettings("http://h", verify=False).ssl_context() is False
        assert RayConnSettings("http://h", verify=True).ssl_context() is None


class TestHookConnection:
    def test_settings_from_airflow_connection_env(self, monkeypatch):
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
            {"conn_type": "http", "host": "10.0.0.5", "port": 8265, "password": "tok-12345",
             "extra": {"verify": False}}))
        hook = RayJobHook(ray_conn_id=CONN_ID)
        assert hook.settings == RayConnSettings(
            "http://10.0.0.5:8265", {"Authorization": "Bearer tok-12345"}, False)

    def test_ray_address_env_override_is_refused(self, monkeypatch):
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
            {"conn_type": "http", "host": "10.0.0.5", "port": 8265}))
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
        with pytest.raises(RayJobError, match="RAY_ADDRESS=127.0.0.1:6379"):
            RayJobHook(ray_conn_id=CONN_ID).client  # noqa: B018 - property under test


class TestHookRetries:
    def test_connection_refused_is_retried_then_raised(self, monkeypatch):
        from tests.support.ray_head import free_port

        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": free_port(),
             "extra": {"token_path": None}}))
        hook = RayJobHook(ray_conn_id=CONN_ID)
        with pytest.raises(requests.ConnectionError):
            hook.find_job("af-nobody-listens")
        assert RayJobHook.find_job.statistics["attempt_number"] == 4


class TestSplitNewLines:
    def test_partial_line_waits_until_final(self):
        assert split_new_lines("a\nb\npart", 0, final=False) == (["a", "b"], 4)
        assert split_new_lines("a\nb\npart", 4, final=True) == (["part"], 8)

    def test_successive_polls_emit_each_line_once(self):
        log, offset, seen = "", 0, []
        for chunk in ["tick 0\ntic", "k 1\n", "", "tick 2\n{\"v\": 1}"]:
            log += chunk
            lines, offset = split_new_lines(log, offset, final=False)
            seen += lines
        lines, offset = split_new_lines(log, offset, final=True)
        assert seen + lines == ["tick 0", "tick 1", "tick 2", '{"v": 1}']
        assert offset == len(log)

    def test_nothing_new(self):
        assert split_new_lines("a\n", 2, final=True) == ([], 2)


SUBMISSION_ID = "af-churn_daily-train-0123456789abcdef"


class TestResultAndTail:
    def test_last_line_json_object_is_the_result(self):
        logs = 'hello\n{"model_version": "v7"}\n\n'
        assert parse_result(logs, SUBMISSION_ID) == {"model_version": "v7"}

    def test_late_flushed_ray_supervisor_line_is_skipped(self):
        # job_supervisor.py writes this line through a buffered file: it can land last
        logs = ('INFO job_manager.py:581 -- Runtime env is setting up.\n{"model_version": "v8"}\n'
                f"Running entrypoint for job {SUBMISSION_ID}: python train.py\n")
        assert parse_result(logs, SUBMISSION_ID) == {"model_version": "v8"}

    @pytest.mark.parametrize("logs", ["", "done\n", '[1, 2]\n', '{"a": 1}\nbye\n', "{broken\n",
                                      "Running entrypoint for job other: x\n"])
    def test_no_result_unless_last_line_is_one_object(self, logs):
        assert parse_result(logs, SUBMISSION_ID) is None

    def test_last_lines_skip_blank(self):
        assert last_lines("a\n\nb\nc\n\n", 2) == ["b", "c"]
        assert last_lines("a\n", 0) == []


class TestRetryPredicates:
    def test_connection_errors_are_retried(self):
        assert _is_connection_error(requests.ConnectionError("refused"))
        assert _is_connection_error(ConnectionRefusedError())

    def test_server_answers_are_not_retried(self):
        assert not _is_connection_error(RuntimeError("Request failed with status code 500"))
        assert not _is_connection_error(RayJobError("HTTP 404"))

    def test_submit_retries_only_when_no_agent(self):
        assert _is_agent_unavailable(RuntimeError(
            "Request failed with status code 500: No available agent to submit job, "
            "please try again later.."))
        assert not _is_agent_unavailable(RuntimeError(
            "Request failed with status code 400: Job with submission_id x already exists."))
