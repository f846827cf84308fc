//! Pages that live only in the bucket: installing a restored namespace (filling absent pages
//! into the cache file on first use is in `fill.rs`, prefetching them in `prefetch.rs`).
//!
//! After a restore into an empty cache dir every page of every file is "absent": its bytes
//! are in the bucket, not in the cache file. A read or a partial write of an absent page
//! fetches it first (through the [`Fetcher`] the checkpoint module provides), writes it into
//! the cache file and forgets the mark. Nothing else ever needs the bytes: stat, open, readdir
//! and fsync of a clean file download nothing.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::pageset::PageSet;
use super::{Attr, CutDirent, Fs, FsError, Inode, Result, ROOT_INO};

const BUCKET_RECORD: &[u8] = b"bucket";

/// Reads file contents from the bucket.
pub trait Fetcher: Send + Sync {
    /// The bytes of pages `pages` of file `ino` as the bucket's latest checkpoint holds them,
    /// `(pages.end - pages.start) * PAGE_SIZE` bytes (zeros where the bucket has none).
    fn fetch(&self, ino: u64, pages: Range<u64>) -> std::result::Result<Vec<u8>, String>;

    /// The bytes of each of `wants` (file, pages), as `fetch` gives them, in one go: what
    /// lies close together in the bucket is read with one request.
    fn fetch_batch(
        &self,
        wants: &[(u64, Range<u64>)],
    ) -> std::result::Result<Vec<Vec<u8>>, String> {
        wants
            .iter()
            .map(|(ino, pages)| self.fetch(*ino, pages.clone()))
            .collect()
    }

    /// `files` (in the order they are wanted) in batches for `fetch_batch`: files whose bytes
    /// lie close together in the bucket. By default each file alone.
    fn group_for_prefetch(&self, files: Vec<u64>) -> Vec<Vec<u64>> {
        files.into_iter().map(|ino| vec![ino]).collect()
    }

    /// Whether the bucket's latest checkpoint has file `ino` (its clean pages may be evicted
    /// and fetched back).
    fn holds(&self, ino: u64) -> bool;
}

/// `--durability remote`: fsync returns only once a checkpoint holding the change is in the
/// bucket.
pub trait RemoteSync: Send + Sync {
    /// Waits until every change made while the epoch was `epoch` or earlier is committed in
    /// the bucket. Transient store errors only delay it; it fails only when this mount can no
    /// longer commit (fenced, or the cache files' flush failed). `request` must have been
    /// called after `epoch` was read: the wait asks for a checkpoint itself only after half
    /// a second with no commit.
    fn wait_committed(&self, epoch: u64) -> Result<()>;

    /// Asks for a checkpoint now: an fsync will wait for one. Asked when the fsync begins,
    /// so that the cut and the upload run while it syncs the cache file.
    fn request(&self);
}

/// The remote half of one fsync, begun (`Fs::begin_remote`): the epoch it waits for, and the
/// checkpointer (None: it had stopped).
pub(super) struct RemoteWait {
    remote: Option<Arc<dyn RemoteSync>>,
    epoch: u64,
}

/// A namespace to install into an empty cache dir, as a restore found it in the bucket.
#[derive(Debug, Default)]
pub struct Restore {
    pub epoch: u64,
    pub next_ino: u64,
    pub inodes: Vec<Attr>,
    pub dirents: Vec<CutDirent>,
    /// Pages the bucket holds, per file: all absent from the new cache dir.
    pub pages: Vec<(u64, PageSet)>,
}

/// What stopped a mount that takes no more changes (`Fs::stop_report`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// A flush of the cache files failed: the cache dir is marked failed.
    FailedFlush,
    /// A commit or a sync of the cache dir's records failed: the next mount recovers from
    /// it.
    FailedCommit,
}

