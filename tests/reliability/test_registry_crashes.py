"""The model registry under retries and crashes (issue 9, item 3).

* `write_version` is SIGKILLed at each of its steps (the `write_version:<step>` fault points):
  readers never list or load the half-written version, and the retried job (same real XGBoost
  model, same bytes) completes it or finds it complete; other bytes under the id fail loudly.
* A `churn.registry_cli gate` process is SIGKILLed while holding `champion.lock`, after recording
  its decision intent (`registry:intent`) and after switching the pointer (`registry:switched`):
  the next gate breaks the dead holder's lock at once, resolves the intent and loses no record.
* A lock left by a dead pid is broken; a live holder still serializes; a hung one (older than
  the bound) is broken and can no longer switch.
* The gate scores both models with one function on one holdout, whatever metrics.json says.

Every child is a real process; it is killed by its own fault point (`CHURN_KILL_AT`), so the
test knows the step without sleeping. Models are real boosters (`tests.model.synthetic_frames`).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from churn import gate, registry
from churn.champion import LOCK_FILE, LockPolicy, list_decisions, promote, read_champion
from churn.faults import KILL_AT_ENV
from churn.modeling import load_booster
from churn.storage import Layout
from churn.training import holdout_auc
from tests.model.synthetic_frames import (DAYS, MODEL, RUN_DS, STRONG, WEAK, train_version,
                                       write_days)
from tests.support.processes import REPO_ROOT, child_env

KILLED = -signal.SIGKILL

TRAIN_CHILD = """
import json, sys
from churn.spec import load_spec
from tests.model.synthetic_frames import train_version
root, spec, ds, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
print(json.dumps(train_version(root, load_spec(spec), ds, config, rounds=10)), flush=True)
"""

HOLDER_CHILD = """
import sys
from churn.champion import _champion_lock
with _champion_lock(sys.argv[1], sys.argv[2]) as held:
    print("held", flush=True)
    sys.stdin.readline()
    print("owns" if held.owns_path() else "lost", flush=True)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, spec) -> tuple[Path, str, str]:
    """A root with 5 labelled days, a promoted champion and a better, unpromoted challenger."""
    root = tmp_path_factory.mktemp("registry")
    write_days(root, DAYS, rows=200, seed=1)
    champion = train_version(root, spec, RUN_DS, WEAK, rounds=3)["version"]
    promote(str(root), MODEL, champion, "tests", "baseline")
    challenger = train_version(root, spec, RUN_DS, STRONG, rounds=10)["version"]
    return root, champion, challenger


@pytest.fixture()
def root(tmp_path, trained) -> Path:
    """A private copy of the trained root."""
    shutil.copytree(trained[0], tmp_path / "data")
    return tmp_path / "data"


def models_dir(root: Path) -> Path:
    return Path(Layout(str(root)).models(MODEL))


def run_child(script: str, *argv: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """Run a real Python child to the end (or to its fault point) and return its result."""
    env = child_env(**({KILL_AT_ENV: kill_at} if kill_at else {}))
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300)


def train_child(root: Path, spec_path: Path, kill_at: str | None = None,
                config: dict = STRONG) -> subprocess.CompletedProcess:
    """A real training process: trains the booster and writes it with `write_version`."""
    return run_child(TRAIN_CHILD, str(root), str(spec_path), RUN_DS, json.dumps(config),
                     kill_at=kill_at)


def gate_child(root: Path, spec_path: Path, version: str, by: str,
               kill_at: str | None = None) -> subprocess.CompletedProcess:
    """A real `python -m churn.registry_cli gate` process, as the DAG's gate task runs it."""
    argv = ["-m", "churn.registry_cli", "--root", str(root), "--spec", str(spec_path), "--by", by,
            "gate", version]
    env = child_env(**({KILL_AT_ENV: kill_at} if kill_at else {}))
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=300)


def version_files(version_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(version_dir.iterdir())}


def temps(root: Path) -> list[str]:
    return sorted(p.name for p in models_dir(root).iterdir() if p.name.startswith("_tmp-"))


