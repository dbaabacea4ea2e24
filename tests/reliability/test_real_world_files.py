"""The file formats real producers write, end to end through the real build_features job.

Each case rewrites DAY's raw files of a clean generated data set (50 customers, 4 days) the way
some producer would (RFC 4180 quoting, gzip, odd headers, drifting Parquet types, odd file and
names) and runs `spark_jobs.build_features.run` for DAY. Every case ends in exactly
one of: the rows read as Python's `csv` module / pyarrow read them (features equal to those of
the clean data, bad rows quarantined with their exact raw value), or a failure whose message
names the table, the day, the file and the column.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churn import ingest
from churn.landing import NotLandedError
from churn.storage import Layout, read_json
from tests.support.raw_day import (DAY, PREVIOUS_DAY, build, copy_world, expect_failure,
                                   quarantine, raw_file, seed_features)
from tests.support.small_data import read_partition, write_small_spec

TRICKY = ["a,b", 'say "hi"', "two\nlines", "crlf\r\nline", "  padded  "]


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    """Spec files: `csv` (the base) and `parquet` (events as Parquet)."""
    folder = tmp_path_factory.mktemp("specs")
    return {"csv": write_small_spec(folder, "csv"),
            "parquet": write_small_spec(folder, "parquet", events={"format": "parquet"})}


@pytest.fixture(scope="module")
def clean_features(clean_root) -> pd.DataFrame:
    return read_partition(clean_root, "features", DAY)


def read_rows(path: Path) -> list[list[str]]:
    """A CSV file's records (header first) as Python's csv module reads them."""
    with path.open(newline="", encoding="utf-8-sig") as src:
        return list(csv.reader(src))


def write_rfc4180(path: Path, rows: list[list[str]]) -> None:
    """Write records every field quoted, CRLF line ends, a UTF-8 BOM before the header."""
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(rows)
    path.write_text("\ufeff" + buffer.getvalue(), encoding="utf-8", newline="")


def features(root: Path) -> pd.DataFrame:
    return read_partition(root, "features", DAY)


def day_counts(summary: dict, root: Path, table: str) -> dict:
    """DAY's counts of a table; they add up and match `ingest.json`."""
    counts = summary["counts"][table][DAY]
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
    assert read_json(Layout(str(root)).run_fragment(DAY, "ingest"))["tables"][table] == counts
    return counts


def spark_text(value: str) -> str:
    """A raw field as the job keeps it: Spark's CSV parser turns a CRLF inside quotes into LF."""
    return value.replace("\r\n", "\n")


class TestRfc4180Csv:
    def test_quoted_fields_crlf_and_bom_parse_as_the_csv_module(self, spark, root, specs,
                                                                 reliability_case):
        events, customers = raw_file(root, "events"), raw_file(root, "customers")
        ev_rows, cu_rows = read_rows(events), read_rows(customers)
        amount, plan = ev_rows[0].index("amount"), cu_rows[0].index("plan")
        for row, value in zip(ev_rows[1:], TRICKY):  # not numbers: quarantined as raw text
            row[amount] = value
        for row, value in zip(cu_rows[1:], TRICKY):  # categoricals: kept, into the features
            row[plan] = value
        write_rfc4180(events, ev_rows)
        write_rfc4180(customers, cu_rows)
        expected_events, expected_customers = read_rows(events), read_rows(customers)
        assert expected_events == ev_rows and expected_customers == cu_rows

        summary = build(spark, root, specs["csv"])
        ev, cu = day_counts(summary, root, "events"), day_counts(summary, root, "customers")
        assert (ev["rows_in"], ev["reasons"]) == (len(ev_rows) - 1, {"bad_number": len(TRICKY)})
        assert (cu["rows_in"], cu["rows_rejected"]) == (len(cu_rows) - 1, 0)
        header = expected_events[0]
        rejected = quarantine(root, "events")[header].fillna("").values.tolist()
        assert sorted(rejected) == sorted([spark_text(v) for v in r]
                                          for r in expected_events[1:len(TRICKY) + 1])
        got = features(root).set_index("customer_id")["plan"].to_dict()
        id_col = cu_rows[0].index("customer_id")
        assert got == {r[id_col]: spark_text(r[plan]).strip(" ") for r in expected_customers[1:]}
        reliability_case("events + customers: every field quoted, CRLF, UTF-8 BOM; fields with "
                         "a comma, doubled quotes, LF, CRLF, padding", "read as Python's csv "
                         "module reads them (a CRLF inside quotes becomes LF); text amounts "
                         "quarantined as bad_number with their exact raw value",
                         "quarantine rows and feature plans == csv.reader rows", ev)


class TestCompressedFiles:
    def test_gzip_csv_reads_like_the_plain_file(self, spark, root, specs, clean_features,
                                                reliability_case):
        for table in ("events", "customers"):
            path = raw_file(root, table)
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
        summary = build(spark, root, specs["csv"])
        counts = day_counts(summary, root, "events")
        assert counts["rows_rejected"] == 0
        pd.testing.assert_frame_equal(features(root), clean_features)
        reliability_case("events + customers of DAY delivered as part-00000.csv.gz",
                         "read decompressed (header check and Spark)",
                         "features == those of the plain files", counts)

    def test_gzip_that_decompresses_to_nothing_is_not_landed(self, spark, root, specs,
                                                             clean_root, reliability_case):
        seeded = seed_features(root, clean_root)
        path = raw_file(root, "events")
        empty = path.with_name(path.name + ".gz")
        empty.write_bytes(gzip.compress(b""))
        path.unlink()
        message = expect_failure(NotLandedError, lambda: build(spark, root, specs["csv"]), root,
                                 "table events", f"ds={DAY}", str(empty), "empty", seeded=seeded)
        reliability_case("events: DAY's file is a gzip of 0 bytes", f"failed: {message}",
                         "message names table, day, file", None)


