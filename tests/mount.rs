mod common;

// Real mounts through the kernel: what a user of a bucketfs mount sees, one behaviour per
// test, each on its own fresh cache dir.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::{wait_for, Mount};
use tempfile::TempDir;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

// ---- helpers -------------------------------------------------------------------------------

/// Mounts a fresh cache dir of `dir` on `dir/mnt`.
fn start(dir: &TempDir, extra: &[&str]) -> Mount {
    Mount::start(&dir.path().join("mnt"), &dir.path().join("cache"), extra)
}

/// The errno of a call that must fail.
fn errno_of<T>(r: io::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("expected the call to fail, it succeeded"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e}")),
    }
}

/// A libc return value (-1 on error) as an io::Result.
fn cvt<T: Copy + Into<i64>>(r: T) -> io::Result<T> {
    if r.into() == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// A deterministic, position-dependent byte pattern (so misplaced bytes are noticed).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn read_at(f: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("pread");
    buf
}

fn assert_zeros(bytes: &[u8], what: &str) {
    if let Some(i) = bytes.iter().position(|&b| b != 0) {
        panic!("{what}: byte {i} is {:#x}, expected a zero", bytes[i]);
    }
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn create_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
}

fn lseek(f: &File, offset: u64, whence: i32) -> io::Result<u64> {
    // SAFETY: lseek on a descriptor `f` keeps open.
    cvt(unsafe { libc::lseek(f.as_raw_fd(), offset as i64, whence) }).map(|r| r as u64)
}

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor `f` keeps open.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) }).map(|_| ())
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (from, to) = (cpath(from), cpath(to));
    // SAFETY: valid C strings; renameat2 has no libc wrapper on every target, so the syscall.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    cvt(r).map(|_| ())
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Total bytes of the cache files under `cache/data`.
fn cache_data_bytes(cache: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    walk(&e.path())
                } else {
                    m.len()
                }
            })
            .sum()
    }
    walk(&cache.join("data"))
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(p)?
        .sync_all()
}

/// Everything a user could compare about a tree: kind, bytes, symlink target, permissions.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, bytes: Vec<u8> },
    Symlink { target: PathBuf },
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let m = fs::symlink_metadata(&path).unwrap();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, Node::Symlink { target });
            } else if m.is_dir() {
                out.insert(rel, Node::Dir { mode });
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).unwrap();
                assert_eq!(bytes.len() as u64, m.len(), "{}: st_size", path.display());
                out.insert(rel, Node::File { mode, bytes });
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Writes a small tree (files of several sizes, a sparse one, nested dirs, symlinks) and
/// fsyncs every file and every directory in it.
fn populate_and_fsync(mnt: &Path) {
    let dirs = ["a", "a/b", "a/b/c", "empty"];
    for d in dirs {
        fs::create_dir(mnt.join(d)).unwrap();
    }
    let files: [(&str, Vec<u8>); 4] = [
        ("top.txt", b"top level\n".to_vec()),
        ("a/one", pattern(10_000, 1)),
        ("a/b/two", pattern(3 * MIB as usize + 17, 2)),
        ("a/b/c/empty-file", Vec::new()),
    ];
    for (name, bytes) in &files {
        let mut f = File::create(mnt.join(name)).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }
    let sparse = File::create(mnt.join("a/sparse")).unwrap();
    sparse.write_all_at(b"tail", 5 * MIB).unwrap();
    sparse.sync_all().unwrap();
    fs::set_permissions(mnt.join("a/one"), fs::Permissions::from_mode(0o600)).unwrap();
    File::open(mnt.join("a/one")).unwrap().sync_all().unwrap();
    symlink("a/b/two", mnt.join("link-to-two")).unwrap();
    symlink("../../nowhere", mnt.join("a/b/dangling")).unwrap();
    for d in ["", "a", "a/b", "a/b/c", "empty"] {
        fsync_dir(&mnt.join(d)).unwrap();
    }
}

// ---- file data -----------------------------------------------------------------------------

#[test]
fn create_write_and_read_back() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("hello.txt");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"hello, bucketfs\n").unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"hello, bucketfs\n");
    assert_eq!(fs::metadata(&path).unwrap().len(), 16);
    assert!(fs::metadata(&path).unwrap().is_file());
    assert!(m.stop().success());
}

#[test]
fn pread_and_pwrite_at_arbitrary_offsets() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let f = create_rw(&m.mnt.join("f"));
    // Unaligned offsets and lengths, across page boundaries, out of order.
    let pieces: [(u64, Vec<u8>); 4] = [
        (100_003, pattern(9_001, 1)),
        (7, pattern(13, 2)),
        (8_190, pattern(5, 3)),
        (50_000, pattern(70_000, 4)),
    ];
    for (off, bytes) in &pieces {
        f.write_all_at(bytes, *off).unwrap();
    }
    // The file ends where the furthest piece ends.
    let size = pieces
        .iter()
        .map(|(off, bytes)| off + bytes.len() as u64)
        .max()
        .unwrap();
    assert_eq!(size, 120_000);
    assert_eq!(f.metadata().unwrap().len(), size);
    let mut expected = vec![0u8; size as usize];
    for (off, bytes) in &pieces {
        expected[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
    }
    assert_eq!(read_at(&f, 0, size as usize), expected);
    // Reads at odd places, and a read straddling the end returns only what exists.
    assert_eq!(read_at(&f, 8_189, 7), expected[8_189..8_196]);
    let mut tail = vec![0u8; 100];
    assert_eq!(f.read_at(&mut tail, size - 10).unwrap(), 10);
    assert_eq!(tail[..10], expected[size as usize - 10..]);
    assert_eq!(f.read_at(&mut tail, size + 5).unwrap(), 0);
    // The same through a second, fresh descriptor.
    drop(f);
    assert_eq!(fs::read(m.mnt.join("f")).unwrap(), expected);
    assert!(m.stop().success());
}

