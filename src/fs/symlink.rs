//! What the kernel is shown of a link the server holds: containment (a link never leads
//! the host out of the mount) and `transform_symlinks` (absolute targets inside the mounted
//! tree become relative to the link's directory; always on servers whose READLINK answers
//! the resolved path instead of the link's text, as ProFTPD's does).
//!
//! Containment (`contain_symlinks`, the default): a target is resolved lexically from the
//! link's own directory (`.` and `..` by their names, an absolute target against the
//! mount's remote root). A target that stays inside the mounted tree is shown relative to
//! the link's directory; one that leaves it is refused ([`Outside`]; `readlink` answers
//! EPERM, as sshfs's `contain_symlinks`). A relative target already in the form
//! `../../a/b` (every `..` first, no more of them than the link is deep) is shown as the
//! server has it. Any other (`a/../b`, `./x`) is shown in that normalised form: the kernel
//! follows an intermediate link before applying `..` to where it led, so `inner/../..`
//! with `inner -> .` would climb above the root although its text looks contained, while
//! a normalised target only climbs real directories before descending. Shown targets
//! therefore stay inside however many contained links a path goes through.
//!
//! Owns only the path arithmetic; it never reads the server.

/// The link leads out of the mounted tree.
#[derive(Debug, PartialEq, Eq)]
pub struct Outside;

/// How links are shown (from the mount options and the server's traits).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Refuse targets that leave the mount (`contain_symlinks`; off: `no_contain_symlinks`).
    pub contain: bool,
    /// Show absolute targets inside the mount relative to the link (`transform_symlinks`).
    pub transform: bool,
}

