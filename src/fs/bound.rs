//! Keeping the cache dir within bounds: `--max-dirty` back-pressure and `--cache-size`
//! eviction.
//!
//! Only bytes the bucket holds may leave the cache dir. A page is *evictable* when it is
//! neither dirty (changed since its last upload) nor pending (taken by the cut of a checkpoint
//! still uploading), not cut off by a truncation the bucket has not seen yet, its file is one
//! the bucket's latest checkpoint knows and no `--local-only` path, and it is present (not
//! already absent).
//!
//! Clean cached data is tracked in 256 KiB chunks by a moka cache with a byte weigher. moka's
//! admission policy (TinyLFU) is what gives scan resistance: a chunk read once by a large scan
//! has a lower access frequency than the hot set's chunks and is refused, not let in at their
//! expense. When moka evicts a chunk (or refuses one), its eviction listener only queues the
//! key; the evictor thread takes the inode's locks, marks the chunk's evictable pages absent,
//! syncs that mark, and only then punches the pages out of the cache file. A crash between the
//! two leaves pages marked absent whose bytes are still there: the next read fetches the same
//! bytes again. The other order could leave a page that is neither absent nor present.
//!
//! Dirty bytes are bounded separately: past `--max-dirty`, writers wait for the checkpointer,
//! which turns dirty pages into clean (evictable) ones. They never fail.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use parking_lot::{Condvar, Mutex};
use tracing::{debug, info, warn};

use super::pageset::PageSet;
use super::size::fallocate_raw;
use super::{FileKind, Fs, Inode, InodeState, Result, PAGE_SIZE};

/// Pages per cache chunk: the unit of tracking and eviction (256 KiB), equal to a fetch unit,
/// so a chunk evicted is fetched back with one request.
pub const CHUNK_PAGES: u64 = 32;
pub(super) const CHUNK_BYTES: u64 = CHUNK_PAGES * PAGE_SIZE;
/// Chunks the evictor takes from its queue at once: one metadata sync serves them all.
const EVICT_BATCH: usize = 1024;

/// `--max-dirty`: the waiting room for writers.
#[derive(Default)]
pub(super) struct Pressure {
    /// Dirty + pending pages at which writers wait; 0 for no limit.
    max_pages: AtomicU64,
    waiters: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
    /// Asks the checkpointer for a checkpoint now.
    kick: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

type Key = (u64, u64);

/// The bound on clean cached bytes (`--cache-size`).
pub struct CacheBound {
    capacity: u64,
    chunks: moka::sync::Cache<Key, u32>,
    /// Chunks moka has handed to the evictor, and those the evictor has dealt with.
    queued: Arc<AtomicU64>,
    handled: AtomicU64,
}

/// How full the cache is.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CacheUsage {
    pub capacity_bytes: u64,
    /// Bytes of the chunks tracked (a chunk counts whole, even where it has holes).
    pub used_bytes: u64,
    pub chunks: u64,
    /// Chunks evicted by moka that the evictor has not punched out yet.
    pub evictions_queued: u64,
}

/// Evictions run when a test says (see `Fs::bound_cache_stepped`).
pub struct SteppedEvictor {
    rx: Receiver<Key>,
}

impl SteppedEvictor {
    /// Lets moka apply its bound, then evicts every chunk it gave up. Returns how many.
    pub fn run(&self, fs: &Fs) -> Result<usize> {
        let bound = fs.bound.get().expect("bounded when this was made").clone();
        bound.chunks.run_pending_tasks();
        let keys: Vec<Key> = self.rx.try_iter().collect();
        if !keys.is_empty() && fs.fetcher.get().is_some() {
            fs.evict(&bound, &keys)?;
        }
        bound.handled.fetch_add(keys.len() as u64, Ordering::AcqRel);
        Ok(keys.len())
    }

    /// Evicts chunk `chunk` of file `ino` now, as if moka had given it up, for tests that
    /// need one chunk gone at a chosen moment.
    pub fn evict_now(&self, fs: &Fs, ino: u64, chunk: u64) -> Result<()> {
        let bound = fs.bound.get().expect("bounded when this was made").clone();
        bound.chunks.invalidate(&(ino, chunk));
        fs.evict(&bound, &[(ino, chunk)])
    }
}

