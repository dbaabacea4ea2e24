"""The DAG under a real scheduler: `airflow standalone` and a run triggered through REST API v2
with a conf (its Ray task defers to the triggerer); hostile params refused by the API; a cleared
`train` recomputes with a new Ray job.

Uses the shared e2e world after the `dags test` days (2025-03-16..17): the triggered run is
2025-03-18 (forced training). Backfills under the scheduler are proven, with faults, two runs
at a time, in tests/reliability/test_backfill_recovery.py; the first unattended scheduled run
in test_scheduled_run.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from churn.storage import Layout, read_json
from tests.support.airflow_world import DAG_ID, E2E_SPEC, start_standalone

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.training]

TRIGGERED_DAY = "2025-03-18"
READY_TIMEOUT_S = 300
RUN_TIMEOUT_S = 1200


def train_jobs(ray_head, run_id: str) -> list:
    """The Ray jobs the `train` task of a run submitted, oldest first (Ray's own client)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head.dashboard_url,
                                 headers={"Authorization": f"Bearer {ray_head.token}"})
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("airflow_run_id") == run_id
            and j.metadata.get("airflow_task_id") == "train"]
    return sorted(jobs, key=lambda j: j.start_time)


@pytest.fixture(scope="module")
def standalone(e2e_world, tmp_path_factory):
    """`airflow standalone` on a free port, logged in, the DAG parsed and unpaused."""
    server = start_standalone(e2e_world, tmp_path_factory.mktemp("standalone") / "standalone.log",
                              READY_TIMEOUT_S)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triggered_run(standalone, e2e_world) -> dict:
    """One run triggered through REST v2 with a conf that forces training; waits for its end."""
    run_id = f"rest__{TRIGGERED_DAY}"
    standalone.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={
        "dag_run_id": run_id, "logical_date": f"{TRIGGERED_DAY}T00:00:00Z",
        "conf": json.loads(e2e_world.conf(force_retrain=True))})
    state = standalone.wait_until(f"run {run_id}", lambda: standalone.run_state(run_id),
                                  RUN_TIMEOUT_S, interval_s=5)
    train = standalone.task_instance(run_id, "train")
    return {"run_id": run_id, "state": state, "train": train,
            "train_log": standalone.task_log(run_id, "train", train["try_number"]),
            "manifest": read_json(Layout(str(e2e_world.root)).manifest(TRIGGERED_DAY))}


class TestTriggeredRun:
    def test_run_succeeds(self, triggered_run):
        assert triggered_run["state"] == "success"

    def test_conf_reached_the_run(self, triggered_run):
        manifest = triggered_run["manifest"]
        assert manifest["run"]["run_id"] == triggered_run["run_id"]
        assert manifest["run"]["conf"]["force_retrain"] is True
        assert manifest["steps"]["decide"]["reason"].startswith("forced by the run's params")
        assert manifest["trained"] is True and manifest["scored"] is True

    def test_ray_task_deferred_to_the_triggerer(self, triggered_run):
        assert triggered_run["train"]["state"] == "success"
        log = triggered_run["train_log"]
        assert "DEFERRED" in log  # the worker handed the wait over to the triggerer ...
        assert "[ray af-" in log  # ... whose RayJobTrigger streamed the job's log lines

    def test_train_links_to_its_ray_job_page(self, triggered_run, standalone, ray_head):
        links = standalone.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/"
                                   f"{triggered_run['run_id']}/taskInstances/train/links")
        (job,) = train_jobs(ray_head, triggered_run["run_id"])
        submission_id = job.submission_id
        assert links["extra_links"] == {
            "Ray job": f"{ray_head.dashboard_url}/#/jobs/{submission_id}"}


# Each hostile value would have run `touch <canary>` had a shell ever parsed it.
HOSTILE = ["{spec}'; touch {canary}; '", "$(touch {canary})", "`touch {canary}`",
           "{spec}\ntouch {canary}", "{spec}; touch {canary}", "{spec_dir}/../../../{canary}.yaml",
           "s3://attacker-bucket/spec.yaml", "/etc/passwd"]


@pytest.fixture(scope="module")
def hostile_triggers(standalone, e2e_world, tmp_path_factory) -> dict:
    """Trigger a run with each hostile value in each path-reaching param, through REST v2."""
    canary = tmp_path_factory.mktemp("canary") / "pwned"
    before = {r["dag_run_id"] for r in standalone.runs()}
    replies = []
    for index, template in enumerate(HOSTILE):
        value = template.format(spec=E2E_SPEC, spec_dir=E2E_SPEC.parent, canary=canary)
        for param in ("dataset_spec", "emr_cluster_id", "spark_mode"):
            conf = {**json.loads(e2e_world.conf()), param: value}
            reply = standalone.raw_request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={
                "dag_run_id": f"hostile__{param}_{index}", "logical_date": "2025-03-19T00:00:00Z",
                "conf": conf})
            replies.append({"param": param, "value": value, "status": reply.status_code,
                            "body": reply.text})
    return {"replies": replies, "canary": canary,
            "new_runs": {r["dag_run_id"] for r in standalone.runs()} - before}


class TestHostileParams:
    def test_api_refuses_every_hostile_value(self, hostile_triggers):
        refused = [(r["param"], r["value"], r["status"]) for r in hostile_triggers["replies"]]
        assert all(status == 400 for _, _, status in refused), refused
        for reply in hostile_triggers["replies"]:
            assert reply["param"] in reply["body"]  # the refusal names the param

    def test_nothing_ran(self, hostile_triggers):
        assert hostile_triggers["new_runs"] == set()
        assert not Path(hostile_triggers["canary"]).exists()


@pytest.fixture(scope="module")
def cleared_train(standalone, triggered_run, ray_head) -> dict:
    """Clear the triggered run's `train` task through REST (re-do the training of that day)."""
    run_id = triggered_run["run_id"]
    first = triggered_run["train"]
    standalone.request("POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["train"],
        "only_failed": False, "reset_dag_runs": True, "include_downstream": False})
    standalone.wait_until("train to run again", lambda: standalone.task_instance(
        run_id, "train")["try_number"] > first["try_number"], RUN_TIMEOUT_S)
    state = standalone.wait_until(f"run {run_id} again", lambda: standalone.run_state(run_id),
                                  RUN_TIMEOUT_S, interval_s=5)
    return {"state": state, "jobs": train_jobs(ray_head, run_id),
            "train": standalone.task_instance(run_id, "train")}


class TestClearRecomputes:
    def test_a_cleared_train_submits_a_new_ray_job(self, cleared_train, triggered_run):
        assert cleared_train["state"] == "success"
        assert cleared_train["train"]["state"] == "success"
        first, second = cleared_train["jobs"]
        assert first.submission_id != second.submission_id
        assert (str(first.status), str(second.status)) == ("SUCCEEDED", "SUCCEEDED")
        assert second.start_time > first.end_time  # it ran again, after the first had ended
        namespace = "churn"
        assert second.submission_id.startswith(f"af-{namespace}-{DAG_ID}-train-")
        assert second.metadata["airflow_try_number"] == str(cleared_train["train"]["try_number"])
