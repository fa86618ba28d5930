//! Files unlinked while open: renamed aside on the server, removed at their last close.
//!
//! Owns making the hidden names (`.mastofs-unlinked-<mount tag>-<daemon token>-<ino>-<n>`
//! in the file's directory, as NFS clients do with `.nfsXXXX`; see `crate::ident`) and
//! telling stale ones; which node waits under which name is the node table's
//! (`state::nodes`). A file unlinked while a descriptor holds it stays usable through
//! that descriptor: reads, writes, `fstat`, and reopening by path after a reconnect or on
//! a further write session all find it under its hidden name. Hidden names (and the
//! probe's scratch directories) never show in listings or lookups. One that this mount's
//! earlier daemon left (killed without handing it over) is stale: a listing that meets it
//! removes it. It must never hide or remove a name it did not make, nor one another
//! mount's daemon made, nor one a daemon it took over from still holds.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ident::{SCRATCH_PREFIX, UNLINKED_PREFIX as PREFIX};

/// True for names mastofs makes on the server (kept out of listings and lookups).
pub fn is_hidden(name: &str) -> bool {
    name.starts_with(PREFIX) || name.starts_with(SCRATCH_PREFIX)
}

/// The hidden names of one daemon of one mount.
pub struct Unlinked {
    next: AtomicU64,
    /// `<PREFIX><mount tag>-`: names this mount's daemons make.
    mine: String,
    /// This daemon's token.
    token: String,
}

impl Unlinked {
    /// Hidden names for the mount tagged `tag`, made by the daemon with `token`.
    pub fn new(tag: &str, token: &str) -> Self {
        Unlinked {
            next: AtomicU64::new(0),
            mine: format!("{PREFIX}{tag}-"),
            token: token.to_string(),
        }
    }

    /// A fresh hidden name for inode `ino`.
    pub fn name_for(&self, ino: u64) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}{}-{ino:x}-{n:x}", self.mine, self.token)
    }

    /// Whether `name` was left by an earlier daemon of this mount and nobody holds it: a
    /// name of this mount, not this daemon's, and not `held` (one taken over).
    pub fn is_stale(&self, name: &str, held: impl FnOnce(&str) -> bool) -> bool {
        let Some(rest) = name.strip_prefix(&self.mine) else {
            return false;
        };
        rest.split('-').next() != Some(self.token.as_str()) && !held(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_earlier_daemons_unheld_names_of_this_mount_are_stale() {
        let earlier = Unlinked::new("tag1", "aaaa");
        let (left, held) = (earlier.name_for(3), earlier.name_for(4));
        let u = Unlinked::new("tag1", "bbbb");
        let stale = |name: &str| u.is_stale(name, |n| n == held);
        assert!(stale(&left));
        assert!(!stale(&held), "taken over: still held");
        assert!(!stale(&u.name_for(5)), "this daemon's own");
        let other_mount = Unlinked::new("tag2", "aaaa").name_for(3);
        assert!(!stale(&other_mount) && is_hidden(&other_mount));
        assert!(!stale("file") && !stale(".mastofs-probe-tag1-x"));
    }

    #[test]
    fn names_are_hidden_and_unique() {
        let u = Unlinked::new("t", "k");
        let (a, b) = (u.name_for(7), u.name_for(7));
        assert_ne!(a, b);
        assert!(is_hidden(&a) && !is_hidden("file") && !is_hidden(".mastofs"));
        assert!(is_hidden(".mastofs-probe-t-0123"));
    }
}
