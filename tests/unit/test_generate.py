"""The synthetic data generator: layout, determinism, churn behaviour and exact fault counts."""

from __future__ import annotations

import csv
import hashlib
import json
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from churn.generate import generate, main
from churn.generate_faults import FAULT_KINDS
from churn.spec import DatasetSpec, load_spec
from churn.storage import Layout, list_partitions, shift_ds

START = "2026-01-01"
SEED = 11
SMALL = {"customers": 300, "start": START, "seed": SEED}
FAULT_DAY = "2026-01-02"


def _checksums(root: Path) -> dict[str, str]:
    """Every written file's sha256 (the writers' empty `_locks/` files aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.parent.name != "_locks"}


def _events(root: Path, ds: str) -> pd.DataFrame:
    return pd.read_csv(Path(Layout(str(root)).raw("events", ds), "part-00000.csv"),
                       dtype=str, keep_default_na=False)


def _customers(root: Path, ds: str) -> pd.DataFrame:
    return pd.read_csv(Path(Layout(str(root)).raw("customers", ds), "part-00000.csv"),
                       dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def run60(tmp_path_factory):
    """300 customers over 60 days."""
    root = tmp_path_factory.mktemp("gen60")
    return root, generate(str(root), days=60, **SMALL)


@pytest.fixture(scope="module")
def all_events(run60) -> pd.DataFrame:
    root, summary = run60
    return pd.concat([_events(root, ds).assign(ds=ds) for ds in summary.days], ignore_index=True)


class TestLayoutAndColumns:
    def test_every_day_has_both_tables_and_the_oracle(self, run60):
        root, summary = run60
        layout = Layout(str(root))
        days = [shift_ds(START, i) for i in range(60)]
        assert list(summary.days) == days and list(summary.days_written) == days
        for area in (layout.area("raw", "events"), layout.area("raw", "customers"),
                     layout.area("oracle")):
            assert list_partitions(area) == days
        for table in ("events", "customers"):
            files = {p.name: p for p in Path(layout.raw(table, days[5])).iterdir()}
            assert sorted(files) == ["_SUCCESS", "part-00000.csv"]
            # the ready marker is written after the data, as a producer does
            assert files["_SUCCESS"].stat().st_mtime_ns >= files["part-00000.csv"].stat().st_mtime_ns
        assert sorted(p.name for p in Path(layout.oracle(days[5])).iterdir()) == [
            "part-00000.parquet"]

    def test_columns_follow_the_spec(self, run60):
        root, _ = run60
        assert list(_events(root, START).columns) == [
            "customer_id", "event_ts", "event_type", "amount"]
        assert list(_customers(root, START).columns) == [
            "customer_id", "signup_date", "plan", "region", "contract", "age", "monthly_charges"]
        oracle = pd.read_parquet(Layout(str(root)).oracle(START))
        assert list(oracle.columns) == ["customer_id", "churn_probability"]

    def test_ids_keep_leading_zeros(self, run60, all_events):
        root, _ = run60
        customers = _customers(root, START)
        assert customers["customer_id"].str.fullmatch(r"\d{6}").all()
        assert customers["customer_id"].iloc[0] == "000001"
        assert all_events["customer_id"].str.fullmatch(r"0\d{5}").all()

    def test_event_ts_lies_within_its_day(self, all_events):
        assert (all_events["event_ts"].str.slice(0, 10) == all_events["ds"]).all()
        parsed = pd.to_datetime(all_events["event_ts"], format="%Y-%m-%d %H:%M:%S")
        assert parsed.notna().all()

    def test_event_types_are_the_ones_the_spec_lists(self, all_events, spec_path):
        assert set(all_events["event_type"]) == set(load_spec(spec_path).events.types)

    def test_amounts_only_on_usage_and_purchase(self, all_events):
        has_amount = all_events["amount"] != ""
        assert set(all_events.loc[has_amount, "event_type"]) == {"usage", "purchase"}
        assert (all_events.loc[has_amount, "amount"].astype(float) >= 0).all()

    def test_summary_counts_match_the_files(self, run60, all_events):
        root, summary = run60
        customers = sum(len(_customers(root, ds)) for ds in summary.days)
        assert summary.rows["events"] == len(all_events)
        assert summary.rows["customers"] == customers == summary.rows["oracle"]
        assert summary.churned == (all_events["event_type"] == "cancel").sum()


class TestChurn:
    def test_churn_rate_is_in_a_sane_band(self, tmp_path):
        summary = generate(str(tmp_path), customers=2000, start=START, days=60, seed=5)
        assert 0.08 <= summary.churn_rate_30d <= 0.25

    def test_churners_stop_and_leave_the_snapshot(self, run60, all_events):
        root, summary = run60
        cancels = all_events[all_events["event_type"] == "cancel"]
        assert len(cancels) > 20
        assert cancels["customer_id"].is_unique
        last_day = all_events.groupby("customer_id")["ds"].max()
        assert (last_day[cancels["customer_id"]].to_numpy() == cancels["ds"].to_numpy()).all()
        for _, row in cancels.head(15).iterrows():
            assert row["customer_id"] not in set(_customers(root, row["ds"])["customer_id"])
            if row["ds"] > START:
                before = _customers(root, shift_ds(row["ds"], -1))
                assert row["customer_id"] in set(before["customer_id"])

    def test_cancel_is_the_only_event_of_the_churn_day(self, all_events):
        cancelled = all_events[all_events["event_type"] == "cancel"][["customer_id", "ds"]]
        same_day = all_events.merge(cancelled, on=["customer_id", "ds"])
        assert (same_day["event_type"] == "cancel").all()

    def test_oracle_covers_the_snapshot_and_is_a_probability(self, run60):
        root, summary = run60
        for ds in summary.days[::15]:
            oracle = pd.read_parquet(Layout(str(root)).oracle(ds))
            assert oracle["customer_id"].tolist() == _customers(root, ds)["customer_id"].tolist()
            assert oracle["churn_probability"].between(0, 1, inclusive="neither").all()
            assert 0.05 < oracle["churn_probability"].mean() < 0.3

    def test_oracle_ranks_actual_churners_higher(self, run60, all_events):
        root, _ = run60
        ds = shift_ds(START, 10)
        oracle = pd.read_parquet(Layout(str(root)).oracle(ds))
        cancels = all_events[all_events["event_type"] == "cancel"].set_index("customer_id")["ds"]
        day = oracle["customer_id"].map(cancels)
        churned = day.notna() & (day <= shift_ds(ds, 30))
        assert churned.sum() > 5
        assert (oracle.loc[churned, "churn_probability"].mean()
                > 1.3 * oracle.loc[~churned, "churn_probability"].mean())

    def test_live_customers_are_active(self, run60, all_events):
        root, _ = run60
        ds = shift_ds(START, 20)
        window = all_events[(all_events["ds"] > ds) & (all_events["ds"] <= shift_ds(ds, 30))]
        silent = set(_customers(root, shift_ds(ds, 30))["customer_id"]) - set(window["customer_id"])
        assert not silent


class TestStreaming:
    def test_peak_memory_does_not_grow_with_days(self, tmp_path):
        generate(str(tmp_path / "warm"), customers=500, start=START, days=2, seed=1)
        peaks, events = [], []
        for days in (10, 100):
            tracemalloc.start()
            summary = generate(str(tmp_path / str(days)), customers=500, start=START, days=days,
                               seed=1)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            events.append(summary.rows["events"] / days)
        # Keeping one day's events alive would cost ~40 bytes x events a day; growth per extra
        # day stays far below that (only the list of day names grows).
        growth_per_day = (peaks[1] - peaks[0]) / 90
        assert growth_per_day < 5_000 < 40 * min(events) / 4, (peaks, events)


class TestDeterminism:
    def test_same_seed_same_bytes_other_seed_differs(self, tmp_path):
        sums = []
        for name, seed in (("a", 3), ("b", 3), ("c", 4)):
            generate(str(tmp_path / name), customers=200, start=START, days=5, seed=seed)
            sums.append(_checksums(tmp_path / name))
        assert sums[0] == sums[1]
        assert len(sums[0]) == 26  # 16 data files and faults.json, 10 empty ready markers
        assert sums[0].keys() == sums[2].keys()
        changed = [k for k in sums[0] if sums[0][k] != sums[2][k]]
        assert len(changed) == 16   # every data file, and faults.json records the seed


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A clean 3-day run; fault runs with the same seed differ from it only by the faults."""
    root = tmp_path_factory.mktemp("clean")
    generate(str(root), days=3, **SMALL)
    return root


