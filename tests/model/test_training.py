"""Behaviour of the training code: windows, splits, encoding, resource plans, model quality."""

from __future__ import annotations

import numpy as np
import pytest

from churn import training
from churn.metrics import roc_auc
from churn.modeling import infer_schema, predict_proba
from churn.storage import ds_range
from tests.model.synthetic_frames import churn_probability, write_days

RUN_DS = "2026-02-10"


def _split(root, spec, days: list[str], rows: int, seed: int = 0):
    """Write labelled days and return (window, train, valid) as the job would split them."""
    write_days(root, days, rows=rows, seed=seed)
    window = training.training_window(str(root), spec, RUN_DS, 14)
    return (window, *training.load_split(str(root), spec, window, seed=1))


class TestTrainingWindow:
    def test_train_days_end_a_horizon_before_validation(self, tmp_path, spec):
        # Labels up to 2026-01-12 exist, but with a 30-day horizon only days <= 01-11 matured.
        write_days(tmp_path, ds_range("2025-11-01", "2026-01-12"), rows=5)
        window = training.training_window(str(tmp_path), spec, "2026-02-10", train_days=10)
        assert window.holdout == "time"
        assert window.validation_days == ("2026-01-10", "2026-01-11")
        assert window.train_days == tuple(ds_range("2025-12-02", "2025-12-11"))

    def test_days_without_labels_or_features_are_skipped(self, tmp_path, spec):
        write_days(tmp_path, ["2025-11-20", "2025-12-01", "2026-01-03"], rows=5)
        write_days(tmp_path, ["2025-11-30"], rows=5, with_labels=False)
        window = training.training_window(str(tmp_path), spec, RUN_DS, train_days=5)
        assert (window.train_days, window.validation_days) == (
            ("2025-11-20", "2025-12-01"), ("2026-01-03",))

    def test_short_history_holds_out_customers_not_days(self, tmp_path, spec):
        write_days(tmp_path, ds_range("2026-01-01", "2026-01-03"), rows=100)
        window = training.training_window(str(tmp_path), spec, RUN_DS, train_days=14)
        assert window.holdout == "random"
        assert window.days == tuple(ds_range("2026-01-01", "2026-01-03"))
        train, valid = training.load_split(str(tmp_path), spec, window, seed=1)
        assert not set(train["customer_id"]) & set(valid["customer_id"])
        assert len(valid) == pytest.approx(0.2 * 300, abs=15)

    def test_single_day_uses_random_holdout(self, tmp_path, spec):
        write_days(tmp_path, ["2026-01-05"], rows=20)
        window = training.training_window(str(tmp_path), spec, RUN_DS, train_days=14)
        assert window.holdout == "random"
        assert window.to_meta()["holdout_fraction"] == 0.2

    def test_nothing_matured(self, tmp_path, spec):
        write_days(tmp_path, ["2026-02-01"], rows=20)
        with pytest.raises(ValueError, match="no day ≤ 2026-01-11"):
            training.training_window(str(tmp_path), spec, RUN_DS, train_days=14)


class TestSplitAndEncode:
    def test_random_holdout_is_stratified_and_seeded(self, tmp_path, spec):
        window, train, valid = _split(tmp_path, spec, ["2026-01-05"], rows=500, seed=4)
        frame = training.read_labelled_frame(str(tmp_path), spec, window.days)
        again = training.split_frame(frame, window, seed=1, id_column=spec.id_column)[1]
        assert (len(train), len(valid)) == (400, 100)
        assert valid["customer_id"].tolist() == again["customer_id"].tolist()
        assert valid["label"].mean() == pytest.approx(frame["label"].mean(), abs=0.01)
        assert not set(train["customer_id"]) & set(valid["customer_id"])

    def test_categories_encode_like_scoring(self, tmp_path, spec):
        _, train, valid = _split(tmp_path, spec, ["2026-01-04", "2026-01-05"], rows=60)
        schema = infer_schema(train, spec.id_column)
        data = training.encode(schema, train, valid)
        plan_column = schema.features.index("plan")
        expected = valid["plan"].map({"basic": 0, "plus": 1, "pro": 2}).to_numpy(np.float32)
        np.testing.assert_array_equal(data.x_valid[:, plan_column], expected)
        assert data.y_valid.tolist() == valid["label"].tolist()


