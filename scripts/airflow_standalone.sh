#!/usr/bin/env bash
# `make airflow`: `airflow standalone` (api-server, scheduler, dag-processor, triggerer) with this
# project's dags and plugins, SQLite in $AIRFLOW_HOME (default .airflow/), LocalExecutor, the UI on
# http://127.0.0.1:8080. Prints the admin password. Ctrl-C stops every process it started.
#
# Ray: start a head first (`make ray-up`); the connection defaults to its Jobs API on 127.0.0.1:8265
# with the token in ~/.ray/auth_token. Override any connection with AIRFLOW_CONN_* in the env.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

port="${AIRFLOW_PORT:-8080}"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$port"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$port/execution/"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-{\"conn_type\": \"spark\", \"host\": \"local[2]\"\}}"
ray_url="$(cat .ray-local/dashboard_url 2>/dev/null || echo http://127.0.0.1:8265)"
export AIRFLOW_CONN_RAY_DEFAULT="${AIRFLOW_CONN_RAY_DEFAULT:-{\"conn_type\": \"http\", \"host\": \"$ray_url\"\}}"
export RAY_AUTH_MODE=token
# Unpausing schedules today's run (catchup is off), which waits in its sensor for raw data that
# the demo data set does not have; allow a few runs at once so manual runs are not queued behind.
export CHURN_MAX_ACTIVE_RUNS="${CHURN_MAX_ACTIVE_RUNS:-3}"
mkdir -p "$AIRFLOW_HOME"
password_file="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"

# Own session and process group: LocalExecutor workers ignore SIGTERM, so stop the whole group.
setsid airflow standalone &
pid=$!
stop() {
  trap - INT TERM EXIT
  echo "==> stopping airflow standalone (process group $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 -- "-$pid" 2>/dev/null || return 0; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
trap stop INT TERM EXIT

for _ in $(seq 1 180); do
  [ -s "$password_file" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "airflow standalone exited early" >&2; exit 1; }
  sleep 1
done
cat <<INFO

==> Airflow UI:   http://127.0.0.1:${AIRFLOW__API__PORT}
    user:         admin
    password:     $(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$password_file" 2>/dev/null || echo "see $password_file")
    dags/plugins: $AIRFLOW__CORE__DAGS_FOLDER, $AIRFLOW__CORE__PLUGINS_FOLDER
    data root:    $CHURN_DATA_ROOT (Variable churn_data_root overrides it)
    Unpause churn_pipeline, or trigger it with "Trigger DAG w/ config" to get the params form.
    Ctrl-C stops everything.

INFO
wait "$pid"
