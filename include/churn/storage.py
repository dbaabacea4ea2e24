"""Storage layout: every path of the pipeline from (root, area, ds), and atomic partition writes.

One root (`CHURN_DATA_ROOT`): a local folder or `s3://bucket/prefix`. Partitions are Hive style
`ds=YYYY-MM-DD`. Writers never write into a live partition: they fill a temporary sibling and
swap it in, so a reader (or a crash) sees the old partition or the new one, never half of one
and never none (locally; see `swap_in` for the steps and for what S3 guarantees).

Temporary names say what they belong to, `<marker><partition>-<token>`: `_tmp-` while being
written, `_ready-` once finished and about to be swapped in, `_old-` for the partition being
replaced; `_tmp-staging-<first>_<last>-<token>` for a multi-day staging directory. One writer of
a partition at a time: `partition_locks` holds a lock file `_locks/<partition>` per partition
(local roots), and the lock holder first finishes or undoes what a killed earlier writer left
(`recover_partitions`), logging what it did. Another day's temporaries are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs

from churn.faults import fault_point

_DS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
TMP_MARKER = "_tmp-"
READY_MARKER = "_ready-"
OLD_MARKER = "_old-"
LOCKS = "_locks"
# A swap leaves `_swap-<token>` in the partition it moves in: the next writer can then tell
# whether an interrupted swap's leftover is the new partition (never swapped in) or the old one.
SWAP_TOKEN = "_swap-"
STAGING = "staging"
LOCK_TIMEOUT_SECONDS = 1800.0
_UUID_CHARS = 12
_UUID = rf"[0-9a-f]{{{_UUID_CHARS}}}"
_DAY = r"\d{4}-\d{2}-\d{2}"
_PARTITION_TEMP = re.compile(
    rf"^(?P<kind>{TMP_MARKER}|{READY_MARKER}|{OLD_MARKER})(?P<name>.+)-(?P<token>{_UUID})$")
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

    def activity(self, table: str, ds: str) -> str:
        """`activity/<table>/ds=…`: the day's validated rows as later days read them: events
        reduced per customer and event type, the snapshot as typed rows."""
        return self.partition("activity", ds, table)

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

    def history(self) -> str:
        """`runs/_history.json`: the first day of each raw table's history (`churn.history`)."""
        return self._join("runs", "_history.json")

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


def _all_children(uri: str) -> list[pafs.FileInfo]:
    """Every entry directly under a directory, hidden ones included; empty when it is absent."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    return fs.get_file_info(pafs.FileSelector(path, recursive=False))


def is_hidden(name: str) -> bool:
    """Whether an entry's name hides it from readers: `_` (temporaries `_tmp-`/`_ready-`/`_old-`,
    `_locks`, markers like `_SUCCESS`) or `.` (checksums, dot files)."""
    return name.startswith(("_", "."))


def list_child_infos(uri: str) -> list[pafs.FileInfo]:
    """The visible entries directly under a directory (see `is_hidden`), sorted by name.

    Args:
        uri: a local path or any pyarrow filesystem URI (`s3://…`).

    Returns:
        Their `pyarrow.fs.FileInfo`s (name and type); empty when the directory does not exist.
    """
    return sorted((i for i in _all_children(uri) if not is_hidden(i.base_name)),
                  key=lambda i: i.base_name)


def list_children(uri: str) -> list[str]:
    """The sorted names of the visible entries directly under a directory (`list_child_infos`);
    empty when the directory does not exist."""
    return [info.base_name for info in list_child_infos(uri)]


def list_partitions(area_uri: str) -> list[str]:
    """The `ds` values of the complete partitions under an area, sorted.

    Hidden entries (`_`/`.`: temporaries, locks, markers) are skipped silently. Any other entry
    that is not a `ds=YYYY-MM-DD` directory (`dt=2024-01-03`, `ds=2024-1-3`, a stray file) is
    never read as a day, and is logged as a warning.
    """
    days = []
    for info in list_child_infos(area_uri):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith("ds=") and is_ds(name[3:]):
            days.append(name[3:])
        else:
            LOG.warning("ignored %s/%s: not a ds=YYYY-MM-DD partition directory",
                        area_uri.rstrip("/"), name)
    return sorted(days)


def is_ds(value: str) -> bool:
    """Whether a string is a valid `ds` (no exception)."""
    try:
        validate_ds(value)
    except ValueError:
        return False
    return True


class PartitionBusyError(RuntimeError):
    """Another writer held a partition's lock for longer than this writer was willing to wait."""


