"""Benchmark the Ray training shapes of `ray_jobs/train.py`, side by side in one run.

1. W = 1 job shape (one Tune trial of fixed params, no search) ÷ plain `xgboost.train` in-process,
   same data and rounds, at each size of --rows (goal ≤ 1.3); Ray start reported separately.
2. Tune with --trials trials: wall time one after another (max_concurrent 1, each trial with
   every CPU) ÷ in parallel (concurrency from the cluster's CPUs) (goal ≥ 1.6 on 2 CPUs); also
   one after another with 1 CPU (nthread 1) each, the same per-trial work as in parallel.
3. W = 2 Train V2 shape ÷ W = 1 shape, one trial of fixed params.

    python bench/bench_ray_training.py [--quick] [--rows 200000 1000000] [--trials 8]
        [--tune-rows 200000] [--parts sizes tune train_v2] [--out results.json]

Prints a table and writes bench/results/bench_ray_training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from _common import timed, write_results

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from churn import training  # noqa: E402
from churn.modeling import infer_schema  # noqa: E402
from ray_jobs.train import run_search  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "bench_ray_training.json"
FEATURES = 20


def make_frames(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train (80%) and validation (20%) frames of `FEATURES` numeric features with a signal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    logit = x[:, :5] @ np.array([1.0, -0.8, 0.6, 0.4, -0.3]) - 0.5
    frame = pd.DataFrame(x, columns=[f"f{i:02d}" for i in range(FEATURES)])
    frame["label"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    frame["customer_id"] = np.arange(rows).astype(str)
    frame["ds"] = "2026-01-01"
    cut = int(rows * 0.8)
    return frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)


def make_data(rows: int) -> tuple[tuple[pd.DataFrame, pd.DataFrame], training.Matrices]:
    """The frames (for Ray Data) and their encoded matrices (for W = 1 trials)."""
    frames = make_frames(rows)
    return frames, training.encode(infer_schema(frames[0], "customer_id"), *frames)


def plain_xgboost(data: training.Matrices, settings: training.BoostSettings, nthread: int) -> float:
    """In-process `xgboost.train` (DMatrix construction included, as in a trial)."""
    return timed(lambda: training.fit_booster(training.DEFAULT_PARAMS, data, nthread, settings))


def job_shape(frames, data, settings, storage: str, trials: int = 1, workers: int = 1,
              max_concurrent: int | None = None, search: bool = False,
              cpus: float | None = None) -> float:
    """Wall seconds of the job's Tune search (Ray already running)."""
    schema = infer_schema(frames[0], "customer_id")
    return timed(lambda: run_search(data, frames, schema, trials, workers, max_concurrent,
                                    settings, storage, search, cpus))


def bench_size(rows: int, settings, storage: str, cpus: int) -> dict:
    """Job W = 1 shape vs plain xgboost at one size."""
    frames, data = make_data(rows)
    plain = plain_xgboost(data, settings, cpus)
    job = job_shape(frames, data, settings, storage)
    return {"rows": rows, "plain_s": plain, "job_w1_s": job, "ratio": job / plain}


PARTS = ("sizes", "tune", "train_v2")


def bench_tune(rows: int, trials: int, settings, storage: str) -> dict:
    """Tune of `trials` trials: one after another vs as many in parallel as the CPUs allow."""
    frames, data = make_data(rows)
    sequential = job_shape(frames, data, settings, storage, trials, max_concurrent=1,
                           search=True)
    one_cpu = job_shape(frames, data, settings, storage, trials, search=True, cpus=1)
    parallel = job_shape(frames, data, settings, storage, trials, search=True)
    return {"rows": rows, "trials": trials, "sequential_s": sequential, "parallel_s": parallel,
            "speedup": sequential / parallel, "sequential_1cpu_s": one_cpu,
            "speedup_vs_1cpu_each": one_cpu / parallel}


