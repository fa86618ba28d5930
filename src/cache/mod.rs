//! The local disk cache (`cache=DIR`): file contents kept on local disk, so that media
//! read once are read again at disk speed, after a remount too, and during an outage.
//!
//! [`Cached`] is a [`Remote`] over another [`Remote`] (fs -> cache -> session): the
//! filesystem logic does not know it is there. It owns the decision of what a read may take
//! from the disk: a copy is used only for the version (size and mtime) the server showed
//! for the file within the last [`CHECKED`] (a lookup's answer), or that it shows when the
//! file is opened; while disconnected, the copy there is served as it is. Anything this
//! mount writes, truncates, renames or removes drops the copies concerned. With the cache
//! off it passes every call straight through. Without write-back it must never write to
//! the server itself, nor answer for metadata: attributes and listings come from the layer
//! below. The blocks on disk are [`store`]. With `cache_writeback=on`, changes complete
//! locally and are uploaded behind: [`overlay`] answers and records them ([`writeback`],
//! [`oplog`], [`pending`], [`local_file`]), [`uploader`] sends them.

mod local_file;
pub mod oplog;
mod overlay;
pub mod pending;
mod seen;
pub mod store;
mod uploader;
pub mod writeback;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::session::remote::{
    Attrs, Bytes, Capabilities, DirEntry, Kind, OpenMode, Remote, RemoteError, RemoteResult,
    RenameMode, StatVfs,
};
use local_file::LocalFile;
use store::{Blocks, Staged, Version, BLOCK};
pub use store::{CacheConfig, CacheStats, Store};
pub use writeback::{Writeback, WritebackConfig};

/// How recently the server must have shown a file's version for an open to rely on it
/// without asking again (the kernel's lookup right before an open answers it).
pub const CHECKED: Duration = Duration::from_secs(1);

/// The remote a mount's filesystem runs on: the session, through the cache.
pub type MountRemote = Cached<crate::session::Session>;

/// A [`Remote`] with file contents cached on local disk (or none: a pass-through).
pub struct Cached<R: Remote> {
    inner: Arc<R>,
    store: Option<Arc<Store>>,
    /// What the server showed lately (shared with write-back, which adds what its
    /// uploads left).
    seen: Arc<seen::Seen>,
    /// Write-back (`cache_writeback=on`), if on.
    wb: Option<Arc<Writeback>>,
    /// `timeout=`: how long a change waits for the server (a barrier, fsync=remote) or
    /// for room in the cache.
    timeout: Duration,
    /// The owner the server shows for what it holds (see [`overlay`]).
    owner: Mutex<Option<(u32, u32)>>,
    /// Since when the link is seen down (see [`overlay::GRACE`]).
    offline_since: Mutex<Option<Instant>>,
    /// Open files with write-back data (renames move them).
    locals: Mutex<Vec<Weak<LocalFile>>>,
}

/// An open file: the remote one (opened when first needed, for a read-only open whose
/// copy is cached), and the copy read through.
pub struct CachedFile<F> {
    path: String,
    mode: OpenMode,
    remote: OnceCell<F>,
    blocks: Option<Arc<Blocks>>,
    /// Blocks being fetched, by their offset (see [`Cached::fetch_block`]).
    fetching: Mutex<HashMap<u64, Arc<OnceCell<Bytes>>>>,
    /// An open for writing: the copy made of what is written through it.
    staged: Option<Arc<Staged>>,
    /// With write-back: the file's contents on local disk, written there.
    local: Option<Arc<LocalFile>>,
}

/// Whether a SETSTAT of `attrs` changes what a copy of the file is valid for (its size or
/// mtime; a mode or owner change does not).
fn changes_contents(a: &Attrs) -> bool {
    a.size.is_some() || a.mtime.is_some()
}

impl<F> CachedFile<F> {
    fn new(
        path: &str,
        mode: OpenMode,
        remote: OnceCell<F>,
        blocks: Option<Arc<Blocks>>,
        staged: Option<Arc<Staged>>,
    ) -> Self {
        CachedFile {
            path: path.to_string(),
            mode,
            remote,
            blocks,
            fetching: Mutex::default(),
            staged,
            local: None,
        }
    }
}

fn version_of(a: &Attrs) -> Option<Version> {
    match (a.kind(), a.size, a.mtime) {
        (Kind::File, Some(size), Some(mtime)) => Some((size, mtime)),
        _ => None,
    }
}

