//! The documentation agrees with the code: every option the parser knows is in
//! `mastofs(8)`, the README's sshfs table says what the parser does with each option, the
//! man pages render without warnings, and the systemd units in contrib/ and those systemd's
//! fstab generator makes from the README's lines pass `systemd-analyze verify`.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;
use mastofs::options::table::{find, From, OPTIONS};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Option names the parser knows: its table (`src/options/table.rs`), wildcards aside.
fn parser_options() -> Vec<String> {
    let names = OPTIONS.iter().flat_map(|o| o.names.iter());
    names
        .filter(|n| !n.ends_with('*'))
        .map(|n| n.to_string())
        .collect()
}

#[test]
fn every_option_the_parser_knows_is_in_the_man_page() {
    let names = parser_options();
    assert!(names.len() > 100, "only {} names", names.len());
    let man = read("man/mastofs.8")
        .replace("\\-", "-")
        .replace("\\_", "_");
    let missing: Vec<&String> = names.iter().filter(|n| !man.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "options missing from mastofs(8): {missing:?}"
    );
}

/// Runs the option through the parser (as mount(8)'s helper with -f: parse, check, exit).
fn parse(option: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("mount.mastofs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let cfg = dir.path().join("ssh_config");
    std::fs::write(&cfg, "Host box\n  HostName 127.0.0.1\n").unwrap();
    let out = Command::new(&helper)
        .arg("box:/srv")
        .arg(&mp)
        .arg("-f")
        .arg("-o")
        .arg(format!("ssh_config={},{option}", cfg.display()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_readme_says_what_the_parser_does_with_every_sshfs_option() {
    let readme = read("README.md");
    let table = readme
        .split("| sshfs option | in mastofs |")
        .nth(1)
        .expect("the sshfs table in README.md");
    let mut rows = 0;
    let mut documented = Vec::new();
    for line in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (option, what) = (cells[1].trim_matches('`'), cells[2]);
        let name = option.split('=').next().unwrap_or(option);
        let declared = find(name).unwrap_or_else(|| panic!("{name}: not in the option table"));
        documented.push(name.to_string());
        // The README says what the table says (a value the table refuses may say
        // "refused" for that value: Compression=yes).
        let word = declared.does.word();
        assert!(
            what.starts_with(word) || what.starts_with("refused"),
            "{option}: the README says '{what}', the table '{word}'"
        );
        let (ok, err) = parse(option);
        if what.starts_with("refused") {
            assert!(!ok, "{option} is documented as refused but was accepted");
            assert!(err.contains("not supported"), "{option}: {err}");
        } else {
            assert!(
                ["same", "mapped", "ignored"]
                    .iter()
                    .any(|w| what.starts_with(w)),
                "{option}: say same, mapped, ignored or refused: {what}"
            );
            assert!(ok, "{option} is documented as {what} but: {err}");
        }
        rows += 1;
    }
    assert!(rows > 50, "only {rows} rows");
    // Every sshfs and ssh option the table knows has its row.
    let others = OPTIONS
        .iter()
        .filter(|o| matches!(o.from, From::Sshfs | From::Ssh))
        .flat_map(|o| o.names.iter());
    let missing: Vec<_> = others
        .filter(|n| !documented.iter().any(|d| d == *n))
        .collect();
    assert!(
        missing.is_empty(),
        "no row in the README's sshfs table: {missing:?}"
    );
    // An option nobody knows is an error, not silently taken.
    let (ok, err) = parse("no_such_option");
    assert!(!ok && err.contains("no_such_option"), "{err}");
}

#[test]
fn man_pages_render_without_warnings() {
    // As installed: mount.mastofs.8 is `.so man8/mastofs.8`.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("man8")).unwrap();
    for page in ["mastofs.8", "mount.mastofs.8"] {
        std::fs::copy(
            root().join("man").join(page),
            d.path().join("man8").join(page),
        )
        .unwrap();
    }
    for page in ["man8/mastofs.8", "man8/mount.mastofs.8"] {
        let out = Command::new("groff")
            .args(["-ww", "-z", "-man"])
            .arg(page)
            .current_dir(d.path())
            .output()
            .expect("groff (groff-base)");
        assert!(out.status.success(), "{page}");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{page}:\n{warnings}");
    }
}

/// `systemd-analyze verify` on `units` found in `dir` (nothing but errors counts; verify
/// warns about things outside the units, such as a missing /etc/mastofs/<i>.conf).
fn verify(dir: &Path, units: &[&str]) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units.iter().map(|u| dir.join(u)))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify {units:?}:\n{text}");
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            (l.contains("Unknown") || l.contains("Failed") || l.contains("Invalid"))
                && !l.contains("/etc/mastofs")
        })
        .collect();
    assert!(bad.is_empty(), "verify {units:?}:\n{text}");
}

