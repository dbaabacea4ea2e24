"""The build_features job on generated data: range vs day, point in time, faults, spark-submit.

The job's `run` goes through the shared local Spark session; one test launches the real
`spark-submit` with the churn package shipped as a zip.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from churn import ingest
from churn.generate import generate
from churn.packaging import build_package_zip
from churn.spec import dump_spec, load_spec
from churn.storage import (Layout, ds_range, partition_locks, read_json, shift_ds, swap_in,
                           temp_sibling)
from spark_jobs.build_features import JobArgs, run
from tests.support.small_data import read_partition

REPO = Path(__file__).resolve().parents[2]
START = "2024-01-01"
RANGE = ("2024-01-08", "2024-02-06")  # 30 days
FAULT_DAY = "2024-01-09"
JOB_SECONDS = 300  # the most one small build may take on 2 busy cores


@pytest.fixture(scope="module")
def small_spec(tmp_path_factory, spec_path) -> str:
    """The synthetic spec with short windows (3, 7 days) and a 5-day horizon."""
    spec = load_spec(spec_path)
    spec = spec.model_copy(update={
        "events": spec.events.model_copy(update={"windows_days": (3, 7)}),
        "label": spec.label.model_copy(update={"horizon_days": 5})})
    path = tmp_path_factory.mktemp("spec") / "small.yaml"
    path.write_text(dump_spec(spec))
    return str(path)


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory, small_spec) -> str:
    """40 days of 80 customers, no faults."""
    root = str(tmp_path_factory.mktemp("clean"))
    generate(root, customers=80, start=START, days=40, seed=11, spec=small_spec)
    return root


def faulty_root(tmp_path: Path, spec: str, faults: tuple[str, ...]) -> str:
    """12 days of 80 customers with `faults` injected on FAULT_DAY."""
    generate(str(tmp_path), customers=80, start=START, days=12, seed=5, spec=spec, faults=faults,
             fault_day=FAULT_DAY)
    return str(tmp_path)


def build(spark, root: str, spec: str, start: str, end: str | None = None, **kw) -> dict:
    return run(spark, JobArgs(root=root, spec=spec, start=start, end=end or start, **kw))


def part_files(root: str, area: str, ds: str) -> list[str]:
    return sorted(os.listdir(Layout(root).partition(area, ds)))


class TestRangeVersusDay:
    def test_range_and_single_days_write_identical_partitions(self, spark, clean_root,
                                                              small_spec):
        summary = build(spark, clean_root, small_spec, *RANGE)
        assert summary["feature_days"] == ds_range(*RANGE)
        # horizon 5, matured by the range's end (Feb 6), though raw days run to Feb 9
        assert summary["label_days"] == ds_range("2024-01-03", "2024-02-01")
        first, last = RANGE
        ranged = {ds: read_partition(clean_root, "features", ds) for ds in (first, last)}
        # the labels the single-day runs of `first` and `last` own: those that matured on them
        ranged_labels = {ds: read_partition(clean_root, "labels", ds)
                         for ds in ("2024-01-03", "2024-02-01")}
        untouched = part_files(clean_root, "features", "2024-01-20")
        for ds in (first, last):
            build(spark, clean_root, small_spec, ds)
            pd.testing.assert_frame_equal(read_partition(clean_root, "features", ds), ranged[ds])
        for ds, frame in ranged_labels.items():
            pd.testing.assert_frame_equal(read_partition(clean_root, "labels", ds), frame)
        assert part_files(clean_root, "features", "2024-01-20") == untouched
        assert len(ranged[last]) > 50 and ranged[last]["ds"].eq(last).all()

    def test_future_dated_rows_change_no_earlier_feature(self, spark, clean_root, small_spec,
                                                         tmp_path):
        root, day = str(tmp_path / "copy"), "2024-01-20"
        shutil.copytree(Path(clean_root) / "raw", Path(root) / "raw")
        build(spark, root, small_spec, "2024-01-15", day)
        before = {ds: read_partition(root, "features", ds) for ds in ds_range("2024-01-15", day)}
        own = next((Path(root) / "raw" / "events" / f"ds={day}").glob("*.csv"))
        someone = own.read_text().splitlines()[1].split(",")[0]
        with own.open("a") as out:  # dated tomorrow inside today's partition
            out.write(f"{someone},{shift_ds(day, 1)} 09:00:00,purchase,999.0\n")
        later = next((Path(root) / "raw" / "events" / f"ds={shift_ds(day, 1)}").glob("*.csv"))
        with later.open("a") as out:  # valid rows of a later day
            out.writelines(f"{someone},{shift_ds(day, 1)} 10:0{i}:00,login,\n" for i in range(5))
        for path in (own, later):  # the producer re-delivered both days and marked them again
            (path.parent / "_SUCCESS").touch()
        summary = build(spark, root, small_spec, "2024-01-15", day)
        for ds, frame in before.items():
            pd.testing.assert_frame_equal(read_partition(root, "features", ds), frame)
        assert summary["counts"]["events"][day]["reasons"] == {"outside_partition_day": 1}
        quarantined = read_partition(root, "quarantine", day, "events")
        assert quarantined[["customer_id", "amount", "reason"]].values.tolist() == [
            [someone, "999.0", "outside_partition_day"]]


class TestFaults:
    def test_row_faults_are_quarantined_and_counts_add_up(self, spark, small_spec, tmp_path):
        kinds = ("malformed_rows", "wrong_types", "null_ids", "duplicate_rows", "future_dated")
        root = faulty_root(tmp_path, small_spec, kinds)
        build(spark, root, small_spec, FAULT_DAY, max_reject_rate=0.5)
        quarantined = read_partition(root, "quarantine", FAULT_DAY, "events")
        assert quarantined["reason"].value_counts().to_dict() == {
            "malformed_row": 5, "duplicate_row": 4, "null_id": 3, "outside_partition_day": 3,
            "bad_number": 3, "bad_timestamp": 2}
        counts = read_json(Layout(root).run_fragment(FAULT_DAY, "ingest"))["tables"]["events"]
        raw_lines = sum(len(p.read_text().splitlines()) - 1 for p in
                        (Path(root) / "raw" / "events" / f"ds={FAULT_DAY}").glob("*.csv"))
        assert counts["rows_in"] == raw_lines
        assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
        assert counts["rows_rejected"] == len(quarantined) == 20
        with pytest.raises(ingest.RejectRateError,
                           match=rf"table events ds={FAULT_DAY}: 20/\d+ rows rejected .*"
                                 r"top reasons: malformed_row=5, duplicate_row=4"):
            build(spark, root, small_spec, FAULT_DAY)
        assert read_json(Layout(root).run_fragment(FAULT_DAY, "ingest"))["status"] == "failed"

    def test_missing_column_fails_naming_file_and_column(self, spark, small_spec, tmp_path):
        root = faulty_root(tmp_path, small_spec, ("missing_column",))
        with pytest.raises(ingest.MissingColumnError,
                           match=rf"raw/events/ds={FAULT_DAY}/part-\S+\.csv: required column\(s\) "
                                 r"amount missing"):
            build(spark, root, small_spec, FAULT_DAY)

    def test_empty_day_is_recorded_as_empty(self, spark, small_spec, tmp_path):
        root = faulty_root(tmp_path, small_spec, ("empty_day",))
        build(spark, root, small_spec, FAULT_DAY)
        fragment = read_json(Layout(root).run_fragment(FAULT_DAY, "ingest"))
        assert fragment["tables"]["events"] == {"rows_in": 0, "rows_out": 0, "rows_rejected": 0,
                                                "reasons": {}, "empty": True}
        features = read_partition(root, "features", FAULT_DAY)
        assert len(features) > 50 and features["n_events_3d"].gt(0).any()

    def test_missing_day_fails_unless_allowed(self, spark, small_spec, tmp_path):
        root = faulty_root(tmp_path, small_spec, ("missing_day",))
        with pytest.raises(ingest.MissingPartitionError,
                           match=rf"missing raw partition\(s\) raw/events: {FAULT_DAY} "):
            build(spark, root, small_spec, shift_ds(FAULT_DAY, 1))
        build(spark, root, small_spec, FAULT_DAY, allow_missing=True)
        fragment = read_json(Layout(root).run_fragment(FAULT_DAY, "ingest"))
        assert fragment["tables"] == {"events": {"missing": True}, "customers": {"missing": True}}
        assert len(read_partition(root, "features", FAULT_DAY)) == 0


def raw_copy(clean_root: str, folder: Path) -> str:
    """A copy of the clean raw data only."""
    shutil.copytree(Path(clean_root) / "raw", folder / "raw")
    return str(folder)


def delete_raw(root: str, first: str, last: str) -> None:
    """Delete both tables' raw partitions of the days first..last."""
    for ds in ds_range(first, last):
        for table in ("events", "customers"):
            shutil.rmtree(Layout(root).raw(table, ds))


