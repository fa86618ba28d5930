//! What the tree looks like with the write-back log applied: the pending namespace.
//!
//! Owns, for each path a pending operation touches, what it is once the log is on the
//! server (a file with its data, a directory, something the server holds now at another
//! path or with other attributes, or nothing) and the last operation that set it; a node
//! goes when that operation is confirmed. Answers lookups and merges listings from it: a
//! node answers for its path, a directory created here answers for its children, and a
//! directory the server holds elsewhere (renamed, not yet on the server) sends lookups of
//! its children to the server's path. Pure logic, no I/O: it must never guess about a
//! path it holds nothing for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Attrs, Kind};

use super::store::Version;

/// The attributes of something the server holds (a file or a directory), as this mount
/// shows it until its pending changes (a rename, a mode or time change) are uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    pub dir: bool,
    pub size: u64,
    pub perm: u32,
    pub mtime: u32,
    pub owner: Option<(u32, u32)>,
}

impl Shown {
    /// Of a file or directory the server showed (None for anything else: a symlink's
    /// changes go to the server directly).
    pub fn of(a: &Attrs) -> Option<Shown> {
        let dir = match (a.kind(), a.mode) {
            (_, None) => return None,
            (Kind::Dir, _) => true,
            (Kind::File, _) => false,
            _ => return None,
        };
        Some(Shown {
            dir,
            size: a.size.unwrap_or(0),
            perm: a.mode.unwrap_or(0) & 0o7777,
            mtime: a.mtime.unwrap_or(0),
            owner: a.uid.zip(a.gid),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        data: u64,
        size: u64,
        perm: u32,
        mtime: u32,
        owner: Option<(u32, u32)>,
    },
    Dir {
        perm: u32,
        mtime: u32,
        owner: Option<(u32, u32)>,
    },
    /// What the server holds at `at` now (its path before the pending renames), shown
    /// with the pending attributes.
    Server {
        at: String,
        shown: Shown,
    },
    Gone,
}

impl Node {
    pub fn attrs(&self) -> Option<Attrs> {
        let (size, mode, mtime, owner) = match self {
            Node::File {
                size,
                perm,
                mtime,
                owner,
                ..
            } => (*size, libc::S_IFREG | perm, *mtime, owner),
            Node::Dir { perm, mtime, owner } => (4096, libc::S_IFDIR | perm, *mtime, owner),
            Node::Server { shown: s, .. } => {
                let kind = if s.dir { libc::S_IFDIR } else { libc::S_IFREG };
                (s.size, kind | s.perm, s.mtime, &s.owner)
            }
            Node::Gone => return None,
        };
        Some(Attrs {
            size: Some(size),
            uid: owner.map(|o| o.0),
            gid: owner.map(|o| o.1),
            mode: Some(mode),
            atime: Some(mtime),
            mtime: Some(mtime),
        })
    }

    /// The version the server shows once this file is uploaded.
    pub fn version(&self) -> Option<Version> {
        match self {
            Node::File { size, mtime, .. } => Some((*size, *mtime)),
            Node::Server { shown: s, .. } if !s.dir => Some((s.size, s.mtime)),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        match self {
            Node::Dir { .. } => true,
            Node::Server { shown, .. } => shown.dir,
            _ => false,
        }
    }
}

/// What the pending namespace says of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It will be this (file or directory).
    Is(Node),
    /// It will not exist.
    Absent,
    /// Nothing pending says: ask the server, at this path (its own, or the one it has
    /// under a directory renamed here and not yet on the server).
    Ask(String),
}

#[derive(Default)]
pub struct Pending {
    nodes: BTreeMap<String, (Node, u64)>,
}

fn parent(path: &str) -> Option<&str> {
    let i = path.rfind('/')?;
    Some(if i == 0 { "/" } else { &path[..i] })
}

/// `path` is `dir` or inside it.
pub fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || dir.ends_with('/'))
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path).map(|(n, _)| n)
    }

    pub fn lookup(&self, path: &str) -> Answer {
        if let Some((n, _)) = self.nodes.get(path) {
            return match n {
                Node::Gone => Answer::Absent,
                n => Answer::Is(n.clone()),
            };
        }
        // Under a path that will be gone or a file, or in a directory made here (the
        // server has nothing in it this mount did not put there).
        let mut up = parent(path);
        let mut first = true;
        while let Some(p) = up {
            match self.nodes.get(p) {
                Some((Node::Gone | Node::File { .. }, _)) => return Answer::Absent,
                Some((Node::Dir { .. }, _)) if first => return Answer::Absent,
                Some((Node::Server { shown, .. }, _)) if !shown.dir => return Answer::Absent,
                Some((Node::Server { at, .. }, _)) => {
                    return Answer::Ask(format!("{at}{}", &path[p.len()..]))
                }
                _ => {}
            }
            first = false;
            up = if p == "/" { None } else { parent(p) };
        }
        Answer::Ask(path.to_string())
    }

    /// Where the server holds what `path` shows now (its own path unless it, or a
    /// directory above it, was renamed here and the rename is not on the server yet).
    pub fn server_path(&self, path: &str) -> String {
        match self.nodes.get(path) {
            Some((Node::Server { at, .. }, _)) => at.clone(),
            _ => match self.lookup(path) {
                Answer::Ask(at) => at,
                _ => path.to_string(),
            },
        }
    }

    /// A rename is on the server: what it held under `from` it now holds under `to`.
    pub fn moved_on_server(&mut self, from: &str, to: &str) {
        for (n, _) in self.nodes.values_mut() {
            if let Node::Server { at, .. } = n {
                if within(at, from) {
                    *at = format!("{to}{}", &at[from.len()..]);
                }
            }
        }
    }

    /// Whether `dir` was created here (its listing is all pending).
    pub fn made_here(&self, dir: &str) -> bool {
        matches!(self.nodes.get(dir), Some((Node::Dir { .. }, _)))
    }

    /// The pending nodes directly in `dir`, by name.
    fn direct<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Node)> + 'a {
        let prefix = if dir.ends_with('/') {
            dir.to_string()
        } else {
            format!("{dir}/")
        };
        let len = prefix.len();
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(move |(k, (n, _))| (&k[len..], n))
            .filter(|(name, _)| !name.contains('/'))
    }

    /// The pending entries directly in `dir`: a node per name (Gone: hide it).
    pub fn children(&self, dir: &str) -> Vec<(String, Node)> {
        self.direct(dir)
            .map(|(name, n)| (name.to_string(), n.clone()))
            .collect()
    }

    /// Whether a pending change touches a path directly in `dir` (removals too).
    pub fn touched_inside(&self, dir: &str) -> bool {
        self.direct(dir).next().is_some()
    }

    /// Whether anything pending lies in `dir` (the node itself excluded).
    pub fn has_children(&self, dir: &str) -> bool {
        self.direct(dir).any(|(_, n)| *n != Node::Gone)
    }

    /// Shows a file this mount is writing before its first upload is recorded.
    pub fn show(&mut self, path: &str, node: Node) {
        self.nodes.insert(path.to_string(), (node, u64::MAX));
    }

    /// A file shown by [`Pending::show`] whose data `data` was never recorded goes.
    pub fn unshow(&mut self, data: u64) {
        self.nodes.retain(|_, (n, s)| {
            !(*s == u64::MAX && matches!(n, Node::File { data: d, .. } if *d == data))
        });
    }

    pub fn set(&mut self, path: &str, node: Node, seq: u64) {
        self.nodes.insert(path.to_string(), (node, seq));
    }

    /// The paths of the nodes at `dir` and inside it, set by operation `seq` or earlier.
    fn under(&self, dir: &str, seq: u64) -> Vec<String> {
        self.nodes
            .range(dir.to_string()..)
            .take_while(|(k, _)| k.starts_with(dir))
            .filter(|(k, (_, s))| within(k, dir) && *s <= seq)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Moves `from` (and what is pending under it) to `to`, replacing what was there;
    /// `from` will be gone. `shown`: what the server holds at `from` when nothing
    /// pending is there (it answers for `to` until the rename is uploaded).
    pub fn rename(&mut self, from: &str, to: &str, shown: Option<&Shown>, seq: u64) {
        let server = match (self.nodes.get(from), shown) {
            (None, Some(s)) => Some(Node::Server {
                at: self.server_path(from),
                shown: s.clone(),
            }),
            _ => None,
        };
        let moved = self.under(from, u64::MAX);
        let replaced = self.under(to, u64::MAX);
        let mut taken = Vec::new();
        for k in moved {
            if let Some((n, _)) = self.nodes.remove(&k) {
                taken.push((format!("{to}{}", &k[from.len()..]), n));
            }
        }
        for k in replaced {
            self.nodes.remove(&k);
        }
        for (k, n) in taken {
            self.nodes.insert(k, (n, seq));
        }
        if let Some(n) = server {
            self.nodes.insert(to.to_string(), (n, seq));
        }
        self.nodes.insert(from.to_string(), (Node::Gone, seq));
    }

    /// Operation `seq`, which last set `paths`, is on the server: their nodes (and those
    /// under them it set) go, unless a later operation set them again.
    pub fn confirmed(&mut self, seq: u64, paths: &[&str]) {
        for p in paths {
            for k in self.under(p, seq) {
                self.nodes.remove(&k);
            }
        }
    }

    /// Data files the nodes still read from.
    pub fn data_in_use(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.values().filter_map(|(n, _)| match n {
            Node::File { data, .. } => Some(*data),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: u64) -> Node {
        Node::File {
            data,
            size: 1,
            perm: 0o644,
            mtime: 1,
            owner: None,
        }
    }

    fn dir() -> Node {
        Node::Dir {
            perm: 0o755,
            mtime: 1,
            owner: None,
        }
    }

    #[test]
    fn a_directory_made_here_answers_for_its_children_only() {
        let mut p = Pending::default();
        p.set("/m/d", dir(), 1);
        p.set("/m/d/f", file(7), 2);
        assert_eq!(p.lookup("/m/d/f"), Answer::Is(file(7)));
        assert_eq!(p.lookup("/m/d/x"), Answer::Absent);
        assert_eq!(p.lookup("/m/other"), Answer::Ask("/m/other".into()));
        assert_eq!(p.children("/m/d"), vec![("f".to_string(), file(7))]);
        assert!(p.has_children("/m/d"));
        assert!(p.touched_inside("/m/d") && p.touched_inside("/m"));
        assert!(!p.touched_inside("/m/d/f") && !p.touched_inside("/other"));
        assert_eq!(p.children("/m"), vec![("d".to_string(), dir())]);
    }

    #[test]
    fn a_rename_chain_and_an_unlink_end_in_the_right_tree() {
        let mut p = Pending::default();
        p.set("/d", dir(), 1);
        p.set("/d/a", file(1), 2);
        p.rename("/d/a", "/d/b", None, 3);
        p.rename("/d", "/e", None, 4);
        p.set("/e/b", Node::Gone, 5);
        p.set("/e/c", file(2), 6);
        assert_eq!(p.lookup("/d"), Answer::Absent);
        assert_eq!(p.lookup("/d/a"), Answer::Absent);
        assert_eq!(p.lookup("/e/b"), Answer::Absent);
        assert_eq!(p.lookup("/e/c"), Answer::Is(file(2)));
        assert_eq!(p.lookup("/e"), Answer::Is(dir()));
        // Confirmed one by one, each node stays until the last operation that set it.
        p.confirmed(2, &["/d/a"]);
        assert_eq!(p.lookup("/e/c"), Answer::Is(file(2)));
        p.confirmed(4, &["/d", "/e"]);
        assert_eq!(p.lookup("/e/c"), Answer::Is(file(2)));
        assert_eq!(p.lookup("/e/b"), Answer::Absent);
        p.confirmed(5, &["/e/b"]);
        p.confirmed(6, &["/e/c"]);
        assert!(p.is_empty());
    }

    fn shown(dir: bool) -> Shown {
        Shown {
            dir,
            size: 3,
            perm: 0o640,
            mtime: 9,
            owner: None,
        }
    }

    #[test]
    fn what_the_server_holds_answers_from_its_old_path_until_the_rename_is_uploaded() {
        let mut p = Pending::default();
        p.set("/a/new", file(1), 1);
        p.rename("/a", "/b", Some(&shown(true)), 2);
        p.rename("/b/x", "/c", Some(&shown(false)), 3);
        assert_eq!(p.lookup("/a/y"), Answer::Absent);
        assert_eq!(p.lookup("/b/y"), Answer::Ask("/a/y".into()));
        assert_eq!(p.lookup("/b/new"), Answer::Is(file(1)));
        assert_eq!(p.lookup("/b/x"), Answer::Absent);
        assert_eq!(p.server_path("/c"), "/a/x");
        assert_eq!(p.lookup("/c/under-a-file"), Answer::Absent);
        assert!(matches!(p.lookup("/b"), Answer::Is(ref n) if n.is_dir()));
        // The first rename is on the server: the file is at /b/x there now.
        p.moved_on_server("/a", "/b");
        p.confirmed(2, &["/a", "/b"]);
        assert_eq!(p.server_path("/c"), "/b/x");
        assert_eq!(p.lookup("/b/y"), Answer::Ask("/b/y".into()));
        p.moved_on_server("/b/x", "/c");
        p.confirmed(3, &["/b/x", "/c"]);
        assert_eq!(p.lookup("/c"), Answer::Ask("/c".into()));
        p.confirmed(1, &["/a/new"]);
        assert!(p.is_empty());
    }

    #[test]
    fn similar_names_are_not_inside_each_other() {
        let mut p = Pending::default();
        p.set("/a", dir(), 1);
        p.set("/ab", file(1), 2);
        p.rename("/a", "/z", None, 3);
        assert_eq!(p.lookup("/ab"), Answer::Is(file(1)));
        assert_eq!(p.lookup("/z"), Answer::Is(dir()));
    }
}
