//! The write-back operation log (`cache_writeback=on`): every change acknowledged to an
//! application and not yet on the server, in order, on local disk.
//!
//! Owns the log's format and its durability. A record is `length (u32 LE) | crc32 (u32
//! LE) | JSON`; a torn or corrupt tail (a crash in the middle of an append) ends the log
//! there and is cut off at the next start. Appends are written under the caller's lock,
//! in the order of the changes, and made durable by [`OpLog::sync`] (one `fdatasync`
//! covers every append before it, so concurrent closes share one). The `done` file holds
//! the sequence number of the last record the server confirmed. Once nothing is pending
//! the log is emptied. It does blocking file I/O: callers run it off the runtime's
//! workers. It must never reorder records, nor report a record durable before it is.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pending::Shown;
use super::store::Version;

/// A change to make on the server. Paths are remote paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A directory created with `perm`.
    Mkdir {
        path: String,
        perm: u32,
        owner: Option<(u32, u32)>,
    },
    /// A file's whole contents, from data file `data`, with `perm` and `mtime`. `base`:
    /// the version this mount last saw on the server for the path before writing it
    /// (None: it saw none); another version found there at upload is a conflict.
    Put {
        path: String,
        data: u64,
        size: u64,
        perm: u32,
        mtime: u32,
        base: Option<Version>,
        owner: Option<(u32, u32)>,
    },
    Remove {
        path: String,
    },
    Rmdir {
        path: String,
    },
    /// `shown`: what the server held at `from` (nothing pending was there), as it was
    /// shown when the rename was recorded.
    Rename {
        from: String,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shown: Option<Shown>,
    },
    /// A mode or times change (never the size: that is a [`Op::Put`]). `shown`: as for
    /// [`Op::Rename`], before the change.
    SetStat {
        path: String,
        perm: Option<u32>,
        mtime: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shown: Option<Shown>,
    },
}

impl Op {
    /// What it does, in a few words, for an operator.
    pub fn describe(&self) -> String {
        match self {
            Op::Mkdir { path, .. } => format!("mkdir {path}"),
            Op::Put { path, size, .. } => format!("upload of {path} ({size} bytes)"),
            Op::Remove { path } => format!("unlink {path}"),
            Op::Rmdir { path } => format!("rmdir {path}"),
            Op::Rename { from, to, .. } => format!("rename {from} to {to}"),
            Op::SetStat { path, .. } => format!("mode or time change of {path}"),
        }
    }

    /// The paths whose pending state this operation last set.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Op::Mkdir { path, .. }
            | Op::Put { path, .. }
            | Op::Remove { path }
            | Op::Rmdir { path }
            | Op::SetStat { path, .. } => vec![path],
            Op::Rename { from, to, .. } => vec![from, to],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// When it was acknowledged (seconds since the epoch).
    pub at: u64,
    pub op: Op,
}

pub struct OpLog {
    log: File,
    done: File,
    len: u64,
}

/// What an earlier daemon left: the records not confirmed yet, in order.
pub struct Loaded {
    pub log: OpLog,
    pub pending: Vec<Record>,
    /// The highest sequence number used so far (the next record takes one more).
    pub last_seq: u64,
    /// Bytes of a torn tail that were cut off (a crash in the middle of an append).
    pub torn: u64,
}

fn open_rw(p: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(p)
}

fn encode(rec: &Record) -> std::io::Result<Vec<u8>> {
    let body = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The records of `bytes` up to the first that is torn or corrupt, and where that is.
fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let end = at + 8 + len as usize;
        if end > bytes.len() {
            break;
        }
        let body = &bytes[at + 8..end];
        if crc32fast::hash(body) != crc {
            break;
        }
        match serde_json::from_slice(body) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at = end;
    }
    (out, at)
}

