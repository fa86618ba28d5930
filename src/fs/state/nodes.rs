//! The node table: kernel inode numbers <-> remote paths.
//!
//! Owns inode numbering, the parent/name tree that turns an inode into a remote path,
//! kernel lookup counts (an inode lives until the kernel forgets it), moving entries on
//! rename/unlink, and which nodes are files unlinked while open, waiting under a hidden
//! name (see `crate::fs::unlinked`). Every change is written to the [`Journal`] here before
//! the kernel hears of it (a successor daemon restores the table from there). It must
//! never talk to the remote.

use std::collections::HashMap;
use std::sync::Arc;

use crate::session::Kind;

use super::journal::{Journal, Record, State};

/// Lookup count of a restored node: the kernel's real count was not written down, so a
/// restored node lives until unmount (the kernel's forgets never bring it to zero).
const RESTORED_LOOKUPS: u64 = 1 << 62;

pub const ROOT: u64 = 1;

struct Node {
    parent: u64,
    name: String,
    kind: Kind,
    lookups: u64,
    /// False once unlinked or replaced: the inode lives on for the kernel, but has no path.
    linked: bool,
    /// Unlinked while open: `name` is a hidden name, removed at the last close.
    hidden: bool,
}

pub struct Inodes {
    nodes: HashMap<u64, Node>,
    children: HashMap<(u64, String), u64>,
    next: u64,
    journal: Option<Arc<Journal>>,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: String::new(),
                kind: Kind::Dir,
                lookups: 1,
                linked: true,
                hidden: false,
            },
        );
        Inodes {
            nodes,
            children: HashMap::new(),
            next: ROOT + 1,
            journal: None,
        }
    }
}

impl Inodes {
    /// A table whose changes go to `journal`, holding the nodes of `restored` (what a
    /// previous daemon gave the kernel); new ids start above every id it gave out.
    pub fn new(journal: Arc<Journal>, restored: &State) -> Self {
        let mut t = Inodes::default();
        t.next = t.next.max(restored.next_ino);
        for (&ino, n) in restored.nodes.iter().filter(|(&i, _)| i != ROOT) {
            t.nodes.insert(
                ino,
                Node {
                    parent: n.parent,
                    name: n.name.clone(),
                    kind: n.kind,
                    lookups: RESTORED_LOOKUPS,
                    linked: n.linked,
                    hidden: restored.hidden.contains_key(&ino),
                },
            );
            if n.linked {
                t.children.insert((n.parent, n.name.clone()), ino);
            }
            t.next = t.next.max(ino + 1);
        }
        t.journal = Some(journal);
        t
    }

    fn note(&self, r: Record) {
        if let Some(j) = &self.journal {
            j.record(r);
        }
    }

    /// The path of `ino` relative to the mount root ("" for the root, "a/b" otherwise), or
    /// None if the inode is unknown or no longer linked.
    pub fn rel_path(&self, ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = self.nodes.get(&cur)?;
            if !n.linked {
                return None;
            }
            parts.push(n.name.as_str());
            cur = n.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    pub fn parent(&self, ino: u64) -> Option<u64> {
        self.nodes.get(&ino).map(|n| n.parent)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&(parent, name.to_string())).copied()
    }

