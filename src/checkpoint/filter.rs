//! Which paths a checkpoint leaves out (`--local-only`) and which are WAL.

use crate::fs::PathFilter;

/// `--local-only` globs: a pattern without '/' matches any one path component ('*' and '?'
/// wildcards), one with '/' matches the whole path from the root.
#[derive(Clone, Debug, Default)]
pub struct LocalOnly {
    patterns: Vec<Vec<u8>>,
    wal_dir: Vec<u8>,
}

impl LocalOnly {
    /// `wal_dir` is relative to the root (`pg_wal`, `./pg_wal/` alike).
    pub fn new(patterns: &[String], wal_dir: &std::path::Path) -> LocalOnly {
        use std::os::unix::ffi::OsStrExt;
        let mut wal = Vec::new();
        for c in wal_dir.components() {
            if let std::path::Component::Normal(name) = c {
                if !wal.is_empty() {
                    wal.push(b'/');
                }
                wal.extend_from_slice(name.as_bytes());
            }
        }
        LocalOnly {
            patterns: patterns.iter().map(|p| p.as_bytes().to_vec()).collect(),
            wal_dir: wal,
        }
    }
}

impl PathFilter for LocalOnly {
    fn wal(&self, path: &[u8]) -> bool {
        path == self.wal_dir.as_slice()
    }

    fn local_only(&self, path: &[u8]) -> bool {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        self.patterns.iter().any(|p| {
            if p.contains(&b'/') {
                glob(p, path)
            } else {
                glob(p, name)
            }
        })
    }
}

/// '*' (any run, not crossing '/') and '?' (one byte) matching.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text)
                || (!text.is_empty() && text[0] != b'/' && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::PathFilter;

    #[test]
    fn local_only_globs() {
        let f = LocalOnly::new(
            &[
                "pgsql_tmp".into(),
                "postmaster.*".into(),
                "base/1/tmp?".into(),
            ],
            std::path::Path::new("./pg_wal/"),
        );
        assert!(f.wal(b"pg_wal") && !f.wal(b"base/pg_wal") && !f.wal(b"pg_wal2"));
        assert!(f.local_only(b"base/pgsql_tmp"));
        assert!(f.local_only(b"postmaster.pid"));
        assert!(f.local_only(b"postmaster.opts"));
        assert!(f.local_only(b"base/1/tmp7"));
        assert!(!f.local_only(b"base/1/tmp77"));
        assert!(!f.local_only(b"base/2/tmp7"));
        assert!(!f.local_only(b"base/16384/2619"));
        assert!(!f.local_only(b"postmaster"));
    }
}
