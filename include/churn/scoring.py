"""Batch scoring on Arrow batches and pandas frames: the bodies of the Spark UDF, testable
without Spark.

The Spark job (`spark_jobs/score.py`) broadcasts the model's UBJ bytes and maps each partition's
Arrow batches through `score_batches` (`mapInArrow`: only the model's columns become pandas).
The booster is built from the bytes once per Python worker process (cached by content digest),
never once per batch, and never unpickled. When `CHURN_BUILD_LOG_DIR` is set (tests only), every
build appends a line to `<dir>/<pid>.builds`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator

import pandas as pd
import pyarrow as pa

from churn.modeling import FeatureSchema, load_booster, predict_proba

PREDICTION_COLUMNS = ("customer_id", "churn_probability", "model_version", "ds")
SCORES_DDL = "customer_id string, churn_probability double"
BUILD_LOG_ENV = "CHURN_BUILD_LOG_DIR"

# Boosters already built in this process, keyed by the SHA-256 of their model bytes.
_BOOSTERS: dict[str, object] = {}


def model_digest(model_bytes: bytes) -> str:
    """The SHA-256 hex digest that identifies a model's bytes (cache key)."""
    return hashlib.sha256(model_bytes).hexdigest()


def cached_booster(model_bytes: bytes):
    """The booster for these model bytes, built once per process and then reused.

    Args:
        model_bytes: XGBoost UBJ/JSON bytes.

    Returns:
        An `xgboost.Booster`.
    """
    key = model_digest(model_bytes)
    booster = _BOOSTERS.get(key)
    if booster is None:
        booster = _BOOSTERS.setdefault(key, _build_booster(model_bytes, key))
    return booster


def _build_booster(model_bytes: bytes, key: str):
    """Load a booster; with `CHURN_BUILD_LOG_DIR` set, append `key` to `<dir>/<pid>.builds`.

    The log lets a test count builds per Spark Python worker; unset, it is a no-op.
    """
    booster = load_booster(model_bytes)
    log_dir = os.environ.get(BUILD_LOG_ENV)
    if log_dir:
        with open(os.path.join(log_dir, f"{os.getpid()}.builds"), "a") as log:
            log.write(f"{key}\n")
    return booster


def check_features(schema: FeatureSchema, columns: Iterable[str]) -> None:
    """Fail early, naming them, when columns lack features the model was trained on.

    The check is the schema's own (`FeatureSchema.to_matrix`), on the column names only: the
    frame it encodes has no rows.

    Raises:
        MissingFeatureError: at least one feature of the schema is absent.
    """
    schema.to_matrix(pd.DataFrame(columns=list(dict.fromkeys(columns))))


def probabilities_frame(booster, schema: FeatureSchema, frame: pd.DataFrame, *, id_column: str,
                        nthread: int = 1) -> pd.DataFrame:
    """Score one features frame into `customer_id, churn_probability` (the UDF's output).

    Args:
        booster: a binary:logistic XGBoost booster.
        schema: the feature schema stored with the model (features aligned by name).
        frame: features; extra columns are ignored, a missing feature raises.
        id_column: the dataset's customer id column (written out as `customer_id`).
        nthread: prediction threads.

    Returns:
        Two columns, one row per input row, in input order.
    """
    return pd.DataFrame({
        "customer_id": frame[id_column].astype(str).to_numpy(dtype=object),
        "churn_probability": predict_proba(booster, schema, frame, nthread=nthread),
    })


def score_frame(booster, schema: FeatureSchema, frame: pd.DataFrame, *, id_column: str,
                model_version: str, ds: str, nthread: int = 1) -> pd.DataFrame:
    """Score one features frame into the full predictions contract.

    Args:
        booster: a binary:logistic XGBoost booster.
        schema: the feature schema stored with the model.
        frame: features (extra columns ignored, a missing feature raises).
        id_column: the dataset's customer id column.
        model_version: the registry version that produced the scores.
        ds: the partition key of the scored day.
        nthread: prediction threads.

    Returns:
        A frame with exactly `PREDICTION_COLUMNS`, one row per input row, in input order.
    """
    scores = probabilities_frame(booster, schema, frame, id_column=id_column, nthread=nthread)
    return scores.assign(model_version=model_version, ds=ds)[list(PREDICTION_COLUMNS)]


def score_batches(batches: Iterable[pa.RecordBatch], model_bytes: bytes, schema: FeatureSchema, *,
                  id_column: str) -> Iterator[pa.RecordBatch]:
    """Score a stream of Arrow batches (the `mapInArrow` body) with one booster for all.

    Only the model's columns become pandas; the id passes through as Arrow, so its strings never
    round-trip through Python objects. The constant `model_version` and `ds` columns are added
    by Spark, not per batch here: they would double the Arrow traffic back to the JVM.

    Args:
        batches: feature record batches, as Spark hands them to an Arrow UDF.
        model_bytes: the model's UBJ bytes (from a broadcast variable).
        schema: the model's feature schema.
        id_column: the dataset's customer id column.

    Yields:
        One `customer_id, churn_probability` record batch per input batch.
    """
    booster = cached_booster(model_bytes)
    for batch in batches:
        # Select what is there, so a missing feature fails in `to_matrix` with the schema's own
        # MissingFeatureError naming it, not with Arrow's bare KeyError.
        present = [name for name in schema.features if name in batch.schema.names]
        probabilities = predict_proba(booster, schema, batch.select(present).to_pandas())
        yield pa.RecordBatch.from_arrays(
            [batch.column(id_column).cast(pa.string()), pa.array(probabilities)],
            names=["customer_id", "churn_probability"])


def batch_scorer(model_bytes_getter: Callable[[], bytes], schema_json: str, *, id_column: str
                 ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A picklable `mapInArrow` function; it fetches the model bytes lazily on the worker.

    Args:
        model_bytes_getter: returns the model bytes on the worker (e.g. a broadcast's `.value`).
        schema_json: `FeatureSchema.to_json()` (a string ships cheaply in the closure).
        id_column: the dataset's customer id column.

    Returns:
        A function from feature batches to `customer_id, churn_probability` batches.
    """
    def _score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        schema = FeatureSchema.from_json(schema_json)
        yield from score_batches(batches, model_bytes_getter(), schema, id_column=id_column)

    return _score
