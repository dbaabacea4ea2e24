"""Point-in-time features per customer as of the end of each day (pure Spark transforms).

Days are handled as integer day numbers (`_day`, days since 1970-01-01). Valid events are first
reduced to the stored daily activity (`activity_rows`, written once per raw day as
`activity/events/ds=…`): per (customer, day) a total row and one row per event type, each with
its event count and value sum. Windows are built from those rows alone: pivoted to one row per
(customer, day) (`daily_activity`), then for every (customer, feature day) of the population,
windows over the day numbers (`rangeBetween(-(w - 1), 0)`) sum them. One pass serves one day or a
whole range, and a row of day D only ever sees rows dated <= D, so adding later rows cannot
change an earlier day.

Feature columns are fixed by the spec (windows x event types), so every day has the same schema:
- `n_events_{w}d`, `n_{type}_{w}d`: event counts (long); `sum_{value}_{w}d`,
  `sum_{value}_{type}_{w}d`: value sums (double);
- `days_since_last_event`, `days_since_last_{type}`: recency in days (double), capped at the
  longest window (no event in the window reads as the longest window);
- `trend_{short}d_{long}d`: event rate in the shortest window ÷ rate in the longest (0 when none);
- `tenure_days` (from the snapshot's signup column), snapshot numerics (double) and categoricals
  (string; a missing value reads `__missing__`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from churn.spec import DatasetSpec
from churn.storage import day_number as ds_day_number

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

DAY = "_day"
PROBE = "_probe"
EPOCH = "1970-01-01"
MISSING_CATEGORY = "__missing__"
ALL = "events"
# Columns of the stored activity (`activity_rows`), besides the id and `ds`.
TYPE, COUNT, VALUE = "event_type", "events", "value_sum"


def safe_name(value: str) -> str:
    """A column-name-safe form of an event type: lower case, `[a-z0-9_]` only."""
    cleaned = re.sub(r"[^a-z0-9]+", "_", value.strip().lower()).strip("_")
    return cleaned or "blank"


def day_number(col: Column) -> Column:
    """Days since 1970-01-01 of a date, timestamp or `YYYY-MM-DD` string column."""
    from pyspark.sql import functions as F

    return F.datediff(F.to_date(col), F.lit(EPOCH).cast("date"))


def day_string(col: Column) -> Column:
    """The `YYYY-MM-DD` string of a day number."""
    from pyspark.sql import functions as F

    return F.date_format(F.date_add(F.lit(EPOCH).cast("date"), col.cast("int")), "yyyy-MM-dd")


def day_numbers(days: Iterable[str]) -> list[int]:
    """Day numbers of `YYYY-MM-DD` strings (same numbering as `day_number`)."""
    return sorted(ds_day_number(d) for d in days)


def event_types(spec: DatasetSpec, activity: DataFrame | None = None) -> list[str]:
    """The event types that get their own feature columns, sorted.

    They come from the spec (`events.types`) so the schema is the same every day. A spec without
    that list falls back to the distinct types in `activity` (then one run's schema depends on
    its data: declare the list for daily runs).
    """
    ev = spec.events
    if ev is None or ev.type is None:
        return []
    if ev.types:
        return sorted(set(ev.types))
    if activity is None:
        return []
    return sorted(r[0] for r in activity.select(TYPE).distinct().collect() if r[0] is not None)


def _counted(name: str) -> str:
    return f"_n_{name}"


def _summed(name: str) -> str:
    return f"_v_{name}"


def activity_rows(events: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Reduce valid events to the daily activity that is stored once per raw day.

    Every event type is kept (not only the spec's `types`), so any later choice of types, and
    the `event` label's type, can be built from the stored rows alone.

    Args:
        events: typed valid events with `_ds` (from `churn.ingest.validate`).
        spec: the dataset spec.

    Returns:
        `[id, ds, event_type, events long, value_sum double?]`: per (customer, day) one row with
        `event_type` null for all events, plus one per event type (`value_sum` only with a
        value column; a null value counts as 0).
    """
    from pyspark.sql import functions as F

    ev, keys = spec.events, [F.col(spec.id_column), F.col("_ds").alias("ds")]
    aggs = [F.count(F.lit(1)).alias(COUNT)]
    aggs += [F.sum(F.coalesce(F.col(ev.value), F.lit(0.0))).alias(VALUE)] if ev.value else []
    names = [spec.id_column, "ds", TYPE, COUNT] + ([VALUE] if ev.value else [])
    totals = events.groupBy(*keys).agg(*aggs).withColumn(TYPE, F.lit(None).cast("string"))
    if not ev.type:
        return totals.select(*names)
    per_type = events.groupBy(*keys, F.col(ev.type).alias(TYPE)).agg(*aggs)
    return totals.select(*names).unionByName(per_type.select(*names))