/// The thread that punches evicted chunks out of cache files.
pub struct Evictor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Evictor {
    /// Stops the evictor once the chunks already queued are handled.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Fs {
    /// Pages newly dirtied: counted against `--max-dirty`, and the oldest change not yet in
    /// the bucket is noted for the RPO.
    pub(super) fn dirty_added(&self, pages: u64) {
        if pages == 0 {
            return;
        }
        self.unsafe_pages.fetch_add(pages, Ordering::AcqRel);
        if self.oldest_change_ms.load(Ordering::Relaxed) == 0 {
            let _ = self.oldest_change_ms.compare_exchange(
                0,
                super::unix_ms(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Dirty or pending pages gone: uploaded, truncated away or deleted.
    pub(super) fn dirty_removed(&self, pages: u64) {
        if pages == 0 {
            return;
        }
        let _ = self
            .unsafe_pages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(pages))
            });
        if self.pressure.waiters.load(Ordering::Acquire) > 0 {
            self.wake_writers();
        }
    }

    /// Has every writer waiting at `--max-dirty` look again (after fencing: stop waiting).
    pub(super) fn wake_writers(&self) {
        let _guard = self.pressure.lock.lock();
        self.pressure.cv.notify_all();
    }

    /// Runs `change` on an inode's state and counts how its dirty and pending pages moved.
    pub(super) fn recount<R>(
        &self,
        st: &mut super::InodeState,
        change: impl FnOnce(&mut super::InodeState) -> R,
    ) -> R {
        let before = st.dirty.len() + st.pending.len();
        let r = change(st);
        let after = st.dirty.len() + st.pending.len();
        if after > before {
            self.dirty_added(after - before);
        } else {
            self.dirty_removed(before - after);
        }
        r
    }

    /// Writers waiting at `--max-dirty` now.
    pub fn writers_waiting(&self) -> u64 {
        self.pressure.waiters.load(Ordering::Acquire)
    }

    /// `--max-dirty` in bytes (0: none).
    pub fn max_dirty_bytes(&self) -> u64 {
        self.pressure.max_pages.load(Ordering::Acquire) * PAGE_SIZE
    }

    /// Pages that are dirty or being uploaded: what is not yet safe in the bucket (what
    /// `--max-dirty` and `--checkpoint-dirty` measure; an upper bound on bytes / 8 KiB).
    pub fn unsafe_pages(&self) -> u64 {
        self.unsafe_pages.load(Ordering::Acquire)
    }

    /// Age of the oldest change not yet in the bucket, in ms (0 when everything is).
    pub fn rpo_ms(&self) -> u64 {
        let oldest = [&self.oldest_change_ms, &self.oldest_pending_ms]
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .filter(|&t| t > 0)
            .min();
        oldest.map_or(0, |t| super::unix_ms().saturating_sub(t))
    }

    /// The cut closes the epoch: its changes are now the pending ones.
    pub(super) fn rpo_cut(&self) {
        let oldest = self.oldest_change_ms.swap(0, Ordering::AcqRel);
        self.oldest_pending_ms.store(oldest, Ordering::Release);
    }

    /// The pending changes are in the bucket (`committed`) or dirty again (a failed upload).
    pub(super) fn rpo_settled(&self, committed: bool) {
        let pending = self.oldest_pending_ms.swap(0, Ordering::AcqRel);
        if !committed && pending > 0 {
            let _ = self
                .oldest_change_ms
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    Some(if c == 0 { pending } else { c.min(pending) })
                });
        }
    }

    /// `--max-dirty`: from now on, writes wait while `max_bytes` or more are dirty or being
    /// uploaded, calling `kick` to ask for a checkpoint.
    pub fn set_max_dirty(&self, max_bytes: u64, kick: Box<dyn Fn() + Send + Sync>) {
        let _ = self.pressure.kick.set(kick);
        self.pressure
            .max_pages
            .store(max_bytes.div_ceil(PAGE_SIZE), Ordering::Release);
    }

    /// Waits while dirty bytes are at `--max-dirty`. Holds no lock: the checkpointer's cut
    /// and every reader go on. A fenced or stopped mount does not wait (its writes fail anyway).
    pub(super) fn throttle(&self) {
        let max = self.pressure.max_pages.load(Ordering::Acquire);
        if max == 0 || self.unsafe_pages() < max {
            return;
        }
        let started = Instant::now();
        self.pressure.waiters.fetch_add(1, Ordering::AcqRel);
        let mut guard = self.pressure.lock.lock();
        while self.unsafe_pages() >= max && !self.is_stopped() {
            if let Some(kick) = self.pressure.kick.get() {
                kick();
            }
            // Woken by `dirty_removed`; the timeout only re-asks for a checkpoint in case
            // the one running fails and the checkpointer backs off.
            self.pressure
                .cv
                .wait_for(&mut guard, Duration::from_secs(1));
        }
        drop(guard);
        self.pressure.waiters.fetch_sub(1, Ordering::AcqRel);
        self.stats.throttled_writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .throttled_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// `--cache-size` without the evictor thread: evictions wait in the returned queue until
    /// the caller runs them (`SteppedEvictor::run`). For tests that choose when eviction
    /// happens, so that a failing case replays exactly.
    pub fn bound_cache_stepped(&self, capacity: u64) -> Result<SteppedEvictor> {
        Ok(SteppedEvictor {
            rx: self.bound_cache_queue(capacity)?,
        })
    }

    /// Bounds the cache and returns the queue of chunks moka evicts.
    fn bound_cache_queue(&self, capacity: u64) -> Result<Receiver<Key>> {
        let (tx, rx): (Sender<Key>, Receiver<Key>) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let queued = Arc::new(AtomicU64::new(0));
        let counted = queued.clone();
        let chunks = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_: &Key, w: &u32| *w)
            .eviction_listener(move |key: Arc<Key>, _, cause| {
                // Only evictions for size free space; an invalidation is a file deleted or
                // cut down, whose bytes are already gone.
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::AcqRel);
                    let _ = tx.lock().send(*key);
                }
            })
            .build();
        let bound = Arc::new(CacheBound {
            capacity,
            chunks,
            queued,
            handled: AtomicU64::new(0),
        });
        if self.bound.set(bound.clone()).is_err() {
            return Err(super::FsError::Invalid("the cache is bounded once"));
        }
        let present = self.present_chunks();
        let seeded = present.len();
        for (key, weight) in present {
            bound.chunks.insert(key, weight);
        }
        bound.chunks.run_pending_tasks();
        info!(
            capacity,
            chunks = seeded,
            used = bound.chunks.weighted_size(),
            "cache bounded; chunks already cached counted"
        );
        Ok(rx)
    }

    /// `--cache-size`: bounds the clean bytes the cache dir holds to `capacity` and starts
    /// the evictor. What the cache dir holds already (a warm restart) is counted first, and
    /// evicted down to the bound if it is over.
    pub fn bound_cache(self: &Arc<Self>, capacity: u64) -> Result<Evictor> {
        let rx = self.bound_cache_queue(capacity)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (fs, flag) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("evictor".into())
            .spawn(move || {
                let _span = tracing::info_span!("evictor").entered();
                fs.run_evictor(&rx, &flag)
            })
            .map_err(super::FsError::io("start evictor"))?;
        Ok(Evictor {
            stop,
            thread: Some(thread),
        })
    }

    fn run_evictor(&self, rx: &Receiver<Key>, stop: &AtomicBool) {
        let bound = self
            .bound
            .get()
            .expect("set before the evictor starts")
            .clone();
        let mut batch = Vec::new();
        loop {
            let mut stopping = false;
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(key) => {
                    batch.push(key);
                    batch.extend(rx.try_iter().take(EVICT_BATCH));
                }
                Err(RecvTimeoutError::Timeout) => {
                    // moka evicts during its housekeeping, which requests drive; an idle
                    // mount still gets down to its bound.
                    bound.chunks.run_pending_tasks();
                    stopping = stop.load(Ordering::Acquire);
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Until the bucket is attached (the cache is bounded before, so that a restore's
            // prefetch is counted) nothing could be fetched back: keep the keys.
            if !batch.is_empty() && self.fetcher.get().is_some() {
                if let Err(e) = self.evict(&bound, &batch) {
                    // The chunks stay cached: over the bound, but never wrong.
                    warn!(error = %e, chunks = batch.len(), "eviction failed");
                }
                bound
                    .handled
                    .fetch_add(batch.len() as u64, Ordering::AcqRel);
                batch.clear();
            }
            if stopping {
                return;
            }
        }
    }

    /// Marks the evictable pages of `keys` absent (durably), then punches them out.
    fn evict(&self, bound: &CacheBound, keys: &[Key]) -> Result<()> {
        if self.cache_failed() {
            // A stopped mount's records take no marks: nothing can be evicted.
            return Ok(());
        }
        let fetcher = self.fetcher.get().expect("the evictor waits for a bucket");
        let mut by_ino: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &(ino, chunk) in keys {
            // Let in again (a read since) or already handled: keep it.
            if !bound.chunks.contains_key(&(ino, chunk)) {
                by_ino.entry(ino).or_default().push(chunk);
            }
        }
        let mut marked: Vec<(Arc<Inode>, Vec<Range<u64>>)> = Vec::new();
        let mut seq = 0;
        for (ino, chunks) in by_ino {
            let Ok(inode) = self.inode(ino) else { continue };
            if !fetcher.holds(ino) {
                continue;
            }
            let io = inode.io.write();
            let mut st = inode.state.lock();
            if st.attr.kind != FileKind::File || st.local_only {
                continue;
            }
            // Pages past a truncation the bucket has not seen still have older bytes there.
            let limit = [st.trunc, st.trunc_pending]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u64::MAX)
                .min(st.attr.size.div_ceil(PAGE_SIZE));
            let mut ranges = Vec::new();
            for chunk in chunks {
                let pages = chunk * CHUNK_PAGES..((chunk + 1) * CHUNK_PAGES).min(limit);
                let mut keep = PageSet::new();
                keep.insert(pages.clone());
                for set in [&st.dirty, &st.pending, &st.absent] {
                    for r in set.overlapping(pages.clone()) {
                        keep.remove(r);
                    }
                }
                ranges.extend(keep.iter());
            }
            if ranges.is_empty() {
                continue;
            }
            // The marks are written while the file is still ours: a fill or a write that
            // makes these pages present again comes after, and its delete of the mark is
            // the later one in RocksDB. (Written later, the mark would outlive it, and a
            // crash would bring the bucket's older bytes back over the newer ones.)
            let mut batch = self.meta.batch();
            for r in &ranges {
                st.change_absent(&mut batch, r.clone(), |a| {
                    a.insert(r.clone());
                });
            }
            seq = match self.meta.commit(batch) {
                Ok(seq) => seq,
                Err(e) => {
                    // Not marked after all: none of these pages was absent before. Whether
                    // the batch reached RocksDB is not known: the next change writes every
                    // mark again.
                    for r in &ranges {
                        st.absent.remove(r.clone());
                    }
                    st.absent_unsure = true;
                    return Err(e.into());
                }
            };
            // A page a fill is fetching was absent when the fill claimed it: if it is being
            // evicted, it became present some other way since, and the bucket may now hold
            // newer bytes than the fill's. That fill must not install it.
            for r in &ranges {
                let stale: Vec<Range<u64>> = st.fetching.overlapping(r.clone()).collect();
                for s in stale {
                    st.fetch_stale.insert(s);
                }
            }
            drop(st);
            drop(io);
            self.step(super::Step::EvictMarked { ino });
            marked.push((inode.clone(), ranges));
        }
        if marked.is_empty() {
            return Ok(());
        }
        // Synced before any byte is punched: a crash in between leaves pages marked absent
        // whose bytes are still there (fetched again), never pages that are neither.
        self.sync_records(seq)?;
        let mut pages = 0;
        for (inode, ranges) in &marked {
            let _io = inode.io.write();
            let mut st = inode.state.lock();
            let Some(file) = self.cache_file(&mut st, false)? else {
                continue;
            };
            for r in ranges {
                // Only what is still absent: a fill or a write since has made the rest
                // present again, with the right bytes.
                let still: Vec<Range<u64>> = st.absent.overlapping(r.clone()).collect();
                for r in still {
                    fallocate_raw(
                        &file,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        r.start * PAGE_SIZE,
                        (r.end - r.start) * PAGE_SIZE,
                    )?;
                    pages += r.end - r.start;
                }
            }
            drop(file);
            self.close_if_unused(&mut st);
        }
        self.stats.evictions.fetch_add(
            marked.iter().map(|(_, r)| r.len() as u64).sum(),
            Ordering::Relaxed,
        );
        self.stats.evicted_pages.fetch_add(pages, Ordering::Relaxed);
        debug!(files = marked.len(), pages, "evicted");
        Ok(())
    }

    /// A read used `pages` of a file of `size` bytes: their chunks count as recently and
    /// frequently used, and are tracked if they were not.
    pub(super) fn touch(&self, ino: u64, pages: Range<u64>, size: u64) {
        let Some(bound) = self.bound.get() else {
            return;
        };
        for chunk in pages.start / CHUNK_PAGES..pages.end.div_ceil(CHUNK_PAGES) {
            let weight = chunk_weight(chunk, size);
            // A chunk that grew with its file is weighed again.
            if bound.chunks.get(&(ino, chunk)).is_none_or(|w| w < weight) {
                bound.chunks.insert((ino, chunk), weight);
            }
        }
    }

    /// `touch`, by code that holds no handle of file `ino` (a prefetch, the checkpointer's
    /// mark clean) and holds its state lock (`st`): counted as far as the file reaches now,
    /// and not at all once it is deleted (gone from the inode map). A deletion or a
    /// truncation untracks its chunks under the same lock, so no chunk of bytes no file holds
    /// any more takes room in the bound.
    pub(super) fn touch_locked(&self, ino: u64, st: &InodeState, pages: Range<u64>) {
        if self.bound.get().is_some() && self.inodes.read().contains_key(&ino) {
            let size = st.attr.size;
            self.touch(
                ino,
                pages.start..pages.end.min(size.div_ceil(PAGE_SIZE)),
                size,
            );
        }
    }

    /// A write touched `pages`: their chunks' use is counted (for when they are clean and
    /// compete for the cache), but dirty chunks are not tracked.
    pub(super) fn touch_written(&self, ino: u64, pages: Range<u64>) {
        if let Some(bound) = self.bound.get() {
            for chunk in pages.start / CHUNK_PAGES..pages.end.div_ceil(CHUNK_PAGES) {
                let _ = bound.chunks.get(&(ino, chunk));
            }
        }
    }

    /// File `ino` shrank to `size` bytes (or was deleted, `size` 0): its chunks past the end
    /// hold nothing any more.
    pub(super) fn untrack(&self, ino: u64, size: u64, old_size: u64) {
        if let Some(bound) = self.bound.get() {
            for chunk in size.div_ceil(CHUNK_BYTES)..old_size.div_ceil(CHUNK_BYTES) {
                bound.chunks.invalidate(&(ino, chunk));
            }
        }
    }

    /// How full the bounded cache is (None: unbounded).
    pub fn cache_usage(&self) -> Option<CacheUsage> {
        let bound = self.bound.get()?;
        bound.chunks.run_pending_tasks();
        Some(CacheUsage {
            capacity_bytes: bound.capacity,
            used_bytes: bound.chunks.weighted_size(),
            chunks: bound.chunks.entry_count(),
            evictions_queued: bound
                .queued
                .load(Ordering::Acquire)
                .saturating_sub(bound.handled.load(Ordering::Acquire)),
        })
    }

    /// What chunk `chunk` of file `ino` weighs in the cache's bound (its bytes, up to the
    /// file's end): 0 for a file gone or a chunk past its end, which a fetch fills with nothing.
    pub fn chunk_weight_now(&self, ino: u64, chunk: u64) -> u64 {
        let Ok(inode) = self.inode(ino) else {
            return 0;
        };
        let size = inode.state.lock_unnoted().attr.size; // read only: nothing for a cut
        if chunk * CHUNK_BYTES >= size {
            return 0;
        }
        u64::from(chunk_weight(chunk, size))
    }

    /// Whether chunk `chunk` of file `ino` is in the cache's bound (false without a bound).
    pub fn chunk_cached(&self, ino: u64, chunk: u64) -> bool {
        self.bound
            .get()
            .is_some_and(|b| b.chunks.contains_key(&(ino, chunk)))
    }

    /// The chunks the cache holds now (ino, chunk), in no particular order: what a clean
    /// stop records for prewarm. With a bound, the chunks moka keeps (the hot set, by its
    /// admission policy); without one, every chunk with a page present.
    pub fn hot_chunks(&self) -> Vec<(u64, u64)> {
        if let Some(bound) = self.bound.get() {
            bound.chunks.run_pending_tasks();
            let mut keys: Vec<Key> = bound.chunks.iter().map(|(k, _)| *k).collect();
            keys.sort_unstable();
            return keys;
        }
        let mut keys: Vec<Key> = self.present_chunks().into_iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        keys
    }

    /// Every chunk of a regular file with a page in its cache file, and its weight. Files
    /// the last cut found local-only are left out: the bucket has none of their bytes.
    fn present_chunks(&self) -> Vec<(Key, u32)> {
        let mut out = Vec::new();
        for inode in self.inode_snapshot().values() {
            let st = inode.state.lock_unnoted(); // read only: nothing for a cut
            if st.attr.kind != FileKind::File || st.local_only {
                continue;
            }
            let size = st.attr.size;
            let size_pages = size.div_ceil(PAGE_SIZE);
            for chunk in 0..size_pages.div_ceil(CHUNK_PAGES) {
                let pages = chunk * CHUNK_PAGES..((chunk + 1) * CHUNK_PAGES).min(size_pages);
                if !st.absent.covers(pages) {
                    out.push(((st.attr.ino, chunk), chunk_weight(chunk, size)));
                }
            }
        }
        out
    }
}

/// Bytes of chunk `chunk` of a file of `size` bytes (at least 1).
fn chunk_weight(chunk: u64, size: u64) -> u32 {
    size.saturating_sub(chunk * CHUNK_BYTES)
        .clamp(1, CHUNK_BYTES) as u32
}
