//! Metadata cache: attributes, negative entries and directory listings by remote path,
//! with TTLs (whole directories are [`super::listings`]).
//!
//! Owns bounded (LRU) caches of what the server said about a path and when, so that a
//! lookup after a directory listing costs no round trip and a second `ls -l` none at all.
//! Every change this mount makes is recorded for the paths it touches: invalidated, or
//! known created or removed. It must never be the only copy of anything: a miss always
//! falls back to the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::session::Attrs;

use super::listings::{split, DirEntryOut, Fetch, Listing, Listings};

const CAPACITY: usize = 64 * 1024;

pub struct MetaCache {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    attrs: Mutex<LruCache<String, (Attrs, Instant)>>,
    missing: Mutex<LruCache<String, Instant>>,
    /// Whole directories: their names and listings.
    pub dirs: Listings,
    attr_ttl: Duration,
    negative_ttl: Duration,
    /// The root's attributes as last seen, served while disconnected (so `umount`, `ls -d`
    /// and `stat` of the mountpoint do not wait for the link).
    root: Mutex<Option<Attrs>>,
    /// Node -> its mtime and size when last opened: whether the kernel's cached pages of
    /// it still hold.
    opened: Mutex<LruCache<u64, Version>>,
    /// Attribute fetches on their way, by path: how many, and whether this mount changed
    /// the path since they were sent (then their answer may predate the change).
    fetching: Mutex<HashMap<String, (usize, bool)>>,
}

/// An attribute fetch on its way; hand its answer to [`AttrFetch::put`].
pub struct AttrFetch<'a> {
    cache: &'a MetaCache,
    path: String,
}

impl AttrFetch<'_> {
    /// Caches what the server answered, unless this mount changed the path since the
    /// request was sent (a server that runs requests concurrently may answer with the
    /// state before the change).
    pub fn put(self, attrs: &Attrs) {
        if !self.changed() {
            self.cache.put(&self.path, attrs);
        }
    }

    /// The server answered that the path does not exist: as [`AttrFetch::put`].
    pub fn missing(self) {
        if !self.changed() {
            self.cache.put_missing(&self.path);
        }
    }

    fn changed(&self) -> bool {
        self.cache
            .fetching
            .lock()
            .is_ok_and(|f| f.get(&self.path).is_some_and(|(_, changed)| *changed))
    }
}

impl Drop for AttrFetch<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.cache.fetching.lock() {
            if let Some((users, _)) = f.get_mut(&self.path) {
                *users -= 1;
                if *users == 0 {
                    f.remove(&self.path);
                }
            }
        }
    }
}

/// A file's mtime and size: what tells whether pages cached from it still hold.
pub type Version = (Option<u32>, Option<u64>);

impl MetaCache {
    pub fn new(attr_ttl: Duration, negative_ttl: Duration, dir_ttl: Duration) -> Self {
        MetaCache {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            attrs: Mutex::new(crate::bounded::lru(CAPACITY)),
            missing: Mutex::new(crate::bounded::lru(CAPACITY)),
            dirs: Listings::new(dir_ttl),
            attr_ttl,
            negative_ttl,
            root: Mutex::new(None),
            opened: Mutex::new(crate::bounded::lru(CAPACITY)),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// The root's attributes as last seen.
    pub fn root(&self) -> Option<Attrs> {
        self.root.lock().ok().and_then(|r| r.clone())
    }

    pub fn root_seen(&self, attrs: &Attrs) {
        if let Ok(mut r) = self.root.lock() {
            *r = Some(attrs.clone());
        }
    }

    /// Node `ino` is opened at `version`: whether it is the version it had when last
    /// opened (the kernel may keep its pages).
    pub fn opened(&self, ino: u64, version: Version) -> bool {
        self.opened
            .lock()
            .is_ok_and(|mut seen| seen.put(ino, version) == Some(version))
    }

    /// The cached listing of directory `path`, if fresh.
    pub fn listing(&self, path: &str) -> Option<Listing> {
        self.dirs.snapshot(path)
    }

    /// Announces a listing of `path` about to be fetched (see [`Listings::begin`]).
    pub fn begin_listing(&self, path: &str) -> Fetch<'_> {
        self.dirs.begin(path)
    }

    /// A fetched listing, with its entries' attributes (kept in the listing alone; those
    /// this mount changed while it was on its way are not kept).
    pub fn put_listing(&self, fetch: Fetch<'_>, entries: Listing) {
        self.dirs.put(fetch, entries);
    }

    /// Announces a fetch of `path`'s attributes about to be sent.
    pub fn begin_attrs(&self, path: &str) -> AttrFetch<'_> {
        if let Ok(mut f) = self.fetching.lock() {
            f.entry(path.to_string()).or_default().0 += 1;
        }
        AttrFetch {
            cache: self,
            path: path.to_string(),
        }
    }

