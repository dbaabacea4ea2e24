"""Dataset spec: round trips through YAML, and bad files fail naming the file and the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from churn.spec import DatasetSpec, SpecError, dump_spec, load_spec

BASE = {
    "name": "shop",
    "id_column": "user_id",
    "events": {"format": "csv", "timestamp": "ts", "type": "kind", "value": "amount",
               "types": ["login", "cancel"], "windows_days": [7, 30, 90]},
    "customers": {"format": "csv", "signup": "joined", "categorical": ["plan"],
                  "numeric": ["age"]},
    "label": {"kind": "inactivity", "horizon_days": 30},
}
LABELS = {
    "inactivity": {"kind": "inactivity", "horizon_days": 30},
    "event": {"kind": "event", "horizon_days": 14, "event_type": "cancel"},
    "column": {"kind": "column", "horizon_days": 0, "column": "churned",
               "positive": ["Yes", "1"]},
}


def _write(tmp_path: Path, payload: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


class TestRoundTrip:
    @pytest.mark.parametrize("kind", sorted(LABELS))
    @pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
    def test_dump_then_load_gives_the_same_spec(self, tmp_path, kind, fmt):
        raw = copy.deepcopy(BASE)
        raw["label"] = LABELS[kind]
        raw["events"]["format"] = fmt
        raw["customers"]["format"] = fmt
        spec = DatasetSpec.model_validate(raw)

        path = tmp_path / "round.yaml"
        path.write_text(dump_spec(spec))
        loaded = load_spec(path)

        assert loaded == spec
        assert loaded.label.kind == kind
        assert loaded.events.types == ("login", "cancel")
        assert loaded.events.format == fmt and loaded.customers.format == fmt

    def test_column_label_keeps_horizon_zero_and_positives(self, tmp_path):
        raw = copy.deepcopy(BASE) | {"label": LABELS["column"]}
        dumped = dump_spec(DatasetSpec.model_validate(raw))
        loaded = load_spec(_write(tmp_path, yaml.safe_load(dumped)))
        assert loaded.label.horizon_days == 0
        assert loaded.label.positive == ("Yes", "1")
        assert loaded.label.column == "churned"

    def test_synthetic_spec_names_the_generator_columns(self, spec_path):
        spec = load_spec(spec_path)
        assert spec.id_column == "customer_id"
        assert (spec.events.timestamp, spec.events.type, spec.events.value) == (
            "event_ts", "event_type", "amount")
        assert spec.customers.categorical == ("plan", "region", "contract")
        assert spec.customers.numeric == ("age", "monthly_charges")
        assert spec.tables == ("events", "customers")
        assert spec.max_lookback_days == 89


class TestEventDefaults:
    def test_no_key_keeps_every_row_in_utc(self):
        events = DatasetSpec.model_validate(BASE).events
        assert (events.key, events.duplicates) == ((), "keep_all")
        assert (events.timestamp_kind, events.timezone) == ("datetime", "UTC")

    @pytest.mark.parametrize("kind", ["datetime", "date", "yyyymmdd", "epoch_seconds",
                                      "epoch_millis"])
    def test_key_zone_and_kinds_round_trip(self, tmp_path, kind):
        raw = copy.deepcopy(BASE)
        raw["events"].update(key=["event_id"], duplicates="reject_conflicts",
                             timezone="America/New_York", timestamp_kind=kind)
        loaded = load_spec(_write(tmp_path, yaml.safe_load(dump_spec(
            DatasetSpec.model_validate(raw)))))
        assert loaded.events.key == ("event_id",)
        assert (loaded.events.duplicates, loaded.events.timezone) == (
            "reject_conflicts", "America/New_York")
        assert loaded.events.timestamp_kind == kind

    def test_shipped_specs_drop_the_generators_redeliveries(self, spec_path):
        e2e = Path(__file__).resolve().parents[1] / "e2e" / "churn_e2e.yaml"
        for path in (spec_path, e2e):
            assert load_spec(path).events.duplicates == "drop_exact"


class TestBadSpecs:
    @pytest.mark.parametrize(("mutate", "field", "expect"), [
        (lambda d: d["events"].update(windows_days=[30, 7]), "events", "strictly increasing"),
        (lambda d: d["events"].update(windows_days=[7, 7, 30]), "events", "strictly increasing"),
        (lambda d: d["label"].update(kind="event"), "label", "needs event_type"),
        (lambda d: d["events"].update(colour="red"), "events.colour", "Extra inputs"),
        (lambda d: d.update(owner="me"), "owner", "Extra inputs"),
        (lambda d: d["label"].update(horizon_days=0), "label", "horizon_days >= 1"),
        (lambda d: d["events"].update(format="xml"), "events.format", "csv"),
        (lambda d: d.pop("events"), "<root>", "needs an 'events' table"),
        (lambda d: d["events"].update(duplicates="reject_conflicts"), "events",
         "'reject_conflicts' needs key"),
        (lambda d: d["events"].update(key=["event_id"]), "events",
         "set duplicates: reject_conflicts or drop the key"),
        (lambda d: d["events"].update(key=["event_id"], duplicates="drop_exact"), "events",
         "(got 'drop_exact')"),
        (lambda d: d["events"].update(key=["id", "id"], duplicates="reject_conflicts"),
         "events", "names a column twice"),
        (lambda d: d["events"].update(duplicates="dedupe"), "events.duplicates", "keep_all"),
        (lambda d: d["events"].update(timezone="Mars/Olympus"), "events",
         "'Mars/Olympus' is not an IANA time zone name"),
        (lambda d: d["events"].update(timezone="localtime"), "events", "not an IANA"),
        (lambda d: d["events"].update(timestamp_kind="epoch"), "events.timestamp_kind",
         "epoch_seconds"),
    ])
    def test_error_names_file_and_field(self, tmp_path, mutate, field, expect):
        raw = copy.deepcopy(BASE)
        mutate(raw)
        path = _write(tmp_path, raw)

        with pytest.raises(SpecError) as err:
            load_spec(path)

        message = str(err.value)
        assert message.startswith(f"{path}: invalid dataset spec: ")
        assert f"{field}: " in message
        assert expect in message

    def test_missing_file_names_the_file(self, tmp_path):
        with pytest.raises(SpecError, match="nope.yaml: cannot read dataset spec"):
            load_spec(tmp_path / "nope.yaml")

    def test_top_level_list_is_refused(self, tmp_path):
        path = tmp_path / "list.yaml"
        path.write_text("- a\n- b\n")
        with pytest.raises(SpecError, match="expected a mapping at the top level, got list"):
            load_spec(path)
