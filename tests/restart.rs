//! The daemon's own restart: `mastofs upgrade`, and `kill -9` followed by a daemon that
//! takes the connection from the descriptor store (the test keeps the store, as systemd
//! would). Open files, a bind mount in another mount namespace and a `find` running across
//! the restart must carry on; writes that a crash may have lost report EIO once.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::holder::{block, BLOCK, HOLDER};
use common::proxy::{Mode, Proxy};
use common::{pattern, status_json, wait_until, Mount, Server};

/// A line-driven child process (the holder, or a shell in another mount namespace). Its
/// answers are waited for at most a minute: a request nobody answers fails the test
/// instead of hanging it.
struct Driven {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Driven {
    fn spawn(mut cmd: Command) -> Driven {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take().expect("stdin");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { return };
                if tx.send(l.trim().to_string()).is_err() {
                    return;
                }
            }
        });
        let mut d = Driven {
            child,
            stdin,
            lines,
        };
        assert_eq!(d.line(), "ok", "child did not start");
        d
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("no answer within 60 s")
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write child");
        self.line()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // Bounded: a process stuck on a mount nobody serves (a failed test) is left to the
        // mount's own cleanup, which ends the connection.
        let _ = self.child.kill();
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn holder(dir: &Path, file: &Path) -> Driven {
    let script = dir.join("holder.py");
    std::fs::write(&script, HOLDER).expect("holder script");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&script).arg(file);
    Driven::spawn(cmd)
}