impl StopCause {
    /// What happened, for messages.
    pub fn what(self) -> &'static str {
        match self {
            StopCause::FailedFlush => {
                "the disk under the cache dir failed to write back cached bytes"
            }
            StopCause::FailedCommit => "the cache dir's records failed to take a change",
        }
    }

    /// The whole story for a person, `why` being the failure: what happened, and what to
    /// do now.
    pub fn describe(self, why: &str) -> String {
        format!(
            "{} ({why}): this mount takes no more changes. {}.",
            self.what(),
            self.next_step()
        )
    }

    fn log(self, why: &str) {
        tracing::error!("{}", self.describe(why));
    }

    /// What to do now (`describe`).
    fn next_step(self) -> &'static str {
        match self {
            StopCause::FailedFlush => {
                "Check the disk, then start again on an empty cache dir, which restores from \
                 the bucket's latest checkpoint (changes after it are lost, fsync'd ones too \
                 under --durability local): this one is marked failed and is not mounted \
                 again"
            }
            StopCause::FailedCommit => {
                "Check the disk (is it full?), then start again on this cache dir: the next \
                 mount recovers from it as after a crash, fsync'd writes included"
            }
        }
    }
}

impl Fs {
    /// `--durability remote`: fsync waits on `remote`. Held weakly: the checkpointer holds
    /// the filesystem, and a strong handle back would keep both (and the cache dir's locks)
    /// alive forever.
    pub fn set_remote_sync(&self, remote: &Arc<dyn RemoteSync>) {
        let _ = self.remote_sync.set(Arc::downgrade(remote));
    }

    /// Starts the remote half of an fsync, when `--durability remote` asked for it: notes the
    /// epoch whose commit it must wait for and asks for a checkpoint at once, so that the cut
    /// and the upload overlap the fsync's fdatasync instead of following it (a commit's
    /// wait is the PUT plus what comes before it, on the path of every transaction). Called
    /// once everything the fsync covers is done in memory: every change made before the
    /// current epoch closes is in the cut that closes it. `finish_remote` waits.
    pub(super) fn begin_remote(&self) -> Option<RemoteWait> {
        let remote = self.remote_sync.get()?;
        let epoch = self.epoch();
        let remote = remote.upgrade();
        if let Some(r) = &remote {
            r.request();
        }
        Some(RemoteWait { remote, epoch })
    }

    /// Waits for what `begin_remote` noted. Once the checkpointer is gone (the mount is
    /// stopping) no fsync can be confirmed: EIO.
    pub(super) fn finish_remote(&self, wait: Option<RemoteWait>) -> Result<()> {
        match wait {
            None => Ok(()),
            Some(RemoteWait {
                remote: Some(r),
                epoch,
            }) => r.wait_committed(epoch),
            Some(RemoteWait { remote: None, .. }) => Err(FsError::Io {
                context: "confirm remote durability: the checkpointer has stopped",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            }),
        }
    }

    pub fn set_fetcher(&self, fetcher: Arc<dyn Fetcher>) {
        // Set once at mount; a second call would be a bug, and keeping the first is safe.
        let _ = self.fetcher.set(fetcher);
    }

