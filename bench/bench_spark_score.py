"""Benchmark: Spark pandas-UDF scoring vs in-process predict_proba vs a row-at-a-time Python UDF.

    python bench/bench_spark_score.py            # 1M rows, 100 trees
    python bench/bench_spark_score.py --quick    # 50k rows: a smoke run

All three score the same features with the same 100-tree model, side by side in one run:

* in-process: `churn.modeling.predict_proba` on the whole pandas frame, both cores (nthread=2);
* pandas UDF: `spark_jobs.score.score_features` (mapInPandas) on `local[2]`, reading the features
  Parquet and sinking to Spark's `noop` writer;
* row UDF: a plain Python UDF scoring one row per call, on a slice (`--row-udf-rows`), as rows/s.

Ratios: pandas-UDF / in-process (goal >= 0.8) and pandas-UDF / row-UDF (goal >= 10). Peak RSS
is sampled over the whole process tree (driver, JVM, Python workers). Writes
bench/results/bench_spark_score.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import psutil
from _common import PeakRss, timed, write_results

from churn.modeling import predict_proba
from churn.registry import ModelArtifact
from churn.scoring import cached_booster
from churn.spark import build_session
from spark_jobs.score import score_features
from tests.support.model_fixture import ID_COLUMN, features_frame, train_tiny_model

RESULTS = Path(__file__).resolve().parent / "results" / "bench_spark_score.json"
DS = "2026-03-01"


def row_udf(spark, broadcast, schema_json: str, features: tuple[str, ...]):
    """A row-at-a-time (non-Arrow) Python UDF that scores one customer per call."""
    import pandas as pd
    from pyspark.sql.functions import udf
    from pyspark.sql.types import DoubleType

    from churn.modeling import FeatureSchema

    schema = FeatureSchema.from_json(schema_json)

    def _score(*values) -> float:
        frame = pd.DataFrame([dict(zip(features, values, strict=True))])
        return float(predict_proba(cached_booster(broadcast.value), schema, frame)[0])

    return udf(_score, DoubleType(), useArrow=False)


def run(rows: int, row_udf_rows: int, trees: int, arrow_batch_size: int, repeats: int = 3) -> dict:
    """Measure the three scorers on `rows` rows; returns the results payload.

    In-process and pandas-UDF runs alternate (after one warm-up of each), so both see the same
    machine load; each figure is the best of `repeats`.
    """
    frame = features_frame(rows, DS, seed=11)
    booster, schema = train_tiny_model(frame.head(20_000), rounds=trees, depth=6)
    artifact = ModelArtifact("bench", bytes(booster.save_raw("ubj")), schema, {})
    in_process = lambda: predict_proba(booster, schema, frame, nthread=2)  # noqa: E731
    sink = lambda df: df.write.format("noop").mode("overwrite").save()  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="churn-bench-spark-score-") as tmp, PeakRss() as rss:
        frame.to_parquet(f"{tmp}/features.parquet", index=False, row_group_size=100_000)
        spark = build_session("bench-score", master="local[2]", arrow_batch_size=arrow_batch_size)
        broadcast = spark.sparkContext.broadcast(artifact.model_bytes)
        features = spark.read.parquet(f"{tmp}/features.parquet")
        scored = score_features(features, artifact, broadcast, id_column=ID_COLUMN, ds=DS)
        pairs = [(timed(in_process), timed(lambda: sink(scored))) for _ in range(repeats + 1)]
        scorer = row_udf(spark, broadcast, schema.to_json(), schema.features)
        sliced = features.limit(row_udf_rows).cache()
        sliced.count()
        row_udf_s = timed(lambda: sink(sliced.select(scorer(*schema.features).alias("p"))))
        spark.stop()
    in_process_rate = rows / min(p[0] for p in pairs[1:])
    pandas_udf_rate = rows / min(p[1] for p in pairs[1:])
    row_rate = row_udf_rows / row_udf_s
    return {
        "rows": rows, "trees": trees, "arrow_batch_size": arrow_batch_size,
        "row_udf_rows": row_udf_rows, "repeats": repeats, "cores": psutil.cpu_count(),
        "load_average_1m": round(psutil.getloadavg()[0], 1),
        "in_process_rows_per_s": round(in_process_rate),
        "pandas_udf_rows_per_s": round(pandas_udf_rate), "row_udf_rows_per_s": round(row_rate),
        "pandas_udf_over_in_process": round(pandas_udf_rate / in_process_rate, 3),
        "pandas_udf_over_row_udf": round(pandas_udf_rate / row_rate, 1),
        "runs_s_in_process_pandas_udf": [[round(a, 2), round(b, 2)] for a, b in pairs],
        "peak_rss_mb": round(rss.peak / 2**20),
        "goals": {"pandas_udf_over_in_process": 0.8, "pandas_udf_over_row_udf": 10},
    }


def print_table(result: dict) -> None:
    """Print the measured figures as a small table."""
    lines = [
        ("in-process predict_proba (2 threads)", f"{result['in_process_rows_per_s']:,} rows/s"),
        ("pandas UDF (mapInPandas, local[2])", f"{result['pandas_udf_rows_per_s']:,} rows/s"),
        ("row-at-a-time Python UDF", f"{result['row_udf_rows_per_s']:,} rows/s"),
        ("pandas UDF / in-process (goal >= 0.8)", f"{result['pandas_udf_over_in_process']}"),
        ("pandas UDF / row UDF (goal >= 10)", f"{result['pandas_udf_over_row_udf']}"),
        ("peak RSS, process tree", f"{result['peak_rss_mb']:,} MB"),
    ]
    print(f"scoring {result['rows']:,} rows, {result['trees']} trees, best of {result['repeats']}"
          f" (load average {result['load_average_1m']} on {result['cores']} cores)")
    for name, value in lines:
        print(f"  {name:<42} {value:>18}")


def main(argv: list[str] | None = None) -> None:
    """Parse args, run, print, write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50k rows, 2k for the row UDF")
    parser.add_argument("--row-udf-rows", type=int, default=5_000)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--arrow-batch-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    args = parser.parse_args(argv)
    rows, row_rows = (50_000, 2_000) if args.quick else (args.rows, args.row_udf_rows)
    result = run(rows, min(row_rows, rows), args.trees, args.arrow_batch_size, args.repeats)
    print_table(result)
    write_results(RESULTS, result)


if __name__ == "__main__":
    main()
