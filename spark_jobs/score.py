"""spark-submit entry point: score one day's features with a registry model (vectorized UDF).

    spark-submit spark_jobs/score.py --root R --spec S --ds D [--model-uri URI]

Reads `features/ds=D`, aligns the columns by the feature names stored with the model (a missing
feature fails the job, extra columns are ignored), scores them through `mapInArrow` (model UBJ
bytes broadcast, booster built once per Python worker) and writes `predictions/ds=D`
atomically, then the `runs/ds=D/score.json` fragment. Without `--model-uri` the registry's
champion scores; with no champion the job exits with `EXIT_NO_CHAMPION` and the message
"no champion model for <name>".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from churn import manifest
from churn.champion import champion_uri
from churn.cli import job_parser
from churn.registry import ModelArtifact, check_version_uri, load_model_dir
from churn.scoring import SCORES_DDL, batch_scorer, check_features
from churn.spark import DEFAULT_ARROW_BATCH_SIZE, build_session, to_spark_uri
from churn.spec import load_spec
from churn.storage import Layout, atomic_partition, check_staged_rows, validate_ds

EXIT_NO_CHAMPION = 3


class NoChampionError(LookupError):
    """The registry has no champion for the model name and no model URI was given."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the job's command line."""
    parser = job_parser(__doc__)
    parser.add_argument("--ds", required=True, type=validate_ds, help="day to score, YYYY-MM-DD")
    parser.add_argument("--model-uri", default=None,
                        help="models/<name>/<version> dir (default: the registry's champion)")
    parser.add_argument("--master", default=None, help="Spark master (default: spark-submit's)")
    parser.add_argument("--arrow-batch-size", type=int, default=DEFAULT_ARROW_BATCH_SIZE,
                        help="rows per Arrow batch handed to the scoring UDF")
    return parser.parse_args(argv)


def resolve_model_uri(root: str, model_name: str, model_uri: str | None) -> str:
    """The model directory to score with: the one given (a version of this registry's model),
    else the champion's.

    Raises:
        NoChampionError: no URI given and the registry has no champion for `model_name`.
        churn.registry.RegistryError: the given URI is not `<root>/models/<name>/<version>`.
    """
    if model_uri:
        return check_version_uri(root, model_name, model_uri)
    uri = champion_uri(root, model_name)
    if uri is None:
        raise NoChampionError(f"no champion model for {model_name}")
    return uri


def score_features(features, artifact: ModelArtifact, model_bytes_broadcast, *, id_column: str,
                   ds: str):
    """Score a features DataFrame into the predictions contract (pure transform).

    Args:
        features: the `features/ds=D` DataFrame (extra columns allowed).
        artifact: the model version (its schema aligns the features by name).
        model_bytes_broadcast: a Spark broadcast of `artifact.model_bytes`.
        id_column: the dataset's customer id column.
        ds: the scored day.

    Returns:
        A DataFrame `customer_id, churn_probability, model_version, ds`.

    Raises:
        MissingFeatureError: the features lack a column the model was trained on.
    """
    from pyspark.sql import functions as F

    check_features(artifact.schema, features.columns)
    needed = features.select(id_column, *artifact.schema.features)
    scorer = batch_scorer(lambda: model_bytes_broadcast.value, artifact.schema.to_json(),
                          id_column=id_column)
    return needed.mapInArrow(scorer, schema=SCORES_DDL).select(
        "customer_id", "churn_probability",
        F.lit(artifact.version).alias("model_version"), F.lit(ds).alias("ds"))


def run(spark, root: str, spec, artifact: ModelArtifact, ds: str, model_uri: str = "") -> int:
    """Score one day with `artifact`, write `predictions/ds=D` atomically and the `score`
    run fragment (rows, model, seconds).

    Returns:
        The number of predictions written.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    began = time.monotonic()
    layout = Layout(root)
    broadcast = spark.sparkContext.broadcast(artifact.model_bytes)
    try:
        features = spark.read.parquet(to_spark_uri(layout.features(ds)))
        predictions = score_features(features, artifact, broadcast, id_column=spec.id_column, ds=ds)
        counted = Observation(f"predictions of {ds}")
        with atomic_partition(layout.predictions(ds)) as tmp:
            predictions.observe(counted, F.count(F.lit(1)).alias("rows")).write.mode(
                "overwrite").parquet(to_spark_uri(tmp))
            check_staged_rows(tmp, counted.get["rows"], layout.predictions(ds))
    finally:
        broadcast.unpersist()
    rows = counted.get["rows"]
    payload = manifest.fragment("score", ds, skipped=False, model_uri=model_uri,
                                model_version=artifact.version, prediction_rows=rows,
                                seconds=round(time.monotonic() - began, 3))
    manifest.write_fragment(layout, ds, "score", payload)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Parse args, pick the model, build the session, score, stop; returns the exit code."""
    args = parse_args(argv)
    spec = load_spec(args.spec)
    try:
        model_uri = resolve_model_uri(args.root, spec.model.name, args.model_uri)
    except NoChampionError as exc:
        print(f"score: {exc}", file=sys.stderr)
        return EXIT_NO_CHAMPION
    artifact = load_model_dir(model_uri)
    spark = build_session("churn-score", master=args.master, arrow_batch_size=args.arrow_batch_size)
    try:
        rows = run(spark, args.root, spec, artifact, args.ds, model_uri)
    finally:
        spark.stop()
    print(f"score: wrote {rows} predictions for ds={args.ds} with {artifact.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
