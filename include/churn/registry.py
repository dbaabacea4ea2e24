"""Model registry: the store of immutable model versions.

Layout under one root (local folder or `s3://`):

    models/<name>/<version>/        model.ubj, features.json, params.json, metrics.json,
                                    meta.json, report.html + PNGs (never rewritten)

Version ids are `v<YYYYMMDD of ds>-<8 hex of the model's content>`: sortable by training day and
unique per content. Writing a version is idempotent: the same bytes again return the existing
version (a retried job succeeds), other bytes under that id fail and name the files that differ.
A version counts only once complete (meta.json, written last, is there): readers never see a
half-written one.

The champion pointer and its lock live in `churn.champion`, the promotion gate in `churn.gate`,
the command line in `churn.registry_cli`. At import time this module needs only pyarrow and the
standard library (the scorer's lookup path); the model checks import `churn.modeling` when run.

Fault points (`churn.faults`, `CHURN_KILL_AT=<step>` makes the process SIGKILL itself there):
`write_version:partial` (one file written), `write_version:staged` (all files written, not yet
visible), `write_version:moved` (visible, not yet returned).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from churn.faults import fault_point
from churn.storage import Layout, filesystem, list_children, read_json, validate_ds, validate_name

if TYPE_CHECKING:
    from churn.modeling import FeatureSchema

MODEL_FILE = "model.ubj"
FEATURES_FILE = "features.json"
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.json"
META_FILE = "meta.json"
REQUIRED_FILES = (MODEL_FILE, FEATURES_FILE, PARAMS_FILE, METRICS_FILE, META_FILE)
# A random holdout's (id, ds) rows, written with the version so the gate can re-read it.
HOLDOUT_IDS_FILE = "holdout_ids.parquet"
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


def file_type(uri: str) -> pafs.FileType:
    """What is at a URI: `pafs.FileType.File`, `.Directory` or `.NotFound`."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type


@contextmanager
def _refused(uri: str) -> Iterator[None]:
    """Re-raise a model check's ValueError as a RegistryError that names the checked file."""
    try:
        yield
    except ValueError as exc:
        raise RegistryError(f"{uri}: {exc}") from exc


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
    from churn.modeling import FeatureSchema, check_model_bytes, check_model_features, load_booster

    uri = uri.rstrip("/")
    if file_type(uri) != pafs.FileType.Directory:
        raise RegistryError(f"model version directory not found: {uri}")
    if file_type(f"{uri}/{META_FILE}") != pafs.FileType.File:
        raise RegistryError(f"{uri}: incomplete model version (no {META_FILE}: its writer did "
                            "not finish; retrying the write completes it)")
    model_uri = f"{uri}/{MODEL_FILE}"
    if file_type(model_uri) != pafs.FileType.File:
        raise RegistryError(f"{uri}: no {MODEL_FILE} in the model version directory")
    model_bytes = _read_bytes(model_uri)
    with _refused(model_uri):
        check_model_bytes(model_bytes)
    try:
        schema = FeatureSchema.from_json(_read_bytes(f"{uri}/{FEATURES_FILE}").decode())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{uri}: bad or missing {FEATURES_FILE}: {exc}") from exc
    with _refused(model_uri):  # loads the booster (never unpickling) to compare its features
        check_model_features(load_booster(model_bytes), schema)
    meta = read_json_object(f"{uri}/{META_FILE}")
    return ModelArtifact(uri.rpartition("/")[2], model_bytes, schema, meta)


def read_json_object(uri: str) -> dict:
    """Read a JSON object, raising RegistryError (never guessing) when absent or corrupt."""
    try:
        payload = read_json(uri)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{uri}: missing or not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise RegistryError(f"{uri}: expected a JSON object, got {type(payload).__name__}")
    return payload


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
    models = Layout(root).models(model_name)
    fs, path = filesystem(models)
    return [name for name in list_children(models)
            if name.startswith("v") and _is_complete(fs, f"{path}/{name}")]


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
    from churn.modeling import check_model_bytes

    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise RegistryError(f"version {version}: missing files {', '.join(missing)}")
    with _refused(MODEL_FILE):
        check_model_bytes(files[MODEL_FILE])
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
    return read_json_object(f"{Layout(root).model_version(model_name, version)}/{name}")
