//! Where uid/gid mapping happens: remote owners -> the owners the kernel sees.
//!
//! Owns `uid=`/`gid=` forcing (names or numbers), sshfs's `idmap=user|file|none` with
//! `uidfile`/`gidfile`, and `umask=`. It must never change anything on the server; it only
//! decides what local processes see.

use std::collections::HashMap;
use std::path::Path;

/// How remote ids are translated.
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    pub force_uid: Option<u32>,
    pub force_gid: Option<u32>,
    uids: HashMap<u32, u32>,
    gids: HashMap<u32, u32>,
    /// Permission bits cleared from every mode shown (`umask=`).
    pub umask: u32,
}

/// Resolves a user given as a name or a number.
pub fn resolve_user(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(format!("unknown user '{s}'")),
    }
}

/// Resolves a group given as a name or a number.
pub fn resolve_group(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(format!("unknown group '{s}'")),
    }
}

/// Reads an sshfs uidfile/gidfile: `name:remote_id` per line; `name` is resolved locally.
pub fn read_map_file(
    path: &Path,
    resolve: fn(&str) -> Result<u32, String>,
) -> Result<HashMap<u32, u32>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("{}:{}: expected name:id", path.display(), i + 1);
        let (name, id) = line.split_once(':').ok_or_else(bad)?;
        let remote: u32 = id.trim().parse().map_err(|_| bad())?;
        let local =
            resolve(name.trim()).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        map.insert(remote, local);
    }
    Ok(map)
}

impl IdMap {
    pub fn new(force_uid: Option<u32>, force_gid: Option<u32>, umask: u32) -> Self {
        IdMap {
            force_uid,
            force_gid,
            umask: umask & 0o7777,
            ..Default::default()
        }
    }

    pub fn with_maps(mut self, uids: HashMap<u32, u32>, gids: HashMap<u32, u32>) -> Self {
        self.uids = uids;
        self.gids = gids;
        self
    }

    /// idmap=user: the login's remote ids become the mounting user's ids.
    pub fn map_login(&mut self, remote_uid: u32, remote_gid: u32, local_uid: u32, local_gid: u32) {
        self.uids.insert(remote_uid, local_uid);
        self.gids.insert(remote_gid, local_gid);
    }

    pub fn uid(&self, remote: Option<u32>) -> u32 {
        self.force_uid
            .or_else(|| remote.map(|r| *self.uids.get(&r).unwrap_or(&r)))
            .unwrap_or(0)
    }

    pub fn gid(&self, remote: Option<u32>) -> u32 {
        self.force_gid
            .or_else(|| remote.map(|r| *self.gids.get(&r).unwrap_or(&r)))
            .unwrap_or(0)
    }

    pub fn perm(&self, mode: u32) -> u16 {
        (mode & 0o7777 & !self.umask) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_wins_over_maps() {
        let mut m = IdMap::new(Some(991), None, 0o027);
        m.map_login(1000, 1000, 5, 6);
        assert_eq!(m.uid(Some(1000)), 991);
        assert_eq!(m.gid(Some(1000)), 6);
        assert_eq!(m.gid(Some(7)), 7);
        assert_eq!(m.perm(0o100666), 0o640);
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(resolve_user("70").unwrap(), 70);
        assert_eq!(resolve_user("root").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(resolve_user("no-such-user-mastofs")
            .unwrap_err()
            .contains("no-such-user-mastofs"));
    }

    #[test]
    fn map_file() {
        let p = std::env::temp_dir().join(format!("mastofs-uidfile-{}", std::process::id()));
        std::fs::write(&p, "# comment\nroot:1234\n").unwrap();
        let m = read_map_file(&p, resolve_user).unwrap();
        assert_eq!(m.get(&1234), Some(&0));
        std::fs::write(&p, "root\n").unwrap();
        assert!(read_map_file(&p, resolve_user).is_err());
        let _ = std::fs::remove_file(&p);
    }
}