def daily_activity(activity: DataFrame, spec: DatasetSpec, types: Sequence[str]) -> DataFrame:
    """Pivot stored activity to one row per (customer, day): counts and value sums per type.

    Args:
        activity: `activity_rows` rows.
        spec: the dataset spec.
        types: the event types with their own columns (others count only in the totals).

    Returns:
        `[id, _day, _n_events, _v_events, _n_<type>, _v_<type> ...]` (`_v_*` only with a value).
    """
    from pyspark.sql import functions as F

    has_value = spec.events.value is not None
    aggs = []
    for key, rows in [(ALL, F.col(TYPE).isNull())] + [
            (safe_name(t), F.col(TYPE) == F.lit(t)) for t in types]:
        aggs.append(F.sum(F.when(rows, F.col(COUNT)).otherwise(0)).cast("long").alias(
            _counted(key)))
        if has_value:
            aggs.append(F.sum(F.when(rows, F.col(VALUE)).otherwise(0.0)).alias(_summed(key)))
    return activity.groupBy(spec.id_column, day_number(F.col("ds")).alias(DAY)).agg(*aggs)


def activity_population(daily: DataFrame, spec: DatasetSpec, days: Iterable[str]) -> DataFrame:
    """Customers with any event in the longest window ending each day: `[id, _day]`."""
    from pyspark.sql import functions as F

    wanted = day_numbers(days)
    span = spec.events.longest_window - 1
    reach = F.explode(F.sequence(F.col(DAY), F.col(DAY) + F.lit(span))).alias("_target")
    exploded = daily.where(F.col(DAY).between(wanted[0] - span, wanted[-1])).select(
        spec.id_column, reach)
    return (exploded.where(F.col("_target").isin(wanted)).select(
        spec.id_column, F.col("_target").alias(DAY)).distinct())


def snapshot_population(customers: DataFrame, spec: DatasetSpec, days: Iterable[str]) -> DataFrame:
    """Customers in the snapshot of each day: `[id, _day]`."""
    from pyspark.sql import functions as F

    return (customers.where(F.col("_ds").isin(sorted(set(days))))
            .select(spec.id_column, day_number(F.col("_ds")).alias(DAY)).distinct())


def population(spec: DatasetSpec, days: Iterable[str], customers: DataFrame | None,
               daily: DataFrame | None) -> DataFrame:
    """The customers scored on each day: the day's snapshot, else the recently active ones."""
    if spec.customers is not None:
        return snapshot_population(customers, spec, days)
    return activity_population(daily, spec, days)


def feature_names(spec: DatasetSpec, types: Sequence[str]) -> list[str]:
    """Every feature column, in output order (after the id and `ds`)."""
    names = _window_names(spec, types) + _recency_names(spec, types)
    ev = spec.events
    if ev is not None and len(ev.windows_days) > 1:
        names.append(f"trend_{ev.windows_days[0]}d_{ev.windows_days[-1]}d")
    names += _snapshot_names(spec)
    return names


def _window_names(spec: DatasetSpec, types: Sequence[str]) -> list[str]:
    ev = spec.events
    if ev is None:
        return []
    names = []
    for w in ev.windows_days:
        names.append(f"n_events_{w}d")
        names += [f"sum_{ev.value}_{w}d"] if ev.value else []
        for t in map(safe_name, types):
            names.append(f"n_{t}_{w}d")
            names += [f"sum_{ev.value}_{t}_{w}d"] if ev.value else []
    return names


def _recency_names(spec: DatasetSpec, types: Sequence[str]) -> list[str]:
    if spec.events is None:
        return []
    return ["days_since_last_event"] + [f"days_since_last_{safe_name(t)}" for t in types]


def _snapshot_names(spec: DatasetSpec) -> list[str]:
    cu = spec.customers
    if cu is None:
        return []
    label_col = spec.label.column if spec.label.kind == "column" else None
    attrs = [c for c in (*cu.numeric, *cu.categorical) if c != label_col]
    return (["tenure_days"] if cu.signup else []) + attrs