class StagingMismatchError(RuntimeError):
    """A staged partition does not hold the rows its job computed (lost or foreign files)."""


def temp_sibling(final_uri: str, marker: str = TMP_MARKER, token: str | None = None) -> str:
    """A path next to `final_uri` named after it, `<marker><name>-<token>` (a fresh token unless
    given), hidden from readers by its `_` prefix."""
    parent, _, name = final_uri.rstrip("/").rpartition("/")
    return f"{parent}/{marker}{name}-{token or uuid.uuid4().hex[:_UUID_CHARS]}"


def staging_dir(area_uri: str, days: list[str]) -> str:
    """A fresh hidden staging directory in an area for a sorted, non-empty list of days:
    `_tmp-staging-<first>_<last>-<uuid>` (the range lets later writers tell whose it is)."""
    return temp_sibling(f"{area_uri.rstrip('/')}/{STAGING}-{days[0]}_{days[-1]}")


@contextlib.contextmanager
def partition_locks(area_uri: str, names: Iterable[str],
                    timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the writer lock of each partition `names` in an area (one writer per partition).

    Locks are files `_locks/<name>` in the area, taken in sorted order (so two writers of
    overlapping day ranges cannot deadlock) and released by the OS if the holder dies. A
    second writer (an orphaned spark-submit and its retry, a bulk range overlapping a daily run)
    logs that it waits, then waits up to `timeout` seconds. On S3 there is no lock: one writer
    per partition rests on Airflow running one task instance per day (README, "Storage").

    Raises:
        PartitionBusyError: a lock was still held after `timeout` seconds.
    """
    fs, path = filesystem(area_uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        yield
        return
    from filelock import FileLock, Timeout

    fs.create_dir(f"{path}/{LOCKS}", recursive=True)
    with contextlib.ExitStack() as held:
        for name in sorted(set(names)):
            lock = FileLock(f"{path}/{LOCKS}/{name}", thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                LOG.warning("%s/%s is being written by another writer; waiting up to %.0fs for "
                            "its lock", area_uri, name, timeout)
                try:
                    lock.acquire(timeout=timeout)
                except Timeout:
                    raise PartitionBusyError(
                        f"{area_uri}/{name}: another writer still holds {lock.lock_file} after "
                        f"{timeout:.0f}s; not writing this partition") from None
            held.callback(lock.release)
        yield


def recover_partitions(area_uri: str, names: Iterable[str],
                       staged_days: tuple[str, str] | None = None) -> list[str]:
    """Finish or undo what killed writers of these partitions left in an area; nothing else.

    Call it holding the partitions' locks (`partition_locks`): then a temporary of these
    partitions can only belong to a dead writer. For each partition, with `P` its live path:

    * `_tmp-` (unfinished write) is removed: P stays as it was;
    * `_ready-` holding its swap token (a finished write) replaces P, unless P already holds
      that token: then the swap happened, and the leftover is what it replaced, removed;
    * `_old-` (the partition a swap set aside) is moved back when P is missing, else removed.

    A `_ready-` without its token is an unfinished copy (S3) and is removed.

    Staging directories whose day range overlaps `staged_days` are removed (their writer would
    hold one of the locks). Temporaries of other partitions are kept: a writer of another day
    may be filling them right now.

    Returns:
        The URIs removed or moved (each is logged, with what it means).
    """
    fs, area_path = filesystem(area_uri)
    names, handled = set(names), []
    children = _all_children(area_uri)
    leftovers = sorted((m for m in (_PARTITION_TEMP.match(c.base_name) for c in children)
                        if m and m["name"] in names),
                       key=lambda m: (m["name"], [READY_MARKER, OLD_MARKER, TMP_MARKER]
                                      .index(m["kind"])))
    for leftover in leftovers:
        _recover_leftover(fs, area_path, leftover)
        handled.append(f"{area_uri.rstrip('/')}/{leftover.string}")
    if staged_days is not None:
        handled += _remove_children(area_uri, lambda name: _overlaps(name, staged_days))
    return handled


def _overlaps(base_name: str, days: tuple[str, str]) -> bool:
    """Whether a name is a staging directory whose day range overlaps `days`."""
    staging = _STAGING_TEMP.match(base_name)
    return bool(staging) and staging["first"] <= days[1] and days[0] <= staging["last"]


def _recover_leftover(fs: pafs.FileSystem, area_path: str, leftover: re.Match) -> None:
    """Roll one temporary of an interrupted write forward or back (see `recover_partitions`)."""
    path, final = f"{area_path}/{leftover.string}", f"{area_path}/{leftover['name']}"
    kind, token = leftover["kind"], leftover["token"]
    swapped = _has_token(fs, final, token)
    if kind == READY_MARKER and not swapped and _has_token(fs, path, token):
        _move_in(fs, path, final, token)
        fs.delete_file(f"{final}/{SWAP_TOKEN}{token}")
        what = "rolled forward: swapped in the finished partition it had staged"
    elif kind == OLD_MARKER and fs.get_file_info(final).type == pafs.FileType.NotFound:
        _move_dir(fs, path, final)
        what = "rolled back: restored the partition it had set aside"
    else:
        _delete(fs, path, fs.get_file_info(path).type == pafs.FileType.Directory)
        what = ("rolled back: removed its unfinished write; the partition is as before"
                if kind == TMP_MARKER or not (swapped or kind == OLD_MARKER) else
                "rolled forward: the new partition is live; removed the one it replaced")
    LOG.warning("interrupted write of %s (%s): %s", final, leftover.string, what)


def _delete(fs: pafs.FileSystem, path: str, is_dir: bool) -> None:
    if is_dir:
        fs.delete_dir(path)
    else:
        fs.delete_file(path)


def _has_token(fs: pafs.FileSystem, partition_path: str, token: str) -> bool:
    """Whether the swap with this token moved `partition_path` in."""
    info = fs.get_file_info(f"{partition_path}/{SWAP_TOKEN}{token}")
    return info.type != pafs.FileType.NotFound


def _remove_children(parent_uri: str, matches: Callable[[str], bool]) -> list[str]:
    """Delete the files and directories directly under `parent_uri` whose name matches."""
    fs, _ = filesystem(parent_uri)
    removed = []
    for info in _all_children(parent_uri):
        if not matches(info.base_name):
            continue
        _delete(fs, info.path, info.type == pafs.FileType.Directory)
        removed.append(f"{parent_uri.rstrip('/')}/{info.base_name}")
        LOG.warning("removed %s, left behind by a writer that did not finish", removed[-1])
    return removed


def swap_in(tmp_uri: str, final_uri: str) -> None:
    """Replace `final_uri` by the finished directory `tmp_uri`, crash-safe at every step.

    Steps (each a fault point `swap:<step>` for the reliability tests): `staged` the new
    directory holds `_swap-<token>`; `ready` it is renamed `_ready-…` next to the partition
    (finished: a killed writer's successor rolls it forward, see `recover_partitions`); then
    `_move_in` replaces the partition; last the token is removed.
    """
    fs, final_path = filesystem(final_uri)
    _, tmp_path = filesystem(tmp_uri)
    token = uuid.uuid4().hex[:_UUID_CHARS]
    ready = temp_sibling(final_path, READY_MARKER, token)
    with fs.open_output_stream(f"{tmp_path}/{SWAP_TOKEN}{token}"):
        pass
    fault_point("swap:staged")
    _move_dir(fs, tmp_path, ready)
    fault_point("swap:ready")
    _move_in(fs, ready, final_path, token)
    fs.delete_file(f"{final_path}/{SWAP_TOKEN}{token}")


def _move_in(fs: pafs.FileSystem, ready: str, final: str, token: str) -> None:
    """Put the finished directory `ready` at `final`, replacing what is there.

    Locally one `renameat2(RENAME_EXCHANGE)` swaps the two directories in a single step
    (`exchanged`): the path never lacks a partition. The old one, now under the `_ready-` name,
    is then deleted (`cleaned`). Without exchange support (S3, or a filesystem that refuses it)
    the old partition is first moved to `_old-…` (`set_aside`), then the new one moved in
    (`moved_in`): a reader can then find no partition for a moment; on S3 each move copies
    objects, so a reader can also see a mix of both until the copy ends (README, "Storage").
    """
    if fs.get_file_info(final).type == pafs.FileType.NotFound:
        _move_dir(fs, ready, final)
        fault_point("swap:moved_in")
    elif _exchange(fs, ready, final):
        fault_point("swap:exchanged")
        fs.delete_dir(ready)
        fault_point("swap:cleaned")
    else:
        old = temp_sibling(final, OLD_MARKER, token)
        _move_dir(fs, final, old)
        fault_point("swap:set_aside")
        _move_dir(fs, ready, final)
        fault_point("swap:moved_in")
        fs.delete_dir(old)
        fault_point("swap:cleaned")


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100
EXCHANGE_ENV = "CHURN_RENAME_EXCHANGE"


def _exchange(fs: pafs.FileSystem, first: str, second: str) -> bool:
    """Atomically exchange two local directories (Linux `renameat2`); False where unsupported.

    `CHURN_RENAME_EXCHANGE=off` forces the two-rename path (tests of the fallback use it).
    """
    if not isinstance(fs, pafs.LocalFileSystem) or os.environ.get(EXCHANGE_ENV) == "off":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    done = libc.renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                          _RENAME_EXCHANGE)
    if done == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(error, os.strerror(error), first, None, second)


def _move_dir(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Move a directory: one rename locally; on S3 (no directory rename) copy each object,
    then delete the source."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.move(source, target)
        return
    files = [i for i in fs.get_file_info(pafs.FileSelector(source, recursive=True))
             if i.type == pafs.FileType.File]
    # The swap token goes last: a copy holding it is complete (`recover_partitions` relies on it).
    for info in sorted(files, key=lambda i: i.base_name.startswith(SWAP_TOKEN)):
        fs.copy_file(info.path, target + info.path[len(source):])
    fs.delete_dir(source)


def parquet_rows(partition_uri: str) -> int:
    """Rows in a Parquet partition, read from the file footers only (`_`/`.` files skipped)."""
    import pyarrow.dataset as pads

    fs, path = filesystem(partition_uri)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def check_staged_rows(staged_uri: str, expected: int, what: str) -> None:
    """Before a swap: the staged partition holds exactly the rows its job computed.

    Raises:
        StagingMismatchError: the staged directory is gone (another writer removed it) or its
            row count differs, naming the partition and both counts.
    """
    found = parquet_rows(staged_uri) if exists(staged_uri) else None
    if found != expected:
        state = "is missing" if found is None else f"holds {found} rows"
        raise StagingMismatchError(f"{what}: the job computed {expected} rows but its staging "
                                   f"{staged_uri} {state}; not swapping it in")


@contextlib.contextmanager
def atomic_partition(final_uri: str, lock_timeout: float = LOCK_TIMEOUT_SECONDS
                     ) -> Iterator[str]:
    """Write a partition atomically: yield a temp directory, swap it in on success.

    Holds the partition's writer lock throughout, and first finishes or undoes what a killed
    earlier writer of this partition left. On any exception the temp directory is removed and
    the old partition is untouched.

    Args:
        final_uri: the partition's path, e.g. `Layout(root).features(ds)`.
        lock_timeout: seconds to wait for another writer of the partition to finish.

    Yields:
        The temporary directory to write the partition's files into.
    """
    parent, _, name = final_uri.rstrip("/").rpartition("/")
    with partition_locks(parent, [name], lock_timeout):
        recover_partitions(parent, [name])
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
