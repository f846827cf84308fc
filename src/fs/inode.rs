//! An inode in memory: its state (attributes; dirty, pending and absent pages; the cache
//! file) and its locks, and the dirty and absent marks RocksDB keeps for it.

use std::fs::File;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::pageset::PageSet;
use super::{touched, Attr, PAGE_SIZE};
use crate::cache::MetaBatch;

pub(super) struct InodeState {
    pub(super) attr: Attr,
    /// Pages changed since they were last uploaded (all of them, until a bucket exists).
    pub(super) dirty: PageSet,
    /// Pages a checkpoint's cut took and is uploading: no longer dirty, not yet in the
    /// bucket. Neither dirty nor pending pages may be evicted.
    pub(super) pending: PageSet,
    /// Pages whose dirty marks RocksDB holds, committed (the inode's next fsync syncs them):
    /// every dirty and pending page (but the pending ones of a `mark_clean` whose commit
    /// failed: the bucket holds those), and pages ahead of a sequential writer
    /// (`put_dirty_marks`). RocksDB may hold more, never less, unless `dirty_unsure` is set
    /// (then the next batch marks again). A write whose pages are all marked records nothing.
    /// A crash recovers the marked pages that are neither absent nor past the end as dirty
    /// (`Fs::new`); the next `mark_clean` drops the marks of pages that are not dirty, but
    /// for the writer's (`kept_marks`).
    pub(super) marked: PageSet,
    /// The page the last write ended in: a writer that fills a page in several writes (the
    /// WAL, one commit after another) writes it again next, and its mark outlives the
    /// checkpoints in between (`kept_marks`).
    pub(super) last_page: u64,
    /// Where the last marks ahead of a writer end, and how many pages they added: a writer
    /// that reaches that end marks twice as many next (`put_dirty_marks`), although the
    /// pages behind it are clean by then and their marks gone.
    pub(super) ahead_end: u64,
    pub(super) ahead_len: u64,
    /// Pending pages whose bytes the upload has yet to read from the cache file, where they
    /// are still as the cut took them. A change to one copies it out first (`Fs::freeze`).
    pub(super) cow: PageSet,
    /// A batch of this inode's failed to commit (it may or may not be in RocksDB), or the
    /// start found its absent keys are not its ranges one for one: the next change of
    /// `absent` writes all its marks again (`change_absent`).
    pub(super) absent_unsure: bool,
    /// A batch of this inode's from a write, truncation, fallocate or setattr failed to
    /// commit: memory may hold pages dirty that RocksDB does not. The next batch that marks
    /// pages dirty marks all of them (`put_dirty_marks`).
    pub(super) dirty_unsure: bool,
    /// Pages whose bytes are in the bucket but not in the cache file (after a restore, or
    /// evicted).
    pub(super) absent: PageSet,
    /// Absent pages a fill is fetching now; other fills of them wait for it (`fill_cv`).
    pub(super) fetching: PageSet,
    /// Pages of `fetching` that became present some other way (a write, a truncation) and
    /// were evicted again while the fill fetched: the bucket may hold newer bytes than the
    /// fill's, which installs none of them. Cleared with `fetching` when the fill ends.
    /// (Only these: an eviction of other pages of the file leaves a fill's bytes good.)
    pub(super) fetch_stale: PageSet,
    /// The cache file may hold bytes past the size: a write there failed (or its commit
    /// did, and the size stayed), or the cache file was longer than the size when this
    /// mount first opened it (a crash kept bytes whose new size was never recorded). What
    /// grows the file next cuts them off first (`cut_past_end`).
    pub(super) tail_unsure: bool,
    /// Fills waiting for another's fetch of this file: a prefetch batch installs such files
    /// first.
    pub(super) waiting: u32,
    /// The last cut found this file only under `--local-only` paths and dropped its dirty
    /// marks (persisted): the bucket lacks its changes, so none of its bytes may be evicted,
    /// and the cut that finds it outside them again takes the whole file.
    pub(super) local_only: bool,
    /// The lowest page count the file was truncated to since the last cut, if it shrank.
    pub(super) trunc: Option<u64>,
    /// The truncation a checkpoint still uploading took from `trunc`.
    pub(super) trunc_pending: Option<u64>,
    /// Open file handles; an unlinked inode lives until this drops to zero.
    pub(super) open_count: u32,
    /// The cache file, opened on first I/O and closed with the last handle.
    pub(super) file: Option<Arc<File>>,
    /// The `write_gen` when `file` was opened: every change of a later generation went
    /// through it (`InodeState::watched`).
    pub(super) file_gen: u64,
    /// Bumped after every change to the cache file's bytes or length.
    pub(super) write_gen: u64,
    /// The `write_gen` that the last completed sync of the cache file covered.
    pub(super) synced_gen: u64,
    /// RocksDB sequence number of this inode's last persisted change.
    pub(super) meta_seq: u64,
    /// atime/mtime/ctime changed in memory only (write paths do not persist times on every
    /// call; fsync, release and unmount do).
    pub(super) times_unpersisted: bool,
    /// The cache file was created since the last fsync: its directory entry needs a sync.
    pub(super) new_cache_file: bool,
    /// Sequential-read detection for fetches from the bucket: the page a sequential reader
    /// misses next, and the readahead window (pages) its next fetch gets.
    pub(super) fetch_next: u64,
    pub(super) fetch_window: u64,
}

