//! SSH: where the server is, whether it is the right server, and an authenticated
//! connection to it.
//!
//! Owns ssh_config resolution ([`config`]), host key verification against known_hosts
//! ([`known_hosts`]) and connecting plus public-key authentication ([`connect`]). It knows
//! nothing about SFTP requests or the filesystem, and it must never accept a host key that
//! known_hosts does not vouch for (except `StrictHostKeyChecking=accept-new`, which records
//! the key as ssh does).

pub mod config;
pub mod connect;
pub mod known_hosts;

use std::path::PathBuf;

pub use config::{Overrides, StrictMode, Target};
pub use connect::{connect, Connection};

/// Why a connection could not be made. Each message is meant to be shown to the operator
/// as is, on one line.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh_config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("cannot resolve host '{host}': {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("timed out after {secs} s connecting to {addr}")]
    Timeout { addr: String, secs: u64 },
    #[error(
        "host key for {host} is not known (key {fingerprint}); add it to {file} \
         (e.g. ssh-keyscan -p PORT HOST >> {file}) or set StrictHostKeyChecking=accept-new"
    )]
    HostKeyUnknown {
        host: String,
        fingerprint: String,
        file: PathBuf,
    },
    #[error(
        "HOST KEY FOR {host} HAS CHANGED (server sent {fingerprint}); the known key is at \
         {file}:{line}. If the change is expected, remove that line (ssh-keygen -R)"
    )]
    HostKeyChanged {
        host: String,
        fingerprint: String,
        file: PathBuf,
        line: usize,
    },
    #[error("host key {fingerprint} of {host} is marked @revoked in {file}:{line}")]
    HostKeyRevoked {
        host: String,
        fingerprint: String,
        file: PathBuf,
        line: usize,
    },
    #[error("{0}")]
    HostKeyUnsupported(String),
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("authentication failed for {user}@{host} (tried: {tried})")]
    Auth {
        user: String,
        host: String,
        tried: String,
    },
    #[error("ssh protocol error with {host}: {reason}")]
    Protocol { host: String, reason: String },
    #[error("server {host} refused the sftp subsystem: {reason}")]
    Subsystem { host: String, reason: String },
}

impl SshError {
    /// The server could not be reached at all (no name, no route, refused, no answer), as
    /// opposed to reached and refusing us.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SshError::Resolve { .. } | SshError::Connect { .. } | SshError::Timeout { .. }
        )
    }
}
