"""Model registry: immutable model versions, the champion pointer and the promotion gate.

Layout under one root (local folder or `s3://`):

    models/<name>/<version>/        model.ubj, features.json, params.json, metrics.json,
                                    meta.json, report.html + PNGs (never rewritten)
    models/<name>/champion.json     {"version": ..., "history": [...], "decision_id": ...}
    models/<name>/champion.lock     held (flock) by whoever switches the pointer
    models/<name>/decisions/<decided_at>-<version>-<id>.json   one gate / promote / rollback

Version ids are `v<YYYYMMDD of ds>-<8 hex of the model's content>`: sortable by training day and
unique per content. Writing a version is idempotent: the same bytes again return the existing
version (a retried job succeeds), other bytes under that id fail and name the files that differ.
A version counts only once complete (meta.json, written last, is there): readers never see a
half-written one.

`champion.json` is only switched under `champion.lock` (an flock the OS drops when its holder
dies; a lock whose holder is gone, or held longer than `LockPolicy.stale_after_s`, is broken
with a warning), after re-checking the pointer it read (compare-and-swap), so two concurrent
gates never both promote on a stale view. Each switch writes its decision record first, as an
intent, then the pointer, then completes the record: a crash never loses the audit record, and
the next gate completes (pointer switched) or aborts (not switched) a dangling intent.

Fault points (`churn.faults`, `CHURN_KILL_AT=<step>` makes the process SIGKILL itself there):
`write_version:partial` (one file written), `write_version:staged` (all files written, not yet
visible), `write_version:moved` (visible, not yet returned), `registry:locked` (champion lock
held), `registry:intent` (intent recorded, pointer not switched), `registry:switched` (pointer
switched, record not completed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from churn.faults import fault_point
from churn.modeling import FeatureSchema, load_booster
from churn.spec import DatasetSpec, load_spec
from churn.training import holdout_auc, holdout_identity, read_labelled_frame
from churn.storage import (Layout, filesystem, read_json, validate_ds, validate_name,
                           write_json_atomic)

MODEL_FILE = "model.ubj"
FEATURES_FILE = "features.json"
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.json"
META_FILE = "meta.json"
REQUIRED_FILES = (MODEL_FILE, FEATURES_FILE, PARAMS_FILE, METRICS_FILE, META_FILE)
DECISIONS_DIR = "decisions"
LOCK_FILE = "champion.lock"
TMP_PREFIX = "_tmp-"
LOG = logging.getLogger(__name__)


class RegistryError(ValueError):
    """The registry holds something unusable (missing version, corrupt pointer or file)."""


class VersionExistsError(RegistryError):
    """A version is immutable: writing it a second time is refused."""


@dataclass(frozen=True)
class ModelArtifact:
    """One model version as read back from the registry."""

    version: str
    model_bytes: bytes
    schema: FeatureSchema
    meta: dict


def _read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as src:
        return src.read()


def _file_type(uri: str) -> pafs.FileType:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type


def _check_model_bytes(model_bytes: bytes, uri: str) -> None:
    """Refuse anything that is not an XGBoost JSON/UBJ model (both start with '{')."""
    if model_bytes.lstrip()[:1] != b"{":
        raise RegistryError(f"{uri}: not an XGBoost JSON/UBJ model (refusing to load it)")


def _check_model_features(model_bytes: bytes, schema: FeatureSchema, uri: str) -> None:
    """Load the booster (never unpickling) and check it was trained on the schema's features.

    Raises:
        RegistryError: the bytes are no loadable XGBoost model, or its feature names (count,
            when it stores no names) differ from features.json.
    """
    try:
        booster = load_booster(model_bytes)
    except ValueError as exc:
        raise RegistryError(f"{uri}: {exc}") from exc
    names = list(booster.feature_names or [])
    if names and names != list(schema.features):
        raise RegistryError(f"{uri}: the model's features {names} do not match "
                            f"{FEATURES_FILE} {list(schema.features)}")
    if booster.num_features() != len(schema.features):
        raise RegistryError(f"{uri}: the model has {booster.num_features()} features, "
                            f"{FEATURES_FILE} lists {len(schema.features)}")


def load_model_dir(uri: str) -> ModelArtifact:
    """Read one complete model version directory.

    Args:
        uri: `models/<name>/<version>` (local path or `s3://`).

    Returns:
        The version id (the directory name), the model bytes, its feature schema and meta.json.

    Raises:
        RegistryError: the directory is missing or incomplete (no meta.json: its writer was
            killed; a retried `write_version` completes it), one of its files is missing, the
            model file is not an XGBoost model, its features differ from features.json, or
            features.json / meta.json is unreadable.
    """
    uri = uri.rstrip("/")
    if _file_type(uri) != pafs.FileType.Directory:
        raise RegistryError(f"model version directory not found: {uri}")
    if _file_type(f"{uri}/{META_FILE}") != pafs.FileType.File:
        raise RegistryError(f"{uri}: incomplete model version (no {META_FILE}: its writer did "
                            "not finish; retrying the write completes it)")
    model_uri = f"{uri}/{MODEL_FILE}"
    if _file_type(model_uri) != pafs.FileType.File:
        raise RegistryError(f"{uri}: no {MODEL_FILE} in the model version directory")
    model_bytes = _read_bytes(model_uri)
    _check_model_bytes(model_bytes, model_uri)
    try:
        schema = FeatureSchema.from_json(_read_bytes(f"{uri}/{FEATURES_FILE}").decode())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{uri}: bad or missing {FEATURES_FILE}: {exc}") from exc
    _check_model_features(model_bytes, schema, model_uri)
    meta = _read_json_or_fail(f"{uri}/{META_FILE}")
    return ModelArtifact(uri.rpartition("/")[2], model_bytes, schema, meta)


def _read_json_or_fail(uri: str) -> dict:
    """Read a JSON object, raising RegistryError (never guessing) when absent or corrupt."""
    try:
        payload = read_json(uri)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{uri}: missing or not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise RegistryError(f"{uri}: expected a JSON object, got {type(payload).__name__}")
    return payload


def read_champion(root: str, model_name: str) -> dict | None:
    """The champion pointer's content, or None when no champion was ever promoted.

    Raises:
        RegistryError: champion.json is corrupt or names a version that does not exist.
    """
    layout = Layout(root)
    pointer = layout.champion(model_name)
    if _file_type(pointer) == pafs.FileType.NotFound:
        return None
    payload = _read_json_or_fail(pointer)
    version = payload.get("version")
    if not isinstance(version, str):
        raise RegistryError(f"{pointer}: no 'version' string in the champion pointer")
    try:
        version_dir = layout.model_version(model_name, version)
    except ValueError as exc:
        raise RegistryError(f"{pointer}: invalid version {version!r}: {exc}") from exc
    if _file_type(version_dir) != pafs.FileType.Directory:
        raise RegistryError(f"{pointer}: champion version {version} does not exist")
    return payload


def champion_uri(root: str, model_name: str) -> str | None:
    """The champion's version directory, or None when there is no champion.

    Args:
        root: the data root.
        model_name: the model's name (spec.model.name).

    Returns:
        `models/<name>/<version>` of the champion, or None.

    Raises:
        RegistryError: champion.json is corrupt or points at a missing version.
    """
    pointer = read_champion(root, model_name)
    if pointer is None:
        return None
    return Layout(root).model_version(model_name, pointer["version"])


def check_version_uri(root: str, model_name: str, uri: str) -> str:
    """A model URI handed to a job (e.g. from XCom), checked to be a version of this registry.

    Args:
        root: the data root.
        model_name: the spec's model name.
        uri: the URI to check.

    Returns:
        The URI as `Layout(root).model_version(model_name, <version>)` spells it.

    Raises:
        RegistryError: the URI is not `<root>/models/<model_name>/<version>` with a valid
            version name (another model, another root, a path with `..`, a file inside).
    """
    models = Layout(root).models(model_name)
    parent, _, version = uri.rstrip("/").rpartition("/")
    try:
        expected = Layout(root).model_version(model_name, version)
    except ValueError as exc:
        raise RegistryError(f"model URI {uri!r}: invalid version name: {exc}") from exc
    if parent != models or version in ("", ".", ".."):
        raise RegistryError(f"model URI {uri!r} is not a version directory under {models}/")
    return expected


def version_id(ds: str, model_bytes: bytes) -> str:
    """A sortable, content-unique version id: `v<YYYYMMDD>-<8 hex of sha256(model)>`."""
    return f"v{validate_ds(ds).replace('-', '')}-{hashlib.sha256(model_bytes).hexdigest()[:8]}"


def list_versions(root: str, model_name: str) -> list[str]:
    """Every complete version of a model, oldest first (temp dirs, decisions and versions
    whose writer did not finish are hidden)."""
    fs, path = filesystem(Layout(root).models(model_name))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("v")
                  and _is_complete(fs, i.path))


def _is_complete(fs: pafs.FileSystem, version_path: str) -> bool:
    """Whether a version directory is whole: meta.json is written last, so it marks that."""
    return fs.get_file_info(f"{version_path}/{META_FILE}").type == pafs.FileType.File


def write_version(root: str, model_name: str, version: str, files: dict[str, bytes]) -> str:
    """Write an immutable version directory; writing the same bytes again returns it.

    A job retried after a crash therefore succeeds: when the version already exists with
    exactly these files and bytes, nothing is written. Locally the files go to a temporary
    sibling `_tmp-<version>-<pid>-<hex>` that one rename makes visible, so a reader sees the
    whole version or none; a killed writer leaves only that temporary (hidden from readers,
    removed by the next writer of the version). On S3 (no rename) the files are written in
    place, meta.json last: until then the version is incomplete, hidden by `list_versions` and
    refused by `load_model_dir`, and a retry writes what is missing.

    Args:
        root: the data root.
        model_name: the model's name.
        version: the version id (see `version_id`).
        files: file name -> content; must include model.ubj, features.json, params.json,
            metrics.json and meta.json.

    Returns:
        The version directory.

    Raises:
        VersionExistsError: the version exists with other content (the message names the
            version and each file that differs); versions are never rewritten.
        RegistryError: a required file is missing or the model is not an XGBoost model.
    """
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise RegistryError(f"version {version}: missing files {', '.join(missing)}")
    _check_model_bytes(files[MODEL_FILE], MODEL_FILE)
    final = Layout(root).model_version(model_name, version)
    fs, final_path = filesystem(final)
    if _matches_existing(fs, final_path, final, version, files):
        return final
    if fs.get_file_info(final_path).type != pafs.FileType.NotFound:
        # An incomplete version whose files so far are ours: finish it in place.
        LOG.warning("model version %s at %s is incomplete (its writer did not finish); "
                    "writing the missing files", version, final)
        _write_files(fs, final_path, files)
    elif isinstance(fs, pafs.LocalFileSystem):
        _write_by_rename(fs, final_path, final, version, files)
    else:
        _write_files(fs, final_path, files)
    return final


def _matches_existing(fs: pafs.FileSystem, path: str, uri: str, version: str,
                      files: dict[str, bytes]) -> bool:
    """True when the version is already complete with these exact files (a retried write).

    Raises:
        VersionExistsError: a file already there differs from ours (or, for a complete
            version, one of us has a file the other lacks).
    """
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    complete = _is_complete(fs, path)
    stored = {i.base_name: i.path for i in fs.get_file_info(pafs.FileSelector(path))}
    names = set(stored) | set(files) if complete else set(stored)
    differing = sorted(name for name in names if name not in stored or name not in files
                       or _read_bytes(stored[name]) != files[name])
    if differing:
        raise VersionExistsError(
            f"model version {version} already exists at {uri} with different content: "
            f"{', '.join(differing)} differ(s) from what is being written. A version id names "
            "one content and is never rewritten; train under another id or delete it by hand")
    if complete:
        LOG.info("model version %s already exists with identical files: reusing it", version)
    return complete


def _write_by_rename(fs: pafs.FileSystem, final_path: str, uri: str, version: str,
                     files: dict[str, bytes]) -> None:
    """Write a local version into a temporary sibling, then rename it into place (one step)."""
    parent = final_path.rpartition("/")[0]
    fs.create_dir(parent, recursive=True)
    _remove_dead_temps(fs, parent, version)
    tmp_path = f"{parent}/{TMP_PREFIX}{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _write_files(fs, tmp_path, files)
    fault_point("write_version:staged")
    try:
        os.rename(tmp_path, final_path)  # refuses a non-empty target: never merges two writes
    except OSError:
        fs.delete_dir(tmp_path)
        # A concurrent writer of the same version won the rename: fine if it wrote our bytes.
        if not _matches_existing(fs, final_path, uri, version, files):
            raise
    fault_point("write_version:moved")


def _remove_dead_temps(fs: pafs.FileSystem, parent: str, version: str) -> None:
    """Remove temporaries of this version left by writers that died (pid in the name, this
    host: local roots only); a live writer's temporary is kept."""
    pattern = re.compile(rf"^{TMP_PREFIX}{re.escape(version)}-(\d+)-[0-9a-f]{{8}}$")
    for info in fs.get_file_info(pafs.FileSelector(parent, recursive=False)):
        match = pattern.match(info.base_name)
        if match and not _pid_alive(int(match[1])):
            LOG.warning("removing %s: an unfinished write of %s by pid %s, which is gone",
                        info.path, version, match[1])
            fs.delete_dir(info.path)


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _write_files(fs: pafs.FileSystem, directory: str, files: dict[str, bytes]) -> None:
    """Write every file into a directory, meta.json last (its presence marks completeness)."""
    fs.create_dir(directory, recursive=True)
    for position, name in enumerate(sorted(files, key=lambda n: n == META_FILE)):
        validate_name(name.replace(".", "_"), "file name")
        with fs.open_output_stream(f"{directory}/{name}") as out:
            out.write(files[name])
        if position == 0:
            fault_point("write_version:partial")


