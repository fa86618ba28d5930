//! The write-behind budget: bytes of writes acknowledged to applications and not yet
//! confirmed by the server, across all files of a mount.
//!
//! Owns how large that budget is now. `write_behind=` is its ceiling; within it, the
//! budget follows the link's bandwidth-delay product (its smallest round trip, which
//! queueing behind transfers does not inflate, × [`RATE`], at least
//! [`FLOOR`]), because every byte in it is held in memory until the server confirms it
//! (for replay after a reconnect): on a short link (loopback, a box in the same data
//! centre) 2 MiB keep the pipe full, and more would only be memory. It must never take back bytes a write holds (it shrinks by what
//! is free, the rest as writes finish), nor make a write wait for more than the budget can
//! ever hold.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The rate the budget is sized for: a write is confirmed a round trip plus its own
/// transfer after it is sent, so a budget of round trip × rate carries about half of it
/// (measured through a 13 ms link: 3.3 MiB wrote 123 MB/s, 8 MiB 195 MB/s). From 8 ms
/// up, the default ceiling.
pub const RATE: f64 = 1024.0 * 1024.0 * 1024.0;

/// The smallest budget (unless `write_behind=` is smaller): two of the kernel's largest
/// writes (1 MiB).
pub const FLOOR: usize = 2 << 20;

/// What a link with round trip `rtt` needs (None: not measured yet, the ceiling).
pub fn window(rtt: Option<Duration>, ceiling: usize) -> usize {
    match rtt {
        Some(r) => ((r.as_secs_f64() * RATE) as usize).clamp(FLOOR.min(ceiling), ceiling),
        None => ceiling,
    }
}

pub struct WriteBudget {
    sem: Arc<Semaphore>,
    ceiling: usize,
    /// Permits the semaphore stands for now (held and free).
    size: AtomicUsize,
    resize: Mutex<()>,
}

impl WriteBudget {
    pub fn new(ceiling: usize) -> Self {
        WriteBudget {
            sem: Arc::new(Semaphore::new(ceiling)),
            ceiling,
            size: AtomicUsize::new(ceiling),
            resize: Mutex::new(()),
        }
    }

    /// `write_behind=`: 0 means every write waits for the server.
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// Sizes the budget for a link with round trip `rtt`.
    pub fn fit(&self, rtt: Option<Duration>) {
        let want = window(rtt, self.ceiling);
        if want == self.size.load(Relaxed) {
            return;
        }
        let _g = self.resize.lock().unwrap_or_else(|p| p.into_inner());
        let size = self.size.load(Relaxed);
        if want > size {
            self.sem.add_permits(want - size);
            self.size.store(want, Relaxed);
        } else if want < size {
            let taken = self.sem.forget_permits(size - want);
            self.size.store(size - taken, Relaxed);
        }
    }

    /// Holds `len` bytes of the budget (at most what it always has: a larger write holds
    /// all of it) until the permit is dropped.
    pub async fn hold(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = len.min(FLOOR.min(self.ceiling)).max(1) as u32;
        self.sem.clone().acquire_many_owned(n).await.ok()
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.size
            .load(Relaxed)
            .saturating_sub(self.sem.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_the_round_trip_within_its_ceiling() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(window(None, 8 << 20), 8 << 20);
        assert_eq!(window(ms(0), 8 << 20), FLOOR);
        assert_eq!(window(ms(4), 8 << 20), (0.004 * RATE) as usize);
        assert_eq!(window(ms(13), 8 << 20), 8 << 20);
        assert_eq!(window(ms(0), 1 << 20), 1 << 20);
    }

    #[tokio::test]
    async fn shrinking_takes_only_what_is_free_and_writes_never_wait_forever() {
        let b = WriteBudget::new(8 << 20);
        let held = b.hold(1 << 20).await;
        assert_eq!(b.held(), 1 << 20);
        b.fit(Some(Duration::ZERO));
        assert_eq!(b.held(), 1 << 20);
        // A write as large as the kernel sends still gets through beside the held one.
        let second = b.hold(1 << 20).await;
        assert_eq!(b.held(), FLOOR);
        drop((held, second));
        assert_eq!(b.held(), 0);
        b.fit(None);
        assert_eq!(b.sem.available_permits(), 8 << 20);
    }
}
