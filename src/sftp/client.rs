//! One SFTP session over one SSH channel: typed, pipelinable requests.
//!
//! Owns the SFTP protocol state of a single connection: the version handshake, the
//! extensions the server advertised, request size limits and the count of open remote
//! handles. Every method may be called concurrently (requests are pipelined). It must never
//! retry or reconnect: a transport error is returned as [`SftpError::Transport`] and the
//! session layer decides what happens next.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Conn, Reply};
use super::error::SftpError;
use super::wire::{kind, pflags, status, Packet, Reader, MAX_HANDLE};
use crate::meta::{Attrs, OpenMode, StatVfs};

mod listing;
pub use listing::{DirEntry, ALL_LISTINGS_BYTES, LISTING_BYTES};

/// OpenSSH's own payload limit for READ and WRITE; larger requests end some servers'
/// sessions (ProFTPD), so this is also the cap when the server names no limit.
pub const DEFAULT_IO_SIZE: u32 = 261_120;

/// The smallest READ/WRITE size used whatever `limits@openssh.com` says: a server claiming
/// 1 byte must not turn one kernel read into a million requests.
pub const MIN_IO_SIZE: u32 = 4096;

/// Handles one gesftpserver session can hold (its MAXHANDLES).
const GESFTPSERVER_HANDLES: usize = 128;

/// What the server advertised in its VERSION packet.
#[derive(Debug, Clone, Default)]
pub struct Extensions {
    pub posix_rename: bool,
    pub statvfs: bool,
    pub fsync: bool,
    pub hardlink: bool,
    pub limits: bool,
    /// SSH_FXP_SYMLINK takes the link path first, as the draft says
    /// (`symlink-order@rjk.greenend.org.uk: linkpath-targetpath`, gesftpserver). OpenSSH
    /// and most servers read the target first.
    pub symlink_link_first: bool,
    /// Runs requests on several threads: unrelated requests may take effect, and be
    /// answered, in another order than sent (gesftpserver).
    pub concurrent: bool,
}

/// A remote handle: opaque bytes, valid only on the session that returned it. Dropping
/// it without [`SftpClient::close_nowait`] leaks the handle on the server until the
/// session ends.
#[derive(Debug)]
pub struct RemoteHandle {
    pub(crate) id: Bytes,
}

/// SFTP's pflags for `m`.
fn open_flags(m: OpenMode) -> u32 {
    let mut f = 0;
    let mut set = |on: bool, bit: u32| {
        if on {
            f |= bit
        }
    };
    set(m.read, pflags::READ);
    set(m.write, pflags::WRITE);
    set(m.create || m.exclusive, pflags::CREAT);
    set(m.truncate, pflags::TRUNC);
    set(m.exclusive, pflags::EXCL);
    f
}

pub struct SftpClient {
    conn: Conn,
    /// The protocol version the server answered with.
    pub version: u32,
    /// The names of the extensions it advertised, in its order.
    pub extension_names: Vec<String>,
    pub extensions: Extensions,
    /// Largest READ payload this client sends.
    pub max_read: u32,
    /// Largest WRITE payload this client sends.
    pub max_write: u32,
    /// Handles the server lets one session hold open (limits@openssh.com), if it says.
    pub max_handles: Option<usize>,
}

type R<T> = Result<T, SftpError>;

/// A request packet for `kind` whose first field is a path or a handle (room for a few
/// more fields behind it).
fn packet_on(k: u8, id: u32, first: &[u8]) -> Packet {
    Packet::new(k, id, 40 + first.len()).bytes(first)
}

