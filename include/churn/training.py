"""Training data assembly and the XGBoost code run inside Ray Tune trials and Ray Train workers.

Two execution shapes share the same parameters and report the same metrics:

* `tune_trial` (W = 1): a Tune function trainable calling `xgboost.train` with `nthread` = its
  CPUs on numpy matrices put once in the object store (the fast default on one machine);
* `train_driver_trial` (W > 1): a Tune function trainable that runs a Ray Train V2
  `XGBoostTrainer` whose workers run `train_fn_per_worker` on Ray Data shards.

Both save the early-stopped booster (`cut_at_best`: trees up to the best iteration) as the
registry's model file in the reported checkpoint, so the driver picks the best trial's model
without retraining.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churn.modeling import LABEL_COLUMN, FeatureSchema
from churn.registry import MODEL_FILE
from churn.spec import DatasetSpec
from churn.storage import Layout, ds_range, list_partitions, shift_ds

HOLDOUT_FRACTION = 0.2
SEARCHED = ("max_depth", "eta", "min_child_weight", "subsample", "colsample_bytree", "lambda")
DEFAULT_PARAMS = {"max_depth": 6, "eta": 0.1, "min_child_weight": 1.0, "subsample": 0.9,
                  "colsample_bytree": 0.9, "lambda": 1.0}


# ------------------------------------------------------------------------------- data assembly


@dataclass(frozen=True)
class TrainingWindow:
    """The labelled days a model trains and validates on.

    `holdout` is "time" (validation days are the newest days) or "random" (one labelled day:
    a stratified, seeded 20% of its rows is the validation set).
    """

    train_days: tuple[str, ...]
    validation_days: tuple[str, ...]
    holdout: str

    @property
    def days(self) -> tuple[str, ...]:
        """Every day of the window, oldest first (train and validation days may coincide)."""
        return tuple(sorted(set(self.train_days + self.validation_days)))

    def to_meta(self) -> dict:
        """The window as stored in meta.json (the gate re-reads `validation_days`)."""
        return {"train_days": list(self.train_days), "validation_days": list(self.validation_days),
                "holdout": self.holdout, "holdout_fraction": HOLDOUT_FRACTION
                if self.holdout == "random" else None}


def matured_days(root: str, spec: DatasetSpec, ds: str) -> list[str]:
    """Days ≤ ds − horizon that have both a features and a labels partition, oldest first."""
    layout = Layout(root)
    newest = shift_ds(ds, -spec.label.horizon_days)
    labelled = set(list_partitions(layout.area("labels")))
    return [d for d in list_partitions(layout.area("features")) if d in labelled and d <= newest]


def training_window(root: str, spec: DatasetSpec, ds: str, train_days: int) -> TrainingWindow:
    """The labelled days to train and validate on for a run on ds, split in time.

    The newest matured day(s) validate (a fifth of `train_days`, at least one). Training days end
    a label horizon before the first validation day: a training row's label looks `horizon` days
    ahead, and a customer's rows on neighbouring days are near-identical, so overlapping windows
    would let the model read the validation labels off its training rows. When the history is too
    short for that gap, the holdout is a stratified random split of the window that keeps each
    customer on one side (with one labelled day, a plain stratified 20%).

    Raises:
        ValueError: no matured labelled day exists up to ds.
    """
    available = matured_days(root, spec, ds)
    if not available:
        raise ValueError(f"no day ≤ {shift_ds(ds, -spec.label.horizon_days)} has both features "
                         f"and labels under {root}")
    validation = available[-max(1, train_days // 5):]
    cutoff = shift_ds(validation[0], -max(spec.label.horizon_days, 1))
    train = [d for d in available if d <= cutoff][-train_days:]
    if train:
        return TrainingWindow(tuple(train), tuple(validation), "time")
    span = set(ds_range(shift_ds(available[-1], -(train_days - 1)), available[-1]))
    days = tuple(d for d in available if d in span)
    return TrainingWindow(days, days, "random")


def join_labels(features: pd.DataFrame, labels: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """Features with their label (inner join on id and ds; unlabelled rows dropped)."""
    keys = [id_column, "ds"]
    return features.merge(labels[[*keys, LABEL_COLUMN]], on=keys, how="inner", validate="1:1")


def read_labelled_frame(root: str, spec: DatasetSpec,
                        days: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Features joined with labels for some days, read with pyarrow (no Ray needed: the gate)."""
    import pyarrow.parquet as pq

    from churn.storage import filesystem

    layout = Layout(root)

    def read(paths: list[str]) -> pd.DataFrame:
        fs, _ = filesystem(paths[0])
        parts = [pq.read_table(filesystem(p)[1], filesystem=fs, partitioning=None).to_pandas()
                 for p in paths]
        return pd.concat(parts, ignore_index=True)

    features = read([layout.features(d) for d in days])
    labels = read([layout.labels(d) for d in days])
    return join_labels(features, labels, spec.id_column)


