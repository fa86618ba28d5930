//! How many SFTP sessions (channels) one SSH connection may carry at once, and why.
//!
//! Owns the rule only: several sessions per connection are opened only on servers known to
//! keep them apart. OpenSSH's sshd starts one `sftp-server` (or `internal-sftp`) process per
//! session channel, so their packets never meet. ProFTPD's mod_sftp serves every channel of
//! a connection in one process and reassembles SFTP packets that span SSH packets in one
//! buffer per process: two sessions whose packets interleave get spliced into one request
//! (wrong handle, wrong bytes written and acknowledged). Every server not known to be safe
//! therefore gets one session per connection; parallel writes then need `max_conns`. It
//! must never open sessions itself: the supervisor does, with the number decided here.

/// The `sftp_sessions=` mount option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SftpSessions {
    /// Decide from the server's identification (the default).
    #[default]
    Auto,
    /// Exactly this many per connection (1..=8), whatever the server.
    Fixed(usize),
}

/// Sessions per connection on a server known to keep them apart: one session's receive
/// window (2 MiB on OpenSSH) caps a far server's upload, four carry ~4 times that.
pub const SAFE_SESSIONS: usize = 4;

/// The most `sftp_sessions=` accepts.
pub const MAX_SESSIONS: usize = 8;

/// What was decided for a connection, for the supervisor and the status socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub sessions: usize,
    pub reason: String,
}

/// True for servers whose SFTP sessions are separate processes: OpenSSH (including its
/// Windows port), recognized by the software part of its identification string.
fn keeps_sessions_apart(server_id: &str) -> bool {
    let software = server_id
        .strip_prefix("SSH-2.0-")
        .or_else(|| server_id.strip_prefix("SSH-1.99-"))
        .unwrap_or("");
    software.starts_with("OpenSSH_") || software.starts_with("OpenSSH ")
}

/// Sessions to open on a connection to the server that identified itself as `server_id`.
pub fn decide(setting: SftpSessions, server_id: &str) -> Choice {
    match setting {
        SftpSessions::Fixed(n) => Choice {
            sessions: n.clamp(1, MAX_SESSIONS),
            reason: format!("sftp_sessions={n} set"),
        },
        SftpSessions::Auto if keeps_sessions_apart(server_id) => Choice {
            sessions: SAFE_SESSIONS,
            reason: "OpenSSH runs one SFTP server process per session".into(),
        },
        SftpSessions::Auto => Choice {
            sessions: 1,
            reason: format!(
                "server '{server_id}' is not known to keep SFTP sessions on one connection \
                 apart (ProFTPD's mod_sftp splices them); parallel writes use max_conns connections"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_gets_several_sessions() {
        let c = decide(SftpSessions::Auto, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3");
        assert_eq!(c.sessions, SAFE_SESSIONS);
        assert_eq!(
            decide(SftpSessions::Auto, "SSH-2.0-OpenSSH_for_Windows_8.1").sessions,
            SAFE_SESSIONS
        );
    }

    #[test]
    fn other_servers_get_one() {
        for id in [
            "SSH-2.0-mod_sftp",
            "SSH-2.0-mod_sftp/1.1.1",
            "SSH-2.0-ProFTPD",
            "SSH-2.0-dropbear_2022.83",
            "SSH-2.0-Hetzner",
            "SSH-2.0-",
            "",
            // Not at the start of the software version: not OpenSSH.
            "SSH-2.0-NotOpenSSH_9.2",
            "OpenSSH_9.2",
        ] {
            let c = decide(SftpSessions::Auto, id);
            assert_eq!(c.sessions, 1, "{id}");
            assert!(c.reason.contains("not known"), "{id}: {}", c.reason);
        }
    }

    #[test]
    fn the_option_wins_both_ways() {
        assert_eq!(
            decide(SftpSessions::Fixed(3), "SSH-2.0-mod_sftp").sessions,
            3
        );
        let c = decide(SftpSessions::Fixed(1), "SSH-2.0-OpenSSH_9.2");
        assert_eq!(c.sessions, 1);
        assert!(c.reason.contains("sftp_sessions=1"));
        assert_eq!(decide(SftpSessions::Fixed(99), "x").sessions, MAX_SESSIONS);
    }
}
