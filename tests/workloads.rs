//! The seed's real workloads through link cuts, with the real programs from Debian's
//! packages: Mastodon's media tree, a borg repository, a pgBackRest repository. Each runs
//! on its own mount of a local sshd with the seed's options, through the fault proxy, and
//! asserts the programs' exit status, the data end to end and the reconnects counted.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn ok(what: &str, out: &Output) -> String {
    let t = text(out);
    assert!(out.status.success(), "{what} failed ({}):\n{t}", out.status);
    t
}

/// A server, the fault proxy in front of it and a mount through the proxy, with a status
/// socket.
struct Rig {
    s: Server,
    p: Proxy,
    m: Mount,
    sock: PathBuf,
}

impl Rig {
    fn new(opts: &str) -> Rig {
        let s = Server::start();
        let p = Proxy::start(s.port);
        s.write_ssh_config_via(p.port, "  ServerAliveInterval 1\n  ServerAliveCountMax 3\n");
        let sock = s.dir.path().join("status.sock");
        let m = Mount::new(&s, &format!("{opts},status_socket={}", sock.display()));
        Rig { s, p, m, sock }
    }

    fn reconnects(&self) -> u64 {
        status_json(&self.sock)["reconnects"].as_u64().unwrap_or(0)
    }

    /// Cuts the link (RST) and waits until the mount has a working connection again.
    fn cut(&self) {
        let before = self.reconnects();
        self.p.cut();
        wait_until(Duration::from_secs(60), "a reconnect after the cut", || {
            self.reconnects() > before
        });
    }
}

const MEDIA_FILES: usize = 2000;

/// Mastodon's media: written and read at once by the mastodon user through the
/// `public/system` symlink while the link is cut three times, then the older half deleted
/// the way `tootctl media remove` does; another user's writes are refused.
#[test]
fn mastodon_media_through_cuts() {
    let rig = Rig::new("uid=mastodon,gid=mastodon,allow_other,default_permissions");
    let app = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        app.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let public = app.path().join("public");
    std::fs::create_dir(&public).unwrap();
    let system = public.join("system");
    std::os::unix::fs::symlink(rig.m.path(), &system).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/media.py");
    let mastodon = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=991",
            "--regid=991",
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(&script)
        .args(args);
        c
    };
    let sys = system.display().to_string();
    let n = MEDIA_FILES.to_string();
    let mut writer = mastodon(&["write", &sys, &n])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    let mut cuts = 0;
    let mut last = String::new();
    for line in lines {
        let line = line.unwrap();
        // Cut at a quarter, half and three quarters of the files written.
        if let Some(k) = line.strip_prefix("progress ") {
            let k: usize = k.parse().unwrap();
            if cuts < 3 && k >= (cuts + 1) * MEDIA_FILES / 4 {
                rig.cut();
                cuts += 1;
            }
        }
        last = line;
    }
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "writers/readers failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        rig.m.log()
    );
    assert_eq!(last, format!("wrote {MEDIA_FILES}"));
    assert_eq!(cuts, 3);
    // Every byte on the server, read there directly.
    let served = rig.s.served.display().to_string();
    ok(
        "verify on the server",
        &Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["verify", &served, &n])
            .output()
            .unwrap(),
    );
    // tootctl media remove: the older half, and the directories it emptied.
    ok("remove", &mastodon(&["remove", &sys, &n]).output().unwrap());
    ok(
        "what is left on the server",
        &Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["verify", &served, &n, &(MEDIA_FILES / 2).to_string()])
            .output()
            .unwrap(),
    );
    let empty_dirs = Command::new("find")
        .arg(rig.s.served.join("media_attachments"))
        .args(["-type", "d", "-empty"])
        .output()
        .unwrap();
    assert_eq!(
        text(&empty_dirs).trim(),
        "",
        "emptied directories left behind"
    );
    // Another user may read but not write.
    let other = Command::new("setpriv")
        .args(["--reuid=70", "--regid=70", "--clear-groups", "sh", "-c"])
        .arg(format!("echo x > '{sys}/media_attachments/intruder'"))
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        text(&other).contains("Permission denied"),
        "{}",
        text(&other)
    );
    assert!(rig.reconnects() >= 3, "{}", rig.reconnects());
}

