#!/usr/bin/env bash
# Memory of idle keep-alive connections, coinbit (each engine) against nginx, in one run.
#
# For each server in turn: starts it pinned to SERVER_CPU, reads its RSS, opens N keep-alive
# connections from a client on CLIENT_CPU (each sends one GET and reads the answer, then stays
# open and silent), reads the RSS again, closes them all, waits until the server saw them go and
# reads the RSS a last time. Reports RSS per held connection (KiB) and the RSS after the close
# against the start. nginx's RSS is its master's plus its worker's.
#
# Usage: bench/idle_connections.sh [N]      (N: connections, default 15000; the open-file limit
#                                            of 20,000 bounds it)
# Environment:
#   SERVERS="coinbit-glommio coinbit-may nginx"   in this order; before-glommio, before-may run
#                                                 COINBIT_BEFORE (a binary built from an earlier
#                                                 commit) for a before/after in the same run
#   COINBIT=target/release/coinbit   the binary measured as coinbit-*; BUILD=1 builds it first
#   COINBIT_BEFORE=                  path of the "before" binary
#   SERVER_CPU=0 CLIENT_CPU=1 PORT=18190 OUT_DIR=bench/out SETTLE_S=2
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

N=${1:-${N:-15000}}
[[ $N =~ ^[0-9]+$ ]] && ((N > 0)) || die "N must be a positive number of connections, not '$N'"
((N <= 19000)) || die "N=$N: the open-file limit (20,000) leaves room for at most 19000"
SERVERS=${SERVERS:-"coinbit-glommio coinbit-may nginx"}
COINBIT=${COINBIT:-$ROOT/target/release/coinbit}
COINBIT_BEFORE=${COINBIT_BEFORE:-}
BUILD=${BUILD:-0}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18190}
OUT_DIR=${OUT_DIR:-$ROOT/bench/out}
SETTLE_S=${SETTLE_S:-2}
HOST=127.0.0.1
for s in $SERVERS; do
    case $s in
        coinbit-glommio | coinbit-may | nginx) ;;
        before-glommio | before-may) [[ -x $COINBIT_BEFORE ]] || die "$s needs COINBIT_BEFORE (an executable)";;
        *) die "unknown server '$s' in SERVERS (coinbit-glommio, coinbit-may, before-glommio, before-may, nginx)";;
    esac
done
if ((BUILD)); then
    (cd "$ROOT" && nice -n 19 cargo build --release -p coinbit >&2) || die "release build failed"
fi
if [[ " $SERVERS " == *" coinbit-"* ]]; then [[ -x $COINBIT ]] || die "no binary at $COINBIT (BUILD=1 builds it)"; fi
NGINX=$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)
if [[ " $SERVERS " == *" nginx "* && -z $NGINX ]]; then
    log "installing nginx-light from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 nginx-light >&2 ||
        die "apt-get install nginx-light failed"
    NGINX=/usr/sbin/nginx
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) > N + 100)) || die "open-file limit $(ulimit -n) is too low for $N connections"
pin_bench_alert_levels "$N"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/idle_connections.XXXXXX")
server_pid=""
client_pid=""
stop_all() {
    [[ -n $client_pid ]] && { kill "$client_pid" 2>/dev/null; wait "$client_pid" 2>/dev/null || true; client_pid=""; }
    [[ -n $server_pid ]] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
trap 'stop_all; rm -rf "$TMP"' EXIT
trap 'log interrupted; exit 130' INT TERM

# rss_kib PID: resident memory of PID and its children (nginx's worker), KiB.
rss_kib() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
# established COUNT: connections established to the server's port.
established() { ss -Htn state established "( sport = :$PORT )" | wc -l; }

start() { # name
    local name=$1 log_file=$TMP/$1.log
    case $name in
        coinbit-* | before-*)
            local binary=$COINBIT
            [[ $name == before-* ]] && binary=$COINBIT_BEFORE
            taskset -c "$SERVER_CPU" nice -n 0 "$binary" --engine "${name#*-}" --bind-address "$HOST" \
                --port "$PORT" --shards 1 --shard-cpus "$SERVER_CPU" --monitor-core "$SERVER_CPU" \
                --snapshot-interval 200 --keep-alive-timeout 600000 \
                --max-connections-per-shard $((N + 100)) >"$log_file" 2>&1 &
            ;;
        nginx)
            local mask=1
            for ((i = 0; i < SERVER_CPU; i++)); do mask+=0; done
            mkdir -p "$TMP/nginx"; chmod 755 "$TMP" "$TMP/nginx"
            sed -e "s|@TMPDIR@|$TMP/nginx|g" -e "s|@CPU_MASK@|$mask|g" -e "s|@HOST@|$HOST|g" \
                -e "s|@PORT@|$PORT|g" -e "s|@BODY@|{\"status\":\"ok\"}|g" \
                -e "s|worker_connections 8192;|worker_connections $((N + 100));|" \
                "$ROOT/bench/peers/nginx.conf.in" >"$TMP/nginx/nginx.conf"
            taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/nginx/" -e "$TMP/nginx/error.log" \
                -c "$TMP/nginx/nginx.conf" >"$log_file" 2>&1 &
            ;;
    esac
    server_pid=$!
    for _ in $(seq 100); do
        kill -0 "$server_pid" 2>/dev/null || { cat "$log_file" >&2; die "$name exited during start-up"; }
        curl -s -o /dev/null -m 1 "http://$HOST:$PORT/livez" && return 0
        sleep 0.1
    done
    die "$name did not answer on port $PORT in 10 s"
}

