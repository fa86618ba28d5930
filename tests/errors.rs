//! Bad input: every case exits non-zero with one specific line, never a panic or a hang.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs mastofs in the foreground and expects it to fail with `needle` in its message.
fn fails_with(s: &Server, source: &str, opts: &str, needle: &str) {
    let mnt = tempfile::tempdir().unwrap();
    fails_at(s, source, mnt.path(), opts, needle);
}

fn fails_at(s: &Server, source: &str, mnt: &std::path::Path, opts: &str, needle: &str) {
    let mut cmd = Command::new(BIN);
    cmd.arg(source)
        .arg(mnt)
        .arg("-f")
        .arg("-F")
        .arg(&s.ssh_config);
    if !opts.is_empty() {
        cmd.arg("-o").arg(opts);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {opts:?}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!is_mounted(mnt));
}

#[test]
fn option_errors() {
    let s = Server::start();
    fails_with(&s, &s.source(), "frobnicate", "unknown option 'frobnicate'");
    fails_with(
        &s,
        &s.source(),
        "ssh_command=ssh -v",
        "ssh_command is not supported",
    );
    fails_with(
        &s,
        &s.source(),
        "password_stdin",
        "password_stdin is not supported",
    );
    fails_with(
        &s,
        &s.source(),
        "uid=no-such-user-q",
        "unknown user 'no-such-user-q'",
    );
    fails_with(&s, "no-colon", "", "expected [user@]host:[path]");
}

#[test]
fn network_errors() {
    let s = Server::start();
    let key = format!("IdentityFile={}", s.user_key.display());
    fails_with(
        &s,
        "nonexistent-host.invalid:/x",
        &key,
        "cannot resolve host 'nonexistent-host.invalid'",
    );
    let (_closed_fd, closed) = refusing_port();
    fails_with(
        &s,
        "127.0.0.1:/x",
        &format!("{key},Port={closed}"),
        "Connection refused",
    );
    // A server that accepts TCP but never speaks SSH.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    fails_with(
        &s,
        "127.0.0.1:/x",
        &format!("{key},Port={port},ConnectTimeout=2"),
        "timed out after 2 s",
    );
    drop(silent);
}

