"""Tiny Ray job entrypoint for the operator tests: prints numbered ticks, then its result.

Contract under test: the LAST log line is one JSON object (the job's result).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Print `--ticks` lines `--interval` seconds apart, then the result JSON or fail.

    Args:
        argv: command line (defaults to sys.argv[1:]).

    Returns:
        The process exit code (`--exit-code`).
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--model-version", default="v-test")
    parser.add_argument("--import-churn", action="store_true")
    parser.add_argument("--echo-env", default=None, help="put this env var's value in the result")
    parser.add_argument("--echo-arg", action="append", default=[],
                        help="put this argument, as received, in the result (repeatable)")
    args = parser.parse_args(argv)
    for tick in range(args.ticks):
        print(f"tick {tick}", flush=True)
        time.sleep(args.interval)
    if args.exit_code:
        print(f"boom: failing with exit code {args.exit_code}", file=sys.stderr, flush=True)
        return args.exit_code
    result: dict[str, object] = {"model_version": args.model_version, "ticks": args.ticks}
    if args.import_churn:
        import churn

        result["churn_file"] = churn.__file__
    if args.echo_env:
        result[args.echo_env] = os.environ.get(args.echo_env)
    if args.echo_arg:
        result["echoed"] = args.echo_arg
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
