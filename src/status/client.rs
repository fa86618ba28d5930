//! `mastofs status [MOUNTPOINT|--all] [--json] [--socket PATH]`: asks running mounts'
//! status sockets and prints a summary. Exit 0 healthy, 1 degraded, 2 no such mount; so it
//! works as a Nagios/Icinga check and as a compose healthcheck.
//!
//! It trusts the socket no more than it must: the default directory is checked as every
//! run directory is ([`crate::rundir`]), an answer larger than [`MAX_BODY`] or slower than
//! 5 s is an error, and every string it prints has its control characters escaped (a
//! server's banner or error text never reaches the terminal raw).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::rundir;

/// The largest answer read (a status is a few KiB).
const MAX_BODY: usize = 4 << 20;

/// `s` with every control character escaped, for a terminal.
fn clean(s: &str) -> String {
    escape(s, |c| format!("\\u{{{c:x}}}"))
}

/// Compact JSON with every control character escaped as JSON does (serde_json leaves
/// U+007F..U+009F as they are; a terminal may act on them).
fn clean_json(v: &serde_json::Value) -> String {
    escape(&v.to_string(), |c| format!("\\u{c:04x}"))
}

fn escape(s: &str, how: impl Fn(u32) -> String) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                how(c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

async fn get(socket: &Path, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn summary(v: &serde_json::Value) -> String {
    let s = |k: &str| clean(v.get(k).and_then(|x| x.as_str()).unwrap_or("-"));
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let mut out = format!(
        "{}: {} ({}:{})\n  reconnects {}, replays {}, give-ups {}, in flight {}, waiting {}, open files {}\n  connections {}/{}, unconfirmed writes {} KiB\n",
        s("mountpoint"),
        s("state").to_uppercase(),
        s("host"),
        s("remote_path"),
        n("reconnects"),
        n("replays"),
        n("give_ups"),
        n("requests_in_flight"),
        n("requests_waiting"),
        n("open_files"),
        n("connections_up"),
        n("connections"),
        n("unconfirmed_write_bytes") / 1024,
    );
    if !s("server").is_empty() && s("server") != "-" {
        out.push_str(&format!(
            "  server {}: {} SFTP session(s) per connection ({})\n",
            s("server"),
            n("sftp_sessions_per_connection"),
            s("sftp_sessions_reason"),
        ));
    }
    if let Some(c) = v
        .get("server_capabilities")
        .and_then(|c| c.get("summary"))
        .and_then(|c| c.as_str())
    {
        out.push_str(&format!("  server capabilities: {}\n", clean(c)));
    }
    if !s("daemon_started_at").is_empty() {
        out.push_str(&format!(
            "  daemon started {} ({})\n",
            s("daemon_started_at"),
            s("daemon_start")
        ));
    }
    if let Some(rtt) = v.get("rtt_ms_smoothed").and_then(|x| x.as_f64()) {
        out.push_str(&format!("  round trip {rtt:.1} ms\n"));
    }
    if let Some(d) = v.get("disk").filter(|d| !d.is_null()) {
        let gib =
            |k: &str| d.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as f64 / (1u64 << 30) as f64;
        out.push_str(&format!(
            "  remote disk {:.1} GiB of {:.1} GiB available ({:.0}% used)\n",
            gib("available_bytes"),
            gib("total_bytes"),
            d.get("used_percent")
                .and_then(|x| x.as_f64())
                .unwrap_or(0.0)
        ));
    }
    if let Some(c) = v.get("disk_cache").filter(|c| !c.is_null()) {
        let mib =
            |k: &str| c.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as f64 / (1u64 << 20) as f64;
        let ratio = c.get("hit_ratio").and_then(|x| x.as_f64());
        out.push_str(&format!(
            "  disk cache {:.1} MiB of {:.1} MiB, hit ratio {}, write errors {}\n",
            mib("used_bytes"),
            mib("limit_bytes"),
            ratio.map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
            c.get("write_errors").and_then(|x| x.as_u64()).unwrap_or(0)
        ));
        if let Some(w) = c.get("writeback").filter(|w| !w.is_null()) {
            let n = |k: &str| w.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            out.push_str(&format!(
                "  write-back: {} changes pending ({:.1} MiB), oldest {}, uploaded {}, upload errors {}, conflicts {}\n",
                n("pending_ops"),
                n("pending_bytes") as f64 / (1u64 << 20) as f64,
                w.get("oldest_pending_secs")
                    .and_then(|x| x.as_u64())
                    .map_or("-".into(), |s| format!("{s} s")),
                n("uploaded_ops"),
                n("upload_errors"),
                n("conflicts")
            ));
            if let Some(r) = w.get("refused").filter(|r| !r.is_null()) {
                let t = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("?");
                out.push_str(&format!(
                    "  write-back held for {} s: the server refuses the {}: {}\n",
                    r.get("for_secs").and_then(|x| x.as_u64()).unwrap_or(0),
                    clean(t("op")),
                    clean(t("error"))
                ));
            }
        }
    }
    if let (Some(e), Some(at)) = (
        v.get("last_error").and_then(|x| x.as_str()),
        v.get("last_error_at").and_then(|x| x.as_str()),
    ) {
        out.push_str(&format!("  last error at {}: {}\n", clean(at), clean(e)));
    }
    out
}

/// `/status` of the socket at `socket`, as JSON (within 5 s, at most [`MAX_BODY`]).
pub fn fetch(socket: &Path) -> Result<serde_json::Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (_, body) = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(5), get(socket, "/status")).await
        })
        .map_err(|_| format!("{} did not answer within 5 s", socket.display()))??;
    serde_json::from_str(&body)
        .map_err(|_| format!("{}: not a mastofs status answer", socket.display()))
}

