"""Synthetic churn data: `python -m churn.generate --root DIR --customers N --start D --days K`.

Writes, for each simulated day ds (each partition atomically through `atomic_partition`):

- `raw/events/ds=…/part-00000.<fmt>`: id, timestamp, event type, amount (names from the spec);
- `raw/customers/ds=…/part-00000.<fmt>`: the customers alive at the end of ds;
- `oracle/ds=…/part-00000.parquet`: id, `churn_probability` = the probability that the customer
  churns (emits its final `cancel` event) within (ds, ds + H], H = the spec's
  `label.horizon_days`: 1 - prod(1 - h_k) over the daily hazards h_k along the customer's
  expected path (see `churn.generate_model.churn_within`). This is exactly the probability of
  an `event` label on the churn event. For an `inactivity` label it is still the probability
  of churning, not of silence: the churner's `cancel` is itself an event in (ds, ds + H].
  A `column` label gets its column in the snapshot: the first value not in `positive` of
  ("No", "0", "false") for the customers who stay; churners leave the snapshot, which the label
  reads as positive (with horizon 0 they stay in their churn day's snapshot, flagged with the
  first positive value, and the oracle is then 1 for them and 0 for the rest);
- `faults.json` at the root: the faults injected (kind, ds, table, exact row counts, ids).

The simulation (see `churn.generate_model`) streams one day at a time, vectorised over all live
customers, so memory depends on the number of customers, not on the number of days. One seed
gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from churn import generate_model as gm
from churn.generate_faults import (EventColumns, FaultRecord, check_faults, check_fit, inject,
                                  parse_faults)
from churn.spec import DatasetSpec, EventsSpec, load_spec
from churn.storage import Layout, atomic_partition, day_number, ds_range, shift_ds, validate_ds
from churn.storage import filesystem, write_json_atomic

DEFAULT_SPEC = Path(__file__).resolve().parents[1] / "datasets" / "synthetic.yaml"
PART_FILE = "part-00000"


@dataclass(frozen=True)
class GenerateSummary:
    """What a `generate` run wrote."""

    root: str
    days: tuple[str, ...]                 # every simulated day, in order
    days_written: tuple[str, ...]         # days with raw partitions (missing_day removes one)
    rows: dict[str, int]                  # rows written per table: events, customers, oracle
    churned: int                          # customers who churned during the run
    churn_rate_30d: float                 # 1 - (1 - daily churn rate)^30
    faults: tuple[dict, ...] = ()         # FaultRecord dicts, also in `<root>/faults.json`
    paths: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Names:
    """Column names and formats the spec asks for."""

    spec: DatasetSpec
    id_width: int
    first_day: int            # days from 1970-01-01 to the first simulated day (day index 0)

    @property
    def event_columns(self) -> EventColumns:
        """The event columns faults work on."""
        ev = self.spec.events
        return EventColumns(self.spec.id_column, ev.timestamp, ev.type, ev.value,
                            self.churn_event)

    @property
    def negative(self) -> str:
        """The `column` label's value for customers who stay: one not listed as positive."""
        return next(v for v in ("No", "0", "false") if v not in self.spec.label.positive)

    @property
    def churn_event(self) -> str:
        """The event type a churner emits: the label's event type, else `cancel`."""
        label = self.spec.label
        return label.event_type if label.kind == "event" else gm.CANCEL


