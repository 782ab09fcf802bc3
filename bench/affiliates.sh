#!/usr/bin/env bash
# bench/affiliates.sh — what affiliates cost: commission events that pay a referrer's share
# against plain commission events, and the affiliate dashboard against the plain user read.
#
# Brings up the local primary and one replica (tests/pg/cluster.sh), makes 2 x USERS traders
# (BRL, with sessions and money: bench/common.sh, "money users") and AFFILIATES affiliates
# (1.5 %); the first USERS traders are referred by them (round robin), the others by no one.
# Then, ROUNDS times, one after the other on one server:
#   1. plain: POST commissions (operator) for a random unreferred trader: the charge, one
#      transfer to revenue;
#   2. with shares: the same for a random referred trader: the charge, plus the referrer's
#      share (a pending transfer in the charge's group and its earnings row);
#   3. GET /api/users/{id} of a random trader, as the operator's session (staff);
#   4. GET /api/enterprise/affiliate/dashboard as a random affiliate's session (a read on the
#      replica, over the shares made so far).
# It prints each run's req/s (medians over the rounds), p99, and the ratios the issue asks
# for: with shares vs plain (goal >= 0.8x), dashboard vs user read (goal >= 0.8x), and what
# the primary wrote to its WAL per event in round 1's write runs (pg_stat_wal). A run with
# errors is INVALID and the script exits 2 after its table (bench/common.sh, "valid cells").
# On a small host clients, server and PostgreSQL share the CPUs: compare ratios, not rates.
#
# Usage: bench/affiliates.sh
# Environment (all optional):
#   ROUNDS=3  CLIENTS=32  DURATION=15  USERS=1000  AFFILIATES=100  PORT=18500  PG_PORT=25800
#   POOL=8  BUILD=1  COINBIT=target/release/coinbit  LOADGEN=target/release/loadgen
#   (BUILD=0 COINBIT=target/debug/coinbit LOADGEN=target/debug/loadgen: a debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

pgbench_bench_settings 18500 8 25800 1
USERS=${USERS:-1000}
AFFILIATES=${AFFILIATES:-100}
[ "$USERS" -ge 1 ] && [ "$AFFILIATES" -ge 1 ] && [ $((2 * USERS + AFFILIATES)) -le 8999 ] ||
    { echo "affiliates: 2 x USERS + AFFILIATES is 3 to 8999" >&2; exit 1; }

[ "$BUILD" = 1 ] && cargo build --release -q -p coinbit -p loadgen
fresh_pg_cluster affiliates-bench

# The affiliate sweep off: every share stays pending, as it would for days.
start_server() {
    "$COINBIT" --bind-address 127.0.0.1 --port "$PORT" --pool-size "$POOL" \
        --affiliate-sweep-interval 0 >"$tmp/server.log" 2>&1 &
    server_pid=$!
    wait_for_listening "$tmp/server.log" "$server_pid"
}

# Traders: referred 1000..$referred_last, plain ..$plain_last; affiliates ..$last, each with a
# code from its id (CBC and six letters of the codes' alphabet).
start_server
stop_server
referred_last=$((999 + USERS))
plain_last=$((referred_last + USERS))
last=$((plain_last + AFFILIATES))
seed_money_users 999 "$last"
"$cluster" sql primary "
    UPDATE users SET role = 'affiliate' WHERE id > $plain_last;
    INSERT INTO affiliates (user_id, code, share_bp)
        SELECT g, 'CBC' || lpad(translate(g::text, '0123456789', 'ABCDEFGHJK'), 6, 'A'), 150
        FROM generate_series($plain_last + 1, $last) g;
    INSERT INTO affiliate_referrals (referred_user_id, affiliate_user_id)
        SELECT g, $plain_last + 1 + (g % $AFFILIATES) FROM generate_series(1000, $referred_last) g;" >/dev/null

operator="Bearer $(printf '%064d' 999)"
commission() { # FIRST LAST: a commission event of a random trader in FIRST..LAST
    cat <<EOF
[[requests]]
name = "commission"
method = "POST"
path = "/api/enterprise/financial/commissions"
headers = { authorization = "$operator", idempotency-key = "{{uuid}}" }
body = '{"user_id":{{rand:$1:$2}},"position_id":"{{uuid}}","profit":10000,"profit_currency":"BRL"}'
expect = 201
EOF
}
commission 1000 "$referred_last" >"$tmp/shares.toml"
commission $((referred_last + 1)) "$plain_last" >"$tmp/plain.toml"
cat >"$tmp/users.toml" <<EOF
[[requests]]
name = "get_user"
path = "/api/users/{{rand:1000:$plain_last}}"
headers = { authorization = "$operator" }
expect = 200
EOF
cat >"$tmp/dashboard.toml" <<EOF
[[requests]]
name = "dashboard"
path = "/api/enterprise/affiliate/dashboard"
headers = { authorization = "Bearer $BENCH_TOKEN_ZEROS{{rand:$((plain_last + 1)):$last}}" }
expect = 200
EOF

echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $CLIENTS clients, ${DURATION}s each, $ROUNDS rounds, 2 x $USERS traders, $AFFILIATES affiliates, pool $POOL/node, one replica, $COINBIT (figures: medians over the rounds)"
echo
P="plain: POST commissions, unreferred traders (1 transfer)"
S="with shares: POST commissions, referred traders (1 transfer + the share's)"
G="GET /api/users/{id} (operator session)"
D="GET affiliate/dashboard (affiliate session, replica)"
# wal_case NAME FILE TRANSFERS: a write run; in round 1, the WAL records and bytes the
# primary wrote per answered event (pg_stat_wal, reset before it) into $tmp/wal.md.
wal_case() {
    [ "$round" = 1 ] && "$cluster" sql primary "SELECT pg_stat_reset_shared('wal')" >/dev/null
    loadgen_case "$@"
    [ "$round" = 1 ] || return 0
    local n
    n=$(answered "$tmp/$2-$round.json")
    echo "| $1 | $("$cluster" sql primary "
        SELECT round(wal_records::numeric / $n, 1) || ' | '
               || round(wal_bytes::numeric / $n) || ' | '
               || round(wal_fpi::numeric / $n, 2)
        FROM pg_stat_wal") |" >>"$tmp/wal.md"
}

start_server
for ((round = 1; round <= ROUNDS; round++)); do
    echo "affiliates: round $round of $ROUNDS" >&2
    wal_case "$P" plain 1
    wal_case "$S" shares 2
    loadgen_case "$G" users 0
    loadgen_case "$D" dashboard 0
done
stop_server

rounds_table
echo
shares=$("$cluster" sql primary "SELECT count(*) FROM affiliate_earnings")
echo "shares made: $shares ($((shares / AFFILIATES)) per affiliate, read by each dashboard at the end)"
echo
echo "| ratio | value | goal |"
echo "|---|---:|---|"
echo "| commission events with shares vs plain (req/s) | $(ratio ROUND_RATE "$S" "$P") | >= 0.8x |"
echo "| dashboard (replica) vs plain user read (req/s) | $(ratio ROUND_RATE "$D" "$G") | >= 0.8x |"
echo
echo "What the primary wrote to its WAL per event (round 1; pg_stat_wal):"
echo
echo "| run | records | bytes | full-page images |"
echo "|---|---:|---:|---:|"
cat "$tmp/wal.md"
exit_if_invalid affiliates
