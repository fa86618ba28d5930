//! Daemonizing with a truthful exit status, and signals.
//!
//! Owns the fork that lets `mastofs host:path /mnt` return only once the mount is live
//! (the parent waits on a pipe for the child's verdict), detaching from the terminal, and
//! turning SIGTERM/SIGINT/SIGHUP into a clean unmount. It must be called before any thread
//! exists (fork).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::unistd::{fork, pipe, setsid, ForkResult};

/// The child's end of the readiness pipe.
pub struct Ready(Option<File>);

impl Ready {
    /// No parent is waiting (foreground mode).
    pub fn none() -> Self {
        Ready(None)
    }

    /// The mount is live: let the parent exit 0, and detach from its terminal.
    pub fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"ok");
            detach_stdio();
        }
    }

    /// The mount failed: the parent prints `msg` and exits 1.
    pub fn fail(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(format!("err:{msg}").as_bytes());
        }
    }
}

/// Forks. Returns in the child; the parent waits for the child's verdict and exits.
pub fn daemonize() -> Result<Ready, String> {
    let (rd, wr): (OwnedFd, OwnedFd) = pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: called from main before the runtime or any other thread is started.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { .. } => {
            drop(wr);
            let mut verdict = String::new();
            let _ = File::from(rd).read_to_string(&mut verdict);
            if verdict == "ok" {
                std::process::exit(0);
            }
            match verdict.strip_prefix("err:") {
                Some(msg) => eprintln!("mastofs: {msg}"),
                None => eprintln!("mastofs: the daemon exited before the mount was ready"),
            }
            std::process::exit(1);
        }
        ForkResult::Child => {
            drop(rd);
            let _ = setsid();
            let _ = std::env::set_current_dir("/");
            Ok(Ready(Some(File::from(wr))))
        }
    }
}

/// stdin, stdout and stderr to /dev/null (logs go to syslog), except a stderr that is
/// systemd's journal.
fn detach_stdio() {
    let keep_stderr = crate::logging::stderr_is_journal();
    if !keep_stderr {
        crate::logging::switch_to_syslog();
    }
    let Ok(null) = File::options().read(true).write(true).open("/dev/null") else {
        return;
    };
    let fd = null.as_raw_fd();
    // SAFETY: dup2 on valid descriptors; replaces our own standard streams.
    unsafe {
        libc::dup2(fd, 0);
        libc::dup2(fd, 1);
        if !keep_stderr {
            libc::dup2(fd, 2);
        }
    }
}

/// Waits for SIGTERM, SIGINT or SIGHUP.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
}
