//! SFTP v3 client: typed requests over one SSH channel, extensions, errno mapping.
//!
//! Owns the wire format ([`wire`]), the transport of one session (`conn`), its typed
//! requests ([`client::SftpClient`]) and status-to-errno mapping ([`error`]). The only
//! place that sees a packet. It sits on top of the SSH channel and knows nothing of
//! reconnecting, inodes or the kernel.

pub mod client;
mod conn;
pub mod error;
pub mod wire;

pub use client::{RemoteHandle, SftpClient};
pub use error::SftpError;

#[cfg(test)]
mod tests;
