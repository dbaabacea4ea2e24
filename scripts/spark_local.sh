#!/usr/bin/env bash
# A Spark standalone cluster on this machine (`make spark-up` / `make spark-down` /
# `bash scripts/spark_local.sh status`): one master and SPARK_LOCAL_WORKERS workers (default 2),
# each its own JVM started with pyspark's `spark-class`, all bound to 127.0.0.1.
#
# - master at spark://127.0.0.1:$SPARK_LOCAL_PORT (7077), its web UI and JSON status at
#   http://127.0.0.1:$SPARK_LOCAL_WEBUI_PORT/json/ (8090: Airflow's API server has 8080);
# - each worker offers SPARK_LOCAL_WORKER_CORES cores (1) and SPARK_LOCAL_WORKER_MEMORY (2g);
# - workers run without the project on PYTHONPATH, so executors see `churn` only through
#   `--py-files`, as on a real cluster; their python is the job's `spark.pyspark.python`;
# - a client config dir for spark-submit (export SPARK_CONF_DIR=.spark-local/conf): its
#   spark-defaults.conf sizes shuffles to the cluster (2 partitions per core, not Spark's 200,
#   which on two one-core workers costs seconds per stage for a few MB);
# - idempotent: `up` twice leaves one cluster; state (process groups, URLs, logs, work dirs)
#   lives in .spark-local/ (SPARK_LOCAL_STATE_DIR overrides, so tests run their own);
# - `down` stops only what `up` started: SIGTERM to each process group, SIGKILL after a grace.
set -euo pipefail

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
STATE_DIR="${SPARK_LOCAL_STATE_DIR:-$REPO_ROOT/.spark-local}"
SPARK_CLASS="${SPARK_CLASS:-$REPO_ROOT/.venv/bin/spark-class}"
MASTER_PORT="${SPARK_LOCAL_PORT:-7077}"
WEBUI_PORT="${SPARK_LOCAL_WEBUI_PORT:-8090}"
WORKERS="${SPARK_LOCAL_WORKERS:-2}"
WORKER_CORES="${SPARK_LOCAL_WORKER_CORES:-1}"
WORKER_MEMORY="${SPARK_LOCAL_WORKER_MEMORY:-2g}"
READY_TIMEOUT_S="${SPARK_LOCAL_READY_TIMEOUT_S:-120}"
STOP_GRACE_S=20
MASTER_URL="spark://127.0.0.1:$MASTER_PORT"
CLIENT_CONF_DIR="$STATE_DIR/conf"
STATUS_URL="http://127.0.0.1:$WEBUI_PORT/json/"

