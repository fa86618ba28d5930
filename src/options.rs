//! `-o` options: mount(8)/fstab, sshfs and mastofs options -> a typed [`MountConfig`].
//!
//! Every accepted option is documented here, where it is parsed (and in `man/mastofs.8`).
//! An unknown option is an error naming it; an sshfs option mastofs cannot honour is an
//! error saying so. This module only parses; it never connects or mounts.
//!
//! | option | meaning |
//! |---|---|
//! | `uid=USER`, `gid=GROUP` | show every file as owned by this user/group (name or number) |
//! | `umask=OCTAL` | clear these permission bits from every mode shown |
//! | `idmap=none\|user\|file`, `uidfile=`, `gidfile=`, `nomap=ignore\|error` | sshfs id mapping |
//! | `transform_symlinks`, `follow_symlinks` | as sshfs |
//! | `contain_symlinks` (default), `no_contain_symlinks` | a server's link that leads out of the mount, resolved lexically from its directory, gives EPERM; links that stay inside work, absolute ones shown relative. `no_contain_symlinks` passes every target through: only for a trusted server |
//! | `allow_other`, `allow_root`, `default_permissions`, `ro`, `rw`, `nosuid`, `nodev`, `noexec`, `noatime` | kernel mount options |
//! | `reconnect` | accepted; mastofs always reconnects |
//! | `delay_connect` | mount at once, connect in the background |
//! | `timeout=SECS` | how long an operation waits for a connection before EIO (default 180) |
//! | `attr_timeout=`, `entry_timeout=`, `negative_timeout=`, `dir_timeout=` | cache TTLs in seconds (defaults 20, 20, 0, 20); every change made through this mount invalidates what it touches; a directory this mount made is taken to hold only what it put there for `dir_timeout` |
//! | `cache=yes\|no`, `cache_timeout=`, `cache_stat_timeout=` | sshfs cache options, mapped onto the TTLs (`cache_dir_timeout=` = `dir_timeout=`; `cache_link_timeout=` accepted) |
//! | `status_socket=PATH` | status socket (default `/run/mastofs/<systemd-escaped mountpoint>.sock`, mode 0660) |
//! | `status_group=GROUP` | group that may read the status socket |
//! | `metrics_listen=ADDR:PORT` | also serve `/metrics` (and `/health`, `/status`) over TCP |
//! | `max_conns=N` | SSH connections to use (1..=10, default 1): requests are spread over them by path, and consecutive MiB of one file's writes too (a far server's per-channel window caps one connection's upload) |
//! | `sftp_sessions=auto\|N` | SFTP sessions per connection that carry writes (1..=8). `auto` (default): 4 on OpenSSH, which runs each session as its own process; 1 on every other server, because ProFTPD's mod_sftp splices packets of sessions sharing a connection and writes wrong bytes without an error. Set N > 1 only for a server known to keep sessions apart; `1` forces one everywhere |
//! | `write_behind=MIB` | MiB of writes acknowledged before the server confirmed them, across all files (default 32; failures reach flush/fsync/close; data is kept and replayed until confirmed) |
//! | `sshfs_sync`, `sync_write` | every write waits for the server (= `write_behind=0`) |
//! | `disable_hardlink` | refuse link(2) with EPERM even where the server could |
//! | `ssh_config=FILE` | ssh_config to read instead of ~/.ssh/config (as `-F`; usable in fstab) |
//! | `Port=`, `User=`, `IdentityFile=`, `ServerAliveInterval=`, `ServerAliveCountMax=`, `ConnectTimeout=`, `StrictHostKeyChecking=`, `UserKnownHostsFile=`, `Ciphers=` | ssh options, override ssh_config |
//! | `BatchMode=yes`, `IdentitiesOnly=`, `PasswordAuthentication=no`, `PreferredAuthentications=` (with publickey), `LogLevel=`, `Compression=no` | ssh options accepted for compatibility |
//! | `_netdev` | the mount needs the network (systemd orders it after); a mount(8) helper run for a line without it mounts even when the server cannot be reached yet, and connects in the background (with a warning) |
//! | `user`, `users`, `nouser`, `owner`, `group`, `auto`, `noauto`, `nofail`, `defaults`, `exec`, `suid`, `dev`, `async`, `relatime`, `x-*`, `comment=*`, `user=NAME`, `fsname=`, `subtype=` | mount(8)/systemd bookkeeping, accepted |
//! | `kernel_cache`, `auto_cache`, `no_readahead`, `sync_readdir`, `big_writes`, `large_read`, `max_read=`, `max_write=`, `workaround=`, `dir_cache=`, `noforget` | sshfs tuning options, accepted (mastofs chooses its own tuning) |

