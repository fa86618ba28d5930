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
//! implies, and says so.
//!
//! The scratch directory is `.mastofs-probe-<mount tag>-<random>` (hidden from listings),
//! made 0700 so no other user can reach into it, its file created exclusively; only what
//! this probe made is removed. One a probe of the same mount left behind (a daemon killed
//! midway) is swept before probing. It must never touch anything but scratch directories
//! of its own mount, and never decide what to do with a trait (the operations in `ops`
//! and the filesystem consult it).

use crate::meta::{Attrs, Kind, OpenMode, ServerTraits};
use crate::sftp::{SftpClient, SftpError};

use crate::ident::SCRATCH_PREFIX;

/// Where a mount may probe: its remote root, and its tag (see `crate::ident`).
#[derive(Debug, Clone)]
pub struct Site {
    pub dir: String,
    pub tag: String,
}

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
    /// Where the scratch directory goes (None: never probe).
    site: Option<Site>,
    /// The last record and the server it is for; a lock held through a probe, so that
    /// connections made at once wait for one probe.
    known: tokio::sync::Mutex<Option<(String, ServerTraits)>>,
}

impl Prober {
    /// `site`: where to probe (None: assume from the identification only).
    pub fn new(site: Option<Site>) -> Self {
        Prober {
            site,
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
        let Some(site) = &self.site else {
            base.assume(server_id, "not probed");
            return Ok(base);
        };
        let root = if site.dir.is_empty() {
            String::new()
        } else {
            format!("{}/", site.dir.trim_end_matches('/'))
        };
        let root = crate::name_bytes::encode(&root).into_owned();
        let mine = format!("{SCRATCH_PREFIX}{}-", site.tag);
        sweep(sftp, &root, mine.as_bytes()).await?;
        let scratch = [
            &root[..],
            mine.as_bytes(),
            crate::ident::random_token().as_bytes(),
        ]
        .concat();
        let mut made = Vec::new();
        let probed = probe(sftp, &scratch, &mut base, &mut made).await;
        cleanup(sftp, &made).await;
        match probed {
            Ok(()) => base.source = "probed".to_string(),
            Err(e) if e.is_transport() => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "cannot probe the server's behaviour; assuming it");
                base.assume(server_id, &format!("probe refused: {e}"));
            }
        }
        tracing::info!(server = %server_id, traits = %base.summary(), "server probed");
        *known = Some((key, base.clone()));
        Ok(base)
    }
}

/// What the probe made, to remove: a file, or a directory.
enum Made {
    File(Vec<u8>),
    Dir(Vec<u8>),
}