class TestPlanTrials:
    @pytest.mark.parametrize(("cpus", "trials", "cap", "expected"), [
        (2, 8, None, (2, 1.0, 1)),
        (2, 1, None, (1, 2.0, 2)),
        (8, 8, 2, (2, 4.0, 4)),
        (16, 4, None, (4, 4.0, 4)),
        (1.5, 8, None, (2, 0.75, 1)),  # a job driver holds 0.5 of 2 CPUs
        (0.5, 8, None, (1, 0.5, 1)),
    ])
    def test_single_worker_shape(self, cpus, trials, cap, expected):
        plan = training.plan_trials(cpus, trials, 1, cap)
        assert (plan.concurrency, plan.trial_cpus, plan.nthread) == expected
        assert plan.concurrency * plan.trial_cpus <= cpus

    @pytest.mark.parametrize(("cpus", "workers"), [(2, 2), (1.5, 2), (4, 2), (8, 3), (64, 4)])
    def test_train_shape_never_exceeds_the_cluster(self, cpus, workers):
        plan = training.plan_trials(cpus, 8, workers)
        per_trial = plan.trial_cpus + workers * plan.worker_cpus
        assert plan.concurrency * per_trial <= cpus
        assert 0 < plan.worker_cpus and plan.trial_cpus > 0

    def test_two_cpus_two_workers_runs_one_trial_with_half_cpu_workers(self):
        plan = training.plan_trials(2, 8, 2)
        assert (plan.concurrency, plan.worker_cpus, plan.trial_cpus) == (1, 0.5, 0.5)

    def test_invalid(self):
        with pytest.raises(ValueError):
            training.plan_trials(2, 0, 1)


class TestFitBooster:
    def test_learns_the_signal_near_the_oracle(self, tmp_path, spec):
        _, train, valid = _split(tmp_path, spec, ds_range("2026-01-01", "2026-01-05"), 600, 11)
        schema = infer_schema(train, spec.id_column)
        settings = training.BoostSettings(num_boost_round=200, early_stopping_rounds=20, seed=3)
        config = {**training.DEFAULT_PARAMS, "max_depth": 3, "eta": 0.05}
        booster, stats = training.fit_booster(config, training.encode(schema, train, valid), 1,
                                              settings)
        model_auc = roc_auc(valid["label"], predict_proba(booster, schema, valid))
        oracle_auc = roc_auc(valid["label"], churn_probability(valid))
        assert booster.num_boosted_rounds() == stats["best_iteration"] + 1 < 200
        assert stats["auc"] == pytest.approx(model_auc, abs=1e-3)
        assert model_auc >= 0.95 * oracle_auc

    def test_seeded_training_is_reproducible(self, tmp_path, spec):
        _, train, valid = _split(tmp_path, spec, ds_range("2026-01-01", "2026-01-02"), 200, 2)
        data = training.encode(infer_schema(train, spec.id_column), train, valid)
        settings = training.BoostSettings(20, None, 5)
        first, _ = training.fit_booster(training.DEFAULT_PARAMS, data, 1, settings)
        second, _ = training.fit_booster(training.DEFAULT_PARAMS, data, 1, settings)
        assert bytes(first.save_raw("ubj")) == bytes(second.save_raw("ubj"))

    def test_refit_uses_every_row_and_the_given_rounds(self, tmp_path, spec):
        _, train, valid = _split(tmp_path, spec, ds_range("2026-01-01", "2026-01-02"), 200, 2)
        schema = infer_schema(train, spec.id_column)
        settings = training.BoostSettings(50, None, 5)
        params = training.DEFAULT_PARAMS
        refit = training.refit_booster(params, (train, valid), schema, 7, 1, settings)
        only_train = training.refit_booster(params, (train,), schema, 7, 1, settings)
        assert refit.num_boosted_rounds() == 7
        # Trained on train + validation rows: the root's hessian cover grows by that ratio.
        cover = [float(tree.split("cover=")[1].split()[0].rstrip(",")) for tree in
                 (refit.get_dump(with_stats=True)[0], only_train.get_dump(with_stats=True)[0])]
        ratio = (len(train) + len(valid)) / len(train)
        assert cover[0] == pytest.approx(ratio * cover[1], rel=0.1)


class TestCutAtBest:
    @pytest.fixture()
    def matrices(self, tmp_path, spec):
        _, train, valid = _split(tmp_path, spec, ds_range("2026-01-01", "2026-01-02"), 200, 2)
        schema = infer_schema(train, spec.id_column)
        return training.frame_dmatrix(schema, train, 1), training.frame_dmatrix(schema, valid, 1)

    def test_keeps_the_trees_up_to_the_best_iteration(self, matrices):
        import xgboost

        dtrain, dvalid = matrices
        params = training.booster_params({**training.DEFAULT_PARAMS, "eta": 0.3}, 1, 0)
        booster = xgboost.train(params, dtrain, num_boost_round=200, evals=[(dvalid, "valid")],
                                early_stopping_rounds=5, verbose_eval=False)
        best = int(booster.attr("best_iteration"))
        assert best + 1 < booster.num_boosted_rounds()  # trained past its best round
        cut = training.cut_at_best(booster)
        assert cut.num_boosted_rounds() == best + 1
        np.testing.assert_array_equal(cut.predict(dvalid),
                                      booster.predict(dvalid, iteration_range=(0, best + 1)))

    def test_a_booster_without_early_stopping_keeps_every_tree(self, matrices):
        import xgboost

        booster = xgboost.train(training.booster_params(training.DEFAULT_PARAMS, 1, 0),
                                matrices[0], num_boost_round=7)
        assert training.cut_at_best(booster) is booster
