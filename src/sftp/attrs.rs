//! File attributes as SFTP v3 carries them, independent of any SFTP library's types.
//!
//! Owns the conversion between the wire attributes and the plain struct the upper layers
//! use. It must never apply ownership mapping or masks: that is the filesystem's job.

use super::wire::WireAttrs;

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

impl From<WireAttrs> for Attrs {
    fn from(a: WireAttrs) -> Self {
        Attrs {
            size: a.size,
            uid: a.uid,
            gid: a.gid,
            mode: a.mode,
            atime: a.atime,
            mtime: a.mtime,
        }
    }
}

impl From<&Attrs> for WireAttrs {
    fn from(a: &Attrs) -> Self {
        WireAttrs {
            size: a.size,
            uid: a.uid,
            gid: a.gid,
            mode: a.mode,
            atime: a.atime,
            mtime: a.mtime,
        }
    }
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

    #[test]
    fn roundtrip_keeps_fields() {
        let a = Attrs {
            size: Some(5),
            uid: Some(1),
            gid: Some(2),
            mode: Some(0o100644),
            atime: Some(10),
            mtime: Some(20),
        };
        let f: WireAttrs = (&a).into();
        assert_eq!(Attrs::from(f), a);
    }
}