#[test]
fn o_excl_on_an_existing_file_is_eexist() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    fs::write(&path, b"keep me").unwrap();
    let r = OpenOptions::new().write(true).create_new(true).open(&path);
    assert_eq!(errno_of(r), libc::EEXIST);
    assert_eq!(fs::read(&path).unwrap(), b"keep me");
    // A new name with O_EXCL works.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.mnt.join("g"))
        .unwrap();
    assert!(m.stop().success());
}

#[test]
fn o_trunc_empties_the_file() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    fs::write(&path, pattern(100_000, 1)).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty(), "read {} bytes after O_TRUNC", buf.len());
    f.write_all(b"new").unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert!(m.stop().success());
}

#[test]
fn ftruncate_shrinks_and_grows_with_zeros() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    let data = pattern(20_000, 7);
    let f = create_rw(&path);
    f.write_all_at(&data, 0).unwrap();

    f.set_len(3_001).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3_001);
    assert_eq!(fs::read(&path).unwrap(), data[..3_001]);

    f.set_len(40_000).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 40_000);
    let all = read_at(&f, 0, 40_000);
    assert_eq!(all[..3_001], data[..3_001]);
    assert_zeros(&all[3_001..], "grown region after shrink and grow");
    drop(f);
    // Grown region is zeros for a fresh descriptor too (not only the page cache).
    let all = fs::read(&path).unwrap();
    assert_eq!(all.len(), 40_000);
    assert_zeros(&all[3_001..], "grown region, reopened");
    assert!(m.stop().success());
}

#[test]
fn st_size_and_seek_end_are_exact() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    let data = pattern(12_345, 3);
    fs::write(&path, &data).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 12_345);
    let mut f = File::open(&path).unwrap();
    assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 12_345);
    assert_eq!(f.seek(SeekFrom::End(-45)).unwrap(), 12_300);
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, data[12_300..]);
    // Appending moves the end by exactly what was written.
    let mut a = OpenOptions::new().append(true).open(&path).unwrap();
    a.write_all(b"xyz").unwrap();
    drop(a);
    assert_eq!(fs::metadata(&path).unwrap().len(), 12_348);
    f = File::open(&path).unwrap(); // (the first descriptor closes here)
    assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 12_348);
    drop(f);
    assert!(m.stop().success());
}

#[test]
fn sparse_file_beyond_1_gib() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("sparse");
    let off = GIB + GIB / 2;
    let data = pattern(8_192, 9);
    let f = create_rw(&path);
    f.write_all_at(&data, off).unwrap();
    assert_eq!(f.metadata().unwrap().len(), off + 8_192);
    assert_eq!(fs::metadata(&path).unwrap().len(), off + 8_192);
    assert_eq!(read_at(&f, off, 8_192), data);
    assert_zeros(&read_at(&f, 0, 64 * KIB as usize), "hole at 0");
    assert_zeros(&read_at(&f, GIB, 64 * KIB as usize), "hole at 1 GiB");
    assert_zeros(
        &read_at(&f, off - 4_096, 4_096),
        "hole just before the data",
    );

    // SEEK_DATA/SEEK_HOLE on the descriptor that wrote (no fsync in between). With the
    // kernel's writeback cache the written page may still be in the kernel, so bucketfs lets
    // the kernel answer (docs/fuse-options.md): holes may be reported as data, but data is
    // never reported as a hole.
    assert!(
        lseek(&f, 0, libc::SEEK_DATA).unwrap() <= off,
        "SEEK_DATA skipped data"
    );
    assert!(
        lseek(&f, GIB, libc::SEEK_DATA).unwrap() <= off,
        "SEEK_DATA skipped data"
    );
    assert!(
        lseek(&f, off, libc::SEEK_HOLE).unwrap() >= off + 8_192,
        "hole inside data"
    );
    assert_eq!(
        errno_of(lseek(&f, off + 8_192, libc::SEEK_DATA)),
        libc::ENXIO,
        "SEEK_DATA at EOF"
    );
    // The bytes take only about what was written, not 1.5 GiB, in the cache dir.
    f.sync_all().unwrap();
    drop(f);
    assert!(
        cache_data_bytes(&m.cache) >= off,
        "cache file holds the logical size"
    );
    let blocks: u64 = fs::read_dir(m.cache.join("data"))
        .unwrap()
        .flat_map(|s| fs::read_dir(s.unwrap().path()).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().blocks())
        .sum();
    assert!(
        blocks * 512 < 16 * MIB,
        "cache file is not sparse: {blocks} blocks"
    );
    assert!(m.stop().success());
}

