//! The client against the tests' hostile SFTP server, in memory: one misbehaviour per
//! test, each answered with a clear error and no panic, hang or unbounded memory.

use mastofs_testkit::hostile;

use std::time::Duration;

use bytes::Bytes;

use super::client::{SftpClient, MIN_IO_SIZE};
use super::error::SftpError;
use crate::meta::{Attrs, OpenMode};
use hostile::Mode;

/// A client talking to a hostile server in `mode` over an in-memory stream, serving a
/// fresh directory (kept alive by the returned guard).
async fn client(mode: Mode) -> (SftpClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = tokio::io::duplex(1 << 20);
    tokio::spawn(hostile::serve(b, dir.path().to_path_buf(), mode));
    let c = SftpClient::start(a, Duration::from_secs(2), "SSH-2.0-hostile")
        .await
        .unwrap();
    (c, dir)
}

fn path(dir: &tempfile::TempDir, name: &str) -> String {
    format!("{}/{name}", dir.path().display())
}

#[tokio::test]
async fn binary_handles_and_hundreds_open_at_once() {
    let (c, d) = client(Mode::Plain).await;
    let create = OpenMode {
        read: true,
        write: true,
        create: true,
        ..Default::default()
    };
    let mut handles = Vec::new();
    for i in 0..300 {
        let h = c
            .open(path(&d, &format!("f{i}")), create, &Attrs::default())
            .await
            .unwrap();
        assert!(
            std::str::from_utf8(&h.id).is_err(),
            "the server's handles are binary"
        );
        handles.push(h);
    }
    for (i, h) in handles.iter().enumerate() {
        c.write(h, 0, Bytes::from(format!("file {i}")))
            .await
            .unwrap();
    }
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(
            &c.read(h, 0, 100).await.unwrap()[..],
            format!("file {i}").as_bytes()
        );
        c.close_nowait(h);
    }
}

#[tokio::test]
async fn every_status_code_decodes() {
    for (code, errno) in [
        (9, libc::EBADF),
        (11, libc::EEXIST),
        (14, libc::ENOSPC),
        (99, libc::EIO),
    ] {
        let (c, d) = client(Mode::Status(code)).await;
        let e = c.lstat(path(&d, "trigger")).await.unwrap_err();
        assert_eq!(e.errno(), errno, "status {code}: {e}");
        assert!(
            !e.is_transport(),
            "status {code} is an answer, not a lost link"
        );
        // The session goes on.
        c.lstat(path(&d, "")).await.unwrap();
    }
}

/// A protocol error fails the request and the session (the connection is replaced).
async fn assert_confused(mode: Mode, what: &str) {
    let (c, d) = client(mode).await;
    std::fs::write(d.path().join("trigger"), vec![7u8; 100]).unwrap();
    let e = match mode {
        Mode::LongRead => {
            let h = c
                .open(
                    path(&d, "trigger"),
                    OpenMode {
                        read: true,
                        ..Default::default()
                    },
                    &Attrs::default(),
                )
                .await
                .unwrap();
            c.read(&h, 0, 10).await.unwrap_err()
        }
        _ => c.lstat(path(&d, "trigger")).await.unwrap_err(),
    };
    // The request whose reply broke the protocol gets the protocol error; a request that
    // was merely in flight (the stray reply named another id, the bad packet could not be
    // matched to a request) may be sent again.
    if matches!(mode, Mode::UnknownId | Mode::HugePacket) {
        assert!(e.is_transport() && !e.is_confused(), "{what}: {e}");
    } else {
        assert!(e.is_confused(), "{what}: {e}");
    }
    assert!(e.to_string().contains(what), "{what}: {e}");
    assert!(
        c.failure().is_some_and(|f| f.is_confused()),
        "{what}: the session is marked confused"
    );
    assert!(c.lstat(path(&d, "")).await.unwrap_err().is_transport());
}

