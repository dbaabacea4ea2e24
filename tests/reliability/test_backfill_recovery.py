"""Backfill recovery under a real scheduler: faults mid-backfill, clear, re-run, account for all.

The world: generated data, features/labels of the whole range built in ONE Spark pass (the bulk
path), a champion trained the day before the backfill, `airflow standalone` (scheduler,
triggerer, LocalExecutor) with retries off so a fault fails its day at once. Then
`airflow backfill create` over BACKFILL_DAYS days, two runs at a time (`max_active_runs=2`),
while two watchers inject faults into days in the middle:

- the Spark features job of SPARK_DAY is SIGKILLed as soon as its staging directory appears
  (mid-write);
- the Ray training job of RAY_DAY (a cadence day) has its driver SIGKILLed once Tune started.

Checked: exactly those two days fail, the others succeed; clearing the failed tasks re-runs them
to success (the cleared Ray task submits one new job); every day's partitions exist once, equal to
what the bulk pass built, with no `_tmp-`/`_old-` leftovers anywhere; every manifest balances
`rows_in == rows_out + rows_rejected`; runs really overlapped. Finally a train task marked failed
by a user while deferred has its Ray job stopped (the trigger's on_kill).

`CHURN_RELIABILITY_BACKFILL_DAYS` (default 3, the fewest that show every property: a plain day
that succeeds while it overlaps the Spark fault's day, then the Ray fault on the cadence day) sets
the range; the issue's scenario is 30.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from churn import champion
from churn.pipeline import is_cadence_day
from churn.spec import load_spec
from churn.storage import Layout, list_partitions, read_json, shift_ds
from tests.model.synthetic_frames import train_version
from tests.support.airflow_world import DAG_ID, E2E_SPEC, build_world, start_standalone
from tests.support.ray_jobs import job_statuses

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.training]

START = "2025-05-03"
LOOKBACK_DAYS = 17  # the spec's longest window (14) and a few matured label days before day 1
FIRST_DAY = shift_ds(START, LOOKBACK_DAYS)  # 2025-05-20: the cadence day 05-22 is the third
BACKFILL_DAYS = [shift_ds(FIRST_DAY, i)
                 for i in range(int(os.environ.get("CHURN_RELIABILITY_BACKFILL_DAYS", "3")))]
CHAMPION_DAY = shift_ds(FIRST_DAY, -1)
EXTRA_DAY = shift_ds(BACKFILL_DAYS[-1], 1)  # the run marked failed while deferred
HORIZON_DAYS = 7  # churn_e2e.yaml: a run of day D writes the labels of D - 7
LABEL_DAYS = [shift_ds(ds, -HORIZON_DAYS) for ds in BACKFILL_DAYS]
TRAIN_EVERY_DAYS = 7
CUSTOMERS = 300
TIMEOUT_S = 3600
ACTIVE = {"PENDING", "RUNNING"}


def _middle_days() -> tuple[str, str]:
    """(SPARK_DAY, RAY_DAY): a cadence day near the middle for Ray, a plain day before it."""
    middle = len(BACKFILL_DAYS) // 2
    cadence = [d for d in BACKFILL_DAYS if is_cadence_day(d, TRAIN_EVERY_DAYS)]
    ray_day = min(cadence, key=lambda d: abs(BACKFILL_DAYS.index(d) - middle))
    spark_day = next(d for d in reversed(BACKFILL_DAYS[:BACKFILL_DAYS.index(ray_day)])
                     if not is_cadence_day(d, TRAIN_EVERY_DAYS))
    return spark_day, ray_day


SPARK_DAY, RAY_DAY = _middle_days()


# ------------------------------------------------------------------------------ fault injectors


def _processes_of(script: str, ds: str) -> list:
    """Live processes whose command line runs `script` for day `ds` (driver and JVM alike)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(script in part for part in cmdline) and ds in cmdline:
            found.append(proc)
    return found