    /// Stops accepting changes: another writer owns the bucket now.
    pub fn fence(&self) {
        self.fenced
            .store(true, std::sync::atomic::Ordering::Release);
        // Writers waiting for room would wait for an upload that can no longer happen.
        self.wake_writers();
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops accepting changes for good: a flush of the cache files failed (`why`), so the
    /// disk under the cache dir may hold older bytes than the page cache had (a page whose
    /// write-back failed is no longer dirty in the kernel, and no later flush writes it).
    /// Nothing can then be marked clean, nor uploaded again from the cache files, without
    /// risking older bytes: writes and fsyncs fail with EIO, checkpoints stop, and the cache
    /// dir is marked so that no later mount opens it (`CacheDir::mark_failed`), also when a
    /// failed commit had stopped the mount before.
    pub fn stop_for_failed_flush(&self, why: &str) {
        // Given up first: nobody may see the mount stopped and take it for a failed commit.
        let first = self.cache_given_up.set(why.to_owned()).is_ok();
        self.stop_taking_changes(why);
        if !first {
            return; // marked already
        }
        StopCause::FailedFlush.log(why);
        if let Err(e) = self.cache.mark_failed(why) {
            tracing::error!(error = %e, "could not mark the cache dir as failed");
        }
    }

    /// Stops accepting changes for good, as a crash would: the commit of a change to the
    /// cache dir's records failed (`why`; or their sync, `sync_records` says why that
    /// stops the mount too), and whether RocksDB holds it is not known until
    /// the cache dir is opened again (a batch is all or nothing, so it holds the change
    /// whole or not at all), while memory holds one of the two. A change made on top of
    /// memory could then contradict the records: a directory that moved in them but not in
    /// memory could be moved into itself. So nothing more is committed, not even by a
    /// request that was already waiting for the locks the failed change held. The cache
    /// files hold what was written to them, so the cache dir is not marked as after a failed
    /// flush: the next mount opens it and recovers as after a crash, fsync'd bytes included.
    pub fn stop_for_failed_commit(&self, why: &str) {
        if self.stop_taking_changes(why) {
            StopCause::FailedCommit.log(why);
        }
    }

    /// The stop both of the above make; false if the mount had stopped already.
    fn stop_taking_changes(&self, why: &str) -> bool {
        if self.cache_failed.set(why.to_owned()).is_err() {
            return false;
        }
        self.meta.refuse_commits();
        // Before anything that may hang on a failing disk.
        self.wake_writers();
        true
    }

    /// True once `stop_for_failed_flush` or `stop_for_failed_commit` has stopped this mount.
    pub fn cache_failed(&self) -> bool {
        self.cache_failed.get().is_some()
    }

    /// True once a failed flush has stopped this mount: its cache files may hold older bytes
    /// than were written, and the cache dir is marked failed. (After a failed commit alone
    /// they hold what was written: a flush's success means what it says.)
    pub fn cache_given_up(&self) -> bool {
        self.cache_given_up.get().is_some()
    }

    /// What stopped the mount, if a failure of the cache dir's disk did, and why: the first
    /// failed flush, else the failed commit or sync. Read in the order the stops write (a
    /// failed flush gives the cache dir up before it stops the mount), so that a flush is
    /// never taken for a commit.
    pub fn stop_report(&self) -> Option<(StopCause, &str)> {
        let first = self.cache_failed.get()?;
        Some(match self.cache_given_up.get() {
            Some(why) => (StopCause::FailedFlush, why.as_str()),
            None => (StopCause::FailedCommit, first.as_str()),
        })
    }

    /// Why the mount stopped (`stop_report`'s reason).
    pub fn cache_failure(&self) -> Option<&str> {
        self.stop_report().map(|(_, why)| why)
    }

    /// Fenced, or stopped by a failed flush or commit: no upload will come, so nothing
    /// should wait for one.
    pub fn is_stopped(&self) -> bool {
        self.is_fenced() || self.cache_failed()
    }

    /// What the cache dir last recorded about the bucket it is in step with (the
    /// checkpoint module's JSON), if any.
    pub fn bucket_record(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get_meta_bytes(BUCKET_RECORD)?)
    }

    /// Records (durably) which bucket, writer and epoch the cache dir is in step with.
    pub fn set_bucket_record(&self, record: &[u8]) -> Result<()> {
        let seq = self.note_bucket_record(record)?;
        self.sync_records(seq)
    }

    /// The same, made durable by the next sync of the cache dir's log (an fsync's, or a
    /// checkpoint's `sync_log` when something else needs it) rather than now: what each
    /// commit records once the attach has recorded the writer durably. A crash may leave the
    /// record at an earlier epoch of the same writer, which the next mount accepts as its own
    /// (the bucket's latest checkpoint names that writer); the record never runs ahead of the
    /// bucket, as it is written after the commit.
    pub fn note_bucket_record(&self, record: &[u8]) -> Result<u64> {
        let mut batch = self.meta.batch();
        batch.put_meta_bytes(BUCKET_RECORD, record);
        batch.may_lag();
        Ok(self.meta.commit(batch)?)
    }

    /// Makes the cache dir's log durable through every batch that may not lag behind the
    /// bucket (`MetaBatch::may_lag`). A checkpoint calls it after its cut and before its
    /// manifest can land: a power loss then never leaves the cache dir's names, sizes and
    /// marks behind a checkpoint the bucket holds. (Behind it, a name the bucket no longer
    /// has could lead to an inode the view has dropped, whose absent pages would then read as
    /// zeros, and the next checkpoint would upload them so.) The cut's record of its epoch,
    /// `mark_clean`'s deletes and the bucket record may lag, so a checkpoint whose writes all
    /// went into pages marked already (the WAL's, under `--durability remote`) syncs nothing
    /// here.
    /// Concurrent syncs share one (group commit).
    pub fn sync_log(&self) -> Result<()> {
        let synced = self.meta.sync_ahead_of_bucket();
        self.stop_unless_synced(synced)
    }

