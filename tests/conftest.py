"""Shared fixtures: one real local SparkSession and one real local Ray head per test session
(and a Spark standalone cluster for the tests that ask for one)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = REPO_ROOT / "include" / "datasets" / "synthetic.yaml"

# Spark workers must run this venv's python (the system one lacks pandas), on loopback.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every JVM of the suite (the shared session, each spark-submit) lives for seconds on tiny data:
# the client JIT alone and a single-threaded GC start it and run its first jobs faster. Children
# inherit it; jobs outside the tests (demo, benchmarks, clusters) keep the JVM's defaults.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
for _path in (REPO_ROOT, REPO_ROOT / "plugins"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture(scope="session")
def spark():
    """A local SparkSession shared by the whole test session (start-up costs 10+ s)."""
    from churn.spark import build_session

    # 2 shuffle partitions, not the local 8: test days hold tens of rows, and each partition is
    # a task of every shuffle (a warm one-day build: 5.5 s instead of 6.3 s). The jobs under
    # spark-submit keep the default, so the row-identical checks span both.
    session = build_session("churn-tests", master="local[2]",
                            extra_conf={"spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ray_head():
    """A real local Ray head with token auth on free ports, stopped after the session."""
    from tests.support.ray_head import start_ray_head

    head = start_ray_head(num_cpus=2)
    yield head
    head.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone cluster (a master, two one-core workers) shared by the session, started
    by `scripts/spark_local.sh` only when a test asks for it."""
    from tests.support.spark_cluster import start_spark_cluster

    cluster = start_spark_cluster(tmp_path_factory.mktemp("spark-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def spec_path() -> Path:
    """The synthetic data set's spec file."""
    return SPEC_PATH


@pytest.fixture(scope="session")
def spec(spec_path):
    """The synthetic data set's spec, loaded."""
    from churn.spec import load_spec

    return load_spec(spec_path)

