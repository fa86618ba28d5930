//! The fuser adapter: kernel requests in, [`Fs`] calls on the tokio runtime, replies out.
//!
//! Owns only translation: argument types, the kernel connection's tuning (`init`), and
//! replying. Every request runs as its own task so slow remote calls never block the
//! kernel's request loop, and passes the [`gate`] a handover closes. It must never contain
//! filesystem logic; that lives in [`crate::fs`].

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

pub mod gate;
mod reply;

use reply::{errno, kernel_name, text, time};

use crate::fs::{Fs, SetAttr};
use crate::name_bytes;
use crate::session::Remote;
use gate::Gate;

/// Largest read/write the kernel sends in one request.
const MAX_IO: u32 = 1024 * 1024;

pub struct FuseFs<R: Remote> {
    fs: Arc<Fs<R>>,
    rt: tokio::runtime::Handle,
    negative_ttl: Duration,
    /// Closed by a handover: see [`gate`].
    gate: Arc<Gate>,
}

impl<R: Remote> FuseFs<R> {
    pub fn new(fs: Arc<Fs<R>>, rt: tokio::runtime::Handle, gate: Arc<Gate>) -> Self {
        let negative_ttl = fs.config().negative_ttl;
        FuseFs {
            fs,
            rt,
            negative_ttl,
            gate,
        }
    }
}