/// Runs blocking disk I/O off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl<R: Remote> Cached<R> {
    pub fn new(
        inner: Arc<R>,
        store: Option<Arc<Store>>,
        wb: Option<Arc<Writeback>>,
        timeout: Duration,
    ) -> Self {
        Cached {
            inner,
            store,
            seen: wb
                .as_ref()
                .map_or_else(Default::default, |w| w.seen.clone()),
            wb,
            timeout,
            owner: Mutex::new(None),
            offline_since: Mutex::new(None),
            locals: Mutex::default(),
        }
    }

    /// Starts uploading what write-back recorded (within the runtime).
    pub fn start_uploads(&self) {
        if let Some(wb) = &self.wb {
            tokio::spawn(uploader::run(self.inner.clone(), wb.clone()));
        }
    }

    /// Write-back, when on.
    pub fn writeback(&self) -> Option<&Arc<Writeback>> {
        self.wb.as_ref()
    }

    /// The disk cache, when there is one.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The server showed `attrs` for `path`: a copy of another version is dropped now.
    fn saw(&self, path: &str, attrs: &Attrs) {
        let Some(store) = &self.store else {
            return;
        };
        let v = version_of(attrs);
        if v.is_some() || (self.wb.is_some() && attrs.kind() == Kind::Dir) {
            self.seen.put(path, attrs);
        }
        if let Some(v) = v {
            if store.version(path).is_some_and(|cached| cached != v) {
                store.forget(path);
            }
        }
    }

    fn seen_lately(&self, path: &str) -> Option<Version> {
        self.seen
            .get(path)
            .filter(|(_, at)| at.elapsed() < CHECKED)
            .and_then(|(a, _)| version_of(&a))
    }

    /// The server's attributes of `path` (noted as seen); `ahead` for a kernel lookup,
    /// where the session may open the file ahead of the open that usually follows (not
    /// for a cached file: its reads come from the disk).
    async fn ask_lstat(&self, path: &str, ahead: bool) -> RemoteResult<Attrs> {
        let cached = self
            .store
            .as_ref()
            .is_some_and(|s| s.version(path).is_some());
        let a = if ahead && !cached {
            self.inner.lstat_ahead(path).await?
        } else {
            self.inner.lstat(path).await?
        };
        self.saw(path, &a);
        Ok(a)
    }

    /// This mount changed `path` (or may have): its copy goes, and what was seen of it.
    fn changed(&self, path: &str) {
        if let Some(store) = &self.store {
            store.forget(path);
            self.seen.forget(path);
        }
    }

    fn changed_tree(&self, path: &str) {
        if let Some(store) = &self.store {
            store.forget_tree(path);
            self.seen.forget_tree(path);
        }
    }

    async fn remote<'a>(&self, f: &'a CachedFile<R::File>) -> RemoteResult<&'a R::File> {
        f.remote
            .get_or_try_init(|| self.inner.open(&f.path, f.mode, None))
            .await
    }

    /// A read-only open: through the copy of the version the server shows (asked now
    /// unless seen within [`CHECKED`]); while disconnected, through the copy there is.
    async fn open_read(
        &self,
        store: &Arc<Store>,
        path: &str,
        mode: OpenMode,
    ) -> RemoteResult<CachedFile<R::File>> {
        let cached = store.version(path);
        let remote = OnceCell::new();
        let version = match (cached, self.seen_lately(path)) {
            (Some(v), _) if !self.inner.is_connected() => Some(v),
            (Some(_), Some(seen)) => Some(seen),
            (Some(_), None) => {
                let a = self.inner.lstat(path).await?;
                self.saw(path, &a);
                version_of(&a)
            }
            (None, seen) => {
                // Opened now (its errors are the open's), with the version beside it.
                let (f, a) = match seen {
                    Some(v) => (self.inner.open(path, mode, None).await?, Some(v)),
                    None => {
                        let (f, a) =
                            tokio::join!(self.inner.open(path, mode, None), self.inner.lstat(path));
                        (f?, a.ok().as_ref().and_then(version_of))
                    }
                };
                let _ = remote.set(f);
                a
            }
        };
        let blocks = match version {
            Some(v) => {
                let (store, p) = (store.clone(), path.to_string());
                blocking(move || store.attach(&p, v))
                    .await
                    .flatten()
                    .map(Arc::new)
            }
            None => None,
        };
        Ok(CachedFile::new(path, mode, remote, blocks, None))
    }

    /// Opens the server's file at `path`: a plain read through the copy on disk, else
    /// the server's handle (what is written through it copied as it goes).
    async fn open_server(
        &self,
        path: &str,
        mode: OpenMode,
        perm: Option<u32>,
    ) -> RemoteResult<CachedFile<R::File>> {
        let plain_read = mode.read && !mode.write && !mode.create && !mode.truncate;
        match &self.store {
            Some(store) if plain_read => self.open_read(store, path, mode).await,
            _ => {
                if !plain_read {
                    self.changed(path);
                }
                let f = self.inner.open(path, mode, perm).await?;
                // What is written through it is copied, and kept once it is closed.
                let staged = match &self.store {
                    Some(store) if mode.write => {
                        let (store, p) = (store.clone(), path.to_string());
                        blocking(move || store.stage(&p))
                            .await
                            .flatten()
                            .map(Arc::new)
                    }
                    _ => None,
                };
                Ok(CachedFile::new(
                    path,
                    mode,
                    OnceCell::new_with(Some(f)),
                    None,
                    staged,
                ))
            }
        }
    }

    /// Fetches block `[start, end)` from the server and keeps it. Concurrent reads of the
    /// same open file that need the block (the kernel's readahead sends several at once)
    /// share one fetch.
    async fn fetch_block(
        &self,
        f: &CachedFile<R::File>,
        blocks: &Arc<Blocks>,
        start: u64,
        end: u64,
    ) -> RemoteResult<Bytes> {
        let cell = match f.fetching.lock() {
            Ok(mut m) => m.entry(start).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let fetched = cell
            .get_or_try_init(|| async {
                // Kept meanwhile by a fetch that ended after this read looked.
                let b = blocks.clone();
                if let Some(Some(d)) = blocking(move || b.get(start, end)).await {
                    return Ok(Bytes::from(d));
                }
                let file = self.remote(f).await?;
                let size = Some(blocks.version.0);
                let data = self
                    .inner
                    .read(file, start, (end - start) as u32, size)
                    .await?;
                if let Some(store) = &self.store {
                    store.stats.miss_bytes.fetch_add(data.len() as u64, Relaxed);
                }
                if data.len() as u64 == end - start {
                    let (b, d) = (blocks.clone(), data.clone());
                    blocking(move || b.put(start, &d)).await;
                } else {
                    // Short: the file changed on the server since its version was seen.
                    self.changed(&f.path);
                }
                Ok::<_, RemoteError>(data)
            })
            .await
            .cloned();
        if let Ok(mut m) = f.fetching.lock() {
            m.remove(&start);
        }
        fetched
    }

    /// Reads `[offset, offset + len)` through the copy: cached blocks from the disk, the
    /// others from the server in one go (then kept).
    async fn read_through(
        &self,
        f: &CachedFile<R::File>,
        blocks: &Arc<Blocks>,
        offset: u64,
        len: u32,
    ) -> RemoteResult<Bytes> {
        let size = blocks.version.0;
        let end = (offset + len as u64).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let mut spans = Vec::new();
        let mut at = offset - offset % BLOCK;
        while at < end {
            spans.push(blocks.block_of(at));
            at += BLOCK;
        }
        let b = blocks.clone();
        let spans2 = spans.clone();
        let found: Vec<Option<Vec<u8>>> =
            blocking(move || spans2.iter().map(|&(s, e)| b.get(s, e)).collect())
                .await
                .unwrap_or_else(|| vec![None; spans.len()]);
        let missing: Vec<(u64, u64)> = spans
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(s, _)| *s)
            .collect();
        let fetches = missing
            .iter()
            .map(|&(s, e)| self.fetch_block(f, blocks, s, e));
        let fetched = futures::future::try_join_all(fetches).await?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut fetched = fetched.into_iter();
        for ((s, e), got) in spans.iter().zip(found) {
            let data = match got {
                Some(d) => Bytes::from(d),
                None => fetched.next().unwrap_or_default(),
            };
            let lo = offset.saturating_sub(*s) as usize;
            let hi = ((end.min(*e) - s) as usize).min(data.len());
            if lo < hi {
                out.extend_from_slice(&data[lo..hi]);
            }
            if (data.len() as u64) < e - s {
                break; // the file ends sooner than the copy's version said
            }
        }
        Ok(Bytes::from(out))
    }
}

