//! Every filesystem operation through a real kernel mount of a real sshd.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path")
}

#[test]
fn files_read_write_at_offsets() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    // Create, write at scattered offsets (a hole), read back, through the server too.
    let p = m.p("f.bin");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"tail", 3_000_000).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    f.write_all_at(&big, 100).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let on_server = fs::read(s.served.join("f.bin")).unwrap();
    assert_eq!(on_server.len(), 3_000_004);
    assert_eq!(&on_server[..4], b"head");
    assert_eq!(&on_server[100..100 + big.len()], &big[..]);
    assert_eq!(&on_server[3_000_000..], b"tail");
    assert!(on_server[2_600_100..3_000_000].iter().all(|b| *b == 0));
    // Read through the mount at an offset.
    let mut f = fs::File::open(&p).unwrap();
    f.seek(SeekFrom::Start(100)).unwrap();
    let mut buf = vec![0; big.len()];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, big);
    assert_eq!(fs::metadata(&p).unwrap().len(), 3_000_004);
    // Append mode writes at the end.
    let mut a = fs::OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"++").unwrap();
    drop(a);
    assert!(fs::read(s.served.join("f.bin"))
        .unwrap()
        .ends_with(b"tail++"));
    // Overwrite with O_TRUNC.
    fs::write(&p, b"short").unwrap();
    assert_eq!(fs::read(s.served.join("f.bin")).unwrap(), b"short");
}

