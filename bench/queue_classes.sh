#!/usr/bin/env bash
# bench/queue_classes.sh — do the priority classes keep critical work fast under a flood of
# low-priority work on the same core?
#
# One shard on SERVER_CPU; every loadgen on CLIENT_CPU (the probe runs SCHED_FIFO there so the
# flood's client does not delay it). Four measurements, each on a fresh server:
#  1. HTTP: GET /livez as a high-class route (QUEUE_ROUTE_CLASSES=$CLASSES below), probed
#     at a fixed PROBE_RATE, alone and while two closed-loop loadgens flood GET /readyz (low) and
#     GET /api/enterprise/cluster/status (background); with the classes, and with
#     QUEUE_ROUTE_CLASSES=none (every request in the shard's default task queue). ROUNDS rounds
#     (a fresh server each); a cell shows the medians over rounds and the alerts the server
#     raised in any of them.
#  2. Jobs: enqueue-to-start wait p99 per class (from /api/enterprise/queues/status) for jobs
#     enqueued at JOB_RATE across the four classes, alone and under the same flood.
#  3. Jobs/s on one core: closed-loop enqueues of small jobs (JOB_USERS connections).
#  4. The hot path: GET /health req/s with the classes on and off (BASE_COINBIT, if set, is
#     measured too, e.g. a build of the commit before the queues), ROUNDS interleaved rounds.
#
# Every req/s is of answers with an expected status (loadgen's `ok`, not its `rps`, which counts
# error answers too). A cell where any loadgen run saw an error (a status it does not expect:
# anything but 2xx, or but 202 and 429 for the job enqueues; a timeout, a reset, a failed
# connect, a request the schedule could not send, no report at all) is not a result:
# its figures read `INVALID (...)` and the script exits 2 after its tables (bench/common.sh,
# "valid cells"). The concurrent-users alerts are pinned above the bench's own connections
# (pin_bench_alert_levels), so /readyz and /health do not answer 503 for the load itself.
# Figures for bench/RESULTS.md are medians of ROUNDS >= 3.
#
# Usage: bench/queue_classes.sh        (wrap in `flock /work/bench.lock` on a shared machine)
# Environment: COINBIT LOADGEN BASE_COINBIT SERVER_CPU=0 CLIENT_CPU=1 DURATION=10s PROBE_RATE=2000
#              FLOOD_USERS=128 JOB_RATE=400 JOB_USERS=64 ROUNDS=5 SECTIONS=1234 PORT=18300 BUILD=0
#              ENGINES="may glommio" (section 1 runs on each; the others on the first)
#              MONITORING_CONCURRENT_USERS_WARNING / _CRITICAL (default 2x / 4x the connections)
# A quick check of the script: SECTIONS=4 ROUNDS=1 DURATION=1s bench/queue_classes.sh
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
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "queue_classes: ROUNDS must be a positive integer, got '$ROUNDS'" >&2; exit 1; }
# The probes run SCHED_FIFO where this user may (root, CAP_SYS_NICE); elsewhere at normal priority.
probe_priority=(chrt -f 10)
chrt -f 10 true 2>/dev/null || probe_priority=()
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

# The flood's loadgens run until flood_stop sends them SIGINT, on which they write their
# reports. Started directly (not in a function's subshell, which would take the signal).
flood_start() {
    local report
    for path in /readyz /api/enterprise/cluster/status; do
        report=$out/flood$(basename "$path").json
        "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -c "$FLOOD_USERS" -d 600s --progress never --json \
            "$URL$path" >"$report" 2>"$report.err" &
        flood_pids+=($!)
    done
    sleep 1
}
flood_stop() {
    for pid in "${flood_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    flood_pids=()
}

# probe FILE: GET /livez at PROBE_RATE, its report in FILE. Real-time priority so the flood's
# client does not delay it, and no busy-polling so it cannot starve the flood's client either;
# enough connections that a slow answer does not leave the next request without one.
probe() {
    run_loadgen "$1" "${probe_priority[@]}" "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -R "$PROBE_RATE" \
        -c 64 --spin 0us -d "$DURATION" "$URL/livez"
}

# cell_check LABEL FILE...: the problems of every loadgen report FILE of one cell, recorded with
# refuse_cell under LABEL; sets cell_problems ("" for a valid cell). In this shell, not in $(...).
cell_check() {
    local label=$1 file problems
    shift
    cell_problems=""
    for file in "$@"; do
        problems=$(loadgen_problems "$file")
        [ -n "$problems" ] && cell_problems+="${cell_problems:+; }$(basename "$file" .json): $problems"
    done
    refuse_cell "$label" "$cell_problems" || true
}

