//! The filesystem logic, without the kernel: every operation expressed against a
//! [`Remote`].
//!
//! Owns turning kernel-level requests (by inode, name and handle) into remote requests (by
//! path and remote file), recovering precise errnos from vague SFTP failures, and the
//! attributes the kernel sees. What the kernel holds (nodes, handles) and its journal are
//! [`state`]'s; what is cached of the server is [`cache`]'s.
//! It is generic over [`Remote`] so it can run against an in-memory fake in tests. It must
//! never talk to `/dev/fuse` (that is [`crate::fuse`]) nor reconnect (that is
//! [`crate::session`]).

pub mod cache;
mod dir;
pub mod error;
mod file;
pub mod idmap;
mod listings;
mod prefetch;
mod restore;
pub mod state;
pub mod stats;
mod symlink;
mod unlinked;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::session::{Attrs, Kind, Remote};

use cache::MetaCache;
pub use dir::OpenDir;
pub use error::{FsError, FsResult};
use idmap::IdMap;
use state::handles::Handles;
use state::journal::{Journal, State};
use state::nodes::{self as inode, Inodes};

/// Longest file name the kernel may send us (as ext4).
pub const NAME_MAX: usize = 255;

/// Filesystem settings derived from the mount options.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Remote directory that is the mount's root, as given ("" means the login directory).
    pub root: String,
    pub idmap: IdMap,
    /// `idmap=user`: the login's ids are shown as the mounting user's.
    pub idmap_user: bool,
    pub transform_symlinks: bool,
    /// Links leading out of the mount are refused (see `symlink`); off only for trusted
    /// servers (`no_contain_symlinks`).
    pub contain_symlinks: bool,
    pub follow_symlinks: bool,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    pub negative_ttl: Duration,
    /// How long a directory listing is reused (sshfs's dcache_timeout).
    pub dir_ttl: Duration,
    /// `disable_hardlink`: link(2) fails with EPERM even where the server could.
    pub disable_hardlink: bool,
    /// The mount's tag in names left on the server (see `crate::ident`).
    pub tag: String,
    /// While disconnected, a path seen before is looked up from what was last seen of it,
    /// however old, rather than waiting for the link (`cache=DIR` sets it, so that cached
    /// files are served through an outage).
    pub offline_stale: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            root: String::new(),
            idmap: IdMap::default(),
            idmap_user: false,
            transform_symlinks: false,
            contain_symlinks: true,
            follow_symlinks: false,
            attr_ttl: Duration::from_secs(20),
            entry_ttl: Duration::from_secs(20),
            negative_ttl: Duration::ZERO,
            dir_ttl: Duration::from_secs(20),
            disable_hardlink: false,
            tag: String::new(),
            offline_stale: false,
        }
    }
}

/// A name and its attributes, as the kernel is told about it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: FileAttr,
    pub ttl: Duration,
}

/// Attribute changes requested by `setattr`; times are already resolved ("now" -> a time).
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// Filesystem statistics for statfs.
#[derive(Debug, Clone, Copy)]
pub struct FsStat {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// The filesystem: what the kernel holds (nodes, handles: [`state`]), what is cached of
/// the server ([`cache`]), and the remote.
pub struct Fs<R: Remote> {
    remote: Arc<R>,
    cfg: FsConfig,
    idmap: RwLock<IdMap>,
    /// The absolute remote path of the root, once known (for symlinks).
    abs_root: RwLock<Option<String>>,
    nodes: Arc<Mutex<Inodes>>,
    handles: Handles<R::File>,
    pub cache: Arc<MetaCache>,
    /// Directories being listed in the background.
    prefetcher: Arc<prefetch::Prefetcher>,
    pub stats: stats::FsStats,
    /// Makes and recognises the hidden names of files unlinked while open.
    hidden_names: Arc<unlinked::Unlinked>,
}

impl<R: Remote> Fs<R> {
    #[cfg(test)]
    pub fn new(remote: Arc<R>, cfg: FsConfig) -> Arc<Self> {
        Arc::new(Self::with_journal(
            remote,
            cfg,
            Arc::new(Journal::new(State::default())),
        ))
    }

