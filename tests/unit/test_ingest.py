"""Raw reading and validation on tiny hand-written partitions, with the shared local Spark."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churn import ingest
from churn.spec import DatasetSpec, load_spec
from churn.storage import Layout

DAY = "2024-01-10"
MALFORMED = ingest.MALFORMED
HEADER = "customer_id,event_ts,event_type,amount"
GOOD_ROWS = [
    "00042,2024-01-10 08:00:00,login,",
    "00042,2024-01-10 09:30:00,purchase,12.5",
    "00043,2024-01-10T23:59:59Z,usage,1",
]
BAD_ROWS = {
    ",2024-01-10 10:00:00,login,": ingest.NULL_ID,
    "00044,yesterday,login,": ingest.BAD_TIMESTAMP,
    "00044,2024-01-11 00:00:01,login,": ingest.OUTSIDE_DAY,
    "00044,2024-01-09 23:59:59,login,": ingest.OUTSIDE_DAY,
    "00045,2024-01-10 11:00:00,purchase,ten": ingest.BAD_NUMBER,
    "00045,2024-01-10 11:00:00,,": ingest.NULL_TYPE,
    "00046,2024-01-10 12:00:00": ingest.MALFORMED,
    "00046,2024-01-10 12:00:00,login,1,extra": ingest.MALFORMED,
}


def _write(root: Path, table: str, ds: str, name: str, text: str) -> Path:
    path = root / "raw" / table / f"ds={ds}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _csv(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def _spec(**events) -> DatasetSpec:
    base = {"format": "csv", "timestamp": "event_ts", "type": "event_type", "value": "amount",
            "windows_days": [3, 7]}
    return DatasetSpec.model_validate({
        "name": "t", "id_column": "customer_id", "events": {**base, **events},
        "label": {"kind": "inactivity", "horizon_days": 2}})


def _validate(spark, root: Path, spec: DatasetSpec, table: str = "events",
              days=(DAY,)) -> ingest.Validated:
    files = ingest.collect_files(Layout(str(root)), spec, table, days)
    raw = ingest.read_raw(spark, spec, table, files)
    return ingest.validate(raw, spec, table, days, ingest.ordered_files(files))


class TestPlanReads:
    def test_single_day_reads_the_longest_window_and_matured_labels(self, spec_path):
        spec = load_spec(spec_path)
        days = [d for d in _range("2024-01-01", "2024-04-10") if d != "2024-02-03"]
        plan = ingest.plan_reads(spec, "2024-04-10", "2024-04-10",
                                 {"events": days, "customers": days})
        assert plan.feature_days == ["2024-04-10"]
        assert plan.read_days["events"][0] == "2024-01-12"  # 90 days: Jan 12 .. Apr 10
        assert plan.read_days["events"][-1] == "2024-04-10"
        assert plan.label_days == ["2024-03-11"]  # Mar 11 + 30 = Apr 10 = newest raw day
        assert plan.read_days["customers"] == ["2024-03-11", "2024-04-10"]
        assert len(plan.read_days["events"]) == 89
        assert plan.missing == {"events": ["2024-02-03"], "customers": []}

    def test_days_before_the_first_delivery_are_not_needed(self):
        spec = _spec()
        days = _range("2024-01-05", "2024-01-12")
        plan = ingest.plan_reads(spec, "2024-01-06", "2024-01-08", {"events": days})
        assert plan.read_days["events"] == _range("2024-01-05", "2024-01-08")
        assert plan.label_days == ["2024-01-05", "2024-01-06"]  # horizon 2, matured by Jan 8
        assert plan.missing == {"events": []}

    def test_a_run_reads_no_raw_day_after_its_end_even_when_it_exists(self):
        days = _range("2024-01-01", "2024-01-31")
        plan = ingest.plan_reads(_spec(), "2024-01-10", "2024-01-10", {"events": days})
        assert plan.read_days["events"][-1] == "2024-01-10"
        assert plan.label_days == ["2024-01-08"]  # the one label that matured on Jan 10

    def test_days_from_the_history_start_are_needed_though_no_longer_delivered(self):
        days = _range("2024-01-08", "2024-01-12")  # Jan 1..7 were delivered, then lost
        plan = ingest.plan_reads(_spec(), "2024-01-09", "2024-01-09", {"events": days},
                                 history_start={"events": "2024-01-01"})
        # the features read Jan 3..9; the label of Jan 7 (matured on Jan 9) reads its
        # population's window, Jan 1..7
        assert plan.missing == {"events": _range("2024-01-01", "2024-01-07")}
        assert plan.label_days == ["2024-01-07"]
        assert plan.short_days == [] and plan.history_start == {"events": "2024-01-01"}
        with pytest.raises(ingest.MissingPartitionError,
                           match=r"raw/events: 2024-01-01\.\.2024-01-07 \(7 days\) \(the "
                                 r"history starts: events 2024-01-01;"):
            ingest.check_missing(plan, allow_missing=False)

    def test_windows_reaching_before_the_history_start_are_short(self):
        days = _range("2024-01-05", "2024-01-20")
        plan = ingest.plan_reads(_spec(), "2024-01-08", "2024-01-12", {"events": days})
        # windows 3 and 7: the 7-day window of Jan 10 starts on Jan 4, before the first day
        assert plan.short_days == _range("2024-01-08", "2024-01-10")
        assert plan.history_start == {"events": "2024-01-05"} and plan.missing == {"events": []}

    def test_stored_activity_replaces_raw_except_on_feature_days(self):
        stored = {"events": _range("2024-01-01", "2024-01-09")}  # raw of Jan 1..9 is gone
        plan = ingest.plan_reads(_spec(), "2024-01-09", "2024-01-10", {"events": ["2024-01-10"]},
                                 history_start={"events": "2024-01-01"}, stored_activity=stored)
        # Jan 9 is a feature day: validated from raw, whose partition is gone
        assert plan.missing == {"events": ["2024-01-09"]}
        assert plan.read_days == {"events": ["2024-01-10"]}
        # windows of Jan 9..10 and the populations of the labels of Jan 7..8 (horizon 2)
        assert plan.activity_days == {"events": _range("2024-01-01", "2024-01-08")}

    def test_missing_target_day_is_an_error_unless_allowed(self):
        plan = ingest.plan_reads(_spec(), "2024-01-08", "2024-01-08",
                                 {"events": ["2024-01-06", "2024-01-08"]})
        assert plan.missing == {"events": ["2024-01-07"]}
        with pytest.raises(ingest.MissingPartitionError, match="raw/events: 2024-01-07"):
            ingest.check_missing(plan, allow_missing=False)
        ingest.check_missing(plan, allow_missing=True)

    def test_describe_days_collapses_runs_of_three_or_more(self):
        days = ["2024-01-01", "2024-01-02", "2024-01-04", "2024-01-05", "2024-01-06",
                "2024-01-31"]
        assert ingest.describe_days(days) == ("2024-01-01, 2024-01-02, "
                                              "2024-01-04..2024-01-06 (3 days), 2024-01-31")


def _range(start: str, end: str) -> list[str]:
    from churn.storage import ds_range

    return ds_range(start, end)


class TestValidate:
    def test_every_reason_and_counts_add_up(self, spark, tmp_path):
        dup = GOOD_ROWS[1]
        _write(tmp_path, "events", DAY, "part-0.csv", _csv(*GOOD_ROWS, *BAD_ROWS, dup, dup))
        result = _validate(spark, tmp_path, _spec(duplicates="drop_exact"))
        counts = result.counts[DAY]
        assert (counts.rows_in, counts.rows_out, counts.rows_rejected) == (13, 3, 10)
        assert counts.reasons == {"null_id": 1, "bad_timestamp": 1, "outside_partition_day": 2,
                                  "bad_number": 1, "null_event_type": 1, "malformed_row": 2,
                                  "duplicate_row": 2}
        rejected = result.rejected.toPandas()
        assert len(rejected) == 10
        by_id = dict(zip(rejected["event_ts"], rejected["reason"]))
        assert by_id["yesterday"] == "bad_timestamp"
        assert by_id["2024-01-11 00:00:01"] == "outside_partition_day"
        assert set(rejected["ds"]) == {DAY}
        assert set(rejected["source_file"]) == {str(tmp_path / f"raw/events/ds={DAY}/part-0.csv")}
        malformed = rejected[rejected["reason"] == "malformed_row"]["raw_record"]
        assert sorted(malformed) == sorted(r for r, why in BAD_ROWS.items() if why == MALFORMED)
        assert counts.samples["bad_timestamp"]["value"] == "yesterday"
        assert counts.samples["bad_number"] == {"column": "amount", "value": "ten"}
        assert counts.samples["outside_partition_day"]["value"] == "2024-01-09 23:59:59"
        assert counts.samples["duplicate_row"] == {"column": "customer_id", "value": "00042"}
        assert counts.samples["malformed_row"]["column"] == "raw_record"
        assert counts.as_dict()["samples"] == dict(sorted(counts.samples.items()))

    def test_valid_rows_are_typed_and_keep_leading_zeros(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv(*GOOD_ROWS))
        rows = _validate(spark, tmp_path, _spec()).valid.orderBy("event_ts").collect()
        assert [r["customer_id"] for r in rows] == ["00042", "00042", "00043"]
        assert [r["amount"] for r in rows] == [None, 12.5, 1.0]
        assert str(rows[2]["event_ts"]) == "2024-01-10 23:59:59"
        assert {r["_ds"] for r in rows} == {DAY}

    def test_columns_in_any_order_and_extra_columns(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv(GOOD_ROWS[0]))
        _write(tmp_path, "events", DAY, "part-1.csv",
               "amount,note,event_type,event_ts,customer_id\n3.5,x,usage,2024-01-10 10:00:00,007\n")
        rows = _validate(spark, tmp_path, _spec()).valid.orderBy("customer_id").collect()
        assert [(r["customer_id"], r["event_type"], r["amount"]) for r in rows] == [
            ("00042", "login", None), ("007", "usage", 3.5)]

    def test_missing_column_names_file_and_column(self, spark, tmp_path):
        text = _csv("00042,2024-01-10 08:00:00,login", header="customer_id,event_ts,event_type")
        bad = _write(tmp_path, "events", DAY, "part-0.csv", text)
        with pytest.raises(ingest.MissingColumnError, match=f"{bad}.*amount"):
            _validate(spark, tmp_path, _spec())

    def test_empty_day_is_valid_with_zero_rows(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", HEADER + "\n")
        result = _validate(spark, tmp_path, _spec())
        assert result.counts[DAY].as_dict() == {"rows_in": 0, "rows_out": 0, "rows_rejected": 0,
                                                "reasons": {}, "empty": True}
        assert result.valid.count() == 0

    @pytest.mark.parametrize("kind, stamp", [("date", "2024-01-10"), ("yyyymmdd", "20240110")])
    def test_date_timestamp_kinds(self, spark, tmp_path, kind, stamp):
        _write(tmp_path, "events", DAY, "part-0.csv",
               _csv(f"1,{stamp},login,", "2,2024/01/10,login,", f"3,{stamp}9,login,"))
        result = _validate(spark, tmp_path, _spec(timestamp_kind=kind))
        assert result.counts[DAY].rows_out == 1
        assert result.counts[DAY].reasons == {"bad_timestamp": 2}

    def test_jsonl_and_parquet_read_as_strings(self, spark, tmp_path):
        lines = [{"customer_id": "0001", "event_ts": "2024-01-10 01:00:00", "event_type": "login",
                  "amount": 2}, "not json"]
        _write(tmp_path, "events", DAY, "part-0.jsonl",
               "\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
        result = _validate(spark, tmp_path, _spec(format="jsonl"))
        assert result.counts[DAY].reasons == {"malformed_row": 1}
        assert [(r["customer_id"], r["amount"]) for r in result.valid.collect()] == [("0001", 2.0)]
        table = pa.table({"customer_id": ["0002"], "event_ts": ["2024-01-10 02:00:00"],
                          "event_type": ["usage"], "amount": [1.25]})
        part = tmp_path / "pq" / "raw" / "events" / f"ds={DAY}"
        part.mkdir(parents=True)
        pq.write_table(table, part / "part-0.parquet")
        rows = _validate(spark, tmp_path / "pq", _spec(format="parquet")).valid.collect()
        assert [(r["customer_id"], r["amount"]) for r in rows] == [("0002", 1.25)]

    def test_customer_snapshot_rules(self, spark, tmp_path, spec_path):
        spec = load_spec(spec_path)
        header = "customer_id,signup_date,plan,region,contract,age,monthly_charges"
        _write(tmp_path, "customers", DAY, "part-0.csv", _csv(
            "001,2023-01-01,basic,north,one-year,30,10.5",
            "002,2023-13-01,basic,north,one-year,30,10.5",
            "003,2023-01-01,basic,north,one-year,old,10.5",
            "004,2023-01-01,basic,north,one-year,30,10.5",
            "004,2023-01-01,pro,north,one-year,30,10.5",
            "005,,,north,one-year,,", header=header))
        result = _validate(spark, tmp_path, spec, table="customers")
        assert result.counts[DAY].reasons == {"bad_date": 1, "bad_number": 1, "duplicate_id": 2}
        valid = {r["customer_id"]: r for r in result.valid.collect()}
        assert sorted(valid) == ["001", "005"]
        assert valid["001"]["age"] == 30.0 and valid["005"]["plan"] is None


class TestDayCounts:
    @pytest.mark.parametrize(("counts", "max_rate", "over"), [
        ((200, 190, 10), 0.01, True), ((200, 190, 10), 0.05, False),  # exactly at the limit
        ((200, 190, 10), 0.049, True), ((0, 0, 0), 0.0, False), ((10, 10, 0), 0.0, False)])
    def test_over_limit_is_strictly_above_the_rate(self, counts, max_rate, over):
        assert ingest.DayCounts(*counts).over_limit(max_rate) is over


class TestRejectRate:
    def test_message_names_table_day_and_top_reasons(self):
        counts = {DAY: ingest.DayCounts(200, 190, 10, {"null_id": 7, "bad_number": 3}),
                  "2024-01-11": ingest.DayCounts(100, 100, 0, {})}
        with pytest.raises(ingest.RejectRateError) as err:
            ingest.check_reject_rate("events", counts, 0.01)
        assert str(err.value) == ("table events ds=2024-01-10: 10/200 rows rejected (5.00% > "
                                  "1.00%); top reasons: null_id=7, bad_number=3")
        ingest.check_reject_rate("events", counts, 0.05)

    def test_samples_name_the_column_and_what_a_timestamp_should_be(self):
        counts = {DAY: ingest.DayCounts(10, 0, 10, {"bad_timestamp": 9, "null_id": 1}, samples={
            "bad_timestamp": {"column": "event_ts", "value": "1704873600",
                              "expected": "timestamp_kind 'datetime': an ISO 8601 date-time"},
            "null_id": {"column": "customer_id", "value": ""}})}
        with pytest.raises(ingest.RejectRateError) as err:
            ingest.check_reject_rate("events", counts, 0.01)
        assert str(err.value) == (
            "table events ds=2024-01-10: 10/10 rows rejected (100.00% > 1.00%); top reasons: "
            "bad_timestamp=9, null_id=1; samples: bad_timestamp event_ts='1704873600' (expected "
            "timestamp_kind 'datetime': an ISO 8601 date-time), null_id customer_id=''")


KEYED = "event_id,customer_id,event_ts,event_type,amount"


def _rows(result: ingest.Validated) -> list[tuple]:
    return sorted((r["customer_id"], r["event_type"], r["amount"])
                  for r in result.valid.collect())


class TestDuplicatePolicies:
    SAME_DAY = ["1,20240110,purchase,5", "1,20240110,purchase,5", "1,20240110,purchase,5",
                "1,20240110,purchase,7", "2,20240110,login,"]

    def test_default_keeps_every_identical_event(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv(*self.SAME_DAY))
        result = _validate(spark, tmp_path, _spec(timestamp_kind="yyyymmdd"))
        counts = result.counts[DAY]
        assert (counts.rows_in, counts.rows_out, counts.rows_rejected) == (5, 5, 0)
        assert _rows(result) == [("1", "purchase", 5.0)] * 3 + [("1", "purchase", 7.0),
                                                                ("2", "login", None)]
        assert result.rejected.count() == 0

    def test_same_instant_different_types_are_two_events(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv(
            "1,2024-01-10 08:00:00,login,", "1,2024-01-10 08:00:00,usage,1"))
        result = _validate(spark, tmp_path, _spec())
        assert _rows(result) == [("1", "login", None), ("1", "usage", 1.0)]

    def test_drop_exact_collapses_only_identical_rows(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv(*self.SAME_DAY))
        result = _validate(spark, tmp_path, _spec(timestamp_kind="yyyymmdd",
                                                  duplicates="drop_exact"))
        assert result.counts[DAY].reasons == {"duplicate_row": 2}
        assert _rows(result) == [("1", "purchase", 5.0), ("1", "purchase", 7.0),
                                 ("2", "login", None)]

    def test_reject_conflicts_by_event_id(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv(
            "e1,1,2024-01-10 08:00:00,purchase,5", "e1,1,2024-01-10 08:00:00,purchase,5",
            "e2,1,2024-01-10 08:00:00,purchase,5",  # same values, another event: kept
            "e3,2,2024-01-10 09:00:00,purchase,5", "e3,2,2024-01-10 09:00:00,purchase,6",
            " ,3,2024-01-10 09:00:00,login,", header=KEYED))
        spec = _spec(key=["event_id"], duplicates="reject_conflicts")
        result = _validate(spark, tmp_path, spec)
        counts = result.counts[DAY]
        assert counts.reasons == {"duplicate_row": 1, "conflicting_duplicate": 2, "null_key": 1}
        assert (counts.rows_in, counts.rows_out) == (6, 2)
        assert _rows(result) == [("1", "purchase", 5.0)] * 2
        assert counts.samples["conflicting_duplicate"] == {"column": "event_id", "value": "e3"}
        rejected = result.rejected.toPandas()
        assert sorted(rejected[rejected["reason"] == "conflicting_duplicate"]["amount"]) == [
            "5", "6"]

    def test_timestamp_key_compares_instants(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv(
            "1,2024-01-10 08:00:00,purchase,5", "1,2024-01-10T08:00:00Z,purchase,6",
            "2,2024-01-10 08:00:00,purchase,5"))
        spec = _spec(key=["customer_id", "event_ts"], duplicates="reject_conflicts")
        result = _validate(spark, tmp_path, spec)
        assert result.counts[DAY].reasons == {"conflicting_duplicate": 2}
        assert _rows(result) == [("2", "purchase", 5.0)]

    def test_key_columns_are_required(self, spark, tmp_path):
        bad = _write(tmp_path, "events", DAY, "part-0.csv", _csv(GOOD_ROWS[0]))
        spec = _spec(key=["event_id"], duplicates="reject_conflicts")
        with pytest.raises(ingest.MissingColumnError, match=f"{bad}.*event_id"):
            _validate(spark, tmp_path, spec)


NY = "America/New_York"
# Around both DST changes of 2024 in New York (Mar 10 02:00 -> 03:00, Nov 3 02:00 -> 01:00):
# naive wall-clock times (one in the spring gap, one in the autumn overlap) and instants with
# an offset on either side of local midnight.
DST_STAMPS = {
    "2024-03-10": ["2024-03-10 00:30:00", "2024-03-10 02:30:00", "2024-03-10 23:30:00",
                   "2024-03-10T04:30:00Z", "2024-03-10T05:30:00Z", "2024-03-11T03:30:00Z",
                   "2024-03-11T04:30:00Z", "2024-03-10T23:30:00-04:00",
                   "2024-03-11T00:30:00+01:00", "2024-03-09T23:30:00-05:00"],
    "2024-11-03": ["2024-11-03 01:30:00", "2024-11-03 23:30:00", "2024-11-03T03:30:00Z",
                   "2024-11-03T04:30:00Z", "2024-11-04T04:30:00Z", "2024-11-04T05:30:00Z"],
}


def _instant(stamp: str, zone: str) -> datetime:
    """The reference: Python's zoneinfo reading of a raw ISO stamp (naive = wall clock)."""
    moment = datetime.fromisoformat(stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(zone))