#[test]
fn sparse_files_report_exact_holes_without_the_writeback_cache() {
    let dir = common::scratch();
    let m = start(&dir, &["--no-writeback-cache"]);
    let path = m.mnt.join("sparse");
    let off = GIB + GIB / 2;
    let f = create_rw(&path);
    f.write_all_at(&pattern(8_192, 9), off).unwrap();
    // The descriptor that wrote, with no fsync in between.
    assert_eq!(
        lseek(&f, 0, libc::SEEK_HOLE).unwrap(),
        0,
        "SEEK_HOLE from 0"
    );
    assert_eq!(
        lseek(&f, 0, libc::SEEK_DATA).unwrap(),
        off,
        "SEEK_DATA from 0"
    );
    assert_eq!(
        lseek(&f, GIB, libc::SEEK_DATA).unwrap(),
        off,
        "SEEK_DATA from 1 GiB"
    );
    assert_eq!(
        lseek(&f, off, libc::SEEK_HOLE).unwrap(),
        off + 8_192,
        "SEEK_HOLE at data"
    );
    assert_eq!(
        errno_of(lseek(&f, off + 8_192, libc::SEEK_DATA)),
        libc::ENXIO,
        "SEEK_DATA at EOF"
    );
    f.sync_all().unwrap();
    drop(f);
    // A fresh descriptor sees the same.
    let f = File::open(&path).unwrap();
    assert_eq!(lseek(&f, 0, libc::SEEK_HOLE).unwrap(), 0);
    assert_eq!(lseek(&f, 0, libc::SEEK_DATA).unwrap(), off);
    assert_eq!(lseek(&f, off, libc::SEEK_HOLE).unwrap(), off + 8_192);
    drop(f);
    assert!(m.stop().success());
}

fn read_number(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim().parse().unwrap()
}

#[test]
fn kernel_dirty_sets_how_much_the_kernel_holds_before_sending_writes() {
    let limits = |m: &Mount| {
        let bdi = common::bdi_of(&m.mnt);
        (
            read_number(&bdi.join("max_ratio")),
            read_number(&bdi.join("strict_limit")),
        )
    };
    // The kernel's own limit for a FUSE mount, 1% of its dirty limit, strictly enforced:
    // with --kernel-dirty 0, and without the writeback cache (writes go straight through).
    for args in [&["--kernel-dirty", "0"][..], &["--no-writeback-cache"]] {
        let dir = common::scratch();
        let m = start(&dir, args);
        assert_eq!(limits(&m), (1, 1), "{args:?}");
        assert!(m.stop().success());
    }

    // The default, 1 GiB, if that is at most half the kernel's dirty limit (4.9 GB on a
    // machine with 24 GiB free), else half of it. The kernel keeps it as a share of the
    // limit, which moves with free memory, and reads it back as bytes from that share.
    let vmstat = fs::read_to_string("/proc/vmstat").unwrap();
    let threshold_pages: u64 = vmstat
        .lines()
        .find_map(|l| l.strip_prefix("nr_dirty_threshold "))
        .expect("nr_dirty_threshold in /proc/vmstat")
        .parse()
        .unwrap();
    // SAFETY: sysconf has no preconditions.
    let half = threshold_pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64 / 2;
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let log = m.log_text();
    assert!(
        !log.contains("could not set"),
        "this test needs root, Linux 6.2+ and a writable /sys:\n{log}"
    );
    let (max_ratio, strict_limit) = limits(&m);
    assert_eq!(strict_limit, 1, "the strict limit stays");
    let bytes = read_number(&common::bdi_of(&m.mnt).join("max_bytes"));
    if half / 50 > GIB * 11 / 10 {
        // A machine with over 500 GiB free: the kernel's own 1% is more than 1 GiB, and stays.
        assert_eq!(max_ratio, 1, "{log}");
    } else if half > GIB * 11 / 10 {
        assert!(
            (GIB * 8 / 10..=GIB * 5 / 4).contains(&bytes) && max_ratio < 50,
            "max_bytes {bytes}, max_ratio {max_ratio}:\n{log}"
        );
        assert!(log.contains("up to about this much"), "{log}");
    } else if half < GIB * 9 / 10 {
        assert_eq!(max_ratio, 50, "{log}");
    } else {
        // Too close to tell which one the mount saw.
        assert!(max_ratio == 50 || (GIB * 8 / 10..=GIB * 5 / 4).contains(&bytes));
    }
    assert!(m.stop().success());

    // More than half of any machine's dirty limit: half of it.
    let dir = common::scratch();
    let m = start(&dir, &["--kernel-dirty", "1T"]);
    assert_eq!(limits(&m), (50, 1));
    assert!(
        m.log_text().contains("may hold half of it"),
        "{}",
        m.log_text()
    );
    assert!(m.stop().success());
}

