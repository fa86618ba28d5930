//! What a rogue server, a container, another local user or odd bytes can make of mastofs:
//! each test plays the attacker and asserts the host is not turned.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// The server's links: those that lead out of the mount give EPERM (readlink and through
/// them), those that stay inside work; `no_contain_symlinks` trusts the server.
#[test]
fn a_rogue_servers_links_never_lead_out_of_the_mount() {
    let s = Server::start();
    let srv = &s.served;
    fs::create_dir_all(srv.join("sub/deeper")).unwrap();
    fs::write(srv.join("data.txt"), b"inside").unwrap();
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, srv.join(name)).unwrap();
    };
    link("../../../../../../../../../../etc/hostname", "escape-rel");
    link("/etc/hostname", "escape-abs");
    link("../../data.txt", "sub/up"); // `..` out of the root through a subdirectory
    link("../../../etc", "sub/deeper/updir");
    link("../data.txt", "sub/in-rel");
    link(&format!("{}/data.txt", srv.display()), "sub/in-abs");
    link("sub", "dirlink");
    link("deeper/../../data.txt", "sub/in-dotdot");
    s.give(srv);
    let m = Mount::new(&s, "transform_symlinks,allow_other,default_permissions");
    let host_hostname = fs::read("/etc/hostname").ok();
    for name in ["escape-rel", "escape-abs", "sub/up", "sub/deeper/updir"] {
        match fs::read_link(m.p(name)) {
            Err(e) => assert_eq!(errno(e), libc::EPERM, "readlink {name}"),
            // ProFTPD's READLINK answers these relative to the login directory (read
            // there, as for its dangling links): what is shown stays inside the mount.
            Ok(t) if s.kind == Kind::ProFtpd => {
                assert!(stays_inside(name, &t), "{name} -> {}", t.display())
            }
            Ok(t) => panic!("{name} -> {} was shown", t.display()),
        }
        if let Ok(got) = fs::read(m.p(name)) {
            assert_ne!(Some(got), host_hostname, "{name} led to the host's file");
        } else if s.kind != Kind::ProFtpd {
            let e = fs::read(m.p(name)).expect_err(name);
            assert_eq!(errno(e), libc::EPERM, "open through {name}");
        }
        // Still listed as a link: nothing is hidden, only not followed.
        assert!(fs::symlink_metadata(m.p(name)).unwrap().is_symlink());
    }
    assert_eq!(
        fs::read_link(m.p("sub/in-rel")).unwrap(),
        Path::new("../data.txt")
    );
    assert_eq!(
        fs::read_link(m.p("sub/in-abs")).unwrap(),
        Path::new("../data.txt")
    );
    assert_eq!(
        fs::read_link(m.p("sub/in-dotdot")).unwrap(),
        Path::new("../data.txt")
    );
    for name in [
        "sub/in-rel",
        "sub/in-abs",
        "sub/in-dotdot",
        "dirlink/in-rel",
    ] {
        assert_eq!(fs::read(m.p(name)).unwrap(), b"inside", "{name}");
    }
    assert!(fs::metadata(m.p("dirlink")).unwrap().is_dir());
    assert!(m.p("dirlink/deeper").is_dir());
    assert!(
        m.log().contains("leads out of the mount"),
        "refusals are logged"
    );
    drop(m);

    let trusted = Mount::new(&s, "no_contain_symlinks");
    assert_eq!(
        fs::read_link(trusted.p("escape-abs")).unwrap(),
        Path::new("/etc/hostname")
    );
}

