"""The champion pointer: which model version scores, switched under a lock, every switch recorded.

Layout under one root (local folder or `s3://`), next to the versions of `churn.registry`:

    models/<name>/champion.json     {"version": ..., "history": [...], "decision_id": ...}
    models/<name>/champion.lock     held (flock) by whoever switches the pointer
    models/<name>/decisions/<decided_at>-<version>-<id>.json   one gate / promote / rollback

`champion.json` is only switched under `champion.lock` (an flock the OS drops when its holder
dies; a lock whose holder is gone, or held longer than `LockPolicy.stale_after_s`, is broken
with a warning), after re-checking the pointer it read (compare-and-swap), so two concurrent
gates never both promote on a stale view. Each switch writes its decision record first, as an
intent, then the pointer, then completes the record: a crash never loses the audit record, and
the next switcher completes (pointer switched) or aborts (not switched) a dangling intent.

At import time this module needs only pyarrow and the standard library (the scorer's lookup,
`champion_uri`, goes through it).

Fault points (`churn.faults`: `CHURN_KILL_AT=<step>` makes the process SIGKILL itself there,
`CHURN_PAUSE_AT` makes concurrent switchers meet there): `registry:locked` (champion lock
held), `registry:lock-busy` (another holds the lock: this switcher waits at its door),
`registry:compared` (a compare-and-swap switch read the pointer and found it unchanged, under
the lock, not yet switched), `registry:intent` (intent recorded, pointer not switched),
`registry:switched` (pointer switched, record not completed).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

from churn.faults import fault_point
from churn.registry import RegistryError, file_type, load_model_dir, read_json_object
from churn.storage import Layout, filesystem, list_children, read_json, write_json_atomic

DECISIONS_DIR = "decisions"
LOCK_FILE = "champion.lock"
INTENT, DONE, ABORTED = "intent", "done", "aborted"
LOG = logging.getLogger(__name__)


def read_champion(root: str, model_name: str) -> dict | None:
    """The champion pointer's content, or None when no champion was ever promoted.

    Raises:
        RegistryError: champion.json is corrupt or names a version that does not exist.
    """
    layout = Layout(root)
    pointer = layout.champion(model_name)
    if file_type(pointer) == pafs.FileType.NotFound:
        return None
    payload = read_json_object(pointer)
    version = payload.get("version")
    if not isinstance(version, str):
        raise RegistryError(f"{pointer}: no 'version' string in the champion pointer")
    try:
        version_dir = layout.model_version(model_name, version)
    except ValueError as exc:
        raise RegistryError(f"{pointer}: invalid version {version!r}: {exc}") from exc
    if file_type(version_dir) != pafs.FileType.Directory:
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
    `switch_champion` still catches a changed pointer, but the window is not closed.

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
                fault_point("registry:lock-busy")
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


def switch_champion(root: str, model_name: str, decision: dict, expected: str | None,
                    history: list[str], policy: LockPolicy = LockPolicy()) -> None:
    """Point champion.json at the decision's version if it still points at `expected`.

    Args:
        root: the data root.
        model_name: the model's name.
        decision: the decision to record (its `version`, `decided_by`, `decided_at`, ...).
        expected: the champion version the decision was taken against (None: no champion).
        history: the pointer's history once switched (`pointer_history` + the new version).
        policy: how long to wait for the champion lock and when it is stale.

    Raises:
        ChampionChangedError: the champion is no longer `expected` (re-decide).
    """
    with _switching(root, model_name, decision["decided_by"], policy) as held:
        current = read_champion(root, model_name)
        current_version = current["version"] if current else None
        if current_version != expected:
            raise ChampionChangedError(
                f"champion changed from {expected} to {current_version} while deciding")
        fault_point("registry:compared")
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


def pointer_history(pointer: dict | None) -> list[str]:
    """The versions a pointer has been switched to, oldest first (empty without a champion)."""
    if pointer is None:
        return []
    return list(pointer.get("history") or [pointer["version"]])


def utc_now() -> str:
    """The wall-clock time of a decision (audit timestamp only, never a partition key)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    decisions = _decisions_uri(root, model_name)
    return [{"status": DONE, **read_json(f"{decisions}/{name}")}
            for name in list_children(decisions) if name.endswith(".json")]


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
        _switch_recorded(root, model_name, decision, pointer_history(current) + [version], held)
    return decision


def rollback(root: str, model_name: str, decided_by: str, reason: str = "manual rollback",
             policy: LockPolicy = LockPolicy()) -> dict:
    """Point the champion back at the previously promoted version (intent recorded first).

    Raises:
        RegistryError: there is no champion or no earlier one to go back to.
    """
    with _switching(root, model_name, decided_by, policy) as held:
        current = read_champion(root, model_name)
        history = pointer_history(current)
        if len(history) < 2:
            raise RegistryError(f"{model_name}: no earlier champion to roll back to")
        target = history[-2]
        load_model_dir(Layout(root).model_version(model_name, target))
        decision = {"action": "rollback", "version": target, "promoted": True,
                    "previous_version": history[-1], "decided_by": decided_by,
                    "reason": reason, "decided_at": utc_now()}
        _switch_recorded(root, model_name, decision, history[:-1], held)
    return decision
