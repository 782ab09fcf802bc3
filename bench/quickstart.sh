#!/usr/bin/env bash
# bench/quickstart.sh — the main job: build, bring up a local PostgreSQL primary with three
# streaming replicas (tests/pg/cluster.sh), start the server on them, load it with the bundled
# loadgen on the built-in CoinBitClub mix (users reads included; registration left the mix on
# 2026-12-06, see loadgen/src/scenario/builtin.rs: the create_user notes below date from
# before), write an HDR report per phase and a summary against the seed, stop. The database cluster is stopped at the end unless it was up.
#
# The seed's figure is 1,100 users at 2,439 ops/s, 72.54 ms average. Three phases, each for
# DURATION, all on USERS (1,100) connections, one per user:
#   1. seed-rate  open model, the seed's 2,439 req/s (loadgen --rate: requests leave on a fixed
#                 schedule and latency counts from the intended send time, so a stall is not
#                 hidden by a client that slows down); judged by SLO_SEED.
#   2. ten-x      open model, 10x the seed, 24,390 req/s after a RAMP (5 s) from zero; judged
#                 by SLO_TENX.
#   3. capacity   closed model, 1,100 users with no think time: the most this host does. Reported,
#                 not judged: with 1,100 requests always in flight its latency is mostly the
#                 queue the test builds itself (Little's law: 1,100 / 37k ops/s is ~30 ms).
# Objectives (defaults), chosen from measured runs on this 2-CPU host shared with other
# engineers' builds and tests (load average 13-23), where the server, four PostgreSQL nodes and
# the client share both CPUs (bench/RESULTS.md, "Quick-start"). Errors count 503s, timeouts and
# requests the schedule asked for but could not send before the end, so a server that falls
# behind its rate fails them too.
#   SLO_SEED="p99<500ms,errors<0.1%"  sixteen runs: p99 4.6-183 ms (above 25 ms only in two,
#                 host stalls with a max of 376 and 390 ms), 0 errors: 2.7x over the worst
#   SLO_TENX="p99<3s,errors<0.5%"     met when the host leaves the server room (p99 1.1 s, 0-0.1 %
#                 errors, mean 36-47 ms against the seed's 72.54 ms); missed under load average
#                 18-23, where the server does 19-21k of the 24,390 req/s and the schedule's
#                 backlog counts as latency and unsent requests (p99 1.1-5.9 s, 0.7-13 %).
#                 24,390 req/s is ~80 % of the capacity phase measured in the same runs (25-33k).
# Exit codes: 0 both objectives met, 3 one missed, 1 a step failed.
#
# Usage: bench/quickstart.sh
# Environment (all optional):
#   PORT=3000        server port (below 32768)
#   USERS=1100       virtual users = connections (the seed's load test)
#   SEED_RATE=2439   the seed's rate in req/s; phase 2 runs at 10x it
#   DURATION=20s     how long each phase runs (phase 2 after its RAMP=5s)
#   SLO_SEED, SLO_TENX   the objectives above (loadgen --slo syntax)
#   OUT=bench/out/quickstart-<date>   where the reports go: summary.md and one folder per phase
#                    (1-seed-rate/, 2-ten-x/, 3-capacity/) with report.html, *.hgrm, summary.json
#   SERVER_CPUS / CLIENT_CPUS   taskset CPU lists for the server and the loadgen (default: all)
#   PG_PORT=25432    the primary's port (replicas on the next three); PG_DIR, data directory
#   PG_REPLICAS=3    streaming replicas
#   MONITORING_CONCURRENT_USERS_WARNING / _CRITICAL   default 2x and 4x USERS here (see below)
#   DB_POOL_SIZE=4   connections per database node (see below)
#   DB_QUEUE_SIZE=2x USERS   requests that may wait for a busy database node (see below)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

PORT=${PORT:-3000}
USERS=${USERS:-1100}
SEED_RATE=${SEED_RATE:-2439}
TENX_RATE=$((SEED_RATE * 10))
DURATION=${DURATION:-20s}
RAMP=${RAMP:-5s}
SLO_SEED=${SLO_SEED:-"p99<500ms,errors<0.1%"}
SLO_TENX=${SLO_TENX:-"p99<3s,errors<0.5%"}
OUT=${OUT:-bench/out/quickstart-$(date -u +%Y%m%dT%H%M%SZ)}
SERVER_CPUS=${SERVER_CPUS:-}
CLIENT_CPUS=${CLIENT_CPUS:-}

# Runs "$@" under taskset when the CPU list $1 is set. taskset execs, so $! stays the program's pid.
pinned() { local cpus=$1; shift; if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi; }

# The system this replaces: 1,100 users, 2,439 ops/s, 72.54 ms average.
SEED_OPS=2439
SEED_MEAN_MS=72.54

