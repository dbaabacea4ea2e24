"""Event logs as real producers write them, end to end through the real build_features job.

Each case generates a tiny world (30 customers, 3 days, windows of 2 and 3 days), hand-edits the
raw events of DAY (or of every day), runs `spark_jobs.build_features.run` for DAY and checks the
features against a pandas count of the raw rows that should be kept:

* uniqueness is declared by the spec: with no key every row is an event (identical purchases
  of a date-only log, bursts within one second), `drop_exact` drops exact repeats,
  `reject_conflicts` quarantines every version of a key with two;
* timestamps are parsed as `timestamp_kind` says (ISO, date, epoch seconds or milliseconds) and
  their calendar day in `events.timezone` must be the partition day, across a DST change;
* a spec naming the wrong timestamp format fails with a sample value and the expected format.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import yaml

from churn import ingest
from churn.generate import generate
from churn.storage import Layout, ds_range, read_json, shift_ds
from spark_jobs.build_features import JobArgs, run
from tests.support.small_data import read_partition, write_small_spec

ID, TS, TYPE, VALUE = "customer_id", "event_ts", "event_type", "amount"
START, DAY = "2024-01-01", "2024-01-03"
WINDOWS = (2, 3)  # write_small_spec's
NY = "America/New_York"
DST_START, DST_DAY = "2024-03-08", "2024-03-10"  # New York: 02:00 -> 03:00 on Mar 10


def log_spec(folder: Path, name: str, **events) -> str:
    """The small spec with `events` updates. Without `duplicates` the file leaves the field out,
    so the spec's default applies."""
    path = Path(write_small_spec(folder, name, events=events))
    if "duplicates" not in events:
        raw = yaml.safe_load(path.read_text())
        raw["events"].pop("duplicates", None)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def world(root: Path, spec: str, start: str = START) -> Path:
    generate(str(root), customers=30, start=start, days=3, seed=5, spec=spec)
    return root


def events_file(root: Path, ds: str) -> Path:
    (found,) = Path(Layout(str(root)).raw("events", ds)).glob("*.csv")
    return found


def read_events(root: Path, ds: str) -> pd.DataFrame:
    return pd.read_csv(events_file(root, ds), dtype=str, keep_default_na=False)


def write_events(root: Path, ds: str, frame: pd.DataFrame) -> None:
    frame.to_csv(events_file(root, ds), index=False)
    (events_file(root, ds).parent / "_SUCCESS").touch()  # the producer re-marks the day


def raw_days(root: Path, day: str) -> pd.DataFrame:
    """Every raw event row of the days DAY's widest window reads, with its partition day."""
    days = ds_range(shift_ds(day, 1 - WINDOWS[-1]), day)
    return pd.concat([read_events(root, ds).assign(ds=ds) for ds in days], ignore_index=True)


def build(spark, root: Path, spec: str, day: str = DAY, rate: float | None = 0.5) -> dict:
    return run(spark, JobArgs(root=str(root), spec=spec, start=day, end=day,
                              max_reject_rate=rate))


def assert_counts_match(root: Path, kept: pd.DataFrame, day: str = DAY) -> pd.DataFrame:
    """The features of `day` count exactly the rows of `kept` (a pandas count per customer,
    window and event type; customers without rows count 0). Returns the features."""
    features = read_partition(root, "features", day).set_index(ID)
    for w in WINDOWS:
        window = kept[kept["ds"] >= shift_ds(day, 1 - w)]
        expected = window.groupby(ID).size().reindex(features.index, fill_value=0)
        assert features[f"n_events_{w}d"].tolist() == expected.tolist(), f"window {w}"
        for kind in ("purchase", "login", "usage"):
            of_kind = window[window[TYPE] == kind].groupby(ID).size()
            assert features[f"n_{kind}_{w}d"].tolist() == of_kind.reindex(
                features.index, fill_value=0).tolist(), f"{kind}, window {w}"
    assert features["n_events_3d"].sum() > 0
    return features


def day_counts(summary: dict, day: str = DAY) -> dict:
    counts = summary["counts"]["events"][day]
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
    return counts


def quarantine(root: Path, day: str = DAY) -> pd.DataFrame:
    return pd.read_parquet(Layout(str(root)).quarantine("events", day))


def snapshot_ids(root: Path, day: str = DAY) -> set[str]:
    """The customers of the day's snapshot (the features' population)."""
    (path,) = Path(Layout(str(root)).raw("customers", day)).glob("*.csv")
    return set(pd.read_csv(path, dtype=str)[ID])