impl<R: Remote> Filesystem for FuseFs<R> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        let supported = config.capabilities() & wanted;
        let _ = config.add_capabilities(supported);
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some((pass, reply)) = self.gate.enter(reply) else {
            return;
        };
        let fs = self.fs.clone();
        let neg = self.negative_ttl;
        let name = text(name);
        self.spawn(async move {
            tracing::trace!(op = "lookup", %name, "kernel request");
            let r = fs.stats.track("lookup", fs.lookup(parent.0, &name).await);
            pass.reply(reply, |reply| match r {
                Ok(e) => reply.entry(&e.ttl, &e.attr, Generation(0)),
                Err(e) if e.errno == libc::ENOENT && !neg.is_zero() => {
                    // A negative entry (inode 0) the kernel may cache for `neg`.
                    let mut attr = fs.file_attr(0, &Default::default());
                    attr.ino = INodeNo(0);
                    reply.entry(&neg, &attr, Generation(0))
                }
                Err(e) => reply.error(errno("lookup", e)),
            })
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(
            "getattr",
            move |fs| async move {
                match fh {
                    Some(fh) => fs.getattr_open(ino.0, fh.0).await,
                    None => fs.getattr(ino.0).await,
                }
            },
            move |r| match r {
                Ok((attr, ttl)) => reply.attr(&ttl, &attr),
                Err(e) => reply.error(e),
            },
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let req = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time(atime),
            mtime: time(mtime),
        };
        self.run(
            "setattr",
            move |fs| async move { fs.setattr(ino.0, fh.map(|f| f.0), req).await },
            move |r| match r {
                Ok((attr, ttl)) => reply.attr(&ttl, &attr),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(
            "readlink",
            move |fs| async move { fs.readlink(ino.0).await },
            move |r| match r {
                Ok(t) => reply.data(&name_bytes::encode(&t)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // SFTP has no way to make device nodes, FIFOs or sockets.
            return reply.error(Errno::EPERM);
        }
        let name = text(name);
        self.reply_entry("mknod", reply, move |fs| async move {
            let (entry, fh) = fs
                .create(parent.0, &name, mode, libc::O_WRONLY | libc::O_EXCL)
                .await?;
            fs.release(fh).await.map(|_| entry)
        });
    }
    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = text(name);
        self.reply_entry("mkdir", reply, move |fs| async move {
            fs.mkdir(parent.0, &name, mode).await
        });
    }
    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = text(name);
        self.reply_empty("unlink", reply, move |fs| async move {
            fs.unlink(parent.0, &name).await
        });
    }
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = text(name);
        self.reply_empty("rmdir", reply, move |fs| async move {
            fs.rmdir(parent.0, &name).await
        });
    }
    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = (text(link_name), text(target.as_os_str()));
        self.reply_entry("symlink", reply, move |fs| async move {
            fs.symlink(parent.0, &name, &target).await
        });
    }
    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (name, newname) = (text(name), text(newname));
        self.reply_empty("rename", reply, move |fs| async move {
            fs.rename(parent.0, &name, newparent.0, &newname, noreplace)
                .await
        });
    }
    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = text(newname);
        self.reply_entry("link", reply, move |fs| async move {
            fs.link(ino.0, newparent.0, &name).await
        });
    }
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.reply_open("open", reply, FopenFlags::empty(), move |fs| async move {
            fs.open(ino.0, flags.0).await
        });
    }
    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(
            "read",
            move |fs| async move { fs.read(fh.0, offset, size).await },
            move |r| match r {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = bytes::Bytes::copy_from_slice(data);
        self.run(
            "write",
            move |fs| async move { fs.write(fh.0, offset, data).await },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(
            "flush",
            reply,
            move |fs| async move { fs.flush(fh.0).await },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel ignores release's outcome (close(2) got flush's): answer at once and
        // close the remote handle behind the application's back, saving it a round trip.
        // The close runs under the same pass: a handover waits for it (asking the gate
        // again could park it, and a file unlinked while open would stay on the server).
        let Some((pass, reply)) = self.gate.enter(reply) else {
            return;
        };
        reply.ok();
        let (fs, closing) = (self.fs.clone(), self.fs.release(fh.0));
        self.spawn(async move {
            let _pass = pass;
            let _ = fs.stats.track("release", closing.await);
        });
    }
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(
            "fsync",
            reply,
            move |fs| async move { fs.fsync(fh.0).await },
        );
    }
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel caches what readdir returned (FOPEN_CACHE_DIR) and keeps that copy
        // while the listing behind it is unchanged (it also drops it when the directory's
        // mtime moves or this mount changes it).
        let flags = FopenFlags::FOPEN_CACHE_DIR;
        self.reply_open("opendir", reply, flags, move |fs| async move {
            fs.opendir(ino.0).await
        });
    }
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some((_pass, mut reply)) = self.gate.enter(reply) else {
            return;
        };
        let listing = match self.fs.listing(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(errno("readdir", e)),
        };
        // Offsets: 0 ".", 1 "..", then entry i at i + 2; each entry carries the next offset.
        let mut off = offset;
        while off < 2 {
            let (name, target) = if off == 0 {
                (".", ino.0)
            } else {
                ("..", listing.parent)
            };
            if reply.add(INodeNo(target), off + 1, fuser::FileType::Directory, name) {
                return reply.ok();
            }
            off += 1;
        }
        for (i, e) in listing.entries.iter().enumerate().skip((off - 2) as usize) {
            let child = self.fs.peek_ino(ino.0, &e.name);
            if reply.add(INodeNo(child), i as u64 + 3, e.kind, kernel_name(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let Some((_pass, mut reply)) = self.gate.enter(reply) else {
            return;
        };
        let listing = match self.fs.listing(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(errno("readdirplus", e)),
        };
        let mut off = offset;
        if off < 2 {
            // "." and ".." carry no lookup reference; the kernel ignores their attributes.
            let dot = self
                .fs
                .file_attr(ino.0, &crate::session::Attrs::with_perm(0o755));
            let ttl = Duration::ZERO;
            while off < 2 {
                let name = if off == 0 { "." } else { ".." };
                if reply.add(INodeNo(ino.0), off + 1, name, &ttl, &dot, Generation(0)) {
                    return reply.ok();
                }
                off += 1;
            }
        }
        for (i, e) in listing.entries.iter().enumerate().skip((off - 2) as usize) {
            let entry = match self.fs.listed_entry(ino.0, e) {
                Ok(en) => en,
                Err(err) => return reply.error(errno("readdirplus", err)),
            };
            if reply.add(
                entry.attr.ino,
                i as u64 + 3,
                kernel_name(&e.name),
                &entry.ttl,
                &entry.attr,
                Generation(0),
            ) {
                // Not sent: the kernel holds no reference for it.
                self.fs.forget(entry.attr.ino.0, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let Some((_pass, reply)) = self.gate.enter(reply) else {
            return;
        };
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(
            "fsyncdir",
            reply,
            move |fs| async move { fs.fsyncdir().await },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(
            "statfs",
            move |fs| async move { fs.statfs().await },
            move |r| match r {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                Err(e) => reply.error(e),
            },
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions) or the server's.
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = text(name);
        self.run(
            "create",
            move |fs| async move { fs.create(parent.0, &name, mode, flags).await },
            move |r| match r {
                Ok((e, fh)) => reply.created(
                    &e.ttl,
                    &e.attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            },
        );
    }
}