def generate(root: str, customers: int, start: str, days: int, seed: int,
             spec: str | Path | DatasetSpec = DEFAULT_SPEC, faults: tuple[str, ...] = (),
             fault_day: str | None = None, params: gm.SimParams | None = None) -> GenerateSummary:
    """Simulate `days` days from `start` and write raw events, customers snapshots and the oracle.

    Args:
        root: the data root (local folder or `s3://…`).
        customers: size of the initial customer base.
        start: first day, `YYYY-MM-DD`.
        days: number of days.
        seed: random seed (same seed, same bytes).
        spec: a spec file path or a loaded spec (column names and formats).
        faults: fault kinds to inject (see `churn.generate_faults.FAULT_KINDS`).
        fault_day: the day faults go into; default the middle day.
        params: simulation rates (defaults give ~15% churn in 30 days).

    Returns:
        The summary of what was written.
    """
    spec = spec if isinstance(spec, DatasetSpec) else load_spec(spec)
    _check_spec(spec)
    all_days = ds_range(start, shift_ds(start, days - 1)) if days > 0 else []
    names = _Names(spec, max(6, len(str(customers * 10))),
                   day_number(start))
    run = _Run(Layout(root), names, seed, check_faults(faults),
               _fault_day(faults, fault_day, all_days))
    check_fit(run.kinds, names.event_columns, spec.events.format)
    rng = np.random.default_rng(seed)
    sim = gm.start(rng, customers, params or gm.SimParams())
    for index, ds in enumerate(all_days):
        run.exposed += len(sim.pop)
        act = gm.step(rng, sim, index)
        run.churned += len(act.churners)
        run.write_raw(ds, index, act, sim.pop)
        run.write_oracle(ds, index, sim, act.churners)
    write_json_atomic(f"{run.layout.root}/faults.json",
                      {"seed": seed, "faults": [r.to_dict() for r in run.faults]})
    return run.summary(all_days)


def _fault_day(faults: tuple[str, ...], fault_day: str | None, days: list[str]) -> str | None:
    """The day faults go into: the one asked for (it must be generated) or the middle day."""
    if fault_day is None:
        return days[len(days) // 2] if days else None
    if faults and validate_ds(fault_day) not in days:
        raise ValueError(f"fault day {fault_day} is not among the generated days")
    return fault_day


def _check_spec(spec: DatasetSpec) -> None:
    """Refuse specs the generator cannot fill."""
    if spec.events is None or spec.customers is None:
        raise ValueError("the generator writes both 'events' and 'customers'; the spec lacks one")
    if spec.label.kind == "column" and spec.label.column in (
            *spec.customers.categorical, *spec.customers.numeric, spec.customers.signup):
        raise ValueError(f"label column {spec.label.column!r} clashes with a customers column")
    if len(spec.customers.categorical) > 3 or len(spec.customers.numeric) > 2:
        raise ValueError("the generator fills at most 3 categorical (plan, region, contract) and "
                         "2 numeric (age, monthly charges) customer columns")


@dataclass
class _Run:
    """One generate run: where and how it writes, and the counters it fills."""

    layout: Layout
    names: _Names
    seed: int
    kinds: tuple[str, ...]
    fault_day: str | None
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("events", "customers", "oracle"), 0))
    written: list[str] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    churned: int = 0
    exposed: int = 0

    def write_raw(self, ds: str, index: int, act: gm.DayActivity, pop: gm.Population) -> None:
        """Write day ds's events and customers partitions, with faults on the fault day."""
        events, extra = events_table(self.names, ds, act), []
        if self.kinds and ds == self.fault_day:
            fault_rng = np.random.default_rng([self.seed, 7919, index])
            day = inject(_as_strings(events), self.kinds, self.names.event_columns, ds,
                         self.names.spec.events.format, fault_rng)
            self.faults.extend(day.records)
            if day.skip:
                return
            events = pa.Table.from_pandas(day.frame, preserve_index=False)
            extra = day.extra_lines
        customers = customers_table(self.names, pop, act.churners)
        spec = self.names.spec
        _write_partition(self.layout.raw("events", ds), events, spec.events.format, extra,
                         marker=spec.events.ready.marker)
        _write_partition(self.layout.raw("customers", ds), customers, spec.customers.format,
                         marker=spec.customers.ready.marker)
        self.rows["events"] += events.num_rows
        self.rows["customers"] += customers.num_rows
        self.written.append(ds)

    def write_oracle(self, ds: str, index: int, sim: gm.Simulation,
                     churners: gm.Population) -> None:
        """Write day ds's oracle partition."""
        oracle = oracle_table(self.names, sim, index, churners)
        _write_partition(self.layout.oracle(ds), oracle, "parquet")
        self.rows["oracle"] += oracle.num_rows

    def summary(self, days: list[str]) -> GenerateSummary:
        """The run's summary."""
        daily = self.churned / self.exposed if self.exposed else 0.0
        paths = {t: self.layout.area("raw", t) for t in ("events", "customers")}
        paths.update(oracle=self.layout.area("oracle"), faults=f"{self.layout.root}/faults.json")
        return GenerateSummary(self.layout.root, tuple(days), tuple(self.written),
                               dict(self.rows), self.churned, 1.0 - (1.0 - daily) ** 30,
                               tuple(r.to_dict() for r in self.faults), paths)


