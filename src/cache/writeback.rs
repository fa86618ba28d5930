//! Write-back (`cache_writeback=on`): changes complete against the local disk and reach
//! the server behind, in order, through a crash too.
//!
//! Owns the pending state of a mount: the operation log ([`oplog`]), the pending namespace
//! built from it ([`pending`]), the data files of files written and not yet uploaded, the
//! queue the uploader drains, and who waits for what (fsync, a change that needs the
//! server's state first, a full cache). A change is recorded under one lock, in the order
//! the namespace changes, and acknowledged once the log is durable. It never talks to the
//! server: [`super::uploader`] does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

use super::oplog::{self, Op, OpLog, Record};
use super::pending::{within, Answer, Node, Pending};
use super::seen::Seen;
use super::store::Store;
use crate::meta::Attrs;
use crate::session::remote::{RemoteError, RemoteResult};

/// `cache_writeback=on` and `fsync=` as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritebackConfig {
    /// `fsync=remote` (true, the default): fsync waits until the server has the file.
    pub fsync_remote: bool,
}

/// How old the oldest pending change may get before the mount reports itself degraded.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// Counters the status report reads.
#[derive(Default)]
pub struct WritebackStats {
    pub uploaded: AtomicU64,
    pub upload_errors: AtomicU64,
    pub conflicts: AtomicU64,
}

/// The earliest change the server refuses (retried until it takes it): what holds the
/// changes that depend on it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub seq: u64,
    pub op: String,
    pub error: String,
    pub since: std::time::Instant,
}

/// A queued change, and where its upload is.
pub struct Queued {
    pub rec: Record,
    /// It no longer matters (a file removed before its upload).
    pub skip: bool,
    pub stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Waiting,
    Uploading,
    /// On the server; leaves the queue once every change before it has too.
    Done,
}

/// Changes the uploader looks at from the front of the queue for ones it may send now.
const WINDOW: usize = 64;

/// Whether two changes touch the same path or one inside the other's: they must reach the
/// server in the log's order. Others may go at once.
pub fn depends(a: &Op, b: &Op) -> bool {
    a.paths()
        .iter()
        .any(|p| b.paths().iter().any(|q| within(p, q) || within(q, p)))
}

struct State {
    log: OpLog,
    pending: Pending,
    queue: VecDeque<Queued>,
    last_seq: u64,
    next_data: u64,
    /// Data files no node reads any more, once no open file does either.
    orphans: Vec<u64>,
    /// Bytes of `cache_size=` each data file holds.
    sizes: HashMap<u64, u64>,
}

pub struct Writeback {
    data_dir: PathBuf,
    state: Mutex<State>,
    /// The log, synced through this descriptor while others append.
    syncer: File,
    /// Records durable up to this sequence number.
    synced: Mutex<u64>,
    /// Every record up to this one is on the server.
    done: watch::Sender<u64>,
    pub wake: Notify,
    pub cfg: WritebackConfig,
    pub store: Arc<Store>,
    pub stats: WritebackStats,
    /// Bytes of data files pending upload.
    pub pending_bytes: AtomicU64,
    /// What the server showed lately, shared with the cache layer: an upload confirmed
    /// adds what it left there (what a later write of the same path replaces).
    pub seen: Arc<Seen>,
    refusal: Mutex<Option<Refusal>>,
}

