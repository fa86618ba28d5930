//! `mastofs status [MOUNTPOINT|--all] [--json] [--socket PATH]`: asks running mounts'
//! status sockets and prints a summary. Exit 0 healthy, 1 degraded, 2 no such mount; so it
//! works as a Nagios/Icinga check and as a compose healthcheck.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

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
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn summary(v: &serde_json::Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
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
        out.push_str(&format!("  server capabilities: {c}\n"));
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
    if let (Some(e), Some(at)) = (
        v.get("last_error").and_then(|x| x.as_str()),
        v.get("last_error_at").and_then(|x| x.as_str()),
    ) {
        out.push_str(&format!("  last error at {at}: {e}\n"));
    }
    out
}

/// Runs the `status` subcommand; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let mut json = false;
    let mut all = false;
    let mut sockets: Vec<PathBuf> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--all" => all = true,
            "--socket" => match it.next() {
                Some(p) => sockets.push(PathBuf::from(p)),
                None => {
                    eprintln!("mastofs status: --socket needs a path");
                    return 2;
                }
            },
            m => {
                let p = std::fs::canonicalize(m).unwrap_or_else(|_| PathBuf::from(m));
                sockets.push(super::default_socket(&p));
            }
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
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let healthy = v.get("state").and_then(|s| s.as_str()) == Some("connected");
                if json {
                    println!("{body}");
                } else {
                    print!("{}", summary(&v));
                }
                if !healthy {
                    worst = worst.max(1);
                }
            }
            Ok(Err(e)) => {
                eprintln!("mastofs status: no such mount (cannot reach {e})");
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
