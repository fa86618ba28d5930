//! File attributes as SFTP v3 carries them.
//!
//! Owns the conversion between the wire attributes and the plain [`Attrs`] the upper
//! layers use. It must never apply ownership mapping or masks: that is the filesystem's job.

use super::wire::WireAttrs;

pub use crate::meta::{Attrs, Kind};

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
