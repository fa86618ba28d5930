//! SFTP errors and their mapping to errno.
//!
//! Owns the translation of SFTP status codes (and the message texts that servers such as
//! ProFTPD use to carry the real cause) into `libc` errno values. It must never guess from
//! context it does not have: refining a generic FAILURE with a `stat` is the filesystem
//! layer's job.

use russh_sftp::protocol::StatusCode;

/// An error from one SFTP request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SftpError {
    /// The server answered with a status other than OK.
    #[error("server said {code:?}: {message}")]
    Status { code: StatusCode, message: String },
    /// The transport failed (connection lost, request timed out, garbage from the server).
    /// The request may or may not have been executed by the server.
    #[error("connection lost: {0}")]
    Transport(String),
    /// The server does not offer what this request needs (an extension).
    #[error("server does not support {0}")]
    Unsupported(&'static str),
}

impl SftpError {
    /// True when the session that carried this request is no longer usable.
    pub fn is_transport(&self) -> bool {
        matches!(self, SftpError::Transport(_))
    }

    /// True for SSH_FX_NO_SUCH_FILE (and ProFTPD's message texts for it).
    pub fn is_not_found(&self) -> bool {
        self.errno() == libc::ENOENT
    }

    /// The errno this error means, as precisely as the status and its message allow.
    pub fn errno(&self) -> i32 {
        match self {
            SftpError::Status { code, message } => status_errno(*code, message),
            SftpError::Transport(_) => libc::EIO,
            SftpError::Unsupported(_) => libc::EOPNOTSUPP,
        }
    }
}

impl From<russh_sftp::client::error::Error> for SftpError {
    fn from(e: russh_sftp::client::error::Error) -> Self {
        use russh_sftp::client::error::Error as E;
        match e {
            E::Status(s) => SftpError::Status {
                code: s.status_code,
                message: s.error_message,
            },
            // A request larger than the server's advertised limits is a bug of ours, not a
            // dead link; report it as a protocol failure of this request only.
            E::Limited(m) => SftpError::Status {
                code: StatusCode::Failure,
                message: m,
            },
            other => SftpError::Transport(other.to_string()),
        }
    }
}

/// Maps a status code and its message to errno. Generic FAILUREs carry the real cause in
/// the message on some servers (ProFTPD mod_sftp: "File already exists", ...).
pub fn status_errno(code: StatusCode, message: &str) -> i32 {
    match code {
        StatusCode::Ok => 0,
        StatusCode::Eof => libc::ENODATA,
        StatusCode::NoSuchFile => libc::ENOENT,
        StatusCode::PermissionDenied => message_errno(message).unwrap_or(libc::EACCES),
        StatusCode::Failure => message_errno(message).unwrap_or(libc::EIO),
        StatusCode::BadMessage => libc::EINVAL,
        StatusCode::NoConnection | StatusCode::ConnectionLost => libc::EIO,
        StatusCode::OpUnsupported => libc::EOPNOTSUPP,
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
        assert_eq!(
            status_errno(StatusCode::NoSuchFile, "No such file"),
            libc::ENOENT
        );
        assert_eq!(
            status_errno(StatusCode::PermissionDenied, "Permission denied"),
            libc::EACCES
        );
        assert_eq!(status_errno(StatusCode::Failure, "Failure"), libc::EIO);
        assert_eq!(
            status_errno(StatusCode::BadMessage, "Bad message"),
            libc::EINVAL
        );
        assert_eq!(
            status_errno(StatusCode::OpUnsupported, "x"),
            libc::EOPNOTSUPP
        );
    }

    #[test]
    fn proftpd_messages() {
        assert_eq!(
            status_errno(StatusCode::Failure, "File already exists"),
            libc::EEXIST
        );
        assert_eq!(
            status_errno(StatusCode::Failure, "Not a directory"),
            libc::ENOTDIR
        );
        assert_eq!(
            status_errno(StatusCode::Failure, "Directory is not empty"),
            libc::ENOTEMPTY
        );
        assert_eq!(status_errno(StatusCode::Failure, "Link loop"), libc::ELOOP);
        assert_eq!(
            status_errno(StatusCode::Failure, "No space left on device"),
            libc::ENOSPC
        );
        assert_eq!(
            status_errno(StatusCode::PermissionDenied, "Is a directory"),
            libc::EISDIR
        );
        assert_eq!(
            status_errno(StatusCode::PermissionDenied, "File name too long"),
            libc::ENAMETOOLONG
        );
    }

    #[test]
    fn transport_is_eio_and_retryable() {
        let e = SftpError::Transport("gone".into());
        assert!(e.is_transport());
        assert_eq!(e.errno(), libc::EIO);
    }
}
