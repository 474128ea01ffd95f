#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds each (default 60). cargo-fuzz needs nightly-only
# compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them, so no second toolchain
# is needed. Corpora live in the cache, outside the clone, and grow from run to run.
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."
secs="${1:-60}"
ensure_cargo_tool cargo-fuzz cargo-fuzz
export RUSTC_BOOTSTRAP=1
for crate_fuzz in identity/fuzz crdt/fuzz inference/fuzz voice/fuzz relay/fuzz; do
  targets=$(cd "$crate_fuzz/.." && cargo fuzz list)
  for target in $targets; do
    corpus="$JARVIS_CACHE/fuzz/${crate_fuzz%%/*}/$target"
    mkdir -p "$corpus"
    say "fuzz $crate_fuzz $target for ${secs}s"
    (cd "$crate_fuzz/.." && cargo fuzz run --target-dir "$CARGO_TARGET_DIR/fuzz" "$target" "$corpus" -- \
      -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
      grep -E 'stat::number_of_executed_units|Done|ERROR|panicked|SUMMARY' || true;
      exit "${PIPESTATUS[0]}")
  done
done
