"""Registry CLI (`python -m churn.registry_cli`): list, show, promote and gate print JSON.

Models are real XGBoost boosters trained in-process on tiny synthetic partitions (no Ray).
"""

from __future__ import annotations

import json

import pytest

from churn import champion, registry_cli
from tests.model.synthetic_frames import MODEL, RUN_DS, STRONG, train_version


class TestCli:
    def test_cli_list_and_promote(self, root, spec, spec_path, capsys):
        version = train_version(root, spec, RUN_DS, STRONG, rounds=5)["version"]
        registry_cli.main(["--root", str(root), "--spec", str(spec_path), "--by", "carol",
                           "promote", version])
        capsys.readouterr()
        registry_cli.main(["--root", str(root), "--model-name", MODEL, "list"])
        rows = json.loads(capsys.readouterr().out)
        assert [(r["version"], r["champion"]) for r in rows] == [(version, True)]
        assert champion.list_decisions(str(root), MODEL)[0]["decided_by"] == "carol"

    def test_cli_gate_and_show(self, root, spec, spec_path, capsys):
        version = train_version(root, spec, RUN_DS, STRONG, rounds=5)["version"]
        registry_cli.main(["--root", str(root), "--spec", str(spec_path), "--by", "dave",
                           "gate", version])
        decision = json.loads(capsys.readouterr().out)
        assert (decision["promoted"], decision["decided_by"]) == (True, "dave")
        registry_cli.main(["--root", str(root), "--model-name", MODEL, "show"])
        shown = json.loads(capsys.readouterr().out)
        assert shown["version"] == version
        assert shown["metrics.json"]["roc_auc"] == pytest.approx(decision["challenger_auc"])
