#!/usr/bin/env bash
# bench/auth.sh — what authentication costs a request, and whether a login flood reaches the
# shard that serves /health. One server shard on SERVER_CPU, loadgen on CLIENT_CPU, PostgreSQL
# (tests/pg/cluster.sh, a primary and PG_REPLICAS replicas, 0 by default) in a database of its
# own, fresh each round.
#
#  1. Authenticated against unauthenticated, in one run, each round on a fresh server and
#     database, USERS virtual users closed-loop for DURATION each:
#       session   GET /api/auth/me with Authorization: Bearer (each virtual user logged in once,
#                 before the run: loadgen's [login], credentials = "session");
#       signed    GET /api/auth/me signed with the user's API key (credentials = "api_key");
#       open      GET /api/users/{id} with the operator token (bench/common.sh; a digest compared
#                 on the shard, no session or key looked up: the route no longer answers
#                 without credentials), ids of the users just registered.
#     Each reads one users row on the primary (with PG_REPLICAS=0 the open read has no replica
#     to go to); the authenticated ones first pass the access check from the shard's credential
#     cache (no database round trip once cached). Not the same code below that: /me reads
#     through the replicas' lookups (the primary's with PG_REPLICAS=0), /api/users/{id} through
#     the batched lookups. Reported:
#     req/s and p99 per cell, and session/open and signed/open (the goal is >= 0.9x), medians
#     over ROUNDS (ratios: the median of the per-round ratios).
#  2. A login flood: FLOOD_USERS connections closed-loop on POST /api/auth/login (one user's
#     right password: an Argon2id check on the password threads, a login attempt and a session
#     written) while /health is asked at HEALTH_RATE req/s (open model, HEALTH_CONNECTIONS
#     connections); then /health at the same rate alone, on the same server. Reported: logins/s,
#     /health p99 under the flood and alone, and their ratio. FLOOD_USERS at most
#     PASSWORD_HASH_QUEUE (64) keeps the password pool from answering 503.
#
# A cell with any unexpected status (a 401, a 503 from a full password pool...) or socket error
# is INVALID and the script exits 2 after its tables (bench/common.sh, "valid cells").
# With URL set, the script uses the server already there (its database included) instead of
# starting PostgreSQL and coinbit; it must have accounts (a database and SECRETS_KEY).
#
# Usage: bench/auth.sh        (wrap in `flock /work/bench.lock` on a shared machine)
# Environment: COINBIT LOADGEN SERVER_CPU=0 CLIENT_CPU=1 DURATION=10s USERS=32 ROUNDS=3
#              FLOOD_USERS=32 HEALTH_RATE=1000 HEALTH_CONNECTIONS=8 SECTIONS=12 PORT=18500
#              PG_PORT=25900 PG_REPLICAS=0 DB_POOL_SIZE=4 BUILD=0 URL=(unset)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

COINBIT=${COINBIT:-target/release/coinbit}
LOADGEN=${LOADGEN:-target/release/loadgen}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DURATION=${DURATION:-10s}
USERS=${USERS:-32}
ROUNDS=${ROUNDS:-3}
FLOOD_USERS=${FLOOD_USERS:-32}
HEALTH_RATE=${HEALTH_RATE:-1000}
HEALTH_CONNECTIONS=${HEALTH_CONNECTIONS:-8}
SECTIONS=${SECTIONS:-12}
PORT=${PORT:-18500}
BUILD=${BUILD:-0}
export PG_PORT=${PG_PORT:-25900} PG_REPLICAS=${PG_REPLICAS:-0}
export DB_POOL_SIZE=${DB_POOL_SIZE:-4}
# A fixed key for API secrets at rest: a bench key, never a production one.
export SECRETS_KEY=${SECRETS_KEY:-1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f}
# The bench's own connections must not raise the users alert (a critical one answers 503).
pin_bench_alert_levels $((USERS + FLOOD_USERS + HEALTH_CONNECTIONS))
# A login flood is meant to load the CPUs: the CPU alert at 100 % only, so that /health keeps
# answering 200 and its latency, not its alert, is what is measured.
export MONITORING_CPU_WARNING=${MONITORING_CPU_WARNING:-100} MONITORING_CPU_CRITICAL=${MONITORING_CPU_CRITICAL:-100}
DATABASE=coinbit_bench_auth
PASSWORD="bench password 1"