#[test]
fn posix_fallocate_extends_the_size_with_zeros() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    let f = create_rw(&path);
    f.write_all_at(b"head", 0).unwrap();
    // SAFETY: posix_fallocate on an open descriptor; it returns the error instead of -1.
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, MIB as i64) };
    assert_eq!(r, 0, "posix_fallocate: {}", io::Error::from_raw_os_error(r));
    assert_eq!(f.metadata().unwrap().len(), MIB);
    drop(f);
    let all = fs::read(&path).unwrap();
    assert_eq!(all.len() as u64, MIB);
    assert_eq!(&all[..4], b"head");
    assert_zeros(&all[4..], "allocated range");
    // Space was really reserved: the cache file has blocks for it.
    assert!(cache_data_bytes(&m.cache) >= MIB);
    assert!(m.stop().success());
}

#[test]
fn punch_hole_zeroes_the_range_and_keeps_the_size() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    let data = pattern(64 * KIB as usize, 5);
    let f = create_rw(&path);
    f.write_all_at(&data, 0).unwrap();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&f, mode, 8_192, 16_384).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 64 * KIB);
    let check = |all: &[u8]| {
        assert_eq!(all.len() as u64, 64 * KIB);
        assert_eq!(all[..8_192], data[..8_192]);
        assert_zeros(&all[8_192..24_576], "punched range");
        assert_eq!(all[24_576..], data[24_576..]);
    };
    check(&read_at(&f, 0, 64 * KIB as usize));
    drop(f);
    check(&fs::read(&path).unwrap());
    // Punching past the end keeps the size too.
    let f = open_rw(&path);
    fallocate(&f, mode, 60 * KIB, MIB).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 64 * KIB);
    assert_zeros(&read_at(&f, 60 * KIB, 4 * KIB as usize), "punched tail");
    drop(f);
    assert!(m.stop().success());
}

#[test]
fn unsupported_fallocate_modes_are_eopnotsupp() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    let data = pattern(64 * KIB as usize, 5);
    let f = create_rw(&path);
    f.write_all_at(&data, 0).unwrap();
    // COLLAPSE_RANGE and INSERT_RANGE (the kernel may refuse them before bucketfs sees them)
    // and ZERO_RANGE (which reaches bucketfs): refused, nothing changed.
    for (name, mode) in [
        ("COLLAPSE_RANGE", libc::FALLOC_FL_COLLAPSE_RANGE),
        ("INSERT_RANGE", libc::FALLOC_FL_INSERT_RANGE),
        ("ZERO_RANGE", libc::FALLOC_FL_ZERO_RANGE),
    ] {
        let e = errno_of(fallocate(&f, mode, 8_192, 8_192));
        assert_eq!(
            e,
            libc::EOPNOTSUPP,
            "{name}: {}",
            io::Error::from_raw_os_error(e)
        );
    }
    assert_eq!(f.metadata().unwrap().len(), 64 * KIB);
    assert_eq!(read_at(&f, 0, 64 * KIB as usize), data);
    drop(f);
    assert!(m.stop().success());
}

// ---- directories ---------------------------------------------------------------------------

#[test]
fn mkdir_and_rmdir_with_their_errors() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let a = m.mnt.join("a");
    fs::create_dir(&a).unwrap();
    assert!(fs::metadata(&a).unwrap().is_dir());
    assert_eq!(errno_of(fs::create_dir(&a)), libc::EEXIST);
    fs::create_dir(a.join("b")).unwrap();
    fs::write(a.join("file"), b"x").unwrap();

    assert_eq!(errno_of(fs::remove_dir(&a)), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_dir(a.join("file"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_dir(a.join("nope"))), libc::ENOENT);
    assert_eq!(errno_of(fs::remove_file(a.join("b"))), libc::EISDIR);
    assert_eq!(errno_of(fs::create_dir(a.join("file/sub"))), libc::ENOTDIR);

    fs::remove_dir(a.join("b")).unwrap();
    fs::remove_file(a.join("file")).unwrap();
    fs::remove_dir(&a).unwrap();
    assert_eq!(errno_of(fs::metadata(&a)), libc::ENOENT);
    assert!(sorted_names(&m.mnt).is_empty());
    assert!(m.stop().success());
}

#[test]
fn readdir_lists_exactly_the_entries() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    assert!(sorted_names(&m.mnt).is_empty(), "a new filesystem is empty");
    let d = m.mnt.join("d");
    fs::create_dir(&d).unwrap();
    let mut expected = Vec::new();
    // Enough entries for several readdir replies, with long names.
    for i in 0..300 {
        let name = format!("file-{i:04}-{}", "x".repeat(i % 200));
        fs::write(d.join(&name), i.to_string()).unwrap();
        expected.push(name);
    }
    for i in 0..5 {
        let name = format!("subdir-{i}");
        fs::create_dir(d.join(&name)).unwrap();
        expected.push(name);
    }
    symlink("file-0000-", d.join("link")).unwrap();
    expected.push("link".into());
    expected.sort();
    assert_eq!(sorted_names(&d), expected);
    for entry in fs::read_dir(&d).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry.file_type().unwrap();
        if name.starts_with("subdir-") {
            assert!(ft.is_dir(), "{name}");
        } else if name == "link" {
            assert!(ft.is_symlink(), "{name}");
        } else {
            assert!(ft.is_file(), "{name}");
        }
    }
    // Removals show up in the next listing.
    for name in expected.iter().filter(|n| n.starts_with("file-00")) {
        fs::remove_file(d.join(name)).unwrap();
    }
    expected.retain(|n| !n.starts_with("file-00"));
    assert_eq!(sorted_names(&d), expected);
    assert_eq!(sorted_names(&m.mnt), ["d"]);
    assert!(m.stop().success());
}

