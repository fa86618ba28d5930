//! The status socket: HTTP/1.1 on a unix socket (and optionally TCP for Prometheus) with
//! `/health`, `/status` and `/metrics`; and `mastofs status`, its client.
//!
//! Owns the socket's path, permissions and lifetime, and serving requests from snapshots.
//! It reads counters through [`Source`]; it must never drive the filesystem or wait on the
//! network, so it answers even while the link is down or a request is stuck.

pub mod client;
pub mod report;
pub mod sync;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use crate::rundir;

pub use report::Snapshot;

/// Where the snapshot comes from (the mount's counters).
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> Snapshot;
}

/// The directory for the status sockets of this user's mounts (see [`crate::rundir`]).
pub fn run_dir() -> PathBuf {
    rundir::path(rundir::Dir::Status)
}

/// `systemd-escape --path`: strip slashes at the ends, `/` -> `-`, and `\xNN` for any byte
/// but ASCII alphanumerics, `_`, and a `.` that does not lead.
pub fn systemd_escape_path(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    let start = bytes.iter().position(|b| *b != b'/').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b'/')
        .map_or(start, |e| e + 1);
    let trimmed = &bytes[start..end.max(start)];
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, &b) in trimmed.iter().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i > 0 => out.push('.'),
            b if b.is_ascii_alphanumeric() || b == b'_' => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The default socket of the mount on `mountpoint`.
pub fn default_socket(mountpoint: &Path) -> PathBuf {
    run_dir().join(format!("{}.sock", systemd_escape_path(mountpoint)))
}

/// Binds the socket at `path` with mode 0660 (group `group` if given). A stale socket left
/// by a crashed daemon is replaced; a live one is an error.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, String> {
    match path.parent() {
        // The default directory is checked as every run directory is; one an admin named
        // with status_socket= is made if missing and otherwise left as it is.
        Some(dir) if dir == run_dir() => rundir::ensure(dir, rundir::Dir::Status)
            .map_err(|e| format!("status socket dir {e}"))?,
        Some(dir) => std::fs::create_dir_all(dir)
            .map_err(|e| format!("status socket dir {}: {e}", dir.display()))?,
        None => {}
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "status socket {} is in use by another mount",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("status socket {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("status socket {}: {e}", path.display()))?;
    if let Some(g) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))
            .map_err(|e| format!("status socket {}: chown: {e}", path.display()))?;
    }
    Ok(listener)
}

fn respond(source: &dyn Source, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let snap = source.snapshot();
    let (code, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/health") => (
            if snap.healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            "application/json",
            snap.health_json(),
        ),
        ("GET", "/status") => (StatusCode::OK, "application/json", snap.status_json()),
        ("GET", "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", snap.metrics()),
        ("GET", _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /health, /status or /metrics\n".into(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn serve_conn<S>(io: S, source: Arc<dyn Source>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let source = source.clone();
        async move { Ok::<_, Infallible>(respond(source.as_ref(), &req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Serves the unix socket until the runtime stops.
pub async fn serve_unix(listener: UnixListener, source: Arc<dyn Source>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(stream, source.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "status socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves `metrics_listen=ADDR` over TCP.
pub async fn serve_tcp(listener: tokio::net::TcpListener, source: Arc<dyn Source>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_conn(stream, source.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        // Checked against systemd-escape --path.
        assert_eq!(
            systemd_escape_path(Path::new("/mnt/mastodon")),
            "mnt-mastodon"
        );
        assert_eq!(
            systemd_escape_path(Path::new("/mnt/my-box/")),
            "mnt-my\\x2dbox"
        );
        assert_eq!(systemd_escape_path(Path::new("/mnt/a b")), "mnt-a\\x20b");
        assert_eq!(systemd_escape_path(Path::new("/.hidden")), "\\x2ehidden");
        assert_eq!(systemd_escape_path(Path::new("/")), "-");
        assert_eq!(
            systemd_escape_path(Path::new("/mnt/mnt\u{e9}")),
            "mnt-mnt\\xc3\\xa9"
        );
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(b"/mnt/a\xff");
        assert_eq!(systemd_escape_path(Path::new(raw)), "mnt-a\\xff");
        assert_eq!(
            default_socket(Path::new("/mnt/x")),
            Path::new("/run/mastofs/mnt-x.sock")
        );
    }
}
