"""SubmitRayJobOperator, RayJobHook and RayJobTrigger against a real local Ray head.

Every test ends with no job PENDING/RUNNING on the head (checked with the Ray SDK's own
`list_jobs`). Synchronisation is by bounded polls on job status or log content, never sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from churn_airflow.hooks.ray_job import RayJobError, RayJobHook
from churn_airflow.operators.ray_job import SubmitRayJobOperator
from churn_airflow.ray_runtime import churn_runtime_env
from churn_airflow.triggers.ray_job import RayJobTrigger
from tests.support.processes import group_alive
from tests.support.ray_jobs import TaskInstanceStub, defer, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINTS = REPO_ROOT / "tests" / "support" / "ray_entrypoints"
CONN_ID = "ray_test"
DAG_ID = "ray_operator_it"
TASK_ID = "train"
TICKER = [sys.executable, "ticker.py"]
ACTIVE = {"PENDING", "RUNNING"}


@pytest.fixture
def ray_conn(ray_head, monkeypatch) -> str:
    """Airflow connection `ray_test` to the test head (token in the password)."""
    host, port = ray_head.dashboard_url.removeprefix("http://").split(":")
    conn = {"conn_type": "http", "host": host, "port": int(port), "password": ray_head.token}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_TEST", json.dumps(conn))
    return CONN_ID


@pytest.fixture
def sdk_client(ray_head):
    """Ray's own client, independent of the hook under test."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(
        ray_head.dashboard_url, headers={"Authorization": f"Bearer {ray_head.token}"}
    )


@pytest.fixture(autouse=True)
def no_job_left_running(sdk_client):
    """After each test: no job may be PENDING/RUNNING (stop leftovers, then fail)."""
    yield
    leftovers = [j.submission_id for j in sdk_client.list_jobs() if j.status in ACTIVE]
    for submission_id in leftovers:
        sdk_client.stop_job(submission_id)
    assert leftovers == []


@pytest.fixture
def ti(request) -> TaskInstanceStub:
    """A fresh task instance (unique run id per test)."""
    return TaskInstanceStub(dag_id=DAG_ID, run_id=f"{request.node.name}__{uuid.uuid4().hex[:8]}")


def make_operator(ray_conn: str, args: str | list[str], **kwargs: Any) -> SubmitRayJobOperator:
    """The operator running `ticker.py <args>` from the entrypoints dir, churn via py_modules."""
    return SubmitRayJobOperator(
        task_id=TASK_ID,
        entrypoint=[*TICKER, *(args.split() if isinstance(args, str) else args)],
        runtime_env=churn_runtime_env(REPO_ROOT, working_dir=ENTRYPOINTS),
        ray_conn_id=ray_conn,
        poll_interval=0.3,
        **kwargs,
    )


def job_status(sdk_client, submission_id: str) -> str:
    return str(sdk_client.get_job_status(submission_id))


def wait_terminal(sdk_client, submission_id: str) -> str:
    """The job's terminal status (bounded poll)."""
    wait_until(lambda: sdk_client.get_job_status(submission_id).is_terminal(), what=submission_id)
    return job_status(sdk_client, submission_id)


def logged_lines(text: str, submission_id: str) -> list[str]:
    """The job log lines the operator/trigger printed for `submission_id`, in order.

    Airflow's console renderer pads the message and appends ``[logger] loc=...``.
    """
    pattern = re.compile(rf"\[ray {re.escape(submission_id)}\] (.*?)\s+\[[\w.]+\](?: loc=\S+)?$")
    return [m.group(1) for m in map(pattern.search, text.splitlines()) if m]


def job_ids_of(sdk_client, ti: TaskInstanceStub, namespace: str = "airflow") -> list[str]:
    """The submission ids of every try generation of the task instance, oldest first."""
    jobs = {j.submission_id: j.start_time or 0 for j in sdk_client.list_jobs()
            if (j.submission_id or "").startswith(ti.prefix(namespace))}
    return sorted(jobs, key=jobs.get)


