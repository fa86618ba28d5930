//! Putting a mount together: session, filesystem, kernel mount, serving until unmounted.
//!
//! Owns the order of start-up (connect and check the remote path first unless
//! `delay_connect`, then mount, then report readiness) and shutdown (signals unmount; the
//! kernel ending the session ends the daemon). It holds no filesystem or protocol logic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};

use crate::daemon::{self, Ready};
use crate::fs::Fs;
use crate::fuse::FuseFs;
use crate::options::MountConfig;
use crate::session::Session;
use crate::ssh::Target;

/// The mountpoint must be an existing directory that nothing is mounted on yet.
pub fn check_mountpoint(p: &Path) -> Result<PathBuf, String> {
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

/// Whether something is mounted exactly on `p` (per /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(unescape_mountinfo)
            .is_some_and(|m| m == want)
    })
}

fn unescape_mountinfo(s: &str) -> String {
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

fn mount_options(cfg: &MountConfig) -> fuser::Config {
    let mut opts = vec![
        MountOption::FSName(cfg.source()),
        MountOption::Subtype("mastofs".into()),
    ];
    let flags = [
        (cfg.default_permissions, MountOption::DefaultPermissions),
        (cfg.read_only, MountOption::RO),
        (cfg.nosuid, MountOption::NoSuid),
        (cfg.nodev, MountOption::NoDev),
        (cfg.noexec, MountOption::NoExec),
        (cfg.noatime, MountOption::NoAtime),
    ];
    opts.extend(flags.into_iter().filter(|(on, _)| *on).map(|(_, o)| o));
    let mut c = fuser::Config::default();
    c.mount_options = opts;
    c.acl = if cfg.allow_other {
        SessionACL::All
    } else if cfg.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(2);
    c
}

/// Mounts and serves until unmounted. Errors are one line for the operator.
pub fn run(cfg: MountConfig, target: Target, ready: &mut Ready) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mastofs")
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    let session = Session::new(target, cfg.timeout);
    let fs = Arc::new(Fs::new(session.clone(), cfg.fs.clone()));

    if cfg.delay_connect {
        let _guard = rt.enter();
        session.start(None);
        let fs = fs.clone();
        rt.spawn(async move {
            // Learn the remote root's facts once the box is reachable.
            while let Err(e) = fs.prepare().await {
                tracing::warn!(error = %e, "remote root not ready");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    } else {
        let link = rt.block_on(session.connect_first()).map_err(|e| e.to_string())?;
        {
            let _guard = rt.enter();
            session.start(Some(link));
        }
        rt.block_on(fs.prepare()).map_err(|e| e.message)?;
    }

    let adapter = FuseFs::new(fs.clone(), rt.handle().clone());
    let mut fuse = fuser::Session::new(adapter, &cfg.mountpoint, &mount_options(&cfg))
        .map_err(|e| format!("cannot mount on {}: {e}", cfg.mountpoint.display()))?;
    tracing::info!(mountpoint = %cfg.mountpoint.display(), source = %cfg.source(), "mounted");
    ready.ok();

    let mut unmounter = fuse.unmount_callable();
    let mountpoint = cfg.mountpoint.clone();
    rt.spawn(async move {
        daemon::termination().await;
        tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, "unmount failed");
        }
    });
    let served = fuse.run();
    tracing::info!("unmounted");
    rt.shutdown_timeout(Duration::from_secs(2));
    served.map_err(|e| format!("fuse session ended with an error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn root_is_mounted_and_missing_mountpoint_is_an_error() {
        assert!(is_mounted(Path::new("/")));
        let e = check_mountpoint(Path::new("/nonexistent/mastofs-mp")).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }
}
