//! Write-back (`cache=DIR,cache_writeback=on`): uploads complete locally through an
//! outage longer than `timeout=` and reach the server byte for byte once it returns; a
//! `kill -9` in the middle of the outage loses nothing acknowledged, and the log's renames
//! and unlinks end in the right tree; fsync=remote still means "on the server"; a copy
//! another client changed is kept aside; a full cache waits, then says ENOSPC. Real sshd
//! (or ProFTPD, gesftpserver) through the fault proxy, real FUSE mounts.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::*;

const MASTODON: u32 = 991;

/// Options of a media mount with write-back, as the README recommends, with a short
/// `timeout=` (the outages below outlast it) and a link seen dead within seconds.
fn opts(cache: &Path, extra: &str) -> String {
    format!(
        "allow_other,default_permissions,uid={MASTODON},gid={MASTODON},cache={},cache_writeback=on,\
         timeout=20,ServerAliveInterval=1,ServerAliveCountMax=2{extra}",
        cache.join("c").display(),
    )
}

/// What the media writer below writes into file `i`.
fn content(i: usize) -> Vec<u8> {
    let size = [4_000, 48_000, 150_000, 200_000][i % 4] + i;
    format!("{i}:").bytes().cycle().take(size).collect()
}

fn rel(i: usize) -> String {
    format!(
        "media_attachments/files/113/542/{:03}/original/{i:05x}.png",
        i / 10
    )
}

