#!/usr/bin/env bash
# bench/shard_scaling.sh — how coinbit's throughput grows with shards on one host.
#
# For each engine in ENGINES and each shard count N in SHARDS, starts coinbit with N shards pinned
# to CPUs 0..N-1 and the monitor on MONITOR_CPU, then drives GET /health with the bundled loadgen pinned to CLIENT_CPUS
# (closed model, keep-alive; and pipelined), and prints a markdown table of req/s, p99 and the
# speed-up over one shard. Needs a host with more CPUs than the largest N plus the client's: on
# a 16-CPU host the defaults use CPUs 0-7 for shards, 8-14 for the client, 15 for the monitor.
#
# Usage: bench/shard_scaling.sh
# Environment (all optional):
#   COINBIT=target/release/coinbit  LOADGEN=target/release/loadgen  (built with BUILD=1)
#   ENGINES="glommio may"  SHARDS="1 2 4 8"  CLIENT_CPUS=8-14  MONITOR_CPU=15  CONNECTIONS=512  PIPELINE=16
#   DURATION=5s  PORT=18200  BUILD=0
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

COINBIT=${COINBIT:-target/release/coinbit}
LOADGEN=${LOADGEN:-target/release/loadgen}
ENGINES=${ENGINES:-"glommio may"}
SHARDS=${SHARDS:-"1 2 4 8"}
CLIENT_CPUS=${CLIENT_CPUS:-8-14}
MONITOR_CPU=${MONITOR_CPU:-15}
CONNECTIONS=${CONNECTIONS:-512}
PIPELINE=${PIPELINE:-16}
DURATION=${DURATION:-5s}
PORT=${PORT:-18200}
BUILD=${BUILD:-0}

if [ "$BUILD" = 1 ]; then
    cargo build --release -p coinbit -p loadgen
fi
for bin in "$COINBIT" "$LOADGEN"; do
    [ -x "$bin" ] || { echo "shard_scaling: $bin is missing (BUILD=1 builds it)" >&2; exit 1; }
done

server_pid=""
cleanup() { [ -n "$server_pid" ] && kill -INT "$server_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# Prints "req/s p99_ms" of one loadgen run.
drive() {
    local pipeline=$1
    "$LOADGEN" --cpus "$CLIENT_CPUS" -c "$CONNECTIONS" --pipeline "$pipeline" -d "$DURATION" --json \
        "http://127.0.0.1:$PORT/health" 2>/dev/null |
        awk -F'[:,]' '/"overall"/ {o = 1} o && /"errors":/ && !e {e = $2} o && /"rps":/ && !r {r = $2}
                      o && /"p99":/ && !p {p = $2} END {printf "%d %s %d\n", r, p + 0, e}'
}

echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "client: loadgen on CPUs $CLIENT_CPUS, $CONNECTIONS connections; monitor on CPU $MONITOR_CPU; $DURATION per cell"
echo
echo "| engine | shards | keep-alive req/s | p99 ms | speed-up | pipelined x$PIPELINE req/s | p99 ms | speed-up | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for engine in $ENGINES; do
    base_ka="" base_pl=""
    for n in $SHARDS; do
        last=$((n - 1))
        "$COINBIT" --engine "$engine" --bind-address 127.0.0.1 --port "$PORT" --shards "$n" \
            --shard-cpus "0-$last" --monitor-core "$MONITOR_CPU" >/tmp/shard_scaling.log 2>&1 &
        server_pid=$!
        wait_for_listening /tmp/shard_scaling.log "$server_pid"
        read -r ka ka_p99 ka_err < <(drive 1)
        read -r pl pl_p99 pl_err < <(drive "$PIPELINE")
        kill -INT "$server_pid"; wait "$server_pid" || true; server_pid=""
        base_ka=${base_ka:-$ka}; base_pl=${base_pl:-$pl}
        printf '| %s | %s | %s | %s | %.2fx | %s | %s | %.2fx | %s |\n' "$engine" "$n" "$ka" "$ka_p99" \
            "$(awk "BEGIN {print $ka / $base_ka}")" "$pl" "$pl_p99" "$(awk "BEGIN {print $pl / $base_pl}")" "$((ka_err + pl_err))"
    done
done