class TestSubmitRayJobOperatorWait:
    def test_success_returns_result_streams_logs_once(self, ray_conn, ti, sdk_client, capfd):
        op = SubmitRayJobOperator(
            task_id=TASK_ID,
            entrypoint=[*TICKER, "--ticks", "4", "--interval", "0.4", "--model-version", "m-42",
                        "--import-churn", "--echo-env", "CHURN_TEST_FLAG"],
            runtime_env=churn_runtime_env(
                REPO_ROOT, working_dir=ENTRYPOINTS, env_vars={"CHURN_TEST_FLAG": "on"}
            ),
            entrypoint_num_cpus=0.5,
            metadata={"purpose": "it"},
            ray_conn_id=ray_conn,
            poll_interval=0.2,
        )
        value = op.execute(ti.context())

        sid = value["submission_id"]
        assert sid.startswith(ti.prefix()) and sid == ti.xcoms["submission_id"]
        assert op.job_url == f"{ray_conn_url(ray_conn)}/#/jobs/{sid}"
        assert ti.state_store == {}  # the job ended: the next try (a clear) submits a new one
        assert value["status"] == "SUCCEEDED"
        result = value["result"]
        assert (result["model_version"], result["ticks"], result["CHURN_TEST_FLAG"]) == ("m-42", 4, "on")
        # churn came through py_modules (unpacked by Ray), not from the repo checkout
        assert "runtime_resources/py_modules_files" in result["churn_file"]
        info = sdk_client.get_job_info(sid)
        assert info.metadata["purpose"] == "it"
        assert info.metadata["airflow_run_id"] == ti.run_id
        assert info.metadata["airflow_try_number"] == "1"
        # every line of the job's log reached the task log once, in order
        streamed = logged_lines(capfd.readouterr().out, sid)
        assert streamed == sdk_client.get_job_logs(sid).splitlines()
        assert [line for line in streamed if line.startswith("tick")] == [f"tick {i}" for i in range(4)]

    def test_hook_finds_no_unknown_job_and_refuses_bad_token(self, ray_conn, ray_head, monkeypatch):
        assert RayJobHook(ray_conn).find_job("af-never-submitted") is None
        host, port = ray_head.dashboard_url.removeprefix("http://").split(":")
        monkeypatch.setenv("AIRFLOW_CONN_RAY_BAD", json.dumps(
            {"conn_type": "http", "host": host, "port": int(port), "password": "not-the-token"}))
        with pytest.raises(RayJobError, match="HTTP 403"):
            RayJobHook("ray_bad").find_job("af-never-submitted")

    def test_failing_entrypoint_raises_with_last_log_lines(self, ray_conn, ti, sdk_client):
        op = make_operator(ray_conn, "--ticks 3 --exit-code 3")
        with pytest.raises(RayJobError) as raised:
            op.execute(ti.context())
        message = str(raised.value)
        assert "status FAILED" in message
        assert "tick 2" in message and "boom: failing with exit code 3" in message
        assert job_status(sdk_client, op.submission_id) == "FAILED"

    def test_job_timeout_stops_job_and_fails(self, ray_conn, ti, sdk_client):
        op = make_operator(ray_conn, "--ticks 600 --interval 0.5", job_timeout=4)
        started = time.monotonic()
        with pytest.raises(RayJobError, match="stopped after job_timeout=4"):
            op.execute(ti.context())
        assert time.monotonic() - started < 60
        assert job_status(sdk_client, op.submission_id) == "STOPPED"

    def test_on_kill_stops_running_job(self, ray_conn, ti, sdk_client):
        op = make_operator(ray_conn, "--ticks 600 --interval 0.5")
        errors: list[BaseException] = []

        def run() -> None:
            try:
                op.execute(ti.context())
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        wait_until(lambda: job_ids_of(sdk_client, ti) and
                   "tick 1" in sdk_client.get_job_logs(job_ids_of(sdk_client, ti)[0]),
                   what="job running")
        (sid,) = job_ids_of(sdk_client, ti)
        op.on_kill()
        worker.join(timeout=90)
        assert not worker.is_alive()
        assert wait_terminal(sdk_client, sid) == "STOPPED"
        assert isinstance(errors[0], RayJobError) and "status STOPPED" in str(errors[0])


HOSTILE_VALUES = ["x'; touch {canary}; '", "$(touch {canary})", "`touch {canary}`",
                  "a\ntouch {canary}", "a; touch {canary}", "../../{canary}"]


def ray_conn_url(conn_id: str) -> str:
    return RayJobHook(conn_id).settings.address.rstrip("/")


