//! Test harness: a real OpenSSH sshd (internal-sftp) on an ephemeral loopback port with
//! keys made per test, and real kernel FUSE mounts of it by the mastofs binary. Everything
//! is cleaned up on drop, also when a test fails.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod fdstore;
pub mod holder;
pub mod proxy;

pub const BIN: &str = env!("CARGO_BIN_EXE_mastofs");

/// Waits until `f` is true, up to `limit`; panics with `what` otherwise.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Pids whose parent is `pid`, recursively.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split(' ').nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
            out.extend(children_of(p));
        }
    }
    out
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn keygen(path: &Path, kind: &str) {
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", kind, "-N", "", "-f"]).arg(path);
    if kind == "rsa" {
        c.args(["-b", "2048"]);
    }
    run(&mut c);
}

/// Which SFTP server a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OpenSSH's sshd with internal-sftp, logged in as the test's own user.
    OpenSsh,
    /// ProFTPD 1.3.8's mod_sftp, defaults but for what a test needs (its own port, files
    /// and `AllowOverwrite on`), logged in as an unprivileged virtual user.
    ProFtpd,
    /// gesftpserver as OpenSSH sshd's sftp subsystem, logged in as the test's own user.
    Gesftpserver,
}

impl Kind {
    /// The server the general tests run against: `MASTOFS_TEST_SERVER` = `openssh`
    /// (default), `proftpd` or `gesftpserver`. `.ci/run` runs the suite once per server.
    pub fn from_env() -> Kind {
        match std::env::var("MASTOFS_TEST_SERVER").as_deref() {
            Ok("proftpd") => Kind::ProFtpd,
            Ok("gesftpserver") => Kind::Gesftpserver,
            Ok("openssh") | Ok("") | Err(_) => Kind::OpenSsh,
            Ok(other) => panic!("MASTOFS_TEST_SERVER={other}: openssh, proftpd or gesftpserver"),
        }
    }
}

/// The unprivileged uid/gid ProFTPD's virtual test user logs in as.
pub const PROFTPD_UID: u32 = 64_123;

/// How a [`Server`] is set up.
struct Setup<'a> {
    kind: Kind,
    /// Types of the user's key and the host key (ed25519, ecdsa, rsa).
    key_kind: &'a str,
    host_kind: &'a str,
    /// sshd_config lines that win over the defaults.
    sshd_extra: &'a str,
    /// RLIMIT_NOFILE for sshd and its SFTP servers (set from the start: a restart would
    /// free the port for a parallel test to take).
    nofile: Option<u64>,
}

impl Setup<'_> {
    fn new(kind: Kind) -> Self {
        Setup {
            kind,
            key_kind: "ed25519",
            host_kind: "ed25519",
            sshd_extra: "",
            nofile: None,
        }
    }
}

/// A running SFTP server serving `served`.
pub struct Server {
    pub kind: Kind,
    /// The login name in ssh_config.
    pub login: String,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub served: PathBuf,
    pub ssh_config: PathBuf,
    pub known_hosts: PathBuf,
    pub user_key: PathBuf,
    sshd: Option<Child>,
    sshd_extra: String,
    /// RLIMIT_NOFILE for sshd and the SFTP servers it starts (None: inherited).
    nofile: Option<u64>,
}

impl Server {
    /// The server chosen by [`Kind::from_env`].
    pub fn start() -> Server {
        Self::start_with("ed25519")
    }

    /// The server chosen by [`Kind::from_env`]; `key_kind`: the type of the user key
    /// (ed25519, ecdsa, rsa).
    pub fn start_with(key_kind: &str) -> Server {
        Self::start_kind(Setup {
            key_kind,
            ..Setup::new(Kind::from_env())
        })
    }

    /// OpenSSH whatever the environment says. `sshd_extra`: sshd_config lines that win over
    /// the defaults (sshd keeps the first).
    pub fn start_configured(key_kind: &str, sshd_extra: &str) -> Server {
        Self::start_kind(Setup {
            key_kind,
            sshd_extra,
            ..Setup::new(Kind::OpenSsh)
        })
    }

    /// OpenSSH with a host key of `host_kind` (ed25519, ecdsa, rsa) and `sshd_extra`.
    pub fn start_host(host_kind: &str, sshd_extra: &str) -> Server {
        Self::start_kind(Setup {
            host_kind,
            sshd_extra,
            ..Setup::new(Kind::OpenSsh)
        })
    }

