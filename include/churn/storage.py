"""Storage layout: every path of the pipeline from (root, area, ds), and atomic partition writes.

One root (`CHURN_DATA_ROOT`): a local folder or `s3://bucket/prefix`. Partitions are Hive style
`ds=YYYY-MM-DD`. Writers never write into a live partition: they fill a temporary sibling and
swap it in, so a reader (or a crash) sees the old partition or the new one, never half of one.

Temporary names say what they belong to: `_tmp-<partition>-<uuid>` and `_old-<partition>-<uuid>`
next to one partition, `_tmp-staging-<first>_<last>-<uuid>` for a multi-day staging directory.
A writer killed outright (SIGKILL: no cleanup runs) leaves its temporary behind; the next writer
of the same partition removes it first (`remove_stale_temps`), and never touches another day's
temporaries, which may belong to a writer running right now.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs

_DS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
TMP_MARKER = "_tmp-"
OLD_MARKER = "_old-"
STAGING = "staging"
_UUID_CHARS = 12
_UUID = rf"[0-9a-f]{{{_UUID_CHARS}}}"
_DAY = r"\d{4}-\d{2}-\d{2}"
_PARTITION_TEMP = re.compile(rf"^(?:{TMP_MARKER}|{OLD_MARKER})(?P<name>.+)-{_UUID}$")
_STAGING_TEMP = re.compile(rf"^{TMP_MARKER}{STAGING}-(?P<first>{_DAY})_(?P<last>{_DAY})-{_UUID}$")
LOG = logging.getLogger(__name__)


def validate_ds(ds: str) -> str:
    """Check that `ds` is a real calendar date `YYYY-MM-DD` (so it is safe inside a path).

    Args:
        ds: the partition key.

    Returns:
        The same string.

    Raises:
        ValueError: anything else, including path tricks like `../x`.
    """
    if not isinstance(ds, str) or not _DS_PATTERN.match(ds):
        raise ValueError(f"ds must be YYYY-MM-DD, got {ds!r}")
    dt.date.fromisoformat(ds)
    return ds


def validate_name(name: str, what: str = "name") -> str:
    """Check a table, model or version name is one safe path segment."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(f"{what} must match [A-Za-z0-9_-]+, got {name!r}")
    return name


def ds_range(start: str, end: str) -> list[str]:
    """All days from start to end inclusive, as `YYYY-MM-DD` strings."""
    first, last = dt.date.fromisoformat(validate_ds(start)), dt.date.fromisoformat(validate_ds(end))
    if last < first:
        raise ValueError(f"end {end} is before start {start}")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def day_number(ds: str) -> int:
    """Days since 1970-01-01: the one day numbering of the pipeline (features, cadence, generator)."""
    return (dt.date.fromisoformat(validate_ds(ds)) - dt.date(1970, 1, 1)).days


def shift_ds(ds: str, days: int) -> str:
    """The day `days` after ds (negative for before)."""
    return (dt.date.fromisoformat(validate_ds(ds)) + dt.timedelta(days=days)).isoformat()


