"""The end-to-end world: tiny generated data, bulk features, a temp Airflow home, a Ray head.

One world per test session (module tests share it in order: `airflow dags test` days first, then
the real scheduler on later days), so data is generated and Airflow's DB migrated once.
"""

from __future__ import annotations

import pytest

from tests.support.airflow_world import World, build_world

START = "2025-03-05"  # data: START .. START + DAYS - 1
DAYS = 19
CUSTOMERS = 500
BULK_END = "2025-03-15"  # features/labels before the first DAG day, in one Spark pass
MIN_LABEL_DAYS = 5
TRAIN_EVERY_DAYS = 7  # cadence days (days since epoch % 7 == 0) in range: 2025-03-13, 2025-03-20


@pytest.fixture(scope="session")
def e2e_world(tmp_path_factory, ray_head, spark) -> World:
    """Generated raw data, features/labels of the days before the DAG runs, a migrated DB."""
    return build_world(tmp_path_factory.mktemp("e2e"), ray_head, customers=CUSTOMERS, start=START,
                       days=DAYS, bulk_end=BULK_END, spark=spark,
                       CHURN_MIN_LABEL_DAYS=str(MIN_LABEL_DAYS),
                       CHURN_TRAIN_EVERY_DAYS=str(TRAIN_EVERY_DAYS))
