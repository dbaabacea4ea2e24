"""Storage layout paths, ds validation, atomic partition writes (including a SIGKILL) and the
removal of what crashed writers left behind (local and on a moto S3 server)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from churn.storage import (Layout, atomic_partition, ds_range, filesystem, list_child_infos,
                           list_children, list_partitions, read_json, recover_partitions, shift_ds,
                           staging_dir, validate_ds, write_json_atomic)
from tests.support.processes import child_env

REPO_ROOT = Path(__file__).resolve().parents[2]
DS = "2026-03-01"
OTHER_DS = "2026-03-02"
HEX = "0123456789ab"  # the uuid part of a temporary's name
OLD_CONTENT = b"old partition\n"


class TestLayout:
    def test_local_paths(self):
        layout = Layout("/data/churn/")
        assert layout.root == "/data/churn"
        assert not layout.is_s3
        assert layout.raw("events", DS) == "/data/churn/raw/events/ds=2026-03-01"
        assert layout.quarantine("customers", DS) == (
            "/data/churn/quarantine/customers/ds=2026-03-01")
        assert layout.features(DS) == "/data/churn/features/ds=2026-03-01"
        assert layout.labels(DS) == "/data/churn/labels/ds=2026-03-01"
        assert layout.oracle(DS) == "/data/churn/oracle/ds=2026-03-01"
        assert layout.manifest(DS) == "/data/churn/runs/ds=2026-03-01/manifest.json"
        assert layout.run_fragment(DS, "features") == "/data/churn/runs/ds=2026-03-01/features.json"
        assert layout.area("raw", "events") == "/data/churn/raw/events"

    def test_s3_paths(self):
        layout = Layout("s3://bucket/prefix/")
        assert layout.is_s3
        assert layout.predictions(DS) == "s3://bucket/prefix/predictions/ds=2026-03-01"
        assert layout.model_version("churn_xgb", "v-20260301") == (
            "s3://bucket/prefix/models/churn_xgb/v-20260301")
        assert layout.champion("churn_xgb") == "s3://bucket/prefix/models/churn_xgb/champion.json"
        assert Layout("s3a://b/p").is_s3

    @pytest.mark.parametrize("bad", ["../etc", "2026-13-01", "20260101", "2026-02-30", "", None])
    def test_validate_ds_refuses(self, bad):
        with pytest.raises(ValueError):
            validate_ds(bad)

    @pytest.mark.parametrize("bad", ["../etc", "2026-13-01", "20260101"])
    def test_paths_refuse_bad_ds(self, bad):
        with pytest.raises(ValueError):
            Layout("/data").raw("events", bad)

    @pytest.mark.parametrize("bad", ["../x", "a/b", ""])
    def test_paths_refuse_bad_names(self, bad):
        with pytest.raises(ValueError):
            Layout("/data").raw(bad, DS)

    def test_ds_range_and_shift(self):
        assert ds_range("2026-02-27", "2026-03-02") == [
            "2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
        assert shift_ds(DS, -1) == "2026-02-28"
        assert shift_ds(DS, 31) == "2026-04-01"
        with pytest.raises(ValueError, match="before start"):
            ds_range(DS, "2026-02-01")


def _old_partition(root: Path) -> str:
    """A committed partition holding OLD_CONTENT; returns its URI."""
    uri = Layout(str(root)).raw("events", DS)
    with atomic_partition(uri) as tmp:
        Path(tmp, "part-00000.csv").write_bytes(OLD_CONTENT)
    return uri


def _plant(parent: Path, name: str) -> Path:
    """A directory `name` under `parent` holding one file, as a writer would leave it."""
    (parent / name).mkdir(parents=True)
    (parent / name / "part-00000.bin").write_bytes(b"in progress")
    return parent / name


class TestAtomicPartition:
    def test_success_replaces_the_partition(self, tmp_path):
        uri = _old_partition(tmp_path)
        with atomic_partition(uri) as tmp:
            Path(tmp, "part-00000.csv").write_bytes(b"new\n")
        assert [p.name for p in Path(uri).iterdir()] == ["part-00000.csv"]
        assert Path(uri, "part-00000.csv").read_bytes() == b"new\n"
        assert sorted(p.name for p in Path(uri).parent.iterdir()) == ["_locks", f"ds={DS}"]

    def test_exception_keeps_the_old_partition(self, tmp_path):
        uri = _old_partition(tmp_path)
        with pytest.raises(RuntimeError, match="boom"), atomic_partition(uri) as tmp:
            Path(tmp, "part-00000.csv").write_bytes(b"half")
            raise RuntimeError("boom")
        assert Path(uri, "part-00000.csv").read_bytes() == OLD_CONTENT
        assert sorted(p.name for p in Path(uri).parent.iterdir()) == ["_locks", f"ds={DS}"]

    def test_sigkill_midway_leaves_old_partition_and_the_next_writer_removes_the_temp(
            self, tmp_path, caplog):
        uri = _old_partition(tmp_path)
        area = Layout(str(tmp_path)).area("raw", "events")
        other_day = _plant(Path(area), f"_tmp-ds={OTHER_DS}-{HEX}")  # a live writer of another day
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.support.writer_child", uri, "64"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT, env=child_env())
        try:
            word, tmp = child.stdout.readline().decode().split()
            assert word == "midway"
            assert Path(tmp, "part-00000.bin").stat().st_size == 32 << 20
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            child.kill()
            child.stdin.close()
            child.stdout.close()

        assert Path(uri, "part-00000.csv").read_bytes() == OLD_CONTENT
        assert [p.name for p in Path(uri).iterdir()] == ["part-00000.csv"]
        assert list_partitions(area) == [DS]
        assert Path(tmp).name.startswith(f"_tmp-ds={DS}-") and Path(tmp).is_dir()

        with caplog.at_level(logging.WARNING, logger="churn.storage"), \
                atomic_partition(uri) as fresh:
            Path(fresh, "part-00000.csv").write_bytes(b"rewritten\n")
        assert not Path(tmp).exists()
        assert [r.getMessage() for r in caplog.records] == [
            f"interrupted write of {uri} ({Path(tmp).name}): rolled back: removed its "
            "unfinished write; the partition is as before"]
        assert Path(uri, "part-00000.csv").read_bytes() == b"rewritten\n"
        assert sorted(p.name for p in Path(area).iterdir()) == [
            "_locks", other_day.name, f"ds={DS}"]
        assert Path(other_day, "part-00000.bin").read_bytes() == b"in progress"

    def test_child_that_finishes_swaps_in(self, tmp_path):
        uri = _old_partition(tmp_path)
        env = child_env()
        done = subprocess.run([sys.executable, "-m", "tests.support.writer_child", uri, "4"],
                              input=b"", capture_output=True, cwd=REPO_ROOT, env=env, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        assert [p.name for p in Path(uri).iterdir()] == ["part-00000.bin"]
        assert Path(uri, "part-00000.bin").stat().st_size == 4 << 20


STAGED = ("2026-03-01", "2026-03-02")  # the day range a writer is about to write
# Temporaries in one area: True where a writer of STAGED (partitions ds=03-01, ds=03-02) removes it.
AREA_ENTRIES = {
    f"_tmp-ds=2026-03-01-{HEX}": True,  # its own partition's temp
    f"_old-ds=2026-03-02-{HEX}": True,  # its own partition's old copy, left mid-swap
    f"_tmp-ds=2026-03-03-{HEX}": False,  # another day's: maybe a writer running now
    f"_old-ds=2026-02-28-{HEX}": False,
    f"_tmp-staging-2026-02-25_2026-03-01-{HEX}": True,  # staged range overlaps STAGED
    f"_tmp-staging-2026-03-02_2026-03-09-{HEX}": True,
    f"_tmp-staging-2026-02-20_2026-02-28-{HEX}": False,  # ends before STAGED
    f"_tmp-staging-2026-03-03_2026-03-03-{HEX}": False,  # starts after STAGED
    "_tmp-ds=2026-03-01-not-a-uuid": False,  # not a name our writers make
    "ds=2026-03-01": False,  # the live partitions
    "ds=2026-03-02": False,
}


class TestRemoveStaleTemps:
    def test_removes_only_the_temps_of_the_partitions_about_to_be_written(self, tmp_path, caplog):
        stray_file = f"_tmp-ds=2026-03-01-{'f' * 12}"
        for name in AREA_ENTRIES:
            _plant(tmp_path, name)
        (tmp_path / stray_file).write_text("a temp file, not a directory")
        with caplog.at_level(logging.WARNING, logger="churn.storage"):
            removed = recover_partitions(str(tmp_path), ["ds=2026-03-01", "ds=2026-03-02"],
                                         staged_days=STAGED)
        stale = sorted([n for n, gone in AREA_ENTRIES.items() if gone] + [stray_file])
        assert sorted(Path(r).name for r in removed) == stale
        assert all(r.startswith(f"{tmp_path}/") for r in removed)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            n for n, gone in AREA_ENTRIES.items() if not gone)
        assert len(caplog.records) == len(stale)

    def test_without_a_staged_range_staging_dirs_stay(self, tmp_path):
        staging = _plant(tmp_path, f"_tmp-staging-2026-03-01_2026-03-01-{HEX}")
        assert recover_partitions(str(tmp_path), ["ds=2026-03-01"]) == []
        assert staging.is_dir()

    def test_missing_area_is_nothing_to_remove(self, tmp_path):
        assert recover_partitions(str(tmp_path / "absent"), ["ds=2026-03-01"], STAGED) == []

    def test_staging_dir_names_its_day_range(self):
        name = staging_dir("/data/features/", ["2026-03-01", "2026-03-04"]).rpartition("/")[2]
        assert name.startswith("_tmp-staging-2026-03-01_2026-03-04-")
        assert len(name) == len("_tmp-staging-2026-03-01_2026-03-04-") + len(HEX)


@pytest.fixture(scope="module")
def s3_root():
    """`s3://churn-test/root` on a real moto server, with the AWS environment pointing at it."""
    from tests.support.moto_server import start_moto_server

    server = start_moto_server()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env().items():
            patch.setenv(key, value)
        server.client("s3").create_bucket(Bucket="churn-test")
        yield "s3://churn-test/root"
    server.stop()


def _s3_names(uri: str) -> list[str]:
    fs, path = filesystem(uri)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path)))


def _s3_put(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as out:
        out.write(data)


class TestOnS3:
    def test_atomic_partition_sweeps_its_own_temps_and_swaps_in(self, s3_root):
        area = f"{s3_root}/features"
        for name in (f"_tmp-ds={DS}-{HEX}", f"_old-ds={DS}-{HEX}", f"_tmp-ds={OTHER_DS}-{HEX}"):
            _s3_put(f"{area}/{name}/part-00000.bin", b"left behind")
        for content in (b"first", b"second"):
            with atomic_partition(f"{area}/ds={DS}") as tmp:
                _s3_put(f"{tmp}/part-00000.bin", content)
        assert _s3_names(area) == [f"_tmp-ds={OTHER_DS}-{HEX}", f"ds={DS}"]
        assert _s3_names(f"{area}/ds={DS}") == ["part-00000.bin"]
        fs, path = filesystem(f"{area}/ds={DS}/part-00000.bin")
        with fs.open_input_stream(path) as src:
            assert src.read() == b"second"
        assert list_partitions(area) == [DS]

    def test_list_children_skips_hidden_and_temps(self, s3_root):
        area = f"{s3_root}/children"
        for name in ("b.json", f"_tmp-ds={DS}-{HEX}/x", "_locks/ds", ".hidden", "a/part.bin"):
            _s3_put(f"{area}/{name}", b"x")
        assert list_children(area) == ["a", "b.json"]
        assert list_children(f"{s3_root}/nothing") == []

    def test_staging_ranges_are_honoured(self, s3_root):
        area = f"{s3_root}/labels"
        for name in AREA_ENTRIES:
            _s3_put(f"{area}/{name}/part-00000.bin", b"x")
        removed = recover_partitions(area, ["ds=2026-03-01", "ds=2026-03-02"], STAGED)
        assert sorted(r.rpartition("/")[2] for r in removed) == sorted(
            n for n, gone in AREA_ENTRIES.items() if gone)
        assert _s3_names(area) == sorted(n for n, gone in AREA_ENTRIES.items() if not gone)


class TestJson:
    def test_write_json_atomic_round_trips(self, tmp_path):
        uri = Layout(str(tmp_path)).run_fragment(DS, "validate")
        write_json_atomic(uri, {"rows": 3, "ds": DS})
        assert read_json(uri) == {"rows": 3, "ds": DS}
        assert [p.name for p in Path(uri).parent.iterdir()] == ["validate.json"]

    def test_list_partitions_ignores_files_and_bad_names(self, tmp_path):
        area = tmp_path / "raw" / "events"
        for name in (f"ds={DS}", "ds=2026-03-02", "ds=garbage", "_tmp-ds=2026-03-03-abc"):
            (area / name).mkdir(parents=True)
        (area / "notes.txt").write_text("x")
        assert list_partitions(str(area)) == [DS, "2026-03-02"]
        assert list_partitions(str(tmp_path / "nothing")) == []


class TestListChildren:
    HIDDEN = (f"_tmp-ds={DS}-{HEX}", f"_old-ds={DS}-{HEX}", f"_ready-ds={DS}-{HEX}", "_locks",
              "_SUCCESS", ".part-0.crc", ".git")

    def test_sorted_visible_names_files_and_directories(self, tmp_path):
        for name in ("v2", "v10", "b", *self.HIDDEN):
            (tmp_path / name).mkdir()
        (tmp_path / "a.json").write_text("{}")
        assert list_children(str(tmp_path)) == ["a.json", "b", "v10", "v2"]

    def test_infos_carry_the_entry_type(self, tmp_path):
        (tmp_path / "dir").mkdir()
        (tmp_path / "file").write_text("x")
        (tmp_path / "_SUCCESS").write_text("")
        assert [(i.base_name, i.type) for i in list_child_infos(str(tmp_path))] == [
            ("dir", pafs.FileType.Directory), ("file", pafs.FileType.File)]

    def test_missing_directory_is_empty(self, tmp_path):
        assert list_children(str(tmp_path / "nothing")) == []
        assert list_child_infos(str(tmp_path / "nothing")) == []


class TestListPartitions:
    def test_only_ds_directories_are_days_others_warned_hidden_silent(self, tmp_path, caplog):
        area = tmp_path / "raw" / "events"
        for name in (f"ds={DS}", "dt=2026-03-02", "xx=2026-03-04", "ds=2026-3-5", "ds=2026-02-30",
                     "_tmp-ds=2026-03-03-abc", ".ds=2026-03-06", "_locks"):
            (area / name).mkdir(parents=True)
        (area / "ds=2026-03-07").write_text("a file, not a partition")
        with caplog.at_level(logging.WARNING, logger="churn.storage"):
            assert list_partitions(str(area)) == [DS]
        assert sorted(r.getMessage() for r in caplog.records) == [
            f"ignored {area}/{name}: not a ds=YYYY-MM-DD partition directory"
            for name in ("ds=2026-02-30", "ds=2026-03-07", "ds=2026-3-5", "dt=2026-03-02",
                         "xx=2026-03-04")]
