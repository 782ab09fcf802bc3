#!/usr/bin/env bash
# bench/ledger.sh — money through the API against PostgreSQL's own TPC-B on the same cluster and
# client count.
#
# Brings up the local primary and one replica (tests/pg/cluster.sh), makes USERS users (BRL)
# with sessions and a large real balance, an operator, then, ROUNDS times, one after the other:
#   1. pgbench -b tpcb-like on the primary: the reference (one transaction, one fsync each);
#   2. uniform: POST withdrawals by random users (each a hold of two pending transfers on the
#      user's own row: nothing shared but the ledger's tables);
#   3. hot: POST commissions for random users (operator): every transfer credits the one BRL
#      revenue account;
#   4. idempotent replay: each connection repeats one commission with its own fixed key (the
#      first applies, the rest answer the stored outcome);
#   5. reads: GET balances (the caller's, on the replica) vs GET /api/users/{id} (plain row, as
#      staff with the operator token: no session looked up) and GET /api/auth/me (the same
#      sessions: what authentication costs);
#   6. the replay, the withdrawals and the balance read again at a fixed rate (open model:
#      REPLAY_RATE, by default the 2,439 ops/s the replaced system claimed, UNIFORM_RATE, half
#      what a quiet 2-CPU host sustains, and READ_RATE, about a third): their p99 at a stated
#      load. In the closed loop of 2. to 5. every request waits behind the others' (CLIENTS in
#      flight at saturation), so a p99 there is the host's queue, whatever the request. Below
#      saturation a balance read that finds its session's cache entry expired waits for a
#      lookup on the primary (AUTH_CACHE_TTL): that wait shows in the fixed-rate p99.
# It prints each run's req/s and transfers/s (medians over the rounds), p99, and the ratios the
# issue asks for: uniform transfers/s vs pgbench tps (goal >= 5x), hot vs uniform (>= 0.5x),
# replay p99 (< 5 ms), withdrawal p99 (< 50 ms), balances vs user read (>= 0.8x). A run with errors (an answer other than
# the scenario's status, socket errors, pgbench's failed transactions) is INVALID and the script
# exits 2 after its table (bench/common.sh, "valid cells"). Then, for round 1's runs, what the
# primary ran per request (pg_stat_statements, reset before each run): where a request's
# database time goes.
# On a small host clients, server and PostgreSQL share the CPUs: compare ratios, not rates.
#
# Usage: bench/ledger.sh
# Environment (all optional):
#   ROUNDS=3  CLIENTS=32  DURATION=15  USERS=1000  PORT=18400  PG_PORT=25700  POOL=8  BUILD=1
#   REPLAY_RATE=2439  UNIFORM_RATE=400  READ_RATE=5000  COINBIT=target/release/coinbit  LOADGEN=target/release/loadgen
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

pgbench_bench_settings 18400 8 25700 1
USERS=${USERS:-1000}
[ "$USERS" -ge 1 ] && [ "$USERS" -le 8999 ] || { echo "ledger: USERS is 1 to 8999" >&2; exit 1; }
REPLAY_RATE=${REPLAY_RATE:-2439}
UNIFORM_RATE=${UNIFORM_RATE:-400}
READ_RATE=${READ_RATE:-5000}
[[ "$REPLAY_RATE" =~ ^[1-9][0-9]*$ && "$UNIFORM_RATE" =~ ^[1-9][0-9]*$ && "$READ_RATE" =~ ^[1-9][0-9]*$ ]] ||
    { echo "ledger: REPLAY_RATE, UNIFORM_RATE and READ_RATE are whole requests per second" >&2; exit 1; }

[ "$BUILD" = 1 ] && cargo build --release -q -p coinbit -p loadgen
fresh_pg_cluster ledger-bench

start_server() {
    "$COINBIT" --bind-address 127.0.0.1 --port "$PORT" --pool-size "$POOL" \
        --withdrawal-auto-approve-below BRL:0,USD:0 >"$tmp/server.log" 2>&1 &
    server_pid=$!
    wait_for_listening "$tmp/server.log" "$server_pid"
}

# The schema from the server's migrations; users 1000..$last with sessions and money, user 999
# the operator (bench/common.sh, "money users").
start_server
stop_server
last=$((999 + USERS))
"$cluster" sql primary "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
seed_money_users 999 "$last"
"$pg_bin/pgbench" -q -i -s 1 "$DATABASE_URL" >/dev/null 2>&1

