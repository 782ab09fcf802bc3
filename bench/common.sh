# Shared by the bench scripts (sourced, not run).

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
