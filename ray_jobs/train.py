"""Ray Jobs entry point: train the churn model with Ray Tune and write a new registry version.

    python ray_jobs/train.py --root R --spec S --ds D --trials N [--train-days K] [--workers W]
        [--max-concurrent C] [--result-file F]

Runs on the cluster named by RAY_ADDRESS (a Ray job gets it set), or starts a local Ray. The last
log line is the result JSON (version, metrics, best params, timings), which the Airflow operator
pushes to XCom; the same JSON goes to `--result-file` when given.

This file holds only the Ray side: the connection, the Tune search (`tune_search`, a
`churn.model_version.Search`) and the CLI. Reading the window, scoring, refitting and writing the
version are `churn.model_version.train_model`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from churn import model_version, training
from churn.cli import job_parser
from churn.model_version import Search, SearchResult, TrainSettings
from churn.modeling import FeatureSchema, load_booster
from churn.registry import MODEL_FILE
from churn.spec import DatasetSpec, load_spec
from churn.storage import write_json_atomic
from churn.versions import code_version, package_version

if TYPE_CHECKING:
    import pandas as pd
    import xgboost

CREATED_BY = "ray_jobs/train.py"


def _connect(address: str | None) -> bool:
    """Connect to Ray (RAY_ADDRESS / a job's cluster / a new local one); True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    return True


@contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    """Ray connected for the block (`_connect`), shut down after it if this job started it."""
    owns_ray = _connect(address)
    try:
        yield
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


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
        return load_booster((Path(checkpoint_dir) / MODEL_FILE).read_bytes())


def tune_search(data: training.Matrices, frames: tuple[pd.DataFrame, pd.DataFrame],
                schema: FeatureSchema, settings: TrainSettings, root: str) -> SearchResult:
    """The job's `Search`: `run_search` on the cluster's CPUs minus the driver's, runs under root.

    Returns:
        The best trial's config, its checkpointed booster and the resource plan.
    """
    best, plan = run_search(data, frames, schema, settings.trials, settings.workers,
                            settings.max_concurrent, settings.boost, _storage_path(root),
                            settings.search_space, search_cpus(settings.driver_cpus))
    return SearchResult(best.config, _best_booster(best), plan)


def train_model(root: str, spec: DatasetSpec, ds: str, settings: TrainSettings,
                search: Search = tune_search, ray_address: str | None = None,
                created_by: str = CREATED_BY) -> dict:
    """`churn.model_version.train_model` on Ray: connected around the read (Ray Data) and search.

    Args:
        root, spec, ds, settings: as for `churn.model_version.train_model` (settings: the flags).
        search: finds the best config and booster (default: the Tune search).
        ray_address: Ray to connect to (default RAY_ADDRESS or a new local Ray).
        created_by: recorded in meta.json, next to code_version and package_version.

    Returns:
        The result: version, version_uri, metrics, best params, window, timings.
    """
    provenance = {"created_by": created_by,
                  "code_version": code_version(Path(__file__).resolve().parent),
                  "package_version": package_version()}
    return model_version.train_model(root, spec, ds, settings, search,
                                     reader=training.read_labelled_frame_ray,
                                     session=_ray_session(ray_address), provenance=provenance)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = job_parser(__doc__)
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
    settings = TrainSettings(trials=args.trials, train_days=args.train_days, workers=args.workers,
                             max_concurrent=args.max_concurrent, seed=args.seed,
                             num_boost_round=args.num_boost_round, driver_cpus=args.driver_cpus)
    result = train_model(args.root, load_spec(args.spec), args.ds, settings,
                         ray_address=os.environ.get("RAY_ADDRESS"))
    if args.result_file:
        write_json_atomic(args.result_file, result)
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
