"""Fixtures the registry, champion, gate and registry CLI tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model.synthetic_frames import DAYS, write_days


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A storage root holding features and labels of the synthetic DAYS (300 customers a day)."""
    write_days(tmp_path, DAYS, rows=300, seed=1)
    return tmp_path