def read_labelled_frame_ray(root: str, spec: DatasetSpec, days: tuple[str, ...]) -> pd.DataFrame:
    """Features joined with labels for some days, read with `ray.data.read_parquet`."""
    import ray.data

    layout = Layout(root)
    features = ray.data.read_parquet([layout.features(d) for d in days], partitioning=None)
    labels = ray.data.read_parquet([layout.labels(d) for d in days], partitioning=None)
    return join_labels(features.to_pandas(), labels.to_pandas(), spec.id_column)


# ------------------------------------------------------------------------------- gate scoring


def holdout_auc(booster, schema: FeatureSchema, holdout: pd.DataFrame) -> float:
    """ROC AUC of a booster on a labelled holdout frame.

    The gate scores the challenger and the champion with this one function on one frame, so
    their AUCs differ only by the models.

    Args:
        booster: a binary:logistic XGBoost booster.
        schema: the feature schema stored with that booster.
        holdout: features joined with labels.

    Returns:
        The AUC of the booster's churn probabilities against the frame's labels.
    """
    from churn.metrics import roc_auc
    from churn.modeling import predict_proba

    return roc_auc(holdout[LABEL_COLUMN].to_numpy(), predict_proba(booster, schema, holdout))


def holdout_identity(holdout: pd.DataFrame, id_column: str) -> dict:
    """What a gate decision records to identify the frame it scored on.

    Returns:
        {"rows", "days" (sorted distinct ds), "digest"}: the digest hashes the sorted
        (id, ds, label) triples, so two decisions with one digest scored the same rows.
    """
    import hashlib

    keys = (holdout[[id_column, "ds", LABEL_COLUMN]].astype(str)
            .sort_values([id_column, "ds"]).reset_index(drop=True))
    hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy().tobytes()
    return {"rows": len(holdout), "days": sorted(keys["ds"].unique().tolist()),
            "digest": hashlib.sha256(hashed).hexdigest()[:16]}


