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
# logging to $out/server.log; sets server_pid and returns once it listens. stop_server ends it.
start_one_shard() {
    "$@" --bind-address 127.0.0.1 --port "$PORT" --shards 1 --shard-cpus "$SERVER_CPU" \
        --monitor-core "$CLIENT_CPU" --snapshot-interval 200 >"$out/server.log" 2>&1 &
    server_pid=$!
    wait_for_listening "$out/server.log" "$server_pid"
}
stop_server() { kill -INT "$server_pid"; wait "$server_pid" || true; server_pid=""; }