class Watcher(threading.Thread):
    """Polls `probe()` until it returns something, then calls `strike(found)` once."""

    def __init__(self, name: str, probe, strike, deadline_s: float = TIMEOUT_S):
        super().__init__(name=name, daemon=True)
        self.probe, self.strike, self.deadline_s = probe, strike, deadline_s
        self.done = threading.Event()
        self.report: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        stop_at = time.monotonic() + self.deadline_s
        try:
            while not self.done.is_set() and time.monotonic() < stop_at:
                found = self.probe()
                if found:
                    self.report = self.strike(found)
                    return
                self.done.wait(0.05)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def spark_killer(root: Path, ds: str) -> Watcher:
    """SIGKILL the features job of `ds` once its staging directory exists (it is writing)."""
    area = Layout(str(root)).area("features")

    def staging_of_day():
        return [p for p in Path(area).glob("_tmp-*") if ds in p.name] or None

    def kill(staging: list[Path]) -> dict:
        files = sum(1 for p in staging for f in p.rglob("*") if f.is_file())
        victims = _processes_of("build_features.py", ds)
        for proc in victims:
            proc.send_signal(signal.SIGKILL)
        return {"staging": [p.name for p in staging], "files_in_staging": files,
                "killed_pids": [p.pid for p in victims]}

    return Watcher("spark-killer", staging_of_day, kill)


def ray_killer(root: Path, client, run_id: str) -> Watcher:
    """SIGKILL the driver of `run_id`'s training job once its Tune run has started."""
    results = Path(root) / "ray_results"

    def training_job():
        jobs = [j for j in client.list_jobs()
                if (j.metadata or {}).get("airflow_run_id") == run_id and j.status == "RUNNING"]
        if not jobs or not results.is_dir():
            return None
        started_s = jobs[0].start_time / 1000
        tuning = [p for p in results.glob("tune-*") if p.stat().st_mtime >= started_s]
        return (jobs[0], tuning) if tuning else None

    def kill(found) -> dict:
        job, tuning = found
        victims = _processes_of("train.py", RAY_DAY)
        for proc in victims:
            proc.send_signal(signal.SIGKILL)
        return {"submission_id": job.submission_id, "tune_dir": tuning[0].name,
                "killed_pids": [p.pid for p in victims]}

    return Watcher("ray-killer", training_job, kill)


# ------------------------------------------------------------------------------ the world


def _read_days(root: Path, area: str, days: list[str]) -> dict:
    """`{ds: frame sorted by customer}` of one area's partitions."""
    import pandas as pd

    layout = Layout(str(root))
    frames = {}
    for ds in days:
        frame = pd.read_parquet(f"{layout.area(area)}/ds={ds}")
        frames[ds] = frame.sort_values("customer_id").reset_index(drop=True)
    return frames


def _train_champion(world) -> str:
    """Train on CHAMPION_DAY and promote it by hand, so that only cadence days train. The
    champion's origin is not under test (the DAG's own training and gate are, on RAY_DAY): the
    job's model code runs in-process, without Ray (tests/model/synthetic_frames.train_version)."""
    spec = load_spec(E2E_SPEC)
    version = train_version(world.root, spec, CHAMPION_DAY, rounds=40)["version"]
    champion.promote(str(world.root), spec.model.name, version, decided_by="test setup",
                     reason="the backfill's starting champion")
    return version


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_head, spark):
    world = build_world(
        tmp_path_factory.mktemp("backfill"), ray_head, customers=CUSTOMERS, start=START,
        days=LOOKBACK_DAYS + len(BACKFILL_DAYS) + 1, bulk_end=EXTRA_DAY, spark=spark,
        CHURN_MIN_LABEL_DAYS="3", CHURN_TRAIN_EVERY_DAYS=str(TRAIN_EVERY_DAYS),
        CHURN_TASK_RETRIES="0", CHURN_MAX_ACTIVE_RUNS="3")
    _train_champion(world)
    return world


@pytest.fixture(scope="module")
def bulk(world) -> dict:
    """What the bulk pass built for the days the backfill rebuilds, read before any run starts."""
    return {"features": _read_days(world.root, "features", BACKFILL_DAYS),
            "labels": _read_days(world.root, "labels", LABEL_DAYS)}


@pytest.fixture(scope="module")
def spark_fault(world):
    """The Spark fault injector, armed before any run starts."""
    watcher = spark_killer(world.root, SPARK_DAY)
    watcher.start()
    yield watcher
    watcher.done.set()


@pytest.fixture(scope="module")
def queued_backfill(world, bulk, spark_fault) -> float:
    """The backfill's runs, queued while no Airflow process runs: with SQLite, a CLI write next
    to a busy scheduler can fail at once with "database is locked" (a lock upgrade the busy
    timeout cannot wait out). Returns when it was queued (monotonic seconds)."""
    world.airflow("dags", "reserialize")
    world.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", BACKFILL_DAYS[0],
                  "--to-date", BACKFILL_DAYS[-1], "--max-active-runs", "2",
                  "--dag-run-conf", world.conf())
    return time.monotonic()


