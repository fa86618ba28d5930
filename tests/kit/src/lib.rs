//! What mastofs's tests run against, besides real servers: [`hostile`], an SFTP server
//! that misbehaves on purpose (in-process for the unit tests, as sshd's subsystem through
//! `examples/hostile_sftp.rs`), and [`proxy`], the TCP proxy that cuts, stalls, blackholes
//! and delays the link (`examples/faultproxy.rs` for benchmarks). Test code only: never a
//! dependency of the product.

pub mod hostile;
pub mod proxy;
