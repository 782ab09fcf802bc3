# Shared by the bench scripts (sourced, not run).

# ---------------------------------------------------------------- operator token
# The operator routes (job enqueue and reads, dead letters, the debug routes) answer only the
# operator token or a staff session. Every bench server inherits OPERATOR_TOKEN (a fresh random
# one per run unless the caller set one); OPERATOR_HEADER is what the loadgen (-H) and curl (-H)
# send to those routes. The reports and probes stay open (METRICS_ACCESS=open, the default).
export OPERATOR_TOKEN=${OPERATOR_TOKEN:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}
OPERATOR_HEADER="Authorization: Bearer $OPERATOR_TOKEN"

# ---------------------------------------------------------------- pgbench-side settings
# pgbench_bench_settings PORT POOL PG_PORT PG_REPLICAS: the settings the benches against
# pgbench share (ledger.sh, pg_reads.sh, affiliates.sh), each from the environment or, unset,
# its default: CLIENTS=32 DURATION=15 ROUNDS=3 BUILD=1, the release binaries, and the script's
# own server PORT and POOL and database PG_PORT (PG_DIR from it) with PG_REPLICAS replicas.
pgbench_bench_settings() {
    CLIENTS=${CLIENTS:-32}
    DURATION=${DURATION:-15}
    ROUNDS=${ROUNDS:-3}
    PORT=${PORT:-$1}
    POOL=${POOL:-$2}
    BUILD=${BUILD:-1}
    COINBIT=${COINBIT:-target/release/coinbit}
    LOADGEN=${LOADGEN:-target/release/loadgen}
    export PG_PORT=${PG_PORT:-$3} PG_REPLICAS=$4
    export PG_DIR=${PG_DIR:-/tmp/coinbit-pg-$PG_PORT}
}

# wait_for_listening LOG PID: waits up to 10 s for coinbit's "listening on" line in LOG. When
# process PID exits first, or the line never comes, prints the log and exits the script with 1.
wait_for_listening() {
    local log=$1 pid=$2
    for _ in $(seq 100); do
        grep -q "listening on" "$log" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "coinbit exited before listening:" >&2; cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "coinbit did not start in 10 s:" >&2
    cat "$log" >&2
    exit 1
}

# start_one_shard COMMAND...: runs COMMAND (coinbit and its own flags, behind `env VAR=...` when it
# needs variables) as one shard on SERVER_CPU with its monitor on CLIENT_CPU, on 127.0.0.1:PORT,
# logging to $out/server.log; sets server_pid and returns once it answers HTTP. stop_server ends it.
start_one_shard() {
    "$@" --bind-address 127.0.0.1 --port "$PORT" --shards 1 --shard-cpus "$SERVER_CPU" \
        --monitor-core "$CLIENT_CPU" --snapshot-interval 200 >"$out/server.log" 2>&1 &
    server_pid=$!
    wait_for_listening "$out/server.log" "$server_pid"
    # The log line came, once, while the port still refused connections (glommio, a loaded
    # host): a cell's loadgen then counts connect errors. Wait for any HTTP answer as well.
    for _ in $(seq 50); do
        curl -s -o /dev/null -m 1 "http://127.0.0.1:$PORT/livez" && return 0
        sleep 0.1
    done
    echo "coinbit logged that it listens but did not answer on port $PORT in 5 s:" >&2
    cat "$out/server.log" >&2
    exit 1
}
stop_server() { kill -INT "$server_pid"; wait "$server_pid" || true; server_pid=""; }

