//! The SFTP v3 wire format: packet types, status codes, and bounded encoding/decoding.
//!
//! Owns the byte layout of requests and replies (draft-ietf-secsh-filexfer-02). Decoding
//! works on [`Bytes`] without copying payloads (a READ reply's data is a slice of the packet)
//! and fails with [`DecodeError`] on anything short, too long or malformed: no input can make
//! it panic or allocate more than the packet it was given. It must never do I/O or know
//! which request a reply belongs to.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::meta::Attrs;

/// The largest packet accepted from the server (and sent to it), as OpenSSH's own client:
/// 256 KiB. A READ or WRITE of [`super::client::DEFAULT_IO_SIZE`] bytes fits with its header.
pub const MAX_PACKET: usize = 256 * 1024;

/// The protocol allows handles up to 256 bytes.
pub const MAX_HANDLE: usize = 256;

pub mod kind {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

/// Status codes. v3 defines 0..=8; servers speaking v3 also send later ones (ProFTPD sends
/// 9 and 11), so codes are kept as numbers and every one decodes.
pub mod status {
    pub const OK: u32 = 0;
    pub const EOF: u32 = 1;
    pub const NO_SUCH_FILE: u32 = 2;
    pub const PERMISSION_DENIED: u32 = 3;
    pub const FAILURE: u32 = 4;
    pub const BAD_MESSAGE: u32 = 5;
    pub const NO_CONNECTION: u32 = 6;
    pub const CONNECTION_LOST: u32 = 7;
    pub const OP_UNSUPPORTED: u32 = 8;
    pub const INVALID_HANDLE: u32 = 9;
    pub const NO_SUCH_PATH: u32 = 10;
    pub const FILE_ALREADY_EXISTS: u32 = 11;
    pub const WRITE_PROTECT: u32 = 12;
    pub const NO_MEDIA: u32 = 13;
    pub const NO_SPACE_ON_FILESYSTEM: u32 = 14;
    pub const QUOTA_EXCEEDED: u32 = 15;
    pub const UNKNOWN_PRINCIPAL: u32 = 16;
    pub const LOCK_CONFLICT: u32 = 17;
    pub const DIR_NOT_EMPTY: u32 = 18;
    pub const NOT_A_DIRECTORY: u32 = 19;
    pub const INVALID_FILENAME: u32 = 20;
    pub const LINK_LOOP: u32 = 21;
    pub const CANNOT_DELETE: u32 = 22;
    pub const INVALID_PARAMETER: u32 = 23;
    pub const FILE_IS_A_DIRECTORY: u32 = 24;
    pub const BYTE_RANGE_LOCK_CONFLICT: u32 = 25;
    pub const BYTE_RANGE_LOCK_REFUSED: u32 = 26;
    pub const DELETE_PENDING: u32 = 27;
    pub const FILE_CORRUPT: u32 = 28;
    pub const OWNER_INVALID: u32 = 29;
    pub const GROUP_INVALID: u32 = 30;
    pub const NO_MATCHING_BYTE_RANGE_LOCK: u32 = 31;
}

/// Open flags (pflags).
pub mod pflags {
    pub const READ: u32 = 0x01;
    pub const WRITE: u32 = 0x02;
    pub const APPEND: u32 = 0x04;
    pub const CREAT: u32 = 0x08;
    pub const TRUNC: u32 = 0x10;
    pub const EXCL: u32 = 0x20;
}

/// Attribute flags.
pub mod attr {
    pub const SIZE: u32 = 0x01;
    pub const UIDGID: u32 = 0x02;
    pub const PERMISSIONS: u32 = 0x04;
    pub const ACMODTIME: u32 = 0x08;
    pub const EXTENDED: u32 = 0x8000_0000;
}

/// Why bytes from the server are not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet ends early ({0})")]
    Short(&'static str),
    #[error("{0}")]
    Invalid(String),
}

type D<T> = Result<T, DecodeError>;

/// Reads fields from one packet's body; every read is bounds-checked.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn u32(&mut self, what: &'static str) -> D<u32> {
        if self.buf.remaining() < 4 {
            return Err(DecodeError::Short(what));
        }
        Ok(self.buf.get_u32())
    }

    pub fn u64(&mut self, what: &'static str) -> D<u64> {
        if self.buf.remaining() < 8 {
            return Err(DecodeError::Short(what));
        }
        Ok(self.buf.get_u64())
    }

    /// A length-prefixed string as a slice of the packet (no copy). The length is checked
    /// against what is left, so a huge length cannot allocate.
    pub fn bytes(&mut self, what: &'static str) -> D<Bytes> {
        let len = self.u32(what)? as usize;
        if len > self.buf.len() {
            return Err(DecodeError::Short(what));
        }
        Ok(self.buf.split_to(len))
    }

    /// A length-prefixed string copied out of the packet, for what is kept after the reply
    /// is gone (names, handles). A slice would keep the whole read buffer it shares (64 KiB
    /// and more, several replies) alive: a 10,000-entry listing held ~8 MiB of buffers for
    /// ~1 MiB of names that way.
    pub fn owned(&mut self, what: &'static str) -> D<Bytes> {
        Ok(Bytes::copy_from_slice(&self.bytes(what)?))
    }

    /// A string that is text by the protocol (messages, extension names): lossy UTF-8.
    pub fn text(&mut self, what: &'static str) -> D<String> {
        Ok(String::from_utf8_lossy(&self.bytes(what)?).into_owned())
    }

    pub fn attrs(&mut self) -> D<Attrs> {
        let flags = self.u32("attribute flags")?;
        let mut a = Attrs::default();
        if flags & attr::SIZE != 0 {
            a.size = Some(self.u64("size")?);
        }
        if flags & attr::UIDGID != 0 {
            a.uid = Some(self.u32("uid")?);
            a.gid = Some(self.u32("gid")?);
        }
        if flags & attr::PERMISSIONS != 0 {
            a.mode = Some(self.u32("permissions")?);
        }
        if flags & attr::ACMODTIME != 0 {
            a.atime = Some(self.u32("atime")?);
            a.mtime = Some(self.u32("mtime")?);
        }
        if flags & attr::EXTENDED != 0 {
            // Skipped without keeping them; each pair is at least 8 bytes, so the count is
            // bounded by the packet.
            let n = self.u32("extended count")?;
            for _ in 0..n {
                self.bytes("extended type")?;
                self.bytes("extended data")?;
            }
        }
        Ok(a)
    }
}