#[test]
fn directory_nlink_counts_subdirectories() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let nlink = |p: &Path| fs::metadata(p).unwrap().nlink();
    assert_eq!(nlink(&m.mnt), 2);
    let d = m.mnt.join("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(nlink(&d), 2);
    assert_eq!(nlink(&m.mnt), 3);
    for i in 0..3 {
        fs::create_dir(d.join(format!("s{i}"))).unwrap();
    }
    fs::write(d.join("file"), b"files do not count").unwrap();
    assert_eq!(nlink(&d), 5);
    fs::remove_dir(d.join("s0")).unwrap();
    assert_eq!(nlink(&d), 4);
    // Moving a subdirectory moves its link.
    fs::rename(d.join("s1"), m.mnt.join("s1")).unwrap();
    assert_eq!(nlink(&d), 3);
    assert_eq!(nlink(&m.mnt), 4);
    assert!(m.stop().success());
}

// ---- names ---------------------------------------------------------------------------------

#[test]
fn unlinked_open_file_lives_until_close_then_its_space_is_freed() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("doomed");
    let data = pattern(4 * MIB as usize, 11);
    let f = create_rw(&path);
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    let before = cache_data_bytes(&m.cache);
    assert!(before >= 4 * MIB, "cache holds the data: {before}");

    fs::remove_file(&path).unwrap();
    assert_eq!(errno_of(fs::metadata(&path)), libc::ENOENT);
    assert!(sorted_names(&m.mnt).is_empty());
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // The open descriptor still reads and writes.
    assert_eq!(read_at(&f, 0, data.len()), data);
    f.write_all_at(b"still writable", MIB).unwrap();
    f.sync_all().unwrap();
    assert_eq!(read_at(&f, MIB, 14), b"still writable");
    assert_eq!(read_at(&f, 0, 1_000), data[..1_000]);
    assert!(
        cache_data_bytes(&m.cache) >= 4 * MIB,
        "freed while still open"
    );

    drop(f);
    // The kernel sends release asynchronously after close returns.
    wait_for(
        "the cache file to be removed",
        Duration::from_secs(10),
        || cache_data_bytes(&m.cache) < MIB,
    );
    // A new file of the same name is new.
    fs::write(&path, b"new").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert!(m.stop().success());
}

#[test]
fn rename_replaces_an_existing_file() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let (src, dst) = (m.mnt.join("src"), m.mnt.join("dst"));
    fs::write(&src, b"new contents").unwrap();
    fs::write(&dst, pattern(MIB as usize, 1)).unwrap();
    File::open(&dst).unwrap().sync_all().unwrap();
    let before = cache_data_bytes(&m.cache);
    fs::rename(&src, &dst).unwrap();
    assert_eq!(errno_of(fs::metadata(&src)), libc::ENOENT);
    assert_eq!(fs::read(&dst).unwrap(), b"new contents");
    assert_eq!(fs::metadata(&dst).unwrap().len(), 12);
    assert_eq!(sorted_names(&m.mnt), ["dst"]);
    // The replaced file's bytes are gone from the cache dir as well.
    wait_for(
        "the replaced file's cache file to go",
        Duration::from_secs(10),
        || cache_data_bytes(&m.cache) + MIB <= before + 12,
    );
    assert!(m.stop().success());
}

