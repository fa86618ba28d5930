//! Behaviours where SFTP servers differ, asserted the same on each: the suite runs against
//! OpenSSH, ProFTPD and gesftpserver (`MASTOFS_TEST_SERVER`, see `scripts/test.sh`).
mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::*;

/// A symlink made through the mount is a symlink everywhere: listed as one, `readlink`
/// gives its text, `lstat` shows the link and `stat` its target; replaced by rename.
#[test]
fn a_symlink_created_lists_reads_and_stats_as_one() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    fs::create_dir_all(m.p("backup/db/20261129-F")).unwrap();
    fs::write(m.p("backup/db/20261129-F/backup.manifest"), b"m").unwrap();
    std::os::unix::fs::symlink("20261129-F", m.p("backup/db/latest")).unwrap();
    assert_eq!(
        fs::read_link(s.served.join("backup/db/latest")).unwrap(),
        Path::new("20261129-F"),
        "the server's link has the text asked for"
    );
    assert_eq!(
        fs::read_link(m.p("backup/db/latest")).unwrap(),
        Path::new("20261129-F")
    );
    assert!(fs::symlink_metadata(m.p("backup/db/latest"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::metadata(m.p("backup/db/latest")).unwrap().is_dir());
    assert_eq!(
        fs::read(m.p("backup/db/latest/backup.manifest")).unwrap(),
        b"m"
    );
    let listed: Vec<(String, bool)> = fs::read_dir(m.p("backup/db"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.file_type().unwrap().is_symlink(),
            )
        })
        .collect();
    assert!(listed.contains(&("latest".into(), true)), "{listed:?}");
    // A link to a file, and one whose target does not exist (yet).
    std::os::unix::fs::symlink("../../x", m.p("backup/db/dangling")).unwrap();
    assert!(fs::symlink_metadata(m.p("backup/db/dangling"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_link(m.p("backup/db/dangling")).unwrap(),
        Path::new("../../x")
    );
    assert_eq!(
        errno(fs::metadata(m.p("backup/db/dangling")).unwrap_err()),
        libc::ENOENT
    );
    fs::write(m.p("x"), b"now").unwrap();
    assert_eq!(fs::read(m.p("backup/db/dangling")).unwrap(), b"now");
}

/// `echo >> file`: appends land at the end (no server APPEND needed).
#[test]
fn appends_go_to_the_end() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    fs::write(m.p("log"), b"one\n").unwrap();
    for line in ["two\n", "three\n"] {
        let sh = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '{}' >> '{}'",
                line.trim_end(),
                m.p("log").display()
            ))
            .status()
            .unwrap();
        assert!(sh.success());
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.p("log"))
            .unwrap();
        f.write_all(b"\n").unwrap();
    }
    assert_eq!(
        fs::read(s.served.join("log")).unwrap(),
        b"one\ntwo\nthree\n"
    );
    assert_eq!(fs::read(m.p("log")).unwrap(), b"one\ntwo\nthree\n");
}

/// A reader keeps following a file that another descriptor extends (ProFTPD answers EOF
/// past the size it saw at OPEN: mastofs reopens and reads again).
#[test]
fn a_reader_follows_a_file_another_descriptor_extends() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    fs::write(m.p("wal"), vec![b'a'; 10_000]).unwrap();
    let mut r = fs::File::open(m.p("wal")).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 10_000);
    let mut w = fs::OpenOptions::new().write(true).open(m.p("wal")).unwrap();
    for round in 1..=3u8 {
        w.seek(SeekFrom::End(0)).unwrap();
        w.write_all(&vec![b'a' + round; 300_000]).unwrap();
        w.sync_all().unwrap();
        let mut more = Vec::new();
        r.read_to_end(&mut more).unwrap();
        assert_eq!(more.len(), 300_000, "round {round}");
        assert!(more.iter().all(|&b| b == b'a' + round), "round {round}");
    }
}

