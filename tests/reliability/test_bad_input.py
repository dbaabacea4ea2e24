"""Bad input matrix, end to end through the real build_features job on tiny generated data.

Each case hand-edits one raw partition of a clean generated data set (50 customers, 4 days,
short windows) and runs `spark_jobs.build_features.run` for DAY with the shared `spark`. Every
case ends in exactly one of:

* quarantined: the bad rows are in `quarantine/<table>/ds=DAY` with their reason and file, the
  counts add up (`rows_in == rows_out + rows_rejected`) in the summary and in `ingest.json`;
* a failure (`IngestError`) whose message names the table, the day, the file and the column
  (as far as the fault has one), leaving DAY's features partition (seeded from a good run
  first) byte for byte as it was.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from churn import ingest
from churn.storage import Layout, read_json
from tests.support.raw_day import (DAY, NEXT_DAY, PREVIOUS_DAY, START, build, copy_world,
                                   expect_failure, quarantine, raw_file, seed_features)
from tests.support.small_data import write_small_spec


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    """Spec files: `csv` (the base), `parquet` (events as Parquet), `drop_exact` and `keyed`
    (events declare a duplicate policy), `extra_col` (names a column the data lacks)."""
    folder = tmp_path_factory.mktemp("specs")
    return {"csv": write_small_spec(folder, "csv"),
            "parquet": write_small_spec(folder, "parquet", events={"format": "parquet"}),
            "drop_exact": write_small_spec(folder, "drop_exact",
                                           events={"duplicates": "drop_exact"}),
            "keyed": write_small_spec(folder, "keyed", events={
                "key": ("customer_id", "event_ts"), "duplicates": "reject_conflicts"}),
            "extra_col": write_small_spec(folder, "extra_col",
                                    customers={"numeric": ("age", "monthly_charges", "tenure")})}


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False)


def edit_csv(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """Rewrite a raw CSV file through `change`; returns the frame as it was before."""
    before = read_csv(path)
    write_csv(change(before.copy()), path)
    return before


def overwrite_first(path: Path, column: str, values: list[str]) -> None:
    """Put `values` into the first rows of one column of a raw CSV file."""
    edit_csv(path, lambda f: f.assign(**{column: [*values, *f[column][len(values):]]}))


def append_bytes(path: Path, *lines: bytes) -> None:
    with path.open("ab") as out:
        out.write(b"".join(line + b"\n" for line in lines))


def csv_line(values: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue().encode()


def assert_quarantined(summary: dict, root: Path, table: str, reasons: dict[str, int],
                       rows_in: int) -> dict:
    """The day's counts add up, in the summary and in ingest.json, and the quarantine partition
    on disk holds exactly the rejected rows with their reason and file (no rejects: it is
    written all the same, with its columns and no rows). Returns the day's counts."""
    counts = summary["counts"][table][DAY]
    assert counts["reasons"] == reasons
    assert counts["rows_in"] == rows_in
    assert counts["rows_rejected"] == sum(reasons.values())
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
    fragment = read_json(Layout(str(root)).run_fragment(DAY, "ingest"))
    assert fragment["tables"][table] == counts
    rejected = quarantine(root, table)
    assert {"reason", "raw_record", "source_file"} <= set(rejected.columns)
    assert len(rejected) == counts["rows_rejected"]
    assert rejected["reason"].value_counts(dropna=False).to_dict() == reasons
    assert set(rejected["source_file"]) <= {str(raw_file(root, table))}
    assert rejected["source_file"].notna().all()
    assert Path(Layout(str(root)).features(DAY)).is_dir()
    return counts


def data_rows(path: Path) -> int:
    return len(read_csv(path))


