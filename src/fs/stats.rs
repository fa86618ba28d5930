//! Counters of filesystem operations, by type and result, and of bytes moved.
//!
//! Owns only counting; the status socket reads these. Counting must stay cheap: it runs on
//! every request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::FsResult;

#[derive(Default)]
pub struct FsStats {
    ops: Mutex<BTreeMap<(&'static str, i32), u64>>,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl FsStats {
    /// Counts one `op` with its result (errno 0 for success) and passes the result on.
    pub fn track<T>(&self, op: &'static str, r: FsResult<T>) -> FsResult<T> {
        let errno = r.as_ref().err().map(|e| e.errno).unwrap_or(0);
        if let Ok(mut m) = self.ops.lock() {
            *m.entry((op, errno)).or_insert(0) += 1;
        }
        r
    }

    pub fn add_read(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_written(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// (operation, errno, count) for every operation seen.
    pub fn ops(&self) -> Vec<(&'static str, i32, u64)> {
        self.ops
            .lock()
            .map(|m| m.iter().map(|((op, e), n)| (*op, *e, *n)).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::error::FsError;

    #[test]
    fn counts_by_op_and_errno() {
        let s = FsStats::default();
        let _ = s.track("lookup", Ok(()));
        let _ = s.track("lookup", Ok(()));
        let _ = s.track::<()>("lookup", Err(FsError::new(libc::ENOENT, "x")));
        assert_eq!(s.ops(), vec![("lookup", 0, 2), ("lookup", libc::ENOENT, 1)]);
    }
}
