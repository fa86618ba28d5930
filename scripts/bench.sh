#!/usr/bin/env bash
# Benchmarks mastofs against sshfs side by side (see scripts/bench.py).
#   scripts/bench.sh            full run on loopback
#   scripts/bench.sh --rtt-ms 13  full run through the latency proxy (13 ms round trip)
#   scripts/bench.sh --quick    tiny sizes, debug build: proves the script works (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if [[ " $* " == *" --quick "* ]]; then
  cargo build --quiet --bins --examples
  exec python3 scripts/bench.py --bin target/debug/mastofs --proxy target/debug/examples/faultproxy "$@"
fi
cargo build --quiet --release --bins --examples
exec python3 scripts/bench.py "$@"