    /// A filesystem writing its state to `journal` (see [`Fs::restore`]).
    /// The remote this filesystem runs on (for its counters).
    pub fn remote(&self) -> &R {
        &self.remote
    }

    pub fn with_journal(remote: Arc<R>, cfg: FsConfig, journal: Arc<Journal>) -> Self {
        let token = crate::ident::random_token();
        Fs {
            nodes: Arc::new(Mutex::new(Inodes::new(journal.clone(), &State::default()))),
            handles: Handles::new(journal),
            hidden_names: Arc::new(unlinked::Unlinked::new(&cfg.tag, &token)),
            idmap: RwLock::new(cfg.idmap.clone()),
            cache: Arc::new(MetaCache::new(cfg.attr_ttl, cfg.negative_ttl, cfg.dir_ttl)),
            prefetcher: Arc::default(),
            stats: stats::FsStats::default(),
            remote,
            cfg,
            abs_root: RwLock::new(None),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// Checks the remote root (exists, is a directory) and learns what needs a server:
    /// its absolute path and, with `idmap=user`, the login's ids.
    pub async fn prepare(&self) -> FsResult<()> {
        let root = self.root_path();
        let attrs = self.remote.stat(&root).await.map_err(|e| {
            FsError::new(
                e.errno(),
                format!("remote path '{}': {}", root, errno_text(e.errno())),
            )
        })?;
        if attrs.kind() != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("remote path '{root}' is not a directory"),
            ));
        }
        self.cache.root_seen(&attrs);
        if let Ok(abs) = self.remote.realpath(&root).await {
            if let Ok(mut r) = self.abs_root.write() {
                *r = Some(abs);
            }
        }
        if self.cfg.idmap_user {
            let home = self.remote.stat(".").await?;
            if let (Some(u), Some(g), Ok(mut m)) = (home.uid, home.gid, self.idmap.write()) {
                m.map_login(
                    u,
                    g,
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw(),
                );
            }
        }
        Ok(())
    }

    fn root_path(&self) -> String {
        if self.cfg.root.is_empty() {
            ".".to_string()
        } else {
            self.cfg.root.clone()
        }
    }

    /// Remote path of a path relative to the root.
    fn remote_path(&self, rel: &str) -> String {
        let root = self.root_path();
        if rel.is_empty() {
            root
        } else if root.ends_with('/') {
            format!("{root}{rel}")
        } else {
            format!("{root}/{rel}")
        }
    }

