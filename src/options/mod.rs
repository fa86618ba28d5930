//! `-o` options: mount(8)/fstab, sshfs and mastofs options -> a typed [`MountConfig`].
//!
//! Every option is declared once, in [`table::OPTIONS`] (name, value, default, doc line,
//! what mastofs does with another tool's option, and how it applies); this module runs the
//! lists through it. An unknown option is an error naming it; an option mastofs cannot
//! honour is an error saying so. It only parses; it never connects or mounts.

pub mod table;

use std::path::PathBuf;
use std::time::Duration;

use crate::cache::{CacheConfig, WritebackConfig};
use crate::fs::idmap::{self, IdMap};
use crate::fs::FsConfig;
use crate::session::sftp_sessions::SftpSessions;
use crate::ssh::Overrides;

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
    /// Bytes of writes that may be acknowledged before the server confirmed them. 8 MiB
    /// covers 200 MB/s at 40 ms round trip; more buys no speed, and the daemon holds about
    /// twice what is on its way (the data, and its SSH packets).
    pub write_behind: usize,
    /// The local disk cache (`cache=DIR`), if any.
    pub cache: Option<CacheConfig>,
    /// `cache_writeback=on` (needs `cache=DIR`), with `fsync=`.
    pub writeback: Option<WritebackConfig>,
    /// Read handles opened ahead at a lookup, at most (see `session::ahead`; 0: off).
    pub open_ahead: usize,
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

pub(crate) fn secs(key: &str, v: &str) -> Result<Duration, String> {
    let f: f64 = v
        .parse()
        .map_err(|_| format!("option {key}={v}: expected a number of seconds"))?;
    if !(0.0..=1e9).contains(&f) {
        return Err(format!("option {key}={v}: out of range"));
    }
    Ok(Duration::from_secs_f64(f))
}

/// `cache_size=` when not given: 1 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 1 << 30;

/// A size in bytes, with an optional K, M, G or T suffix (powers of 1024).
pub(crate) fn size(key: &str, v: &str) -> Result<u64, String> {
    let t = v.trim_end_matches(['B', 'b']).trim_end_matches(['i']);
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("option {key}={v}: expected a size such as 500M or 20G"))?;
    let bytes = n * (1u64 << shift) as f64;
    if !(1.0..=1e18).contains(&bytes) {
        return Err(format!("option {key}={v}: out of range"));
    }
    Ok(bytes as u64)
}

pub(crate) fn uint<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("option {key}={v}: expected a number"))
}

pub(crate) fn yes_no(key: &str, v: &str) -> Result<bool, String> {
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

/// What options set on their way to `cfg`: the parts that combine once all are read.
pub struct Parsing<'a> {
    cfg: &'a mut MountConfig,
    idmap: String,
    uid: Option<u32>,
    gid: Option<u32>,
    umask: u32,
    uidfile: Option<PathBuf>,
    gidfile: Option<PathBuf>,
    cache_ttl: Option<Duration>,
    cache_on: bool,
    disk_cache: Option<PathBuf>,
    cache_size: Option<u64>,
    cache_allow_tmpfs: bool,
    cache_writeback: bool,
    /// `fsync=local` (false) or `remote` (true, the default).
    fsync_remote: Option<bool>,
}

/// Parses the comma-separated `-o` lists into `cfg`, in order (the last of `ro`/`rw` wins,
/// as in mount(8)). `sloppy`: an unknown option is a warning (mount -s).
pub fn apply_options(cfg: &mut MountConfig, opts: &[String], sloppy: bool) -> Result<(), String> {
    let mut p = Parsing {
        cfg,
        idmap: "none".into(),
        uid: None,
        gid: None,
        umask: 0,
        uidfile: None,
        gidfile: None,
        cache_ttl: None,
        cache_on: true,
        disk_cache: None,
        cache_size: None,
        cache_allow_tmpfs: false,
        cache_writeback: false,
        fsync_remote: None,
    };
    let all = opts.iter().flat_map(|l| l.split(',')).map(str::trim);
    for opt in all.filter(|o| !o.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let Some(o) = table::find(key) else {
            if sloppy {
                tracing::warn!(option = opt, "ignoring unknown option (sloppy mount)");
                continue;
            }
            return Err(format!("unknown option '{opt}'"));
        };
        if let table::Does::Refused(why) = o.does {
            return Err(format!("option {key} is not supported by mastofs: {why}"));
        }
        let value = match (o.arg, value) {
            (table::Arg::Flag, Some(_)) => return Err(format!("option {key} takes no value")),
            (table::Arg::Value(_), None) => {
                return Err(format!("option {key} needs a value ({key}=...)"))
            }
            (_, v) => v.unwrap_or(""),
        };
        (o.apply)(&mut p, key, value)?;
    }
    p.finish()
}

