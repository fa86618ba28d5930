//! What the server does where SFTP servers differ, found out by trying, once per server.
//!
//! Owns filling in [`ServerTraits`] (a plain record in `meta`), which every connection
//! carries: what the VERSION handshake said (protocol version, extensions, limits, symlink argument order) and what a
//! probe saw (does LSTAT follow links, does READLINK answer the link's text or the resolved
//! path, is APPEND accepted, does READ stop at the size the file had at OPEN, what umask the
//! server applies to OPEN and MKDIR). The probe works in a scratch directory of its own
//! under the mount's remote root and removes it; a connection to a server already probed
//! (same SSH identification and SFTP extensions) reuses the record. Where the probe cannot
//! run (read-only tree, no permission), the record says what the server's identification
//! implies, and says so. It must never touch anything but its scratch directory, and never
//! decide what to do with a trait (the operations in `ops` and the filesystem consult it).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::meta::{Attrs, Kind, OpenMode, ServerTraits};
use crate::sftp::{SftpClient, SftpError};

impl ServerTraits {
    /// The handshake's part of the record, behaviours not yet known.
    fn from_handshake(sftp: &SftpClient) -> Self {
        ServerTraits {
            sftp_version: sftp.version,
            extensions: sftp.extension_names.clone(),
            max_read: sftp.max_read,
            max_write: sftp.max_write,
            max_handles: sftp.max_handles,
            symlink_link_first: sftp.extensions.symlink_link_first,
            open_umask: 0o022,
            mkdir_umask: 0o022,
            ..Default::default()
        }
    }

    /// The behaviours the server's identification implies: ProFTPD's mod_sftp as measured
    /// on 1.3.8, OpenSSH's sftp-server otherwise.
    fn assume(&mut self, server_id: &str, why: &str) {
        let proftpd = server_id.contains("mod_sftp") || server_id.contains("ProFTPD");
        self.lstat_follows_links = proftpd;
        self.readlink_resolves = proftpd;
        self.rename_follows_links = proftpd;
        self.append_refused = proftpd;
        self.read_stops_at_open_size = proftpd;
        self.open_umask = if proftpd { 0 } else { 0o022 };
        self.mkdir_umask = 0o022;
        let like = if proftpd { "ProFTPD" } else { "OpenSSH" };
        self.source = format!("assumed as for {like} ({why})");
    }
}

/// Probes servers for the connections of one mount, remembering the last record.
pub struct Prober {
    /// The remote directory the scratch directory goes into (None: never probe).
    dir: Option<String>,
    /// The last record and the server it is for; a lock held through a probe, so that
    /// connections made at once wait for one probe.
    known: tokio::sync::Mutex<Option<(String, ServerTraits)>>,
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

impl Prober {
    /// `dir`: the mount's remote root (None: assume from the identification only).
    pub fn new(dir: Option<String>) -> Self {
        Prober {
            dir,
            known: tokio::sync::Mutex::new(None),
        }
    }

    /// The record for a connection to `server_id` whose first SFTP session is `sftp`.
    /// A transport error fails the connection; anything else leaves an assumed record.
    pub async fn traits(
        &self,
        server_id: &str,
        sftp: &SftpClient,
    ) -> Result<ServerTraits, SftpError> {
        let mut base = ServerTraits::from_handshake(sftp);
        let key = format!("{server_id}\n{:?}", base.extensions);
        let mut known = self.known.lock().await;
        if let Some((k, t)) = known.as_ref() {
            if *k == key {
                return Ok(t.clone());
            }
        }
        match sftp.realpath(".").await {
            Ok(home) => base.home = crate::name_bytes::decode(&home),
            Err(e) if e.is_transport() => return Err(e),
            Err(_) => {}
        }
        let Some(root) = &self.dir else {
            base.assume(server_id, "not probed");
            return Ok(base);
        };
        let name = format!(
            ".mastofs-probe-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        );
        let scratch = if root.is_empty() {
            name
        } else {
            format!("{}/{name}", root.trim_end_matches('/'))
        };
        let scratch = crate::name_bytes::encode(&scratch).into_owned();
        match probe(sftp, &scratch, &mut base).await {
            Ok(()) => base.source = "probed".to_string(),
            Err(e) if e.is_transport() => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "cannot probe the server's behaviour; assuming it");
                base.assume(server_id, &format!("probe refused: {e}"));
            }
        }
        cleanup(sftp, &scratch).await;
        tracing::info!(server = %server_id, traits = %base.summary(), "server probed");
        *known = Some((key, base.clone()));
        Ok(base)
    }
}