class TestMissingHistory:
    """Raw days lost after the history started are a gap, never a later start."""

    def test_lost_history_fails_naming_the_days_unless_allowed(self, spark, clean_root,
                                                               small_spec, tmp_path):
        root, day = raw_copy(clean_root, tmp_path), "2024-01-11"
        # records the start (Jan 1) and stores the activity of Jan 8..10
        build(spark, root, small_spec, "2024-01-08", "2024-01-10")
        delete_raw(root, START, shift_ds(day, -1))
        # the 7-day windows need the events of Jan 5..11, Jan 8..10 from stored activity; the
        # label that matured on Jan 11 (horizon 5) needs the snapshot of Jan 6
        with pytest.raises(ingest.MissingPartitionError,
                           match=r"raw/customers: 2024-01-06; raw/events: 2024-01-05\.\."
                                 r"2024-01-07 \(3 days\) \(the history starts: customers "
                                 r"2024-01-01, events 2024-01-01;"):
            build(spark, root, small_spec, day)
        build(spark, root, small_spec, day, allow_missing=True)
        fragment = read_json(Layout(root).run_fragment(day, "features"))
        assert fragment["missing_raw_days"] == {"customers": ["2024-01-06"],
                                                "events": ds_range("2024-01-05", "2024-01-07")}
        assert fragment["history_start"] == {"events": START, "customers": START}
        assert fragment["short_window"] is False

    def test_a_first_build_after_lost_days_records_its_short_windows(self, spark, clean_root,
                                                                     small_spec, tmp_path):
        root = raw_copy(clean_root, tmp_path)
        delete_raw(root, START, "2024-01-04")
        build(spark, root, small_spec, "2024-01-08", "2024-01-12")
        layout = Layout(root)
        short = {ds: read_json(layout.run_fragment(ds, "features"))["short_window"]
                 for ds in ds_range("2024-01-08", "2024-01-12")}
        # the 7-day window of Jan 10 starts on Jan 4, the day before the first delivered one
        assert short == {"2024-01-08": True, "2024-01-09": True, "2024-01-10": True,
                         "2024-01-11": False, "2024-01-12": False}
        first = {"events": "2024-01-05", "customers": "2024-01-05"}
        assert read_json(layout.history()) == {"first_day": first}
        assert read_json(layout.run_fragment("2024-01-12", "features"))["missing_raw_days"] == {}


