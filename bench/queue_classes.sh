#!/usr/bin/env bash
# bench/queue_classes.sh — do the priority classes keep critical work fast under a flood of
# low-priority work on the same core?
#
# One shard on SERVER_CPU; every loadgen on CLIENT_CPU (the probe runs SCHED_FIFO there so the
# flood's client does not delay it). Four measurements, each on a fresh server:
#  1. HTTP: GET /livez as a high-class route (QUEUE_ROUTE_CLASSES=$CLASSES below), probed
#     at a fixed PROBE_RATE, alone and while two closed-loop loadgens flood GET /readyz (low) and
#     GET /api/enterprise/cluster/status (background); with the classes, and with
#     QUEUE_ROUTE_CLASSES=none (every request in the shard's default task queue).
#  2. Jobs: enqueue-to-start wait p99 per class (from /api/enterprise/queues/status) for jobs
#     enqueued at JOB_RATE across the four classes, alone and under the same flood.
#  3. Jobs/s on one core: closed-loop enqueues of small jobs (JOB_USERS connections).
#  4. The hot path: GET /health req/s with the classes on and off (BASE_COINBIT, if set, is
#     measured too, e.g. a build of the commit before the queues), ROUNDS interleaved rounds.
#
# Usage: bench/queue_classes.sh        (wrap in `flock /work/bench.lock` on a shared machine)
# Environment: COINBIT LOADGEN BASE_COINBIT SERVER_CPU=0 CLIENT_CPU=1 DURATION=10s PROBE_RATE=2000
#              FLOOD_USERS=128 JOB_RATE=400 JOB_USERS=64 ROUNDS=5 SECTIONS=1234 PORT=18300 BUILD=0
#              ENGINES="may glommio" (section 1 runs on each; the others on the first)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

COINBIT=${COINBIT:-target/release/coinbit}
LOADGEN=${LOADGEN:-target/release/loadgen}
BASE_COINBIT=${BASE_COINBIT:-}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DURATION=${DURATION:-10s}
PROBE_RATE=${PROBE_RATE:-2000}
FLOOD_USERS=${FLOOD_USERS:-128}
JOB_RATE=${JOB_RATE:-400}
JOB_USERS=${JOB_USERS:-64}
ROUNDS=${ROUNDS:-5}
SECTIONS=${SECTIONS:-1234}
PORT=${PORT:-18300}
BUILD=${BUILD:-0}
ENGINES=${ENGINES:-may glommio}
ENGINE=${ENGINES%% *}
CLASSES="livez=high,readyz=low,cluster_status=background"
URL="http://127.0.0.1:$PORT"

if [ "$BUILD" = 1 ]; then
    cargo build --release -p coinbit -p loadgen
fi
for bin in "$COINBIT" "$LOADGEN"; do
    [ -x "$bin" ] || { echo "queue_classes: $bin is missing (BUILD=1 builds it)" >&2; exit 1; }