impl<R: Remote> Remote for Cached<R> {
    type File = CachedFile<R::File>;

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn lstat(&self, path: &str) -> RemoteResult<Attrs> {
        match &self.wb {
            Some(wb) => self.wb_lstat(wb, path, false).await,
            None => self.ask_lstat(path, false).await,
        }
    }

    async fn lstat_after(&self, path: &str, after: &str) -> RemoteResult<Attrs> {
        if let Some(wb) = &self.wb {
            if !wb.untouched(path) {
                return self.wb_lstat(wb, path, false).await;
            }
            if !wb.untouched(after) {
                // The server does not show the pending change yet: nothing to ask it.
                return Err(RemoteError::Broken("not on the server yet".into()));
            }
        }
        self.inner.lstat_after(path, after).await
    }

    async fn lstat_ahead(&self, path: &str) -> RemoteResult<Attrs> {
        match &self.wb {
            Some(wb) => self.wb_lstat(wb, path, true).await,
            None => self.ask_lstat(path, true).await,
        }
    }

    async fn stat(&self, path: &str) -> RemoteResult<Attrs> {
        if let Some(wb) = &self.wb {
            if !wb.untouched(path) {
                return self.wb_lstat(wb, path, false).await;
            }
        }
        self.inner.stat(path).await
    }

