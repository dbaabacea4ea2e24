"""Test helper: a tiny real XGBoost model on a tiny features frame, stored in the registry layout.

    models/<name>/<version>/  model.ubj, features.json, params.json, metrics.json, meta.json
    models/<name>/champion.json  (only when `make_champion=True`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churn import registry
from churn.modeling import FeatureSchema, infer_schema
from churn.storage import Layout, write_json_atomic

ID_COLUMN = "customer_id"
MODEL_NAME = "churn_xgb"
VERSION = "v20260101-0000test"
PLANS = ("basic", "premium", "pro")


def features_frame(rows: int, ds: str, seed: int = 7) -> pd.DataFrame:
    """A features partition shaped like `features/ds=D` (ids, ds, numeric and categorical).

    Args:
        rows: number of customers.
        ds: the partition key.
        seed: random seed (same seed, same frame).

    Returns:
        Columns: customer_id, ds, events_7d (double), amount_30d (double), age (long), plan (string).
    """
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        ID_COLUMN: [f"c{i:06d}" for i in range(rows)],
        "ds": ds,
        "events_7d": rng.poisson(3, rows).astype("float64"),
        "amount_30d": rng.gamma(2.0, 20.0, rows),
        "age": rng.integers(18, 80, rows).astype("int64"),
        "plan": rng.choice(PLANS, rows),
    })


def churn_labels(frame: pd.DataFrame) -> np.ndarray:
    """A deterministic label the model can learn: few recent events and a basic plan churn."""
    return ((frame["events_7d"] < 2) | (frame["plan"] == "basic")).astype(int).to_numpy()


@dataclass(frozen=True)
class TinyModel:
    """A trained booster plus where it was written."""

    booster: object
    schema: FeatureSchema
    version: str
    version_dir: str


def train_tiny_model(frame: pd.DataFrame, rounds: int = 10, depth: int = 3):
    """Train a small binary:logistic booster on a features frame.

    Returns:
        (booster, schema) with the schema inferred from the frame.
    """
    import xgboost

    schema = infer_schema(frame, ID_COLUMN)
    matrix = xgboost.DMatrix(schema.to_matrix(frame), label=churn_labels(frame),
                             feature_names=list(schema.features))
    params = {"objective": "binary:logistic", "max_depth": depth, "eta": 0.3, "nthread": 1,
              "seed": 0}
    return xgboost.train(params, matrix, num_boost_round=rounds), schema


def write_model_version(root: str, frame: pd.DataFrame, *, version: str = VERSION,
                        model_name: str = MODEL_NAME, make_champion: bool = True,
                        rounds: int = 10) -> TinyModel:
    """Train on `frame` and write it with `registry.write_version` (plus the champion pointer).

    Args:
        root: the data root.
        frame: the training features frame.
        version: the version id (directory name).
        model_name: the registry model name.
        make_champion: also write `champion.json` pointing at this version.
        rounds: boosting rounds.

    Returns:
        The booster, schema, version and its directory.
    """
    booster, schema = train_tiny_model(frame, rounds=rounds)
    files = {registry.MODEL_FILE: bytes(booster.save_raw("ubj")),
             registry.FEATURES_FILE: schema.to_json().encode(),
             registry.PARAMS_FILE: registry.json_bytes({"objective": "binary:logistic",
                                                        "rounds": rounds}),
             registry.METRICS_FILE: registry.json_bytes({"auc": None}),
             registry.META_FILE: registry.json_bytes({"created_by": __name__})}
    version_dir = registry.write_version(root, model_name, version, files)
    if make_champion:
        write_json_atomic(Layout(root).champion(model_name), {"version": version})
    return TinyModel(booster, schema, version, version_dir)


def write_features(root: str | Path, frame: pd.DataFrame, ds: str) -> str:
    """Write `frame` as the `features/ds=<ds>` partition (one Parquet file); returns its path."""
    part = Path(Layout(str(root)).features(ds))
    part.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(part / "part-00000.parquet", index=False)
    return str(part)