#[test]
fn auth_and_key_errors() {
    let s = Server::start();
    let other = s.dir.path().join("other_key");
    keygen(&other, "ed25519");
    fails_with(
        &s,
        &s.source(),
        &format!("IdentityFile={}", other.display()),
        "authentication failed",
    );
    fails_with(
        &s,
        &s.source(),
        "IdentityFile=/nonexistent/key",
        "key file /nonexistent/key",
    );
    let enc = s.dir.path().join("enc_key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
        .arg(&enc)
        .status()
        .unwrap();
    assert!(st.success());
    fails_with(
        &s,
        &s.source(),
        &format!("IdentityFile={}", enc.display()),
        "encrypted",
    );
}

#[test]
fn host_key_errors() {
    let s = Server::start();
    let good = std::fs::read_to_string(&s.known_hosts).unwrap();
    std::fs::write(&s.known_hosts, "").unwrap();
    fails_with(&s, &s.source(), "", "is not known (key SHA256:");
    // Changed key: known_hosts lists another ed25519 key for this host.
    let other = s.dir.path().join("other_host");
    keygen(&other, "ed25519");
    let pubkey = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let blob = pubkey.split_whitespace().nth(1).unwrap();
    std::fs::write(
        &s.known_hosts,
        format!("[127.0.0.1]:{} ssh-ed25519 {blob}\n", s.port),
    )
    .unwrap();
    fails_with(&s, &s.source(), "", "HAS CHANGED");
    // Revoked.
    let host_blob = good.split_whitespace().nth(2).unwrap();
    std::fs::write(
        &s.known_hosts,
        format!("{good}@revoked * ssh-ed25519 {host_blob}\n"),
    )
    .unwrap();
    fails_with(&s, &s.source(), "", "@revoked");
    // accept-new records the key, and the mount works.
    std::fs::write(&s.known_hosts, "").unwrap();
    let m = Mount::try_new(&s, &s.source(), "StrictHostKeyChecking=accept-new").unwrap();
    assert!(std::fs::read_to_string(&s.known_hosts)
        .unwrap()
        .contains(&format!("[127.0.0.1]:{}", s.port)));
    drop(m);
}

#[test]
fn remote_path_and_mountpoint_errors() {
    let s = Server::start();
    std::fs::write(s.served.join("file"), b"x").unwrap();
    fails_with(
        &s,
        &format!("box:{}/missing", s.served.display()),
        "",
        "No such file",
    );
    fails_with(
        &s,
        &format!("box:{}/file", s.served.display()),
        "",
        "not a directory",
    );
    fails_at(
        &s,
        &s.source(),
        std::path::Path::new("/nonexistent/mnt"),
        "",
        "mountpoint /nonexistent/mnt",
    );
    let m = Mount::new(&s, "");
    let out = Command::new(BIN)
        .arg(s.source())
        .arg(m.path())
        .arg("-f")
        .arg("-F")
        .arg(&s.ssh_config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already mounted"));
}

#[test]
fn every_key_type_authenticates() {
    for kind in ["ecdsa", "rsa"] {
        let s = Server::start_with(kind);
        let m = Mount::new(&s, "");
        std::fs::write(m.p("ok"), kind).unwrap();
        assert_eq!(std::fs::read_to_string(s.served.join("ok")).unwrap(), kind);
    }
}

/// A small tmpfs mounted inside the served tree, unmounted even when the test fails.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(at: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs");
        SmallDisk(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes 4 MiB into a 1 MiB remote disk and returns the errno that reached the
/// application (from write, fsync or close), after `finish` ends the file.
fn fill(path: &std::path::Path, finish: impl Fn(std::fs::File) -> std::io::Result<()>) -> i32 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..4 {
        if let Err(e) = f.write_all(&chunk) {
            return errno(e);
        }
    }
    finish(f).map_or_else(errno, |()| 0)
}

fn free_bytes(p: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

#[test]
fn a_full_remote_disk_is_enospc_and_nothing_else_breaks() {
    use std::os::fd::IntoRawFd;
    let s = Server::start();
    let _disk = SmallDisk::new(s.served.join("small"), "1m");
    let m = Mount::new(&s, "");
    // Writes may be acknowledged before the server answers: the failure must then come
    // from fsync, or from close itself.
    let by_fsync = fill(&m.p("small/a"), |f| f.sync_all());
    assert_eq!(
        by_fsync,
        libc::ENOSPC,
        "write or fsync; on server {:?}, log {}",
        std::fs::metadata(s.served.join("small/a")).map(|m| m.len()),
        m.log()
    );
    std::fs::remove_file(m.p("small/a")).unwrap();
    // The remote handle of `a` is closed behind the application's back: its space comes
    // back a moment later.
    wait_until(Duration::from_secs(10), "space of a freed", || {
        free_bytes(&s.served.join("small")) > 900 << 10
    });
    let by_close = fill(&m.p("small/b"), |f| {
        let fd = f.into_raw_fd();
        match unsafe { libc::close(fd) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    assert_eq!(by_close, libc::ENOSPC, "write or close");
    std::fs::remove_file(m.p("small/b")).unwrap();
    // The mount goes on: a file elsewhere is written and read back.
    std::fs::write(m.p("fine"), b"still fine").unwrap();
    assert_eq!(std::fs::read(s.served.join("fine")).unwrap(), b"still fine");
    let log = m.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Host keys and ciphers that servers without ed25519 or chacha20 offer: RSA with
/// rsa-sha2-512 and rsa-sha2-256, ECDSA, AES-CTR and AES-GCM alone.
#[test]
fn host_key_types_and_ciphers_other_servers_offer() {
    for (host, extra) in [
        ("rsa", "HostKeyAlgorithms rsa-sha2-512\n"),
        ("rsa", "HostKeyAlgorithms rsa-sha2-256\n"),
        ("ecdsa", ""),
        ("ed25519", "Ciphers aes128-ctr\n"),
        ("ed25519", "Ciphers aes256-ctr\n"),
        ("ed25519", "Ciphers aes256-gcm@openssh.com\n"),
    ] {
        let s = Server::start_host(host, extra);
        let m = Mount::try_new(&s, &s.source(), "")
            .unwrap_or_else(|e| panic!("{host} host key, {extra}: {e}"));
        std::fs::write(m.p("ok"), host).unwrap();
        assert_eq!(std::fs::read_to_string(s.served.join("ok")).unwrap(), host);
    }
}
