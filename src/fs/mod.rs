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
//! Locking, outermost first: `gate` (shared by every change, exclusive for a checkpoint's cut),
//! then `namespace` (one mutating namespace operation at a time), then inode `io` locks, then
//! inode `state` locks, then the `inodes` map (creating a file inserts under its directory's
//! state lock, deleting one removes under its own, `touch_locked` reads it under one). Nothing
//! locks an inode while holding the map: code that walks it works on a copy (`inode_snapshot`).
//! Data operations take a single inode's locks and never wait for a second inode while holding
//! one, so a namespace operation may lock several inodes in any order.

pub mod attr;
mod bound;
mod cow;
mod cut;
mod data;
mod error;
mod fill;
mod first_reads;
mod inode;
mod namespace;
pub mod pageset;
mod prefetch;
mod remote;
mod size;
mod staging;
#[cfg(test)]
mod testing;
mod touched;

pub use attr::{Attr, FileKind};
pub use bound::{CacheBound, CacheUsage, Evictor, SteppedEvictor, CHUNK_PAGES};
pub use cut::{Cut, CutDirent, CutRun, CutShape, PathFilter, WalkMemo};
pub use error::{FsError, Result};
pub use first_reads::FIRST_READS_MAX;
pub use namespace::RenameMode;
pub use prefetch::Prefetched;
pub use remote::{Fetcher, RemoteSync, Restore, StopCause};
pub use staging::MEMORY_BUDGET as FROZEN_MEMORY_BUDGET;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use tracing::{info, warn};

use crate::cache::{CacheDir, MetaBatch, MetaStore};
use inode::{recovered_dirty, Inode, InodeState};
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

/// Points inside background work (eviction, fills, checkpoints) and requests where a test
/// may step in (see `Fs::set_step_hook`). No lock of the filesystem is held at any of them
/// (but at `FillSynced`, the file's own, and at `Entered` and `CutRecorded`, the file's and
/// the cut gate, shared), so the hook may call back into it:
/// that is how tests choose the interleavings of background work and requests, and replay
/// them exactly.
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
    /// A truncation down or a punched hole of `ino` is recorded and the records synced; the
    /// cache file is not cut yet. The file's locks are held: the hook must not touch `ino`.
    CutRecorded { ino: u64 },
    /// A write, truncation (an open with O_TRUNC too) or fallocate of `ino` has passed the
    /// stop check and holds the file's io lock, not yet its state: the hook must not touch
    /// `ino`'s bytes or size.
    Entered { ino: u64 },
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
    /// (see `cow.rs`). Locked after an inode's state, never before.
    frozen: Mutex<cow::Frozen>,
    /// Tests only: called at each [`Step`].
    step_hook: std::sync::OnceLock<StepHook>,
    /// The disk under the cache dir failed a write-back, or the cache dir's records a commit
    /// whose outcome is unknown or a sync: why (`stop_for_failed_flush`,
    /// `stop_for_failed_commit`).
    cache_failed: std::sync::OnceLock<String>,
    /// A failed flush stopped the mount, and the cache dir is marked failed: why
    /// (`stop_for_failed_flush`).
    cache_given_up: std::sync::OnceLock<String>,
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
        let mut absent: HashMap<u64, (PageSet, bool)> = loaded
            .absent
            .into_iter()
            .map(|(ino, set, exact)| (ino, (set, exact)))
            .collect();
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
            let (absent_pages, marks_exact) = absent.remove(&ino).unwrap_or((PageSet::new(), true));
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
                // Keys that are not the set's ranges one for one (a key per page of format
                // 1): the first change writes them all again.
                st.absent_unsure = !marks_exact;
                st.local_only = local_only.contains(&ino);
            }
            map.insert(ino, Arc::new(inode));
        }
        let frozen = Mutex::new(cow::Frozen::in_dir(cache.root()));
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
            cache_given_up: std::sync::OnceLock::new(),
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
        for (ino, bytes) in loaded.punches {
            fs.punch_again(ino, bytes)?;
            batch.delete_punch(ino);
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
    /// Called at unmount; a crash instead of it loses only what was never fsync'd. A stopped
    /// mount writes no times (its records take no commits, and after a failed commit memory
    /// may hold a change they do not): it syncs what was written and committed before, as
    /// far as the disk lets it.
    pub fn shutdown(&self) -> Result<()> {
        let inodes: Vec<Arc<Inode>> = match self.cache_failed() {
            true => Vec::new(),
            false => self.inodes.read().values().cloned().collect(),
        };
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
        self.sync_records(seq)?;
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
        self.sync_records(seq)?;
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
    /// A change that waited for the mutex while the one before it failed to commit finds
    /// the mount stopped (`stop_for_failed_commit`) before it changes anything.
    fn lock_namespace(&self) -> Result<(RwLockReadGuard<'_, ()>, MutexGuard<'_, ()>)> {
        let gate = self.enter()?;
        let namespace = self.namespace.lock();
        self.refuse_if_stopped()?;
        Ok((gate, namespace))
    }

    /// The gate, shared, for an operation that changes the filesystem; refused once fenced.
    fn enter(&self) -> Result<RwLockReadGuard<'_, ()>> {
        let gate = self.gate.read();
        self.refuse_if_stopped()?;
        Ok(gate)
    }

    /// Changes and fsyncs fail once another writer has taken the bucket over, or once the
    /// disk under the cache dir has failed a write-back, or a commit or sync of the records
    /// (`cache_failed`).
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
