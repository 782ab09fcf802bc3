#!/usr/bin/env bash
# bench/durable_jobs.sh — what a job costs when it is durable (a PostgreSQL outbox row, claimed,
# run and marked done) next to the same job kept in memory, on one server core.
#
# Brings up the project's PostgreSQL cluster (tests/pg/cluster.sh: a primary and PG_REPLICAS
# streaming replicas) in a database of its own, starts one shard on SERVER_CPU, and for each sort
# of job enqueues small `analytics` jobs closed-loop for DURATION from USERS connections on
# CLIENT_CPU, then waits, at most WAIT_LIMIT seconds of clock time, until every one is done or
# dead. Reported per sort: jobs enqueued, enqueue req/s (202 answers), jobs done and dead, time
# from the first enqueue to the last job finished, and jobs done per second end to end; then
# durable / memory.
#
# A sort's row is not a result (`INVALID (...)`, exit 2 after the table; bench/common.sh, "valid
# cells") when an enqueue got an answer other than 202 or a socket error, a job went dead, or
# jobs were still unfinished at the limit.
#
# Usage: bench/durable_jobs.sh        (wrap in `flock /work/bench.lock` on a shared machine)
# Environment: COINBIT LOADGEN SERVER_CPU=0 CLIENT_CPU=1 DURATION=5s USERS=32 PORT=18400
#              PG_PORT=25432 PG_REPLICAS=1 DB_POOL_SIZE=4 BUILD=0 SORTS="memory durable"
#              WAIT_LIMIT=60 (seconds after the enqueues end) ROUNDS=3 (each sort once a round,
#              alternating; medians over the rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

COINBIT=${COINBIT:-target/release/coinbit}
LOADGEN=${LOADGEN:-target/release/loadgen}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DURATION=${DURATION:-5s}
USERS=${USERS:-32}
PORT=${PORT:-18400}
BUILD=${BUILD:-0}
SORTS=${SORTS:-memory durable}
WAIT_LIMIT=${WAIT_LIMIT:-60}
ROUNDS=${ROUNDS:-3}
export PG_PORT=${PG_PORT:-25432} PG_REPLICAS=${PG_REPLICAS:-1}
export DB_POOL_SIZE=${DB_POOL_SIZE:-4}
URL="http://127.0.0.1:$PORT"
DATABASE=coinbit_bench_durable

if [ "$BUILD" = 1 ]; then
    cargo build --release -p coinbit -p loadgen
fi
for bin in "$COINBIT" "$LOADGEN"; do
    [ -x "$bin" ] || { echo "durable_jobs: $bin is missing (BUILD=1 builds it)" >&2; exit 1; }