/// Whether `target`, read from the link at `link` (relative to the mount), stays inside.
fn stays_inside(link: &str, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.split('/').count() as i64 - 1;
    for c in target.components() {
        match c {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// A client that asks the handover socket for an upgrade and reports what it got back:
/// bytes and descriptors.
const HANDOVER_CLIENT: &str = r#"
import json, socket, sys
got = {"bytes": 0, "fds": 0}
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(b'{"upgrade":"9.9.9"}\n')
    while True:
        msg, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(64))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got["fds"] += len(data) // 4
        if not msg:
            break
        got["bytes"] += len(msg)
        break
except OSError as e:
    got["error"] = str(e)
print(json.dumps(got))
"#;

fn ask_handover(prefix: &[&str], socket: &Path) -> serde_json::Value {
    let out = std::process::Command::new(prefix[0])
        .args(&prefix[1..])
        .args(["python3", "-c", HANDOVER_CLIENT])
        .arg(socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// Root in a container (its own mount and pid namespaces, the status directory bound
/// read-only as the compose example does) finds no handover socket there, and the
/// handover socket itself gives it no byte and no descriptor. The same client in the
/// daemon's namespaces is answered (the check is what makes the difference).
#[test]
fn a_container_root_gets_nothing_from_the_handover_socket() {
    let s = Server::start();
    fs::write(s.served.join("f"), b"served").unwrap();
    let m = Mount::new(&s, "");
    let status = mastofs_status_dir();
    let esc = systemd_escape(m.path());
    let handover = Path::new("/run/mastofs-handover").join(format!("{esc}.sock"));
    assert!(
        handover.exists(),
        "handover socket at {}",
        handover.display()
    );
    assert!(
        !status.join(format!("{esc}.handover")).exists()
            && !status.join(format!("{esc}.sock")).is_dir(),
        "nothing but status sockets in the directory containers share"
    );
    let mode = fs::metadata("/run/mastofs-handover").unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o700);
    // In the container: only the status directory, read-only.
    let shared = std::process::Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "sh", "-c"])
        .arg("mount --bind -o ro /run/mastofs /mnt && ls -a /mnt && ls /mnt | grep -c handover || true")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&shared.stdout);
    assert!(listing.contains(&format!("{esc}.sock")), "{listing}");
    assert!(listing.trim_end().ends_with('0'), "{listing}");
    // Root in other namespaces, at the handover socket itself.
    let got = ask_handover(&["unshare", "--mount", "--pid", "--fork"], &handover);
    assert_eq!(
        (got["bytes"].as_u64(), got["fds"].as_u64()),
        (Some(0), Some(0)),
        "{got}"
    );
    wait_until(Duration::from_secs(10), "the refusal logged", || {
        m.log().contains("another mount or pid namespace")
    });
    // The same request from the daemon's own namespaces is answered.
    let got = ask_handover(&["env"], &handover);
    assert!(got["bytes"].as_u64().unwrap_or(0) > 0, "{got}");
    // And the mount serves on.
    wait_until(Duration::from_secs(10), "the abandoned upgrade", || {
        m.log().contains("upgrade abandoned")
    });
    assert_eq!(fs::read(m.p("f")).unwrap(), b"served");
}

fn mastofs_status_dir() -> PathBuf {
    PathBuf::from("/run/mastofs")
}

fn systemd_escape(p: &Path) -> String {
    let out = std::process::Command::new("systemd-escape")
        .arg("--path")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Another user plants the handover directory and a listening socket where a user
/// without a runtime directory falls back to (`/tmp/mastofs-handover-UID`): `mastofs
/// upgrade` refuses it with a clear message and never connects.
#[test]
fn a_planted_handover_socket_is_refused() {
    let (victim, attacker) = (4242u32, 4243u32);
    let dir = PathBuf::from(format!("/tmp/mastofs-handover-{victim}"));
    let _ = fs::remove_dir_all(&dir);
    let mp = Path::new("/mnt/planted-victim");
    let sock = dir.join(format!("{}.sock", systemd_escape(mp)));
    let marker = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(marker.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let connected = marker.path().join("connected");
    // The attacker's listener: records any connection.
    let listener = format!(
        "mkdir -m 0777 {dir} && exec python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
import os; os.chmod(sys.argv[1], 0o777)
open(sys.argv[3], \"w\").close()
c, _ = s.accept(); open(sys.argv[2], \"w\").write(\"yes\")
' {sock} {connected} {ready}",
        dir = dir.display(),
        sock = sock.display(),
        connected = connected.display(),
        ready = marker.path().join("ready").display(),
    );
    let mut planted = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={attacker}"),
            &format!("--regid={attacker}"),
            "--clear-groups",
            "sh",
            "-c",
            &listener,
        ])
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the planted listener", || {
        marker.path().join("ready").exists()
    });
    let out = as_user(
        victim,
        victim,
        &format!("unset XDG_RUNTIME_DIR; exec {BIN} upgrade {}", mp.display()),
    );
    let _ = planted.kill();
    let _ = planted.wait();
    let _ = fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("owned by uid {attacker}")) && err.contains("refused"),
        "{err}"
    );
    assert!(
        !connected.exists(),
        "mastofs upgrade connected to the planted socket"
    );
}

