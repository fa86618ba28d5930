//! Symlinks on servers that resolve them: ProFTPD's LSTAT follows a link to an existing
//! target, its READLINK answers the resolved path and its RENAME moves the link's target
//! instead of the link.
//!
//! Owns the answers as OpenSSH gives them on such servers: LSTAT paired with READLINK in
//! the same round trip, the text of links this mount made (checked against the server's
//! resolved answer before use), and renames that involve a link done as remove, symlink
//! and remove. Every behaviour is switched on by the connection's [`ServerTraits`] only; on
//! other servers nothing here runs. It must never choose connections or retry.
//!
//! [`ServerTraits`]: crate::meta::ServerTraits

use super::remote::{Attrs, Bytes, Kind, RenameMode};
use super::supervisor::Link;
use super::Session;
use crate::name_bytes::{decode, encode as w};
use crate::sftp::wire::status;
use crate::sftp::SftpError;

/// Symlink texts remembered for servers whose READLINK resolves links.
pub(super) const LINK_TEXTS: usize = 4096;

impl Link {
    /// LSTAT of `path` as OpenSSH answers it, on any server: where the server's LSTAT
    /// follows links, a READLINK sent with it (same round trip) tells whether `path` is a
    /// link, and a link is answered as one (mode 0777, size of its text as read).
    pub async fn lstat(&self, path: &[u8]) -> Result<Attrs, SftpError> {
        self.lstat_and_text(path).await.map(|(a, _)| a)
    }

    /// [`Link::lstat`], with the server's READLINK answer where it was asked for.
    async fn lstat_and_text(&self, path: &[u8]) -> Result<(Attrs, Option<Bytes>), SftpError> {
        if !self.traits.lstat_follows_links {
            return self.sftp.lstat(path).await.map(|a| (a, None));
        }
        let (attrs, text) = tokio::join!(self.sftp.lstat(path), self.sftp.readlink(path));
        match (attrs, text) {
            (Err(e), _) | (_, Err(e)) if e.is_transport() => Err(e),
            // Owner and times are the target's where it exists (the server shows no other).
            (attrs, Ok(text)) => Ok((
                Attrs {
                    size: Some(text.len() as u64),
                    mode: Some(libc::S_IFLNK | 0o777),
                    ..attrs.unwrap_or_default()
                },
                Some(text),
            )),
            (attrs, Err(_)) => attrs.map(|a| (a, None)),
        }
    }
}

impl Session {
    /// Remembers the text of a link this mount made at `link`.
    pub(super) fn remember_link(&self, link: &str, text: &str) {
        if let Ok(mut t) = self.link_texts.lock() {
            t.put(link.to_string(), text.to_string());
        }
    }

    /// The text to show for the link at `path`, given the server's READLINK `answer`. On a
    /// server that resolves links, that is the remembered text where it still names what
    /// the server answered; otherwise the answer made absolute (such a server answers a
    /// dangling link's path relative to the login directory).
    pub(super) fn link_text(&self, l: &Link, path: &str, answer: String) -> String {
        if !l.traits.readlink_resolves {
            return answer;
        }
        let answer = if answer.starts_with('/') || l.traits.home.is_empty() {
            answer
        } else {
            format!("{}/{answer}", l.traits.home.trim_end_matches('/'))
        };
        let known = self
            .link_texts
            .lock()
            .ok()
            .and_then(|mut t| t.get(path).cloned());
        match known {
            Some(text) if resolves_to(path, &text, &answer) => text,
            _ => answer,
        }
    }

    /// A rename on a server whose RENAME follows links, when `from` or `to` is a link:
    /// done here as remove-and-symlink (not atomic, but the links' targets stay where they
    /// are). None when neither is a link (a plain RENAME is right).
    pub(super) async fn rename_around_links(
        &self,
        l: &Link,
        from: &str,
        to: &str,
        mode: RenameMode,
    ) -> Option<Result<(), SftpError>> {
        let (wfrom, wto) = (w(from), w(to));
        let (src, dst) = tokio::join!(l.lstat_and_text(&wfrom), l.lstat(&wto));
        let src_link = matches!(&src, Ok((a, _)) if a.kind() == Kind::Symlink);
        let dst_link = matches!(&dst, Ok(a) if a.kind() == Kind::Symlink);
        if !src_link && !dst_link {
            return None;
        }
        Some(
            async {
                let (_, text) = src?;
                if let Ok(d) = &dst {
                    if mode == RenameMode::NoReplace {
                        return Err(failure("File already exists"));
                    }
                    if src_link && d.kind() == Kind::Dir {
                        return Err(failure("Is a directory"));
                    }
                }
                if !src_link {
                    // A file or directory over a link: the link goes first.
                    l.sftp.remove(w(to)).await?;
                    return l.sftp.rename(w(from), w(to)).await;
                }
                // The READLINK that went with the LSTAT, where it did.
                let answer = match text {
                    Some(t) => t,
                    None => l.sftp.readlink(w(from)).await?,
                };
                let text = self.link_text(l, from, decode(&answer));
                if dst.is_ok() {
                    l.sftp.remove(w(to)).await?;
                }
                l.sftp.symlink(w(&text), w(to)).await?;
                self.remember_link(to, &text);
                l.sftp.remove(w(from)).await
            }
            .await,
        )
    }
}

/// A FAILURE status whose text names the errno (see `sftp::error`).
fn failure(message: &str) -> SftpError {
    SftpError::Status {
        code: status::FAILURE,
        message: message.into(),
    }
}

/// Whether link `text` of the link at `link` names `resolved` (an absolute path), by
/// path arithmetic alone (a directory on the way that is itself a link makes it false).
fn resolves_to(link: &str, text: &str, resolved: &str) -> bool {
    let mut parts: Vec<&str> = Vec::new();
    let dir = link.rsplit_once('/').map_or("", |(d, _)| d);
    let start = if text.starts_with('/') { "" } else { dir };
    for c in start.split('/').chain(text.split('/')) {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let want: Vec<&str> = resolved
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    parts == want
}

#[cfg(test)]
mod tests {
    use super::resolves_to;

    #[test]
    fn link_text_checked_against_the_resolved_answer() {
        assert!(resolves_to("/r/b/st/latest", "2026-F", "/r/b/st/2026-F"));
        assert!(resolves_to("/r/a/l", "../c/./d", "/r/c/d"));
        assert!(resolves_to("/r/a/l", "/etc/x", "/etc/x"));
        assert!(!resolves_to("/r/a/l", "x", "/r/a/y"));
        assert!(!resolves_to("/r/a/l", "../x", "/r/a/x"));
    }
}
