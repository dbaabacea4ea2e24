"""Where a table's history starts: declared in the spec, else recorded once, moved only earlier."""

from __future__ import annotations

import pytest

from churn import history
from churn.spec import DatasetSpec, SpecError, dump_spec, load_spec
from churn.storage import Layout, read_json


def _spec(**top) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "t", "id_column": "customer_id",
        "events": {"timestamp": "event_ts", "windows_days": [3, 7]},
        "customers": {"numeric": ["age"]},
        "label": {"kind": "inactivity", "horizon_days": 2}, **top})


class TestFirstDays:
    def test_the_first_build_records_each_tables_oldest_partition(self, tmp_path):
        layout = Layout(str(tmp_path))
        first = history.first_days(layout, _spec(), {"events": ["2024-01-03", "2024-01-05"],
                                                     "customers": ["2024-01-04"]})
        assert first == {"events": "2024-01-03", "customers": "2024-01-04"}
        assert read_json(layout.history()) == {"first_day": first}

    def test_losing_the_oldest_days_keeps_the_recorded_start(self, tmp_path):
        layout = Layout(str(tmp_path))
        history.first_days(layout, _spec(), {"events": ["2024-01-03"], "customers": []})
        later = history.first_days(layout, _spec(), {"events": ["2024-01-09"],
                                                     "customers": ["2024-01-09"]})
        assert later == {"events": "2024-01-03", "customers": "2024-01-09"}

    def test_older_deliveries_move_the_start_earlier(self, tmp_path):
        layout = Layout(str(tmp_path))
        history.first_days(layout, _spec(), {"events": ["2024-01-03"]})
        moved = history.first_days(layout, _spec(), {"events": ["2023-12-30", "2024-01-03"]})
        assert moved == {"events": "2023-12-30"}
        assert history.read_recorded(layout) == {"events": "2023-12-30"}

    def test_a_declared_start_wins_and_records_nothing(self, tmp_path):
        layout = Layout(str(tmp_path))
        first = history.first_days(layout, _spec(history_start="2024-02-01"),
                                   {"events": ["2024-01-03"], "customers": ["2024-01-03"]})
        assert first == {"events": "2024-02-01", "customers": "2024-02-01"}
        assert history.read_recorded(layout) == {}


class TestDeclaredStart:
    def test_round_trips_through_the_spec_file(self, tmp_path):
        path = tmp_path / "s.yaml"
        path.write_text(dump_spec(_spec(history_start="2024-02-01")))
        assert load_spec(path).history_start == "2024-02-01"

    @pytest.mark.parametrize("value", ["2024-2-1", "2024-02-30", "yesterday"])
    def test_a_bad_date_names_the_field(self, tmp_path, value):
        path = tmp_path / "s.yaml"
        path.write_text(dump_spec(_spec()) + f"history_start: '{value}'\n")
        with pytest.raises(SpecError, match="history_start"):
            load_spec(path)