use std::path::PathBuf;
use std::time::Duration;

use crate::fs::idmap::{self, IdMap};
use crate::fs::FsConfig;
use crate::session::sftp_sessions::{SftpSessions, MAX_SESSIONS};
use crate::ssh::{Overrides, StrictMode};

/// Everything a mount needs, parsed and validated.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub spec_user: Option<String>,
    pub host: String,
    pub remote_path: String,
    pub mountpoint: PathBuf,
    pub ssh: Overrides,
    pub fs: FsConfig,
    pub delay_connect: bool,
    /// `_netdev`: the line says the mount needs the network (systemd orders it after).
    pub netdev: bool,
    /// Mount even when the server cannot be reached yet, connecting in the background: a
    /// mount(8) helper run for an fstab line without `_netdev` (systemd mounts those
    /// before the network is up; failing would drop the boot into emergency mode).
    pub unreachable_ok: bool,
    pub timeout: Duration,
    pub max_conns: u32,
    /// SFTP sessions per connection (see [`SftpSessions`]).
    pub sftp_sessions: SftpSessions,
    /// Bytes of writes that may be acknowledged before the server confirmed them.
    pub write_behind: usize,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub fsname: Option<String>,
    /// Status socket path (default: /run/mastofs/<escaped mountpoint>.sock).
    pub status_socket: Option<PathBuf>,
    /// Group owning the status socket.
    pub status_group: Option<u32>,
    /// Also serve /metrics (and the rest) over TCP on this address.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// sshfs options whose function mastofs does not provide.
const REFUSED: &[(&str, &str)] = &[
    (
        "ssh_command",
        "mastofs speaks SSH itself and runs no ssh command",
    ),
    ("ssh_protocol", "only SSH protocol 2 exists"),
    ("sftp_server", "mastofs uses the server's sftp subsystem"),
    ("directport", "mastofs needs an SSH server"),
    (
        "password_stdin",
        "password authentication is not supported; use a key",
    ),
    ("passive", "mastofs does not run an sftp server"),
    ("slave", "mastofs does not run an sftp server"),
    (
        "direct_io",
        "mastofs keeps the page cache so that mmap works",
    ),
    ("ControlMaster", "connection sharing is not supported"),
    ("ControlPath", "connection sharing is not supported"),
    ("ProxyCommand", "proxies are not supported"),
    ("ProxyJump", "proxies are not supported"),
];

/// Options accepted and ignored (mount(8), systemd, sshfs tuning).
const IGNORED: &[&str] = &[
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "auto",
    "noauto",
    "nofail",
    "defaults",
    "exec",
    "suid",
    "dev",
    "async",
    "relatime",
    "reconnect",
    "kernel_cache",
    "auto_cache",
    "no_readahead",
    "sync_readdir",
    "big_writes",
    "large_read",
    "noforget",
    "splice_read",
    "splice_write",
    "splice_move",
    "hard_remove",
    "use_ino",
    "readdir_ino",
    "no_check_root",
];
const IGNORED_WITH_VALUE: &[&str] = &[
    "user",
    "subtype",
    "comment",
    "max_read",
    "max_write",
    "workaround",
    "dir_cache",
    "dcache_max_size",
    "dcache_timeout",
    "dcache_stat_timeout",
    "dcache_dir_timeout",
    "dcache_link_timeout",
    "dcache_clean_interval",
    "dcache_min_clean_interval",
    "max_readahead",
    "modules",
    "LogLevel",
    "IdentitiesOnly",
    "BatchMode",
    "PasswordAuthentication",
    "KbdInteractiveAuthentication",
    "AddressFamily",
    "TCPKeepAlive",
    "ForwardAgent",
    "ForwardX11",
    "RequestTTY",
];

