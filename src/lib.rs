//! mastofs: mount an SFTP storage box through FUSE, and keep it working when the network
//! does not.
//!
//! Layers, top to bottom, each importing only those below it: [`fuse`] (the kernel
//! adapter) -> [`fs`] (filesystem logic, the kernel's state and its journal) -> [`cache`]
//! (file contents on local disk, `cache=DIR`) -> [`session`] (reconnect, replay, write-behind) -> [`sftp`] (the protocol) -> [`ssh`] (the
//! connection). [`mount`] wires them together for one mount; [`options`] parses `-o`;
//! [`status`] and [`monitor`] report (reading counters, never driving the filesystem);
//! [`handover`] passes a live mount to a successor daemon; [`cli`] is the command line.
//! ARCHITECTURE.md draws the picture.

pub mod bounded;
pub mod cache;
pub mod cli;
pub mod daemon;
pub mod fd_passing;
pub mod fs;
pub mod fuse;
pub mod handover;
pub mod ident;
pub mod logging;
pub mod memory;
pub mod meta;
pub mod monitor;
pub mod mount;
pub mod mountpoint;
pub mod name_bytes;
pub mod options;
pub mod rundir;
pub mod session;
pub mod sftp;
pub mod ssh;
pub mod status;
