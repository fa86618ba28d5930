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
        self.state == "connected"
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
        let one = |v: String| vec![(String::new(), v)];
        metric(
            "up",
            "gauge",
            "1 when connected to the server",
            &one((self.healthy() as u8).to_string()),
        );
        let states: Vec<(String, String)> = ["connected", "reconnecting", "down"]
            .iter()
            .map(|s| {
                (
                    format!(",state=\"{s}\""),
                    ((self.state == *s) as u8).to_string(),
                )
            })
            .collect();
        metric("state", "gauge", "current connection state", &states);
        let ops: Vec<(String, String)> = self
            .ops
            .iter()
            .map(|(op, errno, n)| {
                (
                    format!(",op=\"{op}\",errno=\"{}\"", errno_name(*errno)),
                    n.to_string(),
                )
            })
            .collect();
        metric(
            "operations_total",
            "counter",
            "filesystem operations by type and result",
            &ops,
        );
        metric(
            "read_bytes_total",
            "counter",
            "bytes read through the mount",
            &one(self.bytes_read.to_string()),
        );
        metric(
            "written_bytes_total",
            "counter",
            "bytes written through the mount",
            &one(self.bytes_written.to_string()),
        );
        metric(
            "reconnects_total",
            "counter",
            "successful reconnects",
            &one(self.reconnects.to_string()),
        );
        metric(
            "replays_total",
            "counter",
            "requests sent again after a connection loss",
            &one(self.replays.to_string()),
        );
        metric(
            "give_ups_total",
            "counter",
            "operations failed with EIO after timeout=",
            &one(self.give_ups.to_string()),
        );
        metric(
            "requests_in_flight",
            "gauge",
            "requests sent and not yet answered",
            &one(self.requests_in_flight.to_string()),
        );
        metric(
            "requests_waiting",
            "gauge",
            "requests waiting for a connection",
            &one(self.requests_waiting.to_string()),
        );
        metric(
            "open_files",
            "gauge",
            "files open through the mount",
            &one(self.open_files.to_string()),
        );
        metric(
            "unconfirmed_write_bytes",
            "gauge",
            "bytes written by applications, not yet confirmed by the server",
            &one(self.unconfirmed_write_bytes.to_string()),
        );
        metric(
            "files_with_unconfirmed_writes",
            "gauge",
            "open files whose writes are not yet known to be confirmed (EIO after a crash)",
            &one(self.files_with_unconfirmed_writes.to_string()),
        );
        metric(
            "connections_up",
            "gauge",
            "SSH connections up (of max_conns)",
            &one(self.connections_up.to_string()),
        );
        metric(
            "sftp_sessions_per_connection",
            "gauge",
            "SFTP sessions per SSH connection in use",
            &one(self.sftp_sessions_per_connection.to_string()),
        );
        metric(
            "cache_entries",
            "gauge",
            "entries in the attribute cache",
            &one(self.attr_cache_entries.to_string()),
        );
        metric(
            "cache_hits_total",
            "counter",
            "attribute cache hits",
            &one(self.cache_hits.to_string()),
        );
        metric(
            "cache_misses_total",
            "counter",
            "attribute cache misses",
            &one(self.cache_misses.to_string()),
        );
        if let Some(rtt) = self.rtt_ms_smoothed {
            metric(
                "rtt_seconds",
                "gauge",
                "smoothed round-trip time to the server",
                &one((rtt / 1000.0).to_string()),
            );
        }
        if let Some(d) = &self.disk {
            metric(
                "remote_size_bytes",
                "gauge",
                "size of the remote filesystem",
                &one(d.total_bytes.to_string()),
            );
            metric(
                "remote_available_bytes",
                "gauge",
                "space available on the remote filesystem",
                &one(d.available_bytes.to_string()),
            );
        }
        let mut hist: Vec<(String, String)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(us, n)| (format!(",le=\"{}\"", *us as f64 / 1e6), n.to_string()))
            .collect();
        hist.push((",le=\"+Inf\"".into(), self.latency_count.to_string()));
        let _ = writeln!(
            o,
            "# HELP mastofs_request_duration_seconds remote request latency"
        );
        let _ = writeln!(o, "# TYPE mastofs_request_duration_seconds histogram");
        for (labels, v) in hist {
            let _ = writeln!(
                o,
                "mastofs_request_duration_seconds_bucket{{mountpoint=\"{mp}\"{labels}}} {v}"
            );
        }
        let _ = writeln!(
            o,
            "mastofs_request_duration_seconds_sum{{mountpoint=\"{mp}\"}} {}",
            self.latency_sum
        );
        let _ = writeln!(
            o,
            "mastofs_request_duration_seconds_count{{mountpoint=\"{mp}\"}} {}",
            self.latency_count
        );
        o
    }
}

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
}
