"""Reading and validating raw daily partitions against the dataset spec.

Raw files are read with every column as a string (types come from the spec, never inferred), so
`00042` stays `00042` and a bad value becomes a quarantined row instead of a failed cast. Each
row keeps the file it came from (`_file`) and its partition day (`_ds`). `validate` tags each row
with the first reason it breaks (or none), drops exact duplicates and returns the typed valid rows,
the rejected rows and per-day counts where `rows_in == rows_out + rows_rejected` always holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from churn.spec import DatasetSpec
from churn.storage import Layout, ds_range, filesystem, shift_ds

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

CORRUPT = "_corrupt_record"
FILE = "_file"
FILE_ID = "_file_id"
DS = "_ds"
REASON = "reason"
COPIES = "_copies"
MALFORMED, NULL_ID, BAD_TIMESTAMP = "malformed_row", "null_id", "bad_timestamp"
OUTSIDE_DAY, BAD_NUMBER, BAD_DATE = "outside_partition_day", "bad_number", "bad_date"
NULL_TYPE, DUPLICATE_ROW, DUPLICATE_ID = "null_event_type", "duplicate_row", "duplicate_id"
BAD_ENCODING, OUT_OF_RANGE = "bad_encoding", "out_of_range"
CONFLICT = "conflicting_duplicate"
REASONS = (MALFORMED, BAD_ENCODING, NULL_ID, BAD_TIMESTAMP, OUTSIDE_DAY, BAD_NUMBER, OUT_OF_RANGE,
           BAD_DATE, NULL_TYPE, DUPLICATE_ROW, DUPLICATE_ID, CONFLICT)
# Bounds of every numeric raw column (amounts, ages, charges): NaN, infinities, negatives and
# absurd magnitudes such as 1e300 are quarantined as `out_of_range`.
NUMBER_RANGE = (0.0, 1e12)
# What a text reader puts where a byte is not UTF-8: such a row is quarantined, never repaired.
REPLACEMENT_CHAR = "\ufffd"
_TIMESTAMP_FORMATS = {"date": "yyyy-MM-dd", "yyyymmdd": "yyyyMMdd"}
_EXTENSIONS = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}


class IngestError(RuntimeError):
    """Raw data that cannot be turned into features; the message names table, day or file."""


class MissingColumnError(IngestError):
    """A raw file lacks a column the spec requires."""


class MissingPartitionError(IngestError):
    """A raw day partition the job needs does not exist."""


class CorruptFileError(IngestError):
    """A raw file cannot be read at all (e.g. a truncated Parquet file)."""


class FormatMismatchError(IngestError):
    """A raw file's extension names another format than the spec declares for its table."""


class RejectRateError(IngestError):
    """More rows of a day were rejected than the spec's `validation.max_reject_rate` allows."""


@dataclass
class DayCounts:
    """Validation counts of one table on one day."""

    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    extra_columns: dict[str, list[str]] = field(default_factory=dict)

    @property
    def reject_rate(self) -> float:
        """Rejected ÷ read (0 for an empty day)."""
        return self.rows_rejected / self.rows_in if self.rows_in else 0.0

    def as_dict(self) -> dict:
        """The JSON form written to the run fragment (`extra_columns` only when there are any)."""
        payload = {"rows_in": self.rows_in, "rows_out": self.rows_out,
                   "rows_rejected": self.rows_rejected,
                   "reasons": dict(sorted(self.reasons.items())), "empty": self.rows_in == 0}
        if self.extra_columns:
            payload["extra_columns"] = dict(sorted(self.extra_columns.items()))
        return payload


@dataclass
class Validated:
    """The outcome of validating one table: typed valid rows, rejected rows, counts per day."""

    valid: DataFrame
    rejected: DataFrame
    counts: dict[str, DayCounts]
    cached: DataFrame | None = None

    def release(self) -> None:
        """Drop the cached intermediate rows (call when the outputs are written)."""
        if self.cached is not None:
            self.cached.unpersist()


@dataclass(frozen=True)
class ReadPlan:
    """Which days a run computes and which raw partitions it reads for them."""

    feature_days: list[str]
    label_days: list[str]
    read_days: dict[str, list[str]]
    missing: dict[str, list[str]]


