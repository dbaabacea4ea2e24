"""Validation metrics of a churn model and its HTML report (PNG plots drawn with matplotlib's Agg).

Plots are drawn on `matplotlib.figure.Figure` objects (no pyplot, no global backend switch), so
the module is safe in Airflow workers, Ray workers and tests alike.
"""

from __future__ import annotations

import html
import io
import math

import numpy as np

TOP_FRACTION = 0.1
REPORT_FILE = "report.html"
PLOT_FILES = ("roc.png", "pr.png", "calibration.png", "importance.png", "score_distribution.png")


def _as_arrays(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError("labels and scores must be equal-length 1-d arrays, "
                         f"got {y.shape}, {p.shape}")
    return y, p


def roc_auc(y_true, scores) -> float:
    """ROC AUC; raises ValueError when only one class is present (AUC undefined)."""
    from sklearn.metrics import roc_auc_score

    y, p = _as_arrays(y_true, scores)
    if len(np.unique(y)) < 2:
        raise ValueError("ROC AUC needs both classes in the labels")
    return float(roc_auc_score(y, p))


def top_fraction_stats(y_true, scores, fraction: float = TOP_FRACTION) -> tuple[float, float]:
    """Lift and recall among the `fraction` highest-scored rows.

    Returns:
        (lift = positive rate in the top / overall positive rate, recall = share of all
        positives that land in the top).
    """
    y, p = _as_arrays(y_true, scores)
    k = max(1, math.ceil(fraction * len(y)))
    top = np.argsort(-p, kind="stable")[:k]
    positives = y.sum()
    if positives == 0:
        return 0.0, 0.0
    return float(y[top].mean() / y.mean()), float(y[top].sum() / positives)


def classification_metrics(y_true, scores) -> dict[str, float]:
    """Every validation metric the registry stores in metrics.json.

    Args:
        y_true: 0/1 labels.
        scores: predicted churn probabilities.

    Returns:
        roc_auc, pr_auc, log_loss, brier, lift_top10, recall_top10, positive_rate, rows.
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss

    y, p = _as_arrays(y_true, scores)
    lift, recall = top_fraction_stats(y, p)
    return {
        "roc_auc": roc_auc(y, p),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "lift_top10": lift,
        "recall_top10": recall,
        "positive_rate": float(y.mean()),
        "rows": int(len(y)),
    }


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def _figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return figure, axes


def _curve_png(title: str, xlabel: str, ylabel: str, x: np.ndarray, y: np.ndarray,
               baseline: float | None = None, **style) -> bytes:
    """One curve and its no-skill reference: the diagonal, or a level line at `baseline`."""
    figure, axes = _figure(title, xlabel, ylabel)
    axes.plot(x, y, **style)
    if baseline is None:
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    else:
        axes.axhline(baseline, linestyle="--", color="grey")
    return _png(figure)


def _roc_png(y: np.ndarray, p: np.ndarray) -> bytes:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    return _curve_png("ROC curve", "false positive rate", "true positive rate", fpr, tpr)


def _pr_png(y: np.ndarray, p: np.ndarray) -> bytes:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, p)
    return _curve_png("Precision-recall curve", "recall", "precision", recall, precision,
                      baseline=y.mean())


def _calibration_png(y: np.ndarray, p: np.ndarray) -> bytes:
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    return _curve_png("Calibration", "mean predicted probability", "observed churn rate",
                      predicted, observed, marker="o")


def _importance_png(importance: dict[str, float], top: int = 20) -> bytes:
    ranked = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    figure, axes = _figure("Feature importance (gain)", "gain", "")
    axes.barh([name for name, _ in ranked], [value for _, value in ranked])
    return _png(figure)


def _distribution_png(y: np.ndarray, p: np.ndarray) -> bytes:
    figure, axes = _figure("Score distribution by class", "churn probability", "density")
    bins = np.linspace(0, 1, 41)
    for label, name in ((0, "stays"), (1, "churns")):
        axes.hist(p[y == label], bins=bins, alpha=0.6, density=True, label=name)
    axes.legend()
    return _png(figure)


def render_report(y_true, scores, importance: dict[str, float], metrics: dict,
                  title: str) -> dict[str, bytes]:
    """The model report: five PNG plots and a report.html that shows them and the metrics.

    Args:
        y_true: validation labels.
        scores: validation churn probabilities.
        importance: feature name -> gain.
        metrics: the metrics to tabulate (e.g. `classification_metrics` plus context).
        title: the page heading (model name and version).

    Returns:
        File name -> bytes, ready for `registry.write_version`.
    """
    y, p = _as_arrays(y_true, scores)
    pngs = dict(zip(PLOT_FILES, (_roc_png(y, p), _pr_png(y, p), _calibration_png(y, p),
                                 _importance_png(importance), _distribution_png(y, p))))
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in sorted(metrics.items()))
    images = "".join(f'<figure><img src="{name}" alt="{name}"></figure>' for name in PLOT_FILES)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"</head><body><h1>{html.escape(title)}</h1><table>{rows}</table>{images}"
            "</body></html>")
    return {REPORT_FILE: page.encode(), **pngs}


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)

