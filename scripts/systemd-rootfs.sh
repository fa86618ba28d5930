#!/usr/bin/env bash
# Makes, once, the Debian bookworm root filesystem that tests/systemd.rs boots with a real
# systemd as PID 1 (systemd-nspawn): minbase with systemd, dbus, OpenSSH's server and
# fuse3. Cached in $MASTOFS_TEST_ROOTFS (default /var/cache/mastofs-test/rootfs-bookworm);
# about 40-70 s the first time. Needs root and Debian's mirror.
set -euo pipefail
root=${MASTOFS_TEST_ROOTFS:-/var/cache/mastofs-test/rootfs-bookworm}
[ -x "$root/usr/lib/systemd/systemd" ] && exit 0
mirror=$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$(dirname "$root")"
rm -rf "$root.tmp"
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,openssh-server,openssh-sftp-server,fuse3,util-linux,procps,python3-minimal \
    bookworm "$root.tmp" "$mirror" >/dev/null
mv "$root.tmp" "$root"
