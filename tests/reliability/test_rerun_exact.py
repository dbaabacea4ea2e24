"""Re-runs are exact; parallel days do not interfere; a SIGKILLed writer leaves nothing that
lasts (issue 6, item 1), through the real Spark jobs on tiny generated data.

Data: 40 customers over 6 days (spec: windows 2 and 3 days, 2-day horizon), with malformed and
duplicated event lines on FAULT_DAY so its quarantine partition holds rows. A run of day D owns
exactly: `features/ds=D`, `quarantine/<table>/ds=D` per table, `labels/ds=D-2` (the one label day
whose horizon matured on D) and the fragments in `runs/ds=D/`. Each test snapshots every file
under the root (path -> sha256) and checks that nothing outside what the run owns changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churn.faults import KILL_AT_ENV
from churn.generate import generate
from churn.registry import load_model_dir
from churn.spec import load_spec
from churn.storage import Layout, list_partitions, read_json, shift_ds
from spark_jobs import score
from spark_jobs.build_features import JobArgs, run
from tests.support.model_fixture import features_frame, write_features, write_model_version
from tests.support.processes import REPO_ROOT, child_env, kill_group
from tests.support.raw_day import copy_world
from tests.support.small_data import write_small_spec

START, LAST_DAY, FAULT_DAY = "2024-01-01", "2024-01-06", "2024-01-04"
HORIZON = 2  # write_small_spec's
TABLES = ("events", "customers")
LENIENT = 0.5  # reject-rate limit: FAULT_DAY's bad lines are quarantined, not fatal
TIMING_FIELDS = ("seconds",)  # the only fragment fields a re-run may change
JOB_DEADLINE = 180  # seconds a build_features child may take on 2 busy cores
FIRST_DAYS = {"events": START, "customers": START}  # the generated history starts on START
RAW_PREFIX = r"^.*?/raw/(?=[^/]+/ds=)"  # a quarantined row's source file, up to its raw area
STALE_LOG = re.compile(r"^removed (\S+), left behind by a writer that did not finish$")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, str]:
    """The generated raw data (never written to) and the spec file."""
    folder = tmp_path_factory.mktemp("rerun_data")
    spec = write_small_spec(folder, "rerun")
    generate(str(folder / "data"), customers=40, start=START, days=6, seed=33, spec=spec,
             faults=("malformed_rows", "duplicate_rows"), fault_day=FAULT_DAY)
    return folder / "data", spec


def fresh_root(generated: tuple[Path, str], folder: Path) -> str:
    """A root holding a private copy of the generated raw partitions only."""
    shutil.copytree(generated[0] / "raw", folder / "raw")
    return str(folder)


@pytest.fixture(scope="module")
def built(spark, generated, tmp_path_factory) -> Path:
    """A root with every day START..LAST_DAY built (never written to: tests work on copies)."""
    root = fresh_root(generated, tmp_path_factory.mktemp("rerun_built"))
    build(spark, root, generated[1], START, LAST_DAY)
    return Path(root)


def last_day_built(built: Path, generated: tuple[Path, str], folder: Path
                   ) -> tuple[str, str, str, dict[str, PartitionContent]]:
    """A private copy of the built root (`folder/data`), as a writer of LAST_DAY finds it.

    Returns:
        The root, the spec, LAST_DAY, and each of LAST_DAY's partitions with its content.
    """
    root = str(copy_world(built, folder))
    return root, generated[1], LAST_DAY, {uri: partition_content(uri)
                                          for uri in owned_partitions(root, LAST_DAY)}


def build(spark, root: str, spec: str, start: str, end: str | None = None) -> dict:
    """Run build_features in this process over [start, end] (default: the one day start)."""
    return run(spark, JobArgs(root=root, spec=spec, start=start, end=end or start,
                              max_reject_rate=LENIENT))


def owned_partitions(root: str, ds: str) -> list[str]:
    """The partitions a build_features run of ds writes (its `runs/ds=` fragments aside)."""
    layout = Layout(root)
    return [*(layout.activity(table, ds) for table in TABLES), layout.features(ds),
            layout.labels(shift_ds(ds, -HORIZON)),
            *(layout.quarantine(table, ds) for table in TABLES)]


def file_hashes(root: str) -> dict[str, str]:
    """Every file under root (relative path) -> sha256 of its bytes."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(root).rglob("*")) if path.is_file()}


