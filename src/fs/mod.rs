//! The filesystem core: namespace, inodes, handles, attributes and POSIX rules.
//!
//! Knows nothing of FUSE: every operation takes plain arguments and returns
//! `Result<_, FsError>`, so the semantics are testable without a mount (see
//! `tests/reference_model.rs`). `crate::fuse` is a thin adapter on top.
//!
//! State lives in three places: inode attributes and dirty-page sets in memory (loaded at
//! open, written through to RocksDB on every change), directory entries in RocksDB only, and
//! file bytes in one sparse cache file per inode.
//!
//! Locking, outermost first: `gate` (shared by every change, exclusive for a checkpoint's
//! cut), then `namespace` (one mutating namespace operation at a time), then
//! the `inodes` map, then inode `io` locks, then inode `state` locks. Data operations take a
//! single inode's locks and never wait for a second inode while holding one, so a namespace
//! operation may lock several inodes in any order.

pub mod attr;
mod bound;
mod cut;
mod data;
mod error;
mod fill;
mod first_reads;
mod namespace;
pub mod pageset;
mod prefetch;
mod remote;
mod size;
mod staging;
mod touched;

pub use attr::{Attr, FileKind};
pub use bound::{CacheBound, CacheUsage, Evictor, SteppedEvictor, CHUNK_PAGES};
pub use cut::{Cut, CutDirent, CutRun, CutShape, PathFilter, WalkMemo};
pub use error::{FsError, Result};
pub use first_reads::FIRST_READS_MAX;
pub use namespace::RenameMode;
pub use prefetch::Prefetched;
pub use remote::{Fetcher, RemoteSync, Restore};
pub use staging::MEMORY_BUDGET as FROZEN_MEMORY_BUDGET;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use tracing::{info, warn};

use crate::cache::{CacheDir, MetaBatch, MetaStore};
use pageset::PageSet;

/// The inode number of the root directory, as FUSE expects.
pub const ROOT_INO: u64 = 1;
/// Dirty tracking granularity: Postgres' page size.
pub const PAGE_SIZE: u64 = 8192;
/// Largest file size accepted (16 TiB), far past Postgres' 1 GiB segments.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
const NAME_MAX: usize = 255;

/// Settings the core needs when it opens a cache dir.
#[derive(Clone, Debug, Default)]
pub struct FsOptions {
    /// Owner to give the root directory (None: leave as is; a new root gets the caller's).
    pub root_uid: Option<u32>,
    pub root_gid: Option<u32>,
}

/// Attribute changes requested by `setattr`.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub ctime: Option<SystemTime>,
}

impl SetAttr {
    /// Only atime, mtime or ctime change: nothing a crash must keep without an fsync.
    pub fn touches_only_times(&self) -> bool {
        self.mode.is_none() && self.uid.is_none() && self.gid.is_none() && self.size.is_none()
    }
}

/// Points inside background work (eviction, fills, checkpoints) where a test may step in
/// (see `Fs::set_step_hook`). No lock of the filesystem is held at any of them (but at
/// `FillSynced`, the file's own), so the hook may call back into it: that is how tests
/// choose the interleavings of background work and requests, and replay them exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The evictor has marked chunks of `ino` absent and let go of the file; the mark is not
    /// synced yet and the bytes are not punched out yet.
    EvictMarked { ino: u64 },
    /// A fill has fetched pages of `ino` from the bucket and not yet installed them.
    FillFetched { ino: u64 },
    /// A fill has written and flushed pages of `ino` into its cache file and not yet marked
    /// them present. The file's io and fill locks are held: the hook must not touch `ino`.
    FillSynced { ino: u64 },
    /// A checkpoint's cut is taken; nothing of it is uploaded yet.
    CutTaken { epoch: u64 },
    /// The upload has read a run of `ino` from its cache file without the inode's lock and
    /// has not yet taken the lock to see which of those pages are still the cut's.
    CutRunRead { ino: u64 },
    /// A checkpoint's segments are uploaded; its manifest is not committed yet.
    Uploaded { epoch: u64 },
    /// A checkpoint's manifest is committed; its pages are not marked clean yet.
    Committed { epoch: u64 },
    /// A committed checkpoint's pages are about to be marked clean: the flush of the cache
    /// files has ended, and succeeded (a cut with no runs to upload has none).
    MarkingClean { epoch: u64 },
    /// A committed checkpoint has marked the pages of `ino` it took clean and let go of the
    /// file's lock.
    MarkedClean { ino: u64 },
}

/// What `Fs::set_step_hook` installs.
pub type StepHook = Box<dyn Fn(&Step) + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

