//! The state journal: what a successor daemon needs to take over the kernel's view of the
//! mount, kept current in memory files that outlive this daemon.
//!
//! Owns two memory files written in turn (through a shared mapping, [`super::mapped`]):
//! a snapshot is committed in the idle file before appends move to it, so a crash at any
//! moment leaves one complete, readable journal. The files go to systemd's descriptor store
//! (or the test's); an upgrade sends the encoded [`State`] itself. Records come only from
//! the state's own tables ([`super::nodes`], [`super::handles`]) and the mount's facts
//! ([`Journal::mount`], [`Journal::handed_over`]). It must never block on the network nor
//! decide anything: it writes down what the filesystem did, before the kernel hears of it.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use super::mapped::Mapped;
use super::record::line;

/// Records appended after a snapshot, beyond twice the state's size, before the next
/// snapshot (which bounds the files to a few times the state).
const APPENDS: usize = 4096;
pub use super::record::{Record, State};
/// Reads one journal file: its generation and state, if it holds a committed snapshot.
/// Appended records count up to the first torn line (the crash cut the last write).
fn read_file(f: &File) -> Option<(u64, State)> {
    let mut bytes = Vec::new();
    let mut off = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read_at(&mut buf, off).ok()?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        off += n as u64;
    }
    let mut lines = bytes.split(|b| *b == b'\n');
    let generation = match serde_json::from_slice(lines.next()?).ok()? {
        Record::Begin { generation } => generation,
        _ => return None,
    };
    let mut state = State::default();
    let mut committed = false;
    for l in lines {
        let Ok(r) = serde_json::from_slice::<Record>(l) else {
            break;
        };
        if r == (Record::Commit { generation }) {
            committed = true;
        }
        state.apply(&r);
    }
    committed.then_some((generation, state))
}

struct Files {
    files: [Mapped; 2],
    active: usize,
    /// Where the next record goes in the active file.
    end: usize,
    generation: u64,
    /// Records appended since the last snapshot.
    appended: usize,
}

impl Files {
    /// Writes `state` as generation `generation + 1` into the idle file, then moves there.
    fn snapshot(&mut self, state: &State) -> std::io::Result<()> {
        let next = 1 - self.active;
        let generation = self.generation + 1;
        let mut out = Vec::new();
        line(&mut out, &Record::Begin { generation });
        for r in state.records() {
            line(&mut out, &r);
        }
        line(&mut out, &Record::Commit { generation });
        let f = &mut self.files[next];
        f.clear(2 * out.len())?;
        f.write_at(0, &out)?;
        self.active = next;
        self.end = out.len();
        self.generation = generation;
        self.appended = 0;
        Ok(())
    }
}

/// The live journal: the folded state in memory, and (when memory files could be made) the
/// same on file for a successor.
pub struct Journal {
    inner: Mutex<(State, Option<Files>)>,
}

impl Journal {
    /// A journal of `state` (empty for a fresh mount), written to two new memory files.
    pub fn new(state: State) -> Journal {
        let files = (|| -> std::io::Result<[File; 2]> { Ok([memfd("a")?, memfd("b")?]) })()
            .map_err(|e| tracing::warn!(error = %e, "no state journal: a crash will unmount"))
            .ok();
        Self::with_files(state, files, 0, 1)
    }

    /// Continues the journal kept in `files` (from the descriptor store): its state, and the
    /// journal that goes on writing into the same files.
    pub fn resume(files: [File; 2]) -> Option<(Journal, State)> {
        let (a, b) = (read_file(&files[0]), read_file(&files[1]));
        // The newer complete one; the fresh snapshot then goes into the other file.
        let (latest, (generation, state)) = match (a, b) {
            (Some(a), Some(b)) if b.0 > a.0 => (1, b),
            (Some(a), _) => (0, a),
            (None, Some(b)) => (1, b),
            (None, None) => return None,
        };
        let j = Self::with_files(state.clone(), Some(files), generation, latest);
        Some((j, state))
    }

    /// A journal continuing in `files`, whose file `active` holds generation `generation`.
    fn with_files(
        state: State,
        files: Option<[File; 2]>,
        generation: u64,
        active: usize,
    ) -> Journal {
        let files = files.and_then(|[a, b]| {
            let mapped = Mapped::new(a).and_then(|a| Ok([a, Mapped::new(b)?]));
            let files = mapped
                .map_err(|e| tracing::warn!(error = %e, "cannot map the state journal"))
                .ok()?;
            let mut f = Files {
                files,
                active,
                end: 0,
                generation,
                appended: 0,
            };
            // Start from a snapshot in the other file (`active` keeps what it had until
            // this one is committed).
            f.snapshot(&state)
                .map_err(|e| tracing::warn!(error = %e, "cannot write the state journal"))
                .ok()?;
            Some(f)
        });
        Journal {
            inner: Mutex::new((state, files)),
        }
    }

    /// The mount's device (`major:minor`), once the mount exists.
    pub fn mount(&self, device: String) {
        self.record(Record::Mount { device })
    }

    /// The daemon hands over cleanly: its writes are confirmed.
    pub fn handed_over(&self) {
        self.record(Record::HandedOver)
    }

    /// Writes down `r`. Never fails: a journal that cannot be written is dropped (a crash
    /// then unmounts, as without one) with one log line.
    pub(super) fn record(&self, r: Record) {
        let Ok(mut g) = self.inner.lock() else { return };
        let (state, files) = &mut *g;
        if !state.apply(&r) {
            return;
        }
        let Some(f) = files.as_mut() else { return };
        let written = if f.appended > APPENDS + 2 * state.count() {
            f.snapshot(state)
        } else {
            let mut out = Vec::new();
            line(&mut out, &r);
            let at = f.end;
            f.end += out.len();
            f.appended += 1;
            f.files[f.active].write_at(at, &out)
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "state journal lost: a crash will unmount");
            // An unreadable journal must not be mistaken for a complete one.
            for m in &f.files {
                let _ = m.file().set_len(0);
            }
            *files = None;
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.inner.lock().map(|g| g.0.clone()).unwrap_or_default()
    }