    async fn setstat(&self, path: &str, attrs: &Attrs) -> RemoteResult<()> {
        if let Some(wb) = &self.wb {
            return self.wb_setstat(wb, path, attrs).await;
        }
        if changes_contents(attrs) {
            self.changed(path);
        }
        self.inner.setstat(path, attrs).await
    }

    async fn read_dir(
        &self,
        path: &str,
        max: usize,
        dir_size: Option<u64>,
    ) -> RemoteResult<Option<Vec<DirEntry>>> {
        if let Some(wb) = &self.wb {
            return self.wb_read_dir(wb, path, max, dir_size).await;
        }
        let listed = self.inner.read_dir(path, max, dir_size).await?;
        if let (Some(entries), Some(_)) = (&listed, &self.store) {
            let dir = path.trim_end_matches('/');
            for e in entries {
                self.saw(&format!("{dir}/{}", e.name), &e.attrs);
            }
        }
        Ok(listed)
    }

    async fn readlink(&self, path: &str) -> RemoteResult<String> {
        if let Some(wb) = &self.wb {
            return self.inner.readlink(&wb.server_path(path)).await;
        }
        self.inner.readlink(path).await
    }

    async fn realpath(&self, path: &str) -> RemoteResult<String> {
        self.inner.realpath(path).await
    }

    async fn mkdir(&self, path: &str, perm: u32) -> RemoteResult<()> {
        if let Some(wb) = &self.wb {
            return self.wb_mkdir(wb, path, perm).await;
        }
        self.inner.mkdir(path, perm).await
    }

    async fn rmdir(&self, path: &str) -> RemoteResult<()> {
        if let Some(wb) = &self.wb {
            return self.wb_rmdir(wb, path).await;
        }
        self.inner.rmdir(path).await
    }

    async fn remove(&self, path: &str) -> RemoteResult<()> {
        if let Some(wb) = &self.wb {
            return self.wb_remove(wb, path).await;
        }
        self.changed(path);
        self.inner.remove(path).await
    }

    async fn rename(
        &self,
        from: &str,
        to: &str,
        mode: RenameMode,
        links: bool,
    ) -> RemoteResult<()> {
        if let Some(wb) = &self.wb {
            return self.wb_rename(wb, from, to, mode, links).await;
        }
        self.changed_tree(from);
        self.changed_tree(to);
        self.inner.rename(from, to, mode, links).await
    }

    async fn symlink(&self, target: &str, link: &str) -> RemoteResult<()> {
        self.barrier().await?;
        self.inner.symlink(target, link).await
    }

    async fn hardlink(&self, from: &str, to: &str) -> RemoteResult<()> {
        self.barrier().await?;
        self.inner.hardlink(from, to).await
    }

    async fn statvfs(&self, path: &str) -> RemoteResult<StatVfs> {
        self.inner.statvfs(path).await
    }

    async fn open(
        &self,
        path: &str,
        mode: OpenMode,
        perm: Option<u32>,
    ) -> RemoteResult<Self::File> {
        match &self.wb {
            Some(wb) => match self.wb_open(wb, path, mode, perm).await? {
                overlay::Opened::Local(f) => Ok(f),
                overlay::Opened::Server(at) => self.open_server(&at, mode, perm).await,
            },
            None => self.open_server(path, mode, perm).await,
        }
    }

