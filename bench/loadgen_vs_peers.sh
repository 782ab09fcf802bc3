#!/usr/bin/env bash
# loadgen against its peers on one nginx (`return 200`), server and client each pinned:
#   1. maximum throughput, closed model: loadgen vs wrk, same connections and threads;
#   2. fixed rate, coordinated-omission corrected: loadgen vs oha (-q, --latency-correction).
# Prints a markdown table (date, machine, commands, medians, ratios) for bench/RESULTS.md.
#
# Knobs (environment): PORT=18080 SERVER_CPU=0 CLIENT_CPU=1 CONNS=64 THREADS=1 DUR=10
#   ROUNDS=3 RATE=10000 RATE_CONNS=50 STRICT=0 (1: exit 1 when a target is missed)
#   FIXED_RATE=1 (0: throughput only, no oha)  LOADGEN=<prebuilt binary, skips the build>.
# SERVER_CPU may be a list (e.g. 0-7): nginx then runs one worker per CPU, so that on a larger
# host the client is what runs out of CPU and the figure measures the clients themselves.
# Installs what it lacks: nginx, wrk, jq (apt-get) and oha (cargo install).
set -euo pipefail

PORT=${PORT:-18080}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
DUR=${DUR:-10}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-10000}
RATE_CONNS=${RATE_CONNS:-50}
STRICT=${STRICT:-0}
FIXED_RATE=${FIXED_RATE:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-loadgen}

if [ "$PORT" -ge 32768 ]; then echo "PORT must be below 32768 (the ephemeral range)" >&2; exit 2; fi

