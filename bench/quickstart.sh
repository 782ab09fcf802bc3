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
#   4. trading    the product's traffic (loadgen's builtin:trading): TRADING_USERS users (100),
#                 each registered, logged in and with an exchange account on the bundled
#                 exchange simulator (20 ms a call), read their balances, positions and
#                 settings and change their leverage, while TradingView signals arrive among
#                 them (1 request in 86) and fan out to every user: positions open and close on
#                 the simulator and profitable closes are charged. Open model at TRADING_RATE
#                 (500 req/s); judged by SLO_TRADING. The summary adds, from the database, what
#                 the signals came to and signal-to-order latency (a signal's arrival to its
#                 order's answer) beside the HTTP latencies.
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
#   TRADING_USERS=100  TRADING_RATE=500  SLO_TRADING="p99<500ms,errors<0.1%"  SIM_PORT=3001
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
TRADING_USERS=${TRADING_USERS:-100}
TRADING_RATE=${TRADING_RATE:-500}
SLO_TRADING=${SLO_TRADING:-"p99<500ms,errors<0.1%"}
SIM_PORT=${SIM_PORT:-$((PORT + 1))}
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
    for phase in 1-seed-rate 2-ten-x 3-capacity 4-trading; do
        if [ -f "$OUT/$phase/summary.json" ]; then summary_row "$phase"; else echo "| $phase | not run |"; fi
    done
    echo
    echo "Latency counts from each request's intended send time in the open phases (coordinated"
    echo "omission corrected). Objectives: 1-seed-rate \`$SLO_SEED\`, 2-ten-x \`$SLO_TENX\`,"
    echo "4-trading \`$SLO_TRADING\`."
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
    [ -f "$OUT/trading.md" ] && { echo; cat "$OUT/trading.md"; }
    return 0
}