impl InodeState {
    /// True when the cache file's descriptor has been open since the last sync, so that
    /// every change not yet synced went through it: its fdatasync then reports a failed
    /// write-back of any of them. A descriptor opened later may not: the error of a write-back
    /// that failed while none was open can go with the kernel's inode, and only the
    /// filesystem's own count (syncfs) keeps it.
    pub(super) fn watched(&self) -> bool {
        self.file.is_some() && self.file_gen <= self.synced_gen
    }

    /// Changes the pages only the bucket holds with `change`, which touches none outside
    /// `pages`, and records the result in `batch` as RocksDB keeps it: one key per range
    /// (`MetaBatch::put_absent`), so the keys of the ranges the change merged, split or
    /// shortened go and their new ranges are written.
    pub(super) fn change_absent(
        &mut self,
        batch: &mut MetaBatch<'_>,
        pages: std::ops::Range<u64>,
        change: impl FnOnce(&mut PageSet),
    ) {
        // After a failed commit RocksDB may hold the marks from before it, which need not be
        // the set's ranges any more (nor are format 1's, a key per page): then every mark of
        // the inode is written again.
        if std::mem::take(&mut self.absent_unsure) {
            change(&mut self.absent);
            batch.rewrite_absent(self.attr.ino, self.absent.iter());
            return;
        }
        // Only ranges that touch `pages` can change: those are the keys that may go. (The
        // span holds them whole, so `overlapping` cuts none of them short.)
        let span = self.absent.span_touching(pages.clone());
        let before: Vec<_> = self.absent.overlapping(span).collect();
        change(&mut self.absent);
        let span = self.absent.span_touching(pages);
        let after: Vec<_> = self.absent.overlapping(span).collect();
        batch.change_absent(self.attr.ino, &before, &after);
    }

