//! Logging: `tracing` to stderr, or to syslog once a daemon has detached.
//!
//! Owns the log format and destination. Quiet by default (warnings and errors: one line
//! per event an operator should see); `-d` or `MASTOFS_LOG=...` (an EnvFilter) for more.
//! Once daemonized, stderr is closed (a caller capturing it would wait forever) and lines
//! go to syslog, unless stderr is systemd's journal (`JOURNAL_STREAM`).

use std::ffi::CString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static TO_SYSLOG: AtomicBool = AtomicBool::new(false);

pub fn init(debug: bool) {
    let default = if debug {
        "mastofs=debug,info"
    } else {
        "mastofs=warn,warn"
    };
    let filter = std::env::var("MASTOFS_LOG")
        .ok()
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Sink)
        .with_target(false)
        .init();
}

/// Whether stderr should stay open after daemonizing.
pub fn stderr_is_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// From now on, log to syslog (called by the daemon before closing stderr).
pub fn switch_to_syslog() {
    let ident = c"mastofs";
    // SAFETY: `ident` is a static C string, as openlog requires.
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    TO_SYSLOG.store(true, Ordering::Relaxed);
}

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !TO_SYSLOG.load(Ordering::Relaxed) {
            return std::io::stderr().write(buf);
        }
        let text = String::from_utf8_lossy(buf);
        let level = if text.contains("ERROR") {
            libc::LOG_ERR
        } else if text.contains("WARN") {
            libc::LOG_WARNING
        } else {
            libc::LOG_INFO
        };
        if let Ok(line) = CString::new(text.trim_end().replace('\0', "")) {
            // SAFETY: constant format string with one C string argument.
            unsafe { libc::syslog(level, c"%s".as_ptr(), line.as_ptr()) };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
