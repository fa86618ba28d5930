//! The mountpoint: what must hold before mounting, and the dead mount a crashed daemon
//! leaves behind.
//!
//! Owns reading /proc/self/mountinfo and the checks on the mountpoint: an existing
//! directory with nothing mounted on it. A `fuse.mastofs` mount whose daemon is gone
//! (`ENOTCONN`) is unmounted lazily here, with a log line, so that a restart (systemd's
//! `Restart=`, or by hand) mounts again instead of failing; any other dead mount is left to
//! the operator. It must never unmount a live mount.

use std::path::{Path, PathBuf};

/// The mountpoint must be an existing directory that nothing is mounted on yet. With
/// `clear_dead`, a dead mastofs mount on it is unmounted first.
pub fn check(p: &Path, clear_dead: bool) -> Result<PathBuf, String> {
    if let Err(e) = std::fs::metadata(p) {
        if e.raw_os_error() == Some(libc::ENOTCONN) && clear_dead {
            clear_dead_mount(p)?;
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
    Ok(canon)
}

/// Unmounts (lazily) the `fuse.mastofs` mount on `p` whose daemon is gone.
fn clear_dead_mount(p: &Path) -> Result<(), String> {
    let abs = std::path::absolute(p).map_err(|e| format!("mountpoint {}: {e}", p.display()))?;
    let fstype = mounts().into_iter().rev().find(|m| m.0 == abs).map(|m| m.1);
    if fstype.as_deref() != Some("fuse.mastofs") {
        return Err(format!(
            "mountpoint {}: Transport endpoint is not connected: a dead {} mount that mastofs \
             did not make; unmount it (umount -l) first",
            p.display(),
            fstype.unwrap_or_else(|| "FUSE".into())
        ));
    }
    let detached = if nix::unistd::geteuid().is_root() {
        nix::mount::umount2(&abs, nix::mount::MntFlags::MNT_DETACH).map_err(|e| e.to_string())
    } else {
        std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&abs)
            .status()
            .map_err(|e| e.to_string())
            .and_then(|s| s.success().then_some(()).ok_or(format!("fusermount3: {s}")))
    };
    detached.map_err(|e| {
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

/// Whether something is mounted exactly on `p` (per /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    mounts().iter().any(|m| m.0 == p)
}

/// The device (`major:minor`) mounted on `p`, if any.
pub fn device_of(p: &Path) -> Option<String> {
    mounts().into_iter().rev().find(|m| m.0 == p).map(|m| m.2)
}

/// (mountpoint, filesystem type, device) of every mount, in mount order.
fn mounts() -> Vec<(PathBuf, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let device = f.nth(2)?;
            let point = f.nth(1)?;
            let fstype = l.split_once(" - ")?.1.split(' ').next()?;
            Some((
                PathBuf::from(unescape(point)),
                fstype.to_string(),
                device.to_string(),
            ))
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
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