operator="Bearer $(printf '%064d' 999)"
user_pick="{{rand:1000:$last}}"
user_auth="Bearer $BENCH_TOKEN_ZEROS$user_pick"
cat >"$tmp/uniform.toml" <<EOF
[[requests]]
name = "withdrawal"
method = "POST"
path = "/api/enterprise/financial/withdrawals"
headers = { authorization = "$user_auth", idempotency-key = "{{uuid}}" }
body = '{"amount":5000,"bank":{"holder":"Bench","account":"1"}}'
expect = 201
EOF
cat >"$tmp/hot.toml" <<EOF
[[requests]]
name = "commission"
method = "POST"
path = "/api/enterprise/financial/commissions"
headers = { authorization = "$operator", idempotency-key = "{{uuid}}" }
body = '{"user_id":$user_pick,"position_id":"{{uuid}}","profit":1000,"profit_currency":"BRL"}'
expect = 201
EOF
cat >"$tmp/replay.toml" <<EOF
[[requests]]
name = "commission_replay"
method = "POST"
path = "/api/enterprise/financial/commissions"
headers = { authorization = "$operator", idempotency-key = "replay-{{vu}}" }
body = '{"user_id":1000,"position_id":"replay-{{vu}}","profit":1000,"profit_currency":"BRL"}'
expect = 201
EOF
cat >"$tmp/balances.toml" <<EOF
[[requests]]
name = "balances"
path = "/api/enterprise/financial/balances"
headers = { authorization = "$user_auth" }
expect = 200
EOF
cat >"$tmp/me.toml" <<EOF
[[requests]]
name = "me"
path = "/api/auth/me"
headers = { authorization = "$user_auth" }
expect = 200
EOF
# The fixed-rate runs send the same requests (the replay's keys exist by then: every one replays).
cp "$tmp/replay.toml" "$tmp/replay_fixed.toml"
cp "$tmp/uniform.toml" "$tmp/uniform_fixed.toml"
cp "$tmp/balances.toml" "$tmp/balances_fixed.toml"
# GET /api/users/{id} answers the user or staff: it goes as staff, with the operator token (one
# digest compared on the shard, no session looked up), as bench/pg_reads.sh reads it.
cat >"$tmp/users.toml" <<EOF
headers = { authorization = "Bearer $OPERATOR_TOKEN" }
[[requests]]
name = "get_user"
path = "/api/users/$user_pick"
expect = 200
EOF

pgbench_case() {
    local tps failed
    "$pg_bin/pgbench" -n -b tpcb-like -c "$CLIENTS" -j 2 -T "$DURATION" -r "$DATABASE_URL" \
        >"$tmp/pgbench.out" 2>&1 || { echo "pgbench failed:" >&2; cat "$tmp/pgbench.out" >&2; exit 1; }
    tps=$(awk '/^tps/ {print int($3)}' "$tmp/pgbench.out")
    failed=$(awk '/^number of failed transactions:/ {print $5}' "$tmp/pgbench.out")
    # TPC-B moves one amount between an account, a teller and a branch: one transfer each.
    record "pgbench -b tpcb-like (primary)" "${tps:-0}" 1 \
        "$(awk '/latency average/ {print $4}' "$tmp/pgbench.out") avg" \
        "$([ -z "$tps" ] && echo "no result")$([ "${failed:-0}" != 0 ] && echo "$failed failed transactions")"
}

# ledger_case NAME SCENARIO TRANSFERS_PER_REQUEST: loadgen_case, and in round 1 what the primary
# ran for it.
ledger_case() {
    [ "$round" = 1 ] && "$cluster" sql primary "SELECT pg_stat_statements_reset()" >/dev/null
    loadgen_case "$@"
    [ "$round" = 1 ] && statements "$1" "$(answered "$tmp/$2-$round.json")"
    return 0
}

