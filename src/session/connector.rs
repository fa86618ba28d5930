//! Where connections come from: SSH in the daemon, in-memory SFTP servers in unit tests.
//!
//! Owns the narrow seam between the supervisor and the transport: open a connection, open
//! SFTP sessions on it, tell whether it closed, close it. The SSH implementation wraps
//! [`crate::ssh`]; tests plug in servers that fail, lose replies or hang on purpose, so that
//! reconnecting, replay and write-behind are tested without sshd. It must never retry,
//! choose connections or know about requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::ssh::{self, SshError, Target};

/// A byte stream carrying one SFTP session.
pub trait SftpStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> SftpStream for T {}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One connection to the server.
pub trait Transport: Send + Sync {
    /// The server's identification (`SSH-2.0-OpenSSH_9.2p1 ...`).
    fn server_id(&self) -> &str;
    /// Opens one more SFTP session on this connection.
    fn open_sftp(&self) -> BoxFuture<'_, Result<Box<dyn SftpStream>, SshError>>;
    /// True once the connection is gone (keepalives unanswered, reset, closed).
    fn is_closed(&self) -> bool;
    /// Why the connection ended, where known.
    fn why_closed(&self) -> Option<String> {
        None
    }
    /// Closes the connection (best effort).
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Makes connections.
pub trait Connector: Send + Sync + 'static {
    /// The server's name, for messages.
    fn host(&self) -> &str;
    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn Transport>, SshError>>;
}

/// Connections over SSH to `target`.
pub struct Ssh(pub Arc<Target>);

struct SshTransport {
    conn: ssh::Connection,
    target: Arc<Target>,
}

impl Connector for Ssh {
    fn host(&self) -> &str {
        &self.0.host
    }

    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn Transport>, SshError>> {
        Box::pin(async move {
            let conn = ssh::connect(self.0.clone()).await?;
            Ok(Box::new(SshTransport {
                conn,
                target: self.0.clone(),
            }) as Box<dyn Transport>)
        })
    }
}

impl Transport for SshTransport {
    fn server_id(&self) -> &str {
        &self.conn.server_id
    }

    fn open_sftp(&self) -> BoxFuture<'_, Result<Box<dyn SftpStream>, SshError>> {
        Box::pin(async move {
            let s = self.conn.open_sftp(self.target.connect_timeout).await?;
            Ok(Box::new(s) as Box<dyn SftpStream>)
        })
    }

    fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    fn why_closed(&self) -> Option<String> {
        self.conn.why_closed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.conn.close())
    }
}