    /// The absent pages of `pages` that no fill is fetching yet, marked as being fetched by
    /// the caller, who must unmark them when done (`InFlight`).
    pub(super) fn claim_absent(
        &mut self,
        pages: std::ops::Range<u64>,
    ) -> Vec<std::ops::Range<u64>> {
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
    pub(super) fn put_dirty_marks(
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
    pub(super) fn kept_marks(&self) -> std::ops::Range<u64> {
        self.last_page..self.last_page + MARK_AHEAD_PAGES + 1
    }

    /// Deletes the dirty marks of the pages from `first` on (a truncation): key by key, the
    /// marks memory knows of, unless there are many or memory may not know them all
    /// (`dirty_unsure`); then one range deletion. RocksDB keeps a range deletion until a
    /// compaction drops it, and its flush (the one a start runs on the log it recovers)
    /// splits the memtable's range deletions at one another's ends, each piece listing all
    /// those that cover it: a file cut down again and again to different sizes, each
    /// truncation a range deletion, cost a start 1,218 MiB more at the peak after 12,000
    /// of them (`tests/absent_churn.rs`). Marks RocksDB holds beyond memory's (left by a failed
    /// commit of `mark_clean`, of a last close's `drop_kept_marks`, of a cut's drop of
    /// local-only marks or its `leave_local_only`) may then stay past the end. They cost no
    /// byte: whatever grows the file over them cuts the cache file to the size first
    /// (`cut_past_end`), so a page under one is a hole or newly written, and a start
    /// recovers it as dirty and uploads it once more as it is (those still past the end or
    /// over absent pages it deletes).
    pub(super) fn delete_marks_from(&mut self, batch: &mut MetaBatch<'_>, first: u64) {
        let ino = self.attr.ino;
        let past: Vec<_> = self.marked.overlapping(first..u64::MAX).collect();
        let keys: u64 = past.iter().map(|r| r.end - r.start).sum();
        if self.dirty_unsure || keys > MARKS_DELETED_ONE_BY_ONE {
            batch.delete_dirty_from(ino, first);
        } else {
            for r in past {
                batch.delete_dirty(ino, r);
            }
        }
        self.marked.truncate(first);
    }

    /// Sets the times a change of the file's bytes sets (mtime, ctime) to `now`, and
    /// records the attributes in `batch`.
    pub(super) fn stamp(&mut self, now: std::time::SystemTime, batch: &mut MetaBatch<'_>) {
        self.attr.mtime = now;
        self.attr.ctime = now;
        batch.put_inode(&self.attr);
    }

    /// Whether `added` (pages just made dirty) is marked already, so that a change that
    /// records nothing else needs no batch (`put_dirty_marks`).
    pub(super) fn marks_cover(&self, added: &[std::ops::Range<u64>]) -> bool {
        !self.dirty_unsure && added.iter().all(|r| self.marked.covers(r.clone()))
    }
}

/// The most dirty marks a truncation deletes one by one (`delete_marks_from`): 8 MiB of
/// pages, so that a range deletion costs at least 8 MiB marked (or a failed commit).
const MARKS_DELETED_ONE_BY_ONE: u64 = 1024;

/// The most pages a write marks dirty ahead of itself (`InodeState::put_dirty_marks`): 512
/// KiB, which a crash may upload again although unchanged.
const MARK_AHEAD_PAGES: u64 = 64;

pub(super) struct Inode {
    /// Serialises changes to the cache file's length (truncate, fallocate, punch) against
    /// reads and writes, which take it shared (all but a write past the end while the cache
    /// file may hold bytes there, `InodeState::tail_unsure`).
    pub(super) io: RwLock<()>,
    pub(super) state: touched::StateLock,
    /// Held by the one thread syncing this inode's cache file through its descriptor (group
    /// commit, `Fs::sync_data_to`), and by a fill's fdatasync: a failed write-back is told
    /// to one of them, who stops the mount before letting go.
    pub(super) sync_lock: Mutex<()>,
    /// Held while a fill installs fetched pages, and by a write to a file with absent
    /// pages from its cache write to clearing their marks: whichever comes second sees what
    /// the other did. Never held across a fetch.
    pub(super) fill_lock: Mutex<()>,
    /// Signalled when a fill of this inode ends (see `InodeState::fetching`).
    pub(super) fill_cv: parking_lot::Condvar,
}

impl Inode {
    pub(super) fn new(attr: Attr, dirty: PageSet, touched: &Arc<touched::Touched>) -> Inode {
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
pub(super) fn recovered_dirty(marks: &PageSet, absent: &PageSet, size: u64) -> PageSet {
    let mut pages = marks.clone();
    pages.truncate(size.div_ceil(PAGE_SIZE));
    for r in absent.iter() {
        pages.remove(r);
    }
    pages
}
