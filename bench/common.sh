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
