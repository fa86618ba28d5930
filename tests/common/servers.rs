//! The SFTP servers the tests run against, on ephemeral loopback ports with keys made per
//! test: OpenSSH's sshd (internal-sftp), ProFTPD's mod_sftp, gesftpserver. Stopped and
//! removed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

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
                // The listener must be this child's: a port picked free a moment ago may
                // have gone to a parallel test's proxy or server since, and then this one
                // fails to bind and exits while another answers the connect.
                if listens_on(child.id(), port) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
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

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (from
/// /proc/net/tcp and the process's descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
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
