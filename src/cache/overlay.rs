//! The [`Remote`] operations of a mount with write-back on: answered from the pending
//! namespace where it knows the answer, recorded in the log where they change the tree,
//! and sent to the server only where they need its state.
//!
//! Owns which change can complete locally and which must first wait until the log is on
//! the server (a barrier, bounded by `timeout=`). Local: creating, writing and closing
//! files; mkdir; unlink; renames, mode and time changes of anything (what the server
//! holds is shown from its old path and attributes until the change is uploaded);
//! truncating a file or writing into it (a server file is first copied into the cache,
//! from the read cache where it can be: [`Cached::copy_up`]); rmdir of a directory whose
//! listing shows it empty. Through a barrier: symlinks, hard links, ownership changes, a
//! rename or mode change of a symlink, and writing into a server file too large to copy
//! (over a quarter of `cache_size=`). Lookups of names nothing pending touches go to the
//! server; after the link has been down for [`GRACE`], such a name is answered from what
//! the server showed last, or "absent" when it showed nothing, so uploads go on through
//! an outage (the conflict rule covers a name that did exist).
//! It must never let a change reach the server out of the log's order.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::local_file::LocalFile;
use super::oplog::Op;
use super::pending::{within, Answer, Node, Shown};
use super::writeback::Writeback;
use super::{version_of, Cached, CachedFile};
use crate::meta::{Attrs, Kind, OpenMode};
use crate::session::remote::{DirEntry, Remote, RemoteError, RemoteResult, RenameMode};

/// How long the link must have been down before a name nothing pending touches is
/// answered "absent" instead of waiting for the server.
pub const GRACE: Duration = Duration::from_secs(2);

/// Entries a directory's listing (with the pending changes) may hold for an rmdir to
/// look at them; a larger one is removed on the server directly.
const RMDIR_LISTING: usize = 10_000;

/// Bytes read from the server per request when a file is copied into the cache.
const COPY_CHUNK: u32 = 1 << 20;

fn refused(errno: i32, what: &str) -> RemoteError {
    RemoteError::refused(errno, what.to_string())
}

/// How an open with write-back on goes on.
pub(super) enum Opened<F> {
    /// Through the cache's own file (written locally, or pending).
    Local(CachedFile<F>),
    /// Through the server's file at this path (read, or written in place after a barrier).
    Server(String),
}

impl<R: Remote> Cached<R> {
    /// The server's owner of what it showed lately (new pending paths show it too).
    pub(super) fn owner(&self) -> Option<(u32, u32)> {
        self.owner.lock().ok().and_then(|o| *o)
    }

    pub(super) fn note_owner(&self, a: &Attrs) {
        if let (Some(u), Some(g)) = (a.uid, a.gid) {
            if let Ok(mut o) = self.owner.lock() {
                *o = Some((u, g));
            }
        }
    }