done
out=$(mktemp -d)
server_pid=""
flood_pids=()
cleanup() {
    for pid in "${flood_pids[@]}" $server_pid; do kill -INT "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT

# start BINARY ROUTE_CLASSES: a fresh one-shard server.
start() { start_one_shard env QUEUE_ROUTE_CLASSES="$2" "$1" --engine "$ENGINE"; }

flood_start() {
    for path in /readyz /api/enterprise/cluster/status; do
        "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -c "$FLOOD_USERS" -d 600s --progress never --json \
            "$URL$path" >"$out/flood$(basename "$path").json" 2>/dev/null &
        flood_pids+=($!)
    done
    sleep 1
}
flood_stop() {
    for pid in "${flood_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    flood_pids=()
}

# json FILE EXPR: a value from a JSON file (EXPR in Python over `d`); n/a when the file is not
# a finished report (a loadgen that failed), which is said on stderr.
json() {
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null ||
        { echo "queue_classes: no result in $1" >&2; echo n/a; }
}

# probe: p99 (ms, corrected) of GET /livez at PROBE_RATE. Real-time priority so the flood's
# client does not delay it, and no busy-polling so it cannot starve the flood's client either;
# enough connections that a slow answer does not leave the next request without one.
probe() {
    chrt -f 10 "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -R "$PROBE_RATE" -c 64 --spin 0us -d "$DURATION" \
        --progress never --json "$URL/livez" >"$out/probe.json" 2>/dev/null || true
    json "$out/probe.json" "d['overall']['latency_ms']['p99']"
}

# rps FILE: achieved req/s of a loadgen summary.
rps() { json "$1" "round(d['overall']['rps'])"; }

echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server: 1 shard on CPU $SERVER_CPU; loadgens on CPU $CLIENT_CPU; $DURATION per cell"
echo

if [[ $SECTIONS == *1* ]]; then
echo "### 1. A high-class route under a flood of low and background requests"
echo
echo "| engine | route classes | /livez p99 alone (ms) | /livez p99 under flood (ms) | under flood / alone | flood req/s |"
echo "|---|---|---:|---:|---:|---:|"
declare -A flooded flood_rate
for ENGINE in $ENGINES; do
    for mode in "$CLASSES" none; do
        start "$COINBIT" "$mode"
        alone=$(probe)
        flood_start
        under=$(probe)
        flood_stop
        flood_rps=$(awk "BEGIN {print $(rps "$out/floodreadyz.json") + $(rps "$out/floodstatus.json")}" 2>/dev/null || echo n/a)
        stop_server
        flooded[$ENGINE/$mode]=$under
        flood_rate[$ENGINE/$mode]=$flood_rps
        printf '| %s | `%s` | %s | %s | %.1fx | %s |\n' "$ENGINE" "$mode" "$alone" "$under" \
            "$(awk "BEGIN {print $under / $alone}")" "$flood_rps"
    done
done
echo
for ENGINE in $ENGINES; do
    printf '%s, under the flood: /livez p99 without the classes / with them %.1fx; flood req/s with / without %.2fx\n' \
        "$ENGINE" "$(awk "BEGIN {print ${flooded[$ENGINE/none]} / ${flooded[$ENGINE/$CLASSES]}}")" \
        "$(awk "BEGIN {print ${flood_rate[$ENGINE/$CLASSES]} / ${flood_rate[$ENGINE/none]}}")"
done
echo
ENGINE=${ENGINES%% *}
fi

if [[ $SECTIONS == *2* ]]; then
echo "### 2. Enqueue-to-start wait per class (jobs at $JOB_RATE/s over the four classes)"
echo
echo 'name = "queue-classes"' >"$out/jobs.toml"
for class in high medium low background; do
    cat >>"$out/jobs.toml" <<TOML
[[requests]]
name = "$class"
method = "POST"
path = "/api/enterprise/jobs"
body = '{"kind":"analytics","class":"$class","payload":{"event":"bench"}}'
expect = [202, 429]
TOML
done
echo "| condition | high p50/p99 (ms) | medium p50/p99 | low p50/p99 | background p50/p99 | jobs processed |"
echo "|---|---:|---:|---:|---:|---:|"
for condition in alone flood; do
    start "$COINBIT" "$CLASSES"
    [ "$condition" = flood ] && flood_start
    chrt -f 10 "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -R "$JOB_RATE" -c 64 --spin 0us -d "$DURATION" \
        -s "$out/jobs.toml" --progress never --json >/dev/null 2>&1 "$URL" || true
    flood_stop
    sleep 0.5
    curl -s "$URL/api/enterprise/queues/status" >"$out/queues.json"
    stop_server
    json "$out/queues.json" "'| $condition | ' + ' | '.join('%s / %s' % (d['classes'][c]['wait_ms']['p50'], d['classes'][c]['wait_ms']['p99']) for c in ['high','medium','low','background']) + ' | %d |' % sum(d['classes'][c]['processed'] for c in d['classes'])"
done
echo
fi

if [[ $SECTIONS == *3* ]]; then
echo "### 3. Jobs per second on one core ($JOB_USERS connections enqueueing, closed loop)"
echo
start "$COINBIT" "$CLASSES"
"$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -c "$JOB_USERS" -d "$DURATION" -s "$out/jobs.toml" \
    --progress never --json "$URL" >"$out/enqueue.json" 2>/dev/null || true
sleep 1
curl -s "$URL/api/enterprise/queues/status" >"$out/queues.json"
stop_server
seconds=${DURATION%s}
echo "| enqueue req/s | jobs processed | processed jobs/s | rejected (429) |"
echo "|---:|---:|---:|---:|"
json "$out/queues.json" "'| $(rps "$out/enqueue.json") | %d | %d | %d |' % (sum(d['classes'][c]['processed'] for c in d['classes']), sum(d['classes'][c]['processed'] for c in d['classes']) / $seconds, sum(d['classes'][c]['rejected'] for c in d['classes']))"
echo

echo
fi

if [[ $SECTIONS == *4* ]]; then
echo "### 4. The hot path: GET /health, 64 keep-alive connections, $ROUNDS interleaved rounds"
echo
variants=("$COINBIT|$CLASSES" "$COINBIT|none")
[ -n "$BASE_COINBIT" ] && variants+=("$BASE_COINBIT|-")
declare -A results
for round in $(seq "$ROUNDS"); do
    for entry in "${variants[@]}"; do
        bin=${entry%%|*} mode=${entry#*|}
        start "$bin" "$([ "$mode" = - ] || echo "$mode")"
        "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -c 64 -d "$DURATION" --progress never --json \
            "$URL/health" >"$out/health.json" 2>/dev/null || true
        stop_server
        results[$entry]+="$(rps "$out/health.json") "
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
first=$(median <<<"${results[${variants[0]}]}")
echo "| server | route classes | req/s per round | median | vs first row |"
echo "|---|---|---|---:|---:|"
for entry in "${variants[@]}"; do
    m=$(median <<<"${results[$entry]}")
    printf '| %s | `%s` | %s | %s | %.2fx |\n' "${entry%%|*}" "${entry#*|}" "${results[$entry]}" "$m" \
        "$(awk "BEGIN {print $m / $first}")"
done
fi
