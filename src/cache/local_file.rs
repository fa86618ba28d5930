//! A file open with write-back on whose contents live in a data file on local disk: a
//! pending file read, or any file written (created or truncated).
//!
//! Owns the open file's data file, size, mode and mtime, and committing it: what was
//! written is made durable and recorded as one upload ([`super::oplog::Op::Put`]) at
//! flush, fsync and close. A data file named by a record is never written again: the next
//! write copies it first. It must never acknowledge a commit before the log is durable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::oplog::Op;
use super::pending::Node;
use super::store::Version;
use super::writeback::{io_err, now_secs, Writeback};
use crate::meta::Attrs;
use crate::session::remote::{Bytes, RemoteError, RemoteResult};

pub struct LocalFile {
    wb: Arc<Writeback>,
    /// Where it goes on the server (follows renames while open).
    path: Mutex<String>,
    st: tokio::sync::Mutex<State>,
}

struct State {
    id: u64,
    file: Arc<File>,
    size: u64,
    perm: u32,
    mtime: u32,
    owner: Option<(u32, u32)>,
    /// The version the server shows (or will, once the log is uploaded) before this
    /// file's next upload: another one found there is a conflict.
    base: Option<Version>,
    /// Changed since the last commit.
    dirty: bool,
    /// The data file is named by a record: copied before the next write.
    sealed: bool,
    /// The last upload recorded for this file.
    last_put: u64,
}

fn now() -> u32 {
    now_secs() as u32
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> RemoteResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RemoteError::Broken(e.to_string()))?
        .map_err(io_err)
}

impl LocalFile {
    /// A new, empty file at `path` (created, or truncated: `base` is what it replaces).
    /// Its data file is made here, synchronously: the pending namespace shows the file
    /// before the caller's next step.
    pub fn create(
        wb: &Arc<Writeback>,
        path: &str,
        perm: u32,
        owner: Option<(u32, u32)>,
        base: Option<Version>,
    ) -> RemoteResult<Self> {
        let (id, file) = wb.new_data().map_err(io_err)?;
        let st = State {
            id,
            file: Arc::new(file),
            size: 0,
            perm,
            mtime: now(),
            owner,
            base,
            dirty: true,
            sealed: false,
            last_put: 0,
        };
        Ok(Self::with(wb, path, st))
    }

    /// A pending file as its node shows it (read from its data file; copied at the
    /// first write).
    pub fn of_node(wb: &Arc<Writeback>, path: &str, node: &Node) -> RemoteResult<Self> {
        let Node::File {
            data,
            size,
            perm,
            mtime,
            owner,
        } = node
        else {
            return Err(RemoteError::refused(libc::EISDIR, "not a file"));
        };
        let file = File::open(wb.data_path(*data)).map_err(io_err)?;
        let st = State {
            id: *data,
            file: Arc::new(file),
            size: *size,
            perm: *perm,
            mtime: *mtime,
            owner: *owner,
            base: Some((*size, *mtime)),
            dirty: false,
            sealed: true,
            last_put: 0,
        };
        Ok(Self::with(wb, path, st))
    }

    fn with(wb: &Arc<Writeback>, path: &str, st: State) -> Self {
        LocalFile {
            wb: wb.clone(),
            path: Mutex::new(path.to_string()),
            st: tokio::sync::Mutex::new(st),
        }
    }