def json_bytes(payload: Any) -> bytes:
    """Stable, readable JSON bytes for a registry file."""
    return json.dumps(payload, indent=2, sort_keys=True, default=str).encode()


def read_version_json(root: str, model_name: str, version: str, name: str) -> dict:
    """One JSON file (metrics, params, meta) of a version."""
    return _read_json_or_fail(f"{Layout(root).model_version(model_name, version)}/{name}")


# --------------------------------------------------------------------------- champion switching


class ChampionChangedError(RegistryError):
    """The champion changed between reading it and switching it (lost a compare-and-swap)."""


@dataclass(frozen=True)
class LockPolicy:
    """How long a switch waits for `champion.lock`, and when a held lock counts as stale.

    A switch holds the lock for milliseconds; `stale_after_s` only bounds a holder that hangs.
    """

    timeout_s: float = 30.0
    stale_after_s: float = 600.0


class _HeldLock:
    """The champion lock as held by this process: an flock on an open lock file."""

    def __init__(self, path: str, handle: int | None):
        self.path, self.handle = path, handle

    def owns_path(self) -> bool:
        """Whether the lock file at the path is still ours (not broken as stale meanwhile)."""
        if self.handle is None:
            return True
        return _same_file(self.handle, self.path)

    def verify(self) -> None:
        """Raise before a write if another process broke our lock as stale (we hung)."""
        if not self.owns_path():
            raise RegistryError(f"lost {self.path}: another process broke it as stale while "
                                "this one held it; not switching the champion")


