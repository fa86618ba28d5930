//! Where reconnect happens: the supervisor owns the live connection and replaces it.
//!
//! Owns the connection lifecycle: connect, notice death (keepalive failure, reset, a
//! request that reports a transport error), close the old connection, reconnect with
//! exponential backoff and jitter, and publish the current state. Requests wait here for a
//! working link, bounded by their deadline. It must never fail a request itself and never
//! touch handles or paths: replaying is the caller's job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};

use crate::sftp::{SftpClient, SftpError};
use crate::ssh::SshError;

use super::connector::{Connector, Transport};
use super::probe::Prober;
use crate::meta::ServerTraits;

use super::sftp_sessions::{self, SftpSessions};

/// Numbers every connection of the process, so a handle knows which one it belongs to.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// One working SSH connection with its SFTP sessions. `generation` is unique to it.
pub struct Link {
    pub generation: u64,
    /// The first SFTP session: every request but writes.
    pub sftp: SftpClient,
    /// Further SFTP sessions on the same connection, for writes only (may be empty if the
    /// server refused them).
    extra: Vec<SftpClient>,
    /// What this connection's server does where servers differ ([`probe`]).
    pub traits: ServerTraits,
    transport: Box<dyn Transport>,
    dead: watch::Sender<bool>,
    /// What the first request to see it die said (the supervisor words the loss).
    seen_dead: Mutex<Option<String>>,
}

impl Link {
    /// The SFTP session for channel `n` (0 is [`Link::sftp`]).
    pub fn channel(&self, n: usize) -> &SftpClient {
        match n.checked_sub(1) {
            Some(i) => self.extra.get(i).unwrap_or(&self.sftp),
            None => &self.sftp,
        }
    }

    /// How many SFTP sessions this link has.
    pub fn channels(&self) -> usize {
        1 + self.extra.len()
    }

    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// The protocol error of a session of this connection whose server was found confused
    /// (requests in flight on any of them may have been mangled).
    pub fn confusion(&self) -> Option<SftpError> {
        (0..self.channels())
            .filter_map(|n| self.channel(n).failure())
            .find(SftpError::is_confused)
    }

    /// Resolves once this link is known dead. Requests race against it: a request sent on a
    /// dying connection may otherwise never be answered nor failed.
    pub async fn died(&self) {
        let mut rx = self.dead.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// The supervisor's state as others see it.
#[derive(Clone)]
pub enum LinkState {
    /// Connecting for the first time or again.
    Connecting,
    Up(Arc<Link>),
}

/// Counters and facts the status socket reads. Only the supervisor writes them.
#[derive(Default)]
pub struct LinkStats {
    pub reconnects: AtomicU64,
    pub connected_since: Mutex<Option<SystemTime>>,
    /// When the current outage began (None while connected).
    pub down_since: Mutex<Option<Instant>>,
    pub last_error: Mutex<Option<(SystemTime, String)>>,
    /// Round trip of the latest probe and its moving average, in microseconds (0: none yet).
    pub rtt_recent_us: AtomicU64,
    pub rtt_smoothed_us: AtomicU64,
    /// The smallest round trip of the current connection: the link's own, without the
    /// wait behind transfers in flight (what the write-behind budget is sized by).
    pub rtt_min_us: AtomicU64,
    /// The server as the latest connection found it.
    pub server: Mutex<ServerFacts>,
}

/// What the latest connection learned about the server, for the status socket.
#[derive(Debug, Clone, Default)]
pub struct ServerFacts {
    /// Its SSH identification string.
    pub id: String,
    /// SFTP sessions per connection in use, and why that many.
    pub sftp_sessions: usize,
    pub sftp_sessions_reason: String,
    /// Its capability record.
    pub traits: ServerTraits,
}

impl LinkStats {
    fn record_rtt(&self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        self.rtt_recent_us.store(us, Ordering::Relaxed);
        let min = self.rtt_min_us.load(Ordering::Relaxed);
        if min == 0 || us < min {
            self.rtt_min_us.store(us, Ordering::Relaxed);
        }
        let old = self.rtt_smoothed_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 7 + us) / 8 };
        self.rtt_smoothed_us.store(new, Ordering::Relaxed);
    }
}

pub struct Supervisor {
    connector: Arc<dyn Connector>,
    prober: Arc<Prober>,
    request_timeout: Duration,
    sessions: SftpSessions,
    state: watch::Sender<LinkState>,
    wake: Notify,
    pub stats: LinkStats,
}