impl SetTime {
    fn resolve(self, now: SystemTime) -> SystemTime {
        match self {
            SetTime::Now => now,
            SetTime::At(t) => t,
        }
    }
}

/// Who is asking, for ownership of new inodes.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Filesystem statistics for statfs, taken from the disk under the cache dir.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileKind,
}

struct InodeState {
    attr: Attr,
    /// Pages changed since they were last uploaded (all of them, until a bucket exists).
    dirty: PageSet,
    /// Pages a checkpoint's cut took and is uploading: no longer dirty, not yet in the
    /// bucket. Neither dirty nor pending pages may be evicted.
    pending: PageSet,
    /// Pages whose dirty marks RocksDB holds, committed (the inode's next fsync syncs them):
    /// every dirty and pending page (but the pending ones of a `mark_clean` whose commit
    /// failed: the bucket holds those), and pages ahead of a sequential writer
    /// (`put_dirty_marks`). RocksDB may hold more, never less, unless `dirty_unsure` is set
    /// (then the next batch marks again). A write whose pages are all marked records nothing.
    /// A crash recovers the marked pages that are neither absent nor past the end as dirty
    /// (`Fs::new`); the next `mark_clean` drops the marks of pages that are not dirty, but
    /// for the writer's (`kept_marks`).
    marked: PageSet,
    /// The page the last write ended in: a writer that fills a page in several writes (the
    /// WAL, one commit after another) writes it again next, and its mark outlives the
    /// checkpoints in between (`kept_marks`).
    last_page: u64,
    /// Where the last marks ahead of a writer end, and how many pages they added: a writer
    /// that reaches that end marks twice as many next (`put_dirty_marks`), although the
    /// pages behind it are clean by then and their marks gone.
    ahead_end: u64,
    ahead_len: u64,
    /// Pending pages whose bytes the upload has yet to read from the cache file, where they
    /// are still as the cut took them. A change to one copies it out first (`Fs::freeze`).
    cow: PageSet,
    /// A batch of this inode's failed to commit (it may or may not be in RocksDB): the next
    /// change of `absent` writes all its marks again (`change_absent`).
    absent_unsure: bool,
    /// A batch of this inode's from a write, truncation, fallocate or setattr failed to
    /// commit: memory may hold pages dirty that RocksDB does not. The next batch that marks
    /// pages dirty marks all of them (`put_dirty_marks`).
    dirty_unsure: bool,
    /// Pages whose bytes are in the bucket but not in the cache file (after a restore, or
    /// evicted).
    absent: PageSet,
    /// Absent pages a fill is fetching now; other fills of them wait for it (`fill_cv`).
    fetching: PageSet,
    /// Pages of `fetching` that became present some other way (a write, a truncation) and
    /// were evicted again while the fill fetched: the bucket may hold newer bytes than the
    /// fill's, which installs none of them. Cleared with `fetching` when the fill ends.
    /// (Only these: an eviction of other pages of the file leaves a fill's bytes good.)
    fetch_stale: PageSet,
    /// The cache file may hold bytes past the size: a write there failed (or its commit
    /// did, and the size stayed), or the cache file was longer than the size when this
    /// mount first opened it (a crash kept bytes whose new size was never recorded). What
    /// grows the file next cuts them off first (`cut_past_end`).
    tail_unsure: bool,
    /// Fills waiting for another's fetch of this file: a prefetch batch installs such files
    /// first.
    waiting: u32,
    /// The last cut found this file only under `--local-only` paths and dropped its dirty
    /// marks (persisted): the bucket lacks its changes, so none of its bytes may be evicted,
    /// and the cut that finds it outside them again takes the whole file.
    local_only: bool,
    /// The lowest page count the file was truncated to since the last cut, if it shrank.
    trunc: Option<u64>,
    /// The truncation a checkpoint still uploading took from `trunc`.
    trunc_pending: Option<u64>,
    /// Open file handles; an unlinked inode lives until this drops to zero.
    open_count: u32,
    /// The cache file, opened on first I/O and closed with the last handle.
    file: Option<Arc<File>>,
    /// The `write_gen` when `file` was opened: every change of a later generation went
    /// through it (`InodeState::watched`).
    file_gen: u64,
    /// Bumped after every change to the cache file's bytes or length.
    write_gen: u64,
    /// The `write_gen` that the last completed sync of the cache file covered.
    synced_gen: u64,
    /// RocksDB sequence number of this inode's last persisted change.
    meta_seq: u64,
    /// atime/mtime/ctime changed in memory only (write paths do not persist times on every
    /// call; fsync, release and unmount do).
    times_unpersisted: bool,
    /// The cache file was created since the last fsync: its directory entry needs a sync.
    new_cache_file: bool,
    /// Sequential-read detection for fetches from the bucket: the page a sequential reader
    /// misses next, and the readahead window (pages) its next fetch gets.
    fetch_next: u64,
    fetch_window: u64,
}

