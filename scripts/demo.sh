#!/usr/bin/env bash
# Builds mastofs, starts a throw-away OpenSSH sftp server on 127.0.0.1 (or uses BOX=host:path
# with your ~/.ssh/config), mounts it on /tmp/mastofs-demo and shows it working.
# Unmount with: umount /tmp/mastofs-demo
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --quiet
mnt=/tmp/mastofs-demo
mkdir -p "$mnt"
if mountpoint -q "$mnt"; then umount "$mnt"; fi
if [ -n "${BOX:-}" ]; then
  ./target/release/mastofs "$BOX" "$mnt"
else
  cfg=$(bash scripts/demo-server.sh /tmp/mastofs-demo-server)
  echo "Hello from the demo server" > /tmp/mastofs-demo-server/served/hello.txt
  ./target/release/mastofs demo:/tmp/mastofs-demo-server/served "$mnt" -F "$cfg" \
    -o allow_other,default_permissions,uid=mastodon,gid=mastodon
fi
echo "mounted: $(grep " $mnt " /proc/mounts)"
ls -l "$mnt"
date > "$mnt/written-through-mastofs.txt"
cat "$mnt/written-through-mastofs.txt"
echo "Unmount with: umount $mnt"
