//! The [`Remote`] operations of a mount with write-back on: answered from the pending
//! namespace where it knows the answer, recorded in the log where they change the tree,
//! and sent to the server only where they need its state.
//!
//! Owns which change can complete locally (creating, writing and closing files; making
//! and removing directories this mount made; removing files; renaming what is pending;
//! changing a pending path's mode, times or size) and which must first wait until the
//! log is on the server (a barrier, bounded by `timeout=`: writing into a file without
//! truncating it, renaming or removing a directory the server holds, symlinks, hard
//! links). Lookups of names nothing pending touches go to the server; after the link has
//! been down for [`GRACE`], such a name is answered "absent", so uploads go on through an
//! outage (the conflict rule covers a name that did exist). It must never let a change
//! reach the server out of the log's order.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::local_file::LocalFile;
use super::oplog::Op;
use super::pending::{within, Answer, Node};
use super::writeback::Writeback;
use super::{version_of, Cached, CachedFile};
use crate::meta::{Attrs, Kind, OpenMode};
use crate::session::remote::{DirEntry, Remote, RemoteError, RemoteResult, RenameMode};

/// How long the link must have been down before a name nothing pending touches is
/// answered "absent" instead of waiting for the server.
pub const GRACE: Duration = Duration::from_secs(2);

fn refused(errno: i32, what: &str) -> RemoteError {
    RemoteError::refused(errno, what.to_string())
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
        match wb.lookup(path) {
            Answer::Is(n) => {
                let a = n.attrs().ok_or_else(|| refused(libc::ENOENT, "removed"))?;
                if matches!(n, Node::Dir { .. }) {
                    // What the server will show: kept for lookups once it is uploaded.
                    self.seen.put(path, &a);
                }
                return Ok(a);
            }
            Answer::Absent => return Err(refused(libc::ENOENT, "no such file (pending)")),
            Answer::Unknown => {}
        }
        // A directory with pending changes inside: the server's answer would lag them
        // anyway (its mtime moves as they are uploaded), so the last one stands (the
        // kernel asks again after every create in it).
        if wb.touched_inside(path) {
            if let Some((a, _)) = self.seen.get(path).filter(|(a, _)| a.kind() == Kind::Dir) {
                return Ok(a);
            }
        }
        tokio::select! {
            a = self.ask_lstat(path, ahead) => {
                let a = a?;
                self.note_owner(&a);
                Ok(a)
            }
            () = self.down_for_grace() => {
                // A directory it showed before; anything else is taken as absent.
                let seen = self.seen.get(path).map(|(a, _)| a).filter(|a| a.kind() == Kind::Dir);
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
            match self.inner.read_dir(path, max, dir_size).await? {
                Some(e) => {
                    for d in &e {
                        self.saw(
                            &format!("{}/{}", dir.trim_end_matches('/'), d.name),
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

    /// Opens `path` with write-back on: `None` when it is a plain file of the server to
    /// read, or to write in place (after a barrier): the caller opens it as without.
    pub(super) async fn wb_open(
        &self,
        wb: &Arc<Writeback>,
        path: &str,
        mode: OpenMode,
        perm: Option<u32>,
    ) -> RemoteResult<Option<CachedFile<R::File>>> {
        let new = |base, kept_perm: Option<u32>| {
            let perm = perm.or(kept_perm).unwrap_or(0o644);
            LocalFile::create(wb, path, perm, self.owner(), base)
        };
        let f = match wb.lookup(path) {
            Answer::Is(Node::Dir { .. }) => return Err(refused(libc::EISDIR, "a directory")),
            Answer::Is(node) => {
                if mode.create && mode.exclusive {
                    return Err(refused(libc::EEXIST, "exists (pending)"));
                }
                if mode.truncate && mode.write {
                    let kept = match node {
                        Node::File { perm, .. } => Some(perm),
                        _ => None,
                    };
                    new(node.version(), kept)?
                } else {
                    match LocalFile::of_node(wb, path, &node) {
                        Ok(f) => f,
                        // Uploaded since the lookup (its data is the read copy now): the
                        // server's file it is.
                        Err(e) if e.errno() == libc::ENOENT => {
                            if mode.write {
                                self.barrier().await?;
                            }
                            return Ok(None);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Answer::Absent if !mode.create => return Err(refused(libc::ENOENT, "removed")),
            Answer::Absent => new(None, None)?,
            // The kernel asks to create only what a lookup did not find.
            Answer::Unknown if mode.create || (mode.truncate && mode.write) => {
                let seen = self.seen_version(path);
                new(seen.map(|s| s.0), seen.map(|s| s.1))?
            }
            Answer::Unknown if !mode.write => return Ok(None),
            Answer::Unknown => {
                // Written in place: the server's file must be what the log leaves it.
                self.barrier().await?;
                return Ok(None);
            }
        };
        if mode.write {
            // Shown as it is from now on (an empty file until its first upload), before
            // this returns: a lookup sent right behind the create finds it.
            if let Some(node) = f.node_now() {
                wb.show(path, node);
            }
            self.changed(path);
        }
        Ok(Some(self.local(path, f, mode)))
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
        match wb.lookup(path) {
            Answer::Unknown => {
                self.barrier().await?;
                return self.inner.rmdir(path).await;
            }
            Answer::Absent => return Err(refused(libc::ENOENT, "no such directory")),
            Answer::Is(Node::Dir { .. }) => {}
            Answer::Is(_) => return Err(refused(libc::ENOTDIR, "not a directory")),
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
            Answer::Is(Node::Dir { .. }) => return Err(refused(libc::EISDIR, "a directory")),
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
        self.changed_tree(from);
        self.changed_tree(to);
        match wb.lookup(from) {
            Answer::Absent => return Err(refused(libc::ENOENT, "no such file")),
            Answer::Unknown => {
                self.barrier().await?;
                return self.inner.rename(from, to, mode, links).await;
            }
            Answer::Is(_) => {}
        }
        if mode == RenameMode::NoReplace {
            let exists = match wb.lookup(to) {
                Answer::Is(_) => true,
                Answer::Absent => false,
                Answer::Unknown => self.wb_lstat(wb, to, false).await.is_ok(),
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
            },
            |_| Ok(()),
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
        let node = match wb.lookup(path) {
            Answer::Unknown => {
                self.barrier().await?;
                return self.inner.setstat(path, attrs).await;
            }
            Answer::Absent => return Err(refused(libc::ENOENT, "no such file")),
            Answer::Is(n) => n,
        };
        if attrs.size.is_some() && matches!(node, Node::File { .. }) {
            // A new version of the contents: through an open file's commit.
            let f = LocalFile::of_node(wb, path, &node)?;
            f.set(attrs, self.timeout).await?;
            f.commit().await?;
            return Ok(());
        }
        let op = Op::SetStat {
            path: path.to_string(),
            perm: attrs.mode.map(|m| m & 0o7777),
            mtime: attrs.mtime,
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
        // All of the log so far: the file's directory must be there too.
        wb.settled(seq.max(wb.last_seq()), self.timeout)
            .await
            .map_err(|_| {
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