/// What the status report shows of the pending changes.
pub struct Backlog {
    pub ops: u64,
    pub bytes: u64,
    pub oldest_secs: Option<u64>,
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn io_err(e: std::io::Error) -> RemoteError {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    RemoteError::refused(errno, format!("write-back cache: {e}"))
}

/// Applies a recorded change to the pending namespace.
fn apply(p: &mut Pending, rec: &Record) {
    let mtime = rec.at as u32;
    match &rec.op {
        Op::Mkdir { path, perm, owner } => p.set(
            path,
            Node::Dir {
                perm: *perm,
                mtime,
                owner: *owner,
            },
            rec.seq,
        ),
        Op::Put {
            path,
            data,
            size,
            perm,
            mtime,
            owner,
            ..
        } => p.set(
            path,
            Node::File {
                data: *data,
                size: *size,
                perm: *perm,
                mtime: *mtime,
                owner: *owner,
            },
            rec.seq,
        ),
        Op::Remove { path } | Op::Rmdir { path } => p.set(path, Node::Gone, rec.seq),
        Op::Rename { from, to, shown } => p.rename(from, to, shown.as_ref(), rec.seq),
        Op::SetStat {
            path,
            perm: new_perm,
            mtime: new_mtime,
            shown,
        } => {
            let (perm, mtime) = (*new_perm, *new_mtime);
            let node = match p.node(path).cloned() {
                Some(Node::File {
                    data,
                    size,
                    perm: p0,
                    mtime: m0,
                    owner,
                }) => Node::File {
                    data,
                    size,
                    perm: perm.unwrap_or(p0),
                    mtime: mtime.unwrap_or(m0),
                    owner,
                },
                Some(Node::Dir {
                    perm: p0,
                    mtime: m0,
                    owner,
                }) => Node::Dir {
                    perm: perm.unwrap_or(p0),
                    mtime: mtime.unwrap_or(m0),
                    owner,
                },
                found => {
                    let (at, mut s) = match (found, shown) {
                        (Some(Node::Server { at, shown }), _) => (at, shown),
                        (None, Some(s)) => (p.server_path(path), s.clone()),
                        _ => return,
                    };
                    s.perm = perm.unwrap_or(s.perm);
                    s.mtime = mtime.unwrap_or(s.mtime);
                    Node::Server { at, shown: s }
                }
            };
            p.set(path, node, rec.seq);
        }
    }
}

impl State {
    /// Data files a node reads, or a queued upload sends.
    fn data_in_use(&self) -> HashSet<u64> {
        let queued = self.queue.iter().filter_map(|q| match q.rec.op {
            Op::Put { data, .. } => Some(data),
            _ => None,
        });
        self.pending.data_in_use().chain(queued).collect()
    }
}

impl Writeback {
    /// Opens the pending state in `dir` (the cache directory's `writeback/`), resuming
    /// what an earlier daemon left.
    pub fn open(dir: &Path, store: Arc<Store>, cfg: WritebackConfig) -> Result<Arc<Self>, String> {
        let what = |e: std::io::Error| format!("cache write-back in {}: {e}", dir.display());
        let data_dir = dir.join("data");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .map_err(what)?;
        let loaded = OpLog::open(dir).map_err(what)?;
        if loaded.torn > 0 {
            tracing::warn!(
                bytes = loaded.torn,
                "write-back log: cut off the end of a record a crash interrupted (never acknowledged)"
            );
        }
        let mut pending = Pending::default();
        let mut queue = VecDeque::new();
        let mut bytes = 0;
        for rec in loaded.pending {
            apply(&mut pending, &rec);
            queue.push_back(Queued {
                rec,
                skip: false,
                stage: Stage::Waiting,
            });
        }
        // Data files no pending record names were never acknowledged (or are uploaded).
        let named: HashSet<u64> = queue
            .iter()
            .filter_map(|q| match q.rec.op {
                Op::Put { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        let mut next_data = 1;
        let mut sizes = HashMap::new();
        for e in std::fs::read_dir(&data_dir).map_err(what)?.flatten() {
            let id = e
                .file_name()
                .to_str()
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            match id {
                Some(id) if named.contains(&id) => {
                    next_data = next_data.max(id + 1);
                    let len = e.metadata().map_or(0, |m| m.len());
                    sizes.insert(id, len);
                    bytes += len;
                }
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if !queue.is_empty() {
            tracing::info!(
                operations = queue.len(),
                bytes,
                "write-back: resuming changes not yet on the server"
            );
        }
        store.take(bytes);
        let syncer = loaded.log.syncer().map_err(what)?;
        let last = loaded.last_seq;
        let confirmed = queue.front().map_or(last, |q| q.rec.seq - 1);
        Ok(Arc::new(Writeback {
            data_dir,
            state: Mutex::new(State {
                log: loaded.log,
                pending,
                queue,
                last_seq: last,
                next_data,
                orphans: Vec::new(),
                sizes,
            }),
            syncer,
            synced: Mutex::new(last),
            done: watch::Sender::new(confirmed),
            wake: Notify::new(),
            cfg,
            store,
            stats: WritebackStats::default(),
            pending_bytes: AtomicU64::new(bytes),
            seen: Arc::default(),
            refusal: Mutex::default(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lookup(&self, path: &str) -> Answer {
        self.lock().pending.lookup(path)
    }

    /// Nothing pending touches `path`: the server's answer for it stands.
    pub fn untouched(&self, path: &str) -> bool {
        matches!(self.lookup(path), Answer::Ask(at) if at == path)
    }

    /// See [`Pending::server_path`].
    pub fn server_path(&self, path: &str) -> String {
        self.lock().pending.server_path(path)
    }

    pub fn made_here(&self, dir: &str) -> bool {
        self.lock().pending.made_here(dir)
    }

    pub fn children(&self, dir: &str) -> Vec<(String, Node)> {
        self.lock().pending.children(dir)
    }

    /// See [`Pending::show`].
    pub fn show(&self, path: &str, node: Node) {
        self.lock().pending.show(path, node);
    }

    /// See [`Pending::touched_inside`].
    pub fn touched_inside(&self, dir: &str) -> bool {
        self.lock().pending.touched_inside(dir)
    }

    pub fn has_children(&self, dir: &str) -> bool {
        self.lock().pending.has_children(dir)
    }

    /// Records `op` (written to the log, in order with every other change, and applied
    /// to the pending namespace); durable once [`Writeback::durable`] returns. `check`
    /// runs under the same lock first and may refuse the change.
    pub fn change(
        &self,
        op: Op,
        check: impl FnOnce(&Pending) -> RemoteResult<()>,
    ) -> RemoteResult<u64> {
        let mut s = self.lock();
        check(&s.pending)?;
        let rec = Record {
            seq: s.last_seq + 1,
            at: now_secs(),
            op,
        };
        s.log.append(&rec).map_err(io_err)?;
        s.last_seq = rec.seq;
        // A file removed before it was uploaded need not be uploaded.
        if let Op::Remove { path } = &rec.op {
            if let Some(Node::File { data, .. }) = s.pending.node(path).cloned() {
                for q in s.queue.iter_mut() {
                    if let Op::Put {
                        path: p, data: d, ..
                    } = &q.rec.op
                    {
                        if *d == data && p == path && q.stage == Stage::Waiting {
                            q.skip = true;
                        }
                    }
                }
            }
        }
        let replaced = match (&rec.op, s.pending.node(rec.op.paths()[0])) {
            (Op::Put { .. } | Op::Remove { .. }, Some(Node::File { data, .. })) => Some(*data),
            _ => None,
        };
        apply(&mut s.pending, &rec);
        if let Some(d) = replaced {
            s.orphans.push(d);
        }
        let seq = rec.seq;
        s.queue.push_back(Queued {
            rec,
            skip: false,
            stage: Stage::Waiting,
        });
        drop(s);
        self.wake.notify_one();
        Ok(seq)
    }

    /// [`Writeback::change`], acknowledged once durable.
    pub async fn commit(
        self: &Arc<Self>,
        op: Op,
        check: impl FnOnce(&Pending) -> RemoteResult<()>,
    ) -> RemoteResult<u64> {
        let seq = self.change(op, check)?;
        self.durable(seq).await?;
        Ok(seq)
    }

    /// Waits until record `seq` is on local disk.
    pub async fn durable(self: &Arc<Self>, seq: u64) -> RemoteResult<()> {
        let wb = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut synced = wb.synced.lock().unwrap_or_else(|p| p.into_inner());
            if *synced >= seq {
                return Ok(());
            }
            let upto = wb.lock().last_seq;
            oplog::sync(&wb.syncer).map_err(io_err)?;
            *synced = upto;
            Ok(())
        })
        .await
        .map_err(|e| RemoteError::Broken(e.to_string()))?
    }

    /// The last sequence number recorded.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Waits until every change up to `seq` is on the server, up to `within`.
    pub async fn settled(&self, seq: u64, within: Duration) -> RemoteResult<()> {
        let mut rx = self.done.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|d| *d >= seq))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(RemoteError::Timeout(within.as_secs()))
        }
    }

    /// Waits until nothing recorded so far is pending, up to `within`.
    pub async fn drain(&self, within: Duration) -> RemoteResult<()> {
        self.settled(self.last_seq(), within).await
    }

    pub fn backlog(&self) -> Backlog {
        let s = self.lock();
        Backlog {
            ops: s.queue.len() as u64,
            bytes: self.pending_bytes.load(Relaxed),
            oldest_secs: s.queue.front().map(|q| now_secs().saturating_sub(q.rec.at)),
        }
    }

    /// Changes that may be uploaded now, at most `n`: waiting ones near the front of the
    /// queue that depend on no earlier change not yet on the server (marked uploading).
    /// Changes that no longer matter are done at once.
    pub fn ready(&self, n: usize) -> Vec<Record> {
        let mut s = self.lock();
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        let q = &mut s.queue;
        for i in 0..q.len().min(WINDOW) {
            if out.len() >= n {
                break;
            }
            if q[i].stage != Stage::Waiting {
                continue;
            }
            let blocked =
                (0..i).any(|j| q[j].stage != Stage::Done && depends(&q[j].rec.op, &q[i].rec.op));
            if blocked {
                continue;
            }
            q[i].stage = Stage::Uploading;
            if q[i].skip {
                skipped.push(q[i].rec.seq);
            } else {
                out.push(q[i].rec.clone());
            }
        }
        drop(s);
        for seq in skipped {
            self.finish(seq);
        }
        out
    }

    /// Change `seq` is on the server (or no longer matters). Changes leave the queue, and
    /// count as confirmed, in the log's order.
    pub fn finish(&self, seq: u64) {
        let mut s = self.lock();
        let Some(i) = s.queue.iter().position(|q| q.rec.seq == seq) else {
            return;
        };
        s.queue[i].stage = Stage::Done;
        let rec = s.queue[i].rec.clone();
        let skipped = s.queue[i].skip;
        if let Op::Rename { from, to, .. } = &rec.op {
            s.pending.moved_on_server(from, to);
        }
        s.pending.confirmed(seq, &rec.op.paths());
        let mut confirmed = None;
        let mut uploaded = Vec::new();
        while s.queue.front().is_some_and(|q| q.stage == Stage::Done) {
            let Some(q) = s.queue.pop_front() else { break };
            if let Op::Put {
                data,
                path,
                size,
                mtime,
                ..
            } = q.rec.op
            {
                if q.skip {
                    s.orphans.push(data);
                } else {
                    uploaded.push((data, path, (size, mtime)));
                }
            }
            confirmed = Some(q.rec.seq);
        }
        if let Some(upto) = confirmed {
            let all = s.queue.is_empty();
            if let Err(e) = s.log.confirmed(upto, all) {
                tracing::warn!(error = %e, "write-back log: cannot note an upload (it is repeated after a restart)");
            }
            // What was uploaded stays, as the cached copy of the version it left on the
            // server (unless something pending still reads it).
            let in_use = s.data_in_use();
            for (data, path, version) in uploaded {
                let bytes = s.sizes.get(&data).copied().unwrap_or(0);
                if !in_use.contains(&data)
                    && self
                        .store
                        .adopt(&path, version, &self.data_path(data), bytes)
                {
                    s.sizes.remove(&data);
                    self.pending_bytes.fetch_sub(bytes, Relaxed);
                } else {
                    s.orphans.push(data);
                }
            }
            let orphans = std::mem::take(&mut s.orphans);
            let (gone, kept): (Vec<u64>, Vec<u64>) =
                orphans.into_iter().partition(|d| !in_use.contains(d));
            s.orphans = kept;
            self.drop_data(&mut s, &gone);
        }
        drop(s);
        if !skipped {
            self.stats.uploaded.fetch_add(1, Relaxed);
            if let Op::Put {
                path,
                size,
                mtime,
                perm,
                ..
            } = &rec.op
            {
                self.seen.put(
                    path,
                    &Attrs {
                        size: Some(*size),
                        mode: Some(libc::S_IFREG | perm),
                        mtime: Some(*mtime),
                        atime: Some(*mtime),
                        ..Default::default()
                    },
                );
            }
        }
        if let Some(upto) = confirmed {
            self.done.send_replace(upto);
        }
    }

    /// The server refused change `rec` (the earliest refused one is kept).
    pub fn refused(&self, rec: &Record, error: &RemoteError) {
        let mut r = self.refusal.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *r {
            Some(old) if old.seq < rec.seq => {}
            Some(old) if old.seq == rec.seq => old.error = error.to_string(),
            _ => {
                *r = Some(Refusal {
                    seq: rec.seq,
                    op: rec.op.describe(),
                    error: error.to_string(),
                    since: std::time::Instant::now(),
                })
            }
        }
    }

    /// Change `seq` is on the server: a refusal of it is over.
    pub fn accepted(&self, seq: u64) {
        let mut r = self.refusal.lock().unwrap_or_else(|p| p.into_inner());
        if r.as_ref().is_some_and(|old| old.seq == seq) {
            *r = None;
        }
    }

    /// The earliest change the server refuses now, if any.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn data_path(&self, id: u64) -> PathBuf {
        oplog::data_path(&self.data_dir, id)
    }

    /// A new, empty data file (blocking).
    pub fn new_data(&self) -> std::io::Result<(u64, File)> {
        let id = {
            let mut s = self.lock();
            s.next_data += 1;
            s.next_data - 1
        };
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(self.data_path(id))?;
        Ok((id, f))
    }

    /// A new data file holding the first `len` bytes of `from` (blocking).
    pub fn copy_data(&self, from: &File, len: u64) -> std::io::Result<(u64, File)> {
        let (id, to) = self.new_data()?;
        // From the open descriptor: once uploaded, the file's name may be gone (kept as
        // a read copy under another).
        let mut at = 0;
        while at < len {
            let chunk = Self::read_at(from, at, (len - at).min(1 << 20) as usize)?;
            if chunk.is_empty() {
                break;
            }
            to.write_all_at(&chunk, at)?;
            at += chunk.len() as u64;
        }
        to.set_len(len)?;
        // A local copy of what is already held: counted, not refused.
        self.store.take(len);
        self.pending_bytes.fetch_add(len, Relaxed);
        *self.lock().sizes.entry(id).or_default() += len;
        Ok((id, to))
    }

    /// Makes a data file and its name durable before a record names it (blocking).
    pub fn seal(&self, f: &File) -> std::io::Result<()> {
        f.sync_data()?;
        oplog::sync_dir(&self.data_dir)
    }

    fn drop_data(&self, s: &mut State, ids: &[u64]) {
        for d in ids {
            let bytes = s.sizes.remove(d).unwrap_or(0);
            self.pending_bytes.fetch_sub(bytes, Relaxed);
            self.store.give_back(bytes);
            let _ = std::fs::remove_file(self.data_path(*d));
        }
    }

    /// A data file no record names (an open file's copy it replaced, or one never
    /// committed) goes.
    pub fn discard(&self, id: u64) {
        let mut s = self.lock();
        s.pending.unshow(id);
        if s.data_in_use().contains(&id) {
            return;
        }
        self.drop_data(&mut s, &[id]);
    }

    /// Room for data file `id` to grow by `more` bytes within `cache_size=`: read copies
    /// are evicted for it; when uploads must make room first, waits for them up to
    /// `within`, then fails with ENOSPC.
    pub async fn room(&self, id: u64, more: u64, within: Duration) -> RemoteResult<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.store.reserve(more) {
                self.pending_bytes.fetch_add(more, Relaxed);
                *self.lock().sizes.entry(id).or_default() += more;
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RemoteError::refused(
                    libc::ENOSPC,
                    "write-back cache is full of changes not yet uploaded (cache_size=)",
                ));
            }
            let mut rx = self.done.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    }

    /// Reads `len` bytes at `offset` of a data file (blocking).
    pub fn read_at(f: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f.read_at(&mut buf[got..], offset + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;

    fn open(dir: &Path) -> Arc<Writeback> {
        let store = Store::open(&CacheConfig {
            dir: dir.to_path_buf(),
            size: 1 << 30,
            allow_tmpfs: true,
        })
        .unwrap();
        let cfg = WritebackConfig { fsync_remote: true };
        Writeback::open(&dir.join("writeback"), store, cfg).unwrap()
    }

    fn put(wb: &Writeback, path: &str) -> u64 {
        let (data, _) = wb.new_data().unwrap();
        let op = Op::Put {
            path: path.into(),
            data,
            size: 0,
            perm: 0o644,
            mtime: 1,
            base: None,
            owner: None,
        };
        wb.change(op, |_| Ok(())).unwrap();
        data
    }

    #[test]
    fn data_a_queued_upload_sends_is_kept_until_it_is_sent() {
        let d = tempfile::tempdir().unwrap();
        let wb = open(d.path());
        mkdir(&wb, "/d");
        let first = put(&wb, "/d/a");
        let second = put(&wb, "/d/a");
        wb.finish(1);
        assert!(
            wb.data_path(first).exists(),
            "the first upload still needs it"
        );
        wb.finish(2);
        assert!(!wb.data_path(first).exists());
        assert!(wb.data_path(second).exists());
        wb.finish(3);
        assert!(!wb.data_path(second).exists());
        assert_eq!(wb.backlog().ops, 0);
    }

    fn mkdir(wb: &Writeback, path: &str) -> u64 {
        let op = Op::Mkdir {
            path: path.into(),
            perm: 0o755,
            owner: None,
        };
        wb.change(op, |_| Ok(())).unwrap()
    }

    fn seqs(recs: Vec<Record>) -> Vec<u64> {
        recs.into_iter().map(|r| r.seq).collect()
    }

    #[test]
    fn unrelated_changes_go_side_by_side_and_are_confirmed_in_order() {
        let d = tempfile::tempdir().unwrap();
        let wb = open(d.path());
        mkdir(&wb, "/a"); // 1
        put(&wb, "/a/x"); // 2
        mkdir(&wb, "/b"); // 3
        put(&wb, "/b/y"); // 4
        mkdir(&wb, "/ab"); // 5: not inside /a
        assert_eq!(seqs(wb.ready(16)), [1, 3, 5]);
        assert!(wb.ready(16).is_empty(), "each waits for its directory");
        wb.finish(3);
        assert_eq!(seqs(wb.ready(16)), [4]);
        wb.finish(4);
        wb.finish(5);
        assert_eq!(*wb.done.borrow(), 0, "confirmed only in the log's order");
        wb.finish(1);
        assert_eq!(*wb.done.borrow(), 1);
        assert_eq!(seqs(wb.ready(16)), [2]);
        wb.finish(2);
        assert_eq!(*wb.done.borrow(), 5);
        assert_eq!(wb.backlog().ops, 0);
    }

    #[test]
    fn a_restart_resumes_the_queue_and_the_namespace() {
        let d = tempfile::tempdir().unwrap();
        let wb = open(d.path());
        let data = put(&wb, "/f");
        let rename = Op::Rename {
            from: "/f".into(),
            to: "/g".into(),
            shown: None,
        };
        let seq = wb.change(rename, |_| Ok(())).unwrap();
        drop(wb);
        let wb = open(d.path());
        assert_eq!(wb.backlog().ops, 2);
        assert_eq!(wb.lookup("/f"), Answer::Absent);
        assert!(matches!(wb.lookup("/g"), Answer::Is(Node::File { data: d, .. }) if d == data));
        assert_eq!(wb.last_seq(), seq);
        // A file removed before its upload is not uploaded.
        let gone = put(&wb, "/h");
        let rm = Op::Remove { path: "/h".into() };
        wb.change(rm, |_| Ok(())).unwrap();
        let skipped: Vec<bool> = wb.lock().queue.iter().map(|q| q.skip).collect();
        assert_eq!(skipped, [false, false, true, false]);
        assert!(wb.data_path(gone).exists());
    }
}
