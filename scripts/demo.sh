#!/usr/bin/env bash
# `make demo`: generate ~5k customers x 120 days, build the history's features in one Spark pass,
# start a local Ray head, run the daily DAG through real Airflow (`airflow dags test`) for the
# last days (the first one trains: no champion yet; the next ones score), print a summary, stop Ray.
#
# Knobs (env): DEMO_CUSTOMERS (5000), DEMO_DAYS (120), DEMO_START (2025-01-01), DEMO_RUN_DAYS (3),
# DEMO_TRIALS (4), DEMO_ROOT (data/: its pipeline areas are wiped at start), DEMO_KEEP_DATA=1
# (reuse the data and history features of a previous demo: only models/predictions are reset). Airflow's home is the
# one `make airflow` uses (.airflow/), so the demo's runs show up in the UI afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

customers="${DEMO_CUSTOMERS:-5000}"
days="${DEMO_DAYS:-120}"
start="${DEMO_START:-2025-01-01}"
run_days="${DEMO_RUN_DAYS:-3}"
trials="${DEMO_TRIALS:-4}"
root="${DEMO_ROOT:-$REPO_ROOT/data}"
spec="$REPO_ROOT/include/datasets/synthetic.yaml"
export CHURN_DATA_ROOT="$root"
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-{\"conn_type\": \"spark\", \"host\": \"local[2]\"\}}"
export RAY_AUTH_MODE=token

day_after() { python -c 'import sys; from churn.storage import shift_ds; print(shift_ds(sys.argv[1], int(sys.argv[2])))' "$1" "$2"; }
end="$(day_after "$start" $((days - 1)))"
first_run="$(day_after "$end" $((1 - run_days)))"
history_end="$(day_after "$first_run" -1)"
began=$(date +%s)

if [[ "${DEMO_KEEP_DATA:-0}" == 1 && -d "$root/features" ]]; then
  echo "==> [1-2/6] reusing the generated data and history features in $root (DEMO_KEEP_DATA=1)"
  rm -rf "${root:?}/models" "${root:?}/predictions" "${root:?}/ray_results"
else
  echo "==> [1/6] generating $customers customers x $days days ($start .. $end) into $root"
  for area in raw oracle features labels quarantine predictions runs models ray_results; do
    rm -rf "${root:?}/$area"
  done
  mkdir -p "$root"
  python -m churn.generate --root "$root" --customers "$customers" --start "$start" --days "$days" \
    --seed 42 --spec "$spec" >/dev/null

  echo "==> [2/6] features and labels of the history ($start .. $history_end) in one Spark pass"
  python spark_jobs/build_features.py --root "$root" --spec "$spec" --start "$start" \
    --end "$history_end" --master "local[2]" 2>"$root/bulk_features.log" \
    || { tail -20 "$root/bulk_features.log"; exit 1; }
fi

echo "==> [3/6] Airflow metadata DB in $AIRFLOW_HOME"
mkdir -p "$AIRFLOW_HOME"
airflow db migrate >/dev/null

echo "==> [4/6] starting a local Ray head"
if bash scripts/ray_local.sh status >/dev/null 2>&1; then
  echo "    (a head started by make ray-up is running: using it, leaving it up)"
else
  trap 'echo "==> [6/6] stopping Ray"; bash scripts/ray_local.sh down >/dev/null 2>&1 || true' EXIT
fi
port_busy() { python -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"; }
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [[ -z "${RAY_LOCAL_DASHBOARD_PORT:-}" ]] && { port_busy 8265 || port_busy 6379; }; then
  # another Ray (not ours) holds the default ports: run the demo's head on free ones
  export RAY_LOCAL_DASHBOARD_PORT="$(free_port)" RAY_LOCAL_PORT="$(free_port)"
fi
ray_out="$(bash scripts/ray_local.sh up)"
echo "$ray_out" | sed 's/^/    /'
dashboard="$(echo "$ray_out" | grep -Eo 'https?://[0-9A-Za-z.-]+:[0-9]+' | head -1)"
export AIRFLOW_CONN_RAY_DEFAULT="${AIRFLOW_CONN_RAY_DEFAULT:-{\"conn_type\": \"http\", \"host\": \"${dashboard:-http://127.0.0.1:8265}\"\}}"

echo "==> [5/6] running churn_pipeline through Airflow for $first_run .. $end"
day="$first_run"
while [[ "$day" < "$end" || "$day" == "$end" ]]; do
  log="$AIRFLOW_HOME/demo-$day.log"
  t0=$(date +%s)
  if ! airflow dags test churn_pipeline "$day" --conf "{\"tune_trials\": $trials}" >"$log" 2>&1; then
    echo "    $day FAILED; last lines of $log:"; tail -40 "$log"; exit 1
  fi
  echo "    $day done in $(( $(date +%s) - t0 ))s (log: $log)"
  day="$(day_after "$day" 1)"
done

echo
python -m churn.demo summary --root "$root" --spec "$spec" --start "$first_run" --end "$end"
echo
echo "Demo finished in $(( $(date +%s) - began ))s. Explore these runs in the UI: make ray-up && make airflow"