fn secs(key: &str, v: &str) -> Result<Duration, String> {
    let f: f64 = v
        .parse()
        .map_err(|_| format!("option {key}={v}: expected a number of seconds"))?;
    if !(0.0..=1e9).contains(&f) {
        return Err(format!("option {key}={v}: out of range"));
    }
    Ok(Duration::from_secs_f64(f))
}

fn uint<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("option {key}={v}: expected a number"))
}

fn yes_no(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err(format!("option {key}={v}: expected yes or no")),
    }
}

/// Splits `[user@]host:[path]`.
pub fn parse_source(source: &str) -> Result<(Option<String>, String, String), String> {
    let source = source.strip_prefix("mastofs#").unwrap_or(source);
    let (userhost, path) = if let Some(rest) = source.strip_prefix('[') {
        // [ipv6]:path
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad source '{source}': unclosed ["))?;
        let path = after
            .strip_prefix(':')
            .ok_or_else(|| format!("bad source '{source}': expected [host]:path"))?;
        (host.to_string(), path.to_string())
    } else {
        let (a, b) = source
            .split_once(':')
            .ok_or_else(|| format!("bad source '{source}': expected [user@]host:[path]"))?;
        (a.to_string(), b.to_string())
    };
    let (user, host) = match userhost.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, userhost),
    };
    if host.is_empty() {
        return Err(format!("bad source '{source}': no host"));
    }
    Ok((user, host, path))
}

