"""Crash-safe partition writes (issue 9, items 1 and 2).

* A writer is SIGKILLed at every step of a swap (the `swap:<step>` fault points of
  `churn.storage.swap_in`), with and without an old partition, with the one-step exchange and
  with the two-rename fallback. After the kill the partition is the old one or the new one,
  whole; the next writer's recovery rolls the swap forward or back and says which.
* Two writers of one partition: the second waits for the first's lock (or gives up loudly),
  and never removes the first writer's temporary.
* Staging holds what the job computed, or nothing is swapped in.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from churn.faults import KILL_AT_ENV
from churn.spark import write_day_partitions
from churn.storage import (EXCHANGE_ENV, Layout, PartitionBusyError, StagingMismatchError,
                           atomic_partition, check_staged_rows, partition_locks,
                           recover_partitions)
from tests.support.processes import REPO_ROOT, child_env

DS = "2026-03-01"
OLD = {"part-00000.csv": b"old partition\n"}
NEW_MIB = 2  # the child writes part-00000.bin of this many MiB
NEW = {"part-00000.bin": b"x" * (NEW_MIB << 20)}
ROWS = "id string, ds string"  # the schema of the Spark-written test partitions
# step -> (what readers see right after the kill, what the next writer's recovery leaves, log)
WITH_EXCHANGE = {
    "swap:staged": ("old", "old", "rolled back"),
    "swap:ready": ("old", "new", "rolled forward"),
    "swap:exchanged": ("new", "new", "rolled forward"),
    "swap:cleaned": ("new", "new", None),
}
TWO_RENAMES = {
    "swap:staged": ("old", "old", "rolled back"),
    "swap:ready": ("old", "new", "rolled forward"),
    "swap:set_aside": (None, "new", "rolled forward"),
    "swap:moved_in": ("new", "new", "rolled forward"),
    "swap:cleaned": ("new", "new", None),
}
FIRST_WRITE = {
    "swap:staged": (None, None, "rolled back"),
    "swap:ready": (None, "new", "rolled forward"),
    "swap:moved_in": ("new", "new", None),
}
CASES = ([("exchange", True, step, *o) for step, o in WITH_EXCHANGE.items()]
         + [("two renames", True, step, *o) for step, o in TWO_RENAMES.items()]
         + [("first write", False, step, *o) for step, o in FIRST_WRITE.items()])


def partition_uri(root: Path) -> str:
    return Layout(str(root)).features(DS)


def write_old(uri: str) -> None:
    with atomic_partition(uri) as tmp:
        for name, data in OLD.items():
            Path(tmp, name).write_bytes(data)


def visible(uri: str) -> str | None:
    """What a reader of the partition finds: `old`, `new`, None (no partition) or `mix:<files>`
    (hidden `_` files, such as a swap token, are not data and are skipped, as readers do)."""
    if not Path(uri).is_dir():
        return None
    found = {p.name: p.read_bytes() for p in Path(uri).iterdir() if not p.name.startswith("_")}
    return next((name for name, files in (("old", OLD), ("new", NEW)) if found == files),
                f"mix:{sorted(found)}")


def leftovers(uri: str) -> list[str]:
    """Entries next to the partition other than the partition itself and the lock folder."""
    area = Path(uri).parent
    return sorted(p.name for p in area.iterdir() if p.name not in ("_locks", Path(uri).name))


def run_writer(uri: str, kill_at: str | None = None, exchange: bool = True) -> subprocess.Popen:
    """`tests.support.writer_child` writing NEW into the partition in a child process: it
    stops midway until its stdin closes."""
    env = child_env(**{KILL_AT_ENV: kill_at or "", EXCHANGE_ENV: "on" if exchange else "off"})
    child = subprocess.Popen([sys.executable, "-m", "tests.support.writer_child", uri,
                              str(NEW_MIB)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=REPO_ROOT, env=env)
    return child


class TestKilledAtEachSwapStep:
    @pytest.mark.parametrize(("mode", "has_old", "step", "after_kill", "after_recovery", "log"),
                             CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
    def test_readers_see_old_or_new_and_the_next_writer_finishes_or_undoes(
            self, tmp_path, caplog, reliability_case, mode, has_old, step, after_kill,
            after_recovery, log):
        uri = partition_uri(tmp_path)
        if has_old:
            write_old(uri)
        child = run_writer(uri, kill_at=step, exchange=mode != "two renames")
        _, stderr = child.communicate(input=b"", timeout=120)
        assert child.returncode == -9, stderr.decode()
        assert f"fault point {step}: SIGKILL" in stderr.decode()
        left = leftovers(uri)
        assert visible(uri) == after_kill
        shown = [re.sub(r"-[0-9a-f]{12}$", "-<token>", name) for name in left]

        area = str(Path(uri).parent)
        with caplog.at_level(logging.WARNING, logger="churn.storage"), \
                partition_locks(area, [Path(uri).name]):
            handled = recover_partitions(area, [Path(uri).name])
        messages = [r.getMessage() for r in caplog.records]
        assert visible(uri) == after_recovery
        assert leftovers(uri) == []
        assert sorted(Path(h).name for h in handled) == left
        if log is None:
            assert messages == []
        else:
            assert messages and all(f"interrupted write of {uri}" in m for m in messages)
            assert log in messages[0]
        reliability_case(
            f"writer of {'an existing' if has_old else 'a new'} partition SIGKILLed at {step} "
            f"({mode})",
            f"readers saw {after_kill or 'no partition'}; left {shown or 'nothing'}; the next "
            f"writer's recovery: {messages[0].split(': ', 1)[1] if messages else 'nothing'}",
            f"partition is whole ({after_kill} / {after_recovery}), no temporary left, "
            "never a mix")


class WaitSeen(logging.Handler):
    """Sets an event when a writer logs that it waits for a partition's lock."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting up to" in record.getMessage():
            self.seen.set()