impl OpLog {
    /// Opens the log in `dir` (creating it), cutting off a torn tail.
    pub fn open(dir: &Path) -> std::io::Result<Loaded> {
        let mut log = open_rw(&dir.join("log"))?;
        let done = open_rw(&dir.join("done"))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes)?;
        let (records, good) = decode(&bytes);
        let torn = (bytes.len() - good) as u64;
        if torn > 0 {
            log.set_len(good as u64)?;
            log.sync_data()?;
        }
        let mut d = [0u8; 8];
        let confirmed = match done.read_exact_at(&mut d, 0) {
            Ok(()) => u64::from_le_bytes(d),
            Err(_) => 0,
        };
        let last_seq = records.last().map_or(confirmed, |r| r.seq.max(confirmed));
        let pending = records.into_iter().filter(|r| r.seq > confirmed).collect();
        Ok(Loaded {
            log: OpLog {
                log,
                done,
                len: good as u64,
            },
            pending,
            last_seq,
            torn,
        })
    }

    /// Writes `rec` at the end (durable after the next [`OpLog::sync`]). On failure
    /// nothing of it stays.
    pub fn append(&mut self, rec: &Record) -> std::io::Result<()> {
        let bytes = encode(rec)?;
        match self.log.write_all_at(&bytes, self.len) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.log.set_len(self.len);
                Err(e)
            }
        }
    }

    /// A descriptor to sync the log through while others append.
    pub fn syncer(&self) -> std::io::Result<File> {
        self.log.try_clone()
    }

    /// Notes that every record up to `seq` is on the server; empties the log when that
    /// is all of them (`all`).
    pub fn confirmed(&mut self, seq: u64, all: bool) -> std::io::Result<()> {
        self.done.write_all_at(&seq.to_le_bytes(), 0)?;
        if all && self.len > 0 {
            // The done mark goes first: an empty log with an old mark replays nothing.
            self.done.sync_data()?;
            self.log.set_len(0)?;
            self.len = 0;
        }
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.len
    }
}

/// `fdatasync` of a log descriptor from [`OpLog::syncer`].
pub fn sync(f: &File) -> std::io::Result<()> {
    f.sync_data()
}

/// Where write-back keeps a file's data: `DIR/writeback/data/<id>`.
pub fn data_path(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("{id:016x}"))
}

/// Makes new names in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to a new file (for tests of torn tails).
#[cfg(test)]
fn append_raw(p: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(bytes).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, path: &str) -> Record {
        Record {
            seq,
            at: 1,
            op: Op::Remove { path: path.into() },
        }
    }

    #[test]
    fn records_survive_a_restart_in_order_and_a_torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let mut l = OpLog::open(d.path()).unwrap().log;
        for i in 1..=3 {
            l.append(&rec(i, &format!("/f{i}"))).unwrap();
        }
        sync(&l.syncer().unwrap()).unwrap();
        drop(l);
        // Half a record, as a crash in the middle of an append leaves it.
        let half = encode(&rec(4, "/f4")).unwrap();
        append_raw(&d.path().join("log"), &half[..half.len() / 2]);
        let loaded = OpLog::open(d.path()).unwrap();
        assert_eq!(
            loaded.pending,
            vec![rec(1, "/f1"), rec(2, "/f2"), rec(3, "/f3")]
        );
        assert_eq!(loaded.last_seq, 3);
        assert!(loaded.torn > 0);
        // The next append follows the last good record.
        let mut l = loaded.log;
        l.append(&rec(4, "/g")).unwrap();
        drop(l);
        let again = OpLog::open(d.path()).unwrap();
        assert_eq!(again.torn, 0);
        assert_eq!(again.pending.last(), Some(&rec(4, "/g")));
    }

    #[test]
    fn confirmed_records_are_not_loaded_again_and_the_log_empties() {
        let d = tempfile::tempdir().unwrap();
        let mut l = OpLog::open(d.path()).unwrap().log;
        for i in 1..=3 {
            l.append(&rec(i, "/f")).unwrap();
        }
        l.confirmed(2, false).unwrap();
        drop(l);
        let loaded = OpLog::open(d.path()).unwrap();
        assert_eq!(loaded.pending, vec![rec(3, "/f")]);
        let mut l = loaded.log;
        l.confirmed(3, true).unwrap();
        assert_eq!(l.bytes(), 0);
        drop(l);
        let loaded = OpLog::open(d.path()).unwrap();
        assert!(loaded.pending.is_empty());
        // Numbers go on from the last one used.
        assert_eq!(loaded.last_seq, 3);
    }

    #[test]
    fn a_corrupt_record_ends_the_log() {
        let d = tempfile::tempdir().unwrap();
        let mut l = OpLog::open(d.path()).unwrap().log;
        l.append(&rec(1, "/a")).unwrap();
        let at = l.bytes();
        l.append(&rec(2, "/b")).unwrap();
        drop(l);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("log"))
            .unwrap();
        f.write_all_at(b"X", at + 12).unwrap();
        let loaded = OpLog::open(d.path()).unwrap();
        assert_eq!(loaded.pending, vec![rec(1, "/a")]);
    }
}