#[test]
fn directories_and_names() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    fs::create_dir(m.p("d")).unwrap();
    assert!(s.served.join("d").is_dir());
    for i in 0..300 {
        fs::write(m.p(&format!("d/n{i:03}")), b"x").unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(m.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 300);
    assert_eq!(names[0], "n000");
    // Errors with precise errnos.
    assert_eq!(errno(fs::create_dir(m.p("d")).unwrap_err()), libc::EEXIST);
    assert_eq!(
        errno(fs::remove_dir(m.p("d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(errno(fs::metadata(m.p("nope")).unwrap_err()), libc::ENOENT);
    assert_eq!(errno(fs::remove_file(m.p("d")).unwrap_err()), libc::EISDIR);
    let long = "x".repeat(300);
    assert_eq!(
        errno(fs::write(m.p(&long), b"").unwrap_err()),
        libc::ENAMETOOLONG
    );
    // Remove everything.
    for i in 0..300 {
        fs::remove_file(m.p(&format!("d/n{i:03}"))).unwrap();
    }
    fs::remove_dir(m.p("d")).unwrap();
    assert!(!s.served.join("d").exists());
    assert_eq!(errno(fs::remove_file(m.p("d")).unwrap_err()), libc::ENOENT);
}

#[test]
fn rename_replace_and_noreplace() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    fs::write(m.p("a"), b"A").unwrap();
    fs::write(m.p("b"), b"B").unwrap();
    // Atomic replace (posix-rename).
    fs::rename(m.p("a"), m.p("b")).unwrap();
    assert_eq!(fs::read(s.served.join("b")).unwrap(), b"A");
    assert!(!s.served.join("a").exists());
    // RENAME_NOREPLACE.
    fs::write(m.p("c"), b"C").unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(&m.p("c")).as_ptr(),
            libc::AT_FDCWD,
            cstr(&m.p("b")).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(fs::read(s.served.join("b")).unwrap(), b"A");
    // Directory rename keeps children reachable under the new name.
    fs::create_dir_all(m.p("d1/sub")).unwrap();
    fs::write(m.p("d1/sub/f"), b"F").unwrap();
    fs::rename(m.p("d1"), m.p("d2")).unwrap();
    assert_eq!(fs::read(m.p("d2/sub/f")).unwrap(), b"F");
    assert_eq!(
        errno(fs::metadata(m.p("d1/sub/f")).unwrap_err()),
        libc::ENOENT
    );
    // An open file follows its rename.
    let mut f = fs::OpenOptions::new().write(true).open(m.p("c")).unwrap();
    fs::rename(m.p("c"), m.p("c2")).unwrap();
    f.write_all(b"xx").unwrap();
    drop(f);
    assert_eq!(fs::read(s.served.join("c2")).unwrap(), b"xx");
}

#[test]
fn symlinks_hardlinks_and_transform() {
    let s = Server::start();
    fs::create_dir(s.served.join("sub")).unwrap();
    fs::write(s.served.join("target"), b"T").unwrap();
    std::os::unix::fs::symlink(s.served.join("target"), s.served.join("sub/abs")).unwrap();
    {
        let m = Mount::new(&s, "");
        std::os::unix::fs::symlink("target", m.p("rel")).unwrap();
        assert_eq!(
            fs::read_link(s.served.join("rel")).unwrap(),
            Path::new("target")
        );
        assert_eq!(fs::read_link(m.p("rel")).unwrap(), Path::new("target"));
        assert_eq!(fs::read(m.p("rel")).unwrap(), b"T");
        assert!(fs::symlink_metadata(m.p("rel"))
            .unwrap()
            .file_type()
            .is_symlink());
        // An absolute target inside the mount is shown relative to the link (containment,
        // the default; ProFTPD's READLINK answers the resolved path, shown the same way).
        let abs = fs::read_link(m.p("sub/abs")).unwrap();
        assert_eq!(abs, Path::new("../target"));
        assert_eq!(fs::read(m.p("sub/abs")).unwrap(), b"T");
        // Hard link (hardlink@openssh.com).
        fs::hard_link(m.p("target"), m.p("hl")).unwrap();
        assert_eq!(
            fs::metadata(s.served.join("hl")).unwrap().ino(),
            fs::metadata(s.served.join("target")).unwrap().ino()
        );
    }
    let m = Mount::new(&s, "transform_symlinks");
    assert_eq!(
        fs::read_link(m.p("sub/abs")).unwrap(),
        Path::new("../target")
    );
    drop(m);
    // Trusting the server: the target as the server has it (ProFTPD's READLINK resolves,
    // and an absolute answer inside the mount is still shown relative: the exception).
    let m = Mount::new(&s, "no_contain_symlinks");
    let abs = fs::read_link(m.p("sub/abs")).unwrap();
    if s.kind == common::Kind::ProFtpd {
        assert_eq!(abs, Path::new("../target"));
    } else {
        assert_eq!(abs, s.served.join("target"));
    }
    assert_eq!(fs::read(m.p("sub/abs")).unwrap(), b"T");
    drop(m);
    let m = Mount::new(&s, "follow_symlinks");
    assert!(fs::symlink_metadata(m.p("rel")).unwrap().is_file());
}

#[test]
fn setattr_chmod_truncate_times() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    fs::write(m.p("f"), b"0123456789").unwrap();
    fs::set_permissions(m.p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(s.served.join("f")).unwrap().mode() & 0o7777,
        0o640
    );
    let f = fs::OpenOptions::new().write(true).open(m.p("f")).unwrap();
    f.set_len(4).unwrap();
    drop(f);
    assert_eq!(fs::read(s.served.join("f")).unwrap(), b"0123");
    // utimensat with UTIME_OMIT for atime: atime is kept, mtime set.
    let before = fs::metadata(s.served.join("f")).unwrap();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 0,
        },
    ];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&m.p("f")).as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0);
    let after = fs::metadata(s.served.join("f")).unwrap();
    assert_eq!(after.mtime(), 1_500_000_000);
    assert_eq!(after.atime(), before.atime());
    // The mode asked for at creation is the mode the file gets (no server umask).
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o666)
        .open(m.p("g"))
        .unwrap();
    drop(f);
    let umask = unsafe { libc::umask(0) };
    unsafe { libc::umask(umask) };
    assert_eq!(
        fs::metadata(s.served.join("g")).unwrap().mode() & 0o777,
        0o666 & !umask
    );
    // What SFTP cannot do.
    let r = unsafe { libc::mkfifo(cstr(&m.p("fifo")).as_ptr(), 0o644) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    let r = unsafe { libc::chown(cstr(&m.p("f")).as_ptr(), 4321, 4321) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    // Chown to the owner it already shows is accepted (cp -p, tar).
    let md = fs::metadata(m.p("f")).unwrap();
    let r = unsafe { libc::chown(cstr(&m.p("f")).as_ptr(), md.uid(), md.gid()) };
    assert_eq!(r, 0);
}

#[test]
fn statfs_reports_remote_disk() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(cstr(m.path()).as_ptr(), &mut st) },
        0
    );
    let mut local: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(cstr(&s.served).as_ptr(), &mut local) },
        0
    );
    assert_eq!(st.f_blocks, local.f_blocks);
    assert!(st.f_bavail > 0);
}

#[test]
fn mmap_works() {
    // sqlite and many tools rely on shared mmap: the page cache must stay on.
    let s = Server::start();
    let m = Mount::new(&s, "");
    fs::write(m.p("mm"), vec![b'a'; 8192]).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("mm"))
        .unwrap();
    unsafe {
        use std::os::fd::AsRawFd;
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        *(p as *mut u8).add(4096) = b'Z';
        assert_eq!(libc::msync(p, 8192, libc::MS_SYNC), 0);
        libc::munmap(p, 8192);
    }
    drop(f);
    assert_eq!(fs::read(s.served.join("mm")).unwrap()[4096], b'Z');
}

