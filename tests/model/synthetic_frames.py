"""Tiny synthetic features/labels partitions with a known signal, for the model and registry tests.

The true churn probability is a logistic function of three features (one categorical), so a
model that learns anything scores well above 0.5 AUC and the oracle AUC is known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churn import training
from churn.model_version import Search, SearchResult, TrainSettings, train_model
from churn.storage import Layout, ds_range

# The registry tests' model, run day, matured training days, and a strong and a weak config.
MODEL = "churn_xgb"
RUN_DS = "2026-02-10"  # horizon 30: every January day below is matured
DAYS = ds_range("2026-01-01", "2026-01-05")
STRONG = {"max_depth": 3, "eta": 0.2, "min_child_weight": 1.0, "subsample": 1.0,
          "colsample_bytree": 1.0, "lambda": 1.0}
WEAK = {**STRONG, "max_depth": 1, "colsample_bytree": 0.2}
PLANS = ("basic", "plus", "pro")
PLAN_EFFECT = {"basic": 0.8, "plus": 0.0, "pro": -0.8}


def churn_probability(frame: pd.DataFrame, signal: float = 1.0) -> np.ndarray:
    """The true churn probability of each row (the oracle)."""
    logit = (-0.5 + signal * (-0.8 * (frame["events_30d"] - 5) / 2.5
                              + 0.04 * (frame["monthly_charges"] - 60) / 2
                              + frame["plan"].map(PLAN_EFFECT).to_numpy()))
    return 1.0 / (1.0 + np.exp(-logit.to_numpy(dtype=float)))


def make_day(ds: str, rows: int, seed: int,
             signal: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One day's features and labels frames (contract columns and types)."""
    rng = np.random.default_rng(seed)
    features = pd.DataFrame({
        "customer_id": [f"c{i:05d}" for i in range(rows)],
        "ds": ds,
        "events_30d": rng.poisson(5, rows).astype("int64"),
        "monthly_charges": rng.normal(60, 15, rows).round(2),
        "tenure_days": rng.integers(1, 900, rows).astype("int64"),
        "plan": rng.choice(PLANS, rows),
        "region": rng.choice(("north", "south"), rows),
    })
    label = (rng.random(rows) < churn_probability(features, signal)).astype("int32")
    labels = pd.DataFrame({"customer_id": features["customer_id"], "ds": ds, "label": label})
    return features, labels


def write_days(root: str | Path, days: list[str], rows: int, seed: int = 0,
               signal: float = 1.0, with_labels: bool = True) -> None:
    """Write features/ds=D and labels/ds=D partitions for each day."""
    layout = Layout(str(root))
    for offset, ds in enumerate(days):
        features, labels = make_day(ds, rows, seed + offset, signal)
        frames = [("features", features)] + ([("labels", labels)] if with_labels else [])
        for area, frame in frames:
            target = Path(layout.partition(area, ds))
            target.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                           target / "part-00000.parquet")


def fixed_search(config: dict) -> Search:
    """A cheap in-process `Search` (no Ray): one booster of `config`, trained with one thread.

    It keeps the Tune search's contract (the best config, its early-stopped booster, the plan),
    so `model_version.train_model` runs as in `ray_jobs/train.py` minus Ray (no connection, no
    Tune, pyarrow reads instead of Ray Data).
    """
    def search(data: training.Matrices, frames: tuple, schema, settings: TrainSettings,
               root: str) -> SearchResult:
        booster, _ = training.fit_booster(config, data, 1, settings.boost)
        return SearchResult(dict(config), booster, training.TrialPlan(1, 1.0, 1))

    return search


def train_version(root: str | Path, spec, ds: str, config: dict | None = None,
                  rounds: int = 30, created_by: str = "tests") -> dict:
    """Train one config in-process on the window of ds and write it as a version.

    Runs the job's own `churn.model_version.train_model` with `fixed_search` (split seed 7,
    `rounds` rounds, no early stopping) and the pyarrow reader.
    """
    settings = TrainSettings(trials=1, seed=7, num_boost_round=rounds,
                                      early_stopping_rounds=None)
    search = fixed_search(config or training.DEFAULT_PARAMS)
    return train_model(str(root), spec, ds, settings, search,
                       provenance={"created_by": created_by})
