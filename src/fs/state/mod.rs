//! What the kernel holds of the mount, and its write-through log.
//!
//! Owns the node table ([`nodes`]: inode numbers, names, files unlinked while open) and the
//! handle table ([`handles`]: open files and directories), and the [`journal`] those
//! tables' own mutators write every change to, so that a successor daemon finds the same
//! state ([`record`] is what is written). Nothing outside this module writes a record. It
//! must never talk to the remote.

pub mod handles;
pub mod journal;
mod mapped;
pub mod nodes;
pub mod record;
