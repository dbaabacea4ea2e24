"""Hook for the Ray Jobs API: submit, watch, read logs of and stop Ray jobs.

Connection (default id ``ray_default``, conn_type ``http``):

- host/port/schema: the Jobs API (dashboard) address, e.g. ``http://127.0.0.1:8265``;
- password: the cluster's auth token, sent as ``Authorization: Bearer <token>`` (Ray 2.5x+
  heads started with ``ray start --head`` require it);
- extra ``token_path``: file holding the token when the password is empty (default
  ``~/.ray/auth_token``; no password and no file means no auth header);
- extra ``verify``: ``true``/``false`` or the path of a CA bundle (TLS);
- extra ``headers``: more HTTP headers (e.g. a proxy's own auth).

The sync methods wrap ``ray.job_submission.JobSubmissionClient``, except the reads that must
tell "no such job" (HTTP 404) from other failures, which call the REST endpoints with requests;
the ``async_*`` methods talk to the same endpoints with aiohttp so that triggers never block the
event loop.

Watching a job survives a head that is down for a while (restart, network blip): its status and
log reads retry connection errors for up to ``HEAD_UNREACHABLE_TOLERANCE_S``. A head restarted
without GCS fault tolerance forgets its jobs; reads then raise ``RayJobNotFoundError``.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tenacity
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

DEFAULT_TOKEN_PATH = "~/.ray/auth_token"
ACTIVE_STATUSES = frozenset({"PENDING", "RUNNING"})
_ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_HTTP_TIMEOUT_S = 30.0
HEAD_UNREACHABLE_TOLERANCE_S = 180.0


class RayJobError(AirflowException):
    """A Ray job ended in a state other than SUCCEEDED, or could not be watched."""


class RayJobNotFoundError(RayJobError):
    """The cluster has no job with that id (never submitted, deleted, or lost by a head restart)."""


def _retry_only(predicate: Callable[[BaseException], bool], *, stop: tenacity.stop.stop_base,
                wait: tenacity.wait.wait_base, **options: Any) -> Any:
    """A tenacity decorator that retries only the errors ``predicate`` accepts.

    Args:
        predicate: tells a retryable error from any other, which is raised at once.
        stop: when to give up; the last error is then raised as it is.
        wait: the wait between tries.
        options: more ``tenacity.retry`` options (e.g. ``before_sleep``).

    Returns:
        The decorator (for sync and async functions alike).
    """
    return tenacity.retry(retry=tenacity.retry_if_exception(predicate), stop=stop, wait=wait,
                          reraise=True, **options)


def _is_connection_error(exc: BaseException) -> bool:
    """Retry predicate: the request never got an answer (connection refused, reset, DNS)."""
    import aiohttp
    import requests

    return isinstance(
        exc, (requests.ConnectionError, ConnectionError, aiohttp.ClientConnectionError)
    )


_retry_on_connection_error = _retry_only(
    _is_connection_error, stop=tenacity.stop_after_attempt(4),
    wait=tenacity.wait_exponential(multiplier=0.5, max=5),
)


def _log_head_unreachable(retry_state: tenacity.RetryCallState) -> None:
    """Say in the task log that the head is unreachable and when the next try is."""
    hook = retry_state.args[0]
    hook.log.warning(
        "Ray head at %s unreachable (%s); retrying in %.1f s (attempt %d, giving up after %.0f s)",
        hook.settings.address, retry_state.outcome.exception(), retry_state.upcoming_sleep,
        retry_state.attempt_number, HEAD_UNREACHABLE_TOLERANCE_S,
    )


# Reads made while watching a running job: a head restart takes longer than the 4 quick tries
# above, and giving up early would fail a task whose job may still be fine.
_retry_while_head_unreachable = _retry_only(
    _is_connection_error, stop=tenacity.stop_after_delay(HEAD_UNREACHABLE_TOLERANCE_S),
    wait=tenacity.wait_exponential(multiplier=0.5, max=5), before_sleep=_log_head_unreachable,
)


def _is_agent_unavailable(exc: BaseException) -> bool:
    """Retry predicate of submit: the head had no job agent yet and created no job.

    Ray answers HTTP 500 "No available agent to submit job, please try again later." while a
    freshly started head's agent is not registered; the submission was not accepted.
    """
    return isinstance(exc, RuntimeError) and "No available agent to submit job" in str(exc)


_retry_submit_until_agent_ready = _retry_only(
    _is_agent_unavailable, stop=tenacity.stop_after_attempt(6),
    wait=tenacity.wait_exponential(multiplier=1, max=10),
)


@dataclass(frozen=True)
class RayConnSettings:
    """Everything needed to reach a Jobs API: address, HTTP headers and TLS verification."""

    address: str
    headers: dict[str, str] = field(default_factory=dict)
    verify: bool | str = True

    def ssl_context(self) -> ssl.SSLContext | bool | None:
        """The aiohttp ``ssl=`` argument matching ``verify`` (None = default checks)."""
        if self.verify is False:
            return False
        if isinstance(self.verify, str):
            path = Path(self.verify).expanduser()
            if path.is_dir():
                return ssl.create_default_context(capath=str(path))
            return ssl.create_default_context(cafile=str(path))
        return None


def read_token(password: str | None, token_path: str | None) -> str | None:
    """The auth token: the connection's password, else the token file, else None.

    Args:
        password: the connection's password.
        token_path: file holding the token (``~`` is expanded); None skips the file.

    Returns:
        The token, or None when neither source has one.
    """
    if password:
        return password
    if token_path:
        path = Path(token_path).expanduser()
        if path.is_file():
            return path.read_text().strip() or None
    return None


def conn_settings(
    *,
    host: str | None,
    port: int | None,
    schema: str | None,
    password: str | None,
    extra: dict[str, Any],
) -> RayConnSettings:
    """Build the Jobs API settings from an Airflow connection's fields.

    Args:
        host: host name, or a full URL (``http://h:8265``).
        port: port, if not part of ``host``.
        schema: URL scheme (``http``/``https``); defaults to ``http``.
        password: the auth token (may be empty).
        extra: the connection's extra (``verify``, ``token_path``, ``headers``).

    Returns:
        The settings.

    Raises:
        ValueError: when the host is missing or ``verify`` has a wrong type.
    """
    if not host:
        raise ValueError("The Ray connection needs a host (the Jobs API / dashboard address).")
    address = host if "://" in host else f"{schema or 'http'}://{host}"
    if port and address.count(":") < 2:
        address = f"{address}:{port}"
    verify = extra.get("verify", True)
    if not isinstance(verify, (bool, str)):
        raise ValueError(f"extra.verify must be a bool or a CA path, got {verify!r}")
    headers = {str(k): str(v) for k, v in (extra.get("headers") or {}).items()}
    token = read_token(password, extra.get("token_path", DEFAULT_TOKEN_PATH))
    if token and not any(k.lower() == "authorization" for k in headers):
        headers["Authorization"] = f"Bearer {token}"
    return RayConnSettings(address=address.rstrip("/"), headers=headers, verify=verify)


def split_new_lines(text: str, offset: int, final: bool) -> tuple[list[str], int]:
    """The complete lines of ``text`` after character ``offset``, and the new offset.

    A trailing partial line is held back until ``final`` (the job is over), so that a line
    is emitted once and whole.

    Args:
        text: the job's whole log so far.
        offset: characters of ``text`` already emitted.
        final: emit a trailing partial line too.

    Returns:
        (new lines without their newline, offset after the last emitted character).
    """
    chunk = text[offset:]
    cut = len(chunk) if final else chunk.rfind("\n") + 1
    emitted = chunk[:cut]
    return emitted.splitlines(), offset + len(emitted)


def last_lines(text: str, count: int) -> list[str]:
    """The last ``count`` non-empty lines of a log."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-count:] if count > 0 else []


def parse_result(logs: str, submission_id: str) -> dict[str, Any] | None:
    """The job's result: the JSON object on its last non-empty log line, else None.

    Ray's supervisor writes "Running entrypoint for job <id>: ..." through a buffered file
    that may be flushed only after the entrypoint's own output, so that line is skipped.

    Args:
        logs: the job's whole log.
        submission_id: the job's submission id.

    Returns:
        The decoded object, or None when the last line is not one JSON object.
    """
    ray_line = f"Running entrypoint for job {submission_id}: "
    tail = last_lines("\n".join(l for l in logs.splitlines() if not l.startswith(ray_line)), 1)
    if not tail:
        return None
    try:
        value = json.loads(tail[0])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _raise_for_reply(status: int, body: str, request: str, submission_id: str,
                     address: str) -> None:
    """Raise unless HTTP 200: ``RayJobNotFoundError`` for 404, ``RayJobError`` otherwise."""
    if status == 404:
        raise RayJobNotFoundError(
            f"Ray job {submission_id} is not known to the cluster at {address}")
    if status != 200:
        raise RayJobError(f"{request}: HTTP {status} {body[:500]}")


def _settings_of(conn: Connection) -> RayConnSettings:
    """``conn_settings`` of an Airflow connection."""
    return conn_settings(
        host=conn.host,
        port=conn.port,
        schema=conn.schema,
        password=conn.password,
        extra=conn.extra_dejson,
    )


class RayJobHook(BaseHook):
    """Thin client of a Ray cluster's Jobs API (sync and async).

    :param ray_conn_id: Airflow connection to the Jobs API (see the module docstring).
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "http"
    hook_name = "Ray Jobs API"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id

    @cached_property
    def settings(self) -> RayConnSettings:
        """Address, headers and TLS options read from the Airflow connection."""
        return _settings_of(self.get_connection(self.ray_conn_id))

    async def aget_settings(self) -> RayConnSettings:
        """``settings``, reading the connection without blocking the event loop."""
        if "settings" not in self.__dict__:
            self.__dict__["settings"] = _settings_of(await self.aget_connection(self.ray_conn_id))
        return self.settings

    @cached_property
    def client(self) -> JobSubmissionClient:
        """The Ray SDK client for the connection's address (checks the server version)."""
        from ray.job_submission import JobSubmissionClient

        self._check_no_address_override()
        return _retry_on_connection_error(JobSubmissionClient)(
            self.settings.address, headers=dict(self.settings.headers), verify=self.settings.verify
        )

    def _check_no_address_override(self) -> None:
        """Refuse to run when RAY_ADDRESS-like variables would redirect the SDK elsewhere."""
        for name in _ADDRESS_ENV_VARS:
            value = os.environ.get(name)
            if value and value.rstrip("/") != self.settings.address:
                raise RayJobError(
                    f"{name}={value} is set and overrides the address of connection "
                    f"{self.ray_conn_id!r} ({self.settings.address}); unset it."
                )

    @_retry_submit_until_agent_ready
    def submit_job(
        self,
        *,
        entrypoint: str,
        submission_id: str,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float | None = None,
    ) -> str:
        """Submit a job.

        Retried only while the head has no job agent yet (nothing was accepted); never on
        connection errors, where a lost answer may hide an accepted submission.

        :param entrypoint: shell command the job runs.
        :param submission_id: the job's id (unique on the cluster).
        :param runtime_env: Ray runtime_env (local working_dir/py_modules are uploaded).
        :param metadata: string key/values stored with the job.
        :param entrypoint_num_cpus: CPUs reserved for the entrypoint process.
        :return: the submission id.
        """
        self.log.info("Submitting Ray job %s: %s", submission_id, entrypoint)
        returned = self.client.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env=runtime_env,
            metadata=metadata,
            entrypoint_num_cpus=entrypoint_num_cpus,
        )
        if returned != submission_id:
            raise RayJobError(f"Asked for submission id {submission_id}, got {returned}")
        return returned

    @_retry_on_connection_error
    def get_job_info(self, submission_id: str) -> JobDetails:
        """The job's details (status, message, times, metadata)."""
        return self.client.get_job_info(submission_id)

    @_retry_while_head_unreachable
    def get_job_status(self, submission_id: str) -> JobStatus:
        """The job's status; raises ``RayJobNotFoundError`` when the cluster has no such job."""
        from ray.job_submission import JobStatus

        return JobStatus(self._get_job_json(submission_id)["status"])

    @_retry_on_connection_error
    def find_job(self, submission_id: str) -> JobDetails | None:
        """The job's details, or None when the cluster has no job with that id."""
        from ray.job_submission import JobDetails

        try:
            return JobDetails(**self._get_job_json(submission_id))
        except RayJobNotFoundError:
            return None

    @_retry_while_head_unreachable
    def get_job_logs(self, submission_id: str) -> str:
        """The job's whole log (driver stdout and stderr); raises ``RayJobNotFoundError``."""
        return str(self._get_job_json(submission_id, "/logs")["logs"])

    def _get_job_json(self, submission_id: str, endpoint: str = "") -> Any:
        """GET ``/api/jobs/<submission_id><endpoint>``; raises unless HTTP 200 (404: not found)."""
        import requests

        path = f"/api/jobs/{submission_id}{endpoint}"
        reply = requests.get(
            f"{self.settings.address}{path}",
            headers=self.settings.headers,
            verify=self.settings.verify,
            timeout=_HTTP_TIMEOUT_S,
        )
        _raise_for_reply(reply.status_code, reply.text, f"GET {path}", submission_id,
                         self.settings.address)
        return reply.json()

    def get_new_log_lines(
        self, submission_id: str, offset: int, final: bool = False
    ) -> tuple[list[str], int]:
        """Log lines written since ``offset`` characters, and the new offset.

        :param offset: characters already read.
        :param final: also return a trailing line without newline (the job is over).
        """
        return split_new_lines(self.get_job_logs(submission_id), offset, final)

    @_retry_on_connection_error
    def stop_job(self, submission_id: str) -> bool:
        """Ask the cluster to stop the job (SIGTERM, then SIGKILL after a grace period).

        :return: True when the job was still running.
        """
        self.log.info("Stopping Ray job %s", submission_id)
        return self.client.stop_job(submission_id)

    @_retry_on_connection_error
    def delete_job(self, submission_id: str) -> bool:
        """Delete a terminal job and its metadata (logs stay on disk).

        :return: True when deleted.
        """
        return self.client.delete_job(submission_id)

    @_retry_on_connection_error
    def list_jobs(self) -> list[JobDetails]:
        """All jobs the cluster knows, in any state."""
        return self.client.list_jobs()

    async def _async_job_request(self, method: str, submission_id: str, endpoint: str = "") -> Any:
        """``method /api/jobs/<submission_id><endpoint>`` with aiohttp; raises unless HTTP 200."""
        import aiohttp

        path = f"/api/jobs/{submission_id}{endpoint}"
        settings = await self.aget_settings()
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(headers=settings.headers, timeout=timeout) as session:
            async with session.request(
                method, f"{settings.address}{path}", ssl=settings.ssl_context()
            ) as reply:
                body = await reply.text()
                _raise_for_reply(reply.status, body, f"{method} {path}", submission_id,
                                 settings.address)
                return json.loads(body)

    @_retry_while_head_unreachable
    async def async_get_job_status(self, submission_id: str) -> str:
        """The job's status name (``PENDING`` ... ``SUCCEEDED``), without blocking the loop."""
        info = await self._async_job_request("GET", submission_id)
        return str(info["status"])

    @_retry_while_head_unreachable
    async def async_get_job_logs(self, submission_id: str) -> str:
        """The job's whole log, without blocking the loop."""
        reply = await self._async_job_request("GET", submission_id, "/logs")
        return str(reply["logs"])

    @_retry_on_connection_error
    async def async_stop_job(self, submission_id: str) -> bool:
        """Ask the cluster to stop the job, without blocking the loop.

        :return: True when the job was still running.
        """
        self.log.info("Stopping Ray job %s", submission_id)
        reply = await self._async_job_request("POST", submission_id, "/stop")
        return bool(reply["stopped"])
