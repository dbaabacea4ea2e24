"""The demo's summary of a range of days: what `make demo` prints once the runs are done.

    python -m churn.demo summary --root R --spec S --start D1 --end D2 [--json]

Per day the manifest's rows, training and gate; the champion's validation AUC next to the oracle
AUC (the generator's true churn probabilities: the best any model can expect on those days); the
top at-risk customers of the last scored day; the output paths. Local only: it reads the
generator's oracle, so `churn.packaging` does not ship it to Spark or Ray.
"""

from __future__ import annotations


def _read_partition(uri: str, columns: list[str] | None = None):
    """One partition's Parquet files as a pandas frame (empty frame when absent)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from churn.storage import exists, filesystem

    if not exists(uri):
        return pd.DataFrame(columns=columns or [])
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns).to_pandas()


def oracle_auc(root: str, id_column: str, days: list[str]) -> float | None:
    """AUC of the generator's true churn probabilities against the matured labels of `days`:
    the best AUC any model can expect on those days (None when undefined)."""
    import pandas as pd

    from churn.metrics import roc_auc
    from churn.storage import Layout

    layout = Layout(root)
    frames = []
    for day in days:
        labels = _read_partition(layout.labels(day), [id_column, "label"])
        oracle = _read_partition(layout.oracle(day), [id_column, "churn_probability"])
        frames.append(labels.merge(oracle, on=id_column, how="inner"))
    joined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    try:
        return roc_auc(joined["label"].to_numpy(), joined["churn_probability"].to_numpy())
    except (KeyError, ValueError):
        return None


def champion_summary(root: str, spec_path: str) -> dict | None:
    """The champion's version, validation AUC, the oracle AUC on its validation days, report path."""
    from churn.champion import read_champion
    from churn.registry import META_FILE, METRICS_FILE, read_version_json
    from churn.spec import load_spec
    from churn.storage import Layout

    spec = load_spec(spec_path)
    pointer = read_champion(root, spec.model.name)
    if pointer is None:
        return None
    version = pointer["version"]
    metrics = read_version_json(root, spec.model.name, version, METRICS_FILE)
    window = read_version_json(root, spec.model.name, version, META_FILE).get("window", {})
    validation_days = list(window.get("validation_days") or [])
    return {"version": version, "roc_auc": metrics.get("roc_auc"),
            "oracle_auc": oracle_auc(root, spec.id_column, validation_days),
            "validation_days": validation_days,
            "report": f"{Layout(root).model_version(spec.model.name, version)}/report.html"}


def day_summary(root: str, ds: str) -> dict:
    """One day as its manifest tells it: rows per table, predictions, training and gate."""
    from churn.storage import Layout, exists, read_json

    uri = Layout(root).manifest(ds)
    if not exists(uri):
        return {"ds": ds, "published": False}
    manifest = read_json(uri)
    gate_step = manifest.get("gate") or {}
    return {"ds": ds, "published": True, "tables": manifest.get("tables", {}),
            "trained": manifest.get("trained"), "promoted": gate_step.get("promoted"),
            "gate_reason": gate_step.get("reason"), "scored": manifest.get("scored"),
            "model_version": manifest.get("model_version"),
            "prediction_rows": (manifest.get("rows") or {}).get("predictions")}


def top_at_risk(root: str, ds: str, count: int = 10) -> list[dict]:
    """The `count` customers with the highest churn probability in ds's predictions."""
    from churn.storage import Layout

    frame = _read_partition(Layout(root).predictions(ds), ["customer_id", "churn_probability"])
    top = frame.sort_values(["churn_probability", "customer_id"], ascending=[False, True])
    return top.head(count).to_dict("records")


def demo_summary(root: str, spec_path: str, days: list[str]) -> dict:
    """Everything the demo prints: per-day rows, champion vs oracle, top customers, paths."""
    from churn.storage import Layout

    layout = Layout(root)
    scored = [d for d in days if day_summary(root, d).get("scored")]
    return {"root": layout.root, "days": [day_summary(root, d) for d in days],
            "champion": champion_summary(root, spec_path),
            "top_at_risk": top_at_risk(root, scored[-1]) if scored else [],
            "top_at_risk_ds": scored[-1] if scored else None,
            "paths": {area: layout.area(area) for area in
                      ("features", "labels", "predictions", "quarantine", "runs", "models")}}


def format_summary(summary: dict) -> str:
    """The demo summary as the text block `make demo` prints."""
    lines = [f"Data root: {summary['root']}", "", "Days processed:"]
    for day in summary["days"]:
        if not day["published"]:
            lines.append(f"  {day['ds']}  (no manifest: the run did not publish)")
            continue
        rows = ", ".join(f"{table} in={c.get('rows_in')} out={c.get('rows_out')} "
                         f"rejected={c.get('rows_rejected')}"
                         for table, c in sorted(day["tables"].items()) if isinstance(c, dict))
        train = ("trained, " + ("promoted" if day["promoted"] else "kept champion")
                 if day["trained"] else "no training")
        score = (f"scored {day['prediction_rows']} rows with {day['model_version']}"
                 if day["scored"] else "not scored (no champion)")
        lines.append(f"  {day['ds']}  {rows} | {train} | {score}")
    champion = summary["champion"]
    lines.append("")
    if champion is None:
        lines.append("Champion: none yet")
    else:
        lines += [f"Champion: {champion['version']}  validation AUC {_fmt(champion['roc_auc'])}"
                  f"  (oracle AUC on the same days {_fmt(champion['oracle_auc'])})",
                  f"Model report: {champion['report']}"]
    if summary["top_at_risk"]:
        lines += ["", f"Top {len(summary['top_at_risk'])} at-risk customers on "
                      f"{summary['top_at_risk_ds']}:"]
        lines += [f"  {row['customer_id']:>12}  {row['churn_probability']:.3f}"
                  for row in summary["top_at_risk"]]
    lines += ["", "Outputs (Parquet, Hive partitions ds=YYYY-MM-DD):"]
    lines += [f"  {area:12} {path}" for area, path in summary["paths"].items()]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    """`python -m churn.demo summary --root R --spec S --start D1 --end D2`."""
    import argparse
    import json

    from churn.storage import ds_range

    parser = argparse.ArgumentParser(prog="python -m churn.demo")
    parser.add_argument("command", choices=["summary"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    summary = demo_summary(args.root, args.spec, ds_range(args.start, args.end))
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
