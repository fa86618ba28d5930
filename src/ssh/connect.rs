//! Opening one authenticated SSH connection and the SFTP subsystem channel on it.
//!
//! Owns the TCP connect (with `ConnectTimeout`), the russh client configuration
//! (keepalives, window size, cipher order), host key verification through
//! [`super::known_hosts`], and public-key authentication. It must never log secrets and
//! never retry: the session layer owns reconnecting.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelStream;
use tokio::net::TcpStream;

use super::known_hosts::{self, Verdict};
use super::{SshError, StrictMode, Target};

/// Receive window advertised to the server: large enough for ~500 MB/s at 13 ms RTT
/// (russh's 2 MiB default caps one channel near 77 MB/s there).
const WINDOW_SIZE: u32 = 32 * 1024 * 1024;

/// russh calls this during the handshake; it decides about the host key.
struct Verifier {
    target: Arc<Target>,
    /// Why the key was refused, for the caller's error message.
    refusal: Arc<Mutex<Option<SshError>>>,
    /// The identification string the server sent (`SSH-2.0-OpenSSH_9.2p1 ...`).
    server_id: Arc<Mutex<String>>,
    /// Why the connection ended, once it has (see [`Connection::why_closed`]).
    gone: Arc<Mutex<Option<String>>>,
}

/// What ended a connection, in an operator's words.
fn why_gone(reason: &client::DisconnectReason<russh::Error>, target: &Target) -> String {
    match reason {
        client::DisconnectReason::ReceivedDisconnect(info) => format!(
            "the server disconnected ({:?}: {})",
            info.reason_code,
            info.message.trim()
        ),
        client::DisconnectReason::Error(russh::Error::KeepaliveTimeout) => format!(
            "keepalives unanswered for {} s (ServerAliveInterval {} s x ServerAliveCountMax {})",
            target.alive_interval.as_secs() * u64::from(target.alive_count_max),
            target.alive_interval.as_secs(),
            target.alive_count_max
        ),
        client::DisconnectReason::Error(russh::Error::IO(e)) => match e.kind() {
            std::io::ErrorKind::ConnectionReset => {
                "connection reset by the server or the network".into()
            }
            std::io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
            _ => format!("connection failed: {e}"),
        },
        client::DisconnectReason::Error(russh::Error::Disconnect) => {
            "the server closed the connection".into()
        }
        client::DisconnectReason::Error(e) => format!("connection failed: {e}"),
    }
}

impl Verifier {
    fn decide(&self, key: &PublicKey) -> Result<(), SshError> {
        let t = &self.target;
        let fingerprint = known_hosts::fingerprint(key);
        let host = known_hosts::host_entry_name(&t.host, t.port);
        match known_hosts::check(&t.known_hosts_files, &t.host, t.port, key) {
            Verdict::Known => Ok(()),
            Verdict::Revoked { file, line } => Err(SshError::HostKeyRevoked {
                host,
                fingerprint,
                file,
                line,
            }),
            Verdict::Changed { file, line } => Err(SshError::HostKeyChanged {
                host,
                fingerprint,
                file,
                line,
            }),
            Verdict::Unknown => {
                let file = t.known_hosts_files.first().cloned().unwrap_or_default();
                match t.strict {
                    StrictMode::Yes => Err(SshError::HostKeyUnknown {
                        host,
                        fingerprint,
                        file,
                    }),
                    StrictMode::AcceptNew => {
                        known_hosts::append(&file, &t.host, t.port, key).map_err(|e| {
                            SshError::HostKeyUnsupported(format!(
                                "cannot record host key of {host} in {}: {e}",
                                file.display()
                            ))
                        })?;
                        tracing::warn!(%host, %fingerprint, file = %file.display(), "recorded new host key");
                        Ok(())
                    }
                    StrictMode::No => {
                        tracing::warn!(%host, %fingerprint, "host key not verified (StrictHostKeyChecking=no)");
                        Ok(())
                    }
                }
            }
        }
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        if let Ok(mut g) = self.gone.lock() {
            *g = Some(why_gone(&reason, &self.target));
        }
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn kex_done(
        &mut self,
        _secret: Option<&[u8]>,
        _names: &russh::Names,
        session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        if let Ok(mut id) = self.server_id.lock() {
            *id = String::from_utf8_lossy(session.remote_sshid())
                .trim()
                .to_string();
        }
        Ok(())
    }

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let decision = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.decide(key),
            PublicKeyOrCertificate::Certificate(_) => Err(SshError::HostKeyUnsupported(format!(
                "{} presented a host certificate; mastofs verifies plain host keys only \
                 (@cert-authority is not supported): configure the server's plain key in known_hosts",
                known_hosts::host_entry_name(&self.target.host, self.target.port)
            ))),
        };
        match decision {
            Ok(()) => Ok(true),
            Err(e) => {
                if let Ok(mut slot) = self.refusal.lock() {
                    *slot = Some(e);
                }
                Ok(false)
            }
        }
    }
}

