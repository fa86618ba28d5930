//! The filesystem layer's error: an errno for the kernel plus a message for the log.
//!
//! Owns the conversion from remote errors into what the kernel is told. It must never hide
//! a failure as success.

use crate::session::RemoteError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError {
            errno,
            message: message.into(),
        }
    }
}

impl From<RemoteError> for FsError {
    fn from(e: RemoteError) -> Self {
        FsError {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// `FsError` from a bare errno.
pub fn err<T>(errno: i32, message: &str) -> FsResult<T> {
    Err(FsError::new(errno, message))
}
