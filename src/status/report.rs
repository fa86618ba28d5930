//! What the status socket reports: one snapshot of a mount's counters, and its renderings
//! as health, JSON status and Prometheus text.
//!
//! Owns the report's shape and formats. It never reads the filesystem or the network: the
//! snapshot is filled by its owner from counters.

use std::fmt::Write;

use serde::Serialize;

/// Upper bounds of the request latency histogram buckets: the session's, which counts.
use crate::session::replay::LATENCY_BUCKETS_US as LATENCY_BUCKETS;

#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskUse {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
    pub measured_at: String,
}

/// A server's capability record as `/status` shows it: the record and its one-line summary.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCapabilities {
    #[serde(flatten)]
    pub traits: crate::meta::ServerTraits,
    pub summary: String,
}

/// The local disk cache (`cache=DIR`): its use and how well it serves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskCache {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    /// Bytes read from the cache, and bytes fetched from the server to fill it.
    pub hit_bytes: u64,
    pub miss_bytes: u64,
    pub hit_ratio: Option<f64>,
    pub evictions: u64,
    pub write_errors: u64,
    /// With `cache_writeback=on`: the changes not yet on the server.
    pub writeback: Option<WritebackStatus>,
}

/// Write-back's backlog and what uploading it met.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WritebackStatus {
    pub pending_ops: u64,
    pub pending_bytes: u64,
    /// Age of the oldest pending change; the mount is degraded past `stale_after_secs`.
    pub oldest_pending_secs: Option<u64>,
    pub stale_after_secs: u64,
    pub uploaded_ops: u64,
    pub upload_errors: u64,
    pub conflicts: u64,
    /// The earliest change the server refuses, retried until it takes it: what holds
    /// the changes that depend on it (null when none is refused).
    pub refused: Option<RefusedStatus>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RefusedStatus {
    pub op: String,
    pub error: String,
    pub for_secs: u64,
}