#[test]
fn rename_of_a_directory_over_a_directory() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let (src, empty, full) = (m.mnt.join("src"), m.mnt.join("empty"), m.mnt.join("full"));
    for d in [&src, &empty, &full] {
        fs::create_dir(d).unwrap();
    }
    fs::write(src.join("inside"), b"moved along").unwrap();
    fs::write(full.join("occupant"), b"stays").unwrap();

    assert_eq!(errno_of(fs::rename(&src, &full)), libc::ENOTEMPTY);
    assert_eq!(fs::read(src.join("inside")).unwrap(), b"moved along");
    assert_eq!(fs::read(full.join("occupant")).unwrap(), b"stays");

    fs::rename(&src, &empty).unwrap();
    assert_eq!(errno_of(fs::metadata(&src)), libc::ENOENT);
    assert_eq!(fs::read(empty.join("inside")).unwrap(), b"moved along");
    assert_eq!(sorted_names(&m.mnt), ["empty", "full"]);
    assert_eq!(fs::metadata(&m.mnt).unwrap().nlink(), 4);

    // A directory cannot replace a file, nor a file a directory.
    fs::write(m.mnt.join("file"), b"f").unwrap();
    assert_eq!(
        errno_of(fs::rename(&empty, m.mnt.join("file"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(fs::rename(m.mnt.join("file"), &full)),
        libc::EISDIR
    );
    // Nor move into itself.
    assert_eq!(errno_of(fs::rename(&full, full.join("sub"))), libc::EINVAL);
    assert!(m.stop().success());
}

#[test]
fn renameat2_noreplace_refuses_an_existing_target() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let (a, b) = (m.mnt.join("a"), m.mnt.join("b"));
    fs::write(&a, b"aaa").unwrap();
    fs::write(&b, b"bbb").unwrap();
    let e = errno_of(renameat2(&a, &b, libc::RENAME_NOREPLACE));
    assert_eq!(e, libc::EEXIST);
    assert_eq!(fs::read(&a).unwrap(), b"aaa");
    assert_eq!(fs::read(&b).unwrap(), b"bbb");
    // Without a target it is a plain rename.
    let c = m.mnt.join("c");
    renameat2(&a, &c, libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(fs::read(&c).unwrap(), b"aaa");
    assert_eq!(sorted_names(&m.mnt), ["b", "c"]);
    assert!(m.stop().success());
}

#[test]
fn renameat2_exchange_swaps_two_files() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let (a, b) = (m.mnt.join("a"), m.mnt.join("sub/b"));
    fs::create_dir(m.mnt.join("sub")).unwrap();
    fs::write(&a, b"contents of a").unwrap();
    fs::write(&b, pattern(20_000, 2)).unwrap();
    let (ino_a, ino_b) = (
        fs::metadata(&a).unwrap().ino(),
        fs::metadata(&b).unwrap().ino(),
    );
    renameat2(&a, &b, libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(&a).unwrap(), pattern(20_000, 2));
    assert_eq!(fs::read(&b).unwrap(), b"contents of a");
    assert_eq!(fs::metadata(&a).unwrap().ino(), ino_b);
    assert_eq!(fs::metadata(&b).unwrap().ino(), ino_a);
    // Exchange with a missing target is ENOENT, and changes nothing.
    let e = errno_of(renameat2(&a, &m.mnt.join("missing"), libc::RENAME_EXCHANGE));
    assert_eq!(e, libc::ENOENT);
    assert_eq!(sorted_names(&m.mnt), ["a", "sub"]);
    assert!(m.stop().success());
}

#[test]
fn hard_link_shares_the_inode_and_survives_unlink() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let (a, b) = (m.mnt.join("a"), m.mnt.join("d/b"));
    fs::create_dir(m.mnt.join("d")).unwrap();
    fs::write(&a, b"shared").unwrap();
    fs::hard_link(&a, &b).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(&a).unwrap().ino(),
        fs::metadata(&b).unwrap().ino()
    );
    assert_eq!(fs::read(&b).unwrap(), b"shared");
    // A write through one name shows through the other.
    OpenOptions::new()
        .append(true)
        .open(&b)
        .unwrap()
        .write_all(b" bytes")
        .unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"shared bytes");
    assert_eq!(errno_of(fs::hard_link(&a, &b)), libc::EEXIST);
    assert_eq!(
        errno_of(fs::hard_link(m.mnt.join("d"), m.mnt.join("d2"))),
        libc::EPERM
    );

    fs::remove_file(&a).unwrap();
    assert_eq!(errno_of(fs::metadata(&a)), libc::ENOENT);
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 1);
    assert_eq!(fs::read(&b).unwrap(), b"shared bytes");
    assert!(m.stop().success());
}

#[test]
fn symlinks_resolve_and_read_back() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let d = m.mnt.join("real/dir");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("file"), b"through the link").unwrap();
    symlink("real/dir", m.mnt.join("dirlink")).unwrap();
    symlink("real/dir/file", m.mnt.join("filelink")).unwrap();
    symlink("/does/not/exist", m.mnt.join("dangling")).unwrap();

    assert_eq!(
        fs::read_link(m.mnt.join("dirlink")).unwrap(),
        Path::new("real/dir")
    );
    assert_eq!(
        fs::read_link(m.mnt.join("dangling")).unwrap(),
        Path::new("/does/not/exist")
    );
    let lm = fs::symlink_metadata(m.mnt.join("filelink")).unwrap();
    assert!(lm.file_type().is_symlink());
    assert_eq!(lm.len(), "real/dir/file".len() as u64);
    assert_eq!(
        fs::read(m.mnt.join("filelink")).unwrap(),
        b"through the link"
    );
    // A symlink to a directory is traversed: list, read and create through it.
    assert!(fs::metadata(m.mnt.join("dirlink")).unwrap().is_dir());
    assert_eq!(sorted_names(&m.mnt.join("dirlink")), ["file"]);
    assert_eq!(
        fs::read(m.mnt.join("dirlink/file")).unwrap(),
        b"through the link"
    );
    fs::write(m.mnt.join("dirlink/new"), b"made via link").unwrap();
    assert_eq!(fs::read(d.join("new")).unwrap(), b"made via link");
    assert_eq!(errno_of(fs::metadata(m.mnt.join("dangling"))), libc::ENOENT);
    // readlink of a non-symlink is EINVAL.
    assert_eq!(errno_of(fs::read_link(d.join("file"))), libc::EINVAL);
    // Removing the link leaves the target.
    fs::remove_file(m.mnt.join("dirlink")).unwrap();
    assert_eq!(sorted_names(&d), ["file", "new"]);
    assert!(m.stop().success());
}

