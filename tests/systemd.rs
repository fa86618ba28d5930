//! mastofs under a real systemd 252 as PID 1: a Debian bookworm container booted with
//! `systemd-nspawn` (root filesystem made once by `scripts/systemd-rootfs.sh`), with the
//! package's unit and mount helpers, OpenSSH's sftp-server inside, and fstab lines of both
//! types mounted by systemd's fstab generator at boot. Commands go in with `nsenter` into
//! the container's PID 1; every wait is bounded, and the container is killed at the end
//! whatever happened.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::holder::HOLDER;
use common::*;

fn rootfs() -> PathBuf {
    let root = std::env::var("MASTOFS_TEST_ROOTFS")
        .unwrap_or_else(|_| "/var/cache/mastofs-test/rootfs-bookworm".into());
    let root = PathBuf::from(root);
    assert!(
        root.join("usr/lib/systemd/systemd").exists(),
        "no root filesystem at {}: run scripts/systemd-rootfs.sh (scripts/test.sh does)",
        root.display()
    );
    root
}

fn sh(cmd: &mut Command) -> Output {
    cmd.output().expect("command")
}

/// A booted container.
struct Container {
    /// The root filesystem's copy (removed at the end).
    _dir: tempfile::TempDir,
    nspawn: Option<Child>,
    leader: u32,
}

impl Container {
    /// Copies the cached root filesystem, lets `setup` write into it, and boots it.
    fn boot(setup: impl FnOnce(&Path)) -> Container {
        let dir = tempfile::Builder::new()
            .prefix("mastofs-nspawn-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        let cp = sh(Command::new("cp").arg("-a").arg(rootfs()).arg(&root));
        assert!(
            cp.status.success(),
            "{}",
            String::from_utf8_lossy(&cp.stderr)
        );
        setup(&root);
        let name = format!(
            "mastofs-{}",
            dir.path().file_name().unwrap().to_string_lossy()
        )
        .replace(['.', '_'], "-")
        .chars()
        .take(60)
        .collect::<String>();
        let log = std::fs::File::create(dir.path().join("nspawn.log")).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&root)
            .args([
                "-b",
                "--keep-unit",
                "--register=no",
                "--private-network",
                "--bind=/dev/fuse",
                "--console=passive",
                "-M",
                &name,
            ])
            .arg(format!("--bind-ro={BIN}:/usr/bin/mastofs"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn (package systemd-container)");
        let mut c = Container {
            _dir: dir,
            leader: 0,
            nspawn: Some(nspawn),
        };
        let parent = c.nspawn.as_ref().map(|n| n.id()).unwrap_or(0);
        wait_until(Duration::from_secs(30), "the container's PID 1", || {
            c.leader = children_of(parent)
                .into_iter()
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                })
                .unwrap_or(0);
            c.leader != 0
        });
        // Until systemd's bus is up, systemctl cannot even ask.
        let mut state = String::new();
        wait_until(Duration::from_secs(150), "the boot to end", || {
            let up = c.run("timeout 120 systemctl is-system-running --wait");
            state = String::from_utf8_lossy(&up.stdout).trim().to_string();
            !state.is_empty() && state != "starting" && state != "initializing"
        });
        assert_eq!(
            state,
            "running",
            "boot ended {state}: {}",
            c.text("systemctl --failed --no-pager; journalctl -b --no-pager -p warning | tail -40")
        );
        c
    }

    /// Runs `script` inside (bounded by 120 s).
    fn run(&self, script: &str) -> Output {
        sh(Command::new("timeout").args([
            "150",
            "nsenter",
            "-t",
            &self.leader.to_string(),
            "-a",
            "timeout",
            "120",
            "sh",
            "-c",
            script,
        ]))
    }

