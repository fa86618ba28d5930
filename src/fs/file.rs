//! File operations: open, create, read, write, fsync, release.
//!
//! Owns the mapping of kernel open flags to SFTP open modes, setting the requested mode on
//! new files (the server's umask would cut it), and turning a vague write failure into
//! ENOSPC when the remote disk is full. Writes may be acknowledged before the server
//! confirmed them (the session's write-behind); their failures must reach flush, fsync or
//! close, never be dropped.

use std::sync::Arc;

use crate::session::{Attrs, Bytes, Kind, OpenMode, Remote, RemoteError};

use super::error::{FsError, FsResult};
use super::state::handles::OpenFile;
use super::{Entry, Fs};

pub(super) fn open_mode(flags: i32) -> OpenMode {
    let acc = flags & libc::O_ACCMODE;
    OpenMode {
        read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
        write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
        truncate: flags & libc::O_TRUNC != 0,
        ..Default::default()
    }
}

impl<R: Remote> Fs<R> {
    /// Opens a file: its handle, and whether the kernel may keep the pages it cached from
    /// earlier opens (the file's mtime and size, known fresh, are those seen then; with
    /// FUSE_AUTO_INVAL_DATA the kernel also drops them when a later getattr differs).
    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<(u64, bool)> {
        let path = self.path_of(ino)?;
        let mode = open_mode(flags);
        if mode.truncate {
            self.cache.invalidate(&path);
        }
        let remote = self.remote.open(&path, mode, None).await?;
        let fh = self.handles.open_file(ino, flags, remote).fh;
        let now = self.cache.peek(&path).map(|a| (a.mtime, a.size));
        let keep = now.is_some_and(|now| self.cache.opened(ino, now));
        Ok((fh, keep && !mode.truncate))
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
    ) -> FsResult<(Entry, u64)> {
        let path = self.child_path(parent, name)?;
        let perm = mode & 0o7777;
        let open = OpenMode {
            create: true,
            exclusive: flags & libc::O_EXCL != 0,
            ..open_mode(flags)
        };
        // A file must be writable to be created; O_RDONLY|O_CREAT still creates it.
        let open = OpenMode {
            write: true,
            ..open
        };
        // A reply that cannot be after this open (not a file, or not empty after O_TRUNC)
        // is asked again through the handle.
        let (opened, seen, dir) = self
            .make(&path, self.remote.open(&path, open, Some(perm)))
            .await;
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.is_vague() => {
                self.cache.unsure(&path);
                let exists = self.remote.lstat(&path).await.is_ok();
                let errno = if exists { libc::EEXIST } else { e.errno() };
                return Err(FsError::new(errno, e.to_string()));
            }
            Err(e) => {
                self.cache.unsure(&path);
                return Err(e.into());
            }
        };
        let finish = async {
            let mut attrs = match seen {
                Ok(a) if a.kind() == Kind::File && (!open.truncate || a.size == Some(0)) => a,
                _ => self.remote.fstat(&file).await?,
            };
            // The server applies its umask to OPEN: set the mode that was asked for, on a
            // file this call created (O_CREAT on an existing file must not change its mode;
            // a non-empty file certainly existed).
            let created = open.exclusive || attrs.size == Some(0);
            if created && attrs.mode.map(|m| m & 0o7777) != Some(perm) {
                self.remote.fsetstat(&file, &Attrs::with_perm(perm)).await?;
                attrs.mode = Some(libc::S_IFREG | perm);
            }
            self.cache.created(&path, Some(&attrs));
            self.cache.parent_seen(&path, dir, Some(&attrs));
            self.entry(parent, name, &attrs)
        };
        match finish.await {
            Ok(entry) => {
                let fh = self.handles.open_file(entry.attr.ino.0, flags, file).fh;
                Ok((entry, fh))
            }
            Err(e) => {
                // The kernel never hears of this handle: close it here, not never.
                let _ = self.remote.close(&file).await;
                self.cache.unsure(&path);
                Err(e)
            }
        }
    }

    /// The remote path of the file behind `f`.
    fn open_path(&self, f: &OpenFile<R::File>) -> Option<String> {
        self.path_of(f.ino).ok()
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let f = self.handles.file(fh)?;
        let known = self.open_path(&f).and_then(|p| self.cache.peek(&p)?.size);
        let data = self.remote.read(&f.remote, offset, size, known).await?;
        self.stats.add_read(data.len());
        Ok(data)
    }

    /// Writes `data` (perhaps acknowledged before the server confirmed it: a failure is
    /// then reported by `flush`, `fsync` or a later write).
    pub async fn write(&self, fh: u64, offset: u64, data: Bytes) -> FsResult<u32> {
        let f = self.handles.file(fh)?;
        f.check_lost()?;
        // Its size and times change.
        if let Some(path) = self.open_path(&f) {
            self.cache.invalidate(&path);
        }
        let n = data.len();
        f.write_begins();
        let written = self.remote.write(&f.remote, offset, data).await;
        if f.write_ends(written.is_ok()) {
            self.watch_confirmation(f.clone());
        }
        match written {
            Ok(()) => {
                self.stats.add_written(n);
                Ok(n as u32)
            }
            Err(e) => Err(self.refine_write(&f, e).await),
        }
    }

    /// Waits, in the background, until the writes acknowledged through `f` are confirmed
    /// by the server, and marks it clean then (a crash after that loses nothing of it).
    fn watch_confirmation(&self, f: Arc<OpenFile<R::File>>) {
        let remote = self.remote.clone();
        tokio::spawn(async move {
            let confirmed = remote.confirmed(&f.remote).await;
            f.settled(confirmed);
        });
    }

    /// close(2) of one descriptor: every write through `fh` confirmed, or its failure.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let f = self.handles.file(fh)?;
        f.check_lost()?;
        match self.remote.flush(&f.remote).await {
            Ok(()) => {
                f.flushed();
                Ok(())
            }
            Err(e) => Err(self.refine_write(&f, e).await),
        }
    }

    /// A generic write FAILURE on a full disk is ENOSPC (asked of the file's own
    /// filesystem: the remote tree may span several).
    async fn refine_write(&self, f: &OpenFile<R::File>, e: RemoteError) -> FsError {
        if e.is_vague() && self.remote.capabilities().statvfs {
            let path = self.open_path(f).unwrap_or_else(|| self.root_path());
            if let Ok(s) = self.remote.statvfs(&path).await {
                // Nearly full counts: the failed write itself may have needed up to a
                // request's worth, and other space may come and go meanwhile.
                let avail = s.bavail.saturating_mul(s.frsize.max(1));
                if avail < 2 << 20 || s.bfree == 0 {
                    return FsError::new(libc::ENOSPC, "remote disk is full");
                }
            }
        }
        e.into()
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let f = self.handles.file(fh)?;
        f.check_lost()?;
        match self.remote.fsync(&f.remote).await {
            Ok(()) => {
                f.flushed();
                Ok(())
            }
            Err(e) => Err(self.refine_write(&f, e).await),
        }
    }

    /// fsync of a directory: what this mount acknowledged is on the server (write-back).
    pub async fn fsyncdir(&self) -> FsResult<()> {
        Ok(self.remote.sync_all().await?)
    }

    /// The kernel let go of `fh`: the handle leaves the table now, in the order of the
    /// kernel's requests (an unlink right after close(2) must not find the file still
    /// open); the future returned closes the remote file, and a file unlinked while open
    /// goes with its last handle. Should this daemon stop in between, its successor
    /// finishes the job ([`Fs::restore`] removes a hidden file that no handle holds).
    pub fn release(
        self: &Arc<Self>,
        fh: u64,
    ) -> impl std::future::Future<Output = FsResult<()>> + Send + 'static {
        let (fs, f) = (self.clone(), self.handles.close_file(fh));
        async move {
            let f = f.ok_or_else(|| FsError::new(libc::EBADF, "no such file handle"))?;
            // Every write already dropped the file's cached attributes (and getattr waits
            // for pending writes), so closing changes nothing the cache holds.
            let closed = fs.remote.close(&f.remote).await;
            if !fs.handles.holds(f.ino) {
                fs.last_close(f.ino).await;
            }
            Ok(closed?)
        }
    }

    /// Attributes through an open handle (accurate while the file is being written).
    pub async fn getattr_open(
        &self,
        ino: u64,
        fh: u64,
    ) -> FsResult<(fuser::FileAttr, std::time::Duration)> {
        let f = self.handles.file(fh)?;
        let attrs = self.remote.fstat(&f.remote).await?;
        Ok((self.node_attr(ino, &attrs), self.cfg.attr_ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::open_mode;

    #[test]
    fn flags_to_modes() {
        let m = open_mode(libc::O_WRONLY | libc::O_TRUNC | libc::O_APPEND);
        assert!(m.write && !m.read && m.truncate);
        let m = open_mode(libc::O_RDWR);
        assert!(m.write && m.read && !m.truncate);
    }
}
