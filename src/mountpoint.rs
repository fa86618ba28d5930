//! The mountpoint: what must hold before mounting, putting the FUSE device on it (mount(2)
//! as root, fusermount3 for other users), taking it off, and the dead mount a crashed
//! daemon leaves behind.
//!
//! Owns reading /proc/self/mountinfo and the checks on the mountpoint: an existing
//! directory with nothing mounted on it. A `fuse.mastofs` mount whose daemon is gone
//! (`ENOTCONN`) is unmounted here (lazily if busy), with a log line, so that a restart (systemd's
//! `Restart=`, or by hand) mounts again instead of failing; any other dead mount is left to
//! the operator. It must never unmount a live mount.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::options::MountConfig;

/// The mountpoint must be an existing directory that nothing is mounted on yet. With
/// `clear_dead`, a dead mastofs mount on it is unmounted first. Returns the canonical path
/// and whether a dead mount was cleared.
pub fn check(p: &Path, clear_dead: bool) -> Result<(PathBuf, bool), String> {
    let mut cleared = false;
    if let Err(e) = std::fs::metadata(p) {
        if e.raw_os_error() == Some(libc::ENOTCONN) && clear_dead {
            clear_dead_mount(p)?;
            cleared = true;
        }
    }
    let canon = std::fs::canonicalize(p).map_err(|e| format!("mountpoint {}: {e}", p.display()))?;
    let meta = std::fs::metadata(&canon).map_err(|e| format!("mountpoint {}: {e}", p.display()))?;
    if !meta.is_dir() {
        return Err(format!("mountpoint {} is not a directory", p.display()));
    }
    if is_mounted(&canon) {
        return Err(format!("mountpoint {} is already mounted", p.display()));
    }
    Ok((canon, cleared))
}

/// Unmounts (lazily) the `fuse.mastofs` mount on `p` whose daemon is gone.
fn clear_dead_mount(p: &Path) -> Result<(), String> {
    let abs = std::path::absolute(p).map_err(|e| format!("mountpoint {}: {e}", p.display()))?;
    let fstype = mount_on(&abs).map(|m| m.1);
    if fstype.as_deref() != Some("fuse.mastofs") {
        return Err(format!(
            "mountpoint {}: Transport endpoint is not connected: a dead {} mount that mastofs \
             did not make; unmount it (umount -l) first",
            p.display(),
            fstype.unwrap_or_else(|| "FUSE".into())
        ));
    }
    unmount(&abs).map_err(|e| {
        format!(
            "mountpoint {}: cannot unmount the dead mastofs mount: {e}",
            p.display()
        )
    })?;
    tracing::warn!(
        mountpoint = %abs.display(),
        "unmounted the dead mount a stopped mastofs daemon left; containers that bind-mounted it \
         keep the dead one until restarted"
    );
    Ok(())
}

/// Readahead of the mount's backing device, in KiB. The kernel offers FUSE only 128 KiB
/// at INIT, which at 13 ms round trip caps one sequential reader near 10-20 MB/s; a
/// deeper window keeps several 1 MiB reads in flight.
const READAHEAD_KB: u32 = 8192;

/// Raises the mount's readahead through sysfs (root only; best effort).
pub fn raise_readahead(mountpoint: &Path) {
    if let Some(dev) = device_of(mountpoint) {
        let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
        if let Err(e) = std::fs::write(&path, READAHEAD_KB.to_string()) {
            tracing::debug!(%path, error = %e, "cannot raise readahead");
        }
    }
}

/// Unmounts `p`: as root with umount2, otherwise through fusermount3.
pub fn unmount(p: &Path) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        nix::mount::umount2(p, nix::mount::MntFlags::empty())
            .or_else(|_| nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH))
            .map_err(|e| e.to_string())
    } else {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(p)
            .status()
            .map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("fusermount3 -u failed: {st}"))
        }
    }
}

/// Mounts /dev/fuse on `cfg.mountpoint` with type `fuse.mastofs`: with mount(2) as root,
/// through the setuid fusermount3 otherwise. Returns the FUSE connection's descriptor.
pub fn mount(cfg: &MountConfig) -> Result<OwnedFd, String> {
    if nix::unistd::geteuid().is_root() {
        kernel_mount(cfg)
    } else {
        fusermount(cfg)
    }
}

/// mount(2) of /dev/fuse on the mountpoint with type `fuse.mastofs` (root only).
fn kernel_mount(cfg: &MountConfig) -> Result<OwnedFd, String> {
    use nix::mount::MsFlags;
    use std::os::fd::AsRawFd;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e} (is the fuse module loaded?)"))?;
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        dev.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if cfg.allow_other || cfg.allow_root {
        data.push_str(",allow_other");
    }
    if cfg.default_permissions {
        data.push_str(",default_permissions");
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (on, f) in [
        (cfg.read_only, MsFlags::MS_RDONLY),
        (cfg.noexec, MsFlags::MS_NOEXEC),
        (cfg.noatime, MsFlags::MS_NOATIME),
    ] {
        if on {
            flags |= f;
        }
    }
    nix::mount::mount(
        Some(cfg.source().as_str()),
        &cfg.mountpoint,
        Some("fuse.mastofs"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| format!("mount: {e}"))?;
    Ok(dev.into())
}

/// fusermount3 mounts for a user who may not open /dev/fuse (mode 0600 on some systems)
/// or call mount(2): it opens the device, mounts it as `fuse.<subtype>` and passes the
/// descriptor back over a socket (`_FUSE_COMMFD`), as libfuse does.
fn fusermount(cfg: &MountConfig) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("fusermount3: socketpair: {e}"))?;
    // The child's end must survive exec.
    nix::fcntl::fcntl(
        &theirs,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| format!("fusermount3: {e}"))?;
    let mut opts = vec![
        format!("fsname={}", cfg.source().replace(',', "\\,")),
        "subtype=mastofs".to_string(),
        "nosuid".into(),
        "nodev".into(),
    ];
    for (on, o) in [
        (cfg.allow_other, "allow_other"),
        (cfg.allow_root, "allow_root"),
        (cfg.default_permissions, "default_permissions"),
        (cfg.read_only, "ro"),
        (cfg.noexec, "noexec"),
        (cfg.noatime, "noatime"),
    ] {
        if on {
            opts.push(o.to_string());
        }
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-o")
        .arg(opts.join(","))
        .arg("--")
        .arg(&cfg.mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run fusermount3 (package fuse3): {e}"))?;
    drop(theirs);
    if !status.success() {
        return Err(format!("fusermount3 failed ({status})"));
    }
    crate::fd_passing::receive(&ours)
        .ok()
        .and_then(|(_, fds)| fds.into_iter().next())
        .ok_or_else(|| "fusermount3 passed no descriptor".to_string())
}

/// Whether something is mounted exactly on `p` (per /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    mounts().iter().any(|m| m.0 == p)
}

