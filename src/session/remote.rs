//! The narrow interface between the filesystem logic and the remote: [`Remote`].
//!
//! Owns the contract only: path-based operations plus logical file handles that survive
//! reconnects. The filesystem is generic over this trait, so it can be tested against an
//! in-memory fake; the real implementation is [`super::Session`]. Nothing here may know
//! about inodes or the kernel.

use std::future::Future;

pub use bytes::Bytes;

pub use crate::meta::{Attrs, Kind, OpenMode, StatVfs};
use crate::sftp::SftpError;

/// An entry of a directory listing, with a name that is safe to hand on as text.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attrs: Attrs,
}

/// Why a remote operation failed, in the filesystem's terms (no protocol types).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The server refused the request. `vague` when its answer named no cause (a generic
    /// FAILURE or BAD_MESSAGE): the caller may find the real errno from context.
    #[error("{message}")]
    Refused {
        errno: i32,
        message: String,
        vague: bool,
    },
    /// The server broke the protocol, or the connection failed in a way that is not
    /// replayed: what became of the request is unknown.
    #[error("{0}")]
    Broken(String),
    /// No working session within `timeout=`.
    #[error("no connection to the server within {0} s")]
    Timeout(u64),
    /// The file behind an open handle is gone from the server (reopen failed).
    #[error("file vanished from the server while open")]
    Stale,
}

impl RemoteError {
    /// A refusal with `errno`; vague when the errno is the generic EIO or EINVAL.
    pub fn refused(errno: i32, message: impl Into<String>) -> Self {
        RemoteError::Refused {
            errno,
            message: message.into(),
            vague: matches!(errno, libc::EIO | libc::EINVAL),
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            RemoteError::Refused { errno, .. } => *errno,
            RemoteError::Broken(_) | RemoteError::Timeout(_) => libc::EIO,
            RemoteError::Stale => libc::ESTALE,
        }
    }

    /// A FAILURE or BAD_MESSAGE whose message names no cause: the caller may find the real
    /// errno from context (stat the target, check the name length, statvfs).
    pub fn is_vague(&self) -> bool {
        matches!(self, RemoteError::Refused { vague: true, .. })
    }
}

impl From<SftpError> for RemoteError {
    fn from(e: SftpError) -> Self {
        match &e {
            SftpError::Status { .. } => RemoteError::refused(e.errno(), e.to_string()),
            SftpError::Unsupported(_) => RemoteError::Refused {
                errno: e.errno(),
                message: e.to_string(),
                vague: false,
            },
            SftpError::Transport(_) | SftpError::Confused(_) => RemoteError::Broken(e.to_string()),
        }
    }
}

pub type RemoteResult<T> = Result<T, RemoteError>;

/// How a rename treats an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target atomically where the server can (POSIX rename).
    Replace,
    /// Fail with EEXIST if the target exists.
    NoReplace,
}

/// What the connected server can do, as far as the filesystem needs to know.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    pub hardlink: bool,
    pub fsync: bool,
    pub statvfs: bool,
    /// READLINK answers the resolved path, not the link's text (see `probe`).
    pub readlink_resolves: bool,
    /// Requests take effect in the order sent, so a request sent right behind another
    /// sees its effect (false: the server runs requests concurrently).
    pub in_order: bool,
}

