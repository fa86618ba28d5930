//! Taking over from a previous daemon: the kernel's node ids, open files and directory
//! handles restored from the journal's [`State`], and the writes that restart may have lost.
//!
//! Owns the order of restoring (nodes, then the handles that refer to them), re-listing
//! open directories (a `readdir` continues at its offset in a fresh listing), reporting EIO
//! once for each restored handle whose acknowledged writes were not known to be confirmed
//! (as NFS does after a server loss), keeping that mark to the handles whose writes are
//! not yet confirmed (checked every second), and confirming every write before a clean
//! handover.
//! It must never report success for data that may be lost.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::session::{FileId, Remote};

use super::error::{FsError, FsResult};
use super::inode::Inodes;
use super::journal::{Journal, Record, State};
use super::Fs;

impl<R: Remote> Fs<R> {
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Restores `state` (the journal's, or an upgrade's) before the kernel's requests are
    /// served. Returns how many handles may have lost writes.
    pub async fn restore(&self, state: &State) -> FsResult<usize> {
        let restored = Inodes::new(self.journal.clone(), &state.nodes, state.next_ino);
        *self
            .inodes
            .lock()
            .map_err(|_| FsError::new(libc::EIO, "inode table poisoned"))? = restored;
        for (&ino, (parent, name)) in &state.hidden {
            self.unlinked.insert(ino, *parent, name.clone());
        }
        let mut lost = 0;
        for (&fh, f) in &state.files {
            // The node of an open file is linked (an unlinked open file lives on under its
            // hidden name); a path that cannot be made reads as a file gone from the server.
            let path = self.path_of(f.ino).unwrap_or_default();
            self.remote
                .adopt(FileId(fh), &path, super::file::open_mode(f.flags));
            if let Ok(mut o) = self.open.lock() {
                o.insert(fh, f.ino);
            }
            if f.dirty {
                if let Ok(mut l) = self.lost.lock() {
                    l.insert(fh);
                }
                lost += 1;
                tracing::warn!(
                    %path,
                    "writes acknowledged before the restart may be lost: the next write, \
                     fsync or close of this open file reports EIO"
                );
            }
        }
        // Listed again all at once (a `find` holds one handle per level). A directory that
        // is gone, or not listed within the session's timeout, lists as empty.
        let listings = state.dirs.iter().map(|(&fh, &ino)| async move {
            let listing = self.open_listing(ino).await.map(|(l, _)| l);
            (
                fh,
                listing.unwrap_or_else(|_| Arc::new(super::OpenDir::empty(ino))),
            )
        });
        for (fh, listing) in futures::future::join_all(listings).await {
            if let Ok(mut d) = self.dirs.lock() {
                d.insert(fh, listing);
            }
            self.next_dir.fetch_max(fh + 1, Ordering::Relaxed);
        }
        Ok(lost)
    }

    /// Counts a write through `fh` in (`start`) or out.
    pub(super) fn writes_in_progress(&self, fh: u64, start: bool) {
        if let Ok(mut w) = self.writing.lock() {
            let n = w.entry(fh).or_insert(0);
            if start {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    w.remove(&fh);
                }
            }
        }
    }

    /// Writes down which handles' writes are all confirmed by now (run every second), so
    /// that a crash reports EIO only where writes may really be lost. A handle with a
    /// write in progress is skipped; the check and the record happen under the lock a
    /// write takes first, so a write that starts later is recorded dirty after this.
    pub fn note_confirmed(&self) {
        for fh in self.journal.dirty() {
            let Ok(w) = self.writing.lock() else { return };
            if !w.contains_key(&fh) && self.remote.confirmed(FileId(fh)) {
                self.journal.record(Record::Clean { fh });
            }
        }
    }

    /// EIO, once, for a restored handle whose writes may be lost.
    pub(super) fn check_lost(&self, fh: u64) -> FsResult<()> {
        let was_lost = self.lost.lock().map(|mut l| l.remove(&fh)).unwrap_or(false);
        if was_lost {
            return Err(FsError::new(
                libc::EIO,
                "writes acknowledged before the daemon restarted may be lost",
            ));
        }
        Ok(())
    }

    /// Before a clean handover: waits until every write of every open file is confirmed.
    /// A file whose writes failed stays marked (its successor reports EIO). Returns how
    /// many failed.
    pub async fn confirm_writes(&self) -> usize {
        let mut failed = 0;
        for fh in self.journal.dirty() {
            match self.remote.flush(FileId(fh)).await {
                Ok(()) => self.journal.record(Record::Clean { fh }),
                Err(e) => {
                    tracing::warn!(fh, error = %e, "a write failed before the handover");
                    failed += 1;
                }
            }
        }
        failed
    }
}
