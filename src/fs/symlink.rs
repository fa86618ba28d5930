//! Absolute link targets inside the mounted tree become relative to the link's directory:
//! with `transform_symlinks`, and always on servers whose READLINK answers the resolved
//! path instead of the link's text (ProFTPD).
//!
//! Owns only the path arithmetic; it never reads the server.

/// `target` read from a link at `link_rel` (relative to the mount root, whose absolute
/// remote path is `root`). Targets outside the root stay as they are.
pub fn transform(root: &str, link_rel: &str, target: &str) -> String {
    let root = root.trim_end_matches('/');
    let inside = if target == root {
        Some("")
    } else {
        target
            .strip_prefix(root)
            .and_then(|rest| rest.strip_prefix('/'))
    };
    let Some(inside) = inside else {
        return target.to_string();
    };
    let dir: Vec<&str> = link_rel.split('/').filter(|c| !c.is_empty()).collect();
    let dir = &dir[..dir.len().saturating_sub(1)];
    let to: Vec<&str> = inside.split('/').filter(|c| !c.is_empty()).collect();
    let common = dir.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out: Vec<&str> = vec![".."; dir.len() - common];
    out.extend(&to[common..]);
    if out.is_empty() {
        ".".to_string()
    } else {
        out.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::transform;

    #[test]
    fn inside_becomes_relative() {
        assert_eq!(
            transform("/home/media", "a/b/link", "/home/media/c/d"),
            "../../c/d"
        );
        assert_eq!(transform("/home/media", "link", "/home/media/c"), "c");
        assert_eq!(transform("/home/media/", "a/link", "/home/media"), "..");
        assert_eq!(transform("/home/media", "link", "/home/media"), ".");
        // Shared directories are not climbed out of and back into.
        assert_eq!(
            transform("/r", "backup/st/latest", "/r/backup/st/20261129-F"),
            "20261129-F"
        );
        assert_eq!(transform("/r", "a/b/link", "/r/a/c"), "../c");
        assert_eq!(transform("/r", "a/b/link", "/r/a/b"), ".");
    }

    #[test]
    fn outside_and_relative_unchanged() {
        assert_eq!(
            transform("/home/media", "a/link", "/etc/passwd"),
            "/etc/passwd"
        );
        assert_eq!(
            transform("/home/media", "a/link", "/home/mediax/f"),
            "/home/mediax/f"
        );
        assert_eq!(transform("/home/media", "a/link", "../x"), "../x");
    }
}
