#!/usr/bin/env bash
# Starts a throw-away ProFTPD mod_sftp server on 127.0.0.1 (for benchmarks against a
# non-OpenSSH server). Usage: scripts/demo-proftpd.sh DIR -> prints the ssh_config path
# (Host "demo"). Logs in as a virtual user with uid 0 (RootLogin on), so that the benchmark
# can prepare files as root; the integration tests use an unprivileged login instead.
# kill "$(cat DIR/proftpd.pid)" stops it.
set -euo pipefail
dir=$(realpath -m "${1:?usage: demo-proftpd.sh DIR}")
mkdir -p "$dir/served" "$dir/keys"
chmod 755 "$dir"
[ -f "$dir/host_rsa" ] || ssh-keygen -q -t rsa -b 2048 -m PEM -N '' -f "$dir/host_rsa"
[ -f "$dir/user_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/user_key"
ssh-keygen -e -f "$dir/user_key.pub" > "$dir/keys/demo"
echo "demo:x:0:0::$dir/served:/bin/sh" > "$dir/passwd"
echo "demo:x:0:" > "$dir/group"
chmod 600 "$dir/passwd" "$dir/group"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$dir/proftpd.conf" <<CFG
ServerType standalone
DefaultServer on
Port $port
DefaultAddress 127.0.0.1
SocketBindTight on
UseIPv6 off
User nobody
Group nogroup
PidFile $dir/proftpd.pid
ScoreboardFile $dir/proftpd.scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
ModulePath /usr/lib/proftpd
LoadModule mod_sftp.c
SystemLog $dir/system.log
AuthOrder mod_auth_file.c
AuthUserFile $dir/passwd
AuthGroupFile $dir/group
RequireValidShell off
RootLogin on
MaxInstances 100
AllowOverwrite on
SFTPEngine on
SFTPLog $dir/sftp.log
SFTPHostKey $dir/host_rsa
SFTPAuthorizedUserKeys file:$dir/keys/%u
SFTPAuthMethods publickey
CFG
/usr/sbin/proftpd -c "$dir/proftpd.conf"
for _ in $(seq 100); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_rsa.pub")" > "$dir/known_hosts"
cat > "$dir/ssh_config" <<CFG
Host demo
  HostName 127.0.0.1
  Port $port
  User demo
  IdentityFile $dir/user_key
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
CFG
echo "$dir/ssh_config"
