"""When a raw partition has landed: the producer's ready marker, and what a landed day must hold.

A partition `raw/<table>/ds=D/` counts only once its producer says it is complete: by default a
`_SUCCESS` marker written after the last data file (`ready.marker` in the spec; `null` for
producers that publish a partition atomically). Two functions, one per moment:

* `waiting_for` (the DAG's sensor): which partitions of a day have not landed, and why;
* `check_landed` (the features job): a landed day must not hold a 0-byte file or a file added
  after its marker. Such a day fails, naming table, day and file, instead of becoming a partial
  or empty day. A late file is never ignored: the producer re-delivered the day and must publish
  its marker again, after its last file.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs

from churn.ingest import IngestError, compression
from churn.spec import DatasetSpec, ReadySpec
from churn.storage import Layout, filesystem


class NotLandedError(IngestError):
    """A partition that claims to be complete but is not (0-byte file, file after the marker)."""


@dataclass(frozen=True)
class PartitionListing:
    """What one raw partition directory holds: its data files and its marker, if any."""

    uri: str
    exists: bool
    data_files: tuple[pafs.FileInfo, ...] = ()
    marker: pafs.FileInfo | None = None


def list_partition(uri: str, ready: ReadySpec) -> PartitionListing:
    """List a raw partition: visible data files (not `_`/`.`-prefixed) and the ready marker.

    Args:
        uri: the partition, e.g. `Layout(root).raw("events", ds)`.
        ready: the table's readiness settings.

    Returns:
        The listing (`exists` False when the directory is absent).
    """
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return PartitionListing(uri, exists=False)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=False))
             if i.type == pafs.FileType.File]
    data = tuple(sorted((i for i in infos if not i.base_name.startswith(("_", "."))),
                        key=lambda i: i.base_name))
    marker = next((i for i in infos if ready.marker and i.base_name == ready.marker), None)
    return PartitionListing(uri, True, data, marker)


def why_not_landed(listing: PartitionListing, ready: ReadySpec) -> str | None:
    """Why a partition has not landed yet (None: it has).

    Returns:
        `no partition directory`, `no data file yet`, or `data files but no <marker> marker`.
    """
    if not listing.exists:
        return "no partition directory"
    if ready.marker and listing.marker is None:
        found = len(listing.data_files)
        return f"{found} data file(s) but no {ready.marker} marker from the producer yet"
    if not listing.data_files:
        return "no data file yet"
    return None


def waiting_for(root: str, spec: DatasetSpec, ds: str) -> dict[str, str]:
    """The raw partitions of `ds` that have not landed, each with the reason.

    Args:
        root: the data root.
        spec: the dataset spec (which tables, which marker).
        ds: the day.

    Returns:
        `{partition uri: reason}`; empty when every table's partition has landed.
    """
    layout, waiting = Layout(root), {}
    for table in spec.tables:
        ready = getattr(spec, table).ready
        listing = list_partition(layout.raw(table, ds), ready)
        reason = why_not_landed(listing, ready)
        if reason:
            waiting[listing.uri] = reason
    return waiting


def landed_problems(listing: PartitionListing, ready: ReadySpec) -> list[str]:
    """What is wrong with a partition that has landed: 0-byte files (also once decompressed),
    compressed files that do not decompress, files after the marker."""
    problems = [f"file {f.path} is empty (0 bytes)" for f in listing.data_files if f.size == 0]
    compressed = (_compressed_problem(f"{listing.uri.rstrip('/')}/{f.base_name}")
                  for f in listing.data_files if f.size)
    problems += [problem for problem in compressed if problem]
    if listing.marker is not None and listing.marker.mtime is not None:
        problems += [
            f"file {f.path} was written after the {ready.marker} marker ({f.mtime} > "
            f"{listing.marker.mtime}); the producer re-delivered the day: write the marker again "
            "after the last file" for f in listing.data_files
            if f.mtime is not None and f.mtime > listing.marker.mtime]
    return problems


def _compressed_problem(uri: str) -> str | None:
    """Why a compressed data file is not a delivery (None: it is, or it is not compressed).

    Only its first decompressed byte is read: enough to tell an empty or non-gzip file, not a
    file cut short later on (Spark's read then fails naming the file).
    """
    codec = compression(uri)
    if codec is None:
        return None
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path, compression=codec) as src:
            first = src.read(1)
    except OSError as exc:
        return f"file {uri} is not a valid {codec} file ({exc})"
    return None if first else f"file {uri} is empty (0 bytes once decompressed)"


def check_landed(root: str, spec: DatasetSpec, days: list[str]) -> None:
    """Fail when a landed partition of `days` holds a 0-byte file or a file after its marker.

    Raises:
        NotLandedError: naming table, day and file, for every problem found.
    """
    layout, problems = Layout(root), []
    for table in spec.tables:
        ready = getattr(spec, table).ready
        for ds in days:
            listing = list_partition(layout.raw(table, ds), ready)
            problems += [f"table {table} ds={ds}: {p}" for p in landed_problems(listing, ready)]
    if problems:
        raise NotLandedError("; ".join(problems))


def check_min_rows(spec: DatasetSpec, table: str, rows_in: dict[str, int]) -> None:
    """Fail when a delivered day of `table` has fewer rows than `ready.min_rows`.

    Args:
        spec: the dataset spec.
        table: `events` or `customers`.
        rows_in: rows read per delivered day.

    Raises:
        NotLandedError: naming the table, the day, its row count and the minimum.
    """
    floor = getattr(spec, table).ready.min_rows
    short = [f"table {table} ds={ds}: {n} row(s), fewer than ready.min_rows={floor} "
             "(a partial delivery?)" for ds, n in sorted(rows_in.items()) if n < floor]
    if short:
        raise NotLandedError("; ".join(short))
