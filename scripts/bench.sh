#!/usr/bin/env bash
# Run every bench/bench_*.py in turn (python bench/X.py $BENCH_ARGS), past failures.
# Exits non-zero when any benchmark failed.  Example: BENCH_ARGS=--quick scripts/bench.sh
set -uo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$REPO_ROOT/scripts/env.sh"
cd "$REPO_ROOT" || exit 2

failed=()
shopt -s nullglob
for bench in bench/bench_*.py; do
    echo "=== $bench ${BENCH_ARGS:-}"
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of words on purpose
    if ! python "$bench" ${BENCH_ARGS:-}; then
        failed+=("$bench")
        echo "!!! $bench failed" >&2
    fi
done

if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all benchmarks passed"
