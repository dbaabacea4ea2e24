"""Measuring helpers the benchmarks share: wall time of a call, peak RSS of this process tree.

The benchmarks run as scripts (`python bench/bench_x.py`), so they import this as `_common`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def write_results(path: Path, results: dict) -> None:
    """Write a benchmark's results as JSON (creating bench/results/) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


def tree_rss() -> tuple[int, int]:
    """RSS in bytes of this process alone, and of it with all its descendants.

    A child that exits while it is being read is left out.
    """
    import psutil

    me = psutil.Process()
    own = me.memory_info().rss
    total = own
    for proc in me.children(recursive=True):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return own, total


class PeakRss:
    """Samples `tree_rss` every `interval` seconds while in use; keeps the peaks (bytes).

    `peak` is this process and its descendants (python driver, JVM, Python workers),
    `peak_self` this python process alone.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.peak = 0
        self.peak_self = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            own, total = tree_rss()
            self.peak, self.peak_self = max(self.peak, total), max(self.peak_self, own)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
