#!/usr/bin/env bash
# Local Prefect UI for livemigrate: server + process worker + registered deployments (`make ui`).
#
# Why a script: the walkthrough in docs/deployments.md needs three long-running pieces
# started in order (server healthy -> pool and deployments -> worker); Ctrl-C stops them all.
# An already running server on the same address is reused and left running.
#
# Settings (environment): LIVEMIGRATE_UI_HOST (127.0.0.1), LIVEMIGRATE_UI_PORT (4200),
# VENV (.venv), LIVEMIGRATE_UI_LOGS (server log directory, default $TMPDIR/livemigrate-ui).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
HOST=${LIVEMIGRATE_UI_HOST:-127.0.0.1}
PORT=${LIVEMIGRATE_UI_PORT:-4200}
POOL=livemigrate-pool
LOGS=${LIVEMIGRATE_UI_LOGS:-${TMPDIR:-/tmp}/livemigrate-ui}

export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_API_URL="http://$HOST:$PORT/api"
mkdir -p "$LOGS"

# Job control: each background process gets its own process group with default signal
# handling (without it bash starts them with SIGINT ignored, and the Prefect worker, which
# stops itself with SIGINT, could not stop). Ctrl-C reaches this script; it stops the rest.
set -m
pids=()
stop_all() {
    trap - EXIT INT TERM
    set +m  # no "Terminated" job notices for the processes stopped here
    ((${#pids[@]})) || return 0
    echo "livemigrate ui: stopping (pids ${pids[*]})" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 20); do
        kill -0 "${pids[@]}" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM

healthy() {
    "$PY" -c 'import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)' "$PREFECT_API_URL/health"
}

if healthy; then
    echo "livemigrate ui: reusing the Prefect server at $PREFECT_API_URL" >&2
else
    echo "livemigrate ui: starting Prefect server on $HOST:$PORT (log: $LOGS/server.log)" >&2
    "$VENV/bin/prefect" server start --host "$HOST" --port "$PORT" >"$LOGS/server.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 1 120); do
        healthy && break
        if ! kill -0 "${pids[0]}" 2>/dev/null; then
            echo "livemigrate ui: the Prefect server exited; last lines of $LOGS/server.log:" >&2
            tail -n 20 "$LOGS/server.log" >&2
            exit 2
        fi
        sleep 1
    done
    healthy || { echo "livemigrate ui: server not healthy after 120 s (see $LOGS/server.log)" >&2; exit 2; }
fi

# `prefect deploy` prints advice meant for a bare install ("start a worker in a separate terminal"):
# this script starts the worker itself, so its output goes to a log and only failures are shown.
if ! "$PY" -m deployments.register --pool "$POOL" >"$LOGS/register.log" 2>&1; then
    echo "livemigrate ui: registering the deployments failed; last lines of $LOGS/register.log:" >&2
    tail -n 20 "$LOGS/register.log" >&2
    exit 2
fi
echo "livemigrate ui: deployments registered on pool $POOL: prechecks, migrate, verify, clone-worker" >&2

"$VENV/bin/prefect" worker start --pool "$POOL" --type process >"$LOGS/worker.log" 2>&1 &
pids+=("$!")

echo
echo "livemigrate ui: Prefect UI at http://$HOST:$PORT"
echo "livemigrate ui: a process worker runs the deployments' flow runs here (log: $LOGS/worker.log)"
echo "livemigrate ui: press Ctrl-C to stop the worker and the server"
wait "${pids[-1]}"
