//! The command line: argv[0] dispatch (`mastofs`, `mount.mastofs`, `mount.fuse.mastofs`),
//! parsing it, and running what it asks (mount, status, upgrade). It must never hold
//! filesystem logic: it configures [`crate::mount`] and hands over.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::handover::Start;
use crate::options::MountConfig;
use crate::{daemon, handover, logging, mount, mountpoint, name_bytes, options, ssh, status};

const USAGE: &str = "\
usage: mastofs [user@]host:[path] MOUNTPOINT [-o opt[,opt...]] [-p PORT] [-F ssh_config] [-f] [-d]
       mount.mastofs SOURCE MOUNTPOINT [-sfnv] [-o opts]
       mastofs status [MOUNTPOINT|--all] [--json] [--socket PATH]
       mastofs sync MOUNTPOINT [--timeout SECS]   (waits until cache_writeback=on has nothing pending)
       mastofs upgrade MOUNTPOINT [-f]   (this binary takes over the running mount)
       mastofs --version | --help

  -o OPTS   mount options (sshfs-compatible; see mastofs(8))
  -p PORT   SSH port (overrides ssh_config)
  -F FILE   ssh_config file to use instead of ~/.ssh/config
  -f        stay in the foreground (as mount helper: fake, do not mount)
  -d        debug logging (implies -f)
  -s        single-threaded (accepted for sshfs compatibility; as mount helper: sloppy)
";

/// What the command line asks for.
struct Cli {
    source: String,
    mountpoint: PathBuf,
    opts: Vec<String>,
    port: Option<u16>,
    config_file: Option<PathBuf>,
    foreground: bool,
    debug: bool,
    fake: bool,
    sloppy: bool,
    /// Run as the mount(8) helper (`mount.mastofs`, `mount.fuse.mastofs`).
    helper: bool,
}

enum Command {
    Mount(Cli),
    Help,
    Version,
}

