//! How mounts come and go: daemon mode, the mount(8) helper names, the fstab line,
//! unmounting and signals.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;

/// Pids of mastofs processes serving `mnt`.
fn daemons_for(mnt: &Path) -> Vec<u32> {
    let want = mnt.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z'));
        if !zombie
            && args.iter().any(|a| a == &want)
            && args.first().is_some_and(|a| a.contains("mastofs"))
        {
            pids.push(pid);
        }
    }
    pids
}

/// /usr/sbin/mount.fuse.mastofs pointing at the binary under test, for this test only
/// (left alone if a mastofs is installed there already).
struct HelperLink(Option<std::path::PathBuf>);

impl HelperLink {
    fn install() -> Self {
        let p = Path::new("/usr/sbin/mount.fuse.mastofs");
        if p.symlink_metadata().is_ok() {
            eprintln!("note: using the installed {}", p.display());
            return HelperLink(None);
        }
        std::os::unix::fs::symlink(BIN, p).expect("install mount helper link");
        HelperLink(Some(p.to_path_buf()))
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Unmounts `0` and kills its daemons on drop, so a failing test leaves nothing behind.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
        for pid in daemons_for(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn daemon_returns_when_mounted_and_exits_on_umount() {
    let s = Server::start();
    let mnt = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(mnt.path().to_path_buf());
    std::fs::write(s.served.join("f"), b"daemon").unwrap();
    let out = Command::new(BIN)
        .arg(s.source())
        .arg(mnt.path())
        .arg("-F")
        .arg(&s.ssh_config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The mount is live the moment the command returns.
    assert!(is_mounted(mnt.path()));
    assert_eq!(std::fs::read(mnt.path().join("f")).unwrap(), b"daemon");
    assert_eq!(daemons_for(mnt.path()).len(), 1);
    let st = Command::new("umount").arg(mnt.path()).status().unwrap();
    assert!(st.success());
    wait_until(Duration::from_secs(10), "daemon exit", || {
        daemons_for(mnt.path()).is_empty()
    });
}

#[test]
fn daemon_failure_is_reported_by_the_parent() {
    let s = Server::start();
    let mnt = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg(format!("box:{}/missing", s.served.display()))
        .arg(mnt.path())
        .arg("-F")
        .arg(&s.ssh_config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
    assert!(!is_mounted(mnt.path()));
}

#[test]
fn sigterm_unmounts_cleanly() {
    let s = Server::start();
    let mut m = Mount::new(&s, "");
    let pids = daemons_for(m.path());
    assert_eq!(pids.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), "unmount after SIGTERM", || {
        !is_mounted(m.path())
    });
    let st = m.unmount().expect("exit status");
    assert!(st.success(), "{st:?}");
}

#[test]
fn mount_helper_names() {
    let s = Server::start();
    let bin = tempfile::tempdir().unwrap();
    for name in ["mount.mastofs", "mount.fuse.mastofs"] {
        let helper = bin.path().join(name);
        std::os::unix::fs::symlink(BIN, &helper).unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(mnt.path().to_path_buf());
        // mount(8) calls: helper SOURCE MOUNTPOINT [-sfnv] -o OPTIONS; -f means "fake".
        let fake = Command::new(&helper)
            .arg(s.source())
            .arg(mnt.path())
            .args(["-f", "-o", "rw,_netdev"])
            .env("HOME", s.dir.path())
            .arg("-F")
            .arg(&s.ssh_config)
            .output()
            .unwrap();
        assert!(
            fake.status.success(),
            "{}",
            String::from_utf8_lossy(&fake.stderr)
        );
        assert!(!is_mounted(mnt.path()));
        let out = Command::new(&helper)
            .arg(s.source())
            .arg(mnt.path())
            .args(["-n", "-o", "rw,_netdev,nofail"])
            .arg("-F")
            .arg(&s.ssh_config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(mnt.path()));
        assert!(std::fs::read_dir(mnt.path()).is_ok());
        assert!(Command::new("fusermount3")
            .arg("-u")
            .arg(mnt.path())
            .status()
            .unwrap()
            .success());
        wait_until(Duration::from_secs(10), "daemon exit", || {
            daemons_for(mnt.path()).is_empty()
        });
    }
}

#[test]
fn the_fstab_line_mounts_with_mount() {
    assert!(
        user_exists("mastodon"),
        "the test needs a 'mastodon' user (see .ci/run)"
    );
    let s = Server::start();
    std::fs::write(s.served.join("media.png"), b"png").unwrap();
    // mount(8) runs helpers without HOME, so root's ~/.ssh/config would be read; the test
    // points at its own ssh_config with the one option it adds to the admin's line.
    // mount(8) runs /sbin/mount.fuse.mastofs (what packaging installs) as the helper.
    let _helper = HelperLink::install();
    let mnt = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(mnt.path().to_path_buf());
    let fstab = s.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "box:{} {} fuse.mastofs delay_connect,_netdev,user,idmap=user,transform_symlinks,allow_other,default_permissions,reconnect,uid=mastodon,gid=mastodon,ssh_config={} 0 0\n",
            s.served.display(),
            mnt.path().display(),
            s.ssh_config.display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(mnt.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&*mnt.path().to_string_lossy()))
        .expect("in /proc/mounts");
    assert!(line.contains("fuse.mastofs"), "{line}");
    let md = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(mnt.path().join("media.png")).unwrap(),
    );
    let mastodon: u32 = String::from_utf8_lossy(
        &Command::new("id")
            .args(["-u", "mastodon"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    assert_eq!(md, mastodon);
    let w = as_user(
        mastodon,
        mastodon,
        &format!("echo up > {}/upload", mnt.path().display()),
    );
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert!(Command::new("umount")
        .arg(mnt.path())
        .status()
        .unwrap()
        .success());
    wait_until(Duration::from_secs(10), "daemon exit", || {
        daemons_for(mnt.path()).is_empty()
    });
}

/// A daemon killed with SIGKILL leaves a dead mount ("Transport endpoint is not
/// connected"); a new daemon on the same path unmounts it and mounts again (so systemd's
/// `Restart=` works), and the mount serves.
#[test]
fn a_crashed_daemons_dead_mount_is_replaced_on_restart() {
    let s = Server::start();
    let sock = s.dir.path().join("status.sock");
    let opts = format!("status_socket={}", sock.display());
    let mut m = Mount::new(&s, &opts);
    assert_eq!(status_json(&sock)["daemon_start"], "fresh");
    std::fs::write(m.p("f"), b"before").unwrap();
    m.crash();
    assert_eq!(
        std::fs::metadata(m.path()).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    m.restart(&s, "")
        .unwrap_or_else(|e| panic!("restart failed: {e}"));
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"before");
    std::fs::write(m.p("g"), b"after").unwrap();
    assert_eq!(std::fs::read(s.served.join("g")).unwrap(), b"after");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = m.path().to_string_lossy().into_owned();
    let count = mounts
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(here.as_str()))
        .count();
    assert_eq!(count, 1, "one mount on the path: {mounts}");
    assert!(m.log().contains("dead mount"), "{}", m.log());
}

/// Under systemd (stderr is the journal: `$JOURNAL_STREAM` names it) each line carries its
/// priority as sd-daemon's `<N>` prefix, so `journalctl -p warning` shows warnings; no
/// colour codes where stderr is not a terminal.
#[test]
fn log_lines_carry_their_priority_to_the_journal_and_no_colour() {
    use std::os::unix::fs::MetadataExt;
    let s = Server::start();
    let mnt = tempfile::tempdir().unwrap();
    let log = s.dir.path().join("journal-stream.log");
    let file = std::fs::File::create(&log).unwrap();
    let md = file.metadata().unwrap();
    let mut child = Command::new(BIN)
        .arg(s.source())
        .arg(mnt.path())
        .args(["-f", "-o", "allow_other", "-F"])
        .arg(&s.ssh_config)
        .env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()))
        .env_remove("MASTOFS_LOG")
        .stderr(file)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "mounted", || {
        is_mounted(mnt.path())
    });
    let _ = Command::new("umount").arg(mnt.path()).status();
    let _ = child.wait();
    // A mount that fails: its last line is an error.
    let file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let md = file.metadata().unwrap();
    let st = Command::new(BIN)
        .arg(format!("box:{}/missing", s.served.display()))
        .arg(mnt.path())
        .args(["-f", "-F"])
        .arg(&s.ssh_config)
        .env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()))
        .stderr(file)
        .status()
        .unwrap();
    assert!(!st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "colour codes in {text:?}");
    let warn = text
        .lines()
        .find(|l| l.contains("allow_other without default_permissions"));
    assert!(warn.is_some_and(|l| l.starts_with("<4>")), "{text}");
    let err = text.lines().find(|l| l.contains("missing"));
    assert!(err.is_some_and(|l| l.starts_with("<3>")), "{text}");
}

