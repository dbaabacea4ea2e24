"""Storage layout paths, ds validation, and atomic partition writes (including a SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from churn.storage import (Layout, atomic_partition, cleanup_stale_temps, ds_range,
                           list_partitions, read_json, shift_ds, validate_ds, write_json_atomic)

REPO_ROOT = Path(__file__).resolve().parents[2]
DS = "2026-03-01"
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


def _child_env() -> dict[str, str]:
    """The environment of a writer child: this interpreter can import tests.support and churn."""
    paths = [str(REPO_ROOT), str(REPO_ROOT / "include"), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


class TestAtomicPartition:
    def test_success_replaces_the_partition(self, tmp_path):
        uri = _old_partition(tmp_path)
        with atomic_partition(uri) as tmp:
            Path(tmp, "part-00000.csv").write_bytes(b"new\n")
        assert [p.name for p in Path(uri).iterdir()] == ["part-00000.csv"]
        assert Path(uri, "part-00000.csv").read_bytes() == b"new\n"
        assert sorted(p.name for p in Path(uri).parent.iterdir()) == [f"ds={DS}"]

    def test_exception_keeps_the_old_partition(self, tmp_path):
        uri = _old_partition(tmp_path)
        with pytest.raises(RuntimeError, match="boom"), atomic_partition(uri) as tmp:
            Path(tmp, "part-00000.csv").write_bytes(b"half")
            raise RuntimeError("boom")
        assert Path(uri, "part-00000.csv").read_bytes() == OLD_CONTENT
        assert sorted(p.name for p in Path(uri).parent.iterdir()) == [f"ds={DS}"]

    def test_sigkill_midway_leaves_old_partition_and_no_visible_half(self, tmp_path):
        uri = _old_partition(tmp_path)
        area = Layout(str(tmp_path)).area("raw", "events")
        env = _child_env()
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.support.writer_child", uri, "64"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT, env=env)
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
        assert cleanup_stale_temps(area) == [tmp]
        assert sorted(p.name for p in Path(area).iterdir()) == [f"ds={DS}"]

    def test_child_that_finishes_swaps_in(self, tmp_path):
        uri = _old_partition(tmp_path)
        env = _child_env()
        done = subprocess.run([sys.executable, "-m", "tests.support.writer_child", uri, "4"],
                              input=b"", capture_output=True, cwd=REPO_ROOT, env=env, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        assert [p.name for p in Path(uri).iterdir()] == ["part-00000.bin"]
        assert Path(uri, "part-00000.bin").stat().st_size == 4 << 20


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