/// Tries each behaviour in `dir` (made here): a status error on the directory or the file
/// ends the probe; one on a single behaviour leaves that one as OpenSSH has it.
async fn probe(sftp: &SftpClient, dir: &[u8], t: &mut ServerTraits) -> Result<(), SftpError> {
    sftp.mkdir(dir, &Attrs::with_perm(0o777)).await?;
    t.mkdir_umask = 0o777 & !perm(&sftp.lstat(dir).await?);
    let file = [dir, b"/f"].concat();
    let create = OpenMode {
        read: true,
        write: true,
        create: true,
        truncate: true,
        exclusive: false,
    };
    let w = sftp.open(&file, create, &Attrs::with_perm(0o666)).await?;
    let grown = growth(sftp, &file, &w, t).await;
    sftp.close_nowait(&w);
    grown?;
    t.append_refused = match sftp.open_append(&file).await {
        Ok(h) => {
            sftp.close_nowait(&h);
            false
        }
        Err(e) if e.is_transport() => return Err(e),
        Err(_) => true,
    };
    let link = [dir, b"/l"].concat();
    sftp.symlink("f", &link).await?;
    t.lstat_follows_links = sftp.lstat(&link).await?.kind() != Kind::Symlink;
    t.readlink_resolves = &sftp.readlink(&link).await?[..] != b"f";
    sftp.rename(&link, [dir, b"/m"].concat()).await?;
    t.rename_follows_links = match sftp.lstat(&file).await {
        Ok(_) => false,
        Err(e) if e.is_transport() => return Err(e),
        Err(_) => true,
    };
    Ok(())
}

/// The umask on OPEN, and whether a READ stops at the size a handle saw at OPEN: a second
/// handle opened at size 1, then the file grows through `w`, and a READ past the old end
/// (ProFTPD answers EOF beyond, not at, the size it saw). Closes what it opens.
async fn growth(
    sftp: &SftpClient,
    file: &[u8],
    w: &crate::sftp::RemoteHandle,
    t: &mut ServerTraits,
) -> Result<(), SftpError> {
    sftp.write(w, 0, bytes::Bytes::from_static(b"a")).await?;
    t.open_umask = 0o666 & !perm(&sftp.fstat(w).await?);
    let read_only = OpenMode {
        read: true,
        ..Default::default()
    };
    let r = sftp.open(file, read_only, &Attrs::default()).await?;
    let read = async {
        sftp.write(w, 1, bytes::Bytes::from_static(b"bc")).await?;
        sftp.read(&r, 2, 1).await
    }
    .await;
    sftp.close_nowait(&r);
    t.read_stops_at_open_size = read?.is_empty();
    Ok(())
}

/// The permission bits of `a`.
fn perm(a: &Attrs) -> u32 {
    a.mode.unwrap_or(0) & 0o777
}

/// Removes what [`probe`] made, whatever it got to (errors ignored: each may be missing).
async fn cleanup(sftp: &SftpClient, dir: &[u8]) {
    for f in [&b"/l"[..], b"/m", b"/f"] {
        let _ = sftp.remove([dir, f].concat()).await;
    }
    if let Err(e) = sftp.rmdir(dir).await {
        if !e.is_not_found() {
            let dir = String::from_utf8_lossy(dir);
            tracing::warn!(error = %e, %dir, "could not remove the probe's scratch directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Prober, ServerTraits};
    use crate::sftp::SftpClient;
    use std::time::Duration;

    /// A client of the tests' SFTP server (plain mode: POSIX as the local disk does it).
    async fn client() -> (SftpClient, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = tokio::io::duplex(1 << 20);
        let mode = crate::hostile::Mode::Plain;
        tokio::spawn(crate::hostile::serve(b, dir.path().to_path_buf(), mode));
        let c = SftpClient::start(a, Duration::from_secs(2), "x")
            .await
            .unwrap();
        (c, dir)
    }

    #[tokio::test]
    async fn a_posix_server_is_probed_as_such_and_the_scratch_removed() {
        let (c, dir) = client().await;
        let root = dir.path().display().to_string();
        let p = Prober::new(Some(root.clone()));
        let t = p.traits("SSH-2.0-OpenSSH_9.2p1", &c).await.unwrap();
        assert_eq!(t.source, "probed", "{t:?}");
        assert!(!t.lstat_follows_links && !t.readlink_resolves && !t.rename_follows_links);
        assert!(!t.append_refused && !t.read_stops_at_open_size, "{t:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // The same server again: the record is reused.
        assert_eq!(p.traits("SSH-2.0-OpenSSH_9.2p1", &c).await.unwrap(), t);
    }

    #[tokio::test]
    async fn where_nothing_can_be_made_the_traits_are_assumed() {
        let (c, dir) = client().await;
        let p = Prober::new(Some(format!("{}/missing", dir.path().display())));
        let t = p.traits("SSH-2.0-mod_sftp", &c).await.unwrap();
        assert!(
            t.source.starts_with("assumed as for ProFTPD"),
            "{}",
            t.source
        );
        assert!(t.lstat_follows_links && t.rename_follows_links);
    }

    #[test]
    fn assumed_traits_follow_the_identification() {
        let mut t = ServerTraits::default();
        t.assume("SSH-2.0-mod_sftp/1.0.0", "not probed");
        assert!(t.lstat_follows_links && t.readlink_resolves && t.append_refused);
        assert_eq!((t.open_umask, t.mkdir_umask), (0, 0o022));
        t.assume("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", "not probed");
        assert!(!t.lstat_follows_links && !t.readlink_resolves && !t.append_refused);
        assert_eq!(t.open_umask, 0o022);
        assert!(
            t.summary().contains("behaves as OpenSSH"),
            "{}",
            t.summary()
        );
    }
}
