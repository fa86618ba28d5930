//! Open files that outlive connections.
//!
//! Owns [`OpenFile`], what [`super::Remote::open`] returns: the file's path and mode, its
//! remote handles, one per connection it was used on (with `max_conns`, writes of one file
//! are spread over connections), and its write-behind. A file is opened by path on a
//! connection the first time it is used there (never with O_TRUNC/O_EXCL/O_CREAT again);
//! handles of dead connections are dropped. [`Handles`] only knows the open files weakly,
//! to close idle handles near a server's limit, follow renames and wait for writes: the
//! filesystem's table of kernel handles owns them. It must never retry requests; it only
//! answers "which remote handle, on this link".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::meta::{Attrs, OpenMode};
use crate::sftp::{RemoteHandle, SftpError};

use super::supervisor::Link;
use super::writeback::WriteBehind;

/// Orders uses of remote handles, so the least recently used idle one can be closed.
static USES: AtomicU64 = AtomicU64::new(0);

/// Handles kept free for directory listings (background listings run 16 at once) when a
/// server limits a session's handles.
const LISTING_HANDLES: usize = 24;

/// The file's handle on one SFTP session (channel) of one connection.
struct Slot {
    link: Weak<Link>,
    generation: u64,
    channel: usize,
    handle: Arc<RemoteHandle>,
    /// When it was last handed to a request ([`USES`] order).
    used: AtomicU64,
}

impl Slot {
    fn new(link: &Arc<Link>, channel: usize, handle: Arc<RemoteHandle>) -> Self {
        Slot {
            link: Arc::downgrade(link),
            generation: link.generation,
            channel,
            handle,
            used: AtomicU64::new(USES.fetch_add(1, Ordering::Relaxed)),
        }
    }

    fn on(&self, link: &Link, channel: usize) -> bool {
        self.generation == link.generation && self.channel == channel
    }

    /// No request holds the handle right now: it may be closed and reopened later.
    fn idle(&self) -> bool {
        Arc::strong_count(&self.handle) == 1
    }
}

pub struct OpenFile {
    path: Mutex<String>,
    /// The mode used to reopen: the original one without create/truncate/exclusive.
    reopen: OpenMode,
    remote: tokio::sync::Mutex<Vec<Slot>>,
    /// Writes acknowledged but not yet confirmed by the server.
    pub wb: WriteBehind,
}

impl OpenFile {
    fn new(path: &str, mode: OpenMode, slots: Vec<Slot>) -> Self {
        OpenFile {
            path: Mutex::new(path.to_string()),
            reopen: OpenMode {
                create: false,
                truncate: false,
                exclusive: false,
                ..mode
            },
            remote: tokio::sync::Mutex::new(slots),
            wb: WriteBehind::default(),
        }
    }

