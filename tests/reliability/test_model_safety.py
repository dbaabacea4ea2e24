"""Model safety: the scorer only loads registry XGBoost models whose features match, the champion
pointer is trusted only when it is sound, and two gate processes promote atomically.

Models are real boosters trained in-process on tiny synthetic partitions
(`tests.model.synthetic_frames`); the concurrent gates are two real
`python -m churn.registry_cli` processes released together.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from churn import champion, gate, registry
from churn.modeling import MissingFeatureError
from churn.scoring import cached_booster
from churn.spec import dump_spec
from churn.storage import Layout, ds_range, write_json_atomic
from spark_jobs import score
from tests.model.synthetic_frames import train_version, write_days

REPO = Path(__file__).resolve().parents[2]
MODEL = "churn_xgb"
RUN_DS = "2026-02-10"  # horizon 30: every January day below is matured
DAYS = ds_range("2026-01-01", "2026-01-05")
SCORE_DS = DAYS[-1]
STRONG = {"max_depth": 3, "eta": 0.2, "min_child_weight": 1.0, "subsample": 1.0,
          "colsample_bytree": 1.0, "lambda": 1.0}
WEAK = {**STRONG, "max_depth": 1, "colsample_bytree": 0.2}


class Detonator:
    """Unpickling this writes a marker file: proof that something called pickle.loads."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, spec) -> tuple[Path, str]:
    """A root with 5 days of features/labels and one champion version (read-only for tests)."""
    root = tmp_path_factory.mktemp("registry")
    write_days(root, DAYS, rows=200, seed=1)
    version = train_version(root, spec, RUN_DS, STRONG, rounds=10)["version"]
    champion.promote(str(root), MODEL, version, "tests", "baseline")
    return root, version


@pytest.fixture()
def root(tmp_path, trained) -> Path:
    """A private copy of the trained root."""
    import shutil

    shutil.copytree(trained[0], tmp_path / "data")
    return tmp_path / "data"


def version_dir(root: Path, version: str) -> Path:
    return Path(Layout(str(root)).model_version(MODEL, version))


def score_argv(root: Path, spec_path: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "--spec", str(spec_path), "--ds", SCORE_DS, *extra]


def predictions_written(root: Path) -> bool:
    return Path(Layout(str(root)).predictions(SCORE_DS)).exists()


def assert_score_refuses(root: Path, spec_path: Path, match: str, *extra: str) -> None:
    """The score CLI raises RegistryError (before Spark starts) and writes no predictions."""
    with pytest.raises(registry.RegistryError, match=match):
        score.main(score_argv(root, spec_path, *extra))
    assert not predictions_written(root)


class TestRefusedModelFiles:
    def test_pickle_is_refused_without_unpickling(self, root, trained, spec_path, tmp_path,
                                                  reliability_case):
        marker = tmp_path / "unpickled.txt"
        payload = pickle.dumps(Detonator(marker))
        (version_dir(root, trained[1]) / "model.ubj").write_bytes(payload)
        assert_score_refuses(root, spec_path, "not an XGBoost JSON/UBJ model")
        with pytest.raises(ValueError, match="refusing to load it"):
            cached_booster(payload)
        assert not marker.exists()
        reliability_case("champion's model.ubj replaced by a pickle whose loading writes a file",
                         "score refused before Spark started: not an XGBoost model",
                         "RegistryError, marker file never written, no predictions")

    @pytest.mark.parametrize("content", [b'{"learner": "not really"}', b"{" + b"\x00" * 64, b""],
                             ids=["json-object", "brace-and-zeros", "empty"])
    def test_non_xgboost_bytes_are_refused(self, root, trained, spec_path, content,
                                           reliability_case):
        (version_dir(root, trained[1]) / "model.ubj").write_bytes(content)
        assert_score_refuses(root, spec_path, "model.ubj")
        reliability_case(f"model.ubj = {content[:12]!r}…", "refused by load_model_dir",
                         "RegistryError naming model.ubj, no predictions")

    def test_model_outside_a_version_dir_is_refused(self, root, trained, spec_path,
                                                    reliability_case):
        bare = version_dir(root, trained[1]) / "model.ubj"
        assert_score_refuses(root, spec_path, "model URI",
                             "--model-uri", str(bare))
        reliability_case("--model-uri pointing at a bare model file", "refused: not a registry "
                         "version directory", "RegistryError, no predictions")