done
cluster=tests/pg/cluster.sh
out=$(mktemp -d)
server_pid=""
db_was_up=0
"$cluster" status >/dev/null 2>&1 && db_was_up=1
cleanup() {
    [ -n "$server_pid" ] && { kill -INT "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; }
    [ "$db_was_up" = 0 ] && "$cluster" down >/dev/null 2>&1
    rm -rf "$out"
}
trap cleanup EXIT
"$cluster" up >/dev/null
sql() { "$cluster" sql primary "$1"; }

# A database of its own, fresh each run, so that earlier rows neither count nor slow the claims.
# The server's URLs are the cluster's with that database (the first is the primary's).
db_env=()
while IFS= read -r line; do db_env+=("${line%/*}/$DATABASE"); done < <("$cluster" env)
primary_url=${db_env[0]#*=}
start() {
    sql "DROP DATABASE IF EXISTS $DATABASE" >/dev/null
    sql "CREATE DATABASE $DATABASE" >/dev/null
    start_one_shard env "${db_env[@]}" "$COINBIT"
}

# jobs_finished SORT: "DONE DEAD", how many of the run's jobs are done and how many went dead
# (out of retries) so far; "0 0" when the server cannot be asked.
jobs_finished() {
    if [ "$1" = durable ]; then
        psql "$primary_url" -Atc "SELECT count(*) FILTER (WHERE status = 'done'),
            count(*) FILTER (WHERE status = 'dead') FROM job_outbox" | tr '|' ' '
    else
        curl -s -m 5 "$URL/api/enterprise/queues/status" | python3 -c "import json,sys
c = json.load(sys.stdin)['classes']['background']
print(c['processed'], c['dead'])" 2>/dev/null || echo "0 0"
    fi
}

echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server: 1 shard on CPU $SERVER_CPU, $DB_POOL_SIZE connections per node; loadgen on CPU $CLIENT_CPU, $USERS connections, $DURATION of enqueues"
echo
echo "| jobs | round | enqueued | enqueue req/s | done | dead | last job finished after (s) | jobs done/s end to end |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
declare -A rate # "sort|round" -> jobs done/s end to end; empty for an invalid run
for ((round = 1; round <= ROUNDS; round++)); do
for sort in $SORTS; do
    durable=false
    [ "$sort" = durable ] && durable=true
    cat >"$out/jobs.toml" <<TOML
name = "$sort-jobs"
[[requests]]
name = "enqueue"
method = "POST"
path = "/api/enterprise/jobs"
body = '{"kind":"analytics","class":"background","payload":{"event":"bench"},"durable":$durable}'
expect = [202]
TOML
    start
    began=$(date +%s.%N)
    run_loadgen "$out/enqueue.json" "$LOADGEN" --cpus "$CLIENT_CPU" -t 1 -c "$USERS" -d "$DURATION" \
        -H "$OPERATOR_HEADER" -s "$out/jobs.toml" "$URL"
    problems=$(loadgen_problems "$out/enqueue.json")
    read -r enqueued enqueue_rps < <(python3 -c "import json,sys
d = json.load(open(sys.argv[1]))
print(d['overall']['ok'], round(d['overall']['ok'] / d['duration_s']))" "$out/enqueue.json" 2>/dev/null || echo "0 0")
    # The wait is bounded by the clock, not by a count of polls (each poll is a psql or curl
    # and a python, whose own time a loaded host stretches).
    deadline=$(($(date +%s) + WAIT_LIMIT))
    while :; do
        read -r done_count dead_count < <(jobs_finished "$sort") || { done_count=0 dead_count=0; }
        [ $((done_count + dead_count)) -ge "$enqueued" ] && break
        [ "$(date +%s)" -ge "$deadline" ] && break
        sleep 0.1
    done
    finished=$(date +%s.%N)
    stop_server
    [ "$dead_count" -gt 0 ] && problems+="${problems:+, }$dead_count jobs dead"
    unfinished=$((enqueued - done_count - dead_count))
    [ "$unfinished" -gt 0 ] && problems+="${problems:+, }$unfinished jobs unfinished after ${WAIT_LIMIT} s"
    seconds=$(awk "BEGIN {printf \"%.2f\", $finished - $began}")
    key="$sort|$round"
    rate[$key]=$(awk "BEGIN {printf \"%d\", $done_count / ($finished - $began)}")
    refuse_cell "$sort jobs, round $round" "$problems" || rate[$key]=""
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$sort" "$round" "$enqueued" "$enqueue_rps" "$done_count" \
        "$dead_count" "$seconds" "$(cell_figure "${rate[$key]}" "$problems")"
done
done
# Medians over the valid rounds; the ratio is the median of the per-round ratios (rounds where
# both sorts were valid).
echo
for sort in $SORTS; do
    values=(); for ((r = 1; r <= ROUNDS; r++)); do values+=("${rate["$sort|$r"]:-}"); done
    printf '%s: median %s jobs done/s end to end (rounds: %s)\n' "$sort" "$(median "${values[@]}")" "${values[*]}"
done
ratios=()
for ((r = 1; r <= ROUNDS; r++)); do
    [ -n "${rate["memory|$r"]:-}" ] && [ -n "${rate["durable|$r"]:-}" ] &&
        ratios+=("$(awk "BEGIN {printf \"%.3f\", ${rate["durable|$r"]} / ${rate["memory|$r"]}}")")
done
[ "${#ratios[@]}" -gt 0 ] &&
    printf 'durable / memory, jobs done/s end to end: median %sx (rounds: %s)\n' "$(median "${ratios[@]}")" "${ratios[*]}"
exit_if_invalid durable_jobs
