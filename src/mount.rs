//! Putting a mount together: session, filesystem, kernel mount, serving until unmounted.
//!
//! Owns the order of start-up (connect and check the remote path first unless
//! `delay_connect`, then mount, then report readiness) and shutdown (signals unmount; the
//! kernel ending the session ends the daemon). It holds no filesystem or protocol logic.

use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};

use crate::daemon::{self, Ready};
use crate::fs::Fs;
use crate::fuse::FuseFs;
use crate::monitor::Monitor;
use crate::mountpoint;
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

/// Mounts and serves until unmounted. Errors are one line for the operator.
/// `recovered`: a dead mount of a daemon that died was cleared from the mountpoint first.
pub fn run(
    cfg: MountConfig,
    target: Target,
    recovered: bool,
    ready: &mut Ready,
) -> Result<(), String> {
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
        (target_host, target_port),
        &cfg,
        if recovered { "crash recovery" } else { "fresh" },
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
    // Mounted here rather than by fuser, so that the kernel records the type as
    // fuse.mastofs (fuser's own mount(2) says plain "fuse").
    let fuse = mountpoint::mount(&cfg)
        .and_then(|fd| {
            fuser::Session::from_fd(adapter, fd, options.acl, options.clone())
                .map_err(|e| e.to_string())
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(&socket);
            format!("cannot mount on {}: {e}", cfg.mountpoint.display())
        })?;
    tracing::info!(mountpoint = %cfg.mountpoint.display(), source = %cfg.source(), "mounted");
    mountpoint::raise_readahead(&cfg.mountpoint);
    ready.ok();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mountpoint = cfg.mountpoint.clone();
    rt.spawn(async move {
        daemon::termination().await;
        tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
        if let Err(e) = mountpoint::unmount(&mountpoint) {
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
