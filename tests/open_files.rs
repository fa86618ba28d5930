//! Many files open at once: no client-side cap on open files (the old SFTP library capped
//! them at 127 per connection), and every remote handle closed after the last close.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Open file descriptors of the server's processes that point into `served`.
fn server_handles(s: &Server, served: &Path) -> usize {
    let Some(pid) = s.pid() else { return 0 };
    let want = served.to_string_lossy().into_owned();
    children_of(pid)
        .into_iter()
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().starts_with(&want))
                .unwrap_or(false)
        })
        .count()
}

/// Holds `n` files open as `uid`: creates, writes and reads back each, says "open", waits
/// for a line on stdin, closes them all and says "closed".
const HOLDER: &str = r#"
import os, sys
d, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fds = []
for i in range(n):
    fd = os.open(os.path.join(d, f"{tag}-{i}"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, f"{tag} file {i}\n".encode())
    fds.append(fd)
for i, fd in enumerate(fds):
    os.lseek(fd, 0, 0)
    got = os.read(fd, 100)
    assert got == f"{tag} file {i}\n".encode(), (i, got)
print("open", flush=True)
sys.stdin.readline()
for fd in fds:
    os.close(fd)
print("closed", flush=True)
"#;

#[test]
fn a_thousand_files_open_at_once_as_two_users() {
    let s = Server::start();
    let m = Mount::new(&s, "allow_other,default_permissions");
    let dir = m.p("many");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut holders: Vec<_> = [(991, "mastodon"), (70, "postgres")]
        .iter()
        .map(|(uid, tag)| {
            Command::new("setpriv")
                .args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                    HOLDER,
                ])
                .arg(&dir)
                .args(["500", tag])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3")
        })
        .collect();
    let mut lines: Vec<_> = holders
        .iter_mut()
        .map(|h| BufReader::new(h.stdout.take().unwrap()).lines())
        .collect();
    for (l, h) in lines.iter_mut().zip(&mut holders) {
        let first = l.next().and_then(Result::ok);
        if first.as_deref() != Some("open") {
            let _ = h.kill();
            let mut err = String::new();
            if let Some(mut e) = h.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("holder failed: {err}\n{}", m.log());
        }
    }
    let held = server_handles(&s, &s.served);
    assert!(
        held >= 1000,
        "the server holds {held} handles for 1000 open files"
    );
    for h in &mut holders {
        writeln!(h.stdin.as_mut().unwrap()).unwrap();
    }
    for (l, h) in lines.iter_mut().zip(&mut holders) {
        assert_eq!(l.next().and_then(Result::ok).as_deref(), Some("closed"));
        assert!(h.wait().unwrap().success());
    }
    wait_until(
        Duration::from_secs(20),
        "the server's handles to close",
        || server_handles(&s, &s.served) == 0,
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1000);
}

/// A server that runs out of handles (here: its SFTP processes may hold 64 descriptors)
/// does not limit how many files applications hold open: idle remote handles are closed
/// and reopened by path when next used.
#[test]
fn a_server_with_few_handles_still_serves_hundreds_of_open_files() {
    let s = Server::start_nofile(64);
    let m = Mount::new(&s, "");
    let dir = m.p("many");
    std::fs::create_dir(&dir).unwrap();
    let mut holder = Command::new("/usr/bin/python3")
        .args(["-c", HOLDER])
        .arg(&dir)
        .args(["300", "one"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    if lines.next().and_then(Result::ok).as_deref() != Some("open") {
        let _ = holder.kill();
        let mut err = String::new();
        if let Some(mut e) = holder.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("holder failed: {err}\n{}", m.log());
    }
    let held = server_handles(&s, &s.served);
    assert!(held <= 64, "the server holds {held} handles");
    writeln!(holder.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("closed"));
    assert!(holder.wait().unwrap().success());
    for i in [0, 150, 299] {
        assert_eq!(
            std::fs::read_to_string(s.served.join(format!("many/one-{i}"))).unwrap(),
            format!("one file {i}\n")
        );
    }
    wait_until(
        Duration::from_secs(20),
        "the server's handles to close",
        || server_handles(&s, &s.served) == 0,
    );
}
