//! SFTP v3 client: typed requests over one SSH channel, extensions, errno mapping.
//!
//! Owns the protocol of one session ([`client::SftpClient`]), file attributes ([`attrs`])
//! and status-to-errno mapping ([`error`]). It sits on top of [`crate::ssh`] and knows
//! nothing of reconnecting, inodes or the kernel.

pub mod attrs;
pub mod client;
pub mod error;

pub use attrs::{Attrs, Kind};
pub use client::{DirEntry, OpenMode, RemoteHandle, SftpClient, StatVfs};
pub use error::SftpError;