class TestRowFaults:
    def test_malformed_csv_lines(self, spark, root, specs, reliability_case):
        path = raw_file(root, "events")
        before = data_rows(path)
        append_bytes(path, b"c1,2024-01-03 10:00:00,login,1,EXTRA",  # one field too many
                     b"c2,2024-01-03 10:00:00",  # too few fields
                     b'c3,2024-01-03 10:00:00,"login,3')  # unclosed quote
        counts = assert_quarantined(build(spark, root, specs["csv"]), root, "events",
                                    {"malformed_row": 3}, before + 3)
        assert set(quarantine(root, "events")["raw_record"].str[:2]) == {"c1", "c2", "c3"}
        reliability_case("3 malformed CSV lines (extra field, missing fields, open quote)",
                         "quarantined as malformed_row with the raw line",
                         "reasons, raw_record, source_file, in == out + rejected", counts)

    def test_wrong_types(self, spark, root, specs, reliability_case):
        events, customers = raw_file(root, "events"), raw_file(root, "customers")
        overwrite_first(events, "amount", ["abc", "3.0"])
        overwrite_first(events, "event_ts", [f"{DAY} 00:00:01", "not-a-time"])
        overwrite_first(customers, "age", ["old", "40"])
        overwrite_first(customers, "signup_date", ["2020-01-01", "yesterday"])
        summary = build(spark, root, specs["csv"])
        ev = assert_quarantined(summary, root, "events", {"bad_number": 1, "bad_timestamp": 1},
                                data_rows(events))
        cu = assert_quarantined(summary, root, "customers", {"bad_number": 1, "bad_date": 1},
                                data_rows(customers))
        reliability_case("events: text amount, bad timestamp", "quarantined as bad_number, "
                         "bad_timestamp", "reasons and counts per reason", ev)
        reliability_case("customers: text age, bad signup date",
                         "quarantined as bad_number, bad_date", "reasons and counts", cu)

    @pytest.mark.parametrize("column, values, extra, reason, injected", [
        ("customer_id", ["", "   "], [b",2024-01-03 11:00:00,login,"], "null_id",
         "events: empty, blank and missing customer ids (3 rows)"),
        ("event_ts", [f"{NEXT_DAY} 01:00:00", f"{PREVIOUS_DAY} 23:59:59"], [],
         "outside_partition_day", "events: a next-day and a previous-day timestamp in ds=DAY"),
    ], ids=["null_ids", "outside_the_day"])
    def test_bad_event_values(self, spark, root, specs, column, values, extra, reason, injected,
                              reliability_case):
        path = raw_file(root, "events")
        overwrite_first(path, column, values)
        append_bytes(path, *extra)
        counts = assert_quarantined(build(spark, root, specs["csv"]), root, "events",
                                    {reason: len(values) + len(extra)}, data_rows(path))
        reliability_case(injected, f"quarantined as {reason}", "reasons, counts", counts)

    def test_exact_duplicates(self, spark, root, specs, reliability_case):
        path = raw_file(root, "events")
        frame = read_csv(path)
        append_bytes(path, csv_line(list(frame.iloc[0])), csv_line(list(frame.iloc[5])))
        counts = assert_quarantined(build(spark, root, specs["drop_exact"]), root, "events",
                                    {"duplicate_row": 2}, len(frame) + 2)
        assert counts["rows_out"] == len(frame)
        reliability_case("events (duplicates: drop_exact): 2 rows repeated exactly", "one copy "
                         "kept, the repeat quarantined as duplicate_row", "rows_out == clean rows",
                         counts)

    def test_conflicting_duplicates(self, spark, root, specs, reliability_case):
        events, customers = raw_file(root, "events"), raw_file(root, "customers")
        frame = read_csv(events)
        changed = frame[frame["amount"] != ""].iloc[0].copy()
        original = changed["amount"]
        changed["amount"] = "999.5"
        append_bytes(events, csv_line(list(changed)))
        snapshot = read_csv(customers)
        other_plan = snapshot.iloc[0].copy()
        other_plan["plan"] = "enterprise"
        append_bytes(customers, csv_line(list(other_plan)))
        summary = build(spark, root, specs["keyed"])
        ev = assert_quarantined(summary, root, "events", {"conflicting_duplicate": 2},
                                len(frame) + 1)
        cu = assert_quarantined(summary, root, "customers", {"duplicate_id": 2},
                                len(snapshot) + 1)
        assert set(quarantine(root, "events")["amount"]) == {original, "999.5"}
        reliability_case("events keyed by [customer_id, event_ts] (reject_conflicts): same "
                         "customer and timestamp, another amount",
                         "both versions quarantined as conflicting_duplicate",
                         "both rows in quarantine", ev)
        reliability_case("customers: same id twice in a day's snapshot, another plan",
                         "both versions quarantined as duplicate_id", "counts", cu)

    def test_non_utf8_bytes(self, spark, root, specs, reliability_case):
        path = raw_file(root, "events")
        before = data_rows(path)
        append_bytes(path, b"0000\xe91,2024-01-03 10:00:00,login,",
                     b"000002,2024-01-03 10:00:00,log\xffin,")
        counts = assert_quarantined(build(spark, root, specs["csv"]), root, "events",
                                    {"bad_encoding": 2}, before + 2)
        reliability_case("events: Latin-1 byte in an id, 0xFF in an event type",
                         "quarantined as bad_encoding (never repaired to U+FFFD)",
                         "reasons, counts", counts)

    def test_absurd_numbers(self, spark, root, specs, reliability_case):
        events, customers = raw_file(root, "events"), raw_file(root, "customers")
        absurd = ["-5", "1e300", "NaN", "Infinity"]
        overwrite_first(events, "amount", absurd)
        overwrite_first(customers, "monthly_charges", ["-1"])
        summary = build(spark, root, specs["csv"])
        ev, cu = (assert_quarantined(summary, root, table, {"out_of_range": n}, data_rows(path))
                  for table, n, path in (("events", 4, events), ("customers", 1, customers)))
        assert sorted(quarantine(root, "events")["amount"]) == sorted(absurd)
        reliability_case("events: amounts -5, 1e300, NaN, Infinity",
                         f"quarantined as out_of_range (bounds {ingest.NUMBER_RANGE})",
                         "reasons, the 4 raw values", ev)
        reliability_case("customers: monthly_charges -1", "quarantined as out_of_range",
                         "reasons, counts", cu)

    def test_unknown_extra_column_is_ignored_and_recorded(self, spark, root, specs,
                                                          reliability_case):
        path = raw_file(root, "events")
        edit_csv(path, lambda f: f.assign(coupon_code="X1"))
        counts = assert_quarantined(build(spark, root, specs["csv"]), root, "events", {},
                                    data_rows(path))
        assert counts["extra_columns"] == {path.name: ["coupon_code"]}
        features = pd.read_parquet(Layout(str(root)).features(DAY))
        assert "coupon_code" not in features.columns and len(features) > 0
        reliability_case("events: an extra column coupon_code", "column ignored, recorded as "
                         "extra_columns in ingest.json; every row kept",
                         "extra_columns, rows_rejected == 0", counts)


