"""Seconds per test module of the last `make test`, slowest first, from build/junit.xml.

    python scripts/module_times.py [build/junit.xml]

A module's time is the sum of its tests' setup, call and teardown (its shared fixtures count
once, in the test that first asked for them).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict


def module_of(classname: str) -> str:
    """`tests.e2e.test_x.TestY` -> `tests/e2e/test_x.py`."""
    parts = classname.split(".")
    modules = [i for i, part in enumerate(parts) if part.startswith("test_")]
    last = modules[-1] if modules else len(parts) - 1
    return "/".join(parts[:last + 1]) + ".py"


def main(path: str = "build/junit.xml") -> int:
    seconds: dict[str, float] = defaultdict(float)
    tests: Counter[str] = Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        module = module_of(case.get("classname", ""))
        seconds[module] += float(case.get("time", 0))
        tests[module] += 1
    print(f"{'seconds':>8} {'tests':>5}  module")
    for module, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"{spent:8.1f} {tests[module]:5d}  {module}")
    print(f"{sum(seconds.values()):8.1f} {sum(tests.values()):5d}  total")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