    /// Runs `f` on the journal's memory files (to store them with the service manager).
    pub fn with_fds<T>(&self, f: impl FnOnce(Option<[BorrowedFd<'_>; 2]>) -> T) -> T {
        let g = self.inner.lock().ok();
        let fds = g
            .as_ref()
            .and_then(|g| g.1.as_ref())
            .map(|f| [f.files[0].file().as_fd(), f.files[1].file().as_fd()]);
        f(fds)
    }
}

fn memfd(name: &str) -> std::io::Result<File> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let name = format!("mastofs-state-{name}");
    memfd_create(name.as_str(), MFdFlags::MFD_CLOEXEC)
        .map(File::from)
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Kind;

    fn node(ino: u64, parent: u64, name: &str) -> Record {
        Record::Node {
            ino,
            parent,
            name: name.into(),
            kind: Kind::File,
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Mount {
                device: "0:77".into(),
            },
            Record::HandedOver,
            node(2, 1, "a"),
            node(3, 2, "b"),
            node(4, 1, "gone"),
            Record::Opened {
                fh: 9,
                ino: 3,
                flags: libc::O_RDWR,
            },
            Record::Dirty { fh: 9 },
            Record::DirOpened { fh: 1, ino: 2 },
            node(3, 1, "moved"),
            Record::Unlinked { ino: 4 },
            Record::Hidden {
                ino: 4,
                parent: 1,
                name: ".mastofs-unlinked-x".into(),
            },
        ]
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut s = State::default();
        for r in sample() {
            s.apply(&r);
        }
        assert_eq!(State::decode(&s.encode()).unwrap(), s);
        assert_eq!(s.nodes[&3].name, "moved");
        assert!(!s.nodes[&4].linked && s.files[&9].dirty);
        assert!(State::decode(b"{\"node\":").is_err());
    }

    #[test]
    fn resumes_from_files_and_survives_a_torn_line() {
        let j = Journal::new(State::default());
        for r in sample() {
            j.record(r);
        }
        let files = {
            let g = j.inner.lock().unwrap();
            let f = g.1.as_ref().unwrap();
            let dup = |i: usize| f.files[i].file().try_clone().unwrap();
            // A crash in the middle of a write: half a record at the end.
            f.files[f.active]
                .file()
                .write_all_at(b"{\"forgot", f.end as u64)
                .unwrap();
            [dup(0), dup(1)]
        };
        let (j2, state) = Journal::resume(files).unwrap();
        assert_eq!(state, j.state());
        // The successor goes on writing; a third daemon sees both.
        j2.record(Record::Released { fh: 9 });
        let files = {
            let g = j2.inner.lock().unwrap();
            let f = g.1.as_ref().unwrap();
            [
                f.files[0].file().try_clone().unwrap(),
                f.files[1].file().try_clone().unwrap(),
            ]
        };
        let (_, state3) = Journal::resume(files).unwrap();
        assert!(state3.files.is_empty() && state3.dirs.len() == 1);
    }

    #[test]
    fn snapshots_keep_the_state_and_bound_the_files() {
        let j = Journal::new(State::default());
        for i in 0..20_000u64 {
            j.record(node(2 + i % 10, 1, &format!("n{i}")));
        }
        let g = j.inner.lock().unwrap();
        let f = g.1.as_ref().unwrap();
        let copy = f.files[f.active].file().try_clone().unwrap();
        assert_eq!(read_file(&copy).unwrap().1, g.0);
        // The file holds a snapshot (Begin, the state's records, Commit) and the appends
        // since: 20,000 changes of 10 nodes must not leave 20,000 lines.
        let mut bytes = vec![0u8; f.end];
        copy.read_exact_at(&mut bytes, 0).unwrap();
        let lines = bytes.iter().filter(|b| **b == b'\n').count();
        let bound = g.0.records().len() + 2 + APPENDS + 2 * g.0.count() + 1;
        assert!(
            lines <= bound,
            "{lines} lines in the journal, bound {bound}"
        );
    }

    #[test]
    fn unchanged_records_are_not_written() {
        let j = Journal::new(State::default());
        j.record(Record::Opened {
            fh: 1,
            ino: 2,
            flags: 0,
        });
        let end = |j: &Journal| j.inner.lock().unwrap().1.as_ref().unwrap().end;
        j.record(Record::Dirty { fh: 1 });
        let after_first = end(&j);
        j.record(Record::Dirty { fh: 1 });
        assert_eq!(end(&j), after_first);
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use crate::session::Kind;

    /// Not an assertion: prints what one record costs (`cargo test --release journal_cost
    /// -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn journal_cost() {
        let n = 200_000u64;
        let per_record = |j: Journal| {
            let t = std::time::Instant::now();
            for i in 0..n {
                j.record(Record::Node {
                    ino: i + 2,
                    parent: 1,
                    name: format!("file-{i:06}.jpg"),
                    kind: Kind::File,
                });
            }
            t.elapsed() / n as u32
        };
        let total = per_record(Journal::new(State::default()));
        println!("journal: {total:?} per new node record ({n} records, with snapshots)");
        let memory = per_record(Journal::with_files(State::default(), None, 0, 1));
        println!("journal: {memory:?} of it in memory (the folded state, no file)");
    }
}