    fn adopt(&self, path: &str, mode: OpenMode) -> Self::File {
        if let Some(f) = self
            .wb
            .as_ref()
            .and_then(|wb| self.wb_adopt(wb, path, mode))
        {
            return f;
        }
        let path = match &self.wb {
            Some(wb) => wb.server_path(path),
            None => path.to_string(),
        };
        if mode.write {
            self.changed(&path);
        }
        let remote = OnceCell::new_with(Some(self.inner.adopt(&path, mode)));
        CachedFile::new(&path, mode, remote, None, None)
    }

    async fn read(
        &self,
        f: &Self::File,
        offset: u64,
        len: u32,
        size: Option<u64>,
    ) -> RemoteResult<Bytes> {
        if let Some(l) = &f.local {
            return l.read(offset, len).await;
        }
        match &f.blocks {
            Some(b) => self.read_through(f, b, offset, len).await,
            None => {
                let file = self.remote(f).await?;
                self.inner.read(file, offset, len, size).await
            }
        }
    }

    async fn write(&self, f: &Self::File, offset: u64, data: Bytes) -> RemoteResult<()> {
        if let Some(l) = &f.local {
            return l.write(offset, data, self.timeout).await;
        }
        let file = self.remote(f).await?;
        let copy = f.staged.as_ref().map(|s| (s.clone(), data.clone()));
        let written = self.inner.write(file, offset, data).await;
        if let Some((staged, data)) = copy {
            if written.is_err() {
                staged.fail();
            } else {
                staged.begin(offset, data.len());
                tokio::task::spawn_blocking(move || staged.write(offset, &data));
            }
        }
        written
    }

    async fn confirmed(&self, f: &Self::File) -> bool {
        if let Some(l) = &f.local {
            // Committed at flush, fsync and close (until then a crash loses it).
            return l.is_clean().await;
        }
        match f.remote.get() {
            Some(file) => self.inner.confirmed(file).await,
            None => true,
        }
    }

    async fn flush(&self, f: &Self::File) -> RemoteResult<()> {
        if let Some(l) = &f.local {
            return l.commit().await.map(|_| ());
        }
        match f.remote.get() {
            Some(file) => self.inner.flush(file).await,
            None => Ok(()),
        }
    }

    async fn fstat(&self, f: &Self::File) -> RemoteResult<Attrs> {
        if let Some(l) = &f.local {
            return Ok(l.attrs().await);
        }
        let file = self.remote(f).await?;
        self.inner.fstat(file).await
    }

    async fn fsetstat(&self, f: &Self::File, attrs: &Attrs) -> RemoteResult<()> {
        if let Some(l) = &f.local {
            return l.set(attrs, self.timeout).await;
        }
        if changes_contents(attrs) {
            self.changed(&f.path);
        }
        let file = self.remote(f).await?;
        self.inner.fsetstat(file, attrs).await
    }

    async fn fsync(&self, f: &Self::File) -> RemoteResult<()> {
        if let (Some(l), Some(wb)) = (&f.local, &self.wb) {
            return self.wb_fsync(wb, l).await;
        }
        match f.remote.get() {
            Some(file) => self.inner.fsync(file).await,
            None => Ok(()),
        }
    }

    async fn sync_all(&self) -> RemoteResult<()> {
        match &self.wb {
            Some(wb) if wb.cfg.fsync_remote => self.barrier().await.map_err(|_| {
                RemoteError::refused(
                    libc::EIO,
                    "fsync=remote: the server has not confirmed the pending changes within timeout=",
                )
            }),
            _ => Ok(()),
        }
    }

    async fn close(&self, f: &Self::File) -> RemoteResult<()> {
        if let Some(l) = &f.local {
            return l.commit().await.map(|_| ());
        }
        let Some(file) = f.remote.get() else {
            return Ok(());
        };
        let Some(staged) = &f.staged else {
            return self.inner.close(file).await;
        };
        // The file's version once every write is confirmed, asked in the close's round
        // trip (before it, on a server that runs requests concurrently: a CLOSE answered
        // first would free the handle): the copy of what was written is kept as that
        // version.
        let (seen, closed) = if self.inner.capabilities().in_order {
            tokio::join!(self.inner.fstat(file), self.inner.close(file))
        } else {
            (self.inner.fstat(file).await, self.inner.close(file).await)
        };
        match (&closed, seen.as_ref().ok().and_then(version_of)) {
            (Ok(()), Some(v)) => {
                let staged = staged.clone();
                blocking(move || staged.commit(v)).await;
            }
            _ => staged.fail(),
        }
        closed
    }
}
