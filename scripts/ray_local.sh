#!/usr/bin/env bash
# A local Ray head for people (`make ray-up` / `make ray-down` / `bash scripts/ray_local.sh status`).
#
# - dashboard / Jobs API on 127.0.0.1 only, CPUs = this machine's cores (RAY_LOCAL_CPUS overrides);
# - token auth on (Ray's default for `ray start --head`); the token lives in ~/.ray/auth_token and
#   RayJobHook reads it from there when the connection has no password;
# - idempotent: `up` twice leaves one head; state (pid = process group, URL, temp dir, log) is kept
#   in .ray-local/ at the repo root;
# - `down` stops only the head `up` started: SIGTERM to its leader, then SIGKILL to its process
#   group if anything outlives the grace period. Never `ray stop`: it would kill every Ray on the
#   machine, test heads included.
set -euo pipefail

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
STATE_DIR="${RAY_LOCAL_STATE_DIR:-$REPO_ROOT/.ray-local}"
PID_FILE="$STATE_DIR/head.pid"
URL_FILE="$STATE_DIR/dashboard_url"
HEAD_LOG="$STATE_DIR/head.log"
RAY_BIN="${RAY_BIN:-$REPO_ROOT/.venv/bin/ray}"
GCS_PORT="${RAY_LOCAL_PORT:-6379}"
DASHBOARD_PORT="${RAY_LOCAL_DASHBOARD_PORT:-8265}"
NUM_CPUS="${RAY_LOCAL_CPUS:-$(nproc)}"
TOKEN_FILE="$HOME/.ray/auth_token"
READY_TIMEOUT_S="${RAY_LOCAL_READY_TIMEOUT_S:-120}"
STOP_GRACE_S=45

# The process group id of our head, if it is still alive (empty otherwise).
running_pgid() {
  [[ -f "$PID_FILE" ]] || return 0
  local pgid
  pgid="$(cat "$PID_FILE")"
  if [[ -n "$pgid" ]] && kill -0 -- "-$pgid" 2>/dev/null; then
    echo "$pgid"
  fi
}

# A TCP port nobody listens on right now.
free_port() {
  "$REPO_ROOT/.venv/bin/python" -c \
    'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# HTTP status of the Jobs API's job list (000 when unreachable).
jobs_api_status() {
  local url="$1" auth=()
  [[ -s "$TOKEN_FILE" ]] && auth=(-H "Authorization: Bearer $(cat "$TOKEN_FILE")")
  curl -s -o /dev/null -w '%{http_code}' --max-time 3 "${auth[@]}" "$url/api/jobs/" || true
}

print_usage_hint() {
  local url="$1" host port
  host="${url#http://}"; port="${host##*:}"; host="${host%%:*}"
  cat <<EOF
Ray head: dashboard and Jobs API at $url (token auth; token in $TOKEN_FILE)
Point Airflow at it (RayJobHook reads the token from that file when the password is empty):
  export AIRFLOW_CONN_RAY_DEFAULT='{"conn_type": "http", "host": "$host", "port": $port}'
or put the token in the connection's password:
  export AIRFLOW_CONN_RAY_DEFAULT="{\"conn_type\": \"http\", \"host\": \"$host\", \"port\": $port, \"password\": \"\$(cat $TOKEN_FILE)\"}"
Stop it with: make ray-down
EOF
}

wait_ready() {
  local url="$1" pgid="$2" deadline=$((SECONDS + READY_TIMEOUT_S))
  while (( SECONDS < deadline )); do
    # the pid, not the group: setsid may not have made the group yet
    if ! kill -0 "$pgid" 2>/dev/null; then
      echo "ray head exited early; last lines of $HEAD_LOG:" >&2
      tail -n 30 "$HEAD_LOG" >&2
      return 1
    fi
    [[ "$(jobs_api_status "$url")" == "200" ]] && return 0
    sleep 1
  done
  echo "Jobs API at $url not ready after ${READY_TIMEOUT_S}s (see $HEAD_LOG)" >&2
  return 1
}

cmd_up() {
  local pgid url
  pgid="$(running_pgid)"
  if [[ -n "$pgid" ]]; then
    url="$(cat "$URL_FILE")"
    echo "Ray head already running (process group $pgid)."
    print_usage_hint "$url"
    return 0
  fi
  url="http://127.0.0.1:$DASHBOARD_PORT"
  if [[ "$(jobs_api_status "$url")" != "000" ]]; then
    echo "Something else already answers on $url (another Ray head?). Set RAY_LOCAL_DASHBOARD_PORT" \
         "and RAY_LOCAL_PORT to free ports, or stop it." >&2
    return 1
  fi
  mkdir -p "$STATE_DIR"
  RAY_AUTH_MODE=token "$RAY_BIN" get-auth-token --generate >/dev/null 2>&1 || true
  # The session temp dir must stay short: Ray puts unix sockets in it.
  local temp_dir="/tmp/ray-local-$(id -u)-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)"
  # Agent and metrics ports default to fixed numbers; free ones let other heads coexist.
  local side_ports=() name
  for name in dashboard-agent-listen-port dashboard-agent-grpc-port runtime-env-agent-port \
              metrics-export-port ray-client-server-port; do
    side_ports+=("--$name=$(free_port)")
  done
  RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 setsid "$RAY_BIN" start --head --block \
    --port="$GCS_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --node-ip-address=127.0.0.1 --num-cpus="$NUM_CPUS" --temp-dir="$temp_dir" \
    --disable-usage-stats "${side_ports[@]}" >"$HEAD_LOG" 2>&1 < /dev/null &
  pgid=$!
  echo "$pgid" >"$PID_FILE"
  echo "$url" >"$URL_FILE"
  echo "$temp_dir" >"$STATE_DIR/temp_dir"
  echo "Starting Ray head (process group $pgid, $NUM_CPUS CPUs, log $HEAD_LOG) ..."
  if ! wait_ready "$url" "$pgid"; then
    cmd_down
    return 1
  fi
  print_usage_hint "$url"
}

cmd_down() {
  local pgid
  pgid="$(running_pgid)"
  if [[ -z "$pgid" ]]; then
    echo "No Ray head started by this script is running."
    rm -f "$PID_FILE"
    return 0
  fi
  echo "Stopping Ray head (process group $pgid) ..."
  # SIGTERM to `ray start` alone lets it drain and stop its children in order (~10 s);
  # SIGTERM to the whole group makes them die unordered and the leader hang.
  kill -TERM "$pgid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_GRACE_S))
  while (( SECONDS < deadline )) && kill -0 -- "-$pgid" 2>/dev/null; do
    sleep 0.5
  done
  if kill -0 -- "-$pgid" 2>/dev/null; then
    echo "Still alive after ${STOP_GRACE_S}s: SIGKILL to process group $pgid."
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  echo "Ray head stopped."
}

cmd_status() {
  local pgid url
  pgid="$(running_pgid)"
  [[ -n "$pgid" ]] || { echo "Ray head: not running."; return 1; }
  url="$(cat "$URL_FILE")"
  echo "Ray head: running (process group $pgid), Jobs API at $url answers HTTP $(jobs_api_status "$url")."
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