def split_frame(frame: pd.DataFrame, window: TrainingWindow, seed: int,
                id_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and validation frames: by day for a time window, else stratified and grouped by
    customer."""
    if window.holdout == "time":
        is_valid = frame["ds"].isin(window.validation_days)
        return frame[~is_valid].reset_index(drop=True), frame[is_valid].reset_index(drop=True)
    from sklearn.model_selection import StratifiedGroupKFold

    # One fold of five is the 20% holdout; grouping keeps each customer's days on one side.
    folds = StratifiedGroupKFold(n_splits=round(1 / HOLDOUT_FRACTION), shuffle=True,
                                 random_state=seed)
    train_rows, valid_rows = next(folds.split(frame, frame[LABEL_COLUMN], frame[id_column]))
    return (frame.iloc[train_rows].reset_index(drop=True),
            frame.iloc[valid_rows].reset_index(drop=True))


def load_split(root: str, spec: DatasetSpec, window: TrainingWindow, seed: int,
               reader: Callable = read_labelled_frame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the window's labelled rows (pyarrow, or `read_labelled_frame_ray`) and split them."""
    return split_frame(reader(root, spec, window.days), window, seed, spec.id_column)


@dataclass(frozen=True)
class Matrices:
    """Encoded train and validation data, as put in the object store for W = 1 trials."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    feature_names: tuple[str, ...]


def encode(schema: FeatureSchema, train: pd.DataFrame, valid: pd.DataFrame) -> Matrices:
    """Encode both frames with one schema (the same category codes as at scoring time)."""
    return Matrices(schema.to_matrix(train), train[LABEL_COLUMN].to_numpy(np.float32),
                    schema.to_matrix(valid), valid[LABEL_COLUMN].to_numpy(np.float32),
                    schema.features)


# ------------------------------------------------------------------------------- xgboost code


def search_space() -> dict:
    """The Tune search space over the six tuned XGBoost parameters."""
    from ray import tune

    return {"max_depth": tune.randint(3, 9), "eta": tune.loguniform(0.02, 0.3),
            "min_child_weight": tune.loguniform(0.5, 10.0), "subsample": tune.uniform(0.6, 1.0),
            "colsample_bytree": tune.uniform(0.6, 1.0), "lambda": tune.loguniform(0.1, 10.0)}


def booster_params(config: dict, nthread: int, seed: int) -> dict:
    """Full xgboost params for a trial config (AUC last: early stopping watches it)."""
    params = {"objective": "binary:logistic", "eval_metric": ["logloss", "auc"],
              "tree_method": "hist", "nthread": nthread, "seed": seed}
    params.update({k: config[k] for k in SEARCHED if k in config})
    params["max_depth"] = int(params.get("max_depth", DEFAULT_PARAMS["max_depth"]))
    return params


@dataclass(frozen=True)
class BoostSettings:
    """Rounds and early stopping shared by every trial of a search."""

    num_boost_round: int = 300
    early_stopping_rounds: int | None = 20
    seed: int = 42


def fit_booster(config: dict, data: Matrices, nthread: int, settings: BoostSettings):
    """Train one booster with early stopping on validation AUC; returns it cut at the best round.

    Returns:
        (booster with trees up to the best iteration, validation {"auc", "logloss",
        "best_iteration"} at that iteration).
    """
    import xgboost

    dtrain = xgboost.DMatrix(data.x_train, label=data.y_train,
                             feature_names=list(data.feature_names), nthread=nthread)
    dvalid = xgboost.DMatrix(data.x_valid, label=data.y_valid,
                             feature_names=list(data.feature_names), nthread=nthread)
    evals_log: dict = {}
    booster = xgboost.train(booster_params(config, nthread, settings.seed), dtrain,
                            num_boost_round=settings.num_boost_round,
                            evals=[(dvalid, "valid")], evals_result=evals_log,
                            early_stopping_rounds=settings.early_stopping_rounds,
                            verbose_eval=False)
    booster = cut_at_best(booster)
    best = booster.num_boosted_rounds() - 1
    valid_log = evals_log["valid"]
    return booster, {"auc": float(valid_log["auc"][best]),
                     "logloss": float(valid_log["logloss"][best]), "best_iteration": best}


def refit_booster(config: dict, frames: tuple[pd.DataFrame, ...], schema: FeatureSchema,
                  rounds: int, nthread: int, settings: BoostSettings):
    """Retrain a config on several frames together (train + validation) for a fixed round count.

    Used when spec.model.refit_on_full is set: the best trial's round count, no early stopping.
    """
    import xgboost

    matrix = frame_dmatrix(schema, pd.concat(frames, ignore_index=True), nthread)
    return xgboost.train(booster_params(config, nthread, settings.seed), matrix,
                         num_boost_round=rounds)


def frame_dmatrix(schema: FeatureSchema, frame: pd.DataFrame, nthread: int):
    """A labelled DMatrix of a features+label frame, encoded by the schema."""
    import xgboost

    return xgboost.DMatrix(schema.to_matrix(frame), label=frame[LABEL_COLUMN],
                           feature_names=list(schema.features), nthread=nthread)


def cut_at_best(booster):
    """The booster's trees up to its best iteration (early stopping's); all of them without one.

    Args:
        booster: a trained booster; early stopping set its `best_iteration` attribute.

    Returns:
        A booster of `best_iteration + 1` rounds, or `booster` itself when nothing is cut.
    """
    best = booster.attr("best_iteration")
    if best is not None and int(best) + 1 < booster.num_boosted_rounds():
        return booster[: int(best) + 1]
    return booster


def _report_with_model(booster, metrics: dict) -> None:
    """Report trial metrics to Tune with the booster saved as the checkpoint's model file."""
    from ray import tune

    with tempfile.TemporaryDirectory() as checkpoint_dir:
        booster.save_model(str(Path(checkpoint_dir) / MODEL_FILE))
        tune.report({"valid_auc": metrics["auc"], "valid_logloss": metrics["logloss"],
                     "best_iteration": metrics["best_iteration"]},
                    checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))


def tune_trial(config: dict, data: Matrices, nthread: int, settings: BoostSettings) -> None:
    """W = 1 trial: plain `xgboost.train` in the trial's process with `nthread` threads."""
    booster, metrics = fit_booster(config, data, nthread, settings)
    _report_with_model(booster, metrics)


def train_fn_per_worker(config: dict) -> None:
    """Ray Train V2 per-worker function: shard -> DMatrix -> distributed `xgboost.train`.

    `config` holds the trial's params plus `schema_json`, `nthread`, `num_boost_round`,
    `early_stopping_rounds` and `seed`. Reports once, at the end (per-round reports cost ~2 s).
    """
    import ray.train
    import xgboost

    schema = FeatureSchema.from_json(config["schema_json"])
    matrices = [frame_dmatrix(schema, ray.train.get_dataset_shard(name).materialize().to_pandas(),
                              config["nthread"]) for name in ("train", "valid")]
    xgboost.train(booster_params(config, config["nthread"], config["seed"]), matrices[0],
                  num_boost_round=config["num_boost_round"], evals=[(matrices[1], "valid")],
                  early_stopping_rounds=config["early_stopping_rounds"], verbose_eval=False,
                  callbacks=[_report_at_end_callback()])


