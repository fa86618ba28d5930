#!/usr/bin/env bash
# Installs what building, testing and benchmarking mastofs need on Debian 12, and the test
# accounts the integration tests use (a 'mastodon' user, uid 991 as in the Mastodon image,
# and a 'backup-sync' group). Idempotent; needs root.
set -euo pipefail
need=()
for pkg in fuse3 openssh-server openssh-client sshfs util-linux python3 proftpd-core proftpd-mod-crypto gesftpserver groff-base systemd dpkg-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# tests/systemd.rs boots a real systemd in a container (without libnss-mymachines, which
# systemd-container recommends and which would edit /etc/nsswitch.conf).
# tests/docker.rs runs Debian's Docker engine (started by the test, its own roots), an
# image made from busybox-static, and the compose example with docker-compose.
for pkg in systemd-container debootstrap docker.io docker-compose busybox-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
done
mkdir -p /run/sshd
getent group mastodon >/dev/null || groupadd -g 991 mastodon
getent passwd mastodon >/dev/null || useradd -u 991 -g mastodon -M -s /usr/sbin/nologin mastodon 2>/dev/null
getent group backup-sync >/dev/null || groupadd backup-sync
# uid/gid 70: postgres in the PostgreSQL image, which owns the pgBackRest repository.
getent group 70 >/dev/null || groupadd -g 70 pgrepo
getent passwd 70 >/dev/null || useradd -u 70 -g 70 -M -s /usr/sbin/nologin pgrepo 2>/dev/null
[ -e /dev/fuse ] || { echo "no /dev/fuse: load the fuse module (modprobe fuse)" >&2; exit 1; }
