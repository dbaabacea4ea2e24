"""Faults the generator can inject into one day's raw events, each touching a known number of rows.

Every fault returns a `FaultRecord` saying what it did (kind, rows touched, the affected ids), so
tests of validation and quarantine can assert exact counts. Faults work on the day's events as a
pandas frame of strings (None = null); `malformed_rows` adds raw text lines the writer appends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

FAULT_KINDS = ("malformed_rows", "wrong_types", "missing_column", "null_ids", "duplicate_rows",
               "future_dated", "empty_day", "missing_day")
MALFORMED_ROWS, WRONG_AMOUNTS, WRONG_TIMESTAMPS = 5, 3, 2
NULL_IDS, DUPLICATE_ROWS, FUTURE_DATED = 3, 4, 3


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault: where, what, how many rows."""

    kind: str
    ds: str
    table: str
    rows: int
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class EventColumns:
    """The event table's column names, from the spec."""

    id: str
    timestamp: str
    type: str | None
    value: str | None
    churn_event: str = "cancel"   # the event type faults never touch


@dataclass
class FaultedDay:
    """One day's events after fault injection: the frame, raw extra lines, and the records."""

    frame: pd.DataFrame
    extra_lines: list[str] = field(default_factory=list)
    records: list[FaultRecord] = field(default_factory=list)
    skip: bool = False


def parse_faults(text: str | None) -> tuple[str, ...]:
    """Parse `--faults a,b` into a tuple, refusing unknown kinds with ValueError."""
    return check_faults(k.strip() for k in (text or "").split(",") if k.strip())


def check_faults(kinds: Iterable[str]) -> tuple[str, ...]:
    """The fault kinds as a tuple; ValueError naming any unknown kind."""
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; choose from {', '.join(FAULT_KINDS)}")
    return kinds


def check_fit(kinds: tuple[str, ...], cols: EventColumns, fmt: str) -> None:
    """Refuse, before anything is written, faults the events table cannot carry."""
    if "malformed_rows" in kinds and fmt not in ("csv", "jsonl"):
        raise ValueError(f"fault malformed_rows needs a csv or jsonl events table, not {fmt}")
    if "missing_column" in kinds and cols.value is None:
        raise ValueError("fault missing_column needs an events value column in the spec")


def inject(frame: pd.DataFrame, kinds: tuple[str, ...], cols: EventColumns, ds: str, fmt: str,
           rng: np.random.Generator) -> FaultedDay:
    """Apply `kinds` to one day's events.

    Row-level faults touch disjoint, randomly chosen rows that are not churn (`cancel`) events,
    so each count is exact and no churn signal is destroyed.

    Args:
        frame: the day's events, every column as strings (None for null).
        kinds: fault kinds to apply, in this order.
        cols: the event column names.
        ds: the partition day.
        fmt: the file format (`malformed_rows` needs csv or jsonl).
        rng: random generator of the fault day.

    Returns:
        The faulted frame, extra raw lines and one record per fault.
    """
    check_fit(kinds, cols, fmt)
    day = FaultedDay(frame.copy())
    pool = _candidate_rows(day.frame, cols, rng)
    for kind in kinds:
        record = _APPLY[kind](day, cols, ds, fmt, pool)
        day.records.append(record)
    return day


def _candidate_rows(frame: pd.DataFrame, cols: EventColumns, rng: np.random.Generator) -> list:
    """Row labels that faults may touch, shuffled; faults pop from it so rows never overlap."""
    ok = np.ones(len(frame), dtype=bool)
    if cols.type is not None:
        ok &= (frame[cols.type] != cols.churn_event).to_numpy()
    labels = frame.index[ok].to_numpy()
    return list(rng.permutation(labels))


def _take(pool: list, n: int, kind: str, where: Callable[[object], bool] | None = None) -> list:
    """Pop `n` rows from the pool (those satisfying `where` when given)."""
    chosen = [r for r in pool if where is None or where(r)][:n]
    if len(chosen) < n:
        raise ValueError(f"fault {kind} needs {n} rows, the day has only {len(chosen)}")
    for r in chosen:
        pool.remove(r)
    return chosen


def _ids(frame: pd.DataFrame, rows: list, cols: EventColumns) -> list[str | None]:
    """Ids of the given rows."""
    return [frame.at[r, cols.id] for r in rows]


