//! Putting a mount together: session, filesystem, kernel mount, serving until unmounted.
//!
//! Owns the order of start-up (connect and check the remote path first unless
//! `delay_connect`, then mount, then report readiness) and shutdown (signals unmount; the
//! kernel ending the session ends the daemon). It holds no filesystem or protocol logic.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};

use crate::daemon::{self, Ready};
use crate::fs::Fs;
use crate::fuse::FuseFs;
use crate::monitor::Monitor;
use crate::options::MountConfig;
use crate::session::Session;
use crate::ssh::Target;
use crate::status;

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

/// Readahead of the mount's backing device, in KiB. The kernel offers FUSE only 128 KiB
/// at INIT, which at 13 ms round trip caps one sequential reader near 10-20 MB/s; a
/// deeper window keeps several 1 MiB reads in flight.
const READAHEAD_KB: u32 = 8192;

/// Raises the mount's readahead through sysfs (root only; best effort).
fn raise_readahead(mountpoint: &Path) {
    if let Some(dev) = crate::mountpoint::device_of(mountpoint) {
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

/// mount(2) of /dev/fuse on the mountpoint with type `fuse.mastofs` (root only).
fn kernel_mount(cfg: &MountConfig) -> Result<std::os::fd::OwnedFd, String> {
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

/// Mounts and serves until unmounted. Errors are one line for the operator.
pub fn run(cfg: MountConfig, target: Target, ready: &mut Ready) -> Result<(), String> {
    let (target_host, target_port) = (target.host.clone(), target.port);
    if cfg.allow_other && !cfg.default_permissions {
        tracing::warn!(
            "allow_other without default_permissions: every local user may act on this mount \
             with the SFTP login's full rights (add default_permissions to check the modes shown)"
        );
    }
    // Half the cores: the kernel's FUSE copies, the request loop thread and the machine's
    // own work need the rest (on 2 cores one worker created files ~10 % faster with ~15 %
    // less CPU than two, and read as fast).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cores / 2).max(1))
        .enable_all()
        .thread_name("mastofs")
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    // The server's behaviour is probed in the mounted tree, unless the mount is read-only.
    let probe_dir = (!cfg.read_only).then(|| cfg.remote_path.clone());
    let session = Session::new(
        target,
        probe_dir,
        cfg.timeout,
        cfg.write_behind,
        cfg.max_conns as usize,
        cfg.sftp_sessions,
    );
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
        let link = rt
            .block_on(session.connect_first())
            .map_err(|e| e.to_string())?;
        {
            let _guard = rt.enter();
            session.start(Some(link));
        }
        rt.block_on(fs.prepare()).map_err(|e| e.message)?;
    }

    let monitor = Monitor::new(
        session.clone(),
        fs.clone(),
        target_host,
        target_port,
        cfg.remote_path.clone(),
        cfg.mountpoint.clone(),
        cfg.timeout,
    );
    let socket = cfg
        .status_socket
        .clone()
        .unwrap_or_else(|| status::default_socket(&cfg.mountpoint));
    {
        let _guard = rt.enter();
        let listener = status::bind(&socket, cfg.status_group)?;
        let source: Arc<dyn status::Source> = monitor.clone();
        rt.spawn(status::serve_unix(listener, source.clone()));
        if let Some(addr) = cfg.metrics_listen {
            let tcp = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|e| format!("metrics_listen={addr}: {e}"))?;
            rt.spawn(status::serve_tcp(tcp, source));
        }
        rt.spawn(monitor.clone().refresh_disk());
        rt.spawn(monitor.clone().notify_systemd());
    }

    let adapter = FuseFs::new(fs.clone(), rt.handle().clone());
    let options = mount_options(&cfg);
    let fuse = if nix::unistd::geteuid().is_root() {
        // Mount ourselves so the kernel records the type as fuse.mastofs (fuser's own
        // mount(2) says plain "fuse"); fusermount3 below does that for other users.
        let fd = kernel_mount(&cfg)?;
        fuser::Session::from_fd(adapter, fd, options.acl, options.clone())
    } else {
        fuser::Session::new(adapter, &cfg.mountpoint, &options)
    }
    .map_err(|e| {
        let _ = std::fs::remove_file(&socket);
        format!("cannot mount on {}: {e}", cfg.mountpoint.display())
    })?;
    tracing::info!(mountpoint = %cfg.mountpoint.display(), source = %cfg.source(), "mounted");
    raise_readahead(&cfg.mountpoint);
    ready.ok();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mountpoint = cfg.mountpoint.clone();
    rt.spawn(async move {
        daemon::termination().await;
        tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
        if let Err(e) = unmount(&mountpoint) {
            tracing::warn!(error = %e, "unmount failed");
        }
    });
    let served = fuse.run();
    // Writes acknowledged after the last flush (mmap write-back) still go out.
    if session.unconfirmed_bytes() > 0 {
        tracing::info!(
            bytes = session.unconfirmed_bytes(),
            "waiting for pending writes"
        );
        let _ = rt.block_on(tokio::time::timeout(cfg.timeout, session.drain_all()));
    }
    monitor
        .fuse_alive
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket);
    tracing::info!("unmounted");
    rt.shutdown_timeout(Duration::from_secs(2));
    served.map_err(|e| format!("fuse session ended with an error: {e}"))
}
