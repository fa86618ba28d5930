//! Every `-o` option, once: its names, whether it takes a value, its default, one line of
//! documentation, where it comes from and what mastofs does with it, and how it is applied.
//! The parser ([`super::apply_options`]), `--help`, and the checks of mastofs(8) and of the
//! README's sshfs table (`tests/docs.rs`) all read this table. It must never hold parsing
//! logic beyond one option's own value.

use std::path::PathBuf;

use super::{secs, size, uint, yes_no, Parsing};
use crate::fs::idmap;
use crate::session::sftp_sessions::{SftpSessions, MAX_SESSIONS};
use crate::ssh::StrictMode;

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// `name` alone.
    Flag,
    /// `name=VALUE`; the text is the value's placeholder.
    Value(&'static str),
    /// Either (accepted bookkeeping such as `user` and `user=NAME`).
    Any,
}

/// Where an option comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Mastofs,
    Sshfs,
    /// ssh's own `-o` options, which sshfs passes on.
    Ssh,
    /// mount(8), fstab and systemd.
    Mount,
}

/// What mastofs does with an option of another tool (the README's sshfs table says it in
/// the same words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Does {
    /// What it does there.
    Same,
    /// Carried onto mastofs's own equivalent.
    Mapped,
    /// Accepted, with no effect.
    Ignored,
    /// An error that says why.
    Refused(&'static str),
}

impl Does {
    /// The word the README's table starts a row with.
    pub fn word(self) -> &'static str {
        match self {
            Does::Same => "same",
            Does::Mapped => "mapped",
            Does::Ignored => "ignored",
            Does::Refused(_) => "refused",
        }
    }
}

type Apply = fn(&mut Parsing, &str, &str) -> Result<(), String>;

/// One option.
pub struct Opt {
    /// The option's name and its aliases; a trailing `*` matches any name it begins.
    pub names: &'static [&'static str],
    pub arg: Arg,
    /// The default, as the man page says it ("" when there is none to say).
    pub default: &'static str,
    pub doc: &'static str,
    pub from: From,
    pub does: Does,
    /// Applies the option (key, value; "" for a flag).
    pub(super) apply: Apply,
}

impl Opt {
    pub fn matches(&self, key: &str) -> bool {
        self.names.iter().any(|n| match n.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => *n == key,
        })
    }
}

fn nothing(_: &mut Parsing, _: &str, _: &str) -> Result<(), String> {
    Ok(())
}

const fn own(
    names: &'static [&'static str],
    arg: Arg,
    default: &'static str,
    doc: &'static str,
    apply: Apply,
) -> Opt {
    Opt {
        names,
        arg,
        default,
        doc,
        from: From::Mastofs,
        does: Does::Same,
        apply,
    }
}

const fn theirs(
    names: &'static [&'static str],
    arg: Arg,
    from: From,
    does: Does,
    doc: &'static str,
    apply: Apply,
) -> Opt {
    Opt {
        names,
        arg,
        default: "",
        doc,
        from,
        does,
        apply,
    }
}

const fn ignored(names: &'static [&'static str], arg: Arg, from: From, doc: &'static str) -> Opt {
    theirs(names, arg, from, Does::Ignored, doc, nothing)
}

const fn refused(names: &'static [&'static str], from: From, why: &'static str) -> Opt {
    theirs(names, Arg::Any, from, Does::Refused(why), why, nothing)
}

use Arg::{Any, Flag, Value};