const PROBE_INTERVAL: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Supervisor {
    pub fn new(
        connector: Arc<dyn Connector>,
        prober: Arc<Prober>,
        request_timeout: Duration,
        sessions: SftpSessions,
    ) -> Arc<Self> {
        let (state, _) = watch::channel(LinkState::Connecting);
        Arc::new(Supervisor {
            connector,
            prober,
            request_timeout,
            sessions,
            state,
            wake: Notify::new(),
            stats: LinkStats::default(),
        })
    }

    /// Opens one SFTP session on `conn`.
    async fn open_sftp(&self, conn: &dyn Transport) -> Result<SftpClient, SshError> {
        let stream = conn.open_sftp().await?;
        SftpClient::start(stream, self.request_timeout, conn.server_id())
            .await
            .map_err(|e| SshError::Subsystem {
                host: self.connector.host().to_string(),
                reason: e.to_string(),
            })
    }

    /// Opens one connection and its SFTP sessions: further ones only on servers known to
    /// keep them apart ([`sftp_sessions::decide`]) and where the server grants them (a
    /// refusal leaves writes on the first).
    pub async fn connect_once(&self) -> Result<Arc<Link>, SshError> {
        let conn = self.connector.connect().await?;
        let sftp = self.open_sftp(conn.as_ref()).await?;
        let traits = self
            .prober
            .traits(conn.server_id(), &sftp)
            .await
            .map_err(|e| SshError::Subsystem {
                host: self.connector.host().to_string(),
                reason: format!("probing the server: {e}"),
            })?;
        let mut choice = sftp_sessions::decide(self.sessions, conn.server_id());
        let extra =
            futures::future::join_all((1..choice.sessions).map(|_| self.open_sftp(conn.as_ref())))
                .await;
        let opened = extra.len();
        let extra: Vec<SftpClient> = extra.into_iter().filter_map(Result::ok).collect();
        if extra.len() < opened {
            tracing::info!(
                sessions = 1 + extra.len(),
                "server refused further SFTP sessions on the connection; writes use fewer"
            );
            choice.sessions = 1 + extra.len();
            choice.reason = format!("{}; the server refused more", choice.reason);
        }
        let facts = ServerFacts {
            id: conn.server_id().to_string(),
            sftp_sessions: choice.sessions,
            sftp_sessions_reason: choice.reason,
            traits: traits.clone(),
        };
        if let Ok(mut f) = self.stats.server.lock() {
            if f.id != facts.id || f.sftp_sessions != facts.sftp_sessions {
                tracing::info!(server = %facts.id, sftp_sessions = facts.sftp_sessions,
                    reason = %facts.sftp_sessions_reason, "SFTP sessions per connection");
            }
            *f = facts;
        }
        Ok(Arc::new(Link {
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            sftp,
            extra,
            traits,
            transport: conn,
            dead: watch::Sender::new(false),
            seen_dead: Mutex::new(None),
        }))
    }

    /// Current state (for status reporting).
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// Whether a request sent now would go out at once.
    pub fn is_up(&self) -> bool {
        matches!(&*self.state.borrow(), LinkState::Up(l) if !l.is_dead())
    }

    /// Waits for a working link until `deadline`.
    pub async fn current(&self, deadline: Instant) -> Option<Arc<Link>> {
        let mut rx = self.state.subscribe();
        let wait = async {
            let state = rx
                .wait_for(|s| matches!(s, LinkState::Up(l) if !l.is_dead()))
                .await
                .ok()?;
            match &*state {
                LinkState::Up(l) => Some(l.clone()),
                LinkState::Connecting => None,
            }
        };
        tokio::time::timeout_at(deadline.into(), wait)
            .await
            .ok()
            .flatten()
    }

    /// A request on `link` failed with a transport error: the link is dead. What ended
    /// the connection beneath (keepalives, a reset) is the error, where known: a request
    /// only sees its channel end.
    pub fn report_dead(&self, link: &Link, why: &str) {
        if !link.dead.send_replace(true) {
            if let Ok(mut s) = link.seen_dead.lock() {
                *s = Some(why.to_string());
            }
            self.wake.notify_one();
        }
    }

    /// Logs and records why `link` died: what ended the SSH connection where that is
    /// known (its reason may trail a request's view of the closed channel by a moment),
    /// else what the request saw.
    async fn word_loss(&self, link: &Link) {
        let seen = link.seen_dead.lock().ok().and_then(|s| s.clone());
        let mut why = link.transport.why_closed();
        for _ in 0..10 {
            if why.is_some() || !link.transport.is_closed() && seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            why = link.transport.why_closed();
        }
        let why = why
            .or(seen)
            .unwrap_or_else(|| "ssh connection closed".into());
        tracing::warn!(generation = link.generation, error = %why, "connection lost");
        self.record_error(why);
    }

    fn record_error(&self, e: String) {
        if let Ok(mut l) = self.stats.last_error.lock() {
            *l = Some((SystemTime::now(), e));
        }
    }

    fn publish_up(&self, link: Arc<Link>) {
        self.stats.rtt_min_us.store(0, Ordering::Relaxed);
        if let Ok(mut s) = self.stats.connected_since.lock() {
            *s = Some(SystemTime::now());
        }
        if let Ok(mut d) = self.stats.down_since.lock() {
            *d = None;
        }
        self.state.send_replace(LinkState::Up(link));
    }

    fn publish_down(&self) {
        if let Ok(mut d) = self.stats.down_since.lock() {
            d.get_or_insert_with(Instant::now);
        }
        self.state.send_replace(LinkState::Connecting);
    }

    /// Runs forever: keeps a link up. `first` is a link already made by the caller.
    pub async fn run(self: Arc<Self>, first: Option<Arc<Link>>) {
        let mut link = first;
        let mut attempt: u32 = 0;
        let mut backoff = BACKOFF_START;
        loop {
            let current = match link.take() {
                Some(l) => l,
                None => {
                    self.publish_down();
                    match self.connect_once().await {
                        Ok(l) => {
                            if attempt > 0
                                || self.stats.connected_since.lock().is_ok_and(|s| s.is_some())
                            {
                                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    generation = l.generation,
                                    attempts = attempt + 1,
                                    "reconnected"
                                );
                            } else {
                                tracing::info!(host = %self.connector.host(), "connected");
                            }
                            l
                        }
                        Err(e) => {
                            attempt += 1;
                            if attempt == 1 || attempt.is_power_of_two() {
                                tracing::warn!(attempt, error = %e, "connect failed, will retry");
                            }
                            self.record_error(e.to_string());
                            tokio::time::sleep(jitter(backoff)).await;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            continue;
                        }
                    }
                }
            };
            attempt = 0;
            backoff = BACKOFF_START;
            self.publish_up(current.clone());
            // Watch the link until it dies: reported by a request, seen by russh, or a
            // failed round-trip probe (which also measures latency for the status socket).
            let mut next_probe = Instant::now();
            loop {
                if current.is_dead() {
                    break;
                }
                if current.transport.is_closed() {
                    self.report_dead(&current, "ssh connection closed");
                    break;
                }
                // A session that failed (the server broke the protocol on it, or its channel
                // closed) takes the connection with it: a new one starts clean.
                if let Some(e) = (0..current.channels()).find_map(|n| current.channel(n).failure())
                {
                    self.report_dead(&current, &e.to_string());
                    break;
                }
                if Instant::now() >= next_probe {
                    next_probe = Instant::now() + PROBE_INTERVAL;
                    let sent = Instant::now();
                    let probe = tokio::select! {
                        r = tokio::time::timeout(PROBE_INTERVAL, current.sftp.realpath(".")) => r,
                        _ = current.died() => continue,
                    };
                    match probe {
                        Ok(Ok(_)) | Ok(Err(SftpError::Status { .. })) => {
                            self.stats.record_rtt(sent.elapsed())
                        }
                        Ok(Err(e)) => self.report_dead(&current, &e.to_string()),
                        Err(_) => {}
                    }
                    continue;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            self.word_loss(&current).await;
            self.publish_down();
            // Close the old connection before opening a new one: the box limits how many
            // connections an account may hold.
            for n in 0..current.channels() {
                current.channel(n).shutdown();
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), current.transport.close()).await;
        }
    }
}

/// Backoff with ±25 % jitter, so many mounts do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.75 + (nanos % 1000) as f64 / 2000.0;
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_band() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(4));
            assert!(
                j >= Duration::from_secs(3) && j <= Duration::from_secs(5),
                "{j:?}"
            );
        }
    }
}