impl InodeState {
    /// True when the cache file's descriptor has been open since the last sync, so that
    /// every change not yet synced went through it: its fdatasync then reports a failed
    /// write-back of any of them. A descriptor opened later may not: the error of a write-back
    /// that failed while none was open can go with the kernel's inode, and only the
    /// filesystem's own count (syncfs) keeps it.
    fn watched(&self) -> bool {
        self.file.is_some() && self.file_gen <= self.synced_gen
    }

    /// Changes the pages only the bucket holds with `change`, which touches none outside
    /// `pages`, and records the result in `batch` as RocksDB keeps it: one key per range
    /// (`MetaBatch::put_absent`), so the ranges the change merged, split or shortened are
    /// written again whole.
    fn change_absent(
        &mut self,
        batch: &mut MetaBatch<'_>,
        pages: std::ops::Range<u64>,
        change: impl FnOnce(&mut PageSet),
    ) {
        // After a failed commit RocksDB may hold the marks from before it, which need not lie
        // within the set's ranges any more: then every mark of the inode is written again.
        let whole = std::mem::take(&mut self.absent_unsure);
        let before = self.absent.span_touching(pages.clone());
        change(&mut self.absent);
        let after = self.absent.span_touching(pages);
        let span = match whole {
            true => 0..u64::MAX,
            false => before.start.min(after.start)..before.end.max(after.end),
        };
        batch.rewrite_absent(self.attr.ino, span.clone(), self.absent.overlapping(span));
    }

    /// The absent pages of `pages` that no fill is fetching yet, marked as being fetched by
    /// the caller, who must unmark them when done (`InFlight`).
    fn claim_absent(&mut self, pages: std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
        let mut missing = PageSet::new();
        for r in self.absent.overlapping(pages.clone()) {
            missing.insert(r);
        }
        for r in self.fetching.overlapping(pages) {
            missing.remove(r);
        }
        let missing: Vec<std::ops::Range<u64>> = missing.iter().collect();
        for r in &missing {
            self.fetching.insert(r.clone());
        }
        missing
    }

    /// Records in `batch` dirty marks covering `added`, pages just made dirty in memory.
    /// Marks may cover more than the dirty pages, never less: a crash recovers every marked
    /// page that is neither absent nor past the end as dirty, and uploads its bytes again,
    /// which are the cache file's own (`Fs::new`). So a page marked already needs nothing,
    /// and a write that continues a marked run marks ahead of itself, as far again as the
    /// run is long (twice the last marks ahead, when it reached their end), up to
    /// `MARK_AHEAD_PAGES`: a sequential writer (the WAL) then adds a mark, and its fsync a
    /// sync of the log, once per run of pages instead of once per page. Checkpoints leave
    /// its marks in place (`kept_marks`), so under `--durability remote`, where each commit
    /// is a checkpoint, that holds as well.
    ///
    /// After a failed commit memory may hold pages dirty that RocksDB does not, and marks it
    /// lacks (a write of them again adds nothing new): then every dirty and pending page is
    /// marked again, and only those count as marked, or a crash would forget pages written
    /// and fsync'd since. (Pending ones too: a failed checkpoint puts them back as dirty,
    /// trusting RocksDB to say so, `Fs::untake`.) That is a key per page, up to
    /// `--max-dirty`'s worth, once after each failure.
    fn put_dirty_marks(
        &mut self,
        batch: &mut MetaBatch<'_>,
        added: &[std::ops::Range<u64>],
        epoch: u64,
    ) {
        let ino = self.attr.ino;
        if std::mem::take(&mut self.dirty_unsure) {
            self.marked = PageSet::new();
            let all: Vec<_> = self.dirty.iter().chain(self.pending.iter()).collect();
            for r in all {
                batch.put_dirty(ino, r.clone(), epoch);
                self.marked.insert(r);
            }
            return;
        }
        // Not past the end: a write there commits the new size anyway.
        let end = self.attr.size.div_ceil(PAGE_SIZE);
        for r in added {
            let mut gaps = PageSet::new();
            gaps.insert(r.clone());
            for gap in gaps.difference(&self.marked).iter() {
                let ahead = match gap.start.checked_sub(1) {
                    Some(before) if self.marked.contains(before) => {
                        let run = self.marked.span_touching(before..gap.start);
                        let again = match gap.start == self.ahead_end {
                            true => 2 * self.ahead_len,
                            false => 0,
                        };
                        (gap.start - run.start).max(again).min(MARK_AHEAD_PAGES)
                    }
                    _ => 0,
                };
                let to = (gap.end + ahead).min(end).max(gap.end);
                if to > gap.end {
                    (self.ahead_end, self.ahead_len) = (to, to - gap.end);
                }
                for new in self.marked.insert(gap.start..to) {
                    batch.put_dirty(ino, new, epoch);
                }
            }
        }
    }

