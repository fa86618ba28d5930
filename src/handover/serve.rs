//! The running daemon's side of `mastofs upgrade`: a thread that listens on the handover
//! socket and, when a successor asks, closes the gate, confirms every write and hands the
//! state over (or opens the gate again when the handover fails). It must never answer a
//! kernel request itself.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::{store, upgrade};
use crate::cache::MountRemote;
use crate::fs::state::journal::State;
use crate::fs::Fs;
use crate::fuse::gate::Gate;
use crate::options::MountConfig;

/// The running daemon's side of a handover: stop serving, confirm writes, give the state.
struct Handing {
    fs: Arc<Fs<MountRemote>>,
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
        super::resend(self.fuse.as_fd());
    }
}

/// Listens for `mastofs upgrade` on a thread of its own.
pub fn serve_upgrades(
    cfg: &MountConfig,
    args: Vec<std::ffi::OsString>,
    fuse: Arc<OwnedFd>,
    fs: &Arc<Fs<MountRemote>>,
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