    /// Makes the cache dir's records durable through `seq` (`MetaStore::sync_to`).
    pub(super) fn sync_records(&self, seq: u64) -> Result<()> {
        let synced = self.meta.sync_to(seq);
        self.stop_unless_synced(synced)
    }

    /// A sync of the records that fails stops the mount, as a failed commit does: the kernel
    /// may have dropped the pages of the log it could not write, so a later sync that
    /// succeeded would vouch for batches the disk never got, and the open after a crash,
    /// which stops reading the log at the first batch it lacks, would drop every batch
    /// after it, acknowledged ones too. Stopped at once, the mount acknowledges nothing
    /// after the failure, and the next open finds what a crash would have left.
    fn stop_unless_synced(
        &self,
        synced: std::result::Result<(), crate::cache::MetaError>,
    ) -> Result<()> {
        synced.map_err(|e| {
            self.stop_for_failed_commit(&format!(
                "the sync of the cache dir's records failed ({e})"
            ));
            e.into()
        })
    }

    /// The sequence number of the cache dir's log: what has been committed to it, and (with
    /// `log_synced_seq`) how much of that is synced. For tests.
    pub fn log_seq(&self) -> u64 {
        self.meta.latest_seq()
    }

    /// The highest sequence number of the cache dir's log known to be synced.
    pub fn log_synced_seq(&self) -> u64 {
        self.meta.synced_seq()
    }

    /// Puts every cache file's bytes on the disk (syncfs of the cache dir's filesystem): all
    /// written before the call is there when it returns, and a write-back that failed since
    /// the last one is reported, whichever file it was of and whether or not the kernel still
    /// holds that file's inode (`flush_cut` and `sync_data_to` say when that matters).
    /// Callers at once share one: a syncfs that began after a call covers it.
    pub fn sync_cache_files(&self) -> Result<()> {
        let called_at = self.syncfs_begun.load(Ordering::Acquire);
        // One at a time: syncfs tells a failed write-back to one caller only, who stops the
        // mount before the next syncfs begins, so a later one that succeeded finds it stopped
        // (its success proves nothing).
        let mut last_done = self.syncfs_lock.lock();
        if *last_done > called_at {
            // Begun after this call, and done while this caller waited.
            return match self.cache_given_up() {
                true => Err(FsError::CacheFailed),
                false => Ok(()),
            };
        }
        let this = self.syncfs_begun.fetch_add(1, Ordering::AcqRel) + 1;
        let synced = match self.flush_fails_now() {
            true => Err(FsError::io("sync cache dir")(
                std::io::Error::from_raw_os_error(libc::EIO),
            )),
            false => self.cache.sync_all_data().map_err(FsError::from),
        };
        match &synced {
            Ok(()) if self.cache_given_up() => return Err(FsError::CacheFailed),
            Ok(()) => {
                *last_done = this;
                self.stats.cache_flushes.fetch_add(1, Ordering::Relaxed);
            }
            // Stopped here, whoever asked: syncfs reports a failed write-back once, and a
            // caller that dropped the answer must not let the next flush pass for clean.
            Err(e) => self.stop_for_failed_flush(&e.to_string()),
        }
        synced
    }

    /// Puts on the disk the bytes a cut took (`Cut::written`: each file through its
    /// `write_gen` at the cut), for `mark_clean`. A file synced since needs nothing, and one
    /// an fsync is syncing shares that sync (`sync_data_to`): under `--durability remote` a
    /// commit's fsync syncs its file beside the checkpoint, so the commit flushes the disk
    /// once. A few others are synced one by one; more than that, or one whose descriptor has
    /// not watched its changes (`InodeState::watched`), take one syncfs for all, which then
    /// counts as their sync.
    pub fn flush_cut(&self, written: &[(u64, u64)]) -> Result<()> {
        /// Beyond this many files to sync one by one, one syncfs costs less.
        const MAX_ONE_BY_ONE: usize = 4;
        let mut one_by_one = Vec::new();
        for &(ino, target) in written {
            let Ok(inode) = self.inode(ino) else {
                continue; // deleted since the cut: none of its pages is marked clean
            };
            let st = inode.state.lock_unnoted();
            if st.synced_gen >= target {
                continue;
            }
            if !st.watched() || one_by_one.len() == MAX_ONE_BY_ONE {
                drop(st);
                return self.sync_all_written(written);
            }
            drop(st);
            one_by_one.push((inode, target));
        }
        one_by_one
            .iter()
            .try_for_each(|(inode, target)| self.sync_data_to(inode, *target))
    }

