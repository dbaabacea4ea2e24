"""Reading and validating raw daily partitions against the dataset spec.

Raw files are read with every column as a string (types come from the spec, never inferred), so
`00042` stays `00042` and a bad value becomes a quarantined row instead of a failed cast. Each
row keeps the file it came from (`_file`) and its partition day (`_ds`). `validate` tags each row
with the first reason it breaks (or none), applies the spec's duplicate policy (events keep every
row unless the spec declares otherwise; snapshots are keyed by customer) and returns the typed
valid rows (one per kept raw row), the rejected rows and per-day counts where
`rows_in == rows_out + rows_rejected` always holds, with a sample offending value per reason.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from churn.spec import DatasetSpec
from churn.storage import Layout, ds_range, exists, filesystem, list_child_infos, shift_ds

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

LOG = logging.getLogger(__name__)

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
CONFLICT, NULL_KEY = "conflicting_duplicate", "null_key"
REASONS = (MALFORMED, BAD_ENCODING, NULL_ID, BAD_TIMESTAMP, OUTSIDE_DAY, BAD_NUMBER, OUT_OF_RANGE,
           BAD_DATE, NULL_TYPE, NULL_KEY, DUPLICATE_ROW, DUPLICATE_ID, CONFLICT)
# Per raw row: the column its reject reason is about and its raw value, `{column, value}`.
SAMPLE = "_sample"
SAMPLE_CHARS = 200  # a sample is cut to this length (a malformed line can be long)
# Bounds of every numeric raw column (amounts, ages, charges): NaN, infinities, negatives and
# absurd magnitudes such as 1e300 are quarantined as `out_of_range`.
NUMBER_RANGE = (0.0, 1e12)
# What a text reader puts where a byte is not UTF-8: such a row is quarantined, never repaired.
REPLACEMENT_CHAR = "\ufffd"
_TIMESTAMP_FORMATS = {"date": "yyyy-MM-dd", "yyyymmdd": "yyyyMMdd"}
# What each `timestamp_kind` expects: shown with a `bad_timestamp` sample, so a spec naming the
# wrong kind (a 100% reject rate) says what it was looking for.
_TIMESTAMP_EXPECTED = {
    "datetime": "an ISO 8601 date-time, e.g. 2024-01-10 08:00:00 or 2024-01-10T08:00:00+01:00",
    "date": "a date yyyy-MM-dd, e.g. 2024-01-10",
    "yyyymmdd": "a date yyyyMMdd, e.g. 20240110",
    "epoch_seconds": "seconds since 1970-01-01 UTC, e.g. 1704873600",
    "epoch_millis": "milliseconds since 1970-01-01 UTC, e.g. 1704873600000"}
_EPOCH_PER_SECOND = {"epoch_seconds": 1, "epoch_millis": 1000}
_EPOCH_END_SECONDS = 253_402_300_800  # 10000-01-01: later epochs are typos (and overflow)
# A date-time naming its own offset or zone after the time (Z, +01:00, -0500, UTC, Europe/Paris)
# is an absolute instant; without one it is wall-clock time in the spec's `events.timezone`.
_HAS_ZONE = r"\d:\d{2}(:\d{2}(\.\d*)?)?\s*[A-Za-z+-]"
_EXTENSIONS = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
# The compression a CSV or JSON Lines file may carry, by its last extension (`part-0.csv.gz`):
# Spark picks its codec by the same extension, pyarrow decompresses it for the header check.
COMPRESSIONS = {".gz": "gzip"}
# Extensions of codecs Spark would try but that are not supported: refused, naming the file.
_OTHER_COMPRESSIONS = (".bz2", ".zst", ".lz4", ".snappy", ".deflate", ".zip", ".xz", ".br")
# Hadoop's default local filesystem checksums through a sibling `.<name>.crc` path, which breaks
# on a `:` in the name ("Relative path in absolute URI"); raw deliveries carry no checksums, so
# local raw files are read through the raw local filesystem (no effect on s3a:// paths).
_HADOOP_READ_OPTIONS = {"fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
                        "fs.file.impl.disable.cache": "true"}
# RFC 4180: quoted fields may hold the delimiter, line breaks and doubled quotes (`""`).
_CSV_OPTIONS = {"header": True, "enforceSchema": True, "multiLine": True, "quote": '"',
                "escape": '"'}


class IngestError(RuntimeError):
    """Raw data that cannot be turned into features; the message names table, day or file."""


class MissingColumnError(IngestError):
    """A raw file lacks a column the spec requires."""


class DuplicateColumnError(IngestError):
    """Two columns of a raw file have one name once trimmed and compared case-insensitively."""


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
    # Per reason, one offending raw value: {column, value} (+ `expected` for timestamps).
    samples: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def reject_rate(self) -> float:
        """Rejected ÷ read (0 for an empty day)."""
        return self.rows_rejected / self.rows_in if self.rows_in else 0.0

    def over_limit(self, max_rate: float) -> bool:
        """Whether the day rejected more than `max_rate` of its rows (the day then fails).

        Args:
            max_rate: the spec's `validation.max_reject_rate` or the job's override (0..1).

        Returns:
            True when the reject rate is strictly above the limit (an empty day never is).
        """
        return self.reject_rate > max_rate

    def as_dict(self) -> dict:
        """The JSON form written to the run fragment (`extra_columns`, `samples` only when there
        are any)."""
        payload = {"rows_in": self.rows_in, "rows_out": self.rows_out,
                   "rows_rejected": self.rows_rejected,
                   "reasons": dict(sorted(self.reasons.items())), "empty": self.rows_in == 0}
        if self.extra_columns:
            payload["extra_columns"] = dict(sorted(self.extra_columns.items()))
        if self.samples:
            payload["samples"] = dict(sorted(self.samples.items()))
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
    # Per table, the first day of its history: nothing before it is read or missing.
    history_start: dict[str, str] = field(default_factory=dict)
    # Feature days whose longest window reaches before the events' history start.
    short_days: list[str] = field(default_factory=list)
    # Per table, needed days read from their stored activity instead of raw (never a feature
    # day: those are always validated from raw).
    activity_days: dict[str, list[str]] = field(default_factory=dict)


def plan_reads(spec: DatasetSpec, start: str, end: str, available: dict[str, list[str]],
               history_start: dict[str, str] | None = None,
               stored_activity: dict[str, list[str]] | None = None) -> ReadPlan:
    """Plan a run over the feature days [start, end] (pure: no I/O).

    Features for D read events of [D - longest window + 1, D]. Labels are computed for every day
    L of [start - horizon, end] whose horizon has matured by `end` and by the newest raw day of
    the table the label looks at (L + horizon <= both) and which is not before the first
    delivered day. Bounding by `end` keeps a run point-in-time even when later raw days already
    exist (backfills): a run of day D reads no raw day after D, and each label partition L has
    one owner, the run of day L + horizon, so runs of different days never write the same
    partition. They read
    events of (L, L + horizon] (kinds inactivity/event) or the snapshot of L + horizon (column).
    Days before a table's history start are not needed (the data starts there); without one
    (`churn.history`), the history starts at the table's first delivered day. A needed day other
    than a feature day is read from its stored activity when there is one (its raw partition
    may be gone); feature days are always validated from raw.

    Args:
        spec: the dataset spec.
        start: first feature day.
        end: last feature day.
        available: the existing raw partitions per table (`list_partitions`).
        history_start: per table, the first day of its history (`churn.history.first_days`).
        stored_activity: per table, the days of `activity/<table>` (`list_partitions`).

    Returns:
        The plan; `missing` lists needed days that have no partition, per table.
    """
    horizon, pop_table = spec.label.horizon_days, "customers" if spec.customers else "events"
    label_table = "customers" if spec.label.kind == "column" else "events"
    feature_days = ds_range(start, end)
    stored = {t: set((stored_activity or {}).get(t, [])) - set(feature_days) for t in spec.tables}
    available = {t: sorted({*available.get(t, []), *stored[t]}) for t in spec.tables}
    floors = {t: (history_start or {}).get(t) or min(available.get(t) or [""])
              for t in spec.tables}
    newest = max(available.get(label_table) or [""])
    first = floors[pop_table] or start
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
        wanted = sorted(d for d in days if d >= floors[table] or d in feature_days)
        read[table] = [d for d in wanted if d in have]
        missing[table] = [d for d in wanted if d not in have]
    short = [d for d in feature_days if spec.events
             and shift_ds(d, 1 - spec.events.longest_window) < floors["events"]]
    from_activity = {t: [d for d in read[t] if d in stored[t]] for t in spec.tables}
    read = {t: [d for d in read[t] if d not in stored[t]] for t in spec.tables}
    return ReadPlan(feature_days, label_days, read, missing,
                    {t: f for t, f in floors.items() if f}, short, from_activity)


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
    if not gaps:
        return
    listed = "; ".join(f"raw/{t}: {describe_days(days)}" for t, days in sorted(gaps.items()))
    starts = ", ".join(f"{t} {d}" for t, d in sorted(plan.history_start.items()))
    if not allow_missing:
        raise MissingPartitionError(
            f"missing raw partition(s) {listed} (the history starts: {starts}; pass "
            "--allow-missing to treat them as empty)")
    LOG.warning("missing raw partition(s) %s: treated as empty (--allow-missing)", listed)


def describe_days(days: list[str]) -> str:
    """Sorted days as text, runs of three or more consecutive days as `first..last (n days)`."""
    runs: list[list[str]] = []
    for day in days:
        if runs and shift_ds(runs[-1][-1], 1) == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(f"{r[0]}..{r[-1]} ({len(r)} days)" if len(r) > 2 else ", ".join(r)
                     for r in runs)


def table_columns(spec: DatasetSpec, table: str) -> list[str]:
    """The raw columns the spec requires of a table, in a fixed order (id first; for events
    also the columns of `events.key`).

    Args:
        spec: the dataset spec.
        table: `events` or `customers`.

    Returns:
        Column names; every one must be present in every file of the table.
    """
    if table == "events":
        ev = spec.events
        cols = [ev.timestamp, ev.type, ev.value, *ev.key]
    else:
        cu = spec.customers
        label_col = spec.label.column if spec.label.kind == "column" else None
        cols = [cu.signup, *cu.categorical, *cu.numeric, label_col]
    return list(dict.fromkeys([spec.id_column, *(c for c in cols if c)]))


def table_format(spec: DatasetSpec, table: str) -> str:
    """The file format (`csv`, `jsonl`, `parquet`) the spec declares for a table."""
    return getattr(spec, table).format


def list_data_files(partition_uri: str) -> list[str] | None:
    """The data files of one raw partition, or None when it is absent.

    Hidden `_`/`.` entries (markers, checksums) are skipped silently. A visible subdirectory is
    not read either, but with a warning: its files would otherwise vanish without a trace.
    """
    if not exists(partition_uri):
        return None
    infos = list_child_infos(partition_uri)
    prefix = partition_uri.rstrip("/")
    for skipped in (i for i in infos if i.type == pafs.FileType.Directory):
        LOG.warning("%s/%s: a subdirectory of a raw partition is not read", prefix,
                    skipped.base_name)
    return sorted(f"{prefix}/{i.base_name}" for i in infos if i.type == pafs.FileType.File)


def describe_file(uri: str) -> str:
    """`table T ds=D file URI` for a raw file path (what every ingest error message names)."""
    found = re.search(r"([^/]+)/ds=([^/]+)/[^/]+$", uri)
    return f"table {found[1]} ds={found[2]} file {uri}" if found else f"file {uri}"


def compression(uri: str) -> str | None:
    """The codec of a raw file by its last extension (`COMPRESSIONS`); None when uncompressed."""
    name = uri.rpartition("/")[2].lower()
    return COMPRESSIONS.get("." + name.rpartition(".")[2]) if "." in name else None


def file_columns(uri: str, fmt: str) -> list[str]:
    """The column names a raw file declares, as written: CSV header, first JSON object's keys,
    Parquet schema. Compressed files are read decompressed; a UTF-8 BOM is not part of a name.

    Raises:
        CorruptFileError: a Parquet file without a readable footer, a compressed file that does
            not decompress, or a JSON Lines file whose first 64 KiB hold no JSON object.
    """
    if fmt == "parquet":
        return list(_parquet_schema(uri).names)
    text = _head_text(uri)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        return []
    if fmt == "jsonl":
        return _json_keys(lines, uri)
    import csv
    import io

    # The header is a record like any other: a quoted name may hold a comma or a line break.
    return next(csv.reader(io.StringIO(text, newline="")))


def _head_text(uri: str) -> str:
    """The first 64 KiB of a text raw file, decompressed, as UTF-8 without a leading BOM."""
    fs, path, codec = *filesystem(uri), compression(uri)
    try:
        # `compression` explicit: pyarrow would otherwise guess one from any extension.
        with fs.open_input_stream(path, compression=codec) as src:
            head = src.read(1 << 16)
    except OSError as exc:
        kind = f"{codec} file" if codec else "file"
        raise CorruptFileError(f"{describe_file(uri)}: unreadable {kind} ({exc})") from exc
    return head.decode("utf-8-sig", errors="replace")


def _parquet_schema(uri: str):
    """The Arrow schema in a Parquet file's footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = filesystem(uri)
    try:
        with fs.open_input_file(path) as src:
            return pq.read_schema(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFileError(f"{describe_file(uri)}: unreadable Parquet file ({exc})") from exc


class _Pairs(list):
    """A JSON object as its (key, value) pairs: `json.loads` keeps duplicate keys this way."""


def _json_keys(lines: list[str], uri: str) -> list[str]:
    """The keys of the first line that is a JSON object (malformed lines are rows to quarantine);
    a key written twice is listed twice."""
    for line in lines:
        try:
            record = json.loads(line, object_pairs_hook=_Pairs)
        except ValueError:
            continue
        if isinstance(record, _Pairs):
            return [key for key, _ in record]
    raise CorruptFileError(f"{describe_file(uri)}: no JSON object line in its first 64 KiB")


def column_key(name: str) -> str:
    """What a raw column name is matched by: trimmed of spaces, case-folded."""
    return name.strip().casefold()


def read_names(uri: str, present: list[str], wanted: Iterable[str]) -> list[str]:
    """The name each column of a file is read as, in file order: the spec's name for a column
    that matches one trimmed and case-insensitively (`column_key`), else the trimmed name.

    Raises:
        DuplicateColumnError: two columns of the file with one name under that rule.
    """
    spec_names = {column_key(c): c for c in wanted}
    seen: dict[str, str] = {}
    for name in present:
        key = column_key(name)
        if key in seen:
            raise DuplicateColumnError(
                f"{describe_file(uri)}: columns {seen[key]!r} and {name!r} are one column "
                f"{spec_names.get(key, name.strip())!r} (names are matched trimmed of spaces and "
                "case-insensitively); rename or drop one")
        seen[key] = name
    return [spec_names.get(column_key(name), name.strip()) for name in present]


def check_columns(uri: str, fmt: str, required: Iterable[str]) -> dict[str, str]:
    """Check a raw file has every required column, once; map its columns to their read names.

    Returns:
        {name read as (`read_names`): name in the file}, in file order; empty for a file without
        a header.

    Raises:
        MissingColumnError: naming the file and the missing column(s).
        DuplicateColumnError: two columns that are one under the matching rule.
    """
    required = list(required)
    present = file_columns(uri, fmt)
    if not present:
        return {}
    names = dict(zip(read_names(uri, present, required), present))
    missing = [c for c in required if c not in names]
    if missing:
        raise MissingColumnError(f"{describe_file(uri)}: required column(s) {', '.join(missing)} "
                                 f"missing (file has: {', '.join(present)})")
    return names


def check_extension(uri: str, fmt: str) -> None:
    """Refuse a raw file whose extension names another data format than the spec's, or a
    compression that is not supported.

    Files without a known data extension are read as the spec's format. CSV and JSON Lines files
    may end in a `COMPRESSIONS` extension (`part-0.csv.gz`); Parquet compresses inside the file.

    Raises:
        FormatMismatchError: naming the file and both formats (or the compression).
    """
    parts = [f".{part}" for part in uri.rpartition("/")[2].lower().split(".")[1:]]
    codec = parts[-1] if parts and parts[-1] in (*COMPRESSIONS, *_OTHER_COMPRESSIONS) else None
    if codec and (codec not in COMPRESSIONS or fmt == "parquet"):
        supported = "none" if fmt == "parquet" else ", ".join(COMPRESSIONS)
        raise FormatMismatchError(f"{describe_file(uri)}: {codec} compression is not supported "
                                  f"for {fmt} files (supported: {supported})")
    others = sorted(set(parts) & {*_EXTENSIONS.values(), ".json"} - {_EXTENSIONS[fmt]})
    if others and _EXTENSIONS[fmt] not in parts:
        raise FormatMismatchError(f"{describe_file(uri)}: a {others[0]} file in a partition the "
                                  f"spec declares as {fmt}")


def extra_columns(spec: DatasetSpec, table: str,
                  files: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """Columns of the files that the spec does not use (ignored, but recorded), per day and file.

    Returns:
        {day: {file name: [extra columns, trimmed]}} for the files that have any.
    """
    fmt, wanted = table_format(spec, table), set(table_columns(spec, table))
    found: dict[str, dict[str, list[str]]] = {}
    for ds, uris in files.items():
        for uri in uris:
            extra = [c for c in read_names(uri, file_columns(uri, fmt), wanted)
                     if c not in wanted]
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

    Every file's columns are checked first, so a missing or doubled required column fails at
    once naming the file. Files are read in groups that one Spark read can take (`_group_key`):
    CSV by header (column order may differ between deliveries), Parquet also by the physical
    types of the spec's columns (they may drift between files and days), each cast to string.

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
    groups: dict[tuple, list[str]] = {}
    for uri in ordered_files(files):
        check_extension(uri, fmt)
        names = check_columns(uri, fmt, cols)
        if names:
            groups.setdefault(_group_key(uri, fmt, names, cols), []).append(uri)
    frames = [_read_group(spark, fmt, dict(columns), uris).select(*cols, CORRUPT, FILE)
              for (columns, _), uris in groups.items()]
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
    """The `ds=…/<file name>` end of a path (unique within a table); for a Spark file URI, its
    decoded form."""
    from pyspark.sql import functions as F

    if isinstance(path, str):
        return "/".join(path.rstrip("/").split("/")[-2:])
    # Spark names a file by its URI: `%`-escaped (a space is `%20`) but with `+` literal, which
    # `url_decode` alone (form decoding) would turn into a space.
    decoded = F.url_decode(F.replace(path, F.lit("+"), F.lit("%2B")))
    return F.regexp_extract(decoded, r"(ds=[^/]+/[^/]+)$", 1)


def _file_id(file_col: Column, uris: list[str]) -> Column:
    """An int id per input file (aggregating an int keeps Spark on hash aggregation)."""
    from pyspark.sql import functions as F

    pairs = [F.lit(x) for i, uri in enumerate(uris) for x in (_file_tail(uri), i)]
    return F.element_at(F.create_map(*pairs), _file_tail(file_col)).cast("int").alias(FILE_ID)


def _string_schema(cols: Iterable[str]):
    from pyspark.sql import types as T

    return T.StructType([T.StructField(c, T.StringType()) for c in cols])


def _group_key(uri: str, fmt: str, names: dict[str, str], cols: list[str]) -> tuple:
    """What the files one Spark read takes have in common: `(columns, types)`.

    `columns` are (read name, name in the file) pairs: a CSV file's whole header (CSV is read by
    position), else the spec's columns (JSON and Parquet are read by name). `types` are the
    Parquet physical types of those columns: one Spark read applies one file's schema to all.
    """
    if fmt == "csv":
        return tuple(names.items()), ()
    columns = tuple((c, names[c]) for c in cols)
    if fmt != "parquet":
        return columns, ()
    schema = _parquet_schema(uri)
    return columns, tuple(str(schema.field(raw).type) for _, raw in columns)


def _quoted(name: str) -> str:
    """A column name as a Spark identifier (any characters)."""
    return "`" + name.replace("`", "``") + "`"


def _read_group(spark: SparkSession, fmt: str, columns: dict[str, str],
                uris: list[str]) -> DataFrame:
    """One Spark read of files sharing a `_group_key`, every column as a string named as read.

    Args:
        spark: the session.
        fmt: the table's format.
        columns: {name read as: name in the files} (`check_columns`).
        uris: the files.
    """
    from pyspark.sql import functions as F

    from churn.spark import to_spark_uri

    paths = [to_spark_uri(u) for u in uris]
    reader = spark.read.options(**_HADOOP_READ_OPTIONS)
    renamed = [F.col(_quoted(raw)).cast("string").alias(name) for name, raw in columns.items()]
    if fmt == "parquet":
        return reader.parquet(*paths).select(*renamed, F.lit(None).cast("string").alias(CORRUPT),
                                             F.input_file_name().alias(FILE))
    reader = (reader.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT))
    if fmt == "csv":
        # With a schema and `enforceSchema`, the header line is skipped and fields are named by
        # position, already under their read names.
        schema = _string_schema([*columns, CORRUPT])
        frame = reader.schema(schema).options(**_CSV_OPTIONS).csv(paths)
    else:
        frame = reader.schema(_string_schema([*columns.values(), CORRUPT])).json(paths)
        frame = frame.select(*renamed, CORRUPT)
    return frame.withColumn(FILE, F.input_file_name())


def _partition_day(file_col: Column) -> Column:
    from pyspark.sql import functions as F

    return F.regexp_extract(file_col, r"ds=(\d{4}-\d{2}-\d{2})", 1)


def parse_timestamp(col: Column, kind: str, timezone: str = "UTC") -> Column:
    """Parse a raw timestamp string by the spec's `timestamp_kind` into an instant.

    Naive date-times and dates are wall-clock time in `timezone`; date-times with an offset or
    zone and epoch values are absolute instants. Assumes the session time zone is UTC (as
    `churn.spark` sets it): a naive string then casts to its wall-clock time read as UTC.

    Args:
        col: the raw string column.
        kind: `datetime`, `date`, `yyyymmdd`, `epoch_seconds` or `epoch_millis`.
        timezone: the IANA zone of naive values (`events.timezone`).

    Returns:
        A timestamp column; null where the value does not parse.
    """
    from pyspark.sql import functions as F

    text = F.trim(col)
    if kind in _EPOCH_PER_SECOND:
        return _epoch_instant(text, _EPOCH_PER_SECOND[kind])
    if kind == "datetime":
        parsed = text.try_cast("timestamp")
        if timezone == "UTC":
            return parsed
        return F.when(text.rlike(_HAS_ZONE), parsed).otherwise(
            F.to_utc_timestamp(parsed, timezone))
    day = F.try_to_timestamp(text, F.lit(_TIMESTAMP_FORMATS[kind]))
    return day if timezone == "UTC" else F.to_utc_timestamp(day, timezone)


def _epoch_instant(text: Column, per_second: int) -> Column:
    """The instant of an epoch number (`per_second` units a second); null unless it is a number
    in [1970, 10000). Decimal, so `1.7100414E9` (a Parquet double read as text) parses too."""
    from pyspark.sql import functions as F

    number = text.try_cast("decimal(38,6)")
    micros = (number * F.lit(1_000_000 // per_second)).cast("long")
    # The bound comes first: an out-of-range epoch would overflow the cast instead of nulling.
    in_range = (number >= 0) & (number < F.lit(_EPOCH_END_SECONDS * per_second))
    return F.when(in_range, F.timestamp_micros(micros))


def event_day(ts: Column, timezone: str) -> Column:
    """The `YYYY-MM-DD` calendar day of an instant in `timezone` (session time zone UTC)."""
    from pyspark.sql import functions as F

    local = ts if timezone == "UTC" else F.from_utc_timestamp(ts, timezone)
    return F.date_format(local, "yyyy-MM-dd")


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


def _rules(spec: DatasetSpec, table: str) -> list[tuple[Column, str, str, Column]]:
    """Every row rule in order, the first that holds wins: (condition, reason, column, value).

    `column` and `value` are what a reject sample shows: the column the rule is about and its raw
    value (the raw line for a malformed row).
    """
    from pyspark.sql import functions as F

    idc = spec.id_column
    rules = [(F.col(CORRUPT).isNotNull(), MALFORMED, "raw_record", F.col(CORRUPT))]
    # One encoding rule per column (same reason), so the sample names the column with the byte.
    rules += [(_bad_encoding([c]), BAD_ENCODING, c, F.col(c)) for c in table_columns(spec, table)]
    rules.append((_blank(F.col(idc)), NULL_ID, idc, F.col(idc)))
    if table == "events":
        return rules + _event_rules(spec)
    cu = spec.customers
    for name in cu.numeric:
        rules += [(_bad_number(F.col(name)), BAD_NUMBER, name, F.col(name)),
                  (_out_of_range(F.col(name)), OUT_OF_RANGE, name, F.col(name))]
    if cu.signup:
        signup = F.trim(F.col(cu.signup))
        rules.append(((signup != "") & signup.try_cast("date").isNull(), BAD_DATE, cu.signup,
                      F.col(cu.signup)))
    return rules


def _event_rules(spec: DatasetSpec) -> list[tuple[Column, str, str, Column]]:
    """The event rules after the id: timestamp, partition day in the spec's zone, value, type,
    key."""
    from pyspark.sql import functions as F

    ev, raw_ts = spec.events, F.col(spec.events.timestamp)
    ts = parse_timestamp(raw_ts, ev.timestamp_kind, ev.timezone)
    rules = [(ts.isNull(), BAD_TIMESTAMP, ev.timestamp, raw_ts),
             (event_day(ts, ev.timezone) != F.col(DS), OUTSIDE_DAY, ev.timestamp, raw_ts)]
    if ev.value:
        rules += [(_bad_number(F.col(ev.value)), BAD_NUMBER, ev.value, F.col(ev.value)),
                  (_out_of_range(F.col(ev.value)), OUT_OF_RANGE, ev.value, F.col(ev.value))]
    if ev.type:
        rules.append((_blank(F.col(ev.type)), NULL_TYPE, ev.type, F.col(ev.type)))
    # A row without its key cannot be checked for uniqueness (id and timestamp: own rules above).
    rules += [(_blank(F.col(c)), NULL_KEY, c, F.col(c)) for c in ev.key
              if c not in (spec.id_column, ev.timestamp)]
    return rules


def _first_match(rules: list, picked: list[Column], otherwise: Column) -> Column:
    """`picked[i]` of the first rule whose condition holds, else `otherwise`."""
    from pyspark.sql import functions as F

    out = otherwise
    for (condition, *_), value in zip(reversed(rules), reversed(picked)):
        out = F.when(condition, value).otherwise(out)
    return out


def _sample(column: str, value: Column) -> Column:
    """A reject sample: the column name and its raw value (cut to `SAMPLE_CHARS`)."""
    from pyspark.sql import functions as F

    text = F.substring(F.coalesce(value, F.lit("")), 1, SAMPLE_CHARS)
    return F.struct(F.lit(column).alias("column"), text.alias("value"))


def reject_reason(spec: DatasetSpec, table: str) -> Column:
    """The first rule a raw row breaks, as a reason string (null for a valid row)."""
    from pyspark.sql import functions as F

    rules = _rules(spec, table)
    return _first_match(rules, [F.lit(r[1]) for r in rules], F.lit(None).cast("string"))


def reject_sample(spec: DatasetSpec, table: str) -> Column:
    """The column and raw value the row's first broken rule is about; for a valid row its id
    (what a `duplicate_row` sample shows)."""
    from pyspark.sql import functions as F

    rules = _rules(spec, table)
    fallback = _sample(spec.id_column, F.col(spec.id_column))
    return _first_match(rules, [_sample(r[2], r[3]) for r in rules], fallback)


def _uniqueness_key(spec: DatasetSpec, table: str) -> tuple[list[str], list[Column], str] | None:
    """What a table declares unique within a day: (key columns, key values, reason of a key with
    two versions), or None when rows need not be unique (events without `reject_conflicts`)."""
    from pyspark.sql import functions as F

    if table != "events":
        return [spec.id_column], [F.col(spec.id_column)], DUPLICATE_ID
    ev = spec.events
    if ev.duplicates != "reject_conflicts":
        return None
    # A timestamp key compares instants: one moment written two ways is one key.
    values = [parse_timestamp(F.col(c), ev.timestamp_kind, ev.timezone) if c == ev.timestamp
              else F.trim(F.col(c)) for c in ev.key]
    return list(ev.key), values, CONFLICT


def tag_rows(raw: DataFrame, spec: DatasetSpec, table: str) -> DataFrame:
    """Add `reason` and its `_sample`, then tag the valid rows of a key declared unique that has
    two different versions within a day: a customer with two different snapshot rows
    (`duplicate_id`; snapshots are keyed by customer), events sharing `events.key` with other
    values under `duplicates: reject_conflicts` (`conflicting_duplicate`). Every version is
    quarantined: which one is right cannot be told. Events are not keyed otherwise: several
    events of one customer at one timestamp are all valid."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    tagged = raw.withColumns({REASON: reject_reason(spec, table),
                              SAMPLE: reject_sample(spec, table)})
    key = _uniqueness_key(spec, table)
    if key is None:
        return tagged
    names, values, reason = key
    valid = F.col(REASON).isNull()
    versions = F.size(F.collect_set(F.when(valid, F.struct(*table_columns(spec, table)))).over(
        Window.partitionBy(*values, F.col(DS))))
    clash = valid & (F.col("_versions") > 1)
    key_sample = _sample(",".join(names), F.concat_ws(", ", *map(F.col, names)))
    return (tagged.withColumn("_versions", versions)
            .withColumns({SAMPLE: F.when(clash, key_sample).otherwise(F.col(SAMPLE)),
                          REASON: F.when(clash, F.lit(reason)).otherwise(F.col(REASON))})
            .drop("_versions"))


def _keeps_copies(spec: DatasetSpec, table: str) -> bool:
    """Whether identical valid rows are all real rows (events under `keep_all`)."""
    return table == "events" and spec.events.duplicates == "keep_all"


def collapse(tagged: DataFrame, spec: DatasetSpec, table: str) -> DataFrame:
    """Group identical rows: one row per distinct (columns, day, reason) with its copy counts.

    `_n` is how many raw rows share it; `_copies` how many of them are rejected: all of them for
    a tagged row; for a valid one none when every copy is a real event (events under
    `keep_all`), else all but the first (the rest are `duplicate_row`). `_sample` is the group's
    reject sample.
    """
    from pyspark.sql import functions as F

    keys = [*table_columns(spec, table), CORRUPT, DS, REASON]
    grouped = tagged.groupBy(*keys).agg(F.count(F.lit(1)).alias("_n"),
                                        F.min(FILE_ID).alias(FILE_ID),
                                        F.min(SAMPLE).alias(SAMPLE))
    repeats = F.lit(0) if _keeps_copies(spec, table) else F.col("_n") - 1
    return grouped.withColumn(COPIES, F.when(F.col(REASON).isNull(), repeats)
                              .otherwise(F.col("_n")))


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
    """The valid rows with spec types: id string, numbers double, timestamps/dates parsed.

    One row per kept raw row: identical events under `keep_all` each count (three equal
    purchases on one day are three purchases).
    """
    from pyspark.sql import functions as F

    valid = collapsed.where(F.col(REASON).isNull())
    if _keeps_copies(spec, table):
        kept = F.col("_n") - F.col(COPIES)
        valid = valid.withColumn("_copy", F.explode(F.sequence(F.lit(1), kept)))
    out = [F.trim(F.col(spec.id_column)).alias(spec.id_column), F.col(DS)]
    if table == "events":
        ev = spec.events
        out.append(parse_timestamp(F.col(ev.timestamp), ev.timestamp_kind, ev.timezone)
                   .alias(ev.timestamp))
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


def day_counts(collapsed: DataFrame, days: Iterable[str],
               expected: dict[str, str] | None = None) -> dict[str, DayCounts]:
    """Counts per day (rows in/out/rejected, rejects and a sample per reason) for the given days.

    Days with no rows at all (an empty partition) get zero counts.

    Args:
        collapsed: rows from `collapse`.
        days: the days whose counts are wanted.
        expected: per reason, what the rule expected (added to that reason's sample).
    """
    from pyspark.sql import functions as F

    wanted, expected = sorted(set(days)), expected or {}
    reason = F.coalesce(F.col(REASON), F.lit(DUPLICATE_ROW))
    # The smallest sample of the rejected copies: deterministic, whatever the file order.
    sample = F.min(F.when(F.col(COPIES) > 0, F.col(SAMPLE))).alias("sample")
    rows = (collapsed.where(F.col(DS).isin(wanted)).groupBy(DS, reason.alias(REASON))
            .agg(F.sum("_n").alias("n_in"), F.sum(COPIES).alias("n_rej"), sample).collect())
    counts = {ds: DayCounts() for ds in wanted}
    for row in rows:
        day = counts[row[DS]]
        day.rows_in += row["n_in"]
        day.rows_rejected += row["n_rej"]
        if row["n_rej"]:
            day.reasons[row[REASON]] = day.reasons.get(row[REASON], 0) + row["n_rej"]
            day.samples[row[REASON]] = _sample_dict(row["sample"], expected.get(row[REASON]))
    for day in counts.values():
        day.rows_out = day.rows_in - day.rows_rejected
    return counts


def _sample_dict(sample, expected: str | None) -> dict[str, str]:
    """A collected `_sample` struct as `{column, value}`, plus `expected` when known."""
    found = {"column": sample["column"], "value": sample["value"]}
    return {**found, "expected": expected} if expected else found


def _expectations(spec: DatasetSpec, table: str) -> dict[str, str]:
    """What the timestamp rules expect, per reason (shown with their samples)."""
    if table != "events":
        return {}
    ev = spec.events
    return {BAD_TIMESTAMP: f"timestamp_kind '{ev.timestamp_kind}': "
                           f"{_TIMESTAMP_EXPECTED[ev.timestamp_kind]}",
            OUTSIDE_DAY: f"a time on the partition day in timezone {ev.timezone}"}


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
    counts = day_counts(collapsed, count_days, _expectations(spec, table))
    return Validated(valid=typed_rows(collapsed, spec, table),
                     rejected=rejected_rows(collapsed, spec, table, list(file_names)),
                     counts=counts, cached=collapsed)


def check_reject_rate(table: str, counts: dict[str, DayCounts], max_rate: float) -> None:
    """Fail when a day rejected more than `max_rate` of its rows.

    Raises:
        RejectRateError: naming the table, the day, the rate and the top reasons with counts,
            then a sample offending value of each (and, for timestamps, what was expected).
    """
    problems = []
    for ds, day in sorted(counts.items()):
        if day.over_limit(max_rate):
            top = sorted(day.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            reasons = ", ".join(f"{name}={n}" for name, n in top)
            samples = ", ".join(_describe_sample(name, day.samples[name])
                                for name, _ in top if name in day.samples)
            problems.append(f"table {table} ds={ds}: {day.rows_rejected}/{day.rows_in} rows "
                            f"rejected ({day.reject_rate:.2%} > {max_rate:.2%}); top reasons: "
                            f"{reasons}" + (f"; samples: {samples}" if samples else ""))
    if problems:
        raise RejectRateError("; ".join(problems))


def _describe_sample(reason: str, sample: dict[str, str]) -> str:
    """`reason column='value'`, with `(expected …)` when the sample says what was expected."""
    text = f"{reason} {sample['column']}={sample['value']!r}"
    return f"{text} (expected {sample['expected']})" if "expected" in sample else text

