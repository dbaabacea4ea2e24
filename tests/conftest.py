"""Shared fixtures: one real local SparkSession and one real local Ray head per test session."""

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
for _path in (REPO_ROOT, REPO_ROOT / "plugins"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture(scope="session")
def spark():
    """A local SparkSession shared by the whole test session (start-up costs 10+ s)."""
    from churn.spark import build_session

    session = build_session("churn-tests", master="local[2]")
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
def spec_path() -> Path:
    """The synthetic data set's spec file."""
    return SPEC_PATH


@pytest.fixture(scope="session")
def spec(spec_path):
    """The synthetic data set's spec, loaded."""
    from churn.spec import load_spec

    return load_spec(spec_path)


# Modules whose shared worlds take minutes: they start first, each on its own xdist worker, so
# the short modules fill the other worker around them (see `make test`).
LONGEST_FIRST = ("tests/e2e/", "tests/reliability/test_backfill_recovery.py")


def module_group(nodeid: str) -> str:
    """The xdist work unit of a test: its module (module fixtures are built once, on one
    worker), except that the e2e modules form one unit: they share a session world, in order."""
    path = nodeid.split("::", 1)[0]
    return "tests/e2e/" if path.startswith("tests/e2e/") else path


def pytest_collection_modifyitems(config, items) -> None:
    """Longest groups first (stable otherwise): the order xdist hands the groups out in."""
    def rank(item) -> int:
        group = module_group(item.nodeid)
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if group.startswith(prefix)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n 2 --dist loadfile`, with the e2e modules as one unit (see `module_group`). xdist's
    own `xdist_group` marks do not take effect under pytest 9, hence a scheduler of our own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return module_group(nodeid)

    return ModuleGroupScheduling(config, log)
