"""Where each raw table's history starts, so missing history is never mistaken for no history.

A window that reaches before a table's first day is short by definition: the data starts
there. A raw day missing after it is a gap, and fails the run that needs it. Without a fixed
first day, deleting or losing the early raw partitions would silently move the start forward:
a 90-day window would be built from one day of data and no run would notice.

The first day is the spec's `history_start` when declared. Otherwise it is recorded in
`runs/_history.json` by the first run that builds features, as the table's oldest delivered
partition, and only ever moves earlier (a producer delivering older days extends the history).
"""

from __future__ import annotations

import logging

from churn.spec import DatasetSpec
from churn.storage import Layout, exists, read_json, write_json_atomic

LOG = logging.getLogger(__name__)


def read_recorded(layout: Layout) -> dict[str, str]:
    """The recorded first day per table (empty before the first build)."""
    uri = layout.history()
    return dict(read_json(uri)["first_day"]) if exists(uri) else {}


def first_days(layout: Layout, spec: DatasetSpec, available: dict[str, list[str]]
               ) -> dict[str, str]:
    """Each table's first history day; records it when it is new or moved earlier.

    Args:
        layout: the storage layout (holds the record).
        spec: the dataset spec (`history_start` wins when declared).
        available: the raw partitions present per table (`list_partitions`).

    Returns:
        Table -> first day, for every table with a declared, recorded or delivered day.
    """
    if spec.history_start:
        return {table: spec.history_start for table in spec.tables}
    recorded = read_recorded(layout)
    first = {}
    for table in spec.tables:
        candidates = [d for d in (recorded.get(table), min(available.get(table) or [""])) if d]
        if candidates:
            first[table] = min(candidates)
    if first != recorded:
        LOG.info("history starts at %s (recorded in %s; was %s)", first, layout.history(),
                 recorded or "not recorded")
        write_json_atomic(layout.history(), {"first_day": first})
    return first