    /// gesftpserver as sshd's sftp subsystem.
    pub fn gesftpserver() -> Server {
        Self::start_kind(Setup::new(Kind::Gesftpserver))
    }

    /// OpenSSH whose SFTP server processes may hold at most `nofile` descriptors (so it
    /// runs out of handles early).
    pub fn start_nofile(nofile: u64) -> Server {
        Self::start_kind(Setup {
            nofile: Some(nofile),
            ..Setup::new(Kind::OpenSsh)
        })
    }

    /// A ProFTPD mod_sftp server (see [`Kind::ProFtpd`]).
    pub fn proftpd() -> Server {
        Self::start_kind(Setup::new(Kind::ProFtpd))
    }

    fn start_kind(setup: Setup) -> Server {
        let (kind, key_kind) = (setup.kind, setup.key_kind);
        std::fs::create_dir_all("/run/sshd").ok();
        let dir = tempfile::Builder::new()
            .prefix("mastofs-test-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().to_path_buf();
        // sshd needs the path to its files to be searchable by its unprivileged child.
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
        let served = d.join("served");
        std::fs::create_dir(&served).expect("served dir");
        keygen(&d.join("host_key"), setup.host_kind);
        keygen(&d.join("user_key"), key_kind);
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let login = match kind {
            Kind::OpenSsh | Kind::Gesftpserver => {
                String::from_utf8_lossy(&run(Command::new("id").arg("-un")).stdout)
                    .trim()
                    .to_string()
            }
            Kind::ProFtpd => {
                prepare_proftpd(&d);
                "tester".to_string()
            }
        };
        let mut server = Server {
            kind,
            login,
            port: 0,
            served,
            ssh_config: d.join("ssh_config"),
            known_hosts: d.join("known_hosts"),
            user_key: d.join("user_key"),
            sshd: None,
            sshd_extra: setup.sshd_extra.to_string(),
            nofile: setup.nofile,
            dir,
        };
        server.launch();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let mut fields = host_pub.split_whitespace();
        let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        // Any port: the same sshd is also reached through fault proxies.
        std::fs::write(
            &server.known_hosts,
            format!("[127.0.0.1]:* {kind} {blob}\n"),
        )
        .expect("known_hosts");
        server.write_ssh_config("");
        server
    }

    /// (Re)writes the ssh_config for Host "box" (extra lines appended).
    pub fn write_ssh_config(&self, extra: &str) {
        self.write_ssh_config_via(self.port, extra)
    }

    /// ssh_config for Host "box" reaching the server on `port` (a proxy's).
    pub fn write_ssh_config_via(&self, port: u16, extra: &str) {
        let user = &self.login;
        std::fs::write(
            &self.ssh_config,
            format!(
                "Host box\n  HostName 127.0.0.1\n  Port {}\n  User {user}\n  IdentityFile {}\n  \
                 UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  ConnectTimeout 5\n{extra}",
                port,
                self.user_key.display(),
                self.known_hosts.display()
            ),
        )
        .expect("ssh_config");
    }

    fn launch(&mut self) {
        let d = self.dir.path().to_path_buf();
        for _ in 0..5 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let mut cmd = match self.kind {
                Kind::OpenSsh | Kind::Gesftpserver => self.sshd_command(port),
                Kind::ProFtpd => proftpd_command(&d, port),
            };
            let log = std::fs::File::create(d.join("sshd.log")).expect("sshd.log");
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start the SFTP server");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    self.port = port;
                    self.sshd = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "the SFTP server did not start: {}",
            std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
    }

    /// The server's main process id.
    pub fn pid(&self) -> Option<u32> {
        self.sshd.as_ref().map(|c| c.id())
    }

    /// What the server logged (sshd's stderr; ProFTPD's system and SFTP logs).
    pub fn log(&self) -> String {
        ["sshd.log", "system.log", "sftp.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect()
    }

    fn sshd_command(&self, port: u16) -> Command {
        let d = self.dir.path();
        {
            std::fs::write(
                d.join("sshd_config"),
                format!(
                    "{}ListenAddress 127.0.0.1:{port}\nHostKey {}\nPidFile none\nAuthorizedKeysFile {}\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin yes\n\
                     StrictModes no\nUsePAM no\nMaxStartups 100\nMaxSessions 100\n{}",
                    self.sshd_extra,
                    d.join("host_key").display(),
                    d.join("authorized_keys").display(),
                    // sshd refuses a second Subsystem line: a test's own one wins.
                    if self.sshd_extra.contains("Subsystem sftp") {
                        ""
                    } else if self.kind == Kind::Gesftpserver {
                        "Subsystem sftp /usr/libexec/gesftpserver\n"
                    } else {
                        "Subsystem sftp internal-sftp\n"
                    }
                ),
            )
            .expect("sshd_config");
        }
        let mut c = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("/usr/sbin/sshd");
                c
            }
            None => Command::new("/usr/sbin/sshd"),
        };
        c.arg("-D").arg("-e").arg("-f").arg(d.join("sshd_config"));
        c
    }

