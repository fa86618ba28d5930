//! Other SFTP servers than OpenSSH: ProFTPD's mod_sftp, which splices the packets of
//! several SFTP sessions sharing a connection. Parallel writes of many files must arrive
//! byte for byte, with one session per connection there and several on OpenSSH.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

/// Source files: `n` of 1–3 MiB and four of `big_mib` MiB, with content that differs per
/// file and position (a splice or a shift shows up).
fn make_sources(dir: &Path, n: usize, big_mib: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut fill = |len: usize| {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.extend_from_slice(&seed.to_le_bytes());
        }
        v.truncate(len);
        v
    };
    for i in 0..n {
        let len = (1 << 20) + (i * 7919 * 263) % (2 << 20);
        let p = dir.join(format!("f{i:03}"));
        std::fs::write(&p, fill(len)).unwrap();
        out.push(p);
    }
    for i in 0..4 {
        let p = dir.join(format!("big{i}"));
        std::fs::write(&p, fill(big_mib << 20)).unwrap();
        out.push(p);
    }
    out
}

/// Copies every source into `to` from 16 threads at once; returns the names whose copy
/// reported an error (write or close).
fn copy_parallel(sources: &[PathBuf], to: &Path) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..16 {
            let (next, failed) = (next.clone(), failed.clone());
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(src) = sources.get(i) else { break };
                let name = src.file_name().unwrap().to_string_lossy().into_owned();
                let r = std::fs::read(src).and_then(|d| {
                    use std::io::Write;
                    let mut f = std::fs::File::create(to.join(&name))?;
                    f.write_all(&d)?;
                    // close(2) reports what write-behind could not deliver.
                    f.sync_all()
                });
                if let Err(e) = r {
                    failed.lock().unwrap().push(format!("{name}: {e}"));
                }
            });
        }
    });
    let v = failed.lock().unwrap().clone();
    v
}

/// Names whose copy on the server differs from the source.
fn differing(sources: &[PathBuf], served: &Path) -> Vec<String> {
    sources
        .iter()
        .filter_map(|src| {
            let name = src.file_name()?.to_string_lossy().into_owned();
            let ok = std::fs::read(served.join(&name)).ok()? == std::fs::read(src).ok()?;
            (!ok).then_some(name)
        })
        .collect()
}

/// Several rounds of parallel copies with `opts`; asserts every byte and no reconnect.
/// Returns the status JSON at the end.
fn rounds(s: &Server, opts: &str, sources: &[PathBuf], rounds: usize) -> serde_json::Value {
    static MOUNTS: AtomicUsize = AtomicUsize::new(0);
    let n = MOUNTS.fetch_add(1, Ordering::Relaxed);
    let sock = s.dir.path().join(format!("st-{n}.sock"));
    let m = Mount::new(s, &format!("status_socket={},{opts}", sock.display()));
    for round in 0..rounds {
        let failed = copy_parallel(sources, m.path());
        assert!(failed.is_empty(), "round {round} with {opts}: {failed:?}");
        let bad = differing(sources, &s.served);
        assert!(
            bad.is_empty(),
            "round {round} with {opts}: on the server these differ from the source: {bad:?}"
        );
    }
    let st = status_json(&sock);
    assert_eq!(st["reconnects"], 0, "{opts}: {st}\n{}", m.log());
    st
}

#[test]
fn proftpd_gets_every_byte_with_one_session_per_connection() {
    let s = Server::proftpd();
    let src = tempfile::tempdir().unwrap();
    let sources = make_sources(src.path(), 200, 8);
    for opts in ["max_conns=1", "max_conns=4"] {
        let st = rounds(&s, opts, &sources, 3);
        assert_eq!(st["sftp_sessions_per_connection"], 1, "{st}");
        assert!(
            st["server"].as_str().unwrap_or("").contains("mod_sftp"),
            "{st}"
        );
        assert!(
            st["sftp_sessions_reason"]
                .as_str()
                .unwrap_or("")
                .contains("not known"),
            "{st}"
        );
    }
    let log = s.log();
    for bad in ["Invalid handle", "signal 11", "egmentation"] {
        assert!(!log.contains(bad), "ProFTPD logged '{bad}'");
    }
}

#[test]
fn openssh_keeps_several_sessions_per_connection() {
    let s = Server::start();
    let src = tempfile::tempdir().unwrap();
    let sources = make_sources(src.path(), 40, 8);
    let st = rounds(&s, "max_conns=1", &sources, 2);
    assert_eq!(st["sftp_sessions_per_connection"], 4, "{st}");
    assert!(
        st["server"].as_str().unwrap_or("").contains("OpenSSH"),
        "{st}"
    );
    // The option overrides the rule.
    let st = rounds(&s, "sftp_sessions=1", &sources, 1);
    assert_eq!(st["sftp_sessions_per_connection"], 1, "{st}");
}

/// gesftpserver (as sshd's sftp subsystem) reads SSH_FXP_SYMLINK in the draft's order and
/// says so in VERSION; its handles are 8 raw bytes. A symlink made through the mount is the
/// link asked for, and many files open at once work.
#[test]
fn gesftpserver_symlinks_and_binary_handles() {
    let s = Server::gesftpserver();
    let m = Mount::new(&s, "");
    std::os::unix::fs::symlink("the-target", m.p("link")).unwrap();
    assert_eq!(
        std::fs::read_link(s.served.join("link")).unwrap(),
        Path::new("the-target"),
        "on the server"
    );
    assert_eq!(
        std::fs::read_link(m.p("link")).unwrap(),
        Path::new("the-target")
    );
    // Past 128 open handles a text-decoding client broke on these handles.
    let files: Vec<std::fs::File> = (0..300)
        .map(|i| {
            let p = m.p(&format!("h{i}"));
            std::fs::write(&p, format!("{i}")).unwrap();
            std::fs::File::open(p).unwrap()
        })
        .collect();
    for (i, mut f) in files.into_iter().enumerate() {
        let mut got = String::new();
        std::io::Read::read_to_string(&mut f, &mut got).unwrap();
        let on_server = std::fs::read_to_string(s.served.join(format!("h{i}"))).unwrap_or_default();
        assert_eq!(got, i.to_string(), "server has {on_server:?}\n{}", m.log());
    }
}

/// ProFTPD answers READ with EOF at the size the file had when the handle was opened, even
/// after the file grew. A reader holding the file open must still see what another
/// descriptor appended, and a file extended by truncate reads as zeros.
#[test]
fn proftpd_reader_follows_a_file_that_grew_after_it_opened() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let s = Server::proftpd();
    let m = Mount::new(&s, "");
    std::fs::write(m.p("grow"), b"first").unwrap();
    let mut r = std::fs::File::open(m.p("grow")).unwrap();
    let tail: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("grow"))
        .unwrap();
    w.write_all(&tail).unwrap();
    w.sync_all().unwrap();
    drop(w);
    // The kernel must ask the server, not its page cache.
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    r.seek(SeekFrom::Start(65_536)).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 5 + tail.len() - 65_536, "{}", m.log());
    assert!(got[..] == tail[65_536 - 5..]);
    // Extended by truncate while open for reading elsewhere: zeros.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("grow"))
        .unwrap();
    f.set_len(300_000).unwrap();
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    let mut end = vec![1u8; 10];
    r.seek(SeekFrom::Start(299_990)).unwrap();
    r.read_exact(&mut end).unwrap();
    assert_eq!(end, vec![0u8; 10]);
}