def events_only_specs(folder: Path, small_spec: str) -> tuple[str, str]:
    """(the generator's spec, the job's): timestamps written as `yyyymmdd`; the job reads the
    events alone (the generated snapshots unread), with windows of 7 and 60 days and an
    inactivity label."""
    spec = load_spec(small_spec)
    # a date-only log: equal rows of one day are separate events (`keep_all`)
    generated = spec.model_copy(update={
        "events": spec.events.model_copy(update={"windows_days": (7, 60),
                                                 "timestamp_kind": "yyyymmdd",
                                                 "duplicates": "keep_all"})})
    events_only = generated.model_copy(update={
        "customers": None,
        "label": spec.label.model_copy(update={"kind": "inactivity", "event_type": None})})
    paths = folder / "generated.yaml", folder / "events_only.yaml"
    for path, written in zip(paths, (generated, events_only)):
        path.write_text(dump_spec(written))
    return str(paths[0]), str(paths[1])


@dataclass(frozen=True)
class HistoryWorld:
    """Generated raw data; `from_raw` built `day` from raw alone, `incremental` stored the
    history (every day before `day`, one bulk pass)."""

    spec: str
    day: str
    from_raw: str
    incremental: str


@pytest.fixture(scope="module")
def history_worlds(spark, small_spec, tmp_path_factory):
    """A `HistoryWorld` per shape, built on first use and shared by the module's tests."""
    built: dict[str, HistoryWorld] = {}

    def world(shape: str) -> HistoryWorld:
        if shape not in built:
            folder = tmp_path_factory.mktemp(shape)
            generator_spec, spec, days = small_spec, small_spec, 20
            if shape != "both_tables":
                (generator_spec, spec), days = events_only_specs(folder, small_spec), 65
            day = shift_ds(START, days - 1)
            generate(str(folder / "generated"), customers=30, start=START, days=days, seed=9,
                     spec=generator_spec)
            from_raw = raw_copy(str(folder / "generated"), folder / "from_raw")
            build(spark, from_raw, spec, day)
            incremental = raw_copy(str(folder / "generated"), folder / "incremental")
            build(spark, incremental, spec, START, shift_ds(day, -1))
            built[shape] = HistoryWorld(spec, day, from_raw, incremental)
        return built[shape]

    return world


