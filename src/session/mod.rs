//! The logical session: remote operations that survive connection loss.
//!
//! Owns [`Session`], the real [`Remote`]: every request goes through [`replay::run`]
//! (wait for a link, resend after a transport error, reconcile non-idempotent outcomes),
//! file handles are logical ([`handles`]) and reopened on new connections, and the
//! [`supervisor`] keeps a connection up. It must never know about inodes, caches or the
//! kernel, and never import the filesystem layer.

pub mod handles;
pub mod remote;
pub mod replay;
pub mod supervisor;
pub mod writeback;

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::try_join_all;
use tokio::sync::Semaphore;

use crate::ssh::{SshError, Target};

pub use remote::{
    Attrs, Capabilities, DirEntry, FileId, Kind, OpenMode, Remote, RemoteError, RemoteResult,
    RenameMode, SftpError, StatVfs,
};
use replay::{exists_is_done, gone_is_done, renamed_is_done, ReplayStats};
use supervisor::{Link, LinkState, Supervisor};

pub struct Session {
    me: Weak<Session>,
    /// One supervisor per connection (`max_conns`); the first is the primary, whose state
    /// and counters the status socket reports.
    sups: Vec<Arc<Supervisor>>,
    handles: handles::Handles,
    timeout: Duration,
    pub replay_stats: ReplayStats,
    caps: std::sync::Mutex<Capabilities>,
    /// Bytes of acknowledged, unconfirmed writes allowed across all files.
    write_budget: Arc<Semaphore>,
    /// The budget's size; 0 means every write waits for the server (sync writes).
    write_behind: usize,
}

impl Session {
    /// `timeout` bounds how long one operation waits for a working connection;
    /// `write_behind` is how many bytes of writes may be acknowledged before the server
    /// confirmed them (0: none); `conns` how many connections carry requests.
    pub fn new(target: Target, timeout: Duration, write_behind: usize, conns: usize) -> Arc<Self> {
        // One SFTP request unanswered this long means a stuck connection (keepalives
        // usually notice sooner); it is then replayed on a new one. Generous, because it
        // also bounds slow server operations such as fsync of a large file.
        let request_timeout = Duration::from_secs(60);
        Arc::new_cyclic(|me| Session {
            me: me.clone(),
            sups: {
                let target = Arc::new(target);
                (0..conns.max(1))
                    .map(|_| Supervisor::new(target.clone(), request_timeout))
                    .collect()
            },
            handles: handles::Handles::default(),
            timeout,
            replay_stats: ReplayStats::default(),
            caps: std::sync::Mutex::new(Capabilities::default()),
            write_budget: Arc::new(Semaphore::new(write_behind)),
            write_behind,
        })
    }

    /// Bytes acknowledged to applications that the server has not confirmed yet.
    pub fn unconfirmed_bytes(&self) -> usize {
        self.write_behind
            .saturating_sub(self.write_budget.available_permits())
    }

    /// Waits until the writes of every open file whose path satisfies `pred` are answered
    /// (so a request about that file sees their effect).
    async fn settle_paths(&self, pred: impl Fn(&str) -> bool) {
        if self.unconfirmed_bytes() == 0 {
            return;
        }
        for f in self.handles.writing(pred) {
            f.wb.drain().await;
        }
    }

    /// Waits for every unconfirmed write (before the daemon exits).
    pub async fn drain_all(&self) {
        self.settle_paths(|_| true).await
    }

    /// Connects once, reporting why not (used when the mount must not start without a
    /// server). Returns the link for [`Session::start`].
    pub async fn connect_first(&self) -> Result<Arc<Link>, SshError> {
        let link = self.primary().connect_once().await?;
        self.learn_caps(&link);
        Ok(link)
    }

    fn learn_caps(&self, link: &Link) {
        let e = &link.sftp.extensions;
        if let Ok(mut c) = self.caps.lock() {
            *c = Capabilities {
                hardlink: e.hardlink,
                fsync: e.fsync,
                statvfs: e.statvfs,
            };
        }
    }

    /// Starts the supervisors (and so connecting and reconnecting) in the background.
    pub fn start(self: &Arc<Self>, first: Option<Arc<Link>>) {
        let mut first = first;
        for sup in &self.sups {
            tokio::spawn(sup.clone().run(first.take()));
        }
    }

    pub fn state(&self) -> LinkState {
        self.primary().state()
    }

    /// The primary connection's supervisor (status reporting).
    pub fn supervisor(&self) -> &Supervisor {
        self.primary()
    }

