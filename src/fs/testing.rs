//! What the unit tests of the filesystem share: a filesystem on a fresh cache dir, a file.

use super::{Caller, Fs, FsOptions, PAGE_SIZE, ROOT_INO};
use crate::cache::CacheDir;

/// The filesystem of the cache dir in `dir` (made if there is none, opened again if there
/// is).
pub(super) fn open(dir: &tempfile::TempDir) -> Fs {
    let cache = CacheDir::open(&dir.path().join("cache"), PAGE_SIZE).unwrap();
    Fs::new(cache, &FsOptions::default()).unwrap()
}

/// A new file `f` in the root, open for reading and writing: its inode.
pub(super) fn new_file(fs: &Fs) -> u64 {
    let caller = Caller { uid: 0, gid: 0 };
    let (attr, _) = fs
        .create(ROOT_INO, std::ffi::OsStr::new("f"), 0o600, caller, false)
        .unwrap();
    fs.open(attr.ino, libc::O_RDWR).unwrap();
    attr.ino
}
