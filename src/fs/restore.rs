//! Taking over from a previous daemon: the kernel's node ids, open files and directory
//! handles restored from the journal's [`State`], and the writes that restart may have lost.
//!
//! Owns the order of restoring (nodes, then the handles that refer to them), finishing a
//! close the previous daemon could not (a hidden file no restored handle holds is removed),
//! re-listing open directories (a `readdir` continues at its offset in a fresh listing),
//! marking each restored handle whose acknowledged writes were not known to be confirmed
//! (its next write, flush or fsync reports EIO once, as NFS does after a server loss), and
//! confirming every write before a clean handover. It must never report success for data
//! that may be lost.

use std::sync::Arc;

use super::error::{FsError, FsResult};
use super::state::journal::State;
use super::state::nodes::Inodes;
use super::Fs;
use crate::session::Remote;

impl<R: Remote> Fs<R> {
    pub fn journal(&self) -> &Arc<super::Journal> {
        self.handles.journal()
    }

    /// Restores `state` (the journal's, or an upgrade's) before the kernel's requests are
    /// served. Returns how many handles may have lost writes.
    pub async fn restore(&self, state: &State) -> FsResult<usize> {
        let restored = Inodes::new(self.journal().clone(), state);
        *self
            .nodes
            .lock()
            .map_err(|_| FsError::new(libc::EIO, "inode table poisoned"))? = restored;
        let mut lost = 0;
        for (&fh, f) in &state.files {
            // The node of an open file is linked (an unlinked open file lives on under its
            // hidden name); a path that cannot be made reads as a file gone from the server.
            let path = self.path_of(f.ino).unwrap_or_default();
            let remote = self.remote.adopt(&path, super::file::open_mode(f.flags));
            self.handles
                .restore_file(fh, f.ino, f.flags, remote, f.dirty);
            if f.dirty {
                lost += 1;
                tracing::warn!(
                    %path,
                    "writes acknowledged before the restart may be lost: the next write, \
                     fsync or close of this open file reports EIO"
                );
            }
        }
        // Released by the kernel while the previous daemon was closing it.
        let hidden = self.with_inodes(|t| t.hidden())?;
        for ino in hidden.into_iter().filter(|i| !self.handles.holds(*i)) {
            self.last_close(ino).await;
        }
        // Listed again all at once (a `find` holds one handle per level). A directory that
        // is gone, or not listed within the session's timeout, lists as empty.
        let listings = state.dirs.iter().map(|(&fh, &ino)| async move {
            let listing = self.open_listing(ino).await.map(|(l, _)| l);
            let listing = listing.unwrap_or_else(|_| Arc::new(super::OpenDir::empty(ino)));
            (fh, ino, listing)
        });
        for (fh, ino, listing) in futures::future::join_all(listings).await {
            self.handles.restore_dir(fh, ino, listing);
        }
        Ok(lost)
    }

    /// Before a clean handover: waits until every write of every open file is confirmed.
    /// A file whose writes failed stays marked (its successor reports EIO). Returns how
    /// many failed.
    pub async fn confirm_writes(&self) -> usize {
        let mut failed = 0;
        for f in self.handles.dirty() {
            match self.remote.flush(&f.remote).await {
                Ok(()) => f.flushed(),
                Err(e) => {
                    tracing::warn!(fh = f.fh, error = %e, "a write failed before the handover");
                    failed += 1;
                }
            }
        }
        failed
    }

    /// Open files whose writes are not known to be confirmed (for status).
    pub fn unconfirmed_files(&self) -> usize {
        self.handles.dirty().len()
    }
}
