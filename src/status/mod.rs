//! The status socket: HTTP/1.1 on a unix socket (and optionally TCP for Prometheus) with
//! `/health`, `/status` and `/metrics`; and `mastofs status`, its client.
//!
//! Owns the socket's path, permissions and lifetime, and serving requests from snapshots.
//! It reads counters through [`Source`]; it must never drive the filesystem or wait on the
//! network, so it answers even while the link is down or a request is stuck.

pub mod client;
pub mod report;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

pub use report::Snapshot;

/// Where the snapshot comes from (the mount's counters).
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> Snapshot;
}

/// Where root's mounts keep their sockets.
pub const RUN_DIR: &str = "/run/mastofs";

/// The directory for the status sockets of this user's mounts: [`RUN_DIR`] for root; for
/// anyone else (a `user` line in fstab) `mastofs` in their runtime directory
/// (`$XDG_RUNTIME_DIR`, else `/run/user/UID`), else `/tmp/mastofs-UID`.
pub fn run_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from(RUN_DIR);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .or_else(|| Some(PathBuf::from(format!("/run/user/{uid}"))).filter(|d| d.is_dir()));
    runtime.map_or_else(tmp_run_dir, |d| d.join("mastofs"))
}

/// The last resort for a user without a runtime directory.
fn tmp_run_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/mastofs-{}", nix::unistd::geteuid()))
}

/// `systemd-escape --path`: strip slashes at the ends, `/` -> `-`, and `\xNN` for anything
/// but ASCII alphanumerics, `_`, and a `.` that does not lead.
pub fn systemd_escape_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("status socket dir {}: {e}", dir.display()))?;
        // The directory of our own in /tmp must be ours and closed to others.
        if dir == tmp_run_dir() {
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::symlink_metadata(dir)
                .map_err(|e| format!("status socket dir {}: {e}", dir.display()))?;
            if !md.is_dir() || md.uid() != nix::unistd::geteuid().as_raw() {
                return Err(format!(
                    "status socket dir {} is not a directory of this user's",
                    dir.display()
                ));
            }
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
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
            default_socket(Path::new("/mnt/x")),
            Path::new("/run/mastofs/mnt-x.sock")
        );
    }
}