    pub fn path(&self) -> String {
        self.path.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The remote handle valid on SFTP session `channel` of `link`, opening the file there
    /// if needed (making room among the open files' handles first, see
    /// [`Handles::make_room`]). `Ok(None)` means the file is gone from the server.
    pub async fn on(
        &self,
        link: &Arc<Link>,
        channel: usize,
        room: &Handles,
    ) -> Result<Option<Arc<RemoteHandle>>, SftpError> {
        let mine = |r: &Slot| r.on(link, channel);
        let reopened = {
            let mut slots = self.remote.lock().await;
            if let Some(r) = slots.iter().find(|r| mine(r)) {
                r.used
                    .store(USES.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                return Ok(Some(r.handle.clone()));
            }
            // Handles of connections that died went with them.
            let before = slots.len();
            slots.retain(|r| r.link.upgrade().is_some_and(|l| !l.is_dead()));
            slots.len() < before
        };
        // Opened without holding the table, so opens on several sessions (the first
        // megabytes of a striped write) go out together.
        let path = self.path();
        let sftp = link.channel(channel);
        let (wire, none) = (crate::name_bytes::encode(&path), Attrs::default());
        let open = || sftp.open(&*wire, self.reopen, &none);
        let handle = match room.open_with_room(link, channel, open).await {
            Ok(h) => Arc::new(h),
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        if reopened {
            tracing::info!(%path, generation = link.generation, "reopened file");
        }
        let mut slots = self.remote.lock().await;
        if let Some(r) = slots.iter().find(|r| mine(r)) {
            // Another request opened it there meanwhile: keep that one.
            sftp.close_nowait(&handle);
            return Ok(Some(r.handle.clone()));
        }
        slots.push(Slot::new(link, channel, handle.clone()));
        Ok(Some(handle))
    }

    /// Closes every remote handle whose connection still lives (answers not awaited).
    pub async fn close_all(&self) {
        self.close_where(|_| true).await
    }

    /// Closes the handles no request holds right now; the file is reopened by path at its
    /// next use (a fresh handle sees the file as it is now).
    pub async fn close_idle(&self) {
        self.close_where(Slot::idle).await
    }

    async fn close_where(&self, pick: impl Fn(&Slot) -> bool) {
        let mut slots = self.remote.lock().await;
        let (gone, keep): (Vec<Slot>, Vec<Slot>) = slots.drain(..).partition(|r| pick(r));
        *slots = keep;
        for r in gone {
            if let Some(l) = r.link.upgrade().filter(|l| !l.is_dead()) {
                l.channel(r.channel).close_nowait(&r.handle);
            }
        }
    }
}

/// The open files of a session, known weakly (their owner is the filesystem's table).
#[derive(Default)]
pub struct Handles {
    files: Mutex<Vec<Weak<OpenFile>>>,
}

impl Handles {
    /// A file just opened on session 0 of `link` as remote handle `h`.
    pub fn insert(
        &self,
        path: &str,
        mode: OpenMode,
        link: &Arc<Link>,
        h: RemoteHandle,
    ) -> Arc<OpenFile> {
        self.add(OpenFile::new(
            path,
            mode,
            vec![Slot::new(link, 0, Arc::new(h))],
        ))
    }

    /// A file a previous daemon opened: no remote handle yet (opened by path at first use).
    pub fn adopt(&self, path: &str, mode: OpenMode) -> Arc<OpenFile> {
        self.add(OpenFile::new(path, mode, Vec::new()))
    }

    fn add(&self, file: OpenFile) -> Arc<OpenFile> {
        let file = Arc::new(file);
        if let Ok(mut files) = self.files.lock() {
            // Files dropped without a close (an open the kernel never heard of) go here.
            files.retain(|f| f.strong_count() > 0);
            files.push(Arc::downgrade(&file));
        }
        file
    }

    /// Forgets `file` (closed).
    pub fn remove(&self, file: &Arc<OpenFile>) {
        if let Ok(mut files) = self.files.lock() {
            let me = Arc::downgrade(file);
            files.retain(|f| f.strong_count() > 0 && !f.ptr_eq(&me));
        }
    }

    /// The open files, while they live.
    fn live(&self) -> Vec<Arc<OpenFile>> {
        self.files
            .lock()
            .map(|f| f.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Keeps open files pointing at their file after a rename of it or of a parent.
    pub fn renamed(&self, from: &str, to: &str) {
        let prefix = format!("{}/", from.trim_end_matches('/'));
        for f in self.live() {
            if let Ok(mut p) = f.path.lock() {
                if *p == from {
                    *p = to.to_string();
                } else if let Some(rest) = p.strip_prefix(&prefix) {
                    *p = format!("{}/{}", to.trim_end_matches('/'), rest);
                }
            }
        }
    }

    /// Open files with writes on their way whose path satisfies `pred`.
    pub fn writing(&self, pred: impl Fn(&str) -> bool) -> Vec<Arc<OpenFile>> {
        let mut files = self.live();
        files.retain(|f| !f.wb.is_idle() && pred(&f.path()));
        files
    }

    pub fn count(&self) -> usize {
        self.files
            .lock()
            .map(|f| f.iter().filter(|f| f.strong_count() > 0).count())
            .unwrap_or(0)
    }

    /// Runs `open` (an OPEN on session `channel` of `link`) so that the server's limit on
    /// open handles never fails an application's open: first, where the server names its
    /// limit, idle handles of other open files are closed (least recently used first) to
    /// stay below it; then, if the server refuses with a generic failure while this
    /// session holds 16 handles or more, idle ones are closed down to half and the open is
    /// tried once more. A closed handle is reopened by path at the file's next use.
    pub async fn open_with_room<F, Fut>(
        &self,
        link: &Link,
        channel: usize,
        open: F,
    ) -> Result<RemoteHandle, SftpError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<RemoteHandle, SftpError>>,
    {
        if let Some(max) = link.channel(channel).max_handles {
            self.make_room(link, channel, |_| {
                max.saturating_sub(LISTING_HANDLES).max(1)
            });
        }
        match open().await {
            Err(SftpError::Status { code, .. })
                if code == crate::sftp::wire::status::FAILURE
                    && self.make_room(
                        link,
                        channel,
                        |held| if held < 16 { held } else { held / 2 },
                    ) > 0 =>
            {
                open().await
            }
            other => other,
        }
    }

    /// Closes idle handles on session `channel` of `link`, least recently used first, until
    /// `keep(held)` remain of the `held` ones open there (busy handles are never closed).
    /// Returns how many were closed.
    fn make_room(&self, link: &Link, channel: usize, keep: impl Fn(usize) -> usize) -> usize {
        let files = self.live();
        let mut held: usize = 0;
        let mut idle = Vec::new();
        for f in &files {
            let Ok(slots) = f.remote.try_lock() else {
                held += 1; // in use right now: counted, not closed
                continue;
            };
            for r in slots.iter().filter(|r| r.on(link, channel)) {
                held += 1;
                if r.idle() {
                    idle.push((r.used.load(Ordering::Relaxed), f.clone()));
                }
            }
        }
        let excess = held.saturating_sub(keep(held));
        if excess == 0 {
            return 0;
        }
        idle.sort_by_key(|(used, _)| *used);
        let mut closed = 0;
        for (_, f) in idle.into_iter().take(excess) {
            let Ok(mut slots) = f.remote.try_lock() else {
                continue;
            };
            if let Some(i) = slots.iter().position(|r| r.on(link, channel) && r.idle()) {
                let r = slots.swap_remove(i);
                link.channel(channel).close_nowait(&r.handle);
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::debug!(
                closed,
                held,
                "closed idle remote handles to stay within the server's limit"
            );
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_moves_open_paths() {
        let h = Handles::default();
        let mk = |p: &str| h.adopt(p, OpenMode::default());
        let (one, two, three) = (mk("/a/b"), mk("/a/bc"), mk("/a/b/c"));
        h.renamed("/a/b", "/x");
        assert_eq!(one.path(), "/x");
        assert_eq!(two.path(), "/a/bc");
        assert_eq!(three.path(), "/x/c");
        drop(two);
        assert_eq!(h.count(), 2, "a dropped file is no longer counted");
        h.remove(&one);
        assert_eq!(h.count(), 1);
    }
}
