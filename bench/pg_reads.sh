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
#   5. with BEFORE=path/to/an/older/coinbit, steps 3 and 4 on that binary too (before/after in
#      one run);
# and prints a markdown table with each one's rate relative to pgbench -S. Then what group commit
# buys: loadgen POST /api/users with DB_GROUP_COMMIT=1 (one transaction per write) and 16.
# On a small host everything (clients, server, four PostgreSQL instances) shares the CPUs:
# the ratio, not the absolute rate, is the figure to compare.
#
# Usage: bench/pg_reads.sh
# Environment (all optional):
#   CLIENTS=32  DURATION=15  PORT=18300  PG_PORT=25600  POOL=2  PG_POOL2=8  BUILD=1
#   COINBIT=target/release/coinbit  LOADGEN=target/release/loadgen  BEFORE=(unset)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-15}
PORT=${PORT:-18300}
POOL=${POOL:-2}
PG_POOL2=${PG_POOL2:-8}
BUILD=${BUILD:-1}
COINBIT=${COINBIT:-target/release/coinbit}
LOADGEN=${LOADGEN:-target/release/loadgen}
BEFORE=${BEFORE:-}
export PG_PORT=${PG_PORT:-25600} PG_REPLICAS=3
export PG_DIR=${PG_DIR:-/tmp/coinbit-pg-$PG_PORT}
cluster=tests/pg/cluster.sh

[ "$BUILD" = 1 ] && cargo build --release -q -p coinbit -p loadgen
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/pgbench" ] || { echo "pg_reads: pgbench not found; apt-get install -y postgresql" >&2; exit 1; }
tmp=$(mktemp -d /tmp/pg-reads.XXXXXX)
server=""
cleanup() {
    [ -n "$server" ] && { kill -INT "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; }
    "$cluster" down --purge >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

"$cluster" down --purge >/dev/null 2>&1 || true
"$cluster" up >&2
eval "$("$cluster" env | sed 's/^/export /')"
replica1=postgres://postgres@127.0.0.1:$((PG_PORT + 1))/coinbit

start_server() {
    "${BINARY:-$COINBIT}" --bind-address 127.0.0.1 --port "$PORT" --pool-size "$1" --group-commit "${2:-16}" \
        >"$tmp/server.log" 2>&1 &
    server=$!
    wait_for_listening "$tmp/server.log" "$server"
}
stop_server() { kill -INT "$server"; wait "$server" || true; server=""; }

# The schema comes from the server's migrations; pgbench's tables from pgbench -i.
start_server "$POOL"
stop_server
"$cluster" sql primary "INSERT INTO users (id, name, email)
    SELECT g, 'User ' || g, 'user' || g || '@seed.example.com' FROM generate_series(1, 10000) g
    ON CONFLICT DO NOTHING;
    SELECT setval('users_id_seq', 10000)" >/dev/null
"$bin/pgbench" -q -i -s 1 "$DATABASE_URL" >/dev/null 2>&1
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
cat >"$tmp/users.toml" <<'EOF'
user_ids = 10000
[[requests]]
name = "get_user"
path = "/api/users/{{user_id}}"
expect = 200
EOF

cat >"$tmp/writes.toml" <<'EOF'
[[requests]]
name = "create_user"
method = "POST"
path = "/api/users"
body = '{"name":"Bench {{seq}}","email":"{{uuid}}@bench.example.com"}'
expect = 201
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

pgbench_tps() {
    /usr/bin/time -f "%U %S" -o "$tmp/client.time" \
        "$bin/pgbench" -n -c "$CLIENTS" -j 2 -T "$DURATION" "$@" >"$tmp/pgbench.out" 2>&1 ||
        { echo "pgbench failed:" >&2; cat "$tmp/pgbench.out" >&2; exit 1; }
    awk '/^tps/ {print int($3)}' "$tmp/pgbench.out"
}
# Prints "errors req/s p99_ms" of one loadgen run of scenario $1.
loadgen_rps() {
    /usr/bin/time -f "%U %S" -o "$tmp/client.time" \
        "$LOADGEN" -c "$CLIENTS" -d "${DURATION}s" -s "$tmp/$1.toml" --json "http://127.0.0.1:$PORT" 2>/dev/null |
        awk -F'[:,]' '/"overall"/ {o = 1} o && /"errors":/ && !s {s = 1; e = $2 + 0}
                      o && /"rps":/ && !r {r = $2} o && /"p99":/ && !p {p = $2} END {printf "%d %d %s\n", e, r, p + 0}'
}

ROWS=()
ref=""
# row NAME REQ_PER_S CLIENT_TICKS SERVER_TICKS PG_TICKS NOTES
row() {
    local cpu
    cpu=$(awk -v r="$2" -v d="$DURATION" -v c="$3" -v s="$4" -v p="$5" \
        'BEGIN { n = r * d / 1000; printf "%.0f | %.0f | %.0f | %.0f", c * 10 / n, s * 10 / n, p * 10 / n, (c + s + p) * 10 / n }')
    ROWS+=("| $1 | $2 | $(awk "BEGIN {printf \"%.2fx\", $2 / $ref}") | $cpu | $6 |")
}

# pgbench on replica1: "$1" names the run, the rest are pgbench's arguments.
pgbench_case() {
    local name=$1 before tps; shift
    before=$(pg_ticks)
    tps=$(pgbench_tps "$@" "$replica1")
    sleep 0.5 # the backends exit and are reaped
    ref=${ref:-$tps}
    row "$name" "$tps" "$(client_ticks)" 0 $(($(pg_ticks) - before)) "${NOTE:-}"
}

# coinbit with a pool of $2 per node and group commit $3, loadgen on scenario $4.
http_case() {
    local name=$1 before server_cpu errors rps p99
    before=$(pg_ticks)
    start_server "$2" "$3"
    read -r errors rps p99 < <(loadgen_rps "$4")
    server_cpu=$(ticks "$server")
    stop_server
    sleep 0.5
    ref=${ref:-$rps}
    row "$name" "$rps" "$(client_ticks)" "$server_cpu" $(($(pg_ticks) - before)) "p99 $p99 ms, $errors errors"
}

echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $CLIENTS clients, ${DURATION}s each"
echo
NOTE="simple protocol" pgbench_case "pgbench -S, replica1" -S
NOTE="prepared" pgbench_case "pgbench, the endpoint's query, replica1" -M prepared -f "$tmp/users.sql"
http_case "loadgen GET /api/users/{id}, coinbit pool $POOL/node, 3 replicas" "$POOL" 16 users
http_case "loadgen GET /api/users/{id}, coinbit pool $PG_POOL2/node, 3 replicas" "$PG_POOL2" 16 users
if [ -n "$BEFORE" ]; then
    BINARY=$BEFORE http_case "the same, pool $POOL/node, on BEFORE ($BEFORE)" "$POOL" 16 users
    BINARY=$BEFORE http_case "the same, pool $PG_POOL2/node, on BEFORE ($BEFORE)" "$PG_POOL2" 16 users
fi
echo "| run | req/s (tps) | vs pgbench -S | client CPU ms / 1k req | coinbit | PostgreSQL | total | notes |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${ROWS[@]}"

ROWS=()
ref=""
http_case "POST /api/users, DB_GROUP_COMMIT=1" "$POOL" 1 writes
http_case "POST /api/users, DB_GROUP_COMMIT=16" "$POOL" 16 writes
echo
echo "| writes | req/s | vs one transaction per write | client CPU ms / 1k req | coinbit | PostgreSQL | total | notes |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${ROWS[@]}"
