//! Logical file handles that outlive connections.
//!
//! Owns the table from [`FileId`] to the open file's path and mode, and for each the remote
//! handle on the current connection. A handle opened on an older connection is reopened by
//! path (never with O_TRUNC/O_EXCL/O_CREAT again) the first time it is used on a new one.
//! It must never retry requests; it only answers "which remote handle, on this link".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sftp::{Attrs, OpenMode, RemoteHandle, SftpError};

use super::remote::FileId;
use super::supervisor::Link;
use super::writeback::WriteBehind;

pub struct OpenFile {
    path: Mutex<String>,
    /// The mode used to reopen: the original one without create/truncate/exclusive.
    reopen: OpenMode,
    remote: tokio::sync::Mutex<Option<(u64, Arc<RemoteHandle>)>>,
    /// Writes acknowledged but not yet confirmed by the server.
    pub wb: WriteBehind,
}

impl OpenFile {
    pub fn path(&self) -> String {
        self.path.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The remote handle valid on `link`, reopening the file there if needed.
    /// `Ok(None)` means the file is gone from the server.
    pub async fn on(&self, link: &Link) -> Result<Option<Arc<RemoteHandle>>, SftpError> {
        let mut slot = self.remote.lock().await;
        if let Some((generation, h)) = slot.as_ref() {
            if *generation == link.generation {
                return Ok(Some(h.clone()));
            }
        }
        let path = self.path();
        match link.sftp.open(&path, self.reopen, &Attrs::default()).await {
            Ok(h) => {
                tracing::info!(%path, generation = link.generation, "reopened file");
                let h = Arc::new(h);
                *slot = Some((link.generation, h.clone()));
                Ok(Some(h))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the remote handle out, with the generation it belongs to.
    pub async fn take(&self) -> Option<(u64, Arc<RemoteHandle>)> {
        self.remote.lock().await.take()
    }
}

#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
}

impl Handles {
    pub fn insert(&self, path: &str, mode: OpenMode, generation: u64, h: RemoteHandle) -> FileId {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let file = Arc::new(OpenFile {
            path: Mutex::new(path.to_string()),
            reopen: OpenMode {
                create: false,
                truncate: false,
                exclusive: false,
                ..mode
            },
            remote: tokio::sync::Mutex::new(Some((generation, Arc::new(h)))),
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
            remote: tokio::sync::Mutex::new(None),
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
