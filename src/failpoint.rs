//! Crash points for tests: `BUCKETFS_FAILPOINT=NAME` makes the process abort (as kill -9 would:
//! no cleanup, no unmount) when it reaches the point NAME. Unset, each check is one load of a
//! cached value.
//!
//! Points: `after-segment-put`, `before-manifest-commit`, `after-manifest-commit`,
//! `during-mark-clean`, `before-takeover-commit`.
//!
//! One point makes a failure instead of a crash (`failing`): `cache-flush-fails`, every flush
//! of the cache files fails as on a disk that failed a write-back.

use std::sync::OnceLock;

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// True if the failpoint `name` is armed (a failure point: the caller fails there).
pub fn failing(name: &str) -> bool {
    let armed = ARMED.get_or_init(|| std::env::var("BUCKETFS_FAILPOINT").ok());
    armed.as_deref() == Some(name)
}

/// Aborts the process here if the failpoint `name` is armed.
pub fn hit(name: &str) {
    if failing(name) {
        eprintln!("bucketfs: failpoint {name} reached: aborting");
        std::process::abort();
    }
}