def assert_same_day(world: HistoryWorld) -> None:
    """The incremental root's features and labels of the day equal the build from raw."""
    for area, ds in [("features", world.day), ("labels", shift_ds(world.day, -5))]:
        pd.testing.assert_frame_equal(read_partition(world.incremental, area, ds),
                                      read_partition(world.from_raw, area, ds))
    assert len(read_partition(world.incremental, "labels", shift_ds(world.day, -5))) > 10


class TestIncrementalDays:
    """A day validates its own raw day; every other day its windows and labels need comes from
    the stored activity, with the same features and labels as a build from raw alone."""

    @pytest.mark.parametrize("shape", ["both_tables", "events_only_60d_yyyymmdd"])
    def test_a_day_reads_one_raw_day(self, spark, history_worlds, caplog, shape):
        world = history_worlds(shape)
        delete_raw(world.incremental, START, shift_ds(world.day, -1))
        with caplog.at_level("INFO", logger="churn.build_features"):
            summary = build(spark, world.incremental, world.spec, world.day)
        planned = [r.getMessage() for r in caplog.records
                   if "reading days of raw" in r.getMessage()]
        # stored: the rest of the day's longest window, and the label day's population (5 days
        # back): its snapshot, or without snapshots its window
        longest = load_spec(world.spec).events.longest_window
        if shape == "both_tables":
            raw, stored = {"events": 1, "customers": 1}, {"events": longest - 1, "customers": 1}
        else:
            raw, stored = {"events": 1}, {"events": longest + 5 - 1}
        assert planned[-1].endswith(f"reading days of raw {raw}, of stored activity {stored}")
        assert summary["label_days"] == [shift_ds(world.day, -5)]
        assert_same_day(world)

    def test_a_stored_day_is_read_whole_while_its_run_rewrites_it(self, spark, history_worlds):
        """A backfill's neighbour: the run of the day before swaps in its activity while the
        run of the day reads it. The reader waits for the writer's lock, then reads the new
        files."""
        world = history_worlds("both_tables")
        neighbour = Layout(world.incremental).activity("events", shift_ds(world.day, -1))
        waiting, logger, done = _Waiting(), logging.getLogger("churn.storage"), {}
        logger.addHandler(waiting)
        reader = threading.Thread(target=lambda: done.update(
            summary=build(spark, world.incremental, world.spec, world.day)))
        try:
            with partition_locks(Layout(world.incremental).area("activity", "events"),
                                 [f"ds={shift_ds(world.day, -1)}"]):
                reader.start()
                assert waiting.seen.wait(JOB_SECONDS), "the reader did not wait for the writer"
                rewritten = temp_sibling(neighbour)
                shutil.copytree(neighbour, rewritten)
                for part in Path(rewritten).glob("part-*"):  # a new writer's file names
                    part.rename(part.with_name(f"part-rewritten-{part.name[5:]}"))
                swap_in(rewritten, neighbour)
            reader.join(JOB_SECONDS)
        finally:
            logger.removeHandler(waiting)
        assert done["summary"]["feature_days"] == [world.day]
        assert_same_day(world)

    def test_a_redelivered_past_day_is_rebuilt_by_one_bulk_pass(self, spark, clean_root,
                                                                small_spec, tmp_path):
        """The producer re-delivers D's events after D+6 was built: the pass D .. D + longest
        window - 1 (the README's command) rewrites D's activity and every window and matured
        label over it, as a build from the re-delivered raw data alone would."""
        day, longest = "2024-01-10", load_spec(small_spec).events.longest_window
        rebuilt, matured = ds_range(day, shift_ds(day, longest - 1)), shift_ds(day, -5)
        root = raw_copy(clean_root, tmp_path / "root")
        build(spark, root, small_spec, START, rebuilt[-1])
        before = read_partition(root, "features", rebuilt[3])
        generate(str(tmp_path / "redelivery"), customers=80, start=START, days=12, seed=12,
                 spec=small_spec)
        reference = raw_copy(clean_root, tmp_path / "reference")
        for target in (root, reference):
            shutil.rmtree(Layout(target).raw("events", day))
            shutil.copytree(Layout(str(tmp_path / "redelivery")).raw("events", day),
                            Layout(target).raw("events", day))
        summary = build(spark, root, small_spec, rebuilt[0], rebuilt[-1])
        build(spark, reference, small_spec, rebuilt[0], rebuilt[-1])
        assert summary["label_days"] == ds_range(matured, shift_ds(rebuilt[-1], -5))
        assert not read_partition(root, "features", rebuilt[3]).equals(before)
        for area, days in (("features", rebuilt), ("labels", summary["label_days"])):
            for ds in days:
                pd.testing.assert_frame_equal(read_partition(root, area, ds),
                                              read_partition(reference, area, ds))
        pd.testing.assert_frame_equal(read_partition(root, "activity", day, "events"),
                                      read_partition(reference, "activity", day, "events"))


