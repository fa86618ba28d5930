//! The logical session: remote operations that survive connection loss.
//!
//! Owns [`Session`], the real [`Remote`] (its operations are in `ops`): every request
//! goes through [`replay::run`] (wait for a link, resend after a transport error, reconcile
//! non-idempotent outcomes) on the connection chosen for its path (`max_conns`), file
//! handles are logical ([`handles`]) and reopened on new connections, writes may be
//! acknowledged early ([`writeback`], within [`write_budget`]), and one [`supervisor`]
//! per connection keeps it up.
//! It must never know about inodes, caches or the kernel, and never import the filesystem
//! layer.

pub mod ahead;
pub mod connector;
pub mod handles;
mod links;
mod ops;
pub mod probe;
pub mod remote;
pub mod replay;
pub mod sftp_sessions;
pub mod supervisor;
pub mod write_budget;
pub mod writeback;

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::try_join_all;

use crate::ssh::{SshError, Target};

use crate::sftp::SftpError;
pub use remote::{
    Attrs, Bytes, Capabilities, Kind, OpenMode, Remote, RemoteError, RemoteResult, RenameMode,
};
use replay::{OnConfused, ReplayStats};
pub use sftp_sessions::SftpSessions;
use supervisor::{Link, LinkState, Supervisor};

pub struct Session {
    me: Weak<Session>,
    /// One supervisor per connection (`max_conns`); the first is the primary, whose state
    /// and counters the status socket reports.
    sups: Vec<Arc<Supervisor>>,
    handles: handles::Handles,
    /// Read handles opened in a lookup's round trip, for the open that follows.
    pub ahead: Arc<ahead::Ahead>,
    timeout: Duration,
    pub replay_stats: ReplayStats,
    caps: std::sync::Mutex<Capabilities>,
    /// The text of symlinks this mount made, by path, for servers whose READLINK answers
    /// the resolved path instead ([`ops`] checks the text still resolves to that answer).
    link_texts: std::sync::Mutex<lru::LruCache<String, String>>,
    /// Bytes of acknowledged, unconfirmed writes allowed across all files.
    write_budget: write_budget::WriteBudget,
}

impl Session {
    /// `timeout` bounds how long one operation waits for a working connection;
    /// `write_behind` is how many bytes of writes may be acknowledged before the server
    /// confirmed them (0: none); `conns` how many connections carry requests, `sessions`
    /// how many SFTP sessions each may use; `probe_dir` where the server's behaviour may be
    /// probed ([`probe`]; None: assumed from its identification).
    pub fn new(
        target: Target,
        probe_site: Option<probe::Site>,
        timeout: Duration,
        write_behind: usize,
        conns: usize,
        sessions: SftpSessions,
    ) -> Arc<Self> {
        // One SFTP request unanswered this long means a stuck connection (keepalives
        // usually notice sooner); it is then replayed on a new one. Generous, because it
        // also bounds slow server operations such as fsync of a large file.
        let request_timeout = Duration::from_secs(60);
        let connector = Arc::new(connector::Ssh(Arc::new(target)));
        Self::with_connector(
            connector,
            probe::Prober::new(probe_site),
            request_timeout,
            timeout,
            write_behind,
            conns,
            sessions,
        )
    }

    /// A session whose connections come from `connector` (tests use in-memory servers).
    pub fn with_connector(
        connector: Arc<dyn connector::Connector>,
        prober: probe::Prober,
        request_timeout: Duration,
        timeout: Duration,
        write_behind: usize,
        conns: usize,
        sessions: SftpSessions,
    ) -> Arc<Self> {
        let prober = Arc::new(prober);
        Arc::new_cyclic(|me| Session {
            me: me.clone(),
            sups: (0..conns.max(1))
                .map(|_| {
                    Supervisor::new(connector.clone(), prober.clone(), request_timeout, sessions)
                })
                .collect(),
            handles: handles::Handles::default(),
            ahead: Arc::default(),
            timeout,
            replay_stats: ReplayStats::default(),
            caps: std::sync::Mutex::new(Capabilities::default()),
            link_texts: std::sync::Mutex::new(crate::bounded::lru(links::LINK_TEXTS)),
            write_budget: write_budget::WriteBudget::new(write_behind),
        })
    }

    /// Bytes acknowledged to applications that the server has not confirmed yet.
    pub fn unconfirmed_bytes(&self) -> usize {
        self.write_budget.held()
    }

