//! Files unlinked while open: renamed aside on the server, removed at their last close.
//!
//! Owns the hidden names (`.mastofs-unlinked-<ino>-<n>` in the file's directory, as NFS
//! clients do with `.nfsXXXX`) and which inode each belongs to. A file unlinked while a
//! descriptor holds it stays usable through that descriptor: reads, writes, `fstat`, and
//! reopening by path after a reconnect or on a further write session all find it under its
//! hidden name. Hidden names never show in listings or lookups. It must never hide or
//! remove a name it did not make.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const PREFIX: &str = ".mastofs-unlinked-";

/// True for names this module makes (kept out of listings and lookups).
pub fn is_hidden(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// Where unlinked, still open files wait for their last close: inode -> (parent, name).
#[derive(Default)]
pub struct Unlinked {
    by_ino: Mutex<HashMap<u64, (u64, String)>>,
    next: AtomicU64,
}

impl Unlinked {
    /// A fresh hidden name for inode `ino` (unique within this mount's life; the process id
    /// keeps two mounts of one directory apart).
    pub fn name_for(&self, ino: u64) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{PREFIX}{:x}-{ino:x}-{n:x}", std::process::id())
    }

    /// `ino` now lives under the hidden `name` in `parent`.
    pub fn insert(&self, ino: u64, parent: u64, name: String) {
        if let Ok(mut m) = self.by_ino.lock() {
            m.insert(ino, (parent, name));
        }
    }

    /// The hidden place of `ino`, forgotten (its last descriptor closed).
    pub fn take(&self, ino: u64) -> Option<(u64, String)> {
        self.by_ino.lock().ok()?.remove(&ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hidden_and_unique() {
        let u = Unlinked::default();
        let (a, b) = (u.name_for(7), u.name_for(7));
        assert_ne!(a, b);
        assert!(is_hidden(&a) && !is_hidden("file") && !is_hidden(".mastofs"));
        u.insert(7, 1, a.clone());
        assert_eq!(u.take(7), Some((1, a)));
        assert_eq!(u.take(7), None);
    }
}
