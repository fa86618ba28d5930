//! What this mount knows about whole directories: their listing and the names in them.
//!
//! Owns, per remote directory, the set of names it holds (from a listing, or empty for a
//! directory this mount just made) kept exact by this mount's own changes, the attributes
//! the listing showed for each name (until this mount changes that name: the only copy of
//! listed attributes, so a listing of 10,000 entries is kept once), and the last listing
//! as handed to readdir. A name absent from the set of a directory this mount made
//! does not exist: lookups of new names there (every mkdir -p, every upload into a new
//! directory) cost no round trip. In a listed directory, absence is believed only as long
//! as negative entries are (another client may have added the name since). Changes this
//! mount makes while a listing is being fetched are logged and applied to it when it
//! arrives, so a listing never hides or resurrects a name. Memory is bounded by a total
//! name count. It must never answer past its TTL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use fuser::FileType;

use crate::session::Attrs;

/// One listed name.
#[derive(Debug, Clone)]
pub struct DirEntryOut {
    pub name: String,
    pub kind: FileType,
    pub attrs: Attrs,
}

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
    /// Each name, with its attributes as listed (None once this mount changed it).
    names: HashMap<String, Option<Attrs>>,
    /// Made by this mount (empty then): nobody else knows the directory yet.
    made_here: bool,
    /// The listing readdir serves; dropped when an entry changes (re-listed on next use).
    snapshot: Option<Listing>,
    at: Instant,
}

/// A change this mount made to a directory while a listing of it was on its way.
enum Change {
    Added(String),
    Removed(String),
    /// Attributes changed: the listing's copy of them is stale.
    AttrsChanged(String),
    /// The directory itself went or moved: the listing is worthless.
    Gone,
}

#[derive(Default)]
struct Fetching {
    /// Listings of this directory on their way.
    users: usize,
    log: Vec<Change>,
}

struct Inner {
    dirs: LruCache<String, Dir>,
    names: usize,
    fetching: HashMap<String, Fetching>,
}

impl Inner {
    fn log(&mut self, key: &str, change: impl FnOnce() -> Change) {
        if let Some(f) = self.fetching.get_mut(key) {
            f.log.push(change());
        }
    }

    fn pop(&mut self, key: &str) {
        if let Some(d) = self.dirs.pop(key) {
            self.names -= d.names.len();
        }
    }
}

pub struct Listings {
    inner: Mutex<Inner>,
    ttl: Duration,
}

/// A listing on its way; hand it to [`Listings::put`] (dropping it gives the slot up).
pub struct Fetch<'a> {
    listings: &'a Listings,
    dir: String,
    from: usize,
    started: Instant,
}

impl Fetch<'_> {
    /// The directory being listed (as a key: no trailing slash).
    pub fn dir(&self) -> &str {
        &self.dir
    }
}

impl Drop for Fetch<'_> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.listings.inner.lock() {
            if let Some(f) = g.fetching.get_mut(&self.dir) {
                f.users -= 1;
                if f.users == 0 {
                    g.fetching.remove(&self.dir);
                }
            }
        }
    }
}

impl Listings {
    pub fn new(ttl: Duration) -> Self {
        Listings {
            inner: Mutex::new(Inner {
                dirs: crate::bounded::lru(DIRS),
                names: 0,
                fetching: HashMap::new(),
            }),
            ttl,
        }
    }

    /// Runs `f` on the fresh record of `dir`, if any. A stale one stays (until replaced
    /// or pushed out by the bounds) for what an outage is served from ([`Listings::last_attrs`]).
    fn with_dir<T>(&self, dir: &str, f: impl FnOnce(&mut Dir) -> T) -> Option<T> {
        let mut g = self.inner.lock().ok()?;
        g.dirs
            .get_mut(dir_key(dir))
            .filter(|d| d.at.elapsed() < self.ttl)
            .map(f)
    }

    /// The listing of `dir` for readdir, if fresh and unchanged since.
    pub fn snapshot(&self, dir: &str) -> Option<Listing> {
        self.with_dir(dir, |d| d.snapshot.clone()).flatten()
    }

    /// Whether `name` is in `dir`: `None` when the directory's names are not known.
    pub fn contains(&self, dir: &str, name: &str) -> Option<bool> {
        self.with_dir(dir, |d| d.names.contains_key(name))
    }

