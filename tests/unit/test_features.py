"""Point-in-time feature transforms on tiny in-memory DataFrames (shared local Spark)."""

from __future__ import annotations

import datetime as dt

import pytest

from churn import features
from churn.spec import DatasetSpec

ID = "customer_id"
DAY = "2024-01-10"
ALICE, BOB, CAROL = "001", "002", "003"
EVENTS = [  # (id, day, hh:mm, type, amount)
    (ALICE, "2024-01-05", "10:00", "buy", 7.0),    # outside the 4-day window of Jan 10
    (ALICE, "2024-01-07", "10:00", "login", None),
    (ALICE, "2024-01-09", "10:00", "buy", 5.0),
    (ALICE, "2024-01-10", "23:59", "login", None),
    (ALICE, "2024-01-10", "08:00", "other", 1.0),  # not a declared type: totals only
    (CAROL, "2024-01-10", "09:00", "login", None),  # not in the snapshot: not scored
]
LATER = [(ALICE, "2024-01-11", "00:00", "buy", 100.0), (BOB, "2024-01-12", "10:00", "login", None)]
SNAPSHOT = [  # (id, day, signup, plan, age)
    (ALICE, DAY, "2023-12-31", "pro", 40.0),
    (BOB, DAY, "2024-01-09", None, None),
]


def make_spec(customers: bool = True) -> DatasetSpec:
    """Windows 2 and 4 days, two declared types, a value; optionally a snapshot."""
    raw = {"name": "tiny", "id_column": ID,
           "events": {"timestamp": "event_ts", "type": "event_type", "value": "amount",
                      "types": ["login", "buy"], "windows_days": [2, 4]},
           "label": {"kind": "inactivity", "horizon_days": 2}}
    if customers:
        raw["customers"] = {"signup": "signup_date", "categorical": ["plan"], "numeric": ["age"]}
    return DatasetSpec.model_validate(raw)


def events_frame(spark, rows):
    """Typed valid events as `churn.ingest.validate` returns them."""
    data = [(i, d, dt.datetime.fromisoformat(f"{d} {t}"), k, a) for i, d, t, k, a in rows]
    return spark.createDataFrame(
        data, f"{ID} string, _ds string, event_ts timestamp, event_type string, amount double")


def activity_frame(spark, rows, spec=None):
    """The stored daily activity of `rows` (`features.activity_rows`)."""
    return features.activity_rows(events_frame(spark, rows), spec or make_spec())


def customers_frame(spark, rows):
    """Typed valid snapshot rows as `churn.ingest.validate` returns them."""
    data = [(i, d, dt.date.fromisoformat(s), p, a) for i, d, s, p, a in rows]
    return spark.createDataFrame(
        data, f"{ID} string, _ds string, signup_date date, plan string, age double")


def build(spark, days, event_rows=EVENTS, spec=None):
    """Features of `days` (the snapshot repeated on each day), keyed by (id, ds)."""
    spec = spec or make_spec()
    snapshot = [(i, d, s, p, a) for d in days for i, _, s, p, a in SNAPSHOT]
    customers = customers_frame(spark, snapshot) if spec.customers else None
    frame = features.build_features(spec, days, activity_frame(spark, event_rows, spec),
                                    customers, features.event_types(spec))
    return {(r[ID], r["ds"]): r.asDict() for r in frame.collect()}


class TestBuildFeatures:
    def test_values_of_one_day(self, spark):
        rows = build(spark, [DAY])
        assert sorted(rows) == [(ALICE, DAY), (BOB, DAY)]
        alice = rows[(ALICE, DAY)]
        assert (alice["n_events_2d"], alice["n_events_4d"]) == (3, 4)
        assert (alice["n_login_2d"], alice["n_login_4d"], alice["n_buy_2d"]) == (1, 2, 1)
        assert (alice["sum_amount_2d"], alice["sum_amount_buy_4d"]) == (6.0, 5.0)
        assert alice["sum_amount_login_4d"] == 0.0
        assert alice["days_since_last_event"] == 0.0
        assert (alice["days_since_last_buy"], alice["days_since_last_login"]) == (1.0, 0.0)
        assert alice["trend_2d_4d"] == pytest.approx(1.5)  # (3 events / 2 d) / (4 / 4 d)
        assert (alice["tenure_days"], alice["age"], alice["plan"]) == (10.0, 40.0, "pro")

    def test_customer_without_events_gets_zeros_and_capped_recency(self, spark):
        bob = build(spark, [DAY])[(BOB, DAY)]
        assert [bob[f"n_{k}_{w}d"] for k in ("events", "login", "buy") for w in (2, 4)] == [0] * 6
        assert bob["sum_amount_4d"] == 0.0 and bob["trend_2d_4d"] == 0.0
        assert bob["days_since_last_event"] == bob["days_since_last_login"] == 4.0
        assert (bob["plan"], bob["age"], bob["tenure_days"]) == ("__missing__", None, 1.0)

    def test_schema_is_fixed_by_the_spec(self, spark):
        spec = make_spec()
        frame = features.build_features(spec, [DAY], activity_frame(spark, EVENTS),
                                        customers_frame(spark, SNAPSHOT), ["login", "buy"])
        assert frame.columns == [ID, "ds", *features.feature_names(spec, ["login", "buy"])]
        types = dict(frame.dtypes)
        assert (types[ID], types["ds"], types["plan"]) == ("string", "string", "string")
        assert types["n_buy_4d"] == "bigint" and types["days_since_last_buy"] == "double"
        assert {t for c, t in types.items() if c.startswith("sum_")} == {"double"}

    def test_later_rows_change_no_earlier_day(self, spark):
        before = build(spark, [DAY])
        after = build(spark, [DAY], EVENTS + LATER)
        assert after == before

    def test_range_equals_single_days(self, spark):
        days = ["2024-01-08", "2024-01-09", DAY, "2024-01-11"]
        ranged = build(spark, days, EVENTS + LATER)
        singles = {}
        for day in days:
            singles.update(build(spark, [day], EVENTS + LATER))
        assert ranged == singles
        assert ranged[(ALICE, "2024-01-11")]["sum_amount_buy_2d"] == 100.0

    def test_population_without_snapshot_is_the_recently_active(self, spark):
        spec = make_spec(customers=False)
        day = "2024-01-14"
        rows = build(spark, [day], EVENTS + LATER, spec=spec)
        assert sorted(rows) == [(ALICE, day), (BOB, day)]  # Carol's last event: 4 days ago
        assert rows[(BOB, day)]["n_login_4d"] == 1 and rows[(BOB, day)]["n_login_2d"] == 0

    def test_event_types_from_spec_else_data(self, spark):
        assert features.event_types(make_spec()) == ["buy", "login"]
        loose = make_spec().model_copy(update={"events": make_spec().events.model_copy(
            update={"types": ()})})
        assert features.event_types(loose, activity_frame(spark, EVENTS)) == ["buy", "login",
                                                                              "other"]

    def test_safe_name(self):
        assert features.safe_name(" Support Ticket! ") == "support_ticket"