apt_missing=()
for tool in nginx wrk jq; do command -v "$tool" >/dev/null || apt_missing+=("$tool"); done
if [ ${#apt_missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
[ "$FIXED_RATE" = 0 ] || command -v oha >/dev/null || cargo install oha --locked
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${LOADGEN:-}" ]; then
  echo "building loadgen (release) ..." >&2
  (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p loadgen)
  LOADGEN="$TARGET_DIR/release/loadgen"
fi
WORKERS=$(taskset -c "$SERVER_CPU" nproc)

TMP=$(mktemp -d /tmp/loadgen-bench.XXXXXX)
cat > "$TMP/nginx.conf" <<NGINX
worker_processes $WORKERS;
worker_cpu_affinity auto;
daemon on;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 20000; use epoll; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$PORT backlog=4096 reuseport;
    location / { return 200 "ok"; }
  }
}
NGINX
stop_nginx() { [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true; }
trap 'stop_nginx; rm -rf "$TMP"' EXIT
taskset -c "$SERVER_CPU" "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" 2>/dev/null
URL="http://127.0.0.1:$PORT/"
for _ in $(seq 50); do curl -fs "$URL" >/dev/null 2>&1 && break; sleep 0.1; done
ulimit -n 20000 2>/dev/null || true

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
pin() { taskset -c "$CLIENT_CPU" "$@"; }

WRK_CMD="taskset -c $CLIENT_CPU wrk -t$THREADS -c$CONNS -d${DUR}s $URL"
LG_MAX_CMD="taskset -c $CLIENT_CPU loadgen -t $THREADS -c $CONNS -d ${DUR}s $URL"
OHA_CMD="taskset -c $CLIENT_CPU oha -z ${DUR}s -c $RATE_CONNS -q $RATE --latency-correction --no-tui $URL"
LG_RATE_CMD="taskset -c $CLIENT_CPU loadgen -t $THREADS -R $RATE -c $RATE_CONNS -d ${DUR}s $URL"

# Warm up the server and the page cache.
pin wrk -t1 -c"$CONNS" -d2s "$URL" >/dev/null

: > "$TMP/wrk"; : > "$TMP/lg"
for r in $(seq "$ROUNDS"); do
  echo "throughput round $r/$ROUNDS ..." >&2
  pin wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" "$URL" | awk '/Requests\/sec/ {print $2}' >> "$TMP/wrk"
  pin "$LOADGEN" -t "$THREADS" -c "$CONNS" -d "${DUR}s" --progress never --json "$URL" | jq '.rate.achieved_rps' >> "$TMP/lg"
done
: > "$TMP/oha50"; : > "$TMP/oha99"; : > "$TMP/lg50"; : > "$TMP/lg99"; : > "$TMP/lgu50"; : > "$TMP/lgu99"; : > "$TMP/ohar"; : > "$TMP/lgr"; : > "$TMP/lglag"
for r in $(seq "$ROUNDS"); do
  [ "$FIXED_RATE" = 0 ] && break
  echo "fixed-rate round $r/$ROUNDS ..." >&2
  pin oha -z "${DUR}s" -c "$RATE_CONNS" -q "$RATE" --latency-correction --no-tui --output-format json "$URL" > "$TMP/oha.json"
  jq '.latencyPercentiles.p50 * 1000' "$TMP/oha.json" >> "$TMP/oha50"
  jq '.latencyPercentiles.p99 * 1000' "$TMP/oha.json" >> "$TMP/oha99"
  jq '.summary.requestsPerSec' "$TMP/oha.json" >> "$TMP/ohar"
  pin "$LOADGEN" -t "$THREADS" -R "$RATE" -c "$RATE_CONNS" -d "${DUR}s" --progress never --json "$URL" > "$TMP/lg.json"
  jq '.overall.latency_ms.p50' "$TMP/lg.json" >> "$TMP/lg50"
  jq '.overall.latency_ms.p99' "$TMP/lg.json" >> "$TMP/lg99"
  jq '.overall.uncorrected_latency_ms.p50' "$TMP/lg.json" >> "$TMP/lgu50"
  jq '.overall.uncorrected_latency_ms.p99' "$TMP/lg.json" >> "$TMP/lgu99"
  jq '.rate.achieved_rps' "$TMP/lg.json" >> "$TMP/lgr"
  jq '.client.lag_p99_ms' "$TMP/lg.json" >> "$TMP/lglag"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
fmt() { awk -v a="$1" 'BEGIN {printf "%.0f", a}'; }
ms() { awk -v a="$1" 'BEGIN {printf "%.3f", a}'; }
within() { awk -v r="$1" 'BEGIN {print (r >= 0.9 && r <= 1.1) ? "within 10%" : "outside 10%"}'; }
all_runs() { paste -sd' ' "$1"; }
WRK=$(median < "$TMP/wrk"); LG=$(median < "$TMP/lg")
TR=$(ratio "$LG" "$WRK")
verdict_tp=$(awk -v r="$TR" 'BEGIN {print (r >= 1.0) ? "met" : "MISSED"}')

cat <<REPORT
### $(date -u +%Y-%m-%d) — $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)

nginx $("$NGINX" -v 2>&1 | cut -d/ -f2) (\`return 200\`, $WORKERS worker(s)) pinned to CPU $SERVER_CPU; every client pinned to CPU $CLIENT_CPU; loopback; median of $ROUNDS rounds of ${DUR} s.

| test | command | figure | peer | loadgen | loadgen / peer |
| --- | --- | --- | ---: | ---: | ---: |
| max throughput | \`$WRK_CMD\` vs \`$LG_MAX_CMD\` | req/s | $(fmt "$WRK") | $(fmt "$LG") | $TR ($verdict_tp ≥ 1.0) |
REPORT
if [ "$FIXED_RATE" != 0 ]; then
  O50=$(median < "$TMP/oha50"); O99=$(median < "$TMP/oha99"); OR=$(median < "$TMP/ohar")
  L50=$(median < "$TMP/lg50"); L99=$(median < "$TMP/lg99"); LR=$(median < "$TMP/lgr")
  U50=$(median < "$TMP/lgu50"); U99=$(median < "$TMP/lgu99"); LAG=$(median < "$TMP/lglag")
  P50R=$(ratio "$L50" "$O50"); P99R=$(ratio "$L99" "$O99")
  cat <<REPORT
| fixed rate | \`$OHA_CMD\` vs \`$LG_RATE_CMD\` | p50 ms | $(ms "$O50") | $(ms "$L50") | $P50R ($(within "$P50R")) |
| fixed rate | same | p99 ms | $(ms "$O99") | $(ms "$L99") | $P99R ($(within "$P99R")) |
| fixed rate | same | achieved req/s | $(fmt "$OR") | $(fmt "$LR") | $(ratio "$LR" "$OR") |

loadgen's uncorrected latency at the fixed rate (from the actual send): p50 $(ms "$U50") ms, p99 $(ms "$U99") ms ($(ratio "$U99" "$O99") of oha's p99); loadgen's own send lag p99 $(ms "$LAG") ms.
Every fixed-rate run: oha p50/p99 ms: $(all_runs "$TMP/oha50") / $(all_runs "$TMP/oha99"); loadgen p50/p99 ms: $(all_runs "$TMP/lg50") / $(all_runs "$TMP/lg99").
REPORT
fi
echo
echo "Every throughput run: wrk req/s: $(all_runs "$TMP/wrk"); loadgen req/s: $(all_runs "$TMP/lg")."

if [ "$STRICT" = 1 ] && [ "$verdict_tp" != met ]; then exit 1; fi
