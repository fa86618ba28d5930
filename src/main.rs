//! mastofs: mount an SFTP storage box through FUSE, and keep it working when the network
//! does not.
//!
//! This file owns argv[0] dispatch (`mastofs`, `mount.mastofs`, `mount.fuse.mastofs`) and
//! command-line parsing. Layers, top to bottom: [`fuse`] (kernel adapter) -> [`fs`]
//! (filesystem logic) -> [`session`] (reconnect, replay) -> [`sftp`] (protocol) -> [`ssh`]
//! (connection). [`mount`] wires them together; [`options`] parses `-o`.

/// The tests' hostile SFTP server, for unit tests of the client and the session.
#[cfg(test)]
#[path = "../tests/hostile/server.rs"]
mod hostile;

mod daemon;
mod fd_passing;
mod fs;
mod fuse;
mod handover;
mod logging;
mod meta;
mod monitor;
mod mount;
mod mountpoint;
mod name_bytes;
mod options;
mod session;
mod sftp;
mod ssh;
mod status;

use std::path::{Path, PathBuf};

use handover::Start;
use options::MountConfig;

const USAGE: &str = "\
usage: mastofs [user@]host:[path] MOUNTPOINT [-o opt[,opt...]] [-p PORT] [-F ssh_config] [-f] [-d]
       mount.mastofs SOURCE MOUNTPOINT [-sfnv] [-o opts]
       mastofs status [MOUNTPOINT|--all] [--json] [--socket PATH]
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
}

enum Command {
    Mount(Cli),
    Help,
    Version,
}

fn parse_args(args: &[String], helper: bool) -> Result<Command, String> {
    let mut positional = Vec::new();
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
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str, joined: &str| -> Result<String, String> {
            if !joined.is_empty() {
                return Ok(joined.to_string());
            }
            it.next()
                .cloned()
                .ok_or_else(|| format!("option {flag} needs an argument"))
        };
        match a.as_str() {
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
            "-F" => cli.config_file = Some(PathBuf::from(value("-F", "")?)),
            "-t" | "-N" if helper => {
                value(a, "")?;
            }
            s if s.starts_with('-') && s.len() > 1 && !s.starts_with("--") => {
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
            s if s.starts_with("--") => return Err(format!("unknown flag {s}")),
            _ => positional.push(a.clone()),
        }
    }
    match positional.len() {
        2 => {
            cli.mountpoint = PathBuf::from(positional.pop().unwrap_or_default());
            cli.source = positional.pop().unwrap_or_default();
            Ok(Command::Mount(cli))
        }
        0 => Err("missing source and mountpoint".into()),
        1 => Err("missing mountpoint".into()),
        _ => Err(format!("unexpected argument '{}'", positional[2])),
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("mastofs: {msg}");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let helper = is_helper(&args);
    match args.get(1).map(String::as_str) {
        Some("status") if !helper => std::process::exit(status::client::run(&args[2..])),
        Some("upgrade") if !helper => return upgrade(&args[2..]),
        _ => {}
    }
    let cli = match parse_args(&args[1.min(args.len())..], helper) {
        Ok(Command::Help) => {
            print!("{USAGE}");
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
    if cli.port.is_some() {
        cfg.ssh.port = cli.port;
    }
    if cli.config_file.is_some() {
        cfg.ssh.config_file = cli.config_file.clone();
    }
    Ok(cfg)
}

/// Resolves the SSH target, daemonizes unless in the foreground, and serves the mount.
fn serve(cli: Cli, cfg: MountConfig, source: mount::Source, args: Vec<String>) {
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
fn upgrade(rest: &[String]) {
    let (mut foreground, mut debug, mut mp) = (false, false, None);
    for a in rest {
        match a.as_str() {
            "-f" => foreground = true,
            "-d" => (debug, foreground) = (true, true),
            "-h" | "--help" => {
                print!("{USAGE}");
                return;
            }
            s if !s.starts_with('-') && mp.is_none() => mp = Some(PathBuf::from(s)),
            s => {
                eprintln!("mastofs: upgrade: unexpected argument '{s}'\n{USAGE}");
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
        incoming
            .trigger_service_restart()
            .unwrap_or_else(|e| fail(e));
        println!(
            "mastofs: {}: handed over to the service manager, which starts the new binary",
            mp.display()
        );
        return;
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

/// Whether argv[0] names the mount helper (`mount.mastofs`, `mount.fuse.mastofs`).
fn is_helper(args: &[String]) -> bool {
    args.first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|f| f.to_string_lossy().starts_with("mount."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
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
    fn errors() {
        let err = |s: &str| parse_args(&args(s), false).err().unwrap_or_default();
        assert_eq!(err("box:/p"), "missing mountpoint");
        assert!(err("box:/p /m -x").contains("-x"));
        assert!(err("box:/p /m -o").contains("needs an argument"));
    }
}