    /// Drops the cached attributes of the paths `stale` selects, and marks their fetches
    /// on their way as stale.
    fn drop_attrs(&self, stale: impl Fn(&str) -> bool) {
        if let Ok(mut f) = self.fetching.lock() {
            for (_, changed) in f.iter_mut().filter(|(k, _)| stale(k)).map(|(_, v)| v) {
                *changed = true;
            }
        }
        if let Ok(mut c) = self.attrs.lock() {
            let keys: Vec<String> = c
                .iter()
                .filter(|(k, _)| stale(k))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                c.pop(&k);
            }
        }
    }

    /// [`MetaCache::drop_attrs`] of one path (also as its directory's listing shows it).
    fn drop_path(&self, path: &str) {
        if let Ok(mut f) = self.fetching.lock() {
            if let Some((_, changed)) = f.get_mut(path) {
                *changed = true;
            }
        }
        if let Ok(mut c) = self.attrs.lock() {
            c.pop(path);
        }
        if let Some((dir, name)) = split(path) {
            self.dirs.forget_attrs(dir, name);
        }
    }

    /// Fresh cached attributes of `path` (counted as a hit or miss).
    pub fn get(&self, path: &str) -> Option<Attrs> {
        let found = self.peek(path);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Fresh cached attributes of `path`, for a hint (not counted).
    pub fn peek(&self, path: &str) -> Option<Attrs> {
        self.seen_within(path, Some(self.attr_ttl))
    }

    /// The attributes last seen of `path`, however old (expired ones stay until this
    /// mount changes the path or the LRU bound drops them): what an outage is served
    /// from where the mount allows it.
    pub fn last_seen(&self, path: &str) -> Option<Attrs> {
        self.seen_within(path, None)
    }

    /// The last listing of `dir`, however old, with this mount's changes since (what an
    /// outage is served from); None unless the attributes of every name are known.
    pub fn last_listing(&self, dir: &str) -> Option<Listing> {
        let names = self.dirs.last_names(dir)?;
        let prefix = dir.trim_end_matches('/');
        let mut entries: Vec<DirEntryOut> = names
            .into_iter()
            .map(|name| {
                let attrs = self.last_seen(&format!("{prefix}/{name}"))?;
                Some(DirEntryOut {
                    kind: super::file_type(attrs.mode.unwrap_or(0)),
                    name,
                    attrs,
                })
            })
            .collect::<Option<_>>()?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Some(Arc::new(entries))
    }

    /// What the server last said of `path`'s attributes (asked, or in its directory's
    /// listing), no older than `max_age` if given.
    fn seen_within(&self, path: &str, max_age: Option<Duration>) -> Option<Attrs> {
        let young = |at: &Instant| max_age.is_none_or(|m| at.elapsed() < m);
        let fetched = self.attrs.lock().ok().and_then(|mut c| {
            c.get(path)
                .filter(|(_, at)| young(at))
                .map(|(a, _)| a.clone())
        });
        fetched.or_else(|| {
            let (dir, name) = split(path)?;
            match max_age {
                Some(ttl) => self.dirs.attrs(dir, name, ttl),
                None => self.dirs.last_attrs(dir, name),
            }
        })
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

    /// True if `path` is known not to exist (from a negative entry, or absent from the
    /// known names of its directory).
    pub fn is_missing(&self, path: &str) -> bool {
        if let Some((dir, name)) = split(path) {
            // A listing newer than a negative entry (which removes the name) shows it.
            if self.dirs.contains(dir, name) == Some(true) {
                return false;
            }
            if self.dirs.absent(dir, name, self.negative_ttl) {
                return true;
            }
        }
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

    /// The server said `path` does not exist.
    pub fn put_missing(&self, path: &str) {
        if let Some((dir, name)) = split(path) {
            self.dirs.changed(dir, name, false);
        }
        if self.negative_ttl.is_zero() {
            return;
        }
        if let Ok(mut m) = self.missing.lock() {
            m.put(path.to_string(), Instant::now());
        }
        self.drop_path(path);
    }

    /// This mount created `path` (attributes if known).
    pub fn created(&self, path: &str, attrs: Option<&Attrs>) {
        self.invalidate(path);
        if let Some(a) = attrs {
            self.put(path, a);
        }
        if let Some((dir, name)) = split(path) {
            self.dirs.changed(dir, name, true);
        }
        self.parent_changed(path);
    }

    /// This mount removed `path`.
    pub fn removed(&self, path: &str) {
        self.put_missing(path);
        self.drop_path(path);
        self.parent_changed(path);
    }

    /// The attributes of `path`'s directory as asked right behind a change inside it
    /// ([`crate::session::Remote::lstat_after`]): fresh, so cached (after
    /// [`MetaCache::created`] or [`MetaCache::removed`] dropped the old ones).
    /// `made`: what the change created, if anything. An answer whose mtime is older than
    /// it was sent before the change after all (a request ahead of it yielded), and is
    /// not kept: the kernel asks again.
    pub fn parent_seen(&self, path: &str, dir: Option<Attrs>, made: Option<&Attrs>) {
        if let (Some(parent), Some(a)) = (parent_key(path), dir) {
            let predates =
                matches!((a.mtime, made.and_then(|m| m.mtime)), (Some(d), Some(m)) if d < m);
            if a.kind() == crate::session::Kind::Dir && !predates {
                self.put(parent, &a);
            }
        }
    }

    /// A name in `path`'s directory came or went: the server changed that directory's
    /// mtime and ctime, so its cached attributes are stale (the kernel asks again).
    fn parent_changed(&self, path: &str) {
        if let Some(dir) = parent_key(path) {
            self.drop_path(dir);
        }
    }

    /// A change of `path` failed in a way that may leave its directory other than known.
    pub fn unsure(&self, path: &str) {
        self.invalidate(path);
        if let Some((dir, _)) = split(path) {
            self.dirs.forget(dir);
        }
    }

    /// Forgets the attributes of `path` (its directory's listing, which shows them, is
    /// refetched; its names still hold).
    pub fn invalidate(&self, path: &str) {
        if let Some((dir, name)) = split(path) {
            self.dirs.attrs_changed(dir, name);
        }
        self.drop_path(path);
        if let Ok(mut m) = self.missing.lock() {
            m.pop(path);
        }
    }

    /// `from` was renamed to `to` (`done`), or the rename failed and either may or may
    /// not exist now.
    pub fn renamed(&self, from: &str, to: &str, done: bool) {
        self.invalidate_tree(from);
        self.invalidate_tree(to);
        if done {
            self.removed(from);
            self.created(to, None);
        } else {
            self.unsure(from);
            self.unsure(to);
        }
    }

    /// Forgets `path` and everything below it (after a rename or rmdir of a directory).
    pub fn invalidate_tree(&self, path: &str) {
        self.invalidate(path);
        self.dirs.forget_tree(path);
        let prefix = format!("{}/", path.trim_end_matches('/'));
        self.drop_attrs(|k| k.starts_with(&prefix));
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

    pub fn entries(&self) -> usize {
        self.attrs.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// The cache key of `path`'s directory.
pub fn parent_key(path: &str) -> Option<&str> {
    split(path).map(|(dir, _)| if dir.is_empty() { "/" } else { dir })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
    fn an_answer_sent_before_a_change_is_not_kept() {
        let c = MetaCache::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let old = Attrs {
            mtime: Some(1),
            ..Default::default()
        };
        let (dir, file, other) = (
            c.begin_attrs("/r/d"),
            c.begin_attrs("/r/d/f"),
            c.begin_attrs("/r/e"),
        );
        let (dir2, late) = (c.begin_attrs("/r/d"), c.begin_attrs("/r/d/g"));
        c.created("/r/d/f", None);
        c.put_missing("/r/d/g");
        dir.put(&old);
        file.missing();
        other.put(&old);
        late.put(&old);
        assert_eq!(
            c.get("/r/d"),
            None,
            "the directory's mtime changed with the create"
        );
        assert!(!c.is_missing("/r/d/f"), "the file exists now");
        assert_eq!(c.get("/r/d/g"), None);
        assert_eq!(c.get("/r/e"), Some(old.clone()), "other paths are kept");
        drop(dir2);
        let fresh = c.begin_attrs("/r/d");
        fresh.put(&old);
        assert_eq!(
            c.get("/r/d"),
            Some(old),
            "a fetch sent after the change is kept"
        );
    }

    #[test]
    fn the_last_listing_is_served_only_when_complete() {
        let c = MetaCache::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_millis(1),
        );
        let file = |name: &str| super::super::listings::DirEntryOut {
            name: name.into(),
            kind: fuser::FileType::RegularFile,
            attrs: Attrs {
                size: Some(1),
                mode: Some(libc::S_IFREG | 0o644),
                ..Default::default()
            },
        };
        c.put_listing(c.begin_listing("/r"), Arc::new(vec![file("b"), file("a")]));
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.listing("/r").is_none(), "expired");
        let names = |l: Listing| l.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            c.last_listing("/r").map(names),
            Some(vec!["a".into(), "b".into()])
        );
        // This mount's changes count; a name whose attributes are unknown makes it
        // incomplete (not served).
        c.removed("/r/a");
        c.created("/r/c", Some(&file("c").attrs));
        assert_eq!(
            c.last_listing("/r").map(names),
            Some(vec!["b".into(), "c".into()])
        );
        c.created("/r/d", None);
        assert!(c.last_listing("/r").is_none());
        assert!(c.last_listing("/never-listed").is_none());
    }

    #[test]
    fn listed_attributes_are_kept_once_and_dropped_with_changes() {
        let c = MetaCache::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let listed = |name: &str, mtime| super::super::listings::DirEntryOut {
            name: name.into(),
            kind: fuser::FileType::Directory,
            attrs: Attrs {
                mtime: Some(mtime),
                mode: Some(libc::S_IFDIR | 0o755),
                ..Default::default()
            },
        };
        c.put_listing(
            c.begin_listing("/r"),
            Arc::new(vec![listed("d", 1), listed("e", 2)]),
        );
        assert_eq!(c.entries(), 0, "not copied into the attribute cache");
        assert_eq!(c.peek("/r/d").and_then(|a| a.mtime), Some(1));
        // A name made inside d changes d's mtime: the listing's copy of it is stale.
        c.created("/r/d/new", None);
        assert_eq!(c.peek("/r/d"), None);
        assert_eq!(c.peek("/r/e").and_then(|a| a.mtime), Some(2));
        c.invalidate("/r/e");
        assert_eq!(c.peek("/r/e"), None);
        assert!(!c.is_missing("/r/e"), "the name still holds");
        // A listing shows a name a negative entry had said was missing.
        c.put_missing("/r/f");
        assert!(c.is_missing("/r/f"));
        c.put_listing(c.begin_listing("/r"), Arc::new(vec![listed("f", 3)]));
        assert!(!c.is_missing("/r/f"));
        let short = MetaCache::new(Duration::ZERO, Duration::ZERO, Duration::from_secs(60));
        short.put_listing(short.begin_listing("/r"), Arc::new(vec![listed("d", 1)]));
        assert_eq!(
            short.peek("/r/d"),
            None,
            "attr_timeout=0 holds for listed ones too"
        );
        assert!(
            short.last_seen("/r/d").is_some(),
            "but an outage may be served from it"
        );
        let brief = MetaCache::new(
            Duration::from_millis(30),
            Duration::ZERO,
            Duration::from_secs(60),
        );
        brief.put_listing(brief.begin_listing("/r"), Arc::new(vec![listed("d", 1)]));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            brief.peek("/r/d"),
            None,
            "listed attributes expire with attr_timeout"
        );
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
        c.put_listing(c.begin_listing("/r/d/"), Arc::new(Vec::new()));
        c.put_listing(c.begin_listing("/r/d/sub"), Arc::new(Vec::new()));
        assert!(c.listing("/r/d").is_some());
        c.invalidate("/r/d/new");
        assert!(c.listing("/r/d").is_none());
        c.dirs.put_empty("/r/made");
        c.invalidate("/r/made/new");
        assert!(c.is_missing("/r/made/other"), "names still known");
        c.unsure("/r/made/new");
        assert!(!c.is_missing("/r/made/other"));
        assert!(c.listing("/r/d/sub").is_some());
        c.invalidate_tree("/r/d/sub");
        assert!(c.listing("/r/d/sub").is_none());
    }
}
