//! The cache directory on local disk: file contents by remote path, in sparse data files
//! with a small metadata file each, and the index of them in memory.
//!
//! Owns the directory's layout, its lock (one daemon per directory at a time), its size
//! bound (least recently used files go first, never one open) and what survives a
//! restart: a file's metadata (remote path, and the size and mtime its contents are of) is
//! written whole before any of its data, and a block counts as cached only where the data
//! file holds data over all of it (`SEEK_HOLE`), so a crash in the middle of a write leaves
//! a miss, never wrong bytes. It does blocking file I/O: callers run it off the runtime's
//! workers. It must never serve a block for another version than the one it was asked for.

use std::collections::HashMap;

use lru::LruCache;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes per cached block: what a miss fetches at once, and the unit of "cached".
pub const BLOCK: u64 = 256 << 10;

/// What makes a cached copy valid: the server's size and mtime of the file it was read from.
pub type Version = (u64, u32);

/// `cache=`, `cache_size=`, `cache_allow_tmpfs` as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// The most bytes of disk the cached data may take.
    pub size: u64,
    pub allow_tmpfs: bool,
}

/// Counters the status report reads.
#[derive(Default)]
pub struct CacheStats {
    pub used_bytes: AtomicU64,
    pub hit_bytes: AtomicU64,
    pub miss_bytes: AtomicU64,
    pub evictions: AtomicU64,
    pub write_errors: AtomicU64,
}

struct Entry {
    id: u64,
    /// The clock when this copy was made: a reader of an earlier copy of the same path
    /// (forgotten since, its files gone) does not count against this one.
    born: u64,
    /// None while this mount writes the file (see [`Staged`]): not served.
    version: Option<Version>,
    /// Disk bytes its data takes (blocks written, in 4 KiB units).
    bytes: u64,
    /// Open files reading through it: it is not evicted meanwhile.
    open: usize,
}

struct Index {
    /// Most recently used first.
    by_path: LruCache<String, Entry>,
    by_id: HashMap<u64, String>,
    clock: u64,
}

pub struct Store {
    files: PathBuf,
    limit: u64,
    index: Mutex<Index>,
    pub stats: CacheStats,
    /// Held for the daemon's life: `flock` on `DIR/lock`.
    _lock: File,
    /// When a write error was last logged (one line a minute at most).
    logged: Mutex<Option<Instant>>,
}

/// One copy in use: its data file, and which copy of the path it is.
struct Held {
    store: Arc<Store>,
    path: String,
    born: u64,
    data: File,
}

/// A cached file opened for reading: its data file and the version it holds.
pub struct Blocks {
    held: Held,
    pub version: Version,
}

