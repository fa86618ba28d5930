//! A small SFTP v3 server over a local directory that misbehaves on purpose, one way at a
//! time (see [`Mode`]). Used in-process by the client's unit tests (through an in-memory
//! stream) and as an sshd `Subsystem` by the mounted tests (`examples/hostile_sftp.rs`).
//! It serves what a mount needs; what it does not know it answers OP_UNSUPPORTED. Requests
//! about a path whose last component starts with `trigger` get the misbehaviour.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A well-behaved server.
    Plain,
    /// Listings add names containing `/` or NUL, `.`/`..` again, an empty name, a
    /// 300-byte name, a non-UTF-8 name and a duplicate.
    BadNames,
    /// Listings add entries with size u64::MAX, setuid and device modes, no fields at all.
    BadAttrs,
    /// STAT/LSTAT of a trigger path answer this status code.
    Status(u32),
    /// LSTAT of a trigger path is answered with a reply to an id not in flight.
    UnknownId,
    /// LSTAT of a trigger path is answered with a HANDLE reply.
    WrongType,
    /// READ of a trigger file returns more bytes than asked.
    LongRead,
    /// READDIR of a trigger directory never says EOF.
    EndlessDir,
    /// limits@openssh.com says 1 byte for READ and WRITE.
    TinyLimits,
    /// LSTAT of a trigger path is answered with a packet length of 2^31.
    HugePacket,
    /// LSTAT of a trigger path is never answered.
    Silent,
    /// WRITE to a trigger file is answered `Invalid handle` (status 9).
    InvalidHandle,
    /// The first request of this packet type is carried out, then the connection drops
    /// before the reply (a reply lost with the link).
    LoseReply(u8),
    /// Well-behaved, but SSH_FXP_SYMLINK takes the link path first, as the draft (and
    /// gesftpserver) say, declared in VERSION as `symlink-order@rjk.greenend.org.uk`.
    DraftSymlink,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "plain" => Mode::Plain,
            "bad-names" => Mode::BadNames,
            "bad-attrs" => Mode::BadAttrs,
            "unknown-id" => Mode::UnknownId,
            "wrong-type" => Mode::WrongType,
            "long-read" => Mode::LongRead,
            "endless-dir" => Mode::EndlessDir,
            "tiny-limits" => Mode::TinyLimits,
            "huge-packet" => Mode::HugePacket,
            "silent" => Mode::Silent,
            "invalid-handle" => Mode::InvalidHandle,
            "draft-symlink" => Mode::DraftSymlink,
            s if s.starts_with("lose-reply-") => {
                Mode::LoseReply(s.strip_prefix("lose-reply-")?.parse().ok()?)
            }
            s => Mode::Status(s.strip_prefix("status-")?.parse().ok()?),
        })
    }
}

enum Handle {
    File(std::fs::File, PathBuf),
    Dir(Vec<(Vec<u8>, Vec<u8>)>, PathBuf),
}

struct Out(Vec<u8>);

impl Out {
    fn new(kind: u8, id: u32) -> Out {
        let mut v = vec![0, 0, 0, 0, kind];
        v.extend_from_slice(&id.to_be_bytes());
        Out(v)
    }
    fn u32(mut self, x: u32) -> Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    fn u64(mut self, x: u64) -> Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn done(mut self) -> Vec<u8> {
        let n = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&n.to_be_bytes());
        self.0
    }
}

fn attrs_of(m: &std::fs::Metadata) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0fu32.to_be_bytes());
    v.extend_from_slice(&m.len().to_be_bytes());
    v.extend_from_slice(&m.uid().to_be_bytes());
    v.extend_from_slice(&m.gid().to_be_bytes());
    v.extend_from_slice(&m.mode().to_be_bytes());
    v.extend_from_slice(&(m.atime() as u32).to_be_bytes());
    v.extend_from_slice(&(m.mtime() as u32).to_be_bytes());
    v
}

/// Raw attribute bytes: flags, then the fields they name.
fn raw_attrs(flags: u32, size: u64, mode: u32) -> Vec<u8> {
    let mut v = flags.to_be_bytes().to_vec();
    if flags & 1 != 0 {
        v.extend_from_slice(&size.to_be_bytes());
    }
    if flags & 2 != 0 {
        v.extend_from_slice(&[0; 8]);
    }
    if flags & 4 != 0 {
        v.extend_from_slice(&mode.to_be_bytes());
    }
    if flags & 8 != 0 {
        v.extend_from_slice(&[0; 8]);
    }
    v
}

