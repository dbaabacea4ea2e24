"""`ray_jobs/train.py` end to end against the session's real local Ray head (token auth).

The job runs as a subprocess whose driver connects to the fixture's head through RAY_ADDRESS,
exactly as a Ray job entrypoint would; the test then checks the registry version it wrote and
runs the promotion gate on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from churn import champion, gate, registry
from churn.metrics import roc_auc
from churn.model_version import TrainSettings
from churn.spec import load_spec
from churn.storage import ds_range
from churn.training import read_labelled_frame
from tests.model.synthetic_frames import churn_probability, write_days
from tests.support.versions import expected_code_version

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_JOB = REPO_ROOT / "ray_jobs" / "train.py"
RUN_DS = "2026-02-10"
DAYS = ds_range("2026-01-01", "2026-01-05")
# Training days must end a label horizon (30) before the validation day.
DAYS_WITH_GAP = [*ds_range("2025-12-02", "2025-12-05"), "2026-01-05"]

pytestmark = pytest.mark.training


def _run_job(ray_head, root: Path, spec_path: Path, *extra: str,
             timeout_s: int = 420) -> tuple[dict, dict]:
    """Run the job; return (the JSON of its last stdout line, its --result-file)."""
    result_file = root / "result.json"
    env = {**os.environ, **ray_head.client_env()}
    completed = subprocess.run(
        [sys.executable, str(TRAIN_JOB), "--root", str(root), "--spec", str(spec_path),
         "--ds", RUN_DS, "--result-file", str(result_file), "--num-boost-round", "60", *extra],
        env=env, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    last_line = completed.stdout.strip().splitlines()[-1]
    return json.loads(last_line), json.loads(result_file.read_text())


def _oracle_auc(root: Path, spec, days: list[str]) -> float:
    valid = read_labelled_frame(str(root), spec, days)
    return roc_auc(valid["label"], churn_probability(valid))


class TestTrainJob:
    def test_single_worker_search_writes_a_version_and_passes_the_gate(self, ray_head, tmp_path,
                                                                       spec_path):
        spec = load_spec(spec_path)
        write_days(tmp_path, DAYS_WITH_GAP, rows=400, seed=21)
        printed, written = _run_job(ray_head, tmp_path, spec_path, "--trials", "4",
                                    "--train-days", "5")
        assert printed == written
        version = printed["version"]
        assert version.startswith("v20260210-")
        assert printed["window"]["validation_days"] == ["2026-01-05"]
        assert printed["window"]["train_days"] == ds_range("2025-12-02", "2025-12-05")
        assert printed["metrics"]["holdout"] == "time" and printed["metrics"]["rows"] == 400
        assert set(printed["params"]) >= {"max_depth", "eta", "min_child_weight", "subsample",
                                          "colsample_bytree", "lambda", "num_boost_round"}
        assert {"read_s", "tune_s", "total_s"} <= set(printed["timings"])
        artifact = registry.load_model_dir(printed["version_uri"])
        stored = registry.read_version_json(str(tmp_path), spec.model.name, version, "metrics.json")
        assert stored["roc_auc"] == pytest.approx(printed["metrics"]["roc_auc"])
        assert artifact.meta["code_version"] == expected_code_version(TRAIN_JOB.parent)
        assert artifact.meta["package_version"] == metadata.version("churn")
        assert artifact.meta["plan"]["concurrency"] == 2  # 2 CPUs, 1 CPU per trial
        oracle = _oracle_auc(tmp_path, spec, ["2026-01-05"])
        assert stored["roc_auc"] >= 0.95 * oracle, (stored["roc_auc"], oracle)

        decision = gate.gate(str(tmp_path), spec, version, decided_by="test")
        assert decision.promoted is True
        assert champion.champion_uri(str(tmp_path), spec.model.name) == printed["version_uri"]

    @pytest.mark.slow
    def test_train_v2_shape_with_two_workers(self, ray_head, tmp_path, spec_path):
        write_days(tmp_path, DAYS, rows=300, seed=22)
        printed, _ = _run_job(ray_head, tmp_path, spec_path, "--trials", "1", "--workers", "2")
        artifact = registry.load_model_dir(printed["version_uri"])
        plan = artifact.meta["plan"]
        assert (plan["concurrency"], plan["nthread"]) == (1, 1)
        assert 0 < plan["trial_cpus"] + 2 * plan["worker_cpus"] <= 0.75 * plan["cpus"] <= 1.5
        assert printed["metrics"]["roc_auc"] > 0.6


class TestCommandLine:
    """The flags reach `train_model` as one `TrainSettings`; the last stdout line is the result."""

    def test_flags_become_the_settings_and_the_result_is_printed_last(self, tmp_path, spec_path,
                                                                      monkeypatch, capsys):
        from ray_jobs import train

        calls = []
        result = {"version": "v20260210-0000abcd", "metrics": {"roc_auc": 0.8}}

        def fake_train_model(root, spec, ds, settings, ray_address=None):
            calls.append((root, spec.name, ds, settings, ray_address))
            return result

        monkeypatch.setattr(train, "train_model", fake_train_model)
        monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
        result_file = tmp_path / "result.json"
        assert train.main(["--root", str(tmp_path), "--spec", str(spec_path), "--ds", RUN_DS,
                           "--trials", "3", "--train-days", "6", "--workers", "2",
                           "--max-concurrent", "1", "--seed", "5", "--num-boost-round", "40",
                           "--driver-cpus", "0.5", "--result-file", str(result_file)]) == 0
        settings = TrainSettings(trials=3, train_days=6, workers=2, max_concurrent=1, seed=5,
                                 num_boost_round=40, driver_cpus=0.5)
        assert calls == [(str(tmp_path), "synthetic", RUN_DS, settings, "ray://head:10001")]
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
        assert json.loads(result_file.read_text()) == result
