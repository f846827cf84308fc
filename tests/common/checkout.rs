//! Where the checkout the tests run in is.

use std::path::PathBuf;

/// The checkout the tests run in. Cargo sets `CARGO_MANIFEST_DIR` when it runs a test, so
/// this is read at run time: a test binary built in another checkout of the same commit and
/// shared through `CARGO_TARGET_DIR` (cargo finds it fresh) would otherwise read that
/// checkout's files, or none.
pub fn checkout() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
