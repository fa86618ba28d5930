//! Names that tell this mount and this daemon apart from every other client of a shared
//! server: scratch and hidden names a daemon leaves on the server carry them, so a daemon
//! sweeps only what its own mount left, and never touches another's.
//!
//! Owns the mount's tag (stable across restarts: this machine and this mountpoint) and a
//! daemon's random token. It reads `/etc/machine-id` and the kernel's random source; it
//! never touches the network.

use std::path::Path;

/// The names of the probe's scratch directories: `<this><mount tag>-<token>`.
pub const SCRATCH_PREFIX: &str = ".mastofs-probe-";

/// The hidden names of files unlinked while open: `<this><mount tag>-<token>-...`.
pub const UNLINKED_PREFIX: &str = ".mastofs-unlinked-";

use sha1::{Digest, Sha1};

/// A tag for the mount on `mountpoint` on this machine: 12 hex digits, the same for every
/// daemon of this mount, different for another machine or mountpoint.
pub fn mount_tag(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let machine = std::fs::read("/etc/machine-id")
        .or_else(|_| std::fs::read("/proc/sys/kernel/random/boot_id"))
        .unwrap_or_default();
    let mut h = Sha1::new();
    h.update(&machine);
    h.update(b"\0");
    h.update(mountpoint.as_os_str().as_bytes());
    hex(&h.finalize()[..6])
}

/// 16 random hex digits (the kernel's random source; the time and pid if it fails).
pub fn random_token() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into the live buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    hex(&b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_per_mountpoint_and_tokens_differ() {
        let a = mount_tag(Path::new("/mnt/a"));
        assert_eq!(a, mount_tag(Path::new("/mnt/a")));
        assert_ne!(a, mount_tag(Path::new("/mnt/b")));
        assert_eq!(a.len(), 12);
        let (x, y) = (random_token(), random_token());
        assert_ne!(x, y);
        assert!(x.len() == 16 && x.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