# fresh_pg_cluster NAME: for a bench against PostgreSQL's own pgbench on a cluster of its own.
# Finds pgbench (sets pg_bin, or exits telling how to install it), makes a scratch folder (sets
# tmp), brings up a fresh tests/pg/cluster.sh cluster (PG_PORT, PG_REPLICAS, PG_DIR as the caller
# exported them; any old one there is purged first) and exports its variables (DATABASE_URL,
# DB_READ_REPLICA_n). At exit it stops the server (server_pid, as start_one_shard and
# stop_server use it), purges the cluster and removes tmp. NAME prefixes its messages.
fresh_pg_cluster() {
    cluster=tests/pg/cluster.sh
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -x "$pg_bin/pgbench" ] || { echo "$1: pgbench not found; apt-get install -y postgresql" >&2; exit 1; }
    tmp=$(mktemp -d "/tmp/$1.XXXXXX")
    server_pid=""
    trap fresh_pg_cluster_cleanup EXIT
    "$cluster" down --purge >/dev/null 2>&1 || true
    "$cluster" up >&2
    eval "$("$cluster" env | sed 's/^/export /')"
}
fresh_pg_cluster_cleanup() {
    [ -n "$server_pid" ] && { kill -INT "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; }
    "$cluster" down --purge >/dev/null 2>&1 || true
    rm -rf "$tmp"
}

# median VALUES...: the median of the VALUES that are numbers (words such as n/a are left out;
# the mean of the middle two, to 3 decimals, for an even count); "" when there is none.
median() {
    printf '%s\n' "$@" | awk '/^-?[0-9.]/' | sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) exit
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------- alert levels
# pin_bench_alert_levels CONNECTIONS: exports the concurrent-users alert levels for a bench that
# holds CONNECTIONS connections open: warning 2x, critical 4x (a caller's own
# MONITORING_CONCURRENT_USERS_* win), as bench/quickstart.sh does. With the seed's 800/950 a run
# past 950 connections makes /health and /readyz answer 503, and the bench would time the
# refusals. bench_alert_levels says the levels in words, for the script's header.
pin_bench_alert_levels() {
    export MONITORING_CONCURRENT_USERS_WARNING=${MONITORING_CONCURRENT_USERS_WARNING:-$(($1 * 2))}
    export MONITORING_CONCURRENT_USERS_CRITICAL=${MONITORING_CONCURRENT_USERS_CRITICAL:-$(($1 * 4))}
}
bench_alert_levels() {
    echo "concurrent-users alerts at $MONITORING_CONCURRENT_USERS_WARNING (warning) / $MONITORING_CONCURRENT_USERS_CRITICAL (critical)"
}

# ---------------------------------------------------------------- valid cells
# A cell (one server, one scenario, one round) counts only when every response was 2xx and the
# client saw no socket error: req/s that include 503s measure how fast a server refuses, not how
# fast it serves. For each cell a script asks wrk_problems or loadgen_problems what was wrong,
# records it with refuse_cell, prints cell_figure in place of the figure, and ends with
# exit_if_invalid: exit status INVALID_EXIT when any cell was refused.
INVALID_EXIT=2
INVALID_CELLS=()

# wrk_problems FILE: what makes the wrk report in FILE an invalid cell, "" when nothing: its
# non-2xx/3xx responses and socket errors, or "no result" when wrk printed no Requests/sec.
wrk_problems() {
    [ -f "$1" ] || { echo "no result"; return; }
    awk '/^Requests\/sec:/ { ran = 1 }
         /Non-2xx or 3xx responses:/ { p = p sep $NF " non-2xx"; sep = ", " }
         /Socket errors:/ {
             gsub(/,/, "")
             if ($4 + $6 + $8 + $10 > 0) {
                 p = p sep "socket errors: connect " $4 " read " $6 " write " $8 " timeout " $10; sep = ", "
             }
         }
         END { if (!ran) p = "no result" (p ? ", " p : ""); print p }' "$1"
}

# loadgen_problems FILE: the same for a `loadgen --json` report: responses with a status the
# scenario does not expect (any but 2xx for a bare URL), the other errors by kind (timeouts,
# resets, requests never sent...), connect errors, or "no result" when FILE is not a finished
# report.
loadgen_problems() {
    python3 - "$1" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    overall = d["overall"]
except (OSError, ValueError, KeyError):
    print("no result")
    sys.exit()
kinds = overall["errors_by_kind"]
problems = []
if kinds.get("unexpected_status"):
    other = ", ".join("HTTP %s: %d" % (s, n) for s, n in sorted(overall["statuses"].items()) if not s.startswith("2"))
    problems.append("%d unexpected statuses (%s)" % (kinds["unexpected_status"], other))
problems += ["%d %s" % (n, k) for k, n in sorted(kinds.items()) if k != "unexpected_status"]
problems += ["%d connect %s" % (n, k) for k, n in sorted(d["connections"]["connect_errors"].items())]
if overall["count"] == 0:
    problems.append("no responses")
print(", ".join(problems))
PY
}

# json FILE EXPR: a value from a JSON file (EXPR in Python over `d`); n/a when the file is not
# a finished report (a loadgen that failed), which is said on stderr.
json() {
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null ||
        { echo "$(basename "$0"): no result in $1" >&2; echo n/a; }
}

# answered FILE: how many requests a loadgen report counts, as a divisor for per-request
# figures (1 when the report has none).
answered() {
    local n
    n=$(json "$1" "d['overall']['count']")
    n=${n//[^0-9]/}
    [ "${n:-0}" -gt 0 ] && echo "$n" || echo 1
}

# p99 FILE: the corrected p99 (ms) of a loadgen report.
p99() { json "$1" "d['overall']['latency_ms']['p99']"; }

# ok_rps FILE: answers with an expected status per second in a loadgen report.
ok_rps() { json "$1" "round(d['overall']['ok'] / d['duration_s'])"; }

# run_loadgen FILE COMMAND...: runs COMMAND (loadgen and its arguments, maybe behind chrt) with
# its JSON report in FILE and its stderr in FILE.err. A run that fails leaves no report, which
# loadgen_problems calls "no result"; the failure is said on stderr, and the script goes on.
run_loadgen() {
    local file=$1 status=0
    shift
    "$@" --progress never --json >"$file" 2>"$file.err" || status=$?
    [ "$status" = 0 ] || echo "$(basename "$0"): loadgen exited $status: $(tail -n 3 "$file.err")" >&2
}

# refuse_cell LABEL PROBLEMS: when PROBLEMS is not empty, records the cell LABEL as invalid and
# says so on stderr; returns 1 then, 0 for a valid cell. Call it in the script's own shell (not
# in `$(...)` or a pipeline), where the record survives until exit_if_invalid.
refuse_cell() {
    [ -z "$2" ] && return 0
    INVALID_CELLS+=("$1: $2")
    echo "INVALID cell $1: $2" >&2
    return 1
}

# cell_figure VALUE PROBLEMS: VALUE for a valid cell, `INVALID (PROBLEMS)` for another.
cell_figure() {
    if [ -z "$2" ]; then echo "$1"; else echo "INVALID ($2)"; fi
}

# exit_if_invalid SCRIPT: after the tables, lists the refused cells and exits with INVALID_EXIT
# when there is any; returns otherwise.
exit_if_invalid() {
    [ "${#INVALID_CELLS[@]}" = 0 ] && return 0
    echo "$1: ${#INVALID_CELLS[@]} invalid cell(s), measured with errors; their figures are not results:" >&2
    printf '  %s\n' "${INVALID_CELLS[@]}" >&2
    exit "$INVALID_EXIT"
}

# ---------------------------------------------------------------- money users
# The money benches' users, made straight in the running cluster's primary (tests/pg/cluster.sh
# as $cluster) once the server's migrations ran: user OPERATOR (an operator) and users
# OPERATOR+1..LAST (Brazil, BRL), each with a session whose token is its id zero-padded to 64
# digits (loadgen writes it as $BENCH_TOKEN_ZEROS then a four-digit {{rand:...}}: keep ids at
# four digits), and each user R$10,000,000 in real money from payment clearing.
BENCH_TOKEN_ZEROS=000000000000000000000000000000000000000000000000000000000000
seed_money_users() { # OPERATOR LAST
    local operator=$1 last=$2
    "$cluster" sql primary "
    INSERT INTO users (id, name, email, role, country, currency)
        SELECT g, 'Bench ' || g, 'bench' || g || '@ledger.example.com',
               CASE WHEN g = $operator THEN 'operator' ELSE 'user' END, 'BR', 'BRL'
        FROM generate_series($operator, $last) g;
    SELECT setval('users_id_seq', $last);
    INSERT INTO sessions (user_id, token_sha256, expires_at)
        SELECT g, sha256(decode(lpad(g::text, 64, '0'), 'hex')), now() + interval '1 day'
        FROM generate_series($operator, $last) g;
    INSERT INTO ledger_accounts (user_id, kind, currency)
        SELECT g, k, 'BRL' FROM generate_series($operator + 1, $last) g,
               unnest(ARRAY['real', 'admin_credit', 'commission', 'debt']) k;
    UPDATE ledger_accounts SET balance = 1000000000 WHERE kind = 'real' AND user_id > $operator;
    INSERT INTO ledger_transfers (id, debit_account, credit_account, amount, currency, code,
                                  state, group_id, settled_at)
        SELECT n, (SELECT id FROM ledger_accounts WHERE user_id IS NULL
                   AND kind = 'payment_clearing' AND currency = 'BRL'),
               a.id, 1000000000, 'BRL', 'recharge', 'posted', n, now()
        FROM (SELECT id, nextval('ledger_transfers_id_seq') AS n FROM ledger_accounts
              WHERE kind = 'real' AND user_id > $operator) a;" >/dev/null
}

# ---------------------------------------------------------------- rounds
# A script that runs its cases ROUNDS times (the loop variable `round`) records each run with
# `record NAME RATE TRANSFERS_PER_REQUEST P99 PROBLEMS` (loadgen_case does it for a loadgen
# run), then prints rounds_table (medians over the rounds) and `ratio MAP A B` lines.
# (ROUND_ names: other scripts that source this file have a RATE or a P99 of their own.)
declare -A ROUND_RATE=() ROUND_XFER=() ROUND_P99=() ROUND_PROBLEMS=()
ROUND_CASES=()

record() { # NAME RATE TRANSFERS_PER_REQUEST P99 PROBLEMS
    local key="$1|$round"
    [[ " ${ROUND_CASES[*]} " == *" $1 "* ]] || ROUND_CASES+=("$1")
    ROUND_RATE[$key]=$2
    ROUND_XFER[$key]=$(awk -v r="$2" -v t="$3" 'BEGIN { printf "%.0f", r * t }')
    ROUND_P99[$key]=$4
    ROUND_PROBLEMS[$key]=$5
    refuse_cell "$1, round $round" "$5" || true
}

# loadgen_case NAME SCENARIO TRANSFERS_PER_REQUEST [LOADGEN ARGS...]: loadgen with
# $tmp/SCENARIO.toml, CLIENTS connections for DURATION seconds against 127.0.0.1:PORT (and the
# arguments after the third, such as a fixed rate), recorded as NAME.
loadgen_case() {
    local report=$tmp/$2-$round.json
    run_loadgen "$report" "$LOADGEN" -c "$CLIENTS" -d "${DURATION}s" -s "$tmp/$2.toml" "${@:4}" "http://127.0.0.1:$PORT"
    record "$1" "$(ok_rps "$report")" "$3" "$(printf '%.1f' "$(p99 "$report")")" "$(loadgen_problems "$report")"
}

per_round() { # MAP NAME
    local -n map=$1
    local r
    for ((r = 1; r <= ROUNDS; r++)); do echo "${map["$2|$r"]:-}"; done
}
invalid() { # NAME: the problems of its rounds, "" when all are valid
    local r p=""
    for ((r = 1; r <= ROUNDS; r++)); do
        [ -n "${ROUND_PROBLEMS["$1|$r"]:-}" ] && p+="${p:+; }round $r: ${ROUND_PROBLEMS["$1|$r"]}"
    done
    echo "$p"
}
# ratio MAP A B: the median over rounds of A / B in MAP.
ratio() {
    local -n map=$1
    local r ratios=()
    for ((r = 1; r <= ROUNDS; r++)); do
        ratios+=("$(awk -v a="${map["$2|$r"]:-0}" -v b="${map["$3|$r"]:-0}" 'BEGIN { if (b > 0) printf "%.3f", a / b }')")
    done
    printf '%.2fx' "$(median "${ratios[@]}")"
}
# rounds_table: each case's median req/s and transfers/s, its p99 and req/s per round.
rounds_table() {
    local name problems
    echo "| run | req/s (tps) | transfers/s | p99 ms | per round |"
    echo "|---|---:|---:|---:|---|"
    for name in "${ROUND_CASES[@]}"; do
        problems=$(invalid "$name")
        if [ -n "$problems" ]; then
            echo "| $name | $(cell_figure "" "$problems") | | | $(per_round ROUND_RATE "$name" | paste -sd/) |"
            continue
        fi
        printf '| %s | %.0f | %.0f | %s | %s |\n' "$name" "$(median $(per_round ROUND_RATE "$name"))" \
            "$(median $(per_round ROUND_XFER "$name"))" "$(per_round ROUND_P99 "$name" | paste -sd/)" \
            "$(per_round ROUND_RATE "$name" | paste -sd/)"
    done
}
