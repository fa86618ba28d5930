//! Plain facts about remote files that every layer shares: attributes, kinds, open modes,
//! filesystem statistics.
//!
//! Owns these data types only, so that the filesystem logic and the SFTP client can both
//! use them without importing each other. It must never know a wire format, an errno
//! mapping or an inode.

/// The kind of a remote file, from the type bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