    /// The marks `mark_clean` keeps although their pages are clean: the page the last write
    /// ended in and those a writer may have marked ahead of it. A writer goes on there, and
    /// each of its pages would otherwise be marked again after every checkpoint (under
    /// `--durability remote`, every commit). A crash recovers them as dirty and uploads them
    /// again: at most `MARK_AHEAD_PAGES + 1` pages a file.
    fn kept_marks(&self) -> std::ops::Range<u64> {
        self.last_page..self.last_page + MARK_AHEAD_PAGES + 1
    }

    /// Whether `added` (pages just made dirty) is marked already, so that a change that
    /// records nothing else needs no batch (`put_dirty_marks`).
    fn marks_cover(&self, added: &[std::ops::Range<u64>]) -> bool {
        !self.dirty_unsure && added.iter().all(|r| self.marked.covers(r.clone()))
    }
}

/// The most pages a write marks dirty ahead of itself (`InodeState::put_dirty_marks`): 512
/// KiB, which a crash may upload again although unchanged.
const MARK_AHEAD_PAGES: u64 = 64;

struct Inode {
    /// Serialises changes to the cache file's length (truncate, fallocate, punch) against
    /// reads and writes, which take it shared (all but a write past the end while the cache
    /// file may hold bytes there, `InodeState::tail_unsure`).
    io: RwLock<()>,
    state: touched::StateLock,
    /// Held by the one thread syncing this inode's cache file through its descriptor (group
    /// commit, `Fs::sync_data_to`), and by a fill's fdatasync: a failed write-back is told
    /// to one of them, who stops the mount before letting go.
    sync_lock: Mutex<()>,
    /// Held while a fill installs fetched pages, and by a write to a file with absent
    /// pages from its cache write to clearing their marks: whichever comes second sees what
    /// the other did. Never held across a fetch.
    fill_lock: Mutex<()>,
    /// Signalled when a fill of this inode ends (see `InodeState::fetching`).
    fill_cv: parking_lot::Condvar,
}

pub struct Fs {
    cache: CacheDir,
    meta: MetaStore,
    inodes: touched::InodeMap,
    /// The inodes changed since the last cut took them (`touched.rs`).
    touched: Arc<touched::Touched>,
    /// Held shared by every operation that changes the filesystem, exclusively by a
    /// checkpoint's cut, so that a cut sees no operation half done. Outermost of all locks.
    gate: RwLock<()>,
    namespace: Mutex<()>,
    next_ino: AtomicU64,
    next_fh: AtomicU64,
    dir_handles: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    /// The epoch that new dirty pages belong to (the checkpointer advances it).
    epoch: AtomicU64,
    /// Fetches pages that are only in the bucket; set once a bucket is attached.
    fetcher: std::sync::OnceLock<Arc<dyn Fetcher>>,
    /// With `--durability remote`: what fsync asks for a checkpoint as it begins, and waits
    /// on once synced locally.
    remote_sync: std::sync::OnceLock<std::sync::Weak<dyn RemoteSync>>,
    /// Set when another writer took over the bucket: every change fails with EROFS.
    fenced: std::sync::atomic::AtomicBool,
    stats: FsStats,
    /// Dirty and pending pages of every file, kept as they change (see `bound.rs`).
    unsafe_pages: AtomicU64,
    /// Unix ms of the oldest change not yet in the bucket: in the current epoch, and in the
    /// epoch a checkpoint is uploading (0: none). Their minimum is the RPO.
    oldest_change_ms: AtomicU64,
    oldest_pending_ms: AtomicU64,
    /// `--max-dirty` back-pressure and `--cache-size` eviction.
    pressure: bound::Pressure,
    bound: std::sync::OnceLock<Arc<bound::CacheBound>>,
    /// The bytes of the cut being uploaded that writers changed before the upload read them
    /// (see `cut.rs`). Locked after an inode's state, never before.
    frozen: Mutex<cut::Frozen>,
    /// Tests only: called at each [`Step`].
    step_hook: std::sync::OnceLock<StepHook>,
    /// The disk under the cache dir failed a write-back: why (`stop_for_failed_flush`).
    cache_failed: std::sync::OnceLock<String>,
    /// Tests only: every flush of the cache files fails, as on a disk whose write-back
    /// failed.
    flush_fails: std::sync::atomic::AtomicBool,
    /// Tests only: every sync of a cache file's shard directory fails.
    dir_sync_fails: std::sync::atomic::AtomicBool,
    /// Held across each syncfs of the cache filesystem (`sync_cache_files`): the number of
    /// the last one that succeeded. `syncfs_begun` counts those begun.
    syncfs_lock: Mutex<u64>,
    syncfs_begun: AtomicU64,
    /// The chunks read first since the mount began, for the next cold start.
    first_reads: first_reads::FirstReads,
}

