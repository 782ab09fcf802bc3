#!/usr/bin/env bash
# bench/pg_reads.sh — the read endpoint through HTTP against PostgreSQL's own client on the same
# cluster and client count.
#
# Brings up the local primary and replicas (tests/pg/cluster.sh), creates users 1..10,000, then,
# one after the other on the same machine:
#   1. pgbench -S (select-only TPC-B, simple protocol) against replica1: the reference;
#   2. pgbench with the endpoint's query (prepared, as the server sends it; the timestamp
#      unformatted: pgbench would take to_char's `:MI` for a variable) against replica1;
#   3. loadgen GET /api/users/{{user_id}} on coinbit, which reads from the three replicas;
#   4. the same, with the server's database pool at PG_POOL2 connections per node;
#   5. with BEFORE=path/to/an/older/coinbit, steps 3 and 4 on that binary too, and step 6's
#      wire run (before/after in one run);
#   6. step 3 on glommio (threads), then with DB_READ_DRIVER=wire (glommio only): each shard
#      reads over its own connections on its event loop (src/db/wire) instead of the DB I/O
#      threads (threads vs wire vs pgbench in one run, on the same engine);
# then what group commit buys: loadgen POST /api/enterprise/jobs (a durable job: one row into the
# outbox on the primary) with DB_GROUP_COMMIT=1 (one transaction per write) and 16; all of it
# ROUNDS times. (Until 2026-12-06 the write was POST /api/users; that is now registration, whose
# Argon2id hash on the password threads, not the commit, bounds its rate. The server runs with
# its durable-job dispatcher off, so the jobs written are not also run.) It prints a markdown table of each run's rate
# (medians over the rounds) relative to pgbench -S and to pgbench on the endpoint's own query
# (the like-for-like figure), and one of the writes. A run with errors (loadgen answers other
# than the expected status, socket errors, pgbench's failed transactions) is INVALID and the
# script exits 2 after its tables (bench/common.sh, "valid cells").
# On a small host everything (clients, server, four PostgreSQL instances) shares the CPUs:
# the ratio, not the absolute rate, is the figure to compare.
#
# Usage: bench/pg_reads.sh
# Environment (all optional):
#   ROUNDS=3  CLIENTS=32  DURATION=15  PORT=18300  PG_PORT=25600  POOL=2  PG_POOL2=8  BUILD=1
#   COINBIT=target/release/coinbit  LOADGEN=target/release/loadgen  BEFORE=(unset)
#   WRITES=1 (0: the reads alone, no group-commit runs)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

pgbench_bench_settings 18300 2 25600 3
PG_POOL2=${PG_POOL2:-8}
BEFORE=${BEFORE:-}
WRITES=${WRITES:-1}

[ "$BUILD" = 1 ] && cargo build --release -q -p coinbit -p loadgen
fresh_pg_cluster pg-reads
replica1=postgres://postgres@127.0.0.1:$((PG_PORT + 1))/coinbit

start_server() {
    DB_READ_DRIVER=${DRIVER:-threads} "${BINARY:-$COINBIT}" --bind-address 127.0.0.1 --port "$PORT" --pool-size "$1" --group-commit "${2:-16}" \
        --engine "${ENGINE:-auto}" \
        --durable-jobs-poll-interval 0 \
        >"$tmp/server.log" 2>&1 &
    server_pid=$!
    wait_for_listening "$tmp/server.log" "$server_pid"
}

# The schema comes from the server's migrations; pgbench's tables from pgbench -i.
start_server "$POOL"
stop_server
"$cluster" sql primary "INSERT INTO users (id, name, email)
    SELECT g, 'User ' || g, 'user' || g || '@seed.example.com' FROM generate_series(1, 10000) g
    ON CONFLICT DO NOTHING;
    SELECT setval('users_id_seq', 10000)" >/dev/null
"$pg_bin/pgbench" -q -i -s 1 "$DATABASE_URL" >/dev/null 2>&1
# pgbench runs on replica1 and coinbit on all three: wait until each has replayed the load.
for i in 1 2 3; do
    for _ in $(seq 300); do
        [ "$("$cluster" sql "replica$i" "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM users)" 2>/dev/null)" = 110000 ] && break
        sleep 0.1
    done
done

cat >"$tmp/users.sql" <<'EOF'
\set id random(1, 10000)
SELECT id, name, email, created_at FROM users WHERE id = :id;
EOF
# GET /api/users/{id} answers the user or staff: the reads go as staff, with the operator token
# (one digest compared on the shard, no session lookup).
cat >"$tmp/users.toml" <<EOF
user_ids = 10000
headers = { authorization = "Bearer $OPERATOR_TOKEN" }
[[requests]]
name = "get_user"
path = "/api/users/{{user_id}}"
expect = 200
EOF