// ---- durability calls, attributes, statfs, xattrs -------------------------------------------

#[test]
fn fsync_of_a_file_and_of_a_directory_succeed() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    fs::create_dir(m.mnt.join("d")).unwrap();
    let mut f = File::create(m.mnt.join("d/f")).unwrap();
    f.write_all(&pattern(100_000, 1)).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    // Nothing new to sync: still fine.
    f.sync_all().unwrap();
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(m.mnt.join("d"))
        .unwrap();
    // SAFETY: fsync/fdatasync on a descriptor `d` keeps open.
    assert_eq!(
        unsafe { libc::fsync(d.as_raw_fd()) },
        0,
        "{}",
        io::Error::last_os_error()
    );
    assert_eq!(
        unsafe { libc::fdatasync(d.as_raw_fd()) },
        0,
        "{}",
        io::Error::last_os_error()
    );
    fsync_dir(&m.mnt).unwrap();
    drop((f, d));
    assert!(m.stop().success());
}

#[test]
fn chmod_chown_and_utimens_show_in_stat() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    fs::write(&path, b"attrs").unwrap();
    fs::create_dir(m.mnt.join("d")).unwrap();

    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
    fs::set_permissions(m.mnt.join("d"), fs::Permissions::from_mode(0o2750)).unwrap();
    let dm = fs::metadata(m.mnt.join("d")).unwrap();
    assert_eq!(dm.mode() & 0o7777, 0o2750);
    assert_eq!(dm.mode() & libc::S_IFMT, libc::S_IFDIR);

    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&path).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    std::os::unix::fs::lchown(&path, None, Some(42)).unwrap();
    assert_eq!(
        (
            fs::metadata(&path).unwrap().uid(),
            fs::metadata(&path).unwrap().gid()
        ),
        (1234, 42)
    );

    // A specific mtime and atime, with nanoseconds.
    let c = cpath(&path);
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 123_456_789,
        },
    ];
    // SAFETY: valid C string and two timespecs, as utimensat expects.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    cvt(r).unwrap();
    let md = fs::metadata(&path).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 5));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));

    // The std way too: File::set_modified.
    let when = UNIX_EPOCH + Duration::new(1_234_567_890, 0);
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), when);
    // Changing attributes leaves the bytes alone.
    assert_eq!(fs::read(&path).unwrap(), b"attrs");
    assert!(m.stop().success());
}

#[test]
fn statfs_reports_blocks_and_name_length() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let c = cpath(&m.mnt);
    // SAFETY: statvfs with a valid C string and a zeroed out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) }).unwrap();
    assert!(st.f_blocks > 0, "f_blocks = 0");
    assert!(st.f_bsize > 0 && st.f_frsize > 0);
    assert!(st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_bfree);
    assert_eq!(st.f_namemax, 255);
    // A 255-byte name works, 256 does not.
    fs::write(m.mnt.join("n".repeat(255)), b"").unwrap();
    assert_eq!(
        errno_of(fs::write(m.mnt.join("n".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    assert!(m.stop().success());
}

#[test]
fn xattrs_are_not_supported() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let path = m.mnt.join("f");
    fs::write(&path, b"x").unwrap();
    let (c, name) = (cpath(&path), CString::new("user.test").unwrap());
    let not_supported = |r: isize, what: &str| {
        let e = errno_of(cvt(r as i64));
        assert!(
            e == libc::ENOTSUP || e == libc::EOPNOTSUPP,
            "{what}: {}",
            io::Error::from_raw_os_error(e)
        );
    };
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and buffers with their true lengths.
    unsafe {
        let r = libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0);
        not_supported(r as isize, "setxattr");
        not_supported(
            libc::getxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ),
            "getxattr",
        );
        // Asked twice: the answer is remembered, not a hang or a different error.
        not_supported(
            libc::getxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ),
            "getxattr again",
        );
    }
    // Writes still work after the refusals.
    fs::write(&path, b"still fine").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"still fine");
    assert!(m.stop().success());
}

// ---- persistence ---------------------------------------------------------------------------

#[test]
fn everything_survives_stop_and_remount() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    populate_and_fsync(&m.mnt);
    // Also something never fsync'd: a clean stop makes it durable too.
    fs::write(m.mnt.join("unsynced"), b"written, closed, not fsync'd").unwrap();
    let before = snapshot(&m.mnt);
    assert!(before.len() >= 12, "{before:#?}");
    assert!(m.stop().success());

    let m = start(&dir, &[]);
    assert_eq!(snapshot(&m.mnt), before);
    assert_eq!(
        fs::metadata(m.mnt.join("a/sparse")).unwrap().len(),
        5 * MIB + 4
    );
    // The remounted filesystem keeps working, and a second cycle changes nothing.
    fs::write(m.mnt.join("a/after"), b"second life").unwrap();
    let before = snapshot(&m.mnt);
    assert!(m.stop().success());
    let m = start(&dir, &[]);
    assert_eq!(snapshot(&m.mnt), before);
    assert!(m.stop().success());
}