/// Counters since the mount began, for the log at unmount and for metrics.
#[derive(Debug, Default)]
pub struct FsStats {
    /// Bytes that WRITE requests brought (after the kernel's own write-back merging).
    pub bytes_written: AtomicU64,
    /// Flushes of the whole cache filesystem that succeeded (`Fs::sync_cache_files`: a
    /// checkpoint's of many files, an fsync's of a file no open descriptor watched, the one at
    /// unmount).
    pub cache_flushes: AtomicU64,
    /// fdatasyncs of one cache file that succeeded (`Fs::sync_data_to`: an fsync's, or a
    /// checkpoint's of a few files).
    pub cache_file_syncs: AtomicU64,
    /// READ requests served from the cache file alone, and their bytes.
    pub read_hits: AtomicU64,
    pub read_hit_bytes: AtomicU64,
    /// READ requests that first had to fetch from the bucket.
    pub read_misses: AtomicU64,
    /// Bytes fetched from the bucket into cache files (reads, readahead, prefetch, prewarm).
    pub fetched_bytes: AtomicU64,
    /// Cache chunks evicted (punched out of their cache file) and the pages they freed.
    pub evictions: AtomicU64,
    pub evicted_pages: AtomicU64,
    /// Writes that waited for the checkpointer at `--max-dirty`, and how long in all.
    pub throttled_writes: AtomicU64,
    pub throttled_micros: AtomicU64,
}

