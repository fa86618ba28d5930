//! A stand-in for systemd's file descriptor store, for tests without systemd as PID 1: it
//! listens where `$NOTIFY_SOCKET` points, keeps descriptors sent with `FDSTORE=1` under
//! their `FDNAME=`, drops them on `FDSTOREREMOVE=1`, and passes them to the next daemon as
//! systemd does (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`, descriptors from 3 on).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

pub struct FdStore {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    fds: Arc<Mutex<BTreeMap<String, OwnedFd>>>,
    /// Every notification received, in order (READY=1, STATUS=..., FDSTORE=1 ...).
    pub messages: Arc<Mutex<Vec<String>>>,
}

impl FdStore {
    pub fn new() -> FdStore {
        let dir = tempfile::tempdir().expect("store dir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        let fds: Arc<Mutex<BTreeMap<String, OwnedFd>>> = Arc::default();
        let messages: Arc<Mutex<Vec<String>>> = Arc::default();
        let (f, m) = (fds.clone(), messages.clone());
        std::thread::spawn(move || loop {
            let mut buf = vec![0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 8]);
            let Ok(msg) = recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) else {
                return;
            };
            let mut got = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        got.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k).map(str::to_string))
            };
            let name = field("FDNAME=").unwrap_or_else(|| "stored".into());
            if field("FDSTORE=").as_deref() == Some("1") {
                if let Some(fd) = got.into_iter().next() {
                    f.lock().unwrap().insert(name, fd);
                }
            } else if field("FDSTOREREMOVE=").as_deref() == Some("1") {
                f.lock().unwrap().remove(&name);
            }
            m.lock().unwrap().push(text);
        });
        FdStore {
            path,
            _dir: dir,
            fds,
            messages,
        }
    }

    /// Names of the descriptors held.
    pub fn names(&self) -> Vec<String> {
        self.fds.lock().unwrap().keys().cloned().collect()
    }

    /// Sets up `cmd` as systemd starts a service with this store: `$NOTIFY_SOCKET`, and the
    /// stored descriptors as `LISTEN_FDS`. `cmd` must be `sh -c 'LISTEN_PID=$$ exec ...'`
    /// (the variable must name the daemon's own pid), see [`FdStore::command`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
            .arg(program)
            .env("NOTIFY_SOCKET", &self.path)
            // As systemd 254+ says how many descriptors the unit's store keeps.
            .env("FDSTORE", "4");
        let held: Vec<(String, RawFd)> = self
            .fds
            .lock()
            .unwrap()
            .iter()
            .map(|(n, fd)| (n.clone(), fd.as_raw_fd()))
            .collect();
        if held.is_empty() {
            cmd.env_remove("LISTEN_FDS");
            return cmd;
        }
        let names: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("LISTEN_FDS", held.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        let raw: Vec<RawFd> = held.iter().map(|(_, fd)| *fd).collect();
        // SAFETY: only dup2/fcntl between fork and exec (async-signal-safe). The store's
        // descriptors stay open in this process meanwhile.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first, so that placing one at 3.. cannot clobber another.
                let high: Vec<RawFd> = raw
                    .iter()
                    .map(|fd| libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100))
                    .collect();
                for (i, fd) in high.iter().enumerate() {
                    if *fd < 0 || libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }
}
