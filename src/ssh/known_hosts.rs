//! known_hosts verification with OpenSSH's rules.
//!
//! Owns parsing known_hosts files (hashed names, `[host]:port`, `*`/`?` patterns,
//! `!negation`, `@revoked`, `@cert-authority`) and deciding whether a server key is known,
//! unknown, changed or revoked. It must never decide to trust a key by itself: the caller
//! turns [`Verdict`] into accept or refuse.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::PublicKey;

/// What the known_hosts files say about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line for this host lists exactly this key.
    Known,
    /// No line for this host lists a key of this type.
    Unknown,
    /// A line for this host lists another key of the same type.
    Changed { file: PathBuf, line: usize },
    /// The key is marked `@revoked`.
    Revoked { file: PathBuf, line: usize },
}

/// The name known_hosts uses for `host` on `port`.
pub fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Glob match with `*` and `?`, case-insensitive, as OpenSSH's match_pattern.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    match (pattern.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], s) || (!s.is_empty() && glob(pattern, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &s[1..]),
        (Some(p), Some(c)) if p.eq_ignore_ascii_case(c) => glob(&pattern[1..], &s[1..]),
        _ => false,
    }
}

/// `|1|salt|hash`: HMAC-SHA1 of the name keyed with the salt.
fn hashed_match(entry: &str, name: &str) -> bool {
    let Some(rest) = entry.strip_prefix("|1|") else {
        return false;
    };
    let Some((salt, hash)) = rest.split_once('|') else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// Whether a comma-separated host pattern list matches `name`: some positive pattern
/// matches and no negated one does.
fn hosts_match(patterns: &str, name: &str) -> bool {
    if patterns.starts_with("|1|") {
        return hashed_match(patterns, name);
    }
    let mut matched = false;
    for p in patterns.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), name.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// One key line of a known_hosts file.
struct Entry<'a> {
    file: &'a PathBuf,
    line: usize,
    /// `@revoked`, `@cert-authority`, or None.
    marker: Option<&'a str>,
    hosts: &'a str,
    key: PublicKey,
}

/// Every parsable key line of `text` (from `file`), in order.
fn entries<'a>(file: &'a PathBuf, text: &'a str) -> impl Iterator<Item = Entry<'a>> {
    text.lines().enumerate().filter_map(move |(i, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next()?;
        let marker = if first.starts_with('@') {
            let m = first;
            first = fields.next()?;
            Some(m)
        } else {
            None
        };
        let (_kind, blob) = (fields.next()?, fields.next()?);
        let key = russh::keys::parse_public_key_base64(blob).ok()?;
        Some(Entry {
            file,
            line: i + 1,
            marker,
            hosts: first,
            key,
        })
    })
}

/// Checks `key` for `host`:`port` against every file, in order. A revocation anywhere wins;
/// then a matching key; then a differing key of the same type.
pub fn check(files: &[PathBuf], host: &str, port: u16, key: &PublicKey) -> Verdict {
    let name = host_entry_name(host, port);
    let mut known = false;
    let mut changed = None;
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for e in entries(file, &text) {
            let same_key = e.key.key_data() == key.key_data();
            match e.marker {
                Some("@revoked") => {
                    if same_key {
                        return Verdict::Revoked {
                            file: file.clone(),
                            line: e.line,
                        };
                    }
                }
                // Host certificates are not accepted; such lines vouch for nothing here.
                Some(_) => {}
                None => {
                    if !hosts_match(e.hosts, &name) {
                        continue;
                    }
                    if same_key {
                        known = true;
                    } else if e.key.algorithm() == key.algorithm() && changed.is_none() {
                        changed = Some((e.file.clone(), e.line));
                    }
                }
            }
        }
    }
    match (known, changed) {
        (true, _) => Verdict::Known,
        (false, Some((file, line))) => Verdict::Changed { file, line },
        (false, None) => Verdict::Unknown,
    }
}

/// The key types (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ...) known for
/// `host`:`port`, so that key exchange can ask for a host key that can be verified (as
/// OpenSSH's client orders its HostKeyAlgorithms).
pub fn known_key_types(files: &[PathBuf], host: &str, port: u16) -> Vec<russh::keys::Algorithm> {
    let name = host_entry_name(host, port);
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for e in entries(file, &text) {
            let kind = e.key.algorithm();
            if e.marker.is_none() && hosts_match(e.hosts, &name) && !out.contains(&kind) {
                out.push(kind);
            }
        }
    }
    out
}

/// Appends `key` for `host`:`port` to `file` (StrictHostKeyChecking=accept-new).
pub fn append(file: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let openssh = key.to_openssh().map_err(std::io::Error::other)?;
    // Drop the comment: known_hosts lines are "name type base64".
    let mut parts = openssh.split_whitespace();
    let (kind, blob) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut f = OpenOptions::new().create(true).append(true).open(file)?;
    writeln!(f, "{} {} {}", host_entry_name(host, port), kind, blob)
}

