//! The journal's record format and what records fold into.
//!
//! Owns [`Record`] (one JSON object a line), [`State`] (node ids -> names, open file and
//! directory handles, files with unconfirmed writes, hidden names of unlinked open files,
//! the mount's device) and the encoding an upgrade hands over. It must never write
//! anything: that is [`super::journal`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::session::Kind;

/// One change, as written to the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// A snapshot of generation `generation` begins (first line of a journal file).
    Begin {
        generation: u64,
    },
    /// The snapshot before this line is complete; appended records follow.
    Commit {
        generation: u64,
    },
    /// The kernel's node `ino` is `name` in `parent` (new, or moved by a rename).
    Node {
        ino: u64,
        parent: u64,
        name: String,
        kind: Kind,
    },
    /// Node `ino` lost its name (unlinked or replaced); the kernel may still hold it.
    Unlinked {
        ino: u64,
    },
    /// The kernel forgot node `ino`.
    Forgotten {
        ino: u64,
    },
    /// Unlinked, still open node `ino` waits under hidden `name` in `parent`.
    Hidden {
        ino: u64,
        parent: u64,
        name: String,
    },
    /// Node `ino`'s hidden name is gone (its last descriptor closed).
    Unhidden {
        ino: u64,
    },
    /// File handle `fh` on node `ino`, opened with the kernel's open flags `flags`.
    Opened {
        fh: u64,
        ino: u64,
        flags: i32,
    },
    /// Writes through `fh` were acknowledged to the kernel before the server confirmed them.
    Dirty {
        fh: u64,
    },
    /// Every write through `fh` acknowledged so far is confirmed by the server (a flush,
    /// an fsync, or the wait the first unconfirmed write starts, see
    /// [`super::handles::OpenFile::settled`]).
    Clean {
        fh: u64,
    },
    /// The kernel released file handle `fh`.
    Released {
        fh: u64,
    },
    /// Directory handle `fh` on node `ino`.
    DirOpened {
        fh: u64,
        ino: u64,
    },
    DirReleased {
        fh: u64,
    },
    /// The mount's device (`major:minor`), to match a stored connection to its mount.
    Mount {
        device: String,
    },
    /// The daemon handed over cleanly (its writes confirmed); a successor that finds this
    /// is an upgrade, not a crash recovery.
    HandedOver,
    /// Node ids below `ino` may have been given to the kernel (a snapshot's line: the ids
    /// of forgotten nodes are not handed out again by a successor).
    NextNode {
        ino: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    pub linked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileState {
    pub ino: u64,
    pub flags: i32,
    pub dirty: bool,
}

/// The folded journal: everything a successor restores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub nodes: BTreeMap<u64, NodeState>,
    pub hidden: BTreeMap<u64, (u64, String)>,
    pub files: BTreeMap<u64, FileState>,
    pub dirs: BTreeMap<u64, u64>,
    pub device: Option<String>,
    pub handed_over: bool,
    /// Above every node id given out so far.
    pub next_ino: u64,
}

impl State {
    /// Applies one record; false when it changed nothing (then it need not be written).
    pub fn apply(&mut self, r: &Record) -> bool {
        match r {
            Record::Begin { .. } | Record::Commit { .. } => false,
            Record::Node {
                ino,
                parent,
                name,
                kind,
            } => {
                let n = NodeState {
                    parent: *parent,
                    name: name.clone(),
                    kind: *kind,
                    linked: true,
                };
                self.next_ino = self.next_ino.max(ino + 1);
                self.nodes.insert(*ino, n.clone()) != Some(n)
            }
            Record::Unlinked { ino } => match self.nodes.get_mut(ino) {
                Some(n) if n.linked => {
                    n.linked = false;
                    true
                }
                _ => false,
            },
            Record::Forgotten { ino } => self.nodes.remove(ino).is_some(),
            Record::Hidden { ino, parent, name } => {
                self.hidden.insert(*ino, (*parent, name.clone()));
                true
            }
            Record::Unhidden { ino } => self.hidden.remove(ino).is_some(),
            Record::Opened { fh, ino, flags } => {
                let f = FileState {
                    ino: *ino,
                    flags: *flags,
                    dirty: false,
                };
                self.files.insert(*fh, f);
                true
            }
            Record::Dirty { fh } | Record::Clean { fh } => {
                let dirty = matches!(r, Record::Dirty { .. });
                match self.files.get_mut(fh) {
                    Some(f) if f.dirty != dirty => {
                        f.dirty = dirty;
                        true
                    }
                    _ => false,
                }
            }
            Record::Released { fh } => self.files.remove(fh).is_some(),
            Record::DirOpened { fh, ino } => self.dirs.insert(*fh, *ino) != Some(*ino),
            Record::DirReleased { fh } => self.dirs.remove(fh).is_some(),
            Record::Mount { device } => {
                self.device.replace(device.clone()).as_ref() != Some(device)
            }
            Record::HandedOver => !std::mem::replace(&mut self.handed_over, true),
            Record::NextNode { ino } => {
                let before = self.next_ino;
                self.next_ino = before.max(*ino);
                self.next_ino != before
            }
        }
    }

    /// Records that rebuild this state from nothing (parents before children).
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.nodes.len() + self.files.len() + 1);
        out.extend(self.device.clone().map(|device| Record::Mount { device }));
        if self.handed_over {
            out.push(Record::HandedOver);
        }
        if self.next_ino > 0 {
            out.push(Record::NextNode { ino: self.next_ino });
        }
        for (&ino, n) in &self.nodes {
            out.push(Record::Node {
                ino,
                parent: n.parent,
                name: n.name.clone(),
                kind: n.kind,
            });
            if !n.linked {
                out.push(Record::Unlinked { ino });
            }
        }
        for (&ino, (parent, name)) in &self.hidden {
            out.push(Record::Hidden {
                ino,
                parent: *parent,
                name: name.clone(),
            });
        }
        for (&fh, f) in &self.files {
            out.push(Record::Opened {
                fh,
                ino: f.ino,
                flags: f.flags,
            });
            if f.dirty {
                out.push(Record::Dirty { fh });
            }
        }
        for (&fh, &ino) in &self.dirs {
            out.push(Record::DirOpened { fh, ino });
        }
        out
    }

    /// The state as JSON lines (what an upgrade hands over).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for r in self.records() {
            line(&mut out, &r);
        }
        out
    }

    /// Decodes [`State::encode`]'s output. An undecodable line is an error: a state handed
    /// over whole must be whole.
    pub fn decode(bytes: &[u8]) -> Result<State, String> {
        let mut s = State::default();
        for l in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let r: Record = serde_json::from_slice(l).map_err(|e| format!("state: {e}"))?;
            s.apply(&r);
        }
        Ok(s)
    }

    pub fn count(&self) -> usize {
        self.nodes.len() + self.hidden.len() + self.files.len() + self.dirs.len()
    }
}

pub(super) fn line(out: &mut Vec<u8>, r: &Record) {
    // Serializing these plain records cannot fail.
    if serde_json::to_writer(&mut *out, r).is_ok() {
        out.push(b'\n');
    }
}
