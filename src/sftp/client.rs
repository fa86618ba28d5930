//! One SFTP session over one SSH channel: typed, pipelinable requests.
//!
//! Owns the SFTP protocol state of a single connection: the version handshake, the
//! extensions the server advertised, request size limits and the count of open remote
//! handles. Every method may be called concurrently (requests are pipelined). It must never
//! retry or reconnect: a transport error is returned as [`SftpError::Transport`] and the
//! session layer decides what happens next.

use std::sync::Arc;
use std::time::Duration;

use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{OpenFlags, Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::attrs::Attrs;
use super::error::SftpError;

/// OpenSSH's own payload limit for READ and WRITE; larger requests end some servers'
/// sessions (ProFTPD), so this is also the cap when the server names no limit.
pub const DEFAULT_IO_SIZE: u32 = 261_120;

/// Remote handles are passed through a library that decodes them as UTF-8. OpenSSH numbers
/// handles from 0 and reuses free slots, so keeping fewer than 128 open keeps every handle
/// a valid UTF-8 string.
const MAX_OPEN_HANDLES: usize = 127;

/// What the server advertised in its VERSION packet.
#[derive(Debug, Clone, Default)]
pub struct Extensions {
    pub posix_rename: bool,
    pub statvfs: bool,
    pub fsync: bool,
    pub hardlink: bool,
    pub limits: bool,
}

/// Remote filesystem statistics (statvfs@openssh.com).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatVfs {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namemax: u64,
}

/// A remote handle, valid only on the session that returned it. Dropping it without
/// [`SftpClient::close`] leaks the handle on the server until the session ends.
#[derive(Debug)]
pub struct RemoteHandle {
    pub(crate) id: String,
    _permit: OwnedSemaphorePermit,
}

/// How to open a remote file. Mirrors SFTP's pflags; APPEND is deliberately absent
/// (ProFTPD refuses it; writes carry explicit offsets instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
}

impl OpenMode {
    fn flags(self) -> OpenFlags {
        let mut f = OpenFlags::empty();
        f.set(OpenFlags::READ, self.read);
        f.set(OpenFlags::WRITE, self.write);
        f.set(OpenFlags::CREATE, self.create || self.exclusive);
        f.set(OpenFlags::TRUNCATE, self.truncate);
        f.set(OpenFlags::EXCLUDE, self.exclusive);
        f
    }
}

/// An entry of a remote directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attrs: Attrs,
}

pub struct SftpClient {
    raw: RawSftpSession,
    pub extensions: Extensions,
    /// Largest READ payload this client sends.
    pub max_read: u32,
    /// Largest WRITE payload this client sends.
    pub max_write: u32,
    handles: Arc<Semaphore>,
}

type R<T> = Result<T, SftpError>;

fn status_ok(p: Packet) -> R<()> {
    match p {
        Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
        Packet::Status(s) => Err(SftpError::Status {
            code: s.status_code,
            message: s.error_message,
        }),
        _ => Err(SftpError::Transport("unexpected reply packet".into())),
    }
}