/// `SHA256:...` as ssh prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIFqLue2st0YhKsBs59WOc+MTec0b1jZkXiWZPgtrvMwX";
    const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIADHAExarj1LInzbRJdPE/6/CR2rEeLEv0EQM2STqvbo";

    fn key(b: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b).unwrap()
    }

    fn file(text: &str) -> (PathBuf, impl Drop) {
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "mastofs-kh-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&p, text).unwrap();
        (p.clone(), Rm(p))
    }

    #[test]
    fn glob_patterns() {
        assert!(glob(b"*.example.com", b"box.EXAMPLE.com"));
        assert!(glob(b"b?x", b"box"));
        assert!(!glob(b"b?x", b"bx"));
        assert!(hosts_match(
            "a,*.example.com,!bad.example.com",
            "ok.example.com"
        ));
        assert!(!hosts_match(
            "a,*.example.com,!bad.example.com",
            "bad.example.com"
        ));
    }

    #[test]
    fn port_form_and_verdicts() {
        let (p, _g) = file(&format!(
            "[box]:23 ssh-ed25519 {ED1}\nbox ssh-ed25519 {ED2}\n"
        ));
        let files = vec![p.clone()];
        assert_eq!(check(&files, "box", 23, &key(ED1)), Verdict::Known);
        assert_eq!(
            check(&files, "box", 23, &key(ED2)),
            Verdict::Changed {
                file: p.clone(),
                line: 1
            }
        );
        assert_eq!(check(&files, "box", 22, &key(ED2)), Verdict::Known);
        assert_eq!(check(&files, "other", 22, &key(ED2)), Verdict::Unknown);
    }

    #[test]
    fn revoked_wins() {
        let (p, _g) = file(&format!(
            "box ssh-ed25519 {ED1}\n@revoked * ssh-ed25519 {ED1}\n"
        ));
        assert!(matches!(
            check(&[p], "box", 22, &key(ED1)),
            Verdict::Revoked { line: 2, .. }
        ));
    }

    #[test]
    fn hashed_names() {
        // Produced with: ssh-keygen -H on "[127.0.0.1]:2222 ssh-ed25519 ED1".
        let salt = base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdefghij");
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"0123456789abcdefghij").unwrap();
        mac.update(b"[127.0.0.1]:2222");
        let hash = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let (p, _g) = file(&format!("|1|{salt}|{hash} ssh-ed25519 {ED1}\n"));
        assert_eq!(
            check(std::slice::from_ref(&p), "127.0.0.1", 2222, &key(ED1)),
            Verdict::Known
        );
        assert_eq!(check(&[p], "127.0.0.1", 2223, &key(ED1)), Verdict::Unknown);
    }

    #[test]
    fn known_key_types_of_one_host_in_order() {
        const EC: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOSGoNuR0H6cPVdrgPEx+rt6Qec+xg8pLIBRWsqpixA16lp1Kfn31tMrM4pbTqDs0bfz9G2zkU7tQZrJ+azGnqI=";
        let (p, _g) = file(&format!(
            "other ssh-ed25519 {ED1}\n[box]:23 ecdsa-sha2-nistp256 {EC}\n\
             @revoked [box]:23 ssh-ed25519 {ED2}\n[box]:23 ssh-ed25519 {ED1}\n"
        ));
        let kinds = known_key_types(&[p], "box", 23);
        let names: Vec<&str> = kinds.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["ecdsa-sha2-nistp256", "ssh-ed25519"]);
    }

    #[test]
    fn append_then_known() {
        let (p, _g) = file("");
        append(&p, "box", 23, &key(ED1)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("[box]:23 ssh-ed25519 "), "{text}");
        assert_eq!(check(&[p], "box", 23, &key(ED1)), Verdict::Known);
    }

    /// Our matching agrees with `ssh-keygen -F` on plain, port, pattern and hashed lines.
    #[test]
    fn agrees_with_ssh_keygen() {
        let text = format!(
            "box ssh-ed25519 {ED1}\n[box]:23 ssh-ed25519 {ED1}\n*.example.com,!bad.example.com ssh-ed25519 {ED1}\n\
             h?st ssh-ed25519 {ED1}\n[10.0.0.1]:2222 ssh-ed25519 {ED1}\n"
        );
        let (plain, _g1) = file(&text);
        let (hashed, _g2) = file(&text);
        let st = std::process::Command::new("ssh-keygen")
            .arg("-q")
            .arg("-H")
            .arg("-f")
            .arg(&hashed)
            .output();
        let Ok(st) = st else {
            panic!("ssh-keygen is needed for this test")
        };
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let _ = std::fs::remove_file(hashed.with_extension("old"));
        // ssh-keygen -F does not expand wildcard patterns (ssh does): compare on literal and
        // hashed names here, and check patterns against ssh's rules below.
        let cases = [
            ("box", 22),
            ("box", 23),
            ("box", 24),
            ("10.0.0.1", 2222),
            ("10.0.0.1", 22),
            ("BOX", 22),
        ];
        for f in [&plain, &hashed] {
            for (host, port) in cases {
                let name = host_entry_name(host, port);
                let ours = check(std::slice::from_ref(f), host, port, &key(ED1)) == Verdict::Known;
                let theirs = std::process::Command::new("ssh-keygen")
                    .arg("-F")
                    .arg(&name)
                    .arg("-f")
                    .arg(f)
                    .output()
                    .map(|o| o.status.success() && !o.stdout.is_empty())
                    .unwrap_or(false);
                assert_eq!(ours, theirs, "{name} in {}", f.display());
            }
        }
        // Patterns, as ssh applies them.
        let p = std::slice::from_ref(&plain);
        assert_eq!(check(p, "a.example.com", 22, &key(ED1)), Verdict::Known);
        assert_eq!(check(p, "bad.example.com", 22, &key(ED1)), Verdict::Unknown);
        assert_eq!(check(p, "host", 22, &key(ED1)), Verdict::Known);
        assert_eq!(check(p, "hoost", 22, &key(ED1)), Verdict::Unknown);
    }
}