class TestSubmitRayJobOperatorArgv:
    def test_hostile_values_reach_the_job_as_plain_words(self, ray_conn, ti, tmp_path):
        canary = tmp_path / "canary"
        values = [value.format(canary=canary) for value in HOSTILE_VALUES]
        args = ["--ticks", "1", *[word for value in values for word in ("--echo-arg", value)]]
        value = make_operator(ray_conn, args).execute(ti.context())
        assert value["status"] == "SUCCEEDED"
        assert value["result"]["echoed"] == values  # each arrived as one word, byte for byte
        assert not canary.exists()  # and no shell ran any of them


class TestSubmitRayJobOperatorRetry:
    def test_retry_reattaches_running_job(self, ray_conn, ti, sdk_client, capfd):
        # try 1 submits and defers; its worker is then lost (the trigger never reports back)
        trigger = defer(make_operator(ray_conn, "--ticks 8 --interval 0.5", deferrable=True), ti)
        assert ti.state_store["ray_submission_id"] == trigger.submission_id

        ti.try_number = 2
        value = make_operator(ray_conn, "--ticks 8 --interval 0.5").execute(ti.context())

        assert value["submission_id"] == trigger.submission_id
        assert value["status"] == "SUCCEEDED" and value["result"]["ticks"] == 8
        assert job_ids_of(sdk_client, ti) == [trigger.submission_id]
        assert "Re-attaching to Ray job" in capfd.readouterr().out

    def test_retry_returns_result_of_succeeded_job_it_never_saw_end(self, ray_conn, ti,
                                                                     sdk_client):
        trigger = defer(make_operator(ray_conn, "--ticks 1 --model-version once",
                                      deferrable=True), ti)
        assert wait_terminal(sdk_client, trigger.submission_id) == "SUCCEEDED"
        ti.try_number = 2
        again = make_operator(ray_conn, "--ticks 1 --model-version twice").execute(ti.context())
        assert again["result"]["model_version"] == "once"
        assert job_ids_of(sdk_client, ti) == [trigger.submission_id]

    def test_recorded_but_never_submitted_id_is_submitted(self, ray_conn, ti, sdk_client):
        # the worker died between recording the id and submitting it
        recorded = ti.prefix() + "deadbeef"
        ti.state_store["ray_submission_id"] = recorded
        value = make_operator(ray_conn, "--ticks 1").execute(ti.context())
        assert value["submission_id"] == recorded
        assert job_ids_of(sdk_client, ti) == [recorded]

    def test_clear_after_success_submits_a_new_job(self, ray_conn, ti, sdk_client):
        first = make_operator(ray_conn, "--ticks 1 --model-version once").execute(ti.context())
        ti.try_number = 2  # cleared: same task instance, same state store, next try
        again = make_operator(ray_conn, "--ticks 1 --model-version twice").execute(ti.context())
        assert again["result"]["model_version"] == "twice"
        assert again["submission_id"] != first["submission_id"]
        assert job_ids_of(sdk_client, ti) == [first["submission_id"], again["submission_id"]]

    def test_retry_after_failed_job_submits_a_new_job(self, ray_conn, ti, sdk_client):
        with pytest.raises(RayJobError):
            make_operator(ray_conn, "--ticks 1 --exit-code 2").execute(ti.context())
        ti.try_number = 2
        value = make_operator(ray_conn, "--ticks 1 --model-version fixed").execute(ti.context())

        first, second = job_ids_of(sdk_client, ti)
        assert value["submission_id"] == second
        assert value["result"]["model_version"] == "fixed"
        assert job_status(sdk_client, first) == "FAILED"

    def test_two_namespaces_give_two_jobs(self, ray_conn, ti, sdk_client):
        # two deployments (or a reset metadata DB) with the same dag, run and task ids
        blue, green = TaskInstanceStub(DAG_ID, ti.run_id), TaskInstanceStub(DAG_ID, ti.run_id)
        one = make_operator(ray_conn, "--ticks 1", namespace="blue").execute(blue.context())
        two = make_operator(ray_conn, "--ticks 1", namespace="green").execute(green.context())
        assert one["submission_id"].startswith("af-blue-")
        assert two["submission_id"].startswith("af-green-")
        assert job_ids_of(sdk_client, blue, "blue") == [one["submission_id"]]
        assert job_ids_of(sdk_client, green, "green") == [two["submission_id"]]
        assert sdk_client.get_job_info(two["submission_id"]).metadata["airflow_namespace"] == "green"