#[tokio::test]
async fn protocol_errors_fail_the_session() {
    assert_confused(Mode::UnknownId, "not in flight").await;
    assert_confused(Mode::WrongType, "status was due").await;
    assert_confused(Mode::LongRead, "answered with").await;
    assert_confused(Mode::HugePacket, "limit").await;
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let (c, d) = client(Mode::Silent).await;
    let e = c.lstat(path(&d, "trigger")).await.unwrap_err();
    assert!(matches!(e, SftpError::Transport(_)), "{e}");
}

#[tokio::test]
async fn an_endless_listing_is_refused_within_its_budget() {
    let (c, d) = client(Mode::EndlessDir).await;
    std::fs::create_dir(d.path().join("trigger")).unwrap();
    let e = c
        .read_dir(path(&d, "trigger"), usize::MAX, 2)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
    // With a smaller cap the listing just stops there.
    assert!(c
        .read_dir(path(&d, "trigger"), 1000, 2)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn tiny_limits_are_floored() {
    let (c, _d) = client(Mode::TinyLimits).await;
    assert_eq!(c.max_read, MIN_IO_SIZE);
    assert_eq!(c.max_write, MIN_IO_SIZE);
}

#[tokio::test]
async fn invalid_handle_for_a_held_handle_is_confusion() {
    let (c, d) = client(Mode::InvalidHandle).await;
    let h = c
        .open(
            path(&d, "trigger"),
            OpenMode {
                write: true,
                create: true,
                ..Default::default()
            },
            &Attrs::default(),
        )
        .await
        .unwrap();
    let e = c.write(&h, 0, Bytes::from_static(b"x")).await.unwrap_err();
    assert!(e.is_confused(), "{e}");
    assert_eq!(e.errno(), libc::EIO);
}

#[tokio::test]
async fn odd_names_come_through_as_bytes() {
    let (c, d) = client(Mode::BadNames).await;
    let names: Vec<Bytes> = c
        .read_dir(path(&d, ""), 1000, 2)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.iter().any(|n| &n[..] == b"latin1-\xe9t\xe9"));
    assert!(names.iter().any(|n| &n[..] == b"nul\0name"));
}

#[tokio::test]
async fn symlinks_go_out_in_the_order_the_server_declares() {
    for mode in [Mode::Plain, Mode::DraftSymlink] {
        let (c, d) = client(mode).await;
        assert_eq!(c.extensions.symlink_link_first, mode == Mode::DraftSymlink);
        c.symlink("the-target", path(&d, "link")).await.unwrap();
        assert_eq!(
            std::fs::read_link(d.path().join("link")).unwrap(),
            std::path::Path::new("the-target"),
            "{mode:?}"
        );
    }
}

/// gesftpserver, driven over its stdin/stdout: its handles are 8 raw bytes (past the
/// 128th they are not UTF-8-safe), it declares the draft's symlink order, and it holds at
/// most 128 handles per session, which the client learns.
#[tokio::test]
async fn gesftpserver_is_recognized() {
    let d = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new("/usr/libexec/gesftpserver")
        .current_dir(d.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("gesftpserver (scripts/install-deps.sh installs it)");
    let io = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let c = SftpClient::start(io, Duration::from_secs(5), "gesftpserver")
        .await
        .unwrap();
    assert!(c.extensions.symlink_link_first);
    assert_eq!(c.max_handles, Some(128));
    let mode = OpenMode {
        read: true,
        write: true,
        create: true,
        ..Default::default()
    };
    for i in 0..100 {
        let h = c
            .open(path(&d, &format!("f{i}")), mode, &Attrs::default())
            .await
            .unwrap();
        assert_eq!(h.id.len(), 8);
        c.write(&h, 0, Bytes::from(format!("{i}"))).await.unwrap();
        assert_eq!(
            &c.read(&h, 0, 10).await.unwrap()[..],
            format!("{i}").as_bytes()
        );
    }
    c.symlink("the-target", path(&d, "link")).await.unwrap();
    assert_eq!(
        std::fs::read_link(d.path().join("link")).unwrap(),
        std::path::Path::new("the-target")
    );
}