# summary_row PHASE: the phase's line of the summary table, from its summary.json.
summary_row() {
    jq -r --arg phase "$1" --argjson seed_ops "$SEED_OPS" '
        def r(n): (. * pow(10; n) | round) / pow(10; n);
        [$phase, .model,
         (if .rate.target_rps then (.rate.target_rps | round | tostring) else "-" end),
         (.rate.achieved_rps | round | tostring),
         ((.rate.achieved_rps / $seed_ops) | r(1) | tostring) + "x",
         (.overall.latency_ms | .p50, .p99, .max, .mean | r(2) | tostring),
         "\(.overall.errors) (\(.overall.error_rate * 100 | r(3))%)",
         (if (.slo | length) == 0 then "reported only"
          elif all(.slo[]; .met) then "met"
          else "missed: " + ([.slo[] | select(.met | not) | "\(.objective) (was \(.observed))"] | join(", "))
          end)]
        | "| " + join(" | ") + " |"' "$OUT/$1/summary.json"
}

# write_summary: the three phases against the seed, as Markdown.
write_summary() {
    echo "## Quick-start against the seed ($USERS users; seed: 1,100 users, $SEED_OPS ops/s, $SEED_MEAN_MS ms average)"
    echo
    echo "| phase | model | asked req/s | achieved req/s | vs seed's $SEED_OPS ops/s | p50 ms | p99 ms | max ms | mean ms | errors | objective |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    local phase
    for phase in 1-seed-rate 2-ten-x 3-capacity; do
        if [ -f "$OUT/$phase/summary.json" ]; then summary_row "$phase"; else echo "| $phase | not run |"; fi
    done
    echo
    echo "Latency counts from each request's intended send time in the open phases (coordinated"
    echo "omission corrected). Objectives: 1-seed-rate \`$SLO_SEED\`, 2-ten-x \`$SLO_TENX\`."
    [ -f "$OUT/3-capacity/summary.json" ] && jq -r --argjson seed_ops "$SEED_OPS" \
        --argjson seed_mean "$SEED_MEAN_MS" '
        def r(n): (. * pow(10; n) | round) / pow(10; n);
        "Capacity (closed, no think time): \(.rate.achieved_rps | round) ops/s, " +
        "\(.rate.achieved_rps / $seed_ops | r(1))x the seed; mean \(.overall.latency_ms.mean | r(2)) ms " +
        "against the seed'"'"'s \($seed_mean) ms at \($seed_ops) ops/s."' "$OUT/3-capacity/summary.json"
    [ -f "$OUT/2-ten-x/summary.json" ] && jq -r --argjson seed_mean "$SEED_MEAN_MS" '
        def r(n): (. * pow(10; n) | round) / pow(10; n);
        "At 10x the seed'"'"'s rate: mean \(.overall.latency_ms.mean | r(2)) ms, " +
        "\($seed_mean / .overall.latency_ms.mean | r(1))x lower than the seed'"'"'s \($seed_mean) ms average."' \
        "$OUT/2-ten-x/summary.json"
    return 0
}

echo "== building (release)"
cargo build --release -p coinbit -p loadgen

