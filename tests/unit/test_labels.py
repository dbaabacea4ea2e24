"""Label transforms on tiny in-memory DataFrames (shared local Spark)."""

from __future__ import annotations

import datetime as dt

from churn import labels
from churn.features import activity_rows
from churn.spec import DatasetSpec

ID = "customer_id"
ALICE, BOB, CAROL = "001", "002", "003"
EVENTS = [(ALICE, "2024-01-09", "buy"), (ALICE, "2024-01-10", "login"),
          (BOB, "2024-01-08", "login"), (CAROL, "2024-01-13", "login")]
SNAPSHOT = [  # (id, day, churned)
    (ALICE, "2024-01-08", "no"), (BOB, "2024-01-08", "Yes"),
    (ALICE, "2024-01-09", "no"), (BOB, "2024-01-09", "no"), (CAROL, "2024-01-09", "no"),
    (ALICE, "2024-01-10", "yes"),
]


def spec_of(kind: str, horizon: int, **label) -> DatasetSpec:
    """Events plus a snapshot with a `churned` column; the label as given."""
    return DatasetSpec.model_validate({
        "name": "tiny", "id_column": ID,
        "events": {"timestamp": "event_ts", "type": "event_type", "windows_days": [3]},
        "customers": {"categorical": []},
        "label": {"kind": kind, "horizon_days": horizon, **label}})


def labels_of(spark, spec: DatasetSpec, days) -> dict:
    events = spark.createDataFrame(
        [(i, d, dt.datetime.fromisoformat(f"{d} 12:00"), t) for i, d, t in EVENTS],
        f"{ID} string, _ds string, event_ts timestamp, event_type string")
    customers = spark.createDataFrame(SNAPSHOT, f"{ID} string, _ds string, churned string")
    frame = labels.build_labels(spec, days, activity_rows(events, spec), customers)
    assert frame.columns == [ID, "ds", "label"]
    assert dict(frame.dtypes)["label"] == "int"
    return {(r[ID], r["ds"]): r["label"] for r in frame.collect()}


class TestBuildLabels:
    def test_inactivity_looks_only_at_the_horizon(self, spark):
        got = labels_of(spark, spec_of("inactivity", 2), ["2024-01-08", "2024-01-09"])
        assert got == {(ALICE, "2024-01-08"): 0,   # events on Jan 9 and 10
                       (BOB, "2024-01-08"): 1,     # his Jan 8 event is not after Jan 8
                       (ALICE, "2024-01-09"): 0, (BOB, "2024-01-09"): 1,
                       (CAROL, "2024-01-09"): 1}   # Jan 13 is beyond (Jan 9, Jan 11]

    def test_event_kind_counts_only_its_type(self, spark):
        spec = spec_of("event", 2, event_type="buy")
        got = labels_of(spark, spec, ["2024-01-08", "2024-01-09"])
        assert got[(ALICE, "2024-01-08")] == 1 and got[(ALICE, "2024-01-09")] == 0
        assert got[(BOB, "2024-01-08")] == 0

    def test_column_kind_with_zero_horizon_reads_the_same_day(self, spark):
        spec = spec_of("column", 0, column="churned", positive=["yes", "Yes"])
        assert labels_of(spark, spec, ["2024-01-08"]) == {(ALICE, "2024-01-08"): 0,
                                                          (BOB, "2024-01-08"): 1}

    def test_column_kind_reads_the_horizon_snapshot_and_absence_is_churn(self, spark):
        spec = spec_of("column", 1, column="churned", positive=["yes"])
        assert labels_of(spark, spec, ["2024-01-09"]) == {
            (ALICE, "2024-01-09"): 1,   # "yes" on Jan 10
            (BOB, "2024-01-09"): 1,     # gone from the Jan 10 snapshot
            (CAROL, "2024-01-09"): 1}