def _id_strings(names: _Names, ids: np.ndarray) -> pa.Array:
    """Zero-padded id strings, e.g. 42 -> "000042"."""
    return pc.utf8_lpad(pa.array(ids, pa.int64()).cast(pa.string()), names.id_width, "0")


def _timestamps(ds: str, seconds: np.ndarray, events: EventsSpec) -> pa.Array:
    """Event timestamps within day ds (`seconds` of local wall-clock time in the spec's time
    zone), written as the spec's timestamp kind says."""
    kind = events.timestamp_kind
    if kind == "date":
        return pa.array(np.full(seconds.shape[0], ds, dtype=object), pa.string())
    if kind == "yyyymmdd":
        return pa.array(np.full(seconds.shape[0], ds.replace("-", ""), dtype=object), pa.string())
    wall_clock = seconds + day_number(ds) * 86_400
    if kind == "datetime":  # naive: wall-clock time in the spec's zone
        return pa.array(wall_clock, pa.int64()).cast(pa.timestamp("s")).cast(pa.string())
    # DST: a repeated hour takes standard time, a skipped one moves on; the day stays ds.
    instants = (pd.DatetimeIndex(pd.to_datetime(wall_clock, unit="s"))
                .tz_localize(events.timezone, ambiguous=np.zeros(len(wall_clock), dtype=bool),
                             nonexistent="shift_forward")
                .tz_convert("UTC").as_unit("s").asi8)
    unit = 1000 if kind == "epoch_millis" else 1
    return pa.array(instants * unit, pa.int64()).cast(pa.string())


def events_table(names: _Names, ds: str, act: gm.DayActivity) -> pa.Table:
    """One day's events as an Arrow table with the spec's column names."""
    ev = names.spec.events
    event_names = [gm.EVENT_TYPES[i] for i in range(len(gm.EVENT_TYPES))]
    event_names[-1] = names.churn_event
    columns = {names.spec.id_column: _id_strings(names, act.ids),
               ev.timestamp: _timestamps(ds, act.seconds, ev)}
    if ev.type:
        columns[ev.type] = pa.array(event_names, pa.string()).take(pa.array(act.kinds))
    if ev.value:
        columns[ev.value] = pa.array(act.amounts, pa.float64(), from_pandas=True)
    return pa.table(columns)


def customers_table(names: _Names, pop: gm.Population, churners: gm.Population) -> pa.Table:
    """The day's snapshot, sorted by id, with the spec's column names.

    The live customers; for a `column` label also its column (negative for them), and with
    horizon 0 also the day's churners, flagged positive (the label is read from that day).
    """
    cust, label = names.spec.customers, names.spec.label
    flagged = label.kind == "column" and label.horizon_days == 0
    rows = pop.extend(churners) if flagged else pop
    order = np.argsort(rows.ids, kind="stable")
    columns = {names.spec.id_column: _id_strings(names, rows.ids[order])}
    if cust.signup:
        days = pa.array(rows.signup[order].astype(np.int32) + names.first_day, pa.int32())
        columns[cust.signup] = days.cast(pa.date32()).cast(pa.string())
    values = {"plan": (gm.PLANS, rows.plan), "region": (gm.REGIONS, rows.region),
              "contract": (gm.CONTRACTS, rows.contract)}
    for column, (vocab, codes) in zip(cust.categorical, values.values()):
        columns[column] = pa.array(vocab, pa.string()).take(pa.array(codes[order]))
    for column, array in zip(cust.numeric, (rows.age.astype(np.int64), rows.price)):
        columns[column] = pa.array(array[order])
    if label.kind == "column":
        columns[label.column] = _label_values(names, len(pop), order)
    return pa.table(columns)


def _label_values(names: _Names, alive: int, order: np.ndarray) -> pa.Array:
    """The `column` label: negative for the first `alive` rows, positive for the rest."""
    positive = (np.arange(order.shape[0]) >= alive)[order].astype(np.int8)
    vocab = pa.array([names.negative, names.spec.label.positive[0]], pa.string())
    return vocab.take(pa.array(positive))