class TestDayFaults:
    def test_empty_day(self, spark, root, specs, reliability_case):
        path = raw_file(root, "events")
        write_csv(read_csv(path).head(0), path)
        summary = build(spark, root, specs["csv"])
        counts = assert_quarantined(summary, root, "events", {}, 0)
        assert counts["empty"] is True
        reliability_case("events: DAY delivered with a header only", "recorded as empty "
                         "(rows_in 0, empty: true); features still built", "counts", counts)

    @pytest.mark.parametrize("delivery", ["absent", "named_dt"])
    def test_missing_lookback_day(self, spark, root, specs, clean_root, caplog, delivery,
                                  reliability_case):
        area = Path(Layout(str(root)).area("raw", "events"))
        if delivery == "absent":
            shutil.rmtree(area / f"ds={PREVIOUS_DAY}")
            injected, warnings = f"events: lookback day {PREVIOUS_DAY} missing", []
        else:  # another producer's naming: never read as a day, and said so; hidden is silent
            (area / f"ds={PREVIOUS_DAY}").rename(area / f"dt={PREVIOUS_DAY}")
            (area / f"_tmp-ds={PREVIOUS_DAY}-0123456789ab").mkdir()
            injected = f"events: lookback day delivered as dt={PREVIOUS_DAY} (and a hidden _tmp-)"
            warnings = [f"ignored {area}/dt={PREVIOUS_DAY}: not a ds=YYYY-MM-DD partition "
                        "directory"]
        seeded = seed_features(root, clean_root)
        with caplog.at_level(logging.WARNING, logger="churn.storage"):
            message = expect_failure(ingest.MissingPartitionError,
                                     lambda: build(spark, root, specs["csv"]), root,
                                     "raw/events", PREVIOUS_DAY, seeded=seeded)
        warned = [r.getMessage() for r in caplog.records if r.name == "churn.storage"]
        assert warned == warnings
        summary = build(spark, root, specs["csv"], allow_missing=True)
        fragment = read_json(Layout(str(root)).run_fragment(DAY, "ingest"))
        assert fragment["tables"]["events"]["rows_in"] == summary["counts"]["events"][DAY][
            "rows_in"] > 0
        reliability_case(injected, f"failed: {message}; with --allow-missing treated as empty",
                         "message names table and day; nothing written; warnings", None)

    def test_two_formats_in_one_partition(self, spark, root, specs, clean_root,
                                          reliability_case):
        path = raw_file(root, "events")
        stray = path.with_name("part-00001.jsonl")
        stray.write_text(read_csv(path).head(3).to_json(orient="records", lines=True))
        seeded = seed_features(root, clean_root)
        message = expect_failure(ingest.FormatMismatchError,
                                 lambda: build(spark, root, specs["csv"]), root, "table events",
                                 f"ds={DAY}", str(stray), seeded=seeded)
        reliability_case("events: a .jsonl file next to the .csv file of DAY",
                         f"failed: {message}", "message names table, day, file", None)

    def test_truncated_parquet(self, spark, tmp_path, base_roots, specs, clean_root,
                               reliability_case):
        root = copy_world(base_roots["parquet"], tmp_path)
        path = raw_file(root, "events")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        seeded = seed_features(root, clean_root)
        message = expect_failure(ingest.CorruptFileError,
                                 lambda: build(spark, root, specs["parquet"]), root,
                                 "table events", f"ds={DAY}", str(path), seeded=seeded)
        reliability_case("events (Parquet): DAY's file cut in half",
                         f"failed: {message}", "message names table, day, file", None)


