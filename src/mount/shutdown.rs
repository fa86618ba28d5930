//! The end of a mount: on a signal, unmount and, when bind mounts keep the filesystem
//! alive, end it after a grace period; once the kernel ends the session, send pending
//! writes and write-back's backlog, empty the descriptor store and remove the sockets. It must never end a mount
//! that was handed over (a successor serves it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon;
use crate::handover::store;
use crate::monitor::Monitor;
use crate::mountpoint;
use crate::session::Session;

/// How long a stopped daemon waits for the kernel to end its session after unmounting.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The end of a mount, once: pending writes out, the store emptied, sockets removed.
pub(super) struct Shutdown {
    pub session: Arc<Session>,
    /// Write-back's backlog, drained (up to `timeout`) before the daemon ends.
    pub writeback: Option<Arc<crate::cache::Writeback>>,
    pub monitor: Arc<Monitor>,
    pub status_socket: std::path::PathBuf,
    pub handover_socket: std::path::PathBuf,
    pub timeout: Duration,
    pub done: AtomicBool,
}

impl Shutdown {
    /// Runs the end (false: it already ran, or is running, elsewhere).
    pub async fn finish(&self) -> bool {
        if self.done.swap(true, Ordering::SeqCst) {
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
        if let Some(wb) = &self.writeback {
            let ops = wb.backlog().ops;
            if ops > 0 {
                tracing::info!(
                    changes = ops,
                    "write-back: uploading pending changes before exit"
                );
                if wb.drain(self.timeout).await.is_err() {
                    tracing::warn!(
                        changes = wb.backlog().ops,
                        "write-back: changes still pending at exit stay in the log; they resume at the next start"
                    );
                }
            }
        }
        store::release();
        let _ = std::fs::remove_file(&self.handover_socket);
        self.monitor.fuse_alive.store(false, Ordering::Relaxed);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = std::fs::remove_file(&self.status_socket);
        tracing::info!("unmounted");
        true
    }
}

/// Unmounts on SIGTERM, SIGINT or SIGHUP; ends the filesystem for bind mounts that keep it
/// after [`STOP_GRACE`].
pub(super) async fn on_signal(shutdown: Arc<Shutdown>, mountpoint: std::path::PathBuf) {
    daemon::termination().await;
    tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
    if let Err(e) = mountpoint::unmount(&mountpoint) {
        tracing::warn!(error = %e, "unmount failed");
    }
    // The kernel ends the session once no mount of the filesystem is left. A bind mount
    // elsewhere (a container's) keeps it: the daemon is being stopped, so it ends the
    // filesystem for them too rather than wait for its unit's stop timeout.
    tokio::time::sleep(STOP_GRACE).await;
    if shutdown.done.load(Ordering::SeqCst) {
        return;
    }
    tracing::warn!(
        "still mounted elsewhere (bind mounts, containers) after the unmount: ending the \
         filesystem there too (they see 'Transport endpoint is not connected')"
    );
    // Exiting closes /dev/fuse, which ends the filesystem everywhere.
    if shutdown.finish().await {
        std::process::exit(0);
    }
}
