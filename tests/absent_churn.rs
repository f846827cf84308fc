//! A cache dir whose marks changed many times opens again in bounded memory: absent marks
//! over one large run of absent pages (writes of whole pages over pages bucketfs evicted, as
//! Postgres writes back buffers on a database larger than `--cache-size`), dirty marks past
//! the ends of a file cut down again and again.
//!
//! A test binary of its own, its tests one at a time (`ONE_AT_A_TIME`): the process's peak
//! resident memory is one test's alone.

use bucketfs::fs::{CHUNK_PAGES, PAGE_SIZE};

mod common;
use common::engine::*;

/// Held by each test for all it does.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The process's peak resident memory, in MiB (`VmHWM`).
fn peak_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib / 1024
}

/// Resets the process's peak resident memory to what it holds now (Linux 4.0 on).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}

/// RocksDB's flush, which a start runs on the log it recovers (and a mount whenever its
/// memtables fill), took gigabytes and minutes when every change of absent marks was a range
/// deletion over the run of absent pages it touched (6 GB more at the peak here, 50 s). Each
/// write lands in the middle of a run of absent pages that spans most of the file (the
/// evictions between put the pages back), and commits its change of marks on its own, as a
/// write-back of an evicted page does.
#[test]
fn a_start_after_many_writes_over_evicted_pages_stays_within_its_memory() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const CHUNKS: u64 = 1024;
    const WRITES: u64 = 8000;
    let pages = CHUNKS * CHUNK_PAGES;
    let dirs = Dirs::on_disk();
    let e = Engine::open(&dirs.cache(9), &dirs.bucket(), Options::default());
    let ino = e.create("data");
    let mut want = Vec::with_capacity((pages * PAGE_SIZE) as usize);
    for c in 0..CHUNKS {
        let bytes = pattern(c as u8, CHUNK_PAGES as usize);
        e.write(ino, c * CHUNK_PAGES * PAGE_SIZE, &bytes);
        want.extend_from_slice(&bytes);
    }
    e.checkpoint();
    e.crash();
    // Every page absent: only the bucket has the file.
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), Options::default());
    let ino = e.ino("data");
    let evictor =
        e.fs.bound_cache_stepped(64 * CHUNK_PAGES * PAGE_SIZE)
            .expect("bound the cache");
    let mut written = Vec::new();
    e.fs.open(ino, libc::O_RDWR).expect("open");
    reset_peak();
    let before = peak_mib();
    for i in 0..WRITES {
        let page = (i * 7919) % pages;
        let bytes = pattern(200 + (i % 50) as u8, 1);
        e.fs.write(ino, page * PAGE_SIZE, &bytes)
            .expect("write over an evicted page");
        let at = (page * PAGE_SIZE) as usize;
        want[at..at + PAGE_SIZE as usize].copy_from_slice(&bytes);
        written.push(page / CHUNK_PAGES);
        if written.len() == 64 {
            // In the bucket, then out of the cache: the written pages are absent again.
            e.checkpoint();
            for c in written.drain(..) {
                evictor.evict_now(&e.fs, ino, c).expect("evict");
            }
        }
    }
    start_within_memory(&dirs, e, ino, before, "the writes", &want);
}

/// The same of dirty marks: a truncation deleted the marks past the new end with one range
/// deletion, and a file written past its end and cut down again, each time to another size,
/// took a start 1,218 MiB more at the peak after these 12,000 truncations (by hand, 2 GB and
/// 13 s after 20,000; 5 MiB and 80 ms now).
#[test]
fn a_start_after_many_truncations_to_different_sizes_stays_within_its_memory() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const CUTS: u64 = 12_000;
    const SIZES: u64 = 1000;
    // (In memory: each truncation syncs the records, and what is measured is RocksDB's.)
    let dirs = Dirs::in_memory();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), Options::default());
    let ino = e.create("data");
    e.fs.open(ino, libc::O_RDWR).expect("open");
    reset_peak();
    let before = peak_mib();
    for i in 0..CUTS {
        // A page past every size it is cut to, then a size of its own.
        let page = SIZES + (i * 7919) % 50_000;
        e.fs.write(ino, page * PAGE_SIZE, &pattern(i as u8, 1))
            .expect("write");
        e.truncate(ino, (i % SIZES) * PAGE_SIZE);
    }
    let last = pattern(7, 3);
    e.write(ino, 0, &last);
    let mut want = last;
    want.resize((((CUTS - 1) % SIZES) * PAGE_SIZE) as usize, 0);
    start_within_memory(&dirs, e, ino, before, "the truncations", &want);
}

/// Crashes `e` after an fsync of `ino` ("data"), starts again on its cache dir, and checks
/// that the peak resident memory grew by less than 256 MiB since `before`, over `what` and
/// the start, and that the file reads back as `want`.
fn start_within_memory(dirs: &Dirs, e: Engine, ino: u64, before: u64, what: &str, want: &[u8]) {
    e.fs.fsync(ino, false).expect("fsync");
    e.crash();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), Options::default());
    let grew = peak_mib().saturating_sub(before);
    assert!(
        grew < 256,
        "the peak resident memory grew by {grew} MiB over {what} and the start after them"
    );
    let ino = e.ino("data");
    assert_same("the file after the start", &e.read_all(ino), want);
}
