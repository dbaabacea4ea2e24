"""The registry's command line: list versions, show one, promote, roll back, run the gate.

    python -m churn.registry_cli --root ROOT (--model-name NAME | --spec SPEC) [--by WHO] \
        list | show [VERSION] | promote VERSION [--reason TEXT] | rollback | gate VERSION

Each command calls one function of `churn.registry`, `churn.champion` or `churn.gate` and
prints its result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from churn.champion import promote, read_champion, rollback
from churn.gate import gate
from churn.registry import META_FILE, METRICS_FILE, PARAMS_FILE, list_versions, read_version_json
from churn.spec import load_spec


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m churn.registry_cli",
                                     description="Inspect and switch the model registry.")
    parser.add_argument("--root", required=True, help="data root (folder or s3://...)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--model-name", help="model name")
    who.add_argument("--spec", help="dataset spec file (its model.name, gate settings)")
    parser.add_argument("--by", default=os.environ.get("USER", "cli"), help="who decides")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions, their AUC, and the champion")
    show = commands.add_parser("show", help="one version's meta and metrics (default champion)")
    show.add_argument("version", nargs="?")
    promote_cmd = commands.add_parser("promote", help="make a version champion (no gate)")
    promote_cmd.add_argument("version")
    promote_cmd.add_argument("--reason", default="manual promotion")
    commands.add_parser("rollback", help="go back to the previous champion")
    gate_cmd = commands.add_parser("gate", help="run the promotion gate (needs --spec)")
    gate_cmd.add_argument("version")
    return parser.parse_args(argv)


def _list_rows(root: str, name: str) -> list[dict]:
    pointer = read_champion(root, name)
    champion = pointer["version"] if pointer else None
    rows = []
    for version in list_versions(root, name):
        metrics = read_version_json(root, name, version, METRICS_FILE)
        rows.append({"version": version, "roc_auc": metrics.get("roc_auc"),
                     "champion": version == champion})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: list | show [VERSION] | promote VERSION | rollback | gate VERSION."""
    args = _parse_args(argv)
    spec = None
    if args.spec:
        spec = load_spec(args.spec)
    name = spec.model.name if spec else args.model_name
    if args.command == "list":
        output: Any = _list_rows(args.root, name)
    elif args.command == "show":
        version = args.version or (read_champion(args.root, name) or {}).get("version")
        if version is None:
            raise SystemExit(f"{name}: no champion; name a version")
        output = {file: read_version_json(args.root, name, version, file)
                  for file in (META_FILE, METRICS_FILE, PARAMS_FILE)}
        output["version"] = version
    elif args.command == "promote":
        output = promote(args.root, name, args.version, args.by, args.reason)
    elif args.command == "rollback":
        output = rollback(args.root, name, args.by)
    else:
        if spec is None:
            raise SystemExit("gate needs --spec (tolerance and floor come from it)")
        output = gate(args.root, spec, args.version, decided_by=args.by).to_dict()
    print(json.dumps(output, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