impl WritebackStatus {
    pub fn stale(&self) -> bool {
        self.oldest_pending_secs
            .is_some_and(|s| s > self.stale_after_secs)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// `connected`, `reconnecting` or `down`.
    pub state: &'static str,
    pub host: String,
    pub port: u16,
    pub remote_path: String,
    pub mountpoint: String,
    pub connected_since: Option<String>,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub requests_in_flight: u64,
    pub requests_waiting: u64,
    pub replays: u64,
    pub give_ups: u64,
    pub rtt_ms_recent: Option<f64>,
    pub rtt_ms_smoothed: Option<f64>,
    pub attr_cache_entries: u64,
    pub attr_cache_hit_rate: Option<f64>,
    pub open_files: u64,
    /// Read handles opened ahead at a lookup: held now, taken by an open, closed unused.
    pub opens_ahead_held: u64,
    pub opens_ahead_used: u64,
    pub opens_ahead_unused: u64,
    /// Bytes acknowledged to applications and not yet confirmed by the server.
    pub unconfirmed_write_bytes: u64,
    /// Open files with writes not yet known to be confirmed: what a crash of the daemon
    /// would report EIO for.
    pub files_with_unconfirmed_writes: u64,
    /// Connections up, of those configured (`max_conns`).
    pub connections_up: u64,
    pub connections: u64,
    /// The server's SSH identification string.
    pub server: String,
    /// SFTP sessions per connection in use, and why that many.
    pub sftp_sessions_per_connection: u64,
    pub sftp_sessions_reason: String,
    /// None until a connection was made.
    pub server_capabilities: Option<ServerCapabilities>,
    /// When this daemon started, and how: `fresh`, or `crash recovery` (it replaced the
    /// dead mount a daemon that died had left).
    pub daemon_started_at: String,
    pub daemon_start: &'static str,
    /// The serving daemon's process id (`mastofs upgrade` waits for a new one).
    pub daemon_pid: u32,
    pub inodes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub disk: Option<DiskUse>,
    /// None without `cache=DIR`.
    pub disk_cache: Option<DiskCache>,
    /// (operation, errno, count); errno 0 is success.
    #[serde(skip)]
    pub ops: Vec<(&'static str, i32, u64)>,
    #[serde(skip)]
    pub cache_hits: u64,
    #[serde(skip)]
    pub cache_misses: u64,
    /// Cumulative counts per latency bucket bound, then the total count and sum (s).
    #[serde(skip)]
    pub latency_buckets: Vec<u64>,
    #[serde(skip)]
    pub latency_count: u64,
    #[serde(skip)]
    pub latency_sum: f64,
}

impl Snapshot {
    pub fn healthy(&self) -> bool {
        self.state == "connected" && !self.writeback().is_some_and(|w| w.stale())
    }

    fn writeback(&self) -> Option<&WritebackStatus> {
        self.disk_cache.as_ref()?.writeback.as_ref()
    }

    pub fn health_json(&self) -> String {
        serde_json::json!({ "state": self.state, "mountpoint": self.mountpoint }).to_string()
    }

    pub fn status_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn metrics(&self) -> String {
        let mp = escape_label(&self.mountpoint);
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(o, "# HELP mastofs_{name} {help}");
            let _ = writeln!(o, "# TYPE mastofs_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(o, "mastofs_{name}{{mountpoint=\"{mp}\"{labels}}} {value}");
            }
        };
        for (name, kind, help, value) in SCALARS {
            if let Some(v) = value(self) {
                metric(name, kind, help, &[(String::new(), v)]);
            }
        }
        let states: Vec<(String, String)> = ["connected", "reconnecting", "down"]
            .iter()
            .map(|s| {
                (
                    format!(",state=\"{s}\""),
                    ((self.state == *s) as u8).to_string(),
                )
            })
            .collect();
        metric("state", GAUGE, "current connection state", &states);
        let ops: Vec<(String, String)> = self
            .ops
            .iter()
            .map(|(op, errno, n)| {
                let labels = format!(",op=\"{op}\",errno=\"{}\"", errno_name(*errno));
                (labels, n.to_string())
            })
            .collect();
        let help = "filesystem operations by type and result";
        metric("operations_total", COUNTER, help, &ops);
        self.latency_histogram(&mut o, &mp);
        o
    }

    /// `mastofs_request_duration_seconds`, a histogram over [`LATENCY_BUCKETS`].
    fn latency_histogram(&self, o: &mut String, mp: &str) {
        let name = "mastofs_request_duration_seconds";
        let _ = writeln!(o, "# HELP {name} remote request latency");
        let _ = writeln!(o, "# TYPE {name} histogram");
        let bounds = LATENCY_BUCKETS
            .iter()
            .map(|us| (*us as f64 / 1e6).to_string());
        let buckets = bounds.zip(self.latency_buckets.iter().map(|n| n.to_string()));
        let all = std::iter::once(("+Inf".to_string(), self.latency_count.to_string()));
        for (le, n) in buckets.chain(all) {
            let _ = writeln!(o, "{name}_bucket{{mountpoint=\"{mp}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(o, "{name}_sum{{mountpoint=\"{mp}\"}} {}", self.latency_sum);
        let _ = writeln!(
            o,
            "{name}_count{{mountpoint=\"{mp}\"}} {}",
            self.latency_count
        );
    }
}

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";

/// A metric without labels but the mountpoint: name (after `mastofs_`), type, help, and
/// its value in a snapshot (None: not known, then not shown).
type Scalar = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> Option<String>,
);

fn some(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// Every metric without labels, once.
#[rustfmt::skip]
const SCALARS: &[Scalar] = &[
    ("up", GAUGE, "1 when connected to the server", |s| some((s.state == "connected") as u8)),
    ("read_bytes_total", COUNTER, "bytes read through the mount", |s| some(s.bytes_read)),
    ("written_bytes_total", COUNTER, "bytes written through the mount", |s| some(s.bytes_written)),
    ("reconnects_total", COUNTER, "successful reconnects", |s| some(s.reconnects)),
    ("replays_total", COUNTER, "requests sent again after a connection loss", |s| some(s.replays)),
    ("give_ups_total", COUNTER, "operations failed with EIO after timeout=", |s| some(s.give_ups)),
    ("requests_in_flight", GAUGE, "requests sent and not yet answered", |s| some(s.requests_in_flight)),
    ("requests_waiting", GAUGE, "requests waiting for a connection", |s| some(s.requests_waiting)),
    ("open_files", GAUGE, "files open through the mount", |s| some(s.open_files)),
    ("opens_ahead_held", GAUGE, "read handles opened ahead at a lookup, held now (open_ahead=)", |s| some(s.opens_ahead_held)),
    ("opens_ahead_used_total", COUNTER, "handles opened ahead that an open took", |s| some(s.opens_ahead_used)),
    ("opens_ahead_unused_total", COUNTER, "handles opened ahead and closed unused", |s| some(s.opens_ahead_unused)),
    ("unconfirmed_write_bytes", GAUGE, "bytes written by applications, not yet confirmed by the server", |s| some(s.unconfirmed_write_bytes)),
    ("files_with_unconfirmed_writes", GAUGE, "open files whose writes are not yet known to be confirmed (EIO after a crash)", |s| some(s.files_with_unconfirmed_writes)),
    ("connections_up", GAUGE, "SSH connections up (of max_conns)", |s| some(s.connections_up)),
    ("sftp_sessions_per_connection", GAUGE, "SFTP sessions per SSH connection in use", |s| some(s.sftp_sessions_per_connection)),
    ("cache_entries", GAUGE, "entries in the attribute cache", |s| some(s.attr_cache_entries)),
    ("cache_hits_total", COUNTER, "attribute cache hits", |s| some(s.cache_hits)),
    ("cache_misses_total", COUNTER, "attribute cache misses", |s| some(s.cache_misses)),
    ("rtt_seconds", GAUGE, "smoothed round-trip time to the server", |s| s.rtt_ms_smoothed.map(|ms| (ms / 1000.0).to_string())),
    ("disk_cache_used_bytes", GAUGE, "local disk taken by the cache=DIR copies", |s| s.disk_cache.as_ref().map(|c| c.used_bytes.to_string())),
    ("disk_cache_limit_bytes", GAUGE, "cache_size=", |s| s.disk_cache.as_ref().map(|c| c.limit_bytes.to_string())),
    ("disk_cache_hit_bytes_total", COUNTER, "bytes read from the local disk cache", |s| s.disk_cache.as_ref().map(|c| c.hit_bytes.to_string())),
    ("disk_cache_miss_bytes_total", COUNTER, "bytes fetched from the server through the local disk cache", |s| s.disk_cache.as_ref().map(|c| c.miss_bytes.to_string())),
    ("disk_cache_evictions_total", COUNTER, "cached files evicted to stay within cache_size=", |s| s.disk_cache.as_ref().map(|c| c.evictions.to_string())),
    ("writeback_pending_ops", GAUGE, "changes acknowledged and not yet on the server (cache_writeback=on)", |s| s.writeback().map(|w| w.pending_ops.to_string())),
    ("writeback_pending_bytes", GAUGE, "bytes of files written and not yet uploaded", |s| s.writeback().map(|w| w.pending_bytes.to_string())),
    ("writeback_oldest_pending_seconds", GAUGE, "age of the oldest change not yet on the server (0: none)", |s| s.writeback().map(|w| w.oldest_pending_secs.unwrap_or(0).to_string())),
    ("writeback_uploaded_total", COUNTER, "changes uploaded", |s| s.writeback().map(|w| w.uploaded_ops.to_string())),
    ("writeback_upload_errors_total", COUNTER, "uploads the server refused (each is retried)", |s| s.writeback().map(|w| w.upload_errors.to_string())),
    ("writeback_conflicts_total", COUNTER, "server copies changed behind a pending write and kept aside", |s| s.writeback().map(|w| w.conflicts.to_string())),
    ("writeback_refused_seconds", GAUGE, "how long the server has refused the earliest change it refuses (0: none)", |s| s.writeback().map(|w| w.refused.as_ref().map_or(0, |r| r.for_secs).to_string())),
    ("disk_cache_write_errors_total", COUNTER, "failed writes to the cache directory (the data came from the server instead)", |s| s.disk_cache.as_ref().map(|c| c.write_errors.to_string())),
    ("remote_size_bytes", GAUGE, "size of the remote filesystem", |s| s.disk.as_ref().map(|d| d.total_bytes.to_string())),
    ("remote_available_bytes", GAUGE, "space available on the remote filesystem", |s| s.disk.as_ref().map(|d| d.available_bytes.to_string())),
];

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A stable name for an errno ("ok" for 0).
pub fn errno_name(e: i32) -> String {
    let names = [
        (0, "ok"),
        (libc::ENOENT, "ENOENT"),
        (libc::EACCES, "EACCES"),
        (libc::EPERM, "EPERM"),
        (libc::EEXIST, "EEXIST"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EIO, "EIO"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EDQUOT, "EDQUOT"),
        (libc::ESTALE, "ESTALE"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::EBADF, "EBADF"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::EROFS, "EROFS"),
        (libc::EXDEV, "EXDEV"),
        (libc::ELOOP, "ELOOP"),
        (libc::ENODATA, "ENODATA"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| format!("E{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_help_type_and_label() {
        let s = Snapshot {
            state: "reconnecting",
            mountpoint: "/mnt/a \"b\"".into(),
            ops: vec![("lookup", 0, 3), ("lookup", libc::ENOENT, 1)],
            latency_buckets: vec![1; LATENCY_BUCKETS.len()],
            latency_count: 1,
            unconfirmed_write_bytes: 4096,
            ..Default::default()
        };
        let m = s.metrics();
        assert!(m.contains("mastofs_unconfirmed_write_bytes{mountpoint=\"/mnt/a \\\"b\\\"\"} 4096"));
        assert!(m.contains("# TYPE mastofs_up gauge"));
        assert!(m.contains("mastofs_up{mountpoint=\"/mnt/a \\\"b\\\"\"} 0"));
        assert!(m.contains("mastofs_operations_total{mountpoint=\"/mnt/a \\\"b\\\"\",op=\"lookup\",errno=\"ENOENT\"} 1"));
        assert!(
            m.contains("mastofs_state{mountpoint=\"/mnt/a \\\"b\\\"\",state=\"reconnecting\"} 1")
        );
        assert!(!s.healthy());
        assert!(s.health_json().contains("\"reconnecting\""));
    }

    #[test]
    fn an_old_write_back_backlog_is_degraded() {
        let backlog = |oldest| WritebackStatus {
            pending_ops: 3,
            oldest_pending_secs: oldest,
            stale_after_secs: 600,
            ..Default::default()
        };
        let mut s = Snapshot {
            state: "connected",
            disk_cache: Some(DiskCache {
                writeback: Some(backlog(Some(30))),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(s.healthy());
        assert!(s
            .metrics()
            .contains("mastofs_writeback_pending_ops{mountpoint=\"\"} 3"));
        s.disk_cache = Some(DiskCache {
            writeback: Some(backlog(Some(601))),
            ..Default::default()
        });
        assert!(!s.healthy());
        assert!(s.metrics().contains("mastofs_up{mountpoint=\"\"} 1"));
    }
}
