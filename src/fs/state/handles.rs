//! The kernel's open handles: one table of open files and one of open directories, with
//! one allocator for their numbers.
//!
//! Owns, per open file, its node, the kernel's open flags, the remote file the session
//! returned, and its marks: writes acknowledged but not known confirmed (`dirty`), and a
//! restart's possible loss of them (`lost`, reported once). Per open directory, the
//! listing it reads. Every change goes to the [`Journal`] here, under the same lock as the
//! change, before the kernel hears of it. It must never talk to the remote nor wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::journal::{Journal, Record};
use crate::fs::error::{FsError, FsResult};
use crate::fs::OpenDir;

/// One open file handle of the kernel's.
pub struct OpenFile<F> {
    pub fh: u64,
    pub ino: u64,
    /// What [`crate::session::Remote::open`] returned.
    pub remote: F,
    marks: Mutex<Marks>,
    journal: Arc<Journal>,
}

#[derive(Default)]
struct Marks {
    /// Writes were acknowledged that the server may not have confirmed.
    dirty: bool,
    /// Restored dirty: the next write, flush or fsync fails with EIO, once.
    lost: bool,
    /// Writes in progress through this handle.
    writing: u32,
    /// Somebody waits for the acknowledged writes to be confirmed ([`OpenFile::settled`]).
    watched: bool,
}

impl<F> OpenFile<F> {
    fn marks(&self) -> FsResult<std::sync::MutexGuard<'_, Marks>> {
        self.marks
            .lock()
            .map_err(|_| FsError::new(libc::EIO, "open file table poisoned"))
    }

    /// EIO, once, for a restored handle whose writes may be lost.
    pub fn check_lost(&self) -> FsResult<()> {
        if std::mem::take(&mut self.marks()?.lost) {
            return Err(FsError::new(
                libc::EIO,
                "writes acknowledged before the daemon restarted may be lost",
            ));
        }
        Ok(())
    }

    /// A write through this handle starts.
    pub fn write_begins(&self) {
        if let Ok(mut m) = self.marks() {
            m.writing += 1;
        }
    }

    /// A write ended, `acked` when the kernel is told "written" (perhaps before the server
    /// confirmed it). Written down before the kernel hears it, so a successor knows the
    /// file may have unconfirmed writes. True when nobody waits for them to be confirmed
    /// yet: the caller then does, and reports with [`OpenFile::settled`].
    pub fn write_ends(&self, acked: bool) -> bool {
        let Ok(mut m) = self.marks() else {
            return false;
        };
        m.writing = m.writing.saturating_sub(1);
        if !acked {
            return false;
        }
        if !m.dirty {
            m.dirty = true;
            self.journal.record(Record::Dirty { fh: self.fh });
        }
        !std::mem::replace(&mut m.watched, true)
    }

    /// No write was on its way a moment ago, and `confirmed` says whether all were
    /// confirmed. A write still in progress keeps the mark (its end starts a new wait).
    pub fn settled(&self, confirmed: bool) {
        if let Ok(mut m) = self.marks() {
            m.watched = false;
            self.clean_if(&mut m, confirmed);
        }
    }

    /// A flush or fsync confirmed every write so far.
    pub fn flushed(&self) {
        if let Ok(mut m) = self.marks() {
            self.clean_if(&mut m, true);
        }
    }

    fn clean_if(&self, m: &mut Marks, confirmed: bool) {
        if confirmed && m.writing == 0 && m.dirty {
            m.dirty = false;
            self.journal.record(Record::Clean { fh: self.fh });
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.marks().is_ok_and(|m| m.dirty)
    }
}

/// The open file and directory handles the kernel holds.
pub struct Handles<F> {
    next: AtomicU64,
    files: Mutex<HashMap<u64, Arc<OpenFile<F>>>>,
    dirs: Mutex<HashMap<u64, Arc<OpenDir>>>,
    journal: Arc<Journal>,
}

impl<F> Handles<F> {
    pub fn new(journal: Arc<Journal>) -> Self {
        Handles {
            next: AtomicU64::new(1),
            files: Mutex::default(),
            dirs: Mutex::default(),
            journal,
        }
    }

    /// A new handle: `remote`, opened on node `ino` with the kernel's `flags`.
    pub fn open_file(&self, ino: u64, flags: i32, remote: F) -> Arc<OpenFile<F>> {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.insert_file(fh, ino, flags, remote, false)
    }

    /// Handle `fh` of a previous daemon; `dirty`: writes through it may be lost.
    pub fn restore_file(
        &self,
        fh: u64,
        ino: u64,
        flags: i32,
        remote: F,
        dirty: bool,
    ) -> Arc<OpenFile<F>> {
        self.next.fetch_max(fh + 1, Ordering::Relaxed);
        self.insert_file(fh, ino, flags, remote, dirty)
    }

