"""Benchmark: Spark vectorized-UDF scoring vs in-process predict_proba vs a row-at-a-time UDF.

    python bench/bench_spark_score.py            # 1M rows, 100 trees
    python bench/bench_spark_score.py --quick    # 50k rows: a smoke run

All three score the same features with the same 100-tree model, side by side in one run:

* in-process: read the features Parquet file into pandas (the model's columns) and
  `churn.modeling.predict_proba` on the whole frame, both cores (nthread=2);
* vectorized UDF: `spark_jobs.score.score_features` (mapInArrow) on `local[2]`, reading the same
  Parquet file and sinking to Spark's `noop` writer; once, its collected predictions are checked
  against the in-process ones (same rows, same probabilities);
* row UDF: a plain Python UDF scoring one row per call, on a slice (`--row-udf-rows`), as rows/s.

Ratios: vectorized-UDF / in-process (goal >= 0.8) and vectorized-UDF / row-UDF (goal >= 10).
Peak RSS is sampled over the whole process tree (driver, JVM, Python workers). Writes
bench/results/bench_spark_score.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from _common import PeakRss, timed, write_results

from churn.modeling import predict_proba
from churn.registry import ModelArtifact
from churn.scoring import cached_booster
from churn.spark import DEFAULT_ARROW_BATCH_SIZE, build_session
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


def same_predictions(scored, expected: np.ndarray, ids: pd.Series) -> float:
    """Check the Spark predictions equal the in-process ones, customer by customer; returns the
    largest absolute difference (raises past 1e-6)."""
    got = scored.select("customer_id", "churn_probability").toPandas().set_index("customer_id")
    want = pd.Series(expected, index=ids.to_numpy())
    assert len(got) == len(want) and got.index.is_unique, (len(got), len(want))
    diff = float(np.max(np.abs(got["churn_probability"].reindex(want.index).to_numpy()
                               - want.to_numpy())))
    assert diff <= 1e-6, f"vectorized-UDF and in-process predictions differ by {diff}"
    return diff


def run(rows: int, row_udf_rows: int, trees: int, arrow_batch_size: int, repeats: int = 3) -> dict:
    """Measure the three scorers on `rows` rows; returns the results payload.

    In-process and vectorized-UDF runs alternate (after one warm-up of each), so both see the same
    machine load; each figure is the best of `repeats`.
    """
    frame = features_frame(rows, DS, seed=11)
    booster, schema = train_tiny_model(frame.head(20_000), rounds=trees, depth=6)
    artifact = ModelArtifact("bench", bytes(booster.save_raw("ubj")), schema, {})
    sink = lambda df: df.write.format("noop").mode("overwrite").save()  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="churn-bench-spark-score-") as tmp, PeakRss() as rss:
        path = f"{tmp}/features.parquet"
        frame.to_parquet(path, index=False, row_group_size=100_000)
        del frame
        columns = [ID_COLUMN, *schema.features]
        in_process = lambda: predict_proba(  # noqa: E731
            booster, schema, pd.read_parquet(path, columns=columns), nthread=2)
        spark = build_session("bench-score", master="local[2]", arrow_batch_size=arrow_batch_size)
        broadcast = spark.sparkContext.broadcast(artifact.model_bytes)
        features = spark.read.parquet(path)
        scored = score_features(features, artifact, broadcast, id_column=ID_COLUMN, ds=DS)
        max_diff = same_predictions(scored, in_process(), pd.read_parquet(path, columns=[
            ID_COLUMN])[ID_COLUMN])
        pairs = [(timed(in_process), timed(lambda: sink(scored))) for _ in range(repeats + 1)]
        scorer = row_udf(spark, broadcast, schema.to_json(), schema.features)
        sliced = features.limit(row_udf_rows).cache()
        sliced.count()
        row_udf_s = timed(lambda: sink(sliced.select(scorer(*schema.features).alias("p"))))
        spark.stop()
    in_process_rate = rows / min(p[0] for p in pairs[1:])
    vectorized_udf_rate = rows / min(p[1] for p in pairs[1:])
    row_rate = row_udf_rows / row_udf_s
    return {
        "rows": rows, "trees": trees, "arrow_batch_size": arrow_batch_size,
        "row_udf_rows": row_udf_rows, "repeats": repeats, "cores": psutil.cpu_count(),
        "load_average_1m": round(psutil.getloadavg()[0], 1),
        "in_process_rows_per_s": round(in_process_rate),
        "vectorized_udf_rows_per_s": round(vectorized_udf_rate),
        "row_udf_rows_per_s": round(row_rate),
        "vectorized_udf_over_in_process": round(vectorized_udf_rate / in_process_rate, 3),
        "vectorized_udf_over_row_udf": round(vectorized_udf_rate / row_rate, 1),
        "max_abs_diff_vectorized_udf_vs_in_process": max_diff,
        "runs_s_in_process_vectorized_udf": [[round(a, 2), round(b, 2)] for a, b in pairs],
        "peak_rss_mb": round(rss.peak / 2**20),
        "goals": {"vectorized_udf_over_in_process": 0.8, "vectorized_udf_over_row_udf": 10},
    }


def print_table(result: dict) -> None:
    """Print the measured figures as a small table."""
    lines = [
        ("in-process predict_proba (2 threads)", f"{result['in_process_rows_per_s']:,} rows/s"),
        ("vectorized UDF (mapInArrow, local[2])",
         f"{result['vectorized_udf_rows_per_s']:,} rows/s"),
        ("row-at-a-time Python UDF", f"{result['row_udf_rows_per_s']:,} rows/s"),
        ("vectorized UDF / in-process (goal >= 0.8)",
         f"{result['vectorized_udf_over_in_process']}"),
        ("vectorized UDF / row UDF (goal >= 10)", f"{result['vectorized_udf_over_row_udf']}"),
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
    parser.add_argument("--arrow-batch-size", type=int, default=DEFAULT_ARROW_BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    args = parser.parse_args(argv)
    rows, row_rows = (50_000, 2_000) if args.quick else (args.rows, args.row_udf_rows)
    result = run(rows, min(row_rows, rows), args.trees, args.arrow_batch_size, args.repeats)
    print_table(result)
    write_results(RESULTS, result)


if __name__ == "__main__":
    main()