/// SSH wire encoding of a list of strings, for extension requests.
fn ssh_strings(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

impl SftpClient {
    /// Runs the SFTP version handshake on `stream` (an SSH channel with the sftp subsystem).
    pub async fn start<S>(stream: S, request_timeout: Duration) -> R<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = russh_sftp::client::Config {
            request_timeout_secs: request_timeout.as_secs().max(1),
            ..Default::default()
        };
        let raw = RawSftpSession::new_with_config(stream, cfg);
        let version = raw.init().await?;
        let has = |name: &str| version.extensions.contains_key(name);
        let extensions = Extensions {
            posix_rename: has("posix-rename@openssh.com"),
            statvfs: has("statvfs@openssh.com"),
            fsync: has("fsync@openssh.com"),
            hardlink: has("hardlink@openssh.com"),
            limits: has("limits@openssh.com"),
        };
        let mut client = SftpClient {
            raw,
            extensions,
            max_read: DEFAULT_IO_SIZE,
            max_write: DEFAULT_IO_SIZE,
            handles: Arc::new(Semaphore::new(MAX_OPEN_HANDLES)),
        };
        if client.extensions.limits {
            if let Ok(l) = client.raw.limits().await {
                let cap = |v: u64| -> u32 {
                    if v == 0 {
                        DEFAULT_IO_SIZE
                    } else {
                        v.min(DEFAULT_IO_SIZE as u64) as u32
                    }
                };
                client.max_read = cap(l.max_read_len);
                client.max_write = cap(l.max_write_len);
            }
        }
        Ok(client)
    }

    pub async fn lstat(&self, path: &str) -> R<Attrs> {
        Ok(self.raw.lstat(path).await?.attrs.into())
    }

    pub async fn stat(&self, path: &str) -> R<Attrs> {
        Ok(self.raw.stat(path).await?.attrs.into())
    }

    pub async fn fstat(&self, h: &RemoteHandle) -> R<Attrs> {
        Ok(self.raw.fstat(h.id.as_str()).await?.attrs.into())
    }

    pub async fn setstat(&self, path: &str, attrs: &Attrs) -> R<()> {
        self.raw.setstat(path, attrs.into()).await?;
        Ok(())
    }

    pub async fn fsetstat(&self, h: &RemoteHandle, attrs: &Attrs) -> R<()> {
        self.raw.fsetstat(h.id.as_str(), attrs.into()).await?;
        Ok(())
    }

    fn handle_permit(&self) -> R<OwnedSemaphorePermit> {
        self.handles
            .clone()
            .try_acquire_owned()
            .map_err(|_| SftpError::Status {
                code: StatusCode::Failure,
                message: "too many open files on this connection".into(),
            })
    }

    pub async fn open(&self, path: &str, mode: OpenMode, attrs: &Attrs) -> R<RemoteHandle> {
        let permit = self.handle_permit()?;
        let h = self.raw.open(path, mode.flags(), attrs.into()).await?;
        Ok(RemoteHandle {
            id: h.handle,
            _permit: permit,
        })
    }

    /// Sends CLOSE without waiting for the answer (it is then ignored). Requests sent
    /// later are processed after it, so nothing can use the handle by mistake.
    pub fn close_nowait(&self, h: &RemoteHandle) {
        use futures::FutureExt;
        // The first poll sends the request; dropping the future forgets the reply.
        let _ = self.raw.close(h.id.as_str()).now_or_never();
    }

    /// Reads up to `len` bytes (capped at `max_read`); an empty result means end of file.
    pub async fn read(&self, h: &RemoteHandle, offset: u64, len: u32) -> R<Vec<u8>> {
        match self
            .raw
            .read(h.id.as_str(), offset, len.min(self.max_read))
            .await
        {
            Ok(d) => Ok(d.data),
            Err(russh_sftp::client::error::Error::Status(s))
                if s.status_code == StatusCode::Eof =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes one chunk of at most `max_write` bytes.
    pub async fn write(&self, h: &RemoteHandle, offset: u64, data: Vec<u8>) -> R<()> {
        self.raw.write(h.id.as_str(), offset, data).await?;
        Ok(())
    }

    /// Lists a whole directory: OPENDIR, READDIRs pipelined (the server answers them in
    /// order, each with the next batch, then EOF), CLOSE (not waited for). Two READDIRs
    /// go out first (most directories are small); every batch that comes back doubles how
    /// many are in flight, up to `READDIR_DEPTH`, so a big listing takes a few round trips
    /// instead of one per batch. `None` when the directory holds more than `max` entries
    /// (listing stops there).
    pub async fn read_dir(&self, path: &str, max: usize) -> R<Option<Vec<DirEntry>>> {
        use futures::stream::{FuturesOrdered, StreamExt};
        use futures::FutureExt;
        const READDIR_DEPTH: usize = 64;
        let permit = self.handle_permit()?;
        let handle = self.raw.opendir(path).await?.handle;
        let mut out = Vec::new();
        let mut pending = FuturesOrdered::new();
        let mut depth = 2;
        for _ in 0..depth {
            pending.push_back(self.raw.readdir(handle.as_str()));
        }
        let mut result = Ok(());
        while let Some(r) = pending.next().await {
            match r {
                Ok(name) => {
                    out.extend(name.files.into_iter().map(|f| DirEntry {
                        name: f.filename,
                        attrs: f.attrs.into(),
                    }));
                    if out.len() > max {
                        break;
                    }
                    depth = (depth * 2).min(READDIR_DEPTH);
                    while pending.len() < depth {
                        pending.push_back(self.raw.readdir(handle.as_str()));
                    }
                }
                // Answers come in order: everything after the first EOF is EOF too.
                Err(russh_sftp::client::error::Error::Status(s))
                    if s.status_code == StatusCode::Eof =>
                {
                    break
                }
                Err(e) => {
                    result = Err(SftpError::from(e));
                    break;
                }
            }
        }
        drop(pending);
        let _ = self.raw.close(handle.as_str()).now_or_never();
        drop(permit);
        result?;
        Ok((out.len() <= max).then_some(out))
    }

    pub async fn remove(&self, path: &str) -> R<()> {
        self.raw.remove(path).await?;
        Ok(())
    }

    pub async fn mkdir(&self, path: &str, attrs: &Attrs) -> R<()> {
        self.raw.mkdir(path, attrs.into()).await?;
        Ok(())
    }

    pub async fn rmdir(&self, path: &str) -> R<()> {
        self.raw.rmdir(path).await?;
        Ok(())
    }

    /// Plain SFTP rename: fails when `to` exists (on OpenSSH).
    pub async fn rename(&self, from: &str, to: &str) -> R<()> {
        self.raw.rename(from, to).await?;
        Ok(())
    }

    /// Atomic replace (posix-rename@openssh.com).
    pub async fn posix_rename(&self, from: &str, to: &str) -> R<()> {
        if !self.extensions.posix_rename {
            return Err(SftpError::Unsupported("posix-rename@openssh.com"));
        }
        let reply = self
            .raw
            .extended("posix-rename@openssh.com", ssh_strings(&[from, to]))
            .await?;
        status_ok(reply)
    }

    /// Creates a symlink at `link` pointing to `target`. OpenSSH (and servers compatible
    /// with it) read SSH_FXP_SYMLINK's arguments in the reverse order of the draft.
    pub async fn symlink(&self, target: &str, link: &str) -> R<()> {
        self.raw.symlink(target, link).await?;
        Ok(())
    }

    pub async fn readlink(&self, path: &str) -> R<String> {
        let name = self.raw.readlink(path).await?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| SftpError::Transport("empty READLINK reply".into()))
    }

    pub async fn realpath(&self, path: &str) -> R<String> {
        let name = self.raw.realpath(path).await?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| SftpError::Transport("empty REALPATH reply".into()))
    }

    pub async fn hardlink(&self, from: &str, to: &str) -> R<()> {
        if !self.extensions.hardlink {
            return Err(SftpError::Unsupported("hardlink@openssh.com"));
        }
        self.raw.hardlink(from, to).await?;
        Ok(())
    }

    pub async fn fsync(&self, h: &RemoteHandle) -> R<()> {
        if !self.extensions.fsync {
            return Err(SftpError::Unsupported("fsync@openssh.com"));
        }
        self.raw.fsync(h.id.as_str()).await?;
        Ok(())
    }

    pub async fn statvfs(&self, path: &str) -> R<StatVfs> {
        if !self.extensions.statvfs {
            return Err(SftpError::Unsupported("statvfs@openssh.com"));
        }
        let s = self.raw.statvfs(path).await?;
        Ok(StatVfs {
            bsize: s.block_size,
            frsize: s.fragment_size,
            blocks: s.blocks,
            bfree: s.blocks_free,
            bavail: s.blocks_avail,
            files: s.inodes,
            ffree: s.inodes_free,
            namemax: s.name_max,
        })
    }

    /// Ends the SFTP session (the SSH connection is closed by its owner).
    pub fn shutdown(&self) {
        let _ = self.raw.close_session();
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
        let f = m.flags();
        assert!(f.contains(OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE));
        assert!(!f.contains(OpenFlags::APPEND));
    }

    #[test]
    fn extension_strings() {
        assert_eq!(
            ssh_strings(&["a", "bc"]),
            vec![0, 0, 0, 1, b'a', 0, 0, 0, 2, b'b', b'c']
        );
    }
}