class _Waiting(logging.Handler):
    """Sets `seen` once a writer-lock wait is logged."""

    def __init__(self):
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting up to" in record.getMessage():
            self.seen.set()


class TestSparkSubmit:
    def test_spark_submit_builds_one_day(self, clean_root, small_spec, tmp_path):
        root, day = str(tmp_path / "submit"), "2024-01-12"
        shutil.copytree(Path(clean_root) / "raw", Path(root) / "raw")
        env = {**os.environ, "PYTHONPATH": "", "PYSPARK_PYTHON": sys.executable,
               "PYSPARK_DRIVER_PYTHON": sys.executable}
        spark_submit = Path(sys.executable).parent / "spark-submit"
        done = subprocess.run(
            [str(spark_submit), "--master", "local[2]", "--py-files",
             str(build_package_zip(tmp_path)), str(REPO / "spark_jobs" / "build_features.py"),
             "--root", root, "--spec", small_spec, "--ds", day],
            env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        logged = done.stdout + done.stderr
        assert f"events ds={day}: ok rows in=" in logged  # pyspark's handler
        # the launcher's local master gets the local session: no UI, and Spark's own per-task
        # INFO lines silenced once the session is up
        assert "Successfully started service 'SparkUI'" not in logged
        assert " INFO DAGScheduler: " not in logged
        assert " INFO Executor: Finished task" not in logged
        features = read_partition(root, "features", day)
        assert features["customer_id"].str.len().eq(6).all()  # zero-padded ids kept as strings
        assert json.loads(Path(Layout(root).run_fragment(day, "features")).read_text())[
            "feature_rows"] == len(features)
        assert read_json(Layout(root).history()) == {"first_day": {"events": START,
                                                                   "customers": START}}
