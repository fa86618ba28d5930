//! Logging: `tracing` to stderr, or to syslog once a daemon has detached.
//!
//! Owns the log format and destination. Quiet by default (warnings and errors: one line
//! per event an operator should see); `-d` or `MASTOFS_LOG=...` (an EnvFilter) for more.
//! Every line carries its level to where it goes: a `<N>` prefix (sd-daemon(3)) when stderr
//! is systemd's journal (`$JOURNAL_STREAM` names stderr), the syslog priority once
//! daemonized, so `journalctl -p warning` shows the warnings. Colour only on a terminal.
//! Once daemonized, stderr is closed (a caller capturing it would wait forever) and lines
//! go to syslog, unless stderr is the journal.

use std::ffi::CString;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

static TO_SYSLOG: AtomicBool = AtomicBool::new(false);
static TO_JOURNAL: AtomicBool = AtomicBool::new(false);

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
    let journal = stderr_is_journal();
    TO_JOURNAL.store(journal, Ordering::Relaxed);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Sinks)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Whether stderr is systemd's journal: `$JOURNAL_STREAM` (`DEVICE:INODE`) names it.
pub fn stderr_is_journal() -> bool {
    let Some(want) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    want.to_str() == Some(&format!("{}:{}", st.st_dev, st.st_ino))
}

/// A fatal error's line for stderr, prefixed `<3>` (error) where stderr is the journal.
pub fn fatal_line(msg: &str) -> String {
    if TO_JOURNAL.load(Ordering::Relaxed) {
        format!("<{}>mastofs: {msg}", libc::LOG_ERR)
    } else {
        format!("mastofs: {msg}")
    }
}

/// From now on, log to syslog (called by the daemon before closing stderr).
pub fn switch_to_syslog() {
    let ident = c"mastofs";
    // SAFETY: `ident` is a static C string, as openlog requires.
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    TO_SYSLOG.store(true, Ordering::Relaxed);
}

/// The syslog priority of a level.
fn priority(level: Level) -> libc::c_int {
    match level {
        Level::ERROR => libc::LOG_ERR,
        Level::WARN => libc::LOG_WARNING,
        Level::INFO => libc::LOG_INFO,
        _ => libc::LOG_DEBUG,
    }
}

/// Makes a [`Sink`] per event, knowing its level.
struct Sinks;

impl<'a> MakeWriter<'a> for Sinks {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        Sink::new(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Sink {
        Sink::new(*meta.level())
    }
}

/// One event's text, sent where it goes when the formatter is done with it.
struct Sink {
    level: Level,
    buf: Vec<u8>,
}

impl Sink {
    fn new(level: Level) -> Self {
        Sink {
            level,
            buf: Vec::new(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let prio = priority(self.level);
        let text = String::from_utf8_lossy(&self.buf);
        if TO_SYSLOG.load(Ordering::Relaxed) {
            if let Ok(line) = CString::new(text.trim_end().replace('\0', "")) {
                // SAFETY: constant format string with one C string argument.
                unsafe { libc::syslog(prio, c"%s".as_ptr(), line.as_ptr()) };
            }
            return;
        }
        let out = if TO_JOURNAL.load(Ordering::Relaxed) {
            text.lines()
                .map(|l| format!("<{prio}>{l}\n"))
                .collect::<String>()
        } else {
            text.into_owned()
        };
        let _ = std::io::stderr().write_all(out.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
