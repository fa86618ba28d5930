//! Metadata cache: attributes, negative entries and directory listings by remote path,
//! with TTLs.
//!
//! Owns bounded (LRU) caches of what the server said about a path and when, so that a
//! lookup after a directory listing costs no round trip and a second `ls -l` none at all.
//! Every change this mount makes invalidates the paths it touches, and with them the
//! listing of their directory. It must never be the only copy of anything: a miss always
//! falls back to the server.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::sftp::Attrs;

use super::dir::DirEntryOut;

const CAPACITY: usize = 64 * 1024;
/// Directory listings kept (each up to the size of its directory).
const LISTINGS: usize = 256;

/// Listings are keyed without a trailing slash, so a child's parent is found by its path.
fn dir_key(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// A directory's entries as listed by the server.
pub type Listing = Arc<Vec<DirEntryOut>>;

fn parent_key(path: &str) -> Option<&str> {
    dir_key(path).rsplit_once('/').map(|(p, _)| p)
}

pub struct MetaCache {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    attrs: Mutex<LruCache<String, (Attrs, Instant)>>,
    missing: Mutex<LruCache<String, Instant>>,
    listings: Mutex<LruCache<String, (Listing, Instant)>>,
    attr_ttl: Duration,
    negative_ttl: Duration,
    dir_ttl: Duration,
}

impl MetaCache {
    pub fn new(attr_ttl: Duration, negative_ttl: Duration, dir_ttl: Duration) -> Self {
        let cap = NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN);
        let listings = NonZeroUsize::new(LISTINGS).unwrap_or(NonZeroUsize::MIN);
        MetaCache {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            attrs: Mutex::new(LruCache::new(cap)),
            missing: Mutex::new(LruCache::new(cap)),
            listings: Mutex::new(LruCache::new(listings)),
            attr_ttl,
            negative_ttl,
            dir_ttl,
        }
    }

    /// The cached listing of directory `path`, if fresh.
    pub fn listing(&self, path: &str) -> Option<Listing> {
        let mut l = self.listings.lock().ok()?;
        match l.get(dir_key(path)) {
            Some((entries, at)) if at.elapsed() < self.dir_ttl => Some(entries.clone()),
            Some(_) => {
                l.pop(dir_key(path));
                None
            }
            None => None,
        }
    }

    pub fn put_listing(&self, path: &str, entries: Listing) {
        if self.dir_ttl.is_zero() {
            return;
        }
        if let Ok(mut l) = self.listings.lock() {
            l.put(dir_key(path).to_string(), (entries, Instant::now()));
        }
    }

    /// `path` changed: the listing of its directory no longer holds.
    fn drop_parent_listing(&self, path: &str) {
        if let (Some(parent), Ok(mut l)) = (parent_key(path), self.listings.lock()) {
            l.pop(parent);
        }
    }

    pub fn get(&self, path: &str) -> Option<Attrs> {
        let mut c = self.attrs.lock().ok()?;
        let found = match c.get(path) {
            Some((a, at)) if at.elapsed() < self.attr_ttl => Some(a.clone()),
            Some(_) => {
                c.pop(path);
                None
            }
            None => None,
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, path: &str, attrs: &Attrs) {
        if self.attr_ttl.is_zero() {
            return;
        }
        if let Ok(mut c) = self.attrs.lock() {
            c.put(path.to_string(), (attrs.clone(), Instant::now()));
        }
        if let Ok(mut m) = self.missing.lock() {
            m.pop(path);
        }
    }

    /// True if `path` is known not to exist.
    pub fn is_missing(&self, path: &str) -> bool {
        let Ok(mut m) = self.missing.lock() else {
            return false;
        };
        match m.get(path) {
            Some(at) if at.elapsed() < self.negative_ttl => true,
            Some(_) => {
                m.pop(path);
                false
            }
            None => false,
        }
    }

    pub fn put_missing(&self, path: &str) {
        self.drop_parent_listing(path);
        if self.negative_ttl.is_zero() {
            return;
        }
        if let Ok(mut m) = self.missing.lock() {
            m.put(path.to_string(), Instant::now());
        }
        if let Ok(mut c) = self.attrs.lock() {
            c.pop(path);
        }
    }

    /// Forgets everything about `path` (and the listing of its directory).
    pub fn invalidate(&self, path: &str) {
        self.drop_parent_listing(path);
        if let Ok(mut c) = self.attrs.lock() {
            c.pop(path);
        }
        if let Ok(mut m) = self.missing.lock() {
            m.pop(path);
        }
    }

    /// Forgets `path` and everything below it (after a rename or rmdir of a directory).
    pub fn invalidate_tree(&self, path: &str) {
        self.invalidate(path);
        let prefix = format!("{}/", path.trim_end_matches('/'));
        if let Ok(mut l) = self.listings.lock() {
            let stale: Vec<String> = l
                .iter()
                .filter(|(k, _)| *k == dir_key(path) || k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                l.pop(&k);
            }
        }
        if let Ok(mut c) = self.attrs.lock() {
            let stale: Vec<String> = c
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                c.pop(&k);
            }
        }
        if let Ok(mut m) = self.missing.lock() {
            let stale: Vec<String> = m
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                m.pop(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.attrs.lock().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_invalidation() {
        let c = MetaCache::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let a = Attrs {
            size: Some(3),
            ..Default::default()
        };
        c.put("/r/a", &a);
        c.put("/r/d/x", &a);
        assert_eq!(c.get("/r/a"), Some(a.clone()));
        c.put_missing("/r/b");
        assert!(c.is_missing("/r/b"));
        c.put("/r/b", &a);
        assert!(!c.is_missing("/r/b"));
        c.invalidate_tree("/r/d");
        assert_eq!(c.get("/r/d/x"), None);
        assert!(c.get("/r/a").is_some());
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = MetaCache::new(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        c.put("/a", &Attrs::default());
        c.put_missing("/b");
        assert_eq!(c.get("/a"), None);
        assert!(!c.is_missing("/b"));
    }

    #[test]
    fn listings_drop_when_a_child_changes() {
        let c = MetaCache::new(
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::from_secs(60),
        );
        c.put_listing("/r/d/", Arc::new(Vec::new()));
        c.put_listing("/r/d/sub", Arc::new(Vec::new()));
        assert!(c.listing("/r/d").is_some());
        c.invalidate("/r/d/new");
        assert!(c.listing("/r/d").is_none());
        assert!(c.listing("/r/d/sub").is_some());
        c.invalidate_tree("/r/d/sub");
        assert!(c.listing("/r/d/sub").is_none());
    }
}
