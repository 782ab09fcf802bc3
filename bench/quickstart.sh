#!/usr/bin/env bash
# bench/quickstart.sh — the main job: build, start the server, load it with the bundled loadgen
# (the seed's 1,100-user test on the built-in CoinBitClub mix), write the HDR report, stop.
#
# Usage: bench/quickstart.sh
# Environment (all optional):
#   PORT=3000        server port (below 32768)
#   USERS=1100       virtual users (the seed's load test)
#   DURATION=30s     how long the load runs
#   SLO="p99<50ms,errors<0.1%"   objectives; the script exits 3 when one is missed
#   OUT=bench/out/quickstart-<date>   where the reports go (report.html, *.hgrm, summary.json)
#   SERVER_CPUS / CLIENT_CPUS   taskset CPU lists for the server and the loadgen (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-3000}
USERS=${USERS:-1100}
DURATION=${DURATION:-30s}
SLO=${SLO:-"p99<50ms,errors<0.1%"}
OUT=${OUT:-bench/out/quickstart-$(date -u +%Y%m%dT%H%M%SZ)}
SERVER_CPUS=${SERVER_CPUS:-}
CLIENT_CPUS=${CLIENT_CPUS:-}

# Runs "$@" under taskset when the CPU list $1 is set. taskset execs, so $! stays the program's pid.
pinned() { local cpus=$1; shift; if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi; }

echo "== building (release)"
cargo build --release -p coinbit -p loadgen

mkdir -p "$OUT"
echo "== starting coinbit on port $PORT"
server_cmd=(target/release/coinbit --port "$PORT")
[ -n "$SERVER_CPUS" ] && server_cmd=(taskset -c "$SERVER_CPUS" "${server_cmd[@]}")
"${server_cmd[@]}" >"$OUT/server.log" 2>&1 &
server=$!
stop() { kill -INT "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 100); do
    grep -q "listening on" "$OUT/server.log" && break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "coinbit did not start:" >&2; cat "$OUT/server.log" >&2; exit 1
    fi
    sleep 0.1
done
grep -q "listening on" "$OUT/server.log" || { echo "coinbit did not start in 10 s" >&2; exit 1; }
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 || true

echo "== loadgen: $USERS users for $DURATION on the built-in CoinBitClub mix"
status=0
pinned "$CLIENT_CPUS" target/release/loadgen -u "$USERS" -d "$DURATION" \
    --slo "$SLO" --out "$OUT" "http://127.0.0.1:$PORT" || status=$?

echo "== server's own view after the run"
curl -fsS "http://127.0.0.1:$PORT/api/enterprise/metrics" >"$OUT/server-metrics.json" 2>/dev/null \
    && echo "server metrics: $OUT/server-metrics.json"
echo "HDR report: $OUT/report.html (percentile plot and timeline), $OUT/*.hgrm, $OUT/summary.json"
exit "$status"