async def run_with_heartbeat(trigger: RayJobTrigger) -> tuple[Any, float, int]:
    """Drive `trigger.run()` to its first event while a 50 ms heartbeat runs on the loop.

    Returns:
        (the event's payload, seconds it took, heartbeats counted meanwhile).
    """
    beats = 0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal beats
        while not done.is_set():
            await asyncio.sleep(0.05)
            beats += 1

    beater = asyncio.create_task(heartbeat())
    started = time.monotonic()
    event = await trigger.run().__anext__()
    elapsed = time.monotonic() - started
    done.set()
    await beater
    return event.payload, elapsed, beats


class TestRayJobTrigger:
    def test_deferrable_success_streams_logs_once(self, ray_conn, ti, sdk_client, capfd):
        op = make_operator(ray_conn, "--ticks 6 --interval 0.4 --model-version deferred",
                           deferrable=True)
        trigger = defer(op, ti)
        payload, elapsed, beats = asyncio.run(run_with_heartbeat(trigger))

        assert payload["status"] == "success" and payload["job_status"] == "SUCCEEDED"
        assert payload["timed_out"] is False and payload["log_offset"] > 0
        # the loop kept turning while the trigger waited: it never blocked it
        assert beats >= 0.25 * elapsed / 0.05
        value = op.execute_complete(ti.context(), payload)
        assert value["result"] == {"model_version": "deferred", "ticks": 6}
        # trigger lines + execute_complete's remainder = the job's log, each line once
        lines = logged_lines(capfd.readouterr().out, payload["submission_id"])
        assert lines == sdk_client.get_job_logs(payload["submission_id"]).splitlines()
        assert [line for line in lines if line.startswith("tick")] == [f"tick {i}" for i in range(6)]

    def test_deferrable_failure_raises_in_execute_complete(self, ray_conn, ti):
        op = make_operator(ray_conn, "--ticks 2 --exit-code 4", deferrable=True)
        payload, _, _ = asyncio.run(run_with_heartbeat(defer(op, ti)))
        assert (payload["status"], payload["job_status"]) == ("error", "FAILED")
        with pytest.raises(RayJobError, match="exit code 4"):
            op.execute_complete(ti.context(), payload)

    def test_deadline_stops_job(self, ray_conn, ti, sdk_client):
        op = make_operator(ray_conn, "--ticks 600 --interval 0.5", deferrable=True, job_timeout=4)
        trigger = defer(op, ti)
        assert trigger.deadline is not None
        payload, _, _ = asyncio.run(run_with_heartbeat(trigger))
        assert (payload["status"], payload["job_status"], payload["timed_out"]) == (
            "error", "STOPPED", True)
        assert job_status(sdk_client, payload["submission_id"]) == "STOPPED"
        with pytest.raises(RayJobError, match="job_timeout"):
            op.execute_complete(ti.context(), payload)

    def test_cancel_keeps_job_then_on_kill_stops_it(self, ray_conn, ti, sdk_client):
        hook = RayJobHook(ray_conn)
        sid = hook.submit_job(entrypoint=" ".join([*TICKER, "--ticks", "600", "--interval", "0.5"]),
                              submission_id=f"cancel-{uuid.uuid4().hex[:8]}",
                              runtime_env={"working_dir": str(ENTRYPOINTS)})
        trigger = RayJobTrigger(submission_id=sid, ray_conn_id=ray_conn, poll_interval=0.2)

        async def cancel_then_kill() -> str:
            task = asyncio.create_task(trigger.run().__anext__())
            while "tick 1" not in await hook.async_get_job_logs(sid):
                await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after_cancel = await hook.async_get_job_status(sid)
            await trigger.on_kill()
            return after_cancel

        after_cancel = asyncio.run(asyncio.wait_for(cancel_then_kill(), timeout=120))
        # a triggerer restart cancels run(): the job must survive it ...
        assert after_cancel == "RUNNING"
        # ... and a user's kill (on_kill) stops it
        assert wait_terminal(sdk_client, sid) == "STOPPED"