/// A mountpoint named with bytes that are not UTF-8, and one with `é`: mounted, served,
/// and taken over after a crash (found again in mountinfo, its store taken).
#[test]
fn mountpoints_named_with_any_bytes_mount_serve_and_recover() {
    use std::os::unix::ffi::OsStrExt;
    let s = Server::start();
    fs::write(s.served.join("f"), b"served").unwrap();
    for prefix in [&b"mnt\xff\xfe-"[..], "mnt\u{e9}-".as_bytes()] {
        let name = std::ffi::OsStr::from_bytes(prefix);
        let mut m = Mount::with_store_named(&s, "", name);
        assert!(m
            .path()
            .as_os_str()
            .as_bytes()
            .windows(prefix.len())
            .any(|w| w == prefix));
        assert_eq!(fs::read(m.p("f")).unwrap(), b"served");
        fs::write(m.p("new"), b"written").unwrap();
        m.crash();
        m.restart(&s, "").expect("the successor takes over");
        assert_eq!(fs::read(m.p("new")).unwrap(), b"written");
        let out = std::process::Command::new(BIN)
            .arg("status")
            .arg(m.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("(crash recovery)"), "{text}{}", m.log());
        let mounts = fs::read("/proc/self/mountinfo").unwrap();
        let count = mounts
            .split(|b| *b == b'\n')
            .filter(|l| l.windows(prefix.len()).any(|w| w == prefix))
            .count();
        assert_eq!(count, 1, "one mount on the path");
    }
}

/// A status socket that answers 300 MB, or escape sequences: `mastofs status` ends within
/// seconds, stays small, and prints no raw escape.
#[test]
fn a_hostile_status_socket_cannot_flood_or_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = r#"
import socket, sys, json
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
open(sys.argv[1] + ".ready", "w").close()
esc = "\x1b[2J\x1b]0;owned\x07\u009b31m"
body = json.dumps({"state": "connected" + esc, "mountpoint": "/m" + esc, "host": esc,
    "last_error": "boom" + esc, "last_error_at": esc,
    "server_capabilities": {"summary": esc}}).encode()
while True:
    c, _ = s.accept()
    try:
        c.recv(65536)
        if sys.argv[2] == "flood":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 314572800\r\n\r\n")
            chunk = b"x" * (1 << 20)
            for _ in range(300):
                c.sendall(chunk)
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    c.close()
"#;
    let mut servers = Vec::new();
    for mode in ["flood", "escapes"] {
        let sock = dir.path().join(mode);
        servers.push(
            std::process::Command::new("python3")
                .args(["-c", server])
                .arg(&sock)
                .arg(mode)
                .spawn()
                .unwrap(),
        );
        wait_until(Duration::from_secs(10), "the fake status socket", || {
            dir.path().join(format!("{mode}.ready")).exists()
        });
    }
    // The client's peak memory, measured by its parent.
    let measure = r#"