/// Generates a tree for borg: files of several sizes, symlinks, hard links, odd names.
fn make_tree(dir: &Path, seed: u64, big_mib: usize) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    let mut k = seed << 32;
    let mut bytes = |n: usize| {
        k += 1;
        pattern(n, k)
    };
    for i in 0..200 {
        let sub = if i % 3 == 0 { "sub" } else { "sub/deeper" };
        std::fs::write(dir.join(format!("{sub}/f{seed}-{i}")), bytes(100 + i * 97)).unwrap();
    }
    for i in 0..3 {
        std::fs::write(dir.join(format!("big{seed}-{i}")), bytes(big_mib << 20)).unwrap();
    }
    std::os::unix::fs::symlink("sub/deeper", dir.join(format!("link{seed}"))).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", dir.join(format!("dangling{seed}"))).unwrap();
    std::fs::hard_link(
        dir.join(format!("sub/f{seed}-0")),
        dir.join(format!("hard{seed}")),
    )
    .unwrap();
    for name in [
        &b"with space"[..],
        b"caf\xc3\xa9",
        b"latin1-\xe9",
        b"-dash",
        b"new\nline",
    ] {
        let mut n = name.to_vec();
        n.extend_from_slice(format!("{seed}").as_bytes());
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(&n)), bytes(50)).unwrap();
    }
}

/// A borg repository as the seed keeps it: root:backup-sync, umask 0027; two backups, the
/// second cut twice, then the whole repository checked, extracted, pruned and compacted.
#[test]
fn borg_repository_through_cuts() {
    let rig = Rig::new("uid=0,gid=backup-sync,umask=0027,allow_other,default_permissions");
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    make_tree(&tree, 1, 8);
    let repo = rig.m.p("repo");
    let borg = |args: &[&str]| {
        let mut c = Command::new("borg");
        c.args(args)
            .env("BORG_PASSPHRASE", "correct horse")
            .env("BORG_BASE_DIR", work.path().join("borg-home"))
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
            .current_dir(work.path());
        c
    };
    let r = repo.display().to_string();
    ok(
        "borg init",
        &borg(&["init", "--umask", "0027", "-e", "repokey", &r])
            .output()
            .unwrap(),
    );
    ok(
        "borg create one",
        &borg(&["create", "--umask", "0027", &format!("{r}::one"), "tree"])
            .output()
            .unwrap(),
    );
    // New data for the second run, so that it has megabytes to send while cut.
    make_tree(&tree.join("more"), 2, 16);
    let before = rig.p.bytes_up();
    let second = borg(&["create", "--umask", "0027", &format!("{r}::two"), "tree"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for mib in [12u64, 30] {
        wait_until(
            Duration::from_secs(120),
            "the second backup to send data",
            || rig.p.bytes_up() > before + (mib << 20),
        );
        rig.cut();
    }
    let out = second.wait_with_output().unwrap();
    ok("borg create two (cut twice)", &out);
    ok(
        "borg check --verify-data",
        &borg(&["check", "--verify-data", &r]).output().unwrap(),
    );
    let restore = work.path().join("restore");
    std::fs::create_dir(&restore).unwrap();
    ok(
        "borg extract",
        &borg(&["extract", &format!("{r}::two")])
            .current_dir(&restore)
            .output()
            .unwrap(),
    );
    ok(
        "diff -r",
        &Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&tree)
            .arg(restore.join("tree"))
            .output()
            .unwrap(),
    );
    ok(
        "borg prune",
        &borg(&["prune", "--keep-last", "1", &r]).output().unwrap(),
    );
    ok("borg compact", &borg(&["compact", &r]).output().unwrap());
    let list = ok(
        "borg list",
        &borg(&["list", "--short", &r]).output().unwrap(),
    );
    assert_eq!(list.trim(), "two");
    // The server's files have the modes borg's umask 0027 gives.
    let loose = Command::new("find")
        .arg(rig.s.served.join("repo"))
        .args(["-perm", "/0027"])
        .output()
        .unwrap();
    assert_eq!(
        text(&loose).trim(),
        "",
        "files open to group writes or others"
    );
    assert!(rig.reconnects() >= 2, "{}", rig.reconnects());
}

/// The uid the pgBackRest repository belongs to (postgres in the container image).
const PG_UID: u32 = 70;
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway PostgreSQL cluster run by uid 70, with pgBackRest's repository on a mount.
struct Pg {
    work: tempfile::TempDir,
    conf: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Pg {
    /// Runs `cmd` as uid 70 in the work directory.
    fn run(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args([
                &format!("--reuid={PG_UID}"),
                &format!("--regid={PG_UID}"),
                "--clear-groups",
                "env",
                "-i",
                "PATH=/usr/bin:/bin",
            ])
            .arg(format!("HOME={}", self.work.path().display()))
            .arg(cmd)
            .args(args)
            .current_dir(self.work.path())
            .output()
            .unwrap()
    }

    /// pgbench against the cluster, with `args` after the connection options.
    fn pgbench(&self, args: &[&str]) -> Output {
        let (dir, port) = (
            self.work.path().display().to_string(),
            self.port.to_string(),
        );
        let mut all = vec!["-h", &dir, "-p", &port, "-U", "postgres"];
        all.extend_from_slice(args);
        all.push("postgres");
        self.run(&format!("{PG_BIN}/pgbench"), &all)
    }

    fn pgbackrest(&self, args: &[&str]) -> Output {
        let conf = format!("--config={}", self.conf.display());
        let mut all = vec![conf.as_str(), "--stanza=main"];
        all.extend_from_slice(args);
        self.run("pgbackrest", &all)
    }

    /// One value from SQL on the cluster on `port`.
    fn sql_on(&self, port: u16, q: &str) -> String {
        let out = self.run(
            &format!("{PG_BIN}/psql"),
            &[
                "-h",
                &self.work.path().display().to_string(),
                "-p",
                &port.to_string(),
                "-d",
                "postgres",
                "-U",
                "postgres",
                "-Atc",
                q,
            ],
        );
        ok(q, &out).trim().to_string()
    }

    fn sql(&self, q: &str) -> String {
        self.sql_on(self.port, q)
    }

    fn archived(&self) -> u64 {
        self.sql("select archived_count from pg_stat_archiver")
            .parse()
            .unwrap_or(0)
    }

    /// Whether an archive-push of this cluster is running.
    fn pushing(&self) -> bool {
        let conf = self.conf.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("archive-push") && c.contains(&conf)
                })
            })
    }

    /// Ends the current WAL segment and waits until it is archived.
    fn switch_and_wait(&self) {
        // pg_walfile_name of the switch's end names the segment just ended.
        let ended = self.sql("select pg_walfile_name(pg_switch_wal())");
        wait_until(
            Duration::from_secs(600),
            "the last segment archived",
            || self.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver") >= ended,
        );
    }

    fn stop(&self, data: &Path) {
        let _ = self.run(
            &format!("{PG_BIN}/pg_ctl"),
            &["-D", &data.display().to_string(), "-m", "immediate", "stop"],
        );
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop(&self.data);
        self.stop(&self.work.path().join("restored"));
    }
}

