"""DAG parse time of dags/churn_pipeline.py next to a one-task reference DAG (goal: ≤ 0.2 s).

Measures, side by side in one run:

* warm: `DagBag` of the file in a process that already parsed it once (what the dag-processor
  pays on every re-parse: modules are cached, the file's top level runs again);
* cold: a fresh interpreter that has imported `airflow.sdk`, then parses the file (first parse
  after a restart: includes importing the providers and plugins the file needs);
* heavy imports: whether pyspark, ray, xgboost, pandas or pyarrow got imported by the parse.

    python bench/bench_dag_parse.py [--quick] [--repeat N]

Prints a table and writes bench/results/bench_dag_parse.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import write_results

REPO_ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = REPO_ROOT / "dags" / "churn_pipeline.py"
RESULTS = REPO_ROOT / "bench" / "results" / "bench_dag_parse.json"
HEAVY = ("pyspark", "ray", "xgboost", "pandas", "pyarrow")
GOAL_S = 0.2
REFERENCE_DAG = textwrap.dedent('''
    """One-task reference DAG."""
    import datetime as dt

    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import dag


    @dag(schedule="@daily", start_date=dt.datetime(2025, 1, 1), catchup=False, tags=["ref"])
    def reference():
        EmptyOperator(task_id="noop")


    reference()
''')

_CHILD = textwrap.dedent('''
    import json, sys, time
    import airflow.sdk  # the interpreter's baseline, not counted
    from airflow.dag_processing.dagbag import DagBag
    started = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "errors": len(bag.import_errors),
                      "heavy": sorted(m for m in sys.argv[2].split(",") if m in sys.modules)}))
''')


def parse_warm(path: Path, repeat: int) -> list[float]:
    """Seconds of `repeat` re-parses in this process (after one untimed parse)."""
    from airflow.dag_processing.dagbag import DagBag

    DagBag(dag_folder=str(path))
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(path))
        timings.append(time.perf_counter() - started)
        if bag.import_errors:
            raise RuntimeError(f"{path}: {bag.import_errors}")
    return timings


def parse_cold(path: Path, repeat: int) -> tuple[list[float], list[str]]:
    """Seconds of the first parse in `repeat` fresh interpreters, and the heavy modules seen."""
    timings, heavy = [], set()
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path), ",".join(HEAVY)],
                              capture_output=True, text=True, check=True, env=os.environ)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["errors"]:
            raise RuntimeError(f"{path}: import errors in a fresh interpreter")
        timings.append(result["seconds"])
        heavy.update(result["heavy"])
    return timings, sorted(heavy)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per measure")
    args = parser.parse_args(argv)
    warm_n = args.repeat or (5 if args.quick else 30)
    cold_n = args.repeat or (2 if args.quick else 5)
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-"))
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference_dag.py"
        reference.write_text(REFERENCE_DAG)
        rows = {}
        for name, path in (("churn_pipeline", DAG_FILE), ("reference (1 task)", reference)):
            warm = parse_warm(path, warm_n)
            cold, heavy = parse_cold(path, cold_n)
            rows[name] = {"warm_median_s": statistics.median(warm), "warm_max_s": max(warm),
                          "cold_median_s": statistics.median(cold), "heavy_imports": heavy}
    ours, ref = rows["churn_pipeline"], rows["reference (1 task)"]
    result = {"rows": rows, "warm_repeat": warm_n, "cold_repeat": cold_n, "goal_s": GOAL_S,
              "warm_ratio_vs_reference": ours["warm_median_s"] / ref["warm_median_s"],
              "cold_ratio_vs_reference": ours["cold_median_s"] / ref["cold_median_s"],
              "meets_goal_warm": ours["warm_median_s"] <= GOAL_S}
    print(f"{'DAG file':22} {'warm median':>12} {'warm max':>10} {'cold median':>12}  heavy "
          "imports")
    for name, row in rows.items():
        print(f"{name:22} {row['warm_median_s']:>11.3f}s {row['warm_max_s']:>9.3f}s "
              f"{row['cold_median_s']:>11.3f}s  {', '.join(row['heavy_imports']) or 'none'}")
    print(f"ratio churn/reference: warm {result['warm_ratio_vs_reference']:.1f}x, "
          f"cold {result['cold_ratio_vs_reference']:.1f}x; goal warm ≤ {GOAL_S}s: "
          f"{'met' if result['meets_goal_warm'] else 'NOT met'}")
    write_results(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