def plan_reads(spec: DatasetSpec, start: str, end: str,
               available: dict[str, list[str]]) -> ReadPlan:
    """Plan a run over the feature days [start, end] (pure: no I/O).

    Features for D read events of [D - longest window + 1, D]. Labels are computed for every day
    L of [start - horizon, end] whose horizon has matured by `end` and by the newest raw day of
    the table the label looks at (L + horizon <= both) and which is not before the first
    delivered day. Bounding by `end` keeps a run point-in-time even when later raw days already
    exist (backfills): a run of day D reads no raw day after D, and each label partition L has
    one owner, the run of day L + horizon, so runs of different days never write the same
    partition. They read
    events of (L, L + horizon] (kinds inactivity/event) or the snapshot of L + horizon (column).
    Days before a table's first delivered day are not needed (the data starts there).

    Args:
        spec: the dataset spec.
        start: first feature day.
        end: last feature day.
        available: the existing raw partitions per table (`list_partitions`).

    Returns:
        The plan; `missing` lists needed days that have no partition, per table.
    """
    horizon, pop_table = spec.label.horizon_days, "customers" if spec.customers else "events"
    label_table = "customers" if spec.label.kind == "column" else "events"
    feature_days = ds_range(start, end)
    newest = max(available.get(label_table) or [""])
    first = min(available.get(pop_table) or [start])
    label_days = [d for d in ds_range(shift_ds(start, -horizon), end)
                  if d >= first and shift_ds(d, horizon) <= min(newest, end)]
    needed = {t: set() for t in spec.tables}
    for day in feature_days:
        _add_population_days(needed, spec, day, with_window=True)
    for day in label_days:
        _add_population_days(needed, spec, day, with_window=spec.customers is None)
        if label_table == "customers":
            needed["customers"].add(shift_ds(day, horizon))
        else:
            needed["events"].update(ds_range(shift_ds(day, 1), shift_ds(day, horizon)))
    read, missing = {}, {}
    for table, days in needed.items():
        have = set(available.get(table, []))
        floor = min(have) if have else ""
        wanted = sorted(d for d in days if d >= floor or d in feature_days)
        read[table] = [d for d in wanted if d in have]
        missing[table] = [d for d in wanted if d not in have]
    return ReadPlan(feature_days, label_days, read, missing)


def _add_population_days(needed: dict[str, set], spec: DatasetSpec, day: str,
                         with_window: bool) -> None:
    """Add the raw days one day's population (and, with `with_window`, its features) reads."""
    if spec.events and with_window:
        needed["events"].update(ds_range(shift_ds(day, 1 - spec.events.longest_window), day))
    if spec.customers:
        needed["customers"].add(day)


def check_missing(plan: ReadPlan, allow_missing: bool) -> None:
    """Fail on needed raw partitions that do not exist, unless they are allowed to be missing.

    Raises:
        MissingPartitionError: naming each table and its missing days.
    """
    gaps = {t: days for t, days in plan.missing.items() if days}
    if gaps and not allow_missing:
        listed = "; ".join(f"raw/{t}: {', '.join(days)}" for t, days in sorted(gaps.items()))
        raise MissingPartitionError(
            f"missing raw partition(s) {listed} (pass --allow-missing to treat them as empty)")


def table_columns(spec: DatasetSpec, table: str) -> list[str]:
    """The raw columns the spec requires of a table, in a fixed order (id first).

    Args:
        spec: the dataset spec.
        table: `events` or `customers`.

    Returns:
        Column names; every one must be present in every file of the table.
    """
    if table == "events":
        ev = spec.events
        cols = [ev.timestamp, ev.type, ev.value]
    else:
        cu = spec.customers
        label_col = spec.label.column if spec.label.kind == "column" else None
        cols = [cu.signup, *cu.categorical, *cu.numeric, label_col]
    return list(dict.fromkeys([spec.id_column, *(c for c in cols if c)]))


def table_format(spec: DatasetSpec, table: str) -> str:
    """The file format (`csv`, `jsonl`, `parquet`) the spec declares for a table."""
    return getattr(spec, table).format