# statements NAME REQUESTS: what the primary ran for a run of round 1 (pg_stat_statements, reset
# before it): statements per request, and the busiest by calls, into $tmp/statements.md.
statements() {
    local n=$2
    {
        "$cluster" sql primary "
            SELECT '#### $1: ' || round(sum(calls)::numeric / $n, 1)
                   || ' statements per request on the primary, '
                   || round(sum(total_exec_time)::numeric / $n, 3) || ' ms executing'
            FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'"
        echo
        echo "| per request | mean ms | statement |"
        echo "|---:|---:|---|"
        "$cluster" sql primary "
            SELECT '| ' || round(calls::numeric / $n, 2) || ' | '
                   || round(mean_exec_time::numeric, 3) || ' | '
                   || regexp_replace(left(query, 100), '[|[:space:]]+', ' ', 'g') || ' |'
            FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
            ORDER BY calls DESC LIMIT 16"
        echo
    } >>"$tmp/statements.md"
}

echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $CLIENTS clients, ${DURATION}s each, $ROUNDS rounds, $USERS users, pool $POOL/node, one replica (figures: medians over the rounds)"
echo
U="uniform: POST withdrawals (2 pending transfers each, own rows)"
H="hot: POST commissions (1 transfer each, all credit revenue BRL)"
R="idempotent replay: POST commissions, one key per connection"
B="GET balances (replica)"
M="GET /api/auth/me (the same sessions, primary)"
G="GET /api/users/{id} (operator token, replica)"
RF="idempotent replay at $REPLAY_RATE req/s (fixed rate)"
UF="uniform: POST withdrawals at $UNIFORM_RATE req/s (fixed rate)"
BF="GET balances at $READ_RATE req/s (fixed rate)"
declare -A READ_SPREAD
for ((round = 1; round <= ROUNDS; round++)); do
    echo "ledger: round $round of $ROUNDS" >&2
    pgbench_case
    start_server
    ledger_case "$U" uniform 2
    ledger_case "$H" hot 1
    ledger_case "$R" replay 0
    ledger_case "$B" balances 0
    ledger_case "$M" me 0
    ledger_case "$G" users 0
    ledger_case "$RF" replay_fixed 0 -R "$REPLAY_RATE"
    ledger_case "$UF" uniform_fixed 2 -R "$UNIFORM_RATE"
    ledger_case "$BF" balances_fixed 0 -R "$READ_RATE"
    READ_SPREAD["$BF|$round"]=$(json "$tmp/balances_fixed-$round.json" \
        "'%.2f / %.2f' % (d['overall']['latency_ms']['p50'], d['overall']['latency_ms']['p90'])")
    stop_server
done

rounds_table
echo
P="pgbench -b tpcb-like (primary)"
echo "| ratio | value | goal |"
echo "|---|---:|---|"
echo "| uniform transfers/s vs pgbench tps | $(ratio ROUND_XFER "$U" "$P") | >= 5x |"
echo "| uniform requests/s vs pgbench tps | $(ratio ROUND_RATE "$U" "$P") | |"
echo "| hot transfers/s vs uniform transfers/s | $(ratio ROUND_XFER "$H" "$U") | >= 0.5x |"
echo "| balances via replica vs plain user read | $(ratio ROUND_RATE "$B" "$G") | >= 0.8x |"
echo "| balances via replica vs /auth/me (same authentication) | $(ratio ROUND_RATE "$B" "$M") | |"
echo "| idempotent replay p99 (ms, per round), closed loop at saturation | $(per_round ROUND_P99 "$R" | paste -sd/) | < 5 |"
echo "| idempotent replay p99 (ms, per round) at $REPLAY_RATE req/s | $(per_round ROUND_P99 "$RF" | paste -sd/) | < 5 |"
echo "| withdrawal p99 (ms, per round), closed loop at saturation | $(per_round ROUND_P99 "$U" | paste -sd/) | < 50 |"
echo "| withdrawal p99 (ms, per round) at $UNIFORM_RATE req/s | $(per_round ROUND_P99 "$UF" | paste -sd/) | < 50 |"
echo "| balances p50 / p90 (ms, per round) at $READ_RATE req/s | $(per_round READ_SPREAD "$BF" | paste -sd';') | |"
echo "| balances p99 (ms, per round) at $READ_RATE req/s | $(per_round ROUND_P99 "$BF" | paste -sd/) | |"
echo
echo "What the primary ran (round 1; pg_stat_statements):"
echo
cat "$tmp/statements.md"
exit_if_invalid ledger
