//! Forced owners, umask and id mapping, checked by the kernel for non-root users.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

#[test]
fn media_mount_mastodon_user_writes_others_cannot() {
    let s = Server::start();
    fs::write(s.served.join("existing"), b"x").unwrap();
    let m = Mount::new(&s, "allow_other,default_permissions,uid=991,gid=991");
    let md = fs::metadata(m.p("existing")).unwrap();
    assert_eq!((md.uid(), md.gid()), (991, 991));
    let ok = as_user(
        991,
        991,
        &format!(
            "echo hi > {0}/new && mkdir {0}/dir && cat {0}/new",
            m.path().display()
        ),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "hi\n");
    assert_eq!(fs::read(s.served.join("new")).unwrap(), b"hi\n");
    let denied = as_user(
        1234,
        1234,
        &format!("echo no > {}/other", m.path().display()),
    );
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    assert!(!s.served.join("other").exists());
    // Others can still read what the mode allows.
    let read = as_user(1234, 1234, &format!("cat {}/new", m.path().display()));
    assert!(read.status.success());
}

#[test]
fn pgbackrest_mount_uid_70() {
    let s = Server::start();
    let m = Mount::new(&s, "allow_other,default_permissions,uid=70,gid=70");
    let r = as_user(70, 70, &format!(
        "mkdir -p {0}/archive/db && head -c 1048576 /dev/zero > {0}/archive/db/seg.tmp && mv {0}/archive/db/seg.tmp {0}/archive/db/seg && ls -ln {0}/archive/db",
        m.path().display()
    ));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains(" 70 70 "));
    assert_eq!(
        fs::metadata(s.served.join("archive/db/seg")).unwrap().len(),
        1 << 20
    );
    let denied = as_user(
        1000,
        1000,
        &format!("touch {}/archive/x", m.path().display()),
    );
    assert!(!denied.status.success());
}

#[test]
fn borg_mount_root_group_umask_0027() {
    let s = Server::start();
    fs::write(s.served.join("config"), b"c").unwrap();
    fs::set_permissions(
        s.served.join("config"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let m = Mount::new(
        &s,
        "allow_other,default_permissions,uid=0,gid=4242,umask=0027",
    );
    let md = fs::metadata(m.p("config")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, 4242, 0o640));
    // Group members read, others get nothing.
    let grp = as_user(5000, 4242, &format!("cat {}/config", m.path().display()));
    assert!(
        grp.status.success(),
        "{}",
        String::from_utf8_lossy(&grp.stderr)
    );
    let other = as_user(5000, 5000, &format!("cat {}/config", m.path().display()));
    assert!(!other.status.success());
    let grp_write = as_user(
        5000,
        4242,
        &format!("echo x >> {}/config", m.path().display()),
    );
    assert!(!grp_write.status.success());
}

#[test]
fn idmap_user_maps_login_to_mounting_user() {
    let s = Server::start();
    fs::write(s.served.join("f"), b"x").unwrap();
    // The login is root here; idmap=user maps it to the mounting user (root too), and a
    // file owned by someone else keeps its number.
    std::os::unix::fs::chown(s.served.join("f"), Some(777), Some(778)).unwrap();
    let m = Mount::new(&s, "idmap=user");
    let md = fs::metadata(m.p("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (777, 778));
    let me = fs::metadata(m.path()).unwrap();
    assert_eq!(me.uid(), 0);
}
