//! Crash points for tests: `BUCKETFS_FAILPOINT=NAME` makes the process abort (as kill -9 would:
//! no cleanup, no unmount) when it reaches the point NAME. Unset, each check is one load of a
//! cached value.
//!
//! Points: `after-segment-put`, `before-manifest-commit`, `after-manifest-commit`,
//! `during-mark-clean`.

use std::sync::OnceLock;

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// Aborts the process here if the failpoint `name` is armed.
pub fn hit(name: &str) {
    let armed = ARMED.get_or_init(|| std::env::var("BUCKETFS_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("bucketfs: failpoint {name} reached: aborting");
        std::process::abort();
    }
}
