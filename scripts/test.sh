#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, and integration tests against a
# real sshd through real kernel FUSE mounts. Needs root (mounts, sshd, setpriv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The real programs tests/workloads.rs runs on mounts.
need=()
for pkg in postgresql-15 pgbackrest borgbackup rsync; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian root filesystem tests/systemd.rs boots with systemd-nspawn (cached).
bash scripts/systemd-rootfs.sh
# cargo deb builds the Debian package that tests/install.rs installs and purges.
cargo deb --version >/dev/null 2>&1 || cargo install --quiet --locked cargo-deb
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --no-fail-fast 2>&1 | tee target/test.log
# The tests of filesystem behaviour once more against each other SFTP server (the first
# run used OpenSSH): the same assertions, a server's documented exceptions inside them.
for server in proftpd gesftpserver; do
    echo "== the filesystem tests against $server"
    MASTOFS_TEST_SERVER=$server cargo test --no-fail-fast \
        --test behaviour --test ops --test errors --test ownership --test reconnect \
        --test status --test mounting --test open_files --test restart --test security \
        --test disk_cache --test writeback 2>&1 | tee -a target/test.log
done
bash scripts/bench.sh --quick
