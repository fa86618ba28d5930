//! Replay: running a request until a connection carries it, and reconciling the outcome of
//! non-idempotent requests that may have run twice.
//!
//! Owns the retry loop every remote operation goes through (wait for a link, send, on a
//! transport error mark the link dead and send again on the next one, give up with EIO at
//! the deadline) and the rules that turn "already done" replies of a replayed request into
//! success. It must never reconnect by itself: the supervisor does that.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::meta::Kind;
use crate::name_bytes::encode as w;
use crate::sftp::SftpError;

use super::remote::{RemoteError, RemoteResult};
use super::supervisor::{Link, Supervisor};

/// Upper bounds of the latency histogram buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    5_000_000,
];

/// Counters for requests and replays, read by the status socket.
#[derive(Default)]
pub struct ReplayStats {
    pub in_flight: AtomicU64,
    pub waiting: AtomicU64,
    pub replays: AtomicU64,
    pub give_ups: AtomicU64,
    /// Cumulative latency histogram of answered requests (per LATENCY_BUCKETS_US bound).
    pub latency_buckets: [AtomicU64; 12],
    pub latency_count: AtomicU64,
    pub latency_sum_us: AtomicU64,
}

impl ReplayStats {
    fn record_latency(&self, d: Duration) {
        let us = d.as_micros() as u64;
        for (bound, n) in LATENCY_BUCKETS_US.iter().zip(&self.latency_buckets) {
            if us <= *bound {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// What a request whose connection was found confused does (see [`SftpError::Confused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConfused {
    /// Sent again on the next connection (reads, lookups: nothing was changed wrongly).
    Replay,
    /// Fails with EIO: a write in flight on a confused server may have been applied
    /// mangled, and sending it again would call that success.
    Fail,
}

/// Confused connections a request may live through before it fails instead of replaying.
const MAX_CONFUSIONS: u32 = 2;

/// Runs `op` on a live link until it gets an answer from the server or `timeout` passes.
/// `op` gets the link and whether this is a replay (a previous attempt's fate is unknown).
/// `pick` names the connection for each attempt (another one may be up when the first
/// attempt's has died).
pub async fn run<'s, T, P, F, Fut>(
    pick: P,
    stats: &ReplayStats,
    timeout: Duration,
    what: &str,
    on_confused: OnConfused,
    op: F,
) -> RemoteResult<T>
where
    P: Fn() -> &'s Supervisor,
    F: Fn(Arc<Link>, bool) -> Fut,
    Fut: Future<Output = Result<T, SftpError>>,
{
    let deadline = Instant::now() + timeout;
    let mut replay = false;
    // Connections this request saw found confused: a server that keeps breaking the
    // protocol while it is in flight would otherwise be reconnected to until the deadline.
    let mut confusions = 0;
    loop {
        let sup = pick();
        stats.waiting.fetch_add(1, Ordering::Relaxed);
        let link = sup.current(deadline).await;
        stats.waiting.fetch_sub(1, Ordering::Relaxed);
        let Some(link) = link else {
            stats.give_ups.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                op = what,
                timeout_s = timeout.as_secs(),
                "gave up: no connection"
            );
            return Err(RemoteError::Timeout(timeout.as_secs()));
        };
        if replay {
            stats.replays.fetch_add(1, Ordering::Relaxed);
            tracing::info!(op = what, generation = link.generation, "replaying request");
        }
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        // A request on a stalled link is also bounded by the deadline: the caller gets EIO,
        // the link is left to the keepalives to judge.
        let attempt = async {
            tokio::select! {
                r = op(link.clone(), replay) => r,
                _ = link.died() => Err(SftpError::Transport("connection lost".into())),
            }
        };
        let sent = Instant::now();
        let result = tokio::time::timeout_at(deadline.into(), attempt).await;
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Ok(result) = result else {
            stats.give_ups.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                op = what,
                timeout_s = timeout.as_secs(),
                "gave up: no reply in time"
            );
            return Err(RemoteError::Timeout(timeout.as_secs()));
        };
        match result {
            // The reply to this very request broke the protocol: the connection goes, and
            // the request fails (the server would likely do the same again).
            Err(e) if e.is_confused() => {
                sup.report_dead(&link, &e.to_string());
                return Err(RemoteError::from(e));
            }
            Err(e) if e.is_transport() => {
                sup.report_dead(&link, &e.to_string());
                if let Some(c) = link.confusion() {
                    confusions += 1;
                    if on_confused == OnConfused::Fail || confusions >= MAX_CONFUSIONS {
                        tracing::error!(op = what, error = %c,
                            "request in flight on a confused server: reported as failed, not replayed");
                        return Err(RemoteError::from(c));
                    }
                }
                replay = true;
            }
            other => {
                tracing::trace!(
                    op = what,
                    us = sent.elapsed().as_micros() as u64,
                    "answered"
                );
                stats.record_latency(sent.elapsed());
                return other.map_err(RemoteError::from);
            }
        }
    }
}

/// A replayed remove/rmdir that finds nothing: the first attempt did it.
pub fn gone_is_done(replay: bool, r: Result<(), SftpError>) -> Result<(), SftpError> {
    match r {
        Err(e) if replay && e.is_not_found() => Ok(()),
        other => other,
    }
}

/// A replayed mkdir/symlink/link/exclusive create that finds its result in place.
pub async fn exists_is_done(
    link: &Link,
    replay: bool,
    path: &str,
    want: Kind,
    r: Result<(), SftpError>,
) -> Result<(), SftpError> {
    match r {
        Err(e) if replay => match link.lstat(&w(path)).await {
            Ok(a) if a.kind() == want => Ok(()),
            _ => Err(e),
        },
        other => other,
    }
}

/// A replayed rename whose source is gone and whose target exists: it was done.
pub async fn renamed_is_done(
    link: &Link,
    replay: bool,
    from: &str,
    to: &str,
    r: Result<(), SftpError>,
) -> Result<(), SftpError> {
    match r {
        Err(e) if replay && e.is_not_found() => {
            let target = link.sftp.lstat(w(to)).await;
            let source = link.sftp.lstat(w(from)).await;
            match (source, target) {
                (Err(s), Ok(_)) if s.is_not_found() => Ok(()),
                _ => Err(e),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nf() -> SftpError {
        SftpError::Status {
            code: crate::sftp::wire::status::NO_SUCH_FILE,
            message: "No such file".into(),
        }
    }

    #[test]
    fn replayed_remove_of_missing_file_succeeds() {
        assert!(gone_is_done(true, Err(nf())).is_ok());
        assert_eq!(
            gone_is_done(false, Err(nf())).unwrap_err().errno(),
            libc::ENOENT
        );
    }
}
