"""Tiny data sets for job tests: a small spec, and reading back what a job wrote."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from churn.spec import dump_spec, load_spec
from churn.storage import Layout

E2E_SPEC = Path(__file__).resolve().parents[1] / "e2e" / "churn_e2e.yaml"


def write_small_spec(folder: Path, name: str, events: dict | None = None,
                     customers: dict | None = None) -> str:
    """The e2e spec with windows (2, 3) and a 2-day horizon, plus updates; returns its path.

    Args:
        folder: where to write `<name>.yaml`.
        name: the file's stem.
        events: fields of the spec's `events` section to replace.
        customers: fields of the spec's `customers` section to replace.
    """
    spec = load_spec(E2E_SPEC)
    spec = spec.model_copy(update={
        "events": spec.events.model_copy(update={"windows_days": (2, 3), **(events or {})}),
        "customers": spec.customers.model_copy(update=customers or {}),
        "label": spec.label.model_copy(update={"horizon_days": 2})})
    path = Path(folder) / f"{name}.yaml"
    path.write_text(dump_spec(spec))
    return str(path)


def read_partition(root: str | Path, area: str, ds: str, table: str | None = None
                   ) -> pd.DataFrame:
    """One written partition as a frame sorted by its rows (no index), for exact comparison."""
    frame = pd.read_parquet(Layout(str(root)).partition(area, ds, table))
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def assert_failed(error: Exception, root: str | Path, day: str, *names: str) -> str:
    """A failed job's message names every given string (table, day, file, column), and the
    day got no features partition; returns the message."""
    message = str(error)
    missing = [name for name in names if name not in message]
    assert missing == [], f"{message!r} lacks {missing}"
    assert not Path(Layout(str(root)).features(day)).exists()
    return message
