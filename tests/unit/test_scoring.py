"""Scoring on Arrow batches and pandas frames (the Spark UDF's body), without Spark."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from churn import scoring
from churn.modeling import MissingFeatureError, load_booster
from tests.support.model_fixture import ID_COLUMN, churn_labels, features_frame, train_tiny_model

DS = "2026-01-15"
VERSION = "v20260115-abcdef12"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return features_frame(300, DS)


@pytest.fixture(scope="module")
def model(frame):
    return train_tiny_model(frame)


def _direct_predict(booster, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities from xgboost directly, with features encoded by hand (no churn code)."""
    import xgboost

    plan_codes = frame["plan"].map({"basic": 0, "premium": 1, "pro": 2}).astype("float32")
    matrix = np.column_stack([frame["events_7d"], frame["amount_30d"], frame["age"], plan_codes])
    dmatrix = xgboost.DMatrix(matrix.astype(np.float32),
                              feature_names=["events_7d", "amount_30d", "age", "plan"])
    return booster.predict(dmatrix)


def arrow_batches(frame: pd.DataFrame, rows: int) -> list[pa.RecordBatch]:
    """The frame as Spark hands it to `mapInArrow`: record batches of at most `rows` rows."""
    return pa.Table.from_pandas(frame, preserve_index=False).to_batches(max_chunksize=rows)


class TestScoreFrame:
    def test_output_contract_and_values(self, frame, model):
        booster, schema = model
        out = scoring.score_frame(booster, schema, frame, id_column=ID_COLUMN,
                                  model_version=VERSION, ds=DS)
        assert list(out.columns) == ["customer_id", "churn_probability", "model_version", "ds"]
        assert out["customer_id"].tolist() == frame[ID_COLUMN].tolist()
        assert out["churn_probability"].dtype == np.float64
        np.testing.assert_allclose(out["churn_probability"], _direct_predict(booster, frame), rtol=1e-6)
        assert set(out["model_version"]) == {VERSION}
        assert set(out["ds"]) == {DS}

    def test_model_separates_the_classes(self, frame, model):
        booster, schema = model
        out = scoring.score_frame(booster, schema, frame, id_column=ID_COLUMN,
                                  model_version=VERSION, ds=DS)
        labels = churn_labels(frame)
        probs = out["churn_probability"].to_numpy()
        assert probs[labels == 1].mean() > 0.8
        assert probs[labels == 0].mean() < 0.2

    def test_aligns_by_name_and_ignores_extra_columns(self, frame, model):
        booster, schema = model
        shuffled = frame[["plan", "age", ID_COLUMN, "amount_30d", "events_7d", "ds"]].copy()
        shuffled["extra_col"] = "noise"
        expected = scoring.score_frame(booster, schema, frame, id_column=ID_COLUMN,
                                       model_version=VERSION, ds=DS)
        got = scoring.score_frame(booster, schema, shuffled, id_column=ID_COLUMN,
                                  model_version=VERSION, ds=DS)
        pd.testing.assert_frame_equal(got, expected)

    def test_missing_feature_is_a_clear_error(self, frame, model):
        booster, schema = model
        with pytest.raises(MissingFeatureError, match="amount_30d"):
            scoring.score_frame(booster, schema, frame.drop(columns=["amount_30d"]),
                                id_column=ID_COLUMN, model_version=VERSION, ds=DS)

    def test_unknown_category_and_nulls_still_score(self, frame, model):
        booster, schema = model
        odd = frame.head(3).copy()
        odd["plan"] = ["enterprise", None, "basic"]
        odd["amount_30d"] = [np.nan, 1.0, 2.0]
        out = scoring.score_frame(booster, schema, odd, id_column=ID_COLUMN,
                                  model_version=VERSION, ds=DS)
        probs = out["churn_probability"].to_numpy()
        assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()


