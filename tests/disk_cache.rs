//! The local disk cache (`cache=DIR`): media read once come from the disk after a remount,
//! a file another client changed is fetched again, the directory stays within
//! `cache_size=`, cached files are served through an outage, and a full cache disk loses
//! nothing. Real sshd (or ProFTPD, gesftpserver), real FUSE mounts.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;

/// Mastodon-like media in leaf directories of their own on the server: (path, bytes).
fn media(s: &Server, n: usize, size: impl Fn(usize) -> usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let rel = format!(
                "media_attachments/files/{:03}/{:03}/original/{i:x}.jpg",
                i / 7,
                i
            );
            let data = pattern(size(i), i as u64 + 1);
            let p = s.served.join(&rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &data).unwrap();
            (rel, data)
        })
        .collect()
}

fn disk_cache(m: &Mount, key: &str) -> u64 {
    m.status()["disk_cache"][key].as_u64().unwrap_or(0)
}

fn read_all(m: &Mount, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        let got = std::fs::read(m.p(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(got == *data, "{rel}: content differs");
    }
}

fn total(files: &[(String, Vec<u8>)]) -> u64 {
    files.iter().map(|(_, d)| d.len() as u64).sum()
}

/// Drops the kernel's cached pages of `p`, so the next read reaches the daemon.
fn drop_pages(p: &Path) {
    let f = std::fs::File::open(p).unwrap();
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

#[test]
fn media_read_once_come_from_the_disk_after_a_remount() {
    let s = Server::start();
    let files = media(&s, 30, |i| [3_000, 48_000, 300_000, 2_500_000][i % 4] + i);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("c");
    let opts = format!("cache={}", dir.display());
    let mut m = Mount::new(&s, &opts);
    read_all(&m, &files);
    assert_eq!(
        disk_cache(&m, "miss_bytes"),
        total(&files),
        "every byte fetched once"
    );
    assert_eq!(disk_cache(&m, "hit_bytes"), 0);
    assert!(disk_cache(&m, "used_bytes") >= total(&files));
    assert_eq!(
        disk_cache(&m, "limit_bytes"),
        1 << 30,
        "cache_size= defaults to 1G"
    );

    m.unmount();
    m.restart(&s, &opts).unwrap();
    read_all(&m, &files);
    assert_eq!(
        disk_cache(&m, "miss_bytes"),
        0,
        "after the remount no byte came from the server"
    );
    assert_eq!(disk_cache(&m, "hit_bytes"), total(&files));
    let text = std::process::Command::new(BIN)
        .arg("status")
        .arg(m.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("disk cache") && text.contains("hit ratio 100%"),
        "{text}"
    );

    // Nothing in the cache directory is open to other users.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for e in std::fs::read_dir(dir.join("files")).unwrap().flatten() {
        assert_eq!(mode(&e.path()) & 0o077, 0, "{}", e.path().display());
    }
}

#[test]
fn a_file_another_client_changed_is_fetched_again() {
    let s = Server::start();
    let files = media(&s, 1, |_| 700_000);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(
        &s,
        &format!(
            "cache={},attr_timeout=0,entry_timeout=0,dir_timeout=0",
            cache.path().display()
        ),
    );
    read_all(&m, &files);
    // Another client rewrites it: same size, another mtime.
    let (rel, old) = &files[0];
    let new = pattern(old.len(), 99);
    let on_server = s.served.join(rel);
    std::fs::write(&on_server, &new).unwrap();
    let later = std::fs::metadata(&on_server).unwrap().mtime() + 10;
    let t = nix::sys::time::TimeSpec::new(later, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &on_server,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let got = std::fs::read(m.p(rel)).unwrap();
    assert!(got == new, "the server's new content, not the cached copy");
    assert_eq!(disk_cache(&m, "miss_bytes"), 2 * old.len() as u64);
    // And the new version is what is cached now.
    drop_pages(&m.p(rel));
    assert!(std::fs::read(m.p(rel)).unwrap() == new);
    assert_eq!(disk_cache(&m, "hit_bytes"), new.len() as u64);
}

#[test]
fn the_cache_stays_within_its_size_under_a_working_set_twice_as_big() {
    let s = Server::start();
    let files = media(&s, 16, |i| 256 * 1024 + i);
    let cache = tempfile::tempdir().unwrap();
    let limit = 2u64 << 20;
    let m = Mount::new(
        &s,
        &format!("cache={},cache_size=2M", cache.path().display()),
    );
    for _ in 0..2 {
        for (rel, data) in &files {
            drop_pages(&m.p(rel));
            assert!(std::fs::read(m.p(rel)).unwrap() == *data, "{rel}");
            let used = disk_cache(&m, "used_bytes");
            assert!(used <= limit, "{used} bytes cached, over cache_size=");
        }
    }
    let on_disk: u64 = std::fs::read_dir(cache.path().join("files"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum();
    // The bound counts data; each copy's small metadata file comes on top.
    assert!(
        on_disk <= limit + 16 * 4096,
        "{on_disk} bytes in the directory"
    );
    assert!(disk_cache(&m, "evictions") > 0);
}

#[test]
fn cached_files_are_served_through_an_outage() {
    let s = Server::start();
    let files = media(&s, 6, |i| 100_000 * (i + 1));
    let p = Proxy::start(s.port);
    s.write_ssh_config_via(p.port, "");
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(
        &s,
        &format!(
            "cache={},timeout=600,attr_timeout=1,entry_timeout=1,dir_timeout=1,ServerAliveInterval=1,ServerAliveCountMax=2",
            cache.path().display()
        ),
    );
    read_all(&m, &files);
    let listed_dir = m.p("media_attachments/files/000");
    let listed = names_in(&listed_dir);
    assert_eq!(listed.len(), 6);
    p.set_mode(Mode::Blackhole);
    wait_until(Duration::from_secs(30), "the mount sees the outage", || {
        m.status()["state"] != "connected"
    });
    // Past every cache timeout: the kernel asks again, and the lookups are answered from
    // what the mount last saw.
    std::thread::sleep(Duration::from_millis(1500));
    let paths: Vec<(PathBuf, Vec<u8>)> = files.iter().map(|(r, d)| (m.p(r), d.clone())).collect();
    let reader = std::thread::spawn(move || {
        for (path, data) in paths {
            drop_pages(&path);
            assert!(std::fs::read(&path).unwrap() == data, "{}", path.display());
        }
    });
    // Without the cache these lookups and reads would wait for the link (timeout=600).
    wait_until(
        Duration::from_secs(30),
        "cached reads during the outage",
        || reader.is_finished(),
    );
    reader.join().unwrap();
    assert_eq!(disk_cache(&m, "hit_bytes"), total(&files));
    // A directory listed before lists the same names (its listing expired long ago).
    let lister = std::thread::spawn(move || names_in(&listed_dir));
    wait_until(
        Duration::from_secs(30),
        "a listing during the outage",
        || lister.is_finished(),
    );
    assert_eq!(lister.join().unwrap(), listed);
    p.set_mode(Mode::Pass);
}

#[test]
fn a_full_cache_disk_loses_nothing() {
    let s = Server::start();
    let files = media(&s, 12, |i| 1_000_000 + i);
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path(), "8M");
    let mnt = disk.path.clone();
    {
        let m = Mount::new(
            &s,
            &format!("cache={},cache_size=1G", mnt.join("c").display()),
        );
        read_all(&m, &files);
        for (rel, data) in &files {
            drop_pages(&m.p(rel));
            assert!(std::fs::read(m.p(rel)).unwrap() == *data, "{rel}");
        }
        assert!(
            disk_cache(&m, "write_errors") > 0,
            "the 8 MB disk filled up"
        );
        assert!(m.log().contains("disk cache: cannot write"), "{}", m.log());
    }
}

#[test]
fn a_cache_on_tmpfs_or_without_a_directory_is_refused() {
    let s = Server::start();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let e = Mount::try_new(&s, &s.source(), &format!("cache={}", shm.path().display()))
        .err()
        .unwrap();
    assert!(e.contains("is on tmpfs"), "{e}");
    let e = Mount::try_new(&s, &s.source(), "cache_size=10G")
        .err()
        .unwrap();
    assert!(e.contains("cache_size= needs cache=DIR"), "{e}");
    let e = Mount::try_new(&s, &s.source(), "cache=relative/dir")
        .err()
        .unwrap();
    assert!(
        e.contains("expected yes, no or an absolute directory"),
        "{e}"
    );
    let m = Mount::new(
        &s,
        &format!("cache={},cache_allow_tmpfs", shm.path().join("c").display()),
    );
    assert!(m.status()["disk_cache"].is_object());
}

#[test]
fn a_file_read_in_small_pieces_is_fetched_once() {
    let s = Server::start();
    let files = media(&s, 1, |_| 12_000_000 + 123);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&s, &format!("cache={}", cache.path().display()));
    let (rel, data) = &files[0];
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", m.p(rel).display()))
        .args(["of=/dev/null", "bs=4k"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // The kernel's readahead sends reads that share blocks at once: one fetch each.
    assert_eq!(disk_cache(&m, "miss_bytes"), data.len() as u64);
    assert!(disk_cache(&m, "used_bytes") <= data.len() as u64 + 4096);
    assert!(std::fs::read(m.p(rel)).unwrap() == *data);
}

#[test]
fn files_written_through_the_mount_are_read_back_from_the_disk() {
    use std::io::{Seek, SeekFrom, Write};
    let s = Server::start();
    let old = media(&s, 1, |_| 1_000_000);
    let cache = tempfile::tempdir().unwrap();
    let opts = format!("cache={}", cache.path().display());
    let mut m = Mount::new(&s, &opts);
    let new: Vec<(String, Vec<u8>)> = [5, 100_000, 3_000_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("up-{i}.jpg"), pattern(n, 50 + i as u64)))
        .collect();
    for (rel, data) in &new {
        std::fs::write(m.p(rel), data).unwrap();
    }
    // A mode change keeps the copy (the contents did not change).
    std::fs::set_permissions(m.p(&new[1].0), std::fs::Permissions::from_mode(0o640)).unwrap();
    // Ten bytes written into the middle of a file the cache never read: the rest of it
    // is not in the copy, and comes from the server.
    let (rel, data) = &old[0];
    let mut patched = data.clone();
    patched[300_000..300_010].copy_from_slice(b"0123456789");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.p(rel))
            .unwrap();
        f.seek(SeekFrom::Start(300_000)).unwrap();
        f.write_all(b"0123456789").unwrap();
    }
    m.unmount();
    m.restart(&s, &opts).unwrap();
    read_all(&m, &new);
    assert_eq!(
        disk_cache(&m, "miss_bytes"),
        0,
        "what was written came from the disk"
    );
    assert_eq!(disk_cache(&m, "hit_bytes"), total(&new));
    assert!(std::fs::read(m.p(rel)).unwrap() == patched);
    assert!(std::fs::read(s.served.join(rel)).unwrap() == patched);
    assert!(disk_cache(&m, "miss_bytes") >= 1_000_000 - 2 * 256 * 1024);
}
