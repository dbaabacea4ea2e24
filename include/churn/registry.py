"""Model registry: immutable model versions, the champion pointer and the promotion gate.

Layout under one root (local folder or `s3://`):

    models/<name>/<version>/        model.ubj, features.json, params.json, metrics.json,
                                    meta.json, report.html + PNGs (never rewritten)
    models/<name>/champion.json     {"version": ..., "promoted_at": ..., "decided_by": ...}
    models/<name>/decisions/<decided_at>-<version>.json   one gate / promote / rollback decision

Version ids are `v<YYYYMMDD of ds>-<8 hex of the model's content>`: sortable by training day and
unique per content. `champion.json` is only switched by `_switch_champion`, which holds a lock
file (O_EXCL) and re-checks the pointer it read (compare-and-swap), so two concurrent gates never
both promote on a stale view.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
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

from churn.metrics import roc_auc
from churn.modeling import LABEL_COLUMN, FeatureSchema, load_booster, predict_proba
from churn.spec import DatasetSpec, load_spec
from churn.training import read_labelled_frame
from churn.storage import (Layout, filesystem, read_json, validate_ds, validate_name,
                           write_json_atomic)

MODEL_FILE = "model.ubj"
FEATURES_FILE = "features.json"
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.json"
META_FILE = "meta.json"
REQUIRED_FILES = (MODEL_FILE, FEATURES_FILE, PARAMS_FILE, METRICS_FILE, META_FILE)
DECISIONS_DIR = "decisions"


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
    """Read one model version directory.

    Args:
        uri: `models/<name>/<version>` (local path or `s3://`).

    Returns:
        The version id (the directory name), the model bytes, its feature schema and meta.json.

    Raises:
        RegistryError: the directory or one of its files is missing, the model file is not an
            XGBoost model, its features differ from features.json, or features.json /
            meta.json is unreadable.
    """
    uri = uri.rstrip("/")
    if _file_type(uri) != pafs.FileType.Directory:
        raise RegistryError(f"model version directory not found: {uri}")
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
    """Every complete version of a model, oldest first (temp dirs and decisions hidden)."""
    fs, path = filesystem(Layout(root).models(model_name))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("v"))


def write_version(root: str, model_name: str, version: str, files: dict[str, bytes]) -> str:
    """Write a new immutable version directory (locally: temp sibling, then one rename).

    Args:
        root: the data root.
        model_name: the model's name.
        version: the new version id (see `version_id`).
        files: file name -> content; must include model.ubj, features.json, params.json,
            metrics.json and meta.json.

    Returns:
        The version directory.

    Raises:
        VersionExistsError: the version already exists (versions are never rewritten).
        RegistryError: a required file is missing or the model is not an XGBoost model.
    """
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise RegistryError(f"version {version}: missing files {', '.join(missing)}")
    _check_model_bytes(files[MODEL_FILE], MODEL_FILE)
    final = Layout(root).model_version(model_name, version)
    if _file_type(final) != pafs.FileType.NotFound:
        raise VersionExistsError(f"model version {version} already exists at {final}")
    fs, final_path = filesystem(final)
    if not isinstance(fs, pafs.LocalFileSystem):
        # No directory rename on S3: write in place, meta.json last (load_model_dir needs it).
        _write_files(fs, final_path, files)
        return final
    tmp_path = f"{final_path.rpartition('/')[0]}/_tmp-{version}-{uuid.uuid4().hex[:8]}"
    _write_files(fs, tmp_path, files)
    if fs.get_file_info(final_path).type != pafs.FileType.NotFound:
        fs.delete_dir(tmp_path)
        raise VersionExistsError(f"model version {version} already exists at {final}")
    fs.move(tmp_path, final_path)
    return final


def _write_files(fs: pafs.FileSystem, directory: str, files: dict[str, bytes]) -> None:
    """Write every file into a directory, meta.json last (its presence marks completeness)."""
    fs.create_dir(directory, recursive=True)
    for name in sorted(files, key=lambda n: n == META_FILE):
        validate_name(name.replace(".", "_"), "file name")
        with fs.open_output_stream(f"{directory}/{name}") as out:
            out.write(files[name])


def json_bytes(payload: Any) -> bytes:
    """Stable, readable JSON bytes for a registry file."""
    return json.dumps(payload, indent=2, sort_keys=True, default=str).encode()


def read_version_json(root: str, model_name: str, version: str, name: str) -> dict:
    """One JSON file (metrics, params, meta) of a version."""
    return _read_json_or_fail(f"{Layout(root).model_version(model_name, version)}/{name}")


# --------------------------------------------------------------------------- champion switching


class ChampionChangedError(RegistryError):
    """The champion changed between reading it and switching it (lost a compare-and-swap)."""


@contextmanager
def _champion_lock(root: str, model_name: str, timeout_s: float = 30.0) -> Iterator[None]:
    """Hold `models/<name>/champion.lock` (created with O_EXCL) for a local root.

    On S3 there is no exclusive create through pyarrow; the compare-and-swap in
    `_switch_champion` still catches a changed pointer, but the window is not closed.
    """
    fs, models_path = filesystem(Layout(root).models(model_name))
    if not isinstance(fs, pafs.LocalFileSystem):
        yield
        return
    fs.create_dir(models_path, recursive=True)
    lock = f"{models_path}/champion.lock"
    stop_at = time.monotonic() + timeout_s
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > stop_at:
                raise RegistryError(f"champion lock {lock} held for over {timeout_s}s; "
                                    "remove it if no gate or promote is running") from None
            time.sleep(0.05)  # lock back-off, bounded by the timeout
    try:
        os.write(handle, str(os.getpid()).encode())
        yield
    finally:
        os.close(handle)
        os.unlink(lock)


def _switch_champion(root: str, model_name: str, version: str, expected: str | None,
                     history: list[str], details: dict) -> None:
    """Point champion.json at `version` if it still points at `expected` (under the lock)."""
    with _champion_lock(root, model_name):
        current = read_champion(root, model_name)
        current_version = current["version"] if current else None
        if current_version != expected:
            raise ChampionChangedError(
                f"champion changed from {expected} to {current_version} while deciding")
        write_json_atomic(Layout(root).champion(model_name),
                          {**details, "version": version, "history": history})


def _history(pointer: dict | None) -> list[str]:
    if pointer is None:
        return []
    return list(pointer.get("history") or [pointer["version"]])


def utc_now() -> str:
    """The wall-clock time of a decision (audit timestamp only, never a partition key)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_decision(root: str, model_name: str, decision: dict) -> str:
    """Append one decision to `models/<name>/decisions/` (one file each, never rewritten)."""
    stamp = decision["decided_at"].replace(":", "").replace("-", "").replace(".", "")
    name = f"{stamp}-{decision.get('version') or 'none'}-{uuid.uuid4().hex[:6]}.json"
    uri = f"{Layout(root).models(model_name)}/{DECISIONS_DIR}/{name}"
    write_json_atomic(uri, decision)
    return uri


