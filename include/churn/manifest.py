"""Run fragments: one small JSON per (day, step) under `runs/ds=…/<step>.json`.

Each step writes its own fragment atomically; the DAG's publish step merges them into
`runs/ds=…/manifest.json`. Fragments hold counts, timings and versions, never data.
"""

from __future__ import annotations

from churn.storage import Layout, write_json_atomic
from churn.versions import package_version


def fragment(step: str, ds: str, **fields: object) -> dict:
    """A fragment payload: the step, the day, the `churn` package version and the step's own
    fields."""
    return {"step": step, "ds": ds, "package_version": package_version(), **fields}


def ingest_fragment(ds: str, tables: dict[str, dict | None], max_reject_rate: float,
                    status: str) -> dict:
    """The `ingest` fragment of one day.

    Args:
        ds: the day.
        tables: per table the counts (`DayCounts.as_dict()`), or None for a missing partition.
        max_reject_rate: the limit the day was checked against.
        status: `ok`, or `failed` when a table went over the limit.

    Returns:
        The payload; each present table satisfies `rows_in == rows_out + rows_rejected`.
    """
    shown = {t: (c if c is not None else {"missing": True}) for t, c in tables.items()}
    return fragment("ingest", ds, tables=shown, max_reject_rate=max_reject_rate, status=status)


def write_fragment(layout: Layout, ds: str, step: str, payload: dict) -> str:
    """Write `runs/ds=…/<step>.json` atomically; returns its path."""
    uri = layout.run_fragment(ds, step)
    write_json_atomic(uri, payload)
    return uri