@contextmanager
def _champion_lock(root: str, model_name: str,
                   policy: LockPolicy = LockPolicy()) -> Iterator[_HeldLock]:
    """Hold `models/<name>/champion.lock` for a local root; one switcher at a time.

    The lock is an flock on the file, so the OS drops it when its holder dies (SIGKILL, OOM):
    a later switcher takes it over at once and warns, naming the dead holder from the record
    in the file (pid, host, since). A live holder makes others wait up to `policy.timeout_s`;
    one that has held it longer than `policy.stale_after_s` is taken to hang: its file is
    unlinked (broken, with a warning) and the hung holder, should it wake, refuses to write
    (`_HeldLock.verify`). On S3 there is no lock through pyarrow; the compare-and-swap in
    `_switch_champion` still catches a changed pointer, but the window is not closed.

    Raises:
        RegistryError: a live holder kept the lock for longer than the timeout.
    """
    fs, models_path = filesystem(Layout(root).models(model_name))
    if not isinstance(fs, pafs.LocalFileSystem):
        yield _HeldLock("", None)
        return
    fs.create_dir(models_path, recursive=True)
    held = _acquire(f"{models_path}/{LOCK_FILE}", policy)
    try:
        fault_point("registry:locked")
        yield held
    finally:
        _release(held)


