#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, and integration tests against a
# real sshd through real kernel FUSE mounts. Needs root (mounts, sshd, setpriv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --no-fail-fast 2>&1 | tee target/test.log
bash scripts/bench.sh --quick