    /// Connections configured (`max_conns`) and up right now.
    pub fn connections(&self) -> usize {
        self.sups.len()
    }

    pub fn connections_up(&self) -> usize {
        self.sups.iter().filter(|s| s.is_up()).count()
    }

    fn primary(&self) -> &Supervisor {
        // `new` makes at least one.
        &self.sups[0]
    }

    /// The connection for requests about `key` (a path) and `stripe` (a part of the
    /// file): always the same one for the same pair, so requests sent back to back stay in
    /// order; a live one while that is down.
    fn sup_for(&self, key: &str, stripe: u64) -> &Supervisor {
        use std::hash::{Hash, Hasher};
        let n = self.sups.len();
        if n == 1 {
            return self.primary();
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let i = (h.finish().wrapping_add(stripe) % n as u64) as usize;
        if self.sups[i].is_up() {
            return &self.sups[i];
        }
        self.sups
            .iter()
            .find(|s| s.is_up())
            .map_or(self.primary(), |s| s)
    }

    pub fn open_files(&self) -> usize {
        self.handles.len()
    }

    /// Runs `op` through replay on the connection for `key` (see [`Session::sup_for`]).
    async fn run<T, F, Fut>(&self, what: &str, key: (&str, u64), op: F) -> RemoteResult<T>
    where
        F: Fn(Arc<Link>, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        let sup = self.sup_for(key.0, key.1);
        replay::run(sup, &self.replay_stats, self.timeout, what, op).await
    }

    /// The open file behind `f`, once every write to its path is answered.
    async fn settled(&self, f: FileId) -> RemoteResult<Arc<handles::OpenFile>> {
        let file = self.handles.get(f).ok_or(RemoteError::BadHandle)?;
        let path = file.path();
        self.settle_paths(|p| p == path).await;
        Ok(file)
    }

    /// Runs `op` with the remote handle of `f` on a live link (reopening it there), after
    /// the writes to that file are answered.
    async fn with_handle<T, F, Fut>(&self, what: &str, f: FileId, op: F) -> RemoteResult<T>
    where
        F: Fn(Arc<Link>, Arc<crate::sftp::RemoteHandle>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        let file = self.settled(f).await?;
        self.with_file(what, &file, 0, op).await
    }

    /// Runs `op` with the remote handle of `file` on a live link (opening it there), on
    /// the connection for the file's `stripe`.
    async fn with_file<T, F, Fut>(
        &self,
        what: &str,
        file: &Arc<handles::OpenFile>,
        stripe: u64,
        op: F,
    ) -> RemoteResult<T>
    where
        F: Fn(Arc<Link>, Arc<crate::sftp::RemoteHandle>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        let stale = std::sync::atomic::AtomicBool::new(false);
        let path = file.path();
        let r = self
            .run(what, (&path, stripe), |link, _| {
                let file = file.clone();
                let stale = &stale;
                let op = &op;
                async move {
                    match file.on(&link).await? {
                        Some(h) => op(link, h).await,
                        None => {
                            stale.store(true, std::sync::atomic::Ordering::Relaxed);
                            Err(SftpError::Status {
                                code: russh_sftp::protocol::StatusCode::NoSuchFile,
                                message: "file vanished while open".into(),
                            })
                        }
                    }
                }
            })
            .await;
        if stale.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RemoteError::Stale);
        }
        r
    }

    /// Sends one write and waits for the server's answer (replaying it as needed).
    async fn write_now(
        &self,
        file: &Arc<handles::OpenFile>,
        offset: u64,
        data: &[u8],
    ) -> RemoteResult<()> {
        // Consecutive megabytes of a file go out on different connections (max_conns):
        // one connection's window would cap a far server's upload speed.
        self.with_file("write", file, offset >> 20, |l, h| async move {
            let chunk = l.sftp.max_write as usize;
            let parts = data.chunks(chunk).enumerate().map(|(i, c)| {
                let l = &l;
                let h = &h;
                async move {
                    l.sftp
                        .write(h, offset + (i * chunk) as u64, c.to_vec())
                        .await
                }
            });
            try_join_all(parts).await.map(|_| ())
        })
        .await
    }
}

impl Remote for Session {
    fn is_connected(&self) -> bool {
        self.primary().is_up()
    }

    fn capabilities(&self) -> Capabilities {
        if let LinkState::Up(l) = self.primary().state() {
            self.learn_caps(&l);
        }
        self.caps.lock().map(|c| *c).unwrap_or_default()
    }

