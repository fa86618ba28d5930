//! SFTP errors and their mapping to errno.
//!
//! Owns the translation of SFTP status codes (and the message texts that servers such as
//! ProFTPD use to carry the real cause) into `libc` errno values. It must never guess from
//! context it does not have: refining a generic FAILURE with a `stat` is the filesystem
//! layer's job.

use std::sync::atomic::{AtomicBool, Ordering};

use super::wire::status as st;

/// An error from one SFTP request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SftpError {
    /// The server answered with a status other than OK (`code` as sent, any number).
    #[error("server said {}: {message}", status_name(*code))]
    Status { code: u32, message: String },
    /// The transport failed (connection lost, request timed out). The request may or may
    /// not have been executed by the server.
    #[error("connection lost: {0}")]
    Transport(String),
    /// The server broke the protocol (a reply to a request not in flight, of the wrong
    /// type, too long, undecodable, `Invalid handle` for a handle held open): its state
    /// cannot be trusted, and what it did with requests in flight is unknown, possibly
    /// mangled. The session is dropped; writes in flight on it are reported as failed.
    #[error("server protocol error: {0}")]
    Confused(String),
    /// The server does not offer what this request needs (an extension).
    #[error("server does not support {0}")]
    Unsupported(&'static str),
}

impl SftpError {
    /// True when the session that carried this request is no longer usable.
    pub fn is_transport(&self) -> bool {
        matches!(self, SftpError::Transport(_) | SftpError::Confused(_))
    }

    /// True when the server's state was found confused (see [`SftpError::Confused`]).
    pub fn is_confused(&self) -> bool {
        matches!(self, SftpError::Confused(_))
    }

    /// True for SSH_FX_NO_SUCH_FILE (and ProFTPD's message texts for it).
    pub fn is_not_found(&self) -> bool {
        self.errno() == libc::ENOENT
    }

    /// The errno this error means, as precisely as the status and its message allow.
    pub fn errno(&self) -> i32 {
        match self {
            SftpError::Status { code, message } => status_errno(*code, message),
            SftpError::Transport(_) | SftpError::Confused(_) => libc::EIO,
            SftpError::Unsupported(_) => libc::EOPNOTSUPP,
        }
    }
}

/// The protocol's name of a status code (for messages).
pub fn status_name(code: u32) -> String {
    const NAMES: [&str; 32] = [
        "OK",
        "EOF",
        "NO_SUCH_FILE",
        "PERMISSION_DENIED",
        "FAILURE",
        "BAD_MESSAGE",
        "NO_CONNECTION",
        "CONNECTION_LOST",
        "OP_UNSUPPORTED",
        "INVALID_HANDLE",
        "NO_SUCH_PATH",
        "FILE_ALREADY_EXISTS",
        "WRITE_PROTECT",
        "NO_MEDIA",
        "NO_SPACE_ON_FILESYSTEM",
        "QUOTA_EXCEEDED",
        "UNKNOWN_PRINCIPAL",
        "LOCK_CONFLICT",
        "DIR_NOT_EMPTY",
        "NOT_A_DIRECTORY",
        "INVALID_FILENAME",
        "LINK_LOOP",
        "CANNOT_DELETE",
        "INVALID_PARAMETER",
        "FILE_IS_A_DIRECTORY",
        "BYTE_RANGE_LOCK_CONFLICT",
        "BYTE_RANGE_LOCK_REFUSED",
        "DELETE_PENDING",
        "FILE_CORRUPT",
        "OWNER_INVALID",
        "GROUP_INVALID",
        "NO_MATCHING_BYTE_RANGE_LOCK",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("status {code}"), |n| n.to_string())
}