def _faulted(tmp_path: Path, kind: str) -> tuple[Path, dict]:
    summary = generate(str(tmp_path), days=3, faults=(kind,), **SMALL)
    (record,) = summary.faults
    assert json.loads((tmp_path / "faults.json").read_text())["faults"] == [record]
    assert (record["kind"], record["ds"], record["table"]) == (kind, FAULT_DAY, "events")
    return tmp_path, record


class TestFaults:
    def test_malformed_rows(self, tmp_path, clean):
        root, record = _faulted(tmp_path, "malformed_rows")
        with open(Path(Layout(str(root)).raw("events", FAULT_DAY), "part-00000.csv")) as src:
            rows = list(csv.reader(src))
        bad = [r for r in rows if len(r) != 4]
        assert len(bad) == record["rows"] == 5
        assert len(rows) - 5 == len(_events(clean, FAULT_DAY)) + 1

    def test_wrong_types(self, tmp_path, clean):
        root, record = _faulted(tmp_path, "wrong_types")
        events = _events(root, FAULT_DAY)
        amounts = pd.to_numeric(events["amount"].replace("", None), errors="coerce")
        bad_amount = (events["amount"] != "") & amounts.isna()
        stamps = pd.to_datetime(events["event_ts"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
        assert bad_amount.sum() == 3 and stamps.isna().sum() == 2
        assert record["rows"] == 5
        assert sorted(events.loc[bad_amount, "customer_id"]) == sorted(
            record["detail"]["bad_value_ids"])
        assert len(events) == len(_events(clean, FAULT_DAY))

    def test_missing_column(self, tmp_path, clean):
        root, record = _faulted(tmp_path, "missing_column")
        events = _events(root, FAULT_DAY)
        assert list(events.columns) == ["customer_id", "event_ts", "event_type"]
        assert record["rows"] == len(events) == len(_events(clean, FAULT_DAY))
        assert record["detail"] == {"column": "amount"}
        assert "amount" in _events(root, START).columns

    def test_null_ids(self, tmp_path, clean):
        root, record = _faulted(tmp_path, "null_ids")
        events, before = _events(root, FAULT_DAY), _events(clean, FAULT_DAY)
        nulls = events["customer_id"] == ""
        assert nulls.sum() == record["rows"] == 3
        assert sorted(before.loc[nulls, "customer_id"]) == sorted(record["detail"]["original_ids"])
        assert events[~nulls].equals(before[~nulls])

    def test_duplicate_rows(self, tmp_path, clean):
        root, record = _faulted(tmp_path, "duplicate_rows")
        events, before = _events(root, FAULT_DAY), _events(clean, FAULT_DAY)
        assert len(events) == len(before) + 4 == len(before) + record["rows"]
        extra = events.duplicated().sum() - before.duplicated().sum()
        assert extra == 4
        assert events.drop_duplicates().reset_index(drop=True).equals(
            before.drop_duplicates().reset_index(drop=True))

    def test_future_dated(self, tmp_path, clean):
        root, record = _faulted(tmp_path, "future_dated")
        events = _events(root, FAULT_DAY)
        later = events["event_ts"].str.slice(0, 10) > FAULT_DAY
        assert later.sum() == record["rows"] == 3
        assert sorted(events.loc[later, "event_ts"]) == sorted(record["detail"]["timestamps"])
        assert pd.to_datetime(events["event_ts"], format="%Y-%m-%d %H:%M:%S").notna().all()

    def test_empty_day(self, tmp_path, clean):
        root, record = _faulted(tmp_path, "empty_day")
        text = Path(Layout(str(root)).raw("events", FAULT_DAY), "part-00000.csv").read_text()
        assert text == "customer_id,event_ts,event_type,amount\n"
        assert record["rows"] == len(_events(clean, FAULT_DAY))
        assert len(_customers(root, FAULT_DAY)) == len(_customers(clean, FAULT_DAY))

    def test_missing_day(self, tmp_path):
        root, record = _faulted(tmp_path, "missing_day")
        layout = Layout(str(root))
        for table in ("events", "customers"):
            assert list_partitions(layout.area("raw", table)) == [START, "2026-01-03"]
        assert list_partitions(layout.area("oracle")) == [START, FAULT_DAY, "2026-01-03"]

    def test_faults_combine_on_a_chosen_day_and_untouched_days_stay_clean(self, tmp_path, clean):
        summary = generate(str(tmp_path), days=3, faults=("null_ids", "duplicate_rows"),
                           fault_day="2026-01-03", **SMALL)
        assert [(f["kind"], f["ds"], f["rows"]) for f in summary.faults] == [
            ("null_ids", "2026-01-03", 3), ("duplicate_rows", "2026-01-03", 4)]
        assert _events(tmp_path, FAULT_DAY).equals(_events(clean, FAULT_DAY))
        assert (_events(tmp_path, "2026-01-03")["customer_id"] == "").sum() == 3

    def test_unknown_fault_is_refused(self, tmp_path, capsys):
        with pytest.raises(SystemExit):
            main(["--root", str(tmp_path), "--customers", "10", "--start", START, "--days", "2",
                  "--faults", "null_ids,gremlins"])
        assert "unknown fault kind(s) ['gremlins']" in capsys.readouterr().err
        with pytest.raises(ValueError, match="unknown fault kind"):
            generate(str(tmp_path), customers=10, start=START, days=2, seed=0, faults=("x",))
        assert not (tmp_path / "raw").exists()

    def test_fault_day_outside_the_run_is_refused(self, tmp_path):
        with pytest.raises(ValueError, match="fault day 2027-01-01 is not among"):
            generate(str(tmp_path), days=3, faults=("null_ids",), fault_day="2027-01-01", **SMALL)
        assert len(FAULT_KINDS) == 8


class TestOtherSpecs:
    def test_jsonl_parquet_and_event_label(self, tmp_path):
        spec = DatasetSpec.model_validate({
            "name": "alt", "id_column": "user",
            "events": {"format": "jsonl", "timestamp": "when", "timestamp_kind": "yyyymmdd",
                       "type": "what", "value": "spend"},
            "customers": {"format": "parquet", "categorical": ["tier"], "numeric": ["age"]},
            "label": {"kind": "event", "event_type": "churned", "horizon_days": 14},
        })
        summary = generate(str(tmp_path), customers=200, start=START, days=20, seed=2, spec=spec)
        layout = Layout(str(tmp_path))
        events = pd.concat(pd.read_json(Path(layout.raw("events", ds), "part-00000.jsonl"),
                                        lines=True, dtype={"user": str, "when": str})
                           for ds in summary.days)
        assert list(events.columns) == ["user", "when", "what", "spend"]
        assert set(events["when"]) == {d.replace("-", "") for d in summary.days}
        assert (events["what"] == "churned").sum() == summary.churned > 0
        customers = pd.read_parquet(layout.raw("customers", START))
        assert list(customers.columns) == ["user", "tier", "age"]
        assert customers["user"].str.fullmatch(r"\d{6}").all()

    @pytest.mark.parametrize(("kind", "unit"), [("epoch_seconds", 1), ("epoch_millis", 1000)])
    def test_epoch_timestamps_fall_on_their_day_in_the_spec_zone(self, tmp_path, spec_path,
                                                                kind, unit):
        raw = load_spec(spec_path).model_dump()
        raw["events"] |= {"timestamp_kind": kind, "timezone": "America/New_York"}
        spec = DatasetSpec.model_validate(raw)
        summary = generate(str(tmp_path), customers=100, start="2024-03-08", days=4, seed=3,
                           spec=spec)  # 2024-03-10: New York skips 02:00-03:00
        events = pd.concat(_events(tmp_path, ds).assign(ds=ds) for ds in summary.days)
        local = (pd.to_datetime(events["event_ts"].astype("int64") // unit, unit="s", utc=True)
                 .dt.tz_convert("America/New_York"))
        assert (local.dt.strftime("%Y-%m-%d") == events["ds"]).all()
        assert (local.dt.strftime("%Y-%m-%d") == "2024-03-10").any()

    @staticmethod
    def _column_spec(spec_path, horizon: int) -> DatasetSpec:
        raw = load_spec(spec_path).model_dump()
        raw["label"] = {"kind": "column", "column": "churned", "horizon_days": horizon,
                        "positive": ["Yes"]}
        return DatasetSpec.model_validate(raw)

    def test_column_label_with_horizon_flags_nobody_and_churners_leave(self, tmp_path,
                                                                      spec_path):
        summary = generate(str(tmp_path), days=10, spec=self._column_spec(spec_path, 5), **SMALL)
        day = _customers(tmp_path, "2026-01-05")
        assert set(day["churned"]) == {"No"}
        oracle = pd.read_parquet(Layout(str(tmp_path)).oracle("2026-01-05"))
        assert oracle["customer_id"].tolist() == day["customer_id"].tolist()
        assert summary.churned > 0

    def test_column_label_with_horizon_zero_flags_the_days_churners(self, tmp_path, spec_path):
        summary = generate(str(tmp_path), customers=1000, start=START, days=6, seed=SEED,
                           spec=self._column_spec(spec_path, 0))
        layout, flagged_total = Layout(str(tmp_path)), 0
        for ds in summary.days[:-1]:
            snapshot = _customers(tmp_path, ds).set_index("customer_id")
            cancels = _events(tmp_path, ds).query("event_type == 'cancel'")["customer_id"]
            flagged = snapshot.index[snapshot["churned"] == "Yes"]
            assert sorted(flagged) == sorted(cancels)
            assert set(snapshot["churned"]) <= {"Yes", "No"}
            oracle = pd.read_parquet(layout.oracle(ds)).set_index("customer_id")
            assert oracle.index.tolist() == snapshot.index.tolist()
            assert sorted(oracle.index[oracle["churn_probability"] == 1.0]) == sorted(flagged)
            assert set(oracle["churn_probability"]) <= {0.0, 1.0}
            tomorrow = set(_customers(tmp_path, shift_ds(ds, 1))["customer_id"])
            assert not tomorrow & set(flagged)
            flagged_total += len(flagged)
        assert flagged_total > 5


    def test_label_column_clashing_with_a_customers_column_is_refused(self, tmp_path,
                                                                      spec_path):
        raw = load_spec(spec_path).model_dump()
        raw["label"] = {"kind": "column", "column": "plan", "horizon_days": 0}
        with pytest.raises(ValueError, match="label column 'plan' clashes"):
            generate(str(tmp_path), customers=10, start=START, days=1, seed=0,
                     spec=DatasetSpec.model_validate(raw))


class TestCli:
    def test_main_prints_a_summary(self, tmp_path, capsys, spec_path):
        summary = main(["--root", str(tmp_path), "--customers", "100", "--start", START,
                        "--days", "3", "--seed", "1", "--spec", str(spec_path),
                        "--faults", "duplicate_rows", "--fault-day", "2026-01-03"])
        out = capsys.readouterr().out
        assert f"days: 3 ({START} .. 2026-01-03), written: 3" in out
        assert f"events={summary.rows['events']:,}" in out
        assert "fault: duplicate_rows on 2026-01-03 (events): 4 rows" in out
        assert f"events: {tmp_path}/raw/events" in out


class TestFaultFormats:
    @staticmethod
    def _spec(spec_path, events_format: str) -> DatasetSpec:
        raw = load_spec(spec_path).model_dump()
        raw["events"]["format"] = events_format
        return DatasetSpec.model_validate(raw)

    def test_jsonl_malformed_rows_are_unparseable_lines(self, tmp_path, spec_path):
        summary = generate(str(tmp_path), days=3, faults=("malformed_rows", "null_ids"),
                           spec=self._spec(spec_path, "jsonl"), **SMALL)
        path = Path(Layout(str(tmp_path)).raw("events", FAULT_DAY), "part-00000.jsonl")
        parsed, broken = [], 0
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                broken += 1
                continue
            parsed.append(row)
        not_objects = sum(not isinstance(r, dict) for r in parsed)
        assert broken + not_objects == summary.faults[0]["rows"] == 5
        assert sum(isinstance(r, dict) and r["customer_id"] is None for r in parsed) == 3

    def test_parquet_refuses_malformed_rows_but_takes_wrong_types(self, tmp_path, spec_path):
        spec = self._spec(spec_path, "parquet")
        with pytest.raises(ValueError, match="malformed_rows needs a csv or jsonl"):
            generate(str(tmp_path / "a"), days=3, faults=("malformed_rows",), spec=spec, **SMALL)
        assert not (tmp_path / "a").exists()
        generate(str(tmp_path / "b"), days=3, faults=("wrong_types",), spec=spec, **SMALL)
        events = pd.read_parquet(Layout(str(tmp_path / "b")).raw("events", FAULT_DAY))
        assert events["amount"].dtype == object
        assert pd.to_numeric(events["amount"], errors="coerce").isna().sum() - events[
            "amount"].isna().sum() == 3