def _acquire(path: str, policy: LockPolicy) -> _HeldLock:
    """Take the lock at `path`, waiting for a live holder and breaking a stale one."""
    stop_at, waited = time.monotonic() + policy.timeout_s, False
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, age = _holder(handle), time.time() - os.fstat(handle).st_mtime
            stale = age > policy.stale_after_s and _same_file(handle, path)
            if stale:  # checked on the file we judged, not on a fresh one created since
                LOG.warning("breaking stale champion lock %s: held by %s for %.0fs (bound "
                            "%.0fs)", path, holder, age, policy.stale_after_s)
                _unlink_quietly(path)
            os.close(handle)
            if stale:
                continue
            if time.monotonic() > stop_at:
                raise RegistryError(f"champion lock {path} held by {holder} for over "
                                    f"{policy.timeout_s}s (still alive)") from None
            if not waited:
                LOG.warning("champion lock %s is held by %s; waiting up to %.0fs", path,
                            holder, policy.timeout_s)
                waited = True
            time.sleep(0.05)  # lock back-off, bounded by the timeout
            continue
        if _same_file(handle, path):
            _take_over(handle, path)
            return _HeldLock(path, handle)
        os.close(handle)  # the file was unlinked after we opened it: lock the new one


def _same_file(handle: int, path: str) -> bool:
    """Whether the open `handle` is still the file at `path` (not unlinked or replaced)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle).st_ino
    except FileNotFoundError:
        return False


def _holder(handle: int) -> dict:
    """The holder record in a lock file: JSON {pid, host, since}, or a bare pid (old format)."""
    text = os.pread(handle, 4096, 0).decode(errors="replace").strip()
    if not text:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {"pid": text}
    return record if isinstance(record, dict) else {"pid": text}


def _take_over(handle: int, path: str) -> None:
    """Write our holder record; warn when the file still names a holder that never released.

    The lock file is unlinked on release, so a record left in it means its holder died
    holding the lock (the OS then dropped the flock): the lock was stale and is now ours.
    """
    previous = _holder(handle)
    if previous:
        LOG.warning("broke stale champion lock %s: its holder %s is gone (it died holding "
                    "the lock); taking it over", path, previous)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}
    os.ftruncate(handle, 0)
    os.pwrite(handle, json.dumps(record).encode(), 0)


def _release(held: _HeldLock) -> None:
    """Unlink the lock file (while still holding it, so no one locks a doomed file), then
    drop the flock; a file that is no longer ours (broken as stale) is left alone."""
    if held.handle is None:
        return
    if held.owns_path():
        _unlink_quietly(held.path)
    os.close(held.handle)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # another process broke or released it first


def _switch_champion(root: str, model_name: str, decision: dict, expected: str | None,
                     history: list[str], policy: LockPolicy = LockPolicy()) -> None:
    """Point champion.json at the decision's version if it still points at `expected`.

    Raises:
        ChampionChangedError: the champion is no longer `expected` (re-decide).
    """
    with _switching(root, model_name, decision["decided_by"], policy) as held:
        current = read_champion(root, model_name)
        current_version = current["version"] if current else None
        if current_version != expected:
            raise ChampionChangedError(
                f"champion changed from {expected} to {current_version} while deciding")
        _switch_recorded(root, model_name, decision, history, held)


@contextmanager
def _switching(root: str, model_name: str, by: str,
               policy: LockPolicy = LockPolicy()) -> Iterator[_HeldLock]:
    """Hold the champion lock with any dangling intent of a crashed switcher resolved first."""
    with _champion_lock(root, model_name, policy) as held:
        _resolve_intents(root, model_name, by)
        yield held


def _switch_recorded(root: str, model_name: str, decision: dict, history: list[str],
                     held: _HeldLock) -> None:
    """Under the lock: record the decision as an intent, switch the pointer, complete it.

    A crash after the intent leaves a record the next switcher resolves (`_resolve_intents`):
    the pointer names the decision it came from (`decision_id`), so it can tell whether the
    switch happened.
    """
    uri = record_decision(root, model_name, decision, status=INTENT)
    fault_point("registry:intent")
    held.verify()
    decision_id = _decision_id(uri)
    write_json_atomic(Layout(root).champion(model_name),
                      {**decision, "history": history, "decision_id": decision_id})
    fault_point("registry:switched")
    write_json_atomic(uri, {**decision, "decision_id": decision_id, "status": DONE,
                            "completed_at": utc_now()})


def _history(pointer: dict | None) -> list[str]:
    if pointer is None:
        return []
    return list(pointer.get("history") or [pointer["version"]])


def utc_now() -> str:
    """The wall-clock time of a decision (audit timestamp only, never a partition key)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- decision records

