"""A new model version: train on a run's window with a search, evaluate, write it to the registry.

`train_model` reads and splits the window, encodes it, asks a `Search` for the best early-stopped
booster (Ray Tune in `ray_jobs/train.py`; tests pass a cheap in-process search), scores the
validation rows, refits when the spec says so, and writes the version (model, schema, params,
metrics, meta, report, holdout ids) with `registry.write_version`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pandas as pd

from churn import registry, training
from churn.metrics import classification_metrics, render_report
from churn.modeling import LABEL_COLUMN, FeatureSchema, infer_schema, predict_proba
from churn.spec import DatasetSpec

if TYPE_CHECKING:
    import numpy as np
    import xgboost


@dataclass(frozen=True)
class TrainSettings:
    """The knobs of one training run (the flags of `ray_jobs/train.py`).

    Attributes:
        trials: trials of the search.
        train_days: days in the window (None = spec.model.train_days).
        workers: 1 = each trial calls xgboost.train; > 1 = each trial runs Train V2 with W workers.
        max_concurrent: upper bound on concurrent trials (None = as many as fit).
        seed: seed of the split, the search and xgboost.
        num_boost_round: maximum boosting rounds.
        early_stopping_rounds: stop when validation AUC has not improved for this many rounds.
        search_space: True = trials sample `training.search_space()`; False = every trial runs
            `training.DEFAULT_PARAMS` (benchmarks).
        driver_cpus: CPUs reserved for the job's entrypoint (the Jobs API's
            `entrypoint_num_cpus`), left out of the search's plan.
    """

    trials: int = 8
    train_days: int | None = None
    workers: int = 1
    max_concurrent: int | None = None
    seed: int = 42
    num_boost_round: int = 300
    early_stopping_rounds: int | None = 20
    search_space: bool = True
    driver_cpus: float = 0.0

    @property
    def boost(self) -> training.BoostSettings:
        """The rounds, early stopping and seed every trial trains with."""
        return training.BoostSettings(self.num_boost_round, self.early_stopping_rounds, self.seed)


@dataclass(frozen=True)
class SearchResult:
    """What a search returns: the best config, its early-stopped booster, the resource plan."""

    config: dict
    booster: xgboost.Booster
    plan: training.TrialPlan


# search(data, (train, valid), schema, settings, root) -> the best trial's result.
Search = Callable[[training.Matrices, tuple[pd.DataFrame, pd.DataFrame], FeatureSchema,
                   TrainSettings, str], SearchResult]


@dataclass(frozen=True)
class Outcome:
    """What the search produced, ready to be written as a registry version."""

    booster: xgboost.Booster
    schema: FeatureSchema
    valid: pd.DataFrame
    scores: np.ndarray
    config: dict
    rounds: int
    window: training.TrainingWindow
    plan: training.TrialPlan
    train_rows: int


def train_model(root: str, spec: DatasetSpec, ds: str, settings: TrainSettings,
                search: Search, *, reader: Callable = training.read_labelled_frame,
                session: AbstractContextManager | None = None,
                provenance: dict | None = None) -> dict:
    """Assemble the training set, search, evaluate, and write a new model version.

    Args:
        root: the data root (features/, labels/, models/ under it).
        spec: the dataset spec (id column, horizon, model settings).
        ds: the run's day; trains on matured days ≤ ds − horizon.
        settings: the run's knobs (window length, trials, rounds, seed, ...).
        search: finds the best config and booster (see `Search`).
        reader: reads the window's labelled rows (`training.read_labelled_frame` or
            `training.read_labelled_frame_ray`).
        session: entered after the window is known, around the read and the search, left
            before the version is written (the job's Ray connection); default: none.
        provenance: fields recorded as is in meta.json (created_by, code_version).

    Returns:
        The result: version, version_uri, metrics, best params, window, timings.
    """
    timings, started = {}, time.perf_counter()
    window = training.training_window(root, spec, ds, settings.train_days or spec.model.train_days)
    with session or nullcontext():
        outcome = _search_and_fit(root, spec, window, settings, search, reader, timings)
    return write_model_version(root, spec, ds, outcome, provenance or {}, timings, started)


def _search_and_fit(root: str, spec: DatasetSpec, window: training.TrainingWindow,
                   settings: TrainSettings, search: Search, reader: Callable,
                   timings: dict) -> Outcome:
    """Read and split the window, run the search, pick (and maybe refit) the best model.

    Returns:
        The outcome; `timings` gains read_s, tune_s (and refit_s when refitting).
    """
    clock = time.perf_counter()
    train, valid = training.load_split(root, spec, window, settings.seed, reader)
    schema = infer_schema(train, spec.id_column)
    data = training.encode(schema, train, valid)
    timings["read_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    best = search(data, (train, valid), schema, settings, root)
    timings["tune_s"] = time.perf_counter() - clock
    booster, plan = best.booster, best.plan
    scores = predict_proba(booster, schema, valid, nthread=plan.nthread)
    rounds = booster.num_boosted_rounds()
    if spec.model.refit_on_full:
        clock = time.perf_counter()
        booster = training.refit_booster(best.config, (train, valid), schema, rounds,
                                         plan.nthread, settings.boost)
        timings["refit_s"] = time.perf_counter() - clock
    return Outcome(booster, schema, valid, scores, best.config, rounds, window, plan, len(train))


def write_model_version(root: str, spec: DatasetSpec, ds: str, outcome: Outcome,
                        provenance: dict, timings: dict, started: float) -> dict:
    """Compute metrics and the report, write the version, and build the result JSON.

    Args:
        root: the data root.
        spec: the dataset spec.
        ds: the run's day (the version id's date and meta's created_at).
        outcome: the model and the validation rows it was scored on.
        provenance: fields recorded as is in meta.json (created_by, code_version).
        timings: timings so far; gains write_s and total_s.
        started: `time.perf_counter()` at the start of the run.

    Returns:
        The result: version, version_uri, model_name, metrics, params, window, timings.
    """
    clock = time.perf_counter()
    window = outcome.window
    metrics = {**classification_metrics(outcome.valid[LABEL_COLUMN].to_numpy(), outcome.scores),
               "holdout": window.holdout, "train_rows": outcome.train_rows,
               "best_iteration": outcome.rounds - 1, "refit_on_full": spec.model.refit_on_full}
    params = {k: v for k, v in training.booster_params(outcome.config, 1, 0).items()
              if k not in ("nthread", "seed")}
    params["num_boost_round"] = outcome.rounds
    meta = {**provenance, "ds": ds, "created_at": ds, "window": window.to_meta(),
            "model_name": spec.model.name, "dataset": spec.name, "plan": asdict(outcome.plan),
            "best_config": outcome.config}
    version = registry.version_id(ds, bytes(outcome.booster.save_raw("ubj")))
    files = _version_files(outcome, params, metrics, meta, f"{spec.model.name} {version}")
    if window.holdout == "random":
        files[registry.HOLDOUT_IDS_FILE] = _holdout_ids(outcome.valid, spec.id_column)
    uri = registry.write_version(root, spec.model.name, version, files)
    timings["write_s"] = time.perf_counter() - clock
    timings["total_s"] = time.perf_counter() - started
    return {"version": version, "version_uri": uri, "model_name": spec.model.name,
            "metrics": metrics, "params": params, "window": window.to_meta(),
            "timings": {k: round(v, 3) for k, v in timings.items()}}


def _version_files(outcome: Outcome, params: dict, metrics: dict, meta: dict,
                   title: str) -> dict[str, bytes]:
    """Every file of the new version: model, schema, params, metrics, meta, report PNGs."""
    booster = outcome.booster
    files = {registry.MODEL_FILE: bytes(booster.save_raw("ubj")),
             registry.FEATURES_FILE: outcome.schema.to_json().encode(),
             registry.PARAMS_FILE: registry.json_bytes(params),
             registry.METRICS_FILE: registry.json_bytes(metrics),
             registry.META_FILE: registry.json_bytes(meta)}
    files.update(render_report(outcome.valid[LABEL_COLUMN].to_numpy(), outcome.scores,
                               booster.get_score(importance_type="gain"), metrics, title))
    return files


def _holdout_ids(valid: pd.DataFrame, id_column: str) -> bytes:
    """The random holdout's (id, ds) rows as Parquet bytes, so the gate can rebuild it."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(valid[[id_column, "ds"]], preserve_index=False), buffer)
    return buffer.getvalue()
