#!/usr/bin/env bash
# Starts a throw-away OpenSSH sftp server on 127.0.0.1 for trying mastofs without a box.
# Usage: scripts/demo-server.sh DIR   -> prints the ssh_config path to use with -F.
# Everything (keys, config, served tree, pid file) lives in DIR; kill "$(cat DIR/sshd.pid)"
# stops it.
set -euo pipefail
dir=$(realpath -m "${1:?usage: demo-server.sh DIR}")
mkdir -p "$dir/served" /run/sshd
chmod 755 "$dir"
[ -f "$dir/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
[ -f "$dir/user_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/user_key"
cp "$dir/user_key.pub" "$dir/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$dir/sshd_config" <<CFG
ListenAddress 127.0.0.1:$port
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
CFG
/usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_key.pub")" > "$dir/known_hosts"
cat > "$dir/ssh_config" <<CFG
Host demo
  HostName 127.0.0.1
  Port $port
  User $(id -un)
  IdentityFile $dir/user_key
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
CFG
echo "$dir/ssh_config"