class TestHeaders:
    def test_case_and_spaces_in_names_match_the_spec(self, spark, root, specs, clean_features,
                                                     reliability_case):
        path = raw_file(root, "events")
        rows = read_rows(path)
        rows[0] = [" Customer_ID ", "EVENT_TS", "event_type ", "Amount"]
        write_rfc4180(path, rows)
        counts = day_counts(build(spark, root, specs["csv"]), root, "events")
        assert (counts["rows_in"], counts["rows_rejected"]) == (len(rows) - 1, 0)
        assert "extra_columns" not in counts
        pd.testing.assert_frame_equal(features(root), clean_features)
        reliability_case("events header ' Customer_ID ,EVENT_TS,event_type ,Amount'",
                         "matched to the spec trimmed and case-insensitively",
                         "features == those of the clean header", counts)

    @pytest.mark.parametrize("second", ["amount", " AMOUNT "])
    def test_two_columns_with_one_name_fail(self, spark, root, specs, second, clean_root,
                                            reliability_case):
        seeded = seed_features(root, clean_root)
        path = raw_file(root, "events")
        rows = read_rows(path)
        write_rfc4180(path, [rows[0] + [second]] + [r + ["1"] for r in rows[1:]])
        message = expect_failure(ingest.DuplicateColumnError,
                                 lambda: build(spark, root, specs["csv"]), root, "table events",
                                 f"ds={DAY}", str(path), "'amount'", repr(second), seeded=seeded)
        reliability_case(f"events header holds amount and {second!r}", f"failed: {message}",
                         "message names table, day, file, both columns", None)


def write_drifted(root: Path, order: tuple[str, str, str]) -> None:
    """Split DAY's Parquet events into 3 files whose `amount` is int32, int64 and string (in
    the name order `order` gives), and store PREVIOUS_DAY's amount as int64."""
    path = raw_file(root, "events")
    table = pq.read_table(path)
    amounts = pa.array([None if a is None else round(a) for a in table["amount"].to_pylist()])
    table = table.set_column(table.schema.get_field_index("amount"), "amount", amounts)
    third = -(-len(table) // 3)
    kinds = {"int32": pa.int32(), "int64": pa.int64(), "string": pa.string()}
    for prefix, kind in zip(order, kinds):
        part = table.slice(list(kinds).index(kind) * third, third)
        column = part["amount"].cast(kinds[kind])
        part = part.set_column(part.schema.get_field_index("amount"), "amount", column)
        pq.write_table(part, path.with_name(f"{prefix}-{kind}.parquet"))
    path.unlink()
    previous = raw_file(root, "events", PREVIOUS_DAY)
    before = pq.read_table(previous)
    rounded = pa.array([None if a is None else round(a) for a in before["amount"].to_pylist()],
                       pa.int64())
    pq.write_table(before.set_column(before.schema.get_field_index("amount"), "amount",
                                     rounded), previous)


def write_rounded(root: Path) -> None:
    """The reference for `write_drifted`: the same rounded amounts, as doubles, in one file."""
    for ds in (PREVIOUS_DAY, DAY):
        path = raw_file(root, "events", ds)
        table = pq.read_table(path)
        rounded = pa.array([None if a is None else float(round(a))
                            for a in table["amount"].to_pylist()], pa.float64())
        pq.write_table(table.set_column(table.schema.get_field_index("amount"), "amount",
                                        rounded), path)


class TestParquetSchemaDrift:
    def test_amount_int32_int64_string_reads_the_same_in_any_file_order(
            self, spark, tmp_path, base_roots, specs, reliability_case):
        reference = copy_world(base_roots["parquet"], tmp_path / "reference")
        write_rounded(reference)
        build(spark, reference, specs["parquet"])
        for order in (("a", "b", "c"), ("c", "b", "a")):
            root = copy_world(base_roots["parquet"], tmp_path / "-".join(order))
            write_drifted(root, order)
            counts = day_counts(build(spark, root, specs["parquet"]), root, "events")
            assert counts["rows_rejected"] == 0
            pd.testing.assert_frame_equal(features(root), features(reference))
        reliability_case("events (Parquet): DAY split in 3 files with amount int32 / int64 / "
                         "string, the previous day int64; both file orders",
                         "each schema read apart and cast to string, then by the spec",
                         "features == those of one double file, in both orders", counts)


class TestPartitionAndFileNames:
    def test_file_names_with_space_colon_and_plus(self, spark, root, specs, clean_features,
                                                  reliability_case):
        events = raw_file(root, "events")
        renamed = events.rename(events.with_name("part 00000+01:00.csv"))
        customers = raw_file(root, "customers")
        customers.rename(customers.with_name("snap shot+10:00.csv"))
        rows = read_rows(renamed)
        bad = rows[1][:3] + ["not a number"]
        write_rfc4180(renamed, rows + [bad])
        counts = day_counts(build(spark, root, specs["csv"]), root, "events")
        assert (counts["rows_in"], counts["reasons"]) == (len(rows), {"bad_number": 1})
        rejected = quarantine(root, "events")
        assert rejected["source_file"].tolist() == [str(renamed)]
        assert rejected["amount"].tolist() == ["not a number"]
        pd.testing.assert_frame_equal(features(root), clean_features)
        reliability_case("events 'part 00000+01:00.csv', customers 'snap shot+10:00.csv' "
                         "(+1 bad row)", "read; the bad row quarantined naming its real file",
                         "features == clean, source_file == the path", counts)
