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

use crate::sftp::SftpClient;
use crate::ssh::{self, SshError, Target};

/// One working SSH connection with its SFTP session. `generation` grows by one with every
/// new connection, so handles know whether they belong to it.
pub struct Link {
    pub generation: u64,
    pub sftp: SftpClient,
    ssh: ssh::Connection,
    dead: watch::Sender<bool>,
}

impl Link {
    fn is_dead(&self) -> bool {
        *self.dead.borrow()
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
    /// Connecting for the first time or again; `attempt` counts failures in a row.
    Connecting {
        attempt: u32,
    },
    Up(Arc<Link>),
}

/// Counters and facts the status socket reads. Only the supervisor writes them.
#[derive(Default)]
pub struct LinkStats {
    pub reconnects: AtomicU64,
    pub connected_since: Mutex<Option<SystemTime>>,
    pub last_error: Mutex<Option<(SystemTime, String)>>,
}

pub struct Supervisor {
    target: Arc<Target>,
    request_timeout: Duration,
    state: watch::Sender<LinkState>,
    wake: Notify,
    next_generation: AtomicU64,
    pub stats: LinkStats,
}

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Supervisor {
    pub fn new(target: Arc<Target>, request_timeout: Duration) -> Arc<Self> {
        let (state, _) = watch::channel(LinkState::Connecting { attempt: 0 });
        Arc::new(Supervisor {
            target,
            request_timeout,
            state,
            wake: Notify::new(),
            next_generation: AtomicU64::new(1),
            stats: LinkStats::default(),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Opens one connection and its SFTP session.
    pub async fn connect_once(&self) -> Result<Arc<Link>, SshError> {
        let conn = ssh::connect(self.target.clone()).await?;
        let stream = conn.open_sftp(self.target.connect_timeout).await?;
        let sftp = SftpClient::start(stream, self.request_timeout)
            .await
            .map_err(|e| SshError::Subsystem {
                host: self.target.host.clone(),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(Link {
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            sftp,
            ssh: conn,
            dead: watch::Sender::new(false),
        }))
    }

    /// Current state (for status reporting).
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
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
                LinkState::Connecting { .. } => None,
            }
        };
        tokio::time::timeout_at(deadline.into(), wait)
            .await
            .ok()
            .flatten()
    }

    /// A request on `link` failed with a transport error: the link is dead.
    pub fn report_dead(&self, link: &Link, why: &str) {
        if !link.dead.send_replace(true) {
            tracing::warn!(generation = link.generation, error = why, "connection lost");
            self.record_error(why.to_string());
            self.wake.notify_one();
        }
    }

    fn record_error(&self, e: String) {
        if let Ok(mut l) = self.stats.last_error.lock() {
            *l = Some((SystemTime::now(), e));
        }
    }

    fn publish_up(&self, link: Arc<Link>) {
        if let Ok(mut s) = self.stats.connected_since.lock() {
            *s = Some(SystemTime::now());
        }
        self.state.send_replace(LinkState::Up(link));
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
                    self.state.send_replace(LinkState::Connecting { attempt });
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
                                tracing::info!(host = %self.target.host, "connected");
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
            // Watch the link until it dies: reported by a request or seen by russh.
            loop {
                if current.is_dead() {
                    break;
                }
                if current.ssh.is_closed() {
                    self.report_dead(&current, "ssh connection closed");
                    break;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            self.state
                .send_replace(LinkState::Connecting { attempt: 0 });
            // Close the old connection before opening a new one: the box limits how many
            // connections an account may hold.
            current.sftp.shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), current.ssh.close()).await;
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
