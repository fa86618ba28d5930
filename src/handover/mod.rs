//! Handing the live FUSE connection from one daemon to the next, so the mount and every
//! bind mount of it (containers') outlive an upgrade or a crash of the daemon.
//!
//! Owns what a successor inherits ([`Inherited`]: the `/dev/fuse` descriptor, the state
//! journal and the state in it), where it comes from ([`store`]: the service manager's
//! descriptor store, after a crash or a restart; [`upgrade`]: `mastofs upgrade`, over a
//! unix socket from the running daemon), and asking the kernel to queue again the requests
//! the previous daemon read but never answered ([`resend`]). It must never unmount, and
//! never let two daemons serve one connection at once.

pub mod serve;
pub mod store;
pub mod upgrade;

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::fs::state::journal::{Journal, State};

/// How this daemon started (shown by `mastofs status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Fresh,
    /// A dead mount a crashed daemon left was unmounted first (no stored connection).
    AfterDeadMount,
    /// Took over from a daemon that handed over cleanly.
    Upgrade,
    /// Took over the stored connection of a daemon that died.
    CrashRecovery,
}

impl Start {
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Fresh => "fresh",
            Start::AfterDeadMount => "crash recovery (remounted)",
            Start::Upgrade => "upgrade",
            Start::CrashRecovery => "crash recovery",
        }
    }
}

/// Where a daemon's FUSE connection comes from.
pub enum Source {
    /// A new mount (`Start::Fresh`, or `Start::AfterDeadMount` when a dead one was cleared).
    New(Start),
    /// Taken from the service manager's store.
    Stored(Inherited),
    /// Asked of the running daemon (`mastofs upgrade`); taken once this one is ready.
    Upgrade(upgrade::Incoming),
}

impl Source {
    /// Whether a kernel mount exists already (this daemon then serves it whatever fails
    /// around it: giving up would leave it dead).
    pub fn takes_over(&self) -> bool {
        !matches!(self, Source::New(_))
    }

    /// The connection and state, taken now (an upgrade stops the running daemon here).
    pub fn take(self) -> Result<(Option<Inherited>, Start), String> {
        Ok(match self {
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
        })
    }
}

/// A live FUSE connection taken over from a previous daemon.
pub struct Inherited {
    pub fuse: OwnedFd,
    pub journal: Arc<Journal>,
    pub state: State,
    pub how: Start,
}

/// FUSE_NOTIFY_RESEND (Linux 6.9+): the kernel puts every request that was read from the
/// connection but not answered back in its queue, marked as resent. Returns false on an
/// older kernel (which refuses the notification).
pub fn resend(fuse: BorrowedFd<'_>) -> bool {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    // struct fuse_out_header { u32 len; i32 error (the notification code); u64 unique (0) }
    let mut msg = [0u8; 16];
    msg[..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    // SAFETY: writes 16 bytes from a live buffer to a descriptor we hold.
    let n = unsafe { libc::write(fuse.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    n == 16
}
