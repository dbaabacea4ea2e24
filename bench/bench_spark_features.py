"""Benchmark of the Spark feature job: throughput, scaling, Spark vs DuckDB, bulk range vs days.

    python bench/bench_spark_features.py                 # 1M and 10M events, 30 single days
    python bench/bench_spark_features.py --quick         # 100k / 1M events, 3 single days
    python bench/bench_spark_features.py --rows 300000 --singles 5

Measured side by side in one run, on generated Parquet raw data (synthetic spec, 90-day window):
- feature throughput (events/s) of the whole job (validate + features + labels + writes) for the
  last day of each data set (a 90-day window of `rows` and `10 x rows` events, one matured label
  day each), after one unmeasured warm-up run, and the 10x ÷ 1x time ratio (goal <= 11);
- the same aggregates (window counts/sums per type, recency, trend, snapshot join) in Spark and
  in DuckDB on the same Parquet files: Spark ÷ DuckDB at 10x (goal <= 3);
- one 30-day range pass ÷ 30 single-day runs (goal <= 0.3); with `--singles K < 30` only K
  single days are run and their mean is scaled to 30 (said in the output);
- daily-run scaling with the window: after a bulk pass stores the history (unmeasured), daily
  runs with a 180-day window ÷ daily runs with a 7-day window on the same raw data, alternating
  (goal <= 1.3: a day validates one raw day and reads the stored activity of the rest);
- peak RSS of each job: for Spark the whole process tree (python driver, JVM, python workers);
  for DuckDB the python process it runs in (which also holds the idle Spark driver's python).
Prints a table and writes bench/results/bench_spark_features.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _common import PeakRss, write_results

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "include" / "datasets" / "synthetic.yaml"
RESULTS = REPO / "bench" / "results" / "bench_spark_features.json"
START = "2024-01-01"
EVENTS_PER_CUSTOMER_DAY = 3.25  # what the generator's default rates give (measured)


@dataclass
class Measure:
    """Wall time and peak RSS (MB) of one measured block."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0       # this process and its children (python driver, JVM, workers)
    peak_self_rss_mb: float = 0.0  # this python process alone (where DuckDB runs)


@contextmanager
def measured(into: Measure):
    """Time a block and sample the RSS of this process tree every 100 ms."""
    with PeakRss(interval=0.1) as rss:
        began = time.perf_counter()
        yield into
        into.seconds = time.perf_counter() - began
    into.peak_rss_mb = round(rss.peak / 2**20, 1)
    into.peak_self_rss_mb = round(rss.peak_self / 2**20, 1)


def bench_spec(workdir: Path) -> str:
    """The synthetic spec with Parquet raw tables (so Spark and DuckDB read the same files)."""
    from churn.spec import dump_spec, load_spec

    spec = load_spec(SPEC)
    spec = spec.model_copy(update={
        "events": spec.events.model_copy(update={"format": "parquet"}),
        "customers": spec.customers.model_copy(update={"format": "parquet"})})
    path = workdir / "bench_spec.yaml"
    path.write_text(dump_spec(spec))
    return str(path)


def make_data(root: Path, spec: str, window_events: int, days: int) -> int:
    """Generate `days` days holding about `window_events` events per 90 days; returns events."""
    from churn.generate import generate

    customers = max(50, round(window_events / (EVENTS_PER_CUSTOMER_DAY * 90)))
    if not (root / "raw").exists():
        generate(str(root), customers=customers, start=START, days=days, seed=7, spec=spec)
    return raw_events(root)


def raw_events(root: Path, days: list[str] | None = None) -> int:
    """Events in the raw partitions (all, or of the given days), from Parquet footers."""
    import pyarrow.dataset as pads

    parts = sorted((root / "raw" / "events").glob("ds=*"))
    chosen = [p for p in parts if days is None or p.name[3:] in days]
    return sum(pads.dataset(str(p), format="parquet").count_rows() for p in chosen)


def job(spark, root: Path, spec: str, start: str, end: str) -> Measure:
    """One run of the build_features job on the shared session."""
    from spark_jobs.build_features import JobArgs, run

    with measured(Measure()) as m:
        run(spark, JobArgs(root=str(root), spec=spec, start=start, end=end))
    return m


