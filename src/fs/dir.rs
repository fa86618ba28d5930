//! Directory operations: listings, and creating, removing and renaming names.
//!
//! Owns directory handles (a listing fetched once at opendir and served by offset),
//! listing a directory in the background when a lookup in it missed,
//! filtering of unsafe names from the server, and the errno recovery for vague failures of
//! mkdir/rmdir/unlink/rename. It must never hand the kernel a name with `/`, `.` or `..`
//! from the server.

use std::sync::{Arc, Mutex};

use fuser::FileType;

use crate::session::{Attrs, Kind, Remote, RemoteResult, RenameMode};

use super::error::{FsError, FsResult};
use super::listings::{dir_key, split, DirEntryOut};
use super::state::nodes::{self as inode, Inodes};
use super::unlinked;
use super::{file_type, Entry, Fs};

/// A directory listing held open by the kernel.
pub struct OpenDir {
    pub parent: u64,
    pub entries: Arc<Vec<DirEntryOut>>,
}

impl OpenDir {
    /// The listing of a directory that is gone.
    pub fn empty(parent: u64) -> Self {
        OpenDir {
            parent,
            entries: Arc::default(),
        }
    }
}

/// A name from the server that is safe to show.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && crate::name_bytes::byte_len(name) <= super::NAME_MAX
}

/// Directories larger than this are not listed just because a name in them was looked up.
const PREFETCH_MAX: usize = 4096;
/// Sibling directories listed ahead when a walk enters one of them.
const WALK_AHEAD: usize = 64;

/// Lists `path` on the server (`None`: more than `max` entries; `dir_size`: its size as
/// last seen), keeping only names that are safe to show; a stale hidden name of this
/// mount's is removed on the way.
async fn list<R: Remote>(
    remote: &R,
    follow_symlinks: bool,
    path: &str,
    (max, dir_size): (usize, Option<u64>),
    hidden: &unlinked::Unlinked,
    nodes: &Mutex<Inodes>,
) -> FsResult<Option<Vec<DirEntryOut>>> {
    let Some(list) = remote.read_dir(path, max, dir_size).await? else {
        return Ok(None);
    };
    let prefix = if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    };
    let mut entries = Vec::with_capacity(list.len());
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    for e in list {
        if !safe_name(&e.name) {
            if e.name != "." && e.name != ".." {
                tracing::warn!(dir = %path, name = ?e.name, "skipping unsafe name from server");
            }
            continue;
        }
        if unlinked::is_hidden(&e.name) {
            let held = |n: &str| nodes.lock().map_or(true, |t| t.holds_hidden(n));
            if hidden.is_stale(&e.name, held) {
                let stale = format!("{prefix}{}", e.name);
                match remote.remove(&stale).await {
                    Ok(()) => {
                        tracing::info!(file = %stale, "removed a file unlinked while open that a stopped daemon left")
                    }
                    Err(err) => {
                        tracing::debug!(file = %stale, error = %err, "stale hidden file not removed")
                    }
                }
            }
            continue;
        }
        if !seen.insert(e.name.clone()) {
            tracing::warn!(dir = %path, name = ?e.name, "skipping a name the server listed twice");
            continue;
        }
        let mut attrs = e.attrs;
        if follow_symlinks && attrs.kind() == Kind::Symlink {
            if let Ok(t) = remote.stat(&format!("{prefix}{}", e.name)).await {
                attrs = t;
            }
        }
        entries.push(DirEntryOut {
            kind: file_type(attrs.mode.unwrap_or(0)),
            name: e.name,
            attrs,
        });
    }
    Ok(Some(entries))
}

impl<R: Remote> Fs<R> {
    /// Lists `dir` in the background (a lookup missed in it, or a walk is about to enter
    /// it), so the requests that usually follow need no round trip.
    pub(super) fn prefetch(&self, dir: &str) {
        if self.cfg.dir_ttl.is_zero() {
            return;
        }
        let (remote, cache) = (self.remote.clone(), self.cache.clone());
        let (follow, owned) = (self.cfg.follow_symlinks, dir.to_string());
        let (hidden, nodes) = (self.hidden_names.clone(), self.nodes.clone());
        let size = self.cache.peek(dir).and_then(|a| a.size);
        self.prefetcher.spawn(dir, async move {
            let fetch = cache.begin_listing(&owned);
            let bounds = (PREFETCH_MAX, size);
            let listed = list(&*remote, follow, &owned, bounds, &hidden, &nodes).await;
            if let Ok(Some(entries)) = listed {
                cache.put_listing(fetch, Arc::new(entries));
            }
        });
    }

