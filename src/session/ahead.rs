//! Opens ahead: read handles opened in the round trip of a kernel lookup.
//!
//! Owns the spare handles. A lookup that reaches the server sends an OPEN for reading right
//! behind its LSTAT ([`Ahead::offer`]); the kernel's read-only open of that path, which
//! usually follows at once, takes the handle ([`Ahead::take`]) instead of waiting a round
//! trip of its own. Bounded: at most `max` spares at once (0: off), none where the server
//! names a handle limit below [`SMALL_LIMIT`], each closed when unused after [`KEEP`],
//! dropped at once when the lookup found no regular file or its path changes (rename,
//! remove), and never again offered for a path found not to be a file (a FIFO's OPEN waits
//! for a writer and stops an in-order server: see [`Ahead::forget`]). It must never hand a
//! handle to an open that writes, creates or truncates, and never retries anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::meta::{Attrs, OpenMode};
use crate::sftp::RemoteHandle;

use super::supervisor::Link;

/// How long a spare waits for its open: the kernel's open follows its lookup within
/// microseconds; an application that stats before opening takes longer, still far less.
pub const KEEP: Duration = Duration::from_secs(1);

/// A server that names a handle limit below this gets no spares (they would compete with
/// the application's own files and listings).
pub const SMALL_LIMIT: usize = 256;

/// Spares at once unless `open_ahead=` says otherwise.
pub const DEFAULT_MAX: usize = 16;

/// Paths remembered as not regular files, so they are not offered again.
const NOT_FILES: usize = 4096;

/// A spare handle is handed over through this: the link it is valid on, and the handle.
type Handover = oneshot::Sender<(Arc<Link>, RemoteHandle)>;

struct Spare {
    id: u64,
    /// Dropping it tells the spare's task that nobody wants it: it closes the handle.
    claim: oneshot::Sender<Handover>,
    /// Becomes true when the server answered the OPEN.
    answered: watch::Receiver<bool>,
}

pub struct Ahead {
    max: AtomicUsize,
    spares: Mutex<HashMap<String, Spare>>,
    not_files: Mutex<lru::LruCache<String, ()>>,
    next: AtomicU64,
    /// Spares an open took.
    pub used: AtomicU64,
    /// Spares closed unused.
    pub unused: AtomicU64,
}

impl Default for Ahead {
    fn default() -> Self {
        Ahead {
            max: AtomicUsize::new(DEFAULT_MAX),
            spares: Mutex::default(),
            not_files: Mutex::new(crate::bounded::lru(NOT_FILES)),
            next: AtomicU64::new(0),
            used: AtomicU64::new(0),
            unused: AtomicU64::new(0),
        }
    }
}

/// How a spare is opened, and the only open it serves: reading, nothing else.
const READ: OpenMode = OpenMode {
    read: true,
    write: false,
    create: false,
    truncate: false,
    exclusive: false,
};

/// Whether an open in `mode` may take a spare.
pub fn serves(mode: OpenMode) -> bool {
    mode == READ
}

impl Ahead {
    /// At most `max` spares at once; 0 turns opening ahead off.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Spares held right now (open or on their way).
    pub fn held(&self) -> usize {
        self.spares.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Sends an OPEN for reading of `path` on `link` (behind a request just sent there),
    /// unless the bound is reached, one is held for `path` already, the path is known not
    /// to be a file, or the server's handle limit is small.
    pub fn offer(self: &Arc<Self>, link: &Arc<Link>, path: &str) {
        if link.sftp.max_handles.is_some_and(|m| m < SMALL_LIMIT) {
            return;
        }
        if self
            .not_files
            .lock()
            .map_or(true, |mut n| n.get(path).is_some())
        {
            return;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (claim, claimed) = oneshot::channel();
        let (tell, answered) = watch::channel(false);
        {
            let Ok(mut spares) = self.spares.lock() else {
                return;
            };
            if spares.len() >= self.max.load(Ordering::Relaxed) || spares.contains_key(path) {
                return;
            }
            let spare = Spare {
                id,
                claim,
                answered,
            };
            spares.insert(path.to_string(), spare);
        }
        tokio::spawn(
            self.clone()
                .keep(link.clone(), path.to_string(), id, claimed, tell),
        );
    }

    /// A spare's life: open, wait at most [`KEEP`] for a claim, hand over or close.
    async fn keep(
        self: Arc<Self>,
        link: Arc<Link>,
        path: String,
        id: u64,
        claimed: oneshot::Receiver<Handover>,
        answered: watch::Sender<bool>,
    ) {
        let wire = crate::name_bytes::encode(&path);
        let opened = link.sftp.open(&*wire, READ, &Attrs::default()).await;
        answered.send_replace(true);
        let Ok(handle) = opened else {
            // Not there, or not readable: the kernel's own open finds out why.
            self.drop_spare(&path, id);
            return;
        };
        let claim = tokio::time::timeout(KEEP, claimed).await;
        self.drop_spare(&path, id);
        match claim {
            Ok(Ok(to)) => match to.send((link.clone(), handle)) {
                Ok(()) => {
                    self.used.fetch_add(1, Ordering::Relaxed);
                }
                Err((_, handle)) => self.close(&link, handle),
            },
            _ => self.close(&link, handle),
        }
    }

    fn close(&self, link: &Link, handle: RemoteHandle) {
        self.unused.fetch_add(1, Ordering::Relaxed);
        if !link.is_dead() {
            link.sftp.close_nowait(&handle);
        }
    }

    fn drop_spare(&self, path: &str, id: u64) {
        if let Ok(mut spares) = self.spares.lock() {
            if spares.get(path).is_some_and(|s| s.id == id) {
                spares.remove(path);
            }
        }
    }

    /// The spare handle of `path`, if one is held: waits for its OPEN if still on its way.
    /// None: no spare, or its OPEN failed (the caller opens as usual).
    pub async fn take(&self, path: &str) -> Option<(Arc<Link>, RemoteHandle)> {
        let spare = self.spares.lock().ok()?.remove(path)?;
        let (to, from) = oneshot::channel();
        spare.claim.send(to).ok()?;
        from.await.ok()
    }

    /// The lookup of `path` found no regular file: its spare goes, and none is offered for
    /// it again. Returns what tells when the server answered that spare's OPEN (see
    /// [`answered_within`]), if one was on its way.
    pub fn forget(&self, path: &str) -> Option<watch::Receiver<bool>> {
        if let Ok(mut n) = self.not_files.lock() {
            n.put(path.to_string(), ());
        }
        let spare = self.spares.lock().ok()?.remove(path)?;
        Some(spare.answered)
    }

    /// Drops the spares of `path` and of everything under it (renamed or removed: a
    /// handle opened before would show the old file).
    pub fn changed(&self, path: &str) {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        if let Ok(mut spares) = self.spares.lock() {
            spares.retain(|p, _| p != path && !p.starts_with(&prefix));
        }
        if let Ok(mut n) = self.not_files.lock() {
            n.pop(path);
        }
    }
}

/// Whether the server answered a spare's OPEN within `wait` (its task ending counts).
/// False means the OPEN is stuck in the server, as an OPEN of a FIFO is until a writer
/// comes, and on an in-order server everything behind it on that connection with it.
pub async fn answered_within(mut answered: watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::time::timeout(wait, answered.wait_for(|a| *a))
        .await
        .is_ok()
}
