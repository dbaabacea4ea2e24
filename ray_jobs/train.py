"""Ray Jobs entry point: train the churn model with Ray Tune and write a new registry version.

    python ray_jobs/train.py --root R --spec S --ds D --trials N [--train-days K] [--workers W]
        [--max-concurrent C] [--result-file F]

Runs on the cluster named by RAY_ADDRESS (a Ray job gets it set), or starts a local Ray. The last
log line is the result JSON (version, metrics, best params, timings), which the Airflow operator
pushes to XCom; the same JSON goes to `--result-file` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import churn
from churn import registry, training
from churn.metrics import classification_metrics, render_report
from churn.modeling import LABEL_COLUMN, FeatureSchema, infer_schema, load_booster, predict_proba
from churn.spec import DatasetSpec, load_spec
from churn.storage import write_json_atomic

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import xgboost


def _code_version() -> dict:
    """churn's version plus the git sha of the checkout, when there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return {"churn": churn.__version__, "git_sha": sha.strip() or None}


def _connect(address: str | None) -> bool:
    """Connect to Ray (RAY_ADDRESS / a job's cluster / a new local one); True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    return True


def search_cpus(driver_cpus: float = 0.0) -> float:
    """CPUs the search plans for: the cluster's total minus what this job's driver reserved.

    Not `available_resources()`: that view lags (CPUs of tasks that just ended, e.g. the Ray Data
    read, show as busy for a moment), so plans made from it varied run to run. Planning on the
    total is safe: Tune queues trials that do not fit yet, and `--max-concurrent` caps a shared
    cluster.
    """
    import ray

    total = ray.cluster_resources().get("CPU", 1.0)
    return max(total - driver_cpus, min(total, 0.5))


def run_search(data: training.Matrices, frames: tuple, schema: FeatureSchema, trials: int,
                workers: int, max_concurrent: int | None, settings: training.BoostSettings,
                storage_path: str, search: bool = True, cpus: float | None = None):
    """Run the Tune search (one trial of DEFAULT_PARAMS when search is False) on `cpus` CPUs
    (default: `search_cpus()`).

    Returns:
        (the best trial's Result, the resource plan it ran with).
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    plan = training.plan_trials(cpus or search_cpus(), trials, workers, max_concurrent)
    trainable = _trainable(data, frames, schema, plan, workers, settings, storage_path)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": plan.trial_cpus}),
        param_space=training.search_space() if search else dict(training.DEFAULT_PARAMS),
        tune_config=tune.TuneConfig(metric="valid_auc", mode="max", num_samples=trials,
                                    search_alg=BasicVariantGenerator(
                                        max_concurrent=plan.concurrency,
                                        random_state=settings.seed)),
        run_config=tune.RunConfig(name=f"tune-{uuid.uuid4().hex[:8]}", storage_path=storage_path,
                                  verbose=0))
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error is not None]
    if len(errors) == len(grid):
        raise RuntimeError(f"every trial failed; first error: {errors[0]}")
    if errors:
        print(f"warning: {len(errors)} of {len(grid)} trials failed; first: {errors[0]}",
              file=sys.stderr)
    return grid.get_best_result(), plan


def _trainable(data: training.Matrices, frames: tuple, schema: FeatureSchema,
               plan: training.TrialPlan, workers: int, settings: training.BoostSettings,
               storage_path: str):
    """The Tune trainable of the shape chosen by `workers`, its data bound by reference."""
    from ray import tune

    if workers == 1:
        return tune.with_parameters(training.tune_trial, data=data, nthread=plan.nthread,
                                    settings=settings)
    import ray.data

    shape = training.TrainShape(workers, plan.worker_cpus, storage_path)
    datasets = {"train": ray.data.from_pandas(frames[0]), "valid": ray.data.from_pandas(frames[1])}
    return tune.with_parameters(training.train_driver_trial, datasets=datasets,
                                schema_json=schema.to_json(), shape=shape, settings=settings)


def _storage_path(root: str) -> str:
    """Where Tune and Train keep their runs: `<root>/ray_results` (absolute when local)."""
    return root + "/ray_results" if "://" in root else str(Path(root).resolve() / "ray_results")


def _best_booster(best) -> xgboost.Booster:
    """The model saved in the best trial's checkpoint."""
    with best.checkpoint.as_directory() as checkpoint_dir:
        return load_booster((Path(checkpoint_dir) / training.MODEL_FILE).read_bytes())


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


def _holdout_ids(valid, id_column: str) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(valid[[id_column, "ds"]], preserve_index=False), buffer)
    return buffer.getvalue()


