//! The session's replay, reconciliation and write-behind against in-memory SFTP servers
//! that lose replies, break the protocol or hang on purpose (tests/hostile), through the
//! [`Connector`] seam: no sshd, no kernel.

use mastofs_testkit::hostile;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hostile::Mode;

use super::connector::{BoxFuture, Connector, SftpStream, Transport};
use super::{Bytes, OpenMode, Remote, RemoteError, Session, SftpSessions};
use crate::ssh::SshError;

/// Connections to an in-memory hostile server over `root`: the first connection
/// misbehaves as `first`, later ones as `later`.
struct Mem {
    root: std::path::PathBuf,
    first: Mode,
    later: Mode,
    made: AtomicU64,
}

struct MemTransport {
    mode: Mode,
    root: std::path::PathBuf,
    closed: Arc<AtomicBool>,
}

impl Connector for Mem {
    fn host(&self) -> &str {
        "memory"
    }

    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn Transport>, SshError>> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let mode = if n == 0 { self.first } else { self.later };
        let t = MemTransport {
            mode,
            root: self.root.clone(),
            closed: Arc::default(),
        };
        Box::pin(async move { Ok(Box::new(t) as Box<dyn Transport>) })
    }
}

impl Transport for MemTransport {
    fn server_id(&self) -> &str {
        "SSH-2.0-OpenSSH_9.9 memory"
    }

    fn open_sftp(&self) -> BoxFuture<'_, Result<Box<dyn SftpStream>, SshError>> {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (root, mode, closed) = (self.root.clone(), self.mode, self.closed.clone());
        tokio::spawn(async move {
            hostile::serve(b, root, mode).await;
            // The server went away: so did the connection.
            closed.store(true, Ordering::Relaxed);
        });
        Box::pin(async move { Ok(Box::new(a) as Box<dyn SftpStream>) })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A running session over the hostile server, and the served directory.
async fn session(first: Mode, later: Mode, timeout: Duration) -> (Arc<Session>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(Mem {
        root: dir.path().to_path_buf(),
        first,
        later,
        made: AtomicU64::new(0),
    });
    let s = Session::with_connector(
        mem,
        super::probe::Prober::new(None),
        Duration::from_secs(60),
        timeout,
        32 << 20,
        1,
        SftpSessions::Fixed(1),
    );
    let link = s.connect_first().await.unwrap();
    s.start(Some(link));
    (s, dir)
}

fn p(d: &tempfile::TempDir, name: &str) -> String {
    format!("{}/{name}", d.path().display())
}

const WRITE: OpenMode = OpenMode {
    read: true,
    write: true,
    create: true,
    truncate: false,
    exclusive: false,
};

#[tokio::test]
async fn a_remove_whose_reply_was_lost_is_replayed_and_reconciled() {
    let (s, d) = session(Mode::LoseReply(13), Mode::Plain, Duration::from_secs(20)).await;
    std::fs::write(d.path().join("f"), b"x").unwrap();
    s.remove(&p(&d, "f")).await.unwrap();
    assert!(!d.path().join("f").exists());
    assert_eq!(s.replay_stats.replays.load(Ordering::Relaxed), 1);
    assert_eq!(s.supervisor().stats.reconnects.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn acknowledged_writes_survive_a_lost_reply() {
    let (s, d) = session(Mode::LoseReply(6), Mode::Plain, Duration::from_secs(20)).await;
    let f = s.open(&p(&d, "w"), WRITE, Some(0o644)).await.unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for (i, part) in data.chunks(1 << 20).enumerate() {
        s.write(&f, (i << 20) as u64, Bytes::copy_from_slice(part))
            .await
            .unwrap();
    }
    s.close(&f).await.unwrap();
    assert!(std::fs::read(d.path().join("w")).unwrap() == data);
    assert!(s.replay_stats.replays.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn a_write_meeting_a_confused_server_fails_at_close_and_the_session_goes_on() {
    let (s, d) = session(
        Mode::InvalidHandle,
        Mode::InvalidHandle,
        Duration::from_secs(20),
    )
    .await;
    let f = s.open(&p(&d, "trigger"), WRITE, Some(0o644)).await.unwrap();
    s.write(&f, 0, Bytes::from_static(b"mangled?"))
        .await
        .unwrap();
    let e = s.close(&f).await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    let g = s.open(&p(&d, "fine"), WRITE, Some(0o644)).await.unwrap();
    s.write(&g, 0, Bytes::from_static(b"ok")).await.unwrap();
    s.close(&g).await.unwrap();
    assert_eq!(std::fs::read(d.path().join("fine")).unwrap(), b"ok");
}

#[tokio::test]
async fn a_hanging_call_gives_up_at_the_timeout_and_others_go_on() {
    let (s, d) = session(Mode::Silent, Mode::Silent, Duration::from_secs(1)).await;
    let e = s.lstat(&p(&d, "trigger")).await.unwrap_err();
    assert!(matches!(e, RemoteError::Timeout(1)), "{e}");
    std::fs::write(d.path().join("there"), b"1").unwrap();
    assert_eq!(s.lstat(&p(&d, "there")).await.unwrap().size, Some(1));
}
