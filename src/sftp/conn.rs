//! One SFTP session's transport: request ids, the replies waiting for them, and the two
//! tasks that move packets over the SSH channel.
//!
//! Owns pipelining: any number of requests may be in flight; each reply is matched to its
//! request by id and handed over without copying. Owns the session's health too: once the
//! channel fails or the server breaks the protocol (a packet over [`MAX_PACKET`], a reply to
//! an id not in flight, garbage), every waiting and later request fails at once. A broken
//! protocol is [`SftpError::Confused`] (the server's state cannot be trusted), a lost channel
//! [`SftpError::Transport`]. It must never interpret replies beyond their header, and never
//! retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::error::SftpError;
use super::wire::{self, MAX_PACKET};

/// A reply: its packet type and the body after the request id.
#[derive(Debug)]
pub struct Reply {
    pub kind: u8,
    pub body: Bytes,
}

type Waiter = oneshot::Sender<Result<Reply, SftpError>>;

#[derive(Default)]
struct Pending {
    /// Requests sent and not answered. A request whose caller stopped waiting stays here
    /// until its reply comes, so that reply is not mistaken for one to an unknown id.
    waiting: HashMap<u32, Waiter>,
    /// Why the session is unusable, once it is. Requests waiting then, and later ones, get
    /// a transport error naming it (they may be sent again on a new session); only the
    /// request whose reply broke the protocol gets [`SftpError::Confused`] itself.
    failed: Option<SftpError>,
}

struct Shared {
    pending: Mutex<Pending>,
    dead: watch::Sender<bool>,
    /// The server's identification, for the one error line a confused server gets.
    server: String,
}

impl Shared {
    /// Fails the session with `e`: every waiting request gets it, later ones too.
    fn fail(&self, e: SftpError) {
        let waiting = match self.pending.lock() {
            Ok(mut p) => {
                if p.failed.is_some() {
                    return;
                }
                p.failed = Some(e.clone());
                std::mem::take(&mut p.waiting)
            }
            Err(_) => return,
        };
        if let SftpError::Confused(why) = &e {
            tracing::error!(server = %self.server, error = %why,
                "SFTP server broke the protocol; the session is dropped and writes in flight on it are reported as failed");
        }
        let dropped = dropped(&e);
        for (_, w) in waiting {
            let _ = w.send(Err(dropped.clone()));
        }
        self.dead.send_replace(true);
    }
}

/// The error requests get whose session failed with `cause`.
fn dropped(cause: &SftpError) -> SftpError {
    match cause {
        SftpError::Confused(why) => SftpError::Transport(format!("session dropped: {why}")),
        other => other.clone(),
    }
}

/// One SFTP session over one channel. Cheap to share; all methods take `&self`.
pub struct Conn {
    out: mpsc::UnboundedSender<(Bytes, Bytes)>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    request_timeout: Duration,
}

/// Reads one packet (without its length field). `buf` keeps bytes read past it.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<Bytes, SftpError> {
    loop {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > MAX_PACKET {
                return Err(SftpError::Confused(format!(
                    "packet of {len} bytes (limit {MAX_PACKET})"
                )));
            }
            if buf.len() >= 4 + len {
                buf.advance(4);
                return Ok(buf.split_to(len).freeze());
            }
            buf.reserve(4 + len - buf.len());
        } else {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(buf).await {
            Ok(0) => {
                return Err(SftpError::Transport(
                    "server closed the SFTP session".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(SftpError::Transport(e.to_string())),
        }
    }
}

async fn reader<R: AsyncRead + Unpin>(mut rd: R, mut buf: BytesMut, shared: Arc<Shared>) {
    let mut dead = shared.dead.subscribe();
    loop {
        let packet = tokio::select! {
            p = read_packet(&mut rd, &mut buf) => p,
            _ = dead.wait_for(|d| *d) => return,
        };
        let reply = packet.and_then(|p| {
            wire::split_reply(p).map_err(|e| SftpError::Confused(format!("malformed reply: {e}")))
        });
        let (kind, id, body) = match reply {
            Ok(r) => r,
            Err(e) => return shared.fail(e),
        };
        let waiter = match shared.pending.lock() {
            Ok(mut p) => p.waiting.remove(&id),
            Err(_) => None,
        };
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(Reply { kind, body }));
            }
            None => {
                return shared.fail(SftpError::Confused(format!(
                    "reply (type {kind}) to request id {id}, which is not in flight"
                )))
            }
        }
    }
}