def train_model(root: str, spec: DatasetSpec, ds: str, trials: int = 8,
                train_days: int | None = None,
                workers: int = 1, max_concurrent: int | None = None, seed: int = 42,
                num_boost_round: int = 300, early_stopping_rounds: int | None = 20,
                search: bool = True, ray_address: str | None = None, driver_cpus: float = 0.0,
                created_by: str = "ray_jobs/train.py") -> dict:
    """Assemble the training set, tune, evaluate, and write a new model version.

    Args:
        root: the data root (features/, labels/, models/ under it).
        spec: the dataset spec (id column, horizon, model settings).
        ds: the run's day; trains on matured days ≤ ds − horizon.
        trials: Tune trials.
        train_days: days in the window (default spec.model.train_days).
        workers: 1 = each trial calls xgboost.train; > 1 = each trial runs Train V2 with W workers.
        max_concurrent: upper bound on concurrent trials.
        seed: seed of the split, the search and xgboost.
        num_boost_round: maximum boosting rounds.
        early_stopping_rounds: stop when validation AUC has not improved for this many rounds.
        search: False = one trial of DEFAULT_PARAMS (benchmarks).
        ray_address: Ray to connect to (default RAY_ADDRESS or a new local Ray).
        driver_cpus: CPUs reserved for this job's entrypoint (the Jobs API's
            `entrypoint_num_cpus`), left out of the search's plan.
        created_by: recorded in meta.json.

    Returns:
        The result: version, version_uri, metrics, best params, window, timings.
    """
    timings, started = {}, time.perf_counter()
    window = training.training_window(root, spec, ds, train_days or spec.model.train_days)
    settings = training.BoostSettings(num_boost_round, early_stopping_rounds, seed)
    shape = {"trials": trials, "workers": workers, "max_concurrent": max_concurrent,
             "search": search, "driver_cpus": driver_cpus}
    owns_ray = _connect(ray_address)
    try:
        outcome = _search_and_fit(root, spec, window, settings, shape, timings)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    return write_model_version(root, spec, ds, outcome, created_by, timings, started)


def _search_and_fit(root: str, spec: DatasetSpec, window: training.TrainingWindow,
                    settings: training.BoostSettings, shape: dict, timings: dict) -> Outcome:
    """Read and split the window, run the search, pick (and maybe refit) the best model."""
    clock = time.perf_counter()
    train, valid = training.load_split(root, spec, window, settings.seed,
                                       training.read_labelled_frame_ray)
    schema = infer_schema(train, spec.id_column)
    data = training.encode(schema, train, valid)
    timings["read_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    best, plan = run_search(data, (train, valid), schema, shape["trials"], shape["workers"],
                            shape["max_concurrent"], settings, _storage_path(root),
                            shape["search"], search_cpus(shape["driver_cpus"]))
    timings["tune_s"] = time.perf_counter() - clock
    booster = _best_booster(best)
    scores = predict_proba(booster, schema, valid, nthread=plan.nthread)
    rounds = booster.num_boosted_rounds()
    if spec.model.refit_on_full:
        clock = time.perf_counter()
        booster = training.refit_booster(best.config, (train, valid), schema, rounds,
                                         plan.nthread, settings)
        timings["refit_s"] = time.perf_counter() - clock
    return Outcome(booster, schema, valid, scores, best.config, rounds, window, plan, len(train))


def write_model_version(root: str, spec: DatasetSpec, ds: str, outcome: Outcome, created_by: str,
                   timings: dict, started: float) -> dict:
    """Compute metrics and the report, write the version, and build the result JSON."""
    clock = time.perf_counter()
    window = outcome.window
    metrics = {**classification_metrics(outcome.valid[LABEL_COLUMN].to_numpy(), outcome.scores),
               "holdout": window.holdout, "train_rows": outcome.train_rows,
               "best_iteration": outcome.rounds - 1, "refit_on_full": spec.model.refit_on_full}
    params = {k: v for k, v in training.booster_params(outcome.config, 1, 0).items()
              if k not in ("nthread", "seed")}
    params["num_boost_round"] = outcome.rounds
    meta = {"ds": ds, "created_at": ds, "created_by": created_by, "window": window.to_meta(),
            "code_version": _code_version(), "model_name": spec.model.name,
            "dataset": spec.name, "plan": asdict(outcome.plan), "best_config": outcome.config}
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


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data root")
    parser.add_argument("--spec", required=True, help="dataset spec YAML")
    parser.add_argument("--ds", required=True, help="run day YYYY-MM-DD")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--train-days", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-boost-round", type=int, default=300)
    parser.add_argument("--driver-cpus", type=float, default=0.0,
                        help="CPUs the Jobs API reserved for this entrypoint (entrypoint_num_cpus)")
    parser.add_argument("--result-file", default=None, help="also write the result JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train, write the version, print the result JSON as the last log line."""
    args = _parse_args(argv)
    result = train_model(args.root, load_spec(args.spec), args.ds, trials=args.trials,
                         train_days=args.train_days, workers=args.workers,
                         max_concurrent=args.max_concurrent, seed=args.seed,
                         num_boost_round=args.num_boost_round,
                         ray_address=os.environ.get("RAY_ADDRESS"),
                         driver_cpus=args.driver_cpus)
    if args.result_file:
        write_json_atomic(args.result_file, result)
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
