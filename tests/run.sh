#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs them all
# (the server's unit and integration tests, loadgen's, the tuning doctor's).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# The report and dashboard tests open their pages in headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The database tests start a real PostgreSQL primary and replicas (tests/pg/cluster.sh).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# tests/bench_scripts.rs runs bench/trading_fanout.sh, which seals exchange secrets in python3.
python3 -c 'import cryptography' 2>/dev/null || need+=(python3-cryptography)
# tests/balancer.rs runs HAProxy in front of three instances.
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --no-fail-fast: a failing binary does not keep the ones after it from running, so one run
# reports every failure; cargo still exits non-zero when any test or binary failed.
# PostgreSQL clusters never run two at a time: cargo runs the test binaries one after another,
# and inside a binary tests/common/pg.rs lets one cluster run at a time (tests/database.rs and
# tests/durable_jobs.rs share one for all their tests; tests/database_failover.rs's tests, which
# stop nodes, take turns with one each), so four postmasters at most share the two cores with
# the servers under test instead of starving each other into timeouts.
# Without bench/may-hello: its may_minihttp turns may's work stealing on for every crate built
# with it (cargo unifies features across the packages of one build), and the server's may
# engine, built without it (Cargo.toml), keeps each coroutine on its shard's pinned carrier;
# the tests check the build that ships.
cargo test --workspace --exclude may-hello --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# The failures again, at the end where a truncated log still shows them: each panic's test and
# the first lines of its message (the whole of it is above, in its binary's output).
if [ "$status" -ne 0 ]; then
  echo "--- failed tests"
  awk '/^thread .* panicked at / { n = 8 } /^stack backtrace:/ { n = 0 } n > 0 { print; n-- }' "$log"
  grep -E '^    `-p .* --test |^error: [0-9]+ targets? failed' "$log" || true
fi
# One closing line over every test binary (cargo prints one result line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