/// Builds one packet: length, type, request id, then the fields. The length is filled in
/// by [`Packet::finish`].
pub struct Packet {
    buf: BytesMut,
}

impl Packet {
    pub fn new(kind: u8, id: u32, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(9 + capacity);
        buf.put_u32(0);
        buf.put_u8(kind);
        buf.put_u32(id);
        Packet { buf }
    }

    /// INIT carries a version where other packets carry an id.
    pub fn init(version: u32) -> Bytes {
        Packet::new(kind::INIT, version, 0).finish()
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.buf.put_u32(v);
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.buf.put_u64(v);
        self
    }

    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.buf.put_u32(v.len() as u32);
        self.buf.put_slice(v);
        self
    }

    pub fn attrs(mut self, a: &Attrs) -> Self {
        let mut flags = 0;
        if a.size.is_some() {
            flags |= attr::SIZE;
        }
        // SFTP v3 sets uid and gid together (sent only when both are given: guessing the
        // other would change it), and atime and mtime together (a lone one sets both).
        let ids = a.uid.zip(a.gid);
        let times = (a.atime.is_some() || a.mtime.is_some()).then_some((a.atime, a.mtime));
        if ids.is_some() {
            flags |= attr::UIDGID;
        }
        if a.mode.is_some() {
            flags |= attr::PERMISSIONS;
        }
        if times.is_some() {
            flags |= attr::ACMODTIME;
        }
        self.buf.put_u32(flags);
        if let Some(s) = a.size {
            self.buf.put_u64(s);
        }
        if let Some((u, g)) = ids {
            self.buf.put_u32(u);
            self.buf.put_u32(g);
        }
        if let Some(m) = a.mode {
            self.buf.put_u32(m);
        }
        if let Some((at, mt)) = times {
            self.buf.put_u32(at.or(mt).unwrap_or(0));
            self.buf.put_u32(mt.or(at).unwrap_or(0));
        }
        self
    }

    pub fn finish(self) -> Bytes {
        self.finish_tail(0)
    }

    /// Finishes a packet whose last `tail` bytes are sent separately right after it (a
    /// WRITE's data, so it is not copied into the packet).
    pub fn finish_tail(mut self, tail: usize) -> Bytes {
        let len = (self.buf.len() - 4 + tail) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf.freeze()
    }
}

/// A reply's type and request id, and the rest of its body.
pub fn split_reply(mut body: Bytes) -> D<(u8, u32, Bytes)> {
    if body.len() < 5 {
        return Err(DecodeError::Short("reply header"));
    }
    let kind = body.get_u8();
    let id = body.get_u32();
    Ok((kind, id, body))
}

