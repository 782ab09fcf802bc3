#!/usr/bin/env bash
# Runs each fuzz target for a bounded time from the checked-in seeds; fails on any crash.
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]   (default 45)
# FUZZ_SEED and FUZZ_RUNS (optional) fix libFuzzer's seed and bound its executions per target,
# so that a run is repeatable: CI uses both, and a crash it reports is the same on every rerun.
# Installs cargo-fuzz if missing. The toolchain is stable: RUSTC_BOOTSTRAP lets it take the
# nightly flags cargo-fuzz passes (-Z sanitizer, coverage instrumentation).
# Inputs found during the run go to corpus-run/ (ignored), not into the checked-in seeds; a crash
# is saved under artifacts/<target>/ and its reproducer printed by libFuzzer.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-45}
CARGO_FUZZ_VERSION=0.12.0
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
targets=(http_conn json_bodies auth)
# Built once, optimised, with AddressSanitizer (the codec's buffer handling is what it checks).
cargo fuzz build --fuzz-dir . -O --sanitizer address
for target in "${targets[@]}"; do
  mkdir -p "corpus-run/$target" "artifacts/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run --fuzz-dir . -O --sanitizer address "$target" \
    "corpus-run/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 \
    -print_final_stats=1 -seed="${FUZZ_SEED:-0}" -runs="${FUZZ_RUNS:--1}"
done
echo "fuzz: no crash in ${targets[*]}"
