#!/usr/bin/env bash
# bench/http_peers.sh — coinbit's two engines against their HTTP peers, one pinned server core each.
#
# Builds the release binaries, installs wrk and nginx from Debian if missing, then for each
# scenario — keep-alive 64/256/1024 connections, pipelined depth 16 at 256 connections — runs
# each server in turn (coinbit on glommio, coinbit on may, may-hello, nginx): starts it pinned to
# SERVER_CPU, waits until it answers, drives `GET /health` with wrk pinned to CLIENT_CPU, stops it.
# Then it prints a markdown table of req/s and p99 per server with the ratios of each coinbit
# engine to nginx and to may-hello.
# The table is also written to bench/out/http_peers-<date>.md (raw wrk output beside it).
#
# Alert levels: coinbit's /health answers 503 while an alert is critical, and the seed's
# concurrent-users levels (800/950) are below this bench's 1,024 connections. coinbit runs with
# the users alerts at 2x and 4x the most connections a scenario opens (bench/common.sh,
# pin_bench_alert_levels, as bench/quickstart.sh does); the header of the output says which.
# Valid cells only: a cell with any non-2xx response or socket error in any round is not a
# result. The table shows it as `INVALID (...)`, its ratios as `invalid`, and the script exits 2
# after printing the table (1: a step failed).
#
# Usage:  bench/http_peers.sh
# Quick check of the script itself: DURATION=1s WARMUP=0 CONNS=8 PIPELINE_DEPTH=0 BUILD=0 bench/http_peers.sh
# Environment (all optional):
#   SERVERS="coinbit-glommio coinbit-may may-hello nginx"  servers to run, in this order
#                     (coinbit-ENGINE is coinbit with --engine ENGINE; baseline-ENGINE is the
#                     binary COINBIT_BASELINE names, e.g. an earlier build, with --engine ENGINE:
#                     a before/after pair in one run, with an ENGINE/baseline ratio column)
#   COINBIT_BASELINE  the coinbit binary the baseline-* servers run
#   DURATION=10s      wrk duration of each cell     WARMUP=2s  unrecorded wrk run before each cell (0 = none)
#   MONITORING_CONCURRENT_USERS_WARNING / _CRITICAL   coinbit's users alerts (default 2x / 4x
#                     the most connections; see above)
#   ROUNDS=1          rounds; in each, every scenario runs on every server back to back (a fresh
#                     server per cell, order rotating); a cell is the median over rounds, a
#                     ratio the median of the per-round ratios
#   CONNS="64 256 1024"   keep-alive connection counts
#   PIPELINE_DEPTH=16 PIPELINE_CONNS=256   the pipelined scenario (PIPELINE_DEPTH=0 drops it)
#   SERVER_CPU=0 CLIENT_CPU=1             taskset cores of the server and of wrk
#   PORT_BASE=18080   coinbit-glommio on PORT_BASE, may-hello +1, nginx +2, coinbit-may +3 (below
#                     32768); a port held by another process is replaced by a free one above it
#   BENCH_PATH=/health  WRK_TIMEOUT=5s  WRK_THREADS=1
#   PEER_BODY_BYTES=512  body size of the peers' answer: that of coinbit's /health document, so
#                     every server sends the same bytes (17 gives the bare {"status":"pass"})
#   BUILD=1           0 = do not run cargo, use the binaries already built
#   INSTALL=1         0 = do not apt-get install wrk/nginx when missing
#   CARGO_TARGET_DIR  honoured (default: target/ in the repository)
#   OUT_DIR=bench/out

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
. bench/common.sh

SERVERS=${SERVERS:-"coinbit-glommio coinbit-may may-hello nginx"}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-"64 256 1024"}
PIPELINE_DEPTH=${PIPELINE_DEPTH:-16}
PIPELINE_CONNS=${PIPELINE_CONNS:-256}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT_BASE=${PORT_BASE:-18080}
BENCH_PATH=${BENCH_PATH:-/health}
WRK_TIMEOUT=${WRK_TIMEOUT:-5s}
WRK_THREADS=${WRK_THREADS:-1}
PEER_BODY_BYTES=${PEER_BODY_BYTES:-512}
BUILD=${BUILD:-1}
INSTALL=${INSTALL:-1}
HOST=127.0.0.1
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=${OUT_DIR:-$ROOT/bench/out}
export PIPELINE_DEPTH