# alerts_seen: the alerts the running server has raised since it started (active and recent),
# as `name (severity)`, or "none".
alerts_seen() {
    curl -s -m 5 "$URL/api/enterprise/alerts" >"$out/alerts.json" || true
    json "$out/alerts.json" "', '.join(sorted({'%s (%s)' % (a['name'], a['severity']) for a in d.get('active', []) + d.get('recent', [])})) or 'none'"
}

# alerts_union LISTS...: each alert named in any of the alerts_seen LISTS once, or "none".
alerts_union() {
    printf '%s\n' "$@" | tr ',' '\n' | sed 's/^ *//' | awk 'NF && $0 != "none"' | sort -u |
        awk '{ s = s (NR > 1 ? ", " : "") $0 } END { print (NR ? s : "none") }'
}

# whole VALUE: a number rounded to a whole one (req/s); anything else as it is.
whole() { awk -v v="$1" 'BEGIN { if (v ~ /^-?[0-9.]/) printf "%.0f\n", v; else print v }'; }

# median_or_na VALUES...: their median (bench/common.sh), or n/a when none is a number.
median_or_na() {
    local m
    m=$(median "$@")
    echo "${m:-n/a}"
}

echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server: 1 shard on CPU $SERVER_CPU; loadgens on CPU $CLIENT_CPU; $DURATION per cell; $ROUNDS round(s)$( ((ROUNDS >= 3)) || echo ', too few for bench/RESULTS.md')"
# The most connections open at once: the flood's two loadgens and a probe or the job enqueuers.
pin_bench_alert_levels $((2 * FLOOD_USERS + 64 + JOB_USERS))
echo "server: $(bench_alert_levels)"
[ "${#probe_priority[@]}" -gt 0 ] || echo "probes at normal priority: chrt -f is not allowed to this user"
echo "a cell with any loadgen error reads INVALID and makes the script exit $INVALID_EXIT"
echo

# ratio A B: A / B with two decimals, n/a when either is missing or B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.2f\n", a / b }'; }

if [[ $SECTIONS == *1* ]]; then
echo "### 1. A high-class route under a flood of low and background requests"
echo
echo "| engine | route classes | /livez p99 alone (ms) | /livez p99 under flood (ms) | under flood / alone | flood ok req/s | alerts seen |"
echo "|---|---|---:|---:|---:|---:|---|"
declare -A flooded flood_rate section1_problems
for ENGINE in $ENGINES; do
    for mode in "$CLASSES" none; do
        alone=() under=() ratios=() rates=() alerts=() problems=""
        for round in $(seq "$ROUNDS"); do
            start "$COINBIT" "$mode"
            probe "$out/alone.json"
            flood_start
            probe "$out/under.json"
            flood_stop
            alerts+=("$(alerts_seen)")
            stop_server
            cell_check "section 1, $ENGINE, $mode, round $round" \
                "$out/alone.json" "$out/under.json" "$out/floodreadyz.json" "$out/floodstatus.json"
            [ -n "$cell_problems" ] && problems+="${problems:+; }round $round: $cell_problems"
            alone+=("$(p99 "$out/alone.json")")
            under+=("$(p99 "$out/under.json")")
            ratios+=("$(ratio "${under[-1]}" "${alone[-1]}")")
            rates+=("$(awk -v a="$(ok_rps "$out/floodreadyz.json")" -v b="$(ok_rps "$out/floodstatus.json")" \
                'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else print a + b }')")
        done
        flooded[$ENGINE/$mode]=$(median_or_na "${under[@]}")
        flood_rate[$ENGINE/$mode]=$(median_or_na "${rates[@]}")
        section1_problems[$ENGINE/$mode]=$problems
        printf '| %s | `%s` | %s | %s | %s | %s | %s |\n' "$ENGINE" "$mode" \
            "$(cell_figure "$(median_or_na "${alone[@]}")" "$problems")" \
            "$(cell_figure "${flooded[$ENGINE/$mode]}" "${problems:+see left}")" \
            "$(cell_figure "$(median_or_na "${ratios[@]}")x" "${problems:+see left}")" \
            "$(cell_figure "$(whole "${flood_rate[$ENGINE/$mode]}")" "${problems:+see left}")" "$(alerts_union "${alerts[@]}")"
    done