def _malformed_rows(day: FaultedDay, cols: EventColumns, ds: str, fmt: str,
                    pool: list) -> FaultRecord:
    """Append 5 lines with too few or too many fields, or no structure at all."""
    row = day.frame.loc[_take(pool, 1, "malformed_rows")[0]]
    values = [str(v) if v is not None else "" for v in row.tolist()]
    if fmt == "csv":
        lines = [",".join(values[:2]), ",".join(values[:1]), ",".join(values + ["extra"]),
                 ",".join(values + ["x", "y"]), "#%&garbage line without separators%&#"]
    else:
        lines = ['{"' + cols.id + '": "' + values[0] + '", ', "not json at all",
                 "[1, 2, 3]", '{"unterminated": "string}', "{{{"]
    day.extra_lines.extend(lines)
    return FaultRecord("malformed_rows", ds, "events", len(lines), {"lines": lines})


def _wrong_types(day: FaultedDay, cols: EventColumns, ds: str, fmt: str,
                 pool: list) -> FaultRecord:
    """3 non-numeric amounts and 2 unparseable timestamps (5 distinct rows)."""
    frame, detail = day.frame, {}
    if cols.value is not None:
        rows = _take(pool, WRONG_AMOUNTS, "wrong_types",
                     where=lambda r: frame.at[r, cols.value] is not None)
        frame.loc[rows, cols.value] = ["abc", "1.2.3", "ten"][:len(rows)]
        detail["bad_value_ids"] = _ids(frame, rows, cols)
    rows = _take(pool, WRONG_TIMESTAMPS, "wrong_types")
    frame.loc[rows, cols.timestamp] = ["not-a-timestamp", f"{ds} 25:61:00"][:len(rows)]
    detail["bad_timestamp_ids"] = _ids(frame, rows, cols)
    count = len(detail.get("bad_value_ids", [])) + len(rows)
    return FaultRecord("wrong_types", ds, "events", count, detail)


def _missing_column(day: FaultedDay, cols: EventColumns, ds: str, fmt: str,
                    pool: list) -> FaultRecord:
    """Drop the value column for the whole day (every row counts)."""
    day.frame = day.frame.drop(columns=[cols.value])
    return FaultRecord("missing_column", ds, "events", len(day.frame), {"column": cols.value})


def _null_ids(day: FaultedDay, cols: EventColumns, ds: str, fmt: str, pool: list) -> FaultRecord:
    """Blank the id of 3 rows."""
    rows = _take(pool, NULL_IDS, "null_ids")
    detail = {"original_ids": _ids(day.frame, rows, cols)}
    day.frame.loc[rows, cols.id] = None
    return FaultRecord("null_ids", ds, "events", len(rows), detail)


def _duplicate_rows(day: FaultedDay, cols: EventColumns, ds: str, fmt: str,
                    pool: list) -> FaultRecord:
    """Repeat 4 rows exactly, each next to its original."""
    rows = _take(pool, DUPLICATE_ROWS, "duplicate_rows")
    copies = day.frame.loc[rows]
    day.frame = pd.concat([day.frame, copies]).sort_index(kind="stable")
    return FaultRecord("duplicate_rows", ds, "events", len(rows),
                       {"duplicated_ids": _ids(copies, list(copies.index), cols)})


def _future_dated(day: FaultedDay, cols: EventColumns, ds: str, fmt: str,
                  pool: list) -> FaultRecord:
    """Move 3 rows to the next 1, 2, 3 days (same time of day)."""
    rows = _take(pool, FUTURE_DATED, "future_dated")
    base = dt.date.fromisoformat(ds)
    stamps = []
    for offset, r in enumerate(rows, start=1):
        old = day.frame.at[r, cols.timestamp]
        later = (base + dt.timedelta(days=offset)).isoformat()
        stamps.append(later + old[10:] if len(old) > 10 else later)
    day.frame.loc[rows, cols.timestamp] = stamps
    return FaultRecord("future_dated", ds, "events", len(rows),
                       {"ids": _ids(day.frame, rows, cols), "timestamps": stamps})


def _empty_day(day: FaultedDay, cols: EventColumns, ds: str, fmt: str, pool: list) -> FaultRecord:
    """Keep the header only; the record counts the rows removed."""
    removed = len(day.frame)
    day.frame = day.frame.iloc[:0]
    pool.clear()
    return FaultRecord("empty_day", ds, "events", removed, {"rows_removed": removed})


def _missing_day(day: FaultedDay, cols: EventColumns, ds: str, fmt: str,
                 pool: list) -> FaultRecord:
    """Write no raw partition at all (events nor customers) for the day."""
    day.skip = True
    return FaultRecord("missing_day", ds, "events", len(day.frame),
                       {"tables": ["events", "customers"]})


_APPLY = {
    "malformed_rows": _malformed_rows, "wrong_types": _wrong_types,
    "missing_column": _missing_column, "null_ids": _null_ids, "duplicate_rows": _duplicate_rows,
    "future_dated": _future_dated, "empty_day": _empty_day, "missing_day": _missing_day,
}