/// A cluster run by uid 70 archiving to a pgBackRest repository at `repo`, started, its
/// stanza created and checked.
fn pg_cluster(repo: &Path) -> Pg {
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(work.path(), Some(PG_UID), Some(PG_UID)).unwrap();
    let data = work.path().join("data");
    let port = free_port();
    let conf = work.path().join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={repo}\nlog-path={w}/log\nlock-path={w}/lock\nspool-path={w}/spool\n\
             log-level-console=warn\nlog-level-file=detail\nstart-fast=y\narchive-timeout=600\n\
             io-timeout=600\ndb-timeout=600\n\n[main]\npg1-path={data}\npg1-port={port}\n\
             pg1-socket-path={w}\npg1-user=postgres\n",
            repo = repo.display(),
            w = work.path().display(),
            data = data.display(),
        ),
    )
    .unwrap();
    for d in ["log", "lock", "spool"] {
        let d = work.path().join(d);
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(PG_UID), Some(PG_UID)).unwrap();
    }
    let pg = Pg {
        work,
        conf,
        data: data.clone(),
        port,
    };
    let w = pg.work.path().display().to_string();
    ok(
        "initdb",
        &pg.run(
            &format!("{PG_BIN}/initdb"),
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
            ],
        ),
    );
    std::fs::write(
        data.join("postgresql.auto.conf"),
        format!(
            "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{w}'\n\
             wal_level = replica\narchive_mode = on\nmax_wal_size = '1GB'\n\
             archive_command = 'pgbackrest --config={} --stanza=main archive-push %p'\n",
            pg.conf.display()
        ),
    )
    .unwrap();
    ok(
        "pg_ctl start",
        &pg.run(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &format!("{w}/pg.log"),
                "-w",
                "start",
            ],
        ),
    );
    ok("stanza-create", &pg.pgbackrest(&["stanza-create"]));
    ok("check", &pg.pgbackrest(&["check"]));
    pg
}