impl Fs {
    /// Opens the filesystem stored in `cache`, recovering from an unclean stop: inodes that
    /// were unlinked while open are deleted, cache files without an inode are removed, and
    /// everything recovered is made durable before the first request.
    pub fn new(cache: CacheDir, options: &FsOptions) -> Result<Fs> {
        let meta = MetaStore::open(&cache.meta_path())?;
        if let Err(e) = cache.sync_all_data() {
            // A write-back an earlier process left failed: reported to this first flush only.
            let why = e.to_string();
            if let Err(e) = cache.mark_failed(&why) {
                tracing::error!(error = %e, "could not mark the cache dir as failed");
            }
            return Err(crate::cache::CacheError::WriteBackFailed {
                path: cache.root().to_owned(),
                why,
            }
            .into());
        }
        let loaded = meta.load()?;
        let mut dirty: HashMap<u64, PageSet> = loaded.dirty.into_iter().collect();
        let truncs: HashMap<u64, u64> = loaded.truncs.into_iter().collect();
        let mut absent: HashMap<u64, PageSet> = loaded.absent.into_iter().collect();
        let local_only: std::collections::HashSet<u64> = loaded.local_only.into_iter().collect();
        let touched = Arc::new(touched::Touched::default());
        let mut map = HashMap::with_capacity(loaded.inodes.len());
        let mut max_ino = ROOT_INO;
        let mut dirty_total = 0;
        let mut orphans = Vec::new();
        let mut stale_marks = Vec::new();
        for attr in loaded.inodes {
            max_ino = max_ino.max(attr.ino);
            if attr.nlink == 0 {
                orphans.push(attr.ino);
                continue;
            }
            let ino = attr.ino;
            let marks = dirty.remove(&ino).unwrap_or_default();
            let absent_pages = absent.remove(&ino).unwrap_or_default();
            let pages = recovered_dirty(&marks, &absent_pages, attr.size);
            // Marks ahead of a writer that reached no further, over absent pages (or past
            // the end, after a lost batch).
            if pages.len() < marks.len() {
                stale_marks.push((ino, marks.difference(&pages)));
            }
            dirty_total += pages.len();
            let inode = Inode::new(attr, pages, &touched);
            {
                let mut st = inode.state.lock();
                st.trunc = truncs.get(&ino).copied();
                st.absent = absent_pages;
                st.local_only = local_only.contains(&ino);
            }
            map.insert(ino, Arc::new(inode));
        }
        let frozen = Mutex::new(cut::Frozen::in_dir(cache.root()));
        let fs = Fs {
            next_ino: AtomicU64::new(loaded.next_ino.unwrap_or(max_ino + 1).max(max_ino + 1)),
            epoch: AtomicU64::new(loaded.epoch.unwrap_or(1)),
            cache,
            meta,
            inodes: touched::InodeMap::new(map),
            touched,
            gate: RwLock::new(()),
            namespace: Mutex::new(()),
            next_fh: AtomicU64::new(1),
            dir_handles: Mutex::new(HashMap::new()),
            fetcher: std::sync::OnceLock::new(),
            remote_sync: std::sync::OnceLock::new(),
            fenced: std::sync::atomic::AtomicBool::new(false),
            stats: FsStats::default(),
            unsafe_pages: AtomicU64::new(dirty_total),
            // Dirty pages from before this mount: their age is unknown, so count from now.
            oldest_change_ms: AtomicU64::new(if dirty_total > 0 { unix_ms() } else { 0 }),
            oldest_pending_ms: AtomicU64::new(0),
            pressure: bound::Pressure::default(),
            bound: std::sync::OnceLock::new(),
            frozen,
            step_hook: std::sync::OnceLock::new(),
            cache_failed: std::sync::OnceLock::new(),
            flush_fails: std::sync::atomic::AtomicBool::new(false),
            dir_sync_fails: std::sync::atomic::AtomicBool::new(false),
            syncfs_lock: Mutex::new(0),
            syncfs_begun: AtomicU64::new(0),
            first_reads: Default::default(),
        };
        let mut batch = fs.meta.batch();
        for &ino in &orphans {
            batch.delete_inode(ino);
        }
        for (ino, stale) in &stale_marks {
            for r in stale.iter() {
                batch.delete_dirty(*ino, r);
            }
        }
        if loaded.epoch.is_none() {
            batch.put_epoch(fs.epoch.load(Ordering::Relaxed));
        }
        let root_exists = fs.inodes.read().contains_key(&ROOT_INO);
        if !root_exists {
            let now = SystemTime::now();
            let caller = current_caller();
            let mut root = fs.new_attr(ROOT_INO, FileKind::Dir, 0o755, caller, now);
            root.parent = ROOT_INO;
            root.nlink = 2;
            batch.put_inode(&root);
            fs.inodes.write().insert(
                ROOT_INO,
                Arc::new(Inode::new(root, PageSet::new(), &fs.touched)),
            );
        }
        fs.apply_root_owner(&mut batch, options);
        let seq = fs.meta.commit(batch)?;
        fs.meta.sync_to(seq)?;
        // Everything recovered is durable: an fsync that records nothing new syncs nothing
        // (a write into pages a crash left marked records nothing).
        for inode in fs.inode_snapshot().values() {
            inode.state.lock_unnoted().meta_seq = seq;
        }
        for ino in orphans {
            info!(
                ino,
                "removed inode that was unlinked while open before an unclean stop"
            );
            fs.remove_cache_file(ino);
        }
        fs.sweep_cache_files()?;
        Ok(fs)
    }

    fn apply_root_owner(&self, batch: &mut MetaBatch<'_>, options: &FsOptions) {
        if options.root_uid.is_none() && options.root_gid.is_none() {
            return;
        }
        let root = self.inode(ROOT_INO).expect("root was created above");
        let mut st = root.state.lock();
        st.attr.uid = options.root_uid.unwrap_or(st.attr.uid);
        st.attr.gid = options.root_gid.unwrap_or(st.attr.gid);
        batch.put_inode(&st.attr);
    }

    /// Removes cache files left behind by inodes deleted just before a crash.
    fn sweep_cache_files(&self) -> Result<()> {
        let present = self.cache.cached_inodes()?;
        let inodes = self.inodes.read();
        for ino in present {
            if !inodes.contains_key(&ino) {
                warn!(ino, "removing cache file of a deleted inode");
                self.remove_cache_file(ino);
            }
        }
        Ok(())
    }

    /// Makes everything durable: cache file bytes, times held in memory, the metadata WAL.
    /// Called at unmount; a crash instead of it loses only what was never fsync'd.
    pub fn shutdown(&self) -> Result<()> {
        let inodes: Vec<Arc<Inode>> = self.inodes.read().values().cloned().collect();
        let mut batch = self.meta.batch();
        for inode in inodes {
            let mut st = inode.state.lock();
            if st.times_unpersisted {
                batch.put_inode(&st.attr);
                st.times_unpersisted = false;
            }
        }
        let seq = self.meta.commit(batch)?;
        self.sync_cache_files()?;
        self.meta.sync_to(seq)?;
        Ok(())
    }

