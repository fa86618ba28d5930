//! A mount of a deliberately bad SFTP server (tests/kit/src/hostile.rs, run by sshd as its sftp
//! subsystem), one misbehaviour per test: the operation that meets it gets a clear error,
//! the daemon lives, and the mount serves afterwards.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::IntoRawFd;
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// The hostile server program, built (or brought up to date) once per test run: a
/// `cargo test` of one target does not rebuild examples.
fn hostile_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "hostile_sftp"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot build the hostile server");
        let exe = std::env::current_exe().expect("test binary");
        exe.parent()
            .and_then(|deps| deps.parent())
            .expect("target dir")
            .join("examples/hostile_sftp")
    })
    .clone()
}

/// sshd serving the hostile server in `mode`, and a mount of it.
fn mount(mode: &str) -> (Server, Mount) {
    let s = Server::start_configured(
        "ed25519",
        &format!("Subsystem sftp {} {mode}\n", hostile_bin().display()),
    );
    let m = Mount::new(&s, "timeout=30");
    (s, m)
}

/// The mount still works: a file written through it arrives and reads back.
fn still_serves(s: &Server, m: &mut Mount) {
    std::fs::write(m.p("after"), b"still serving").unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    assert_eq!(
        std::fs::read(s.served.join("after")).unwrap(),
        b"still serving"
    );
    assert_eq!(std::fs::read(m.p("after")).unwrap(), b"still serving");
    assert!(m.is_running(), "the daemon died:\n{}", m.log());
}

fn lstat_errno(m: &Mount, name: &str) -> i32 {
    errno(std::fs::symlink_metadata(m.p(name)).expect_err("lstat must fail"))
}

#[test]
fn status_codes_past_8_map_to_errnos() {
    for (code, want) in [
        ("9", libc::EBADF),
        ("11", libc::EEXIST),
        ("14", libc::ENOSPC),
        ("99", libc::EIO),
    ] {
        let (s, mut m) = mount(&format!("status-{code}"));
        assert_eq!(
            lstat_errno(&m, "trigger"),
            want,
            "status {code}\n{}",
            m.log()
        );
        still_serves(&s, &mut m);
    }
}

#[test]
fn protocol_violations_fail_the_request_and_the_mount_recovers() {
    for mode in ["unknown-id", "wrong-type", "huge-packet"] {
        let (s, mut m) = mount(mode);
        assert_eq!(lstat_errno(&m, "trigger"), libc::EIO, "{mode}\n{}", m.log());
        assert!(
            m.log().contains("broke the protocol"),
            "{mode}: logged\n{}",
            m.log()
        );
        still_serves(&s, &mut m);
    }
}

#[test]
fn a_read_reply_longer_than_asked_is_an_error_not_data() {
    let (s, mut m) = mount("long-read");
    std::fs::write(s.served.join("trigger"), vec![b'a'; 100]).unwrap();
    let e = std::fs::read(m.p("trigger")).expect_err("read must fail");
    assert_eq!(errno(e), libc::EIO);
    still_serves(&s, &mut m);
}

/// Confused-state reply to a write of an open file: the application hears EIO at close,
/// never success.
#[test]
fn invalid_handle_on_a_write_is_eio_at_close() {
    let (s, mut m) = mount("invalid-handle");
    let mut f = std::fs::File::create(m.p("trigger")).unwrap();
    let written = std::io::Write::write_all(&mut f, &vec![1u8; 1 << 20]);
    let closed = nix::unistd::close(f.into_raw_fd());
    assert!(
        written.is_err() || closed == Err(nix::errno::Errno::EIO),
        "write {written:?}, close {closed:?}\n{}",
        m.log()
    );
    still_serves(&s, &mut m);
}

#[test]
fn an_endless_listing_fails_with_bounded_memory() {
    let (s, mut m) = mount("endless-dir");
    std::fs::create_dir(s.served.join("trigger")).unwrap();
    let before = m.rss_kib();
    let e = std::fs::read_dir(m.p("trigger"))
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .expect_err("listing must fail");
    assert_eq!(errno(e), libc::EIO);
    let grew = m.rss_kib().saturating_sub(before);
    assert!(grew < 256 << 10, "the daemon grew by {grew} KiB");
    still_serves(&s, &mut m);
}

#[test]
fn tiny_limits_still_move_whole_files() {
    let (s, m) = mount("tiny-limits");
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(m.p("big"), &data).unwrap();
    assert!(std::fs::read(s.served.join("big")).unwrap() == data);
    assert!(std::fs::read(m.p("big")).unwrap() == data);
}

#[test]
fn bad_names_and_attributes_never_reach_the_kernel() {
    let (s, m) = mount("bad-names");
    std::fs::write(s.served.join("real"), b"x").unwrap();
    use std::os::unix::ffi::OsStrExt;
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    // The non-UTF-8 name is a name like any other; `/`, NUL, `.`, `..`, empty, 300 bytes
    // and the second "dup" are dropped.
    let want: [&[u8]; 3] = [b"dup", b"latin1-\xe9t\xe9", b"real"];
    assert_eq!(names, want, "{}", m.log());
    drop(m);
    let (_s, m) = mount("bad-attrs");
    let huge = std::fs::symlink_metadata(m.p("huge")).unwrap();
    assert_eq!(huge.len(), i64::MAX as u64);
    let bare = std::fs::symlink_metadata(m.p("bare")).unwrap();
    assert!(bare.is_file());
    use std::os::unix::fs::MetadataExt;
    let setuid = std::fs::symlink_metadata(m.p("setuid")).unwrap();
    assert_eq!(setuid.mode() & 0o7777, 0o4777, "shown as the server says");
    assert!(setuid.is_file());
    let device = std::fs::symlink_metadata(m.p("device")).unwrap();
    assert!(device.file_type().is_block_device());
    // Set-id bits and device nodes from the server are harmless: the mount is nosuid,nodev.
    let mp = m.path().to_string_lossy().into_owned();
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mp.as_str()))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
}