/// pgBackRest with its repository on a `uid=70,gid=70` mount: WAL archived under load
/// while the link is cut three times and blackholed for 20 s, a full and an incremental
/// backup (cut in the middle), check, verify, and a restore that has every row.
#[test]
fn pgbackrest_repository_through_cuts() {
    let rig = Rig::new("uid=70,gid=70,allow_other,default_permissions,timeout=600");
    let pg = pg_cluster(&rig.m.p("pgbackrest"));
    let w = pg.work.path().display().to_string();
    ok("pgbench -i", &pg.pgbench(&["-i", "-s", "5"]));
    pg.sql("create table t (id int, pad text)");
    // Load: pgbench rounds, each ending in a WAL switch; the link is cut when 3, 6 and 9
    // segments more are archived, and blackholed for 20 s at 12.
    let start = pg.archived();
    let mut disrupted = 0;
    // How long each segment took from the switch to archived, with and without a
    // disruption in that round (for the notes: `--nocapture`).
    let (mut calm, mut rough) = (Vec::new(), Vec::new());
    for round in 0..24 {
        ok("pgbench", &pg.pgbench(&["-c", "4", "-t", "200"]));
        pg.sql(&format!(
            "insert into t select g, repeat('x', 200) from generate_series({}, {}) g",
            round * 20000,
            round * 20000 + 19999
        ));
        let done = pg.archived() - start;
        let t0 = std::time::Instant::now();
        let disrupt = if disrupted < 3 && done >= 3 * (disrupted + 1) {
            // Cut while that segment is on its way: once its archive-push runs (or, if it
            // was quicker than the look, once it is done).
            let before = pg.archived();
            std::thread::scope(|sc| {
                sc.spawn(|| pg.switch_and_wait());
                wait_until(Duration::from_secs(60), "the archive-push to start", || {
                    pg.pushing() || pg.archived() > before
                });
                rig.p.cut();
            });
            true
        } else if disrupted == 3 && done >= 12 {
            rig.p.set_mode(Mode::Blackhole);
            std::thread::scope(|sc| {
                sc.spawn(|| pg.switch_and_wait());
                std::thread::sleep(Duration::from_secs(20));
                rig.p.set_mode(Mode::Pass);
            });
            true
        } else {
            pg.switch_and_wait();
            false
        };
        let took = t0.elapsed().as_millis();
        if disrupt {
            disrupted += 1;
            rough.push(took);
        } else {
            calm.push(took);
        }
    }
    calm.sort_unstable();
    eprintln!(
        "archive latency: undisturbed median {} ms (max {:?}), disturbed rounds {rough:?} ms",
        calm.get(calm.len() / 2).copied().unwrap_or(0),
        calm.last()
    );
    pg.switch_and_wait();
    assert!(
        pg.archived() - start >= 24,
        "{} segments",
        pg.archived() - start
    );
    assert_eq!(disrupted, 4, "not every disruption happened");
    assert_eq!(
        pg.sql("select failed_count from pg_stat_archiver"),
        "0",
        "an archive-push failed: {}",
        std::fs::read_to_string(format!("{w}/pg.log")).unwrap_or_default()
    );
    ok("backup full", &pg.pgbackrest(&["--type=full", "backup"]));
    pg.sql("insert into t select g, 'after full' from generate_series(1, 50000) g");
    // The incremental backup, cut once it has sent a few MiB.
    let before = rig.p.bytes_up();
    let conf_arg = format!("--config={}", pg.conf.display());
    let mut incr = Command::new("setpriv")
        .args([
            &format!("--reuid={PG_UID}"),
            &format!("--regid={PG_UID}"),
            "--clear-groups",
        ])
        .args([
            "pgbackrest",
            &conf_arg,
            "--stanza=main",
            "--type=incr",
            "backup",
        ])
        .current_dir(pg.work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "the incremental backup to send data",
        || rig.p.bytes_up() > before + (2 << 20) || matches!(incr.try_wait(), Ok(Some(_))),
    );
    assert!(
        matches!(incr.try_wait(), Ok(None)),
        "the incremental backup ended before the cut"
    );
    rig.cut();
    ok("backup incr (cut)", &incr.wait_with_output().unwrap());
    ok("check", &pg.pgbackrest(&["check"]));
    ok("verify", &pg.pgbackrest(&["verify"]));
    let info = ok("info", &pg.pgbackrest(&["info"]));
    assert!(
        info.contains("full backup") && info.contains("incr backup"),
        "{info}"
    );
    // What the restore must have.
    let facts = "select (select count(*) from t), (select sum(id) from t), \
                 (select count(*) from pgbench_history), (select sum(abalance) from pgbench_accounts)";
    let want = pg.sql(facts);
    pg.switch_and_wait();
    let restored = pg.work.path().join("restored");
    ok(
        "restore",
        &pg.pgbackrest(&[&format!("--pg1-path={}", restored.display()), "restore"]),
    );
    let port2 = free_port();
    std::fs::write(
        restored.join("postgresql.auto.conf"),
        format!(
            "{}port = {port2}\narchive_mode = off\n",
            std::fs::read_to_string(restored.join("postgresql.auto.conf")).unwrap_or_default()
        ),
    )
    .unwrap();
    ok(
        "start the restored cluster",
        &pg.run(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                &restored.display().to_string(),
                "-l",
                &format!("{w}/restored.log"),
                "-w",
                "-t",
                "300",
                "start",
            ],
        ),
    );
    wait_until(Duration::from_secs(300), "recovery to end", || {
        pg.sql_on(port2, "select pg_is_in_recovery()") == "f"
    });
    assert_eq!(
        pg.sql_on(port2, facts),
        want,
        "the restored cluster differs"
    );
    assert!(rig.reconnects() >= 4, "{}", rig.reconnects());
}

