"""Benchmark of `churn.generate`: rows written per second and peak memory, by customer count.

Each size runs in its own child process (one day, fresh interpreter) so its peak RSS is its own,
read with `os.wait4`. Prints a table and writes `bench/results/generator.json`.

    python bench/bench_generator.py            # 100k and 1M customers x 1 day
    python bench/bench_generator.py --quick    # 10k and 100k
    python bench/bench_generator.py --rows 5000 50000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "generator.json"
FULL, QUICK = (100_000, 1_000_000), (10_000, 100_000)


def child(customers: int, days: int, root: str) -> None:
    """Generate into `root` and print timings as JSON (runs in the measured process)."""
    from churn.generate import generate

    began = time.perf_counter()
    summary = generate(root, customers=customers, start="2026-01-01", days=days, seed=1)
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "events": summary.rows["events"],
                      "snapshot_rows": summary.rows["customers"]}))


def measure(customers: int, days: int) -> dict:
    """Run one size in a child process; returns rows/s, seconds and the child's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as root:
        began = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(customers), str(days),
                                 root], stdout=subprocess.PIPE)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"generator child for {customers} customers exited {proc.returncode}")
    result = json.loads(out)
    rows = result["events"] + result["snapshot_rows"]
    return {"customers": customers, "days": days, "rows": rows, **result,
            "rows_per_s": rows / result["seconds"], "wall_s_with_startup": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def report(runs: list[dict]) -> dict:
    """Print the table and return the JSON payload with side-by-side ratios."""
    print(f"{'customers':>10} {'rows':>10} {'seconds':>8} {'rows/s':>11} {'peak RSS MB':>12}")
    for r in runs:
        print(f"{r['customers']:>10,} {r['rows']:>10,} {r['seconds']:>8.2f} "
              f"{r['rows_per_s']:>11,.0f} {r['peak_rss_mb']:>12,.0f}")
    small, big = runs[0], runs[-1]
    ratios = {"size": big["customers"] / small["customers"],
              "rows_per_s": big["rows_per_s"] / small["rows_per_s"],
              "peak_rss": big["peak_rss_mb"] / small["peak_rss_mb"]}
    print(f"ratio largest/smallest: size x{ratios['size']:.0f}, "
          f"rows/s x{ratios['rows_per_s']:.2f}, peak RSS x{ratios['peak_rss']:.2f}")
    return {"benchmark": "generator", "runs": runs, "ratios_largest_vs_smallest": ratios,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run each size, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k customers")
    parser.add_argument("--rows", type=int, nargs="+", help="customer counts to measure")
    parser.add_argument("--days", type=int, default=1, help="days per run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2])
        return 0
    sizes = args.rows or (QUICK if args.quick else FULL)
    payload = report([measure(n, args.days) for n in sizes])
    write_results(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