#[test]
fn acknowledged_writes_are_seen_at_once_by_stat_and_other_descriptors() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    let p = m.p("wb.bin");
    let mut w = fs::File::create(&p).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    for round in 0..5u8 {
        // Overwrite the same range again and again: the last write must win.
        let mut d = data.clone();
        d[0] = round;
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(&d).unwrap();
        // No flush: another descriptor and stat(2) must still see every acknowledged byte.
        assert_eq!(fs::metadata(&p).unwrap().len(), data.len() as u64);
        let mut r = fs::File::open(&p).unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), d.len());
        assert!(back == d, "round {round}: reader saw other data");
    }
    drop(w);
    let on_server = fs::read(s.served.join("wb.bin")).unwrap();
    assert_eq!(on_server[0], 4);
    assert_eq!(&on_server[1..], &data[1..]);
}

#[test]
fn a_file_another_client_creates_is_visible_at_once() {
    let s = Server::start();
    let m = Mount::new(&s, "dir_timeout=5");
    fs::create_dir(m.p("mine")).unwrap();
    assert_eq!(fs::read_dir(m.path()).unwrap().count(), 1);
    fs::write(s.served.join("theirs"), b"t").unwrap();
    // A listing proves no absence (negative_timeout=0): the new name is asked for.
    assert_eq!(fs::read(m.p("theirs")).unwrap(), b"t");
    // A directory this mount made is trusted to stay as it left it for dir_timeout: a
    // name another client adds is not seen at once (well within the 5 s)...
    fs::write(s.served.join("mine/theirs"), b"u").unwrap();
    assert_eq!(
        errno(fs::read(m.p("mine/theirs")).unwrap_err()),
        libc::ENOENT,
        "trusted for dir_timeout"
    );
    // ... and is once dir_timeout has passed.
    wait_until(
        Duration::from_secs(10),
        "file visible after dir_timeout",
        || fs::read(m.p("mine/theirs")).is_ok_and(|d| d == b"u"),
    );
}

#[test]
fn kernel_cached_pages_follow_a_change_on_the_server() {
    let s = Server::start();
    let m = Mount::new(&s, "attr_timeout=1,entry_timeout=1");
    fs::write(s.served.join("f"), b"first version").unwrap();
    // Twice: the second open may keep the kernel's pages (unchanged file).
    assert_eq!(fs::read(m.p("f")).unwrap(), b"first version");
    assert_eq!(fs::read(m.p("f")).unwrap(), b"first version");
    fs::write(s.served.join("f"), b"second, longer version").unwrap();
    wait_until(
        Duration::from_secs(10),
        "new content through the mount",
        || fs::read(m.p("f")).is_ok_and(|d| d == b"second, longer version"),
    );
}

#[test]
fn writes_work_where_the_server_allows_one_session_per_connection() {
    // mastofs spreads writes over several SFTP sessions of a connection; a server that
    // refuses the extra ones must still get every byte, over the first.
    let s = Server::start_configured("ed25519", "MaxSessions 1\n");
    let m = Mount::new(&s, "");
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i % 241) as u8).collect();
    fs::write(m.p("big"), &data).unwrap();
    assert!(fs::read(s.served.join("big")).unwrap() == data);
    assert!(fs::read(m.p("big")).unwrap() == data);
    assert!(
        m.log().contains("refused further SFTP sessions"),
        "{}",
        m.log()
    );
}