    fn rel_path(&self, ino: u64) -> FsResult<String> {
        self.with_inodes(|t| t.rel_path(ino))?
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("inode {ino} is gone")))
    }

    /// Remote path of inode `ino`.
    fn path_of(&self, ino: u64) -> FsResult<String> {
        Ok(self.remote_path(&self.rel_path(ino)?))
    }

    /// Remote path of `name` inside directory `parent`, and its relative path.
    fn child_path(&self, parent: u64, name: &str) -> FsResult<String> {
        check_name(name)?;
        let rel = self.rel_path(parent)?;
        Ok(if rel.is_empty() {
            self.remote_path(name)
        } else {
            self.remote_path(&format!("{rel}/{name}"))
        })
    }

    fn with_inodes<T>(&self, f: impl FnOnce(&mut Inodes) -> T) -> FsResult<T> {
        let mut t = self
            .nodes
            .lock()
            .map_err(|_| FsError::new(libc::EIO, "inode table poisoned"))?;
        Ok(f(&mut t))
    }

    /// The attributes the kernel sees for remote attributes `a` of inode `ino`.
    pub fn file_attr(&self, ino: u64, a: &Attrs) -> FileAttr {
        let map = self.idmap.read().map(|m| m.clone()).unwrap_or_default();
        let mode = a.mode.unwrap_or(0);
        let kind = file_type(mode);
        let time = |s: Option<u32>| UNIX_EPOCH + Duration::from_secs(s.unwrap_or(0) as u64);
        // The kernel's sizes are signed: a server's u64::MAX must not read as -1.
        let size = a.size.unwrap_or(0).min(i64::MAX as u64);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(a.atime),
            mtime: time(a.mtime),
            ctime: time(a.mtime),
            crtime: time(a.mtime),
            kind,
            perm: map.perm(mode),
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: map.uid(a.uid),
            gid: map.gid(a.gid),
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }

    /// Fetches attributes of a remote path, through the cache. Follows symlinks with
    /// `follow_symlinks` (a dangling link is shown as the link). For a `lookup`, the
    /// session may open the file ahead of the open that usually follows.
    async fn fetch_attrs(&self, path: &str, lookup: bool) -> FsResult<Attrs> {
        if let Some(a) = self.cache.get(path) {
            return Ok(a);
        }
        if self.cache.is_missing(path) {
            return Err(FsError::new(libc::ENOENT, "cached: no such file"));
        }
        if self.cfg.offline_stale && !self.remote.is_connected() {
            if let Some(a) = self.cache.last_seen(path) {
                return Ok(a);
            }
        }
        let fetch = self.cache.begin_attrs(path);
        let fetched = if lookup {
            self.remote.lstat_ahead(path).await
        } else {
            self.remote.lstat(path).await
        };
        let mut attrs = match fetched {
            Ok(a) => a,
            Err(e) => {
                if e.errno() == libc::ENOENT {
                    fetch.missing();
                }
                return Err(e.into());
            }
        };
        if self.cfg.follow_symlinks && attrs.kind() == Kind::Symlink {
            if let Ok(t) = self.remote.stat(path).await {
                attrs = t;
            }
        }
        fetch.put(&attrs);
        Ok(attrs)
    }

    /// Registers `parent/name` with the kernel and builds its entry.
    fn entry(&self, parent: u64, name: &str, attrs: &Attrs) -> FsResult<Entry> {
        let ino = self.with_inodes(|t| t.lookup(parent, name, attrs.kind()))?;
        Ok(Entry {
            attr: self.file_attr(ino, attrs),
            ttl: self.cfg.entry_ttl,
        })
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Entry> {
        if unlinked::is_hidden(name) {
            return Err(FsError::new(libc::ENOENT, "no such file"));
        }
        let path = self.child_path(parent, name)?;
        // A miss in a directory whose names are not known: list it in the background.
        if let Some((dir, name)) = listings::split(&path) {
            if self.cache.dirs.contains(dir, name).is_none() && self.cache.peek(&path).is_none() {
                self.prefetch(dir);
            }
        }
        let attrs = self.fetch_attrs(&path, true).await?;
        self.entry(parent, name, &attrs)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let _ = self.with_inodes(|t| t.forget(ino, n));
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<(FileAttr, Duration)> {
        let path = self.path_of(ino)?;
        if ino != inode::ROOT {
            let attrs = self.fetch_attrs(&path, false).await?;
            return Ok((self.node_attr(ino, &attrs), self.cfg.attr_ttl));
        }
        if !self.remote.is_connected() {
            let known = self.cache.root();
            let attrs = known.unwrap_or_else(|| Attrs::with_perm(0o755 | libc::S_IFDIR));
            return Ok((self.file_attr(ino, &attrs), Duration::from_secs(1)));
        }
        let attrs = self.remote.stat(&path).await?;
        self.cache.root_seen(&attrs);
        Ok((self.file_attr(ino, &attrs), self.cfg.attr_ttl))
    }

    /// [`Fs::file_attr`] for `stat` of a node: one unlinked while open has no links left.
    fn node_attr(&self, ino: u64, a: &Attrs) -> FileAttr {
        let mut attr = self.file_attr(ino, a);
        if self.with_inodes(|t| t.is_hidden(ino)).unwrap_or(false) {
            attr.nlink = 0;
        }
        attr
    }

    pub async fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        req: SetAttr,
    ) -> FsResult<(FileAttr, Duration)> {
        let path = self.path_of(ino)?;
        let mut current = None;
        let mut change = Attrs::default();
        if req.uid.is_some() || req.gid.is_some() {
            // Ownership is forced or mapped locally; a login cannot chown on the server.
            // Setting the owner it already shows is accepted (cp -p, tar, rsync do it).
            let a = self.remote.lstat(&path).await?;
            let shown = self.file_attr(ino, &a);
            if req.uid.is_some_and(|u| u != shown.uid) || req.gid.is_some_and(|g| g != shown.gid) {
                return Err(FsError::new(
                    libc::EPERM,
                    "cannot change the owner of a remote file",
                ));
            }
            current = Some(a);
        }
        if let Some(m) = req.mode {
            change.mode = Some(m & 0o7777);
        }
        if let Some(s) = req.size {
            change.size = Some(s);
        }
        if req.atime.is_some() || req.mtime.is_some() {
            // SFTP v3 sets both times at once: keep the one not being changed.
            let a = match current.take() {
                Some(a) => a,
                None => self.remote.lstat(&path).await?,
            };
            let secs = |t: SystemTime| {
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as u32)
                    .unwrap_or(0)
            };
            change.atime = Some(req.atime.map(secs).or(a.atime).unwrap_or(0));
            change.mtime = Some(req.mtime.map(secs).or(a.mtime).unwrap_or(0));
        }
        if change != Attrs::default() {
            let r = match fh {
                Some(fh) => {
                    let f = self.handles.file(fh)?;
                    self.remote.fsetstat(&f.remote, &change).await
                }
                None => self.remote.setstat(&path, &change).await,
            };
            self.cache.invalidate(&path);
            r?;
        }
        let attrs = self.remote.lstat(&path).await?;
        self.cache.put(&path, &attrs);
        Ok((self.file_attr(ino, &attrs), self.cfg.attr_ttl))
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<String> {
        let rel = self.rel_path(ino)?;
        let target = self.remote.readlink(&self.remote_path(&rel)).await?;
        // A server whose READLINK resolves the link answers an absolute path (unless the
        // session knew the link's text): shown relative where it lies inside the mount.
        let policy = symlink::Policy {
            contain: self.cfg.contain_symlinks,
            transform: self.cfg.transform_symlinks || self.remote.capabilities().readlink_resolves,
        };
        let abs_root = self.abs_root.read().ok().and_then(|r| r.clone());
        symlink::show(abs_root.as_deref(), &rel, &target, policy).map_err(|symlink::Outside| {
            tracing::warn!(link = %rel, %target, "a link on the server leads out of the mount: refused (contain_symlinks)");
            FsError::new(libc::EPERM, "symlink leads out of the mount")
        })
    }

    pub async fn statfs(&self) -> FsResult<FsStat> {
        if !self.remote.capabilities().statvfs {
            // No statvfs on this server: report a large, empty filesystem (as sshfs).
            return Ok(FsStat {
                blocks: 1 << 40,
                bfree: 1 << 40,
                bavail: 1 << 40,
                files: 1 << 30,
                ffree: 1 << 30,
                bsize: 4096,
                namelen: NAME_MAX as u32,
                frsize: 4096,
            });
        }
        let s = self.remote.statvfs(&self.root_path()).await?;
        Ok(FsStat {
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bavail,
            files: s.files,
            ffree: s.ffree,
            bsize: s.bsize.min(u32::MAX as u64) as u32,
            namelen: if s.namemax == 0 {
                NAME_MAX as u32
            } else {
                s.namemax.min(u32::MAX as u64) as u32
            },
            frsize: s.frsize.min(u32::MAX as u64) as u32,
        })
    }

    /// Number of inodes the kernel holds (for status).
    pub fn inode_count(&self) -> usize {
        self.nodes.lock().map(|t| t.count()).unwrap_or(0)
    }
}

/// Names the kernel sends are single components; refuse what SFTP would misread.
fn check_name(name: &str) -> FsResult<()> {
    if crate::name_bytes::byte_len(name) > NAME_MAX {
        return error::err(libc::ENAMETOOLONG, "name too long");
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return error::err(libc::EINVAL, "invalid name");
    }
    Ok(())
}

/// The kernel's file type for a remote mode.
pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// strerror text for an errno, for messages.
pub fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}