@pytest.fixture(scope="module")
def standalone(world, queued_backfill, tmp_path_factory):
    # 3: the backfill's 2 plus the parked latest scheduled interval (see Standalone)
    server = start_standalone(world, tmp_path_factory.mktemp("standalone") / "standalone.log",
                              max_active_runs=3)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk_client(ray_head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_head.dashboard_url,
                               headers={"Authorization": f"Bearer {ray_head.token}"})


def _backfill_runs(standalone) -> dict[str, dict]:
    """`{ds: run}` of the backfill runs."""
    return {r["logical_date"][:10]: r for r in standalone.runs("backfill")}


def _wait_all_ended(standalone) -> dict[str, dict]:
    def ended():
        runs = _backfill_runs(standalone)
        done = [r for r in runs.values() if r["state"] in ("success", "failed")]
        return runs if len(runs) == len(BACKFILL_DAYS) == len(done) else None

    return standalone.wait_until("the backfill runs to end", ended, TIMEOUT_S, interval_s=5)


def _failed_tasks(standalone, run_id: str) -> list[str]:
    tis = standalone.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
                             params={"limit": 100})["task_instances"]
    return sorted(ti["task_id"] for ti in tis if ti["state"] == "failed")


@pytest.fixture(scope="module")
def recovery(world, bulk, spark_fault, queued_backfill, standalone, sdk_client) -> dict:
    """Run the backfill with both faults, then clear the failed tasks and wait for the re-runs."""
    ray_run = standalone.wait_until("the backfill's runs", lambda: _backfill_runs(standalone).get(
        RAY_DAY), 300)["dag_run_id"]
    ray = ray_killer(world.root, sdk_client, ray_run)
    ray.start()
    first = _wait_all_ended(standalone)
    for watcher in (spark_fault, ray):
        watcher.done.set()
        watcher.join()
        assert watcher.error is None, watcher.error
    failed_first = {ds: _failed_tasks(standalone, r["dag_run_id"]) for ds, r in first.items()
                    if r["state"] == "failed"}
    for ds in failed_first:
        standalone.request("POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances", json={
            "dry_run": False, "dag_run_id": first[ds]["dag_run_id"], "only_failed": True})
    final = _wait_all_ended(standalone)
    return {"bulk": bulk, "first": first, "failed_first": failed_first, "final": final,
            "spark": spark_fault.report, "ray": ray.report, "ray_run": ray_run,
            "minutes": (time.monotonic() - queued_backfill) / 60}


