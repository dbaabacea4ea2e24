"""Promotion gate: the verdict, both sides scored on one holdout, and concurrent gates.

Models are real XGBoost boosters trained in-process on tiny synthetic partitions (no Ray).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from churn import champion, gate
from churn.faults import PAUSE_AT_ENV, PAUSE_DIR_ENV
from churn.storage import Layout
from tests.model.synthetic_frames import (DAYS, MODEL, RUN_DS, STRONG, WEAK, train_version,
                                       write_days)

# Both gates decide (against the base) before either asks to switch; then both stand at the
# champion lock's critical section, one inside it (pointer read, not yet switched) and the other
# at its door, before either switches.
COLLIDE = "gate:decided;registry:compared,registry:lock-busy"


class TestGate:
    def test_first_model_above_floor_is_promoted(self, root, spec):
        result = train_version(root, spec, RUN_DS, STRONG)
        decision = gate.gate(str(root), spec, result["version"], decided_by="run-1")
        assert decision.promoted is True
        assert decision.champion_version is None and decision.champion_auc is None
        assert decision.challenger_auc == pytest.approx(result["metrics"]["roc_auc"])
        assert decision.challenger_auc > spec.model.gate_floor_auc
        assert champion.read_champion(str(root), MODEL)["version"] == result["version"]

    def test_first_model_below_floor_is_refused(self, root, spec):
        strict = spec.model_copy(update={"model": spec.model.model_copy(
            update={"gate_floor_auc": 0.99})})
        result = train_version(root, strict, RUN_DS, STRONG)
        decision = gate.gate(str(root), strict, result["version"], decided_by="run-1")
        assert decision.promoted is False
        assert "below the floor" in decision.reason
        assert champion.champion_uri(str(root), MODEL) is None

    def test_worse_challenger_is_refused_and_recorded(self, root, spec):
        base = train_version(root, spec, RUN_DS, STRONG)["version"]
        gate.gate(str(root), spec, base, decided_by="run-1")
        worse = train_version(root, spec, RUN_DS, WEAK, rounds=2)
        decision = gate.gate(str(root), spec, worse["version"], decided_by="run-2")
        assert decision.promoted is False
        assert decision.champion_version == base
        assert decision.champion_auc - decision.challenger_auc > spec.model.gate_tolerance
        assert champion.read_champion(str(root), MODEL)["version"] == base
        logged = champion.list_decisions(str(root), MODEL)
        assert [(d["version"], d["promoted"], d["decided_by"]) for d in logged] == [
            (base, True, "run-1"), (worse["version"], False, "run-2")]
        assert logged[1]["champion_auc"] == pytest.approx(decision.champion_auc)
        assert [d["status"] for d in logged] == ["done", "done"]
        pointer = champion.read_champion(str(root), MODEL)
        assert pointer["decision_id"] == logged[0]["decision_id"]

    def test_both_sides_scored_on_the_same_recorded_holdout(self, root, spec):
        base = train_version(root, spec, RUN_DS, STRONG)["version"]
        champion.promote(str(root), MODEL, base, "alice", "baseline")
        challenger = train_version(root, spec, RUN_DS, WEAK, rounds=2)
        decision = gate.gate(str(root), spec, challenger["version"], decided_by="run-2")
        holdout = gate.load_holdout(str(root), spec, challenger["version"])
        assert decision.challenger_auc == pytest.approx(challenger["metrics"]["roc_auc"])
        assert decision.challenger_recorded_auc == challenger["metrics"]["roc_auc"]
        assert (decision.holdout_rows, decision.holdout_days) == (len(holdout), DAYS)
        again = gate.gate(str(root), spec, challenger["version"], decided_by="run-3")
        assert again.holdout_digest == decision.holdout_digest
        assert again.champion_auc == decision.champion_auc

    def test_better_challenger_replaces_the_champion(self, root, spec):
        weak = train_version(root, spec, RUN_DS, WEAK, rounds=2)["version"]
        champion.promote(str(root), MODEL, weak, "alice", "baseline")
        strong = train_version(root, spec, RUN_DS, STRONG)["version"]
        decision = gate.gate(str(root), spec, strong, decided_by="run-3")
        assert decision.promoted is True
        assert decision.challenger_auc > decision.champion_auc
        assert champion.read_champion(str(root), MODEL)["history"] == [weak, strong]

    def test_concurrent_gates_switch_consistently(self, root, spec, tmp_path_factory,
                                                  monkeypatch):
        # A wide tolerance lets both challengers pass, so the second switch must lose its
        # compare-and-swap and re-decide against the first.
        spec = spec.model_copy(update={"model": spec.model.model_copy(
            update={"gate_tolerance": 0.5})})
        base = train_version(root, spec, RUN_DS, WEAK, rounds=2)["version"]
        champion.promote(str(root), MODEL, base, "alice", "baseline")
        challengers = [train_version(root, spec, RUN_DS, {**STRONG, "max_depth": depth})["version"]
                       for depth in (2, 3)]
        meetings = tmp_path_factory.mktemp("meetings")
        monkeypatch.setenv(PAUSE_AT_ENV, COLLIDE)
        monkeypatch.setenv(PAUSE_DIR_ENV, str(meetings))
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = {v: pool.submit(gate.gate, str(root), spec, v, decided_by=v)
                       for v in challengers}
            decisions = {v: future.result(timeout=300) for v, future in running.items()}
        assert len(list((meetings / "meeting-1").iterdir())) == 2  # both at the critical section
        history = champion.read_champion(str(root), MODEL)["history"]
        assert len(history) == 3 and history[0] == base, history  # no switch was lost
        first, second = history[1:]
        assert {first, second} == set(challengers)
        assert all(decision.promoted for decision in decisions.values())
        # Each switch compared itself with the champion it replaced, never a stale one: the
        # second had decided against the base too, lost the compare-and-swap and re-decided.
        assert decisions[first].champion_version == base
        assert decisions[second].champion_version == first
        gates = [d for d in champion.list_decisions(str(root), MODEL) if d["action"] == "gate"]
        assert sorted(d["version"] for d in gates) == sorted(challengers)
        assert {d["status"] for d in gates} == {"done"}
        assert not (Path(Layout(str(root)).models(MODEL)) / "champion.lock").exists()

    def test_random_holdout_is_reloaded_from_holdout_ids(self, tmp_path, spec):
        write_days(tmp_path, ["2026-01-05"], rows=400, seed=3)
        result = train_version(tmp_path, spec, RUN_DS, STRONG)
        assert result["metrics"]["holdout"] == "random"
        holdout = gate.load_holdout(str(tmp_path), spec, result["version"])
        assert len(holdout) == result["metrics"]["rows"] == 80
        assert holdout["label"].mean() == pytest.approx(result["metrics"]["positive_rate"])


class TestVerdict:
    @pytest.mark.parametrize("challenger, champion_auc, promoted, says", [
        (0.55, None, False, "below the floor"),
        (0.70, None, True, "first model"),
        (0.70, 0.72, True, ">= -0.05"),
        (0.70, 0.80, False, "< -0.05"),
    ])
    def test_floor_then_tolerance(self, challenger, champion_auc, promoted, says):
        verdict, reason = gate._verdict(challenger, champion_auc, tolerance=0.05, floor=0.6)
        assert verdict is promoted and says in reason
