"""Reading raw files as producers write them: names, compression, headers (tiny files)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from pathlib import Path

import pytest

from churn import ingest
from churn.landing import landed_problems, list_partition
from churn.spec import ReadySpec

DAY = "2024-01-10"
COLUMNS = ["customer_id", "event_ts", "event_type", "amount"]


def partition(tmp_path: Path, table: str = "events") -> Path:
    folder = tmp_path / "raw" / table / f"ds={DAY}"
    folder.mkdir(parents=True)
    return folder


class TestCompression:
    @pytest.mark.parametrize(("name", "codec"), [("part.csv.gz", "gzip"), ("PART.JSONL.GZ", "gzip"),
                                                 ("part.csv", None), ("part", None),
                                                 ("x.gz.csv", None)])
    def test_by_last_extension(self, name, codec):
        assert ingest.compression(f"/r/raw/events/ds={DAY}/{name}") == codec


class TestCheckExtension:
    @pytest.mark.parametrize(("name", "fmt"), [("part.csv.gz", "csv"), ("p.jsonl.gz", "jsonl"),
                                               ("part", "csv"), ("a b+c:d.csv", "csv"),
                                               ("part.parquet", "parquet")])
    def test_accepted(self, name, fmt):
        ingest.check_extension(f"/r/raw/events/ds={DAY}/{name}", fmt)

    @pytest.mark.parametrize(("name", "fmt", "says"), [
        ("part.jsonl.gz", "csv", "a .jsonl file"),
        ("part.csv.bz2", "csv", ".bz2 compression is not supported for csv files "
                                "(supported: .gz)"),
        ("part.parquet.gz", "parquet", ".gz compression is not supported for parquet files"),
        ("part.csv.zip", "csv", ".zip compression")])
    def test_refused_naming_table_day_file(self, name, fmt, says):
        uri = f"/r/raw/events/ds={DAY}/{name}"
        with pytest.raises(ingest.FormatMismatchError) as failure:
            ingest.check_extension(uri, fmt)
        assert f"table events ds={DAY} file {uri}: " in str(failure.value)
        assert says in str(failure.value)


class TestFileColumns:
    def test_bom_and_quoted_names_parse_as_the_csv_module(self, tmp_path):
        path = partition(tmp_path) / "part.csv"
        header = ["customer_id", "note, with comma", 'say "x"', "two\nlines"]
        buffer = io.StringIO()
        csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(
            [header, ["1", "a", "b", "c"]])
        path.write_text("\ufeff" + buffer.getvalue(), encoding="utf-8", newline="")
        assert ingest.file_columns(str(path), "csv") == header

    def test_gzip_csv_and_jsonl(self, tmp_path):
        folder = partition(tmp_path)
        (folder / "a.csv.gz").write_bytes(gzip.compress(b"\xef\xbb\xbfid,Amount \n1,2\n"))
        (folder / "b.jsonl.gz").write_bytes(gzip.compress(b'{"id": 1, "amount": 2}\n'))
        assert ingest.file_columns(str(folder / "a.csv.gz"), "csv") == ["id", "Amount "]
        assert ingest.file_columns(str(folder / "b.jsonl.gz"), "jsonl") == ["id", "amount"]

    def test_a_gz_file_that_is_not_gzip_is_corrupt(self, tmp_path):
        path = partition(tmp_path) / "part.csv.gz"
        path.write_bytes(b"id,amount\n1,2\n")
        with pytest.raises(ingest.CorruptFileError) as failure:
            ingest.file_columns(str(path), "csv")
        assert f"table events ds={DAY} file {path}: unreadable gzip file" in str(failure.value)

    def test_a_json_key_written_twice_is_listed_twice(self, tmp_path):
        path = partition(tmp_path) / "part.jsonl"
        path.write_text('not json\n{"id": 1, "Amount": 2, "amount": 3}\n')
        assert ingest.file_columns(str(path), "jsonl") == ["id", "Amount", "amount"]


class TestReadNames:
    def test_matched_trimmed_and_case_insensitively(self):
        names = ingest.read_names("f", [" Customer_ID ", "EVENT_TS", "event_type", "AMOUNT",
                                        " Coupon "], COLUMNS)
        assert names == [*COLUMNS, "Coupon"]

    @pytest.mark.parametrize("second", ["amount", " Amount", "AMOUNT "])
    def test_collision_fails_naming_table_day_file_and_columns(self, second):
        uri = f"/r/raw/events/ds={DAY}/part.csv"
        with pytest.raises(ingest.DuplicateColumnError) as failure:
            ingest.read_names(uri, ["customer_id", "amount", second], COLUMNS)
        assert str(failure.value) == (
            f"table events ds={DAY} file {uri}: columns 'amount' and {second!r} are one column "
            "'amount' (names are matched trimmed of spaces and case-insensitively); rename or "
            "drop one")

    def test_extra_columns_collide_too(self):
        with pytest.raises(ingest.DuplicateColumnError, match="'note' and 'NOTE'"):
            ingest.read_names("f", ["note", "NOTE"], COLUMNS)


class TestCheckColumns:
    def test_maps_read_names_to_file_names(self, tmp_path):
        path = partition(tmp_path) / "part.csv"
        path.write_text("AMOUNT,customer_id , Event_Ts,event_type,extra\n")
        assert ingest.check_columns(str(path), "csv", COLUMNS) == {
            "amount": "AMOUNT", "customer_id": "customer_id ", "event_ts": " Event_Ts",
            "event_type": "event_type", "extra": "extra"}

    def test_missing_column_named(self, tmp_path):
        path = partition(tmp_path) / "part.csv"
        path.write_text("customer_id,event_ts,event_type\n")
        with pytest.raises(ingest.MissingColumnError, match=f"ds={DAY} file .*amount"):
            ingest.check_columns(str(path), "csv", COLUMNS)


class TestListDataFiles:
    def test_hidden_skipped_silently_subdirectory_warned(self, tmp_path, caplog):
        folder = partition(tmp_path)
        for name in ("b c+d:e.csv", "a.csv.gz", "_SUCCESS", ".a.csv.crc"):
            (folder / name).write_text("x")
        (folder / "_tmp").mkdir()
        (folder / "hour=01").mkdir()
        with caplog.at_level(logging.WARNING, logger="churn.ingest"):
            files = ingest.list_data_files(str(folder))
        assert files == [f"{folder}/a.csv.gz", f"{folder}/b c+d:e.csv"]
        assert [r.getMessage() for r in caplog.records] == [
            f"{folder}/hour=01: a subdirectory of a raw partition is not read"]


class TestLandedCompressed:
    def test_empty_and_non_gzip_files_are_problems(self, tmp_path):
        folder = partition(tmp_path)
        (folder / "empty.csv.gz").write_bytes(gzip.compress(b""))
        (folder / "plain.csv.gz").write_bytes(b"id\n1\n")
        (folder / "good.csv.gz").write_bytes(gzip.compress(b"id\n1\n"))
        (folder / "zero.csv").write_bytes(b"")
        ready = ReadySpec(marker=None)
        problems = landed_problems(list_partition(str(folder), ready), ready)
        assert problems[0] == f"file {folder}/zero.csv is empty (0 bytes)"
        assert problems[1] == f"file {folder}/empty.csv.gz is empty (0 bytes once decompressed)"
        assert problems[2].startswith(f"file {folder}/plain.csv.gz is not a valid gzip file")
        assert len(problems) == 3


class TestReadRawJsonl:
    def test_gzip_jsonl_with_odd_key_case_reads_its_rows(self, spark, tmp_path):
        from churn.spec import load_spec
        from tests.support.small_data import E2E_SPEC

        spec = load_spec(E2E_SPEC)
        spec = spec.model_copy(update={"events": spec.events.model_copy(
            update={"format": "jsonl"})})
        folder = partition(tmp_path)
        rows = [{"Customer_ID": "00042", " event_ts": f"{DAY} 08:00:00", "EVENT_TYPE": "login",
                 "amount": 1.5},
                {"Customer_ID": "00043", " event_ts": f"{DAY} 09:00:00", "EVENT_TYPE": "usage",
                 "amount": None}]
        lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
        uri = str(folder / "a+b c.jsonl.gz")
        (folder / "a+b c.jsonl.gz").write_bytes(gzip.compress(lines))
        raw = ingest.read_raw(spark, spec, "events", {DAY: [uri]})
        got = sorted(tuple(r) for r in raw.select(*COLUMNS, ingest.FILE_ID, ingest.DS).collect())
        assert got == [("00042", f"{DAY} 08:00:00", "login", "1.5", 0, DAY),
                       ("00043", f"{DAY} 09:00:00", "usage", None, 0, DAY)]
