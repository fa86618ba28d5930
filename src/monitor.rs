//! What monitoring sees of one mount: snapshots for the status socket, built from the
//! session's and the filesystem's counters; a periodic remote disk-use reading; and the
//! systemd notifications (READY, STATUS, WATCHDOG, STOPPING).
//!
//! Owns the glue only. Snapshots read counters and never wait on the network; the disk
//! reading runs in its own task with a timeout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::cache::MountRemote;
use crate::fs::Fs;
use crate::options::MountConfig;
use crate::session::supervisor::LinkState;
use crate::session::Session;
use crate::status::report::{
    DiskCache, DiskUse, RefusedStatus, ServerCapabilities, Snapshot, WritebackStatus,
};
use crate::status::Source;

pub struct Monitor {
    pub session: Arc<Session>,
    pub fs: Arc<Fs<MountRemote>>,
    pub host: String,
    pub port: u16,
    pub remote_path: String,
    pub mountpoint: PathBuf,
    pub timeout: Duration,
    /// When this daemon started, and how ([`Monitor::new`]).
    started_at: SystemTime,
    start: &'static str,
    disk: Mutex<Option<DiskUse>>,
    /// Cleared when the kernel's FUSE session loop has ended.
    pub fuse_alive: AtomicBool,
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Monitor {
    /// `(host, port)`: the server; `start`: how this daemon started (`fresh`, or `crash
    /// recovery` when it replaced the dead mount of one that died).
    pub fn new(
        session: Arc<Session>,
        fs: Arc<Fs<MountRemote>>,
        (host, port): (String, u16),
        cfg: &MountConfig,
        start: &'static str,
    ) -> Arc<Self> {
        Arc::new(Monitor {
            session,
            fs,
            host,
            port,
            remote_path: cfg.remote_path.clone(),
            mountpoint: cfg.mountpoint.clone(),
            timeout: cfg.timeout,
            started_at: SystemTime::now(),
            start,
            disk: Mutex::new(None),
            fuse_alive: AtomicBool::new(true),
        })
    }

    /// `connected`; `reconnecting` while an outage is younger than `timeout=` (operations
    /// still wait); `down` after that (operations fail) or before the first connection.
    pub fn state(&self) -> &'static str {
        let stats = &self.session.supervisor().stats;
        match self.session.state() {
            LinkState::Up(_) => "connected",
            LinkState::Connecting => {
                let ever = stats
                    .connected_since
                    .lock()
                    .map(|s| s.is_some())
                    .unwrap_or(false);
                let long = stats
                    .down_since
                    .lock()
                    .ok()
                    .and_then(|d| *d)
                    .is_some_and(|d| d.elapsed() > self.timeout);
                if !ever || long {
                    "down"
                } else {
                    "reconnecting"
                }
            }
        }
    }

    /// A counter that grows with every remote request answered and every byte moved.
    pub fn activity(&self) -> u64 {
        let rs = &self.session.replay_stats;
        let stats = &self.fs.stats;
        [&rs.latency_count, &stats.bytes_read, &stats.bytes_written]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Reads remote disk use every minute (statvfs through the session, bounded).
    pub async fn refresh_disk(self: Arc<Self>) {
        loop {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(10), self.fs.statfs()).await
            {
                let frsize = s.frsize.max(1) as u64;
                let total = s.blocks * frsize;
                let used = total.saturating_sub(s.bfree * frsize);
                if let Ok(mut d) = self.disk.lock() {
                    *d = Some(DiskUse {
                        total_bytes: total,
                        free_bytes: s.bfree * frsize,
                        available_bytes: s.bavail * frsize,
                        used_percent: if total > 0 {
                            used as f64 * 100.0 / total as f64
                        } else {
                            0.0
                        },
                        measured_at: rfc3339(SystemTime::now()),
                    });
                }
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }

    /// systemd: STATUS= on every state change, WATCHDOG=1 while the runtime and the FUSE
    /// loop are alive. (A watchdog that touched the mount would fire during outages and
    /// make systemd kill a mount that is merely waiting.)
    pub async fn notify_systemd(self: Arc<Self>) {
        let watchdog = sd_notify::watchdog_enabled();
        let period = watchdog
            .map(|w| w / 2)
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let mut last = "";
        loop {
            let state = self.state();
            if state != last {
                let text = format!(
                    "{state}: {}:{} on {}",
                    self.host,
                    self.remote_path,
                    self.mountpoint.display()
                );
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&text)]);
                last = state;
            }
            if watchdog.is_some() && self.fuse_alive.load(Ordering::Relaxed) {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            tokio::time::sleep(period).await;
        }
    }
}