def list_decisions(root: str, model_name: str) -> list[dict]:
    """Every recorded decision, oldest first."""
    fs, path = filesystem(f"{Layout(root).models(model_name)}/{DECISIONS_DIR}")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.base_name.endswith(".json")
                   and not i.base_name.startswith("_"))
    return [read_json(f"{path}/{name}") for name in names]


def promote(root: str, model_name: str, version: str, decided_by: str, reason: str) -> dict:
    """Make a version champion by hand (no gate), recording who and why.

    Raises:
        RegistryError: the version does not exist.
    """
    load_model_dir(Layout(root).model_version(model_name, version))
    with _champion_lock(root, model_name):
        current = read_champion(root, model_name)
        history = _history(current) + [version]
        decision = {"action": "promote", "version": version, "promoted": True,
                    "previous_version": current["version"] if current else None,
                    "decided_by": decided_by, "reason": reason, "decided_at": utc_now()}
        write_json_atomic(Layout(root).champion(model_name),
                          {**decision, "history": history})
    record_decision(root, model_name, decision)
    return decision


def rollback(root: str, model_name: str, decided_by: str, reason: str = "manual rollback") -> dict:
    """Point the champion back at the previously promoted version.

    Raises:
        RegistryError: there is no champion or no earlier one to go back to.
    """
    with _champion_lock(root, model_name):
        current = read_champion(root, model_name)
        history = _history(current)
        if len(history) < 2:
            raise RegistryError(f"{model_name}: no earlier champion to roll back to")
        target = history[-2]
        load_model_dir(Layout(root).model_version(model_name, target))
        decision = {"action": "rollback", "version": target, "promoted": True,
                    "previous_version": history[-1], "decided_by": decided_by,
                    "reason": reason, "decided_at": utc_now()}
        write_json_atomic(Layout(root).champion(model_name),
                          {**decision, "history": history[:-1]})
    record_decision(root, model_name, decision)
    return decision


