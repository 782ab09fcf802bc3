#!/usr/bin/env bash
# bench/monitor_cost.sh — what the monitor thread itself costs at the default sampling interval
# (MONITORING_METRICS_INTERVAL=5000): the monitor thread's CPU time (se.sum_exec_runtime of
# /proc/<pid>/task/<tid>/sched, to the ns: the stat file's 10 ms ticks are too coarse for it)
# over a window with the server idle, then over the same window under load from the bundled
# loadgen, in one run, beside the whole process's CPU. Prints a Markdown table for
# bench/RESULTS.md.
#
# Usage: flock /work/bench.lock bench/monitor_cost.sh   (any lock path; it keeps benches apart)
# Environment (all optional):
#   PORT=3000         server port (below 32768)
#   WINDOW=60         seconds measured per phase
#   USERS=256         loadgen virtual users during the load phase (GET /health, keep-alive)
#   COINBIT / LOADGEN binaries (default: release builds made here)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

PORT=${PORT:-3000}
WINDOW=${WINDOW:-60}
USERS=${USERS:-256}
COINBIT=${COINBIT:-target/release/coinbit}
LOADGEN=${LOADGEN:-target/release/loadgen}
if [ "$COINBIT" = target/release/coinbit ] || [ "$LOADGEN" = target/release/loadgen ]; then
    cargo build --release -p coinbit -p loadgen
fi
log=$(mktemp)
"$COINBIT" --port "$PORT" --bind-address 127.0.0.1 >"$log" 2>&1 &
server=$!
stop() { kill -INT "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; rm -f "$log"; }
trap stop EXIT
wait_for_listening "$log" "$server"
status() { curl -fsS "http://127.0.0.1:$PORT/api/enterprise/cluster/status"; }
monitor_tid=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["monitor"]["tid"])')
interval=$(curl -fsS "http://127.0.0.1:$PORT/api/enterprise/metrics" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["monitoring"]["interval_ms"])')
tck=$(getconf CLK_TCK)

# utime + stime (clock ticks) of a /proc stat file: the fields after the command name.
ticks() { sed 's/.*) //' "$1" | awk '{ print $12 + $13 }'; }
# CPU time of the monitor thread in ms, to the nanosecond.
runtime_ms() { awk '/se.sum_exec_runtime/ { print $3 }' "/proc/$server/task/$monitor_tid/sched"; }
measure() { # phase name, then the command that runs during the window (or "sleep")
    local name=$1; shift
    local m0 p0 m1 p1 t0 t1
    m0=$(runtime_ms); p0=$(ticks "/proc/$server/stat"); t0=$(date +%s.%N)
    "$@"
    m1=$(runtime_ms); p1=$(ticks "/proc/$server/stat"); t1=$(date +%s.%N)
    awk -v n="$name" -v m0="$m0" -v m1="$m1" -v p=$((p1 - p0)) -v t0="$t0" -v t1="$t1" -v tck="$tck" 'BEGIN {
        s = t1 - t0; m = m1 - m0; pm = p * 1000 / tck
        printf "| %s | %.1f | %.2f | %.4f %% | %.1f %% | %s |\n", n, s, m, 100 * m / 1000 / s,
            100 * pm / 1000 / s, (pm > 0 ? sprintf("%.5f", m / pm) : "-") }'
}
echo "coinbit $(git rev-parse --short HEAD), monitor tid $monitor_tid, sampling every $interval ms, $(nproc) CPUs, CLK_TCK $tck"
echo
echo "| phase | seconds | monitor CPU ms | monitor CPU (% of one core) | process CPU (% of one core) | monitor / process |"
echo "|---|---:|---:|---:|---:|---:|"
measure idle sleep "$WINDOW"
loadlog=$(mktemp)
load() { "$LOADGEN" -u "$USERS" -d "${WINDOW}s" "http://127.0.0.1:$PORT/health" >"$loadlog" 2>&1; }
measure "load ($USERS users, GET /health)" load
echo
echo "loadgen during the load phase:"
grep -iE "requests|req/s|errors" "$loadlog" | head -5
rm -f "$loadlog"