/// A shell in a mount namespace of its own that bind-mounted the mountpoint (as a
/// container does): `ls` counts entries of the bind mount's root, `cat F` prints F's size.
fn namespace_holder(mountpoint: &Path, scratch: &Path) -> Driven {
    let bind = scratch.join("bind");
    std::fs::create_dir_all(&bind).expect("bind dir");
    let script = format!(
        "mount --make-rprivate / && mount --bind '{}' '{}' && echo ok || exit 1\n\
         while read cmd arg; do\n\
           case $cmd in\n\
             ls) ls '{b}' | wc -l || echo err;;\n\
             cat) wc -c < '{b}'/\"$arg\" || echo err;;\n\
           esac\n\
         done\n",
        mountpoint.display(),
        bind.display(),
        b = bind.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c", &script]);
    Driven::spawn(cmd)
}

/// 12 directories of 50 small files each, and a 1 MiB file for the holder.
fn tree(server: &Server) -> PathBuf {
    for d in 0..12 {
        let dir = server.served.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            std::fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let data = server.served.join("data.bin");
    std::fs::write(&data, pattern(16 * BLOCK, 3)).unwrap();
    server.give(&server.served);
    data
}

/// A `find` over the mount that takes a few seconds (a shell per file), counting the files
/// it reached in `progress`.
fn slow_find(mountpoint: &Path, progress: &Path) -> Child {
    let script = format!(
        "find '{}' -type f -name 'f*' -exec sh -c 'echo >> \"$0\"; sleep 0.002' '{}' \\;",
        mountpoint.display(),
        progress.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .expect("find")
}

fn lines_in(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

fn mounts_on(p: &Path) -> usize {
    let want = p.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some(want.as_str()))
        .count()
}

enum Restart {
    /// `mastofs upgrade` of a daemon run by hand: handed over through the socket.
    Upgrade,
    /// `mastofs upgrade` of a daemon run as a service: handed over through the store.
    ServiceUpgrade,
    Kill9,
}

fn carries_on_across(restart: Restart) {
    let server = Server::start();
    let data = tree(&server);
    let mut m = match restart {
        Restart::Upgrade => Mount::new(&server, ""),
        _ => Mount::with_store(&server, ""),
    };
    let scratch = tempfile::tempdir().unwrap();
    let old_pid = m.pid();

    let mut h = holder(scratch.path(), &m.p("data.bin"));
    assert_eq!(h.ask("w 0"), "ok");
    assert_eq!(h.ask("fsync"), "ok");
    assert_eq!(h.ask("seek 0"), "ok");
    assert_eq!(h.ask("r 0"), "ok");
    // The descriptor's offset is now at block 1.
    let mut ns = namespace_holder(m.path(), scratch.path());
    assert_eq!(ns.ask("ls"), "13");

    let progress = scratch.path().join("progress");
    let mut find = slow_find(m.path(), &progress);
    wait_until(Duration::from_secs(30), "find under way", || {
        lines_in(&progress) >= 40
    });
    let paused = std::time::Instant::now();
    match restart {
        Restart::Upgrade | Restart::ServiceUpgrade => m
            .upgrade(&server)
            .unwrap_or_else(|e| panic!("upgrade: {e}")),
        Restart::Kill9 => {
            m.crash();
            assert!(lines_in(&progress) < 600, "find ended before the crash");
            m.restart(&server, "")
                .unwrap_or_else(|e| panic!("restart: {e}"));
        }
    }
    eprintln!(
        "restart took {:?} until the new daemon served",
        paused.elapsed()
    );
    assert_ne!(m.pid(), old_pid);
    assert!(
        m.log().contains("took over the mount"),
        "the new daemon did not take over: {}",
        m.log()
    );

    // The open file carries on at its offset (block 1), both ways.
    assert_eq!(h.ask("w 1"), "ok");
    assert_eq!(h.ask("seek 0"), "ok");
    assert_eq!(h.ask("r 0"), "ok");
    assert_eq!(h.ask("r 1"), "ok");
    assert_eq!(h.ask("fsync"), "ok");
    assert_eq!(h.ask("close"), "ok");
    // The container's bind mount is the same live mount.
    assert_eq!(ns.ask("ls"), "13");
    assert_eq!(ns.ask("cat d03/f007"), "4"); // "3/7\n"
    let st = find.wait().unwrap();
    assert!(st.success(), "find failed across the restart: {st}");
    assert_eq!(lines_in(&progress), 600, "find missed files");
    assert_eq!(mounts_on(m.path()), 1, "one mount, not a new one on top");

    let on_server = std::fs::read(&data).unwrap();
    assert_eq!(&on_server[..BLOCK], &block(0)[..]);
    assert_eq!(&on_server[BLOCK..2 * BLOCK], &block(1)[..]);
    assert_eq!(
        &on_server[2 * BLOCK..],
        &pattern(16 * BLOCK, 3)[2 * BLOCK..]
    );
    let status = std::process::Command::new(common::BIN)
        .args(["status"])
        .arg(m.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let start = match restart {
        Restart::Upgrade | Restart::ServiceUpgrade => "(upgrade)",
        Restart::Kill9 => "(crash recovery)",
    };
    assert!(text.contains(start), "status: {text}");
}

#[test]
fn upgrade_keeps_open_files_bind_mounts_and_a_running_find() {
    carries_on_across(Restart::Upgrade);
}

#[test]
fn service_upgrade_through_the_store_keeps_open_files_bind_mounts_and_a_running_find() {
    carries_on_across(Restart::ServiceUpgrade);
}

#[test]
fn kill_9_with_a_stored_connection_keeps_open_files_bind_mounts_and_a_running_find() {
    carries_on_across(Restart::Kill9);
}

/// A mount with a store, through the fault proxy, with its status socket: (server,
/// proxy, mount, scratch dir, the options to restart with).
fn through_proxy() -> (Server, Proxy, Mount, tempfile::TempDir, String) {
    let server = Server::start();
    let proxy = Proxy::start(server.port);
    server.write_ssh_config_via(proxy.port, "");
    tree(&server);
    std::fs::copy(
        server.served.join("data.bin"),
        server.served.join("other.bin"),
    )
    .unwrap();
    server.give(&server.served);
    let scratch = tempfile::tempdir().unwrap();
    let opts = format!(
        "status_socket={}",
        scratch.path().join("status.sock").display()
    );
    let m = Mount::with_store(&server, &opts);
    (server, proxy, m, scratch, opts)
}

fn unconfirmed_files(scratch: &Path) -> Option<u64> {
    status_json(&scratch.join("status.sock"))["files_with_unconfirmed_writes"].as_u64()
}

#[test]
fn unconfirmed_writes_at_a_crash_report_eio_once_and_confirmed_ones_do_not() {
    let (server, proxy, mut m, scratch, opts) = through_proxy();
    let mut pending = holder(scratch.path(), &m.p("data.bin"));
    let mut confirmed = holder(scratch.path(), &m.p("other.bin"));
    // Written without fsync: the server confirms it, and the daemon notes that.
    assert_eq!(confirmed.ask("w 0"), "ok");
    wait_until(
        Duration::from_secs(10),
        "the write noted as confirmed",
        || unconfirmed_files(scratch.path()) == Some(0),
    );
    // Acknowledged by the daemon, never confirmed: the server does not answer any more.
    proxy.set_mode(Mode::Blackhole);
    assert_eq!(pending.ask("w 0"), "ok");
    assert_eq!(unconfirmed_files(scratch.path()), Some(1));

    m.crash();
    proxy.set_mode(Mode::Pass);
    m.restart(&server, &opts).unwrap_or_else(|e| panic!("{e}"));

    // Closing reports what may be lost, once; the other file closes cleanly.
    assert_eq!(pending.ask("close"), format!("err {}", libc::EIO));
    assert_eq!(confirmed.ask("close"), "ok");
    assert!(m.log().contains("may be lost"), "{}", m.log());
    // The kernel releases a file after close(2) has returned: the count follows then.
    wait_until(
        Duration::from_secs(10),
        "no file with unconfirmed writes",
        || unconfirmed_files(scratch.path()) == Some(0),
    );
    // The file itself is fine afterwards.
    let mut again = holder(scratch.path(), &m.p("data.bin"));
    assert_eq!(again.ask("w 2"), "ok");
    assert_eq!(again.ask("close"), "ok");
}

/// A held file whose write was lost at a crash: the next write reports EIO, once; block
/// 1 then goes in, and fsync and close succeed.
fn eio_once_then_works(h: &mut Driven) {
    assert_eq!(h.ask("w 1"), format!("err {}", libc::EIO));
    assert_eq!(h.ask("seek 1"), "ok");
    assert_eq!(h.ask("w 1"), "ok");
    assert_eq!(h.ask("fsync"), "ok");
    assert_eq!(h.ask("close"), "ok");
}

#[test]
fn a_write_after_a_crash_reports_eio_once_then_works() {
    let (server, proxy, mut m, scratch, opts) = through_proxy();
    let mut h = holder(scratch.path(), &m.p("data.bin"));
    proxy.set_mode(Mode::Blackhole);
    assert_eq!(h.ask("w 0"), "ok");
    m.crash();
    proxy.set_mode(Mode::Pass);
    m.restart(&server, &opts).unwrap_or_else(|e| panic!("{e}"));
    eio_once_then_works(&mut h);
    assert_eq!(
        &std::fs::read(server.served.join("data.bin")).unwrap()[BLOCK..2 * BLOCK],
        &block(1)[..]
    );
}

/// With write-back, a crash keeps what was closed (it is in the log) and loses what was
/// written and not closed, reported once, as without write-back.
#[test]
fn with_write_back_a_crash_reports_eio_once_for_what_was_not_closed() {
    let server = Server::start();
    let proxy = Proxy::start(server.port);
    server.write_ssh_config_via(
        proxy.port,
        "  ServerAliveInterval 1\n  ServerAliveCountMax 2\n",
    );
    let scratch = tempfile::tempdir().unwrap();
    let opts = format!(
        "cache={},cache_writeback=on,fsync=local",
        scratch.path().join("cache").display()
    );
    let mut m = Mount::with_store(&server, &opts);
    proxy.set_mode(Mode::Blackhole);
    // Pending files (the outage keeps them from being uploaded): one closed, one held
    // open and written.
    std::fs::write(m.p("closed.bin"), block(3)).unwrap();
    std::fs::write(m.p("held.bin"), b"").unwrap();
    let mut h = holder(scratch.path(), &m.p("held.bin"));
    assert_eq!(h.ask("w 0"), "ok");
    m.crash();
    proxy.set_mode(Mode::Pass);
    m.restart(&server, &opts).unwrap_or_else(|e| panic!("{e}"));
    eio_once_then_works(&mut h);
    wait_until(Duration::from_secs(60), "the log uploaded", || {
        std::fs::read(server.served.join("held.bin")).is_ok_and(|d| d.len() == 2 * BLOCK)
    });
    assert_eq!(
        std::fs::read(server.served.join("closed.bin")).unwrap(),
        block(3)
    );
    assert_eq!(
        &std::fs::read(server.served.join("held.bin")).unwrap()[BLOCK..],
        &block(1)[..]
    );
}

#[test]
fn the_store_holds_the_connection_and_is_emptied_at_unmount() {
    let server = Server::start();
    let mut m = Mount::with_store(&server, "");
    let names = m.store.as_ref().unwrap().names();
    assert_eq!(names, ["fuse", "state-a", "state-b"]);
    m.unmount();
    let store = m.store.as_ref().unwrap();
    wait_until(Duration::from_secs(10), "store emptied", || {
        store.names().is_empty()
    });
}

#[test]
fn a_request_the_dead_daemon_read_but_never_answered_is_answered_by_the_next() {
    let (server, proxy, mut m, scratch, opts) = through_proxy();
    let sock = scratch.path().join("status.sock");
    let mut h = holder(scratch.path(), &m.p("data.bin"));
    assert_eq!(h.ask("seek 5"), "ok");
    // The read goes out to a server that never answers: the daemon has read the kernel's
    // request (its SFTP request is in flight) when it dies.
    proxy.set_mode(Mode::Blackhole);
    writeln!(h.stdin, "sum").unwrap();
    wait_until(Duration::from_secs(10), "the read in flight", || {
        status_json(&sock)["requests_in_flight"].as_u64() >= Some(1)
    });
    m.crash();
    proxy.set_mode(Mode::Pass);
    m.restart(&server, &opts).unwrap_or_else(|e| panic!("{e}"));
    // Only the kernel's resend brings the request to the new daemon.
    let want: u64 = pattern(16 * BLOCK, 3)[5 * BLOCK..6 * BLOCK]
        .iter()
        .map(|b| *b as u64)
        .sum();
    assert_eq!(h.line(), want.to_string());
    assert_eq!(h.ask("close"), "ok");
}
