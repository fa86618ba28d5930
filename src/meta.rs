//! Plain facts about remote files that every layer shares: attributes, kinds, open modes,
//! filesystem statistics, and what a server does where SFTP servers differ.
//!
//! Owns these data types only, so that the filesystem logic and the SFTP client can both
//! use them without importing each other. It must never know a wire format, an errno
//! mapping or an inode.

/// The kind of a remote file, from the type bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Attributes of a remote file. Every field is optional, as in SFTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Full mode including the type bits (S_IFMT).
    pub mode: Option<u32>,
    pub atime: Option<u32>,
    pub mtime: Option<u32>,
}

impl Attrs {
    pub fn kind(&self) -> Kind {
        match self.mode.unwrap_or(0) & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFREG => Kind::File,
            0 => Kind::File,
            _ => Kind::Other,
        }
    }

    /// Only the mode (permission bits, and type bits if given), for SETSTAT.
    pub fn with_perm(perm: u32) -> Self {
        Attrs {
            mode: Some(perm & (0o7777 | libc::S_IFMT)),
            ..Default::default()
        }
    }
}

/// How to open a remote file. APPEND is deliberately absent (ProFTPD refuses it; writes
/// carry explicit offsets instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
}

/// Remote filesystem statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatVfs {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namemax: u64,
}

/// The capability record of one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerTraits {
    /// The SFTP protocol version it answered with.
    pub sftp_version: u32,
    /// The extensions it advertised.
    pub extensions: Vec<String>,
    /// READ and WRITE payloads sent (its limits, or OpenSSH's where it names none).
    pub max_read: u32,
    pub max_write: u32,
    /// Handles one session may hold, where known.
    pub max_handles: Option<usize>,
    /// SSH_FXP_SYMLINK takes the link path first (the draft's order).
    pub symlink_link_first: bool,
    /// LSTAT answers a symlink with its target's attributes (ProFTPD).
    pub lstat_follows_links: bool,
    /// READLINK answers the resolved absolute path, not the link's text (ProFTPD).
    pub readlink_resolves: bool,
    /// RENAME of a link to an existing target moves the target (ProFTPD).
    pub rename_follows_links: bool,
    /// The login directory (REALPATH "."), against which such a server answers some
    /// paths; empty where unknown.
    #[serde(skip)]
    pub home: String,
    /// OPEN with APPEND is refused (ProFTPD without `AllowStoreRestart`).
    pub append_refused: bool,
    /// READ at or past the size the file had when the handle was opened answers EOF.
    pub read_stops_at_open_size: bool,
    /// Permission bits the server takes away from the mode asked in OPEN and MKDIR (shown
    /// as octal text).
    #[serde(serialize_with = "octal")]
    pub open_umask: u32,
    #[serde(serialize_with = "octal")]
    pub mkdir_umask: u32,
    /// How the behaviours were found: "probed", or why they are assumed.
    pub source: String,
}

impl ServerTraits {
    /// One line for logs and `mastofs status`.
    pub fn summary(&self) -> String {
        let yes = |b: bool, s: &'static str| if b { Some(s) } else { None };
        let odd: Vec<&str> = [
            yes(self.lstat_follows_links, "LSTAT follows links"),
            yes(self.readlink_resolves, "READLINK resolves"),
            yes(self.rename_follows_links, "RENAME follows links"),
            yes(self.append_refused, "no APPEND"),
            yes(self.read_stops_at_open_size, "READ stops at open-time size"),
            yes(self.symlink_link_first, "SYMLINK link first"),
        ]
        .into_iter()
        .flatten()
        .collect();
        format!(
            "SFTP v{}, {} extensions, read/write {}/{} bytes, umask OPEN {:03o} MKDIR {:03o}, {}; {}",
            self.sftp_version,
            self.extensions.len(),
            self.max_read,
            self.max_write,
            self.open_umask,
            self.mkdir_umask,
            if odd.is_empty() {
                "behaves as OpenSSH".to_string()
            } else {
                odd.join(", ")
            },
            self.source
        )
    }
}

fn octal<S: serde::Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:03o}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_from_mode() {
        let a = Attrs {
            mode: Some(libc::S_IFDIR | 0o755),
            ..Default::default()
        };
        assert_eq!(a.kind(), Kind::Dir);
        let l = Attrs {
            mode: Some(libc::S_IFLNK | 0o777),
            ..Default::default()
        };
        assert_eq!(l.kind(), Kind::Symlink);
    }
}
