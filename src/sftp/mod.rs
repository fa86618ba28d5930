//! SFTP v3 client: typed requests over one SSH channel, extensions, errno mapping.
//!
//! Owns the protocol of one session ([`client::SftpClient`]), file attributes ([`attrs`])
//! and status-to-errno mapping ([`error`]). It sits on top of [`crate::ssh`] and knows
//! nothing of reconnecting, inodes or the kernel.

pub mod attrs;
pub mod client;
mod conn;
pub mod error;
pub mod wire;

pub use attrs::Kind;
pub use client::{RemoteHandle, SftpClient};
pub use error::SftpError;

#[cfg(test)]
mod tests;