/// After a change inside a directory, the directory's mtime shown is the server's new one,
/// not the one cached before (the kernel asks again; the mount must not answer from its
/// cache).
#[test]
fn a_directory_shows_its_new_mtime_after_a_change_inside() {
    let s = Server::start();
    let m = Mount::new(&s, "");
    let old = 1_000_000_000;
    type Op = (&'static str, fn(&Path));
    let ops: [Op; 7] = [
        ("create", |d| fs::write(d.join("x"), b"x").unwrap()),
        ("mkdir", |d| fs::create_dir(d.join("x")).unwrap()),
        ("unlink", |d| fs::remove_file(d.join("f")).unwrap()),
        ("rmdir", |d| fs::remove_dir(d.join("sub")).unwrap()),
        ("symlink", |d| {
            std::os::unix::fs::symlink("f", d.join("l")).unwrap()
        }),
        ("link", |d| fs::hard_link(d.join("f"), d.join("h")).unwrap()),
        ("rename", |d| fs::rename(d.join("f"), d.join("g")).unwrap()),
    ];
    for (name, op) in ops {
        let served = s.served.join(name);
        fs::create_dir(&served).unwrap();
        fs::write(served.join("f"), b"f").unwrap();
        fs::create_dir(served.join("sub")).unwrap();
        s.give(&served);
        let touch = std::process::Command::new("touch")
            .arg("-d")
            .arg(format!("@{old}"))
            .arg(&served)
            .status()
            .unwrap();
        assert!(touch.success());
        let d = m.p(name);
        assert_eq!(
            fs::metadata(&d).unwrap().mtime(),
            old,
            "{name}: cached first"
        );
        op(&d);
        let now = fs::metadata(&served).unwrap().mtime();
        assert_ne!(now, old, "{name}: the server changed the directory");
        assert_eq!(
            fs::metadata(&d).unwrap().mtime(),
            now,
            "{name}: shown as the server has it"
        );
    }
}

/// A file unlinked while open stays usable through its descriptor, as on a local disk:
/// writes (striped over two connections), fstat and reads work, also after the link was
/// cut; its name is gone at once, and the file is gone from the server after the close.
#[test]
fn a_file_unlinked_while_open_stays_usable_until_closed() {
    let s = Server::start();
    let p = common::proxy::Proxy::start(s.port);
    s.write_ssh_config_via(p.port, "");
    let m = Mount::new(&s, "max_conns=2");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("u"))
        .unwrap();
    f.write_all(b"start").unwrap();
    fs::remove_file(m.p("u")).unwrap();
    // fstat (POSIX, pjdfstest unlink/14.t): no links left, the size it has.
    let md = f.metadata().unwrap();
    assert_eq!(
        (md.nlink(), md.len()),
        (0, 5),
        "fstat of an open, unlinked file"
    );
    assert_eq!(
        errno(fs::metadata(m.p("u")).unwrap_err()),
        libc::ENOENT,
        "the name is gone"
    );
    assert_eq!(fs::read_dir(m.path()).unwrap().count(), 0, "nothing listed");
    assert_eq!(
        fs::read_dir(&s.served).unwrap().count(),
        1,
        "kept aside on the server"
    );
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    f.write_all(&data[..1 << 20]).unwrap();
    f.sync_all().unwrap();
    p.cut();
    f.write_all(&data[1 << 20..]).unwrap();
    f.sync_all().unwrap();
    assert_eq!(f.metadata().unwrap().len(), 5 + data.len() as u64);
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert!(
        back[..5] == *b"start" && back[5..] == data[..],
        "content through the descriptor"
    );
    drop(f);
    wait_until(Duration::from_secs(10), "the file removed at close", || {
        fs::read_dir(&s.served).unwrap().count() == 0
    });
}

/// Names that are not UTF-8 are bytes from the kernel to the server and back: created,
/// listed, renamed, opened and removed like any other.
#[test]
fn names_that_are_not_utf8_round_trip() {
    use std::ffi::OsStr;
    let s = Server::start();
    let m = Mount::new(&s, "");
    let latin1 = OsStr::from_bytes(b"caf\xe9.txt");
    let odd = OsStr::from_bytes(b"\xff\xfe-\xf4\x8f\xbf\x80");
    fs::write(m.path().join(latin1), b"one").unwrap();
    assert_eq!(
        fs::read(s.served.join(latin1)).unwrap(),
        b"one",
        "the server has the bytes"
    );
    fs::write(s.served.join(odd), b"two").unwrap();
    let mut names: Vec<Vec<u8>> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    let mut want = vec![latin1.as_bytes().to_vec(), odd.as_bytes().to_vec()];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(fs::read(m.path().join(odd)).unwrap(), b"two");
    let renamed = OsStr::from_bytes(b"renamed-\xe9");
    fs::rename(m.path().join(latin1), m.path().join(renamed)).unwrap();
    assert_eq!(fs::read(s.served.join(renamed)).unwrap(), b"one");
    fs::remove_file(m.path().join(renamed)).unwrap();
    fs::remove_file(m.path().join(odd)).unwrap();
    assert_eq!(fs::read_dir(&s.served).unwrap().count(), 0);
}

/// A listing of 20,000 entries (READDIRs pipelined where the server answers in order, one
/// at a time where it does not) is complete, once each, in the server's own order.
#[test]
fn a_listing_of_20000_entries_is_complete_and_in_the_servers_order() {
    let s = Server::start();
    let dir = s.served.join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..20_000 {
        fs::File::create(dir.join(format!("entry-{i:05}-with-a-longer-name"))).unwrap();
    }
    let m = Mount::new(&s, "");
    let names = |p: &Path| -> Vec<std::ffi::OsString> {
        let entries = fs::read_dir(p).unwrap();
        entries.map(|e| e.unwrap().file_name()).collect()
    };
    let listed = names(&m.p("many"));
    assert_eq!(listed.len(), 20_000, "complete");
    assert_eq!(listed, names(&dir), "in the server's order, each once");
}
