//! Installed the way admins install things: the Debian package built with `cargo deb`,
//! installed with dpkg, mounts made by mount(8) from fstab lines of both types (as root,
//! and as a non-root user with a `user` line), and the package purged without a trace.
//! Installs system-wide: one test, refusing to run where mastofs is installed already.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

fn ok(what: &str, out: &Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// Purges the package on drop, so a failing test leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "mastofs"]).output();
    }
}

/// Builds the package into `dir`.
fn build_deb(dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["deb", "--strip", "--output"])
        .arg(dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo deb (cargo install cargo-deb)");
    ok("cargo deb", &out);
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb")
}

/// The package's entries that a user other than root could change, and its mount
/// helpers unless they are links to /usr/bin/mastofs (`dpkg-deb -c`).
fn loose_entries(deb: &Path) -> Vec<String> {
    let list = ok(
        "dpkg-deb -c",
        &Command::new("dpkg-deb")
            .arg("-c")
            .arg(deb)
            .output()
            .unwrap(),
    );
    let mut bad = Vec::new();
    for l in list.lines() {
        let (mode, owner) = (&l[..10], l.split_whitespace().nth(1).unwrap_or(""));
        let link = mode.starts_with('l');
        if (!link && (mode.as_bytes()[5] == b'w' || mode.as_bytes()[8] == b'w'))
            || !matches!(owner, "0/0" | "root/root")
        {
            bad.push(l.to_string());
        }
        for helper in ["./sbin/mount.mastofs", "./sbin/mount.fuse.mastofs"] {
            let named = l.contains(&format!("{helper} ")) || l.ends_with(helper);
            if named && !(link && l.ends_with(&format!("{helper} -> /usr/bin/mastofs"))) {
                bad.push(l.to_string());
            }
        }
    }
    bad
}

fn mounted_type(mp: &Path) -> Option<String> {
    let want = mp.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&want.as_str()))
        .and_then(|f| f.get(2).map(|t| t.to_string()))
}