async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<(Bytes, Bytes)>,
    shared: Arc<Shared>,
) {
    let mut dead = shared.dead.subscribe();
    loop {
        let (head, tail) = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
            _ = dead.wait_for(|d| *d) => break,
        };
        let mut r = wr.write_all(&head).await;
        if r.is_ok() && !tail.is_empty() {
            r = wr.write_all(&tail).await;
        }
        if let Err(e) = r {
            shared.fail(SftpError::Transport(e.to_string()));
            break;
        }
    }
    let _ = wr.shutdown().await;
}

impl Conn {
    /// Runs the version handshake on `stream` and starts the session's tasks. Returns the
    /// session, the server's protocol version and its extensions.
    pub async fn start<S>(
        stream: S,
        request_timeout: Duration,
        server: &str,
    ) -> Result<(Conn, u32, Vec<(String, Bytes)>), SftpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = BytesMut::new();
        let hello = async {
            wr.write_all(&wire::Packet::init(3)).await?;
            wr.flush().await?;
            Ok::<_, std::io::Error>(())
        };
        let first = async {
            hello
                .await
                .map_err(|e| SftpError::Transport(e.to_string()))?;
            read_packet(&mut rd, &mut buf).await
        };
        let first = tokio::time::timeout(request_timeout, first)
            .await
            .map_err(|_| SftpError::Transport("no VERSION from the server".into()))??;
        let (version, extensions) = wire::version(first)
            .map_err(|e| SftpError::Confused(format!("bad VERSION packet: {e}")))?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            dead: watch::Sender::new(false),
            server: server.to_string(),
        });
        let (out, rx) = mpsc::unbounded_channel();
        tokio::spawn(reader(rd, buf, shared.clone()));
        tokio::spawn(writer(wr, rx, shared.clone()));
        let conn = Conn {
            out,
            shared,
            next_id: AtomicU32::new(1),
            request_timeout,
        };
        Ok((conn, version, extensions))
    }

    /// Sends the packet `build` makes for a fresh request id (and `tail`, bytes sent right
    /// after it as part of the same packet) and waits for the reply, at most the request
    /// timeout. Dropping the future forgets the reply, nothing else.
    pub async fn call(
        &self,
        build: impl FnOnce(u32) -> Bytes,
        tail: Bytes,
    ) -> Result<Reply, SftpError> {
        let rx = self.send(build, tail)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SftpError::Transport("SFTP session ended".into())),
            Err(_) => Err(SftpError::Transport(format!(
                "no reply within {} s",
                self.request_timeout.as_secs()
            ))),
        }
    }

    /// Sends a request without waiting for its reply (which is then ignored).
    pub fn send_only(&self, build: impl FnOnce(u32) -> Bytes) {
        let _ = self.send(build, Bytes::new());
    }

    fn send(
        &self,
        build: impl FnOnce(u32) -> Bytes,
        tail: Bytes,
    ) -> Result<oneshot::Receiver<Result<Reply, SftpError>>, SftpError> {
        let (tx, rx) = oneshot::channel();
        let mut p = self
            .shared
            .pending
            .lock()
            .map_err(|_| SftpError::Transport("SFTP session state poisoned".into()))?;
        if let Some(e) = &p.failed {
            return Err(dropped(e));
        }
        // Ids wrap after 2^32 requests; skip one still waiting.
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        while p.waiting.contains_key(&id) {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        p.waiting.insert(id, tx);
        // Queued under the lock, so packets leave in id order.
        if self.out.send((build(id), tail)).is_err() {
            p.waiting.remove(&id);
            return Err(SftpError::Transport("SFTP session ended".into()));
        }
        Ok(rx)
    }

    /// The server broke the protocol in a reply (`why`): the session is failed for every
    /// request, and the error to return is given back.
    pub fn confused(&self, why: String) -> SftpError {
        let e = SftpError::Confused(why);
        self.shared.fail(e.clone());
        e
    }

    /// Why the session failed, if it did.
    pub fn failure(&self) -> Option<SftpError> {
        self.shared.pending.lock().ok()?.failed.clone()
    }

    /// Ends the session: the channel is closed, waiting requests fail.
    pub fn shutdown(&self) {
        self.shared
            .fail(SftpError::Transport("SFTP session closed".into()));
    }
}