#[test]
fn contrib_units_and_drop_ins_verify() {
    let d = tempfile::tempdir().unwrap();
    let unit = read("contrib/systemd/mastofs@.service")
        // verify checks that ExecStart exists: the package installs /usr/bin/mastofs.
        .replace("/usr/bin/mastofs", BIN);
    std::fs::write(d.path().join("mastofs@.service"), &unit).unwrap();
    std::fs::write(d.path().join("mastofs@media.service"), &unit).unwrap();
    // docker.service as docker ships it (abridged), with both drop-ins.
    std::fs::write(
        d.path().join("docker.service"),
        "[Unit]\nDescription=Docker\nAfter=network-online.target\n[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let drop = d.path().join("docker.service.d");
    std::fs::create_dir(&drop).unwrap();
    std::fs::copy(
        root().join("contrib/systemd/docker.service.d/mastofs.conf"),
        drop.join("mastofs.conf"),
    )
    .unwrap();
    std::fs::copy(
        root().join("contrib/systemd/docker-after-mastofs.conf"),
        drop.join("mastofs-mounts.conf"),
    )
    .unwrap();
    verify(d.path(), &["mastofs@media.service", "docker.service"]);
}

/// systemd's fstab generator turns the README's lines into mount units ordered after the
/// network and before remote-fs.target (which docker waits for, by the package's drop-in).
#[test]
fn the_fstab_generator_makes_verifiable_units_from_the_readme_lines() {
    let readme = read("README.md");
    let section = readme
        .split("### /etc/fstab")
        .nth(1)
        .expect("fstab section");
    let lines: Vec<&str> = section
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(" fuse.mastofs "))
        .take(3)
        .collect();
    assert_eq!(lines.len(), 3, "{section}");
    let d = tempfile::tempdir().unwrap();
    let fstab = d.path().join("fstab");
    let mut text = lines.join("\n") + "\n";
    // The other type, and the options the issue names.
    text.push_str(
        "box:/home/extra /mnt/extra mastofs noauto,nofail,_netdev,x-systemd.automount,x-systemd.requires=network-online.target 0 0\n",
    );
    std::fs::write(&fstab, text).unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let gen = Command::new("/lib/systemd/system-generators/systemd-fstab-generator")
        .args([&out, &out, &out])
        .env("SYSTEMD_FSTAB", &fstab)
        .env("SYSTEMD_PROC_CMDLINE", "")
        .output()
        .expect("systemd-fstab-generator");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    for unit in [
        "mnt-mastodon.mount",
        "mnt-pgbackrest.mount",
        "mnt-backup.mount",
    ] {
        let text =
            std::fs::read_to_string(out.join(unit)).unwrap_or_else(|e| panic!("{unit}: {e}"));
        assert!(text.contains("Type=fuse.mastofs"), "{unit}:\n{text}");
        assert!(text.contains("Before=remote-fs.target"), "{unit}:\n{text}");
        // _netdev makes it a network filesystem: after the network is up.
        let deps = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        assert!(
            deps.iter()
                .any(|d| d == "remote-fs.target.requires" || d == "remote-fs.target.wants"),
            "{deps:?}"
        );
    }
    let automount = std::fs::read_to_string(out.join("mnt-extra.automount")).unwrap();
    assert!(automount.contains("Where=/mnt/extra"), "{automount}");
    let extra = std::fs::read_to_string(out.join("mnt-extra.mount")).unwrap();
    assert!(extra.contains("Type=mastofs"), "{extra}");
    assert!(extra.contains("network-online.target"), "{extra}");
    verify(
        &out,
        &[
            "mnt-mastodon.mount",
            "mnt-pgbackrest.mount",
            "mnt-backup.mount",
            "mnt-extra.mount",
            "mnt-extra.automount",
        ],
    );
}
