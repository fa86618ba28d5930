//! `mastofs sync MOUNTPOINT`: waits until a mount with `cache_writeback=on` has nothing
//! pending, showing progress on a terminal.
//!
//! Owns only the waiting: it reads the mount's status socket (the backlog the daemon
//! reports) until the backlog is empty. It never drives the daemon: the uploader drains
//! the log on its own, this command watches it.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The pending changes a `/status` answer reports; None without write-back.
fn backlog(v: &serde_json::Value) -> Option<(u64, u64, Option<u64>)> {
    let w = v.get("disk_cache")?.get("writeback")?;
    let n = |k: &str| w.get(k).and_then(|x| x.as_u64());
    Some((
        n("pending_ops")?,
        n("pending_bytes").unwrap_or(0),
        n("oldest_pending_secs"),
    ))
}

/// Runs `mastofs sync`; the exit code: 0 nothing pending, 1 still pending at `--timeout`,
/// 2 no such mount.
pub fn run(args: &[OsString]) -> i32 {
    let mut socket: Option<PathBuf> = None;
    let mut limit: Option<Duration> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--socket") => socket = it.next().map(PathBuf::from),
            Some("--timeout") => match it.next().and_then(|s| s.to_str()?.parse::<u64>().ok()) {
                Some(s) => limit = Some(Duration::from_secs(s)),
                None => {
                    eprintln!("mastofs sync: --timeout needs a number of seconds");
                    return 2;
                }
            },
            _ => {
                socket = Some(super::default_socket(&super::client::mountpoint(
                    &PathBuf::from(a),
                )))
            }
        }
    }
    let Some(socket) = socket else {
        eprintln!("usage: mastofs sync MOUNTPOINT [--timeout SECS] [--socket PATH]");
        return 2;
    };
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    loop {
        let v = match super::client::fetch(&socket) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("mastofs sync: no such mount ({e})");
                return 2;
            }
        };
        let Some((ops, bytes, oldest)) = backlog(&v) else {
            eprintln!(
                "mastofs sync: this mount has no write-back (cache_writeback=on): nothing pending"
            );
            return 0;
        };
        if ops == 0 {
            if tty {
                eprintln!("\rnothing pending                                              ");
            }
            return 0;
        }
        if tty {
            eprint!(
                "\r{ops} changes pending ({:.1} MiB), oldest {} s, state {}   ",
                bytes as f64 / (1u64 << 20) as f64,
                oldest.unwrap_or(0),
                v.get("state").and_then(|s| s.as_str()).unwrap_or("?")
            );
            let _ = std::io::stderr().flush();
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            if tty {
                eprintln!();
            }
            eprintln!("mastofs sync: {ops} changes still pending");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