/// The attributes the bad-attrs mode gives these names, in listings and on LSTAT/STAT.
fn bad_attrs(name: &[u8]) -> Option<Vec<u8>> {
    Some(match name {
        b"huge" => raw_attrs(5, u64::MAX, 0o100644),
        b"setuid" => raw_attrs(5, 1, 0o104777),
        b"device" => raw_attrs(5, 0, 0o060600),
        b"bare" => raw_attrs(0, 0, 0),
        _ => return None,
    })
}

struct Req {
    body: Vec<u8>,
    at: usize,
}

impl Req {
    fn u32(&mut self) -> u32 {
        let b = self.body.get(self.at..self.at + 4).unwrap_or(&[0; 4]);
        self.at += 4;
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    fn u64(&mut self) -> u64 {
        ((self.u32() as u64) << 32) | self.u32() as u64
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        let b = self.body.get(self.at..self.at + n).unwrap_or(&[]).to_vec();
        self.at += n;
        b
    }
    fn attrs(&mut self) -> (Option<u64>, Option<u32>, Option<(u32, u32)>) {
        let f = self.u32();
        let size = (f & 1 != 0).then(|| self.u64());
        if f & 2 != 0 {
            self.u64();
        }
        let mode = (f & 4 != 0).then(|| self.u32());
        let times = (f & 8 != 0).then(|| (self.u32(), self.u32()));
        (size, mode, times)
    }
}

fn status(id: u32, code: u32, msg: &str) -> Vec<u8> {
    Out::new(101, id)
        .u32(code)
        .bytes(msg.as_bytes())
        .bytes(b"")
        .done()
}

fn io_status(id: u32, e: std::io::Error) -> Vec<u8> {
    let code = match e.kind() {
        ErrorKind::NotFound => 2,
        ErrorKind::PermissionDenied => 3,
        _ => 4,
    };
    status(id, code, &e.to_string())
}

fn is_trigger(path: &[u8]) -> bool {
    path.rsplit(|b| *b == b'/')
        .next()
        .is_some_and(|n| n.starts_with(b"trigger"))
}

/// Serves one SFTP session on `io` until it closes.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, root: PathBuf, mode: Mode) {
    let mut handles: HashMap<u32, Handle> = HashMap::new();
    let mut next: u32 = 0;
    let mut endless = 0u64;
    loop {
        let mut len = [0u8; 4];
        if io.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        if io.read_exact(&mut body).await.is_err() {
            return;
        }
        let kind = body[0];
        let mut r = Req { body, at: 1 };
        let id = r.u32();
        let path_of = |p: &[u8]| -> PathBuf {
            let p = OsStr::from_bytes(p);
            if p == "." || p.is_empty() {
                root.clone()
            } else {
                PathBuf::from(p)
            }
        };
        let reply: Vec<u8> = match kind {
            1 => {
                let mut o = Out(vec![0, 0, 0, 0, 2]).u32(3);
                for e in [
                    "posix-rename@openssh.com",
                    "hardlink@openssh.com",
                    "fsync@openssh.com",
                ] {
                    o = o.bytes(e.as_bytes()).bytes(b"1");
                }
                if mode == Mode::TinyLimits {
                    o = o.bytes(b"limits@openssh.com").bytes(b"1");
                }
                if mode == Mode::DraftSymlink {
                    o = o
                        .bytes(b"symlink-order@rjk.greenend.org.uk")
                        .bytes(b"linkpath-targetpath");
                }
                o.done()
            }
            16 => {
                let p = r.bytes();
                match std::fs::canonicalize(path_of(&p)) {
                    Ok(c) => Out::new(104, id)
                        .u32(1)
                        .bytes(c.as_os_str().as_bytes())
                        .bytes(b"")
                        .raw(&raw_attrs(0, 0, 0))
                        .done(),
                    Err(e) => io_status(id, e),
                }
            }
            7 | 17 => {
                let p = r.bytes();
                let lstat_trigger = kind == 7 && is_trigger(&p);
                let normal = || {
                    let m = if kind == 7 {
                        std::fs::symlink_metadata(path_of(&p))
                    } else {
                        std::fs::metadata(path_of(&p))
                    };
                    match m {
                        Ok(m) => Out::new(105, id).raw(&attrs_of(&m)).done(),
                        Err(e) => io_status(id, e),
                    }
                };
                let name = p.rsplit(|b| *b == b'/').next().unwrap_or(&[]);
                match mode {
                    Mode::BadAttrs if bad_attrs(name).is_some() => Out::new(105, id)
                        .raw(&bad_attrs(name).unwrap_or_default())
                        .done(),
                    Mode::Status(code) if is_trigger(&p) => status(id, code, "hostile status"),
                    Mode::UnknownId if lstat_trigger => {
                        io.write_all(&status(id.wrapping_add(1000), 0, ""))
                            .await
                            .ok();
                        normal()
                    }
                    Mode::WrongType if lstat_trigger => Out::new(102, id).bytes(b"h").done(),
                    Mode::HugePacket if lstat_trigger => {
                        io.write_all(&[0x80, 0, 0, 0, 101]).await.ok();
                        io.flush().await.ok();
                        continue;
                    }
                    Mode::Silent if lstat_trigger => continue,
                    _ => normal(),
                }
            }
            3 => {
                let p = r.bytes();
                let pf = r.u32();
                let (_, perm, _) = r.attrs();
                let mut o = std::fs::OpenOptions::new();
                o.read(pf & 1 != 0)
                    .write(pf & 2 != 0)
                    .create(pf & 8 != 0)
                    .truncate(pf & 0x10 != 0);
                if pf & 0x20 != 0 {
                    o.create_new(true);
                }
                match o.open(path_of(&p)) {
                    Ok(f) => {
                        if let (Some(m), true) = (perm, pf & 8 != 0) {
                            f.set_permissions(std::fs::Permissions::from_mode(m & 0o7777))
                                .ok();
                        }
                        next += 1;
                        handles.insert(next, Handle::File(f, path_of(&p)));
                        // Binary handles: a 0xff byte that is not UTF-8.
                        let mut h = vec![0xff, 0x00];
                        h.extend_from_slice(&next.to_be_bytes());
                        Out::new(102, id).bytes(&h).done()
                    }
                    Err(e) => io_status(id, e),
                }
            }
            4 | 5 | 6 | 8 | 10 | 12 => {
                let h = r.bytes();
                let key = h
                    .get(2..6)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                let handle = handles
                    .get_mut(&key)
                    .filter(|_| h.len() == 6 && h[0] == 0xff);
                match (kind, handle) {
                    (_, None) => status(id, 4, "bad handle"),
                    (4, Some(_)) => {
                        handles.remove(&key);
                        status(id, 0, "")
                    }
                    (5, Some(Handle::File(f, p))) => {
                        let off = r.u64();
                        let n = r.u32() as usize;
                        let mut buf = vec![0; n];
                        match f.read_at(&mut buf, off) {
                            Ok(0) => status(id, 1, "EOF"),
                            Ok(got) => {
                                buf.truncate(got);
                                if mode == Mode::LongRead && is_trigger(p.as_os_str().as_bytes()) {
                                    buf.resize(n + 25, b'X');
                                }
                                Out::new(103, id).bytes(&buf).done()
                            }
                            Err(e) => io_status(id, e),
                        }
                    }
                    (6, Some(Handle::File(f, p))) => {
                        let off = r.u64();
                        let data = r.bytes();
                        if mode == Mode::InvalidHandle && is_trigger(p.as_os_str().as_bytes()) {
                            status(id, 9, "Invalid handle")
                        } else {
                            match f.write_all_at(&data, off) {
                                Ok(()) => status(id, 0, ""),
                                Err(e) => io_status(id, e),
                            }
                        }
                    }
                    (8, Some(Handle::File(f, _))) => match f.metadata() {
                        Ok(m) => Out::new(105, id).raw(&attrs_of(&m)).done(),
                        Err(e) => io_status(id, e),
                    },
                    (10, Some(Handle::File(f, _))) => {
                        let (size, perm, _) = r.attrs();
                        if let Some(s) = size {
                            f.set_len(s).ok();
                        }
                        if let Some(m) = perm {
                            f.set_permissions(std::fs::Permissions::from_mode(m & 0o7777))
                                .ok();
                        }
                        status(id, 0, "")
                    }
                    (12, Some(Handle::Dir(entries, p))) => {
                        if mode == Mode::EndlessDir && is_trigger(p.as_os_str().as_bytes()) {
                            let mut o = Out::new(104, id).u32(100);
                            for _ in 0..100 {
                                endless += 1;
                                let name = format!("endless-{endless:012}-{}", "x".repeat(200));
                                o = o
                                    .bytes(name.as_bytes())
                                    .bytes(b"")
                                    .raw(&raw_attrs(5, 1, 0o100644));
                            }
                            o.done()
                        } else if entries.is_empty() {
                            status(id, 1, "EOF")
                        } else {
                            let batch: Vec<_> = entries.drain(..entries.len().min(100)).collect();
                            let mut o = Out::new(104, id).u32(batch.len() as u32);
                            for (n, a) in batch {
                                o = o.bytes(&n).bytes(b"").raw(&a);
                            }
                            o.done()
                        }
                    }
                    _ => status(id, 4, "wrong handle kind"),
                }
            }
            11 => {
                let p = r.bytes();
                match std::fs::read_dir(path_of(&p)) {
                    Ok(rd) => {
                        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = vec![
                            (b".".to_vec(), raw_attrs(4, 0, 0o40755)),
                            (b"..".to_vec(), raw_attrs(4, 0, 0o40755)),
                        ];
                        for e in rd.flatten() {
                            if let Ok(m) = e.metadata() {
                                entries.push((e.file_name().as_bytes().to_vec(), attrs_of(&m)));
                            }
                        }
                        let file = raw_attrs(5, 3, 0o100644);
                        if mode == Mode::BadNames {
                            for n in [
                                &b"sl/ash"[..],
                                b"nul\0name",
                                b".",
                                b"..",
                                b"",
                                &[b'n'; 300][..],
                                b"latin1-\xe9t\xe9",
                                b"dup",
                                b"dup",
                            ] {
                                entries.push((n.to_vec(), file.clone()));
                            }
                        }
                        if mode == Mode::BadAttrs {
                            for n in [&b"huge"[..], b"setuid", b"device", b"bare"] {
                                entries.push((n.to_vec(), bad_attrs(n).unwrap_or_default()));
                            }
                        }
                        next += 1;
                        handles.insert(next, Handle::Dir(entries, path_of(&p)));
                        let mut h = vec![0xff, 0x00];
                        h.extend_from_slice(&next.to_be_bytes());
                        Out::new(102, id).bytes(&h).done()
                    }
                    Err(e) => io_status(id, e),
                }
            }
            9 => {
                let p = r.bytes();
                let (size, perm, times) = r.attrs();
                let p = path_of(&p);
                let mut res = Ok(());
                if let Some(s) = size {
                    res = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|f| f.set_len(s));
                }
                if let Some(m) = perm {
                    res = res.and(std::fs::set_permissions(
                        &p,
                        std::fs::Permissions::from_mode(m & 0o7777),
                    ));
                }
                let _ = times;
                match res {
                    Ok(()) => status(id, 0, ""),
                    Err(e) => io_status(id, e),
                }
            }
            13..=15 => {
                let p = path_of(&r.bytes());
                let res = match kind {
                    13 => std::fs::remove_file(&p),
                    14 => std::fs::create_dir(&p),
                    _ => std::fs::remove_dir(&p),
                };
                match res {
                    Ok(()) => status(id, 0, ""),
                    Err(e) => io_status(id, e),
                }
            }
            18 => {
                let (a, b) = (path_of(&r.bytes()), path_of(&r.bytes()));
                if b.exists() {
                    status(id, 4, "Failure")
                } else {
                    match std::fs::rename(a, b) {
                        Ok(()) => status(id, 0, ""),
                        Err(e) => io_status(id, e),
                    }
                }
            }
            19 => match std::fs::read_link(path_of(&r.bytes())) {
                Ok(t) => Out::new(104, id)
                    .u32(1)
                    .bytes(t.as_os_str().as_bytes())
                    .bytes(b"")
                    .raw(&raw_attrs(0, 0, 0))
                    .done(),
                Err(e) => io_status(id, e),
            },
            20 => {
                // OpenSSH's order: target, then link path; the draft's the other way.
                let (mut target, mut link) = (r.bytes(), r.bytes());
                if mode == Mode::DraftSymlink {
                    std::mem::swap(&mut target, &mut link);
                }
                let link = path_of(&link);
                match std::os::unix::fs::symlink(OsStr::from_bytes(&target), link) {
                    Ok(()) => status(id, 0, ""),
                    Err(e) => io_status(id, e),
                }
            }
            200 => {
                let name = r.bytes();
                match &name[..] {
                    b"posix-rename@openssh.com" => {
                        let (a, b) = (path_of(&r.bytes()), path_of(&r.bytes()));
                        match std::fs::rename(a, b) {
                            Ok(()) => status(id, 0, ""),
                            Err(e) => io_status(id, e),
                        }
                    }
                    b"hardlink@openssh.com" => {
                        let (a, b) = (path_of(&r.bytes()), path_of(&r.bytes()));
                        match std::fs::hard_link(a, b) {
                            Ok(()) => status(id, 0, ""),
                            Err(e) => io_status(id, e),
                        }
                    }
                    b"fsync@openssh.com" => status(id, 0, ""),
                    b"limits@openssh.com" => Out::new(201, id).u64(1).u64(1).u64(1).u64(0).done(),
                    _ => status(id, 8, "unsupported"),
                }
            }
            _ => status(id, 8, "unsupported"),
        };
        if mode == Mode::LoseReply(kind) {
            return;
        }
        if io.write_all(&reply).await.is_err() || io.flush().await.is_err() {
            return;
        }
    }
}