/// An fstab line without `_netdev` is mounted by systemd before the network is up: the
/// helper mounts anyway and connects once the server can be reached (a failure would drop
/// the boot into emergency mode). With `_netdev`, or run as `mastofs`, an unreachable
/// server is an error, as before.
#[test]
fn a_line_without_netdev_mounts_before_the_network_and_connects_later() {
    let s = Server::start();
    let p = Proxy::start(s.port);
    s.write_ssh_config_via(p.port, "");
    p.set_mode(Mode::Blackhole);
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("mount.fuse.mastofs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    std::fs::write(s.served.join("hello"), b"later").unwrap();
    s.give(&s.served);
    let mnt = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(mnt.path().to_path_buf());
    let run = |prog: &Path, opts: &str| {
        Command::new(prog)
            .arg(s.source())
            .arg(mnt.path())
            .args(["-o", opts, "-F"])
            .arg(&s.ssh_config)
            .output()
            .unwrap()
    };
    let out = run(&helper, "_netdev,ConnectTimeout=2");
    assert!(!out.status.success(), "with _netdev the helper fails");
    assert!(!is_mounted(mnt.path()));
    let out = run(Path::new(BIN), "ConnectTimeout=2");
    assert!(!out.status.success(), "mastofs itself fails");
    let out = run(&helper, "ConnectTimeout=2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(is_mounted(mnt.path()));
    p.set_mode(Mode::Pass);
    assert_eq!(std::fs::read(mnt.path().join("hello")).unwrap(), b"later");
}
