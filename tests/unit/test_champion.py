"""Champion pointer: reading it, promote and rollback, and the decision log.

Models are real XGBoost boosters trained in-process on tiny synthetic partitions (no Ray).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from churn import champion, registry
from churn.storage import Layout, write_json_atomic
from tests.model.synthetic_frames import MODEL, RUN_DS, STRONG, WEAK, train_version


class TestChampionUri:
    def test_none_without_champion(self, tmp_path):
        assert champion.champion_uri(str(tmp_path), MODEL) is None

    def test_corrupt_pointer_raises(self, tmp_path):
        pointer = Path(Layout(str(tmp_path)).champion(MODEL))
        pointer.parent.mkdir(parents=True)
        pointer.write_text("{not json")
        with pytest.raises(registry.RegistryError, match="not JSON"):
            champion.champion_uri(str(tmp_path), MODEL)

    def test_pointer_to_missing_version_raises(self, tmp_path):
        write_json_atomic(Layout(str(tmp_path)).champion(MODEL), {"version": "v20260101-deadbeef"})
        with pytest.raises(registry.RegistryError, match="does not exist"):
            champion.champion_uri(str(tmp_path), MODEL)

    def test_after_promotion(self, root, spec):
        result = train_version(root, spec, RUN_DS, STRONG, rounds=5)
        champion.promote(str(root), MODEL, result["version"], "alice", "first")
        assert champion.champion_uri(str(root), MODEL) == result["version_uri"]


class TestPromoteRollback:
    def test_rollback_restores_previous(self, root, spec):
        first = train_version(root, spec, RUN_DS, WEAK, rounds=2)["version"]
        second = train_version(root, spec, RUN_DS, STRONG)["version"]
        champion.promote(str(root), MODEL, first, "alice", "one")
        champion.promote(str(root), MODEL, second, "alice", "two")
        decision = champion.rollback(str(root), MODEL, "bob")
        assert (decision["version"], decision["previous_version"]) == (first, second)
        assert champion.read_champion(str(root), MODEL)["version"] == first
        with pytest.raises(registry.RegistryError, match="no earlier champion"):
            champion.rollback(str(root), MODEL, "bob")

    def test_promote_unknown_version_refused(self, tmp_path):
        with pytest.raises(registry.RegistryError, match="not found"):
            champion.promote(str(tmp_path), MODEL, "v20260101-00000000", "alice", "typo")


class TestDecisions:
    def test_log_is_oldest_first_and_skips_temporaries(self, root, spec):
        first = train_version(root, spec, RUN_DS, WEAK, rounds=2)["version"]
        second = train_version(root, spec, RUN_DS, STRONG, rounds=5)["version"]
        champion.promote(str(root), MODEL, first, "alice", "one")
        champion.promote(str(root), MODEL, second, "bob", "two")
        decisions = Path(Layout(str(root)).models(MODEL)) / champion.DECISIONS_DIR
        (decisions / "_tmp-0123456789ab.json").write_text("{half a write")  # a writer's temp
        (decisions / ".hidden.json").write_text("{}")
        logged = champion.list_decisions(str(root), MODEL)
        assert [(d["version"], d["decided_by"], d["status"]) for d in logged] == [
            (first, "alice", "done"), (second, "bob", "done")]
        pointer = champion.read_champion(str(root), MODEL)
        assert pointer["decision_id"] == logged[-1]["decision_id"]
        assert pointer["history"] == [first, second]