/// Parses the command line (arguments are bytes: a mountpoint need not be UTF-8; the
/// source's remote path is kept losslessly, see `name_bytes`; options must be UTF-8).
fn parse_args(args: &[OsString], helper: bool) -> Result<Command, String> {
    let mut positional: Vec<&OsStr> = Vec::new();
    let mut cli = Cli {
        source: String::new(),
        mountpoint: PathBuf::new(),
        opts: Vec::new(),
        port: None,
        config_file: None,
        foreground: false,
        debug: false,
        fake: false,
        sloppy: false,
        helper,
    };
    let utf8 = |a: &OsStr| -> Result<String, String> {
        a.to_str()
            .map(str::to_string)
            .ok_or_else(|| format!("argument '{}' is not valid UTF-8", a.to_string_lossy()))
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(a) = arg.to_str().filter(|a| a.starts_with('-') && a.len() > 1) else {
            positional.push(arg);
            continue;
        };
        let mut value = |flag: &str, joined: &str| -> Result<String, String> {
            if !joined.is_empty() {
                return Ok(joined.to_string());
            }
            utf8(
                it.next()
                    .ok_or_else(|| format!("option {flag} needs an argument"))?,
            )
        };
        match a {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-o" => cli.opts.push(value("-o", "")?),
            s if s.starts_with("-o") => cli.opts.push(value("-o", &s[2..])?),
            "-p" => {
                cli.port = Some(
                    value("-p", "")?
                        .parse()
                        .map_err(|_| "option -p needs a port number")?,
                )
            }
            "-F" => {
                let f = it.next().ok_or("option -F needs an argument")?;
                cli.config_file = Some(PathBuf::from(f));
            }
            "-t" | "-N" if helper => {
                value(a, "")?;
            }
            s if !s.starts_with("--") => {
                for c in s[1..].chars() {
                    match (c, helper) {
                        ('f', true) => cli.fake = true,
                        ('f', false) => cli.foreground = true,
                        ('d', _) => {
                            cli.debug = true;
                            cli.foreground = true;
                        }
                        ('s', true) => cli.sloppy = true,
                        ('s' | 'C', false) => {}
                        ('n' | 'v', true) => {}
                        _ => return Err(format!("unknown flag -{c}")),
                    }
                }
            }
            s => return Err(format!("unknown flag {s}")),
        }
    }
    match positional[..] {
        [source, mountpoint] => {
            cli.mountpoint = PathBuf::from(mountpoint);
            cli.source = name_bytes::decode(source.as_bytes());
            Ok(Command::Mount(cli))
        }
        [] => Err("missing source and mountpoint".into()),
        [_] => Err("missing mountpoint".into()),
        [_, _, extra, ..] => Err(format!("unexpected argument '{}'", extra.to_string_lossy())),
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("{}", logging::fatal_line(&msg.to_string()));
    std::process::exit(1);
}

/// The program.
pub fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let helper = is_helper(&args);
    match args.get(1).and_then(|a| a.to_str()) {
        Some("status") if !helper => std::process::exit(status::client::run(&args[2..])),
        Some("sync") if !helper => std::process::exit(status::sync::run(&args[2..])),
        Some("upgrade") if !helper => return upgrade(&args[2..]),
        _ => {}
    }
    let cli = match parse_args(&args[1.min(args.len())..], helper) {
        Ok(Command::Help) => {
            print!("{USAGE}\n{}", options::help());
            return;
        }
        Ok(Command::Version) => {
            println!("mastofs {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Ok(Command::Mount(cli)) => cli,
        Err(e) => {
            eprintln!("mastofs: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    logging::init(cli.debug);
    let mut cfg = configure(&cli).unwrap_or_else(|e| fail(e));
    // A connection a previous daemon left in the service manager's store is taken over;
    // the mountpoint is not touched then (nobody serves it until we do).
    let stored = if cli.fake {
        None
    } else {
        handover::store::take(&cfg.mountpoint)
    };
    let source = match stored {
        Some(inherited) => {
            cfg.mountpoint = std::path::absolute(&cfg.mountpoint).unwrap_or(cfg.mountpoint);
            mount::Source::Stored(inherited)
        }
        None => {
            let (canon, recovered) =
                mountpoint::check(&cfg.mountpoint, !cli.fake).unwrap_or_else(|e| fail(e));
            cfg.mountpoint = canon;
            mount::Source::New(if recovered {
                Start::AfterDeadMount
            } else {
                Start::Fresh
            })
        }
    };
    serve(cli, cfg, source, args);
}

/// The mount's configuration from the command line (mountpoint not yet checked).
fn configure(cli: &Cli) -> Result<MountConfig, String> {
    let mut cfg = MountConfig::new(&cli.source, cli.mountpoint.clone())?;
    options::apply_options(&mut cfg, &cli.opts, cli.sloppy)?;
    // mount(8) runs the helper for fstab lines; one without _netdev is mounted by systemd
    // before the network is up.
    cfg.unreachable_ok = cli.helper && !cfg.netdev;
    if cli.port.is_some() {
        cfg.ssh.port = cli.port;
    }
    if cli.config_file.is_some() {
        cfg.ssh.config_file = cli.config_file.clone();
    }
    Ok(cfg)
}

/// Resolves the SSH target, daemonizes unless in the foreground, and serves the mount.
fn serve(cli: Cli, cfg: MountConfig, source: mount::Source, args: Vec<OsString>) {
    let target = ssh::config::resolve(&cfg.host, cfg.spec_user.as_deref(), &cfg.ssh)
        .unwrap_or_else(|e| fail(e));
    if cli.fake {
        return;
    }
    let mut ready = if cli.foreground {
        daemon::Ready::none()
    } else {
        daemon::daemonize().unwrap_or_else(|e| fail(e))
    };
    if let Err(e) = mount::run(cfg, target, source, args, &mut ready) {
        ready.fail(&e);
        fail(e);
    }
}

/// `mastofs upgrade MOUNTPOINT [-f] [-d]`: this binary takes over the mount from the
/// daemon serving it, with that daemon's options.
fn upgrade(rest: &[OsString]) {
    let (mut foreground, mut debug, mut mp) = (false, false, None);
    for a in rest {
        match a.to_str() {
            Some("-f") => foreground = true,
            Some("-d") => (debug, foreground) = (true, true),
            Some("-h" | "--help") => {
                print!("{USAGE}");
                return;
            }
            _ if !a.as_bytes().starts_with(b"-") && mp.is_none() => mp = Some(PathBuf::from(a)),
            _ => {
                eprintln!(
                    "mastofs: upgrade: unexpected argument '{}'\n{USAGE}",
                    a.to_string_lossy()
                );
                std::process::exit(2);
            }
        }
    }
    let Some(mp) = mp else {
        eprintln!("mastofs: upgrade: missing mountpoint\n{USAGE}");
        std::process::exit(2);
    };
    logging::init(debug);
    let mp = std::path::absolute(&mp).unwrap_or(mp);
    let incoming = handover::upgrade::connect(&mp).unwrap_or_else(|e| fail(e));
    if incoming.service {
        return upgrade_service(incoming, &mp);
    }
    let args = incoming.args.clone();
    let helper = is_helper(&args);
    let mut cli = match parse_args(&args[1.min(args.len())..], helper) {
        Ok(Command::Mount(cli)) => cli,
        _ => fail("the running daemon's command line does not parse any more"),
    };
    cli.foreground = foreground;
    cli.fake = false;
    let mut cfg = configure(&cli).unwrap_or_else(|e| fail(e));
    cfg.mountpoint = incoming.mountpoint.clone();
    serve(cli, cfg, mount::Source::Upgrade(incoming), args);
}

/// `mastofs upgrade` of a daemon its service manager runs: it hands over to the store and
/// exits; success is reported only once the successor the service manager starts serves
/// (`/status` answers with a new `daemon_pid`), with how long the mount paused.
fn upgrade_service(incoming: handover::upgrade::Incoming, mp: &Path) {
    let helper = is_helper(&incoming.args);
    let socket = match parse_args(&incoming.args[1.min(incoming.args.len())..], helper) {
        Ok(Command::Mount(cli)) => configure(&cli).ok().and_then(|c| c.status_socket),
        _ => None,
    }
    .unwrap_or_else(|| status::default_socket(mp));
    let (old, patience) = (incoming.pid(), incoming.patience());
    let asked = std::time::Instant::now();
    incoming
        .trigger_service_restart()
        .unwrap_or_else(|e| fail(e));
    let handed = asked.elapsed();
    let limit = patience + std::time::Duration::from_secs(60);
    loop {
        if let Ok(v) = status::client::fetch(&socket) {
            let pid = v.get("daemon_pid").and_then(|p| p.as_u64()).unwrap_or(0);
            if pid != 0 && pid != u64::from(old) {
                let how = v
                    .get("daemon_start")
                    .and_then(|s| s.as_str())
                    .filter(|s| !s.chars().any(char::is_control))
                    .unwrap_or("-");
                println!(
                    "mastofs: {}: upgraded through the service manager: new daemon {pid} ({how}) serves; \
                     the mount paused {:.1} s ({:.1} s of it handing over)",
                    mp.display(),
                    asked.elapsed().as_secs_f64(),
                    handed.as_secs_f64()
                );
                return;
            }
        }
        if asked.elapsed() > limit {
            fail(format!(
                "{}: the old daemon handed over to the service manager, but no new daemon \
                 serves after {} s (is the unit restarting? see journalctl -u 'mastofs@*')",
                mp.display(),
                limit.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether argv[0] names the mount helper (`mount.mastofs`, `mount.fuse.mastofs`).
fn is_helper(args: &[OsString]) -> bool {
    args.first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|f| f.as_bytes().starts_with(b"mount."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn sshfs_style() {
        let Command::Mount(c) =
            parse_args(&args("box:/p /mnt -o a,b -oc -p 23 -F /cfg -f"), false).unwrap()
        else {
            panic!("not a mount")
        };
        assert_eq!(
            (c.source.as_str(), c.mountpoint.as_path()),
            ("box:/p", Path::new("/mnt"))
        );
        assert_eq!(c.opts, vec!["a,b".to_string(), "c".to_string()]);
        assert_eq!(c.port, Some(23));
        assert!(c.foreground && !c.fake);
    }

    #[test]
    fn helper_style_f_is_fake() {
        let Command::Mount(c) = parse_args(&args("box:/p /mnt -sfnv -o rw"), true).unwrap() else {
            panic!("not a mount")
        };
        assert!(c.fake && c.sloppy && !c.foreground);
    }

    #[test]
    fn a_mountpoint_is_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let mut a = args("box:/p");
        a.push(OsString::from_vec(b"/mnt/\xffx".to_vec()));
        let Command::Mount(c) = parse_args(&a, false).unwrap() else {
            panic!("not a mount")
        };
        assert_eq!(c.mountpoint.as_os_str().as_bytes(), b"/mnt/\xffx");
        a.push(OsString::from_vec(b"-o\xff".to_vec()));
        assert!(parse_args(&a, false).is_err(), "options must be UTF-8");
    }

    #[test]
    fn errors() {
        let err = |s: &str| parse_args(&args(s), false).err().unwrap_or_default();
        assert_eq!(err("box:/p"), "missing mountpoint");
        assert!(err("box:/p /m -x").contains("-x"));
        assert!(err("box:/p /m -o").contains("needs an argument"));
    }
}
