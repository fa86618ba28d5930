//! An in-memory [`Remote`] for testing the filesystem logic without a server or a kernel.
//! It answers like OpenSSH's sftp-server: vague FAILUREs where OpenSSH gives them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::session::remote::{
    Attrs, Bytes, Capabilities, DirEntry, Kind, OpenMode, Remote, RemoteError, RemoteResult,
    RenameMode, StatVfs,
};

#[derive(Clone)]
struct Node {
    attrs: Attrs,
    data: Vec<u8>,
    target: String,
}

#[derive(Default)]
pub struct FakeRemote {
    tree: Mutex<BTreeMap<String, Node>>,
    open: Mutex<BTreeMap<u64, String>>,
    next: AtomicU64,
    /// Names listed in every directory besides the real ones (to test filtering).
    pub junk_names: Mutex<Vec<String>>,
    pub calls: AtomicU64,
    /// Simulates a lost connection: every request fails with EIO.
    pub offline: std::sync::atomic::AtomicBool,
    /// Calls by name (`"fsetstat"`) that fail with the given errno.
    pub fail: Mutex<BTreeMap<&'static str, i32>>,
    /// Calls by name (`"close"`, `"write"`, `"confirmed"`) held until released.
    holds: Mutex<BTreeMap<&'static str, Arc<Hold>>>,
}

/// Holds the calls of one name: each says it arrived, then waits for [`Hold::release`].
pub struct Hold {
    arrived: Semaphore,
    go: Semaphore,
}

impl Hold {
    /// Waits until a held call arrived (one per call).
    pub async fn arrived(&self) {
        if let Ok(p) = self.arrived.acquire().await {
            p.forget();
        }
    }