class TestFeatureMismatch:
    def test_features_json_that_differs_from_the_model_is_refused(self, root, trained, spec_path,
                                                                  reliability_case):
        features = version_dir(root, trained[1]) / "features.json"
        schema = json.loads(features.read_text())
        schema["features"] = list(reversed(schema["features"]))
        features.write_text(json.dumps(schema))
        assert_score_refuses(root, spec_path, "do not match features.json")
        reliability_case("features.json lists the model's features in another order",
                         "refused: the booster's feature names differ from features.json",
                         "RegistryError, no predictions")

    def test_features_table_without_a_model_feature_fails_the_job(self, spark, root, trained,
                                                                  spec, reliability_case):
        partition = Path(Layout(str(root)).features(SCORE_DS))
        (part,) = partition.glob("*.parquet")
        pd.read_parquet(part).drop(columns=["events_30d"]).to_parquet(part, index=False)
        artifact = registry.load_model_dir(str(version_dir(root, trained[1])))
        with pytest.raises(MissingFeatureError, match="events_30d"):
            score.run(spark, str(root), spec, artifact, SCORE_DS)
        assert not predictions_written(root)
        reliability_case("features/ds=D without the model's feature events_30d",
                         "score job failed before writing: features missing: events_30d",
                         "MissingFeatureError, no predictions partition")


class TestChampionPointer:
    def test_pointer_to_a_missing_version_is_refused(self, root, spec_path, reliability_case):
        pointer = Layout(str(root)).champion(MODEL)
        write_json_atomic(pointer, {"version": "v20260101-deadbeef"})
        assert_score_refuses(root, spec_path, "v20260101-deadbeef does not exist")
        reliability_case("champion.json names version v20260101-deadbeef, which is not there",
                         "score refused: champion version does not exist",
                         "RegistryError, no predictions")

    @pytest.mark.parametrize("content", [b'{"version": "v2026', b"[]", b'{"history": []}',
                                         b'{"version": "../../etc"}', b"\xff\xfe"],
                             ids=["truncated", "list", "no-version", "traversal", "binary"])
    def test_corrupt_pointer_is_detected_not_guessed_around(self, root, trained, spec,
                                                            spec_path, content,
                                                            reliability_case):
        pointer = Path(Layout(str(root)).champion(MODEL))
        pointer.write_bytes(content)
        challenger = train_version(root, spec, RUN_DS, WEAK, rounds=3)["version"]
        assert_score_refuses(root, spec_path, "champion.json")
        with pytest.raises(registry.RegistryError, match="champion.json"):
            gate.gate(str(root), spec, challenger, decided_by="tests")
        with pytest.raises(registry.RegistryError, match="champion.json"):
            champion.promote(str(root), MODEL, challenger, "tests", "manual")
        assert pointer.read_bytes() == content
        reliability_case(f"champion.json = {content!r}", "score, gate and promote all refuse; "
                         "the pointer is left as found (no first-model promotion)",
                         "RegistryError x3, pointer bytes unchanged")


GATE_CHILD = """
import sys
from churn.registry_cli import main
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(sys.argv[1:]))
"""


def start_gate(root: Path, spec_path: Path, version: str) -> subprocess.Popen:
    """A real `churn.registry_cli gate` process, imported and waiting for a line on stdin."""
    argv = ["--root", str(root), "--spec", str(spec_path), "--by", f"proc-{version}",
            "gate", version]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO)])}
    child = subprocess.Popen([sys.executable, "-c", GATE_CHILD, *argv], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "ready"
    return child


class TestConcurrentPromotion:
    @pytest.mark.parametrize("round_", [1, 2])
    def test_two_gate_processes_switch_atomically(self, root, trained, spec, tmp_path, round_,
                                                  reliability_case):
        base = trained[1]
        # A wide tolerance lets both challengers pass, so the later switch must lose its first
        # compare-and-swap and re-decide against the earlier one.
        spec = spec.model_copy(update={"model": spec.model.model_copy(
            update={"gate_tolerance": 0.5})})
        spec_path = tmp_path / "tolerant.yaml"
        spec_path.write_text(dump_spec(spec))
        challengers = [train_version(root, spec, RUN_DS, {**STRONG, "eta": eta})["version"]
                       for eta in (0.2 + round_ / 100, 0.25 + round_ / 100)]
        children = [start_gate(root, spec_path, v) for v in challengers]
        for child in children:  # release both at once: they race for the champion
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=300) for child in children]
        assert [child.returncode for child in children] == [0, 0], outputs
        decisions = {d["version"]: d for d in (json.loads(out) for out, _ in outputs)}
        history = champion.read_champion(str(root), MODEL)["history"]
        promoted = {v for v, d in decisions.items() if d["promoted"]}
        assert history[0] == base and set(history[1:]) == promoted == set(challengers)
        for position, version in enumerate(history[1:], start=1):
            assert decisions[version]["champion_version"] == history[position - 1]
        gates = [d for d in champion.list_decisions(str(root), MODEL) if d["action"] == "gate"]
        assert sorted(d["version"] for d in gates) == sorted(challengers)
        assert not (Path(Layout(str(root)).models(MODEL)) / "champion.lock").exists()
        reliability_case("two `churn.registry_cli gate` processes released together on one "
                         "champion",
                         f"both promoted, in order {history[1:]}, the second decided against "
                         "the first (compare-and-swap under the lock)",
                         "exit codes, CAS chain, 2 decisions, no lock")