/// Every option mastofs knows.
#[rustfmt::skip]
pub const OPTIONS: &[Opt] = &[
    // Who owns what the mount shows.
    theirs(&["uid"], Value("USER"), From::Sshfs, Does::Same, "show every file as owned by this user (name or number)",
        |p, k, v| { p.uid = Some(idmap::resolve_user(v).map_err(|e| format!("option {k}: {e}"))?); Ok(()) }),
    theirs(&["gid"], Value("GROUP"), From::Sshfs, Does::Same, "show every file as owned by this group (name or number)",
        |p, k, v| { p.gid = Some(idmap::resolve_group(v).map_err(|e| format!("option {k}: {e}"))?); Ok(()) }),
    theirs(&["umask"], Value("OCTAL"), From::Sshfs, Does::Same, "clear these permission bits from every mode shown",
        |p, _, v| {
            p.umask = u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o7777)
                .ok_or_else(|| format!("option umask={v}: expected an octal mode such as 0027"))?;
            Ok(())
        }),
    theirs(&["idmap"], Value("none|user|file"), From::Sshfs, Does::Same, "sshfs's id mapping: user shows the login's ids as the mounting user's; file reads uidfile=/gidfile=",
        |p, _, v| match v {
            "none" | "user" | "file" => { p.idmap = v.to_string(); Ok(()) }
            _ => Err(format!("option idmap={v}: expected none, user or file")),
        }),
    theirs(&["uidfile"], Value("FILE"), From::Sshfs, Does::Same, "idmap=file: NAME:ID lines for users",
        |p, _, v| { p.uidfile = Some(PathBuf::from(v)); Ok(()) }),
    theirs(&["gidfile"], Value("FILE"), From::Sshfs, Does::Same, "idmap=file: NAME:ID lines for groups",
        |p, _, v| { p.gidfile = Some(PathBuf::from(v)); Ok(()) }),
    theirs(&["nomap"], Value("ignore|error"), From::Sshfs, Does::Same, "idmap=file: what an unmapped id does",
        |_, _, v| match v {
            "ignore" | "error" => Ok(()),
            _ => Err(format!("option nomap={v}: expected ignore or error")),
        }),
    // Links.
    theirs(&["transform_symlinks"], Flag, From::Sshfs, Does::Same, "show absolute links inside the mount as relative ones",
        |p, _, _| { p.cfg.fs.transform_symlinks = true; Ok(()) }),
    theirs(&["follow_symlinks"], Flag, From::Sshfs, Does::Same, "show what links point to instead of the links",
        |p, _, _| { p.cfg.fs.follow_symlinks = true; Ok(()) }),
    theirs(&["contain_symlinks"], Flag, From::Sshfs, Does::Same, "(the default) a server's link that leads out of the mount gives EPERM; links that stay inside work",
        |p, _, _| { p.cfg.fs.contain_symlinks = true; Ok(()) }),
    theirs(&["no_contain_symlinks"], Flag, From::Sshfs, Does::Same, "pass every link target through: only for a trusted server",
        |p, _, _| { p.cfg.fs.contain_symlinks = false; Ok(()) }),
    // The kernel mount.
    theirs(&["allow_other"], Flag, From::Sshfs, Does::Same, "let other users use the mount",
        |p, _, _| { p.cfg.allow_other = true; Ok(()) }),
    theirs(&["allow_root"], Flag, From::Sshfs, Does::Same, "let root use the mount",
        |p, _, _| { p.cfg.allow_root = true; Ok(()) }),
    theirs(&["default_permissions"], Flag, From::Sshfs, Does::Same, "the kernel checks permissions against the modes shown",
        |p, _, _| { p.cfg.default_permissions = true; Ok(()) }),
    theirs(&["ro"], Flag, From::Mount, Does::Same, "read-only (the last of ro and rw wins)",
        |p, _, _| { p.cfg.read_only = true; Ok(()) }),
    theirs(&["rw"], Flag, From::Mount, Does::Same, "read-write (the last of ro and rw wins)",
        |p, _, _| { p.cfg.read_only = false; Ok(()) }),
    theirs(&["nosuid"], Flag, From::Mount, Does::Same, "kernel mount flag",
        |p, _, _| { p.cfg.nosuid = true; Ok(()) }),
    theirs(&["nodev"], Flag, From::Mount, Does::Same, "kernel mount flag",
        |p, _, _| { p.cfg.nodev = true; Ok(()) }),
    theirs(&["noexec"], Flag, From::Mount, Does::Same, "kernel mount flag",
        |p, _, _| { p.cfg.noexec = true; Ok(()) }),
    theirs(&["noatime"], Flag, From::Mount, Does::Same, "kernel mount flag",
        |p, _, _| { p.cfg.noatime = true; Ok(()) }),
    theirs(&["fsname"], Value("NAME"), From::Mount, Does::Same, "the source shown in /proc/mounts",
        |p, _, v| { p.cfg.fsname = Some(v.to_string()); Ok(()) }),
    theirs(&["_netdev"], Flag, From::Mount, Does::Same, "the mount needs the network (systemd orders it after); a helper run for a line without it mounts even when the server cannot be reached yet",
        |p, _, _| { p.cfg.netdev = true; Ok(()) }),
    // Connecting.
    theirs(&["reconnect"], Flag, From::Sshfs, Does::Ignored, "mastofs always reconnects, and replays what was in flight", nothing),
    theirs(&["delay_connect"], Flag, From::Sshfs, Does::Same, "mount at once, connect in the background",
        |p, _, _| { p.cfg.delay_connect = true; Ok(()) }),
    own(&["timeout"], Value("SECS"), "180", "how long an operation waits for a connection before it fails with EIO",
        |p, k, v| {
            p.cfg.timeout = secs(k, v)?;
            if p.cfg.timeout.is_zero() { return Err("option timeout=0: must be at least 1 second".into()); }
            Ok(())
        }),
    theirs(&["max_conns"], Value("N"), From::Sshfs, Does::Same, "SSH connections (1..=10, default 1): requests spread over them by path, a file's writes by the MiB",
        |p, k, v| {
            let n: u32 = uint(k, v)?;
            if !(1..=10).contains(&n) { return Err(format!("option max_conns={n}: must be between 1 and 10")); }
            p.cfg.max_conns = n;
            Ok(())
        }),
    own(&["sftp_sessions"], Value("auto|N"), "auto", "SFTP sessions per connection that carry writes (1..=8); auto: 4 on OpenSSH, 1 elsewhere",
        |p, k, v| {
            p.cfg.sftp_sessions = match v {
                "auto" => SftpSessions::Auto,
                v => {
                    let n: usize = uint(k, v)?;
                    if !(1..=MAX_SESSIONS).contains(&n) { return Err(format!("option sftp_sessions={n}: auto or 1..={MAX_SESSIONS}")); }
                    SftpSessions::Fixed(n)
                }
            };
            Ok(())
        }),
    // Writes and caches.
    own(&["write_behind"], Value("MIB"), "8", "at most this many MiB of writes acknowledged before the server confirmed them, across all files (failures reach flush, fsync and close); within it, the link's round trip x 1 GiB/s, at least 2 MiB",
        |p, k, v| {
            let mib: usize = uint(k, v)?;
            if mib > 1024 { return Err(format!("option write_behind={mib}: at most 1024 (MiB)")); }
            p.cfg.write_behind = mib << 20;
            Ok(())
        }),
    own(&["open_ahead"], Value("N"), "16", "read handles opened in the round trip of a lookup, for the open that follows (0: off)",
        |p, k, v| {
            let n: usize = uint(k, v)?;
            if n > 256 { return Err(format!("option open_ahead={n}: at most 256")); }
            p.cfg.open_ahead = n;
            Ok(())
        }),
    theirs(&["sshfs_sync", "sync_write"], Flag, From::Sshfs, Does::Mapped, "every write waits for the server (write_behind=0)",
        |p, _, _| { p.cfg.write_behind = 0; Ok(()) }),
    own(&["attr_timeout"], Value("SECS"), "20", "how long attributes are reused",
        |p, k, v| { p.cfg.fs.attr_ttl = secs(k, v)?; Ok(()) }),
    own(&["entry_timeout"], Value("SECS"), "20", "how long names are reused",
        |p, k, v| { p.cfg.fs.entry_ttl = secs(k, v)?; Ok(()) }),
    own(&["negative_timeout"], Value("SECS"), "0", "how long a missing name is reused",
        |p, k, v| { p.cfg.fs.negative_ttl = secs(k, v)?; Ok(()) }),
    own(&["dir_timeout"], Value("SECS"), "20", "how long a directory listing is reused; a directory this mount made holds only what it put there",
        |p, k, v| { p.cfg.fs.dir_ttl = secs(k, v)?; Ok(()) }),
    theirs(&["cache_dir_timeout"], Value("SECS"), From::Sshfs, Does::Mapped, "dir_timeout",
        |p, k, v| { p.cfg.fs.dir_ttl = secs(k, v)?; Ok(()) }),
    theirs(&["cache_timeout", "cache_stat_timeout"], Value("SECS"), From::Sshfs, Does::Mapped, "attr_timeout, entry_timeout and dir_timeout",
        |p, k, v| { p.cache_ttl = Some(secs(k, v)?); Ok(()) }),
    theirs(&["cache"], Value("yes|no|DIR"), From::Sshfs, Does::Mapped, "cache=no sets every cache timeout to 0; cache=/DIR (mastofs's own) keeps file contents on local disk there",
        |p, k, v| {
            if v.starts_with('/') {
                p.disk_cache = Some(PathBuf::from(v));
            } else {
                p.cache_on = yes_no(k, v).map_err(|_| format!("option cache={v}: expected yes, no or an absolute directory"))?;
            }
            Ok(())
        }),
    own(&["cache_size"], Value("SIZE"), "1G", "the most local disk the cache=DIR copies take (K, M, G, T suffixes); least recently used files go first",
        |p, k, v| { p.cache_size = Some(size(k, v)?); Ok(()) }),
    own(&["cache_allow_tmpfs"], Flag, "", "accept a cache=DIR on tmpfs (it takes memory, and is gone at reboot)",
        |p, _, _| { p.cache_allow_tmpfs = true; Ok(()) }),
    own(&["cache_writeback"], Value("on|off"), "off", "changes complete against cache=DIR and are uploaded behind, in order, through outages and crashes (see README: Write-back)",
        |p, k, v| { p.cache_writeback = yes_no(k, v)?; Ok(()) }),
    own(&["fsync"], Value("remote|local"), "remote", "with cache_writeback=on: fsync waits until the server has the file (remote; EIO past timeout=) or only until the local disk has it (local)",
        |p, k, v| {
            p.fsync_remote = Some(match v {
                "remote" => true,
                "local" => false,
                _ => return Err(format!("option {k}={v}: expected remote or local")),
            });
            Ok(())
        }),
    theirs(&["cache_link_timeout"], Value("SECS"), From::Sshfs, Does::Ignored, "link texts are cached with the attributes",
        |_, k, v| secs(k, v).map(|_| ())),
    theirs(&["disable_hardlink"], Flag, From::Sshfs, Does::Same, "link(2) fails with EPERM even where the server could",
        |p, _, _| { p.cfg.fs.disable_hardlink = true; Ok(()) }),
    // Status.
    own(&["status_socket"], Value("PATH"), "/run/mastofs/<escaped mountpoint>.sock", "the status socket (mode 0660)",
        |p, _, v| { p.cfg.status_socket = Some(PathBuf::from(v)); Ok(()) }),
    own(&["status_group"], Value("GROUP"), "", "the group that may read the status socket",
        |p, k, v| { p.cfg.status_group = Some(idmap::resolve_group(v).map_err(|e| format!("option {k}: {e}"))?); Ok(()) }),
    own(&["metrics_listen"], Value("ADDR:PORT"), "", "also serve /metrics, /health and /status over TCP",
        |p, _, v| {
            p.cfg.metrics_listen = Some(v.parse().map_err(|_| format!("option metrics_listen={v}: expected ADDRESS:PORT such as 127.0.0.1:9843"))?);
            Ok(())
        }),
    // ssh.
    own(&["ssh_config"], Value("FILE"), "~/.ssh/config", "the ssh_config to read (as -F; usable in fstab)",
        |p, _, v| { p.cfg.ssh.config_file = Some(PathBuf::from(v)); Ok(()) }),
    theirs(&["Port", "port"], Value("PORT"), From::Ssh, Does::Mapped, "overrides ssh_config",
        |p, k, v| { p.cfg.ssh.port = Some(uint(k, v)?); Ok(()) }),
    theirs(&["User"], Value("NAME"), From::Ssh, Does::Mapped, "overrides ssh_config",
        |p, _, v| { p.cfg.ssh.user = Some(v.to_string()); Ok(()) }),
    theirs(&["IdentityFile"], Value("FILE"), From::Ssh, Does::Mapped, "a key to offer (may repeat)",
        |p, _, v| { p.cfg.ssh.identity_files.push(PathBuf::from(v)); Ok(()) }),
    theirs(&["ServerAliveInterval"], Value("SECS"), From::Ssh, Does::Mapped, "keepalive interval",
        |p, k, v| { p.cfg.ssh.server_alive_interval = Some(uint(k, v)?); Ok(()) }),
    theirs(&["ServerAliveCountMax"], Value("N"), From::Ssh, Does::Mapped, "keepalives unanswered before the link counts as lost",
        |p, k, v| { p.cfg.ssh.server_alive_count_max = Some(uint(k, v)?); Ok(()) }),
    theirs(&["ConnectTimeout"], Value("SECS"), From::Ssh, Does::Mapped, "how long one connection attempt may take",
        |p, k, v| { p.cfg.ssh.connect_timeout = Some(uint(k, v)?); Ok(()) }),
    theirs(&["StrictHostKeyChecking"], Value("yes|accept-new|no"), From::Ssh, Does::Mapped, "what an unknown host key does",
        |p, _, v| {
            p.cfg.ssh.strict_host_key_checking = Some(StrictMode::parse(v)
                .ok_or_else(|| format!("option StrictHostKeyChecking={v}: expected yes, accept-new or no"))?);
            Ok(())
        }),
    theirs(&["UserKnownHostsFile"], Value("FILES"), From::Ssh, Does::Mapped, "known_hosts files, separated by spaces",
        |p, _, v| { p.cfg.ssh.known_hosts_files.extend(v.split_whitespace().map(PathBuf::from)); Ok(()) }),
    theirs(&["Ciphers"], Value("LIST"), From::Ssh, Does::Mapped, "the ciphers to offer",
        |p, _, v| { p.cfg.ssh.ciphers = Some(v.to_string()); Ok(()) }),
    theirs(&["Compression"], Value("no"), From::Ssh, Does::Ignored, "no is accepted; yes is refused",
        |_, k, v| if yes_no(k, v)? { Err("option Compression=yes is not supported by mastofs".into()) } else { Ok(()) }),
    theirs(&["PreferredAuthentications"], Value("LIST"), From::Ssh, Does::Ignored, "accepted when it names publickey, the one method mastofs uses",
        |_, _, v| if v.split(',').any(|m| m == "publickey") { Ok(()) } else { Err("option PreferredAuthentications: mastofs authenticates with publickey only".into()) }),
    ignored(&["BatchMode", "IdentitiesOnly", "PasswordAuthentication", "KbdInteractiveAuthentication", "LogLevel", "AddressFamily", "TCPKeepAlive", "ForwardAgent", "ForwardX11", "RequestTTY"],
        Value("VALUE"), From::Ssh, "ssh options that change nothing for mastofs (it never prompts; logging is -d and MASTOFS_LOG)"),
    // Bookkeeping and tuning, accepted.
    ignored(&["user", "users", "nouser", "owner", "group", "auto", "noauto", "nofail", "defaults", "exec", "suid", "dev", "async", "relatime", "subtype", "comment*", "x-*"],
        Any, From::Mount, "mount(8), fstab and systemd bookkeeping"),
    ignored(&["kernel_cache", "auto_cache", "no_readahead", "sync_readdir", "big_writes", "large_read", "noforget", "splice_read", "splice_write", "splice_move", "hard_remove", "use_ino", "readdir_ino", "no_check_root"],
        Flag, From::Sshfs, "sshfs and libfuse tuning: mastofs chooses its own"),
    ignored(&["max_read", "max_write", "max_readahead", "workaround", "dir_cache", "dcache_max_size", "dcache_timeout", "dcache_stat_timeout", "dcache_dir_timeout", "dcache_link_timeout", "dcache_clean_interval", "dcache_min_clean_interval", "modules"],
        Value("VALUE"), From::Sshfs, "sshfs and libfuse tuning: mastofs chooses its own"),
    // What mastofs cannot do.
    refused(&["ssh_command"], From::Sshfs, "mastofs speaks SSH itself and runs no ssh command"),
    refused(&["ssh_protocol"], From::Sshfs, "only SSH protocol 2 exists"),
    refused(&["sftp_server"], From::Sshfs, "mastofs uses the server's sftp subsystem"),
    refused(&["directport"], From::Sshfs, "mastofs needs an SSH server"),
    refused(&["password_stdin"], From::Sshfs, "password authentication is not supported; use a key"),
    refused(&["passive", "slave"], From::Sshfs, "mastofs does not run an sftp server"),
    refused(&["direct_io"], From::Sshfs, "mastofs keeps the page cache so that mmap works"),
    refused(&["ControlMaster", "ControlPath"], From::Ssh, "connection sharing is not supported"),
    refused(&["ProxyCommand", "ProxyJump"], From::Ssh, "proxies are not supported"),
];

/// The option named `key`.
pub fn find(key: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.matches(key))
}