/// Writes media files `range` as the mastodon user (Python, as an upload handler would:
/// makedirs, then the file); returns the slowest file's time in ms. Panics on any error.
fn write_media(m: &Mount, range: std::ops::Range<usize>) -> u64 {
    let mount = m.path();
    let script = format!(
        r#"
import os, sys, time
root = sys.argv[1]
slowest = 0
for i in range({}, {}):
    size = [4000, 48000, 150000, 200000][i % 4] + i
    data = (("%d:" % i) * (size // 2 + 2)).encode()[:size]
    p = os.path.join(root, "media_attachments/files/113/542/%03d/original/%05x.png" % (i // 10, i))
    t = time.monotonic()
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    slowest = max(slowest, time.monotonic() - t)
print(int(slowest * 1000))
"#,
        range.start, range.end
    );
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={MASTODON}"),
            &format!("--regid={MASTODON}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
            &mount.display().to_string(),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "writing media failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn writeback(m: &Mount) -> serde_json::Value {
    m.status()["disk_cache"]["writeback"].clone()
}

fn pending(m: &Mount) -> u64 {
    writeback(m)["pending_ops"].as_u64().unwrap_or(u64::MAX)
}

/// Waits until the server has every change, and returns how long that took.
fn drained(m: &Mount, within: Duration) -> Duration {
    let t = Instant::now();
    wait_until(within, "every pending change uploaded", || pending(m) == 0);
    t.elapsed()
}

fn assert_media_on_server(s: &Server, range: std::ops::Range<usize>) {
    for i in range {
        let p = s.served.join(rel(i));
        let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(got == content(i), "{}: content differs", p.display());
    }
}

/// The fault proxy in front of `s` (the mount's ssh_config goes through it), and a
/// directory for the cache.
fn via_proxy(s: &Server) -> (Proxy, tempfile::TempDir) {
    let p = Proxy::start(s.port);
    s.write_ssh_config_via(p.port, "");
    (p, tempfile::tempdir().unwrap())
}

fn outage_until_dead(m: &Mount, p: &Proxy) {
    p.set_mode(Mode::Blackhole);
    wait_until(Duration::from_secs(30), "the mount sees the outage", || {
        m.status()["state"] != "connected"
    });
}

#[test]
fn uploads_complete_locally_through_an_outage_longer_than_timeout() {
    let s = Server::start();
    std::fs::create_dir_all(s.served.join("media_attachments/files")).unwrap();
    let (p, cache) = via_proxy(&s);
    let m = Mount::new(&s, &opts(cache.path(), ""));
    // The instance worked before: a few uploads went straight through.
    write_media(&m, 0..20);
    drained(&m, Duration::from_secs(60));
    assert_media_on_server(&s, 0..20);

    // An outage far longer than timeout=20 (shortened from 10 minutes for CI).
    let n: usize = std::env::var("MASTOFS_WRITEBACK_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let outage = Duration::from_secs(
        std::env::var("MASTOFS_WRITEBACK_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(125),
    );
    let cut = Instant::now();
    outage_until_dead(&m, &p);
    let t = Instant::now();
    let slowest = write_media(&m, 20..20 + n);
    let took = t.elapsed();
    eprintln!(
        "write-back: {n} media files written during the outage in {took:?} ({:.1} ms each on average, slowest {slowest} ms)",
        took.as_secs_f64() * 1000.0 / n as f64
    );
    // Seen through the mount as written, with the mastodon user's ownership.
    let probe = m.p(&rel(20 + n / 2));
    assert_eq!(std::fs::read(&probe).unwrap(), content(20 + n / 2));
    assert_eq!(std::fs::metadata(&probe).unwrap().uid(), MASTODON);
    // A directory made during the outage lists what was written into it.
    let listed = names_in(probe.parent().unwrap());
    let i0 = (20 + n / 2) / 10 * 10;
    let want: Vec<String> = (i0..i0 + 10).map(|i| format!("{i:05x}.png")).collect();
    assert_eq!(listed, want);
    // None of it is on the server yet, and all of it is pending.
    assert!(!s.served.join(rel(20 + n - 1)).exists());
    assert!(pending(&m) >= n as u64, "{}", writeback(&m));
    assert!(writeback(&m)["pending_bytes"].as_u64().unwrap() > 0);
    while cut.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(writeback(&m)["oldest_pending_secs"].as_u64().unwrap() > 20);

    p.set_mode(Mode::Pass);
    let upload = drained(&m, Duration::from_secs(600));
    eprintln!("write-back: all {n} files on the server {upload:?} after the link returned");
    assert_media_on_server(&s, 0..20 + n);
    // No temporary names are left behind.
    let leftovers = walk(&s.served)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".mastofs-"))
        .count();
    assert_eq!(leftovers, 0);
    let w = writeback(&m);
    assert_eq!(w["conflicts"], 0, "{w}");
    // `mastofs sync` has nothing to wait for.
    let sync = std::process::Command::new(BIN)
        .arg("sync")
        .arg(m.path())
        .output()
        .unwrap();
    assert!(sync.status.success(), "{sync:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn a_kill_9_during_an_outage_loses_nothing_acknowledged() {
    let s = Server::start();
    std::fs::create_dir_all(s.served.join("media_attachments/files")).unwrap();
    let (p, cache) = via_proxy(&s);
    let o = opts(cache.path(), "");
    let mut m = Mount::with_store(&s, &o);
    std::fs::create_dir(m.p("chain")).unwrap();
    std::fs::write(m.p("chain/replaced"), b"old").unwrap();
    drained(&m, Duration::from_secs(60));

    outage_until_dead(&m, &p);
    write_media(&m, 0..600);
    // A rename chain, a directory renamed with its file, a file created and removed, a
    // file replaced by a rename.
    let c = |r: &str| m.p(&format!("chain/{r}"));
    std::fs::write(c("a"), b"chained").unwrap();
    std::fs::rename(c("a"), c("b")).unwrap();
    std::fs::rename(c("b"), c("c")).unwrap();
    std::fs::create_dir(c("dir1")).unwrap();
    std::fs::write(c("dir1/f"), b"in a moved directory").unwrap();
    std::fs::rename(c("dir1"), c("dir2")).unwrap();
    std::fs::write(c("gone"), b"never uploaded").unwrap();
    std::fs::remove_file(c("gone")).unwrap();
    std::fs::write(c("new"), b"new").unwrap();
    std::fs::rename(c("new"), c("replaced")).unwrap();
    assert!(pending(&m) >= 500);

    m.crash();
    p.set_mode(Mode::Pass);
    m.restart(&s, &o).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        m.log().contains("resuming changes not yet on the server"),
        "{}",
        m.log()
    );
    let upload = drained(&m, Duration::from_secs(600));
    eprintln!("write-back: the log a killed daemon left was uploaded in {upload:?}");
    assert_media_on_server(&s, 0..600);
    let chain = s.served.join("chain");
    assert_eq!(names_in(&chain), ["c", "dir2", "replaced"]);
    assert_eq!(std::fs::read(chain.join("c")).unwrap(), b"chained");
    assert_eq!(
        std::fs::read(chain.join("dir2/f")).unwrap(),
        b"in a moved directory"
    );
    assert_eq!(std::fs::read(chain.join("replaced")).unwrap(), b"new");
}

#[test]
fn fsync_remote_waits_for_the_server_and_fails_past_timeout() {
    let s = Server::start();
    let (p, cache) = via_proxy(&s);
    let m = Mount::new(&s, &opts(cache.path(), ",timeout=4"));
    // Connected: fsync returns once the server has the file.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m.p("seg1")).unwrap();
        f.write_all(b"segment one").unwrap();
        f.sync_all().unwrap();
        assert_eq!(
            std::fs::read(s.served.join("seg1")).unwrap(),
            b"segment one"
        );
    }
    outage_until_dead(&m, &p);
    let t = Instant::now();
    let r = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(m.p("seg2.tmp"))?;
        f.write_all(b"segment two")?;
        f.sync_all()
    })();
    let e = r.expect_err("fsync=remote must not succeed while the server cannot have the file");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(t.elapsed() >= Duration::from_secs(4));
    assert!(!s.served.join("seg2.tmp").exists());
    // Closed all the same: it goes up once the link returns.
    p.set_mode(Mode::Pass);
    drained(&m, Duration::from_secs(120));
    assert_eq!(
        std::fs::read(s.served.join("seg2.tmp")).unwrap(),
        b"segment two"
    );
}

#[test]
fn fsync_local_returns_at_disk_speed() {
    let s = Server::start();
    let (p, cache) = via_proxy(&s);
    let m = Mount::new(&s, &opts(cache.path(), ",fsync=local"));
    outage_until_dead(&m, &p);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m.p("f")).unwrap();
        f.write_all(b"local").unwrap();
        f.sync_all().unwrap();
    }
    assert!(!s.served.join("f").exists());
    // `mastofs sync` waits for the backlog: given up after 2 s here (exit 1) ...
    let sync = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .arg("sync")
            .arg(m.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = sync(&["--timeout", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("still pending"));
    // ... and returns once the server has everything.
    p.set_mode(Mode::Pass);
    let out = sync(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(pending(&m), 0);
    assert_eq!(std::fs::read(s.served.join("f")).unwrap(), b"local");
}

#[test]
fn a_copy_another_client_changed_is_kept_aside() {
    let s = Server::start();
    std::fs::write(s.served.join("shared.txt"), b"original").unwrap();
    let (p, cache) = via_proxy(&s);
    let m = Mount::new(&s, &opts(cache.path(), ""));
    assert_eq!(std::fs::read(m.p("shared.txt")).unwrap(), b"original");
    outage_until_dead(&m, &p);
    std::fs::write(m.p("shared.txt"), b"ours").unwrap();
    // Another client of the box changes it meanwhile.
    std::fs::write(s.served.join("shared.txt"), b"theirs, longer").unwrap();
    p.set_mode(Mode::Pass);
    drained(&m, Duration::from_secs(120));
    assert_eq!(std::fs::read(s.served.join("shared.txt")).unwrap(), b"ours");
    let aside: Vec<_> = std::fs::read_dir(&s.served)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("shared.txt.mastofs-conflict-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"theirs, longer");
    assert_eq!(writeback(&m)["conflicts"], 1);
    assert!(m.log().contains("kept aside"), "{}", m.log());
}

#[test]
fn a_full_cache_waits_for_uploads_then_says_enospc() {
    let s = Server::start();
    let (p, cache) = via_proxy(&s);
    let m = Mount::new(&s, &opts(cache.path(), ",cache_size=1M,timeout=3"));
    outage_until_dead(&m, &p);
    std::fs::write(m.p("fits"), vec![7u8; 600_000]).unwrap();
    let t = Instant::now();
    let e = std::fs::write(m.p("too-much"), vec![8u8; 600_000]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert!(t.elapsed() >= Duration::from_secs(3));
    p.set_mode(Mode::Pass);
    drained(&m, Duration::from_secs(120));
    // What was acknowledged is on the server; with room again, writes work.
    assert_eq!(
        std::fs::read(s.served.join("fits")).unwrap(),
        vec![7u8; 600_000]
    );
    std::fs::write(m.p("too-much"), vec![8u8; 600_000]).unwrap();
    drained(&m, Duration::from_secs(120));
    assert_eq!(
        std::fs::read(s.served.join("too-much")).unwrap(),
        vec![8u8; 600_000]
    );
}

#[test]
fn a_clean_unmount_uploads_what_is_pending() {
    let s = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let mut m = Mount::new(&s, &opts(cache.path(), ""));
    for i in 0..50 {
        std::fs::write(m.p(&format!("f{i}")), content(i)).unwrap();
    }
    // Modes as asked (the server's umask is undone), an mtime as set.
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .mode(0o750)
        .create(m.p("private"))
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(m.p("private/key"))
        .unwrap();
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::options()
        .write(true)
        .open(m.p("f0"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    m.unmount();
    for i in 0..50 {
        assert_eq!(
            std::fs::read(s.served.join(format!("f{i}"))).unwrap(),
            content(i)
        );
    }
    let mode = |p: &str| {
        std::fs::metadata(s.served.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("private"), 0o750);
    assert_eq!(mode("private/key"), 0o640);
    let mtime = std::fs::metadata(s.served.join("f0"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, old);
}

#[test]
fn rewriting_what_this_mount_uploaded_is_no_conflict() {
    let s = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&s, &opts(cache.path(), ",attr_timeout=30,entry_timeout=30"));
    for round in 0..3u8 {
        std::fs::write(m.p("info"), [round; 100]).unwrap();
        drained(&m, Duration::from_secs(60));
        assert_eq!(std::fs::read(s.served.join("info")).unwrap(), [round; 100]);
    }
    assert_eq!(writeback(&m)["conflicts"], 0);
    assert_eq!(std::fs::read_dir(&s.served).unwrap().count(), 1);
}

#[test]
fn a_full_cache_disk_gives_enospc_and_loses_nothing_acknowledged() {
    let s = Server::start();
    let p = Proxy::start(s.port);
    s.write_ssh_config_via(p.port, "");
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path(), "8M");
    let small = disk.path.clone();
    {
        // cache_size= larger than the disk: the disk fills first.
        let m = Mount::new(&s, &opts(&small, ",cache_size=1G"));
        outage_until_dead(&m, &p);
        let mut written = Vec::new();
        let mut refused = None;
        for i in 0..12 {
            let data = vec![i as u8 + 1; 1_000_000];
            match std::fs::write(m.p(&format!("f{i}")), &data) {
                Ok(()) => written.push((i, data)),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = refused.expect("an 8 MB disk cannot hold 12 MB");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert!(written.len() >= 3, "{} files fit", written.len());
        p.set_mode(Mode::Pass);
        drained(&m, Duration::from_secs(120));
        for (i, data) in &written {
            assert!(
                std::fs::read(s.served.join(format!("f{i}"))).unwrap() == *data,
                "f{i}"
            );
        }
    }
}

#[test]
fn an_upgrade_with_a_backlog_resumes_the_log_and_open_files() {
    use std::io::Write;
    let s = Server::start();
    let (p, cache) = via_proxy(&s);
    let mut m = Mount::new(&s, &opts(cache.path(), ",timeout=120"));
    outage_until_dead(&m, &p);
    for i in 0..100 {
        std::fs::write(m.p(&format!("f{i}")), content(i)).unwrap();
    }
    let mut open = std::fs::File::create(m.p("open")).unwrap();
    open.write_all(b"before the upgrade, ").unwrap();
    // The link returns slow (1 s round trips): the backlog takes far longer to upload
    // than the upgrade (an upgrade needs the server: it is refused during an outage).
    p.set_delay(Duration::from_millis(500));
    p.set_mode(Mode::Pass);
    m.upgrade(&s).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        m.log().contains("resuming changes not yet on the server"),
        "{}",
        m.log()
    );
    open.write_all(b"after it").unwrap();
    drop(open);
    p.set_delay(Duration::ZERO);
    drained(&m, Duration::from_secs(120));
    for i in 0..100 {
        assert_eq!(
            std::fs::read(s.served.join(format!("f{i}"))).unwrap(),
            content(i)
        );
    }
    assert_eq!(
        std::fs::read(s.served.join("open")).unwrap(),
        b"before the upgrade, after it"
    );
}

#[test]
fn an_uploaded_file_is_read_back_from_the_disk() {
    let s = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let mut m = Mount::new(&s, &opts(cache.path(), ""));
    let data = content(7);
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/thumb.png"), &data).unwrap();
    drained(&m, Duration::from_secs(60));
    // After a remount (nothing in the kernel's or the daemon's memory), the read comes
    // from the copy the upload left.
    let o = opts(cache.path(), "");
    m.unmount();
    m.restart(&s, &o).unwrap();
    assert_eq!(std::fs::read(m.p("d/thumb.png")).unwrap(), data);
    let c = &m.status()["disk_cache"];
    assert_eq!(c["miss_bytes"], 0, "{c}");
    assert_eq!(c["hit_bytes"], data.len() as u64, "{c}");
}

/// What the server already holds, changed during an outage: each change completes at
/// once, shows in the mount as it will be, survives a `kill -9`, and ends on the server as
/// if it had been made there directly.
#[test]
fn changes_to_what_the_server_holds_are_recorded_through_an_outage() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start();
    let srv = |r: &str| s.served.join(r);
    std::fs::create_dir_all(srv("dir/sub")).unwrap();
    std::fs::write(srv("file.txt"), b"a server file").unwrap();
    std::fs::write(srv("dir/a.txt"), b"in a directory").unwrap();
    std::fs::write(srv("dir/sub/b.txt"), b"deeper").unwrap();
    std::fs::write(srv("chmod.txt"), b"mode and time").unwrap();
    let long: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(srv("trunc.bin"), &long).unwrap();
    std::fs::write(srv("ftrunc.bin"), &long).unwrap();
    std::fs::write(srv("append.log"), b"line 1\n").unwrap();
    std::fs::write(srv("x"), b"renamed twice").unwrap();
    let (p, cache) = via_proxy(&s);
    let o = opts(cache.path(), "");
    let mut m = Mount::with_store(&s, &o);
    // Read once (so the read cache holds them), listed once.
    for f in [
        "file.txt",
        "dir/a.txt",
        "dir/sub/b.txt",
        "chmod.txt",
        "trunc.bin",
        "ftrunc.bin",
        "append.log",
        "x",
    ] {
        std::fs::read(m.p(f)).unwrap();
    }
    names_in(&m.p("dir"));

    outage_until_dead(&m, &p);
    std::fs::rename(m.p("file.txt"), m.p("renamed.txt")).unwrap();
    std::fs::rename(m.p("dir"), m.p("dir2")).unwrap();
    std::fs::write(m.p("dir2/new.txt"), b"made in a renamed directory").unwrap();
    std::fs::rename(m.p("x"), m.p("y")).unwrap();
    std::fs::rename(m.p("y"), m.p("z")).unwrap();
    std::fs::set_permissions(m.p("chmod.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::open(m.p("chmod.txt"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    let path =
        std::ffi::CString::new(m.p("trunc.bin").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::truncate(path.as_ptr(), 1000) }, 0);
    std::fs::File::options()
        .write(true)
        .open(m.p("ftrunc.bin"))
        .unwrap()
        .set_len(50_000)
        .unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::options()
            .append(true)
            .open(m.p("append.log"))
            .unwrap();
        f.write_all(b"line 2\n").unwrap();
    }
    // The mount shows the changes while nothing of them is on the server.
    assert!(srv("file.txt").exists() && srv("dir").exists());
    assert_eq!(std::fs::read(m.p("renamed.txt")).unwrap(), b"a server file");
    assert!(!m.p("file.txt").exists() && !m.p("dir").exists());
    assert_eq!(std::fs::read(m.p("dir2/sub/b.txt")).unwrap(), b"deeper");
    assert_eq!(std::fs::read(m.p("z")).unwrap(), b"renamed twice");
    let meta = std::fs::metadata(m.p("chmod.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.modified().unwrap(), when);
    assert_eq!(std::fs::read(m.p("trunc.bin")).unwrap(), &long[..1000]);
    assert_eq!(
        std::fs::read(m.p("append.log")).unwrap(),
        b"line 1\nline 2\n"
    );
    assert!(pending(&m) >= 9, "{}", writeback(&m));

    // A crash, then the link returns: the log a killed daemon left ends in the right tree.
    m.crash();
    p.set_mode(Mode::Pass);
    m.restart(&s, &o).unwrap_or_else(|e| panic!("{e}"));
    drained(&m, Duration::from_secs(120));
    assert_eq!(
        names_in(&s.served),
        [
            "append.log",
            "chmod.txt",
            "dir2",
            "ftrunc.bin",
            "renamed.txt",
            "trunc.bin",
            "z"
        ]
    );
    assert_eq!(std::fs::read(srv("renamed.txt")).unwrap(), b"a server file");
    assert_eq!(names_in(&srv("dir2")), ["a.txt", "new.txt", "sub"]);
    assert_eq!(std::fs::read(srv("dir2/sub/b.txt")).unwrap(), b"deeper");
    assert_eq!(
        std::fs::read(srv("dir2/new.txt")).unwrap(),
        b"made in a renamed directory"
    );
    assert_eq!(std::fs::read(srv("z")).unwrap(), b"renamed twice");
    let meta = std::fs::metadata(srv("chmod.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.modified().unwrap(), when);
    assert_eq!(std::fs::read(srv("chmod.txt")).unwrap(), b"mode and time");
    assert_eq!(std::fs::read(srv("trunc.bin")).unwrap(), &long[..1000]);
    assert_eq!(std::fs::read(srv("ftrunc.bin")).unwrap(), &long[..50_000]);
    assert_eq!(
        std::fs::read(srv("append.log")).unwrap(),
        b"line 1\nline 2\n"
    );
    assert_eq!(writeback(&m)["conflicts"], 0);
}

/// Mastodon's media cleanup (`tootctl media remove`): a file unlinked, then its empty
/// directories removed bottom up, while earlier changes are still pending; a directory
/// still holding a file refuses.
#[test]
fn an_emptied_server_directory_is_removed_behind_a_backlog() {
    let s = Server::start();
    std::fs::create_dir_all(s.served.join("m/000/001/original")).unwrap();
    std::fs::write(s.served.join("m/000/001/original/a.png"), b"a").unwrap();
    std::fs::write(s.served.join("m/000/keep.png"), b"k").unwrap();
    let (p, cache) = via_proxy(&s);
    let m = Mount::new(&s, &opts(cache.path(), ""));
    // A backlog the server cannot take yet: the link is slow.
    p.set_delay(Duration::from_millis(300));
    std::fs::write(m.p("backlog"), b"pending").unwrap();
    std::fs::remove_file(m.p("m/000/001/original/a.png")).unwrap();
    std::fs::remove_dir(m.p("m/000/001/original")).unwrap();
    std::fs::remove_dir(m.p("m/000/001")).unwrap();
    let e = std::fs::remove_dir(m.p("m/000")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    assert!(!m.p("m/000/001").exists());
    p.set_delay(Duration::ZERO);
    drained(&m, Duration::from_secs(120));
    assert_eq!(names_in(&s.served.join("m/000")), ["keep.png"]);
    assert_eq!(std::fs::read(s.served.join("backlog")).unwrap(), b"pending");
}

/// A change the server refuses (another client put a file where this mount made a
/// directory during an outage) holds what depends on it, is shown in the status with the
/// server's error, and goes up once the cause is removed; nothing is dropped.
#[test]
fn a_refused_change_is_shown_and_goes_up_once_the_cause_is_gone() {
    let s = Server::start();
    let (p, cache) = via_proxy(&s);
    let m = Mount::new(&s, &opts(cache.path(), ""));
    outage_until_dead(&m, &p);
    std::fs::create_dir(m.p("x")).unwrap();
    std::fs::write(m.p("x/f"), b"held").unwrap();
    std::fs::write(s.served.join("x"), b"another client's file").unwrap();
    s.give(&s.served.join("x"));
    p.set_mode(Mode::Pass);
    wait_until(Duration::from_secs(60), "the refusal shown", || {
        !writeback(&m)["refused"].is_null()
    });
    let r = writeback(&m)["refused"].clone();
    let x = s.served.join("x");
    assert_eq!(r["op"], format!("mkdir {}", x.display()), "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert!(pending(&m) >= 2);
    let text = std::process::Command::new(BIN)
        .arg("status")
        .arg(m.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("the server refuses the mkdir"), "{text}");
    std::fs::remove_file(s.served.join("x")).unwrap();
    drained(&m, Duration::from_secs(120));
    assert!(writeback(&m)["refused"].is_null());
    assert_eq!(std::fs::read(s.served.join("x/f")).unwrap(), b"held");
}