/// A file extended by truncate reads as zeros to its new size, also through mmap.
#[test]
fn a_file_extended_by_truncate_reads_and_maps() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    fs::write(m.p("t"), b"head").unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("t"))
        .unwrap();
    let r = fs::File::open(m.p("t")).unwrap();
    f.set_len(3 * 4096 + 5).unwrap();
    let mut all = Vec::new();
    (&r).read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 3 * 4096 + 5);
    assert_eq!(&all[..4], b"head");
    assert!(all[4..].iter().all(|&b| b == 0));
    use std::os::fd::AsRawFd;
    let len = 3 * 4096 + 5;
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            r.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mapped = std::slice::from_raw_parts(p as *const u8, len);
        assert_eq!(&mapped[..4], b"head");
        // The last page lies beyond the size the file had when it was opened.
        assert_eq!(mapped[len - 1], 0);
        libc::munmap(p, len);
    }
    assert_eq!(fs::metadata(s.served.join("t")).unwrap().len(), len as u64);
}

/// One 4 MiB write(2) arrives whole (split into requests the server accepts).
#[test]
fn a_four_mib_write_arrives_whole() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut f = fs::File::create(m.p("big")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(fs::read(s.served.join("big")).unwrap() == data);
    assert!(fs::read(m.p("big")).unwrap() == data);
}

/// Files and directories get the mode asked for (less the caller's umask), whether or not
/// the server applies a umask of its own.
#[test]
fn create_and_mkdir_modes_are_as_asked() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    let old = unsafe { libc::umask(0) };
    let result = std::panic::catch_unwind(|| {
        for mode in [0o777, 0o750, 0o700, 0o1777] {
            let d = m.p(&format!("d{mode:o}"));
            fs::DirBuilder::new()
                .mode(mode)
                .create(&d)
                .unwrap_or_else(|e| panic!("mkdir {mode:o}: {e}"));
            let on_server = fs::metadata(s.served.join(format!("d{mode:o}"))).unwrap();
            assert_eq!(on_server.mode() & 0o7777, mode, "mkdir {mode:o}");
            assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, mode);
        }
        for mode in [0o666, 0o640, 0o600, 0o777] {
            let f = m.p(&format!("f{mode:o}"));
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&f)
                .unwrap();
            let on_server = fs::metadata(s.served.join(format!("f{mode:o}"))).unwrap();
            assert_eq!(on_server.mode() & 0o7777, mode, "create {mode:o}");
            assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, mode);
        }
    });
    unsafe { libc::umask(old) };
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    // chmod after the fact too.
    fs::set_permissions(m.p("f600"), fs::Permissions::from_mode(0o604)).unwrap();
    assert_eq!(
        fs::metadata(s.served.join("f600")).unwrap().mode() & 0o777,
        0o604
    );
}

/// What pgBackRest does to its repository: write a file, fsync it, rename it over the
/// old one, point a relative symlink at a directory and replace that link.
#[test]
fn a_pgbackrest_like_sequence() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    let st = m.p("backup/db");
    fs::create_dir_all(&st).unwrap();
    for (round, label) in ["20261129-010000F", "20261129-020000F_20261129-030000I"]
        .iter()
        .enumerate()
    {
        fs::create_dir(st.join(label)).unwrap();
        let info = format!("[backup:current]\n{label}={{round {round}}}\n");
        let tmp = st.join("backup.info.tmp");
        let mut f = fs::File::create(&tmp).unwrap();
        f.write_all(info.as_bytes()).unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::rename(&tmp, st.join("backup.info")).unwrap();
        let _ = fs::remove_file(st.join("latest"));
        std::os::unix::fs::symlink(label, st.join("latest.tmp")).unwrap();
        fs::rename(st.join("latest.tmp"), st.join("latest")).unwrap();
        assert_eq!(fs::read_link(st.join("latest")).unwrap(), Path::new(label));
        assert!(fs::metadata(st.join("latest")).unwrap().is_dir());
        assert_eq!(
            fs::read_to_string(s.served.join("backup/db/backup.info")).unwrap(),
            info
        );
        assert_eq!(
            fs::read_link(s.served.join("backup/db/latest")).unwrap(),
            Path::new(label)
        );
    }
    assert!(!s.served.join("backup/db/backup.info.tmp").exists());
    assert!(!s.served.join("backup/db/latest.tmp").exists());
}