def window_spec(workdir: Path, spec: str, window: int) -> str:
    """The bench spec with one feature window of `window` days."""
    from churn.spec import dump_spec, load_spec

    loaded = load_spec(spec)
    loaded = loaded.model_copy(update={
        "events": loaded.events.model_copy(update={"windows_days": (window,)})})
    path = workdir / f"bench_spec_{window}d.yaml"
    path.write_text(dump_spec(loaded))
    return str(path)


def window_results(spark, work: Path, spec: str, rows: int, runs: int) -> dict:
    """Daily runs with a 180-day window ÷ with a 7-day window, each on its own copy of the same
    raw data whose history (every day before the measured ones) a bulk pass stored first."""
    import shutil

    from churn.storage import ds_range, shift_ds

    days, generated = 190, work / f"windows-{rows}"
    make_data(generated, spec, rows, days)
    measured_days = ds_range(shift_ds(START, days - runs), shift_ds(START, days - 1))
    roots = {}
    for window in (7, 180):
        root = work / f"windows-{rows}-{window}d"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(generated / "raw", root / "raw")
        roots[window] = (root, window_spec(work, spec, window))
        job(spark, root, roots[window][1], START, shift_ds(measured_days[0], -1))
    seconds = {7: [], 180: []}
    for ds in measured_days:
        for window, (root, window_path) in roots.items():
            seconds[window].append(job(spark, root, window_path, ds, ds).seconds)
    median = {w: sorted(s)[len(s) // 2] for w, s in seconds.items()}
    return {"days_measured": runs, "daily_7d_s": round(median[7], 2),
            "daily_180d_s": round(median[180], 2),
            "window_180d_over_7d": round(median[180] / median[7], 2)}


def spark_aggregates(spark, root: Path, spec_path: str, ds: str, out: Path) -> Measure:
    """The feature aggregates alone in Spark: typed Parquet read, build_features, Parquet write."""
    from pyspark.sql import functions as F

    from churn import features
    from churn.spec import load_spec
    from churn.storage import shift_ds

    spec = load_spec(spec_path)
    first = shift_ds(ds, 1 - spec.events.longest_window)
    with measured(Measure()) as m:
        events = (spark.read.option("basePath", str(root / "raw" / "events"))
                  .parquet(str(root / "raw" / "events")).withColumnRenamed("ds", "_ds")
                  .where(F.col("_ds").between(first, ds))
                  .withColumn("event_ts", F.col("event_ts").cast("timestamp")))
        customers = (spark.read.parquet(str(root / "raw" / "customers" / f"ds={ds}"))
                     .withColumn("_ds", F.lit(ds))
                     .withColumn("signup_date", F.col("signup_date").cast("date")))
        activity = features.activity_rows(events, spec)
        frame = features.build_features(spec, [ds], activity, customers,
                                        features.event_types(spec))
        frame.write.mode("overwrite").parquet(str(out))
    return m


def duckdb_sql(spec, ds: str, root: Path, out: Path) -> str:
    """The same aggregates as `churn.features.build_features` for one day, in DuckDB SQL."""
    from churn.features import feature_names, safe_name

    ev, idc = spec.events, spec.id_column
    age = f"(DATE '{ds}' - CAST(ds AS DATE))"
    cols = []
    for w in ev.windows_days:
        inside = f"{age} < {w}"
        cols += [f"count(*) FILTER (WHERE {inside}) AS n_events_{w}d",
                 f"coalesce(sum({ev.value}) FILTER (WHERE {inside}), 0) AS sum_{ev.value}_{w}d"]
        for t in ev.types:
            cond = f"{inside} AND {ev.type} = '{t}'"
            cols += [f"count(*) FILTER (WHERE {cond}) AS n_{safe_name(t)}_{w}d",
                     f"coalesce(sum({ev.value}) FILTER (WHERE {cond}), 0) "
                     f"AS sum_{ev.value}_{safe_name(t)}_{w}d"]
    cap = ev.longest_window
    cols.append(f"coalesce(min({age}), {cap})::DOUBLE AS days_since_last_event")
    cols += [f"coalesce(min({age}) FILTER (WHERE {ev.type} = '{t}'), {cap})::DOUBLE "
             f"AS days_since_last_{safe_name(t)}" for t in ev.types]
    short, long_ = ev.windows_days[0], ev.windows_days[-1]
    raw = f"'{root}/raw/events/*/*.parquet'"
    names = feature_names(spec, sorted(ev.types))
    cu = spec.customers
    snapshot = (f"c.{idc}, (DATE '{ds}' - CAST(c.{cu.signup} AS DATE))::DOUBLE AS tenure_days, "
                + ", ".join(f"c.{n}::DOUBLE AS {n}" for n in cu.numeric) + ", "
                + ", ".join(f"coalesce(c.{n}, '__missing__') AS {n}" for n in cu.categorical))
    zeroed = ", ".join(
        f"coalesce(a.{n}, {cap}.0) AS {n}" if n.startswith("days_since") else
        f"coalesce(a.{n}, 0) AS {n}" for n in names if n.startswith(("n_", "sum_", "days_")))
    trend = (f"CASE WHEN coalesce(a.n_events_{long_}d, 0) > 0 THEN (a.n_events_{short}d / "
             f"{short}.0) / (a.n_events_{long_}d / {long_}.0) ELSE 0.0 END "
             f"AS trend_{short}d_{long_}d")
    return f"""
COPY (
  WITH ev AS (
    SELECT * FROM read_parquet({raw}, hive_partitioning = true, hive_types = {{'ds': VARCHAR}})
    WHERE ds BETWEEN CAST(DATE '{ds}' - INTERVAL {cap - 1} DAY AS DATE)::VARCHAR AND '{ds}'),
  agg AS (SELECT {idc}, {", ".join(cols)} FROM ev GROUP BY {idc}),
  snap AS (SELECT {snapshot}
           FROM read_parquet('{root}/raw/customers/ds={ds}/*.parquet') c)
  SELECT s.{idc}, '{ds}' AS ds, {zeroed}, {trend}, s.* EXCLUDE ({idc})
  FROM snap s LEFT JOIN agg a USING ({idc})
) TO '{out}' (FORMAT parquet)
"""


def duckdb_aggregates(spec_path: str, root: Path, ds: str, out: Path) -> Measure:
    """The same aggregates in DuckDB (all cores), reading the same Parquet files."""
    import duckdb

    from churn.spec import load_spec

    sql = duckdb_sql(load_spec(spec_path), ds, root, out)
    with measured(Measure()) as m:
        con = duckdb.connect()
        con.execute(sql)
        con.close()
    return m


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="events in the 90-day window at 1x (10x is ten times that)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100k rows, 3 singles")
    parser.add_argument("--singles", type=int, default=30,
                        help="single-day runs actually made (mean scaled to 30)")
    parser.add_argument("--workdir", default="/tmp/churn-bench-features",
                        help="where generated data and outputs go (kept for re-runs)")
    parser.add_argument("--skip-10x", action="store_true", help="only the 1x measurements")
    parser.add_argument("--window-runs", type=int, default=5,
                        help="daily runs measured per window (their median is compared)")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.rows, ns.singles, ns.window_runs = 100_000, 3, 3
    return ns


def main(argv: list[str] | None = None) -> dict:
    """Run every measurement, print the table, write the JSON results."""
    from churn.spark import build_session
    from churn.storage import ds_range, shift_ds

    args = parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    spec = bench_spec(work)
    spark = build_session("bench-spark-features", master="local[2]")
    results: dict = {"rows_1x": args.rows, "singles_run": args.singles}
    one = work / f"x1-{args.rows}"
    make_data(one, spec, args.rows, 120)
    last = shift_ds(START, 119)
    job(spark, one, spec, shift_ds(last, -45), shift_ds(last, -45))  # warm-up, not measured
    results["x1"] = scale_results(spark, one, spec, last, work / "out-x1")
    results["bulk"] = bulk_results(spark, one, spec, ds_range(shift_ds(last, -29), last),
                                   args.singles)
    results["windows"] = window_results(spark, work, spec, args.rows, args.window_runs)
    if not args.skip_10x:
        ten = work / f"x10-{args.rows * 10}"
        make_data(ten, spec, args.rows * 10, 90)
        results["x10"] = scale_results(spark, ten, spec, shift_ds(START, 89), work / "out-x10")
        results["ratio_10x_1x"] = round(results["x10"]["job_s"] / results["x1"]["job_s"], 2)
        results["spark_over_duckdb_10x"] = results["x10"]["spark_over_duckdb"]
    spark.stop()
    print_table(results)
    write_results(RESULTS, results)
    return results


def scale_results(spark, root: Path, spec: str, ds: str, out: Path) -> dict:
    """Job throughput, Spark-only and DuckDB aggregates for one day at one data size."""
    from churn.storage import ds_range, shift_ds

    events = raw_events(root, ds_range(shift_ds(ds, -89), ds))
    full = job(spark, root, spec, ds, ds)
    agg = spark_aggregates(spark, root, spec, ds, out / "spark")
    duck = duckdb_aggregates(spec, root, ds, out / "duckdb.parquet")
    return {"events": events, "job_s": round(full.seconds, 2),
            "job_events_per_s": round(events / full.seconds),
            "job_peak_rss_mb": full.peak_rss_mb,
            "spark_agg_s": round(agg.seconds, 2), "spark_agg_peak_rss_mb": agg.peak_rss_mb,
            "duckdb_agg_s": round(duck.seconds, 2), "duckdb_peak_rss_mb": duck.peak_self_rss_mb,
            "spark_over_duckdb": round(agg.seconds / duck.seconds, 2)}


def bulk_results(spark, root: Path, spec: str, days: list[str], singles: int) -> dict:
    """One range pass over `days` vs single-day runs (K of them, mean scaled to all days)."""
    ranged = job(spark, root, spec, days[0], days[-1])
    step = max(1, len(days) // max(1, singles))
    picked = days[::step][:singles]
    runs = [job(spark, root, spec, d, d) for d in picked]
    mean = sum(r.seconds for r in runs) / len(runs)
    return {"days": len(days), "range_s": round(ranged.seconds, 2),
            "range_peak_rss_mb": ranged.peak_rss_mb, "singles_measured": len(runs),
            "single_mean_s": round(mean, 2), "singles_total_s": round(mean * len(days), 2),
            "single_peak_rss_mb": max(r.peak_rss_mb for r in runs),
            "range_over_singles": round(ranged.seconds / (mean * len(days)), 3)}


def print_table(results: dict) -> None:
    """A plain-text table of the figures and their goals."""
    rows = [("events at 1x (90-day window)", results["x1"]["events"], "")]
    for scale in ("x1", "x10"):
        if scale in results:
            r = results[scale]
            rows += [(f"{scale} job time s / events/s", f"{r['job_s']} / {r['job_events_per_s']}",
                      ""),
                     (f"{scale} job peak RSS MB", r["job_peak_rss_mb"], ""),
                     (f"{scale} Spark agg s / DuckDB s", f"{r['spark_agg_s']} / "
                      f"{r['duckdb_agg_s']}", ""),
                     (f"{scale} Spark ÷ DuckDB", r["spark_over_duckdb"],
                      "goal <= 3 at 10x" if scale == "x10" else ""),
                     (f"{scale} peak RSS MB Spark agg / DuckDB",
                      f"{r['spark_agg_peak_rss_mb']} / {r['duckdb_peak_rss_mb']}", "")]
    if "ratio_10x_1x" in results:
        rows.append(("10x ÷ 1x job time", results["ratio_10x_1x"], "goal <= 11"))
    b = results["bulk"]
    rows += [(f"range of {b['days']} days s (peak RSS MB)",
              f"{b['range_s']} ({b['range_peak_rss_mb']})", ""),
             (f"single day mean s over {b['singles_measured']} (peak RSS MB)",
              f"{b['single_mean_s']} ({b['single_peak_rss_mb']})", ""),
             ("range ÷ 30 singles", b["range_over_singles"], "goal <= 0.3")]
    w = results["windows"]
    rows += [(f"daily run s, 7-day / 180-day window (median of {w['days_measured']})",
              f"{w['daily_7d_s']} / {w['daily_180d_s']}", ""),
             ("daily run, 180-day ÷ 7-day window", w["window_180d_over_7d"], "goal <= 1.3")]
    width = max(len(r[0]) for r in rows)
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value!s:>22}  {goal}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