done
echo
for ENGINE in $ENGINES; do
    if [ -n "${section1_problems[$ENGINE/none]}${section1_problems[$ENGINE/$CLASSES]}" ]; then
        echo "$ENGINE, under the flood: invalid (a cell above had errors)"
        continue
    fi
    echo "$ENGINE, under the flood: /livez p99 without the classes / with them" \
        "$(ratio "${flooded[$ENGINE/none]}" "${flooded[$ENGINE/$CLASSES]}")x;" \
        "flood ok req/s with / without $(ratio "${flood_rate[$ENGINE/$CLASSES]}" "${flood_rate[$ENGINE/none]}")x"
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
echo "| condition | high p50/p99 (ms) | medium p50/p99 | low p50/p99 | background p50/p99 | jobs processed | alerts seen |"
echo "|---|---:|---:|---:|---:|---:|---|"
for condition in alone flood; do
    start "$COINBIT" "$CLASSES"
    reports=("$out/jobs.json")
    [ "$condition" = flood ] && { flood_start; reports+=("$out/floodreadyz.json" "$out/floodstatus.json"); }
    run_loadgen "$out/jobs.json" "${probe_priority[@]}" "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 \
        -R "$JOB_RATE" -c 64 --spin 0us -d "$DURATION" -H "$OPERATOR_HEADER" -s "$out/jobs.toml" "$URL"
    flood_stop
    sleep 0.5
    curl -s -m 5 "$URL/api/enterprise/queues/status" >"$out/queues.json" || true
    alerts=$(alerts_seen)
    stop_server
    cell_check "section 2, $condition" "${reports[@]}"
    if [ -n "$cell_problems" ]; then
        echo "| $condition | $(cell_figure - "$cell_problems") | | | | | $alerts |"
    else
        json "$out/queues.json" "'| $condition | ' + ' | '.join('%s / %s' % (d['classes'][c]['wait_ms']['p50'], d['classes'][c]['wait_ms']['p99']) for c in ['high','medium','low','background']) + ' | %d | $alerts |' % sum(d['classes'][c]['processed'] for c in d['classes'])"
    fi
done
echo
fi

if [[ $SECTIONS == *3* ]]; then
echo "### 3. Jobs per second on one core ($JOB_USERS connections enqueueing, closed loop)"
echo
start "$COINBIT" "$CLASSES"
run_loadgen "$out/enqueue.json" "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -c "$JOB_USERS" -d "$DURATION" \
    -H "$OPERATOR_HEADER" -s "$out/jobs.toml" "$URL"
sleep 1
curl -s -m 5 "$URL/api/enterprise/queues/status" >"$out/queues.json" || true
stop_server
cell_check "section 3" "$out/enqueue.json"
seconds=${DURATION%s}
echo "| enqueue ok req/s | jobs processed | processed jobs/s | rejected (429) |"
echo "|---:|---:|---:|---:|"
if [ -n "$cell_problems" ]; then
    echo "| $(cell_figure - "$cell_problems") | | | |"
else
    json "$out/queues.json" "'| $(ok_rps "$out/enqueue.json") | %d | %d | %d |' % (sum(d['classes'][c]['processed'] for c in d['classes']), sum(d['classes'][c]['processed'] for c in d['classes']) / $seconds, sum(d['classes'][c]['rejected'] for c in d['classes']))"
fi
echo
fi

if [[ $SECTIONS == *4* ]]; then
echo "### 4. The hot path: GET /health, 64 keep-alive connections, $ROUNDS interleaved rounds"
echo
variants=("$COINBIT|$CLASSES" "$COINBIT|none")
[ -n "$BASE_COINBIT" ] && variants+=("$BASE_COINBIT|-")
declare -A results section4_problems alerts4
for round in $(seq "$ROUNDS"); do
    for entry in "${variants[@]}"; do
        bin=${entry%%|*} mode=${entry#*|}
        start "$bin" "$([ "$mode" = - ] || echo "$mode")"
        run_loadgen "$out/health.json" "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -c 64 -d "$DURATION" "$URL/health"
        alerts4[$entry]+="$(alerts_seen),"
        stop_server
        cell_check "section 4, $bin, $mode, round $round" "$out/health.json"
        rate=$(ok_rps "$out/health.json")
        if [ -n "$cell_problems" ]; then
            section4_problems[$entry]+="${section4_problems[$entry]:+; }round $round: $cell_problems"
            rate="$rate(invalid)"
        fi
        results[$entry]+="$rate "
    done
done
first=$(median_or_na ${results[${variants[0]}]})
echo "| server | route classes | ok req/s per round | median | vs first row | alerts seen |"
echo "|---|---|---|---:|---:|---|"
for entry in "${variants[@]}"; do
    m=$(median_or_na ${results[$entry]})
    problems=${section4_problems[$entry]:-}
    invalid_first=${section4_problems[${variants[0]}]:-}
    printf '| %s | `%s` | %s | %s | %s | %s |\n' "${entry%%|*}" "${entry#*|}" "${results[$entry]}" \
        "$(cell_figure "$(whole "$m")" "$problems")" \
        "$(cell_figure "$(ratio "$m" "$first")x" "${problems}${invalid_first:+${problems:+; }first row invalid}")" "$(alerts_union "${alerts4[$entry]}")"
done
echo
fi

exit_if_invalid queue_classes
