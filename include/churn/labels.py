"""Churn labels for matured days (pure Spark transforms).

The label of day L looks only at (L, L + horizon]:
- `inactivity`: 1 when the customer has no event in (L, L + H];
- `event`: 1 when the customer has an event of type `label.event_type` in (L, L + H];
- `column`: 1 when the snapshot of L + H (of L itself for H = 0) holds a value of `label.column`
  listed in `label.positive`; a customer absent from the L + H snapshot has left, so 1 too.
The population of L is the same as the features' (`churn.features.population`), so every label
row has a feature row. Callers pass only matured days (L + H <= the newest raw day).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from churn.features import COUNT, DAY, PROBE, TYPE, day_number, day_string, population
from churn.spec import DatasetSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

LABEL = "label"
_HITS = "_hits"


def label_activity(activity: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Events that count for the label, per (customer, day), from the stored activity
    (`churn.features.activity_rows`): `[id, _day, _hits]`.

    Every event for `inactivity`; events of `label.event_type` for `event`.
    """
    from pyspark.sql import functions as F

    if spec.label.kind == "event":
        rows = F.col(TYPE) == F.lit(spec.label.event_type)
    else:
        rows = F.col(TYPE).isNull()
    return activity.where(rows).select(spec.id_column, day_number(F.col("ds")).alias(DAY),
                                       F.col(COUNT).alias(_HITS))


def future_hits(activity: DataFrame, probes: DataFrame, spec: DatasetSpec) -> DataFrame:
    """For each probe `[id, _day]`, how many label events fall in (day, day + horizon]."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    idc, horizon = spec.id_column, spec.label.horizon_days
    stacked = activity.withColumn(PROBE, F.lit(False)).unionByName(
        probes.select(idc, DAY, F.lit(0).cast("long").alias(_HITS), F.lit(True).alias(PROBE)))
    ahead = Window.partitionBy(idc).orderBy(DAY).rangeBetween(1, horizon)
    hits = F.coalesce(F.sum(_HITS).over(ahead), F.lit(0))
    return stacked.select(idc, DAY, PROBE, hits.alias(_HITS)).where(F.col(PROBE)).drop(PROBE)


def event_labels(activity: DataFrame, probes: DataFrame, spec: DatasetSpec) -> DataFrame:
    """`inactivity` / `event` labels of each probe: `[id, _day, label]`."""
    from pyspark.sql import functions as F

    counted = future_hits(label_activity(activity, spec), probes, spec)
    if spec.label.kind == "inactivity":
        label = F.col(_HITS) == 0
    else:
        label = F.col(_HITS) > 0
    return counted.select(spec.id_column, DAY, label.cast("int").alias(LABEL))


def column_labels(customers: DataFrame, probes: DataFrame, spec: DatasetSpec) -> DataFrame:
    """`column` labels of each probe from the snapshot of day + horizon: `[id, _day, label]`."""
    from pyspark.sql import functions as F

    idc, lab = spec.id_column, spec.label
    later = customers.select(
        idc, (day_number(F.col("_ds")) - F.lit(lab.horizon_days)).alias(DAY),
        F.trim(F.col(lab.column).cast("string")).isin(list(lab.positive)).alias("_positive"))
    joined = probes.join(later, [idc, DAY], "left")
    label = F.coalesce(F.col("_positive"), F.lit(True)).cast("int")
    return joined.select(idc, DAY, label.alias(LABEL))


def build_labels(spec: DatasetSpec, days: Iterable[str], activity: DataFrame | None,
                 customers: DataFrame | None) -> DataFrame:
    """Labels of every population member for each matured day in `days`.

    Args:
        spec: the dataset spec.
        days: label days whose horizon has matured (`YYYY-MM-DD`).
        activity: `churn.features.activity_rows` covering the days' populations and horizons
            (None without events).
        customers: typed valid snapshot rows with `_ds` (population and `column` labels).

    Returns:
        `[id string, ds string, label int]`.
    """
    from pyspark.sql import functions as F

    from churn.features import daily_activity

    days = sorted(set(days))
    daily = daily_activity(activity, spec, []) if spec.customers is None else None
    probes = population(spec, days, customers, daily)
    if spec.label.kind == "column":
        labelled = column_labels(customers, probes, spec)
    else:
        labelled = event_labels(activity, probes, spec)
    return labelled.select(spec.id_column, day_string(F.col(DAY)).alias("ds"), LABEL)