def list_data_files(partition_uri: str) -> list[str] | None:
    """The data files of one raw partition (hidden `_`/`.` files skipped), or None when absent."""
    fs, path = filesystem(partition_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = [i for i in infos if i.type == pafs.FileType.File and not i.base_name[0] in "_."]
    prefix = partition_uri.rstrip("/")
    return sorted(f"{prefix}/{i.base_name}" for i in names)


def describe_file(uri: str) -> str:
    """`table T ds=D file URI` for a raw file path (what every ingest error message names)."""
    found = re.search(r"([^/]+)/ds=([^/]+)/[^/]+$", uri)
    return f"table {found[1]} ds={found[2]} file {uri}" if found else f"file {uri}"


def file_columns(uri: str, fmt: str) -> list[str]:
    """The column names a raw file declares: CSV header, first JSON object's keys, Parquet schema.

    Raises:
        CorruptFileError: a Parquet file without a readable footer, or a JSON Lines file whose
            first 64 KiB hold no JSON object.
    """
    fs, path = filesystem(uri)
    if fmt == "parquet":
        return _parquet_columns(fs, path, uri)
    with fs.open_input_stream(path) as src:
        lines = src.read(1 << 16).decode("utf-8", errors="replace").splitlines()
    if not lines or not lines[0].strip():
        return []
    if fmt == "jsonl":
        return _json_keys(lines, uri)
    import csv

    return [c.strip() for c in next(csv.reader([lines[0]]))]


def _parquet_columns(fs: pafs.FileSystem, path: str, uri: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(path) as src:
            return list(pq.read_schema(src).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFileError(f"{describe_file(uri)}: unreadable Parquet file ({exc})") from exc


def _json_keys(lines: list[str], uri: str) -> list[str]:
    """The keys of the first line that is a JSON object (malformed lines are rows to quarantine)."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return list(record)
    raise CorruptFileError(f"{describe_file(uri)}: no JSON object line in its first 64 KiB")


def check_columns(uri: str, fmt: str, required: Iterable[str]) -> list[str]:
    """Check a raw file has every required column; returns the file's columns.

    Raises:
        MissingColumnError: naming the file and the missing column(s).
    """
    present = file_columns(uri, fmt)
    if not present:
        return present
    missing = [c for c in required if c not in present]
    if missing:
        raise MissingColumnError(f"{describe_file(uri)}: required column(s) {', '.join(missing)} "
                                 f"missing (file has: {', '.join(present)})")
    return present


def check_extension(uri: str, fmt: str) -> None:
    """Refuse a raw file whose extension names another data format than the spec's.

    Files without a known data extension are read as the spec's format.

    Raises:
        FormatMismatchError: naming the file and both formats.
    """
    suffixes = {f".{part}" for part in uri.rpartition("/")[2].lower().split(".")[1:]}
    others = sorted(suffixes & {*_EXTENSIONS.values(), ".json"} - {_EXTENSIONS[fmt]})
    if others and _EXTENSIONS[fmt] not in suffixes:
        raise FormatMismatchError(f"{describe_file(uri)}: a {others[0]} file in a partition the "
                                  f"spec declares as {fmt}")


def extra_columns(spec: DatasetSpec, table: str,
                  files: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """Columns of the files that the spec does not use (ignored, but recorded), per day and file.

    Returns:
        {day: {file name: [extra columns]}} for the files that have any.
    """
    fmt, wanted = table_format(spec, table), set(table_columns(spec, table))
    found: dict[str, dict[str, list[str]]] = {}
    for ds, uris in files.items():
        for uri in uris:
            extra = [c for c in file_columns(uri, fmt) if c not in wanted]
            if extra:
                found.setdefault(ds, {})[uri.rpartition("/")[2]] = extra
    return found


def collect_files(layout: Layout, spec: DatasetSpec, table: str,
                  days: Iterable[str]) -> dict[str, list[str]]:
    """The data files of each needed day that exists (missing days are left out)."""
    files = {}
    for ds in days:
        found = list_data_files(layout.raw(table, ds))
        if found is not None:
            files[ds] = found
    return files


def read_raw(spark: SparkSession, spec: DatasetSpec, table: str,
             files: dict[str, list[str]]) -> DataFrame:
    """Read raw files as all-string columns plus `_corrupt_record`, `_file` and `_ds`.

    Every file's columns are checked first, so a missing required column fails at once naming
    the file. CSV files are grouped by header (column order may differ between deliveries).

    Args:
        spark: the session.
        spec: the dataset spec.
        table: `events` or `customers`.
        files: data files per day, e.g. from `collect_files`.

    Returns:
        Columns `table_columns(spec, table)` (strings), `_corrupt_record`, `_file`, `_file_id`
        (the file's index in `ordered_files(files)`) and `_ds`.
    """
    from pyspark.sql import functions as F

    fmt, cols = table_format(spec, table), table_columns(spec, table)
    groups: dict[tuple[str, ...], list[str]] = {}
    for uri in ordered_files(files):
        check_extension(uri, fmt)
        header = check_columns(uri, fmt, cols)
        if header:
            groups.setdefault(tuple(header) if fmt == "csv" else (), []).append(uri)
    frames = [_read_group(spark, fmt, list(header) or cols, uris).select(*cols, CORRUPT, FILE)
              for header, uris in groups.items()]
    if not frames:
        empty = spark.createDataFrame([], _string_schema([*cols, CORRUPT, FILE, DS]))
        return empty.withColumn(FILE_ID, F.lit(None).cast("int"))
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.unionByName(other)
    return frame.select(*cols, CORRUPT, FILE, _file_id(F.col(FILE), ordered_files(files)),
                        _partition_day(F.col(FILE)).alias(DS))


def ordered_files(files: dict[str, list[str]]) -> list[str]:
    """All files of `collect_files` in one fixed order (day, then name): `_file_id` indexes it."""
    return [uri for day in sorted(files) for uri in files[day]]


def _file_tail(path: str | Column):
    """The `ds=…/<file name>` end of a path (unique within a table)."""
    from pyspark.sql import functions as F

    if isinstance(path, str):
        return "/".join(path.rstrip("/").split("/")[-2:])
    return F.regexp_extract(F.url_decode(path), r"(ds=[^/]+/[^/]+)$", 1)


def _file_id(file_col: Column, uris: list[str]) -> Column:
    """An int id per input file (aggregating an int keeps Spark on hash aggregation)."""
    from pyspark.sql import functions as F

    pairs = [F.lit(x) for i, uri in enumerate(uris) for x in (_file_tail(uri), i)]
    return F.element_at(F.create_map(*pairs), _file_tail(file_col)).cast("int").alias(FILE_ID)


def _string_schema(cols: Iterable[str]):
    from pyspark.sql import types as T

    return T.StructType([T.StructField(c, T.StringType()) for c in cols])


def _read_group(spark: SparkSession, fmt: str, header: list[str], uris: list[str]) -> DataFrame:
    """One Spark read of files sharing a header, every column as a string."""
    from pyspark.sql import functions as F

    from churn.spark import to_spark_uri

    paths = [to_spark_uri(u) for u in uris]
    if fmt == "parquet":
        frame = spark.read.parquet(*paths).withColumn(FILE, F.input_file_name())
        cast = [F.col(f"`{c}`").cast("string").alias(c) for c in header]
        return frame.select(*cast, F.lit(None).cast("string").alias(CORRUPT), FILE)
    reader = (spark.read.schema(_string_schema([*header, CORRUPT]))
              .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT))
    if fmt == "csv":
        frame = reader.option("header", True).option("enforceSchema", True).csv(paths)
    else:
        frame = reader.json(paths)
    return frame.withColumn(FILE, F.input_file_name())


def _partition_day(file_col: Column) -> Column:
    from pyspark.sql import functions as F

    return F.regexp_extract(file_col, r"ds=(\d{4}-\d{2}-\d{2})", 1)


def parse_timestamp(col: Column, kind: str) -> Column:
    """Parse a raw timestamp string by the spec's `timestamp_kind`; unparseable gives null."""
    from pyspark.sql import functions as F

    if kind == "datetime":
        return F.trim(col).try_cast("timestamp")
    return F.try_to_timestamp(F.trim(col), F.lit(_TIMESTAMP_FORMATS[kind]))


def _bad_number(col: Column) -> Column:
    """A non-empty value that does not parse as a number."""
    from pyspark.sql import functions as F

    trimmed = F.trim(col)
    return (trimmed != "") & trimmed.try_cast("double").isNull()


def _out_of_range(col: Column) -> Column:
    """A number that parses but is NaN, infinite or outside `NUMBER_RANGE`."""
    from pyspark.sql import functions as F

    number = F.trim(col).try_cast("double")
    low, high = NUMBER_RANGE
    return number.isNotNull() & (F.isnan(number) | (number < low) | (number > high))


def _bad_encoding(cols: Iterable[str]) -> Column:
    """Any raw column holding the replacement character of a byte that was not UTF-8."""
    from pyspark.sql import functions as F

    hits = [F.coalesce(F.col(c).contains(REPLACEMENT_CHAR), F.lit(False)) for c in cols]
    return F.greatest(*hits) if len(hits) > 1 else hits[0]


def _blank(col: Column) -> Column:
    from pyspark.sql import functions as F

    return col.isNull() | (F.trim(col) == "")


def reject_reason(spec: DatasetSpec, table: str) -> Column:
    """The first rule a raw row breaks, as a reason string (null for a valid row)."""
    from pyspark.sql import functions as F

    rules = [(F.col(CORRUPT).isNotNull(), MALFORMED),
             (_bad_encoding(table_columns(spec, table)), BAD_ENCODING),
             (_blank(F.col(spec.id_column)), NULL_ID)]
    if table == "events":
        ev = spec.events
        ts = parse_timestamp(F.col(ev.timestamp), ev.timestamp_kind)
        rules += [(ts.isNull(), BAD_TIMESTAMP),
                  (F.date_format(ts, "yyyy-MM-dd") != F.col(DS), OUTSIDE_DAY)]
        if ev.value:
            rules += [(_bad_number(F.col(ev.value)), BAD_NUMBER),
                      (_out_of_range(F.col(ev.value)), OUT_OF_RANGE)]
        if ev.type:
            rules.append((_blank(F.col(ev.type)), NULL_TYPE))
    else:
        cu = spec.customers
        for name in cu.numeric:
            rules += [(_bad_number(F.col(name)), BAD_NUMBER),
                      (_out_of_range(F.col(name)), OUT_OF_RANGE)]
        if cu.signup:
            signup = F.trim(F.col(cu.signup))
            rules.append(((signup != "") & signup.try_cast("date").isNull(), BAD_DATE))
    reason = F.lit(None).cast("string")
    for condition, name in reversed(rules):
        reason = F.when(condition, F.lit(name)).otherwise(reason)
    return reason


def tag_rows(raw: DataFrame, spec: DatasetSpec, table: str) -> DataFrame:
    """Add the `reason` column, then tag the valid rows of a key that has two different versions:
    a customer with two different snapshot rows a day (`duplicate_id`), an event of the same
    customer and timestamp with different values (`conflicting_duplicate`). Every version is
    quarantined: which one is right cannot be told."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    tagged = raw.withColumn(REASON, reject_reason(spec, table))
    keys, reason = [F.col(spec.id_column), F.col(DS)], DUPLICATE_ID
    if table == "events":
        ev = spec.events
        keys.append(parse_timestamp(F.col(ev.timestamp), ev.timestamp_kind))
        reason = CONFLICT
    cols = table_columns(spec, table)
    versions = F.size(F.collect_set(F.when(F.col(REASON).isNull(), F.struct(*cols))).over(
        Window.partitionBy(*keys)))
    return tagged.withColumn(REASON, F.when(F.col(REASON).isNull() & (versions > 1),
                                            F.lit(reason)).otherwise(F.col(REASON)))


def collapse(tagged: DataFrame, spec: DatasetSpec, table: str) -> DataFrame:
    """Group identical rows: one row per distinct (columns, day, reason) with its copy counts.

    `_n` is how many raw rows share it; `_copies` how many of them are rejected (all of them for
    a tagged row, all but the first for a valid one: the rest are `duplicate_row`).
    """
    from pyspark.sql import functions as F

    keys = [*table_columns(spec, table), CORRUPT, DS, REASON]
    grouped = tagged.groupBy(*keys).agg(F.count(F.lit(1)).alias("_n"),
                                        F.min(FILE_ID).alias(FILE_ID))
    return grouped.withColumn(
        COPIES, F.when(F.col(REASON).isNull(), F.col("_n") - 1).otherwise(F.col("_n")))


def rejected_rows(collapsed: DataFrame, spec: DatasetSpec, table: str,
                  file_names: list[str]) -> DataFrame:
    """The rejected raw rows, one per raw row.

    Returns:
        The raw columns as strings, `reason`, `raw_record` (the raw line of a malformed row),
        `source_file` and `ds` (the partition day).
    """
    from pyspark.sql import functions as F

    expanded = collapsed.where(F.col(COPIES) > 0).withColumn(
        "_copy", F.explode(F.sequence(F.lit(1), F.col(COPIES))))
    reason = F.coalesce(F.col(REASON), F.lit(DUPLICATE_ROW)).alias(REASON)
    return expanded.select(*table_columns(spec, table), reason, F.col(CORRUPT).alias("raw_record"),
                           _file_name(file_names).alias("source_file"), F.col(DS).alias("ds"))


def _file_name(file_names: list[str]) -> Column:
    """The file path of `_file_id` (null when unknown)."""
    from pyspark.sql import functions as F

    if not file_names:
        return F.lit(None).cast("string")
    return F.element_at(F.array(*map(F.lit, file_names)), F.col(FILE_ID) + 1)


def typed_rows(collapsed: DataFrame, spec: DatasetSpec, table: str) -> DataFrame:
    """The valid rows with spec types: id string, numbers double, timestamps/dates parsed."""
    from pyspark.sql import functions as F

    valid = collapsed.where(F.col(REASON).isNull())
    out = [F.trim(F.col(spec.id_column)).alias(spec.id_column), F.col(DS)]
    if table == "events":
        ev = spec.events
        out.append(parse_timestamp(F.col(ev.timestamp), ev.timestamp_kind).alias(ev.timestamp))
        out += [F.trim(F.col(ev.type)).alias(ev.type)] if ev.type else []
        out += [_number(F.col(ev.value)).alias(ev.value)] if ev.value else []
    else:
        cu = spec.customers
        out += [F.trim(F.col(cu.signup)).try_cast("date").alias(cu.signup)] if cu.signup else []
        out += [F.trim(F.col(c)).alias(c) for c in cu.categorical]
        out += [_number(F.col(c)).alias(c) for c in cu.numeric]
        label_col = spec.label.column if spec.label.kind == "column" else None
        if label_col and label_col not in (*cu.categorical, *cu.numeric):
            out.append(F.trim(F.col(label_col)).alias(label_col))
    return valid.select(*out)


def _number(col: Column) -> Column:
    from pyspark.sql import functions as F

    return F.trim(col).try_cast("double")


def day_counts(collapsed: DataFrame, days: Iterable[str]) -> dict[str, DayCounts]:
    """Counts per day (rows in/out/rejected and rejects per reason) for the given days.

    Days with no rows at all (an empty partition) get zero counts.
    """
    from pyspark.sql import functions as F

    wanted = sorted(set(days))
    reason = F.coalesce(F.col(REASON), F.lit(DUPLICATE_ROW))
    rows = (collapsed.where(F.col(DS).isin(wanted)).groupBy(DS, reason.alias(REASON))
            .agg(F.sum("_n").alias("n_in"), F.sum(COPIES).alias("n_rej")).collect())
    counts = {ds: DayCounts() for ds in wanted}
    for row in rows:
        day = counts[row[DS]]
        day.rows_in += row["n_in"]
        day.rows_rejected += row["n_rej"]
        if row["n_rej"]:
            day.reasons[row[REASON]] = day.reasons.get(row[REASON], 0) + row["n_rej"]
    for day in counts.values():
        day.rows_out = day.rows_in - day.rows_rejected
    return counts


def validate(raw: DataFrame, spec: DatasetSpec, table: str, count_days: Iterable[str],
             file_names: list[str] = ()) -> Validated:
    """Validate raw string rows against the spec.

    Args:
        raw: rows from `read_raw`.
        spec: the dataset spec.
        table: `events` or `customers`.
        count_days: the days whose counts are wanted (the job's target days).
        file_names: `ordered_files(files)` of the read, to name each rejected row's file.

    Returns:
        Typed valid rows (with `_ds`), rejected rows (with `reason`), counts per count day.
    """
    from pyspark import StorageLevel

    collapsed = collapse(tag_rows(raw, spec, table), spec, table)
    collapsed = collapsed.persist(StorageLevel.MEMORY_AND_DISK)
    return Validated(valid=typed_rows(collapsed, spec, table),
                     rejected=rejected_rows(collapsed, spec, table, list(file_names)),
                     counts=day_counts(collapsed, count_days), cached=collapsed)


def check_reject_rate(table: str, counts: dict[str, DayCounts], max_rate: float) -> None:
    """Fail when a day rejected more than `max_rate` of its rows.

    Raises:
        RejectRateError: naming the table, the day, the rate and the top reasons with counts.
    """
    problems = []
    for ds, day in sorted(counts.items()):
        if day.reject_rate > max_rate:
            top = sorted(day.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            reasons = ", ".join(f"{name}={n}" for name, n in top)
            problems.append(f"table {table} ds={ds}: {day.rows_rejected}/{day.rows_in} rows "
                            f"rejected ({day.reject_rate:.2%} > {max_rate:.2%}); top reasons: "
                            f"{reasons}")
    if problems:
        raise RejectRateError("; ".join(problems))