    /// A directory of a listed one is being opened: a walk is likely, so its sibling
    /// directories are listed ahead of it.
    fn walk_ahead(&self, path: &str) {
        let Some((parent, _)) = split(path) else {
            return;
        };
        let Some(siblings) = self.cache.listing(parent) else {
            return;
        };
        for e in siblings
            .iter()
            .filter(|e| e.kind == FileType::Directory)
            .take(WALK_AHEAD)
        {
            let p = format!("{parent}/{}", e.name);
            if p != path && self.cache.listing(&p).is_none() {
                self.prefetch(&p);
            }
        }
    }

    /// Opens a directory: its handle, and whether the listing is the same one handed out
    /// before (so the kernel may keep its own cached copy of it).
    pub async fn opendir(&self, ino: u64) -> FsResult<(u64, bool)> {
        let (listing, reused) = self.open_listing(ino).await?;
        Ok((self.handles.open_dir(ino, listing), reused))
    }

    /// The listing of directory `ino` for a new handle, and whether it is a cached one.
    pub(super) async fn open_listing(&self, ino: u64) -> FsResult<(Arc<OpenDir>, bool)> {
        let path = self.path_of(ino)?;
        // While disconnected, with a disk cache: the last listing, however old (nothing
        // on its way is waited for).
        let offline = (self.cfg.offline_stale && !self.remote.is_connected())
            .then(|| self.cache.last_listing(&path))
            .flatten();
        if offline.is_none() {
            self.prefetcher.wait(dir_key(&path)).await;
        }
        let cached = self.cache.listing(&path);
        if cached.is_none() && offline.is_none() {
            self.walk_ahead(dir_key(&path));
        }
        let reused = cached.is_some();
        let entries = match cached.or(offline) {
            Some(cached) => cached,
            None => {
                let fetch = self.cache.begin_listing(&path);
                let follow = self.cfg.follow_symlinks;
                let (hidden, nodes) = (&self.hidden_names, &self.nodes);
                let bounds = (usize::MAX, self.cache.peek(&path).and_then(|a| a.size));
                let fresh = list(&*self.remote, follow, &path, bounds, hidden, nodes)
                    .await?
                    .unwrap_or_default();
                let fresh = Arc::new(fresh);
                self.cache.put_listing(fetch, fresh.clone());
                fresh
            }
        };
        let parent = self.dir_parent(ino);
        Ok((Arc::new(OpenDir { parent, entries }), reused))
    }

    fn dir_parent(&self, ino: u64) -> u64 {
        if ino == inode::ROOT {
            return inode::ROOT;
        }
        self.with_inodes(|t| t.parent(ino))
            .ok()
            .flatten()
            .unwrap_or(inode::ROOT)
    }

