//! ssh_config resolution: turns `host` (an alias or a name) into a connection [`Target`]
//! the way `ssh host` would.
//!
//! Owns reading `-F FILE` (or `~/.ssh/config` then `/etc/ssh/ssh_config`), applying the
//! first-match-wins rule through `ssh2-config`, and the command-line overrides (`-p`,
//! `-o Port=,User=,IdentityFile=,...`), which always win. It never opens a connection.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh2_config::{HostParams, ParseRule, SshConfig};

use super::SshError;

/// Settings given on the command line; each one overrides ssh_config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
    pub server_alive_interval: Option<u64>,
    pub server_alive_count_max: Option<u32>,
    pub connect_timeout: Option<u64>,
    pub strict_host_key_checking: Option<StrictMode>,
    pub known_hosts_files: Vec<PathBuf>,
    pub ciphers: Option<String>,
}

/// `StrictHostKeyChecking`. `No` still refuses a changed key; it only lets an unknown key
/// through, with a warning in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictMode {
    Yes,
    AcceptNew,
    No,
}

impl StrictMode {
    pub fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "yes" | "ask" => Some(StrictMode::Yes),
            "accept-new" => Some(StrictMode::AcceptNew),
            "no" | "off" => Some(StrictMode::No),
            _ => None,
        }
    }
}

/// Everything needed to connect to and authenticate with one server.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    /// True when identity files were named explicitly (a missing one is then an error).
    pub identity_explicit: bool,
    pub known_hosts_files: Vec<PathBuf>,
    pub strict: StrictMode,
    pub connect_timeout: Duration,
    pub alive_interval: Duration,
    pub alive_count_max: u32,
    pub ciphers: Option<Vec<String>>,
}

/// The home directory of the user running mastofs.
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn expand_tilde(p: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => home_dir().join(rest),
        Err(_) => p.to_path_buf(),
    }
}

fn parse_file(path: &Path) -> Result<SshConfig, SshError> {
    let f = File::open(path).map_err(|e| SshError::Config {
        path: path.into(),
        reason: e.to_string(),
    })?;
    SshConfig::default()
        .parse(
            &mut BufReader::new(f),
            ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map_err(|e| SshError::Config {
            path: path.into(),
            reason: e.to_string(),
        })
}

/// Looks `alias` up in the configured files, first file first.
fn lookup(alias: &str, config_file: Option<&Path>) -> Result<HostParams, SshError> {
    let files: Vec<PathBuf> = match config_file {
        Some(f) => vec![f.to_path_buf()],
        None => vec![
            home_dir().join(".ssh/config"),
            PathBuf::from("/etc/ssh/ssh_config"),
        ],
    };
    let mut merged: Option<HostParams> = None;
    for f in &files {
        // A default file that does not exist is fine; an explicit -F file must exist.
        if config_file.is_none() && !f.exists() {
            continue;
        }
        let params = parse_file(f)?.query(alias);
        match merged.as_mut() {
            None => merged = Some(params),
            Some(m) => m.overwrite_if_none(&params),
        }
    }
    Ok(merged.unwrap_or_else(|| SshConfig::default().query(alias)))
}

/// A field ssh2-config keeps unparsed (it stores their names in lower case).
fn raw_field<'a>(p: &'a HostParams, name: &str) -> Option<&'a Vec<String>> {
    p.unsupported_fields
        .get(name)
        .or_else(|| p.ignored_fields.get(name))
        .filter(|v| !v.is_empty())
}