# The client: N connections, one GET each (in batches, pipelined over the batch), then silent
# until stdin closes; prints "held" once every answer came.
cat >"$TMP/client.py" <<'PY'
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = b"GET /livez HTTP/1.1\r\nHost: bench\r\n\r\n"
held = []
for first in range(0, n, 500):
    batch = [socket.create_connection((host, port)) for _ in range(min(500, n - first))]
    for s in batch:
        s.sendall(req)
    for s in batch:
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("closed by the server after %d connections" % len(held))
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            sys.exit("unexpected answer: %r" % got[:80])
    held += batch
print("held", len(held), flush=True)
sys.stdin.read()
PY

declare -A START HELD AFTER
for name in $SERVERS; do
    log "$name: starting"
    start "$name"
    sleep "$SETTLE_S"
    START[$name]=$(rss_kib "$server_pid")
    mkfifo "$TMP/stdin.$name"
    taskset -c "$CLIENT_CPU" python3 "$TMP/client.py" "$HOST" "$PORT" "$N" <"$TMP/stdin.$name" >"$TMP/client.$name" &
    client_pid=$!
    exec 7>"$TMP/stdin.$name"
    for _ in $(seq 600); do
        grep -q held "$TMP/client.$name" 2>/dev/null && break
        kill -0 "$client_pid" 2>/dev/null || die "$name: the client failed: $(cat "$TMP/client.$name")"
        sleep 0.1
    done
    grep -q held "$TMP/client.$name" || die "$name: $N connections not held in 60 s"
    sleep "$SETTLE_S"
    HELD[$name]=$(rss_kib "$server_pid")
    exec 7>&-
    wait "$client_pid" || true
    client_pid=""
    for _ in $(seq 100); do (($(established) == 0)) && break; sleep 0.1; done
    # A report interval or more, for the shard to trim what the connections freed.
    sleep "$SETTLE_S"
    AFTER[$name]=$(rss_kib "$server_pid")
    log "$name: ${START[$name]} KiB -> ${HELD[$name]} KiB held -> ${AFTER[$name]} KiB after close"
    stop_all
done

mkdir -p "$OUT_DIR"
out_md=$OUT_DIR/idle_connections-$(date +%Y%m%d-%H%M%S).md
{
    echo "# Idle keep-alive connections: $N, one GET each, then silent"
    echo
    echo "Server on CPU $SERVER_CPU (coinbit: 1 shard, monitor on the same CPU), client on CPU $CLIENT_CPU;"
    echo "RSS from /proc (nginx: master + worker). $(nproc) CPUs, $(uname -r)."
    echo
    echo "| server | RSS start (MiB) | RSS held (MiB) | KiB per connection | RSS after close (MiB) | after / start |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in $SERVERS; do
        awk -v n="$name" -v s="${START[$name]}" -v h="${HELD[$name]}" -v a="${AFTER[$name]}" -v c="$N" \
            'BEGIN { printf "| %s | %.1f | %.1f | %.2f | %.1f | %.2f |\n", n, s/1024, h/1024, (h-s)/c, a/1024, a/s }'
    done
} | tee "$out_md"
log "written to $out_md"