# --------------------------------------------------------------------------- the promotion gate

HOLDOUT_IDS_FILE = "holdout_ids.parquet"


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on a challenger, as recorded in `decisions/`."""

    promoted: bool
    reason: str
    version: str
    challenger_auc: float
    champion_version: str | None
    champion_auc: float | None
    tolerance: float
    floor_auc: float
    holdout_rows: int
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
    artifact = load_model_dir(Layout(root).model_version(model_name, version))
    scores = predict_proba(load_booster(artifact.model_bytes), artifact.schema, holdout)
    return roc_auc(holdout[LABEL_COLUMN].to_numpy(), scores)


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
         decided_by: str = "gate", attempts: int = 3) -> GateDecision:
    """Decide whether a new version replaces the champion, switch atomically, record why.

    The challenger's AUC is its own validation AUC (metrics.json `roc_auc`); the champion is
    re-scored on that same holdout. If another gate switches the champion meanwhile, the
    decision is re-taken against the new champion (compare-and-swap under a lock).

    Args:
        root: the data root.
        spec: the DatasetSpec (model name, gate_tolerance, gate_floor_auc).
        version: the challenger version.
        holdout: the challenger's validation frame (features + label); re-read when None.
        decided_by: who asks (a DAG run id, a user name), stored in the decision.
        attempts: how often to re-decide when the champion changed underneath.

    Returns:
        The decision (also written under `models/<name>/decisions/`).
    """
    name = spec.model.name
    challenger_auc = float(read_version_json(root, name, version, METRICS_FILE)["roc_auc"])
    holdout = load_holdout(root, spec, version) if holdout is None else holdout
    for _ in range(attempts):
        current = read_champion(root, name)
        decision = _evaluate(root, spec, version, challenger_auc, current, holdout, decided_by)
        if decision.promoted:
            try:
                _switch_champion(root, name, version, decision.champion_version,
                                 _history(current) + [version], decision.to_dict())
            except ChampionChangedError:
                continue
        record_decision(root, name, decision.to_dict())
        return decision
    raise RegistryError(f"champion of {name} kept changing; gave up after {attempts} attempts")


def _evaluate(root: str, spec: DatasetSpec, version: str, challenger_auc: float,
              current: dict | None, holdout: pd.DataFrame, decided_by: str) -> GateDecision:
    """The decision against the champion of `current` (re-scored on the holdout)."""
    champion = current["version"] if current else None
    if champion == version:
        promoted, reason, champion_auc = False, "already the champion", challenger_auc
    else:
        champion_auc = _score_auc(root, spec.model.name, champion, holdout) if champion else None
        promoted, reason = _verdict(challenger_auc, champion_auc, spec.model.gate_tolerance,
                                    spec.model.gate_floor_auc)
    return GateDecision(promoted, reason, version, challenger_auc, champion, champion_auc,
                        spec.model.gate_tolerance, spec.model.gate_floor_auc, len(holdout),
                        decided_by, utc_now())


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