log() { printf '[http_peers] %s\n' "$*" >&2; }

# The peers answer a JSON body of PEER_BODY_BYTES, the size of coinbit's /health document, so
# that every server puts the same bytes on the wire (the same padding as may-hello's).
peer_body() {
    local base='{"status":"pass"}' wrapper='{"status":"pass","pad":""}'
    if ((PEER_BODY_BYTES <= ${#wrapper})); then echo "$base"; return; fi
    printf '{"status":"pass","pad":"%s"}' "$(head -c $((PEER_BODY_BYTES - ${#wrapper})) /dev/zero | tr '\0' x)"
}
die() { log "error: $*"; exit 1; }

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $PORT_BASE =~ ^[0-9]+$ ]] && ((PORT_BASE >= 1024 && PORT_BASE + 3 < 32768)) \
    || die "PORT_BASE must be within 1024..32764 (below the ephemeral range), got '$PORT_BASE'"
for s in $SERVERS; do
    case $s in
        coinbit-glommio|coinbit-may|may-hello|nginx) ;;
        baseline-glommio|baseline-may)
            [[ -x ${COINBIT_BASELINE:-} ]] || die "$s needs COINBIT_BASELINE, the coinbit binary to compare against (got '${COINBIT_BASELINE:-}')";;
        *) die "unknown server '$s' in SERVERS (coinbit-glommio, coinbit-may, baseline-glommio, baseline-may, may-hello, nginx)";;
    esac
done

declare -A PORT=()   # server -> port it listens on (chosen when it first starts)
preferred_port() {
    case $1 in
        coinbit-glommio) echo $((PORT_BASE));; may-hello) echo $((PORT_BASE + 1));;
        nginx) echo $((PORT_BASE + 2));; coinbit-may) echo $((PORT_BASE + 3));;
        baseline-glommio) echo $((PORT_BASE + 4));; baseline-may) echo $((PORT_BASE + 5));;
    esac
}
port_of() { echo "${PORT[$1]:-$(preferred_port "$1")}"; }

# ---------------------------------------------------------------- tools
find_nginx() { command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }; }

need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
[[ " $SERVERS " == *" nginx "* ]] && [[ -z $(find_nginx) ]] && need_pkgs+=(nginx)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
command -v curl >/dev/null || need_pkgs+=(curl)
if ((${#need_pkgs[@]})); then
    ((INSTALL)) || die "missing ${need_pkgs[*]} and INSTALL=0"
    ((EUID == 0)) || die "missing ${need_pkgs[*]}: run as root or: sudo apt-get install -y ${need_pkgs[*]}"
    log "installing ${need_pkgs[*]} from Debian"
    apt-get update -qq || die "apt-get update failed"
    # Another apt may hold the lock for a while on a shared machine: wait for it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need_pkgs[@]}" >&2 \
        || die "apt-get install ${need_pkgs[*]} failed"
fi
NGINX=$(find_nginx)

# ---------------------------------------------------------------- build
declare -A SKIP=()   # server -> reason it is not measured
package_of() { case $1 in coinbit-*) echo coinbit;; nginx|baseline-*) ;; *) echo "$1";; esac; }
declare -A BUILT=()   # package -> "ok" or why not
for s in $SERVERS; do
    p=$(package_of "$s")
    [[ -z $p || -n ${BUILT[$p]:-} ]] && continue
    # One package per cargo run: features resolve as for that package alone (coinbit's may
    # without the work stealing that may-hello's may_minihttp brings in).
    if ((BUILD)) && ! { log "cargo build --release -p $p  (target dir: $TARGET_DIR)"; cargo build --release -p "$p" >&2; }; then
        BUILT[$p]="its release build failed (cargo build --release -p $p)"
    elif [[ ! -x $TARGET_DIR/release/$p ]]; then
        BUILT[$p]="no binary at $TARGET_DIR/release/$p"
    else
        BUILT[$p]=ok
    fi
done
for s in $SERVERS; do
    p=$(package_of "$s")
    [[ -n $p && ${BUILT[$p]} != ok ]] && SKIP[$s]=${BUILT[$p]}
done
for s in "${!SKIP[@]}"; do log "SKIPPING $s: ${SKIP[$s]}"; done