#[test]
fn fsynced_state_survives_kill_9() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    populate_and_fsync(&m.mnt);
    let before = snapshot(&m.mnt);
    m.kill();

    let m = start(&dir, &[]);
    assert_eq!(snapshot(&m.mnt), before);
    assert!(m.stop().success());
}

/// Like `Mount::kill`, but leaves the dead mount in place (the harness's kill detaches it on
/// drop), so that the next `bucketfs mount` has to clear it itself.
fn crash_leaving_dead_mount(m: Mount) {
    let pid = m.pid() as i32;
    // SAFETY: signalling and reaping our own child; `m` is forgotten below, so nothing else
    // waits for it.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
    }
    std::mem::forget(m);
}

#[test]
fn dead_mount_left_by_kill_9_is_cleared_by_the_next_mount() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    populate_and_fsync(&m.mnt);
    let before = snapshot(&m.mnt);
    let mnt = m.mnt.clone();
    crash_leaving_dead_mount(m);
    assert!(common::is_mounted(&mnt), "the dead mount is still listed");
    assert_eq!(errno_of(fs::read_dir(&mnt)), libc::ENOTCONN);

    let m = start(&dir, &[]);
    assert_eq!(snapshot(&m.mnt), before);
    assert!(
        m.log_text().contains("detaching the dead mount"),
        "log:\n{}",
        m.log_text()
    );
    assert!(m.stop().success());
    assert!(
        !common::is_mounted(&mnt),
        "a mount is left at {}",
        mnt.display()
    );
}

// ---- concurrency and ownership --------------------------------------------------------------

#[test]
fn a_busy_reader_does_not_starve_namespace_operations() {
    let dir = common::scratch();
    let m = start(&dir, &[]);
    let big = m.mnt.join("big");
    let data = pattern(32 * MIB as usize, 13);
    fs::write(&big, &data).unwrap();
    File::open(&big).unwrap().sync_all().unwrap();
    let expected_sum: u64 = data.iter().map(|&b| u64::from(b)).sum();

    let small = m.mnt.join("small");
    fs::create_dir(&small).unwrap();
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            for _ in 0..6 {
                let mut f = File::open(&big).unwrap();
                let mut sum = 0u64;
                let mut buf = vec![0u8; 256 * KIB as usize];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    sum += buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>();
                }
                assert_eq!(sum, expected_sum, "big file read back differently");
            }
        });
        let creator = s.spawn(|| {
            for i in 0..300u32 {
                let p = small.join(format!("f{i}"));
                fs::write(&p, i.to_le_bytes()).unwrap();
                assert_eq!(fs::metadata(&p).unwrap().len(), 4);
                assert!(fs::metadata(&big).unwrap().len() == 32 * MIB);
            }
        });
        reader.join().expect("reader");
        creator.join().expect("creator");
    });
    assert_eq!(sorted_names(&small).len(), 300);
    assert_eq!(fs::read(small.join("f299")).unwrap(), 299u32.to_le_bytes());
    assert!(m.stop().success());
}

#[test]
fn allow_other_mount_owned_by_an_unprivileged_user() {
    let dir = common::scratch();
    let m = start(&dir, &["--allow-other", "--uid", "65534", "--gid", "65534"]);
    let root = fs::metadata(&m.mnt).unwrap();
    assert_eq!((root.uid(), root.gid()), (65534, 65534));

    let as_nobody = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("spawn as nobody")
    };
    let x = m.mnt.join("x");
    let out = as_nobody(&["touch", x.to_str().unwrap()]);
    assert!(out.status.success(), "touch as nobody: {out:?}");
    let md = fs::metadata(&x).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    let y = m.mnt.join("y");
    let out = as_nobody(&["mkdir", y.to_str().unwrap()]);
    assert!(out.status.success(), "mkdir as nobody: {out:?}");
    assert_eq!(fs::metadata(&y).unwrap().uid(), 65534);

    // Permission checks follow the modes: nobody cannot write a root-owned 0644 file.
    let root_file = m.mnt.join("root-owned");
    fs::write(&root_file, b"root").unwrap();
    std::os::unix::fs::chown(&root_file, Some(0), Some(0)).unwrap();
    fs::set_permissions(&root_file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("echo nope > \"$1\"")
        .arg("sh")
        .arg(&root_file)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody wrote a root-owned 0644 file");
    assert_eq!(fs::read(&root_file).unwrap(), b"root");
    assert!(m.stop().success());
}

#[test]
fn the_owner_given_at_mount_persists_and_can_change() {
    let dir = common::scratch();
    let m = start(&dir, &["--uid", "65534", "--gid", "65534"]);
    assert!(m.stop().success());
    // Without --uid/--gid the root keeps the owner it had.
    let m = start(&dir, &[]);
    let root = fs::metadata(&m.mnt).unwrap();
    assert_eq!((root.uid(), root.gid()), (65534, 65534));
    assert!(m.stop().success());
    let m = start(&dir, &["--uid", "0", "--gid", "0"]);
    let root = fs::metadata(&m.mnt).unwrap();
    assert_eq!((root.uid(), root.gid()), (0, 0));
    assert!(m.stop().success());
}
