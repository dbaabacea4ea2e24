"""spark-submit entry point: validate raw partitions, build point-in-time features and labels.

    spark-submit --master local[2] --py-files churn.zip spark_jobs/build_features.py \\
        --root data --spec include/datasets/synthetic.yaml --ds 2024-03-01
    ... --start 2024-02-01 --end 2024-03-01      # a whole range in one Spark pass

Validates the raw partitions of the feature days, and of the other days the windows and labels
need that have no stored activity; quarantines rejected rows (`quarantine/<table>/ds=…`);
writes each feature day's activity (`activity/<table>/ds=…`: its valid events reduced per
customer and event type, its valid snapshot rows; later days read it instead of raw),
`features/ds=…` for every day, `labels/ds=…` for every day whose horizon matured within the run
(day L + horizon ≤ the last day: a run reads no raw day after it, and each label partition
belongs to the run of the day it matured on), the `runs/ds=…/ingest.json` and `features.json`
fragments and `runs/_history.json` (where each table's history starts: `churn.history`). Fails
(exit code 1, message on stderr) when a day rejects more rows than allowed, a required column
is missing, a needed day on or after the history start has neither raw partition nor stored
activity (unless `--allow-missing`), or a day's partition holds a 0-byte file, a file written
after its ready marker, or fewer rows than `ready.min_rows`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

LOG = logging.getLogger("churn.build_features")


@dataclass(frozen=True)
class JobArgs:
    """What one run computes: the storage root, the spec and the feature days."""

    root: str
    spec: str
    start: str
    end: str
    max_reject_rate: float | None = None
    allow_missing: bool = False
    master: str | None = None


def parse_args(argv: list[str] | None = None) -> JobArgs:
    """Parse the command line (`--ds D`, or `--start D1 --end D2`)."""
    from churn.cli import job_parser
    from churn.storage import validate_ds

    parser = job_parser(__doc__)
    parser.add_argument("--ds", type=validate_ds, help="the one day to build")
    parser.add_argument("--start", type=validate_ds, help="first day of a range")
    parser.add_argument("--end", type=validate_ds, help="last day of a range")
    parser.add_argument("--max-reject-rate", type=float, default=None,
                        help="override spec.validation.max_reject_rate (0..1)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="treat missing raw day partitions as empty instead of failing")
    parser.add_argument("--master", default=None, help="Spark master (default: from launcher)")
    ns = parser.parse_args(argv)
    if bool(ns.ds) == bool(ns.start or ns.end) or bool(ns.start) != bool(ns.end):
        parser.error("give either --ds, or both --start and --end")
    start, end = (ns.ds, ns.ds) if ns.ds else (ns.start, ns.end)
    return JobArgs(ns.root, ns.spec, start, end, ns.max_reject_rate, ns.allow_missing, ns.master)


def run(spark, args: JobArgs) -> dict:
    """Run the job on an existing session (tests pass the shared one).

    Args:
        spark: the SparkSession.
        args: what to compute.

    Returns:
        A summary: feature days, label days, and the counts per table and day.

    Raises:
        churn.ingest.IngestError: missing partition or column, or too many rejected rows.
    """
    from churn import history, ingest, landing
    from churn.spec import load_spec
    from churn.storage import Layout, list_partitions

    started = time.monotonic()
    spec, layout = load_spec(args.spec), Layout(args.root)
    available = {t: list_partitions(layout.area("raw", t)) for t in spec.tables}
    stored = {t: list_partitions(layout.area("activity", t)) for t in spec.tables}
    plan = ingest.plan_reads(spec, args.start, args.end, available,
                             history.first_days(layout, spec, available), stored)
    ingest.check_missing(plan, args.allow_missing)
    if plan.short_days:
        LOG.info("%s: windows reach before the history start %s (short by definition)",
                 ingest.describe_days(plan.short_days), plan.history_start)
    landing.check_landed(args.root, spec, plan.feature_days)
    LOG.info("features %s..%s, labels for %d matured day(s); reading days of raw %s, of stored "
             "activity %s", args.start, args.end, len(plan.label_days),
             {t: len(d) for t, d in plan.read_days.items()},
             {t: len(d) for t, d in plan.activity_days.items()})
    checked = {t: _validate_table(spark, layout, spec, t, plan) for t in spec.tables}
    try:
        _publish_ingest(layout, spec, plan, checked, args)
        types = _build_outputs(spark, layout, spec, plan, checked)
    finally:
        for result in checked.values():
            result.release()
    _publish_outputs(layout, plan, types, time.monotonic() - started)
    return {"feature_days": plan.feature_days, "label_days": plan.label_days,
            "counts": {t: {d: c.as_dict() for d, c in r.counts.items()}
                       for t, r in checked.items()}}


def _build_outputs(spark, layout, spec, plan, checked: dict) -> list[str]:
    """Write the feature days' activity, then features of the feature days and labels of the
    matured days, from the activity of every day they need.

    Returns:
        The event types that got their own feature columns.
    """
    from churn import features, labels

    activity = customers = None
    if spec.events:
        fresh = features.activity_rows(checked["events"].valid, spec)
        activity = _with_stored(spark, layout, "events", plan, fresh)
    if spec.customers:
        fresh = checked["customers"].valid.withColumnRenamed("_ds", "ds")
        customers = _with_stored(spark, layout, "customers", plan, fresh).withColumnRenamed(
            "ds", "_ds")
    types = features.event_types(spec, activity)
    built = features.build_features(spec, plan.feature_days, activity, customers, types)
    _write(built, plan.feature_days, layout.features, "features")
    if plan.label_days:
        labelled = labels.build_labels(spec, plan.label_days, activity, customers)
        _write(labelled, plan.label_days, layout.labels, "labels")
    return types


def _with_stored(spark, layout, table: str, plan, fresh):
    """Every day of one table the run needs: `fresh` (from the validated raw days, with a `ds`
    column), after writing its feature days to `activity/<table>/ds=…`, plus the stored
    activity of the plan's other days.

    The stored days are read into Spark's block store (an eager local checkpoint) while their
    writer locks are held: the run of one of those days (a backfill's neighbour) may swap in a
    new partition at any moment, and Spark would otherwise open the files it listed only later,
    after they were replaced.
    """
    from churn.spark import to_spark_uri
    from churn.storage import partition_locks

    _write(fresh, plan.feature_days, lambda d: layout.activity(table, d), f"activity/{table}")
    days = plan.activity_days.get(table, [])
    if not days:
        return fresh
    paths = [to_spark_uri(layout.activity(table, d)) for d in days]
    with partition_locks(layout.area("activity", table), [f"ds={d}" for d in days]):
        stored = spark.read.schema(fresh.schema).parquet(*paths).localCheckpoint(eager=True)
    return fresh.unionByName(stored)


def _validate_table(spark, layout, spec, table: str, plan):
    """Read and validate one table over the plan's days; log each target day's counts.

    Raises:
        churn.landing.NotLandedError: a delivered target day has fewer rows than the spec's
            `ready.min_rows`.
    """
    from churn import ingest, landing

    files = ingest.collect_files(layout, spec, table, plan.read_days[table])
    raw = ingest.read_raw(spark, spec, table, files)
    result = ingest.validate(raw, spec, table, plan.feature_days, ingest.ordered_files(files))
    for ds, extra in ingest.extra_columns(spec, table, files).items():
        LOG.warning("%s ds=%s: ignoring column(s) the spec does not use: %s", table, ds, extra)
        if ds in result.counts:
            result.counts[ds].extra_columns = extra
    for ds, day in sorted(result.counts.items()):
        state = "missing" if ds not in files else ("empty" if day.rows_in == 0 else "ok")
        LOG.info("%s ds=%s: %s rows in=%d out=%d rejected=%d %s", table, ds, state, day.rows_in,
                 day.rows_out, day.rows_rejected, day.reasons or "")
    landing.check_min_rows(spec, table, {ds: day.rows_in for ds, day in result.counts.items()
                                         if ds in files})
    return result


def _publish_ingest(layout, spec, plan, checked: dict, args: JobArgs) -> None:
    """Write quarantine partitions and `ingest` fragments of the target days, then enforce the
    reject limit (so a failed day still leaves its evidence behind)."""
    from pyspark.sql import functions as F

    from churn import ingest, manifest

    max_rate = (args.max_reject_rate if args.max_reject_rate is not None
                else spec.validation.max_reject_rate)
    for table, result in checked.items():
        _write(result.rejected.where(F.col("ds").isin(plan.feature_days)), plan.feature_days,
               lambda d, t=table: layout.quarantine(t, d), f"quarantine/{table}")
    for ds in plan.feature_days:
        tables = {t: (None if ds in plan.missing.get(t, []) else r.counts[ds].as_dict())
                  for t, r in checked.items()}
        over = any(r.counts[ds].over_limit(max_rate) for r in checked.values())
        payload = manifest.ingest_fragment(ds, tables, max_rate, "failed" if over else "ok")
        manifest.write_fragment(layout, ds, "ingest", payload)
    for table, result in checked.items():
        ingest.check_reject_rate(table, result.counts, max_rate)


def _write(frame, days: list[str], partition_uri, what: str) -> None:
    """Write one partition per day (atomic swap per day) and log it."""
    from churn.spark import write_day_partitions

    began = time.monotonic()
    write_day_partitions(frame, days, partition_uri)
    LOG.info("wrote %s for %d day(s) in %.1fs", what, len(days), time.monotonic() - began)


def _publish_outputs(layout, plan, types: list[str], seconds: float) -> None:
    """Write the `features` fragment of each target day: rows written, label days, timing, the
    history start, whether the day's windows are short, and the raw days treated as empty."""
    from churn import manifest
    from churn.storage import parquet_rows

    label_rows = {d: parquet_rows(layout.labels(d)) for d in plan.label_days}
    missing = {t: days for t, days in plan.missing.items() if days}
    for ds in plan.feature_days:
        rows = parquet_rows(layout.features(ds))
        LOG.info("features ds=%s: %d customers", ds, rows)
        payload = manifest.fragment("features", ds, feature_rows=rows, event_types=types,
                                    run_days=[plan.feature_days[0], plan.feature_days[-1]],
                                    label_rows=label_rows, seconds=round(seconds, 3),
                                    history_start=plan.history_start,
                                    short_window=ds in plan.short_days,
                                    missing_raw_days=missing)
        manifest.write_fragment(layout, ds, "features", payload)


def main(argv: list[str] | None = None) -> int:
    """Parse, build the session, run, stop. Returns the process exit code."""
    from churn.ingest import IngestError
    from churn.spark import build_session

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    spark = build_session("churn-build-features", master=args.master)
    try:
        run(spark, args)
    except IngestError as exc:
        LOG.error("build_features failed: %s", exc)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