def dir_inodes(root: str) -> dict[str, int]:
    """Every directory under root (relative path) -> its inode: a partition swapped in anew is
    a new directory (created while the old one still existed), so its inode differs."""
    return {os.path.relpath(folder, root): os.stat(folder).st_ino
            for folder, _, _ in os.walk(root)}


def replaced_dirs(before: dict[str, int], after: dict[str, int]) -> set[str]:
    """Directories that exist in both snapshots but are not the same directory any more."""
    return {d for d in before.keys() & after.keys() if before[d] != after[d]}


def changed_files(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Files added, removed or rewritten with other bytes."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def owner(path: str, owned_dirs: list[str]) -> str | None:
    """The owned directory (relative) that `path` lies in, or None."""
    return next((d for d in owned_dirs if path.startswith(f"{d}/")), None)


def relative(root: str, uris: list[str]) -> list[str]:
    """Paths under root, relative to it."""
    return [str(Path(uri).relative_to(root)) for uri in uris]


class PartitionContent(NamedTuple):
    """What a Parquet partition holds: its rows, sorted, and its Arrow schema."""

    rows: pd.DataFrame
    schema: pa.Schema


def partition_content(uri: str) -> PartitionContent:
    """Read a partition; the raw file paths quarantined rows carry are cut to `raw/…` (relative
    to their root), so that two roots, or a root and its copy, compare."""
    table = pq.read_table(uri)
    frame = table.to_pandas()
    if "source_file" in frame:
        frame["source_file"] = frame["source_file"].str.replace(RAW_PREFIX, "raw/", regex=True)
    return PartitionContent(frame.sort_values(list(frame.columns)).reset_index(drop=True),
                            table.schema)


def file_contents(uri: str) -> list[str]:
    """The sha256 of each file of a partition, sorted (file names hold a fresh job id)."""
    return sorted(file_hashes(uri).values())


def assert_same_partition(got: PartitionContent, expected: PartitionContent) -> None:
    """Row-identical frames and identical Parquet schemas (types, nullability, metadata)."""
    pd.testing.assert_frame_equal(got.rows, expected.rows)
    assert got.schema.equals(expected.schema, check_metadata=True)


def fragments(root: str, ds: str) -> dict[str, dict]:
    """The day's run fragments without their timing fields."""
    folder = Path(Layout(root).partition("runs", ds))
    return {path.name: {k: v for k, v in read_json(str(path)).items() if k not in TIMING_FIELDS}
            for path in sorted(folder.glob("*.json"))}


def temps(root: str, needle: str = "") -> list[str]:
    """Relative paths of the `_tmp-`/`_ready-`/`_old-` entries under root whose name contains
    needle (os.walk: a writer may delete directories while we look)."""
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, dirs, files in os.walk(root) for name in dirs + files
                  if name.startswith(("_tmp-", "_ready-", "_old-")) and needle in name)


def written_dirs(root: str) -> list[str]:
    """The directories holding files under root, raw input and writer lock files aside."""
    return sorted({str(Path(p).parent) for p in file_hashes(root)
                   if not p.startswith("raw/") and Path(p).parent.name != "_locks"})


def plant_temp(area: Path, name: str) -> Path:
    """A temporary as a live writer of another day would have it: one half-written file."""
    (area / name).mkdir(parents=True)
    (area / name / "part-00000.snappy.parquet").write_bytes(b"PAR1 half written")
    return area / name


