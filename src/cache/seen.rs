//! What the server showed lately for paths: the last attributes of each, and when.
//!
//! Owns the cache layer's one memory of the server's state: the version (size and mtime)
//! a cached copy is checked against at open, the directories write-back answers lookups
//! from during an outage, and what this mount's own uploads left there (recorded by
//! write-back when the server confirms them, so a later write of the same file is no
//! conflict). Bounded (least recently used go); a cache, never a source of truth while
//! the server can be asked.

use std::sync::Mutex;
use std::time::Instant;

use lru::LruCache;

use crate::meta::Attrs;

/// Paths remembered, at most.
const CAPACITY: usize = 16384;

pub struct Seen {
    map: Mutex<LruCache<String, (Attrs, Instant)>>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            map: Mutex::new(crate::bounded::lru(CAPACITY)),
        }
    }
}

impl Seen {
    fn map(&self) -> std::sync::MutexGuard<'_, LruCache<String, (Attrs, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server shows (or, once an upload is confirmed, showed) `attrs` for `path`.
    pub fn put(&self, path: &str, attrs: &Attrs) {
        self.map()
            .put(path.to_string(), (attrs.clone(), Instant::now()));
    }

    /// What it showed for `path` last, and when.
    pub fn get(&self, path: &str) -> Option<(Attrs, Instant)> {
        self.map().get(path).cloned()
    }

    pub fn forget(&self, path: &str) {
        self.map().pop(path);
    }

    /// Forgets `path` and everything under it.
    pub fn forget_tree(&self, path: &str) {
        let mut m = self.map();
        let under: Vec<String> = m
            .iter()
            .map(|(p, _)| p)
            .filter(|p| super::pending::within(p, path))
            .cloned()
            .collect();
        for p in under {
            m.pop(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_forgotten_and_its_neighbours_kept() {
        let s = Seen::default();
        for p in ["/a", "/a/b", "/ab", "/c"] {
            s.put(p, &Attrs::default());
        }
        s.forget_tree("/a");
        assert!(s.get("/a").is_none() && s.get("/a/b").is_none());
        assert!(s.get("/ab").is_some() && s.get("/c").is_some());
    }
}