# Job enqueues are an operator's: the server inherits OPERATOR_TOKEN from bench/common.sh.
cat >"$tmp/writes.toml" <<EOF
[[requests]]
name = "durable_job"
method = "POST"
path = "/api/enterprise/jobs"
headers = { content-type = "application/json", authorization = "Bearer $OPERATOR_TOKEN" }
body = '{"kind":"notification","durable":true,"payload":{"user_id":{{user_id}},"channel":"email","message":"bench {{seq}}"}}'
expect = 202
EOF

# CPU, in clock ticks (1/100 s): a client from /usr/bin/time; coinbit from /proc (all its
# threads); PostgreSQL from each postmaster's own and its exited children's (the backends) time.
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }
pg_ticks() {
    local total=0 node pid
    for node in primary replica1 replica2 replica3; do
        pid=$(head -n 1 "$PG_DIR/$node/postmaster.pid")
        total=$((total + $(ticks "$pid")))
    done
    echo "$total"
}
client_ticks() { awk '{printf "%d", ($1 + $2) * 100}' "$tmp/client.time"; }

# Every run of every round, by "case|round": its rate, CPU per 1k requests (client, coinbit,
# PostgreSQL), a note, and what makes it invalid (bench/common.sh, "valid cells").
declare -A RATE=() CPU_CLIENT=() CPU_SERVER=() CPU_PG=() NOTE_OF=() PROBLEMS_OF=()
CASES=() # case names in the order they first ran
round=1

# record NAME RATE CLIENT_TICKS SERVER_TICKS PG_TICKS NOTE PROBLEMS
record() {
    local key="$1|$round" n
    [[ " ${CASES[*]} " == *" $1 "* ]] || CASES+=("$1")
    RATE[$key]=$2
    n=$(awk -v r="$2" -v d="$DURATION" 'BEGIN { print (r > 0 ? r * d / 1000 : 1) }')
    CPU_CLIENT[$key]=$(awk -v c="$3" -v n="$n" 'BEGIN { printf "%.0f", c * 10 / n }')
    CPU_SERVER[$key]=$(awk -v c="$4" -v n="$n" 'BEGIN { printf "%.0f", c * 10 / n }')
    CPU_PG[$key]=$(awk -v c="$5" -v n="$n" 'BEGIN { printf "%.0f", c * 10 / n }')
    NOTE_OF[$key]=$6
    PROBLEMS_OF[$key]=$7
    refuse_cell "$1, round $round" "$7" || true
}

# pgbench on replica1: "$1" names the run, the rest are pgbench's arguments.
pgbench_case() {
    local name=$1 before tps failed; shift
    before=$(pg_ticks)
    /usr/bin/time -f "%U %S" -o "$tmp/client.time" \
        "$pg_bin/pgbench" -n -c "$CLIENTS" -j 2 -T "$DURATION" "$@" "$replica1" >"$tmp/pgbench.out" 2>&1 ||
        { echo "pgbench failed:" >&2; cat "$tmp/pgbench.out" >&2; exit 1; }
    tps=$(awk '/^tps/ {print int($3)}' "$tmp/pgbench.out")
    failed=$(awk '/^number of failed transactions:/ {print $5}' "$tmp/pgbench.out")
    sleep 0.5 # the backends exit and are reaped
    record "$name" "${tps:-0}" "$(client_ticks)" 0 $(($(pg_ticks) - before)) "${NOTE:-}" \
        "$([ -z "$tps" ] && echo "no result")$([ "${failed:-0}" != 0 ] && echo "$failed failed transactions")"
}

# coinbit with a pool of $2 per node and group commit $3, loadgen on scenario $4; the rate
# counts only answers with the status the scenario expects.
http_case() {
    local name=$1 before server_cpu report=$tmp/loadgen-$round.json
    before=$(pg_ticks)
    start_server "$2" "$3"
    run_loadgen "$report" /usr/bin/time -f "%U %S" -o "$tmp/client.time" \
        "$LOADGEN" -c "$CLIENTS" -d "${DURATION}s" -s "$tmp/$4.toml" "http://127.0.0.1:$PORT"
    server_cpu=$(ticks "$server_pid")
    stop_server
    sleep 0.5
    record "$name" "$(ok_rps "$report")" "$(client_ticks)" "$server_cpu" $(($(pg_ticks) - before)) \
        "p99 $(printf '%.1f' "$(p99 "$report")") ms" "$(loadgen_problems "$report")"
}

# per_round MAP NAME: NAME's values in MAP, one per round.
per_round() {
    local -n map=$1
    local r
    for ((r = 1; r <= ROUNDS; r++)); do echo "${map["$2|$r"]:-}"; done
}

# ratio_vs NAME REFERENCE: the median over rounds of NAME's rate / REFERENCE's rate.
ratio_vs() {
    local r ratios=()
    for ((r = 1; r <= ROUNDS; r++)); do
        ratios+=("$(awk -v a="${RATE["$1|$r"]:-0}" -v b="${RATE["$2|$r"]:-0}" 'BEGIN { if (b > 0) printf "%.3f", a / b }')")
    done
    printf '%.2fx' "$(median "${ratios[@]}")"
}