EXTERNAL=${URL:+1}
URL=${URL:-http://127.0.0.1:$PORT}
if [ "$BUILD" = 1 ]; then
    cargo build --release -p coinbit -p loadgen
fi
[ -x "$LOADGEN" ] || { echo "auth: $LOADGEN is missing (BUILD=1 builds it)" >&2; exit 1; }
[ -n "$EXTERNAL" ] || [ -x "$COINBIT" ] || { echo "auth: $COINBIT is missing (BUILD=1 builds it)" >&2; exit 1; }
cluster=tests/pg/cluster.sh
out=$(mktemp -d)
server_pid=""
db_was_up=1
cleanup() {
    [ -n "$server_pid" ] && { kill -INT "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; }
    [ "$db_was_up" = 0 ] && "$cluster" down >/dev/null 2>&1
    rm -rf "$out"
}
trap cleanup EXIT
db_env=()
if [ -z "$EXTERNAL" ]; then
    "$cluster" status >/dev/null 2>&1 || db_was_up=0
    "$cluster" up >/dev/null
    # The server's URLs are the cluster's with the bench's database (the first the primary's).
    while IFS= read -r line; do db_env+=("${line%/*}/$DATABASE"); done < <("$cluster" env)
fi

# fresh_server: a new database and a server on it (nothing with URL set).
fresh_server() {
    [ -n "$EXTERNAL" ] && return 0
    [ -n "$server_pid" ] && stop_server
    "$cluster" sql primary "DROP DATABASE IF EXISTS $DATABASE" >/dev/null
    "$cluster" sql primary "CREATE DATABASE $DATABASE" >/dev/null
    start_one_shard env "${db_env[@]}" "$COINBIT"
}

# scenario NAME CREDENTIALS PATH [USER_IDS]: a loadgen scenario file asking GET PATH (200), its
# virtual users logged in with CREDENTIALS (session, api_key, or none).
scenario() {
    {
        echo "name = \"$1\""
        [ -n "${4:-}" ] && echo "user_ids = $4"
        # Without a login, the operator token: GET /api/users/{id} answers a user or staff only.
        [ "$2" = none ] && echo "headers = { authorization = \"Bearer $OPERATOR_TOKEN\" }"
        printf '[[requests]]\nname = "%s"\npath = "%s"\nexpect = 200\n' "$1" "$3"
        if [ "$2" != none ]; then
            printf '[login]\ncredentials = "%s"\nemail = "%s-{run}-{vu}@bench.example.com"\n' "$2" "$1"
        fi
    } >"$out/$1.toml"
}

# ms VALUE: a latency to two decimals (words such as n/a as they are).
ms() { awk -v v="$1" 'BEGIN { if (v ~ /^[0-9.]+$/) printf "%.2f", v; else print v }'; }

# closed_cell NAME REPORT: USERS closed-loop users on scenario NAME for DURATION.
closed_cell() {
    run_loadgen "$2" "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -u "$USERS" -d "$DURATION" \
        -s "$out/$1.toml" "$URL"
}

echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$EXTERNAL" ]; then
    echo "server: $URL (already running); loadgen on CPU $CLIENT_CPU"
else
    echo "server: $COINBIT, 1 shard on CPU $SERVER_CPU, $DB_POOL_SIZE connections per node, $PG_REPLICAS replicas; loadgen on CPU $CLIENT_CPU; $(bench_alert_levels); CPU alerts at 100 %"
fi

declare -A RPS=() P99=() PROBLEMS=()
# ---------------------------------------------------------------- 1. authenticated vs open
if [[ $SECTIONS == *1* ]]; then
    scenario session session /api/auth/me
    scenario signed api_key /api/auth/me
    echo
    echo "## 1. GET /api/auth/me authenticated against GET /api/users/{id} open ($USERS users, $DURATION a cell)"
    echo
    echo "| round | cell | req/s | p99 ms |"
    echo "|---:|---|---:|---:|"
    for ((round = 1; round <= ROUNDS; round++)); do
        fresh_server
        for cell in session signed open; do
            # The open cell reads the users the session cell registered: ids 1..USERS on a
            # fresh database (with URL set, whatever ids 1..USERS are there).
            [ "$cell" = open ] && scenario open none "/api/users/{{user_id}}" "$USERS"
            report=$out/$cell-$round.json
            closed_cell "$cell" "$report"
            key="$cell|$round"
            PROBLEMS[$key]=$(loadgen_problems "$report")
            refuse_cell "$cell, round $round" "${PROBLEMS[$key]}" || true
            RPS[$key]=$(ok_rps "$report")
            P99[$key]=$(ms "$(p99 "$report")")
            echo "| $round | $cell | $(cell_figure "${RPS[$key]}" "${PROBLEMS[$key]}") | $(cell_figure "${P99[$key]}" "${PROBLEMS[$key]}") |"
        done
    done
    # ratio CELL ROUND: CELL's req/s over the open cell's, "invalid" when either was refused.
    ratio() {
        local a="$1|$2" b="open|$2"
        if [ -n "${PROBLEMS[$a]}${PROBLEMS[$b]}" ]; then echo invalid; return; fi
        awk -v a="${RPS[$a]}" -v b="${RPS[$b]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
    }
    echo
    echo "| cell | req/s (median) | p99 ms (median) | vs open (median of per-round ratios) | per round |"
    echo "|---|---:|---:|---:|---|"
    for cell in session signed open; do
        rps=() p99s=() ratios=()
        for ((round = 1; round <= ROUNDS; round++)); do
            if [ -z "${PROBLEMS["$cell|$round"]}" ]; then
                rps+=("${RPS["$cell|$round"]}")
                p99s+=("${P99["$cell|$round"]}")
            fi
            ratios+=("$(ratio "$cell" "$round")")
        done
        r=$(median "${ratios[@]}")
        if [ -n "$r" ]; then r="${r}x"; else r=invalid; fi
        echo "| $cell | $(median "${rps[@]}") | $(median "${p99s[@]}") | $r | ${ratios[*]} |"
    done
fi

# ---------------------------------------------------------------- 2. login flood vs /health
if [[ $SECTIONS == *2* ]]; then
    fresh_server
    email="flood-$RANDOM$RANDOM@bench.example.com"
    registered=$(curl -s -o /dev/null -w '%{http_code}' -m 30 -H 'Content-Type: application/json' \
        -d "{\"name\":\"Flood\",\"email\":\"$email\",\"password\":\"$PASSWORD\"}" "$URL/api/auth/register" || true)
    [ "$registered" = 201 ] || echo "auth: registering the flood's user answered ${registered:-nothing}" >&2
    cat >"$out/login.toml" <<TOML
name = "login-flood"
[[requests]]
name = "login"
method = "POST"
path = "/api/auth/login"
headers = { content-type = "application/json" }
body = '{"email":"$email","password":"$PASSWORD"}'
expect = 200
TOML
    health=(--cpus "$CLIENT_CPU" -t 1 -R "$HEALTH_RATE" -c "$HEALTH_CONNECTIONS" -d "$DURATION")
    run_loadgen "$out/flood.json" "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -u "$FLOOD_USERS" \
        -d "$DURATION" -s "$out/login.toml" "$URL" &
    flood=$!
    # The flood's first logins are under way before /health is timed.
    sleep 0.5
    run_loadgen "$out/health-flood.json" "$LOADGEN" "${health[@]}" "$URL/health"
    wait "$flood" || true
    run_loadgen "$out/health-alone.json" "$LOADGEN" "${health[@]}" "$URL/health"
    bad_flood=$(loadgen_problems "$out/flood.json")
    bad_under=$(loadgen_problems "$out/health-flood.json")
    bad_alone=$(loadgen_problems "$out/health-alone.json")
    refuse_cell "login flood" "$bad_flood" || true
    refuse_cell "/health during the flood" "$bad_under" || true
    refuse_cell "/health alone" "$bad_alone" || true
    logins=$(ok_rps "$out/flood.json")
    login_p99=$(ms "$(p99 "$out/flood.json")")
    under=$(ms "$(p99 "$out/health-flood.json")")
    alone=$(ms "$(p99 "$out/health-alone.json")")
    ratio=invalid
    if [ -z "$bad_flood$bad_under$bad_alone" ]; then
        ratio=$(awk -v a="$under" -v b="$alone" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')
    fi
    echo
    echo "## 2. /health at $HEALTH_RATE req/s during a login flood ($FLOOD_USERS users on POST /api/auth/login) and alone, $DURATION each"
    echo
    echo "| logins/s | login p99 ms | /health p99 ms, flood | /health p99 ms, alone | flood / alone |"
    echo "|---:|---:|---:|---:|---:|"
    echo "| $(cell_figure "$logins" "$bad_flood") | $(cell_figure "$login_p99" "$bad_flood") | $(cell_figure "$under" "$bad_under") | $(cell_figure "$alone" "$bad_alone") | $ratio |"
fi

exit_if_invalid auth
