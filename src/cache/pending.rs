//! What the tree looks like with the write-back log applied: the pending namespace.
//!
//! Owns, for each path a pending operation touches, what it is once the log is on the
//! server (a file with its data, a directory, or nothing) and the last operation that set
//! it; a node goes when that operation is confirmed. Answers lookups and merges listings
//! from it: a node answers for its path, and a directory created here answers for its
//! children. Pure logic, no I/O: it must never guess about a path it holds nothing for.

use std::collections::BTreeMap;

use crate::meta::Attrs;

use super::store::Version;

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
            _ => None,
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
    /// Nothing pending touches it: ask the server.
    Unknown,
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
                _ => {}
            }
            first = false;
            up = if p == "/" { None } else { parent(p) };
        }
        Answer::Unknown
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
    /// `from` will be gone.
    pub fn rename(&mut self, from: &str, to: &str, seq: u64) {
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
        assert_eq!(p.lookup("/m/other"), Answer::Unknown);
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
        p.rename("/d/a", "/d/b", 3);
        p.rename("/d", "/e", 4);
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

    #[test]
    fn similar_names_are_not_inside_each_other() {
        let mut p = Pending::default();
        p.set("/a", dir(), 1);
        p.set("/ab", file(1), 2);
        p.rename("/a", "/z", 3);
        assert_eq!(p.lookup("/ab"), Answer::Is(file(1)));
        assert_eq!(p.lookup("/z"), Answer::Is(dir()));
    }
}