/// pgBackRest on a write-back mount (`cache_writeback=on`, `fsync=remote`) through an
/// outage longer than `timeout=`: archive-push waits and fails as without write-back, and
/// no segment is ever reported archived that is not on the box; once the link returns,
/// archiving catches up.
#[test]
fn pgbackrest_on_a_writeback_mount_archives_nothing_the_box_does_not_have() {
    let cache = tempfile::tempdir().unwrap();
    let rig = Rig::new(&format!(
        "uid=70,gid=70,allow_other,default_permissions,timeout=10,cache={},cache_writeback=on",
        cache.path().join("c").display()
    ));
    let pg = pg_cluster(&rig.m.p("pgbackrest"));
    let box_archive = rig.s.served.join("pgbackrest/archive");
    let tree = || {
        Command::new("find")
            .arg(&box_archive)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    // Whether the box holds segment `wal` (pgBackRest names it WAL-SHA1[.gz]).
    let on_box = |wal: &str| {
        wal.is_empty()
            || tree().lines().any(|l| {
                let name = l.rsplit('/').next().unwrap_or("");
                name.starts_with(&format!("{wal}-")) && !name.ends_with(".tmp")
            })
    };
    pg.sql("create table t (id int, pad text)");
    pg.switch_and_wait();
    let last = || pg.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
    assert!(on_box(&last()), "{} not in {}", last(), tree());
    let failed = || -> u64 {
        pg.sql("select failed_count from pg_stat_archiver")
            .parse()
            .unwrap_or(0)
    };
    let failed_before = failed();

    rig.p.set_mode(Mode::Blackhole);
    wait_until(Duration::from_secs(30), "the mount sees the outage", || {
        status_json(&rig.sock)["state"] != "connected"
    });
    pg.sql("insert into t select g, repeat('x', 200) from generate_series(1, 20000) g");
    let ended = pg.sql("select pg_walfile_name(pg_switch_wal())");
    // Longer than timeout=10: every archive-push in it waits, then fails.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(40) {
        let l = last();
        assert!(on_box(&l), "{l} reported archived, not on the box");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(last() < ended, "archived during the outage");
    assert!(
        failed() > failed_before,
        "archive-push did not fail during the outage"
    );

    rig.p.set_mode(Mode::Pass);
    wait_until(Duration::from_secs(600), "the segment archived", || {
        last() >= ended
    });
    let l = last();
    assert!(on_box(&l), "{l} reported archived, not on the box");
    ok("check", &pg.pgbackrest(&["check"]));
}
