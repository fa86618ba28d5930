//! Containers of a real Docker engine (Debian's docker.io, a dockerd of the test's own with
//! its own data and exec roots, no bridge, no iptables, no forwarding) using a mastofs
//! mount through a link cut, a blackhole longer than `timeout=`, `kill -9` with a
//! descriptor store, `mastofs upgrade`, and a crash without a store; and the same crash
//! with sshfs, for the README's comparison. A container's process writes and reads a file
//! every 0.2 s and prints `ok N` or `FAIL N`; it is never restarted.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::*;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "mastofs-test/busybox:1";

/// A dockerd of the test's own, stopped (and its containers removed) on drop.
struct Docker {
    dir: tempfile::TempDir,
    dockerd: Option<Child>,
    /// A directory made a shared mount, as systemd makes `/` (this machine's is private).
    shared: PathBuf,
    ip_forward: String,
}

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default()
}

impl Docker {
    fn start() -> Docker {
        let dir = tempfile::Builder::new()
            .prefix("mastofs-docker-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let dockerd = Command::new("/usr/sbin/dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--ip-forward=false",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (package docker.io)");
        let shared = d.join("shared");
        std::fs::create_dir(&shared).unwrap();
        let dk = Docker {
            ip_forward: ip_forward(),
            dir,
            dockerd: Some(dockerd),
            shared,
        };
        let bind = Command::new("mount")
            .arg("--bind")
            .arg(&dk.shared)
            .arg(&dk.shared)
            .status()
            .unwrap();
        let shared = Command::new("mount")
            .arg("--make-shared")
            .arg(&dk.shared)
            .status()
            .unwrap();
        assert!(bind.success() && shared.success(), "a shared mount point");
        wait_until(Duration::from_secs(60), "dockerd answering", || {
            dk.cli(&["info"]).status.success()
        });
        dk.import_image();
        dk
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args)
            .output()
            .expect("docker")
    }

    /// busybox-static and its links, imported (no registry can be reached).
    fn import_image(&self) {
        let img = self.dir.path().join("img");
        std::fs::create_dir_all(img.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", img.join("bin/busybox")).expect("busybox-static");
        for c in ["sh", "cat", "echo", "sleep", "mkdir", "ls", "test", "true"] {
            std::os::unix::fs::symlink("busybox", img.join("bin").join(c)).unwrap();
        }
        let tarball = self.dir.path().join("img.tar");
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&img)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(tar.success(), "tar");
        let st = self
            .cli(&["import", tarball.to_str().unwrap(), IMAGE])
            .status;
        assert!(st.success(), "docker import");
    }

    /// Starts a container (`--network none`) with `mount` args whose process writes and
    /// reads `dir/N` in a loop; returns its id.
    fn writer(&self, mount: &[&str], dir: &str) -> String {
        let script = format!(
            "mkdir -p {dir}; i=0; while true; do i=$((i+1)); \
             if echo $i > {dir}/f 2>/dev/null && test \"$(cat {dir}/f 2>/dev/null)\" = $i; \
             then echo ok $i; else echo FAIL $i; fi; sleep 0.2; done"
        );
        let mut args = vec!["run", "-d", "--network", "none"];
        args.extend_from_slice(mount);
        args.extend_from_slice(&[IMAGE, "sh", "-c", &script]);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// (oks, fails) the container printed so far.
    fn seen(&self, id: &str) -> (usize, usize) {
        let out = self.cli(&["logs", id]);
        let text = String::from_utf8_lossy(&out.stdout);
        let oks = text.lines().filter(|l| l.starts_with("ok ")).count();
        let fails = text.lines().filter(|l| l.starts_with("FAIL ")).count();
        (oks, fails)
    }

    /// Waits until the container printed `n` more oks.
    fn progresses(&self, id: &str, n: usize, what: &str) {
        let before = self.seen(id).0;
        wait_until(Duration::from_secs(60), what, || {
            self.seen(id).0 >= before + n
        });
    }

    /// Waits until the container's last `n` lines are all FAIL.
    fn fails_steadily(&self, id: &str, n: usize, what: &str) {
        let start = Instant::now();
        loop {
            // The container's stdout (its shell's own complaints go to stderr).
            let out = self.cli(&["logs", id]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let last: Vec<&str> = text.lines().rev().take(n).collect();
            if last.len() == n && last.iter().all(|l| l.starts_with("FAIL ")) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: the container's last lines: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Removes every container (their bind mounts keep filesystems alive).
    fn remove_containers(&self) {
        let ids = self.cli(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.cli(&["rm", "-f", id]);
        }
    }

    /// Running, never restarted.
    fn still_up(&self, id: &str) {
        let out = self.cli(&["inspect", "-f", "{{.State.Running}} {{.RestartCount}}", id]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "true 0");
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.remove_containers();
        if let Some(mut d) = self.dockerd.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = d.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.shared).status();
        // What dockerd left mounted under its roots (only if it was killed).
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
        assert_eq!(
            ip_forward(),
            self.ip_forward,
            "the host's ip_forward changed"
        );
    }
}

/// A mastofs mount with a store, through the fault proxy: a link cut and `kill -9` and an
/// upgrade are pauses to a container, a blackhole longer than `timeout=` fails its
/// operations with EIO meanwhile (as the README says) and it goes on after; the container
/// is never restarted. Without a store, a crash remounts: a container that bound the
/// mount keeps the dead one, one that bound the parent with rslave sees the new mount.
#[test]
fn containers_keep_working_through_cuts_outages_crashes_and_upgrades() {
    let t0 = Instant::now();
    let dk = Docker::start();
    let s = Server::start();
    let p = Proxy::start(s.port);
    s.write_ssh_config_via(p.port, "");
    let opts = "timeout=5,ServerAliveInterval=1,ServerAliveCountMax=3";
    let mut m = Mount::new_in(&s, opts, &dk.shared, true);
    let bind = format!("{}:/data", m.path().display());
    let c = dk.writer(&["-v", &bind], "/data/c");
    dk.progresses(&c, 3, "writes through the mount");

    p.cut();
    dk.progresses(&c, 5, "writes after a link cut");
    assert_eq!(dk.seen(&c).1, 0, "a cut is a pause, not an error");

    p.set_mode(Mode::Blackhole);
    wait_until(Duration::from_secs(60), "EIO after timeout=", || {
        dk.seen(&c).1 > 0
    });
    p.set_mode(Mode::Pass);
    dk.progresses(&c, 5, "writes after the blackhole");
    let fails = dk.seen(&c).1;

    m.crash();
    m.restart(&s, opts)
        .expect("the stored connection taken over");
    dk.progresses(&c, 5, "writes after kill -9");
    // A write acknowledged but not yet confirmed at the kill reports EIO once (README).
    let after_crash = dk.seen(&c).1;
    assert!(
        after_crash <= fails + 1,
        "{after_crash} fails after the crash, {fails} before"
    );
    m.upgrade(&s).expect("mastofs upgrade");
    dk.progresses(&c, 5, "writes after the upgrade");
    assert_eq!(
        dk.seen(&c).1,
        after_crash,
        "an upgrade is a pause, not an error"
    );
    dk.still_up(&c);

    // Without a store: the crash remounts.
    let mut bare = Mount::new_in(&s, opts, &dk.shared, false);
    let name = bare
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let bound = dk.writer(
        &["-v", &format!("{}:/data", bare.path().display())],
        "/data/b",
    );
    let parent = format!(
        "type=bind,source={},target=/parent,bind-propagation=rslave",
        dk.shared.display()
    );
    let via_parent = dk.writer(&["--mount", &parent], &format!("/parent/{name}/p"));
    dk.progresses(&bound, 3, "writes through the bare mount");
    dk.progresses(&via_parent, 3, "writes through the parent");
    bare.crash();
    bare.restart(&s, opts)
        .expect("remounted after a crash without a store");
    dk.progresses(
        &via_parent,
        5,
        "the parent's rslave bind sees the new mount",
    );
    dk.fails_steadily(&bound, 5, "the mount's own bind keeps the dead mount");
    for id in [&c, &bound, &via_parent] {
        dk.still_up(id);
    }
    dk.remove_containers();
    drop(bare);
    println!("mastofs part took {:.1} s", t0.elapsed().as_secs_f64());
    compose_example(&dk, &s, &p, &mut m);
    drop(m);
    sshfs_for_comparison(&dk, &s);
    println!("docker test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// The compose example itself (`contrib/docker/docker-compose.yml`), run by docker-compose
/// with the local image: its services write through binding (A) and answer their health
/// check through the status directory it shares read-only: healthy, unhealthy during a
/// blackhole, healthy again after it and after `kill -9`.
fn compose_example(dk: &Docker, s: &Server, p: &Proxy, m: &mut Mount) {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/docker/docker-compose.yml"),
    )
    .unwrap();
    let escaped = String::from_utf8(
        Command::new("systemd-escape")
            .arg("--path")
            .arg(m.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // Compose interpolates `$`: the loop's own are written `$$`.
    let writer = "i=0; d=/mastodon/public/system/$$HOSTNAME; mkdir -p $$d; \
                  while true; do i=$$((i+1)); if echo $$i > $$d/f 2>/dev/null && \
                  test \"$$(cat $$d/f 2>/dev/null)\" = $$i; then echo ok $$i; \
                  else echo FAIL $$i; fi; sleep 0.2; done";
    let service = format!(
        "image: {IMAGE}\n    network_mode: none\n    command: [\"sh\", \"-c\", \"{}\"]",
        writer.replace('"', "\\\"")
    );
    // The binary for the health check runs with the host's C library.
    let libs = "- /usr/lib:/usr/lib:ro\n      - /usr/lib:/lib:ro\n      - /usr/lib64:/lib64:ro";
    let file = example
        .replace("image: ghcr.io/mastodon/mastodon:v4.3", &service)
        .replace(
            "source: /mnt/mastodon",
            &format!("source: {}", m.path().display()),
        )
        // In YAML's double quotes a backslash (systemd-escape's \x2d) is written twice.
        .replace(
            "/run/mastofs/mnt-mastodon.sock",
            &format!("/run/mastofs/{}.sock", escaped.trim().replace('\\', "\\\\")),
        )
        .replace(
            "- /usr/bin/mastofs:/usr/bin/mastofs:ro",
            &format!("- {BIN}:/usr/bin/mastofs:ro\n      {libs}"),
        )
        .replace("interval: 30s", "interval: 1s")
        .replace("timeout: 10s", "timeout: 5s");
    let path = dk.dir.path().join("docker-compose.yml");
    std::fs::write(&path, &file).unwrap();
    let compose = |args: &[&str]| {
        Command::new("docker-compose")
            .env(
                "DOCKER_HOST",
                format!("unix://{}", dk.dir.path().join("docker.sock").display()),
            )
            .arg("-p")
            .arg("mastofstest")
            .arg("-f")
            .arg(&path)
            .args(args)
            .output()
            .expect("docker-compose (package docker-compose)")
    };
    let up = compose(&["up", "-d"]);
    assert!(
        up.status.success(),
        "compose up: {}\n{file}",
        String::from_utf8_lossy(&up.stderr)
    );
    let ids: Vec<String> = String::from_utf8_lossy(&compose(&["ps", "-q"]).stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 2, "web and sidekiq");
    let health = |id: &str| {
        let out = dk.cli(&["inspect", "-f", "{{.State.Health.Status}}", id]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let all = |want: &str| ids.iter().all(|id| health(id) == want);
    let why = || {
        let out = dk.cli(&["inspect", "-f", "{{json .State.Health}}", &ids[0]]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let start = Instant::now();
    while !all("healthy") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not healthy: {}",
            why()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &ids {
        dk.progresses(id, 3, "a service writes media");
    }
    p.set_mode(Mode::Blackhole);
    wait_until(
        Duration::from_secs(60),
        "unhealthy during the blackhole",
        || all("unhealthy"),
    );
    p.set_mode(Mode::Pass);
    wait_until(Duration::from_secs(60), "healthy after it", || {
        all("healthy")
    });
    m.crash();
    m.restart(s, "timeout=5,ServerAliveInterval=1,ServerAliveCountMax=3")
        .expect("the stored connection taken over");
    for id in &ids {
        dk.progresses(id, 3, "a service writes after kill -9");
        dk.still_up(id);
    }
    wait_until(Duration::from_secs(60), "healthy after kill -9", || {
        all("healthy")
    });
    let down = compose(&["down"]);
    assert!(
        down.status.success(),
        "compose down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
}

/// sshfs killed with -9 and mounted again on the same path, with containers bound the
/// three ways: what each sees (printed for the README's comparison).
fn sshfs_for_comparison(dk: &Docker, s: &Server) {
    s.give(&s.served);
    let mp = dk.shared.join("sshfs");
    std::fs::create_dir(&mp).unwrap();
    let sshfs = |mp: &Path| {
        Command::new("sshfs")
            .arg(format!("box:{}", s.served.display()))
            .arg(mp)
            .args(["-f", "-F"])
            .arg(&s.ssh_config)
            .args(["-o", "reconnect,ServerAliveInterval=1"])
            .stderr(Stdio::null())
            .spawn()
            .expect("sshfs")
    };
    let mut first = sshfs(&mp);
    wait_until(Duration::from_secs(30), "sshfs mounted", || is_mounted(&mp));
    let plain = dk.writer(&["-v", &format!("{}:/data", mp.display())], "/data/1");
    let rslave = dk.writer(
        &["-v", &format!("{}:/data:rslave", mp.display())],
        "/data/2",
    );
    let parent = format!(
        "type=bind,source={},target=/parent,bind-propagation=rslave",
        dk.shared.display()
    );
    let via_parent = dk.writer(&["--mount", &parent], "/parent/sshfs/3");
    for id in [&plain, &rslave, &via_parent] {
        dk.progresses(id, 3, "writes through sshfs");
    }
    let _ = first.kill();
    let _ = first.wait();
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&mp)
        .status();
    let mut second = sshfs(&mp);
    wait_until(Duration::from_secs(30), "sshfs mounted again", || {
        is_mounted(&mp) && std::fs::read_dir(&mp).is_ok()
    });
    dk.progresses(
        &via_parent,
        3,
        "the parent's rslave bind sees the new sshfs mount",
    );
    dk.fails_steadily(&plain, 5, "-v keeps the dead sshfs mount");
    dk.fails_steadily(&rslave, 5, "-v :rslave keeps the dead sshfs mount");
    println!(
        "sshfs killed -9 and mounted again: -v mp:/data -> dead; -v mp:/data:rslave -> dead; \
         parent bound with rslave -> the new mount"
    );
    dk.remove_containers();
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&mp)
        .status();
    let _ = second.kill();
    let _ = second.wait();
}
