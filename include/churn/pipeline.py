"""The daily DAG's own steps: training-due decision, champion check, gate call, manifest.

`dags/churn_pipeline.py` only wires tasks; each of its Python callables calls one function here.
Everything is keyed on the run's `ds` (never `now()`), reads and writes under one data root, and
leaves one JSON fragment per step in `runs/ds=…/` that `publish_manifest` merges.

Top-level imports are the standard library only, so the DAG file stays cheap to parse even if it
imports this module; pyarrow-backed helpers (`churn.storage`, `churn.registry`) load lazily.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INGEST_STEP, FEATURES_STEP, DECIDE_STEP, TRAIN_STEP, GATE_STEP, SCORE_STEP = (
    "ingest", "features", "decide", "train", "gate", "score")


def resolve_spec_path(spec: str, repo_root: str | Path) -> str:
    """The dataset spec as an absolute path or URI (relative paths are relative to the repo).

    Args:
        spec: the `dataset_spec` param, e.g. `include/datasets/synthetic.yaml` or `s3://…`.
        repo_root: the project's root folder.

    Returns:
        An absolute local path, or the URI unchanged.
    """
    if "://" in spec or os.path.isabs(spec):
        return spec
    return str(Path(repo_root) / spec)


class NoLogicalDateError(ValueError):
    """A run without a logical date: it has no day to process."""


def require_logical_date(ds: str | None) -> str:
    """The run's `ds`, or a clear failure for a run triggered without a logical date.

    Airflow 3 lets a manual run have no logical date; such a run has no day to process, and
    guessing one (the last finished day?) would hide a mistake in a backfill or a script.

    Raises:
        NoLogicalDateError: `ds` is None; the message says how to pick the day.
    """
    if ds:
        return ds
    raise NoLogicalDateError(
        "this run has no logical date, so it has no day to process: trigger it with a logical "
        "date (the day to process, e.g. 2025-03-01T00:00:00Z in the trigger form, or "
        "`airflow dags trigger churn_pipeline --logical-date 2025-03-01`)")


def missing_raw_partitions(root: str, spec_path: str, ds: str) -> list[str]:
    """The raw partitions of ds that have not landed yet (empty list: all there).

    A partition has landed when its producer's ready marker is there (`ready.marker`, default
    `_SUCCESS`) next to at least one data file; see `churn.landing`.

    Args:
        root: the data root.
        spec_path: the dataset spec file (which tables to expect, which marker).
        ds: the run's logical date.

    Returns:
        The missing partitions' paths; each is logged with what is missing.
    """
    from churn.landing import waiting_for
    from churn.spec import load_spec

    waiting = waiting_for(root, load_spec(spec_path), ds)
    for uri, reason in waiting.items():
        log.info("waiting for raw partition %s: %s", uri, reason)
    return list(waiting)


def is_cadence_day(ds: str, every_days: int) -> bool:
    """Whether ds is a scheduled training day: days since 1970-01-01 divisible by `every_days`.

    The cadence is a pure function of the date, so re-running or backfilling a day always takes
    the same decision (with 7 this is every Thursday).
    """
    if every_days < 1:
        raise ValueError(f"train every N days needs N >= 1, got {every_days}")
    from churn.storage import day_number

    return day_number(ds) % every_days == 0


def next_cadence_day(ds: str, every_days: int) -> str:
    """The first scheduled training day strictly after ds."""
    from churn.storage import day_number, shift_ds

    return shift_ds(ds, every_days - day_number(ds) % every_days)


@dataclass(frozen=True)
class TrainingDecision:
    """Whether this run trains, why, and how many matured label days it could use."""

    train: bool
    reason: str
    label_days: int


def training_decision(ds: str, *, label_days: int, has_champion: bool, every_days: int,
                      force: bool, min_label_days: int) -> TrainingDecision:
    """The training rule, as a pure function of what the run sees.

    Training needs at least `min_label_days` matured label days; then it runs when forced by
    the run's params, when there is no champion yet (cold start), or on a cadence day.

    Args:
        ds: the run's logical date.
        label_days: matured days (features and labels, day ≤ ds − horizon) as of ds.
        has_champion: whether a champion model exists.
        every_days: the cadence N (train every N days).
        force: the `force_retrain` param.
        min_label_days: matured label days needed before any training.

    Returns:
        The decision with a human-readable reason.
    """
    if label_days < max(1, min_label_days):
        return TrainingDecision(False, f"not enough matured labels: {label_days} label day(s) "
                                       f"as of {ds}, training needs {max(1, min_label_days)}",
                                label_days)
    if force:
        return TrainingDecision(True, "forced by the run's params (force_retrain=true)", label_days)
    if not has_champion:
        return TrainingDecision(True, "no champion yet: first training", label_days)
    if is_cadence_day(ds, every_days):
        return TrainingDecision(True, f"due: training runs every {every_days} day(s)", label_days)
    return TrainingDecision(False, f"not due: training runs every {every_days} day(s), next on "
                                   f"{next_cadence_day(ds, every_days)}", label_days)


def decide_training(root: str, spec_path: str, ds: str, *, every_days: int, force: bool,
                    min_label_days: int) -> TrainingDecision:
    """Decide whether the run for ds trains, and record the decision in `runs/ds=…/decide.json`.

    Args:
        root, spec_path, ds: the data root, the dataset spec file and the run's logical date.
        every_days: the training cadence.
        force: the `force_retrain` param.
        min_label_days: matured label days needed before any training.

    Returns:
        The decision.
    """
    from churn.champion import champion_uri
    from churn.spec import load_spec
    from churn.training import matured_days

    spec = load_spec(spec_path)
    decision = training_decision(
        ds, label_days=len(matured_days(root, spec, ds)),
        has_champion=champion_uri(root, spec.model.name) is not None, every_days=every_days,
        force=force, min_label_days=min_label_days)
    log.info("training decision for %s: %s (%s)", ds, "train" if decision.train else "skip",
             decision.reason)
    _write_fragment(root, ds, DECIDE_STEP, {**asdict(decision), "every_days": every_days})
    return decision


def scoring_model(root: str, spec_path: str, ds: str, *, skip_scoring: bool) -> str | None:
    """The champion's version directory to score ds with, or None (scoring skipped).

    When scoring is skipped the reason goes to the task log and to `runs/ds=…/score.json`, which
    also replaces any score fragment left by an earlier run of the same day.

    Args:
        root, spec_path, ds: the data root, the dataset spec file and the run's logical date.
        skip_scoring: the `skip_scoring` param.

    Returns:
        `models/<name>/<version>` of the champion, or None.
    """
    from churn.champion import champion_uri
    from churn.spec import load_spec

    model_name = load_spec(spec_path).model.name
    uri = champion_uri(root, model_name)
    if uri is not None and not skip_scoring:
        log.info("scoring %s with the champion %s", ds, uri)
        _write_fragment(root, ds, SCORE_STEP, {"skipped": False, "model_uri": uri,
                                               "model_version": uri.rpartition("/")[2]})
        return uri
    reason = ("scoring skipped by the run's params (skip_scoring=true)" if skip_scoring else
              f"no champion for model {model_name!r} yet (no label has matured or no model "
              f"passed the gate): scoring of {ds} skipped, the run still succeeds")
    log.warning(reason)
    _write_fragment(root, ds, SCORE_STEP, {"skipped": True, "reason": reason})
    return None


def run_gate(root: str, spec_path: str, ds: str, train_result: dict, decided_by: str) -> dict:
    """Put the freshly trained version through the registry's gate (promote or keep).

    Args:
        root, spec_path, ds: the data root, the dataset spec file and the run's logical date.
        train_result: the Ray job operator's XCom: {"submission_id", "status", "result"}, where
            result is the training entry point's last-line JSON (with "version" and "metrics").
        decided_by: who decides, e.g. `churn_pipeline/<run_id>`.

    Returns:
        The decision as a dict (promoted, reason, challenger_auc, champion_auc, version).

    Raises:
        ValueError: the training result names no model version.
    """
    from churn.gate import gate
    from churn.spec import load_spec

    result = train_result.get("result") or {}
    if not result.get("version"):
        raise ValueError(f"the training job returned no model version: {train_result!r}")
    version = result["version"]
    _write_fragment(root, ds, TRAIN_STEP, {
        "submission_id": train_result.get("submission_id"), "status": train_result.get("status"),
        **{k: v for k, v in result.items() if k not in ("step", "ds")}})
    started = time.monotonic()
    decision = gate(root, load_spec(spec_path), version, decided_by=decided_by)
    payload = {"version": version, **_as_dict(decision),
               "seconds": round(time.monotonic() - started, 3)}
    log.info("gate for %s: %s %s (%s)", ds, "PROMOTED" if payload.get("promoted") else "KEPT",
             version, payload.get("reason"))
    _write_fragment(root, ds, GATE_STEP, payload)
    return payload


def _as_dict(decision: Any) -> dict:
    """A gate decision (dataclass or mapping) as a plain dict."""
    if isinstance(decision, dict):
        return dict(decision)
    return asdict(decision)


def _write_fragment(root: str, ds: str, step: str, payload: dict) -> None:
    from churn.manifest import fragment, write_fragment
    from churn.storage import Layout

    write_fragment(Layout(root), ds, step, fragment(step, ds, **payload))


def read_fragments(root: str, ds: str, steps: list[str]) -> dict[str, dict]:
    """The JSON fragments of the given steps for ds (a missing one is left out)."""
    from churn.storage import Layout, exists, read_json

    layout = Layout(root)
    uris = {step: layout.run_fragment(ds, step) for step in steps}
    return {step: read_json(uri) for step, uri in uris.items() if exists(uri)}


def step_seconds(fragments: dict[str, dict]) -> dict[str, float]:
    """Seconds per step: a fragment's `seconds`, else its `timings.total_s` (the training job)."""
    seconds = {step: fragment.get("seconds", (fragment.get("timings") or {}).get("total_s"))
               for step, fragment in fragments.items()}
    return {step: value for step, value in seconds.items() if value is not None}