DAG_FILE = textwrap.dedent('''
    """A one-task DAG around SubmitRayJobOperator, run with dag.test()."""
    import json
    import os
    from datetime import datetime

    from airflow.sdk import dag, task

    from churn_airflow.operators.ray_job import SubmitRayJobOperator
    from churn_airflow.ray_runtime import churn_runtime_env


    @dag(dag_id="ray_operator_dag_test", schedule=None, start_date=datetime(2026, 1, 1),
         catchup=False, tags=["test"])
    def ray_operator_dag_test():
        job = SubmitRayJobOperator(
            task_id="ray_job",
            entrypoint=[*json.loads(os.environ["TICKER"]), "--ticks", "3", "--interval", "0.3",
                        "--model-version", "{{ ti.task_id }}-{{ ti.try_number }}"],
            runtime_env=churn_runtime_env(os.environ["REPO_ROOT"],
                                          working_dir=os.environ["ENTRYPOINTS"]),
            ray_conn_id="ray_test",
            deferrable=True,
            poll_interval=0.3,
        )

        @task
        def record(value):
            with open(os.environ["RESULT_PATH"], "w") as handle:
                json.dump(value, handle)

        record(job.output)


    the_dag = ray_operator_dag_test()

    if __name__ == "__main__":
        run = the_dag.test()
        print("DAG_RUN_STATE=" + str(run.state))
''')


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """Environment of a throwaway Airflow (SQLite in tmp), migrated once per module."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'plugins'}",
    }
    (home / "dags").mkdir()
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    return env


@pytest.mark.airflow
def test_dag_test_runs_deferrable_operator(airflow_env, ray_head, ray_conn, sdk_client, tmp_path):
    dag_file = Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]) / "ray_operator_dag_test.py"
    dag_file.write_text(DAG_FILE)
    result_path = tmp_path / "result.json"
    env = {**airflow_env, "AIRFLOW_CONN_RAY_TEST": os.environ["AIRFLOW_CONN_RAY_TEST"],
           "TICKER": json.dumps(TICKER), "REPO_ROOT": str(REPO_ROOT), "ENTRYPOINTS": str(ENTRYPOINTS),
           "RESULT_PATH": str(result_path)}
    run = subprocess.run([sys.executable, str(dag_file)], env=env, capture_output=True,
                         text=True, timeout=300)
    output = run.stdout + run.stderr

    assert "DAG_RUN_STATE=success" in output, output[-4000:]
    value = json.loads(result_path.read_text())
    assert value["status"] == "SUCCEEDED"
    assert value["result"] == {"model_version": "ray_job-1", "ticks": 3}
    assert value["submission_id"].startswith("af-airflow-ray_operator_dag_test-ray_job-")
    assert job_status(sdk_client, value["submission_id"]) == "SUCCEEDED"
    ticks = [line for line in logged_lines(output, value["submission_id"]) if line.startswith("tick")]
    assert ticks == ["tick 0", "tick 1", "tick 2"]


def ray_local(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `scripts/ray_local.sh <command>`."""
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ray_local.sh"), command], env=env,
                          capture_output=True, text=True, timeout=240)


class TestRayLocalScript:
    def test_up_is_idempotent_and_down_stops_only_its_head(self, tmp_path, ray_head, sdk_client):
        from tests.support.ray_head import free_port

        env = {**os.environ, "RAY_LOCAL_STATE_DIR": str(tmp_path / "state"), "RAY_LOCAL_CPUS": "1",
               "RAY_LOCAL_PORT": str(free_port()), "RAY_LOCAL_DASHBOARD_PORT": str(free_port())}
        url = f"http://127.0.0.1:{env['RAY_LOCAL_DASHBOARD_PORT']}"
        try:
            first = ray_local("up", env)
            assert first.returncode == 0, first.stderr
            pgid = int((tmp_path / "state" / "head.pid").read_text())
            second = ray_local("up", env)
            assert second.returncode == 0 and f"already running (process group {pgid})" in second.stdout
            for shown in (first.stdout, second.stdout):
                assert url in shown and "export AIRFLOW_CONN_RAY_DEFAULT=" in shown
            assert ray_local("status", env).stdout.endswith("answers HTTP 200.\n")
            leaders = subprocess.run(["pgrep", "-f", f"dashboard-port={env['RAY_LOCAL_DASHBOARD_PORT']}"],
                                     capture_output=True, text=True).stdout.split()
            assert leaders == [str(pgid)]
        finally:
            down = ray_local("down", env)
        assert down.returncode == 0 and "Ray head stopped." in down.stdout
        assert not group_alive(pgid)
        assert ray_local("status", env).returncode == 1
        # the test session's head was left alone
        assert ray_head.process.poll() is None and sdk_client.list_jobs() is not None