    /// Kills sshd and every session process it forked (a crash or a restart of the host's
    /// sshd).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let children = children_of(c.id());
            let _ = c.kill();
            let _ = c.wait();
            for pid in children {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Starts sshd again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Hands what a test made on the server as root to the login user where that is not
    /// root (ProFTPD's virtual user): the tree is then the login's own, as it is on
    /// OpenSSH here. Entries owned by anyone else are left alone. [`Mount::new`] calls it
    /// for the whole served tree.
    pub fn give(&self, path: &Path) {
        if self.kind != Kind::ProFtpd {
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let Ok(md) = std::fs::symlink_metadata(path) else {
            return;
        };
        if md.uid() == 0 {
            std::os::unix::fs::lchown(path, Some(PROFTPD_UID), Some(PROFTPD_UID)).ok();
        }
        if md.is_dir() {
            for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
                self.give(&e.path());
            }
        }
    }

    /// `user@host:path` source for the served directory, through the "box" alias.
    pub fn source(&self) -> String {
        format!("box:{}", self.served.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Files for a ProFTPD mod_sftp server in `d`: an RSA host key in PEM (ProFTPD reads
/// OpenSSH-format ed25519 keys too), the user key in RFC 4716 form, a virtual user with an
/// unprivileged uid owning `served`.
fn prepare_proftpd(d: &Path) {
    use std::os::unix::fs::PermissionsExt;
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f"])
        .arg(d.join("host_rsa")));
    std::fs::create_dir(d.join("keys")).expect("keys dir");
    let rfc4716 = run(Command::new("ssh-keygen")
        .arg("-e")
        .arg("-f")
        .arg(d.join("user_key.pub")))
    .stdout;
    std::fs::write(d.join("keys/tester"), rfc4716).expect("user key");
    let served = d.join("served");
    std::os::unix::fs::chown(&served, Some(PROFTPD_UID), Some(PROFTPD_UID)).expect("chown");
    for (f, line) in [
        (
            "passwd",
            format!(
                "tester:x:{PROFTPD_UID}:{PROFTPD_UID}::{}:/bin/sh\n",
                served.display()
            ),
        ),
        ("group", format!("tester:x:{PROFTPD_UID}:\n")),
    ] {
        std::fs::write(d.join(f), line).expect("auth file");
        // ProFTPD refuses world-readable auth files.
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o600)).ok();
    }
}

fn proftpd_command(d: &Path, port: u16) -> Command {
    let p = |f: &str| d.join(f).display().to_string();
    let conf = format!(
        "ServerType standalone\nDefaultServer on\nServerName \"mastofs-test\"\nPort {port}\n\
         DefaultAddress 127.0.0.1\nSocketBindTight on\nUseIPv6 off\nUser nobody\nGroup nogroup\n\
         PidFile {}\nScoreboardFile {}\nDelayTable none\nWtmpLog off\nUseReverseDNS off\n\
         ModulePath /usr/lib/proftpd\nLoadModule mod_sftp.c\nSystemLog {}\n\
         AuthOrder mod_auth_file.c\nAuthUserFile {}\nAuthGroupFile {}\nRequireValidShell off\n\
         MaxInstances 200\nAllowOverwrite on\nSFTPEngine on\nSFTPLog {}\nSFTPHostKey {}\n\
         SFTPHostKey {}\nSFTPAuthorizedUserKeys file:{}/%u\nSFTPAuthMethods publickey\n",
        p("proftpd.pid"),
        p("proftpd.scoreboard"),
        p("system.log"),
        p("passwd"),
        p("group"),
        p("sftp.log"),
        p("host_rsa"),
        p("host_key"),
        p("keys"),
    );
    std::fs::write(d.join("proftpd.conf"), conf).expect("proftpd.conf");
    let mut c = Command::new("/usr/sbin/proftpd");
    c.arg("-n").arg("-c").arg(d.join("proftpd.conf"));
    c
}

/// GET `path` on a status socket: (status code, body).
pub fn http_get(sock: &Path, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The JSON of a status socket's `/status`.
pub fn status_json(sock: &Path) -> serde_json::Value {
    let (_, body) = http_get(sock, "/status");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON {e}: {body}"))
}

/// A mastofs mount in the foreground (-f), unmounted and killed on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub stderr_path: PathBuf,
    /// The descriptor store the daemon runs with (as under systemd), if any.
    pub store: Option<fdstore::FdStore>,
}

/// Whether something is mounted on `p` (mountinfo's octal escapes undone; a path is bytes).
pub fn is_mounted(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut want = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
            want.extend(format!("\\{b:03o}").bytes());
        } else {
            want.push(b);
        }
    }
    std::fs::read("/proc/self/mountinfo")
        .unwrap_or_default()
        .split(|b| *b == b'\n')
        .any(|l| l.split(|b| *b == b' ').nth(4) == Some(&want[..]))
}