import resource, subprocess, sys, time
t = time.time()
r = subprocess.run(sys.argv[1:], capture_output=True)
sys.stdout.buffer.write(b"%d %d %.1f\n" % (r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t))
sys.stdout.buffer.write(r.stdout + r.stderr)
"#;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("python3")
            .args(["-c", measure, BIN, "status"])
            .args(args)
            .output()
            .unwrap();
        out.stdout
    };
    let flood = run(&["--socket", dir.path().join("flood").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&flood);
    let head: Vec<f64> = text
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(head[0], 2.0, "{text}");
    assert!(head[1] < 50.0 * 1024.0, "peak RSS {} KiB: {text}", head[1]);
    assert!(head[2] < 10.0, "took {} s", head[2]);
    for json in [false, true] {
        let sock = dir.path().join("escapes");
        let mut args = vec!["--socket", sock.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let out = run(&args);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("boom"), "{text}");
        assert!(
            !out.contains(&0x1b) && !out.contains(&0x07),
            "raw escape printed: {text:?}"
        );
        assert!(!text.contains('\u{9b}'), "raw C1 control printed: {text:?}");
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

/// What a killed daemon left on the server (a file unlinked while open under its hidden
/// name, a probe's scratch directory) is hidden from listings and swept by the next daemon
/// of the same mount; another mount's hidden names are hidden and left alone.
#[test]
fn what_a_killed_daemon_left_is_hidden_and_swept_by_the_next() {
    let s = Server::start();
    let mut m = Mount::new(&s, "");
    fs::write(m.p("held"), b"open while unlinked").unwrap();
    let held = fs::File::open(m.p("held")).unwrap();
    fs::remove_file(m.p("held")).unwrap();
    let hidden: Vec<String> = fs::read_dir(&s.served)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".mastofs-unlinked-"))
        .collect();
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    let tag = hidden[0]["mastofs-unlinked-".len() + 1..]
        .split('-')
        .next()
        .unwrap()
        .to_string();
    assert!(
        fs::read_dir(m.path()).unwrap().count() == 0,
        "hidden from listings"
    );
    m.crash();
    drop(held);
    // A probe of this mount cut short, and another mount's hidden file.
    fs::create_dir(s.served.join(format!(".mastofs-probe-{tag}-dead"))).unwrap();
    fs::write(s.served.join(format!(".mastofs-probe-{tag}-dead/f")), b"").unwrap();
    let other = ".mastofs-unlinked-0123456789ab-ffff-2-0";
    fs::write(s.served.join(other), b"another mount's").unwrap();
    s.give(&s.served);
    m.restart(&s, "").expect("a new daemon after the crash");
    let listed: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.is_empty(), "{listed:?}");
    let left: Vec<String> = fs::read_dir(&s.served)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![other.to_string()],
        "swept only what this mount left"
    );
}

/// A daemon that only has `$NOTIFY_SOCKET` (a unit without a descriptor store: systemd
/// would drop the connection silently) never leaves its mount to a store: `mastofs
/// upgrade` hands over over the socket, and the old daemon exits 0, not 75.
#[test]
fn without_a_store_an_upgrade_never_exits_75() {
    let s = Server::start();
    fs::write(s.served.join("f"), b"served").unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let notify = s.dir.path().join("notify");
    let _listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    struct Cleanup(PathBuf, Vec<u32>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
            for pid in &self.1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let mut old = std::process::Command::new(BIN)
        .arg(s.source())
        .arg(mnt.path())
        .args(["-f", "-F"])
        .arg(&s.ssh_config)
        .env("NOTIFY_SOCKET", &notify)
        .env_remove("FDSTORE")
        .env_remove("MASTOFS_FDSTORE")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut cleanup = Cleanup(mnt.path().to_path_buf(), vec![old.id()]);
    wait_until(Duration::from_secs(30), "mounted", || {
        is_mounted(mnt.path()) && fs::read(mnt.path().join("f")).is_ok()
    });
    let mut new = std::process::Command::new(BIN)
        .arg("upgrade")
        .arg(mnt.path())
        .arg("-f")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cleanup.1.push(new.id());
    let st = old.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "the old daemon handed over over the socket"
    );
    assert_eq!(fs::read(mnt.path().join("f")).unwrap(), b"served");
    let _ = std::process::Command::new("umount")
        .arg(mnt.path())
        .status();
    wait_until(Duration::from_secs(10), "the new daemon's exit", || {
        new.try_wait().ok().flatten().is_some()
    });
}