def publish_manifest(root: str, ds: str, *, run: dict, repo_root: str) -> dict:
    """Merge this run's step fragments into `runs/ds=…/manifest.json` (atomic, replaces a rerun's).

    Only the steps that ran in this run are merged: a stale `train.json` of an earlier run of the
    same day is left out when this run's `decide.json` says it did not train.

    Args:
        root: the data root.
        ds: the run's logical date.
        run: facts about the Airflow run (dag_id, run_id, logical_date, conf, start_date).
        repo_root: the project's root (for the code version).

    Returns:
        The manifest.
    """
    from churn.storage import Layout, parquet_rows, write_json_atomic
    from churn.versions import code_version, library_versions, package_version

    trained = bool(read_fragments(root, ds, [DECIDE_STEP]).get(DECIDE_STEP, {}).get("train"))
    steps = [INGEST_STEP, FEATURES_STEP, DECIDE_STEP, *([TRAIN_STEP, GATE_STEP] if trained else []),
             SCORE_STEP]
    fragments = read_fragments(root, ds, steps)
    score = fragments.get(SCORE_STEP, {})
    scored = bool(score) and not score.get("skipped", True)
    layout = Layout(root)
    manifest = {
        "ds": ds,
        "run": run,
        "tables": (fragments.get(INGEST_STEP) or {}).get("tables", {}),
        "rows": {"features": (fragments.get(FEATURES_STEP) or {}).get("feature_rows"),
                 "predictions": parquet_rows(layout.predictions(ds)) if scored else None},
        "scored": scored,
        "model_version": score.get("model_version") if scored else None,
        "predictions": layout.predictions(ds) if scored else None,
        "trained": trained,
        "gate": fragments.get(GATE_STEP),
        "timings": step_seconds(fragments),
        "steps": fragments,
        "code_version": code_version(repo_root),
        "package_version": package_version(),
        "libraries": library_versions(),
    }
    write_json_atomic(layout.manifest(ds), manifest)
    log.info("published %s: scored=%s model=%s", layout.manifest(ds), manifest["scored"],
             manifest["model_version"])
    return manifest