    /// Installs a hook called at every [`Step`] of background work, for tests that choose
    /// interleavings. Set once; unset, a step costs one load.
    pub fn set_step_hook(&self, hook: StepHook) {
        let _ = self.step_hook.set(hook);
    }

    /// Tests only: from now on every flush of the cache files (syncfs or a file's
    /// fdatasync) fails (or, `false`, works again), as it does when the disk under the cache
    /// dir fails a write-back.
    pub fn set_flush_fails(&self, fails: bool) {
        self.flush_fails.store(fails, Ordering::Release);
    }

    /// Tests only: from now on every sync of a cache file's shard directory fails (or,
    /// `false`, works again), while the files' own flushes work: a new cache file's entry
    /// that did not reach the disk.
    pub fn set_dir_sync_fails(&self, fails: bool) {
        self.dir_sync_fails.store(fails, Ordering::Release);
    }

    /// Background work reached `step`.
    pub(crate) fn step(&self, step: Step) {
        if let Some(hook) = self.step_hook.get() {
            hook(&step);
        }
    }

    /// Where the bytes of file `ino` live in the cache dir (for tests and diagnostics).
    pub fn cache_file_path(&self, ino: u64) -> std::path::PathBuf {
        self.cache.data_path(ino)
    }

    pub fn stats(&self) -> &FsStats {
        &self.stats
    }

    /// How many times the cache dir's log was synced to the disk since the mount began.
    pub fn log_syncs(&self) -> u64 {
        self.meta.syncs()
    }

    /// The epoch new changes belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn root(&self) -> &Path {
        self.cache.root()
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        Ok(self.inode(ino)?.state.lock().attr.clone())
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        check_name(name)?;
        self.require_dir(parent)?;
        let entry = self
            .meta
            .get_dirent(parent, name)?
            .ok_or(FsError::NotFound)?;
        self.getattr(entry.ino)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        let st = inode.state.lock();
        if st.attr.kind != FileKind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(st.attr.target.clone())
    }

    /// Snapshots a directory's entries (with `.` and `..`) for a readdir stream: the listing a
    /// reader pages through does not shift under it when entries are added or removed.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let parent = {
            let inode = self.inode(ino)?;
            let st = inode.state.lock();
            if st.attr.kind != FileKind::Dir {
                return Err(FsError::NotDir);
            }
            st.attr.parent
        };
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino,
                kind: FileKind::Dir,
            },
            DirEntry {
                name: "..".into(),
                ino: parent,
                kind: FileKind::Dir,
            },
        ];
        entries.extend(self.meta.list_dir(ino)?.into_iter().map(|d| DirEntry {
            name: d.name,
            ino: d.ino,
            kind: d.kind,
        }));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dir_handles.lock().insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// The entries of an open directory handle from position `offset` on.
    pub fn readdir(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
        self.dir_handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::Invalid("unknown directory handle"))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dir_handles.lock().remove(&fh);
    }

    /// Makes the directory's entries durable. All namespace changes share one metadata WAL,
    /// so this syncs it through the last of them.
    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        self.require_dir(ino)?;
        self.refuse_if_stopped()?;
        // Names never lag (`MetaBatch::may_lag`): what the checkpoints record for themselves
        // need not be flushed for them.
        let seq = self.meta.must_not_lag_seq();
        let remote = self.begin_remote();
        // After the wait: a remote checkpoint's sync of the log before its PUT covers `seq`
        // (as in `fsync`).
        self.finish_remote(remote)?;
        self.meta.sync_to(seq)?;
        Ok(())
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let path = std::ffi::CString::new(self.cache.root().as_os_str().as_encoded_bytes())
            .map_err(|_| FsError::Invalid("cache dir path has a NUL byte"))?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(FsError::io("statfs cache dir")(
                std::io::Error::last_os_error(),
            ));
        }
        let frsize = st.f_frsize.max(1);
        Ok(StatFs {
            blocks: st.f_blocks * frsize / 4096,
            bfree: st.f_bfree * frsize / 4096,
            bavail: st.f_bavail * frsize / 4096,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: 4096,
            namelen: NAME_MAX as u32,
        })
    }

    /// access(2): checks `mask` (R_OK/W_OK/X_OK bits) against the mode for the caller. With
    /// the `default_permissions` mount option the kernel does this itself; this answers
    /// callers that do ask.
    pub fn access(&self, ino: u64, caller: Caller, mask: i32) -> Result<()> {
        let attr = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        let perm = u32::from(attr.perm);
        let granted = if caller.uid == 0 {
            let any_x = perm & 0o111 != 0 || attr.kind == FileKind::Dir;
            (libc::R_OK | libc::W_OK) | if any_x { libc::X_OK } else { 0 }
        } else if caller.uid == attr.uid {
            ((perm >> 6) & 7) as i32
        } else if caller.gid == attr.gid {
            ((perm >> 3) & 7) as i32
        } else {
            (perm & 7) as i32
        };
        if mask & !granted != 0 {
            return Err(FsError::Access);
        }
        Ok(())
    }

    /// The locks a namespace change holds: the cut gate (shared), then the namespace mutex.
    fn lock_namespace(&self) -> Result<(RwLockReadGuard<'_, ()>, MutexGuard<'_, ()>)> {
        let gate = self.enter()?;
        Ok((gate, self.namespace.lock()))
    }

    /// The gate, shared, for an operation that changes the filesystem; refused once fenced.
    fn enter(&self) -> Result<RwLockReadGuard<'_, ()>> {
        let gate = self.gate.read();
        self.refuse_if_stopped()?;
        Ok(gate)
    }

    /// Changes and fsyncs fail once another writer has taken the bucket over, or once the
    /// disk under the cache dir has failed a write-back.
    fn refuse_if_stopped(&self) -> Result<()> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(FsError::Fenced);
        }
        if self.cache_failed.get().is_some() {
            return Err(FsError::CacheFailed);
        }
        Ok(())
    }

    fn inode(&self, ino: u64) -> Result<Arc<Inode>> {
        self.inodes
            .read()
            .get(&ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    fn require_dir(&self, ino: u64) -> Result<Arc<Inode>> {
        let inode = self.inode(ino)?;
        if inode.state.lock().attr.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(inode)
    }

    fn new_attr(
        &self,
        ino: u64,
        kind: FileKind,
        perm: u16,
        caller: Caller,
        now: SystemTime,
    ) -> Attr {
        Attr {
            ino,
            kind,
            perm,
            uid: caller.uid,
            gid: caller.gid,
            size: 0,
            nlink: 1,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: 0,
            target: Vec::new(),
        }
    }

    fn remove_cache_file(&self, ino: u64) {
        let path = self.cache.data_path(ino);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Harmless: the next mount sweeps it. Worth a line, not an error.
            Err(e) => warn!(ino, path = %path.display(), error = %e, "remove cache file"),
        }
    }
}