#[test]
fn the_package_installs_mounts_from_fstab_and_purges_clean() {
    assert!(
        !Command::new("dpkg")
            .args(["-s", "mastofs"])
            .output()
            .unwrap()
            .status
            .success(),
        "the mastofs package is installed on this machine already: this test installs and \
         purges it, so it will not run here"
    );
    let s = Server::start_configured("ed25519", "");
    std::fs::write(s.served.join("hello"), b"from the box").unwrap();
    let work = tempfile::tempdir().unwrap();
    let deb = build_deb(work.path());
    assert_eq!(
        loose_entries(&deb),
        Vec::<String>::new(),
        "built where mastofs is not installed"
    );
    let guard = Installed;
    ok(
        "dpkg -i",
        &Command::new("dpkg").arg("-i").arg(&deb).output().unwrap(),
    );
    // Built again where /usr/bin/mastofs exists (the README's upgrade path): the helpers
    // stay links, and nothing is writable by others.
    let again = tempfile::tempdir().unwrap();
    let rebuilt = build_deb(again.path());
    assert_eq!(
        loose_entries(&rebuilt),
        Vec::<String>::new(),
        "built where mastofs is installed"
    );
    for helper in ["/sbin/mount.mastofs", "/sbin/mount.fuse.mastofs"] {
        assert_eq!(
            std::fs::read_link(helper).unwrap(),
            Path::new("/usr/bin/mastofs"),
            "{helper} installed as a link"
        );
    }
    let files: Vec<String> = ok(
        "dpkg -L",
        &Command::new("dpkg")
            .args(["-L", "mastofs"])
            .output()
            .unwrap(),
    )
    .lines()
    .map(str::to_string)
    .collect();
    for f in [
        "/usr/bin/mastofs",
        "/sbin/mount.mastofs",
        "/sbin/mount.fuse.mastofs",
        "/usr/share/man/man8/mastofs.8.gz",
        "/usr/share/man/man8/mount.mastofs.8.gz",
        "/lib/systemd/system/mastofs@.service",
        "/lib/systemd/system/docker.service.d/mastofs.conf",
        "/usr/share/doc/mastofs/examples/fstab.example",
    ] {
        assert!(
            files.iter().any(|l| l == f),
            "{f} not in the package: {files:?}"
        );
        assert!(Path::new(f).symlink_metadata().is_ok(), "{f} not installed");
    }
    ok(
        "systemd-analyze verify of the installed unit",
        &sh(
            "cp /lib/systemd/system/mastofs@.service /tmp/mastofs-verify@x.service && \
             systemd-analyze verify --man=no /tmp/mastofs-verify@x.service; \
             r=$?; rm -f /tmp/mastofs-verify@x.service; exit $r",
        ),
    );

    // As root: both types from a throwaway fstab.
    let mp1 = work.path().join("m1");
    let mp2 = work.path().join("m2");
    std::fs::create_dir(&mp1).unwrap();
    std::fs::create_dir(&mp2).unwrap();
    let fstab = work.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{src} {m1} fuse.mastofs ssh_config={cfg},_netdev,nofail,x-systemd.requires=network-online.target 0 0\n\
             {src} {m2} mastofs ssh_config={cfg},noauto,x-systemd.automount,allow_other,default_permissions 0 0\n",
            src = s.source(),
            m1 = mp1.display(),
            m2 = mp2.display(),
            cfg = s.ssh_config.display()
        ),
    )
    .unwrap();
    let t = fstab.display();
    ok(
        "mount -a -T",
        &sh(&format!("mount -a -T {t} -t fuse.mastofs")),
    );
    assert_eq!(mounted_type(&mp1).as_deref(), Some("fuse.mastofs"));
    assert_eq!(mounted_type(&mp2), None, "noauto was mounted by -a");
    ok(
        "mount -T m2",
        &sh(&format!("mount -T {t} {}", mp2.display())),
    );
    assert_eq!(mounted_type(&mp2).as_deref(), Some("fuse.mastofs"));
    for mp in [&mp1, &mp2] {
        assert_eq!(std::fs::read(mp.join("hello")).unwrap(), b"from the box");
        let status = Command::new("/usr/bin/mastofs")
            .arg("status")
            .arg(mp)
            .output()
            .unwrap();
        ok("mastofs status", &status);
    }
    ok(
        "umount",
        &sh(&format!("umount {} {}", mp1.display(), mp2.display())),
    );
    assert_eq!(mounted_type(&mp1), None);

    // As a non-root user, through a `user` line in /etc/fstab (bind-mounted over the real
    // one in a mount namespace of the test's own): mount(8) runs the helper as that user,
    // whose status socket lives in its runtime directory.
    let uid = 991;
    let home = work.path().join("user");
    std::fs::create_dir(&home).unwrap();
    for f in ["user_key", "known_hosts"] {
        std::fs::copy(s.dir.path().join(f), home.join(f)).unwrap();
    }
    let user_cfg = home.join("ssh_config");
    std::fs::write(
        &user_cfg,
        format!(
            "Host box\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n",
            s.port,
            s.login,
            home.join("user_key").display(),
            home.join("known_hosts").display()
        ),
    )
    .unwrap();
    let mpu = work.path().join("mu");
    std::fs::create_dir(&mpu).unwrap();
    let runtime = PathBuf::from(format!("/run/user/{uid}"));
    let made_runtime = !runtime.exists();
    std::fs::create_dir_all(&runtime).unwrap();
    for p in [&home, &mpu, &runtime] {
        std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
    }
    for f in ["user_key", "known_hosts", "ssh_config"] {
        std::os::unix::fs::chown(home.join(f), Some(uid), Some(uid)).unwrap();
    }
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let user_fstab = work.path().join("fstab.user");
    std::fs::write(
        &user_fstab,
        format!(
            "{} {} fuse.mastofs noauto,user,ssh_config={} 0 0\n",
            s.source(),
            mpu.display(),
            user_cfg.display()
        ),
    )
    .unwrap();
    let as_user = format!(
        "setpriv --reuid={uid} --regid={uid} --clear-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME={home}",
        home = home.display()
    );
    let script = format!(
        "set -e\n\
         mount --make-rprivate /\n\
         mount --bind {fstab} /etc/fstab\n\
         {as_user} mount {mp}\n\
         grep -q ' {mp} fuse.mastofs ' /proc/self/mounts\n\
         {as_user} cat {mp}/hello\n\
         echo\n\
         {as_user} sh -c 'echo mine > {mp}/by-user'\n\
         {as_user} /usr/bin/mastofs status {mp}\n\
         ls -l {runtime}/mastofs/\n\
         {as_user} umount {mp}\n\
         ! grep -q ' {mp} ' /proc/self/mounts\n\
         echo unmounted\n",
        fstab = user_fstab.display(),
        mp = mpu.display(),
        runtime = runtime.display(),
    );
    // Users reach FUSE through /dev/fuse, which Debian's udev rule makes 0666; this
    // machine's is 0600. Opened up for the user mount only, restored after.
    let dev_mode = std::fs::metadata("/dev/fuse").unwrap().permissions();
    std::fs::set_permissions(
        "/dev/fuse",
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    std::fs::set_permissions("/dev/fuse", dev_mode).unwrap();
    if made_runtime {
        let _ = std::fs::remove_dir_all(&runtime);
    }
    let text = ok("the user mount", &out);
    assert!(text.contains("from the box"), "{text}");
    assert!(text.contains("unmounted"), "{text}");
    // `mastofs status` as the user found the socket where it looks by default, and the
    // socket is in the user's runtime directory.
    assert!(
        text.contains("CONNECTED") && text.contains(".sock"),
        "{text}"
    );
    assert_eq!(std::fs::read(s.served.join("by-user")).unwrap(), b"mine\n");

    // Purged: nothing of the package is left.
    ok(
        "dpkg --purge",
        &Command::new("dpkg")
            .args(["--purge", "mastofs"])
            .output()
            .unwrap(),
    );
    std::mem::forget(guard);
    let left: Vec<&String> = files
        .iter()
        .filter(|f| {
            let p = Path::new(f.as_str());
            // Directories the system owns (/usr/bin, /sbin, ...) stay; ours must go.
            let system_dir = p.metadata().is_ok_and(|m| m.is_dir()) && !f.contains("mastofs");
            p.symlink_metadata().is_ok() && !system_dir
        })
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
}