    /// Whether `name` is known not to be in `dir`: the directory was made by this mount,
    /// or listed less than `negative_ttl` ago.
    pub fn absent(&self, dir: &str, name: &str, negative_ttl: Duration) -> bool {
        self.with_dir(dir, |d| {
            !d.names.contains_key(name) && (d.made_here || d.at.elapsed() < negative_ttl)
        })
        .unwrap_or(false)
    }

    /// Announces a listing of `dir` about to be fetched: changes from now on are logged.
    pub fn begin(&self, dir: &str) -> Fetch<'_> {
        let key = dir_key(dir).to_string();
        let from = match self.inner.lock() {
            Ok(mut g) => {
                let f = g.fetching.entry(key.clone()).or_default();
                f.users += 1;
                f.log.len()
            }
            Err(_) => 0,
        };
        Fetch {
            listings: self,
            dir: key,
            from,
            started: Instant::now(),
        }
    }

    /// Records a fetched listing with the changes made since it was begun applied. Returns
    /// the names whose listed attributes are stale (changed meanwhile), or `None` when the
    /// listing was not kept.
    pub fn put(&self, fetch: Fetch<'_>, listing: Listing) -> Option<HashSet<String>> {
        if fetch.started.elapsed() >= self.ttl {
            return None;
        }
        let mut g = self.inner.lock().ok()?;
        let inner = &mut *g;
        let log = inner.fetching.get(&fetch.dir).map(|f| &f.log[fetch.from..]);
        let mut names: HashMap<String, Option<Attrs>> = listing
            .iter()
            .map(|e| (e.name.clone(), Some(e.attrs.clone())))
            .collect();
        let mut stale = HashSet::new();
        for change in log.into_iter().flatten() {
            match change {
                Change::Added(n) => {
                    names.insert(n.clone(), None);
                    stale.insert(n.clone());
                }
                Change::Removed(n) => {
                    names.remove(n);
                    stale.insert(n.clone());
                }
                Change::AttrsChanged(n) => {
                    if let Some(a) = names.get_mut(n) {
                        *a = None;
                    }
                    stale.insert(n.clone());
                }
                Change::Gone => return None,
            }
        }
        let snapshot = stale.is_empty().then_some(listing);
        let dir = Dir {
            names,
            made_here: false,
            snapshot,
            at: fetch.started,
        };
        insert(inner, &fetch.dir, dir).then_some(stale)
    }

    /// A directory this mount just created: known to be empty.
    pub fn put_empty(&self, dir: &str) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            let dir_rec = Dir {
                names: HashMap::new(),
                made_here: true,
                snapshot: None,
                at: Instant::now(),
            };
            insert(&mut g, dir_key(dir), dir_rec);
        }
    }

    /// This mount added (`present`) or removed a name of `dir`.
    pub fn changed(&self, dir: &str, name: &str, present: bool) {
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        let key = dir_key(dir);
        inner.log(key, || {
            if present {
                Change::Added(name.to_string())
            } else {
                Change::Removed(name.to_string())
            }
        });
        if let Some(d) = inner.dirs.peek_mut(key) {
            d.snapshot = None;
            let delta = if present {
                d.names.insert(name.to_string(), None).is_none()
            } else {
                d.names.remove(name).is_some()
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
    pub fn attrs_changed(&self, dir: &str, name: &str) {
        let Ok(mut g) = self.inner.lock() else { return };
        let key = dir_key(dir);
        g.log(key, || Change::AttrsChanged(name.to_string()));
        if let Some(d) = g.dirs.peek_mut(key) {
            d.snapshot = None;
            if let Some(a) = d.names.get_mut(name) {
                *a = None;
            }
        }
    }

    /// The attributes listed for `name` in `dir`, if the listing is younger than `ttl`
    /// and this mount did not change the name since.
    pub fn attrs(&self, dir: &str, name: &str, ttl: Duration) -> Option<Attrs> {
        self.with_dir(dir, |d| {
            (d.at.elapsed() < ttl)
                .then(|| d.names.get(name).cloned().flatten())
                .flatten()
        })
        .flatten()
    }

    /// [`Listings::attrs`] however old the listing (what an outage is served from).
    pub fn last_attrs(&self, dir: &str, name: &str) -> Option<Attrs> {
        let g = self.inner.lock().ok()?;
        g.dirs
            .peek(dir_key(dir))?
            .names
            .get(name)
            .cloned()
            .flatten()
    }

    /// The names last listed in `dir`, however old the listing, with this mount's changes
    /// since (what an outage is served from).
    pub fn last_names(&self, dir: &str) -> Option<Vec<String>> {
        let g = self.inner.lock().ok()?;
        Some(g.dirs.peek(dir_key(dir))?.names.keys().cloned().collect())
    }

    /// The listed attributes of `name` in `dir` are stale (its contents changed), though
    /// the listing readdir serves may stand.
    pub fn forget_attrs(&self, dir: &str, name: &str) {
        let Ok(mut g) = self.inner.lock() else { return };
        let key = dir_key(dir);
        g.log(key, || Change::AttrsChanged(name.to_string()));
        if let Some(a) = g.dirs.peek_mut(key).and_then(|d| d.names.get_mut(name)) {
            *a = None;
        }
    }

    /// Forgets what is known of `dir` alone.
    pub fn forget(&self, dir: &str) {
        let Ok(mut g) = self.inner.lock() else { return };
        let key = dir_key(dir);
        g.log(key, || Change::Gone);
        g.pop(key);
    }

    /// Forgets `dir` and every directory below it.
    pub fn forget_tree(&self, dir: &str) {
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        let key = dir_key(dir);
        let prefix = format!("{key}/");
        let below = |k: &str| k == key || k.starts_with(&prefix);
        for f in inner
            .fetching
            .iter_mut()
            .filter_map(|(k, f)| below(k).then_some(f))
        {
            f.log.push(Change::Gone);
        }
        let stale: Vec<String> = inner
            .dirs
            .iter()
            .filter(|(k, _)| below(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            inner.pop(&k);
        }
    }
}

/// Keeps `dir` under `key`, evicting the least used directories beyond the name budget.
fn insert(inner: &mut Inner, key: &str, dir: Dir) -> bool {
    if dir.names.len() > NAMES / 4 {
        return false;
    }
    inner.names += dir.names.len();
    if let Some((_, old)) = inner.dirs.push(key.to_string(), dir) {
        inner.names -= old.names.len();
    }
    while inner.names > NAMES {
        match inner.dirs.pop_lru() {
            Some((_, d)) => inner.names -= d.names.len(),
            None => break,
        }
    }
    true
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

    fn put(l: &Listings, dir: &str, names: &[&str]) -> Option<HashSet<String>> {
        let f = l.begin(dir);
        l.put(f, Arc::new(names.iter().map(|n| entry(n)).collect()))
    }

    #[test]
    fn names_follow_this_mounts_changes() {
        let l = listings();
        assert_eq!(l.contains("/r", "a"), None);
        put(&l, "/r/", &["a"]).unwrap();
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
    fn changes_during_a_fetch_are_applied_to_it() {
        let l = listings();
        let f = l.begin("/r");
        l.changed("/r", "new", true);
        l.changed("/r", "old", false);
        l.attrs_changed("/r", "kept");
        // The server's answer may predate or include the changes: either way they hold.
        let listed = ["old", "kept", "other"].iter().map(|n| entry(n)).collect();
        let stale = l.put(f, Arc::new(listed)).unwrap();
        assert_eq!(l.contains("/r", "new"), Some(true));
        assert_eq!(l.contains("/r", "old"), Some(false));
        assert_eq!(l.contains("/r", "other"), Some(true));
        assert!(stale.contains("kept") && stale.contains("new") && !stale.contains("other"));
        assert!(
            l.snapshot("/r").is_none(),
            "the listing itself is not served"
        );
        // A directory removed or renamed meanwhile: nothing is kept.
        let f = l.begin("/r/sub");
        l.forget_tree("/r");
        assert!(l.put(f, Arc::new(Vec::new())).is_none());
        assert!(l.inner.lock().unwrap().fetching.is_empty(), "log released");
    }

    #[test]
    fn zero_ttl_knows_nothing() {
        let l = Listings::new(Duration::ZERO);
        l.put_empty("/r");
        assert!(put(&l, "/q", &[]).is_none());
        assert_eq!(l.contains("/r", "x"), None);
    }
}
