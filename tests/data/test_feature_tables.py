"""Data contracts of what build_features writes: features, labels, quarantine, run fragments.

One run of the job (real synthetic spec: 7/30/90-day windows, 30-day horizon) over generated data
with a few bad rows; every test reads the written files back with pandas/pyarrow only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from churn import features
from churn.generate import generate
from churn.modeling import infer_schema
from churn.spec import load_spec
from churn.storage import Layout, list_partitions, read_json
from spark_jobs.build_features import JobArgs, run

START, DAYS, FAULT_DAY = "2024-01-01", 36, "2024-02-05"
ID = "customer_id"


@pytest.fixture(scope="module")
def written(spark, spec_path, tmp_path_factory) -> Layout:
    """Features/labels/quarantine for the two last generated days (faults on the last)."""
    root = str(tmp_path_factory.mktemp("contracts"))
    generate(root, customers=40, start=START, days=DAYS, seed=2, spec=str(spec_path),
             faults=("null_ids", "duplicate_rows"), fault_day=FAULT_DAY)
    run(spark, JobArgs(root=root, spec=str(spec_path), start="2024-02-04", end=FAULT_DAY,
                       max_reject_rate=0.2))
    return Layout(root)


def read(uri: str) -> pd.DataFrame:
    return pd.read_parquet(uri)


class TestFeatureTable:
    def test_columns_types_and_keys(self, written, spec_path):
        spec = load_spec(spec_path)
        frame = read(written.features(FAULT_DAY))
        names = features.feature_names(spec, sorted(spec.events.types))
        assert list(frame.columns) == [ID, "ds", *names]
        schema = pq.read_schema(next(Path(written.features(FAULT_DAY)).glob("*.parquet")))
        assert str(schema.field(ID).type) == "string" and str(schema.field("ds").type) == "string"
        kinds = {n: str(schema.field(n).type) for n in names}
        assert {kinds[n] for n in spec.customers.categorical} == {"string"}
        assert {t for n, t in kinds.items() if n not in spec.customers.categorical} <= {
            "double", "int64"}
        assert frame["ds"].eq(FAULT_DAY).all() and frame[ID].is_unique
        assert frame[ID].str.fullmatch(r"\d{6}").all()  # zero-padded, never cast to a number

    def test_values_are_sane(self, written):
        frame = read(written.features(FAULT_DAY))
        counts = frame.filter(regex=r"^n_")
        assert counts.notna().all().all() and (counts >= 0).all().all()
        assert (frame["n_events_7d"] <= frame["n_events_30d"]).all()
        assert (frame["n_events_30d"] <= frame["n_events_90d"]).all()
        recency = frame.filter(regex=r"^days_since_")
        assert recency.min().min() >= 0 and recency.max().max() <= 90
        assert (frame["tenure_days"] >= 0).all()

    def test_features_feed_the_model_schema(self, written, spec_path):
        spec = load_spec(spec_path)
        schema = infer_schema(read(written.features(FAULT_DAY)), ID)
        assert sorted(schema.categorical) == sorted(spec.customers.categorical)
        assert all(schema.categorical[c] for c in schema.categorical)


class TestLabelTable:
    def test_matured_days_only_with_binary_labels(self, written):
        days = list_partitions(written.area("labels"))
        newest = list_partitions(written.area("raw", "events"))[-1]
        assert days == ["2024-01-05", "2024-01-06"]  # day + 30 <= newest raw day (Feb 5)
        assert newest == FAULT_DAY
        for ds in days:
            frame = read(written.labels(ds))
            assert list(frame.columns) == [ID, "ds", "label"]
            assert str(frame["label"].dtype) == "int32" and set(frame["label"]) <= {0, 1}
            assert frame[ID].is_unique and frame["ds"].eq(ds).all()


class TestQuarantineAndFragments:
    def test_quarantine_holds_raw_strings_and_reasons(self, written):
        frame = read(written.quarantine("events", FAULT_DAY))
        assert list(frame.columns) == [ID, "event_ts", "event_type", "amount", "reason",
                                       "raw_record", "source_file", "ds"]
        assert frame["reason"].value_counts().to_dict() == {"duplicate_row": 4, "null_id": 3}
        assert frame["source_file"].str.contains(f"ds={FAULT_DAY}/").all()
        assert len(read(written.quarantine("events", "2024-02-04"))) == 0

    def test_fragments_add_up(self, written):
        for ds in ("2024-02-04", FAULT_DAY):
            ingest = read_json(written.run_fragment(ds, "ingest"))
            assert ingest["step"] == "ingest" and ingest["status"] == "ok"
            for counts in ingest["tables"].values():
                assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
                assert counts["rows_rejected"] == sum(counts["reasons"].values())
            built = read_json(written.run_fragment(ds, "features"))
            assert built["feature_rows"] == len(read(written.features(ds)))
            assert built["feature_rows"] == ingest["tables"]["customers"]["rows_out"]