class TestWriteVersionCrashes:
    @pytest.mark.parametrize("step", ["write_version:partial", "write_version:staged"])
    def test_killed_before_visible_then_retry_completes(self, tmp_path, spec, spec_path, step,
                                                        reliability_case):
        write_days(tmp_path, DAYS, rows=200, seed=1)
        killed = train_child(tmp_path, spec_path, kill_at=step)
        assert killed.returncode == KILLED, killed.stderr
        assert registry.list_versions(str(tmp_path), MODEL) == []
        [left] = temps(tmp_path)  # hidden by its `_tmp-` name; meta.json only once staged
        written = {p.name for p in (models_dir(tmp_path) / left).iterdir()}
        assert (registry.META_FILE in written) == step.endswith("staged")

        retried = train_child(tmp_path, spec_path)
        assert retried.returncode == 0, retried.stderr
        result = json.loads(retried.stdout.splitlines()[-1])
        assert registry.list_versions(str(tmp_path), MODEL) == [result["version"]]
        artifact = registry.load_model_dir(result["version_uri"])
        assert artifact.version == result["version"]
        assert set(version_files(Path(result["version_uri"]))) >= set(registry.REQUIRED_FILES)
        assert temps(tmp_path) == []  # the dead writer's temporary was removed
        assert "an unfinished write" in retried.stderr
        reliability_case(f"training job SIGKILLed at {step} (version files half or all "
                         "written, not renamed in)",
                         "no version listed or loadable; the retried job wrote the version "
                         "whole and removed the dead writer's temporary",
                         "exit -9, list_versions empty, retry exit 0, load_model_dir ok, "
                         "no _tmp- left")

    def test_killed_after_rename_then_retry_returns_the_same_version(self, tmp_path, spec,
                                                                     spec_path,
                                                                     reliability_case):
        write_days(tmp_path, DAYS, rows=200, seed=1)
        killed = train_child(tmp_path, spec_path, kill_at="write_version:moved")
        assert killed.returncode == KILLED, killed.stderr
        [version] = registry.list_versions(str(tmp_path), MODEL)
        version_dir = models_dir(tmp_path) / version
        before = version_files(version_dir)
        inode = (version_dir / registry.MODEL_FILE).stat().st_ino

        retried = train_child(tmp_path, spec_path)
        assert retried.returncode == 0, retried.stderr
        result = json.loads(retried.stdout.splitlines()[-1])
        assert result["version"] == version and result["version_uri"] == str(version_dir)
        assert version_files(version_dir) == before
        assert (version_dir / registry.MODEL_FILE).stat().st_ino == inode  # not rewritten
        assert registry.list_versions(str(tmp_path), MODEL) == [version]
        reliability_case("training job SIGKILLed at write_version:moved (version whole, job "
                         "never reported it); the job is retried",
                         "the retry trained the same bytes and got the existing version back",
                         "retry exit 0, same version id and uri, files byte-equal, "
                         "model.ubj not rewritten (same inode)")

    def test_identical_retry_succeeds_different_bytes_fail_loudly(self, root, trained, spec,
                                                                 spec_path, reliability_case):
        challenger = trained[2]
        version_dir = models_dir(root) / challenger
        stored = version_files(version_dir)
        again = train_child(root, spec_path)  # a second job run: same data, same seed
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout.splitlines()[-1])["version"] == challenger

        other = {**stored, registry.METRICS_FILE: stored[registry.METRICS_FILE] + b"\n"}
        with pytest.raises(registry.VersionExistsError) as raised:
            registry.write_version(str(root), MODEL, challenger, other)
        assert challenger in str(raised.value) and "metrics.json differ" in str(raised.value)
        assert version_files(version_dir) == stored
        reliability_case("the same training job run twice; then other metrics.json bytes "
                         "written under the same version id",
                         "the rerun got the existing version; the different write raised "
                         "VersionExistsError naming the version and metrics.json",
                         "rerun exit 0 same id, error text, stored bytes unchanged")


def assert_decisions(root: Path, expected: list[tuple[str, str, str]]) -> list[dict]:
    """The decision log is exactly these (action, version, status), oldest first."""
    logged = list_decisions(str(root), MODEL)
    assert [(d["action"], d["version"], d["status"]) for d in logged] == expected
    return logged


