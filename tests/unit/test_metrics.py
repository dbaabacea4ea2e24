"""Validation metrics and the HTML/PNG model report."""

from __future__ import annotations

import numpy as np
import pytest

from churn import metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 10 rows, 3 positives; the top-scored row (0.95) is a positive, so the top 10% holds 1 of 3.
LABELS = np.array([1, 0, 1, 0, 0, 0, 1, 0, 0, 0])
SCORES = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])


class TestClassificationMetrics:
    def test_values(self):
        result = metrics.classification_metrics(LABELS, SCORES)
        # Positives rank 1, 3, 7 of 10: 7 + 6 + 3 = 16 of 21 positive/negative pairs ordered right.
        assert result["roc_auc"] == pytest.approx(16 / 21)
        assert result["positive_rate"] == pytest.approx(0.3)
        assert result["lift_top10"] == pytest.approx(1.0 / 0.3)
        assert result["recall_top10"] == pytest.approx(1 / 3)
        assert result["brier"] == pytest.approx(np.mean((SCORES - LABELS) ** 2))
        expected_log_loss = -np.mean(LABELS * np.log(SCORES) + (1 - LABELS) * np.log(1 - SCORES))
        assert result["log_loss"] == pytest.approx(expected_log_loss)
        # Average precision: precision at each positive's rank (1/1, 2/3, 3/7) averaged.
        assert result["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 7) / 3)
        assert result["rows"] == 10

    def test_perfect_ranking(self):
        result = metrics.classification_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
        assert result["roc_auc"] == 1.0 and result["pr_auc"] == 1.0

    def test_top_fraction_rounds_up(self):
        lift, recall = metrics.top_fraction_stats([1, 1, 0, 0, 0], [0.9, 0.8, 0.1, 0.2, 0.3], 0.3)
        # ceil(1.5) = 2 rows, both positive: lift = 1 / 0.4, recall = 1.
        assert (lift, recall) == (pytest.approx(2.5), 1.0)

    def test_single_class_is_refused(self):
        with pytest.raises(ValueError, match="both classes"):
            metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9])

    def test_length_mismatch_is_refused(self):
        with pytest.raises(ValueError, match="equal-length"):
            metrics.classification_metrics([0, 1], [0.5])


class TestRenderReport:
    def test_files(self):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 200)
        scores = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
        values = metrics.classification_metrics(labels, scores)
        files = metrics.render_report(labels, scores, {"events_30d": 3.0, "plan": 1.5},
                                      values, "churn_xgb v20260210-abc")
        assert set(files) == {metrics.REPORT_FILE, *metrics.PLOT_FILES}
        for name in metrics.PLOT_FILES:
            assert files[name].startswith(PNG_MAGIC), name
        page = files[metrics.REPORT_FILE].decode()
        assert "<h1>churn_xgb v20260210-abc</h1>" in page
        assert all(f'src="{name}"' in page for name in metrics.PLOT_FILES)
        assert f"<th>roc_auc</th><td>{values['roc_auc']:.4f}</td>" in page