INTENT, DONE, ABORTED = "intent", "done", "aborted"


def record_decision(root: str, model_name: str, decision: dict, status: str = DONE) -> str:
    """Write one decision to `models/<name>/decisions/` (a new file each time).

    A switch writes it with status "intent" before touching the pointer and rewrites it once,
    as "done", after; a decision that switches nothing is written "done" at once.

    Returns:
        The record's URI; its name without `.json` is the record's `decision_id`.
    """
    stamp = decision["decided_at"].replace(":", "").replace("-", "").replace(".", "")
    name = f"{stamp}-{decision.get('version') or 'none'}-{uuid.uuid4().hex[:6]}"
    uri = f"{_decisions_uri(root, model_name)}/{name}.json"
    write_json_atomic(uri, {**decision, "decision_id": name, "status": status})
    return uri


def _decisions_uri(root: str, model_name: str) -> str:
    return f"{Layout(root).models(model_name)}/{DECISIONS_DIR}"


def _decision_id(uri: str) -> str:
    return uri.rpartition("/")[2].removesuffix(".json")


def list_decisions(root: str, model_name: str) -> list[dict]:
    """Every recorded decision, oldest first, each with its `status` ("intent" while a switch
    is under way or its switcher died before the next gate resolved it, "done", "aborted")."""
    fs, path = filesystem(_decisions_uri(root, model_name))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.base_name.endswith(".json")
                   and not i.base_name.startswith("_"))
    return [{"status": DONE, **read_json(f"{path}/{name}")} for name in names]


