"""Ray job entrypoint for fault tests: ticks until a release file appears, then prints its result.

The job stays RUNNING for as long as a test needs to inject a fault, and ends at once when the
test creates the release file (or fails after `--max-seconds`, so that nothing runs forever).
`--marker` only has to appear on the command line: tests find the job's process by it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Print a tick every `--interval` s until `--release` exists, then the result JSON.

    Args:
        argv: command line (defaults to sys.argv[1:]).

    Returns:
        0 once released, 1 when `--max-seconds` passed first.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--release", type=Path, required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    give_up_at = time.monotonic() + args.max_seconds
    ticks = 0
    while not args.release.exists():
        if time.monotonic() > give_up_at:
            print(f"not released within {args.max_seconds}s", file=sys.stderr, flush=True)
            return 1
        print(f"tick {ticks}", flush=True)
        ticks += 1
        time.sleep(args.interval)
    print(json.dumps({"marker": args.marker, "ticks": ticks}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