def _report_at_end_callback():
    """A `RayTrainReportCallback` that reports metrics and the model once, after training.

    The stock callback reports metrics after every boosting round even with frequency=0, and
    each report costs about 2 s here (50 rounds: ~100 s of a ~160 s Train V2 fit).
    """
    from ray.train.xgboost import RayTrainReportCallback

    class ReportAtEnd(RayTrainReportCallback):
        def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
            self._evals_log = evals_log
            return False

    return ReportAtEnd(metrics={"auc": "valid-auc", "logloss": "valid-logloss"}, frequency=0)


@dataclass(frozen=True)
class TrainShape:
    """How a W > 1 trial runs Ray Train: workers, CPUs per worker and where runs are stored."""

    workers: int
    worker_cpus: float
    storage_path: str


def train_driver_trial(config: dict, datasets: dict, schema_json: str, shape: TrainShape,
                       settings: BoostSettings) -> None:
    """W > 1 trial: fit a Train V2 `XGBoostTrainer` and report its early-stopped model to Tune."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    loop_config = {**config, "schema_json": schema_json, "seed": settings.seed,
                   "nthread": max(1, int(shape.worker_cpus)),
                   "num_boost_round": settings.num_boost_round,
                   "early_stopping_rounds": settings.early_stopping_rounds}
    trainer = XGBoostTrainer(
        train_fn_per_worker, train_loop_config=loop_config, datasets=datasets,
        scaling_config=ScalingConfig(num_workers=shape.workers,
                                     resources_per_worker={"CPU": shape.worker_cpus}),
        run_config=RunConfig(name=f"train-trial_id={tune.get_context().get_trial_id()}",
                             storage_path=shape.storage_path))
    result = trainer.fit()
    booster = cut_at_best(RayTrainReportCallback.get_model(result.checkpoint))
    _report_with_model(booster, _score_valid(booster, datasets["valid"].to_pandas(), schema_json))


def _score_valid(booster, valid: pd.DataFrame, schema_json: str) -> dict:
    """AUC and log loss of a booster on the validation frame (what W = 1 trials report)."""
    from sklearn.metrics import log_loss

    from churn.metrics import roc_auc
    from churn.modeling import predict_proba

    scores = predict_proba(booster, FeatureSchema.from_json(schema_json), valid)
    labels = valid[LABEL_COLUMN].to_numpy()
    return {"auc": roc_auc(labels, scores),
            "logloss": float(log_loss(labels, scores, labels=[0, 1])),
            "best_iteration": booster.num_boosted_rounds() - 1}


# ------------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class TrialPlan:
    """Resources of one search, computed from the cluster's CPUs so they always fit."""

    concurrency: int
    trial_cpus: float
    nthread: int
    worker_cpus: float = 0.0
    cpus: float = 0.0


def _floor2(value: float) -> float:
    return math.floor(value * 100) / 100


def plan_trials(cluster_cpus: float, trials: int, workers: int,
                max_concurrent: int | None = None) -> TrialPlan:
    """Split the CPUs free for the search between concurrent trials (and their Train workers).

    W = 1: about one trial per CPU (fractional CPUs allowed, e.g. 1.5 free CPUs next to a job
    driver holding 0.5 give two trials of 0.75), `nthread` = the trial's CPUs rounded. W > 1: a
    trial's budget (CPUs / concurrency) gives a quarter to the trial's driver and half to its W
    workers (fractional CPUs), leaving room for Ray Data tasks: trial + workers never exceed
    the CPUs, which would otherwise loop on worker-group start timeouts.

    Args:
        cluster_cpus: the CPUs the search may use (the cluster's, minus the job driver's).
        trials: number of trials of the search.
        workers: Ray Train workers per trial (1 = no Ray Train).
        max_concurrent: an upper bound on concurrent trials (None = as many as fit).

    Returns:
        The plan; `concurrency` becomes the search's `max_concurrent`.
    """
    if cluster_cpus <= 0 or trials < 1 or workers < 1:
        raise ValueError(f"need CPUs, trials and workers > 0, got {cluster_cpus}, {trials}, "
                         f"{workers}")
    cap = max_concurrent or trials
    if workers == 1:
        concurrency = max(1, min(trials, cap, math.floor(cluster_cpus + 0.5)))
        trial_cpus = _floor2(cluster_cpus / concurrency)
        return TrialPlan(concurrency, trial_cpus, max(1, math.floor(trial_cpus + 0.5)),
                         cpus=cluster_cpus)
    concurrency = max(1, min(trials, cap, int(cluster_cpus // (workers + 1))))
    budget = cluster_cpus / concurrency
    worker_cpus = _floor2(budget * 0.5 / workers)
    return TrialPlan(concurrency, _floor2(budget * 0.25), max(1, int(worker_cpus)), worker_cpus,
                     cluster_cpus)
