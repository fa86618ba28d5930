//! The filesystem logic against the in-memory remote: no kernel, no server.

use std::sync::Arc;
use std::time::Duration;

use super::fake::FakeRemote;
use super::idmap::IdMap;
use super::state::nodes::ROOT;
use super::{Fs, FsConfig, SetAttr};
use crate::session::Bytes;

fn fs_with(cfg: FsConfig) -> (Arc<FakeRemote>, Arc<Fs<FakeRemote>>) {
    let remote = Arc::new(FakeRemote::new());
    let fs = Fs::new(
        remote.clone(),
        FsConfig {
            root: "/r".into(),
            ..cfg
        },
    );
    (remote, fs)
}

fn fs() -> (Arc<FakeRemote>, Arc<Fs<FakeRemote>>) {
    fs_with(FsConfig::default())
}

#[tokio::test]
async fn create_write_read_through_handles() {
    let (remote, fs) = fs();
    let (entry, fh) = fs.create(ROOT, "a", 0o640, libc::O_WRONLY).await.unwrap();
    assert_eq!(
        entry.attr.perm, 0o640,
        "mode set explicitly despite the server's umask"
    );
    assert_eq!(
        fs.write(fh, 3, Bytes::from_static(b"xyz")).await.unwrap(),
        3
    );
    fs.release(fh).await.unwrap();
    assert_eq!(remote.data("/r/a").unwrap(), b"\0\0\0xyz");
    let ino = fs.lookup(ROOT, "a").await.unwrap().attr.ino.0;
    let (fh, _) = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(&fs.read(fh, 3, 10).await.unwrap()[..], b"xyz");
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn vague_failures_become_precise_errnos() {
    let (remote, fs) = fs();
    remote.put_dir("/r/d");
    remote.put_file("/r/d/f", b"1");
    assert_eq!(
        fs.mkdir(ROOT, "d", 0o755).await.unwrap_err().errno,
        libc::EEXIST
    );
    assert_eq!(
        fs.rmdir(ROOT, "d").await.unwrap_err().errno,
        libc::ENOTEMPTY
    );
    assert_eq!(fs.unlink(ROOT, "d").await.unwrap_err().errno, libc::EISDIR);
    assert_eq!(
        fs.lookup(ROOT, &"n".repeat(256)).await.unwrap_err().errno,
        libc::ENAMETOOLONG
    );
    assert_eq!(
        fs.lookup(ROOT, "missing").await.unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(
        fs.rename(ROOT, "missing", ROOT, "x", false)
            .await
            .unwrap_err()
            .errno,
        libc::ENOENT
    );
}

#[tokio::test]
async fn mkdir_sets_requested_mode() {
    let (remote, fs) = fs();
    let e = fs.mkdir(ROOT, "g", 0o775).await.unwrap();
    assert_eq!(e.attr.perm, 0o775);
    let a = remote.lstat_sync("/r/g");
    assert_eq!(a & 0o7777, 0o775);
}

#[tokio::test]
async fn server_names_that_could_escape_are_never_listed() {
    let (remote, fs) = fs();
    remote.put_file("/r/ok", b"");
    *remote.junk_names.lock().unwrap() = vec!["..".into(), ".".into(), "a/b".into(), "".into()];
    let (fh, _) = fs.opendir(ROOT).await.unwrap();
    let names: Vec<String> = fs
        .listing(fh)
        .unwrap()
        .entries
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, vec!["ok".to_string()]);
    fs.releasedir(fh);
}

#[tokio::test]
async fn rename_moves_inodes_and_invalidates_cache() {
    let (remote, fs) = fs();
    remote.put_dir("/r/d");
    remote.put_file("/r/d/f", b"F");
    let d = fs.lookup(ROOT, "d").await.unwrap().attr.ino.0;
    let f = fs.lookup(d, "f").await.unwrap().attr.ino.0;
    fs.rename(ROOT, "d", ROOT, "e", false).await.unwrap();
    assert!(remote.exists("/r/e/f"));
    // The same inode now reads from the new path.
    let (attr, _) = fs.getattr(f).await.unwrap();
    assert_eq!(attr.size, 1);
    assert_eq!(fs.lookup(ROOT, "d").await.unwrap_err().errno, libc::ENOENT);
    // NOREPLACE refuses an existing target.
    remote.put_file("/r/x", b"");
    remote.put_file("/r/y", b"");
    assert_eq!(
        fs.rename(ROOT, "x", ROOT, "y", true)
            .await
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
}

#[tokio::test]
async fn attributes_are_cached_until_changed() {
    let (remote, fs) = fs();
    remote.put_file("/r/c", b"abc");
    let ino = fs.lookup(ROOT, "c").await.unwrap().attr.ino.0;
    let before = remote.calls.load(std::sync::atomic::Ordering::Relaxed);
    fs.getattr(ino).await.unwrap();
    assert_eq!(
        remote.calls.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "served from cache"
    );
    let (attr, _) = fs
        .setattr(
            ino,
            None,
            SetAttr {
                size: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(attr.size, 1);
    assert_eq!(fs.getattr(ino).await.unwrap().0.size, 1);
}

#[tokio::test]
async fn forced_owner_and_umask() {
    let (remote, fs) = fs_with(FsConfig {
        idmap: IdMap::new(Some(70), Some(71), 0o027),
        ..Default::default()
    });
    remote.put_file("/r/f", b"");
    let a = fs.lookup(ROOT, "f").await.unwrap().attr;
    assert_eq!((a.uid, a.gid, a.perm), (70, 71, 0o640));
    // Chown to what is shown is a no-op; to anything else EPERM.
    let ino = a.ino.0;
    fs.setattr(
        ino,
        None,
        SetAttr {
            uid: Some(70),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = fs
        .setattr(
            ino,
            None,
            SetAttr {
                uid: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EPERM);
}

#[tokio::test]
async fn transform_symlinks_inside_root() {
    let (remote, fs) = fs_with(FsConfig {
        transform_symlinks: true,
        ..Default::default()
    });
    remote.put_dir("/r/a");
    remote.put_file("/r/t", b"");
    remote.put_link("/r/a/l", "/r/t");
    fs.prepare().await.unwrap();
    let a = fs.lookup(ROOT, "a").await.unwrap().attr.ino.0;
    let l = fs.lookup(a, "l").await.unwrap().attr.ino.0;
    assert_eq!(fs.readlink(l).await.unwrap(), "../t");
}

/// Links the server planted that lead out of the mount give EPERM by default; inside ones
/// work; `no_contain_symlinks` passes them through.
#[tokio::test]
async fn links_out_of_the_mount_are_refused_unless_trusted() {
    for contain in [true, false] {
        let (remote, fs) = fs_with(FsConfig {
            contain_symlinks: contain,
            ..Default::default()
        });
        remote.put_dir("/r/a");
        remote.put_file("/r/t", b"");
        remote.put_link("/r/a/out", "../../../etc/hostname");
        remote.put_link("/r/a/abs", "/etc/hostname");
        remote.put_link("/r/a/in", "/r/t");
        fs.prepare().await.unwrap();
        let a = fs.lookup(ROOT, "a").await.unwrap().attr.ino.0;
        let read = |name: &'static str| {
            let fs = &fs;
            async move {
                let l = fs.lookup(a, name).await.unwrap().attr.ino.0;
                fs.readlink(l).await
            }
        };
        if contain {
            assert_eq!(read("out").await.unwrap_err().errno, libc::EPERM);
            assert_eq!(read("abs").await.unwrap_err().errno, libc::EPERM);
            assert_eq!(read("in").await.unwrap(), "../t");
        } else {
            assert_eq!(read("out").await.unwrap(), "../../../etc/hostname");
            assert_eq!(read("abs").await.unwrap(), "/etc/hostname");
            assert_eq!(read("in").await.unwrap(), "/r/t");
        }
    }
}

#[tokio::test]
async fn prepare_checks_the_remote_root() {
    let remote = Arc::new(FakeRemote::new());
    remote.put_file("/r/file", b"");
    let fs = Fs::new(
        remote.clone(),
        FsConfig {
            root: "/r/file".into(),
            ..Default::default()
        },
    );
    assert_eq!(fs.prepare().await.unwrap_err().errno, libc::ENOTDIR);
    let fs = Fs::new(
        remote,
        FsConfig {
            root: "/nope".into(),
            ..Default::default()
        },
    );
    assert_eq!(fs.prepare().await.unwrap_err().errno, libc::ENOENT);
}

#[tokio::test]
async fn negative_entries_are_cached_when_asked() {
    let (remote, fs) = fs_with(FsConfig {
        negative_ttl: Duration::from_secs(60),
        ..Default::default()
    });
    assert!(fs.lookup(ROOT, "later").await.is_err());
    remote.put_file("/r/later", b"");
    // Still cached as missing...
    assert!(fs.lookup(ROOT, "later").await.is_err());
    // ...until this mount creates it.
    let (_, fh) = fs
        .create(ROOT, "later2", 0o644, libc::O_WRONLY)
        .await
        .unwrap();
    fs.release(fh).await.unwrap();
    assert!(fs.lookup(ROOT, "later2").await.is_ok());
}

#[tokio::test]
async fn root_attributes_do_not_wait_for_the_link() {
    let (remote, fs) = fs();
    fs.prepare().await.unwrap();
    remote
        .offline
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (attr, _) = fs.getattr(ROOT).await.unwrap();
    assert_eq!(attr.kind, fuser::FileType::Directory);
    assert_eq!(attr.perm, 0o755);
    // Anything else does need the server.
    assert!(fs.lookup(ROOT, "x").await.is_err());
}

#[tokio::test]
async fn listings_are_reused_until_this_mount_changes_the_directory() {
    let (remote, fs) = fs();
    remote.put_file("/r/a", b"");
    let names = |fs: &Fs<FakeRemote>, fh| -> Vec<String> {
        fs.listing(fh)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.name.clone())
            .collect()
    };
    let (fh, _) = fs.opendir(ROOT).await.unwrap();
    assert_eq!(names(&fs, fh), ["a"]);
    fs.releasedir(fh);
    let calls = remote.calls.load(std::sync::atomic::Ordering::Relaxed);
    let (fh, _) = fs.opendir(ROOT).await.unwrap();
    assert_eq!(
        remote.calls.load(std::sync::atomic::Ordering::Relaxed),
        calls,
        "second listing from cache"
    );
    fs.releasedir(fh);
    let (_, f) = fs.create(ROOT, "b", 0o644, libc::O_WRONLY).await.unwrap();
    fs.release(f).await.unwrap();
    let (fh, _) = fs.opendir(ROOT).await.unwrap();
    assert_eq!(names(&fs, fh), ["a", "b"]);
}

#[tokio::test]
async fn disable_hardlink_refuses_link() {
    let (remote, fs) = fs_with(FsConfig {
        disable_hardlink: true,
        ..Default::default()
    });
    remote.put_file("/r/a", b"");
    let a = fs.lookup(ROOT, "a").await.unwrap().attr.ino.0;
    assert_eq!(fs.link(a, ROOT, "b").await.unwrap_err().errno, libc::EPERM);
    assert!(!remote.exists("/r/b"));
}

#[tokio::test]
async fn names_in_a_directory_this_mount_made_need_no_round_trip() {
    use std::sync::atomic::Ordering;
    let (remote, fs) = fs();
    let d = fs.mkdir(ROOT, "new", 0o755).await.unwrap().attr.ino.0;
    let before = remote.calls.load(Ordering::Relaxed);
    let e = fs.lookup(d, "file").await.unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
    assert_eq!(
        remote.calls.load(Ordering::Relaxed),
        before,
        "answered from what is known"
    );
    // A name created there is found, and a removed one is gone again.
    let (_, fh) = fs.create(d, "file", 0o644, libc::O_WRONLY).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(fs.lookup(d, "file").await.is_ok());
    fs.unlink(d, "file").await.unwrap();
    let before = remote.calls.load(Ordering::Relaxed);
    assert_eq!(fs.lookup(d, "file").await.unwrap_err().errno, libc::ENOENT);
    assert_eq!(remote.calls.load(Ordering::Relaxed), before);
}

#[tokio::test]
async fn a_lookup_miss_lists_the_directory_for_the_next_lookups() {
    use std::sync::atomic::Ordering;
    let (remote, fs) = fs();
    remote.put_dir("/r/d");
    for i in 0..50 {
        remote.put_file(&format!("/r/d/f{i}"), b"x");
    }
    let d = fs.lookup(ROOT, "d").await.unwrap().attr.ino.0;
    fs.lookup(d, "f0").await.unwrap();
    // The listing runs in the background: wait for it (bounded), then look up the rest.
    for _ in 0..200 {
        if fs.cache.dirs.contains("/r/d", "f1").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = remote.calls.load(Ordering::Relaxed);
    for i in 1..50 {
        fs.lookup(d, &format!("f{i}")).await.unwrap();
    }
    assert_eq!(
        remote.calls.load(Ordering::Relaxed),
        before,
        "served by the listing"
    );
    // A name the listing lacks is asked for: another client may have made it since
    // (negative_timeout is 0 by default).
    remote.put_file("/r/d/late", b"y");
    fs.lookup(d, "late").await.unwrap();
    fs.unlink(d, "f3").await.unwrap();
    assert_eq!(fs.lookup(d, "f3").await.unwrap_err().errno, libc::ENOENT);
}

#[tokio::test]
async fn kernel_pages_are_kept_only_for_an_unchanged_file() {
    let (remote, fs) = fs();
    remote.put_file("/r/m.png", b"media");
    let ino = fs.lookup(ROOT, "m.png").await.unwrap().attr.ino.0;
    let (fh, keep) = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(!keep, "first open: nothing cached yet");
    fs.release(fh).await.unwrap();
    let (fh, keep) = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(keep, "same mtime and size: the kernel's pages still hold");
    fs.release(fh).await.unwrap();
    // Changed on the server (size differs): once the attributes are refreshed, not kept.
    remote.put_file("/r/m.png", b"other media");
    fs.cache.invalidate("/r/m.png");
    fs.lookup(ROOT, "m.png").await.unwrap();
    let (_, keep) = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(!keep);
}

#[tokio::test]
async fn a_create_whose_mode_cannot_be_set_closes_its_handle() {
    let (remote, fs) = fs();
    remote.fail.lock().unwrap().insert("fsetstat", libc::EACCES);
    // 0620 arrives as 0600 through the server's umask, so the mode is set afterwards.
    let e = fs
        .create(ROOT, "f", 0o620, libc::O_WRONLY)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EACCES);
    assert_eq!(remote.open_count(), 0, "the remote handle was closed");
}

/// A daemon taking over from another on the same server.
fn successor(remote: &Arc<FakeRemote>) -> Arc<Fs<FakeRemote>> {
    Fs::new(
        remote.clone(),
        FsConfig {
            root: "/r".into(),
            ..Default::default()
        },
    )
}

/// Hidden names of files unlinked while open, on the server.
fn hidden_on_server(remote: &FakeRemote) -> usize {
    let names = remote.names("/r").into_iter();
    names
        .filter(|n| n.starts_with(".mastofs-unlinked-"))
        .count()
}

/// Runs the spawned tasks (a confirmation's watcher) until `done` holds (bounded).
async fn until(done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn a_successor_restores_node_ids_handles_and_reports_possibly_lost_writes_once() {
    let (remote, fs) = fs();
    remote.put_dir("/r/d");
    remote.put_file("/r/d/f", b"old");
    let d = fs.lookup(ROOT, "d").await.unwrap().attr.ino.0;
    let f = fs.lookup(d, "f").await.unwrap().attr.ino.0;
    let (written, _) = fs.open(f, libc::O_RDWR).await.unwrap();
    let (synced, _) = fs.open(f, libc::O_RDONLY).await.unwrap();
    // The server has not confirmed the write when the daemon dies.
    let _unconfirmed = remote.hold("confirmed");
    fs.write(written, 0, Bytes::from_static(b"new"))
        .await
        .unwrap();
    let (dh, _) = fs.opendir(d).await.unwrap();
    fs.rename(d, "f", ROOT, "g", false).await.unwrap();

    // The next daemon, from the journal alone.
    let state = fs.journal().state();
    let next = successor(&remote);
    assert_eq!(
        next.restore(&state).await.unwrap(),
        1,
        "one handle had writes"
    );
    assert_eq!(
        next.path_of(f).unwrap(),
        "/r/g",
        "the node id follows the rename"
    );
    assert_eq!(
        next.listing(dh).unwrap().entries.len(),
        0,
        "d's listing is fresh"
    );
    // EIO once for the handle with unconfirmed writes, then it works; the other is clean.
    assert_eq!(next.flush(written).await.unwrap_err().errno, libc::EIO);
    next.flush(written).await.unwrap();
    next.flush(synced).await.unwrap();
    assert_eq!(&next.read(synced, 0, 3).await.unwrap()[..], b"new");
    // New ids never collide with restored ones.
    let (fh, _) = next.open(f, libc::O_RDONLY).await.unwrap();
    assert!(fh > written && fh > synced);
    let (dh2, _) = next.opendir(ROOT).await.unwrap();
    assert!(dh2 > dh);
}

#[tokio::test]
async fn confirmed_writes_are_noted_so_a_crash_reports_nothing_for_them() {
    let (remote, fs) = fs();
    remote.put_file("/r/f", b"");
    let f = fs.lookup(ROOT, "f").await.unwrap().attr.ino.0;
    let (fh, _) = fs.open(f, libc::O_WRONLY).await.unwrap();
    let dirty = || fs.journal().state().files[&fh].dirty;
    let confirmations = remote.hold("confirmed");
    fs.write(fh, 0, Bytes::from_static(b"x")).await.unwrap();
    assert!(dirty(), "acknowledged, not yet confirmed");
    // A second write is on its way when the server confirms the first.
    let writes = remote.hold("write");
    let second = fs.write(fh, 1, Bytes::from_static(b"y"));
    let confirm_meanwhile = async {
        writes.arrived().await;
        confirmations.arrived().await;
        confirmations.release();
        until(|| remote.data("/r/f").is_some()).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(dirty(), "a write in progress: not clean");
        writes.release();
    };
    let (written, ()) = tokio::join!(second, confirm_meanwhile);
    written.unwrap();
    until(|| !dirty()).await;
    assert_eq!(remote.data("/r/f").unwrap(), b"xy");
}

#[tokio::test]
async fn a_close_cut_by_a_handover_is_finished_by_the_successor() {
    let (remote, fs) = fs();
    let (entry, fh) = fs.create(ROOT, "f", 0o644, libc::O_RDWR).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"data")).await.unwrap();
    fs.unlink(ROOT, "f").await.unwrap();
    let hidden = || hidden_on_server(&remote);
    assert_eq!(hidden(), 1, "open: kept under a hidden name");
    // fstat of the open, unlinked file: no links, its size.
    let (attr, _) = fs.getattr(entry.attr.ino.0).await.unwrap();
    assert_eq!((attr.nlink, attr.size), (0, 4));
    let (attr, _) = fs.getattr_open(entry.attr.ino.0, fh).await.unwrap();
    assert_eq!((attr.nlink, attr.size), (0, 4));

    // The kernel releases the handle; the handover takes the state while the remote close
    // is on its way (a sealed request: the old daemon never finishes it).
    let closes = remote.hold("close");
    let closing = fs.release(fh);
    let cut = async {
        closes.arrived().await;
        fs.journal().state()
    };
    let state = tokio::select! {
        _ = closing => panic!("the close was held"),
        state = cut => state,
    };
    closes.release();
    let next = successor(&remote);
    next.restore(&state).await.unwrap();
    assert_eq!(hidden(), 0, "the successor removed what no handle holds");
    assert!(next.journal().state().hidden.is_empty());
}

#[tokio::test]
async fn a_hidden_file_still_held_survives_the_handover_and_goes_at_its_last_close() {
    let (remote, fs) = fs();
    let (_, fh) = fs.create(ROOT, "f", 0o644, libc::O_RDWR).await.unwrap();
    fs.unlink(ROOT, "f").await.unwrap();
    let next = successor(&remote);
    next.restore(&fs.journal().state()).await.unwrap();
    let hidden = || hidden_on_server(&remote);
    assert_eq!(hidden(), 1, "still open through the restored handle");
    next.release(fh).await.unwrap();
    assert_eq!(hidden(), 0);
}