    /// Waits until the writes of every open file whose path satisfies `pred` are answered
    /// (so a request about that file sees their effect).
    pub(super) async fn settle_paths(&self, pred: impl Fn(&str) -> bool) {
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

    pub(super) fn learn_caps(&self, link: &Link) {
        let e = &link.sftp.extensions;
        if let Ok(mut c) = self.caps.lock() {
            *c = Capabilities {
                hardlink: e.hardlink,
                fsync: e.fsync,
                statvfs: e.statvfs,
                readlink_resolves: link.traits.readlink_resolves,
                in_order: !e.concurrent,
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

    pub(super) fn primary(&self) -> &Supervisor {
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

    /// Ends `link` (its supervisor connects anew; requests on it are replayed there).
    pub(super) fn retire(&self, link: &Link, why: &str) {
        for s in &self.sups {
            if matches!(s.state(), LinkState::Up(l) if std::ptr::eq(&*l, link)) {
                s.report_dead(link, why);
            }
        }
    }

    pub fn open_files(&self) -> usize {
        self.handles.count()
    }

    /// Runs `op` through replay on the connection for `key` (see [`Session::sup_for`]).
    pub(super) async fn run<T, F, Fut>(
        &self,
        what: &str,
        key: (&str, u64),
        op: F,
    ) -> RemoteResult<T>
    where
        F: Fn(Arc<Link>, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        self.run_with(what, key, OnConfused::Replay, op).await
    }

    /// [`Session::run`], choosing what happens when the server is found confused.
    async fn run_with<T, F, Fut>(
        &self,
        what: &str,
        key: (&str, u64),
        on_confused: OnConfused,
        op: F,
    ) -> RemoteResult<T>
    where
        F: Fn(Arc<Link>, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        let pick = || self.sup_for(key.0, key.1);
        replay::run(
            pick,
            &self.replay_stats,
            self.timeout,
            what,
            on_confused,
            op,
        )
        .await
    }

    /// Waits until every write to the path of `file` is answered.
    async fn settled(&self, file: &handles::OpenFile) {
        let path = file.path();
        self.settle_paths(|p| p == path).await;
    }

    /// Runs `op` with the remote handle of `f` on a live link (reopening it there), after
    /// the writes to that file are answered.
    pub(super) async fn with_handle<T, F, Fut>(
        &self,
        what: &str,
        file: &Arc<handles::OpenFile>,
        op: F,
    ) -> RemoteResult<T>
    where
        F: Fn(Arc<Link>, Arc<crate::sftp::RemoteHandle>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        self.settled(file).await;
        self.with_file(what, file, None, |l, _, h| op(l, h)).await
    }

    /// Runs `op` with the remote handle of `file` on a live link (opening it there). A
    /// write gives its `stripe` (a part of the file): it picks the connection and the
    /// SFTP session on it; everything else uses the path's connection and first session.
    /// `op` gets the link, the session's number and the handle on it.
    pub(super) async fn with_file<T, F, Fut>(
        &self,
        what: &str,
        file: &Arc<handles::OpenFile>,
        stripe: Option<u64>,
        op: F,
    ) -> RemoteResult<T>
    where
        F: Fn(Arc<Link>, usize, Arc<crate::sftp::RemoteHandle>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        let stale = std::sync::atomic::AtomicBool::new(false);
        let path = file.path();
        let conns = self.sups.len() as u64;
        // A write in flight on a confused server fails rather than being replayed.
        let on_confused = if stripe.is_some() {
            OnConfused::Fail
        } else {
            OnConfused::Replay
        };
        let r = self
            .run_with(
                what,
                (&path, stripe.unwrap_or(0)),
                on_confused,
                |link, _| {
                    let file = file.clone();
                    let stale = &stale;
                    let op = &op;
                    let channel = stripe.map_or(0, |s| (s / conns) as usize % link.channels());
                    async move {
                        match file.on(&link, channel, &self.handles).await? {
                            Some(h) => op(link, channel, h).await,
                            None => {
                                stale.store(true, std::sync::atomic::Ordering::Relaxed);
                                Err(SftpError::Status {
                                    code: crate::sftp::wire::status::NO_SUCH_FILE,
                                    message: "file vanished while open".into(),
                                })
                            }
                        }
                    }
                },
            )
            .await;
        if stale.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RemoteError::Stale);
        }
        r
    }

    /// Sends one write and waits for the server's answer (replaying it as needed).
    pub(super) async fn write_now(
        &self,
        file: &Arc<handles::OpenFile>,
        offset: u64,
        data: &Bytes,
    ) -> RemoteResult<()> {
        // Consecutive megabytes of a file go out on different connections (max_conns) and
        // SFTP sessions: one session's window would cap a far server's upload speed.
        self.with_file("write", file, Some(offset >> 20), |l, ch, h| async move {
            let sftp = l.channel(ch);
            let chunk = sftp.max_write as usize;
            let parts = (0..data.len().div_ceil(chunk)).map(|i| {
                let h = &h;
                let part = data.slice(i * chunk..((i + 1) * chunk).min(data.len()));
                async move { sftp.write(h, offset + (i * chunk) as u64, part).await }
            });
            try_join_all(parts).await.map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