    /// Output of `script` inside, whatever its exit status.
    fn text(&self, script: &str) -> String {
        let out = self.run(script);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Output of `script` inside, which must succeed.
    fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "`{script}` failed: {text}");
        text
    }

    /// A long-lived process inside.
    fn spawn(&self, args: &[&str]) -> Child {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// `systemctl show -p PROP --value UNIT`.
    fn prop(&self, unit: &str, prop: &str) -> String {
        self.text(&format!("systemctl show -p {prop} --value {unit}"))
            .trim()
            .to_string()
    }

    /// Powers off and waits for the container to end: Ok(seconds) or Err(why).
    fn poweroff(&mut self) -> Result<f64, String> {
        let start = Instant::now();
        self.run("systemctl poweroff");
        let mut nspawn = self.nspawn.take().ok_or("not running")?;
        while start.elapsed() < Duration::from_secs(90) {
            if let Ok(Some(st)) = nspawn.try_wait() {
                return if st.success() {
                    Ok(start.elapsed().as_secs_f64())
                } else {
                    Err(format!("systemd-nspawn exited with {st}"))
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.nspawn = Some(nspawn);
        Err("the container did not power off within 90 s".into())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut n) = self.nspawn.take() {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

/// A process inside holding a file open ([`HOLDER`]), answering one command a line.
struct Holder {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Holder {
    fn start(c: &Container, path: &str) -> Holder {
        let mut child = c.spawn(&["python3", "-c", HOLDER, path]);
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut h = Holder { child, lines };
        assert_eq!(h.next(), "ok", "the holder opened the file");
        h
    }

    fn next(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| "no answer within 90 s".into())
    }

    fn ask(&mut self, cmd: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        let _ = writeln!(stdin, "{cmd}");
        let _ = stdin.flush();
        self.next()
    }

    /// The file still works through the descriptor opened before: block `n` written and
    /// read back, the earlier blocks read back, fsync.
    fn still_works(&mut self, n: u32) {
        assert_eq!(self.ask(&format!("seek {n}")), "ok");
        let wrote = self.ask(&format!("w {n}"));
        assert_eq!(wrote, "ok", "write through the held file");
        for b in 0..=n {
            assert_eq!(self.ask(&format!("seek {b}")), "ok");
            assert_eq!(self.ask(&format!("r {b}")), "ok", "block {b}");
        }
        assert_eq!(self.ask("fsync"), "ok");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `root/rel` (mode `mode`), making its directory.
fn put(root: &Path, rel: &str, text: &str, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The server, the client's configuration, the unit and the fstab lines.
fn set_up(root: &Path) {
    std::fs::create_dir_all(root.join("etc/mastofs")).unwrap();
    let keygen = sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(root.join("etc/mastofs/id_ed25519")));
    assert!(keygen.status.success(), "ssh-keygen");
    let user = std::fs::read_to_string(root.join("etc/mastofs/id_ed25519.pub")).unwrap();
    put(root, "root/.ssh/authorized_keys", &user, 0o600);
    std::fs::set_permissions(
        root.join("root/.ssh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let host = std::fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key.pub"))
        .expect("the rootfs's host key");
    let host_key: Vec<&str> = host.split_whitespace().take(2).collect();
    put(
        root,
        "etc/mastofs/known_hosts",
        &format!("127.0.0.1 {}\n", host_key.join(" ")),
        0o644,
    );
    put(
        root,
        "etc/mastofs/ssh_config",
        "Host box\n  HostName 127.0.0.1\n  Port 22\n  User root\n  \
         IdentityFile /etc/mastofs/id_ed25519\n  UserKnownHostsFile /etc/mastofs/known_hosts\n",
        0o644,
    );
    put(
        root,
        "etc/ssh/sshd_config.d/mastofs.conf",
        "ListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n",
        0o644,
    );
    // The box: up before the remote mounts (network-online.target) wait for it.
    put(
        root,
        "etc/systemd/system/ssh.service.d/before-online.conf",
        "[Unit]\nBefore=network-online.target\n",
        0o644,
    );
    for d in ["a", "b", "c", "d", "m"] {
        put(
            root,
            &format!("srv/box/{d}/hello"),
            &format!("hello {d}\n"),
            0o644,
        );
        std::fs::create_dir_all(root.join(format!("mnt/{d}"))).unwrap();
    }
    std::fs::create_dir_all(root.join("mnt/bound")).unwrap();
    for helper in ["sbin/mount.mastofs", "sbin/mount.fuse.mastofs"] {
        std::os::unix::fs::symlink("/usr/bin/mastofs", root.join(helper)).unwrap();
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/mastofs@.service"),
    )
    .unwrap();
    put(root, "etc/systemd/system/mastofs@.service", &unit, 0o644);
    let cfg = "ssh_config=/etc/mastofs/ssh_config";
    // allow_other without default_permissions: a warning at every start, for the journal.
    put(
        root,
        "etc/mastofs/media.conf",
        &format!("SOURCE=box:/srv/box/m\nMOUNTPOINT=/mnt/m\nOPTIONS={cfg},allow_other\n"),
        0o644,
    );
    put(
        root,
        "etc/mastofs/dead.conf",
        &format!("SOURCE=box:/srv/box/a\nMOUNTPOINT=/mnt/a\nOPTIONS={cfg}\n"),
        0o644,
    );
    // Both types with _netdev; the seed's line with only the type changed and _netdev
    // dropped, and a plain line without it (both ordered before the network by the
    // generator, so mounted while the box cannot be reached).
    let fstab = format!(
        "box:/srv/box/a /mnt/a fuse.mastofs _netdev,{cfg} 0 0\n\
         box:/srv/box/b /mnt/b mastofs _netdev,{cfg} 0 0\n\
         box:/srv/box/c /mnt/c fuse.mastofs delay_connect,user,idmap=user,transform_symlinks,allow_other,default_permissions,reconnect,{cfg} 0 0\n\
         box:/srv/box/d /mnt/d fuse.mastofs {cfg} 0 0\n"
    );
    put(root, "etc/fstab", &fstab, 0o644);
}

/// Boot with fstab lines of both types and one without `_netdev`; the unit's start with
/// notify, watchdog and the store; an open file and a bind mount across `kill -9` and
/// `mastofs upgrade` of the service; a start over a dead mount; stop; poweroff with the
/// mounts live.
#[test]
fn under_a_real_systemd_the_unit_mounts_recovers_upgrades_and_stops() {
    let started = Instant::now();
    let mut c = Container::boot(set_up);
    let booted = started.elapsed();
    // fstab at boot: both types, and the lines without _netdev (boot reached `running`).
    for d in ["a", "b", "c", "d"] {
        let t = c.ok(&format!("findmnt -n -o FSTYPE /mnt/{d}"));
        assert_eq!(t.trim(), "fuse.mastofs", "/mnt/{d}");
    }
    for d in ["a", "b", "c", "d"] {
        assert_eq!(c.ok(&format!("cat /mnt/{d}/hello")), format!("hello {d}\n"));
    }

    // The unit: notify, watchdog, the store.
    let t = Instant::now();
    c.ok("systemctl start mastofs@media");
    let start_s = t.elapsed().as_secs_f64();
    assert_eq!(c.prop("mastofs@media", "NFileDescriptorStore"), "3");
    assert_eq!(c.prop("mastofs@media", "WatchdogUSec"), "30s");
    assert!(!c.prop("mastofs@media", "StatusText").is_empty());
    assert_eq!(c.ok("cat /mnt/m/hello"), "hello m\n");
    let journal = c.text("journalctl -u mastofs@media -p warning --no-pager -o cat");
    assert!(
        journal.contains("allow_other without default_permissions"),
        "warnings reach the journal at their priority: {journal}"
    );
    let all = c.text("journalctl -u mastofs@media --no-pager -o cat");
    assert!(
        !all.contains('\x1b'),
        "colour codes in the journal: {all:?}"
    );

    // An open file and a bind mount across kill -9.
    c.ok("mount --bind /mnt/m /mnt/bound && touch /mnt/m/data.bin");
    let mut h = Holder::start(&c, "/mnt/m/data.bin");
    h.still_works(0);
    let pid = c.prop("mastofs@media", "MainPID");
    let t = Instant::now();
    c.ok("systemctl kill --kill-whom=main --signal=KILL mastofs@media");
    wait_until(
        Duration::from_secs(60),
        "a new daemon after kill -9",
        || {
            let now = c.prop("mastofs@media", "MainPID");
            now != pid && now != "0" && c.prop("mastofs@media", "ActiveState") == "active"
        },
    );
    let crash_s = t.elapsed().as_secs_f64();
    assert!(c.ok("mastofs status /mnt/m").contains("(crash recovery)"));
    h.still_works(1);
    assert!(c.ok("ls /mnt/bound").contains("data.bin"), "the bind mount");
    assert_eq!(c.ok("findmnt -n /mnt/m | wc -l").trim(), "1", "one mount");

    // mastofs upgrade of the service: success only once the successor serves.
    let pid = c.prop("mastofs@media", "MainPID");
    let t = Instant::now();
    let said = c.ok("mastofs upgrade /mnt/m");
    let upgrade_s = t.elapsed().as_secs_f64();
    println!("{said}");
    assert!(said.contains("the mount paused"), "{said}");
    assert_ne!(c.prop("mastofs@media", "MainPID"), pid);
    assert!(c.ok("mastofs status /mnt/m").contains("(upgrade)"));
    h.still_works(2);
    assert!(c.ok("ls /mnt/bound").contains("data.bin"));
    assert_eq!(h.ask("close"), "ok");
    drop(h);

    // A start over a dead mount: /mnt/a's fstab daemon killed, the unit started there.
    let t = Instant::now();
    let status = c.ok("mastofs status /mnt/a --json");
    let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    let dead = v["daemon_pid"].as_u64().unwrap();
    c.ok(&format!("kill -9 {dead}"));
    wait_until(Duration::from_secs(30), "the dead mount", || {
        c.text("stat /mnt/a 2>&1").contains("not connected")
    });
    c.ok("systemctl start mastofs@dead");
    assert_eq!(c.ok("cat /mnt/a/hello"), "hello a\n");
    assert!(c.ok("mastofs status /mnt/a").contains("(remounted)"));
    let dead_s = t.elapsed().as_secs_f64();
    let t = Instant::now();

    // Stop: unmounted, the store emptied; the bind mount made of it ends with it (the
    // daemon does not wait for the unit's stop timeout).
    c.ok("systemctl stop mastofs@media");
    assert!(!c.text("findmnt -n /mnt/m").contains("mastofs"));
    assert!(c.text("ls /mnt/bound 2>&1").contains("not connected"));
    c.ok("umount /mnt/bound");
    assert_eq!(c.prop("mastofs@media", "NFileDescriptorStore"), "0");
    let stop_s = t.elapsed().as_secs_f64();
    assert!(stop_s < 30.0, "stop took {stop_s:.1} s");

    // Poweroff with mounts live (fstab's /mnt/b and /mnt/c, the unit's /mnt/a).
    let off = c.poweroff().expect("poweroff");
    println!(
        "boot {:.1} s, unit start {start_s:.2} s, crash recovery {crash_s:.2} s, upgrade \
         {upgrade_s:.2} s, start over a dead mount {dead_s:.2} s, stop {stop_s:.2} s, poweroff \
         {off:.1} s, whole test {:.1} s",
        booted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
