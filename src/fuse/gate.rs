//! The gate a handover closes: no kernel request starts once it is closed, and the ones
//! being served can be waited for.
//!
//! Owns counting requests in service and parking the ones that arrive after closing: their
//! reply is dropped without being sent (never answered EIO), so the kernel keeps them as
//! read-but-unanswered and, on `FUSE_NOTIFY_RESEND`, queues them again for the daemon that
//! takes over. Requests still in service when the wait gives up are sealed: their replies
//! are withheld in the same way, so nothing reaches the kernel after the state is taken
//! (a node id the successor does not know, say), and the successor runs them again. It
//! must never answer a request itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Gate {
    closed: AtomicBool,
    busy: AtomicUsize,
    idle: Notify,
    /// Replies are withheld (held for writing while sealing, so no reply is half sent).
    sealed: RwLock<bool>,
}

/// A request in service; it leaves the count when dropped.
pub struct Pass(Arc<Gate>);

impl Pass {
    /// Sends the reply through `send`, unless the gate was sealed meanwhile: then `reply`
    /// is leaked unsent (the kernel resends the request to the successor).
    pub fn reply<T>(&self, reply: T, send: impl FnOnce(T)) {
        let sealed = self.0.sealed.read().map_or(true, |s| *s);
        if sealed {
            std::mem::forget(reply);
            return;
        }
        send(reply);
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Gate {
    /// Admits a request, or parks it (dropping `reply` unsent) when the gate is closed.
    pub fn enter<T>(self: &Arc<Self>, reply: T) -> Option<(Pass, T)> {
        // Counted before the check: a request admitted before `close` is always waited for.
        self.busy.fetch_add(1, Ordering::SeqCst);
        let pass = Pass(self.clone());
        if self.closed.load(Ordering::SeqCst) {
            drop(pass);
            // Leaked, not dropped: fuser answers EIO for a reply dropped unsent.
            std::mem::forget(reply);
            return None;
        }
        Some((pass, reply))
    }

    /// Admits requests again (a handover that did not happen).
    pub fn open(&self) {
        if let Ok(mut s) = self.sealed.write() {
            *s = false;
        }
        self.closed.store(false, Ordering::SeqCst);
    }

    /// Closes the gate and waits up to `limit` for the requests in service. Returns how
    /// many are still in service at the end: those are sealed (their replies withheld; the
    /// kernel resends them to the successor, which runs them again).
    pub async fn close(&self, limit: Duration) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            let busy = self.busy.load(Ordering::SeqCst);
            if busy == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                if let Ok(mut s) = self.sealed.write() {
                    *s = true;
                }
                return self.busy.load(Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_waits_for_admitted_requests_and_parks_new_ones() {
        let g = Arc::new(Gate::default());
        let (pass, _) = g.enter(()).unwrap();
        let g2 = g.clone();
        let closing = tokio::spawn(async move { g2.close(Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        assert!(!closing.is_finished());
        drop(pass);
        assert_eq!(closing.await.unwrap(), 0);
        assert!(g.enter(()).is_none());
        assert_eq!(g.close(Duration::from_millis(1)).await, 0);
    }

    #[tokio::test]
    async fn close_gives_up_after_its_limit_and_seals_what_is_left() {
        let g = Arc::new(Gate::default());
        let (held, _) = g.enter(()).unwrap();
        assert_eq!(g.close(Duration::from_millis(20)).await, 1);
        let mut sent = false;
        held.reply((), |()| sent = true);
        assert!(!sent, "a reply after the state was taken is withheld");
        g.open();
        held.reply((), |()| sent = true);
        assert!(sent);
    }
}