    fn insert_file(
        &self,
        fh: u64,
        ino: u64,
        flags: i32,
        remote: F,
        dirty: bool,
    ) -> Arc<OpenFile<F>> {
        let file = Arc::new(OpenFile {
            fh,
            ino,
            remote,
            marks: Mutex::new(Marks {
                dirty,
                lost: dirty,
                ..Marks::default()
            }),
            journal: self.journal.clone(),
        });
        if let Ok(mut files) = self.files.lock() {
            self.journal.record(Record::Opened { fh, ino, flags });
            if dirty {
                self.journal.record(Record::Dirty { fh });
            }
            files.insert(fh, file.clone());
        }
        file
    }

    pub fn file(&self, fh: u64) -> FsResult<Arc<OpenFile<F>>> {
        self.files
            .lock()
            .ok()
            .and_then(|f| f.get(&fh).cloned())
            .ok_or_else(|| FsError::new(libc::EBADF, "no such file handle"))
    }

    /// The kernel let go of `fh`.
    pub fn close_file(&self, fh: u64) -> Option<Arc<OpenFile<F>>> {
        let mut files = self.files.lock().ok()?;
        self.journal.record(Record::Released { fh });
        files.remove(&fh)
    }

    /// Whether a handle holds node `ino` open.
    pub fn holds(&self, ino: u64) -> bool {
        self.files
            .lock()
            .is_ok_and(|f| f.values().any(|f| f.ino == ino))
    }

    /// Open files whose writes are not known to be confirmed.
    pub fn dirty(&self) -> Vec<Arc<OpenFile<F>>> {
        let Ok(files) = self.files.lock() else {
            return Vec::new();
        };
        files.values().filter(|f| f.is_dirty()).cloned().collect()
    }

    /// A new directory handle on node `ino`, reading `listing`.
    pub fn open_dir(&self, ino: u64, listing: Arc<OpenDir>) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.insert_dir(fh, ino, listing);
        fh
    }

    /// Directory handle `fh` of a previous daemon.
    pub fn restore_dir(&self, fh: u64, ino: u64, listing: Arc<OpenDir>) {
        self.next.fetch_max(fh + 1, Ordering::Relaxed);
        self.insert_dir(fh, ino, listing);
    }

    fn insert_dir(&self, fh: u64, ino: u64, listing: Arc<OpenDir>) {
        if let Ok(mut dirs) = self.dirs.lock() {
            self.journal.record(Record::DirOpened { fh, ino });
            dirs.insert(fh, listing);
        }
    }

    pub fn dir(&self, fh: u64) -> FsResult<Arc<OpenDir>> {
        self.dirs
            .lock()
            .ok()
            .and_then(|d| d.get(&fh).cloned())
            .ok_or_else(|| FsError::new(libc::EBADF, "no such directory handle"))
    }

    pub fn close_dir(&self, fh: u64) {
        if let Ok(mut dirs) = self.dirs.lock() {
            self.journal.record(Record::DirReleased { fh });
            dirs.remove(&fh);
        }
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::state::journal::State;

    fn table() -> Handles<()> {
        Handles::new(Arc::new(Journal::new(State::default())))
    }

    #[test]
    fn files_and_directories_share_one_numbering_and_the_journal_follows() {
        let h = table();
        let f = h.open_file(5, libc::O_RDONLY, ());
        let d = h.open_dir(6, Arc::new(OpenDir::empty(6)));
        assert_ne!(f.fh, d);
        let s = h.journal().state();
        assert_eq!(s.files[&f.fh].ino, 5);
        assert_eq!(s.dirs[&d], 6);
        assert!(h.holds(5) && !h.holds(6));
        h.close_file(f.fh);
        h.close_dir(d);
        assert!(h.journal().state().files.is_empty() && h.journal().state().dirs.is_empty());
        assert!(h.file(f.fh).is_err() && h.dir(d).is_err());
        let restored = h.restore_file(40, 5, 0, (), false);
        assert_eq!(restored.fh, 40);
        assert!(
            h.open_file(5, 0, ()).fh > 40,
            "numbers above a restored one"
        );
    }

    #[test]
    fn a_write_in_progress_keeps_the_file_dirty() {
        let h = table();
        let f = h.open_file(5, libc::O_WRONLY, ());
        f.write_begins();
        assert!(
            f.write_ends(true),
            "the first acknowledged write starts a wait"
        );
        f.write_begins();
        assert!(!f.write_ends(true), "one wait at a time");
        f.write_begins();
        f.settled(true);
        assert!(f.is_dirty(), "a write on its way: not clean");
        assert!(h.journal().state().files[&f.fh].dirty);
        assert!(f.write_ends(true), "its end starts a new wait");
        f.settled(true);
        assert!(!f.is_dirty() && !h.journal().state().files[&f.fh].dirty);
        f.write_begins();
        f.write_ends(true);
        f.settled(false);
        assert!(f.is_dirty(), "a failed write is never clean");
    }

    #[test]
    fn a_restored_dirty_handle_fails_once() {
        let h = table();
        let f = h.restore_file(3, 5, libc::O_WRONLY, (), true);
        assert!(h.journal().state().files[&3].dirty);
        assert_eq!(f.check_lost().unwrap_err().errno, libc::EIO);
        assert!(f.check_lost().is_ok());
        assert_eq!(h.dirty().len(), 1, "still not known confirmed");
        f.flushed();
        assert!(h.dirty().is_empty());
    }
}
