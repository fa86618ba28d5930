//! Putting a mount together: session, filesystem, kernel mount, serving until unmounted.
//!
//! Owns the order of start-up, as named phases: connect (and check the remote path first
//! unless `delay_connect`), build the filesystem (on a predecessor's state if taken over),
//! report (status socket), attach to the kernel (fresh, stored or handed over), serve
//! (readiness, `mastofs upgrade`, signals; [`shutdown`]). How lenient each phase is comes
//! from one [`Policy`], decided from how the daemon started. It holds no filesystem or
//! protocol logic.

mod shutdown;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};

use crate::cache::{self, Cached, MountRemote};
use crate::daemon::Ready;
use crate::fs::state::journal::Journal;
use crate::fs::Fs;
use crate::fuse::gate::Gate;
use crate::fuse::FuseFs;
pub use crate::handover::Source;
use crate::handover::{self, store, upgrade, Inherited};
use crate::monitor::Monitor;
use crate::mountpoint;
use crate::options::MountConfig;
use crate::session::supervisor::Link;
use crate::session::Session;
use crate::ssh::Target;
use crate::status;
use shutdown::Shutdown;

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

/// How lenient start-up is, decided once from how the daemon started.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// A kernel mount exists already (stored or handed over): serve it whatever fails
    /// around it (server, remote root, status socket), rather than leave it dead.
    takes_over: bool,
    /// The stored connection of a daemon that died: serve it even before the server can
    /// be reached (requests wait for the reconnect as in any outage).
    stored: bool,
    /// A mount(8) helper run for an fstab line without `_netdev`: mount even when the
    /// server cannot be reached yet.
    unreachable_ok: bool,
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
    let policy = Policy {
        takes_over: source.takes_over(),
        stored: matches!(source, Source::Stored(_)),
        unreachable_ok: cfg.unreachable_ok,
    };
    if cfg.allow_other && !cfg.default_permissions {
        tracing::warn!(
            "allow_other without default_permissions: every local user may act on this mount \
             with the SFTP login's full rights (add default_permissions to check the modes shown)"
        );
    }
    let rt = runtime()?;
    // Names this mount leaves on the server carry its tag (see `ident`).
    cfg.fs.tag = crate::ident::mount_tag(&cfg.mountpoint);
    // With a disk cache, what was seen before serves an outage (see `cache`).
    cfg.fs.offline_stale = cfg.cache.is_some();
    let server = (target.host.clone(), target.port);
    let (session, first) = connect(&cfg, target, policy, &rt)?;
    // Only now, with the server reached, does a running daemon stop for us.
    let (inherited, start) = source.take()?;
    let fs = build(&cfg, &session, first, inherited.as_ref(), policy, &rt)?;
    let monitor = Monitor::new(session.clone(), fs.clone(), server, &cfg, start.as_str());
    let socket = report(&cfg, &monitor, policy, &rt)?;
    let gate = Arc::new(Gate::default());
    let adapter = FuseFs::new(fs.clone(), rt.handle().clone(), gate.clone());
    let attached = attach(&cfg, adapter, inherited, &fs);
    let (fuse, fd) = attached.inspect_err(|_| {
        let _ = std::fs::remove_file(&socket);
    })?;
    handover::serve::serve_upgrades(&cfg, args, fd, &fs, &gate, &rt);
    ready.ok();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let shutdown = Arc::new(Shutdown {
        writeback: fs.remote().writeback().cloned(),
        session,
        monitor,
        status_socket: socket,
        handover_socket: upgrade::socket_path(&cfg.mountpoint),
        timeout: cfg.timeout,
        done: std::sync::atomic::AtomicBool::new(false),
    });
    rt.spawn(shutdown::on_signal(
        shutdown.clone(),
        cfg.mountpoint.clone(),
    ));
    let served = fuse.run();
    rt.block_on(shutdown.finish());
    rt.shutdown_timeout(Duration::from_secs(2));
    served.map_err(|e| format!("fuse session ended with an error: {e}"))
}

