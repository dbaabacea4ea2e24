"""Registry: version directories, the champion pointer, the gate, promote/rollback and the CLI.

Models are real XGBoost boosters trained in-process on tiny synthetic partitions (no Ray).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from churn import registry
from churn.spec import load_spec
from churn.storage import Layout, write_json_atomic
from tests.model.synthetic_frames import (DAYS, MODEL, RUN_DS, STRONG, WEAK, train_version,
                                       write_days)


@pytest.fixture(scope="module")
def spec(spec_path):
    return load_spec(spec_path)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    write_days(tmp_path, DAYS, rows=300, seed=1)
    return tmp_path


def _version_dir(root: Path, version: str) -> Path:
    return Path(Layout(str(root)).model_version(MODEL, version))


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
        with pytest.raises(registry.RegistryError, match="not an XGBoost"):
            registry.load_model_dir(str(uri))

    def test_bad_features_json(self, root, spec):
        uri = Path(train_version(root, spec, RUN_DS, STRONG, rounds=5)["version_uri"])
        (uri / "features.json").write_text('{"columns": []}')
        with pytest.raises(registry.RegistryError, match="features.json"):
            registry.load_model_dir(str(uri))


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


class TestChampionUri:
    def test_none_without_champion(self, tmp_path):
        assert registry.champion_uri(str(tmp_path), MODEL) is None

    def test_corrupt_pointer_raises(self, tmp_path):
        pointer = Path(Layout(str(tmp_path)).champion(MODEL))
        pointer.parent.mkdir(parents=True)
        pointer.write_text("{not json")
        with pytest.raises(registry.RegistryError, match="not JSON"):
            registry.champion_uri(str(tmp_path), MODEL)

    def test_pointer_to_missing_version_raises(self, tmp_path):
        write_json_atomic(Layout(str(tmp_path)).champion(MODEL), {"version": "v20260101-deadbeef"})
        with pytest.raises(registry.RegistryError, match="does not exist"):
            registry.champion_uri(str(tmp_path), MODEL)

    def test_after_promotion(self, root, spec):
        result = train_version(root, spec, RUN_DS, STRONG, rounds=5)
        registry.promote(str(root), MODEL, result["version"], "alice", "first")
        assert registry.champion_uri(str(root), MODEL) == result["version_uri"]


class TestGate:
    def test_first_model_above_floor_is_promoted(self, root, spec):
        result = train_version(root, spec, RUN_DS, STRONG)
        decision = registry.gate(str(root), spec, result["version"], decided_by="run-1")
        assert decision.promoted is True
        assert decision.champion_version is None and decision.champion_auc is None
        assert decision.challenger_auc == pytest.approx(result["metrics"]["roc_auc"])
        assert decision.challenger_auc > spec.model.gate_floor_auc
        assert registry.read_champion(str(root), MODEL)["version"] == result["version"]

    def test_first_model_below_floor_is_refused(self, root, spec):
        strict = spec.model_copy(update={"model": spec.model.model_copy(
            update={"gate_floor_auc": 0.99})})
        result = train_version(root, strict, RUN_DS, STRONG)
        decision = registry.gate(str(root), strict, result["version"], decided_by="run-1")
        assert decision.promoted is False
        assert "below the floor" in decision.reason
        assert registry.champion_uri(str(root), MODEL) is None

    def test_worse_challenger_is_refused_and_recorded(self, root, spec):
        champion = train_version(root, spec, RUN_DS, STRONG)["version"]
        registry.gate(str(root), spec, champion, decided_by="run-1")
        worse = train_version(root, spec, RUN_DS, WEAK, rounds=2)
        decision = registry.gate(str(root), spec, worse["version"], decided_by="run-2")
        assert decision.promoted is False
        assert decision.champion_version == champion
        assert decision.champion_auc - decision.challenger_auc > spec.model.gate_tolerance
        assert registry.read_champion(str(root), MODEL)["version"] == champion
        logged = registry.list_decisions(str(root), MODEL)
        assert [(d["version"], d["promoted"], d["decided_by"]) for d in logged] == [
            (champion, True, "run-1"), (worse["version"], False, "run-2")]
        assert logged[1]["champion_auc"] == pytest.approx(decision.champion_auc)
        assert [d["status"] for d in logged] == ["done", "done"]
        pointer = registry.read_champion(str(root), MODEL)
        assert pointer["decision_id"] == logged[0]["decision_id"]

    def test_both_sides_scored_on_the_same_recorded_holdout(self, root, spec):
        champion = train_version(root, spec, RUN_DS, STRONG)["version"]
        registry.promote(str(root), MODEL, champion, "alice", "baseline")
        challenger = train_version(root, spec, RUN_DS, WEAK, rounds=2)
        decision = registry.gate(str(root), spec, challenger["version"], decided_by="run-2")
        holdout = registry.load_holdout(str(root), spec, challenger["version"])
        assert decision.challenger_auc == pytest.approx(challenger["metrics"]["roc_auc"])
        assert decision.challenger_recorded_auc == challenger["metrics"]["roc_auc"]
        assert (decision.holdout_rows, decision.holdout_days) == (len(holdout), DAYS)
        again = registry.gate(str(root), spec, challenger["version"], decided_by="run-3")
        assert again.holdout_digest == decision.holdout_digest
        assert again.champion_auc == decision.champion_auc

    def test_better_challenger_replaces_the_champion(self, root, spec):
        weak = train_version(root, spec, RUN_DS, WEAK, rounds=2)["version"]
        registry.promote(str(root), MODEL, weak, "alice", "baseline")
        strong = train_version(root, spec, RUN_DS, STRONG)["version"]
        decision = registry.gate(str(root), spec, strong, decided_by="run-3")
        assert decision.promoted is True
        assert decision.challenger_auc > decision.champion_auc
        assert registry.read_champion(str(root), MODEL)["history"] == [weak, strong]

    def test_concurrent_gates_switch_consistently(self, root, spec):
        base = train_version(root, spec, RUN_DS, WEAK, rounds=2)["version"]
        registry.promote(str(root), MODEL, base, "alice", "baseline")
        challengers = [train_version(root, spec, RUN_DS, {**STRONG, "max_depth": depth})["version"]
                       for depth in (2, 3)]
        decisions: dict[str, registry.GateDecision] = {}
        threads = [threading.Thread(target=lambda v=v: decisions.__setitem__(
            v, registry.gate(str(root), spec, v, decided_by=v))) for v in challengers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        history = registry.read_champion(str(root), MODEL)["history"]
        assert history[0] == base
        assert set(history[1:]) == {v for v in challengers if decisions[v].promoted} != set()
        # Each switch compared itself with the champion it replaced, never a stale one.
        for position, version in enumerate(history[1:], start=1):
            assert decisions[version].champion_version == history[position - 1]
        assert not (Path(Layout(str(root)).models(MODEL)) / "champion.lock").exists()

    def test_random_holdout_is_reloaded_from_holdout_ids(self, tmp_path, spec):
        write_days(tmp_path, ["2026-01-05"], rows=400, seed=3)
        result = train_version(tmp_path, spec, RUN_DS, STRONG)
        assert result["metrics"]["holdout"] == "random"
        holdout = registry.load_holdout(str(tmp_path), spec, result["version"])
        assert len(holdout) == result["metrics"]["rows"] == 80
        assert holdout["label"].mean() == pytest.approx(result["metrics"]["positive_rate"])


class TestPromoteRollbackCli:
    def test_rollback_restores_previous(self, root, spec):
        first = train_version(root, spec, RUN_DS, WEAK, rounds=2)["version"]
        second = train_version(root, spec, RUN_DS, STRONG)["version"]
        registry.promote(str(root), MODEL, first, "alice", "one")
        registry.promote(str(root), MODEL, second, "alice", "two")
        decision = registry.rollback(str(root), MODEL, "bob")
        assert (decision["version"], decision["previous_version"]) == (first, second)
        assert registry.read_champion(str(root), MODEL)["version"] == first
        with pytest.raises(registry.RegistryError, match="no earlier champion"):
            registry.rollback(str(root), MODEL, "bob")

    def test_promote_unknown_version_refused(self, tmp_path):
        with pytest.raises(registry.RegistryError, match="not found"):
            registry.promote(str(tmp_path), MODEL, "v20260101-00000000", "alice", "typo")

    def test_cli_list_and_promote(self, root, spec, spec_path, capsys):
        version = train_version(root, spec, RUN_DS, STRONG, rounds=5)["version"]
        registry.main(["--root", str(root), "--spec", str(spec_path), "--by", "carol",
                       "promote", version])
        capsys.readouterr()
        registry.main(["--root", str(root), "--model-name", MODEL, "list"])
        rows = json.loads(capsys.readouterr().out)
        assert [(r["version"], r["champion"]) for r in rows] == [(version, True)]
        assert registry.list_decisions(str(root), MODEL)[0]["decided_by"] == "carol"

    def test_cli_gate_and_show(self, root, spec, spec_path, capsys):
        version = train_version(root, spec, RUN_DS, STRONG, rounds=5)["version"]
        registry.main(["--root", str(root), "--spec", str(spec_path), "--by", "dave",
                       "gate", version])
        decision = json.loads(capsys.readouterr().out)
        assert (decision["promoted"], decision["decided_by"]) == (True, "dave")
        registry.main(["--root", str(root), "--model-name", MODEL, "show"])
        shown = json.loads(capsys.readouterr().out)
        assert shown["version"] == version
        assert shown["metrics.json"]["roc_auc"] == pytest.approx(decision["challenger_auc"])