/// An authenticated SSH connection.
pub struct Connection {
    handle: Handle<Verifier>,
    host: String,
    /// The server's identification string, e.g. `SSH-2.0-OpenSSH_9.2p1 Debian-2`.
    pub server_id: String,
    gone: Arc<Mutex<Option<String>>>,
}

fn preferred(target: &Target) -> russh::Preferred {
    use russh::cipher;
    let names: Vec<cipher::Name> = match &target.ciphers {
        Some(list) => list
            .iter()
            .filter_map(|want| {
                cipher::ALL_CIPHERS
                    .iter()
                    .find(|n| n.as_ref() == want.as_str())
                    .map(|n| **n)
            })
            .collect(),
        // AES-GCM first: with AES instructions it is far cheaper than chacha20-poly1305.
        None => vec![
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_128_CTR,
            cipher::AES_256_CTR,
        ],
    };
    // Host key algorithms whose keys known_hosts holds for this host go first, so that a
    // server offering several host keys shows one that can be verified.
    let known = known_hosts::known_key_types(&target.known_hosts_files, &target.host, target.port);
    let mut key: Vec<russh::keys::Algorithm> = russh::Preferred::default().key.to_vec();
    key.sort_by_key(|a| {
        !known
            .iter()
            .any(|k| k == a || (k.clone().is_rsa() && a.clone().is_rsa()))
    });
    russh::Preferred {
        cipher: Cow::Owned(names),
        key: Cow::Owned(key),
        ..Default::default()
    }
}