# ---------------------------------------------------------------- limits, temp dir, cleanup
want_fd=20000
if (( $(ulimit -n) < want_fd )); then
    ulimit -n "$want_fd" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
max_conns=$PIPELINE_CONNS; for c in $CONNS; do ((c > max_conns)) && max_conns=$c; done
(( $(ulimit -n) > max_conns + 64 )) || log "warning: open-file limit $(ulimit -n) is tight for $max_conns connections"
pin_bench_alert_levels "$max_conns"
log "coinbit: $(bench_alert_levels)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/http_peers.XXXXXX") || die "mktemp failed"
SERVER_PID=""
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
}
cleanup() { stop_server; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
RAW_DIR=$OUT_DIR/http_peers-$STAMP.raw
mkdir -p "$RAW_DIR"
OUT_MD=$OUT_DIR/http_peers-$STAMP.md

# ---------------------------------------------------------------- servers
port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

start_server() { # name -> sets SERVER_PID, returns non-zero if it does not come up
    local name=$1 port log_file
    port=$(port_of "$name")
    log_file=$RAW_DIR/$name.server.log
    if port_busy "$port"; then
        # Shared machine: someone else may sit on the port. Take the next free one above.
        local p=$((PORT_BASE + 6))
        while port_busy "$p" && ((p < port + 200 && p < 32767)); do p=$((p + 1)); done
        port_busy "$p" && { log "no free port near $port for $name"; return 1; }
        log "port $port is in use by another process: $name uses port $p"
        port=$p
    fi
    PORT[$name]=$port
    case $name in
        coinbit-* | baseline-*)
            local binary=$TARGET_DIR/release/coinbit
            [[ $name == baseline-* ]] && binary=$COINBIT_BASELINE
            taskset -c "$SERVER_CPU" "$binary" --port "$port" --engine "${name#*-}" \
                --shard-cpus "$SERVER_CPU" --monitor-core "$SERVER_CPU" >>"$log_file" 2>&1 &
            ;;
        may-hello)
            taskset -c "$SERVER_CPU" "$TARGET_DIR/release/may-hello" --port "$port" \
                --workers 1 --cpu "$SERVER_CPU" --body-bytes "$PEER_BODY_BYTES" >>"$log_file" 2>&1 &
            ;;
        nginx)
            local ndir=$TMP/nginx mask
            rm -rf "$ndir"; mkdir -p "$ndir"; chmod 755 "$TMP" "$ndir"
            # worker_cpu_affinity bit mask, CPU 0 rightmost (e.g. CPU 0 -> 1, CPU 2 -> 100)
            mask=1; for ((i = 0; i < SERVER_CPU; i++)); do mask+=0; done
            sed -e "s|@TMPDIR@|$ndir|g" -e "s|@CPU_MASK@|$mask|g" -e "s|@HOST@|$HOST|g" \
                -e "s|@PORT@|$port|g" -e "s|@BODY@|$(peer_body)|g" \
                "$ROOT/bench/peers/nginx.conf.in" >"$ndir/nginx.conf"
            cp "$ndir/nginx.conf" "$RAW_DIR/nginx.conf"
            taskset -c "$SERVER_CPU" "$NGINX" -p "$ndir/" -e "$ndir/error.log" \
                -c "$ndir/nginx.conf" >>"$log_file" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    local url="http://$HOST:$port$BENCH_PATH"
    for _ in $(seq 100); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$name exited during start-up; its log:"; tail -n 20 "$log_file" >&2
            [[ $name == nginx ]] && tail -n 20 "$TMP/nginx/error.log" >&2 2>/dev/null
            SERVER_PID=""; return 1
        fi
        if curl -s -o /dev/null -m 1 "$url"; then
            local code
            code=$(curl -s -o "$RAW_DIR/$name.health.body" -w '%{http_code}' -m 2 "$url")
            [[ $code == 200 ]] || log "warning: $name answers $BENCH_PATH with HTTP $code"
            return 0
        fi
        sleep 0.1
    done
    log "$name did not answer $url within 10 s"; stop_server; return 1
}