    pub fn path(&self) -> String {
        self.path.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// It was renamed (with what contains it) while open.
    pub fn moved(&self, from: &str, to: &str) {
        if let Ok(mut p) = self.path.lock() {
            if super::pending::within(&p, from) {
                *p = format!("{to}{}", &p[from.len()..]);
            }
        }
    }

    /// The node the pending namespace shows while this file is open and not committed
    /// (None while the file is busy).
    pub fn node_now(&self) -> Option<Node> {
        let st = self.st.try_lock().ok()?;
        Some(Self::node_of(&st))
    }

    fn node_of(st: &State) -> Node {
        Node::File {
            data: st.id,
            size: st.size,
            perm: st.perm,
            mtime: st.mtime,
            owner: st.owner,
        }
    }

    pub async fn attrs(&self) -> Attrs {
        let st = self.st.lock().await;
        Self::node_of(&st).attrs().unwrap_or_default()
    }

    pub async fn read(&self, offset: u64, len: u32) -> RemoteResult<Bytes> {
        let (file, size) = {
            let st = self.st.lock().await;
            (st.file.clone(), st.size)
        };
        let len = (len as u64).min(size.saturating_sub(offset)) as usize;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut data = blocking(move || Writeback::read_at(&file, offset, len)).await?;
        // Past the data file's end (grown by a truncate): zeros.
        data.resize(len, 0);
        Ok(Bytes::from(data))
    }

    /// Copies a sealed data file before it is changed.
    async fn unseal(&self, st: &mut State) -> RemoteResult<()> {
        if !st.sealed {
            return Ok(());
        }
        let (wb, from, len) = (self.wb.clone(), st.file.clone(), st.size);
        let (id, file) = blocking(move || wb.copy_data(&from, len)).await?;
        st.id = id;
        st.file = Arc::new(file);
        st.sealed = false;
        Ok(())
    }

    pub async fn write(&self, offset: u64, data: Bytes, within: Duration) -> RemoteResult<()> {
        let mut st = self.st.lock().await;
        self.unseal(&mut st).await?;
        let end = offset + data.len() as u64;
        if end > st.size {
            self.wb.room(st.id, end - st.size, within).await?;
        }
        let file = st.file.clone();
        blocking(move || file.write_all_at(&data, offset)).await?;
        st.size = st.size.max(end);
        st.mtime = now();
        st.dirty = true;
        Ok(())
    }

    /// A change of size, mode or times through the open file.
    pub async fn set(&self, a: &Attrs, within: Duration) -> RemoteResult<()> {
        let mut st = self.st.lock().await;
        if let Some(size) = a.size {
            self.unseal(&mut st).await?;
            if size > st.size {
                self.wb.room(st.id, size - st.size, within).await?;
            }
            let file = st.file.clone();
            blocking(move || file.set_len(size)).await?;
            st.size = size;
            st.mtime = now();
        }
        if let Some(m) = a.mode {
            st.perm = m & 0o7777;
        }
        if let Some(t) = a.mtime {
            st.mtime = t;
        }
        st.dirty = true;
        Ok(())
    }

    /// Its data file now holds a copy of the server's file, whose mtime was `mtime`:
    /// nothing to upload until it is changed.
    pub async fn copied(&self, mtime: u32) {
        let mut st = self.st.lock().await;
        st.mtime = mtime;
        st.dirty = false;
    }

    /// Whether everything written is committed.
    pub async fn is_clean(&self) -> bool {
        !self.st.lock().await.dirty
    }

    /// Makes what was written durable and records its upload; the upload's sequence
    /// number (that of the last one when nothing changed since).
    pub async fn commit(&self) -> RemoteResult<u64> {
        let mut st = self.st.lock().await;
        if !st.dirty {
            return Ok(st.last_put);
        }
        let (wb, file) = (self.wb.clone(), st.file.clone());
        blocking(move || wb.seal(&file)).await?;
        let op = Op::Put {
            path: self.path(),
            data: st.id,
            size: st.size,
            perm: st.perm,
            mtime: st.mtime,
            base: st.base,
            owner: st.owner,
        };
        let seq = self.wb.change(op, |_| Ok(()))?;
        st.sealed = true;
        st.dirty = false;
        st.base = Some((st.size, st.mtime));
        st.last_put = seq;
        drop(st);
        self.wb.durable(seq).await?;
        Ok(seq)
    }
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        let st = self.st.get_mut();
        if !st.sealed {
            self.wb.discard(st.id);
        }
    }
}