class TestTwoWritersOfOnePartition:
    def test_second_writer_gives_up_loudly_and_keeps_the_first_writers_temp(
            self, tmp_path, reliability_case):
        uri = partition_uri(tmp_path)
        write_old(uri)
        first = run_writer(uri)
        word, first_tmp = first.stdout.readline().decode().split()
        assert word == "midway"
        with pytest.raises(PartitionBusyError, match=r"another writer still holds .*_locks"), \
                atomic_partition(uri, lock_timeout=0.2) as tmp:
            Path(tmp, "part-00000.csv").write_bytes(b"second writer\n")
        assert Path(first_tmp).is_dir(), "the second writer removed a live writer's temporary"
        assert visible(uri) == "old"
        first.stdin.close()
        assert first.wait(timeout=60) == 0
        assert visible(uri) == "new"
        reliability_case(
            "a second writer of a partition while the first is midway (its lock held)",
            "the second waited 0.2 s, then failed with PartitionBusyError naming the lock; the "
            "first writer's temporary was untouched and its write swapped in",
            "first writer's temp still there; partition old until the first finished, then new")

    def test_second_writer_waits_then_writes_after_the_first(self, tmp_path, reliability_case):
        uri = partition_uri(tmp_path)
        first = run_writer(uri)
        assert first.stdout.readline().decode().startswith("midway")
        waiting, errors = WaitSeen(), []
        logging.getLogger("churn.storage").addHandler(waiting)

        def second_writer() -> None:
            try:
                with atomic_partition(uri) as tmp:
                    Path(tmp, "part-00000.csv").write_bytes(OLD["part-00000.csv"])
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        second = threading.Thread(target=second_writer)
        try:
            second.start()
            assert waiting.seen.wait(timeout=60), "the second writer never waited for the lock"
            assert visible(uri) is None
            first.stdin.close()
            assert first.wait(timeout=60) == 0
            second.join(timeout=60)
        finally:
            logging.getLogger("churn.storage").removeHandler(waiting)
        assert errors == []
        assert visible(uri) == "old"  # the second writer's bytes, swapped in after the first's
        assert leftovers(uri) == []
        reliability_case(
            "two writers of one partition at once (a child process and a thread)",
            "the second logged that it waits for the lock, wrote after the first swapped in",
            "swaps serialized: final partition is the second writer's, no temporary left")


class TestStagingHoldsWhatWasComputed:
    def test_lost_or_short_staging_is_refused(self, tmp_path):
        staged = tmp_path / "_tmp-staging-x" / "_part=2026-03-01"
        with pytest.raises(StagingMismatchError, match="computed 3 rows but its staging .* is "
                                                       "missing"):
            check_staged_rows(str(staged), 3, "features/ds=2026-03-01")
        staged.mkdir(parents=True)
        pd.DataFrame({"a": [1, 2]}).to_parquet(staged / "part-0.parquet")
        with pytest.raises(StagingMismatchError, match="computed 3 rows but .* holds 2 rows"):
            check_staged_rows(str(staged), 3, "features/ds=2026-03-01")
        check_staged_rows(str(staged), 2, "features/ds=2026-03-01")

    def test_only_a_day_without_rows_becomes_empty(self, spark, tmp_path, reliability_case):
        layout = Layout(str(tmp_path))
        frame = spark.createDataFrame([("a", "2026-03-01"), ("b", "2026-03-01")], ROWS)
        write_day_partitions(frame, ["2026-03-01", "2026-03-02"], layout.features)
        first = pd.read_parquet(layout.features("2026-03-01"))
        empty = pd.read_parquet(layout.features("2026-03-02"))
        assert sorted(first["id"]) == ["a", "b"]
        assert len(empty) == 0 and list(empty.columns) == ["id", "ds"]
        assert leftovers(layout.features("2026-03-01")) == ["ds=2026-03-02"]
        reliability_case(
            "a range write of 2026-03-01..02 whose second day has no rows",
            "2026-03-01 got its 2 rows; only the 0-row day 2026-03-02 became an empty Parquet "
            "partition (with the schema); staged counts matched the job's before any swap",
            "rows per day == rows computed; no staging left", {"rows_in": 2, "rows_out": 2,
                                                              "rows_rejected": 0})

    def test_a_held_day_lock_stops_a_range_write_before_it_touches_anything(
            self, spark, tmp_path, reliability_case):
        layout = Layout(str(tmp_path))
        frame = spark.createDataFrame([("a", "2026-03-01"), ("b", "2026-03-03")], ROWS)
        write_day_partitions(frame, ["2026-03-01", "2026-03-03"], layout.features)
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys\nfrom churn.storage import partition_locks\n"
             f"with partition_locks({str(tmp_path / 'features')!r}, ['ds=2026-03-02']):\n"
             "    print('held', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT, env=child_env())
        try:
            assert holder.stdout.readline().decode().strip() == "held"
            changed = spark.createDataFrame([("z", "2026-03-01")], ROWS)
            with pytest.raises(PartitionBusyError, match="ds=2026-03-02"):
                write_day_partitions(changed, ["2026-03-01", "2026-03-03"], layout.features,
                                     lock_timeout=0.2)
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        assert sorted(pd.read_parquet(layout.features("2026-03-01"))["id"]) == ["a"]
        assert sorted(pd.read_parquet(layout.features("2026-03-03"))["id"]) == ["b"]
        reliability_case(
            "a bulk range write (2026-03-01..03) while another writer holds 2026-03-02's lock",
            "the range writer waited 0.2 s, then failed with PartitionBusyError naming the day",
            "no day of the range was rewritten; no staging left")