/// Tries each behaviour in `dir` (made here, 0700): a status error on the directory or the
/// file ends the probe; one on a single behaviour leaves that one as OpenSSH has it.
/// Everything made is noted in `made` as soon as the server confirms it.
async fn probe(
    sftp: &SftpClient,
    dir: &[u8],
    t: &mut ServerTraits,
    made: &mut Vec<Made>,
) -> Result<(), SftpError> {
    sftp.mkdir(dir, &Attrs::with_perm(0o700)).await?;
    made.push(Made::Dir(dir.to_vec()));
    // The umask MKDIR applies, on a directory inside the closed one.
    let sub = [dir, b"/d"].concat();
    sftp.mkdir(&sub, &Attrs::with_perm(0o777)).await?;
    made.push(Made::Dir(sub.clone()));
    t.mkdir_umask = 0o777 & !perm(&sftp.lstat(&sub).await?);
    let file = [dir, b"/f"].concat();
    let create = OpenMode {
        read: true,
        write: true,
        create: true,
        truncate: false,
        exclusive: true,
    };
    let w = sftp.open(&file, create, &Attrs::with_perm(0o666)).await?;
    made.push(Made::File(file.clone()));
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
    made.push(Made::File(link.clone()));
    t.lstat_follows_links = sftp.lstat(&link).await?.kind() != Kind::Symlink;
    t.readlink_resolves = &sftp.readlink(&link).await?[..] != b"f";
    let moved = [dir, b"/m"].concat();
    sftp.rename(&link, &moved).await?;
    made.push(Made::File(moved));
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

/// Removes what [`probe`] made, last first (errors ignored: a renamed link is gone under
/// its first name; the server may have followed a link in the rename).
async fn cleanup(sftp: &SftpClient, made: &[Made]) {
    for m in made.iter().rev() {
        let r = match m {
            Made::File(f) => sftp.remove(f).await,
            Made::Dir(d) => sftp.rmdir(d).await,
        };
        if let (Err(e), Made::Dir(d)) = (r, m) {
            if !e.is_not_found() {
                let dir = String::from_utf8_lossy(d);
                tracing::warn!(error = %e, %dir, "could not remove the probe's scratch directory");
            }
        }
    }
}

/// Removes scratch directories a probe of this mount left in `root` (its daemon killed
/// midway): only names beginning with `mine`, only the entries a probe makes.
async fn sweep(sftp: &SftpClient, root: &[u8], mine: &[u8]) -> Result<(), SftpError> {
    let dir: &[u8] = if root.is_empty() { b"." } else { root };
    let listed = match sftp.read_dir(dir, 100_000, 2).await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(()),
        Err(e) if e.is_transport() => return Err(e),
        Err(_) => return Ok(()),
    };
    for e in listed {
        if !e.name.starts_with(mine) {
            continue;
        }
        let stale = [root, &e.name[..]].concat();
        for f in [&b"/m"[..], b"/l", b"/f"] {
            let _ = sftp.remove([&stale[..], f].concat()).await;
        }
        let _ = sftp.rmdir([&stale[..], b"/d"].concat()).await;
        match sftp.rmdir(&stale).await {
            Ok(()) => {
                tracing::info!(dir = %String::from_utf8_lossy(&stale), "removed a scratch directory a stopped daemon left")
            }
            Err(e) if e.is_transport() => return Err(e),
            Err(_) => {}
        }
    }
    Ok(())
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
        let mode = mastofs_testkit::hostile::Mode::Plain;
        tokio::spawn(mastofs_testkit::hostile::serve(
            b,
            dir.path().to_path_buf(),
            mode,
        ));
        let c = SftpClient::start(a, Duration::from_secs(2), "x")
            .await
            .unwrap();
        (c, dir)
    }

    #[tokio::test]
    async fn a_posix_server_is_probed_as_such_and_the_scratch_removed() {
        let (c, dir) = client().await;
        let root = dir.path().display().to_string();
        // A scratch directory this mount's probe left (swept), another mount's (kept),
        // and a name in the way of nothing.
        std::fs::create_dir_all(dir.path().join(".mastofs-probe-t1-old/d")).unwrap();
        std::fs::write(dir.path().join(".mastofs-probe-t1-old/f"), b"").unwrap();
        std::fs::create_dir(dir.path().join(".mastofs-probe-t2-other")).unwrap();
        let site = super::Site {
            dir: root.clone(),
            tag: "t1".into(),
        };
        let p = Prober::new(Some(site));
        let t = p.traits("SSH-2.0-OpenSSH_9.2p1", &c).await.unwrap();
        assert_eq!(t.source, "probed", "{t:?}");
        assert!(!t.lstat_follows_links && !t.readlink_resolves && !t.rename_follows_links);
        assert!(!t.append_refused && !t.read_stops_at_open_size, "{t:?}");
        assert_eq!(
            t.mkdir_umask, 0o022,
            "measured inside the closed scratch directory"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![".mastofs-probe-t2-other".to_string()]);
        // The same server again: the record is reused.
        assert_eq!(p.traits("SSH-2.0-OpenSSH_9.2p1", &c).await.unwrap(), t);
    }

    #[tokio::test]
    async fn where_nothing_can_be_made_the_traits_are_assumed() {
        let (c, dir) = client().await;
        let p = Prober::new(Some(super::Site {
            dir: format!("{}/missing", dir.path().display()),
            tag: "t".into(),
        }));
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
