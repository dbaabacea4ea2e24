"""The demo's summary (`churn.demo`) of days a run published, on real files under tmp_path."""

from __future__ import annotations

from pathlib import Path

from churn import demo, pipeline
from churn.storage import Layout, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC = str(REPO_ROOT / "include" / "datasets" / "synthetic.yaml")
DS = "2025-03-17"


class TestDemoSummary:
    def test_summary_of_a_scored_day(self, tmp_path):
        import pandas as pd

        root, layout = str(tmp_path), Layout(str(tmp_path))
        counts = {"rows_in": 3, "rows_out": 3, "rows_rejected": 0}
        write_json_atomic(layout.run_fragment(DS, "ingest"), {"tables": {"customers": counts}})
        pipeline._write_fragment(root, DS, "decide", {"train": False, "reason": "not due"})
        pipeline._write_fragment(root, DS, "score", {"skipped": False, "model_version": "v1"})
        Path(layout.predictions(DS)).mkdir(parents=True)
        pd.DataFrame({"customer_id": ["c1", "c2", "c3"], "churn_probability": [0.2, 0.9, 0.5],
                      "model_version": "v1", "ds": DS}).to_parquet(
            f"{layout.predictions(DS)}/part-0.parquet")
        pipeline.publish_manifest(root, DS, run={}, repo_root=str(REPO_ROOT))

        summary = demo.demo_summary(root, SPEC, ["2025-03-16", DS])

        assert [d["published"] for d in summary["days"]] == [False, True]
        assert summary["days"][1]["prediction_rows"] == 3
        assert [r["customer_id"] for r in summary["top_at_risk"]] == ["c2", "c3", "c1"]
        text = demo.format_summary(summary)
        assert f"{DS}  customers in=3 out=3 rejected=0 | no training | scored 3 rows with v1" in text
        assert "Champion: none yet" in text
        assert f"Top 3 at-risk customers on {DS}:" in text


class TestMain:
    def test_json_summary_of_a_day_without_a_manifest(self, tmp_path, capsys):
        import json

        assert demo.main(["summary", "--root", str(tmp_path), "--spec", SPEC, "--start", DS,
                          "--end", DS, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["days"] == [{"ds": DS, "published": False}]
        assert (summary["champion"], summary["top_at_risk"]) == (None, [])
