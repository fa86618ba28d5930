//! `transform_symlinks`: absolute link targets inside the mounted tree become relative.
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
    let depth = link_rel
        .split('/')
        .filter(|c| !c.is_empty())
        .count()
        .saturating_sub(1);
    let mut out: Vec<&str> = vec![".."; depth];
    out.extend(inside.split('/').filter(|c| !c.is_empty()));
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