def bench_train_v2(rows: int, settings, storage: str) -> dict:
    """One fixed-params trial: Train V2 with 2 workers vs the W = 1 shape."""
    frames, data = make_data(rows)
    w1 = job_shape(frames, data, settings, storage)
    w2 = job_shape(frames, data, settings, storage, workers=2)
    return {"rows": rows, "w1_s": w1, "w2_s": w2, "ratio": w2 / w1}


def run(rows_list: Sequence[int], trials: int, rounds: int, tune_rows: int,
        parts: Sequence[str] = PARTS) -> dict:
    """The chosen measurements in one Ray session; returns the results document."""
    import ray

    settings = training.BoostSettings(num_boost_round=rounds, early_stopping_rounds=None, seed=1)
    storage = tempfile.mkdtemp(prefix="bench-ray-")
    address = os.environ.get("RAY_ADDRESS")
    ray_start = timed(lambda: ray.init(address=address, num_cpus=None if address else 2,
                                       logging_level="ERROR", log_to_driver=False))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    result = {"cluster_cpus": cpus, "rounds": rounds, "features": FEATURES,
              "ray_start_s": ray_start}
    try:
        if "sizes" in parts:
            result["sizes"] = [bench_size(rows, settings, storage, cpus) for rows in rows_list]
        if "tune" in parts:
            result["tune"] = bench_tune(tune_rows, trials, settings, storage)
        if "train_v2" in parts:
            result["train_v2"] = bench_train_v2(tune_rows, settings, storage)
        for part in parts:  # parts run apart are merged into one file: keep each one's context
            result[f"{part}_context"] = {"ray_start_s": ray_start, "cluster_cpus": cpus,
                                         "rounds": rounds, "load_avg_1m": os.getloadavg()[0]}
    finally:
        ray.shutdown()
    return result


def print_table(result: dict) -> None:
    """Human-readable summary of `run`'s document."""
    print(f"Ray start (excluded): {result['ray_start_s']:.1f} s; {result['cluster_cpus']} CPUs; "
          f"{result['rounds']} rounds x {result['features']} features")
    print(f"{'measure':44} {'ours s':>8} {'base s':>8} {'ratio':>6}  goal")
    for size in result.get("sizes", []):
        _print_row(f"job W=1 / plain xgboost, {size['rows']} rows", size["job_w1_s"],
                   size["plain_s"], size["ratio"], "<= 1.3")
    if "tune" in result:
        tune = result["tune"]
        _print_row(f"Tune {tune['trials']} trials: sequential / parallel", tune["sequential_s"],
                   tune["parallel_s"], tune["speedup"], ">= 1.6")
        _print_row("  same, sequential trials of 1 CPU each", tune["sequential_1cpu_s"],
                   tune["parallel_s"], tune["speedup_vs_1cpu_each"])
    if "train_v2" in result:
        v2 = result["train_v2"]
        _print_row(f"Train V2 W=2 / W=1, {v2['rows']} rows", v2["w2_s"], v2["w1_s"], v2["ratio"],
                   "(report)")


def _print_row(measure: str, ours: float, base: float, ratio: float, goal: str = "") -> None:
    """One line of `print_table`: seconds of ours and of the baseline, their ratio, the goal."""
    print(f"{measure:44} {ours:8.2f} {base:8.2f} {ratio:6.2f}" + (f"  {goal}" if goal else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--rows", type=int, nargs="+", default=None)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--tune-rows", type=int, default=None)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args(argv)
    rows = args.rows or ([20_000] if args.quick else [200_000, 1_000_000])
    tune_rows = args.tune_rows or (20_000 if args.quick else 200_000)
    result = {**run(rows, args.trials, args.rounds, tune_rows, args.parts), "quick": args.quick}
    print_table(result)
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    write_results(args.out, {**earlier, **result})  # parts run apart merge
    return 0


if __name__ == "__main__":
    sys.exit(main())