    /// Lets every held call, and every later one, go on.
    pub fn release(&self) {
        self.go.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

/// An open file of the fake: its number in [`FakeRemote`]'s table.
pub struct FakeFile(u64);

fn no_such() -> RemoteError {
    RemoteError::refused(libc::ENOENT, "No such file")
}

/// OpenSSH's generic FAILURE: EIO, vague.
fn failure() -> RemoteError {
    RemoteError::refused(libc::EIO, "Failure")
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/')
        .map(|(p, _)| if p.is_empty() { "/" } else { p })
        .unwrap_or(".")
}

impl FakeRemote {
    pub fn new() -> Self {
        let f = FakeRemote::default();
        f.put_dir("/r");
        f
    }

    pub fn put_dir(&self, path: &str) {
        self.insert(path, libc::S_IFDIR | 0o755, Vec::new(), "");
    }

    pub fn put_file(&self, path: &str, data: &[u8]) {
        self.insert(path, libc::S_IFREG | 0o644, data.to_vec(), "");
    }

    pub fn put_link(&self, path: &str, target: &str) {
        self.insert(path, libc::S_IFLNK | 0o777, Vec::new(), target);
    }

    fn insert(&self, path: &str, mode: u32, data: Vec<u8>, target: &str) {
        let attrs = Attrs {
            size: Some(data.len() as u64),
            uid: Some(1000),
            gid: Some(1000),
            mode: Some(mode),
            atime: Some(1),
            mtime: Some(2),
        };
        if let Ok(mut t) = self.tree.lock() {
            t.insert(
                path.to_string(),
                Node {
                    attrs,
                    data,
                    target: target.to_string(),
                },
            );
        }
    }

    pub fn data(&self, path: &str) -> Option<Vec<u8>> {
        self.tree.lock().ok()?.get(path).map(|n| n.data.clone())
    }

    /// The mode of `path` (panics if missing: for assertions).
    pub fn lstat_sync(&self, path: &str) -> u32 {
        self.tree
            .lock()
            .ok()
            .and_then(|t| t.get(path).and_then(|n| n.attrs.mode))
            .unwrap_or(0)
    }

    /// Files open right now.
    pub fn open_count(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// Holds every call of `op` from now on (see [`Hold`]).
    pub fn hold(&self, op: &'static str) -> Arc<Hold> {
        let h = Arc::new(Hold {
            arrived: Semaphore::new(0),
            go: Semaphore::new(0),
        });
        if let Ok(mut holds) = self.holds.lock() {
            holds.insert(op, h.clone());
        }
        h
    }

    async fn pause(&self, op: &'static str) {
        let hold = self.holds.lock().ok().and_then(|h| h.get(op).cloned());
        if let Some(h) = hold {
            h.arrived.add_permits(1);
            let _ = h.go.acquire().await;
        }
    }

    /// The failure injected for `op`, if any.
    fn injected(&self, op: &'static str) -> RemoteResult<()> {
        match self.fail.lock().ok().and_then(|f| f.get(op).copied()) {
            Some(errno) => Err(RemoteError::refused(
                errno,
                format!("injected {op} failure"),
            )),
            None => Ok(()),
        }
    }

    pub fn exists(&self, path: &str) -> bool {
        self.tree
            .lock()
            .map(|t| t.contains_key(path))
            .unwrap_or(false)
    }

    fn node(&self, path: &str) -> RemoteResult<Node> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.offline.load(Ordering::Relaxed) {
            return Err(RemoteError::Timeout(1));
        }
        self.tree
            .lock()
            .ok()
            .and_then(|t| t.get(path).cloned())
            .ok_or_else(no_such)
    }

    fn path_of(&self, f: &FakeFile) -> RemoteResult<String> {
        self.open
            .lock()
            .ok()
            .and_then(|o| o.get(&f.0).cloned())
            .ok_or_else(|| RemoteError::Broken("not open".into()))
    }

    /// The names in directory `dir`.
    pub fn names(&self, dir: &str) -> Vec<String> {
        let children = self.children(dir);
        children
            .iter()
            .map(|c| c[dir.len() + 1..].to_string())
            .collect()
    }

    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.tree
            .lock()
            .map(|t| {
                t.keys()
                    .filter(|k| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Remote for FakeRemote {
    type File = FakeFile;

    fn is_connected(&self) -> bool {
        !self.offline.load(Ordering::Relaxed)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hardlink: true,
            fsync: true,
            statvfs: true,
            readlink_resolves: false,
            in_order: true,
        }
    }

    async fn lstat(&self, path: &str) -> RemoteResult<Attrs> {
        Ok(self.node(path)?.attrs)
    }

    async fn lstat_after(&self, path: &str, _after: &str) -> RemoteResult<Attrs> {
        self.lstat(path).await
    }

    async fn stat(&self, path: &str) -> RemoteResult<Attrs> {
        let n = self.node(path)?;
        if n.attrs.kind() == Kind::Symlink {
            let t = if n.target.starts_with('/') {
                n.target.clone()
            } else {
                format!("{}/{}", parent_of(path), n.target)
            };
            return Ok(self.node(&t)?.attrs);
        }
        Ok(n.attrs)
    }

    async fn setstat(&self, path: &str, a: &Attrs) -> RemoteResult<()> {
        let mut t = self.tree.lock().map_err(|_| failure())?;
        let n = t.get_mut(path).ok_or_else(no_such)?;
        if let Some(m) = a.mode {
            n.attrs.mode = Some((n.attrs.mode.unwrap_or(0) & libc::S_IFMT) | (m & 0o7777));
        }
        if let Some(s) = a.size {
            n.data.resize(s as usize, 0);
            n.attrs.size = Some(s);
        }
        if a.mtime.is_some() {
            n.attrs.mtime = a.mtime;
            n.attrs.atime = a.atime;
        }
        Ok(())
    }

    async fn read_dir(
        &self,
        path: &str,
        max: usize,
        _dir_size: Option<u64>,
    ) -> RemoteResult<Option<Vec<DirEntry>>> {
        if self.node(path)?.attrs.kind() != Kind::Dir {
            return Err(failure());
        }
        let mut out: Vec<DirEntry> = self
            .children(path)
            .into_iter()
            .filter_map(|c| {
                let attrs = self.node(&c).ok()?.attrs;
                Some(DirEntry {
                    name: c.rsplit('/').next().unwrap_or_default().to_string(),
                    attrs,
                })
            })
            .collect();
        for j in self
            .junk_names
            .lock()
            .map(|j| j.clone())
            .unwrap_or_default()
        {
            out.push(DirEntry {
                name: j,
                attrs: Attrs::with_perm(0o644),
            });
        }
        Ok((out.len() <= max).then_some(out))
    }

    async fn readlink(&self, path: &str) -> RemoteResult<String> {
        Ok(self.node(path)?.target)
    }

    async fn realpath(&self, path: &str) -> RemoteResult<String> {
        self.node(path)?;
        Ok(path.to_string())
    }

    async fn mkdir(&self, path: &str, perm: u32) -> RemoteResult<()> {
        if self.exists(path) {
            return Err(failure());
        }
        self.node(parent_of(path))?;
        // Like a server with umask 022.
        self.insert(path, libc::S_IFDIR | (perm & 0o755), Vec::new(), "");
        Ok(())
    }

    async fn rmdir(&self, path: &str) -> RemoteResult<()> {
        self.node(path)?;
        if !self.children(path).is_empty() {
            return Err(failure());
        }
        self.tree.lock().map_err(|_| failure())?.remove(path);
        Ok(())
    }

    async fn remove(&self, path: &str) -> RemoteResult<()> {
        if self.node(path)?.attrs.kind() == Kind::Dir {
            return Err(failure());
        }
        self.tree.lock().map_err(|_| failure())?.remove(path);
        Ok(())
    }

    async fn rename(
        &self,
        from: &str,
        to: &str,
        mode: RenameMode,
        _links: bool,
    ) -> RemoteResult<()> {
        self.node(from)?;
        if mode == RenameMode::NoReplace && self.exists(to) {
            return Err(failure());
        }
        let mut t = self.tree.lock().map_err(|_| failure())?;
        let moved: Vec<String> = t
            .keys()
            .filter(|k| *k == from || k.starts_with(&format!("{from}/")))
            .cloned()
            .collect();
        for k in moved {
            if let Some(n) = t.remove(&k) {
                t.insert(format!("{to}{}", &k[from.len()..]), n);
            }
        }
        // Open files follow (as a server's handles do).
        for p in self.open.lock().map_err(|_| failure())?.values_mut() {
            if p == from || p.starts_with(&format!("{from}/")) {
                *p = format!("{to}{}", &p[from.len()..]);
            }
        }
        Ok(())
    }

    async fn symlink(&self, target: &str, link: &str) -> RemoteResult<()> {
        if self.exists(link) {
            return Err(failure());
        }
        self.put_link(link, target);
        Ok(())
    }

    async fn hardlink(&self, from: &str, to: &str) -> RemoteResult<()> {
        let n = self.node(from)?;
        self.tree
            .lock()
            .map_err(|_| failure())?
            .insert(to.to_string(), n);
        Ok(())
    }

    async fn statvfs(&self, _path: &str) -> RemoteResult<StatVfs> {
        Ok(StatVfs {
            bsize: 4096,
            frsize: 4096,
            blocks: 100,
            bfree: 50,
            bavail: 40,
            files: 10,
            ffree: 5,
            namemax: 255,
        })
    }

    async fn open(&self, path: &str, mode: OpenMode, perm: Option<u32>) -> RemoteResult<FakeFile> {
        let exists = self.exists(path);
        if exists && mode.exclusive {
            return Err(failure());
        }
        if !exists {
            if !mode.create {
                return Err(no_such());
            }
            self.insert(
                path,
                libc::S_IFREG | (perm.unwrap_or(0o644) & 0o755),
                Vec::new(),
                "",
            );
        } else if mode.truncate {
            self.setstat(
                path,
                &Attrs {
                    size: Some(0),
                    ..Default::default()
                },
            )
            .await?;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open
            .lock()
            .map_err(|_| failure())?
            .insert(id, path.to_string());
        Ok(FakeFile(id))
    }

    fn adopt(&self, path: &str, _mode: OpenMode) -> FakeFile {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut o) = self.open.lock() {
            o.insert(id, path.to_string());
        }
        FakeFile(id)
    }

    async fn read(
        &self,
        f: &FakeFile,
        offset: u64,
        len: u32,
        _size: Option<u64>,
    ) -> RemoteResult<Bytes> {
        let d = self.node(&self.path_of(f)?)?.data;
        let start = (offset as usize).min(d.len());
        let end = (start + len as usize).min(d.len());
        Ok(Bytes::copy_from_slice(&d[start..end]))
    }

    async fn write(&self, f: &FakeFile, offset: u64, data: Bytes) -> RemoteResult<()> {
        self.pause("write").await;
        let path = self.path_of(f)?;
        let mut t = self.tree.lock().map_err(|_| failure())?;
        let n = t.get_mut(&path).ok_or_else(no_such)?;
        let end = offset as usize + data.len();
        if n.data.len() < end {
            n.data.resize(end, 0);
        }
        n.data[offset as usize..end].copy_from_slice(&data);
        n.attrs.size = Some(n.data.len() as u64);
        Ok(())
    }

    async fn fstat(&self, f: &FakeFile) -> RemoteResult<Attrs> {
        Ok(self.node(&self.path_of(f)?)?.attrs)
    }

    async fn fsetstat(&self, f: &FakeFile, attrs: &Attrs) -> RemoteResult<()> {
        self.injected("fsetstat")?;
        let p = self.path_of(f)?;
        self.setstat(&p, attrs).await
    }

    async fn confirmed(&self, _f: &FakeFile) -> bool {
        self.pause("confirmed").await;
        true
    }

    async fn flush(&self, f: &FakeFile) -> RemoteResult<()> {
        self.path_of(f).map(|_| ())
    }

    async fn fsync(&self, f: &FakeFile) -> RemoteResult<()> {
        self.path_of(f).map(|_| ())
    }

    async fn close(&self, f: &FakeFile) -> RemoteResult<()> {
        self.pause("close").await;
        self.open
            .lock()
            .map_err(|_| failure())?
            .remove(&f.0)
            .map(|_| ())
            .ok_or_else(|| RemoteError::Broken("not open".into()))
    }
}