def window_features(daily: DataFrame, probes: DataFrame, spec: DatasetSpec,
                    types: Sequence[str]) -> DataFrame:
    """Window counts, sums, recency and trend for each (customer, day) of `probes`.

    Args:
        daily: `daily_activity` rows.
        probes: the population `[id, _day]`.
        spec: the dataset spec.
        types: the event types with their own columns.

    Returns:
        `[id, _day, <window, recency and trend features>]`, one row per probe.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ev, idc = spec.events, spec.id_column
    keys = [ALL, *map(safe_name, types)]
    measures = [c for c in daily.columns if c not in (idc, DAY)]
    zeros = [F.lit(0).cast(daily.schema[c].dataType).alias(c) for c in measures]
    stacked = daily.withColumn(PROBE, F.lit(False)).unionByName(
        probes.select(idc, DAY, *zeros, F.lit(True).alias(PROBE)))
    by_day = Window.partitionBy(idc).orderBy(DAY)
    out = []
    for w in ev.windows_days:
        frame = by_day.rangeBetween(-(w - 1), 0)
        for key, name in zip(keys, ["events", *map(safe_name, types)]):
            out.append(F.sum(_counted(key)).over(frame).alias(f"n_{name}_{w}d"))
            if ev.value:
                suffix = f"_{name}" if key != ALL else ""
                out.append(F.sum(_summed(key)).over(frame).alias(f"sum_{ev.value}{suffix}_{w}d"))
    longest = by_day.rangeBetween(-(ev.longest_window - 1), 0)
    for key, name in zip(keys, ["event", *map(safe_name, types)]):
        last = F.max(F.when(F.col(_counted(key)) > 0, F.col(DAY))).over(longest)
        recency = F.coalesce(F.col(DAY) - last, F.lit(ev.longest_window))
        out.append(recency.cast("double").alias(f"days_since_last_{name}"))
    windowed = stacked.select(idc, DAY, PROBE, *out).where(F.col(PROBE)).drop(PROBE)
    return _with_trend(windowed, spec)


def _with_trend(frame: DataFrame, spec: DatasetSpec) -> DataFrame:
    from pyspark.sql import functions as F

    windows = spec.events.windows_days
    if len(windows) < 2:
        return frame
    short, long_ = windows[0], windows[-1]
    short_rate = F.col(f"n_events_{short}d") / F.lit(float(short))
    long_rate = F.col(f"n_events_{long_}d") / F.lit(float(long_))
    trend = F.when(long_rate > 0, short_rate / long_rate).otherwise(F.lit(0.0))
    return frame.withColumn(f"trend_{short}d_{long_}d", trend)


def snapshot_features(customers: DataFrame, spec: DatasetSpec) -> DataFrame:
    """The snapshot attributes of each (customer, day): tenure, numerics, categoricals.

    Args:
        customers: typed valid snapshot rows with `_ds`.
        spec: the dataset spec.

    Returns:
        `[id, _day, tenure_days?, <numeric> double, <categorical> string]`.
    """
    from pyspark.sql import functions as F

    cu = spec.customers
    day = day_number(F.col("_ds"))
    cols = [F.col(spec.id_column), day.alias(DAY)]
    if cu.signup:
        tenure = F.datediff(F.to_date(F.col("_ds")), F.col(cu.signup)).cast("double")
        cols.append(tenure.alias("tenure_days"))
    for name in _snapshot_names(spec):
        if name in cu.numeric:
            cols.append(F.col(name).cast("double").alias(name))
        elif name in cu.categorical:
            cols.append(F.coalesce(F.col(name), F.lit(MISSING_CATEGORY)).alias(name))
    return customers.select(*cols)


def build_features(spec: DatasetSpec, days: Iterable[str], activity: DataFrame | None,
                   customers: DataFrame | None, types: Sequence[str]) -> DataFrame:
    """Features of every population member for every day in `days`, as of the end of each day.

    Args:
        spec: the dataset spec.
        days: the feature days (`YYYY-MM-DD`).
        activity: `activity_rows` of the days the windows cover (None without events).
        customers: typed valid snapshot rows with `_ds` (None when the spec has no customers).
        types: the event types with their own columns (`event_types`).

    Returns:
        `[id string, ds string, <feature_names(spec, types)>]`, one row per (customer, day).
    """
    from pyspark.sql import functions as F

    days = sorted(set(days))
    daily = daily_activity(activity, spec, types) if spec.events else None
    probes = population(spec, days, customers, daily)
    frame = window_features(daily, probes, spec, types) if spec.events else probes
    if spec.customers is not None:
        snap = snapshot_features(customers.where(F.col("_ds").isin(days)), spec)
        frame = frame.join(snap, [spec.id_column, DAY], "left")
    names = feature_names(spec, types)
    return frame.select(spec.id_column, day_string(F.col(DAY)).alias("ds"), *names)
