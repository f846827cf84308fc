//! What the unit tests of the filesystem share: a filesystem on a fresh cache dir, a file.

use super::pageset::PageSet;
use super::{Caller, CutDirent, FileKind, Fs, FsOptions, Restore, PAGE_SIZE, ROOT_INO};
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

/// Installs a restore of one file, ino 2 (`big`), of `size` bytes, whose `absent` pages only
/// the bucket holds.
pub(super) fn restore_one_file(fs: &Fs, size: u64, absent: &PageSet) {
    let mut attr = fs.new_attr(
        2,
        FileKind::File,
        0o600,
        super::current_caller(),
        std::time::SystemTime::now(),
    );
    attr.size = size;
    attr.parent = ROOT_INO;
    fs.install(Restore {
        epoch: 1,
        next_ino: 3,
        inodes: vec![attr],
        dirents: vec![CutDirent {
            parent: ROOT_INO,
            name: "big".into(),
            ino: 2,
            kind: FileKind::File,
        }],
        pages: vec![(2, absent.clone())],
    })
    .unwrap();
}