def oracle_table(names: _Names, sim: gm.Simulation, day: int, churners: gm.Population) -> pa.Table:
    """`id, churn_probability` for the day's snapshot rows at the end of day index `day`.

    A `column` label with horizon 0 is already known at the end of the day: 1 for the day's
    churners, 0 for the others. Otherwise `churn_within` the label's horizon.
    """
    label = names.spec.label
    if label.kind == "column" and label.horizon_days == 0:
        ids = np.concatenate([sim.pop.ids, churners.ids])
        prob = (np.arange(ids.shape[0]) >= len(sim.pop)).astype(np.float64)
    else:
        ids, prob = sim.pop.ids, gm.churn_within(sim, day, label.horizon_days)
    order = np.argsort(ids, kind="stable")
    return pa.table({names.spec.id_column: _id_strings(names, ids[order]),
                     "churn_probability": pa.array(prob[order], pa.float64())})


def _as_strings(table: pa.Table) -> pd.DataFrame:
    """The table as a frame of Python strings, None for null (what faults operate on)."""
    strings = pa.schema([(name, pa.string()) for name in table.column_names])
    return table.cast(strings).to_pandas().astype(object)


def _write_partition(uri: str, table: pa.Table, fmt: str, extra_lines: list[str] = (),
                     marker: str | None = None) -> None:
    """Write `table` as the only file of partition `uri`, atomically, then its ready `marker`.

    CSV and JSON lines files get `extra_lines` (raw text, e.g. malformed rows) at the end. The
    marker (e.g. `_SUCCESS`) is written last, as a producer does once its day is complete.
    """
    with atomic_partition(uri) as tmp:
        fs, path = filesystem(f"{tmp}/{PART_FILE}.{fmt}")
        if fmt == "parquet":
            pq.write_table(table, path, filesystem=fs)
        else:
            with fs.open_output_stream(path) as out:
                (_write_csv if fmt == "csv" else _write_jsonl)(table, out)
                out.write("".join(line + "\n" for line in extra_lines).encode())
        if marker:
            fs.open_output_stream(f"{path.rpartition('/')[0]}/{marker}").close()


def _write_csv(table: pa.Table, out: pa.NativeFile) -> None:
    """CSV with a plain header and unquoted values (our values never contain commas)."""
    out.write((",".join(table.column_names) + "\n").encode())
    if table.num_rows:
        options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
        pa_csv.write_csv(table, out, options)


def _write_jsonl(table: pa.Table, out: pa.NativeFile) -> None:
    """One JSON object per line, nulls as null."""
    for batch in table.to_batches(max_chunksize=65_536):
        rows = batch.to_pylist()
        out.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode())


def _fault_list(text: str) -> tuple[str, ...]:
    """argparse type for `--faults`: shows the reason when a kind is unknown."""
    try:
        return parse_faults(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line options."""
    parser = argparse.ArgumentParser(prog="python -m churn.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="data root (folder or s3://bucket/prefix)")
    parser.add_argument("--customers", type=int, required=True, help="initial customer base")
    parser.add_argument("--start", required=True, type=validate_ds, help="first day YYYY-MM-DD")
    parser.add_argument("--days", type=int, required=True, help="number of days")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--spec", default=str(DEFAULT_SPEC), help="dataset spec YAML")
    parser.add_argument("--faults", type=_fault_list, default=(), help="fault kinds, comma list")
    parser.add_argument("--fault-day", type=validate_ds, default=None,
                        help="day to inject faults into (default: the middle day)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> GenerateSummary:
    """The command line entry point; prints a short summary."""
    args = _parse_args(argv)
    summary = generate(args.root, args.customers, args.start, args.days, args.seed,
                       spec=args.spec, faults=args.faults, fault_day=args.fault_day)
    first, last = (summary.days[0], summary.days[-1]) if summary.days else ("-", "-")
    print(f"days: {len(summary.days)} ({first} .. {last}), "
          f"written: {len(summary.days_written)}")
    print("rows: " + ", ".join(f"{k}={v:,}" for k, v in summary.rows.items()))
    print(f"churned: {summary.churned:,}, 30-day churn rate: {summary.churn_rate_30d:.1%}")
    for fault in summary.faults:
        print(f"fault: {fault['kind']} on {fault['ds']} ({fault['table']}): {fault['rows']} rows")
    for name, path in summary.paths.items():
        print(f"{name}: {path}")
    return summary


if __name__ == "__main__":
    main()