class TestCheckFeatures:
    def test_names_every_missing_feature(self, model):
        _, schema = model
        with pytest.raises(MissingFeatureError, match="events_7d, plan"):
            scoring.check_features(schema, ["customer_id", "age", "amount_30d"])

    def test_extra_columns_pass(self, model):
        _, schema = model
        assert scoring.check_features(schema, [*schema.features, "other"]) is None


class TestBatches:
    def test_batches_concatenate_to_the_whole_frame_score(self, frame, model):
        booster, schema = model
        model_bytes = bytes(booster.save_raw("ubj"))
        batches = arrow_batches(frame, 64)
        scorer = scoring.batch_scorer(lambda: model_bytes, schema.to_json(), id_column=ID_COLUMN)
        got = pa.Table.from_batches(list(scorer(iter(batches)))).to_pandas()
        expected = scoring.score_frame(booster, schema, frame, id_column=ID_COLUMN,
                                       model_version=VERSION, ds=DS)
        expected = expected[["customer_id", "churn_probability"]]
        assert len(batches) == 5
        pd.testing.assert_frame_equal(got, expected, rtol=1e-6)

    def test_integer_ids_come_back_as_strings_and_a_missing_feature_is_named(self, frame,
                                                                              model):
        booster, schema = model
        model_bytes = bytes(booster.save_raw("ubj"))
        numbered = frame.assign(**{ID_COLUMN: np.arange(len(frame)) + 1000})
        scorer = scoring.batch_scorer(lambda: model_bytes, schema.to_json(), id_column=ID_COLUMN)
        (scored,) = list(scorer(iter(arrow_batches(numbered.head(10), 10))))
        assert scored.column("customer_id").to_pylist() == [str(i) for i in range(1000, 1010)]
        with pytest.raises(MissingFeatureError, match="plan"):
            list(scorer(iter(arrow_batches(frame.drop(columns="plan"), 50))))

    def test_booster_is_built_once_per_process(self, frame, model, monkeypatch):
        booster, schema = model
        model_bytes = bytes(booster.save_raw("ubj"))
        monkeypatch.setattr(scoring, "_BOOSTERS", {})
        built = []

        def counting_load_booster(data: bytes):
            built.append(data)
            return load_booster(data)

        monkeypatch.setattr(scoring, "load_booster", counting_load_booster)
        batches = arrow_batches(frame, 100)
        scorer = scoring.batch_scorer(lambda: model_bytes, schema.to_json(), id_column=ID_COLUMN)
        for _ in range(2):  # two partitions handled by the same worker
            assert len(list(scorer(iter(batches)))) == len(batches) == 3
        assert built == [model_bytes]
        assert scoring.cached_booster(model_bytes) is scoring.cached_booster(model_bytes)

    def test_build_log_has_one_line_per_build_only_when_asked(self, model, monkeypatch,
                                                               tmp_path):
        booster, _ = model
        model_bytes = bytes(booster.save_raw("ubj"))
        monkeypatch.setattr(scoring, "_BOOSTERS", {})
        monkeypatch.delenv(scoring.BUILD_LOG_ENV, raising=False)
        monkeypatch.chdir(tmp_path)
        scoring.cached_booster(model_bytes)
        assert list(tmp_path.iterdir()) == []  # unset: a no-op
        monkeypatch.setattr(scoring, "_BOOSTERS", {})
        monkeypatch.setenv(scoring.BUILD_LOG_ENV, str(tmp_path))
        for _ in range(3):
            scoring.cached_booster(model_bytes)
        log = tmp_path / f"{os.getpid()}.builds"
        assert [p.name for p in tmp_path.iterdir()] == [log.name]
        assert log.read_text() == f"{scoring.model_digest(model_bytes)}\n"

    def test_pickle_bytes_are_refused(self, model):
        import pickle

        _, schema = model
        with pytest.raises(ValueError, match="refusing"):
            scoring.cached_booster(pickle.dumps({"not": "a model"}))
