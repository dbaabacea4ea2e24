"""When a raw partition has landed (ready markers) and what a landed day must hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from churn.landing import NotLandedError, check_landed, check_min_rows, waiting_for
from churn.spec import DatasetSpec, load_spec
from churn.storage import Layout

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(REPO_ROOT / "include" / "datasets" / "synthetic.yaml")
DS = "2025-03-17"


def with_ready(spec: DatasetSpec, **ready) -> DatasetSpec:
    """The spec with `ready` settings on both tables."""
    raw = spec.model_dump()
    for table in ("events", "customers"):
        raw[table]["ready"] = {**raw[table]["ready"], **ready}
    return DatasetSpec.model_validate(raw)


def write(uri: str, name: str, text: str = "customer_id\na\n", mtime: float | None = None) -> Path:
    Path(uri).mkdir(parents=True, exist_ok=True)
    path = Path(uri, name)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout(str(tmp_path))


class TestWaitingFor:
    def test_data_without_marker_is_not_landed(self, layout):
        write(layout.raw("events", DS), "part-0.csv")
        write(layout.raw("customers", DS), "part-0.csv")
        write(layout.raw("customers", DS), "_SUCCESS", "")
        assert waiting_for(layout.root, SPEC, DS) == {
            layout.raw("events", DS): "1 data file(s) but no _SUCCESS marker from the producer yet"}

    def test_marker_without_data_is_not_landed(self, layout):
        for table in ("events", "customers"):
            write(layout.raw(table, DS), "_SUCCESS", "")
        assert set(waiting_for(layout.root, SPEC, DS).values()) == {"no data file yet"}

    def test_custom_marker_and_atomic_producers(self, layout):
        for table in ("events", "customers"):
            write(layout.raw(table, DS), "part-0.csv")
        custom = with_ready(SPEC, marker="_READY")
        assert len(waiting_for(layout.root, custom, DS)) == 2
        for table in ("events", "customers"):
            write(layout.raw(table, DS), "_READY", "")
        assert waiting_for(layout.root, custom, DS) == {}
        # marker: null (a producer that publishes a partition atomically): data is enough
        assert waiting_for(layout.root, with_ready(SPEC, marker=None), DS) == {}

    def test_marker_name_must_be_hidden_from_readers(self):
        with pytest.raises(ValueError, match="marker"):
            with_ready(SPEC, marker="SUCCESS")  # Spark would read it as a data file


class TestCheckLanded:
    def test_zero_byte_file_fails_naming_table_day_and_file(self, layout):
        empty = write(layout.raw("events", DS), "part-1.csv", "", mtime=1_000)
        write(layout.raw("events", DS), "_SUCCESS", "", mtime=2_000)
        with pytest.raises(NotLandedError) as raised:
            check_landed(layout.root, SPEC, [DS])
        assert str(raised.value) == f"table events ds={DS}: file {empty} is empty (0 bytes)"

    def test_file_added_after_the_marker_fails_the_day(self, layout):
        write(layout.raw("customers", DS), "part-0.csv", mtime=1_000)
        write(layout.raw("customers", DS), "_SUCCESS", "", mtime=2_000)
        check_landed(layout.root, SPEC, [DS])  # complete: passes
        late = write(layout.raw("customers", DS), "late.csv", mtime=3_000)
        with pytest.raises(NotLandedError, match=rf"table customers ds={DS}: file {late} was "
                                                 r"written after the _SUCCESS marker"):
            check_landed(layout.root, SPEC, [DS])

    def test_min_rows(self):
        spec = with_ready(SPEC, min_rows=10)
        check_min_rows(spec, "events", {DS: 10})
        with pytest.raises(NotLandedError, match=rf"table events ds={DS}: 3 row\(s\), fewer "
                                                 r"than ready.min_rows=10"):
            check_min_rows(spec, "events", {DS: 3, "2025-03-18": 12})
