//! Running a kernel request as a task and replying: the request passes the gate, its
//! outcome is counted, and an error becomes the errno the kernel gets. Also the small
//! translations between the kernel's types and the filesystem's (names as bytes, times).
//! It must never decide anything about the filesystem.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, ReplyEmpty, ReplyEntry, ReplyOpen, TimeOrNow,
};

use super::FuseFs;
use crate::fs::{Entry, Fs, FsError, FsResult};
use crate::name_bytes;
use crate::session::Remote;

impl<R: Remote> FuseFs<R> {
    pub(super) fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.rt.spawn(f);
    }

    /// Runs `op` as a task, counts its outcome, and hands the result (an errno on failure)
    /// to `reply`. Every request but lookup goes through here.
    pub(super) fn run<T, Fut>(
        &self,
        name: &'static str,
        op: impl FnOnce(Arc<Fs<R>>) -> Fut,
        reply: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) where
        T: Send + 'static,
        Fut: Future<Output = FsResult<T>> + Send + 'static,
    {
        let Some((pass, reply)) = self.gate.enter(reply) else {
            return;
        };
        let fs = self.fs.clone();
        let fut = op(fs.clone());
        self.spawn(async move {
            let start = std::time::Instant::now();
            let r = fs.stats.track(name, fut.await).map_err(|e| errno(name, e));
            tracing::trace!(
                op = name,
                us = start.elapsed().as_micros() as u64,
                "kernel request"
            );
            pass.reply(reply, |reply| reply(r))
        });
    }

    pub(super) fn reply_entry<Fut>(
        &self,
        name: &'static str,
        reply: ReplyEntry,
        op: impl FnOnce(Arc<Fs<R>>) -> Fut,
    ) where
        Fut: Future<Output = FsResult<Entry>> + Send + 'static,
    {
        self.run(name, op, move |r| match r {
            Ok(e) => reply.entry(&e.ttl, &e.attr, Generation(0)),
            Err(e) => reply.error(e),
        });
    }

    pub(super) fn reply_empty<Fut>(
        &self,
        name: &'static str,
        reply: ReplyEmpty,
        op: impl FnOnce(Arc<Fs<R>>) -> Fut,
    ) where
        Fut: Future<Output = FsResult<()>> + Send + 'static,
    {
        self.run(name, op, move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    /// Replies to open/opendir with the handle and whether the kernel may keep what it
    /// cached from earlier opens (the file or listing is unchanged since).
    pub(super) fn reply_open<Fut>(
        &self,
        name: &'static str,
        reply: ReplyOpen,
        flags: FopenFlags,
        op: impl FnOnce(Arc<Fs<R>>) -> Fut,
    ) where
        Fut: Future<Output = FsResult<(u64, bool)>> + Send + 'static,
    {
        self.run(name, op, move |r| match r {
            Ok((fh, keep)) => {
                let keep = if keep {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags | keep)
            }
            Err(e) => reply.error(e),
        });
    }
}

pub(super) fn errno(op: &str, e: FsError) -> Errno {
    match e.errno {
        libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ENODATA => {
            tracing::trace!(op, error = %e)
        }
        _ => tracing::debug!(op, error = %e),
    }
    Errno::from_i32(e.errno)
}

/// A name from the kernel (bytes) as the filesystem logic keeps it ([`name_bytes`]).
pub(super) fn text(name: &OsStr) -> String {
    name_bytes::decode(name.as_bytes())
}

/// A name of the filesystem logic as the kernel's bytes.
pub(super) fn kernel_name(name: &str) -> std::borrow::Cow<'_, OsStr> {
    match name_bytes::encode(name) {
        std::borrow::Cow::Borrowed(b) => std::borrow::Cow::Borrowed(OsStr::from_bytes(b)),
        std::borrow::Cow::Owned(v) => std::borrow::Cow::Owned(std::ffi::OsString::from_vec(v)),
    }
}

pub(super) fn time(t: Option<TimeOrNow>) -> Option<SystemTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}