    pub fn listing(&self, fh: u64) -> FsResult<Arc<OpenDir>> {
        self.handles.dir(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.close_dir(fh)
    }

    /// Inode number to show for a listed name in plain readdir (no lookup is counted).
    pub fn peek_ino(&self, parent: u64, name: &str) -> u64 {
        self.with_inodes(|t| t.child(parent, name))
            .ok()
            .flatten()
            // Unknown yet: a stable, non-zero number outside the range we hand out.
            .unwrap_or_else(|| {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in name.bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
                h | (1 << 63)
            })
    }

    /// readdirplus: the entry for a listed name; counts as a kernel lookup.
    pub fn listed_entry(&self, parent: u64, e: &DirEntryOut) -> FsResult<Entry> {
        self.entry(parent, &e.name, &e.attrs)
    }

    pub async fn mkdir(&self, parent: u64, name: &str, mode: u32) -> FsResult<Entry> {
        let path = self.child_path(parent, name)?;
        let perm = mode & 0o7777;
        let (made, seen, dir) = self.make(&path, self.remote.mkdir(&path, perm)).await;
        if let Err(e) = made {
            self.cache.unsure(&path);
            return Err(self.refine(e, &path, Op::Create).await);
        }
        let mut attrs = match seen {
            Ok(a) if a.kind() == Kind::Dir => a,
            _ => self.remote.lstat(&path).await?,
        };
        // The server applies its own umask to MKDIR: set the mode that was asked for.
        if attrs.mode.map(|m| m & 0o7777) != Some(perm) {
            self.remote.setstat(&path, &Attrs::with_perm(perm)).await?;
            attrs.mode = Some(libc::S_IFDIR | perm);
        }
        self.cache.created(&path, Some(&attrs));
        self.cache.parent_seen(&path, dir, Some(&attrs));
        // Nothing is in it yet: lookups of new names inside cost no round trip.
        self.cache.dirs.put_empty(&path);
        self.entry(parent, name, &attrs)
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let open = self
            .with_inodes(|t| t.child(parent, name))?
            .filter(|ino| self.handles.holds(*ino));
        if let Some(ino) = open {
            return self.unlink_open(parent, name, ino).await;
        }
        let (r, dir) = tokio::join!(self.remote.remove(&path), self.dir_after(&path));
        if let Err(e) = r {
            self.cache.unsure(&path);
            return Err(self.refine(e, &path, Op::Unlink).await);
        }
        self.cache.removed(&path);
        self.cache.parent_seen(&path, dir, None);
        self.with_inodes(|t| t.unlink(parent, name))?;
        Ok(())
    }

    /// Sends `op`, which makes `path`, with an lstat of `path` and of its directory right
    /// behind it: one round trip for the three where the server answers in order. Returns
    /// what `op` returned, the lstat (a server that did not answer in order may give the
    /// state before `op`: callers check it), and the directory's new attributes.
    pub(super) async fn make<T>(
        &self,
        path: &str,
        op: impl std::future::Future<Output = RemoteResult<T>>,
    ) -> (RemoteResult<T>, RemoteResult<Attrs>, Option<Attrs>) {
        self.cache.invalidate(path);
        tokio::join!(op, self.remote.lstat(path), self.dir_after(path))
    }

    /// The attributes of `path`'s directory, asked right behind a change to `path` just
    /// sent (same connection, so the answer shows the change); None when not asked or not
    /// answered. Not asked of a server that runs requests concurrently: there the answer
    /// may predate the change (the directory is then asked again when the kernel wants
    /// it).
    pub(super) async fn dir_after(&self, path: &str) -> Option<Attrs> {
        let dir = super::cache::parent_key(path)?;
        if !self.remote.capabilities().in_order {
            return None;
        }
        self.remote.lstat_after(dir, path).await.ok()
    }

    /// unlink(2) of a file a descriptor holds open: the file moves to a hidden name in its
    /// directory and is removed at its last close ([`unlinked`]).
    async fn unlink_open(&self, parent: u64, name: &str, ino: u64) -> FsResult<()> {
        let from = self.child_path(parent, name)?;
        let hidden = self.hidden_names.name_for(ino);
        let to = self.child_path(parent, &hidden)?;
        let r = self
            .remote
            .rename(&from, &to, RenameMode::NoReplace, false)
            .await;
        if let Err(e) = r {
            self.cache.unsure(&from);
            return Err(self.refine(e, &from, Op::Unlink).await);
        }
        self.cache.removed(&from);
        self.cache.invalidate(&to);
        self.with_inodes(|t| t.hide(parent, name, &hidden))?;
        // The last descriptor may have closed while the rename was on its way (the kernel
        // sends RELEASE after close(2) returns): then nobody else removes the file.
        if !self.handles.holds(ino) {
            self.last_close(ino).await;
        }
        Ok(())
    }

    /// The last descriptor of `ino` closed: a file unlinked while open goes now.
    pub(super) async fn last_close(&self, ino: u64) {
        let Ok(Some((parent, hidden))) = self.with_inodes(|t| t.unhide(ino)) else {
            return;
        };
        let Ok(path) = self.child_path(parent, &hidden) else {
            return;
        };
        match self.remote.remove(&path).await {
            // Gone already: a daemon this one took over from removed it.
            Err(e) if e.errno() != libc::ENOENT => {
                tracing::warn!(%path, error = %e, "cannot remove a file unlinked while open")
            }
            _ => {}
        }
        self.cache.removed(&path);
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let r = self.remote.rmdir(&path).await;
        self.cache.invalidate_tree(&path);
        if let Err(e) = r {
            self.cache.unsure(&path);
            return Err(self.refine(e, &path, Op::Rmdir).await);
        }
        self.cache.removed(&path);
        self.with_inodes(|t| t.unlink(parent, name))?;
        Ok(())
    }

    pub async fn symlink(&self, parent: u64, name: &str, target: &str) -> FsResult<Entry> {
        let path = self.child_path(parent, name)?;
        let (made, seen, dir) = self.make(&path, self.remote.symlink(target, &path)).await;
        if let Err(e) = made {
            self.cache.unsure(&path);
            return Err(self.refine(e, &path, Op::Create).await);
        }
        let attrs = match seen {
            Ok(a) if a.kind() == Kind::Symlink => a,
            _ => self.remote.lstat(&path).await?,
        };
        self.cache.created(&path, Some(&attrs));
        self.cache.parent_seen(&path, dir, Some(&attrs));
        self.entry(parent, name, &attrs)
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> FsResult<Entry> {
        if self.cfg.disable_hardlink || !self.remote.capabilities().hardlink {
            return Err(FsError::new(
                libc::EPERM,
                "hard links are not available on this mount",
            ));
        }
        let from = self.path_of(ino)?;
        let to = self.child_path(new_parent, new_name)?;
        self.cache.invalidate(&to);
        if let Err(e) = self.remote.hardlink(&from, &to).await {
            self.cache.unsure(&to);
            return Err(self.refine(e, &to, Op::Create).await);
        }
        self.cache.invalidate(&from);
        let attrs = self.remote.lstat(&to).await?;
        self.cache.created(&to, Some(&attrs));
        self.entry(new_parent, new_name, &attrs)
    }

    /// `noreplace`: RENAME_NOREPLACE. RENAME_EXCHANGE is refused by the caller.
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        noreplace: bool,
    ) -> FsResult<()> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        if from == to {
            return Ok(());
        }
        let mode = if noreplace {
            if self.remote.lstat(&to).await.is_ok() {
                return Err(FsError::new(libc::EEXIST, "target exists"));
            }
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        // Whether either name may be a symlink, from what the kernel's lookups just cached
        // (a server whose RENAME follows links then checks both first).
        let maybe_link = |p: &str| match self.cache.peek(p) {
            Some(a) => a.kind() == Kind::Symlink,
            None => !self.cache.is_missing(p),
        };
        let links = maybe_link(&from) || maybe_link(&to);
        // Each owner follows: the session's open files (in `rename`), the cache, the nodes.
        let r = self.remote.rename(&from, &to, mode, links).await;
        self.cache.renamed(&from, &to, r.is_ok());
        if let Err(e) = r {
            return Err(self.refine_rename(e, &from, &to).await);
        }
        self.with_inodes(|t| t.rename(parent, name, new_parent, new_name))?;
        Ok(())
    }

    /// Recovers the errno a generic FAILURE stands for, from the state of the tree.
    async fn refine(&self, e: crate::session::RemoteError, path: &str, op: Op) -> FsError {
        if !e.is_vague() {
            return e.into();
        }
        let found = self.remote.lstat(path).await.ok().map(|a| a.kind());
        let errno = match (op, found) {
            (Op::Create, Some(_)) => libc::EEXIST,
            (Op::Rmdir, Some(Kind::Dir)) => libc::ENOTEMPTY,
            (Op::Rmdir, Some(_)) => libc::ENOTDIR,
            (Op::Unlink, Some(Kind::Dir)) => libc::EISDIR,
            (_, None) => libc::ENOENT,
            _ => e.errno(),
        };
        FsError::new(errno, e.to_string())
    }

    async fn refine_rename(&self, e: crate::session::RemoteError, from: &str, to: &str) -> FsError {
        if !e.is_vague() {
            return e.into();
        }
        let src = self.remote.lstat(from).await.ok().map(|a| a.kind());
        let dst = self.remote.lstat(to).await.ok().map(|a| a.kind());
        let errno = match (src, dst) {
            (None, _) => libc::ENOENT,
            (Some(Kind::Dir), Some(Kind::Dir)) => libc::ENOTEMPTY,
            (Some(Kind::Dir), Some(_)) => libc::ENOTDIR,
            (Some(_), Some(Kind::Dir)) => libc::EISDIR,
            _ => e.errno(),
        };
        FsError::new(errno, e.to_string())
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Unlink,
    Rmdir,
}