/// The mountpoint `p` names, as the daemon resolved it, found without looking into the
/// mount itself (a stat of a mount nobody serves, a daemon being replaced, would wait):
/// its directory is resolved, its last name kept.
pub(super) fn mountpoint(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// Runs the `status` subcommand; returns the exit code.
pub fn run(args: &[OsString]) -> i32 {
    let mut json = false;
    let mut all = false;
    let mut sockets: Vec<PathBuf> = Vec::new();
    let mut defaults = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--json") => json = true,
            Some("--all") => all = true,
            Some("--socket") => match it.next() {
                Some(p) => sockets.push(PathBuf::from(p)),
                None => {
                    eprintln!("mastofs status: --socket needs a path");
                    return 2;
                }
            },
            _ => {
                sockets.push(super::default_socket(&mountpoint(Path::new(a))));
                defaults = true;
            }
        }
    }
    if all || sockets.is_empty() || defaults {
        // The default directory must be one nobody else could have planted.
        if let Err(e) = rundir::verify(&super::run_dir(), rundir::Dir::Status) {
            eprintln!("mastofs status: {}", clean(&e));
            return 2;
        }
    }
    if all || sockets.is_empty() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(super::run_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        sockets.extend(found);
    }
    if sockets.is_empty() {
        eprintln!(
            "mastofs status: no mastofs mounts found in {}",
            super::run_dir().display()
        );
        return 2;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 2;
    };
    let mut worst = 0;
    for sock in sockets {
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), get(&sock, "/status")).await
        });
        match r {
            Ok(Ok((_, body))) => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                    eprintln!(
                        "mastofs status: {}: not a mastofs status answer",
                        sock.display()
                    );
                    worst = 2;
                    continue;
                };
                let stale = v
                    .pointer("/disk_cache/writeback")
                    .and_then(|w| {
                        let age = w.get("oldest_pending_secs")?.as_u64()?;
                        Some(age > w.get("stale_after_secs")?.as_u64()?)
                    })
                    .unwrap_or(false);
                let healthy =
                    v.get("state").and_then(|s| s.as_str()) == Some("connected") && !stale;
                if json {
                    println!("{}", clean_json(&v));
                } else {
                    print!("{}", summary(&v));
                }
                if !healthy {
                    worst = worst.max(1);
                }
            }
            Ok(Err(e)) => {
                eprintln!("mastofs status: no such mount (cannot reach {})", clean(&e));
                worst = 2;
            }
            Err(_) => {
                eprintln!(
                    "mastofs status: {} did not answer within 5 s",
                    sock.display()
                );
                worst = 2;
            }
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::{clean, clean_json};

    #[test]
    fn control_characters_are_escaped() {
        let v = serde_json::json!({"e": "x\u{1b}[2J\u{9b}"});
        let out = clean_json(&v);
        assert_eq!(out, r#"{"e":"x\u001b[2J\u009b"}"#);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), v);
        assert_eq!(clean("a\x1b[31mb\u{9b}c\n"), "a\\u{1b}[31mb\\u{9b}c\\u{a}");
        assert_eq!(clean("plain é"), "plain é");
    }
}
