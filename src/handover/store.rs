//! The service manager's file descriptor store: systemd's (`FDSTORE=1` over
//! `$NOTIFY_SOCKET`, handed back as `$LISTEN_FDS` when the service restarts), or a stand-in
//! speaking the same protocol (the tests').
//!
//! Owns what is stored (the `/dev/fuse` connection as `fuse`, the two journal files as
//! `state-a` and `state-b`), taking it back at start, and refusing a stored connection that
//! is not the mount on this mountpoint any more (unmounted or remounted meanwhile). While
//! the store holds the connection, a daemon that dies leaves the mount alive: requests
//! wait in the kernel until the successor takes over. It must never take over a connection
//! whose state journal cannot be read (node ids would point to the wrong files).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sd_notify::NotifyState;

use super::{Inherited, Start};
use crate::fs::state::journal::Journal;
use crate::mountpoint;

const FUSE: &str = "fuse";
const STATE: [&str; 2] = ["state-a", "state-b"];

/// The store holds this mount's connection (stored by this daemon, or taken from it).
static HOLDS: AtomicBool = AtomicBool::new(false);

/// Whether a service manager keeps descriptors for this daemon. systemd drops `FDSTORE=1`
/// without a word when the unit's `FileDescriptorStoreMax=` is 0 (its default) or the
/// sender is not the main process, so `$NOTIFY_SOCKET` alone proves nothing: the store's
/// size must be known, from `$FDSTORE` (systemd 254+) or `$MASTOFS_FDSTORE` (set by the
/// shipped unit to its `FileDescriptorStoreMax=`), and this process must be the one
/// systemd started (`$SYSTEMD_EXEC_PID`, where set).
pub fn available() -> bool {
    let var = |k: &str| std::env::var(k).ok();
    let size = var("FDSTORE")
        .or_else(|| var("MASTOFS_FDSTORE"))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let main = var("SYSTEMD_EXEC_PID").is_none_or(|p| p.trim() == std::process::id().to_string());
    std::env::var_os("NOTIFY_SOCKET").is_some() && size >= 3 && main
}

/// Whether the store holds this mount's connection: only then may the daemon exit and
/// leave the mount to a successor the service manager starts.
pub fn holds() -> bool {
    HOLDS.load(Ordering::SeqCst)
}

/// Stores the connection and the journal's files with the service manager (once per
/// mount: a successor finds them there and must not store them again).
pub fn keep(fuse: BorrowedFd<'_>, journal: &Journal) {
    if !available() {
        return;
    }
    let mut ok = send(FUSE, fuse);
    journal.with_fds(|fds| match fds {
        Some([a, b]) => ok &= send(STATE[0], a) & send(STATE[1], b),
        None => ok = false,
    });
    HOLDS.store(ok, Ordering::SeqCst);
    if ok {
        tracing::info!("FUSE connection kept in the service manager's store");
    }
}

fn send(name: &str, fd: BorrowedFd<'_>) -> bool {
    let msg = [NotifyState::FdStore, NotifyState::FdName(name)];
    match sd_notify::notify_with_fds(&msg, &[fd]) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot store the FUSE connection: a crash will unmount");
            false
        }
    }
}

/// Empties the store (the mount is gone: nothing to take over).
pub fn release() {
    HOLDS.store(false, Ordering::SeqCst);
    for name in [FUSE, STATE[0], STATE[1]] {
        let _ = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]);
    }
}

/// The connection a previous daemon of this mount stored, with its state.
pub fn take(mountpoint: &Path) -> Option<Inherited> {
    let mut fds: HashMap<String, OwnedFd> = sd_notify::listen_fds_with_names()
        .ok()?
        // SAFETY: LISTEN_FDS descriptors are passed to this process to own.
        .map(|(fd, name)| (name, unsafe { OwnedFd::from_raw_fd(fd) }))
        .collect();
    let fuse = fds.remove(FUSE)?;
    let files = match (fds.remove(STATE[0]), fds.remove(STATE[1])) {
        (Some(a), Some(b)) => [File::from(a), File::from(b)],
        _ => return refuse("no state journal was stored with it"),
    };
    let Some((journal, state)) = Journal::resume(files) else {
        return refuse("its state journal is unreadable");
    };
    let device = mountpoint::mastofs_device(mountpoint);
    if state.device.is_none() || device != state.device {
        return refuse("it is not the mount on this mountpoint any more");
    }
    let how = if state.handed_over {
        Start::Upgrade
    } else {
        Start::CrashRecovery
    };
    // Still stored: the service manager keeps them across restarts.
    HOLDS.store(available(), Ordering::SeqCst);
    Some(Inherited {
        fuse,
        journal: Arc::new(journal),
        state,
        how,
    })
}

fn refuse(why: &str) -> Option<Inherited> {
    tracing::warn!("not taking over the stored FUSE connection: {why}; mounting anew");
    release();
    None
}