    /// Records that the kernel now holds one more reference to `parent/name` of `kind`,
    /// and returns its inode. A name whose kind changed gets a fresh inode.
    pub fn lookup(&mut self, parent: u64, name: &str, kind: Kind) -> u64 {
        let key = (parent, name.to_string());
        if let Some(&ino) = self.children.get(&key) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                if n.kind == kind {
                    n.lookups += 1;
                    return ino;
                }
                n.linked = false;
                self.note(Record::Unlinked { ino });
            }
        }
        let ino = self.next;
        self.next += 1;
        self.note(Record::Node {
            ino,
            parent,
            name: name.to_string(),
            kind,
        });
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_string(),
                kind,
                lookups: 1,
                linked: true,
                hidden: false,
            },
        );
        self.children.insert(key, ino);
        ino
    }

    /// The kernel dropped `n` references.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        // A hidden file stays known until its hidden name is removed ([`Inodes::unhide`]):
        // the kernel forgets it as soon as the last descriptor closed.
        if node.lookups == 0 && !node.hidden {
            self.drop_node(ino);
        }
    }

    fn drop_node(&mut self, ino: u64) {
        let Some(node) = self.nodes.remove(&ino) else {
            return;
        };
        let key = (node.parent, node.name);
        if self.children.get(&key) == Some(&ino) {
            self.children.remove(&key);
        }
        self.note(Record::Forgotten { ino });
    }

    /// `parent/name` is gone from the server.
    pub fn unlink(&mut self, parent: u64, name: &str) {
        if let Some(ino) = self.children.remove(&(parent, name.to_string())) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.linked = false;
            }
            self.note(Record::Unlinked { ino });
        }
    }

    /// `parent/name` moved to `new_parent/new_name` (replacing whatever was there).
    pub fn rename(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        self.unlink(new_parent, new_name);
        if let Some(ino) = self.children.remove(&(parent, name.to_string())) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.parent = new_parent;
                n.name = new_name.to_string();
                let kind = n.kind;
                self.note(Record::Node {
                    ino,
                    parent: new_parent,
                    name: new_name.to_string(),
                    kind,
                });
            }
            self.children
                .insert((new_parent, new_name.to_string()), ino);
        }
    }

    /// `parent/name`, open, was unlinked: it moves to `hidden` in the same directory.
    pub fn hide(&mut self, parent: u64, name: &str, hidden: &str) {
        self.rename(parent, name, parent, hidden);
        if let Some(ino) = self.child(parent, hidden) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.hidden = true;
            }
            self.note(Record::Hidden {
                ino,
                parent,
                name: hidden.to_string(),
            });
        }
    }

    /// The hidden place of `ino` (its last descriptor closed), now unlinked, if it had one.
    pub fn unhide(&mut self, ino: u64) -> Option<(u64, String)> {
        let n = self.nodes.get_mut(&ino).filter(|n| n.hidden)?;
        n.hidden = false;
        let (place, forgotten) = ((n.parent, n.name.clone()), n.lookups == 0);
        self.note(Record::Unhidden { ino });
        self.unlink(place.0, &place.1);
        if forgotten {
            self.drop_node(ino);
        }
        Some(place)
    }

    /// Whether `ino` waits under a hidden name.
    pub fn is_hidden(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.hidden)
    }

    /// Whether a node waits under the hidden `name` (in any directory).
    pub fn holds_hidden(&self, name: &str) -> bool {
        self.nodes.values().any(|n| n.hidden && n.name == name)
    }

    /// The nodes that wait under hidden names.
    pub fn hidden(&self) -> Vec<u64> {
        let hidden = self.nodes.iter().filter(|(_, n)| n.hidden);
        hidden.map(|(&ino, _)| ino).collect()
    }

    pub fn count(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames() {
        let mut t = Inodes::default();
        let a = t.lookup(ROOT, "a", Kind::Dir);
        let b = t.lookup(a, "b", Kind::File);
        assert_eq!(t.rel_path(b).unwrap(), "a/b");
        let x = t.lookup(ROOT, "x", Kind::Dir);
        t.rename(a, "b", x, "c");
        assert_eq!(t.rel_path(b).unwrap(), "x/c");
        assert_eq!(t.child(a, "b"), None);
    }

    #[test]
    fn forget_drops_and_unlink_orphans() {
        let mut t = Inodes::default();
        let a = t.lookup(ROOT, "a", Kind::File);
        assert_eq!(t.lookup(ROOT, "a", Kind::File), a);
        t.forget(a, 1);
        assert_eq!(t.rel_path(a).unwrap(), "a");
        t.unlink(ROOT, "a");
        assert_eq!(t.rel_path(a), None);
        t.forget(a, 1);
        assert_eq!(t.count(), 1);
    }

    #[test]
    fn a_restored_table_keeps_ids_and_paths() {
        let j = Arc::new(Journal::new(Default::default()));
        let mut t = Inodes::new(j.clone(), &State::default());
        let a = t.lookup(ROOT, "a", Kind::Dir);
        let b = t.lookup(a, "b", Kind::File);
        let x = t.lookup(ROOT, "x", Kind::Dir);
        t.rename(a, "b", x, "c");
        let tmp = t.lookup(ROOT, "tmp", Kind::File);
        t.forget(tmp, 1);
        let state = j.state();
        let mut r = Inodes::new(j, &state);
        assert_eq!(r.rel_path(b).as_deref(), Some("x/c"));
        assert_eq!(r.rel_path(tmp), None, "tmp was forgotten");
        // New nodes never reuse a restored id; restored ones outlive any forget count.
        // Nor a forgotten one the kernel may have been told of (the state carries it).
        assert!(r.lookup(ROOT, "new", Kind::File) > tmp);
        r.forget(a, 1_000_000);
        assert_eq!(r.rel_path(a).as_deref(), Some("a"));
    }

    #[test]
    fn kind_change_gets_new_inode() {
        let mut t = Inodes::default();
        let a = t.lookup(ROOT, "a", Kind::File);
        let b = t.lookup(ROOT, "a", Kind::Dir);
        assert_ne!(a, b);
        assert_eq!(t.rel_path(a), None);
    }

    #[test]
    fn a_hidden_node_is_restored_hidden_and_unhides_once() {
        let j = Arc::new(Journal::new(Default::default()));
        let mut t = Inodes::new(j.clone(), &State::default());
        let a = t.lookup(ROOT, "a", Kind::File);
        t.hide(ROOT, "a", ".hidden-a");
        assert!(t.is_hidden(a) && t.holds_hidden(".hidden-a"));
        assert_eq!(t.rel_path(a).unwrap(), ".hidden-a");
        let mut r = Inodes::new(j.clone(), &j.state());
        assert_eq!(r.hidden(), [a]);
        assert_eq!(r.unhide(a), Some((ROOT, ".hidden-a".to_string())));
        assert_eq!(r.unhide(a), None);
        assert!(r.rel_path(a).is_none() && j.state().hidden.is_empty());
        // The kernel forgets a closed file before its hidden name is removed.
        let b = t.lookup(ROOT, "b", Kind::File);
        t.hide(ROOT, "b", ".hidden-b");
        t.forget(b, 1);
        assert_eq!(t.unhide(b), Some((ROOT, ".hidden-b".to_string())));
        assert_eq!(t.count(), 2, "then it is gone (the root and a remain)");
    }
}
