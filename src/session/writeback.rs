//! Write-behind: writes acknowledged to the application before the server confirmed them.
//!
//! Owns, per open file, the byte ranges of writes still on their way and the first failure
//! among them, which every later write, flush, fsync and close of that open file reports
//! (sticky: a flush from a forked child's close must not swallow it). The data
//! of a pending write stays with its task until the server confirmed it, so a reconnect
//! replays it (the task retries through [`super::replay`]). A write overlapping one in
//! flight waits for it, so the server applies overlapping writes in the order they were
//! made. It must never drop a write nor call a refused one confirmed.

use std::sync::Mutex;

use tokio::sync::Notify;

use super::remote::{RemoteError, RemoteResult};

/// Bytes of one file that may be on their way at once.
pub const PER_FILE_BYTES: usize = 8 << 20;

#[derive(Default)]
struct State {
    /// Half-open byte ranges in flight.
    ranges: Vec<(u64, u64)>,
    bytes: usize,
    error: Option<RemoteError>,
}

/// The pending writes of one open file.
#[derive(Default)]
pub struct WriteBehind {
    state: Mutex<State>,
    changed: Notify,
}

impl WriteBehind {
    /// Waits until `cond` holds for the state, then runs `then` on it (under the lock).
    async fn wait_for<T>(
        &self,
        cond: impl Fn(&State) -> bool,
        then: impl Fn(&mut State) -> T,
    ) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(mut s) = self.state.lock() {
                if cond(&s) {
                    return then(&mut s);
                }
            } else {
                // A poisoned lock cannot hold pending writes worth waiting for.
                return then(&mut State::default());
            }
            notified.await;
        }
    }

    /// Registers a write of `len` bytes at `offset` once it overlaps no write in flight
    /// and the file's budget has room. Fails with an earlier write's error instead.
    pub async fn begin(&self, offset: u64, len: usize) -> RemoteResult<()> {
        let end = offset + len as u64;
        let free = |s: &State| {
            s.error.is_some()
                || ((s.bytes == 0 || s.bytes + len <= PER_FILE_BYTES)
                    && !s.ranges.iter().any(|&(a, b)| a < end && offset < b))
        };
        self.wait_for(free, |s| match &s.error {
            Some(e) => Err(e.clone()),
            None => {
                s.ranges.push((offset, end));
                s.bytes += len;
                Ok(())
            }
        })
        .await
    }

    /// Records the server's answer to a write registered by [`WriteBehind::begin`].
    pub fn end(&self, offset: u64, len: usize, result: RemoteResult<()>) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(i) = s
                .ranges
                .iter()
                .position(|&r| r == (offset, offset + len as u64))
            {
                s.ranges.swap_remove(i);
            }
            s.bytes = s.bytes.saturating_sub(len);
            if let Err(e) = result {
                s.error.get_or_insert(e);
            }
        }
        self.changed.notify_waiters();
    }

    /// Waits until every write of this file got its answer.
    pub async fn drain(&self) {
        self.wait_for(|s| s.ranges.is_empty(), |_| ()).await
    }

    /// Waits for every write, then reports the first that failed (if any ever did).
    pub async fn settle(&self) -> RemoteResult<()> {
        self.wait_for(
            |s| s.ranges.is_empty(),
            |s| s.error.clone().map_or(Ok(()), Err),
        )
        .await
    }

    /// Every write so far got the server's confirmation, and none failed.
    pub fn is_confirmed(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.ranges.is_empty() && s.error.is_none())
            .unwrap_or(false)
    }

    pub fn is_idle(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.ranges.is_empty())
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn overlapping_write_waits_for_the_earlier_one() {
        let wb = WriteBehind::default();
        wb.begin(0, 100).await.unwrap();
        wb.begin(100, 100).await.unwrap(); // adjacent: no overlap
        let mut later = Box::pin(wb.begin(50, 10));
        assert!(
            (&mut later).now_or_never().is_none(),
            "an overlapping write must wait"
        );
        wb.end(0, 100, Ok(()));
        later.await.unwrap();
        assert!(!wb.is_idle());
    }

    #[tokio::test]
    async fn a_failure_is_reported_by_every_later_call() {
        let wb = WriteBehind::default();
        wb.begin(0, 10).await.unwrap();
        let err = RemoteError::Broken("x".into());
        wb.end(0, 10, Err(err));
        assert!(wb.begin(10, 10).await.is_err());
        assert!(wb.settle().await.is_err());
        assert!(
            wb.settle().await.is_err(),
            "a second close must hear it too"
        );
    }

    /// A write whose server was found confused (its reply or another's broke the
    /// protocol): close and fsync report EIO, never success.
    #[tokio::test]
    async fn a_write_on_a_confused_server_is_eio_at_close() {
        let wb = WriteBehind::default();
        wb.begin(0, 4096).await.unwrap();
        let confused =
            crate::sftp::SftpError::Confused("'Invalid handle' for a held handle".into());
        wb.end(0, 4096, Err(RemoteError::from(confused)));
        let at_close = wb.settle().await.unwrap_err();
        assert_eq!(at_close.errno(), libc::EIO);
        assert!(
            at_close.to_string().contains("Invalid handle"),
            "{at_close}"
        );
        assert_eq!(wb.begin(4096, 1).await.unwrap_err().errno(), libc::EIO);
    }

    #[tokio::test]
    async fn budget_bounds_bytes_in_flight() {
        let wb = WriteBehind::default();
        wb.begin(0, PER_FILE_BYTES).await.unwrap();
        let mut more = Box::pin(wb.begin(PER_FILE_BYTES as u64, 1));
        assert!((&mut more).now_or_never().is_none(), "the budget is full");
        let mut settle = Box::pin(wb.settle());
        assert!((&mut settle).now_or_never().is_none(), "a write is pending");
        wb.end(0, PER_FILE_BYTES, Ok(()));
        more.await.unwrap();
    }
}