/// The server's VERSION packet: its version and the extensions it names.
pub fn version(mut body: Bytes) -> D<(u32, Vec<(String, Bytes)>)> {
    if body.is_empty() {
        return Err(DecodeError::Short("version"));
    }
    let k = body.get_u8();
    if k != kind::VERSION {
        return Err(DecodeError::Invalid(format!(
            "expected VERSION, got packet type {k}"
        )));
    }
    let mut r = Reader::new(body);
    let v = r.u32("version")?;
    let mut ext = Vec::new();
    while r.remaining() > 0 {
        let name = r.text("extension name")?;
        let data = r.owned("extension data")?;
        ext.push((name, data));
    }
    Ok((v, ext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_kept_field_is_copied_out_of_the_packet_a_payload_is_not() {
        let packet = Bytes::from(b"\0\0\0\x04name\0\0\0\x04data".to_vec());
        let inside = |b: &Bytes| packet.as_ptr_range().contains(&b.as_ptr());
        let mut r = Reader::new(packet.clone());
        let name = r.owned("name").unwrap();
        let data = r.bytes("data").unwrap();
        assert_eq!((&name[..], &data[..]), (&b"name"[..], &b"data"[..]));
        assert!(!inside(&name), "a kept name must not pin the read buffer");
        assert!(inside(&data), "a payload stays a slice (no copy)");
    }

    #[test]
    fn packet_layout() {
        let p = Packet::new(kind::OPEN, 7, 0)
            .bytes(b"/a")
            .u32(pflags::READ)
            .attrs(&Attrs::default())
            .finish();
        assert_eq!(
            &p[..],
            &[0, 0, 0, 19, 3, 0, 0, 0, 7, 0, 0, 0, 2, b'/', b'a', 0, 0, 0, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn attrs_roundtrip() {
        let a = Attrs {
            size: Some(u64::MAX),
            uid: Some(1),
            gid: Some(2),
            mode: Some(0o104755),
            atime: Some(10),
            mtime: Some(20),
        };
        let p = Packet::new(kind::ATTRS, 1, 0).attrs(&a).finish();
        let (k, id, rest) = split_reply(p.slice(4..)).unwrap();
        assert_eq!((k, id), (kind::ATTRS, 1));
        assert_eq!(Reader::new(rest).attrs().unwrap(), a);
    }

    #[test]
    fn v3_sets_pairs_together() {
        let a = Attrs {
            mtime: Some(20),
            uid: Some(5),
            ..Default::default()
        };
        let p = Packet::new(kind::SETSTAT, 1, 0).attrs(&a).finish();
        let (_, _, rest) = split_reply(p.slice(4..)).unwrap();
        let back = Reader::new(rest).attrs().unwrap();
        assert_eq!(back.atime, Some(20));
        assert_eq!((back.uid, back.gid), (None, None), "a lone uid is not sent");
    }

    #[test]
    fn huge_lengths_fail_without_allocating() {
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1, 2]));
        assert_eq!(r.bytes("name"), Err(DecodeError::Short("name")));
        // An extended count of 2^32-1 with nothing behind it.
        let mut r = Reader::new(Bytes::from_static(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]));
        assert!(r.attrs().is_err());
    }

    /// Seeds kept as regressions: replies that once were (or could be) trouble. Each must
    /// decode to an error, without a panic or an allocation of what it claims.
    #[test]
    fn seed_corpus_decodes_to_errors() {
        let body = |b: &'static [u8]| split_reply(Bytes::from_static(b)).map(|(_, _, r)| r);
        assert!(split_reply(Bytes::new()).is_err());
        assert!(split_reply(Bytes::from_static(&[kind::NAME, 0, 0])).is_err());
        // ATTRS with every flag and nothing behind them.
        let r = body(&[kind::ATTRS, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert!(Reader::new(r).attrs().is_err());
        // A string length of 2^31 with three bytes behind it.
        let r = body(&[kind::DATA, 0, 0, 0, 1, 0x80, 0, 0, 0, 1, 2, 3]).unwrap();
        assert_eq!(
            Reader::new(r).bytes("data"),
            Err(DecodeError::Short("data"))
        );
        // NAME claiming 2^32-1 entries: the first entry is already missing.
        let r = body(&[kind::NAME, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).unwrap();
        let mut rd = Reader::new(r);
        assert_eq!(rd.u32("count"), Ok(u32::MAX));
        assert!(rd.bytes("filename").is_err());
        // VERSION with a truncated extension.
        assert!(version(Bytes::from_static(&[
            kind::VERSION,
            0,
            0,
            0,
            3,
            0,
            0,
            0,
            9,
            b'x'
        ]))
        .is_err());
        // Not VERSION at all.
        assert!(version(Bytes::from_static(&[kind::STATUS, 0, 0, 0, 3])).is_err());
    }

    proptest! {
        // Any bytes decode to a value or an error; never a panic.
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let b = Bytes::from(data);
            let _ = version(b.clone());
            if let Ok((_, _, rest)) = split_reply(b.clone()) {
                let mut r = Reader::new(rest.clone());
                let _ = r.attrs();
                let mut r = Reader::new(rest);
                while r.bytes("x").is_ok() {}
            }
            let mut r = Reader::new(b);
            let _ = r.attrs();
        }
    }
}
