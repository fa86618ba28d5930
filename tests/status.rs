//! The status socket, metrics, `mastofs status` and systemd notifications, against real
//! mounts in each state.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::*;

fn get(sock: &Path, path: &str) -> (u16, String) {
    http_get(sock, path)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("bad JSON {e}: {body}"))
}

fn status_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).arg("status").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn connected_endpoints_counters_and_permissions() {
    let s = Server::start();
    let grp = s.dir.path().join("status.sock");
    let m = Mount::new(
        &s,
        &format!("status_socket={},status_group=backup-sync", grp.display()),
    );
    let md = std::fs::metadata(&grp).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    let backup_sync = String::from_utf8_lossy(
        &Command::new("getent")
            .args(["group", "backup-sync"])
            .output()
            .unwrap()
            .stdout,
    )
    .split(':')
    .nth(2)
    .and_then(|g| g.parse::<u32>().ok())
    .expect("backup-sync group (see scripts/install-deps.sh)");
    assert_eq!(md.gid(), backup_sync);

    let (code, body) = get(&grp, "/health");
    assert_eq!(code, 200);
    assert_eq!(json(&body)["state"], "connected");

    std::fs::write(m.p("counted"), vec![7u8; 300_000]).unwrap();
    let _ = std::fs::metadata(m.p("missing"));
    let (code, body) = get(&grp, "/status");
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(v["state"], "connected");
    assert_eq!(v["host"], "127.0.0.1");
    assert_eq!(v["mountpoint"], m.path().display().to_string());
    assert_eq!(v["remote_path"], s.served.display().to_string());
    assert!(v["bytes_written"].as_u64().unwrap() >= 300_000, "{v}");
    assert!(v["connected_since"].is_string());
    assert_eq!(v["reconnects"], 0);
    assert_eq!(v["connections"], 1);
    assert_eq!(v["connections_up"], 1);
    assert!(v["unconfirmed_write_bytes"].is_u64(), "{v}");

    let (code, text) = get(&grp, "/metrics");
    assert_eq!(code, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let sample = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|x| x.metric == name)
            .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(sample("mastofs_up", None), 1.0);
    assert!(sample("mastofs_written_bytes_total", None) >= 300_000.0);
    assert!(sample("mastofs_operations_total", Some(("op", "write"))) >= 1.0);
    assert!(sample("mastofs_operations_total", Some(("errno", "ENOENT"))) >= 1.0);
    assert!(scrape
        .samples
        .iter()
        .all(|x| x.labels.get("mountpoint") == Some(&m.path().display().to_string())));
    assert!(text.contains("mastofs_request_duration_seconds_bucket"));

    // The CLI, by socket.
    let (code, out) = status_cli(&["--socket", grp.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("CONNECTED"), "{out}");
    let (code, out) = status_cli(&["--socket", grp.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["state"], "connected");

    drop(m);
    assert!(!grp.exists(), "the socket is removed on unmount");
    let (code, _) = status_cli(&["--socket", grp.to_str().unwrap()]);
    assert_eq!(code, 2, "no such mount");
}

#[test]
fn default_socket_path_and_cli_by_mountpoint() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    let esc = Command::new("systemd-escape")
        .arg("--path")
        .arg(m.path())
        .output()
        .unwrap();
    let sock = Path::new("/run/mastofs").join(format!(
        "{}.sock",
        String::from_utf8_lossy(&esc.stdout).trim()
    ));
    assert!(sock.exists(), "{}", sock.display());
    let (code, out) = status_cli(&[m.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn answers_fast_during_a_blackhole_then_reports_reconnecting() {
    let s = Server::start();
    let p = Proxy::start(s.port);
    s.write_ssh_config_via(p.port, "");
    let sock = s.dir.path().join("st.sock");
    let m = Mount::new(
        &s,
        &format!(
            "status_socket={},timeout=120,ServerAliveInterval=1,ServerAliveCountMax=3",
            sock.display()
        ),
    );
    let blackholed = Instant::now();
    p.set_mode(Mode::Blackhole);
    let path = m.p("stuck");
    let stuck = std::thread::spawn(move || std::fs::write(path, b"x"));
    wait_until(Duration::from_secs(10), "a request in flight", || {
        json(&get(&sock, "/status").1)["requests_in_flight"]
            .as_u64()
            .unwrap_or(0)
            + json(&get(&sock, "/status").1)["requests_waiting"]
                .as_u64()
                .unwrap_or(0)
            > 0
    });
    // While a filesystem request hangs, every endpoint answers within 100 ms.
    for ep in ["/health", "/status", "/metrics"] {
        let t = Instant::now();
        let (code, _) = get(&sock, ep);
        assert!(code == 200 || code == 503);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{ep} took {:?}",
            t.elapsed()
        );
    }
    wait_until(Duration::from_secs(30), "state reconnecting", || {
        json(&get(&sock, "/health").1)["state"] == "reconnecting"
    });
    // Noticed by the keepalives, as OpenSSH counts them: 3 intervals of 1 s unanswered
    // (not before 2, and well before the 60 s a request waits on its own).
    let noticed = blackholed.elapsed();
    assert!(
        noticed >= Duration::from_secs(2) && noticed < Duration::from_secs(10),
        "the dead link was noticed after {noticed:?}"
    );
    let v = json(&get(&sock, "/status").1);
    assert!(
        v["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("keepalives unanswered")),
        "the error names what happened: {v}"
    );
    let (code, _) = get(&sock, "/health");
    assert_eq!(code, 503);
    let (code, out) = status_cli(&["--socket", sock.to_str().unwrap()]);
    assert_eq!(code, 1, "degraded: {out}");
    p.set_mode(Mode::Pass);
    stuck.join().unwrap().unwrap();
    wait_until(Duration::from_secs(60), "connected again", || {
        get(&sock, "/health").0 == 200
    });
    let v = json(&get(&sock, "/status").1);
    assert!(v["reconnects"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["last_error"].is_string(), "{v}");
}

#[test]
fn down_when_the_box_is_unreachable() {
    let s = Server::start();
    let (_closed_fd, closed) = refusing_port();
    s.write_ssh_config_via(closed, "");
    let sock = s.dir.path().join("down.sock");
    let m = Mount::new(
        &s,
        &format!("delay_connect,status_socket={}", sock.display()),
    );
    let (code, body) = get(&sock, "/health");
    assert_eq!(code, 503);
    assert_eq!(json(&body)["state"], "down");
    wait_until(Duration::from_secs(10), "an error recorded", || {
        json(&get(&sock, "/status").1)["last_error"].is_string()
    });
    let (code, _) = status_cli(&["--socket", sock.to_str().unwrap()]);
    assert_eq!(code, 1);
    // umount(8) stats the mountpoint first: that must not wait for the unreachable box.
    let t = Instant::now();
    assert!(Command::new("umount")
        .arg(m.path())
        .status()
        .unwrap()
        .success());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "umount took {:?}",
        t.elapsed()
    );
}

#[test]
fn metrics_over_tcp() {
    let s = Server::start();
    let port = free_port();
    let _m = Mount::new(&s, &format!("metrics_listen=127.0.0.1:{port}"));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    assert!(resp.contains("mastofs_up{"));
}

#[test]
fn systemd_ready_only_once_mounted() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mnt = tempfile::tempdir().unwrap();
    struct Daemon(std::process::Child, std::path::PathBuf);
    impl Drop for Daemon {
        fn drop(&mut self) {
            if is_mounted(&self.1) {
                let _ = Command::new("umount").arg("-l").arg(&self.1).status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut d = Daemon(
        Command::new(BIN)
            .arg(s.source())
            .arg(mnt.path())
            .args(["-f", "-F"])
            .arg(&s.ssh_config)
            .env("NOTIFY_SOCKET", &notify)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        mnt.path().to_path_buf(),
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ready_while_mounted = loop {
        let n = listener.recv(&mut buf).expect("a notification");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg.clone());
        if msg.lines().any(|l| l == "READY=1") {
            break is_mounted(mnt.path());
        }
    };
    assert!(
        ready_while_mounted,
        "READY=1 before the mount was live: {seen:?}"
    );
    // STATUS= comes from its own task: before or after READY=1.
    let status = loop {
        if let Some(st) = seen
            .iter()
            .flat_map(|m| m.lines())
            .find_map(|l| l.strip_prefix("STATUS="))
        {
            break st.to_string();
        }
        let n = listener.recv(&mut buf).expect("STATUS");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    };
    assert!(status.starts_with("connected"), "{seen:?}");
    assert!(Command::new("umount")
        .arg(mnt.path())
        .status()
        .unwrap()
        .success());
    // The socket's read timeout makes this fail unless STOPPING=1 arrives.
    loop {
        let n = listener
            .recv(&mut buf)
            .expect("STOPPING=1 within the socket's read timeout");
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "STOPPING=1")
        {
            break;
        }
    }
    assert!(d.0.wait().unwrap().success());
}