/// Parses the comma-separated `-o` lists into `cfg`.
pub fn apply_options(cfg: &mut MountConfig, opts: &[String], sloppy: bool) -> Result<(), String> {
    let mut idmap_mode = "none".to_string();
    let (mut uid, mut gid, mut umask) = (None, None, 0u32);
    let (mut uidfile, mut gidfile) = (None, None);
    let mut cache_ttl: Option<Duration> = None;
    let mut cache_on = true;
    for list in opts {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == key) {
                return Err(format!("option {key} is not supported by mastofs: {why}"));
            }
            let need = || value.ok_or_else(|| format!("option {key} needs a value ({key}=...)"));
            match (key, value) {
                ("uid", Some(v)) => {
                    uid = Some(idmap::resolve_user(v).map_err(|e| format!("option uid: {e}"))?)
                }
                ("gid", Some(v)) => {
                    gid = Some(idmap::resolve_group(v).map_err(|e| format!("option gid: {e}"))?)
                }
                ("umask", Some(v)) => {
                    umask = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            format!("option umask={v}: expected an octal mode such as 0027")
                        })?
                }
                ("idmap", Some(v)) => match v {
                    "none" | "user" | "file" => idmap_mode = v.to_string(),
                    _ => return Err(format!("option idmap={v}: expected none, user or file")),
                },
                ("uidfile", Some(v)) => uidfile = Some(PathBuf::from(v)),
                ("gidfile", Some(v)) => gidfile = Some(PathBuf::from(v)),
                ("nomap", Some("ignore" | "error")) => {}
                ("transform_symlinks", None) => cfg.fs.transform_symlinks = true,
                ("follow_symlinks", None) => cfg.fs.follow_symlinks = true,
                ("_netdev", None) => cfg.netdev = true,
                ("contain_symlinks", None) => cfg.fs.contain_symlinks = true,
                ("no_contain_symlinks", None) => cfg.fs.contain_symlinks = false,
                ("allow_other", None) => cfg.allow_other = true,
                ("allow_root", None) => cfg.allow_root = true,
                ("default_permissions", None) => cfg.default_permissions = true,
                // As mount(8): the last of ro and rw wins.
                ("ro", None) => cfg.read_only = true,
                ("rw", None) => cfg.read_only = false,
                ("nosuid", None) => cfg.nosuid = true,
                ("nodev", None) => cfg.nodev = true,
                ("noexec", None) => cfg.noexec = true,
                ("noatime", None) => cfg.noatime = true,
                ("delay_connect", None) => cfg.delay_connect = true,
                ("disable_hardlink", None) => cfg.fs.disable_hardlink = true,
                ("sshfs_sync" | "sync_write", None) => cfg.write_behind = 0,
                ("write_behind", _) => {
                    let mib: usize = uint(key, need()?)?;
                    if mib > 1024 {
                        return Err(format!("option write_behind={mib}: at most 1024 (MiB)"));
                    }
                    cfg.write_behind = mib << 20;
                }
                ("timeout", _) => {
                    cfg.timeout = secs(key, need()?)?;
                    if cfg.timeout.is_zero() {
                        return Err("option timeout=0: must be at least 1 second".into());
                    }
                }
                ("attr_timeout", _) => cfg.fs.attr_ttl = secs(key, need()?)?,
                ("entry_timeout", _) => cfg.fs.entry_ttl = secs(key, need()?)?,
                ("negative_timeout", _) => cfg.fs.negative_ttl = secs(key, need()?)?,
                ("dir_timeout" | "cache_dir_timeout", _) => cfg.fs.dir_ttl = secs(key, need()?)?,
                ("cache_link_timeout", _) => {
                    secs(key, need()?)?;
                }
                ("cache_timeout" | "cache_stat_timeout", _) => {
                    cache_ttl = Some(secs(key, need()?)?)
                }
                ("cache", _) => cache_on = yes_no(key, need()?)?,
                ("max_conns", _) => {
                    let n: u32 = uint(key, need()?)?;
                    if !(1..=10).contains(&n) {
                        return Err(format!("option max_conns={n}: must be between 1 and 10"));
                    }
                    cfg.max_conns = n;
                }
                ("sftp_sessions", _) => match need()? {
                    "auto" => cfg.sftp_sessions = SftpSessions::Auto,
                    v => {
                        let n: usize = uint(key, v)?;
                        if !(1..=MAX_SESSIONS).contains(&n) {
                            return Err(format!(
                                "option sftp_sessions={n}: auto or 1..={MAX_SESSIONS}"
                            ));
                        }
                        cfg.sftp_sessions = SftpSessions::Fixed(n);
                    }
                },
                ("Port" | "port", _) => cfg.ssh.port = Some(uint(key, need()?)?),
                ("User", _) => cfg.ssh.user = Some(need()?.to_string()),
                ("IdentityFile", _) => cfg.ssh.identity_files.push(PathBuf::from(need()?)),
                ("ServerAliveInterval", _) => {
                    cfg.ssh.server_alive_interval = Some(uint(key, need()?)?)
                }
                ("ServerAliveCountMax", _) => {
                    cfg.ssh.server_alive_count_max = Some(uint(key, need()?)?)
                }
                ("ConnectTimeout", _) => cfg.ssh.connect_timeout = Some(uint(key, need()?)?),
                ("StrictHostKeyChecking", _) => {
                    let v = need()?;
                    cfg.ssh.strict_host_key_checking =
                        Some(StrictMode::parse(v).ok_or_else(|| {
                            format!(
                                "option StrictHostKeyChecking={v}: expected yes, accept-new or no"
                            )
                        })?)
                }
                ("UserKnownHostsFile", _) => cfg
                    .ssh
                    .known_hosts_files
                    .extend(need()?.split_whitespace().map(PathBuf::from)),
                ("Ciphers", _) => cfg.ssh.ciphers = Some(need()?.to_string()),
                ("ssh_config", _) => cfg.ssh.config_file = Some(PathBuf::from(need()?)),
                ("Compression", _) => {
                    if yes_no(key, need()?)? {
                        return Err("option Compression=yes is not supported by mastofs".into());
                    }
                }
                ("PreferredAuthentications", _) => {
                    if !need()?.split(',').any(|m| m == "publickey") {
                        return Err("option PreferredAuthentications: mastofs authenticates with publickey only".into());
                    }
                }
                ("fsname", Some(v)) => cfg.fsname = Some(v.to_string()),
                ("status_socket", _) => cfg.status_socket = Some(PathBuf::from(need()?)),
                ("status_group", Some(v)) => {
                    cfg.status_group = Some(
                        idmap::resolve_group(v).map_err(|e| format!("option status_group: {e}"))?,
                    )
                }
                ("metrics_listen", _) => {
                    let v = need()?;
                    cfg.metrics_listen = Some(
                        v.parse()
                            .map_err(|_| format!("option metrics_listen={v}: expected ADDRESS:PORT such as 127.0.0.1:9843"))?,
                    )
                }
                (k, None) if IGNORED.contains(&k) => {}
                (k, Some(_)) if IGNORED_WITH_VALUE.contains(&k) => {}
                (k, _) if k.starts_with("x-") || k.starts_with("comment") => {}
                _ if sloppy => {
                    tracing::warn!(option = opt, "ignoring unknown option (sloppy mount)")
                }
                _ => return Err(format!("unknown option '{opt}'")),
            }
        }
    }
    if !cache_on {
        cfg.fs.attr_ttl = Duration::ZERO;
        cfg.fs.entry_ttl = Duration::ZERO;
        cfg.fs.negative_ttl = Duration::ZERO;
        cfg.fs.dir_ttl = Duration::ZERO;
    } else if let Some(t) = cache_ttl {
        cfg.fs.attr_ttl = t;
        cfg.fs.entry_ttl = t;
        cfg.fs.dir_ttl = t;
    }
    let mut map = IdMap::new(uid, gid, umask);
    match idmap_mode.as_str() {
        "user" => cfg.fs.idmap_user = true,
        "file" => {
            let uids = match &uidfile {
                Some(p) => idmap::read_map_file(p, idmap::resolve_user)
                    .map_err(|e| format!("option uidfile: {e}"))?,
                None => Default::default(),
            };
            let gids = match &gidfile {
                Some(p) => idmap::read_map_file(p, idmap::resolve_group)
                    .map_err(|e| format!("option gidfile: {e}"))?,
                None => Default::default(),
            };
            if uidfile.is_none() && gidfile.is_none() {
                return Err("option idmap=file needs uidfile= and/or gidfile=".into());
            }
            map = map.with_maps(uids, gids);
        }
        _ => {}
    }
    cfg.fs.idmap = map;
    Ok(())
}

