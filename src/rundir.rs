//! The run directories: where a mount's sockets live, and the one check every path through
//! them makes (the daemon binding, `mastofs status` and `mastofs upgrade` connecting).
//!
//! Two directories, kept apart because containers are told to share one of them:
//! - status sockets ([`Dir::Status`]): `/run/mastofs` for root, which the compose example
//!   binds into containers for their health check (mode 0755: each socket's own mode,
//!   0660, decides who may ask);
//! - handover sockets ([`Dir::Handover`]): `/run/mastofs-handover`, mode 0700, never
//!   shared: the socket hands over the live FUSE connection.
//!
//! A non-root user's are `mastofs` and `mastofs-handover` in their runtime directory
//! (`$XDG_RUNTIME_DIR`, else `/run/user/UID`), else `/tmp/mastofs-UID` and
//! `/tmp/mastofs-handover-UID`, both 0700. A directory is trusted only if it is a real
//! directory (opened with `O_NOFOLLOW`), owned by this user or root, and writable by no one
//! else; the handover directory also readable by no one else. It must never create,
//! chmod or trust a directory another user could have planted.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Which of a user's run directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Status,
    Handover,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Status => "mastofs",
            Dir::Handover => "mastofs-handover",
        }
    }

    /// The mode it is made with; bits outside it that it may not have.
    fn mode(self) -> u32 {
        if self == Dir::Status && nix::unistd::geteuid().is_root() {
            0o755
        } else {
            0o700
        }
    }
}

/// This user's directory of `kind`.
pub fn path(kind: Dir) -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Path::new("/run").join(kind.name());
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .or_else(|| Some(PathBuf::from(format!("/run/user/{uid}"))).filter(|d| d.is_dir()));
    match runtime {
        Some(d) => d.join(kind.name()),
        None => PathBuf::from(format!("/tmp/{}-{uid}", kind.name())),
    }
}

/// Makes `dir` (this user's directory of `kind`) if it is missing, and checks it.
pub fn ensure(dir: &Path, kind: Dir) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(kind.mode()).create(dir) {
        // Made here: its mode as meant, whatever the umask (a unit's UMask=0077 would
        // close the status directory to the socket's group).
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(kind.mode());
            std::fs::set_permissions(dir, mode).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    verify(dir, kind)
}

/// Checks that `dir` may be trusted with sockets of `kind`: a directory (not a link to
/// one), owned by this user or root, writable by nobody else (nor readable, for handover).
pub fn verify(dir: &Path, kind: Dir) -> Result<(), String> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
            format!(
                "{}: not a directory of its own (a link?): refused",
                dir.display()
            )
        }
        e => format!("{}: {}", dir.display(), e.desc()),
    })?;
    let md = std::fs::File::from(fd)
        .metadata()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me && md.uid() != 0 {
        return Err(format!(
            "{}: owned by uid {}, not by this user ({me}) or root: refused (another user may \
             have planted it; remove it)",
            dir.display(),
            md.uid()
        ));
    }
    let loose = if kind == Dir::Handover { 0o077 } else { 0o022 };
    if md.mode() & loose != 0 {
        return Err(format!(
            "{}: mode {:o} lets other users in: refused (chmod {:o} it)",
            dir.display(),
            md.mode() & 0o7777,
            kind.mode()
        ));
    }
    Ok(())
}

/// Whether the peer of a connected unix socket may be trusted: this user or root.
pub fn peer_is_trusted(
    sock: &impl std::os::fd::AsFd,
) -> Result<nix::sys::socket::UnixCredentials, String> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot tell who is at the other end: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(cred)
    } else {
        Err(format!(
            "the other end runs as uid {}, not this user or root",
            cred.uid()
        ))
    }
}

/// Whether process `pid` (as this process sees it; 0: not visible here) shares this
/// process's mount and pid namespaces: a process in a container does not. Told from what
/// any process may read of another (the daemon's unit bounds its capabilities, and
/// `/proc/PID/ns/*` needs ptrace rights over the peer): the pid namespace from how deep
/// `NSpid:` in `/proc/PID/status` goes (a visible process in a deeper namespace has more
/// ids; one in another branch or above is not visible at all), the mount namespace from
/// the id of its root mount in `/proc/PID/mountinfo` (mount ids are unique across
/// namespaces: a copied namespace has new ones).
pub fn same_namespaces(pid: i32) -> bool {
    let depth = |p: &str| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .map(|ids| ids.split_whitespace().count())
            })
    };
    let root_mount = |p: &str| {
        std::fs::read(format!("/proc/{p}/mountinfo"))
            .ok()
            .and_then(|m| m.split(|b| *b == b' ').next().map(<[u8]>::to_vec))
    };
    let peer = pid.to_string();
    pid > 0
        && depth(&peer).is_some()
        && depth(&peer) == depth("self")
        && root_mount(&peer).is_some()
        && root_mount(&peer) == root_mount("self")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_others_can_write_or_a_link_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("h");
        ensure(&d, Dir::Handover).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o733)).unwrap();
        assert!(verify(&d, Dir::Handover)
            .unwrap_err()
            .contains("lets other users in"));
        let l = t.path().join("l");
        std::os::unix::fs::symlink(&d, &l).unwrap();
        assert!(verify(&l, Dir::Handover).unwrap_err().contains("a link"));
        let f = t.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert!(ensure(&f, Dir::Status).is_err());
    }

    #[test]
    fn this_process_shares_its_own_namespaces() {
        assert!(same_namespaces(std::process::id() as i32));
        assert!(!same_namespaces(0));
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("planted");
        ensure(&d, Dir::Handover).unwrap();
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(4321)), None).unwrap();
            // Root trusts only its own (or root's: it is root); another uid's is refused.
            assert!(verify(&d, Dir::Handover)
                .unwrap_err()
                .contains("owned by uid 4321"));
        }
    }
}