/// The device (`major:minor`) mounted on `p`, if any.
pub fn device_of(p: &Path) -> Option<String> {
    mount_on(p).map(|m| m.2)
}

/// The device of the `fuse.mastofs` mount on `p`, found without touching `p` itself (a
/// mount whose daemon is being replaced would make a stat wait).
pub fn mastofs_device(p: &Path) -> Option<String> {
    let abs = std::path::absolute(p).ok()?;
    mount_on(&abs)
        .filter(|m| m.1 == "fuse.mastofs")
        .map(|m| m.2)
}

/// The topmost mount on `p` (mountpoint, filesystem type, device).
fn mount_on(p: &Path) -> Option<(PathBuf, String, String)> {
    mounts().into_iter().rev().find(|m| m.0 == p)
}

/// (mountpoint, filesystem type, device) of every mount, in mount order.
fn mounts() -> Vec<(PathBuf, String, String)> {
    parse_mountinfo(&std::fs::read("/proc/self/mountinfo").unwrap_or_default())
}

/// mountinfo's lines, as bytes: a mountpoint is any bytes, a line that does not parse is
/// skipped (never the whole table).
fn parse_mountinfo(info: &[u8]) -> Vec<(PathBuf, String, String)> {
    use std::os::unix::ffi::OsStringExt;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    info.split(|b| *b == b'\n')
        .filter_map(|l| {
            let mut f = l.split(|b| *b == b' ');
            let device = f.nth(2)?;
            let point = f.nth(1)?;
            let sep = l.windows(3).position(|w| w == b" - ")?;
            let fstype = l[sep + 3..].split(|b| *b == b' ').next()?;
            Some((
                PathBuf::from(std::ffi::OsString::from_vec(unescape(point))),
                text(fstype),
                text(device),
            ))
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 4 <= s.len() {
            let oct = &s[i + 1..i + 4];
            if oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = oct.iter().fold(0u32, |v, d| v * 8 + (d - b'0') as u32);
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(b"/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape(b"/plain"), b"/plain");
        assert_eq!(unescape(b"/x\\777"), b"/x\\777", "not a byte: kept");
    }

    /// A line as the kernel writes it for a mount on `point` (space, tab, newline and
    /// backslash escaped in octal; every other byte as it is).
    fn line(point: &[u8], fstype: &str) -> Vec<u8> {
        let mut esc = Vec::new();
        for &b in point {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
                esc.extend(format!("\\{b:03o}").bytes());
            } else {
                esc.push(b);
            }
        }
        let mut l = b"36 35 0:52 / ".to_vec();
        l.extend(&esc);
        l.extend(format!(" rw,nosuid - {fstype} box:/x rw,user_id=0\n").bytes());
        l
    }

    #[test]
    fn mountpoints_are_bytes_and_one_bad_line_spoils_nothing() {
        let mut info = line(b"/mnt/\xff\xfe", "fuse.mastofs");
        info.extend(b"garbage without fields\n");
        info.extend(line("/mnt/mnt\u{e9} x".as_bytes(), "fuse.mastofs"));
        let m = parse_mountinfo(&info);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].0.as_os_str().as_bytes(), b"/mnt/\xff\xfe");
        assert_eq!(m[1].0, Path::new("/mnt/mnt\u{e9} x"));
        assert_eq!((m[1].1.as_str(), m[1].2.as_str()), ("fuse.mastofs", "0:52"));
    }

    proptest! {
        /// Any mountpoint's bytes come back as they were, beside any other line.
        #[test]
        fn parse_mountinfo_round_trips(
            point in proptest::collection::vec(1u8..=255, 1..64),
            noise in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let point: Vec<u8> = point.into_iter().filter(|b| *b != b'/').collect();
            let mut want = b"/".to_vec();
            want.extend(&point);
            let mut info: Vec<u8> = noise.into_iter().filter(|b| *b != b'\n').collect();
            info.push(b'\n');
            info.extend(line(&want, "fuse.mastofs"));
            let m = parse_mountinfo(&info);
            let last = m.last().expect("the well-formed line parses");
            prop_assert_eq!(last.0.as_os_str().as_bytes(), &want[..]);
            prop_assert_eq!(last.1.as_str(), "fuse.mastofs");
        }
    }

    #[test]
    fn root_is_mounted_and_missing_mountpoint_is_an_error() {
        assert!(is_mounted(Path::new("/")));
        assert!(mounts()
            .iter()
            .any(|m| m.0 == Path::new("/") && !m.1.is_empty()));
        assert!(device_of(Path::new("/")).is_some_and(|d| d.contains(':')));
        let e = check(Path::new("/nonexistent/mastofs-mp"), true).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }
}