    /// Resolves once the link has been down for [`GRACE`] (never while it is up).
    async fn down_for_grace(&self) {
        loop {
            let since = {
                let mut s = match self.offline_since.lock() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                if self.inner.is_connected() {
                    *s = None;
                    None
                } else {
                    Some(*s.get_or_insert_with(Instant::now))
                }
            };
            match since {
                Some(t) if t.elapsed() >= GRACE => return,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// An lstat of a path nothing pending touches: the server's answer, or "absent" once
    /// the link has been down for [`GRACE`].
    pub(super) async fn wb_lstat(
        &self,
        wb: &Arc<Writeback>,
        path: &str,
        ahead: bool,
    ) -> RemoteResult<Attrs> {
        let at = match wb.lookup(path) {
            Answer::Is(n) => {
                let a = n.attrs().ok_or_else(|| refused(libc::ENOENT, "removed"))?;
                if matches!(n, Node::Dir { .. }) {
                    // What the server will show: kept for lookups once it is uploaded.
                    self.seen.put(path, &a);
                }
                return Ok(a);
            }
            Answer::Absent => return Err(refused(libc::ENOENT, "no such file (pending)")),
            Answer::Ask(at) => at,
        };
        // A directory with pending changes inside: the server's answer would lag them
        // anyway (its mtime moves as they are uploaded), so the last one stands (the
        // kernel asks again after every create in it).
        if wb.touched_inside(path) {
            if let Some((a, _)) = self.seen.get(&at).filter(|(a, _)| a.kind() == Kind::Dir) {
                return Ok(a);
            }
        }
        tokio::select! {
            a = self.ask_lstat(&at, ahead) => {
                let a = a?;
                self.note_owner(&a);
                Ok(a)
            }
            () = self.down_for_grace() => {
                // What it showed before (a cached file is read from the disk); anything
                // else is taken as absent.
                let seen = self.seen.get(&at).map(|(a, _)| a);
                seen.ok_or_else(|| refused(
                    libc::ENOENT,
                    "not known while the server cannot be reached (write-back)",
                ))
            }
        }
    }

    /// Waits until every change recorded so far is on the server (bounded by
    /// `timeout=`): for an operation that needs the server's state.
    pub(super) async fn barrier(&self) -> RemoteResult<()> {
        match &self.wb {
            Some(wb) => wb.drain(self.timeout).await,
            None => Ok(()),
        }
    }

    pub(super) async fn wb_read_dir(
        &self,
        wb: &Arc<Writeback>,
        path: &str,
        max: usize,
        dir_size: Option<u64>,
    ) -> RemoteResult<Option<Vec<DirEntry>>> {
        let dir = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        let pending = wb.children(dir);
        let mut entries = if wb.made_here(dir) {
            Vec::new()
        } else {
            let at = wb.server_path(dir);
            let at = if at == dir { path } else { &at };
            match self.inner.read_dir(at, max, dir_size).await? {
                Some(e) => {
                    for d in &e {
                        self.saw(
                            &format!("{}/{}", at.trim_end_matches('/'), d.name),
                            &d.attrs,
                        );
                    }
                    e
                }
                None => return Ok(None),
            }
        };
        if !pending.is_empty() {
            entries.retain(|e| !pending.iter().any(|(n, _)| *n == e.name));
            entries.extend(pending.into_iter().filter_map(|(name, node)| {
                Some(DirEntry {
                    name,
                    attrs: node.attrs()?,
                })
            }));
        }
        if entries.len() > max {
            return Ok(None);
        }
        Ok(Some(entries))
    }

    /// Open files with write-back data, still open.
    fn locals(&self) -> Vec<Arc<LocalFile>> {
        match self.locals.lock() {
            Ok(mut l) => {
                l.retain(|w| w.strong_count() > 0);
                l.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    fn track(&self, f: &Arc<LocalFile>) {
        if let Ok(mut l) = self.locals.lock() {
            if l.len() >= 256 {
                l.retain(|w| w.strong_count() > 0);
            }
            l.push(Arc::downgrade(f));
        }
    }

    fn local(&self, path: &str, f: LocalFile, mode: OpenMode) -> CachedFile<R::File> {
        let f = Arc::new(f);
        self.track(&f);
        let mut cf = CachedFile::new(path, mode, Default::default(), None, None);
        cf.local = Some(f);
        cf
    }

    /// What the server shows at `at` as a pending node would (None for a symlink, or
    /// when it is not known and the link is down).
    async fn shown_of(&self, at: &str) -> Option<Shown> {
        if let Some((a, _)) = self.seen.get(at) {
            return Shown::of(&a);
        }
        if !self.inner.is_connected() {
            return None;
        }
        self.ask_lstat(at, false)
            .await
            .ok()
            .as_ref()
            .and_then(Shown::of)
    }

    /// The server's file at `at` (its first `len` bytes; all of it when None) as a local
    /// file that will be uploaded to `path`, with `perm` if given: read through the read
    /// cache (from the disk where it holds the version the server shows; during an
    /// outage the copy there is used, and what is not there waits and fails as any read
    /// does). None when the file is too large to copy (over a quarter of `cache_size=`).
    pub(super) async fn copy_up(
        &self,
        wb: &Arc<Writeback>,
        path: &str,
        at: &str,
        len: Option<u64>,
        perm: Option<u32>,
    ) -> RemoteResult<Option<LocalFile>> {
        let seen = match self.seen.get(at) {
            Some((a, _)) if !self.inner.is_connected() => a,
            _ => self.ask_lstat(at, false).await?,
        };
        let Some(version) = version_of(&seen) else {
            return Err(refused(libc::EISDIR, "not a regular file"));
        };
        let size = version.0;
        if size > wb.store.limit() / 4 {
            return Ok(None);
        }
        let keep = len.map_or(size, |l| l.min(size));
        let perm = perm.unwrap_or(seen.mode.unwrap_or(0o644) & 0o7777);
        let owner = seen.uid.zip(seen.gid).or(self.owner());
        let local = LocalFile::create(wb, path, perm, owner, Some(version))?;
        if keep > 0 {
            let read = OpenMode {
                read: true,
                ..Default::default()
            };
            let f = self.open_server(at, read, None).await?;
            let mut off = 0;
            let copied = async {
                while off < keep {
                    let n = (keep - off).min(COPY_CHUNK as u64) as u32;
                    let data = self.read(&f, off, n, Some(size)).await?;
                    if data.is_empty() {
                        break;
                    }
                    let got = data.len() as u64;
                    local.write(off, data, self.timeout).await?;
                    off += got;
                }
                Ok::<_, RemoteError>(())
            }
            .await;
            let _ = self.close(&f).await;
            copied?;
            if off < keep {
                return Err(refused(
                    libc::EAGAIN,
                    "the file changed on the server while it was copied",
                ));
            }
        }
        local.copied(version.1).await;
        Ok(Some(local))
    }

    /// Opens `path` with write-back on: a local file (written, pending, or copied from
    /// the server to be written), or the server's file to read (or to write in place,
    /// after a barrier, when it is too large to copy).
    pub(super) async fn wb_open(
        &self,
        wb: &Arc<Writeback>,
        path: &str,
        mode: OpenMode,
        perm: Option<u32>,
    ) -> RemoteResult<Opened<R::File>> {
        let new = |base, kept_perm: Option<u32>| {
            let perm = perm.or(kept_perm).unwrap_or(0o644);
            LocalFile::create(wb, path, perm, self.owner(), base)
        };
        // Written into without truncating: a copy of the server's file, or (too large to
        // copy) the server's file in place once the log is on the server.
        let in_place = || async {
            self.barrier().await?;
            Ok(Opened::Server(path.to_string()))
        };
        let f = match wb.lookup(path) {
            Answer::Is(n) if n.is_dir() => return Err(refused(libc::EISDIR, "a directory")),
            Answer::Is(_) if mode.create && mode.exclusive => {
                return Err(refused(libc::EEXIST, "exists (pending)"))
            }
            Answer::Is(node) if mode.truncate && mode.write => {
                let kept = match &node {
                    Node::File { perm, .. } => Some(*perm),
                    Node::Server { shown, .. } => Some(shown.perm),
                    _ => None,
                };
                new(node.version(), kept)?
            }
            Answer::Is(Node::Server { at, .. }) if !mode.write => return Ok(Opened::Server(at)),
            Answer::Is(Node::Server { at, shown }) => {
                match self.copy_up(wb, path, &at, None, Some(shown.perm)).await? {
                    Some(f) => f,
                    None => return in_place().await,
                }
            }
            Answer::Is(node) => match LocalFile::of_node(wb, path, &node) {
                Ok(f) => f,
                // Uploaded since the lookup (its data is the read copy now): the
                // server's file it is.
                Err(e) if e.errno() == libc::ENOENT && mode.write => {
                    match self.copy_up(wb, path, path, None, None).await? {
                        Some(f) => f,
                        None => return in_place().await,
                    }
                }
                Err(e) if e.errno() == libc::ENOENT => return Ok(Opened::Server(path.into())),
                Err(e) => return Err(e),
            },
            Answer::Absent if !mode.create => return Err(refused(libc::ENOENT, "removed")),
            Answer::Absent => new(None, None)?,
            // The kernel asks to create only what a lookup did not find.
            Answer::Ask(at) if mode.create || (mode.truncate && mode.write) => {
                let seen = self.seen_version(&at);
                new(seen.map(|s| s.0), seen.map(|s| s.1))?
            }
            Answer::Ask(at) if !mode.write => return Ok(Opened::Server(at)),
            Answer::Ask(at) => match self.copy_up(wb, path, &at, None, None).await? {
                Some(f) => f,
                None => return in_place().await,
            },
        };
        if mode.write {
            // Shown as it is from now on (an empty file until its first upload), before
            // this returns: a lookup sent right behind the create finds it.
            if let Some(node) = f.node_now() {
                wb.show(path, node);
            }
            self.changed(path);
        }
        Ok(Opened::Local(self.local(path, f, mode)))
    }

    /// A file that was open before a restart, with write-back on.
    pub(super) fn wb_adopt(
        &self,
        wb: &Arc<Writeback>,
        path: &str,
        mode: OpenMode,
    ) -> Option<CachedFile<R::File>> {
        match wb.lookup(path) {
            Answer::Is(node @ Node::File { .. }) => {
                let f = LocalFile::of_node(wb, path, &node).ok()?;
                Some(self.local(path, f, mode))
            }
            _ => None,
        }
    }

    pub(super) async fn wb_mkdir(
        &self,
        wb: &Arc<Writeback>,
        path: &str,
        perm: u32,
    ) -> RemoteResult<()> {
        let op = Op::Mkdir {
            path: path.to_string(),
            perm,
            owner: self.owner(),
        };
        wb.commit(op, |p| match p.lookup(path) {
            Answer::Is(_) => Err(refused(libc::EEXIST, "exists (pending)")),
            _ => Ok(()),
        })
        .await
        .map(|_| ())
    }

    pub(super) async fn wb_rmdir(&self, wb: &Arc<Writeback>, path: &str) -> RemoteResult<()> {
        let direct = async {
            self.barrier().await?;
            self.inner.rmdir(path).await
        };
        match wb.lookup(path) {
            Answer::Absent => return Err(refused(libc::ENOENT, "no such directory")),
            Answer::Is(n) if !n.is_dir() => return Err(refused(libc::ENOTDIR, "not a directory")),
            Answer::Is(Node::Dir { .. }) => {}
            // Nothing pending at all: the server answers at once.
            Answer::Ask(_) if wb.backlog().ops == 0 => return direct.await,
            // What the server holds: empty once the pending changes are applied?
            _ => match self.wb_read_dir(wb, path, RMDIR_LISTING, None).await? {
                Some(e) if e.iter().all(|d| d.name == "." || d.name == "..") => {}
                Some(_) => return Err(refused(libc::ENOTEMPTY, "directory not empty")),
                None => return direct.await,
            },
        }
        let op = Op::Rmdir {
            path: path.to_string(),
        };
        wb.commit(op, |p| {
            if p.has_children(path) {
                Err(refused(libc::ENOTEMPTY, "directory not empty"))
            } else {
                Ok(())
            }
        })
        .await
        .map(|_| ())
    }

    pub(super) async fn wb_remove(&self, wb: &Arc<Writeback>, path: &str) -> RemoteResult<()> {
        match wb.lookup(path) {
            Answer::Absent => return Err(refused(libc::ENOENT, "no such file")),
            Answer::Is(n) if n.is_dir() => return Err(refused(libc::EISDIR, "a directory")),
            _ => {}
        }
        self.changed(path);
        wb.commit(
            Op::Remove {
                path: path.to_string(),
            },
            |_| Ok(()),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn wb_rename(
        &self,
        wb: &Arc<Writeback>,
        from: &str,
        to: &str,
        mode: RenameMode,
        links: bool,
    ) -> RemoteResult<()> {
        let shown = match wb.lookup(from) {
            Answer::Absent => return Err(refused(libc::ENOENT, "no such file")),
            Answer::Ask(at) => match self.shown_of(&at).await {
                // Shown from the server's old path until the rename is uploaded.
                Some(s) => Some(s),
                None => {
                    self.changed_tree(from);
                    self.changed_tree(to);
                    self.barrier().await?;
                    return self.inner.rename(from, to, mode, links).await;
                }
            },
            Answer::Is(_) => {
                self.changed_tree(from);
                None
            }
        };
        self.changed_tree(to);
        if mode == RenameMode::NoReplace {
            let exists = match wb.lookup(to) {
                Answer::Is(_) => true,
                Answer::Absent => false,
                Answer::Ask(_) => self.wb_lstat(wb, to, false).await.is_ok(),
            };
            if exists {
                return Err(refused(libc::EEXIST, "target exists"));
            }
        }
        // What is written into files open under `from` goes up before the rename.
        let open: Vec<_> = self
            .locals()
            .into_iter()
            .filter(|f| within(&f.path(), from))
            .collect();
        for f in &open {
            f.commit().await?;
        }
        let seq = wb.change(
            Op::Rename {
                from: from.to_string(),
                to: to.to_string(),
                shown,
            },
            |p| match p.lookup(from) {
                Answer::Absent => Err(refused(libc::ENOENT, "no such file")),
                _ => Ok(()),
            },
        )?;
        for f in &open {
            f.moved(from, to);
        }
        wb.durable(seq).await
    }

    pub(super) async fn wb_setstat(
        &self,
        wb: &Arc<Writeback>,
        path: &str,
        attrs: &Attrs,
    ) -> RemoteResult<()> {
        let direct = async {
            self.changed(path);
            self.barrier().await?;
            self.inner.setstat(path, attrs).await
        };
        // The log keeps no owner, nor an access time alone.
        let unlogged = attrs.size.is_none() && attrs.mode.is_none() && attrs.mtime.is_none();
        if attrs.uid.is_some() || attrs.gid.is_some() || unlogged {
            return direct.await;
        }
        let (shown, server) = match wb.lookup(path) {
            Answer::Absent => return Err(refused(libc::ENOENT, "no such file")),
            Answer::Is(node @ Node::File { .. }) if attrs.size.is_some() => {
                // A new version of the contents: through an open file's commit.
                let f = LocalFile::of_node(wb, path, &node)?;
                f.set(attrs, self.timeout).await?;
                f.commit().await?;
                return Ok(());
            }
            Answer::Is(Node::Server { at, shown }) => (None, Some((at, Some(shown.perm)))),
            Answer::Is(_) => (None, None),
            Answer::Ask(at) if attrs.size.is_some() => (None, Some((at, None))),
            Answer::Ask(at) => match self.shown_of(&at).await {
                Some(s) => (Some(s), None),
                None => return direct.await,
            },
        };
        if let (Some(size), Some((at, perm))) = (attrs.size, server) {
            // Truncated: a copy of what it keeps, uploaded as a new version.
            let Some(f) = self.copy_up(wb, path, &at, Some(size), perm).await? else {
                return direct.await;
            };
            self.changed(path);
            f.set(attrs, self.timeout).await?;
            f.commit().await?;
            return Ok(());
        }
        let op = Op::SetStat {
            path: path.to_string(),
            perm: attrs.mode.map(|m| m & 0o7777),
            mtime: attrs.mtime,
            shown,
        };
        wb.commit(op, |_| Ok(())).await.map(|_| ())
    }

    /// fsync of a write-back file: committed, and with `fsync=remote` on the server
    /// (EIO when it is not within `timeout=`).
    pub(super) async fn wb_fsync(&self, wb: &Arc<Writeback>, f: &LocalFile) -> RemoteResult<()> {
        let seq = f.commit().await?;
        if !wb.cfg.fsync_remote {
            return Ok(());
        }
        // Its upload, and everything recorded before it (its directories among them:
        // the server confirms in the log's order); a file not written through this
        // descriptor waits for all of the log so far.
        let upto = if seq == 0 { wb.last_seq() } else { seq };
        wb.settled(upto, self.timeout).await.map_err(|_| {
            refused(
                libc::EIO,
                "fsync=remote: the server has not confirmed this file within timeout=",
            )
        })
    }

    /// The version the server showed for `path` when last asked, however long ago
    /// (With write-back, or what this mount's last upload of it left, if that is newer.)
    pub(super) fn seen_version(&self, path: &str) -> Option<(super::store::Version, u32)> {
        let (a, _) = self.seen.get(path)?;
        Some((version_of(&a)?, a.mode.unwrap_or(0o644) & 0o7777))
    }
}