/// The components of `p`, without empty ones and `.`.
fn parts(p: &str) -> impl Iterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// `target` read from the link at `link_rel` (relative to the mount root, whose absolute
/// remote path is `root` where known), as the kernel may be shown it.
pub fn show(
    root: Option<&str>,
    link_rel: &str,
    target: &str,
    policy: Policy,
) -> Result<String, Outside> {
    let dir: Vec<&str> = {
        let mut d: Vec<&str> = parts(link_rel).collect();
        d.pop();
        d
    };
    let absolute = target.starts_with('/');
    if !policy.contain && (!absolute || !policy.transform) {
        return Ok(target.to_string());
    }
    if !absolute && in_climbing_form(target, dir.len()) {
        return Ok(target.to_string());
    }
    // Out of the mount, or not to be judged: refused, or (trusted) shown as it is.
    let outside = || {
        if policy.contain {
            Err(Outside)
        } else {
            Ok(target.to_string())
        }
    };
    let known = root.is_some();
    if absolute && !known {
        return outside();
    }
    // Where the target leads, lexically, as absolute remote components (the root unknown:
    // relative to the root, and nothing above it can be told apart).
    let base: Vec<&str> = root.map(|r| parts(r).collect()).unwrap_or_default();
    let mut at: Vec<&str> = if absolute {
        Vec::new()
    } else {
        base.iter().chain(&dir).copied().collect()
    };
    for c in parts(target) {
        if c != ".." {
            at.push(c);
        } else if at.is_empty() && !known {
            return Err(Outside);
        } else {
            at.pop();
        }
    }
    let Some(inside) = at.strip_prefix(&base[..]) else {
        return outside();
    };
    let common = dir.iter().zip(inside).take_while(|(a, b)| a == b).count();
    let mut out: Vec<&str> = vec![".."; dir.len() - common];
    out.extend(&inside[common..]);
    if out.is_empty() {
        return Ok(".".to_string());
    }
    let mut s = out.join("/");
    if target.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

/// `../../a/b`: every `..` before any name, at most `depth` of them, no `.`.
fn in_climbing_form(target: &str, depth: usize) -> bool {
    let mut ups = 0;
    let mut named = false;
    for c in target.split('/').filter(|c| !c.is_empty()) {
        match c {
            "." => return false,
            ".." if named => return false,
            ".." => ups += 1,
            _ => named = true,
        }
    }
    ups <= depth && !target.is_empty()
}

#[cfg(test)]
mod tests {
    use super::{show, Outside, Policy};

    const CONTAIN: Policy = Policy {
        contain: true,
        transform: false,
    };
    const TRANSFORM: Policy = Policy {
        contain: false,
        transform: true,
    };
    const TRUST: Policy = Policy {
        contain: false,
        transform: false,
    };

    fn c(root: &str, link: &str, target: &str) -> Result<String, Outside> {
        show(Some(root), link, target, CONTAIN)
    }

    #[test]
    fn inside_links_keep_working() {
        // pgBackRest's latest, borg's and git's relative links: unchanged.
        assert_eq!(
            c("/r", "backup/db/latest", "20261129-F").unwrap(),
            "20261129-F"
        );
        assert_eq!(c("/r", "a/b/l", "../../x/y").unwrap(), "../../x/y");
        assert_eq!(c("/r", "a/b/l", "../b/x").unwrap(), "../b/x");
        assert_eq!(c("/r", "a/l", "sub/dir/").unwrap(), "sub/dir/");
        // Absolute inside the root: relative to the link, as transform_symlinks.
        assert_eq!(
            c("/home/media", "a/b/l", "/home/media/c/d").unwrap(),
            "../../c/d"
        );
        assert_eq!(c("/home/media", "l", "/home/media").unwrap(), ".");
        assert_eq!(c("/r", "a/b/l", "/r/a/b").unwrap(), ".");
        assert_eq!(
            c("/r", "backup/st/latest", "/r/backup/st/20261129-F").unwrap(),
            "20261129-F"
        );
        // Through `..` and back in: shown normalised.
        assert_eq!(c("/r", "a/l", "x/../y").unwrap(), "y");
        assert_eq!(c("/r", "a/l", "./y").unwrap(), "y");
        assert_eq!(c("/home/media", "l", "../media/x").unwrap(), "x");
        assert_eq!(
            c("/home/media", "a/l", "/home/media/a/../b").unwrap(),
            "../b"
        );
    }

    #[test]
    fn links_out_of_the_mount_are_refused() {
        let esc = "../../../../../../../../../../etc/hostname";
        assert_eq!(c("/home/media", "escape-rel", esc), Err(Outside));
        assert_eq!(
            c("/home/media", "escape-abs", "/etc/hostname"),
            Err(Outside)
        );
        assert_eq!(c("/home/media", "a/l", "../../x"), Err(Outside));
        assert_eq!(c("/home/media", "a/l", "/home/mediax/f"), Err(Outside));
        assert_eq!(c("/home/media", "a/l", "/home/media/../etc"), Err(Outside));
        assert_eq!(c("/home/media", "l", ".."), Err(Outside));
        // `inner -> .` then `inner/../x` would climb above the root in the kernel: only
        // the normalised, contained form is shown.
        assert_eq!(c("/r", "l", "inner/../x").unwrap(), "x");
        assert_eq!(c("/r", "l", "inner/../../x"), Err(Outside));
        // The root unknown: nothing above it, and no absolute target, can be judged.
        assert_eq!(show(None, "a/l", "/r/x", CONTAIN), Err(Outside));
        assert_eq!(show(None, "a/l", "../../x", CONTAIN), Err(Outside));
        assert_eq!(show(None, "a/l", "../x", CONTAIN).unwrap(), "../x");
    }

    #[test]
    fn without_containment_targets_pass_and_transform_applies() {
        let t = |link: &str, target: &str| show(Some("/home/media"), link, target, TRANSFORM);
        assert_eq!(t("a/b/link", "/home/media/c/d").unwrap(), "../../c/d");
        assert_eq!(t("a/link", "/etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(t("a/link", "../../../x").unwrap(), "../../../x");
        let trust = show(Some("/home/media"), "l", "/home/media/x", TRUST).unwrap();
        assert_eq!(trust, "/home/media/x");
    }
}