/// A file this mount is writing from its start (created or truncated), copied as it is
/// written; it becomes a cached copy when closed with every write confirmed
/// ([`Staged::commit`]), and is dropped otherwise.
pub struct Staged {
    held: Held,
    failed: std::sync::atomic::AtomicBool,
    /// Ranges acknowledged to the application and not yet copied: two that overlap
    /// could be copied in another order than the server applied them.
    copying: Mutex<Vec<(u64, u64)>>,
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const META_HEADER: &str = "mastofs-cache 1";

/// The data and metadata files' stem for `path` (FNV-1a: stable across builds; the
/// metadata names the path, so a collision is a miss, never another file's bytes).
fn id_of(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn disk_bytes(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

impl Store {
    /// Opens (creating it, mode 0700) the cache directory and reads what an earlier daemon
    /// left there. Fails with a line for the operator: tmpfs without `cache_allow_tmpfs`,
    /// a directory another running mount uses, no permission.
    pub fn open(cfg: &CacheConfig) -> Result<Arc<Store>, String> {
        Self::open_waiting(cfg, Duration::from_secs(10))
    }

    /// [`Store::open`], waiting up to `wait` for the directory's lock.
    fn open_waiting(cfg: &CacheConfig, wait: Duration) -> Result<Arc<Store>, String> {
        let dir = &cfg.dir;
        let what = |e: std::io::Error| format!("cache={}: {e}", dir.display());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(what)?;
        let fs = nix::sys::statfs::statfs(dir).map_err(|e| what(e.into()))?;
        let magic = fs.filesystem_type().0 as i64;
        if (magic == TMPFS_MAGIC || magic == RAMFS_MAGIC) && !cfg.allow_tmpfs {
            return Err(format!(
                "cache={} is on tmpfs: the cache would take memory and be gone after a reboot; \
                 give a directory on a local disk (or add cache_allow_tmpfs)",
                dir.display()
            ));
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(what)?;
        lock_within(&lock, wait).map_err(|_| {
            format!(
                "cache={} is in use by another running mount (each mount needs a cache \
                 directory of its own)",
                dir.display()
            )
        })?;
        let files = dir.join("files");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&files)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(what)?;
        let store = Arc::new(Store {
            files,
            limit: cfg.size,
            index: Mutex::new(Index {
                by_path: LruCache::unbounded(),
                by_id: HashMap::new(),
                clock: 0,
            }),
            stats: CacheStats::default(),
            _lock: lock,
            logged: Mutex::new(None),
        });
        store.load().map_err(what)?;
        Ok(store)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn data_path(&self, id: u64) -> PathBuf {
        self.files.join(format!("{id:016x}.data"))
    }

    fn meta_path(&self, id: u64) -> PathBuf {
        self.files.join(format!("{id:016x}.meta"))
    }

    /// Reads the metadata files an earlier daemon left; removes what has none (and
    /// temporary files), then evicts down to the bound.
    fn load(&self) -> std::io::Result<()> {
        let mut found: Vec<(std::time::SystemTime, String, Entry)> = Vec::new();
        let mut data_files = Vec::new();
        for e in std::fs::read_dir(&self.files)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((stem, ext)) = name.split_once('.') else {
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            let id = u64::from_str_radix(stem, 16).ok();
            match (id, ext) {
                (Some(id), "meta") => match read_meta(&e.path()) {
                    Some((version, path)) if id_of(&path) == id => {
                        let used = e.metadata().and_then(|m| m.modified());
                        let bytes = std::fs::metadata(self.data_path(id))
                            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                            .unwrap_or(0);
                        let entry = Entry {
                            id,
                            born: 0,
                            version: Some(version),
                            bytes,
                            open: 0,
                        };
                        found.push((used.unwrap_or(std::time::UNIX_EPOCH), path, entry));
                    }
                    _ => {
                        let _ = std::fs::remove_file(e.path());
                        let _ = std::fs::remove_file(self.data_path(id));
                    }
                },
                (Some(id), "data") => data_files.push((id, e.path())),
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let mut g = self.lock();
        for (_, path, entry) in found {
            self.stats
                .used_bytes
                .fetch_add(entry.bytes, Ordering::Relaxed);
            g.by_id.insert(entry.id, path.clone());
            g.by_path.put(path, entry);
        }
        for (id, p) in data_files {
            if !g.by_id.contains_key(&id) {
                let _ = std::fs::remove_file(p);
            }
        }
        self.evict(&mut g, 0);
        if !g.by_path.is_empty() {
            tracing::info!(
                files = g.by_path.len(),
                bytes = self.stats.used_bytes.load(Ordering::Relaxed),
                "disk cache: kept from before"
            );
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version cached for `path`, if any.
    pub fn version(&self, path: &str) -> Option<Version> {
        self.lock().by_path.peek(path).and_then(|e| e.version)
    }

    /// Opens the cached copy of `path` at `version` for reading through: the one there,
    /// or (when there is none, or of another version) a new empty one. None when the
    /// cache cannot hold it (a disk error, logged).
    pub fn attach(self: &Arc<Self>, path: &str, version: Version) -> Option<Blocks> {
        let id = id_of(path);
        let mut g = self.lock();
        // Another path with the same id: it goes (a miss for it next time).
        if let Some(other) = g.by_id.get(&id).filter(|p| *p != path).cloned() {
            if g.by_path.peek(&other).is_some_and(|e| e.open > 0) {
                return None;
            }
            self.drop_entry(&mut g, &other);
        }
        let opened = match g.by_path.get_mut(path) {
            Some(e) if e.version == Some(version) => {
                e.open += 1;
                let born = e.born;
                // The last use survives a restart as the metadata file's mtime.
                let _ = File::open(self.meta_path(id))
                    .and_then(|m| m.set_modified(std::time::SystemTime::now()));
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.data_path(id))
                    .map(|f| (f, born))
            }
            Some(e) if e.open > 0 => return None,
            _ => {
                self.drop_entry(&mut g, path);
                self.create(&mut g, path, id, version)
            }
        };
        match opened {
            Ok((data, born)) => Some(Blocks {
                held: Held {
                    store: self.clone(),
                    path: path.to_string(),
                    born,
                    data,
                },
                version,
            }),
            Err(e) => {
                self.drop_entry(&mut g, path);
                let _ = std::fs::remove_file(self.meta_path(id));
                let _ = std::fs::remove_file(self.data_path(id));
                drop(g);
                self.write_failed(&e);
                None
            }
        }
    }

    /// A new empty copy: metadata first (written whole, then renamed into place), then a
    /// sparse data file of the file's size.
    fn create(
        &self,
        g: &mut Index,
        path: &str,
        id: u64,
        version: Version,
    ) -> std::io::Result<(File, u64)> {
        let _ = std::fs::remove_file(self.data_path(id));
        self.write_meta(id, path, version)?;
        let data = self.new_copy(g, path, id, Some(version))?;
        data.0.set_len(version.0)?;
        Ok(data)
    }

    /// A fresh empty data file for copy `id` of `path`, and its entry in the index (open
    /// once, by the caller): the file and the entry's birth.
    fn new_copy(
        &self,
        g: &mut Index,
        path: &str,
        id: u64,
        version: Option<Version>,
    ) -> std::io::Result<(File, u64)> {
        let data = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(self.data_path(id))?;
        let born = Self::index(g, path, id, version, 0, 1);
        Ok((data, born))
    }

    /// Writes the metadata file of copy `id` whole: to a temporary name, then renamed.
    /// Not synced: a journaling filesystem (ext4, xfs, btrfs) commits the rename after the
    /// removal of the copy's older data file that precedes it, so a crash can lose a
    /// metadata file (its copy is then removed at the next start) or leave it empty (the
    /// same), never pair it with another version's data. An fsync here cost every cold
    /// open a few milliseconds.
    fn write_meta(&self, id: u64, path: &str, version: Version) -> std::io::Result<()> {
        let tmp = self.files.join(format!("{id:016x}.tmp"));
        let mut m = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        write!(m, "{META_HEADER}\n{} {}\n{path}", version.0, version.1)?;
        std::fs::rename(&tmp, self.meta_path(id))
    }

    /// Forgets `path`'s copy (its files go; an open reader keeps its own descriptor).
    pub fn forget(&self, path: &str) {
        let mut g = self.lock();
        self.drop_entry(&mut g, path);
    }

    /// Forgets the copies of `path` and of everything under it.
    pub fn forget_tree(&self, path: &str) {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut g = self.lock();
        let under: Vec<String> = g
            .by_path
            .iter()
            .map(|(p, _)| p)
            .filter(|p| *p == path || p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in under {
            self.drop_entry(&mut g, &p);
        }
    }

    /// Enters copy `id` of `path` in the index; its birth.
    fn index(
        g: &mut Index,
        path: &str,
        id: u64,
        version: Option<Version>,
        bytes: u64,
        open: usize,
    ) -> u64 {
        g.clock += 1;
        let born = g.clock;
        g.by_id.insert(id, path.to_string());
        let entry = Entry {
            id,
            born,
            version,
            bytes,
            open,
        };
        g.by_path.put(path.to_string(), entry);
        born
    }

    /// Frees file name `id` for a new copy: the copy using it goes, unless it is being
    /// read (false then).
    fn free_id(&self, g: &mut Index, id: u64) -> bool {
        if let Some(other) = g.by_id.get(&id).cloned() {
            if g.by_path.peek(&other).is_some_and(|e| e.open > 0) {
                return false;
            }
            self.drop_entry(g, &other);
        }
        true
    }

    fn drop_entry(&self, g: &mut Index, path: &str) {
        if let Some(e) = g.by_path.pop(path) {
            g.by_id.remove(&e.id);
            self.stats.used_bytes.fetch_sub(e.bytes, Ordering::Relaxed);
            let _ = std::fs::remove_file(self.meta_path(e.id));
            let _ = std::fs::remove_file(self.data_path(e.id));
        }
    }

    /// Evicts least recently used copies no one reads until `more` bytes fit under the
    /// bound. Whether they do.
    fn evict(&self, g: &mut Index, more: u64) -> bool {
        loop {
            let used = self.stats.used_bytes.load(Ordering::Relaxed);
            if used + more <= self.limit {
                return true;
            }
            let oldest = g
                .by_path
                .iter()
                .rev()
                .find(|(_, e)| e.open == 0)
                .map(|(p, _)| p.clone());
            let Some(p) = oldest else {
                return false;
            };
            self.drop_entry(g, &p);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the whole file `src` (write-back data just uploaded, `bytes` of it already
    /// counted against the bound) as the copy of `path` for `version`. False when it
    /// cannot (a reader holds the path's copy, or the disk refuses): `src` stays the
    /// caller's.
    pub fn adopt(&self, path: &str, version: Version, src: &Path, bytes: u64) -> bool {
        let id = id_of(path);
        let mut g = self.lock();
        if !self.free_id(&mut g, id) {
            return false;
        }
        // The data first: a crash before the metadata leaves a data file without one,
        // removed at the next start.
        let moved = std::fs::rename(src, self.data_path(id))
            .and_then(|()| self.write_meta(id, path, version));
        if let Err(e) = moved {
            let _ = std::fs::rename(self.data_path(id), src);
            drop(g);
            self.write_failed(&e);
            return false;
        }
        Self::index(&mut g, path, id, Some(version), bytes, 0);
        true
    }

    /// Counts `bytes` of write-back data against the bound, whether they fit or not
    /// (data an earlier daemon left).
    pub fn take(&self, bytes: u64) {
        self.stats.used_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Makes room for `bytes` of write-back data, evicting copies no one reads; whether
    /// they fit (then they are counted).
    pub fn reserve(&self, bytes: u64) -> bool {
        let mut g = self.lock();
        if !self.evict(&mut g, bytes) {
            return false;
        }
        self.stats.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// Write-back data that is gone (uploaded, or replaced).
    pub fn give_back(&self, bytes: u64) {
        let _ = self
            .stats
            .used_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    fn write_failed(&self, e: &std::io::Error) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *logged = Some(Instant::now());
            tracing::warn!(error = %e, dir = %self.files.display(), "disk cache: cannot write; reading from the server meanwhile");
        }
    }
}

impl Held {
    /// Whether the index's copy of the path is still this one.
    fn current(&self, g: &Index) -> bool {
        g.by_path
            .peek(&self.path)
            .is_some_and(|e| e.born == self.born)
    }

    /// Whether the data file holds data over all of `[start, end)`.
    fn holds(&self, start: u64, end: u64) -> bool {
        // SAFETY: lseek on a descriptor this struct owns.
        let hole = unsafe { libc::lseek(self.data.as_raw_fd(), start as i64, libc::SEEK_HOLE) };
        hole >= 0 && hole as u64 >= end
    }

    /// Writes `data` at `start`, room permitting (least recently used copies are evicted
    /// for it). Whether it was written.
    fn write_at(&self, start: u64, data: &[u8]) -> bool {
        let need = disk_bytes(data.len() as u64);
        {
            let mut g = self.store.lock();
            if !self.current(&g) || !self.store.evict(&mut g, need) {
                return false;
            }
            if let Some(e) = g.by_path.peek_mut(&self.path) {
                e.bytes += need;
            }
            self.store
                .stats
                .used_bytes
                .fetch_add(need, Ordering::Relaxed);
        }
        match self.data.write_all_at(data, start) {
            Ok(()) => true,
            Err(e) => {
                // A partly written block is a hole somewhere: a miss, not wrong bytes.
                self.store.write_failed(&e);
                let _ = nix::fcntl::fallocate(
                    &self.data,
                    nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    start as i64,
                    data.len() as i64,
                );
                false
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut g = self.store.lock();
        if self.current(&g) {
            if let Some(e) = g.by_path.peek_mut(&self.path) {
                e.open = e.open.saturating_sub(1);
                if e.version.is_none() {
                    // A file being written whose copy was not committed.
                    self.store.drop_entry(&mut g, &self.path);
                }
            }
        }
    }
}

impl Blocks {
    /// The block range `[start, end)` of the file that holds `offset`.
    pub fn block_of(&self, offset: u64) -> (u64, u64) {
        let start = offset - offset % BLOCK;
        (start, (start + BLOCK).min(self.version.0))
    }

    /// The bytes of block `[start, end)`, if all of them are cached.
    pub fn get(&self, start: u64, end: u64) -> Option<Vec<u8>> {
        if !self.held.holds(start, end) {
            return None;
        }
        let mut buf = vec![0u8; (end - start) as usize];
        self.held.data.read_exact_at(&mut buf, start).ok()?;
        self.held
            .store
            .stats
            .hit_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Some(buf)
    }

    /// Keeps block `[start, start + data.len())` as fetched from the server, room
    /// permitting.
    pub fn put(&self, start: u64, data: &[u8]) {
        if !self.held.holds(start, start + data.len() as u64) {
            self.held.write_at(start, data);
        }
    }
}

impl Store {
    /// Starts a copy of `path`, which this mount is writing from its start. None when
    /// the cache cannot hold it.
    pub fn stage(self: &Arc<Self>, path: &str) -> Option<Staged> {
        let id = id_of(path);
        let mut g = self.lock();
        if !self.free_id(&mut g, id) {
            return None;
        }
        let _ = std::fs::remove_file(self.meta_path(id));
        let (data, born) = match self.new_copy(&mut g, path, id, None) {
            Ok(d) => d,
            Err(e) => {
                drop(g);
                self.write_failed(&e);
                return None;
            }
        };
        Some(Staged {
            held: Held {
                store: self.clone(),
                path: path.to_string(),
                born,
                data,
            },
            failed: Default::default(),
            copying: Mutex::default(),
        })
    }
}

impl Staged {
    /// Announces a copy of `len` bytes at `offset`, in the order the writes were
    /// acknowledged (before [`Staged::write`] runs on a blocking thread).
    pub fn begin(&self, offset: u64, len: usize) {
        let end = offset + len as u64;
        let mut c = self.copying.lock().unwrap_or_else(|p| p.into_inner());
        if c.iter().any(|&(a, b)| a < end && offset < b) {
            self.failed.store(true, Ordering::Relaxed);
        }
        c.push((offset, end));
    }

    /// Copies what the application wrote at `offset` (the server got it too).
    pub fn write(&self, offset: u64, data: &[u8]) {
        if !self.failed.load(Ordering::Relaxed) && !self.held.write_at(offset, data) {
            self.failed.store(true, Ordering::Relaxed);
        }
        let mut c = self.copying.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset + data.len() as u64;
        if let Some(i) = c.iter().position(|&r| r == (offset, end)) {
            c.swap_remove(i);
        }
    }

    /// A write of the file failed: nothing is kept.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// The file was closed with every write confirmed, and the server now shows
    /// `version`: the copy is kept as the cached copy of that version (its metadata
    /// written whole). Nothing is kept when a copy failed or the path changed since.
    pub fn commit(&self, version: Version) {
        if self.failed.load(Ordering::Relaxed) {
            return; // dropped with the last reference
        }
        let store = &self.held.store;
        let mut g = store.lock();
        if !self.held.current(&g) {
            return;
        }
        let Some(id) = g.by_path.peek(&self.held.path).map(|e| e.id) else {
            return;
        };
        let written = (|| {
            self.held.data.set_len(version.0)?;
            store.write_meta(id, &self.held.path, version)?;
            self.held.data.metadata()
        })();
        match written {
            Ok(md) => {
                if let Some(e) = g.by_path.peek_mut(&self.held.path) {
                    let now = std::os::unix::fs::MetadataExt::blocks(&md) * 512;
                    store.stats.used_bytes.fetch_add(now, Ordering::Relaxed);
                    store.stats.used_bytes.fetch_sub(e.bytes, Ordering::Relaxed);
                    e.bytes = now;
                    e.version = Some(version);
                }
            }
            Err(e) => {
                drop(g);
                store.write_failed(&e);
            }
        }
    }
}

/// `flock(LOCK_EX)` on `f`, retrying for up to `within` (a daemon handing over the mount
/// still holds it for a moment).
fn lock_within(f: &File, within: Duration) -> Result<(), ()> {
    let start = Instant::now();
    loop {
        // SAFETY: flock on a descriptor `f` owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A metadata file's version and path.
fn read_meta(p: &Path) -> Option<(Version, String)> {
    let text = std::fs::read_to_string(p).ok()?;
    let rest = text.strip_prefix(META_HEADER)?.strip_prefix('\n')?;
    let (line, path) = rest.split_once('\n')?;
    let (size, mtime) = line.split_once(' ')?;
    Some(((size.parse().ok()?, mtime.parse().ok()?), path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, size: u64) -> Arc<Store> {
        Store::open(&CacheConfig {
            dir: dir.to_path_buf(),
            size,
            allow_tmpfs: true,
        })
        .unwrap()
    }

    #[test]
    fn blocks_survive_a_restart_for_their_version_only() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1 << 30);
        let b = s.attach("/r/a.jpg", (300_000, 7)).unwrap();
        assert!(b.get(0, BLOCK).is_none());
        b.put(0, &vec![1u8; BLOCK as usize]);
        assert_eq!(b.get(0, BLOCK).unwrap(), vec![1u8; BLOCK as usize]);
        let (s2, e2) = b.block_of(BLOCK + 5);
        assert_eq!((s2, e2), (BLOCK, 300_000));
        assert!(b.get(s2, e2).is_none(), "a block never fetched is a miss");
        drop(b);
        drop(s);
        let s = store(d.path(), 1 << 30);
        assert_eq!(s.version("/r/a.jpg"), Some((300_000, 7)));
        let b = s.attach("/r/a.jpg", (300_000, 7)).unwrap();
        assert!(b.get(0, BLOCK).is_some(), "kept across a restart");
        drop(b);
        let b = s.attach("/r/a.jpg", (300_000, 8)).unwrap();
        assert!(b.get(0, BLOCK).is_none(), "another version starts empty");
    }

    #[test]
    fn the_bound_evicts_the_least_recently_used_unless_open() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 3 * BLOCK);
        let block = vec![2u8; BLOCK as usize];
        for name in ["/a", "/b", "/c"] {
            s.attach(name, (BLOCK, 1)).unwrap().put(0, &block);
        }
        let a = s.attach("/a", (BLOCK, 1)).unwrap(); // /a is now the most recent, and open
        s.attach("/d", (BLOCK, 1)).unwrap().put(0, &block);
        assert!(s.version("/b").is_none(), "the least recently used went");
        assert!(s.version("/a").is_some() && s.version("/c").is_some());
        assert!(s.stats.used_bytes.load(Ordering::Relaxed) <= 3 * BLOCK);
        let files = std::fs::read_dir(d.path().join("files")).unwrap().count();
        assert_eq!(files, 6, "three copies, two files each");
        drop(a);
    }

    #[test]
    fn one_daemon_per_directory() {
        let d = tempfile::tempdir().unwrap();
        let _s = store(d.path(), 1 << 20);
        let cfg = CacheConfig {
            dir: d.path().to_path_buf(),
            size: 1 << 20,
            allow_tmpfs: true,
        };
        // The lock is per open file description: a second open in this process conflicts.
        let e = std::thread::spawn(move || Store::open_waiting(&cfg, Duration::ZERO).err())
            .join()
            .unwrap();
        assert!(e.is_some_and(|e| e.contains("in use by another running mount")));
    }
}