    async fn lstat(&self, path: &str) -> RemoteResult<Attrs> {
        self.settle_paths(|p| p == path).await;
        self.run("lstat", (path, 0), |l, _| async move {
            l.sftp.lstat(path).await
        })
        .await
    }

    async fn stat(&self, path: &str) -> RemoteResult<Attrs> {
        self.settle_paths(|p| p == path).await;
        self.run(
            "stat",
            (path, 0),
            |l, _| async move { l.sftp.stat(path).await },
        )
        .await
    }

    async fn setstat(&self, path: &str, attrs: &Attrs) -> RemoteResult<()> {
        self.settle_paths(|p| p == path).await;
        self.run("setstat", (path, 0), |l, _| async move {
            l.sftp.setstat(path, attrs).await
        })
        .await
    }

    async fn read_dir(&self, path: &str, max: usize) -> RemoteResult<Option<Vec<DirEntry>>> {
        self.settle_paths(|p| p.rsplit_once('/').map_or("", |(d, _)| d) == path)
            .await;
        self.run("readdir", (path, 0), |l, _| async move {
            l.sftp.read_dir(path, max).await
        })
        .await
    }

    async fn readlink(&self, path: &str) -> RemoteResult<String> {
        self.run("readlink", (path, 0), |l, _| async move {
            l.sftp.readlink(path).await
        })
        .await
    }

    async fn realpath(&self, path: &str) -> RemoteResult<String> {
        self.run("realpath", (path, 0), |l, _| async move {
            l.sftp.realpath(path).await
        })
        .await
    }

    async fn mkdir(&self, path: &str, perm: u32) -> RemoteResult<()> {
        self.run("mkdir", (path, 0), |l, replay| async move {
            let r = l.sftp.mkdir(path, &Attrs::with_perm(perm)).await;
            exists_is_done(&l, replay, path, Kind::Dir, r).await
        })
        .await
    }

    async fn rmdir(&self, path: &str) -> RemoteResult<()> {
        self.run("rmdir", (path, 0), |l, replay| async move {
            gone_is_done(replay, l.sftp.rmdir(path).await)
        })
        .await
    }

