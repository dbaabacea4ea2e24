"""One raw day under test: DAY of a tiny generated data set, hand-edited, then built by the job.

Shared by the bad-input and real-world-file cases: the day, its lookback, the job call that marks
the (edited) partitions complete first, and the check of a build that must fail.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from churn.generate import generate
from churn.storage import Layout

from spark_jobs.build_features import JobArgs, run
from tests.support.small_data import assert_failed, seed_partition

START, DAYS, DAY = "2024-01-01", 4, "2024-01-03"
PREVIOUS_DAY, NEXT_DAY = "2024-01-02", "2024-01-04"
LENIENT = 0.5  # reject-rate limit of the cases that quarantine rows on purpose (the spec's: 1%)


def generate_bases(tmp_path_factory, specs: dict[str, str]) -> dict[str, Path]:
    """Clean data sets (50 customers, START + DAYS), one per raw format: `csv`, `parquet`."""
    bases = {}
    for fmt in ("csv", "parquet"):
        bases[fmt] = tmp_path_factory.mktemp(f"base_{fmt}")
        generate(str(bases[fmt]), customers=50, start=START, days=DAYS, seed=21, spec=specs[fmt])
    return bases


def copy_world(base: Path, folder: Path) -> Path:
    """A private copy of a clean generated data set, as `folder/data`."""
    shutil.copytree(base, folder / "data")
    return folder / "data"


def raw_file(root: Path, table: str, ds: str = DAY) -> Path:
    """The one generated data file of a raw partition (its `_SUCCESS` marker aside)."""
    (found,) = sorted(p for p in Path(Layout(str(root)).raw(table, ds)).iterdir()
                      if not p.name.startswith("_"))
    return found


def build(spark, root: Path, spec: str, max_reject_rate: float | None = LENIENT, **kw) -> dict:
    """The producer's last step, then the job: mark DAY's raw partitions complete after the
    edits (where they exist) and run build_features for DAY on the shared session."""
    for table in ("events", "customers"):
        partition = Path(Layout(str(root)).raw(table, DAY))
        if partition.is_dir():
            (partition / "_SUCCESS").touch()
    return run(spark, JobArgs(root=str(root), spec=spec, start=DAY, end=DAY,
                              max_reject_rate=max_reject_rate, **kw))


def quarantine(root: Path, table: str) -> pd.DataFrame:
    """DAY's quarantine partition of a table."""
    return pd.read_parquet(Layout(str(root)).quarantine(table, DAY))


def seed_features(root: Path, clean_root: Path) -> dict[str, bytes]:
    """Put the clean run's features partition of DAY in place, for a failing job to leave alone."""
    return seed_partition(Layout(str(clean_root)).features(DAY), Layout(str(root)).features(DAY))


def expect_failure(error: type[Exception], job: Callable[[], object], root: Path,
                   *names: str, seeded: dict[str, bytes]) -> str:
    """`job()` raises `error`, whose message names every one of `names`, and DAY's seeded
    features partition is left byte for byte (`assert_failed`). Returns the message."""
    with pytest.raises(error) as failure:
        job()
    return assert_failed(failure.value, root, DAY, *names, seeded=seeded)