# The process groups `up` started that are still alive, one per line.
running_pgids() {
  local file pgid
  for file in "$STATE_DIR"/*.pid; do
    [[ -f "$file" ]] || continue
    pgid="$(cat "$file")"
    if [[ -n "$pgid" ]] && kill -0 -- "-$pgid" 2>/dev/null; then
      echo "$pgid"
    fi
  done
}

# Workers the master lists as ALIVE (0 when the master does not answer).
alive_workers() {
  local status
  status="$(curl -s --max-time 3 "$STATUS_URL" 2>/dev/null || true)"
  "$REPO_ROOT/.venv/bin/python" -c '
import json, sys
try:
    print(sum(w["state"] == "ALIVE" for w in json.loads(sys.argv[1])["workers"]))
except ValueError:
    print(0)' "$status"
}

# Start one daemon (`spark-class <class> <args>`) in its own process group; records its pgid.
start_daemon() {
  local name="$1"
  shift
  env -u PYTHONPATH SPARK_LOCAL_IP=127.0.0.1 SPARK_LOG_DIR="$STATE_DIR" \
    setsid "$SPARK_CLASS" "$@" >"$STATE_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/$name.pid"
}

wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT_S))
  while (( SECONDS < deadline )); do
    if (( $(running_pgids | wc -l) < WORKERS + 1 )); then
      echo "a Spark daemon exited early; logs in $STATE_DIR:" >&2
      tail -n 20 "$STATE_DIR"/*.log >&2
      return 1
    fi
    (( $(alive_workers) >= WORKERS )) && return 0
    sleep 1
  done
  echo "$WORKERS workers not ALIVE at $STATUS_URL after ${READY_TIMEOUT_S}s (logs: $STATE_DIR)" >&2
  return 1
}

# spark-submit reads spark-defaults.conf from SPARK_CONF_DIR: the cluster's client settings.
write_client_conf() {
  mkdir -p "$CLIENT_CONF_DIR"
  cat >"$CLIENT_CONF_DIR/spark-defaults.conf" <<EOF
spark.master                    $MASTER_URL
spark.sql.shuffle.partitions    $((WORKERS * WORKER_CORES * 2))
EOF
}

print_usage_hint() {
  cat <<EOF
Spark standalone cluster: master $MASTER_URL, $WORKERS workers x $WORKER_CORES core(s),
$WORKER_MEMORY each; status at $STATUS_URL
Point Airflow's spark-submit tasks at it (client deploy mode, churn shipped with --py-files):
  export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "spark://127.0.0.1", "port": $MASTER_PORT, "extra": {"deploy-mode": "client"}}'
  export SPARK_CONF_DIR=$CLIENT_CONF_DIR
Stop it with: make spark-down
EOF
}

cmd_up() {
  if [[ -n "$(running_pgids)" ]]; then
    echo "Spark cluster already running (state in $STATE_DIR)."
    print_usage_hint
    return 0
  fi
  if curl -s -o /dev/null --max-time 3 "$STATUS_URL"; then
    echo "Something already answers on $STATUS_URL: set SPARK_LOCAL_WEBUI_PORT and" \
         "SPARK_LOCAL_PORT to free ports, or stop it." >&2
    return 1
  fi
  mkdir -p "$STATE_DIR"
  rm -f "$STATE_DIR"/*.pid
  start_daemon master org.apache.spark.deploy.master.Master \
    --host 127.0.0.1 --port "$MASTER_PORT" --webui-port "$WEBUI_PORT"
  local i
  for ((i = 1; i <= WORKERS; i++)); do
    mkdir -p "$STATE_DIR/work-$i"
    # web UI port 0: any free port, so workers (and other clusters) never collide
    start_daemon "worker-$i" org.apache.spark.deploy.worker.Worker \
      --host 127.0.0.1 --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" --webui-port 0 \
      --work-dir "$STATE_DIR/work-$i" "$MASTER_URL"
  done
  write_client_conf
  echo "$MASTER_URL" >"$STATE_DIR/master_url"
  echo "$STATUS_URL" >"$STATE_DIR/status_url"
  echo "Starting Spark master and $WORKERS workers (logs in $STATE_DIR) ..."
  if ! wait_ready; then
    cmd_down
    return 1
  fi
  print_usage_hint
}

cmd_down() {
  local pgids pgid
  pgids="$(running_pgids)"
  if [[ -z "$pgids" ]]; then
    echo "No Spark cluster started by this script is running."
    rm -f "$STATE_DIR"/*.pid
    return 0
  fi
  echo "Stopping Spark cluster (process groups $(echo $pgids)) ..."
  for pgid in $pgids; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
  local deadline=$((SECONDS + STOP_GRACE_S))
  while (( SECONDS < deadline )) && [[ -n "$(running_pgids)" ]]; do
    sleep 0.5
  done
  for pgid in $(running_pgids); do
    echo "Still alive after ${STOP_GRACE_S}s: SIGKILL to process group $pgid."
    kill -KILL -- "-$pgid" 2>/dev/null || true
  done
  rm -f "$STATE_DIR"/*.pid
  echo "Spark cluster stopped."
}

cmd_status() {
  [[ -n "$(running_pgids)" ]] || { echo "Spark cluster: not running."; return 1; }
  echo "Spark cluster: master $MASTER_URL, $(alive_workers) workers ALIVE ($STATUS_URL)."
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