class TestBackfillRecovery:
    def test_only_the_faulted_days_failed_loudly(self, recovery, reliability_case):
        assert recovery["spark"] and recovery["spark"]["killed_pids"], recovery["spark"]
        assert recovery["ray"] and recovery["ray"]["killed_pids"], recovery["ray"]
        failed = recovery["failed_first"]
        assert sorted(failed) == sorted([SPARK_DAY, RAY_DAY]), failed
        assert all(task.startswith("build_features.") for task in failed[SPARK_DAY])
        assert failed[RAY_DAY] == ["train"]
        others = [r["state"] for ds, r in recovery["first"].items() if ds not in failed]
        assert others == ["success"] * (len(BACKFILL_DAYS) - 2)
        reliability_case(
            f"{len(BACKFILL_DAYS)}-day backfill, 2 runs at a time: features job of {SPARK_DAY} "
            f"SIGKILLed mid-write ({recovery['spark']['files_in_staging']} files staged), driver of "
            f"the train job of {RAY_DAY} SIGKILLed during Tune",
            f"{SPARK_DAY} failed in {failed[SPARK_DAY]}, {RAY_DAY} failed in train; the other "
            f"{len(others)} days succeeded",
            "exactly the two faulted days failed, in the faulted task")

    def test_clearing_reruns_the_failed_days(self, recovery, standalone, sdk_client,
                                             reliability_case):
        assert {r["state"] for r in recovery["final"].values()} == {"success"}
        train = standalone.task_instance(recovery["ray_run"], "train")
        assert train["try_number"] == 2
        killed = recovery["ray"]["submission_id"]
        jobs = job_statuses(sdk_client, killed[:-8])  # every job of that task instance
        (rerun,) = set(jobs) - {killed}  # the clear submitted exactly one new job
        assert jobs == {killed: "FAILED", rerun: "SUCCEEDED"}
        assert not [j.submission_id for j in sdk_client.list_jobs() if j.status in ACTIVE]
        reliability_case(
            f"clear the failed tasks of {SPARK_DAY} and {RAY_DAY} (REST clearTaskInstances)",
            f"both runs succeeded; Ray jobs of {RAY_DAY}: {jobs}",
            "every run succeeded; the train task resubmitted exactly once, no job left running")

    def test_partitions_exist_once_and_equal_the_bulk_pass(self, recovery, world,
                                                           reliability_case):
        import pandas as pd

        layout = Layout(str(world.root))
        for area, days in (("features", BACKFILL_DAYS), ("labels", LABEL_DAYS),
                           ("predictions", BACKFILL_DAYS)):
            assert set(days) <= set(list_partitions(layout.area(area))), area
        leftovers = [str(p) for p in Path(world.root).rglob("*")
                     if p.name.startswith(("_tmp-", "_ready-", "_old-"))]
        assert leftovers == []
        for area, frames in recovery["bulk"].items():
            rebuilt = _read_days(world.root, area, list(frames))
            for ds, frame in frames.items():
                pd.testing.assert_frame_equal(rebuilt[ds], frame, check_like=True)
        predictions = _read_days(world.root, "predictions", BACKFILL_DAYS)
        features = recovery["bulk"]["features"]
        for ds in BACKFILL_DAYS:
            assert predictions[ds]["customer_id"].is_unique and set(predictions[ds]["ds"]) == {ds}
            assert predictions[ds]["customer_id"].tolist() == features[ds]["customer_id"].tolist()
        reliability_case(
            "after the faults and the re-runs",
            "features/labels of every day row-identical to the bulk pass; one prediction per "
            "customer and day",
            f"{len(BACKFILL_DAYS)} days × 3 areas present once, no _tmp-/_old- anywhere")

    def test_manifests_balance_and_name_their_model(self, recovery, world, reliability_case):
        layout = Layout(str(world.root))
        checked = 0
        for ds in BACKFILL_DAYS:
            manifest = read_json(layout.manifest(ds))
            assert manifest["run"]["run_id"] == recovery["final"][ds]["dag_run_id"]
            assert manifest["scored"] is True and manifest["model_version"]
            assert manifest["rows"]["predictions"] == manifest["rows"]["features"]
            assert set(manifest["tables"]) == {"events", "customers"}
            for counts in manifest["tables"].values():
                assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
                checked += 1
        trained = [ds for ds in BACKFILL_DAYS if read_json(layout.manifest(ds))["trained"]]
        assert trained == [d for d in BACKFILL_DAYS if is_cadence_day(d, TRAIN_EVERY_DAYS)]
        assert RAY_DAY in trained
        reliability_case("manifests after recovery",
                         f"{checked} table counts over {len(BACKFILL_DAYS)} manifests balance",
                         "rows_in == rows_out + rows_rejected; predictions rows == feature rows")

    def test_runs_overlapped(self, recovery, reliability_case):
        spans = sorted((r["start_date"], r["end_date"]) for r in recovery["first"].values())
        overlaps = sum(1 for (_, end), (start, _) in zip(spans, spans[1:]) if start < end)
        assert overlaps >= 1
        reliability_case("max_active_runs=2 backfill",
                         f"{overlaps} consecutive run pairs overlapped in time; "
                         f"took {recovery['minutes']:.1f} min with the re-runs",
                         "runs of different days really ran in parallel")


def test_marked_failed_while_deferred_stops_the_ray_job(recovery, world, standalone, sdk_client,
                                                        reliability_case):
    """A user marks the deferred train task failed: the trigger's on_kill stops the Ray job."""
    run_id = f"manual__{EXTRA_DAY}"
    standalone.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={
        "dag_run_id": run_id, "logical_date": f"{EXTRA_DAY}T00:00:00Z",
        "conf": json.loads(world.conf(force_retrain=True, tune_trials=64))})

    def deferred_job():
        if standalone.task_instance(run_id, "train")["state"] != "deferred":
            return None
        return next((j for j in sdk_client.list_jobs() if j.status == "RUNNING"
                     and (j.metadata or {}).get("airflow_run_id") == run_id), None)

    job = standalone.wait_until("the train task deferred on a running job", deferred_job, 900)
    standalone.request("PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train",
                       json={"new_state": "failed"})
    standalone.wait_until("the Ray job stopped", lambda: str(
        sdk_client.get_job_status(job.submission_id)) == "STOPPED", 120, interval_s=1)
    assert standalone.task_instance(run_id, "train")["state"] == "failed"
    assert not [j.submission_id for j in sdk_client.list_jobs() if j.status in ACTIVE]
    reliability_case("train task marked failed (REST PATCH) while deferred on a running Ray job",
                     f"the triggerer ran RayJobTrigger.on_kill: {job.submission_id} STOPPED",
                     "Ray job status STOPPED, no job left running, task failed")