# trading_report: what phase 4's signals came to, from the primary, once every intent settled
# (bounded): signals, intents by state, positions, commissions, and signal-to-order latency
# (an intent's done_at less its signal's received_at, for those that reached the exchange).
trading_report() {
    local waited=0
    while [ "$("$cluster" sql primary "SELECT count(*) FROM order_intents WHERE state IN ('pending', 'placing')")" != 0 ] \
        && [ "$waited" -lt 120 ]; do
        sleep 1; waited=$((waited + 1))
    done
    echo "## Trading (phase 4): what the signals came to"
    echo
    echo "| signals | intents | placed (opens) | closed | skipped by the limits | expired | rejected | unsettled | signal-to-order p50 ms | p99 ms | max ms |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    "$cluster" sql primary "
        SELECT '| ' || concat_ws(' | ',
            (SELECT count(*) FROM trading_signals WHERE received_at >= '$trading_since'), count(*),
            count(*) FILTER (WHERE i.state = 'placed'), count(*) FILTER (WHERE i.state = 'closed'),
            count(*) FILTER (WHERE i.state = 'skipped'), count(*) FILTER (WHERE i.state = 'expired'),
            count(*) FILTER (WHERE i.state = 'rejected'),
            count(*) FILTER (WHERE i.state IN ('pending', 'placing')),
            coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY lat) FILTER (WHERE lat IS NOT NULL))::text, '-'),
            coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY lat) FILTER (WHERE lat IS NOT NULL))::text, '-'),
            coalesce(round(max(lat))::text, '-')) || ' |'
        FROM (SELECT i.state, CASE WHEN i.state IN ('placed', 'closed')
                  THEN extract(epoch FROM i.done_at - s.received_at) * 1000 END AS lat
              FROM order_intents i JOIN trading_signals s ON s.id = i.signal_id
              WHERE s.received_at >= '$trading_since') i"
    echo
    "$cluster" sql primary "
        SELECT 'Positions: ' || count(*) FILTER (WHERE state = 'open') || ' open, ' ||
               count(*) FILTER (WHERE state = 'closed') || ' closed (' ||
               count(*) FILTER (WHERE state = 'closed' AND profit > 0) || ' at a profit, ' ||
               count(*) FILTER (WHERE closed_by IN ('stop_loss', 'take_profit')) ||
               ' by their stop-loss or take-profit); ' ||
               (SELECT count(*) FROM commission_charges WHERE charged_at >= '$trading_since') ||
               ' commissions charged (' || (SELECT coalesce(sum(commission), 0) FROM commission_charges
                   WHERE charged_at >= '$trading_since') || ' in minor units); most open for one user: ' ||
               coalesce((SELECT max(n) FROM (SELECT count(*) AS n FROM trading_positions
                         WHERE state IN ('opening', 'open') AND opened_at >= '$trading_since'
                         GROUP BY user_id) m), 0) ||
               ' (the limit is 2). Ledger check: ' ||
               CASE WHEN (SELECT count(*) FROM ledger_accounts WHERE user_id IS NOT NULL AND balance < 0) = 0
                    THEN 'no negative user balance.' ELSE 'NEGATIVE USER BALANCES.' END
        FROM trading_positions WHERE opened_at >= '$trading_since'"
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
sim=""
stop() {
    [ -n "$server" ] && { kill -INT "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; }
    [ -n "$sim" ] && { kill "$sim" 2>/dev/null && wait "$sim" 2>/dev/null || true; }
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
# Trading: the bundled exchange simulator as the exchange (20 ms before each answer, about a
# real exchange's round trip; prices walking by up to 0.05 % every 100 ms, so that positions win
# and lose), open to any key so that each of phase 4's users brings its own;
# a signal secret and a secrets key (the exchange secrets sealed at rest) for this run.
echo "== exchange-sim on port $SIM_PORT"
target/release/exchange-sim --bind "127.0.0.1:$SIM_PORT" --latency-ms 20 --price-walk-bp 5 \
    --any-account "loadgen-exchange-secret:1000.00" >"$OUT/exchange-sim.log" 2>&1 &
sim=$!
for _ in $(seq 100); do grep -q "listening on" "$OUT/exchange-sim.log" && break; sleep 0.1; done
grep -q "listening on" "$OUT/exchange-sim.log" || { echo "exchange-sim did not start:" >&2; cat "$OUT/exchange-sim.log" >&2; exit 1; }
export SIGNAL_WEBHOOK_SECRET=${SIGNAL_WEBHOOK_SECRET:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
export SECRETS_KEY=${SECRETS_KEY:-1:$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}
export EXCHANGE_BASE_URL="http://127.0.0.1:$SIM_PORT"
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

# run_phase NAME SLO LOADGEN_ARGS...: one loadgen run into $OUT/NAME, judged by SLO when it is
# not empty. Sets phase_status to loadgen's exit code.
run_phase() {
    local name=$1 slo=$2; shift 2
    local args=(--out "$OUT/$name" "$@")
    [ -n "$slo" ] && args+=(--slo "$slo")
    local shown="$*"
    shown=${shown//$OPERATOR_TOKEN/<operator token>}
    shown=${shown//$SIGNAL_WEBHOOK_SECRET/<signal secret>}
    echo "== loadgen, phase $name: $shown${slo:+, objective $slo}"
    phase_status=0
    pinned "$CLIENT_CPUS" target/release/loadgen "${args[@]}" "http://127.0.0.1:$PORT" || phase_status=$?
}

# The open phases sleep until each send instead of busy-polling the last 50 us before it
# (loadgen's default): at 24,390 req/s over two client threads a send is due every ~80 us, so
# spinning would keep one of this host's two CPUs busy in the client, away from the server and
# PostgreSQL. Sends may leave a little late; the lateness counts in the corrected latency.
open_model=(-c "$USERS" --spin 0ms)
# The built-in mix's GET /api/users/{id} answers the user or staff: phases 1-3 read as staff.
# (Phase 4's users send their own sessions.)
staff=(-H "$OPERATOR_HEADER")
status=0
# judged PHASE_EXIT: folds a judged phase's exit code into the script's: 1 (a failed step) wins
# over 3 (an objective missed).
judged() { if [ "$1" != 0 ] && [ "$status" != 1 ]; then status=$1; fi; }
run_phase 1-seed-rate "$SLO_SEED" "${staff[@]}" --rate "$SEED_RATE" "${open_model[@]}" -d "$DURATION"
judged "$phase_status"
# Ten times the load arrives over RAMP, then holds for DURATION: a step from 2,439 to 24,390 req/s
# in one instant overflowed the primary's write queue (create_user answered 503 "busy") and the
# backlog it left never drained at a rate this close to the shared host's capacity.
run_phase 2-ten-x "$SLO_TENX" "${staff[@]}" --rate "$TENX_RATE" --stages "$RAMP:$TENX_RATE,$DURATION:$TENX_RATE" "${open_model[@]}"
judged "$phase_status"
run_phase 3-capacity "" "${staff[@]}" -u "$USERS" -d "$DURATION"
[ "$phase_status" = 0 ] || status=1
# Phase 4 counts from here: the load users of earlier runs (whose secrets were sealed under
# their run's SECRETS_KEY) no longer receive signals, and the report reads this run's only.
"$cluster" sql primary "UPDATE exchange_accounts SET deleted_at = now()
    WHERE deleted_at IS NULL AND api_key LIKE 'loadgen-%'" >/dev/null
trading_since=$("$cluster" sql primary "SELECT now()")
run_phase 4-trading "$SLO_TRADING" -s builtin:trading -H "X-Signal-Secret: $SIGNAL_WEBHOOK_SECRET" \
    --rate "$TRADING_RATE" -c "$TRADING_USERS" --spin 0ms -d "$DURATION"
judged "$phase_status"
trading_report >"$OUT/trading.md"

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