    async fn remove(&self, path: &str) -> RemoteResult<()> {
        self.run("remove", (path, 0), |l, replay| async move {
            gone_is_done(replay, l.sftp.remove(path).await)
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> RemoteResult<()> {
        self.run("rename", (from, 0), |l, replay| async move {
            let r = match mode {
                // Plain SFTP rename refuses an existing target on OpenSSH, which is
                // exactly RENAME_NOREPLACE; the caller checked the target beforehand for
                // servers that replace.
                RenameMode::NoReplace => l.sftp.rename(from, to).await,
                RenameMode::Replace if l.sftp.extensions.posix_rename => {
                    l.sftp.posix_rename(from, to).await
                }
                RenameMode::Replace => match l.sftp.rename(from, to).await {
                    // No atomic replace on this server: remove the target, then rename.
                    Err(e) if !e.is_transport() && l.sftp.lstat(to).await.is_ok() => {
                        l.sftp.remove(to).await.map_err(|_| e)?;
                        l.sftp.rename(from, to).await
                    }
                    other => other,
                },
            };
            renamed_is_done(&l, replay, from, to, r).await
        })
        .await?;
        self.handles.renamed(from, to);
        Ok(())
    }

    async fn symlink(&self, target: &str, link: &str) -> RemoteResult<()> {
        self.run("symlink", (link, 0), |l, replay| async move {
            let r = l.sftp.symlink(target, link).await;
            exists_is_done(&l, replay, link, Kind::Symlink, r).await
        })
        .await
    }

    async fn hardlink(&self, from: &str, to: &str) -> RemoteResult<()> {
        self.run("link", (to, 0), |l, replay| async move {
            let r = l.sftp.hardlink(from, to).await;
            exists_is_done(&l, replay, to, Kind::File, r).await
        })
        .await
    }

    async fn statvfs(&self, path: &str) -> RemoteResult<StatVfs> {
        self.run("statvfs", (path, 0), |l, _| async move {
            l.sftp.statvfs(path).await
        })
        .await
    }

    async fn open(&self, path: &str, mode: OpenMode, perm: Option<u32>) -> RemoteResult<FileId> {
        self.settle_paths(|p| p == path).await;
        let attrs = perm.map(Attrs::with_perm).unwrap_or_default();
        let (link, h) = self
            .run("open", (path, 0), |l, replay| {
                let attrs = &attrs;
                async move {
                    // A replayed exclusive create that finds the file: the first attempt
                    // made it. Open it without O_EXCL/O_TRUNC.
                    let m = if replay && mode.exclusive {
                        OpenMode {
                            exclusive: false,
                            truncate: false,
                            ..mode
                        }
                    } else {
                        mode
                    };
                    let h = l.sftp.open(path, m, attrs).await?;
                    Ok((l, h))
                }
            })
            .await?;
        Ok(self.handles.insert(path, mode, &link, h))
    }

    async fn read(
        &self,
        f: FileId,
        offset: u64,
        len: u32,
        size: Option<u64>,
    ) -> RemoteResult<Vec<u8>> {
        self.with_handle("read", f, |l, h| async move {
            let chunk = l.sftp.max_read;
            // Pipeline: every chunk of the request in flight at once.
            let parts = (0..len.div_ceil(chunk)).map(|i| {
                let off = offset + (i * chunk) as u64;
                let n = chunk.min(len - i * chunk);
                let l = &l;
                let h = &h;
                async move { l.sftp.read(h, off, n).await.map(|d| (n, d)) }
            });
            let parts = try_join_all(parts).await?;
            // The data ends at the first short part. That is the end of the file if a
            // later part came back empty or the known size ends there (no round trip
            // more); else the server returned less than asked: read on until EOF or full.
            let short = parts
                .iter()
                .position(|(asked, d)| (d.len() as u32) < *asked);
            let keep = short.map_or(parts.len(), |i| i + 1);
            let got: u64 = parts[..keep].iter().map(|(_, d)| d.len() as u64).sum();
            let eof_known = short.is_none_or(|i| {
                size == Some(offset + got) || parts[i + 1..].iter().any(|(_, d)| d.is_empty())
            });
            let mut data = parts.into_iter().take(keep).map(|(_, d)| d);
            // The first part becomes the reply buffer: one copy less.
            let mut out = data.next().unwrap_or_default();
            out.reserve((len as usize).saturating_sub(out.len()));
            for d in data {
                out.extend_from_slice(&d);
            }
            while !eof_known && (out.len() as u32) < len {
                let more = l
                    .sftp
                    .read(&h, offset + out.len() as u64, len - out.len() as u32)
                    .await?;
                if more.is_empty() {
                    break;
                }
                out.extend_from_slice(&more);
            }
            Ok(out)
        })
        .await
    }

    async fn write(&self, f: FileId, offset: u64, data: Vec<u8>) -> RemoteResult<()> {
        let file = self.handles.get(f).ok_or(RemoteError::BadHandle)?;
        let len = data.len();
        let me = self.me.upgrade();
        let (Some(me), true) = (me, len <= self.write_behind) else {
            file.wb.settle().await?;
            return self.write_now(&file, offset, &data).await;
        };
        // The semaphore is never closed; a failure here cannot happen.
        let permit = self
            .write_budget
            .clone()
            .acquire_many_owned(len as u32)
            .await
            .map_err(|_| RemoteError::BadHandle)?;
        file.wb.begin(offset, len).await?;
        tokio::spawn(async move {
            let r = me.write_now(&file, offset, &data).await;
            if let Err(e) = &r {
                tracing::warn!(path = %file.path(), offset, error = %e,
                    "acknowledged write failed; reported at the next flush, fsync or close");
            }
            file.wb.end(offset, len, r);
            drop(permit);
        });
        Ok(())
    }

    async fn flush(&self, f: FileId) -> RemoteResult<()> {
        let file = self.handles.get(f).ok_or(RemoteError::BadHandle)?;
        file.wb.settle().await
    }

    async fn fstat(&self, f: FileId) -> RemoteResult<Attrs> {
        self.with_handle("fstat", f, |l, h| async move { l.sftp.fstat(&h).await })
            .await
    }

    async fn fsetstat(&self, f: FileId, attrs: &Attrs) -> RemoteResult<()> {
        self.with_handle("fsetstat", f, |l, h| async move {
            l.sftp.fsetstat(&h, attrs).await
        })
        .await
    }

    async fn fsync(&self, f: FileId) -> RemoteResult<()> {
        self.flush(f).await?;
        if !self.capabilities().fsync {
            // Every write is confirmed now; there is no way to ask the server to flush its
            // own disk.
            return Ok(());
        }
        self.with_handle("fsync", f, |l, h| async move { l.sftp.fsync(&h).await })
            .await
    }

    async fn close(&self, f: FileId) -> RemoteResult<()> {
        // Every write is answered before the handle goes; a failed one is reported here.
        let written = self.flush(f).await;
        let file = self.handles.remove(f).ok_or(RemoteError::BadHandle)?;
        file.close_all().await;
        written
    }
}
