//! Logical file handles that outlive connections.
//!
//! Owns the table from [`FileId`] to the open file's path and mode, and for each its remote
//! handles, one per connection it was used on (with `max_conns`, writes of one file are
//! spread over connections). A file is opened by path on a connection the first time it is
//! used there (never with O_TRUNC/O_EXCL/O_CREAT again); handles of dead connections are
//! dropped. It must never retry requests; it only answers "which remote handle, on this
//! link".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::meta::{Attrs, OpenMode};
use crate::sftp::{RemoteHandle, SftpError};

use super::remote::FileId;
use super::supervisor::Link;
use super::writeback::WriteBehind;

/// The file's handle on one SFTP session (channel) of one connection.
pub struct Remote {
    link: Weak<Link>,
    generation: u64,
    channel: usize,
    handle: Arc<RemoteHandle>,
}

impl Remote {
    fn new(link: &Arc<Link>, channel: usize, handle: Arc<RemoteHandle>) -> Self {
        Remote {
            link: Arc::downgrade(link),
            generation: link.generation,
            channel,
            handle,
        }
    }
}

pub struct OpenFile {
    path: Mutex<String>,
    /// The mode used to reopen: the original one without create/truncate/exclusive.
    reopen: OpenMode,
    remote: tokio::sync::Mutex<Vec<Remote>>,
    /// Writes acknowledged but not yet confirmed by the server.
    pub wb: WriteBehind,
}

impl OpenFile {
    pub fn path(&self) -> String {
        self.path.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The remote handle valid on SFTP session `channel` of `link`, opening the file there
    /// if needed. `Ok(None)` means the file is gone from the server.
    pub async fn on(
        &self,
        link: &Arc<Link>,
        channel: usize,
    ) -> Result<Option<Arc<RemoteHandle>>, SftpError> {
        let mine = |r: &Remote| r.generation == link.generation && r.channel == channel;
        let reopened = {
            let mut slots = self.remote.lock().await;
            if let Some(r) = slots.iter().find(|r| mine(r)) {
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
        let handle = match sftp
            .open(
                crate::name_bytes::encode(&path),
                self.reopen,
                &Attrs::default(),
            )
            .await
        {
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
        slots.push(Remote::new(link, channel, handle.clone()));
        Ok(Some(handle))
    }

    /// Closes every remote handle whose connection still lives (answers not awaited).
    pub async fn close_all(&self) {
        for r in self.remote.lock().await.drain(..) {
            if let Some(l) = r.link.upgrade().filter(|l| !l.is_dead()) {
                l.channel(r.channel).close_nowait(&r.handle);
            }
        }
    }
}

#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
}

impl Handles {
    pub fn insert(&self, path: &str, mode: OpenMode, link: &Arc<Link>, h: RemoteHandle) -> FileId {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let file = Arc::new(OpenFile {
            path: Mutex::new(path.to_string()),
            reopen: OpenMode {
                create: false,
                truncate: false,
                exclusive: false,
                ..mode
            },
            remote: tokio::sync::Mutex::new(vec![Remote::new(link, 0, Arc::new(h))]),
            wb: WriteBehind::default(),
        });
        if let Ok(mut files) = self.files.lock() {
            files.insert(id, file);
        }
        FileId(id)
    }

    pub fn get(&self, id: FileId) -> Option<Arc<OpenFile>> {
        self.files.lock().ok()?.get(&id.0).cloned()
    }

    pub fn remove(&self, id: FileId) -> Option<Arc<OpenFile>> {
        self.files.lock().ok()?.remove(&id.0)
    }

    /// Keeps open files pointing at their file after a rename of it or of a parent.
    pub fn renamed(&self, from: &str, to: &str) {
        let Ok(files) = self.files.lock() else { return };
        let prefix = format!("{}/", from.trim_end_matches('/'));
        for f in files.values() {
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
        let Ok(files) = self.files.lock() else {
            return Vec::new();
        };
        files
            .values()
            .filter(|f| !f.wb.is_idle() && pred(&f.path()))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.files.lock().map(|f| f.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_moves_open_paths() {
        let h = Handles::default();
        let mk = |p: &str| OpenFile {
            path: Mutex::new(p.into()),
            reopen: OpenMode::default(),
            remote: tokio::sync::Mutex::new(Vec::new()),
            wb: WriteBehind::default(),
        };
        h.files.lock().unwrap().insert(1, Arc::new(mk("/a/b")));
        h.files.lock().unwrap().insert(2, Arc::new(mk("/a/bc")));
        h.files.lock().unwrap().insert(3, Arc::new(mk("/a/b/c")));
        h.renamed("/a/b", "/x");
        assert_eq!(h.get(FileId(1)).unwrap().path(), "/x");
        assert_eq!(h.get(FileId(2)).unwrap().path(), "/a/bc");
        assert_eq!(h.get(FileId(3)).unwrap().path(), "/x/c");
    }
}