# ---------------------------------------------------------------- scenarios and wrk
SCENARIOS=()
for c in $CONNS; do SCENARIOS+=("ka$c"); done
((PIPELINE_DEPTH > 0)) && SCENARIOS+=("pipe$PIPELINE_DEPTH")
scenario_label() {
    case $1 in
        ka*) echo "keep-alive, ${1#ka} conns";;
        pipe*) echo "pipelined ×${1#pipe}, $PIPELINE_CONNS conns";;
    esac
}

# p99 from wrk ("850.00us", "1.23ms", "1.02s", "1.50m") in milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "nan" }'
}

declare -A RPS=() P99=() ERRS=()   # RPS/P99 key "server|scenario|round"; ERRS key "server|scenario"
# Why a cell is invalid (bench/common.sh, "valid cells"): PROBLEMS key "server|scenario" (every
# round's), ROUND_PROBLEMS key "server|scenario|round".
declare -A PROBLEMS=() ROUND_PROBLEMS=()

run_wrk() { # server scenario round [warmup]
    local name=$1 sc=$2 round=$3 port conns args=() out
    port=$(port_of "$name")
    case $sc in
        ka*) conns=${sc#ka};;
        pipe*) conns=$PIPELINE_CONNS; args=(-s "$ROOT/bench/peers/pipeline.lua");;
    esac
    if [[ ${4:-} == warmup ]]; then
        WRK_CONNECTIONS=$conns taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$conns" -d"$WARMUP" \
            --timeout "$WRK_TIMEOUT" "${args[@]}" "http://$HOST:$port$BENCH_PATH" >/dev/null 2>&1
        return
    fi
    out=$RAW_DIR/r$round-$name-$sc.txt
    WRK_CONNECTIONS=$conns taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$conns" -d"$DURATION" \
        --timeout "$WRK_TIMEOUT" --latency "${args[@]}" "http://$HOST:$port$BENCH_PATH" >"$out" 2>&1
    local rps p99 problems
    problems=$(wrk_problems "$out")
    if ! refuse_cell "$name, $(scenario_label "$sc"), round $round" "$problems"; then
        ROUND_PROBLEMS["$name|$sc|$round"]=$problems
        PROBLEMS["$name|$sc"]+="${PROBLEMS["$name|$sc"]:+; }round $round: $problems"
    fi
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
    if [[ $sc == pipe* ]]; then
        # wrk's own percentiles are wrong for pipelined runs: pipeline.lua prints the batch ones
        p99=$(awk '/^pipeline-batch-latency-us / {for (i = 2; i <= NF; i++) if ($i ~ /^p99=/) {sub(/^p99=/, "", $i); print $i "us"}}' "$out")
        [[ -n $p99 || -z $rps ]] || { p99=nan; ERRS["$name|$sc"]+="round $round: $(grep -h '^pipeline-batch-latency-us' "$out" || echo 'no batch latency line'); "; }
    else
        p99=$(awk '/Latency Distribution/ {d = 1} d && $1 == "99%" {print $2; exit}' "$out")
    fi
    if [[ -z $rps || -z $p99 ]]; then
        log "  $name $sc: wrk gave no result (see $out)"
        ERRS["$name|$sc"]+="round $round: no result; "
        return
    fi
    p99=$(to_ms "$p99")
    if [[ $p99 == 0.000 ]]; then
        ERRS["$name|$sc"]+="round $round: wrk reported a p99 of 0 (not used); "; p99=nan
    fi
    RPS["$name|$sc|$round"]=$rps
    [[ $p99 == nan ]] || P99["$name|$sc|$round"]=$p99
    log "  $name $(scenario_label "$sc"): $rps req/s, p99 ${p99} ms${problems:+ (INVALID: $problems)}"
}