impl Mount {
    /// Mounts `source` with `-F ssh_config -o opts`; Err(stderr) if mastofs exits instead.
    pub fn try_new(server: &Server, source: &str, opts: &str) -> Result<Mount, String> {
        Self::try_new_in(server, source, opts, None, ("mastofs-mnt-".as_ref(), None))
    }

    /// A mount whose daemon runs with a descriptor store, as under systemd.
    pub fn with_store(server: &Server, opts: &str) -> Mount {
        Self::with_store_named(server, opts, "mastofs-mnt-".as_ref())
    }

    /// As [`Mount::with_store`], on a mountpoint whose name begins with `prefix` (bytes).
    pub fn with_store_named(server: &Server, opts: &str, prefix: &std::ffi::OsStr) -> Mount {
        let store = Some(fdstore::FdStore::new());
        Self::try_new_in(server, &server.source(), opts, store, (prefix, None))
            .unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    /// A mount on a new directory in `parent`, with a descriptor store or without.
    pub fn new_in(server: &Server, opts: &str, parent: &Path, store: bool) -> Mount {
        let store = store.then(fdstore::FdStore::new);
        let place = ("mastofs-mnt-".as_ref(), Some(parent));
        Self::try_new_in(server, &server.source(), opts, store, place)
            .unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    fn try_new_in(
        server: &Server,
        source: &str,
        opts: &str,
        store: Option<fdstore::FdStore>,
        (prefix, parent): (&std::ffi::OsStr, Option<&Path>),
    ) -> Result<Mount, String> {
        server.give(&server.served);
        let mut b = tempfile::Builder::new();
        b.prefix(prefix);
        let dir = match parent {
            Some(p) => b.tempdir_in(p),
            None => b.tempdir(),
        }
        .expect("mountpoint");
        let stderr_path = server.dir.path().join(format!(
            "mastofs-{}.log",
            dir.path()
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let mut m = Mount {
            dir,
            child: None,
            stderr_path,
            store,
        };
        m.start(server, source, opts)?;
        Ok(m)
    }

    /// Starts a daemon on this mountpoint and waits until it serves (or exits: Err(log)).
    fn start(&mut self, server: &Server, source: &str, opts: &str) -> Result<(), String> {
        let mut cmd = match &self.store {
            Some(store) => store.command(BIN),
            None => Command::new(BIN),
        };
        cmd.arg(source)
            .arg(self.dir.path())
            .arg("-f")
            .arg("-F")
            .arg(&server.ssh_config);
        if !opts.is_empty() {
            cmd.arg("-o").arg(opts);
        }
        let mut child = self.spawn_logged(cmd);
        let start = Instant::now();
        let readies = |m: &Mount| {
            m.store.as_ref().map_or(0, |s| {
                let msgs = s.messages.lock().unwrap();
                msgs.iter().filter(|t| t.contains("READY=1")).count()
            })
        };
        let readies_before = readies(self);
        loop {
            // With a store, the daemon says READY=1 (a stat could wait forever on a stored
            // connection nobody serves). Otherwise: mounted and answering (a dead mount left
            // by a crash is in mountinfo too).
            let ready = if self.store.is_some() {
                readies(self) > readies_before
            } else {
                is_mounted(self.dir.path()) && std::fs::metadata(self.dir.path()).is_ok()
            };
            if ready {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(_)) = child.try_wait() {
                return Err(self.log());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("mount did not appear within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would: its mount stays, dead.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `mastofs upgrade MOUNTPOINT -f`: a new daemon takes over from the running one, which
    /// must exit 0 without unmounting. The new daemon becomes this mount's. With a store (a
    /// service), the running daemon exits 75 instead and the test restarts it, as systemd
    /// does.
    pub fn upgrade(&mut self, server: &Server) -> Result<(), String> {
        if self.store.is_some() {
            // `mastofs upgrade` returns once the successor serves: the service manager's
            // part (restarting the daemon that exited 75) is played meanwhile.
            let mut old = self.child.take().ok_or("no daemon running")?;
            let upgrade = Command::new(BIN)
                .arg("upgrade")
                .arg(self.dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mastofs upgrade");
            let exited = old.wait().map_err(|e| e.to_string());
            let restarted = match &exited {
                Ok(st) if st.code() == Some(75) => self.restart(server, ""),
                Ok(st) => Err(format!("the service daemon exited with {st}, not 75")),
                Err(e) => Err(e.clone()),
            };
            let out = upgrade.wait_with_output().map_err(|e| e.to_string())?;
            let said = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            restarted.map_err(|e| format!("{e}: mastofs upgrade said: {said}"))?;
            if !out.status.success() || !said.contains("the mount paused") {
                return Err(format!("mastofs upgrade: {said}"));
            }
            return Ok(());
        }
        let mut cmd = Command::new(BIN);
        cmd.arg("upgrade").arg(self.dir.path()).arg("-f");
        let new = self.spawn_logged(cmd);
        let mut old = self.child.replace(new).ok_or("no daemon running")?;
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = old.try_wait() {
                if !st.success() {
                    return Err(format!("the old daemon exited with {st}: {}", self.log()));
                }
                break;
            }
            if !self.is_running() {
                let _ = old.kill();
                return Err(format!("the new daemon exited: {}", self.log()));
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err("the old daemon did not exit within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Serving once its status socket says how it started.
        while start.elapsed() < Duration::from_secs(60) {
            let out = Command::new(BIN)
                .arg("status")
                .arg(self.dir.path())
                .output()
                .expect("mastofs status");
            if String::from_utf8_lossy(&out.stdout).contains("(upgrade)") {
                return Ok(());
            }
            if !self.is_running() {
                return Err(format!("the new daemon exited: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the new daemon did not answer within 60 s".into())
    }

    /// Spawns a daemon command with its stderr appended to this mount's log.
    fn spawn_logged(&self, mut cmd: Command) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("log");
        cmd.env(
            "MASTOFS_LOG",
            std::env::var("TEST_MASTOFS_LOG").unwrap_or("mastofs=info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn mastofs")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts a new daemon on this mountpoint (after [`Mount::crash`]).
    pub fn restart(&mut self, server: &Server, opts: &str) -> Result<(), String> {
        self.start(server, &server.source(), opts)
    }

    pub fn new(server: &Server, opts: &str) -> Mount {
        Self::try_new(server, &server.source(), opts)
            .unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// True while the daemon process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The daemon's resident memory in KiB (0 if unknown).
    pub fn rss_kib(&self) -> u64 {
        let Some(c) = &self.child else { return 0 };
        std::fs::read_to_string(format!("/proc/{}/status", c.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Unmounts and waits for the daemon to exit; returns its exit status. Uses umount2(2)
    /// directly: umount(8) stats the mountpoint first, which a test must not depend on.
    pub fn unmount(&mut self) -> Option<std::process::ExitStatus> {
        use nix::mount::{umount2, MntFlags};
        if is_mounted(self.dir.path()) && umount2(self.dir.path(), MntFlags::empty()).is_err() {
            let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
        }
        if !self.is_running() {
            // A stored connection nobody serves would keep processes waiting on it forever:
            // closing the store's copy ends it.
            self.store = None;
        }
        let mut child = self.child.take()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Runs a shell command as uid/gid (no supplementary groups).
pub fn as_user(uid: u32, gid: u32, script: &str) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv")
}

/// errno of an io::Error.
pub fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}
