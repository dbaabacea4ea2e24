"""Tiny data sets for job tests: a small spec, and reading back what a job wrote."""

from __future__ import annotations

import shutil
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


def tree_bytes(folder: str | Path) -> dict[str, bytes]:
    """Every file under `folder` (path relative to it) -> its bytes; empty when it is absent."""
    base = Path(folder)
    return {p.relative_to(base).as_posix(): p.read_bytes()
            for p in sorted(base.rglob("*")) if p.is_file()}


def seed_partition(source: str | Path, target: str | Path) -> dict[str, bytes]:
    """Copy a partition a good run wrote to `target` (for a job that must leave it alone).

    Returns:
        `tree_bytes(target)`, to compare with after the job.
    """
    shutil.copytree(source, target)
    seeded = tree_bytes(target)
    assert any(name.endswith(".parquet") for name in seeded), f"{source} holds no Parquet file"
    return seeded


def assert_failed(error: Exception, root: str | Path, day: str, *names: str,
                  seeded: dict[str, bytes]) -> str:
    """A failed job's message names every given string (table, day, file, column), and the
    day's features partition a good run left (`seeded`, see `seed_partition`) is as before,
    byte for byte. Returns the message."""
    message = str(error)
    missing = [name for name in names if name not in message]
    assert missing == [], f"{message!r} lacks {missing}"
    features = Path(Layout(str(root)).features(day))
    found = tree_bytes(features)
    assert sorted(found) == sorted(seeded), f"the failed job changed the files of {features}"
    rewritten = [name for name, data in seeded.items() if found[name] != data]
    assert rewritten == [], f"the failed job rewrote {rewritten} in {features}"
    return message