fn load_keys(
    target: &Target,
) -> Result<Vec<(std::path::PathBuf, Arc<russh::keys::PrivateKey>)>, SshError> {
    let mut keys = Vec::new();
    for path in &target.identity_files {
        match russh::keys::load_secret_key(path, None) {
            Ok(k) => keys.push((path.clone(), Arc::new(k))),
            Err(russh::keys::Error::KeyIsEncrypted) => {
                return Err(SshError::KeyFile {
                    path: path.clone(),
                    reason: "the key is encrypted with a passphrase; mastofs needs an \
                             unencrypted key (or an ssh-agent, not supported yet)"
                        .into(),
                })
            }
            Err(e) => {
                if target.identity_explicit {
                    return Err(SshError::KeyFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                }
                tracing::debug!(path = %path.display(), error = %e, "skipping key file");
            }
        }
    }
    if keys.is_empty() {
        return Err(SshError::KeyFile {
            path: target
                .identity_files
                .first()
                .cloned()
                .unwrap_or_else(|| super::config::home_dir().join(".ssh/id_ed25519")),
            reason: "no usable private key (set IdentityFile)".into(),
        });
    }
    Ok(keys)
}

/// Connects, verifies the host key and authenticates.
pub async fn connect(target: Arc<Target>) -> Result<Connection, SshError> {
    let keys = load_keys(&target)?;
    let stream = tcp(&target).await?;
    let gone = Arc::new(Mutex::new(None));
    let (mut handle, server_id) = handshake(&target, stream, gone.clone()).await?;
    authenticate(&target, &mut handle, keys).await?;
    Ok(Connection {
        handle,
        host: format!("{}:{}", target.host, target.port),
        server_id,
        gone,
    })
}

fn timed_out(target: &Target, addr: String) -> SshError {
    SshError::Timeout {
        addr,
        secs: target.connect_timeout.as_secs(),
    }
}

/// The TCP connection: to the first of the host's addresses that answers.
async fn tcp(target: &Target) -> Result<TcpStream, SshError> {
    let addr_text = format!("{}:{}", target.host, target.port);
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(target.connect_timeout, lookup)
        .await
        .map_err(|_| timed_out(target, addr_text))?
        .map_err(|e| SshError::Resolve {
            host: target.host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match tokio::time::timeout(target.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => {
                last = Some(SshError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })
            }
            Err(_) => last = Some(timed_out(target, addr.to_string())),
        }
    }
    Err(last.unwrap_or(SshError::Resolve {
        host: target.host.clone(),
        reason: "no addresses".into(),
    }))
}

/// The SSH handshake, with the host key verified; returns the handle and the server's
/// identification. `gone` receives why the connection ends, later.
async fn handshake(
    target: &Arc<Target>,
    stream: TcpStream,
    gone: Arc<Mutex<Option<String>>>,
) -> Result<(client::Handle<Verifier>, String), SshError> {
    let config = Arc::new(client::Config {
        keepalive_interval: Some(target.alive_interval),
        // OpenSSH's meaning: the link is dead once ServerAliveCountMax intervals passed
        // unanswered (russh gives up one interval later than its count; 0 would disable).
        keepalive_max: (target.alive_count_max as usize).saturating_sub(1).max(1),
        inactivity_timeout: None,
        window_size: WINDOW_SIZE,
        preferred: preferred(target),
        nodelay: true,
        ..Default::default()
    });
    let refusal = Arc::new(Mutex::new(None));
    let server_id = Arc::new(Mutex::new(String::new()));
    let verifier = Verifier {
        target: target.clone(),
        refusal: refusal.clone(),
        server_id: server_id.clone(),
        gone,
    };
    let addr_text = format!("{}:{}", target.host, target.port);
    let handshake = client::connect_stream(config, stream, verifier);
    let handle = match tokio::time::timeout(target.connect_timeout, handshake).await {
        Err(_) => return Err(timed_out(target, addr_text)),
        Ok(Err(e)) => {
            if let Some(refused) = refusal.lock().ok().and_then(|mut s| s.take()) {
                return Err(refused);
            }
            return Err(SshError::Protocol {
                host: addr_text,
                reason: e.to_string(),
            });
        }
        Ok(Ok(h)) => h,
    };
    let server_id = server_id.lock().map(|s| s.clone()).unwrap_or_default();
    Ok((handle, server_id))
}

/// Public key authentication with each key in turn, until one is accepted.
async fn authenticate(
    target: &Target,
    handle: &mut client::Handle<Verifier>,
    keys: Vec<(std::path::PathBuf, Arc<russh::keys::PrivateKey>)>,
) -> Result<(), SshError> {
    let addr_text = format!("{}:{}", target.host, target.port);
    let protocol = |reason: String| SshError::Protocol {
        host: addr_text.clone(),
        reason,
    };
    let mut tried = Vec::new();
    for (path, key) in keys {
        let hash = if key.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| protocol(e.to_string()))?
                .flatten()
        } else {
            None
        };
        let auth =
            handle.authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(key, hash));
        let result = tokio::time::timeout(target.connect_timeout, auth)
            .await
            .map_err(|_| timed_out(target, addr_text.clone()))?
            .map_err(|e| protocol(e.to_string()))?;
        tried.push(path.display().to_string());
        if matches!(result, AuthResult::Success) {
            return Ok(());
        }
    }
    Err(SshError::Auth {
        user: target.user.clone(),
        host: addr_text,
        tried: tried.join(", "),
    })
}

impl Connection {
    /// Opens a session channel and starts the `sftp` subsystem on it.
    pub async fn open_sftp(
        &self,
        timeout: Duration,
    ) -> Result<ChannelStream<client::Msg>, SshError> {
        let fail = |reason: String| SshError::Subsystem {
            host: self.host.clone(),
            reason,
        };
        let open = async {
            let channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| fail(e.to_string()))?;
            channel
                .request_subsystem(true, "sftp")
                .await
                .map_err(|e| fail(e.to_string()))?;
            Ok::<_, SshError>(channel.into_stream())
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| fail("timed out".into()))?
    }

    /// True once the connection is gone (keepalives unanswered, reset, closed).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Why the connection ended (keepalives unanswered, reset, the server disconnected),
    /// once it has and the reason is known.
    pub fn why_closed(&self) -> Option<String> {
        self.gone.lock().ok().and_then(|g| g.clone())
    }

    /// Closes the connection politely (best effort).
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "unmount", "en")
            .await;
    }
}