class TestGateCrashes:
    def test_killed_after_intent_next_gate_aborts_it_and_decides(self, root, trained, spec_path,
                                                                reliability_case):
        _, champion, challenger = trained
        killed = gate_child(root, spec_path, challenger, "run-1", kill_at="registry:intent")
        assert killed.returncode == KILLED, killed.stderr
        lock = models_dir(root) / LOCK_FILE
        assert json.loads(lock.read_text())["pid"] > 0  # the dead holder's record is left
        assert read_champion(str(root), MODEL)["version"] == champion
        assert_decisions(root, [("promote", champion, "done"), ("gate", challenger, "intent")])

        retried = gate_child(root, spec_path, challenger, "run-1-retry")
        assert retried.returncode == 0, retried.stderr
        assert "broke stale champion lock" in retried.stderr
        assert "died before switching the pointer" in retried.stderr
        decision = json.loads(retried.stdout)
        assert decision["promoted"] and decision["champion_version"] == champion
        assert read_champion(str(root), MODEL)["version"] == challenger
        logged = assert_decisions(root, [("promote", champion, "done"),
                                         ("gate", challenger, "aborted"),
                                         ("gate", challenger, "done")])
        assert logged[1]["recovered_by"] == "run-1-retry"
        assert not lock.exists()
        reliability_case("gate process SIGKILLed after writing its decision intent, holding "
                         "champion.lock (registry:intent)",
                         "champion unchanged, intent visible; the retried gate broke the dead "
                         "holder's lock at once, marked the intent aborted and promoted",
                         "exit -9, pointer = old champion, 3 records promote/aborted/done, "
                         "warnings logged, no lock left")

    def test_killed_after_switch_next_gate_completes_the_record(self, root, trained, spec_path,
                                                               reliability_case):
        _, champion, challenger = trained
        killed = gate_child(root, spec_path, challenger, "run-1", kill_at="registry:switched")
        assert killed.returncode == KILLED, killed.stderr
        pointer = read_champion(str(root), MODEL)
        assert pointer["version"] == challenger and pointer["history"] == [champion, challenger]
        [_, intent] = assert_decisions(root, [("promote", champion, "done"),
                                              ("gate", challenger, "intent")])
        assert pointer["decision_id"] == intent["decision_id"]

        retried = gate_child(root, spec_path, challenger, "run-1-retry")
        assert retried.returncode == 0, retried.stderr
        assert "died after switching the pointer" in retried.stderr
        decision = json.loads(retried.stdout)
        assert (decision["promoted"], decision["reason"]) == (False, "already the champion")
        logged = assert_decisions(root, [("promote", champion, "done"),
                                         ("gate", challenger, "done"),
                                         ("gate", challenger, "done")])
        assert logged[1]["champion_auc"] == pytest.approx(intent["champion_auc"])
        assert "completed" in logged[1]["recovery"]
        reliability_case("gate process SIGKILLed after switching champion.json, before "
                         "completing its record (registry:switched)",
                         "new champion live; the retried gate completed the dangling record "
                         "and answered 'already the champion'",
                         "exit -9, pointer names the intent, 3 records all done, no record lost")