def _resolve_intents(root: str, model_name: str, by: str) -> list[dict]:
    """Complete or abort the intents of switchers that died (call it holding the lock).

    Holding the lock, no other switch is under way, so an intent is a crashed one: if the
    pointer carries its `decision_id` the switch happened and the record is completed ("done"),
    else the champion never changed and it is marked "aborted" (a retried gate decides again).

    Returns:
        The resolved records (each also logged as a warning).
    """
    dangling = [d for d in list_decisions(root, model_name) if d["status"] == INTENT]
    if not dangling:
        return []
    pointer = read_champion(root, model_name) or {}
    resolved = []
    for record in dangling:
        switched = pointer.get("decision_id") == record["decision_id"]
        note = ("its process died after switching the pointer; record completed" if switched
                else f"its process died before switching the pointer; the champion stayed "
                     f"{pointer.get('version')}")
        record = {**record, "status": DONE if switched else ABORTED, "recovered_by": by,
                  "recovered_at": utc_now(), "recovery": note}
        write_json_atomic(f"{_decisions_uri(root, model_name)}/{record['decision_id']}.json",
                          record)
        LOG.warning("decision %s (%s %s): %s", record["decision_id"], record.get("action"),
                    record.get("version"), note)
        resolved.append(record)
    return resolved


def recover_decisions(root: str, model_name: str, by: str,
                      policy: LockPolicy = LockPolicy()) -> list[dict]:
    """Resolve the decision intents a crashed gate, promote or rollback left (under the lock).

    Args:
        root: the data root.
        model_name: the model's name.
        by: who resolves them (stored in each resolved record).
        policy: how long to wait for the champion lock.

    Returns:
        The records resolved ("done" or "aborted"), empty when none was dangling.
    """
    with _champion_lock(root, model_name, policy):
        return _resolve_intents(root, model_name, by)


def promote(root: str, model_name: str, version: str, decided_by: str, reason: str,
            policy: LockPolicy = LockPolicy()) -> dict:
    """Make a version champion by hand (no gate), recording who and why (intent first).

    Raises:
        RegistryError: the version does not exist.
    """
    load_model_dir(Layout(root).model_version(model_name, version))
    with _switching(root, model_name, decided_by, policy) as held:
        current = read_champion(root, model_name)
        decision = {"action": "promote", "version": version, "promoted": True,
                    "previous_version": current["version"] if current else None,
                    "decided_by": decided_by, "reason": reason, "decided_at": utc_now()}
        _switch_recorded(root, model_name, decision, _history(current) + [version], held)
    return decision


def rollback(root: str, model_name: str, decided_by: str, reason: str = "manual rollback",
             policy: LockPolicy = LockPolicy()) -> dict:
    """Point the champion back at the previously promoted version (intent recorded first).

    Raises:
        RegistryError: there is no champion or no earlier one to go back to.
    """
    with _switching(root, model_name, decided_by, policy) as held:
        current = read_champion(root, model_name)
        history = _history(current)
        if len(history) < 2:
            raise RegistryError(f"{model_name}: no earlier champion to roll back to")
        target = history[-2]
        load_model_dir(Layout(root).model_version(model_name, target))
        decision = {"action": "rollback", "version": target, "promoted": True,
                    "previous_version": history[-1], "decided_by": decided_by,
                    "reason": reason, "decided_at": utc_now()}
        _switch_recorded(root, model_name, decision, history[:-1], held)
    return decision