/// Renaming a link moves the link, never its target (ProFTPD's RENAME would move the
/// target: mastofs makes the link anew there), and a rename over a link replaces the link.
#[test]
fn renaming_a_link_moves_the_link_not_its_target() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    let sv = |n: &str| s.served.join(n);
    fs::create_dir(m.p("A")).unwrap();
    fs::create_dir(m.p("B")).unwrap();
    fs::write(m.p("B/in-b"), b"b").unwrap();
    std::os::unix::fs::symlink("A", m.p("cur")).unwrap();
    std::os::unix::fs::symlink("B", m.p("next")).unwrap();
    fs::rename(m.p("next"), m.p("cur")).unwrap();
    assert!(sv("A").is_dir() && sv("B/in-b").is_file(), "targets stay");
    assert_eq!(fs::read_link(sv("cur")).unwrap(), Path::new("B"));
    assert!(sv("next").symlink_metadata().is_err());
    assert_eq!(fs::read_link(m.p("cur")).unwrap(), Path::new("B"));
    assert_eq!(fs::read(m.p("cur/in-b")).unwrap(), b"b");
    // A link to a file, renamed to a new name.
    fs::write(m.p("f"), b"F").unwrap();
    std::os::unix::fs::symlink("f", m.p("lf")).unwrap();
    fs::rename(m.p("lf"), m.p("lf2")).unwrap();
    assert_eq!(fs::read(sv("f")).unwrap(), b"F");
    assert_eq!(fs::read_link(sv("lf2")).unwrap(), Path::new("f"));
    // A file renamed over a link replaces the link, not the link's target.
    fs::write(m.p("g"), b"G").unwrap();
    fs::rename(m.p("g"), m.p("cur")).unwrap();
    assert_eq!(fs::read(sv("cur")).unwrap(), b"G");
    assert!(!sv("cur").symlink_metadata().unwrap().is_symlink());
    assert!(sv("B/in-b").is_file());
    // A link over a directory, and over an existing name without replacing: refused.
    assert_eq!(
        errno(fs::rename(m.p("lf2"), m.p("A")).unwrap_err()),
        libc::EISDIR
    );
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&m.p("lf2")).as_ptr(),
            libc::AT_FDCWD,
            c(&m.p("f")).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(fs::read_link(sv("lf2")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(sv("f")).unwrap(), b"F");
}

/// The probe finds what each server does, `/status` and `mastofs status` show it, and the
/// probe's scratch directory is gone.
#[test]
fn the_probe_finds_what_the_server_does() {
    let s = Server::start();
    let sock = s.dir.path().join("status.sock");
    let m = Mount::new(&s, &format!("status_socket={}", sock.display()));
    let caps = status_json(&sock)["server_capabilities"].clone();
    let flag = |k: &str| caps[k].as_bool().unwrap_or_else(|| panic!("{k} in {caps}"));
    let proftpd = s.kind == Kind::ProFtpd;
    assert_eq!(caps["source"], "probed", "{caps}");
    assert_eq!(flag("lstat_follows_links"), proftpd, "{caps}");
    assert_eq!(flag("readlink_resolves"), proftpd, "{caps}");
    assert_eq!(flag("rename_follows_links"), proftpd, "{caps}");
    assert_eq!(flag("append_refused"), proftpd, "{caps}");
    assert_eq!(flag("read_stops_at_open_size"), proftpd, "{caps}");
    assert_eq!(
        flag("symlink_link_first"),
        s.kind == Kind::Gesftpserver,
        "{caps}"
    );
    assert_eq!(caps["sftp_version"], 3);
    let umasks = match s.kind {
        Kind::OpenSsh => ("022", "022"),
        Kind::ProFtpd => ("000", "022"),
        Kind::Gesftpserver => ("000", "000"),
    };
    assert_eq!(
        (&caps["open_umask"], &caps["mkdir_umask"]),
        (&umasks.0.into(), &umasks.1.into()),
        "{caps}"
    );
    let out = std::process::Command::new(BIN)
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server capabilities: SFTP v3"), "{text}");
    let left: Vec<_> = fs::read_dir(&s.served)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(m);
}