impl Parsing<'_> {
    /// What options set together: the cache timeouts and the id map.
    fn finish(self) -> Result<(), String> {
        self.cfg.cache = match self.disk_cache {
            Some(dir) => Some(CacheConfig {
                dir,
                size: self.cache_size.unwrap_or(DEFAULT_CACHE_SIZE),
                allow_tmpfs: self.cache_allow_tmpfs,
            }),
            None if self.cache_size.is_some() || self.cache_writeback => {
                let which = match self.cache_size {
                    Some(_) => "cache_size=",
                    None => "cache_writeback=on",
                };
                return Err(format!(
                    "option {which} needs cache=DIR (a directory on local disk)"
                ));
            }
            None => None,
        };
        if self.fsync_remote.is_some() && !self.cache_writeback {
            return Err("option fsync= applies to cache_writeback=on only (without it every fsync reaches the server)".into());
        }
        self.cfg.writeback = self.cache_writeback.then_some(WritebackConfig {
            fsync_remote: self.fsync_remote.unwrap_or(true),
        });
        let fs = &mut self.cfg.fs;
        if !self.cache_on {
            fs.attr_ttl = Duration::ZERO;
            fs.entry_ttl = Duration::ZERO;
            fs.negative_ttl = Duration::ZERO;
            fs.dir_ttl = Duration::ZERO;
        } else if let Some(t) = self.cache_ttl {
            fs.attr_ttl = t;
            fs.entry_ttl = t;
            fs.dir_ttl = t;
        }
        let mut map = IdMap::new(self.uid, self.gid, self.umask);
        match self.idmap.as_str() {
            "user" => fs.idmap_user = true,
            "file" => {
                if self.uidfile.is_none() && self.gidfile.is_none() {
                    return Err("option idmap=file needs uidfile= and/or gidfile=".into());
                }
                let read = |f: &Option<PathBuf>, resolve, what| match f {
                    Some(p) => {
                        idmap::read_map_file(p, resolve).map_err(|e| format!("option {what}: {e}"))
                    }
                    None => Ok(Default::default()),
                };
                let uids = read(&self.uidfile, idmap::resolve_user, "uidfile")?;
                let gids = read(&self.gidfile, idmap::resolve_group, "gidfile")?;
                map = map.with_maps(uids, gids);
            }
            _ => {}
        }
        fs.idmap = map;
        Ok(())
    }
}

/// The options for `--help`: one line each, mastofs's and those that do something.
pub fn help() -> String {
    let mut out = String::from("options (-o), also in mastofs(8):\n");
    for o in table::OPTIONS {
        let shown = match o.does {
            table::Does::Same | table::Does::Mapped => true,
            table::Does::Ignored | table::Does::Refused(_) => false,
        };
        if !shown {
            continue;
        }
        let name = match o.arg {
            table::Arg::Value(v) => format!("{}={v}", o.names.join("|")),
            _ => o.names.join("|"),
        };
        let default = match o.default {
            "" => String::new(),
            d => format!(" (default {d})"),
        };
        out += &format!("  {name:<28} {}{default}\n", o.doc);
    }
    out += "  sshfs's and mount(8)'s other options are accepted and ignored, or refused with why\n";
    out
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
            write_behind: 8 << 20,
            open_ahead: crate::session::ahead::DEFAULT_MAX,
            cache: None,
            writeback: None,
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
    fn systemd_and_mount_bookkeeping_is_accepted_and_changes_nothing() {
        let book = parse(
            "x-systemd.automount,x-systemd.requires=network-online.target,comment=x,\
             nofail,noauto,defaults,rw,user=alice,user,kernel_cache,max_read=65536,LogLevel=ERROR",
        )
        .unwrap();
        assert_eq!(format!("{book:?}"), format!("{:?}", parse("").unwrap()));
    }

    #[test]
    fn sloppy_ignores_unknown_and_applies_the_rest() {
        let mut c = MountConfig::new("h:", "/m".into()).unwrap();
        apply_options(&mut c, &["whatever,ro".into()], true).unwrap();
        assert!(c.read_only, "the option after the unknown one applies");
        assert!(apply_options(&mut c, &["whatever".into()], false).is_err());
    }

    #[test]
    fn flags_take_no_value_and_values_need_one() {
        assert_eq!(
            parse("allow_other=1").unwrap_err(),
            "option allow_other takes no value"
        );
        assert!(parse("uid").unwrap_err().contains("needs a value"));
        assert!(parse("idmap=file").unwrap_err().contains("uidfile"));
        assert!(parse("nomap=maybe").is_err() && parse("nomap=error").is_ok());
    }

    #[test]
    fn every_name_is_declared_once_with_what_it_needs() {
        let mut seen = std::collections::HashSet::new();
        for o in table::OPTIONS {
            for n in o.names {
                assert!(seen.insert(*n), "{n} declared twice");
            }
            assert!(!o.doc.is_empty(), "{:?} has no doc line", o.names);
            if let table::Arg::Value(v) = o.arg {
                assert!(!v.is_empty(), "{:?}: no placeholder", o.names);
            }
        }
        assert!(help().contains("timeout=SECS") && help().contains("(default 180)"));
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
        // Write-back: on a cache directory only, fsync= with it only.
        let c = parse("cache=/var/cache/m,cache_writeback=on").unwrap();
        assert_eq!(c.writeback.map(|w| w.fsync_remote), Some(true));
        let c = parse("cache=/var/cache/m,cache_writeback=on,fsync=local").unwrap();
        assert_eq!(c.writeback.map(|w| w.fsync_remote), Some(false));
        assert!(parse("cache=/var/cache/m").unwrap().writeback.is_none());
        assert!(parse("cache_writeback=on")
            .unwrap_err()
            .contains("cache_writeback=on needs cache=DIR"));
        assert!(parse("cache=/var/cache/m,fsync=local")
            .unwrap_err()
            .contains("cache_writeback=on only"));
        assert!(parse("cache=/var/cache/m,cache_writeback=on,fsync=sometimes").is_err());
    }
}