# --------------------------------------------------------------------------- the promotion gate

HOLDOUT_IDS_FILE = "holdout_ids.parquet"


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on a challenger, as recorded in `decisions/`.

    Both AUCs come from one function (`_score_auc`) on one holdout frame, the challenger's
    validation set, identified by `holdout_rows`, `holdout_days` and `holdout_digest`.
    `challenger_recorded_auc` is what training wrote to metrics.json (audit only, not used).
    """

    promoted: bool
    reason: str
    version: str
    challenger_auc: float
    champion_version: str | None
    champion_auc: float | None
    tolerance: float
    floor_auc: float
    holdout_rows: int
    holdout_days: list[str]
    holdout_digest: str
    challenger_recorded_auc: float | None
    decided_by: str
    decided_at: str
    action: str = "gate"

    def to_dict(self) -> dict:
        """JSON-ready form (for the decision log and XCom)."""
        return asdict(self)


def load_holdout(root: str, spec: DatasetSpec, version: str) -> pd.DataFrame:
    """Re-read a version's validation set (features + labels) from its stored window.

    A time holdout is every row of meta.json's `validation_days`; a random holdout is the rows
    whose (id, ds) are in the version's `holdout_ids.parquet`.
    """
    meta = read_version_json(root, spec.model.name, version, META_FILE)
    window = meta.get("window") or {}
    days = window.get("validation_days")
    if not days:
        raise RegistryError(f"{version}: meta.json has no window.validation_days")
    frame = read_labelled_frame(root, spec, days)
    if window.get("holdout") != "random":
        return frame
    ids_uri = f"{Layout(root).model_version(spec.model.name, version)}/{HOLDOUT_IDS_FILE}"
    fs, path = filesystem(ids_uri)
    ids = pq.read_table(path, filesystem=fs).to_pandas()
    return frame.merge(ids, on=list(ids.columns), how="inner")


def _score_auc(root: str, model_name: str, version: str, holdout: pd.DataFrame) -> float:
    """The AUC of a stored version on a holdout: the one scoring path for both gate sides."""
    artifact = load_model_dir(Layout(root).model_version(model_name, version))
    return holdout_auc(load_booster(artifact.model_bytes), artifact.schema, holdout)


def _verdict(challenger_auc: float, champion_auc: float | None, tolerance: float,
             floor: float) -> tuple[bool, str]:
    """The gate rule: above the floor, and no worse than the champion by more than tolerance."""
    if challenger_auc < floor:
        return False, f"challenger AUC {challenger_auc:.4f} is below the floor {floor:.4f}"
    if champion_auc is None:
        return True, f"first model: AUC {challenger_auc:.4f} is above the floor {floor:.4f}"
    delta = challenger_auc - champion_auc
    if delta >= -tolerance:
        return True, (f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} "
                      f"(delta {delta:+.4f} >= -{tolerance})")
    return False, (f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} "
                   f"(delta {delta:+.4f} < -{tolerance})")


def gate(root: str, spec: DatasetSpec, version: str, holdout: pd.DataFrame | None = None,
         decided_by: str = "gate", attempts: int = 3,
         policy: LockPolicy = LockPolicy()) -> GateDecision:
    """Decide whether a new version replaces the champion, switch atomically, record why.

    The challenger and the champion are scored by the same function on the same holdout (the
    challenger's validation set); metrics.json's AUC is only kept for the record. First, the
    dangling intents of a gate that crashed are resolved (see `recover_decisions`). A promotion
    records its decision as an intent, switches the pointer, then completes the record. If
    another gate switches the champion meanwhile, the decision is re-taken against the new
    champion (compare-and-swap under the lock).

    Args:
        root: the data root.
        spec: the DatasetSpec (model name, gate_tolerance, gate_floor_auc).
        version: the challenger version.
        holdout: the challenger's validation frame (features + label); re-read when None.
        decided_by: who asks (a DAG run id, a user name), stored in the decision.
        attempts: how often to re-decide when the champion changed underneath.
        policy: how long to wait for the champion lock and when it is stale.

    Returns:
        The decision (also written under `models/<name>/decisions/`).
    """
    name = spec.model.name
    recover_decisions(root, name, decided_by, policy)
    holdout = load_holdout(root, spec, version) if holdout is None else holdout
    scored = _Scored(_score_auc(root, name, version, holdout),
                     read_version_json(root, name, version, METRICS_FILE).get("roc_auc"),
                     holdout_identity(holdout, spec.id_column))
    for _ in range(attempts):
        current = read_champion(root, name)
        decision = _evaluate(root, spec, version, scored, current, holdout, decided_by)
        if not decision.promoted:
            record_decision(root, name, decision.to_dict())
            return decision
        try:
            _switch_champion(root, name, decision.to_dict(), decision.champion_version,
                             _history(current) + [version], policy)
        except ChampionChangedError:
            continue
        return decision
    raise RegistryError(f"champion of {name} kept changing; gave up after {attempts} attempts")


@dataclass(frozen=True)
class _Scored:
    """The challenger as scored once per gate: AUC, metrics.json's AUC, holdout identity."""

    auc: float
    recorded_auc: float | None
    holdout: dict


def _evaluate(root: str, spec: DatasetSpec, version: str, challenger: _Scored,
              current: dict | None, holdout: pd.DataFrame, decided_by: str) -> GateDecision:
    """The decision against the champion of `current` (scored on the same holdout)."""
    champion = current["version"] if current else None
    if champion == version:
        promoted, reason, champion_auc = False, "already the champion", challenger.auc
    else:
        champion_auc = _score_auc(root, spec.model.name, champion, holdout) if champion else None
        promoted, reason = _verdict(challenger.auc, champion_auc, spec.model.gate_tolerance,
                                    spec.model.gate_floor_auc)
    recorded = None if challenger.recorded_auc is None else float(challenger.recorded_auc)
    return GateDecision(promoted, reason, version, challenger.auc, champion, champion_auc,
                        spec.model.gate_tolerance, spec.model.gate_floor_auc,
                        challenger.holdout["rows"], challenger.holdout["days"],
                        challenger.holdout["digest"], recorded, decided_by, utc_now())


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m churn.registry",
                                     description="Inspect and switch the model registry.")
    parser.add_argument("--root", required=True, help="data root (folder or s3://...)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--model-name", help="model name")
    who.add_argument("--spec", help="dataset spec file (its model.name, gate settings)")
    parser.add_argument("--by", default=os.environ.get("USER", "cli"), help="who decides")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions, their AUC, and the champion")
    show = commands.add_parser("show", help="one version's meta and metrics (default champion)")
    show.add_argument("version", nargs="?")
    promote_cmd = commands.add_parser("promote", help="make a version champion (no gate)")
    promote_cmd.add_argument("version")
    promote_cmd.add_argument("--reason", default="manual promotion")
    commands.add_parser("rollback", help="go back to the previous champion")
    gate_cmd = commands.add_parser("gate", help="run the promotion gate (needs --spec)")
    gate_cmd.add_argument("version")
    return parser.parse_args(argv)


