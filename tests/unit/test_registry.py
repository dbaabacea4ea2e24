"""Registry (the version store): version directories, immutability, completeness, import cost.

Models are real XGBoost boosters trained in-process on tiny synthetic partitions (no Ray).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from churn import registry
from churn.storage import Layout
from tests.model.synthetic_frames import DAYS, MODEL, RUN_DS, STRONG, train_version
from tests.support.processes import REPO_ROOT, child_env

# What the scorer's lookup path must not load: it needs only pyarrow and the standard library.
HEAVY_MODULES = ("pandas", "numpy", "xgboost", "churn.training", "churn.modeling")
IMPORT_PROBE = f"""
import json, sys
import pyarrow.fs
baseline = set(sys.modules)
import churn.champion, churn.registry
print(json.dumps({{"by_pyarrow": sorted(set({HEAVY_MODULES!r}) & baseline),
                  "loaded": sorted(set({HEAVY_MODULES!r}) & set(sys.modules))}}))
"""


class TestLoadModelDir:
    def test_round_trip(self, root, spec):
        result = train_version(root, spec, RUN_DS, STRONG, rounds=10)
        artifact = registry.load_model_dir(result["version_uri"])
        assert artifact.version == result["version"]
        assert artifact.model_bytes[:1] == b"{"
        assert artifact.schema.features == ("events_30d", "monthly_charges", "tenure_days",
                                            "plan", "region")
        assert artifact.schema.categorical["plan"] == ("basic", "plus", "pro")
        # Five January days are too short a history for a horizon gap: customers are held out.
        assert artifact.meta["window"]["validation_days"] == DAYS
        assert artifact.meta["window"]["holdout"] == "random"
        assert artifact.meta["created_at"] == RUN_DS

    def test_version_dir_holds_every_contract_file(self, root, spec):
        result = train_version(root, spec, RUN_DS, STRONG, rounds=10)
        names = {p.name for p in Path(result["version_uri"]).iterdir()}
        assert {"model.ubj", "features.json", "params.json", "metrics.json", "meta.json",
                "report.html", "roc.png", "pr.png", "calibration.png", "importance.png",
                "score_distribution.png"} <= names
        assert result["version"].startswith("v20260210-") and len(result["version"]) == 18

    def test_missing_dir(self, tmp_path):
        with pytest.raises(registry.RegistryError, match="not found"):
            registry.load_model_dir(str(tmp_path / "models" / MODEL / "v1"))

    def test_non_xgboost_file_refused(self, root, spec):
        uri = Path(train_version(root, spec, RUN_DS, STRONG, rounds=5)["version_uri"])
        (uri / "model.ubj").write_bytes(b"\x80\x04\x95pickle")
        with pytest.raises(registry.RegistryError) as raised:
            registry.load_model_dir(str(uri))
        assert str(raised.value) == (f"{uri}/model.ubj: not an XGBoost JSON/UBJ model "
                                     "(refusing to load it)")

    def test_bad_features_json(self, root, spec):
        uri = Path(train_version(root, spec, RUN_DS, STRONG, rounds=5)["version_uri"])
        (uri / "features.json").write_text('{"columns": []}')
        with pytest.raises(registry.RegistryError, match="features.json"):
            registry.load_model_dir(str(uri))

    def test_features_json_other_than_the_models_is_refused_naming_both(self, root, spec):
        uri = Path(train_version(root, spec, RUN_DS, STRONG, rounds=5)["version_uri"])
        schema = json.loads((uri / "features.json").read_text())
        model_features = list(schema["features"])
        schema["features"] = model_features[::-1]
        (uri / "features.json").write_text(json.dumps(schema))
        with pytest.raises(registry.RegistryError) as raised:
            registry.load_model_dir(str(uri))
        assert str(raised.value) == (f"{uri}/model.ubj: the model's features {model_features} "
                                     f"do not match features.json {model_features[::-1]}")


class TestVersions:
    def test_identical_rewrite_returns_the_existing_version(self, root, spec):
        result = train_version(root, spec, RUN_DS, STRONG, rounds=5)
        version_dir = Path(result["version_uri"])
        files = {p.name: p.read_bytes() for p in version_dir.iterdir()}
        assert registry.write_version(str(root), MODEL, result["version"], files) == str(
            version_dir)
        assert {p.name: p.read_bytes() for p in version_dir.iterdir()} == files

    @pytest.mark.parametrize("change", ["bytes", "extra", "missing"])
    def test_different_content_is_refused_naming_the_file(self, root, spec, change):
        result = train_version(root, spec, RUN_DS, STRONG, rounds=5)
        version_dir = Path(result["version_uri"])
        files = {p.name: p.read_bytes() for p in version_dir.iterdir()}
        changed = {"bytes": {**files, "params.json": b"{}"},
                   "extra": {**files, "params.json.bak": b"{}"},
                   "missing": {k: v for k, v in files.items() if k != "roc.png"}}[change]
        named = {"bytes": "params.json", "extra": "params.json.bak", "missing": "roc.png"}
        with pytest.raises(registry.VersionExistsError,
                           match=rf"{result['version']} already exists .*{named[change]}"):
            registry.write_version(str(root), MODEL, result["version"], changed)
        assert {p.name: p.read_bytes() for p in version_dir.iterdir()} == files

    def test_incomplete_version_is_hidden_then_completed(self, root, spec):
        result = train_version(root, spec, RUN_DS, STRONG, rounds=5)
        version_dir = Path(result["version_uri"])
        files = {p.name: p.read_bytes() for p in version_dir.iterdir()}
        (version_dir / "meta.json").unlink()  # what a writer killed in place (S3) leaves
        assert registry.list_versions(str(root), MODEL) == []
        with pytest.raises(registry.RegistryError, match="incomplete"):
            registry.load_model_dir(str(version_dir))
        registry.write_version(str(root), MODEL, result["version"], files)
        assert registry.list_versions(str(root), MODEL) == [result["version"]]
        assert registry.load_model_dir(str(version_dir)).meta["created_at"] == RUN_DS

    def test_list_versions_sorted_and_hides_temps(self, root, spec):
        a = train_version(root, spec, "2026-02-08", STRONG, rounds=5)["version"]
        b = train_version(root, spec, RUN_DS, STRONG, rounds=6)["version"]
        (Path(Layout(str(root)).models(MODEL)) / "_tmp-vx-123").mkdir()
        assert registry.list_versions(str(root), MODEL) == sorted([a, b])
        assert a < b  # the day leads the id, so ids sort by training day

    def test_missing_required_file(self, tmp_path):
        with pytest.raises(registry.RegistryError, match="missing files"):
            registry.write_version(str(tmp_path), MODEL, "v1", {"model.ubj": b"{}"})

    def test_pickle_model_is_refused_before_anything_is_written(self, tmp_path):
        files = {name: b"{}" for name in registry.REQUIRED_FILES}
        files[registry.MODEL_FILE] = b"\x80\x04\x95pickle"
        with pytest.raises(registry.RegistryError) as raised:
            registry.write_version(str(tmp_path), MODEL, "v20260101-00000000", files)
        assert str(raised.value) == "model.ubj: not an XGBoost JSON/UBJ model (refusing to load it)"
        assert not (tmp_path / "models").exists()


class TestImportCost:
    def test_store_and_pointer_import_without_pandas_xgboost_or_training(self):
        probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True,
                               text=True, env=child_env(), cwd=REPO_ROOT, check=True)
        modules = json.loads(probe.stdout)
        # pyarrow.lib itself imports numpy when it is installed: only what pyarrow loaded is
        # allowed, so numpy is asserted absent as soon as pyarrow stops importing it.
        assert set(modules["by_pyarrow"]) <= {"numpy"}
        assert modules["loaded"] == modules["by_pyarrow"]
        for name in ("pandas", "xgboost", "churn.training", "churn.modeling"):
            assert name not in modules["loaded"]