def start_build(root: str, spec: str, ds: str, log: Path, kill_at: str = "") -> subprocess.Popen:
    """build_features for one day as its own process group, with its own local Spark (that
    SIGKILLs itself at the fault point `kill_at`, if given)."""
    command = [sys.executable, str(REPO_ROOT / "spark_jobs" / "build_features.py"),
               "--root", root, "--spec", spec, "--ds", ds, "--master", "local[1]",
               "--max-reject-rate", str(LENIENT)]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env=child_env(**{KILL_AT_ENV: kill_at}),
                                start_new_session=True)


def wait_all(children: list[subprocess.Popen], deadline: float) -> list[int]:
    """Exit codes of the children, polled until all end or the deadline (then killed)."""
    try:
        while any(c.poll() is None for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        codes = [kill_group(c) if c.poll() is None else c.returncode for c in children]
    return codes


def wait_for_temp(root: str, day: str, child: subprocess.Popen, deadline: float) -> list[str]:
    """Poll until a temporary naming `day` appears under root (the writer is mid-write), the
    child ends, or the deadline passes; returns the temporaries found."""
    while time.monotonic() < deadline and child.poll() is None:
        found = temps(root, day)
        if found:
            return found
        time.sleep(0.02)
    return []


def tail(log: Path) -> str:
    """The end of a child's log, for a failure message."""
    return log.read_text(errors="replace")[-3000:]


class TestRerunIsExact:
    @pytest.mark.parametrize("day", [LAST_DAY, FAULT_DAY], ids=["newest_day", "faulty_day"])
    def test_build_features_rerun_rewrites_only_its_own_partitions(
            self, spark, generated, built, tmp_path, day, reliability_case):
        # every other day exists, to be left alone
        root, spec = str(copy_world(built, tmp_path)), generated[1]
        first = build(spark, root, spec, day)
        assert first["feature_days"] == [day]
        assert first["label_days"] == [shift_ds(day, -HORIZON)]
        partitions = owned_partitions(root, day)
        before = {uri: partition_content(uri) for uri in partitions}
        bytes_before = {uri: file_contents(uri) for uri in partitions}
        files_before, fragments_before = file_hashes(root), fragments(root, day)
        dirs_before = dir_inodes(root)

        again = build(spark, root, spec, day)

        owned_dirs = relative(root, [*partitions, Layout(root).partition("runs", day)])
        changed = changed_files(files_before, file_hashes(root))
        assert {p for p in changed if owner(p, owned_dirs) is None} == set()
        assert replaced_dirs(dirs_before, dir_inodes(root)) == set(relative(root, partitions))
        for uri in partitions:
            assert_same_partition(partition_content(uri), before[uri])
        assert {uri: file_contents(uri) for uri in partitions} == bytes_before
        assert again == first
        assert fragments(root, day) == fragments_before
        assert temps(root) == []
        counts = again["counts"]["events"][day]
        assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
        if day == FAULT_DAY:
            quarantined = before[Layout(root).quarantine("events", day)].rows
            assert len(quarantined) == counts["rows_rejected"] > 0
        untouched = len([p for p in files_before if owner(p, owned_dirs) is None])
        reliability_case(
            f"build_features for {day} run a second time (same code, same inputs)",
            f"rewrote exactly {', '.join(relative(root, partitions))} and runs/ds={day}",
            f"byte-identical Parquet files (names aside), row-identical sorted frames and "
            f"schemas, same summary and fragments (timing aside), {untouched} other files "
            f"byte-identical, only the owned partitions replaced, no temp left", counts)

    def test_score_rerun_rewrites_only_its_day(self, spark, spec_path, tmp_path,
                                               reliability_case):
        root, days = str(tmp_path), ["2026-02-02", "2026-02-03", "2026-02-04"]
        day, other_day = days[1], days[2]
        frames = {ds: features_frame(120, ds, seed=i) for i, ds in enumerate(days)}
        model = write_model_version(root, frames[days[0]])
        for ds, frame in frames.items():
            write_features(root, frame, ds)
        artifact, spec = load_model_dir(model.version_dir), load_spec(spec_path)
        for ds in days:
            score.run(spark, root, spec, artifact, ds)
        area = Path(Layout(root).area("predictions"))
        stale = plant_temp(area, f"_tmp-ds={day}-0123456789ab")  # a crashed writer of the day
        live = plant_temp(area, f"_tmp-ds={other_day}-0123456789ab")  # a writer running now
        before = partition_content(Layout(root).predictions(day))
        bytes_before = file_contents(Layout(root).predictions(day))
        files_before, fragments_before = file_hashes(root), fragments(root, day)
        dirs_before = dir_inodes(root)

        rows = score.run(spark, root, spec, artifact, day)

        owned_dirs = relative(root, [Layout(root).predictions(day),
                                     Layout(root).partition("runs", day), str(stale)])
        changed = changed_files(files_before, file_hashes(root))
        assert {p for p in changed if owner(p, owned_dirs) is None} == set()
        assert replaced_dirs(dirs_before, dir_inodes(root)) == {owned_dirs[0]}
        assert_same_partition(partition_content(Layout(root).predictions(day)), before)
        assert file_contents(Layout(root).predictions(day)) == bytes_before
        assert rows == len(before.rows) == 120
        assert fragments(root, day) == fragments_before
        assert not stale.exists() and live.is_dir()
        assert temps(root) == [str(live.relative_to(root))]
        reliability_case(
            f"score.py for {day} run a second time with the same model; a stale temp of the "
            "day and a live temp of another day in predictions/",
            "rewrote predictions/ds=D and runs/ds=D/score.json only; removed the day's stale "
            "temp, kept the other day's",
            "byte-identical and row-identical predictions, same schema and fragment (timing "
            "aside), every other file byte-identical",
            {"rows_in": 120, "rows_out": rows, "rows_rejected": 0})


class TestParallelDays:
    def test_two_days_at_once_equal_the_same_days_run_one_after_the_other(
            self, spark, generated, tmp_path, reliability_case):
        spec, days = generated[1], ("2024-01-05", LAST_DAY)  # adjacent days, as catch-up runs
        sequential = fresh_root(generated, tmp_path / "sequential")
        parallel = fresh_root(generated, tmp_path / "parallel")
        for ds in days:
            build(spark, sequential, spec, ds)
        logs = [tmp_path / f"build-{ds}.log" for ds in days]
        began = time.monotonic()
        children = [start_build(parallel, spec, ds, log) for ds, log in zip(days, logs)]
        codes = wait_all(children, began + JOB_DEADLINE)
        seconds = time.monotonic() - began
        assert codes == [0, 0], "\n".join(tail(log) for log in logs)

        partitions = [uri for ds in days for uri in owned_partitions(parallel, ds)]
        # `runs/` itself holds the history record (`runs/_history.json`) both runs write
        assert written_dirs(parallel) == written_dirs(sequential) == sorted(
            relative(parallel, partitions) + ["runs"] + [f"runs/ds={ds}" for ds in days])
        assert (read_json(Layout(parallel).history())
                == read_json(Layout(sequential).history()) == {"first_day": FIRST_DAYS})
        for uri in partitions:
            twin = uri.replace(parallel, sequential, 1)
            assert_same_partition(partition_content(uri), partition_content(twin))
        for ds in days:
            assert fragments(parallel, ds) == fragments(sequential, ds)
        assert temps(parallel) == []
        counts = read_json(Layout(parallel).run_fragment(days[1], "ingest"))["tables"]["events"]
        reliability_case(
            f"build_features for {days[0]} and {days[1]} started together (two processes, "
            "each its own local[1] Spark, one root)",
            f"both exited 0 in {seconds:.0f}s; wrote the same partitions as one-after-the-other",
            f"same partition list, row-identical frames and schemas of {len(partitions)} "
            "partitions, same fragments (timing aside), no temp left", counts)


class TestKilledWriter:
    def test_sigkill_mid_write_keeps_the_old_day_and_the_rerun_cleans_only_its_own(
            self, spark, generated, built, tmp_path, caplog, reliability_case):
        root, spec, day, before = last_day_built(built, generated, tmp_path)
        partitions = list(before)
        other = shift_ds(day, -1)  # a writer of another day, as if running right now
        live = [plant_temp(Path(root, "features"), f"_tmp-ds={other}-0123456789ab"),
                plant_temp(Path(root, "labels"), f"_tmp-staging-{shift_ds(other, -HORIZON)}_"
                                                 f"{shift_ds(other, -HORIZON)}-0123456789ab")]
        live_bytes = {p: file_hashes(str(p)) for p in live}

        log = tmp_path / "killed.log"
        child = start_build(root, spec, day, log)
        try:
            stale = wait_for_temp(root, day, child, time.monotonic() + JOB_DEADLINE)
        finally:
            code = kill_group(child)
        assert stale, tail(log)
        assert code == -signal.SIGKILL
        left = temps(root, day)
        assert left, "the killed writer's temporary should still be there"
        for uri in partitions:
            assert_same_partition(partition_content(uri), before[uri])
        assert list_partitions(Layout(root).area("features"))[-1] == day

        with caplog.at_level("WARNING", logger="churn.storage"):
            summary = build(spark, root, spec, day)

        logged = (STALE_LOG.match(r.getMessage()) for r in caplog.records)
        removed = sorted(match[1] for match in logged if match)
        assert relative(root, removed) == left
        assert temps(root, day) == []
        for uri in partitions:
            assert_same_partition(partition_content(uri), before[uri])
        assert {p: file_hashes(str(p)) for p in live} == live_bytes
        assert temps(root) == sorted(str(p.relative_to(root)) for p in live)
        reliability_case(
            f"build_features for {day} SIGKILLed (whole process group) while writing "
            f"{', '.join(left)}; temps of another day planted",
            "old partitions stayed intact and readable, the temp stayed behind; the re-run "
            "removed exactly that temp (logged), rewrote the day, kept the other day's temps",
            "row-identical partitions after the kill and after the re-run, removed == left "
            "behind, other day's temps byte-identical", summary["counts"]["events"][day])

    def test_sigkill_inside_a_swap_keeps_every_partition_whole_and_the_rerun_rolls_forward(
            self, spark, generated, built, tmp_path, caplog, reliability_case):
        root, spec, day, before = last_day_built(built, generated, tmp_path)
        partitions = list(before)

        log = tmp_path / "killed.log"
        child = start_build(root, spec, day, log, kill_at="swap:exchanged")
        try:
            code = child.wait(timeout=JOB_DEADLINE)
        finally:
            kill_group(child)
        assert code == -signal.SIGKILL, tail(log)
        left = temps(root, day)
        kinds = sorted(Path(t).name.split("-")[1] if "staging" in t else Path(t).name[:7]
                       for t in left)
        assert kinds == ["_ready-", "staging"], left  # one swap mid-way, the range's staging
        for uri in partitions:
            assert_same_partition(partition_content(uri), before[uri])

        with caplog.at_level("WARNING", logger="churn.storage"):
            summary = build(spark, root, spec, day)
        recovered = [r.getMessage() for r in caplog.records
                     if r.getMessage().startswith("interrupted write of")]
        assert len(recovered) == 1 and "rolled forward: the new partition is live" in \
            recovered[0], recovered
        assert temps(root, day) == []
        for uri in partitions:
            assert_same_partition(partition_content(uri), before[uri])
        reliability_case(
            f"build_features for {day} SIGKILLed (fault point swap:exchanged) right after its "
            f"first partition swap, leaving {', '.join(left)}",
            "every partition of the day stayed whole and readable; the re-run logged "
            f"'{recovered[0].split(': ', 1)[1]}' and rewrote the day",
            "row-identical partitions after the kill and after the re-run; no temp left",
            summary["counts"]["events"][day])