impl MountConfig {
    /// A config for `source` on `mountpoint` with defaults, before options.
    pub fn new(source: &str, mountpoint: PathBuf) -> Result<Self, String> {
        let (spec_user, host, remote_path) = parse_source(source)?;
        Ok(MountConfig {
            fs: FsConfig {
                root: remote_path.clone(),
                ..Default::default()
            },
            spec_user,
            host,
            remote_path,
            mountpoint,
            ssh: Overrides::default(),
            delay_connect: false,
            netdev: false,
            unreachable_ok: false,
            timeout: Duration::from_secs(180),
            max_conns: 1,
            sftp_sessions: SftpSessions::Auto,
            write_behind: 32 << 20,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            read_only: false,
            nosuid: false,
            nodev: false,
            noexec: false,
            noatime: false,
            fsname: None,
            status_socket: None,
            status_group: None,
            metrics_listen: None,
        })
    }

    /// The name shown in /proc/mounts.
    pub fn source(&self) -> String {
        self.fsname
            .clone()
            .unwrap_or_else(|| match &self.spec_user {
                Some(u) => format!("{u}@{}:{}", self.host, self.remote_path),
                None => format!("{}:{}", self.host, self.remote_path),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &str) -> Result<MountConfig, String> {
        let mut c = MountConfig::new("box:/home/media", "/mnt/x".into())?;
        apply_options(&mut c, &[opts.to_string()], false)?;
        Ok(c)
    }

    #[test]
    fn the_fstab_line_parses() {
        let c = parse(
            "delay_connect,_netdev,user,idmap=user,transform_symlinks,allow_other,\
             default_permissions,reconnect,uid=root,gid=root",
        )
        .unwrap();
        assert!(c.delay_connect && c.allow_other && c.default_permissions);
        assert!(c.fs.transform_symlinks && c.fs.idmap_user);
        assert_eq!(c.fs.idmap.force_uid, Some(0));
        assert_eq!(
            (c.host.as_str(), c.remote_path.as_str()),
            ("box", "/home/media")
        );
    }

    #[test]
    fn the_last_of_ro_and_rw_wins_and_netdev_is_noted() {
        assert!(!parse("ro,rw").unwrap().read_only);
        assert!(parse("rw,ro").unwrap().read_only);
        assert!(parse("_netdev").unwrap().netdev && !parse("rw").unwrap().netdev);
        assert!(!parse("no_contain_symlinks").unwrap().fs.contain_symlinks);
        assert!(
            parse("").unwrap().fs.contain_symlinks,
            "containment is the default"
        );
    }

    #[test]
    fn numbers_umask_and_ssh_options() {
        let c = parse(
            "uid=70,gid=70,umask=0027,Port=23,IdentityFile=/k,ServerAliveInterval=15,timeout=5",
        )
        .unwrap();
        assert_eq!(
            (c.fs.idmap.force_uid, c.fs.idmap.force_gid),
            (Some(70), Some(70))
        );
        assert_eq!(c.fs.idmap.umask, 0o027);
        assert_eq!(c.ssh.port, Some(23));
        assert_eq!(c.ssh.identity_files, vec![PathBuf::from("/k")]);
        assert_eq!(c.ssh.server_alive_interval, Some(15));
        assert_eq!(c.timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_and_refused_options_are_errors() {
        assert_eq!(
            parse("frobnicate").unwrap_err(),
            "unknown option 'frobnicate'"
        );
        let e = parse("ssh_command=ssh -v").unwrap_err();
        assert!(
            e.contains("ssh_command") && e.contains("not supported"),
            "{e}"
        );
        assert!(parse("uid=no-such-user-xyz")
            .unwrap_err()
            .contains("no-such-user-xyz"));
        assert!(parse("umask=999").unwrap_err().contains("octal"));
        assert!(parse("max_conns=50").is_err());
        assert_eq!(parse("max_conns=4").unwrap().max_conns, 4);
        assert_eq!(parse("").unwrap().sftp_sessions, SftpSessions::Auto);
        assert_eq!(
            parse("sftp_sessions=1").unwrap().sftp_sessions,
            SftpSessions::Fixed(1)
        );
        assert_eq!(
            parse("sftp_sessions=auto").unwrap().sftp_sessions,
            SftpSessions::Auto
        );
        assert!(parse("sftp_sessions=0").is_err());
        assert!(parse("sftp_sessions=9").is_err());
        assert!(parse("sftp_sessions=many").is_err());
        assert_eq!(parse("sshfs_sync").unwrap().write_behind, 0);
        assert_eq!(parse("write_behind=8").unwrap().write_behind, 8 << 20);
        assert!(parse("write_behind=5000").is_err());
        assert!(parse("timeout").unwrap_err().contains("needs a value"));
    }

    #[test]
    fn systemd_and_mount_bookkeeping_is_accepted() {
        parse("x-systemd.automount,x-systemd.requires=network-online.target,comment=x,nofail,noauto,defaults,rw,user=alice").unwrap();
    }

    #[test]
    fn sloppy_ignores_unknown() {
        let mut c = MountConfig::new("h:", "/m".into()).unwrap();
        apply_options(&mut c, &["whatever".into()], true).unwrap();
    }

    #[test]
    fn sources() {
        assert_eq!(
            parse_source("u@h:/p").unwrap(),
            (Some("u".into()), "h".into(), "/p".into())
        );
        assert_eq!(parse_source("h:").unwrap(), (None, "h".into(), "".into()));
        assert_eq!(
            parse_source("[::1]:x").unwrap(),
            (None, "::1".into(), "x".into())
        );
        assert!(parse_source("nohost").is_err());
        assert_eq!(parse_source("mastofs#h:/p").unwrap().1, "h");
    }

    #[test]
    fn cache_options() {
        assert!(parse("disable_hardlink").unwrap().fs.disable_hardlink);
        let c = parse("cache=no").unwrap();
        assert!(c.fs.attr_ttl.is_zero());
        let c = parse("cache_timeout=3,negative_timeout=1.5").unwrap();
        assert_eq!(c.fs.attr_ttl, Duration::from_secs(3));
        assert_eq!(c.fs.negative_ttl, Duration::from_millis(1500));
    }
}