/// Resolves `alias` into a [`Target`]. `spec_user` is the `user@` part of the source.
pub fn resolve(alias: &str, spec_user: Option<&str>, ov: &Overrides) -> Result<Target, SshError> {
    let p = lookup(alias, ov.config_file.as_deref())?;
    let bad = |what: &str, v: &str| SshError::Config {
        path: ov
            .config_file
            .clone()
            .unwrap_or_else(|| home_dir().join(".ssh/config")),
        reason: format!("bad {what} '{v}'"),
    };

    let host = p.host_name.clone().unwrap_or_else(|| alias.to_string());
    let port = ov.port.or(p.port).unwrap_or(22);
    let user = spec_user
        .map(str::to_string)
        .or_else(|| ov.user.clone())
        .or_else(|| p.user.clone())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "root".into());

    let (identity_files, identity_explicit) = if !ov.identity_files.is_empty() {
        (
            ov.identity_files.iter().map(|p| expand_tilde(p)).collect(),
            true,
        )
    } else if let Some(files) = p.identity_file.as_ref().filter(|f| !f.is_empty()) {
        (files.iter().map(|p| expand_tilde(p)).collect(), true)
    } else {
        let ssh = home_dir().join(".ssh");
        let defaults = ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|n| ssh.join(n))
            .filter(|p| p.exists())
            .collect();
        (defaults, false)
    };

    let known_hosts_files = if !ov.known_hosts_files.is_empty() {
        ov.known_hosts_files
            .iter()
            .map(|p| expand_tilde(p))
            .collect()
    } else if let Some(v) = raw_field(&p, "userknownhostsfile") {
        v.iter()
            .flat_map(|s| s.split_whitespace())
            .map(|s| expand_tilde(Path::new(s)))
            .collect()
    } else {
        vec![
            home_dir().join(".ssh/known_hosts"),
            home_dir().join(".ssh/known_hosts2"),
        ]
    };
    let mut known_hosts_files = known_hosts_files;
    for global in ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"] {
        known_hosts_files.push(PathBuf::from(global));
    }

    let strict = match ov.strict_host_key_checking {
        Some(s) => s,
        None => match raw_field(&p, "stricthostkeychecking") {
            Some(v) => {
                StrictMode::parse(&v[0]).ok_or_else(|| bad("StrictHostKeyChecking", &v[0]))?
            }
            None => StrictMode::Yes,
        },
    };

    let connect_timeout = ov
        .connect_timeout
        .map(Duration::from_secs)
        .or(p.connect_timeout)
        .unwrap_or(Duration::from_secs(15));

    // Keepalives are not optional for a long-lived mount: the box drops idle sessions.
    let alive_interval = ov
        .server_alive_interval
        .map(Duration::from_secs)
        .or(p.server_alive_interval)
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(5));
    let alive_count_max = match ov.server_alive_count_max {
        Some(n) => n,
        None => match raw_field(&p, "serveralivecountmax") {
            Some(v) => v[0]
                .parse()
                .map_err(|_| bad("ServerAliveCountMax", &v[0]))?,
            None => 3,
        },
    }
    .max(1);

    let ciphers = ov
        .ciphers
        .clone()
        .map(|c| c.split(',').map(str::to_string).collect());

    Ok(Target {
        host,
        port,
        user,
        identity_files,
        identity_explicit,
        known_hosts_files,
        strict,
        connect_timeout,
        alive_interval,
        alive_count_max,
        ciphers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn config(text: &str) -> (tempdir::Dir, PathBuf) {
        let d = tempdir::Dir::new();
        let p = d.0.join("config");
        File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (d, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "mastofs-cfg-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn alias_resolves_like_ssh() {
        let (_d, p) = config(
            "Host box\n  HostName u1.example.com\n  User u1\n  Port 23\n  IdentityFile /k/id\n  \
             ServerAliveInterval 15\n  ServerAliveCountMax 4\n  StrictHostKeyChecking accept-new\n  \
             UserKnownHostsFile /k/kh\n  ConnectTimeout 7\n",
        );
        let ov = Overrides {
            config_file: Some(p),
            ..Default::default()
        };
        let t = resolve("box", None, &ov).unwrap();
        assert_eq!(t.host, "u1.example.com");
        assert_eq!(t.user, "u1");
        assert_eq!(t.port, 23);
        assert_eq!(t.identity_files, vec![PathBuf::from("/k/id")]);
        assert!(t.identity_explicit);
        assert_eq!(t.alive_interval, Duration::from_secs(15));
        assert_eq!(t.alive_count_max, 4);
        assert_eq!(t.strict, StrictMode::AcceptNew);
        assert_eq!(t.known_hosts_files[0], PathBuf::from("/k/kh"));
        assert_eq!(t.connect_timeout, Duration::from_secs(7));
    }

    #[test]
    fn command_line_wins() {
        let (_d, p) = config("Host box\n  HostName h\n  User u1\n  Port 23\n");
        let ov = Overrides {
            config_file: Some(p),
            port: Some(2222),
            user: Some("other".into()),
            ..Default::default()
        };
        let t = resolve("box", None, &ov).unwrap();
        assert_eq!((t.port, t.user.as_str()), (2222, "other"));
        let t = resolve("box", Some("spec"), &ov).unwrap();
        assert_eq!(t.user, "spec");
    }

    #[test]
    fn unknown_alias_is_the_host_itself() {
        let (_d, p) = config("Host box\n  Port 23\n");
        let ov = Overrides {
            config_file: Some(p),
            ..Default::default()
        };
        let t = resolve("other.example", None, &ov).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("other.example", 22));
        assert_eq!(t.strict, StrictMode::Yes);
    }

    #[test]
    fn missing_explicit_config_is_an_error() {
        let ov = Overrides {
            config_file: Some("/nonexistent/cfg".into()),
            ..Default::default()
        };
        let e = resolve("box", None, &ov).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cfg"), "{e}");
    }
}