class TestSchemaFaults:
    def test_missing_required_column(self, spark, root, specs, clean_root,
                                     reliability_case):
        path = raw_file(root, "events")
        edit_csv(path, lambda f: f.drop(columns=["amount"]))
        seeded = seed_features(root, clean_root)
        message = expect_failure(ingest.MissingColumnError,
                                 lambda: build(spark, root, specs["csv"]), root, "table events",
                                 f"ds={DAY}", str(path), "amount", seeded=seeded)
        reliability_case("events: DAY's file lacks the amount column", f"failed: {message}",
                         "message names table, day, file, column", None)

    def test_spec_names_a_column_the_data_lacks(self, spark, root, specs, clean_root,
                                                reliability_case):
        seeded = seed_features(root, clean_root)
        first = raw_file(root, "customers", START)  # the first file the job checks
        message = expect_failure(ingest.MissingColumnError,
                                 lambda: build(spark, root, specs["extra_col"]), root,
                                 "table customers", f"ds={START}", str(first), "tenure",
                                 seeded=seeded)
        reliability_case("spec: customers.numeric names `tenure`, which no file has",
                         f"failed: {message}", "message names table, day, file, column", None)

    def test_reject_rate_over_the_spec_limit_fails_after_quarantining(self, spark, root, specs,
                                                                      reliability_case):
        path = raw_file(root, "events")
        overwrite_first(path, "amount", ["abc"] * 5)
        with pytest.raises(ingest.RejectRateError) as failure:
            build(spark, root, specs["csv"], max_reject_rate=None)
        message = str(failure.value)
        assert f"table events ds={DAY}: 5/{data_rows(path)} rows rejected" in message
        assert "bad_number=5; samples: bad_number amount='abc'" in message
        assert quarantine(root, "events")["reason"].tolist() == ["bad_number"] * 5
        fragment = read_json(Layout(str(root)).run_fragment(DAY, "ingest"))
        assert fragment["status"] == "failed"
        assert fragment["tables"]["events"]["samples"] == {
            "bad_number": {"column": "amount", "value": "abc"}}
        reliability_case("events: 5 text amounts (over the spec's 1% reject limit)",
                         f"quarantined, ingest.json status failed, then failed: {message}",
                         "message names table, day, count, reason", fragment["tables"]["events"])