class TestMultiplicity:
    def test_date_log_keeps_and_counts_every_identical_purchase(self, spark, tmp_path,
                                                                reliability_case):
        spec = log_spec(tmp_path, "dates", timestamp_kind="date")
        root = world(tmp_path / "data", spec)
        frame = read_events(root, DAY)
        customer = sorted(snapshot_ids(root))[0]
        bought = pd.DataFrame({ID: [customer] * 4, TS: [DAY] * 4, TYPE: ["purchase"] * 4,
                               VALUE: ["9.99", "9.99", "9.99", "4.5"]})
        write_events(root, DAY, pd.concat([frame, bought], ignore_index=True))
        kept = raw_days(root, DAY)
        assert kept.duplicated().sum() >= 2  # identical rows really are in the log
        counts = day_counts(build(spark, root, spec))
        assert (counts["rows_in"], counts["rows_out"]) == (len(frame) + 4, len(frame) + 4)
        features = assert_counts_match(root, kept)
        assert features.at[customer, "n_purchase_2d"] >= 4
        assert features.at[customer, "sum_amount_purchase_2d"] >= 3 * 9.99 + 4.5 - 1e-9
        reliability_case("date-only purchase log: 3 identical purchases of one customer-day and "
                         "one with another amount (and identical logins), no key declared",
                         "every row kept (keep_all, the default); features count each",
                         "feature counts == pandas count of raw rows", counts)

    def test_second_resolution_burst_keeps_both_types(self, spark, tmp_path, reliability_case):
        spec = log_spec(tmp_path, "seconds")
        root = world(tmp_path / "data", spec)
        frame = read_events(root, DAY)
        someone = sorted(snapshot_ids(root))[0]
        at = f"{DAY} 12:00:01"
        burst = pd.DataFrame({ID: [someone] * 4, TS: [at] * 4,
                              TYPE: ["login", "usage", "usage", "usage"],
                              VALUE: ["", "2.0", "2.0", "3.0"]})
        write_events(root, DAY, pd.concat([frame, burst], ignore_index=True))
        counts = day_counts(build(spark, root, spec))
        assert counts["rows_rejected"] == 0 and counts["rows_out"] == len(frame) + 4
        features = assert_counts_match(root, raw_days(root, DAY))
        assert features.at[someone, "n_usage_2d"] >= 3 and features.at[someone, "n_login_2d"] >= 1
        reliability_case("second-resolution log: a login and 3 usage clicks (2 identical) of "
                         "one customer at the same second",
                         "all 4 kept, login and usage both counted",
                         "feature counts == pandas count of raw rows", counts)


class TestDeclaredUniqueness:
    def test_drop_exact_drops_only_exact_repeats(self, spark, tmp_path, reliability_case):
        spec = log_spec(tmp_path, "drop_exact", duplicates="drop_exact")
        root = world(tmp_path / "data", spec)
        frame = read_events(root, DAY)
        repeats = frame.iloc[[0, 0, 3]]
        other = frame.iloc[[3]].assign(**{TYPE: "support_ticket"})  # not identical: kept
        write_events(root, DAY, pd.concat([frame, repeats, other], ignore_index=True))
        counts = day_counts(build(spark, root, spec))
        assert counts["reasons"] == {"duplicate_row": 3}
        assert counts["samples"]["duplicate_row"]["column"] == ID
        assert sorted(quarantine(root)[ID]) == sorted(repeats[ID])
        assert_counts_match(root, raw_days(root, DAY).drop_duplicates())
        reliability_case("events with duplicates: drop_exact: 3 exact repeats (one row 3x) and "
                         "a row differing only in type", "the 3 repeats quarantined as "
                         "duplicate_row, the different row kept",
                         "quarantine ids, features == pandas count of distinct rows", counts)

    def test_reject_conflicts_by_event_id(self, spark, tmp_path, reliability_case):
        spec = log_spec(tmp_path, "keyed", key=("event_id",), duplicates="reject_conflicts")
        root = world(tmp_path / "data", spec)
        for ds in ds_range(START, DAY):  # the producer writes an id per event, every day
            frame = read_events(root, ds)
            frame.insert(0, "event_id", [f"{ds}-{n}" for n in range(len(frame))])
            write_events(root, ds, frame)
        frame = read_events(root, DAY)
        redelivered = frame.iloc[[1]]
        conflict = frame.iloc[[2]].assign(**{VALUE: "999.5", TYPE: "purchase"})
        twin = frame.iloc[[4]].assign(event_id="new-1")  # same values, another event
        write_events(root, DAY, pd.concat([frame, redelivered, conflict, twin],
                                          ignore_index=True))
        counts = day_counts(build(spark, root, spec))
        assert counts["reasons"] == {"duplicate_row": 1, "conflicting_duplicate": 2}
        assert counts["rows_out"] == len(frame)  # the conflicted original goes, the twin stays
        assert counts["samples"]["conflicting_duplicate"] == {
            "column": "event_id", "value": frame["event_id"].iloc[2]}
        rejected = quarantine(root)
        assert set(rejected["event_id"]) == {frame["event_id"].iloc[1], frame["event_id"].iloc[2]}
        everything = raw_days(root, DAY)
        kept = everything.drop_duplicates()
        kept = kept[kept["event_id"] != frame["event_id"].iloc[2]]
        assert_counts_match(root, kept)
        reliability_case("events keyed by event_id (reject_conflicts): a redelivered event, an "
                         "event_id with 2 different versions, an equal-valued event with a new id",
                         "redelivery quarantined as duplicate_row, both versions as "
                         "conflicting_duplicate, the new id kept",
                         "reasons, quarantined ids, features == pandas count", counts)


