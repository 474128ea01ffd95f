#!/usr/bin/env bash
# Runs a Jarvis node with the embedded defaults: `jarvis up`. With no org joined this is personal
# mode (a one-person org of this machine). Extra arguments go to `jarvis up`.
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."
install_system_packages
ensure_rust
say "building jarvis and its llama.cpp and whisper.cpp engines (release)"
cargo build --release --locked -p jarvis-cli --bin jarvis -p jarvis-llm --bin jarvis-llm-worker \
  -p jarvis-stt --bin jarvis-stt-worker
ensure_models "$CARGO_TARGET_DIR/release/jarvis"
exec "$CARGO_TARGET_DIR/release/jarvis" up "$@"