    /// One syncfs for every file of `written`: each is synced through its target after it.
    fn sync_all_written(&self, written: &[(u64, u64)]) -> Result<()> {
        self.sync_cache_files()?;
        for &(ino, target) in written {
            if let Ok(inode) = self.inode(ino) {
                let mut st = inode.state.lock_unnoted();
                st.synced_gen = st.synced_gen.max(target);
            }
        }
        Ok(())
    }

    /// Tests only: every flush of the cache files fails, as on a disk whose write-back failed
    /// (`set_flush_fails`, or the failpoint `cache-flush-fails`).
    pub(super) fn flush_fails_now(&self) -> bool {
        self.flush_fails.load(Ordering::Acquire) || crate::failpoint::failing("cache-flush-fails")
    }

    /// True when everything committed to the cache dir's log is synced.
    pub fn log_is_synced(&self) -> bool {
        self.meta.is_synced()
    }

    /// True when the filesystem holds nothing but an empty root: a new cache dir.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.inodes.read().len() == 1 && self.meta.dir_is_empty(ROOT_INO)?)
    }

    /// Installs a restored namespace into an empty filesystem, durably, with every page
    /// marked absent. The root's attributes are the bucket's.
    pub fn install(&self, restore: Restore) -> Result<()> {
        if !self.is_empty()? {
            return Err(FsError::Invalid(
                "restore into a cache dir that is not empty",
            ));
        }
        let _gate = self.gate.write();
        let mut batch = self.meta.batch();
        let mut absent: std::collections::HashMap<u64, PageSet> =
            restore.pages.into_iter().collect();
        let mut map = self.inodes.write();
        for attr in restore.inodes {
            batch.put_inode(&attr);
            let pages = absent.remove(&attr.ino).unwrap_or_default();
            for r in pages.iter() {
                batch.put_absent(attr.ino, r);
            }
            let inode = Inode::new(attr, PageSet::new(), &self.touched);
            let ino = {
                let mut st = inode.state.lock();
                st.absent = pages;
                st.attr.ino
            };
            map.insert(ino, Arc::new(inode));
        }
        for d in &restore.dirents {
            batch.put_dirent(d.parent, &d.name, d.ino, d.kind);
        }
        batch.put_next_ino(restore.next_ino);
        batch.put_epoch(restore.epoch + 1);
        let seq = self.meta.commit(batch)?;
        // (Before the mount serves: a failure fails the start, which stops nothing.)
        self.meta.sync_to(seq)?;
        self.next_ino.store(
            restore
                .next_ino
                .max(self.next_ino.load(std::sync::atomic::Ordering::Acquire)),
            std::sync::atomic::Ordering::Release,
        );
        self.advance_epoch(restore.epoch + 1)?;
        Ok(())
    }

    /// Makes sure the epoch of new changes is at least `epoch` (bucket epochs only grow).
    pub fn advance_epoch(&self, epoch: u64) -> Result<()> {
        let prev = self
            .epoch
            .fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
        if prev < epoch {
            let mut batch = self.meta.batch();
            batch.put_epoch(epoch);
            self.meta.commit(batch)?;
        }
        Ok(())
    }

    /// Inode numbers from `next_ino` on are the only ones handed out from now on. Not
    /// synced: the next create persists the counter with itself, and a takeover raises it
    /// again after a crash.
    pub fn advance_next_ino(&self, next_ino: u64) -> Result<()> {
        let prev = self
            .next_ino
            .fetch_max(next_ino, std::sync::atomic::Ordering::AcqRel);
        if prev < next_ino {
            let mut batch = self.meta.batch();
            batch.put_next_ino(next_ino);
            self.meta.commit(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
