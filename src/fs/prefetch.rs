//! Background listings: directories listed before anyone asks for them, so the lookups and
//! directory reads of a walk, an `rm` or a scan that follow cost no round trip.
//!
//! Owns which listings are on their way (a bounded number queued, fewer running at once)
//! and lets a request wait for one already on its way instead of fetching it twice. What a
//! listing learns goes to the metadata cache; a failed one is simply forgotten. It must
//! never make a request wait for a listing nobody asked for.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};

/// Listings running at once.
const PARALLEL: usize = 16;
/// Listings queued at most (further ones are not started).
const QUEUE: usize = 256;

pub struct Prefetcher {
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
    slots: Arc<Semaphore>,
}

impl Default for Prefetcher {
    fn default() -> Self {
        Prefetcher {
            inflight: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(PARALLEL)),
        }
    }
}

impl Prefetcher {
    /// Runs `job` (the listing of `dir`) in the background unless one is on its way or
    /// the queue is full, or no runtime runs (unit tests without tokio).
    pub fn spawn(self: &Arc<Self>, dir: &str, job: impl Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (tx, rx) = watch::channel(());
        match self.inflight.lock() {
            Ok(mut m) if m.len() < QUEUE && !m.contains_key(dir) => {
                m.insert(dir.to_string(), rx);
            }
            _ => return,
        }
        let (me, dir) = (self.clone(), dir.to_string());
        tokio::spawn(async move {
            if let Ok(_slot) = me.slots.acquire().await {
                job.await;
            }
            if let Ok(mut m) = me.inflight.lock() {
                m.remove(&dir);
            }
            drop(tx);
        });
    }

    /// Waits for the listing of `dir` if one is on its way.
    pub async fn wait(&self, dir: &str) {
        let rx = self.inflight.lock().ok().and_then(|m| m.get(dir).cloned());
        if let Some(mut rx) = rx {
            // Resolves (with an error) when the job drops its sender.
            let _ = rx.changed().await;
        }
    }
}
