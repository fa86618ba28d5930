//! What this mount knows about whole directories: their listing and the names in them.
//!
//! Owns, per remote directory, the set of names it holds (from a listing, or empty for a
//! directory this mount just made) kept exact by this mount's own changes, and the last
//! listing as handed to readdir. A name absent from the set of a directory this mount made
//! does not exist: lookups of new names there (every mkdir -p, every upload into a new
//! directory) cost no round trip. In a listed directory, absence is believed only as long
//! as negative entries are (another client may have added the name since). A listing fetched while
//! this mount changed the directory is refused, so a stale set never hides a new name.
//! Memory is bounded by a total name count. It must never answer past its TTL.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::dir::DirEntryOut;

/// Directories known at once.
const DIRS: usize = 4096;
/// Names known at once, over all directories (about 100 bytes each).
const NAMES: usize = 1 << 18;

/// A directory's entries as listed by the server.
pub type Listing = Arc<Vec<DirEntryOut>>;

/// Keys carry no trailing slash, so a child's directory is found from its path.
pub fn dir_key(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// The directory of `path` and the name in it.
pub fn split(path: &str) -> Option<(&str, &str)> {
    dir_key(path).rsplit_once('/')
}

struct Dir {
    names: HashSet<String>,
    /// Made by this mount (empty then): nobody else knows the directory yet.
    made_here: bool,
    /// The listing readdir serves; dropped when a name changes (re-listed on next use).
    snapshot: Option<Listing>,
    at: Instant,
}

struct Inner {
    dirs: LruCache<String, Dir>,
    names: usize,
    /// When this mount last changed a directory (to refuse listings fetched across it).
    changed: LruCache<String, Instant>,
    /// When a `changed` record was last evicted: a listing older than that is refused.
    forgot_changes: Option<Instant>,
}

pub struct Listings {
    inner: Mutex<Inner>,
    ttl: Duration,
}

impl Listings {
    pub fn new(ttl: Duration) -> Self {
        let dirs = NonZeroUsize::new(DIRS).unwrap_or(NonZeroUsize::MIN);
        Listings {
            inner: Mutex::new(Inner {
                dirs: LruCache::new(dirs),
                names: 0,
                changed: LruCache::new(dirs),
                forgot_changes: None,
            }),
            ttl,
        }
    }

    /// Runs `f` on the fresh record of `dir`, if any (a stale one is dropped).
    fn with_dir<T>(&self, dir: &str, f: impl FnOnce(&mut Dir) -> T) -> Option<T> {
        let mut g = self.inner.lock().ok()?;
        let inner = &mut *g;
        let key = dir_key(dir);
        match inner.dirs.get_mut(key) {
            Some(d) if d.at.elapsed() < self.ttl => Some(f(d)),
            Some(_) => {
                if let Some(d) = inner.dirs.pop(key) {
                    inner.names -= d.names.len();
                }
                None
            }
            None => None,
        }
    }

    /// The listing of `dir` for readdir, if fresh and unchanged since.
    pub fn snapshot(&self, dir: &str) -> Option<Listing> {
        self.with_dir(dir, |d| d.snapshot.clone()).flatten()
    }

    /// Whether `name` is in `dir`: `None` when the directory's names are not known.
    pub fn contains(&self, dir: &str, name: &str) -> Option<bool> {
        self.with_dir(dir, |d| d.names.contains(name))
    }

    /// Whether `name` is known not to be in `dir`: the directory was made by this mount,
    /// or listed less than `negative_ttl` ago.
    pub fn absent(&self, dir: &str, name: &str, negative_ttl: Duration) -> bool {
        self.with_dir(dir, |d| {
            !d.names.contains(name) && (d.made_here || d.at.elapsed() < negative_ttl)
        })
        .unwrap_or(false)
    }

    /// Records a listing of `dir` fetched from `started`, unless this mount changed the
    /// directory since (it would hide or resurrect a name). Returns whether it was kept.
    pub fn put(&self, dir: &str, listing: Listing, started: Instant) -> bool {
        let names = listing.iter().map(|e| e.name.clone()).collect();
        self.insert(dir, names, Some(listing), false, started)
    }

    /// A directory this mount just created: known to be empty.
    pub fn put_empty(&self, dir: &str) {
        let _ = self.insert(dir, HashSet::new(), None, true, Instant::now());
    }

    /// Whether a listing was at least fetched within the TTL (set kept or refused).
    fn fresh(&self, started: Instant) -> bool {
        started.elapsed() < self.ttl
    }

    fn insert(
        &self,
        dir: &str,
        names: HashSet<String>,
        snapshot: Option<Listing>,
        made_here: bool,
        started: Instant,
    ) -> bool {
        if !self.fresh(started) || names.len() > NAMES / 4 {
            return false;
        }
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let inner = &mut *g;
        let key = dir_key(dir);
        let changed_since = inner.changed.peek(key).is_some_and(|t| *t >= started)
            || inner.forgot_changes.is_some_and(|t| t >= started);
        if changed_since {
            return false;
        }
        inner.names += names.len();
        let old = inner.dirs.push(
            key.to_string(),
            Dir {
                names,
                made_here,
                snapshot,
                at: started,
            },
        );
        if let Some((_, d)) = old {
            inner.names -= d.names.len();
        }
        while inner.names > NAMES {
            match inner.dirs.pop_lru() {
                Some((_, d)) => inner.names -= d.names.len(),
                None => break,
            }
        }
        true
    }

    /// This mount added (`present`) or removed a name of `dir`.
    pub fn changed(&self, dir: &str, name: &str, present: bool) {
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        let key = dir_key(dir);
        inner.mark_changed(key);
        if let Some(d) = inner.dirs.get_mut(key) {
            d.snapshot = None;
            let delta = if present {
                d.names.insert(name.to_string())
            } else {
                d.names.remove(name)
            };
            if delta {
                if present {
                    inner.names += 1;
                } else {
                    inner.names -= 1;
                }
            }
        }
    }

    /// An entry of `dir` changed its attributes: the listing (which shows them) is
    /// refetched on next use; the names still hold.
    pub fn touched(&self, dir: &str) {
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        let key = dir_key(dir);
        inner.mark_changed(key);
        if let Some(d) = inner.dirs.peek_mut(key) {
            d.snapshot = None;
        }
    }

    /// Forgets what is known of `dir` alone.
    pub fn forget(&self, dir: &str) {
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        let key = dir_key(dir);
        inner.mark_changed(key);
        if let Some(d) = inner.dirs.pop(key) {
            inner.names -= d.names.len();
        }
    }

    /// Forgets `dir` and every directory below it.
    pub fn forget_tree(&self, dir: &str) {
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        let key = dir_key(dir);
        let prefix = format!("{key}/");
        let stale: Vec<String> = inner
            .dirs
            .iter()
            .filter(|(k, _)| *k == key || k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(d) = inner.dirs.pop(&k) {
                inner.names -= d.names.len();
            }
        }
        inner.mark_changed(key);
    }
}

impl Inner {
    fn mark_changed(&mut self, key: &str) {
        // `push` returns the old value of this key, or the entry it evicted.
        if let Some((evicted, _)) = self.changed.push(key.to_string(), Instant::now()) {
            if evicted != key {
                self.forgot_changes = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> DirEntryOut {
        DirEntryOut {
            name: name.into(),
            kind: fuser::FileType::RegularFile,
            attrs: Default::default(),
        }
    }

    fn listings() -> Listings {
        Listings::new(Duration::from_secs(60))
    }

    #[test]
    fn names_follow_this_mounts_changes() {
        let l = listings();
        assert_eq!(l.contains("/r", "a"), None);
        l.put("/r/", Arc::new(vec![entry("a")]), Instant::now());
        assert_eq!(l.contains("/r", "a"), Some(true));
        assert_eq!(l.contains("/r", "b"), Some(false));
        assert!(l.snapshot("/r").is_some());
        l.changed("/r", "b", true);
        l.changed("/r", "a", false);
        assert_eq!(l.contains("/r", "b"), Some(true));
        assert_eq!(l.contains("/r", "a"), Some(false));
        assert!(l.snapshot("/r").is_none(), "readdir must re-list");
        assert!(
            !l.absent("/r", "c", Duration::ZERO),
            "a listing alone proves no absence"
        );
        assert!(l.absent("/r", "c", Duration::from_secs(5)));
        l.put_empty("/r/new");
        assert_eq!(l.contains("/r/new", "x"), Some(false));
        assert!(
            l.absent("/r/new", "x", Duration::ZERO),
            "made here: nobody else knows it"
        );
        l.forget_tree("/r");
        assert_eq!(l.contains("/r/new", "x"), None);
        assert_eq!(l.contains("/r", "b"), None);
    }

    #[test]
    fn a_listing_fetched_across_a_change_is_refused() {
        let l = listings();
        let started = Instant::now();
        l.changed("/r", "new", true);
        l.put("/r", Arc::new(vec![entry("old")]), started);
        assert_eq!(l.contains("/r", "new"), None);
        l.put("/r", Arc::new(vec![entry("old")]), Instant::now());
        assert_eq!(l.contains("/r", "old"), Some(true));
    }

    #[test]
    fn zero_ttl_knows_nothing() {
        let l = Listings::new(Duration::ZERO);
        l.put_empty("/r");
        assert_eq!(l.contains("/r", "x"), None);
    }
}