impl Source for Monitor {
    fn snapshot(&self) -> Snapshot {
        let link = &self.session.supervisor().stats;
        let rs = &self.session.replay_stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let ms = |us: u64| (us > 0).then_some(us as f64 / 1000.0);
        let last_error = link.last_error.lock().ok().and_then(|e| e.clone());
        let (hits, misses) = (load(&self.fs.cache.hits), load(&self.fs.cache.misses));
        let server = link.server.lock().map(|s| s.clone()).unwrap_or_default();
        Snapshot {
            state: self.state(),
            host: self.host.clone(),
            port: self.port,
            remote_path: self.remote_path.clone(),
            mountpoint: self.mountpoint.display().to_string(),
            connected_since: link
                .connected_since
                .lock()
                .ok()
                .and_then(|s| s.map(rfc3339)),
            reconnects: load(&link.reconnects),
            last_error_at: last_error.as_ref().map(|(t, _)| rfc3339(*t)),
            last_error: last_error.map(|(_, e)| e),
            requests_in_flight: load(&rs.in_flight),
            requests_waiting: load(&rs.waiting),
            replays: load(&rs.replays),
            give_ups: load(&rs.give_ups),
            rtt_ms_recent: ms(load(&link.rtt_recent_us)),
            rtt_ms_smoothed: ms(load(&link.rtt_smoothed_us)),
            attr_cache_entries: self.fs.cache.entries() as u64,
            attr_cache_hit_rate: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            open_files: self.session.open_files() as u64,
            opens_ahead_held: self.session.ahead.held() as u64,
            opens_ahead_used: load(&self.session.ahead.used),
            opens_ahead_unused: load(&self.session.ahead.unused),
            unconfirmed_write_bytes: self.session.unconfirmed_bytes() as u64,
            files_with_unconfirmed_writes: self.fs.unconfirmed_files() as u64,
            connections_up: self.session.connections_up() as u64,
            connections: self.session.connections() as u64,
            server: server.id,
            sftp_sessions_per_connection: server.sftp_sessions as u64,
            sftp_sessions_reason: server.sftp_sessions_reason,
            server_capabilities: (server.sftp_sessions > 0).then(|| ServerCapabilities {
                summary: server.traits.summary(),
                traits: server.traits,
            }),
            daemon_started_at: rfc3339(self.started_at),
            daemon_start: self.start,
            daemon_pid: std::process::id(),
            inodes: self.fs.inode_count() as u64,
            bytes_read: load(&self.fs.stats.bytes_read),
            bytes_written: load(&self.fs.stats.bytes_written),
            disk: self.disk.lock().ok().and_then(|d| d.clone()),
            disk_cache: self.fs.remote().store().map(|c| {
                let writeback = self.fs.remote().writeback().map(|wb| {
                    let b = wb.backlog();
                    WritebackStatus {
                        pending_ops: b.ops,
                        pending_bytes: b.bytes,
                        oldest_pending_secs: b.oldest_secs,
                        stale_after_secs: crate::cache::writeback::STALE_AFTER.as_secs(),
                        uploaded_ops: load(&wb.stats.uploaded),
                        upload_errors: load(&wb.stats.upload_errors),
                        conflicts: load(&wb.stats.conflicts),
                        refused: wb.refusal().map(|r| RefusedStatus {
                            op: r.op,
                            error: r.error,
                            for_secs: r.since.elapsed().as_secs(),
                        }),
                    }
                });
                let (hit, miss) = (load(&c.stats.hit_bytes), load(&c.stats.miss_bytes));
                DiskCache {
                    used_bytes: load(&c.stats.used_bytes),
                    limit_bytes: c.limit(),
                    hit_bytes: hit,
                    miss_bytes: miss,
                    hit_ratio: (hit + miss > 0).then(|| hit as f64 / (hit + miss) as f64),
                    evictions: load(&c.stats.evictions),
                    write_errors: load(&c.stats.write_errors),
                    writeback,
                }
            }),
            ops: self.fs.stats.ops(),
            cache_hits: hits,
            cache_misses: misses,
            latency_buckets: rs.latency_buckets.iter().map(load).collect(),
            latency_count: load(&rs.latency_count),
            latency_sum: load(&rs.latency_sum_us) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, SystemTime};

    #[test]
    fn dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
    }
}
