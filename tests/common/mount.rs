//! Real kernel FUSE mounts by the mastofs binary, and the status socket they serve.
//! Unmounted and killed on drop, also when a test fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

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

/// Whether a live FUSE filesystem answers on `p`: not a dead mount (ENOTCONN), and not
/// the directory under it in the moment a dead one was detached and before the new one
/// is mounted.
pub fn serves(p: &Path) -> bool {
    use nix::sys::statfs::{statfs, FUSE_SUPER_MAGIC};
    statfs(p).is_ok_and(|s| s.filesystem_type() == FUSE_SUPER_MAGIC)
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
                serves(self.dir.path())
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

    /// `/status` of this mount's daemon, asked as `mastofs status MOUNTPOINT --json` (Null
    /// when it does not answer).
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .arg("status")
            .arg(self.path())
            .arg("--json")
            .output()
            .expect("mastofs status");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
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
        // Asked before unmounting: a daemon that exits at the unmount empties the store
        // itself (what a test may check), one that was dead before never will.
        let served = self.is_running();
        if is_mounted(self.dir.path()) && umount2(self.dir.path(), MntFlags::empty()).is_err() {
            let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
        }
        if !served {
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