class TestChampionLock:
    def test_lock_left_by_a_dead_pid_is_broken(self, root, trained, spec_path, reliability_case):
        _, champion, challenger = trained
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        lock = models_dir(root) / LOCK_FILE
        lock.write_text(dead.stdout.strip())  # the old O_EXCL lock format: a bare pid
        gated = gate_child(root, spec_path, challenger, "run-2")
        assert gated.returncode == 0, gated.stderr
        assert f"'pid': '{dead.stdout.strip()}'" in gated.stderr
        assert read_champion(str(root), MODEL)["version"] == challenger
        assert not lock.exists()
        reliability_case(f"champion.lock left by pid {dead.stdout.strip()}, which has exited",
                         "the gate broke it with a warning naming the pid and promoted",
                         "exit 0, warning text, champion switched, no lock left")

    def test_killed_holder_frees_the_lock_for_the_next_gate(self, root, trained, spec, spec_path,
                                                            reliability_case):
        _, champion, challenger = trained
        killed = gate_child(root, spec_path, challenger, "run-1", kill_at="registry:locked")
        assert killed.returncode == KILLED, killed.stderr
        holder = json.loads((models_dir(root) / LOCK_FILE).read_text())
        fast = LockPolicy(timeout_s=1.0)  # the dead holder must not make it wait
        decision = gate.gate(str(root), spec, challenger, decided_by="run-2", policy=fast)
        assert decision.promoted and decision.champion_version == champion
        assert_decisions(root, [("promote", champion, "done"), ("gate", challenger, "done")])
        reliability_case(f"gate SIGKILLed holding champion.lock (pid {holder['pid']}), before "
                         "any record or switch (registry:locked)",
                         "the next gate took the lock within a 1 s timeout and promoted",
                         "exit -9, gate with timeout 1 s promoted, 2 records")

    def test_live_holder_serializes_and_a_hung_one_is_broken(self, root, trained, spec,
                                                             caplog, reliability_case):
        _, champion, challenger = trained
        holder = subprocess.Popen([sys.executable, "-c", HOLDER_CHILD, str(root), MODEL],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=child_env(), cwd=REPO_ROOT)
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(registry.RegistryError, match=f"held by .*{holder.pid}"):
                promote(str(root), MODEL, challenger, "tests", "while held",
                        policy=LockPolicy(timeout_s=0.3))
            assert read_champion(str(root), MODEL)["version"] == champion
            with caplog.at_level(logging.WARNING, logger="churn.champion"):
                promote(str(root), MODEL, challenger, "tests", "holder hung",
                        policy=LockPolicy(timeout_s=5, stale_after_s=0))
            assert "breaking stale champion lock" in caplog.text
            assert read_champion(str(root), MODEL)["version"] == challenger
            out, _ = holder.communicate("wake\n", timeout=60)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        assert out.split() == ["lost"]  # the hung holder knows it may no longer switch
        reliability_case("champion.lock held by a live process that then hangs",
                         "a promote with a 0.3 s timeout failed naming the holder and changed "
                         "nothing; with the staleness bound passed it broke the lock and the "
                         "woken holder found it had lost it",
                         "RegistryError + pointer unchanged, then warning + pointer switched, "
                         "holder saw 'lost'")


class TestGateScoring:
    def test_both_sides_scored_on_one_holdout_despite_metrics_json(self, root, trained, spec,
                                                                 spec_path, reliability_case):
        _, champion, weak = trained[0], trained[2], trained[1]
        promote(str(root), MODEL, champion, "tests", "strong champion")
        metrics = models_dir(root) / weak / registry.METRICS_FILE
        claimed = {**json.loads(metrics.read_text()), "roc_auc": 0.999}
        metrics.write_text(json.dumps(claimed))  # a challenger whose record overstates it
        gated = gate_child(root, spec_path, weak, "run-3")
        assert gated.returncode == 0, gated.stderr
        decision = json.loads(gated.stdout)

        holdout = gate.load_holdout(str(root), spec, weak)
        expected = {v: holdout_auc(*_booster(root, v), holdout) for v in (weak, champion)}
        assert decision["promoted"] is False
        assert decision["challenger_auc"] == pytest.approx(expected[weak])
        assert decision["champion_auc"] == pytest.approx(expected[champion])
        assert decision["challenger_recorded_auc"] == 0.999
        meta = registry.read_version_json(str(root), MODEL, weak, registry.META_FILE)
        assert decision["holdout_days"] == meta["window"]["validation_days"]
        assert decision["holdout_rows"] == len(holdout) > 0
        logged = list_decisions(str(root), MODEL)[-1]
        assert logged["holdout_digest"] == decision["holdout_digest"]
        reliability_case("challenger's metrics.json claims AUC 0.999 for a weak model",
                         f"the gate re-scored both on the same {len(holdout)}-row holdout "
                         f"({expected[weak]:.3f} vs champion {expected[champion]:.3f}) and "
                         "refused",
                         "both AUCs equal an independent scoring of the stored models, "
                         "holdout rows/days/digest recorded",
                         rows={"rows_in": len(holdout), "rows_out": len(holdout),
                               "rows_rejected": 0})


def _booster(root: Path, version: str):
    """A stored version's booster and schema, read back from its files."""
    artifact = registry.load_model_dir(str(models_dir(root) / version))
    return load_booster(artifact.model_bytes), artifact.schema