# table HEADER REFERENCE... then the cases: one row per case, medians over the rounds, a ratio
# column per reference (invalid rows: no figures).
table() {
    local header=$1 name problems r ratios rates notes; shift
    local refs=("$@")
    echo "$header"
    printf '|---|---:|%s---:|---:|---:|---:|---|\n' "$(printf -- '---:|%.0s' "${refs[@]}")"
    for name in "${TABLE_CASES[@]}"; do
        problems=""; rates=""; notes=""
        for ((r = 1; r <= ROUNDS; r++)); do
            [ -n "${PROBLEMS_OF["$name|$r"]:-}" ] && problems+="${problems:+; }round $r: ${PROBLEMS_OF["$name|$r"]}"
            rates+="${rates:+ / }${RATE["$name|$r"]:-}"
            # A note the same every round (the protocol) is said once.
            [[ -n ${NOTE_OF["$name|$r"]:-} && "; $notes;" != *"; ${NOTE_OF["$name|$r"]};"* ]] &&
                notes+="${notes:+; }${NOTE_OF["$name|$r"]}"
        done
        if [ -n "$problems" ]; then
            printf '| %s | %s |%s\n' "$name" "$(cell_figure "" "$problems")" \
                "$(printf ' |%.0s' "${refs[@]}") | | | | per round: $rates |"
            continue
        fi
        ratios=""
        for ref in "${refs[@]}"; do ratios+=" $(ratio_vs "$name" "$ref") |"; done
        local c s p
        c=$(median $(per_round CPU_CLIENT "$name"))
        s=$(median $(per_round CPU_SERVER "$name"))
        p=$(median $(per_round CPU_PG "$name"))
        printf '| %s | %.0f |%s %.0f | %.0f | %.0f | %.0f | per round: %s; %s |\n' "$name" \
            "$(median $(per_round RATE "$name"))" "$ratios" "$c" "$s" "$p" "$(awk "BEGIN {print $c + $s + $p}")" \
            "$rates" "$notes"
    done
}

S_REF="pgbench -S, replica1"
Q_REF="pgbench, the endpoint's query, replica1"
echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $CLIENTS clients, ${DURATION}s each, $ROUNDS rounds (figures: medians over the rounds; a ratio is the median of the per-round ratios)"
echo
for ((round = 1; round <= ROUNDS; round++)); do
    echo "pg_reads: round $round of $ROUNDS" >&2
    NOTE="simple protocol" pgbench_case "$S_REF" -S
    NOTE="prepared" pgbench_case "$Q_REF" -M prepared -f "$tmp/users.sql"
    http_case "loadgen GET /api/users/{id}, coinbit pool $POOL/node, 3 replicas" "$POOL" 16 users
    http_case "loadgen GET /api/users/{id}, coinbit pool $PG_POOL2/node, 3 replicas" "$PG_POOL2" 16 users
    ENGINE=glommio http_case "loadgen GET /api/users/{id}, coinbit pool $POOL/node, glommio, 3 replicas" "$POOL" 16 users
    ENGINE=glommio DRIVER=wire http_case "loadgen GET /api/users/{id}, coinbit DB_READ_DRIVER=wire, 3 replicas" "$POOL" 16 users
    if [ -n "$BEFORE" ]; then
        BINARY=$BEFORE http_case "the same, pool $POOL/node, on BEFORE ($BEFORE)" "$POOL" 16 users
        BINARY=$BEFORE http_case "the same, pool $PG_POOL2/node, on BEFORE ($BEFORE)" "$PG_POOL2" 16 users
        ENGINE=glommio DRIVER=wire BINARY=$BEFORE http_case "the same, DB_READ_DRIVER=wire, on BEFORE ($BEFORE)" "$POOL" 16 users
    fi
    [ "$WRITES" = 1 ] || continue
    http_case "POST /api/enterprise/jobs durable, DB_GROUP_COMMIT=1" "$POOL" 1 writes
    http_case "POST /api/enterprise/jobs durable, DB_GROUP_COMMIT=16" "$POOL" 16 writes
done
TABLE_CASES=()
for name in "${CASES[@]}"; do [[ $name == POST* ]] || TABLE_CASES+=("$name"); done
table "| run | req/s (tps) | vs pgbench -S | vs pgbench, the same query | client CPU ms / 1k req | coinbit | PostgreSQL | total | notes |" \
    "$S_REF" "$Q_REF"
if [ "$WRITES" = 1 ]; then
    echo
    TABLE_CASES=("POST /api/enterprise/jobs durable, DB_GROUP_COMMIT=1" "POST /api/enterprise/jobs durable, DB_GROUP_COMMIT=16")
    table "| writes | req/s | vs one transaction per write | client CPU ms / 1k req | coinbit | PostgreSQL | total | notes |" \
        "POST /api/enterprise/jobs durable, DB_GROUP_COMMIT=1"
fi
exit_if_invalid pg_reads