def _epoch(frame: pd.DataFrame, per_second: int) -> pd.DataFrame:
    instants = pd.to_datetime(frame[TS], format="%Y-%m-%d %H:%M:%S", utc=True)
    units = (instants - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return frame.assign(**{TS: (units * per_second).astype(str)})


class TestTimestampFormats:
    def test_epoch_seconds_and_millis_give_the_iso_features(self, spark, tmp_path,
                                                            reliability_case):
        iso = log_spec(tmp_path, "iso")
        base = world(tmp_path / "iso", iso)
        build(spark, base, iso)
        for kind, per_second in (("epoch_seconds", 1), ("epoch_millis", 1000)):
            spec = log_spec(tmp_path, kind, timestamp_kind=kind)
            root = tmp_path / kind
            shutil.copytree(base, root)
            shutil.rmtree(root / "features")
            for ds in ds_range(START, DAY):
                write_events(root, ds, _epoch(read_events(root, ds), per_second))
            assert read_events(root, DAY)[TS].str.fullmatch(r"\d{10}(\d{3})?").all()
            counts = day_counts(build(spark, root, spec))
            assert counts["rows_rejected"] == 0
            pd.testing.assert_frame_equal(read_partition(root, "features", DAY),
                                          read_partition(base, "features", DAY))
            reliability_case(f"events with {kind} timestamps (every read day converted)",
                             "parsed as UTC instants; every row kept",
                             "features identical to the ISO run", counts)

    def test_time_zone_day_across_dst(self, spark, tmp_path, reliability_case):
        spec = log_spec(tmp_path, "new_york", timezone=NY)
        root = world(tmp_path / "data", spec, start=DST_START)
        frame = read_events(root, DST_DAY)
        stamps = ["2024-03-10 00:00:30", "2024-03-10 02:30:00",  # naive; the second in the gap
                  "2024-03-10 23:30:00", "2024-03-10T04:30:00Z",  # = Mar 9 23:30 EST
                  "2024-03-10T05:30:00Z", "2024-03-11T03:30:00Z",  # = Mar 10 23:30 EDT
                  "2024-03-11T04:30:00Z", "2024-03-10T23:30:00-04:00",
                  "2024-03-09T23:30:00-05:00", "2024-03-11T00:30:00+01:00"]
        edited = frame.copy()
        edited.loc[: len(stamps) - 1, TS] = stamps
        write_events(root, DST_DAY, edited)
        zone = ZoneInfo(NY)

        def local_day(stamp: str) -> str:
            moment = datetime.fromisoformat(stamp)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=zone)
            return moment.astimezone(zone).date().isoformat()

        outside = [s for s in stamps if local_day(s) != DST_DAY]
        assert 0 < len(outside) < len(stamps)
        counts = day_counts(build(spark, root, spec, DST_DAY), DST_DAY)
        assert counts["reasons"] == {"outside_partition_day": len(outside)}
        assert sorted(quarantine(root, DST_DAY)[TS]) == sorted(outside)
        assert counts["samples"]["outside_partition_day"]["expected"] == (
            f"a time on the partition day in timezone {NY}")
        everything = raw_days(root, DST_DAY)
        assert_counts_match(root, everything[~everything[TS].isin(outside)], DST_DAY)
        reliability_case(f"events in {NY} on the DST day {DST_DAY}: naive times (one in the "
                         "02:00-03:00 gap) and instants with offsets around local midnight",
                         f"{len(outside)} rows whose New York day is not ds quarantined as "
                         "outside_partition_day, the rest kept",
                         "quarantined stamps == zoneinfo's, features == pandas count", counts)

    def test_wrong_timestamp_kind_fails_with_a_sample_and_the_expected_format(
            self, spark, tmp_path, reliability_case):
        spec = log_spec(tmp_path, "wrong_kind", timestamp_kind="epoch_seconds")
        root = world(tmp_path / "data", log_spec(tmp_path, "iso"))  # the data is ISO
        with pytest.raises(ingest.RejectRateError) as failure:
            build(spark, root, spec, rate=None)
        message = str(failure.value)
        rows = len(read_events(root, DAY))
        assert f"table events ds={DAY}: {rows}/{rows} rows rejected (100.00% > 1.00%)" in message
        sample = read_json(Layout(str(root)).run_fragment(DAY, "ingest"))["tables"]["events"][
            "samples"]["bad_timestamp"]
        assert sample["column"] == TS and sample["value"].startswith(DAY)
        assert (f"samples: bad_timestamp event_ts='{sample['value']}' (expected timestamp_kind "
                "'epoch_seconds': seconds since 1970-01-01 UTC, e.g. 1704873600)") in message
        assert not Path(Layout(str(root)).features(DAY)).exists()
        reliability_case("spec says epoch_seconds, the files hold ISO date-times",
                         f"failed: {message}", "message shows a sample value and the expected "
                         "format; the fragment holds the sample", {"rows_in": rows,
                                                                  "rows_out": 0,
                                                                  "rows_rejected": rows})