/// Remote file operations by absolute remote path. All methods may run concurrently.
pub trait Remote: Send + Sync + 'static {
    /// An open file, as [`Remote::open`] returns it: valid across reconnects (reopened by
    /// path), owned by the caller until [`Remote::close`].
    type File: Send + Sync + 'static;
    fn capabilities(&self) -> Capabilities;
    /// Whether a working connection exists right now (requests would not wait).
    fn is_connected(&self) -> bool;
    fn lstat(&self, path: &str) -> impl Future<Output = RemoteResult<Attrs>> + Send;
    /// [`Remote::lstat`] of `path`, sent where requests about `after` go, so the answer
    /// comes after theirs: a directory's new mtime right behind a change inside it, in the
    /// same round trip.
    fn lstat_after(
        &self,
        path: &str,
        after: &str,
    ) -> impl Future<Output = RemoteResult<Attrs>> + Send;
    /// [`Remote::lstat`] for a kernel lookup: where it can, the session sends an OPEN for
    /// reading in the same round trip, for the open that usually follows (see
    /// `session::ahead`).
    fn lstat_ahead(&self, path: &str) -> impl Future<Output = RemoteResult<Attrs>> + Send {
        self.lstat(path)
    }
    fn stat(&self, path: &str) -> impl Future<Output = RemoteResult<Attrs>> + Send;
    fn setstat(&self, path: &str, attrs: &Attrs) -> impl Future<Output = RemoteResult<()>> + Send;
    /// Lists a directory; `None` when it holds more than `max` entries. `dir_size` is the
    /// directory's own size as last seen, a hint of how many entries to expect.
    fn read_dir(
        &self,
        path: &str,
        max: usize,
        dir_size: Option<u64>,
    ) -> impl Future<Output = RemoteResult<Option<Vec<DirEntry>>>> + Send;
    fn readlink(&self, path: &str) -> impl Future<Output = RemoteResult<String>> + Send;
    fn realpath(&self, path: &str) -> impl Future<Output = RemoteResult<String>> + Send;
    fn mkdir(&self, path: &str, perm: u32) -> impl Future<Output = RemoteResult<()>> + Send;
    fn rmdir(&self, path: &str) -> impl Future<Output = RemoteResult<()>> + Send;
    fn remove(&self, path: &str) -> impl Future<Output = RemoteResult<()>> + Send;
    /// `links`: the caller cannot rule out that `from` or `to` is a symlink (only
    /// servers whose RENAME follows links look closer then, see `links`).
    fn rename(
        &self,
        from: &str,
        to: &str,
        mode: RenameMode,
        links: bool,
    ) -> impl Future<Output = RemoteResult<()>> + Send;
    fn symlink(&self, target: &str, link: &str) -> impl Future<Output = RemoteResult<()>> + Send;
    fn hardlink(&self, from: &str, to: &str) -> impl Future<Output = RemoteResult<()>> + Send;
    fn statvfs(&self, path: &str) -> impl Future<Output = RemoteResult<StatVfs>> + Send;

    /// Opens (or creates, per `mode`) a file; `perm` is the mode for a new file.
    fn open(
        &self,
        path: &str,
        mode: OpenMode,
        perm: Option<u32>,
    ) -> impl Future<Output = RemoteResult<Self::File>> + Send;
    /// A file a previous daemon opened for `path`: opened by path (never creating or
    /// truncating) at its first use.
    fn adopt(&self, path: &str, mode: OpenMode) -> Self::File;
    /// Reads up to `len` bytes; fewer only at end of file. `size` is the file's size as
    /// last known: a short answer ending exactly there needs no second look for EOF.
    fn read(
        &self,
        f: &Self::File,
        offset: u64,
        len: u32,
        size: Option<u64>,
    ) -> impl Future<Output = RemoteResult<Bytes>> + Send;
    /// Writes all of `data` at `offset`. May return before the server confirmed it
    /// (write-behind): a failure is then reported by every later write, `flush`, `fsync`
    /// and `close` of `f`. Requests about the same file wait for its pending writes.
    fn write(
        &self,
        f: &Self::File,
        offset: u64,
        data: Bytes,
    ) -> impl Future<Output = RemoteResult<()>> + Send;
    /// Waits until no write to `f` is on its way; then whether every one acknowledged so
    /// far was confirmed by the server (none failed).
    fn confirmed(&self, f: &Self::File) -> impl Future<Output = bool> + Send;
    /// Waits until every write to `f` is confirmed; reports the first that ever failed.
    fn flush(&self, f: &Self::File) -> impl Future<Output = RemoteResult<()>> + Send;
    fn fstat(&self, f: &Self::File) -> impl Future<Output = RemoteResult<Attrs>> + Send;
    fn fsetstat(
        &self,
        f: &Self::File,
        attrs: &Attrs,
    ) -> impl Future<Output = RemoteResult<()>> + Send;
    /// Flushes, then asks the server to sync the file to disk where it can.
    fn fsync(&self, f: &Self::File) -> impl Future<Output = RemoteResult<()>> + Send;
    /// Flushes and closes; reports a write that failed.
    fn close(&self, f: &Self::File) -> impl Future<Output = RemoteResult<()>> + Send;
    /// fsync of a directory: waits until every change acknowledged so far is on the
    /// server (a layer that acknowledges changes before the server has them).
    fn sync_all(&self) -> impl Future<Output = RemoteResult<()>> + Send {
        async { Ok(()) }
    }
}