def _epoch(moment: datetime, kind: str) -> str:
    seconds = int(moment.timestamp())
    return str(seconds * 1000 if kind == "epoch_millis" else seconds)


class TestTimestamps:
    @pytest.mark.parametrize("zone", [NY, "UTC"])
    @pytest.mark.parametrize("kind", ["datetime", "epoch_seconds", "epoch_millis"])
    def test_partition_day_is_the_calendar_day_in_the_zone(self, spark, tmp_path, zone, kind):
        from pyspark.sql import functions as F

        expected = {}  # row id -> epoch second of a kept row, or its reject reason
        for ds, stamps in DST_STAMPS.items():
            rows = []
            for n, stamp in enumerate(stamps):
                moment = _instant(stamp, zone)
                raw = stamp if kind == "datetime" else _epoch(moment, kind)
                rows.append(f"{ds}-{n},{raw},login,")
                day = moment.astimezone(ZoneInfo(zone)).date().isoformat()
                expected[f"{ds}-{n}"] = (int(moment.timestamp()) if day == ds
                                         else "outside_partition_day")
            _write(tmp_path, "events", ds, "part-0.csv", _csv(*rows))
        spec = _spec(timestamp_kind=kind, timezone=zone)
        result = _validate(spark, tmp_path, spec, days=tuple(DST_STAMPS))
        got = {r["customer_id"]: r["t"] for r in result.valid.select(
            "customer_id", F.col("event_ts").cast("long").alias("t")).collect()}
        got |= {r["customer_id"]: r["reason"] for r in result.rejected.collect()}
        assert got == expected
        assert 0 < sum(v == "outside_partition_day" for v in expected.values()) < len(expected)

    @pytest.mark.parametrize("kind, good, bad", [
        ("epoch_seconds", ["1704873600", "1704873600.5", "1.7048736E9"],
         ["abc", "-5", "99999999999999999999", "2024-01-10 08:00:00"]),
        ("epoch_millis", ["1704873600000", "1704931199999"],
         ["1704873600000x", "", "9" * 30]),
    ])
    def test_epoch_kinds(self, spark, tmp_path, kind, good, bad):
        _write(tmp_path, "events", DAY, "part-0.csv",
               _csv(*(f"{n},{v},login," for n, v in enumerate(good + bad))))
        result = _validate(spark, tmp_path, _spec(timestamp_kind=kind))
        assert result.counts[DAY].rows_out == len(good)
        assert result.counts[DAY].reasons == {"bad_timestamp": len(bad)}
        assert {str(r["event_ts"])[:10] for r in result.valid.collect()} == {DAY}

    def test_date_kind_in_a_zone_keeps_the_date(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv("1,20240110,login,",
                                                          "2,20240111,login,"))
        result = _validate(spark, tmp_path, _spec(timestamp_kind="yyyymmdd", timezone=NY))
        assert result.counts[DAY].reasons == {"outside_partition_day": 1}
        (row,) = result.valid.collect()
        assert row["customer_id"] == "1"

    def test_wrong_kind_sample_says_what_was_expected(self, spark, tmp_path):
        _write(tmp_path, "events", DAY, "part-0.csv", _csv("1,1704873600,login,"))
        counts = _validate(spark, tmp_path, _spec()).counts[DAY]
        assert counts.samples == {"bad_timestamp": {
            "column": "event_ts", "value": "1704873600",
            "expected": "timestamp_kind 'datetime': an ISO 8601 date-time, e.g. "
                        "2024-01-10 08:00:00 or 2024-01-10T08:00:00+01:00"}}