def _list_rows(root: str, name: str) -> list[dict]:
    pointer = read_champion(root, name)
    champion = pointer["version"] if pointer else None
    rows = []
    for version in list_versions(root, name):
        metrics = read_version_json(root, name, version, METRICS_FILE)
        rows.append({"version": version, "roc_auc": metrics.get("roc_auc"),
                     "champion": version == champion})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: list | show [VERSION] | promote VERSION | rollback | gate VERSION."""
    args = _parse_args(argv)
    spec = None
    if args.spec:
        spec = load_spec(args.spec)
    name = spec.model.name if spec else args.model_name
    if args.command == "list":
        output: Any = _list_rows(args.root, name)
    elif args.command == "show":
        version = args.version or (read_champion(args.root, name) or {}).get("version")
        if version is None:
            raise SystemExit(f"{name}: no champion; name a version")
        output = {file: read_version_json(args.root, name, version, file)
                  for file in (META_FILE, METRICS_FILE, PARAMS_FILE)}
        output["version"] = version
    elif args.command == "promote":
        output = promote(args.root, name, args.version, args.by, args.reason)
    elif args.command == "rollback":
        output = rollback(args.root, name, args.by)
    else:
        if spec is None:
            raise SystemExit("gate needs --spec (tolerance and floor come from it)")
        output = gate(args.root, spec, args.version, decided_by=args.by).to_dict()
    print(json.dumps(output, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