impl Inode {
    fn new(attr: Attr, dirty: PageSet, touched: &Arc<touched::Touched>) -> Inode {
        Inode {
            io: RwLock::new(()),
            state: touched::StateLock::new(
                InodeState {
                    attr,
                    marked: dirty.clone(),
                    last_page: 0,
                    ahead_end: 0,
                    ahead_len: 0,
                    dirty,
                    pending: PageSet::new(),
                    cow: PageSet::new(),
                    absent_unsure: false,
                    dirty_unsure: false,
                    absent: PageSet::new(),
                    fetch_stale: PageSet::new(),
                    fetching: PageSet::new(),
                    waiting: 0,
                    tail_unsure: false,
                    local_only: false,
                    trunc: None,
                    trunc_pending: None,
                    open_count: 0,
                    file: None,
                    file_gen: 0,
                    write_gen: 0,
                    synced_gen: 0,
                    meta_seq: 0,
                    times_unpersisted: false,
                    new_cache_file: false,
                    fetch_next: 0,
                    fetch_window: 0,
                },
                touched,
            ),
            sync_lock: Mutex::new(()),
            fill_lock: Mutex::new(()),
            fill_cv: parking_lot::Condvar::new(),
        }
    }
}

/// The pages a crash leaves dirty: those marked (`InodeState::marked`) that hold bytes of
/// the file in the cache file. An absent page's bytes are the bucket's, and the cache file
/// has none of them to upload; a page past the end has no bytes. (A mark ahead of a writer
/// may cover both; a dirty page is never absent.)
fn recovered_dirty(marks: &PageSet, absent: &PageSet, size: u64) -> PageSet {
    let mut pages = marks.clone();
    pages.truncate(size.div_ceil(PAGE_SIZE));
    for r in absent.iter() {
        pages.remove(r);
    }
    pages
}

fn check_name(name: &OsStr) -> Result<()> {
    let len = name.len();
    if len > NAME_MAX {
        return Err(FsError::NameTooLong(len));
    }
    if len == 0 || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn current_caller() -> Caller {
    // SAFETY: getuid/getgid cannot fail.
    unsafe {
        Caller {
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    }
}