/// The runtime the daemon's tasks run on.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    crate::memory::limit_arenas();
    // Half the cores: the kernel's FUSE copies, the request loop thread and the machine's
    // own work need the rest (on 2 cores one worker created files ~10 % faster with ~15 %
    // less CPU than two, and read as fast).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cores / 2).max(1))
        .enable_all()
        .thread_name("mastofs")
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))
}

/// Phase 1: the session, and its first connection (None: not connected yet, because of
/// `delay_connect` or an unreachable server the policy allows).
fn connect(
    cfg: &MountConfig,
    target: Target,
    policy: Policy,
    rt: &tokio::runtime::Runtime,
) -> Result<(Arc<Session>, Option<Arc<Link>>), String> {
    // The server's behaviour is probed in the mounted tree, unless the mount is read-only.
    let probe_site = (!cfg.read_only).then(|| crate::session::probe::Site {
        dir: cfg.remote_path.clone(),
        tag: cfg.fs.tag.clone(),
    });
    let session = Session::new(
        target,
        probe_site,
        cfg.timeout,
        cfg.write_behind,
        cfg.max_conns as usize,
        cfg.sftp_sessions,
    );
    session.ahead.set_max(cfg.open_ahead);
    if cfg.delay_connect {
        return Ok((session, None));
    }
    let first = match rt.block_on(session.connect_first()) {
        Ok(link) => Some(link),
        Err(e) if policy.stored => {
            tracing::warn!(error = %e, "server not reachable; taking over the mount anyway");
            None
        }
        Err(e) if policy.unreachable_ok && e.is_unreachable() => {
            tracing::warn!(
                error = %e,
                "server not reachable: mounted anyway, connecting in the background \
                 (requests wait up to timeout=). This fstab line lacks _netdev, so \
                 systemd mounts it before the network is up: add _netdev"
            );
            None
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok((session, first))
}

/// Phase 2: the filesystem, on the inherited journal and state if any, with the remote
/// root checked (or checked in the background until the server is reached).
fn build(
    cfg: &MountConfig,
    session: &Arc<Session>,
    first: Option<Arc<Link>>,
    inherited: Option<&Inherited>,
    policy: Policy,
    rt: &tokio::runtime::Runtime,
) -> Result<Arc<Fs<MountRemote>>, String> {
    let journal = inherited.map_or_else(
        || Arc::new(Journal::new(Default::default())),
        |i| i.journal.clone(),
    );
    let store = match cfg.cache.as_ref().map(cache::Store::open).transpose() {
        Ok(store) => store,
        // The kernel's mount is ours now: serve it without the cache rather than not at all
        // (not with write-back: changes made without its log would overtake those in it).
        Err(e) if policy.takes_over && cfg.writeback.is_none() => {
            tracing::warn!(error = %e, "serving without the disk cache");
            None
        }
        Err(e) => return Err(e),
    };
    let wb = match (&store, cfg.writeback, &cfg.cache) {
        (Some(store), Some(wcfg), Some(c)) => Some(cache::Writeback::open(
            &c.dir.join("writeback"),
            store.clone(),
            wcfg,
        )?),
        _ => None,
    };
    let remote = Arc::new(Cached::new(session.clone(), store, wb, cfg.timeout));
    let fs = Arc::new(Fs::with_journal(remote.clone(), cfg.fs.clone(), journal));
    let connected = first.is_some();
    {
        let _guard = rt.enter();
        session.start(first);
        remote.start_uploads();
    }
    if !connected {
        let fs = fs.clone();
        rt.spawn(async move {
            // Learn the remote root's facts once the box is reachable.
            while let Err(e) = fs.prepare().await {
                tracing::warn!(error = %e, "remote root not ready");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    } else if let Err(e) = rt.block_on(fs.prepare()) {
        if !policy.takes_over {
            return Err(e.message);
        }
        // The kernel's mount is ours now: serve it, and report the root's error there.
        tracing::warn!(error = %e.message, "remote root not ready");
    }
    if let Some(i) = inherited {
        let lost = rt.block_on(fs.restore(&i.state)).map_err(|e| e.message)?;
        tracing::info!(
            how = i.how.as_str(),
            nodes = i.state.nodes.len(),
            open_files = i.state.files.len(),
            open_dirs = i.state.dirs.len(),
            files_that_may_have_lost_writes = lost,
            "took over the mount"
        );
    }
    Ok(fs)
}

/// Phase 3: the status socket (and `metrics_listen`), systemd's status lines and the
/// disk-use refresh. Returns the socket's path.
fn report(
    cfg: &MountConfig,
    monitor: &Arc<Monitor>,
    policy: Policy,
    rt: &tokio::runtime::Runtime,
) -> Result<std::path::PathBuf, String> {
    let socket = cfg
        .status_socket
        .clone()
        .unwrap_or_else(|| status::default_socket(&cfg.mountpoint));
    let _guard = rt.enter();
    let source: Arc<dyn status::Source> = monitor.clone();
    // A taken-over mount dies with this daemon if it gives up now: serve it without a
    // status socket rather than not at all.
    match status::bind(&socket, cfg.status_group) {
        Ok(listener) => drop(rt.spawn(status::serve_unix(listener, source.clone()))),
        Err(e) if policy.takes_over => tracing::warn!(error = %e, "no status socket"),
        Err(e) => return Err(e),
    }
    if let Some(addr) = cfg.metrics_listen {
        match rt.block_on(tokio::net::TcpListener::bind(addr)) {
            Ok(tcp) => drop(rt.spawn(status::serve_tcp(tcp, source))),
            Err(e) if policy.takes_over => {
                tracing::warn!(error = %e, "metrics_listen={addr}: not served")
            }
            Err(e) => return Err(format!("metrics_listen={addr}: {e}")),
        }
    }
    rt.spawn(monitor.clone().refresh_disk());
    let m = monitor.clone();
    rt.spawn(crate::memory::trim_when_idle(move || m.activity()));
    rt.spawn(monitor.clone().notify_systemd());
    Ok(socket)
}

/// Phase 4: the kernel's side: the inherited connection, or a fresh mount (its device
/// and descriptor kept for a successor). A taken-over connection gets the requests the
/// previous daemon left unanswered again.
fn attach(
    cfg: &MountConfig,
    adapter: FuseFs<MountRemote>,
    inherited: Option<Inherited>,
    fs: &Arc<Fs<MountRemote>>,
) -> Result<(fuser::Session<FuseFs<MountRemote>>, Arc<OwnedFd>), String> {
    let options = mount_options(cfg);
    let failed =
        |e: &dyn std::fmt::Display| format!("cannot mount on {}: {e}", cfg.mountpoint.display());
    let taken = inherited.is_some();
    let fd = match inherited {
        Some(i) => Arc::new(i.fuse),
        // Mounted here rather than by fuser, so that the kernel records the type as
        // fuse.mastofs (fuser's own mount(2) says plain "fuse").
        None => Arc::new(mountpoint::mount(cfg).map_err(|e| failed(&e))?),
    };
    let copy = fd.try_clone().map_err(|e| format!("/dev/fuse: {e}"))?;
    let session = if taken {
        fuser::Session::from_initialized_fd(adapter, copy, options.acl, options)
    } else {
        let session = fuser::Session::from_fd(adapter, copy, options.acl, options);
        let session = session.map_err(|e| failed(&e))?;
        if let Some(device) = mountpoint::device_of(&cfg.mountpoint) {
            fs.journal().mount(device);
        }
        store::keep(fd.as_fd(), fs.journal());
        tracing::info!(mountpoint = %cfg.mountpoint.display(), source = %cfg.source(), "mounted");
        mountpoint::raise_readahead(&cfg.mountpoint);
        session
    };
    // Taken over: whatever the previous daemon read and left unanswered comes again.
    if taken && !handover::resend(fd.as_fd()) {
        tracing::warn!(
            "this kernel cannot resend requests (Linux 6.9+ can): requests the previous \
             daemon read but did not answer stay unanswered; their callers wait until killed"
        );
    }
    Ok((session, fd))
}