mkdir -p "$OUT"
export PG_PORT=${PG_PORT:-25432} PG_REPLICAS=${PG_REPLICAS:-3}
cluster=tests/pg/cluster.sh
db_was_up=0
"$cluster" status >/dev/null 2>&1 && db_was_up=1
echo "== PostgreSQL: primary on $PG_PORT and $PG_REPLICAS streaming replicas"
"$cluster" up
server=""
stop() {
    [ -n "$server" ] && { kill -INT "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; }
    if [ "$db_was_up" = 0 ]; then "$cluster" down >/dev/null || true; fi
}
trap stop EXIT
# DATABASE_URL and DB_READ_REPLICA_1..n for the server.
while IFS= read -r line; do export "${line?}"; done < <("$cluster" env)

# The seed's user thresholds (warning 800, critical 950) are a production capacity alarm, and a
# critical alert makes /health and /readyz answer 503. This demo drives USERS (1,100) users on
# purpose, so it raises the thresholds above its own load: the alert stays armed for real overload
# (4x the demo) instead of failing every health probe of a run that is going well. Set them to
# see the alert fire.
export MONITORING_CONCURRENT_USERS_WARNING=${MONITORING_CONCURRENT_USERS_WARNING:-$((USERS * 2))}
export MONITORING_CONCURRENT_USERS_CRITICAL=${MONITORING_CONCURRENT_USERS_CRITICAL:-$((USERS * 4))}
# Every new user in the mix also writes a durable welcome job, which the dispatchers claim and
# finish on the primary: with the read-tuned default of 2 connections per node the primary's
# pool queued past its bound (create_user p99 366 ms, 50 answers 503 in a 30 s run); 4 keeps
# the writes and the job bookkeeping flowing (p99 79 ms overall, 0 errors).
export DB_POOL_SIZE=${DB_POOL_SIZE:-4}
# At 10x the seed's rate the primary's 1,024-job wait queue (the server default) filled in bursts
# while the other CPUs' tenants took the host, and create_user answered 503 database_busy (0.5 %
# of all requests, 13 % of the creates). Here at most USERS requests are in flight, so a queue of
# twice that sheds nothing the test itself could clear; a real overload still gets its 503s.
export DB_QUEUE_SIZE=${DB_QUEUE_SIZE:-$((USERS * 2))}
echo "== starting coinbit on port $PORT (pool $DB_POOL_SIZE per node, queue $DB_QUEUE_SIZE; user alerts at $MONITORING_CONCURRENT_USERS_WARNING/$MONITORING_CONCURRENT_USERS_CRITICAL)"
server_cmd=(target/release/coinbit --port "$PORT")
[ -n "$SERVER_CPUS" ] && server_cmd=(taskset -c "$SERVER_CPUS" "${server_cmd[@]}")
"${server_cmd[@]}" >"$OUT/server.log" 2>&1 &
server=$!
wait_for_listening "$OUT/server.log" "$server"
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 || true
# The mix reads users 1..10,000 ({{user_id}}); the server created the table at start-up.
"$cluster" sql primary "INSERT INTO users (id, name, email)
    SELECT g, 'User ' || g, 'user' || g || '@seed.example.com' FROM generate_series(1, 10000) g
    ON CONFLICT DO NOTHING;
    SELECT setval('users_id_seq', greatest((SELECT max(id) FROM users), 10000))" >/dev/null
for i in $(seq 1 "$PG_REPLICAS"); do
    for _ in $(seq 100); do
        [ "$("$cluster" sql "replica$i" "SELECT count(*) FROM users WHERE id = 10000")" = 1 ] && break
        sleep 0.1
    done
done

# run_phase NAME SLO LOADGEN_ARGS...: one loadgen run on the built-in mix into $OUT/NAME, judged
# by SLO when it is not empty. Sets phase_status to loadgen's exit code.
run_phase() {
    local name=$1 slo=$2; shift 2
    # The mix's GET /api/users/{id} answers the user or staff: it reads as staff.
    local args=(--out "$OUT/$name" -H "$OPERATOR_HEADER" "$@")
    [ -n "$slo" ] && args+=(--slo "$slo")
    echo "== loadgen, phase $name: $*${slo:+, objective $slo}"
    phase_status=0
    pinned "$CLIENT_CPUS" target/release/loadgen "${args[@]}" "http://127.0.0.1:$PORT" || phase_status=$?
}

# The open phases sleep until each send instead of busy-polling the last 50 us before it
# (loadgen's default): at 24,390 req/s over two client threads a send is due every ~80 us, so
# spinning would keep one of this host's two CPUs busy in the client, away from the server and
# PostgreSQL. Sends may leave a little late; the lateness counts in the corrected latency.
open_model=(-c "$USERS" --spin 0ms)
status=0
# judged PHASE_EXIT: folds a judged phase's exit code into the script's: 1 (a failed step) wins
# over 3 (an objective missed).
judged() { if [ "$1" != 0 ] && [ "$status" != 1 ]; then status=$1; fi; }
run_phase 1-seed-rate "$SLO_SEED" --rate "$SEED_RATE" "${open_model[@]}" -d "$DURATION"
judged "$phase_status"
# Ten times the load arrives over RAMP, then holds for DURATION: a step from 2,439 to 24,390 req/s
# in one instant overflowed the primary's write queue (create_user answered 503 "busy") and the
# backlog it left never drained at a rate this close to the shared host's capacity.
run_phase 2-ten-x "$SLO_TENX" --rate "$TENX_RATE" --stages "$RAMP:$TENX_RATE,$DURATION:$TENX_RATE" "${open_model[@]}"
judged "$phase_status"
run_phase 3-capacity "" -u "$USERS" -d "$DURATION"
[ "$phase_status" = 0 ] || status=1

echo "== server's own view after the run"
# With the operator token (bench/common.sh exports OPERATOR_TOKEN, which the server read): these
# reports answer it under METRICS_ACCESS=operator too.
curl -fsS -H "$OPERATOR_HEADER" "http://127.0.0.1:$PORT/api/enterprise/metrics" >"$OUT/server-metrics.json" 2>/dev/null \
    && echo "server metrics: $OUT/server-metrics.json"
curl -fsS -H "$OPERATOR_HEADER" "http://127.0.0.1:$PORT/api/enterprise/cluster/status" >"$OUT/cluster-status.json" 2>/dev/null \
    && echo "cluster status (database nodes, requests per replica): $OUT/cluster-status.json"
write_summary >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
echo
echo "HDR reports: $OUT/<phase>/report.html (percentile plot and timeline), *.hgrm, summary.json"
echo "exit code $status (0: objectives met, 3: one missed, 1: a step failed)"
exit "$status"
