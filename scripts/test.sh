#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings denied, the whole test suite
# (nextest, then doc tests), and a short run of every fuzz target.
#
#   JARVIS_FUZZ_SECS=N   seconds per fuzz target (default 10; 0 skips fuzzing)
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."
install_system_packages
ensure_rust
ensure_cargo_tool cargo-nextest cargo-nextest
ensure_python_packages
ensure_node_packages

say "cargo fmt --check"
cargo fmt --all --check

say "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

say "doc tests"
cargo test --locked --workspace --doc

say "building"
cargo build --locked --workspace --all-targets
# The tests run the real models (testing.md); they live in the machine's model cache.
ensure_models "$CARGO_TARGET_DIR/debug/jarvis"
# The third-party OpenAI-compatible server the GPU tier's tests front (built once, cached).
ensure_llama_server

say "tests"
nextest_log="$JARVIS_CACHE/nextest.log"
cargo nextest run --locked --workspace --no-fail-fast 2>&1 | tee "$nextest_log"
summary=$(grep -E 'Summary .* tests run:' "$nextest_log" | tail -n 1)

say "docs (broken links denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps -q

fuzz_secs="${JARVIS_FUZZ_SECS:-10}"
if [ "$fuzz_secs" != 0 ]; then
  ./scripts/fuzz.sh "$fuzz_secs"
fi
say "all checks passed"
# The closing line CI reads: the test counts from nextest.
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
echo "${passed:-0} passed, 0 failed"