@dataclass(frozen=True)
class Layout:
    """The pipeline's storage layout under one root (local folder or `s3://bucket/prefix`)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", self.root.rstrip("/"))

    @property
    def is_s3(self) -> bool:
        """Whether the root is on S3."""
        return self.root.startswith(("s3://", "s3a://"))

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def partition(self, area: str, ds: str, table: str | None = None) -> str:
        """Path of one day's partition in an area (`raw`, `quarantine`, `features`, ...)."""
        parts = [validate_name(area, "area")]
        if table is not None:
            parts.append(validate_name(table, "table"))
        return self._join(*parts, f"ds={validate_ds(ds)}")

    def area(self, area: str, table: str | None = None) -> str:
        """Path of a whole area (the parent of its `ds=` partitions)."""
        parts = [validate_name(area, "area")] + ([validate_name(table, "table")] if table else [])
        return self._join(*parts)

    def raw(self, table: str, ds: str) -> str:
        """`raw/<table>/ds=…`: input as delivered."""
        return self.partition("raw", ds, table)

    def quarantine(self, table: str, ds: str) -> str:
        """`quarantine/<table>/ds=…`: rejected rows with a reason column."""
        return self.partition("quarantine", ds, table)

    def features(self, ds: str) -> str:
        """`features/ds=…`: one row per customer as of the end of ds."""
        return self.partition("features", ds)

    def labels(self, ds: str) -> str:
        """`labels/ds=…`: matured labels for ds."""
        return self.partition("labels", ds)

    def predictions(self, ds: str) -> str:
        """`predictions/ds=…`: customer_id, churn_probability, model_version, ds."""
        return self.partition("predictions", ds)

    def oracle(self, ds: str) -> str:
        """`oracle/ds=…`: the generator's true churn probabilities (never read by the pipeline)."""
        return self.partition("oracle", ds)

    def manifest(self, ds: str) -> str:
        """`runs/ds=…/manifest.json`: counts, checksums, timings, versions of one day's run."""
        return self.partition("runs", ds) + "/manifest.json"

    def run_fragment(self, ds: str, step: str) -> str:
        """`runs/ds=…/<step>.json`: one step's part of the manifest (merged by the publish step)."""
        return self.partition("runs", ds) + f"/{validate_name(step, 'step')}.json"

    def models(self, model_name: str) -> str:
        """`models/<name>`: every version of a model plus `champion.json`."""
        return self._join("models", validate_name(model_name, "model name"))

    def model_version(self, model_name: str, version: str) -> str:
        """`models/<name>/<version>/`: one immutable model version."""
        return self.models(model_name) + "/" + validate_name(version, "version")

    def champion(self, model_name: str) -> str:
        """`models/<name>/champion.json`: the version that scores."""
        return self.models(model_name) + "/champion.json"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or an `s3://` URI."""
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://"):]
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    """Whether a file or directory exists."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_partitions(area_uri: str) -> list[str]:
    """The `ds` values of the complete partitions under an area, sorted (temp siblings hidden)."""
    fs, path = filesystem(area_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    days = [i.base_name[3:] for i in infos if i.type == pafs.FileType.Directory]
    return sorted(d for d in days if is_ds(d))


def is_ds(value: str) -> bool:
    """Whether a string is a valid `ds` (no exception)."""
    try:
        validate_ds(value)
    except ValueError:
        return False
    return True


def temp_sibling(final_uri: str, marker: str = TMP_MARKER) -> str:
    """A fresh path next to `final_uri` named after it, `<marker><name>-<uuid>`, hidden from
    readers by its `_` prefix."""
    parent, _, name = final_uri.rstrip("/").rpartition("/")
    return f"{parent}/{marker}{name}-{uuid.uuid4().hex[:_UUID_CHARS]}"


def staging_dir(area_uri: str, days: list[str]) -> str:
    """A fresh hidden staging directory in an area for a sorted, non-empty list of days:
    `_tmp-staging-<first>_<last>-<uuid>` (the range lets later writers tell whose it is)."""
    return temp_sibling(f"{area_uri.rstrip('/')}/{STAGING}-{days[0]}_{days[-1]}")


def remove_stale_temps(area_uri: str, names: Iterable[str],
                       staged_days: tuple[str, str] | None = None) -> list[str]:
    """Remove what crashed writers of these partitions left in an area, and nothing else.

    Call it before writing: one writer per partition at a time (Airflow runs one task instance
    per day), so a temporary of the partitions about to be written can only be stale. Those of
    other partitions are kept: a writer of another day may be filling them right now.

    Args:
        area_uri: the parent directory of the partitions.
        names: the partition directory names (`ds=2024-01-03`) whose `_tmp-`/`_old-` siblings go.
        staged_days: a day range (first, last); staging directories whose range overlaps it go.

    Returns:
        The URIs removed (each is logged).
    """
    names = set(names)

    def stale(base_name: str) -> bool:
        staging = _STAGING_TEMP.match(base_name)
        if staging:
            return staged_days is not None and (
                staging["first"] <= staged_days[1] and staged_days[0] <= staging["last"])
        partition = _PARTITION_TEMP.match(base_name)
        return bool(partition) and partition["name"] in names

    return _remove_children(area_uri, stale)


def _remove_children(parent_uri: str, matches: Callable[[str], bool]) -> list[str]:
    """Delete the files and directories directly under `parent_uri` whose name matches."""
    fs, path = filesystem(parent_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        if not matches(info.base_name):
            continue
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)
        removed.append(f"{parent_uri.rstrip('/')}/{info.base_name}")
        LOG.warning("removed %s, left behind by a writer that did not finish", removed[-1])
    return removed


def swap_in(tmp_uri: str, final_uri: str) -> None:
    """Replace `final_uri` by the finished directory `tmp_uri`.

    Locally the old partition is first renamed aside, then the new one renamed in (two renames on
    one filesystem: at every instant the path holds the old or the new partition, never a mix).
    On S3 there is no rename, so objects are copied; readers must go through the manifest or
    accept the copy window (S3 writers should prefer Spark's dynamic partition overwrite).
    """
    fs, final_path = filesystem(final_uri)
    _, tmp_path = filesystem(tmp_uri)
    if fs.get_file_info(final_path).type == pafs.FileType.NotFound:
        _move_dir(fs, tmp_path, final_path)
        return
    old_path = temp_sibling(final_path, OLD_MARKER)
    _move_dir(fs, final_path, old_path)
    _move_dir(fs, tmp_path, final_path)
    fs.delete_dir(old_path)


def _move_dir(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Move a directory: one rename locally; on S3 (no directory rename) copy each object,
    then delete the source."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.move(source, target)
        return
    for info in fs.get_file_info(pafs.FileSelector(source, recursive=True)):
        if info.type == pafs.FileType.File:
            fs.copy_file(info.path, target + info.path[len(source):])
    fs.delete_dir(source)


@contextlib.contextmanager
def atomic_partition(final_uri: str) -> Iterator[str]:
    """Write a partition atomically: yield a temp directory, swap it in on success.

    First removes the temporaries a crashed earlier writer of this partition left. On any
    exception the temp directory is removed and the old partition is untouched.

    Args:
        final_uri: the partition's path, e.g. `Layout(root).features(ds)`.

    Yields:
        The temporary directory to write the partition's files into.
    """
    parent, _, name = final_uri.rstrip("/").rpartition("/")
    remove_stale_temps(parent, [name])
    tmp = temp_sibling(final_uri)
    fs, tmp_path = filesystem(tmp)
    fs.create_dir(tmp_path, recursive=True)
    try:
        yield tmp
    except BaseException:
        fs.delete_dir(tmp_path)
        raise
    swap_in(tmp, final_uri)


def write_json_atomic(uri: str, payload: dict) -> None:
    """Write a small JSON file atomically (temp file, then rename over the target)."""
    fs, path = filesystem(uri)
    parent = path.rpartition("/")[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/{TMP_MARKER}{uuid.uuid4().hex[:12]}.json"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
    fs.move(tmp, path)


def read_json(uri: str) -> dict:
    """Read a JSON file written by `write_json_atomic`."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as src:
        return json.loads(src.read().decode())
