//! File names are bytes; the filesystem logic keeps them in `String`s. This is the lossless
//! mapping between the two.
//!
//! Owns the one representation used between the kernel side (`fuse.rs`) and the wire side
//! (the session's SFTP calls): valid UTF-8 stays as it is; every byte that is not part of
//! valid UTF-8 becomes the private-use character U+10FF00 + byte. The 4-byte UTF-8 forms of
//! U+10FF00..=U+10FFFF themselves are escaped byte by byte too, so every such character in
//! a decoded string is an escape and [`encode`] gives back exactly the original bytes. The
//! filesystem logic never needs to know: `/` and NUL are never escaped, so its checks hold.
//! It must never be applied twice (decode bytes once where they enter, encode once where
//! they leave).

use std::borrow::Cow;

const BASE: u32 = 0x10_FF00;

fn escape(b: u8) -> char {
    char::from_u32(BASE + b as u32).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Bytes (from the kernel or the server) as a string, losslessly.
pub fn decode(bytes: &[u8]) -> String {
    // Fast path: valid UTF-8 without a 0xF4 lead byte cannot hold an escape character.
    if !bytes.contains(&0xF4) {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return s.to_string();
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut rest = bytes;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => {
                let (ok, _) = rest.split_at(e.valid_up_to());
                // `ok` is valid by construction.
                let ok = std::str::from_utf8(ok).unwrap_or_default();
                (ok, e.error_len().unwrap_or(rest.len() - e.valid_up_to()))
            }
        };
        for c in valid.chars() {
            if (BASE..=BASE + 0xFF).contains(&(c as u32)) {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push(escape(b));
                }
            } else {
                out.push(c);
            }
        }
        let skip = valid.len();
        for &b in &rest[skip..skip + bad] {
            out.push(escape(b));
        }
        rest = &rest[skip + bad..];
    }
    out
}

/// A string made by [`decode`] back as the original bytes.
pub fn encode(s: &str) -> Cow<'_, [u8]> {
    if !s.as_bytes().contains(&0xF4) {
        return Cow::Borrowed(s.as_bytes());
    }
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        let u = c as u32;
        if (BASE..=BASE + 0xFF).contains(&u) {
            out.push((u - BASE) as u8);
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// The length in bytes of the name `s` stands for.
pub fn byte_len(s: &str) -> usize {
    encode(s).len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn utf8_is_unchanged_and_latin1_round_trips() {
        assert_eq!(decode("héllo/ü".as_bytes()), "héllo/ü");
        let latin1 = b"caf\xe9-\xff\x00end";
        let s = decode(latin1);
        assert!(s.starts_with("caf") && s.ends_with("\0end"));
        assert_eq!(&encode(&s)[..], latin1);
        assert_eq!(byte_len(&s), latin1.len());
    }

    #[test]
    fn the_escape_range_itself_round_trips() {
        let raw = "a\u{10FF41}b".as_bytes().to_vec();
        let s = decode(&raw);
        assert_ne!(s, "a\u{10FF41}b", "escaped, not taken as is");
        assert_eq!(&encode(&s)[..], &raw[..]);
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = decode(&b);
            prop_assert_eq!(&encode(&s)[..], &b[..]);
            // `/` and NUL stay themselves, so path checks above still see them.
            prop_assert_eq!(s.contains('/'), b.contains(&b'/'));
        }
    }
}