impl SftpClient {
    /// Runs the SFTP version handshake on `stream` (an SSH channel with the sftp subsystem).
    /// `server` names the server in log lines.
    pub async fn start<S>(stream: S, request_timeout: Duration, server: &str) -> R<Self>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (conn, version, ext) = Conn::start(stream, request_timeout, server).await?;
        let has = |name: &str| ext.iter().any(|(n, _)| n == name);
        let extensions = Extensions {
            posix_rename: has("posix-rename@openssh.com"),
            statvfs: has("statvfs@openssh.com"),
            fsync: has("fsync@openssh.com"),
            hardlink: has("hardlink@openssh.com"),
            limits: has("limits@openssh.com"),
            symlink_link_first: ext.iter().any(|(n, d)| {
                n == "symlink-order@rjk.greenend.org.uk" && &d[..] == b"linkpath-targetpath"
            }),
            concurrent: false,
        };
        let mut client = SftpClient {
            conn,
            version,
            extension_names: ext.iter().map(|(n, _)| n.clone()).collect(),
            extensions,
            max_read: DEFAULT_IO_SIZE,
            max_write: DEFAULT_IO_SIZE,
            max_handles: None,
        };
        if client.extensions.limits {
            if let Ok((read, write, handles)) = client.limits().await {
                client.max_read = read;
                client.max_write = write;
                client.max_handles = handles;
            }
        }
        // gesftpserver (the only server declaring its symlink order) keeps at most 128
        // handles per session and hands out one past its table after that (which it then
        // calls invalid): stay below.
        if client.extensions.symlink_link_first && client.max_handles.is_none() {
            client.max_handles = Some(GESFTPSERVER_HANDLES);
        }
        // gesftpserver also runs requests on a pool of threads.
        client.extensions.concurrent = client.extensions.symlink_link_first;
        Ok(client)
    }

    /// limits@openssh.com: the server's READ and WRITE sizes, clamped to
    /// [`MIN_IO_SIZE`]..=[`DEFAULT_IO_SIZE`] (0 means no limit), and how many handles it
    /// lets a session hold (0: it does not say).
    async fn limits(&self) -> R<(u32, u32, Option<usize>)> {
        let body = self.extended("limits@openssh.com", |p| p).await?;
        let mut r = Reader::new(body);
        let mut field = |what| r.u64(what).map_err(|e| self.conn.confused(e.to_string()));
        let _packet = field("max packet length")?;
        let read = field("max read length")?;
        let write = field("max write length")?;
        // Optional in practice: a server that stops after three fields says nothing.
        let handles = r.u64("max open handles").unwrap_or(0);
        let clamp = |v: u64| {
            if v == 0 {
                DEFAULT_IO_SIZE
            } else {
                v.clamp(MIN_IO_SIZE as u64, DEFAULT_IO_SIZE as u64) as u32
            }
        };
        let handles = (handles > 0).then(|| handles.min(usize::MAX as u64) as usize);
        Ok((clamp(read), clamp(write), handles))
    }

    /// Why this session failed, if it did.
    pub fn failure(&self) -> Option<SftpError> {
        self.conn.failure()
    }

    async fn call(&self, build: impl FnOnce(u32) -> Bytes) -> R<Reply> {
        self.conn.call(build, Bytes::new()).await
    }

    /// A reply that must be `want`; a STATUS is its error, anything else a protocol error.
    fn expect(&self, r: Reply, want: u8, what: &str) -> R<Bytes> {
        if r.kind == want {
            return Ok(r.body);
        }
        match self.status(r) {
            Ok(()) => Err(self
                .conn
                .confused(format!("{what}: status OK where data was due"))),
            Err(e) => Err(e),
        }
    }

    /// A reply to a request on a handle that must be `want`, or EOF (`None`).
    fn expect_or_eof(&self, r: Reply, want: u8, what: &str) -> R<Option<Bytes>> {
        match self.check_handle(self.expect(r, want, what)) {
            Ok(b) => Ok(Some(b)),
            Err(SftpError::Status {
                code: status::EOF, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A reply that must be a STATUS: Ok for OK, its error otherwise.
    fn status(&self, r: Reply) -> R<()> {
        if r.kind != kind::STATUS {
            return Err(self
                .conn
                .confused(format!("reply of type {} where a status was due", r.kind)));
        }
        let mut rd = Reader::new(r.body);
        let code = rd
            .u32("status code")
            .map_err(|e| self.conn.confused(e.to_string()))?;
        // The message is optional in practice (some servers end the packet after the code).
        let message = rd.text("status message").unwrap_or_default();
        if code == status::OK {
            return Ok(());
        }
        Err(SftpError::Status { code, message })
    }

    /// A STATUS about a handle this client holds open that says the handle is invalid:
    /// the server has lost track of its own state.
    fn check_handle<T>(&self, r: R<T>) -> R<T> {
        match r {
            Err(SftpError::Status { code, message })
                if code == status::INVALID_HANDLE
                    || message.to_ascii_lowercase().contains("invalid handle") =>
            {
                Err(self.conn.confused(format!(
                    "'{message}' (status {code}) for a handle held open"
                )))
            }
            other => other,
        }
    }

    fn decode_attrs(&self, body: Bytes) -> R<Attrs> {
        Reader::new(body)
            .attrs()
            .map_err(|e| self.conn.confused(format!("ATTRS: {e}")))
    }

    async fn attrs_of(&self, k: u8, path: &[u8]) -> R<Attrs> {
        let r = self.call(|id| packet_on(k, id, path).finish()).await?;
        self.decode_attrs(self.expect(r, kind::ATTRS, "stat")?)
    }

    async fn path_status(&self, k: u8, path: &[u8]) -> R<()> {
        let r = self.call(|id| packet_on(k, id, path).finish()).await?;
        self.status(r)
    }

    async fn handle_status(&self, build: impl FnOnce(u32) -> Bytes) -> R<()> {
        let r = self.call(build).await?;
        self.check_handle(self.status(r))
    }

    pub async fn lstat(&self, path: impl AsRef<[u8]>) -> R<Attrs> {
        self.attrs_of(kind::LSTAT, path.as_ref()).await
    }

    pub async fn stat(&self, path: impl AsRef<[u8]>) -> R<Attrs> {
        self.attrs_of(kind::STAT, path.as_ref()).await
    }

    pub async fn fstat(&self, h: &RemoteHandle) -> R<Attrs> {
        let r = self
            .call(|id| packet_on(kind::FSTAT, id, &h.id).finish())
            .await?;
        let body = self.check_handle(self.expect(r, kind::ATTRS, "fstat"))?;
        self.decode_attrs(body)
    }

    pub async fn setstat(&self, path: impl AsRef<[u8]>, attrs: &Attrs) -> R<()> {
        let path = path.as_ref();
        let r = self
            .call(|id| packet_on(kind::SETSTAT, id, path).attrs(attrs).finish())
            .await?;
        self.status(r)
    }

    pub async fn fsetstat(&self, h: &RemoteHandle, attrs: &Attrs) -> R<()> {
        self.handle_status(|id| packet_on(kind::FSETSTAT, id, &h.id).attrs(attrs).finish())
            .await
    }

    fn handle_of(&self, r: Reply) -> R<RemoteHandle> {
        let body = self.expect(r, kind::HANDLE, "open")?;
        let id = Reader::new(body)
            .owned("handle")
            .map_err(|e| self.conn.confused(format!("HANDLE: {e}")))?;
        if id.len() > MAX_HANDLE {
            return Err(self.conn.confused(format!(
                "handle of {} bytes (the protocol allows {MAX_HANDLE})",
                id.len()
            )));
        }
        Ok(RemoteHandle { id })
    }

    pub async fn open(
        &self,
        path: impl AsRef<[u8]>,
        mode: OpenMode,
        attrs: &Attrs,
    ) -> R<RemoteHandle> {
        self.open_flags(path.as_ref(), open_flags(mode), attrs)
            .await
    }

    /// OPEN of an existing file with WRITE|APPEND: only the server probe asks (whether the
    /// server accepts APPEND at all); mastofs writes at explicit offsets.
    pub async fn open_append(&self, path: impl AsRef<[u8]>) -> R<RemoteHandle> {
        let flags = pflags::WRITE | pflags::APPEND;
        self.open_flags(path.as_ref(), flags, &Attrs::default())
            .await
    }

    async fn open_flags(&self, path: &[u8], flags: u32, attrs: &Attrs) -> R<RemoteHandle> {
        let r = self
            .call(|id| {
                packet_on(kind::OPEN, id, path)
                    .u32(flags)
                    .attrs(attrs)
                    .finish()
            })
            .await?;
        self.handle_of(r)
    }

    /// Sends CLOSE without waiting for the answer (it is then ignored). Requests sent
    /// later are processed after it, so nothing can use the handle by mistake.
    pub fn close_nowait(&self, h: &RemoteHandle) {
        self.conn
            .send_only(|id| packet_on(kind::CLOSE, id, &h.id).finish());
    }

    /// Reads up to `len` bytes (capped at `max_read`); an empty result means end of file.
    /// A reply longer than asked is a protocol error, never data.
    pub async fn read(&self, h: &RemoteHandle, offset: u64, len: u32) -> R<Bytes> {
        let len = len.min(self.max_read);
        let r = self
            .call(|id| {
                packet_on(kind::READ, id, &h.id)
                    .u64(offset)
                    .u32(len)
                    .finish()
            })
            .await?;
        let Some(body) = self.expect_or_eof(r, kind::DATA, "read")? else {
            return Ok(Bytes::new());
        };
        let data = Reader::new(body)
            .bytes("data")
            .map_err(|e| self.conn.confused(format!("DATA: {e}")))?;
        if data.len() > len as usize {
            return Err(self
                .conn
                .confused(format!("READ of {len} bytes answered with {}", data.len())));
        }
        Ok(data)
    }

    /// Writes one chunk of at most `max_write` bytes. The data is sent as it is, after
    /// the packet's header (not copied into it).
    pub async fn write(&self, h: &RemoteHandle, offset: u64, data: Bytes) -> R<()> {
        let len = data.len();
        let r = self
            .conn
            .call(
                |id| {
                    packet_on(kind::WRITE, id, &h.id)
                        .u64(offset)
                        .u32(len as u32)
                        .finish_tail(len)
                },
                data,
            )
            .await?;
        self.check_handle(self.status(r))
    }

    pub async fn remove(&self, path: impl AsRef<[u8]>) -> R<()> {
        self.path_status(kind::REMOVE, path.as_ref()).await
    }

    pub async fn mkdir(&self, path: impl AsRef<[u8]>, attrs: &Attrs) -> R<()> {
        let path = path.as_ref();
        let r = self
            .call(|id| packet_on(kind::MKDIR, id, path).attrs(attrs).finish())
            .await?;
        self.status(r)
    }

    pub async fn rmdir(&self, path: impl AsRef<[u8]>) -> R<()> {
        self.path_status(kind::RMDIR, path.as_ref()).await
    }

    /// Plain SFTP rename: fails when `to` exists (on OpenSSH).
    pub async fn rename(&self, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) -> R<()> {
        let r = self
            .call(|id| {
                packet_on(kind::RENAME, id, from.as_ref())
                    .bytes(to.as_ref())
                    .finish()
            })
            .await?;
        self.status(r)
    }

    /// Sends the extended request `name` with fields added by `fields`.
    async fn call_extended(&self, name: &str, fields: impl FnOnce(Packet) -> Packet) -> R<Reply> {
        self.call(|id| fields(packet_on(kind::EXTENDED, id, name.as_bytes())).finish())
            .await
    }

    /// An extended request answered by data: the EXTENDED_REPLY's body, or the STATUS's
    /// error.
    async fn extended(&self, name: &str, fields: impl FnOnce(Packet) -> Packet) -> R<Bytes> {
        let r = self.call_extended(name, fields).await?;
        self.expect(r, kind::EXTENDED_REPLY, name)
    }

    /// An extended request answered by a status.
    async fn extended_status(&self, name: &str, fields: impl FnOnce(Packet) -> Packet) -> R<()> {
        let r = self.call_extended(name, fields).await?;
        self.status(r)
    }

    /// Atomic replace (posix-rename@openssh.com).
    pub async fn posix_rename(&self, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) -> R<()> {
        if !self.extensions.posix_rename {
            return Err(SftpError::Unsupported("posix-rename@openssh.com"));
        }
        self.extended_status("posix-rename@openssh.com", |p| {
            p.bytes(from.as_ref()).bytes(to.as_ref())
        })
        .await
    }

    /// Creates a symlink at `link` pointing to `target`. OpenSSH (and servers compatible
    /// with it) read SSH_FXP_SYMLINK's arguments in the reverse order of the draft; a
    /// server that declares the draft's order gets that.
    pub async fn symlink(&self, target: impl AsRef<[u8]>, link: impl AsRef<[u8]>) -> R<()> {
        let (target, link) = (target.as_ref(), link.as_ref());
        let (first, second) = if self.extensions.symlink_link_first {
            (link, target)
        } else {
            (target, link)
        };
        let r = self
            .call(|id| packet_on(kind::SYMLINK, id, first).bytes(second).finish())
            .await?;
        self.status(r)
    }

    /// The first name of a NAME reply to a path request (READLINK, REALPATH).
    async fn one_name(&self, k: u8, path: &[u8], what: &str) -> R<Bytes> {
        let r = self.call(|id| packet_on(k, id, path).finish()).await?;
        let body = self.expect(r, kind::NAME, what)?;
        self.names(body)?
            .into_iter()
            .next()
            .map(|e| e.name)
            .ok_or_else(|| self.conn.confused(format!("empty {what} reply")))
    }

    pub async fn readlink(&self, path: impl AsRef<[u8]>) -> R<Bytes> {
        self.one_name(kind::READLINK, path.as_ref(), "READLINK")
            .await
    }

    pub async fn realpath(&self, path: impl AsRef<[u8]>) -> R<Bytes> {
        self.one_name(kind::REALPATH, path.as_ref(), "REALPATH")
            .await
    }

    pub async fn hardlink(&self, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) -> R<()> {
        if !self.extensions.hardlink {
            return Err(SftpError::Unsupported("hardlink@openssh.com"));
        }
        self.extended_status("hardlink@openssh.com", |p| {
            p.bytes(from.as_ref()).bytes(to.as_ref())
        })
        .await
    }

    pub async fn fsync(&self, h: &RemoteHandle) -> R<()> {
        if !self.extensions.fsync {
            return Err(SftpError::Unsupported("fsync@openssh.com"));
        }
        let r = self
            .extended_status("fsync@openssh.com", |p| p.bytes(&h.id))
            .await;
        self.check_handle(r)
    }

    pub async fn statvfs(&self, path: impl AsRef<[u8]>) -> R<StatVfs> {
        if !self.extensions.statvfs {
            return Err(SftpError::Unsupported("statvfs@openssh.com"));
        }
        let body = self
            .extended("statvfs@openssh.com", |p| p.bytes(path.as_ref()))
            .await?;
        let mut r = Reader::new(body);
        let mut f = [0u64; 11];
        for v in f.iter_mut() {
            *v = r
                .u64("statvfs field")
                .map_err(|e| self.conn.confused(format!("statvfs: {e}")))?;
        }
        Ok(StatVfs {
            bsize: f[0],
            frsize: f[1],
            blocks: f[2],
            bfree: f[3],
            bavail: f[4],
            files: f[5],
            ffree: f[6],
            namemax: f[10],
        })
    }

    /// Ends the SFTP session (the SSH connection is closed by its owner).
    pub fn shutdown(&self) {
        self.conn.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_mode_flags() {
        let m = OpenMode {
            write: true,
            exclusive: true,
            ..Default::default()
        };
        let f = open_flags(m);
        assert_eq!(f, pflags::CREAT | pflags::EXCL | pflags::WRITE);
    }
}
