//! What a rogue server, a container, another local user or odd bytes can make of mastofs:
//! each test plays the attacker and asserts the host is not turned.
mod common;

use std::fs;
use std::path::Path;

use common::*;

/// The server's links: those that lead out of the mount give EPERM (readlink and through
/// them), those that stay inside work; `no_contain_symlinks` trusts the server.
#[test]
fn a_rogue_servers_links_never_lead_out_of_the_mount() {
    let s = Server::start();
    let srv = &s.served;
    fs::create_dir_all(srv.join("sub/deeper")).unwrap();
    fs::write(srv.join("data.txt"), b"inside").unwrap();
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, srv.join(name)).unwrap();
    };
    link("../../../../../../../../../../etc/hostname", "escape-rel");
    link("/etc/hostname", "escape-abs");
    link("../../data.txt", "sub/up"); // `..` out of the root through a subdirectory
    link("../../../etc", "sub/deeper/updir");
    link("../data.txt", "sub/in-rel");
    link(&format!("{}/data.txt", srv.display()), "sub/in-abs");
    link("sub", "dirlink");
    link("deeper/../../data.txt", "sub/in-dotdot");
    s.give(srv);
    let m = Mount::new(&s, "transform_symlinks,allow_other,default_permissions");
    for name in ["escape-rel", "escape-abs", "sub/up", "sub/deeper/updir"] {
        let e = fs::read_link(m.p(name)).expect_err(name);
        assert_eq!(errno(e), libc::EPERM, "readlink {name}");
        let e = fs::read(m.p(name)).expect_err(name);
        assert_eq!(errno(e), libc::EPERM, "open through {name}");
        // Still listed as a link: nothing is hidden, only not followed.
        assert!(fs::symlink_metadata(m.p(name)).unwrap().is_symlink());
    }
    assert_eq!(
        fs::read_link(m.p("sub/in-rel")).unwrap(),
        Path::new("../data.txt")
    );
    assert_eq!(
        fs::read_link(m.p("sub/in-abs")).unwrap(),
        Path::new("../data.txt")
    );
    assert_eq!(
        fs::read_link(m.p("sub/in-dotdot")).unwrap(),
        Path::new("../data.txt")
    );
    for name in [
        "sub/in-rel",
        "sub/in-abs",
        "sub/in-dotdot",
        "dirlink/in-rel",
    ] {
        assert_eq!(fs::read(m.p(name)).unwrap(), b"inside", "{name}");
    }
    assert!(fs::metadata(m.p("dirlink")).unwrap().is_dir());
    assert!(m.p("dirlink/deeper").is_dir());
    assert!(
        m.log().contains("leads out of the mount"),
        "refusals are logged"
    );
    drop(m);

    let trusted = Mount::new(&s, "no_contain_symlinks");
    assert_eq!(
        fs::read_link(trusted.p("escape-abs")).unwrap(),
        Path::new("/etc/hostname")
    );
}