# ---------------------------------------------------------------- run
read -r -a ORDER <<<"$SERVERS"
RUN=()
for s in "${ORDER[@]}"; do [[ -z ${SKIP[$s]:-} ]] && RUN+=("$s"); done
((${#RUN[@]})) || die "no server left to measure"
declare -A FAILED=()

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "scenarios: ${SCENARIOS[*]}; ${DURATION} each (warm-up ${WARMUP}); rounds: $ROUNDS; server cpu $SERVER_CPU, wrk cpu $CLIENT_CPU"
# Cell-level interleaving: for each round and scenario every server runs back to back (order
# rotating), each started fresh and stopped after its cell, so that the machine's background
# load (a shared machine) falls on all of them alike and ratios are taken within one round.
n=${#RUN[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((j = 0; j < ${#SCENARIOS[@]}; j++)); do
        sc=${SCENARIOS[$j]}
        for ((k = 0; k < n; k++)); do
            name=${RUN[$(((k + round - 1 + j) % n))]}
            [[ -n ${FAILED[$name]:-} ]] && continue
            if ! start_server "$name"; then
                FAILED[$name]="did not start or answer (see its log in $RAW_DIR)"
                continue
            fi
            if [[ $WARMUP != 0 ]]; then
                run_wrk "$name" "$sc" "$round" warmup
            fi
            if kill -0 "$SERVER_PID" 2>/dev/null; then
                log "round $round/$ROUNDS, $(scenario_label "$sc"): $name (port $(port_of "$name"))"
                run_wrk "$name" "$sc" "$round"
            fi
            kill -0 "$SERVER_PID" 2>/dev/null || { log "$name died during the run"; FAILED[$name]="died during a run (see $RAW_DIR)"; }
            stop_server
            sleep 0.5
        done
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
[[ -n $cpu_model ]] || cpu_model=$(uname -m)
fmt_rps() { [[ -n $1 ]] && printf '%.0f' "$1" || printf '—'; }
fmt_p99() { [[ -n $1 ]] && printf '%.2f ms' "$1" || printf '—'; }
has() { [[ " ${ORDER[*]} " == *" $1 "* ]]; }
vals() { # kind(RPS|P99) server scenario -> the values of all rounds
    local -n arr=$1; local r
    for ((r = 1; r <= ROUNDS; r++)); do [[ -n ${arr["$2|$3|$r"]:-} ]] && echo "${arr["$2|$3|$r"]}"; done
}
ratio() { # a b scenario -> median over rounds of req/s(a)/req/s(b), both taken in the same round
    [[ -n ${PROBLEMS["$1|$3"]:-}${PROBLEMS["$2|$3"]:-} ]] && { printf 'invalid'; return; }
    local r a b rs=()
    for ((r = 1; r <= ROUNDS; r++)); do
        a=${RPS["$1|$3|$r"]:-}; b=${RPS["$2|$3|$r"]:-}
        [[ -n $a && -n $b ]] && rs+=("$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.6f", a / b }')")
    done
    local m; m=$(median "${rs[@]}")
    [[ -n $m ]] && printf '%.2f×' "$m" || printf '—'
}

{
    echo "### GET $BENCH_PATH, one server core — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- Machine: $(nproc) CPUs, $cpu_model, Linux $(uname -r)"
    echo "- Load average (1/5/15 min) at start: $LOAD_START; at end: $LOAD_END"
    echo "- Server pinned to CPU $SERVER_CPU (taskset); wrk $(wrk -v 2>&1 | awk 'NR == 1 {print $2}') pinned to CPU $CLIENT_CPU, -t$WRK_THREADS, $DURATION per cell after a $WARMUP warm-up, --timeout $WRK_TIMEOUT"
    echo "- $ROUNDS round(s); in each, every scenario runs on every server back to back (fresh start per cell, order rotating); figures are medians over rounds, ratios the median of the per-round ratios"
    [[ -n $NGINX ]] && has nginx && echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), 1 worker, access_log off, \`return 200\` of a ${PEER_BODY_BYTES}-byte JSON body"
    has may-hello && echo "- may-hello: may_minihttp $(cargo tree -p may-hello --depth 1 -e normal 2>/dev/null | awk '/may_minihttp/ {print $3; exit}'), may $(cargo tree -p may-hello -e normal 2>/dev/null | awk '$0 ~ /may v/ {for (i = 1; i <= NF; i++) if ($i == "may") {print $(i + 1); exit}}'), 1 worker"
    has coinbit-glommio || has coinbit-may && echo "- coinbit: \`coinbit --port P --engine glommio|may --shard-cpus $SERVER_CPU --monitor-core $SERVER_CPU\` (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ', with uncommitted changes'))"
    sizes=""
    for s in "${ORDER[@]}"; do
        [[ -f $RAW_DIR/$s.health.body ]] && sizes+="${sizes:+, }$s $(wc -c <"$RAW_DIR/$s.health.body") B"
    done
    [[ -n $sizes ]] && echo "- Response body of GET $BENCH_PATH: $sizes"
    has coinbit-glommio || has coinbit-may && echo "- coinbit's $(bench_alert_levels), so that /health does not answer 503 for the bench's own connections"
    echo "- A cell with any non-2xx response or socket error is INVALID: no figure, no ratio; the script exits $INVALID_EXIT"
    echo "- Command: \`${COINBIT_BASELINE:+COINBIT_BASELINE=$COINBIT_BASELINE }SERVERS=\"$SERVERS\" DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS PEER_BODY_BYTES=$PEER_BODY_BYTES bench/http_peers.sh\`"
    echo "- p99: wrk's, corrected for coordinated omission as wrk does.$( ((PIPELINE_DEPTH > 0)) && echo " Pipelined: per batch of ${PIPELINE_DEPTH} (send → last response), recovered by bench/peers/pipeline.lua because wrk's own pipelined percentiles are wrong")"
    for s in "${!SKIP[@]}"; do echo "- **$s not measured**: ${SKIP[$s]}"; done
    for s in "${!FAILED[@]}"; do echo "- **$s**: ${FAILED[$s]}"; done
    echo
    header="| Scenario |"; sep="|---|"
    for s in "${ORDER[@]}"; do header+=" $s req/s | $s p99 |"; sep+="---:|---:|"; done
    COINBITS=(); for s in "${ORDER[@]}"; do [[ $s == coinbit-* ]] && COINBITS+=("$s"); done
    for c in "${COINBITS[@]}"; do
        has "baseline-${c#coinbit-}" && { header+=" ${c#coinbit-}/baseline |"; sep+="---:|"; }
        has nginx && { header+=" ${c#coinbit-}/nginx |"; sep+="---:|"; }
        has may-hello && { header+=" ${c#coinbit-}/may-hello |"; sep+="---:|"; }
    done
    has may-hello && has nginx && { header+=" may-hello/nginx |"; sep+="---:|"; }
    echo "$header"; echo "$sep"
    for sc in "${SCENARIOS[@]}"; do
        row="| $(scenario_label "$sc") |"
        for s in "${ORDER[@]}"; do
            problems=${PROBLEMS["$s|$sc"]:-}
            row+=" $(cell_figure "$(fmt_rps "$(median $(vals RPS "$s" "$sc"))")" "$problems") | $(cell_figure "$(fmt_p99 "$(median $(vals P99 "$s" "$sc"))")" "${problems:+see req/s}") |"
        done
        for c in "${COINBITS[@]}"; do
            has "baseline-${c#coinbit-}" && row+=" $(ratio "$c" "baseline-${c#coinbit-}" "$sc") |"
            has nginx && row+=" $(ratio "$c" nginx "$sc") |"
            has may-hello && row+=" $(ratio "$c" may-hello "$sc") |"
        done
        has may-hello && has nginx && row+=" $(ratio may-hello nginx "$sc") |"
        echo "$row"
    done
    echo
    echo "Ratios are of req/s (above 1: the first server served more); glommio and may are coinbit on each engine."
    if ((ROUNDS > 1)); then
        echo
        echo "Per round, req/s:"
        echo
        header="| Scenario | round |"; sep="|---|---:|"
        for s in "${ORDER[@]}"; do header+=" $s |"; sep+="---:|"; done
        echo "$header"; echo "$sep"
        for sc in "${SCENARIOS[@]}"; do
            for ((r = 1; r <= ROUNDS; r++)); do
                row="| $(scenario_label "$sc") | $r |"
                for s in "${ORDER[@]}"; do row+=" $(cell_figure "$(fmt_rps "${RPS["$s|$sc|$r"]:-}")" "${ROUND_PROBLEMS["$s|$sc|$r"]:-}") |"; done
                echo "$row"
            done
        done
    fi
    notes=""
    for s in "${ORDER[@]}"; do for sc in "${SCENARIOS[@]}"; do
        [[ -n ${ERRS["$s|$sc"]:-} ]] && notes+="- $s, $(scenario_label "$sc"): ${ERRS["$s|$sc"]%; }"$'\n'
    done; done
    if [[ -n $notes ]]; then echo; echo "Notes on wrk's output:"; echo; printf '%s' "$notes"; fi
} | tee "$OUT_MD"

log "written: $OUT_MD (raw wrk output: $RAW_DIR)"
exit_if_invalid http_peers
