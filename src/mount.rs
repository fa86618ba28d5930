//! Putting a mount together: session, filesystem, kernel mount, serving until unmounted.
//!
//! Owns the order of start-up (connect and check the remote path first unless
//! `delay_connect`; then take over a connection from a previous daemon, or mount; then
//! report readiness and listen for `mastofs upgrade`) and shutdown (signals unmount; the
//! kernel ending the session ends the daemon). It holds no filesystem or protocol logic.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};

use crate::daemon::{self, Ready};
use crate::fs::state::journal::{Journal, State};
use crate::fs::Fs;
use crate::fuse::gate::Gate;
use crate::fuse::FuseFs;
use crate::handover::{self, store, upgrade, Inherited, Start};
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

/// Where the FUSE connection comes from.
pub enum Source {
    /// A new mount (`Start::Fresh`, or `Start::AfterDeadMount` when a dead one was cleared).
    New(Start),
    /// Taken from the service manager's store.
    Stored(Inherited),
    /// Asked of the running daemon (`mastofs upgrade`); taken once this one is ready.
    Upgrade(upgrade::Incoming),
}

/// Mounts (or takes over a mount) and serves until unmounted. `args`: this daemon's command
/// line, handed to a successor. Errors are one line for the operator.
pub fn run(
    mut cfg: MountConfig,
    target: Target,
    source: Source,
    args: Vec<std::ffi::OsString>,
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
    // Names this mount leaves on the server carry its tag (see `ident`).
    let tag = crate::ident::mount_tag(&cfg.mountpoint);
    cfg.fs.tag = tag.clone();
    // The server's behaviour is probed in the mounted tree, unless the mount is read-only.
    let probe_site = (!cfg.read_only).then(|| crate::session::probe::Site {
        dir: cfg.remote_path.clone(),
        tag,
    });
    let session = Session::new(
        target,
        probe_site,
        cfg.timeout,
        cfg.write_behind,
        cfg.max_conns as usize,
        cfg.sftp_sessions,
    );
    let first = if cfg.delay_connect {
        None
    } else {
        match rt.block_on(session.connect_first()) {
            Ok(link) => Some(link),
            // A stored mount is ours to serve whether or not the server is reachable now:
            // requests wait for the reconnect as in any outage.
            Err(e) if matches!(source, Source::Stored(_)) => {
                tracing::warn!(error = %e, "server not reachable; taking over the mount anyway");
                None
            }
            Err(e) if cfg.unreachable_ok && e.is_unreachable() => {
                tracing::warn!(
                    error = %e,
                    "server not reachable: mounted anyway, connecting in the background \
                     (requests wait up to timeout=). This fstab line lacks _netdev, so \
                     systemd mounts it before the network is up: add _netdev"
                );
                None
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    // Only now, with the server reached, does a running daemon stop for us.
    let (inherited, start) = match source {
        Source::New(start) => (None, start),
        Source::Stored(i) => {
            let how = i.how;
            (Some(i), how)
        }
        Source::Upgrade(incoming) => {
            let i = incoming.take()?;
            let how = i.how;
            (Some(i), how)
        }
    };
    let journal = inherited.as_ref().map_or_else(
        || Arc::new(Journal::new(Default::default())),
        |i| i.journal.clone(),
    );
    let fs = Arc::new(Fs::with_journal(session.clone(), cfg.fs.clone(), journal));
    {
        let _guard = rt.enter();
        session.start(first.clone());
    }
    if first.is_none() {
        let fs = fs.clone();
        rt.spawn(async move {
            // Learn the remote root's facts once the box is reachable.
            while let Err(e) = fs.prepare().await {
                tracing::warn!(error = %e, "remote root not ready");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    } else if let Err(e) = rt.block_on(fs.prepare()) {
        if inherited.is_none() {
            return Err(e.message);
        }
        // The kernel's mount is ours now: serve it, and report the root's error there.
        tracing::warn!(error = %e.message, "remote root not ready");
    }
    if let Some(i) = &inherited {
        let lost = rt.block_on(fs.restore(&i.state)).map_err(|e| e.message)?;
        tracing::info!(
            how = start.as_str(),
            nodes = i.state.nodes.len(),
            open_files = i.state.files.len(),
            open_dirs = i.state.dirs.len(),
            files_that_may_have_lost_writes = lost,
            "took over the mount"
        );
    }

    let monitor = Monitor::new(
        session.clone(),
        fs.clone(),
        (target_host, target_port),
        &cfg,
        start.as_str(),
    );
    let socket = cfg
        .status_socket
        .clone()
        .unwrap_or_else(|| status::default_socket(&cfg.mountpoint));
    {
        let _guard = rt.enter();
        // A taken-over mount dies with this daemon if it gives up now: serve it without
        // a status socket rather than not at all.
        match status::bind(&socket, cfg.status_group) {
            Ok(listener) => {
                let source: Arc<dyn status::Source> = monitor.clone();
                rt.spawn(status::serve_unix(listener, source));
            }
            Err(e) if inherited.is_some() => tracing::warn!(error = %e, "no status socket"),
            Err(e) => return Err(e),
        }
        if let Some(addr) = cfg.metrics_listen {
            match rt.block_on(tokio::net::TcpListener::bind(addr)) {
                Ok(tcp) => {
                    let source: Arc<dyn status::Source> = monitor.clone();
                    rt.spawn(status::serve_tcp(tcp, source));
                }
                Err(e) if inherited.is_some() => {
                    tracing::warn!(error = %e, "metrics_listen={addr}: not served")
                }
                Err(e) => return Err(format!("metrics_listen={addr}: {e}")),
            }
        }
        rt.spawn(monitor.clone().refresh_disk());
        rt.spawn(monitor.clone().notify_systemd());
    }

    let gate = Arc::new(Gate::default());
    let adapter = FuseFs::new(fs.clone(), rt.handle().clone(), gate.clone());
    let options = mount_options(&cfg);
    let (fuse, fd) = match inherited {
        Some(i) => {
            let fd = Arc::new(i.fuse);
            let copy = fd.try_clone().map_err(|e| format!("/dev/fuse: {e}"))?;
            let session = fuser::Session::from_initialized_fd(adapter, copy, options.acl, options);
            (session, fd)
        }
        None => {
            // Mounted here rather than by fuser, so that the kernel records the type as
            // fuse.mastofs (fuser's own mount(2) says plain "fuse").
            let fd = mountpoint::mount(&cfg).map_err(|e| {
                let _ = std::fs::remove_file(&socket);
                format!("cannot mount on {}: {e}", cfg.mountpoint.display())
            })?;
            let fd = Arc::new(fd);
            let copy = fd.try_clone().map_err(|e| format!("/dev/fuse: {e}"))?;
            let session =
                fuser::Session::from_fd(adapter, copy, options.acl, options).map_err(|e| {
                    let _ = std::fs::remove_file(&socket);
                    format!("cannot mount on {}: {e}", cfg.mountpoint.display())
                })?;
            if let Some(device) = mountpoint::device_of(&cfg.mountpoint) {
                fs.journal().mount(device);
            }
            store::keep(fd.as_fd(), fs.journal());
            tracing::info!(mountpoint = %cfg.mountpoint.display(), source = %cfg.source(), "mounted");
            mountpoint::raise_readahead(&cfg.mountpoint);
            (session, fd)
        }
    };
    if matches!(start, Start::Upgrade | Start::CrashRecovery) {
        // Taken over: whatever the previous daemon read and left unanswered comes again.
        if !handover::resend(fd.as_fd()) {
            tracing::warn!(
                "this kernel cannot resend requests (Linux 6.9+ can): requests the previous \
                 daemon read but did not answer stay unanswered; their callers wait until \
                 killed"
            );
        }
    }
    serve_upgrades(&cfg, args, fd.clone(), &fs, &gate, &rt);
    ready.ok();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let shutdown = Arc::new(Shutdown {
        session: session.clone(),
        monitor: monitor.clone(),
        status_socket: socket,
        handover_socket: upgrade::socket_path(&cfg.mountpoint),
        timeout: cfg.timeout,
        done: std::sync::atomic::AtomicBool::new(false),
    });
    let mountpoint = cfg.mountpoint.clone();
    let on_signal = shutdown.clone();
    rt.spawn(async move {
        daemon::termination().await;
        tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
        if let Err(e) = mountpoint::unmount(&mountpoint) {
            tracing::warn!(error = %e, "unmount failed");
        }
        // The kernel ends the session once no mount of the filesystem is left. A bind
        // mount elsewhere (a container's) keeps it: the daemon is being stopped, so it
        // ends the filesystem for them too rather than wait for its unit's stop timeout.
        tokio::time::sleep(STOP_GRACE).await;
        if on_signal.done.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            "still mounted elsewhere (bind mounts, containers) after the unmount: ending the \
             filesystem there too (they see 'Transport endpoint is not connected')"
        );
        // Exiting closes /dev/fuse, which ends the filesystem everywhere.
        if on_signal.finish().await {
            std::process::exit(0);
        }
    });
    let served = fuse.run();
    rt.block_on(shutdown.finish());
    rt.shutdown_timeout(Duration::from_secs(2));
    served.map_err(|e| format!("fuse session ended with an error: {e}"))
}

/// How long a stopped daemon waits for the kernel to end its session after unmounting.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The end of a mount, once: pending writes out, the store emptied, sockets removed.
struct Shutdown {
    session: Arc<Session>,
    monitor: Arc<Monitor>,
    status_socket: std::path::PathBuf,
    handover_socket: std::path::PathBuf,
    timeout: Duration,
    done: std::sync::atomic::AtomicBool,
}

impl Shutdown {
    /// Runs the end (false: it already ran, or is running, elsewhere).
    async fn finish(&self) -> bool {
        if self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        // Writes acknowledged after the last flush (mmap write-back) still go out.
        if self.session.unconfirmed_bytes() > 0 {
            tracing::info!(
                bytes = self.session.unconfirmed_bytes(),
                "waiting for pending writes"
            );
            let _ = tokio::time::timeout(self.timeout, self.session.drain_all()).await;
        }
        store::release();
        let _ = std::fs::remove_file(&self.handover_socket);
        self.monitor
            .fuse_alive
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = std::fs::remove_file(&self.status_socket);
        tracing::info!("unmounted");
        true
    }
}

/// The running daemon's side of a handover: stop serving, confirm writes, give the state.
struct Handing {
    fs: Arc<Fs<Session>>,
    gate: Arc<Gate>,
    fuse: Arc<OwnedFd>,
    rt: tokio::runtime::Handle,
    timeout: Duration,
}

impl upgrade::Handing for Handing {
    fn drain(&self) -> State {
        self.rt.block_on(async {
            let busy = self.gate.close(self.timeout).await;
            if busy > 0 {
                tracing::warn!(
                    busy,
                    "handing over with requests still in service: the successor runs them again"
                );
            }
            let failed = self.fs.confirm_writes().await;
            if failed == 0 {
                self.fs.journal().handed_over();
            }
        });
        self.fs.journal().state()
    }

    fn resume(&self) {
        self.gate.open();
        handover::resend(self.fuse.as_fd());
    }
}

/// Listens for `mastofs upgrade` on a thread of its own.
fn serve_upgrades(
    cfg: &MountConfig,
    args: Vec<std::ffi::OsString>,
    fuse: Arc<OwnedFd>,
    fs: &Arc<Fs<Session>>,
    gate: &Arc<Gate>,
    rt: &tokio::runtime::Runtime,
) {
    let listener = match upgrade::listen(&cfg.mountpoint) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "no handover socket: mastofs upgrade will not work");
            return;
        }
    };
    let handing = Arc::new(Handing {
        fs: fs.clone(),
        gate: gate.clone(),
        fuse: fuse.clone(),
        rt: rt.handle().clone(),
        timeout: cfg.timeout,
    });
    let out = upgrade::Outgoing {
        args,
        mountpoint: cfg.mountpoint.clone(),
        fuse,
        service: store::holds(),
        drain: cfg.timeout,
    };
    let spawned = std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || upgrade::serve(listener, out, handing));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no handover thread: mastofs upgrade will not work");
    }
}