/// Maps a status code and its message to errno. Generic FAILUREs carry the real cause in
/// the message on some servers (ProFTPD mod_sftp: "File already exists", ...). Codes past
/// 8 (SFTP v4..v6, which some servers send in v3 sessions) map to what a local
/// filesystem would give; an unknown code is EIO, logged once with its message.
pub fn status_errno(code: u32, message: &str) -> i32 {
    match code {
        st::OK => 0,
        st::EOF => libc::ENODATA,
        st::NO_SUCH_FILE | st::NO_SUCH_PATH => libc::ENOENT,
        st::PERMISSION_DENIED => message_errno(message).unwrap_or(libc::EACCES),
        st::FAILURE => message_errno(message).unwrap_or(libc::EIO),
        st::BAD_MESSAGE => libc::EINVAL,
        st::NO_CONNECTION | st::CONNECTION_LOST => libc::EIO,
        st::OP_UNSUPPORTED => libc::EOPNOTSUPP,
        st::INVALID_HANDLE => libc::EBADF,
        st::FILE_ALREADY_EXISTS => libc::EEXIST,
        st::WRITE_PROTECT => libc::EROFS,
        st::NO_MEDIA => libc::ENODEV,
        st::NO_SPACE_ON_FILESYSTEM => libc::ENOSPC,
        st::QUOTA_EXCEEDED => libc::EDQUOT,
        st::UNKNOWN_PRINCIPAL | st::OWNER_INVALID | st::GROUP_INVALID => libc::EINVAL,
        st::LOCK_CONFLICT | st::BYTE_RANGE_LOCK_CONFLICT => libc::EAGAIN,
        st::DIR_NOT_EMPTY => libc::ENOTEMPTY,
        st::NOT_A_DIRECTORY => libc::ENOTDIR,
        st::INVALID_FILENAME | st::INVALID_PARAMETER => libc::EINVAL,
        st::LINK_LOOP => libc::ELOOP,
        st::CANNOT_DELETE => libc::EPERM,
        st::FILE_IS_A_DIRECTORY => libc::EISDIR,
        st::BYTE_RANGE_LOCK_REFUSED | st::NO_MATCHING_BYTE_RANGE_LOCK => libc::ENOLCK,
        st::DELETE_PENDING => libc::EBUSY,
        st::FILE_CORRUPT => libc::EIO,
        _ => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    code,
                    message,
                    "server sent an unknown SFTP status code; reported as EIO"
                );
            }
            message_errno(message).unwrap_or(libc::EIO)
        }
    }
}

/// Recognises the strerror-like texts servers put into FAILURE messages.
fn message_errno(message: &str) -> Option<i32> {
    let m = message.to_ascii_lowercase();
    let table: &[(&str, i32)] = &[
        ("already exists", libc::EEXIST),
        ("file exists", libc::EEXIST),
        ("not a directory", libc::ENOTDIR),
        ("not empty", libc::ENOTEMPTY),
        ("is a directory", libc::EISDIR),
        ("link loop", libc::ELOOP),
        ("too many levels of symbolic links", libc::ELOOP),
        ("no space", libc::ENOSPC),
        ("quota", libc::EDQUOT),
        ("read-only file system", libc::EROFS),
        ("cross-device", libc::EXDEV),
        ("name too long", libc::ENAMETOOLONG),
        ("file too large", libc::EFBIG),
        ("operation not permitted", libc::EPERM),
        ("no such file", libc::ENOENT),
    ];
    table
        .iter()
        .find(|(needle, _)| m.contains(needle))
        .map(|(_, errno)| *errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_codes() {
        assert_eq!(status_errno(st::NO_SUCH_FILE, "No such file"), libc::ENOENT);
        assert_eq!(
            status_errno(st::PERMISSION_DENIED, "Permission denied"),
            libc::EACCES
        );
        assert_eq!(status_errno(st::FAILURE, "Failure"), libc::EIO);
        assert_eq!(status_errno(st::BAD_MESSAGE, "Bad message"), libc::EINVAL);
        assert_eq!(status_errno(st::OP_UNSUPPORTED, "x"), libc::EOPNOTSUPP);
    }

    #[test]
    fn proftpd_messages() {
        assert_eq!(
            status_errno(st::FAILURE, "File already exists"),
            libc::EEXIST
        );
        assert_eq!(status_errno(st::FAILURE, "Not a directory"), libc::ENOTDIR);
        assert_eq!(
            status_errno(st::FAILURE, "Directory is not empty"),
            libc::ENOTEMPTY
        );
        assert_eq!(status_errno(st::FAILURE, "Link loop"), libc::ELOOP);
        assert_eq!(
            status_errno(st::FAILURE, "No space left on device"),
            libc::ENOSPC
        );
        assert_eq!(
            status_errno(st::PERMISSION_DENIED, "Is a directory"),
            libc::EISDIR
        );
        assert_eq!(
            status_errno(st::PERMISSION_DENIED, "File name too long"),
            libc::ENAMETOOLONG
        );
    }

    #[test]
    fn later_codes_decode() {
        assert_eq!(status_errno(9, "Invalid handle"), libc::EBADF);
        assert_eq!(status_errno(11, "File exists"), libc::EEXIST);
        assert_eq!(status_errno(14, "x"), libc::ENOSPC);
        assert_eq!(status_errno(15, "x"), libc::EDQUOT);
        assert_eq!(status_errno(99, "whatever"), libc::EIO);
        assert_eq!(status_errno(99, "No space left on device"), libc::ENOSPC);
        assert_eq!(status_name(11), "FILE_ALREADY_EXISTS");
        assert_eq!(status_name(99), "status 99");
    }

    #[test]
    fn transport_is_eio_and_retryable() {
        let e = SftpError::Transport("gone".into());
        assert!(e.is_transport());
        assert_eq!(e.errno(), libc::EIO);
    }
}
