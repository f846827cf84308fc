//! Fencing: whether this mount is still the bucket's writer, the stop once another writer
//! has committed (or the cache files' flush failed), and the takeover that makes this mount
//! the writer.

use std::sync::atomic::Ordering;

use tracing::error;

use super::{check_invariants, manifest_key, now_ms, CheckpointError, Checkpointer};
use crate::fs::{FsError, StopCause, PAGE_SIZE};
use crate::manifest::Manifest;
use crate::store::StoreError;

impl Checkpointer {
    /// Is this mount still the bucket's writer? Looks for a manifest at the epoch after the
    /// last one it committed: one there that another writer committed means a takeover, and
    /// this mount is fenced now, not at its next commit (which an idle mount may not make
    /// for hours). Cheap: one HEAD while nobody has taken over.
    pub fn check_writer(&self) -> Result<(), CheckpointError> {
        let _one = self.running.lock();
        self.check_writer_locked()
    }

    pub(super) fn check_writer_locked(&self) -> Result<(), CheckpointError> {
        let next = self.view_epoch_unless_fenced()? + 1;
        let key = manifest_key(next);
        if self.rt.block_on(self.store.head(&key))?.is_none() {
            return Ok(());
        }
        // Ours only if an earlier attempt's answer was lost; the next checkpoint goes on from
        // it (see `commit`).
        if self.own_earlier_commit(&key)? {
            return Ok(());
        }
        self.fence(next);
        Err(CheckpointError::Fenced { epoch: next })
    }

    /// The view's epoch, or Fenced.
    pub(super) fn view_epoch_unless_fenced(&self) -> Result<u64, CheckpointError> {
        let epoch = self.view.read().epoch;
        if self.fenced.load(Ordering::Acquire) {
            return Err(CheckpointError::Fenced { epoch });
        }
        Ok(epoch)
    }

    /// The error for a mount that a failed flush or commit has stopped, if one has.
    pub(super) fn stopped(&self) -> Option<CheckpointError> {
        let (cause, why) = self.fs.stop_report()?;
        Some(CheckpointError::CacheFailed {
            epoch: self.view.read().epoch,
            report: cause.describe(why),
        })
    }

    /// Another writer committed `epoch`: accept no more changes, and wake whoever waits for
    /// a commit that can no longer come.
    pub(super) fn fence(&self, epoch: u64) {
        self.fenced.store(true, Ordering::Release);
        self.fs.fence();
        // Remote-durability fsyncs waiting for a commit fail now, not at their next look.
        {
            let _covered = self.covered.lock();
            self.covered_cv.notify_all();
        }
        error!(
            epoch,
            writer = %self.writer,
            "another writer committed this epoch first: this mount is fenced and accepts no \
             more changes (writes and fsyncs fail with EROFS)"
        );
    }

    /// The flush of the cache files after the cut of `epoch` (committed) failed, and the
    /// filesystem has stopped (`Fs::stop_for_failed_flush`): the fsyncs waiting for a later
    /// commit fail now, and the checkpointer stops. The pages keep their dirty marks.
    pub(super) fn stop_for_failed_flush(&self, epoch: u64, e: FsError) -> CheckpointError {
        // Every flush stops the mount where it fails; should one ever return an error without
        // doing so, the mount must not go on taking changes with no checkpointer.
        self.fs.stop_for_failed_flush(&e.to_string());
        {
            let _covered = self.covered.lock();
            self.covered_cv.notify_all();
        }
        let e = CheckpointError::CacheFailed {
            epoch,
            // The first failure's reason, kept by the filesystem that stopped.
            report: match self.fs.stop_report() {
                Some((cause, why)) => cause.describe(why),
                None => StopCause::FailedFlush.describe(&e.to_string()),
            },
        };
        error!(error = %e, "checkpointer stops");
        e
    }

    /// Commits an empty delta at the next epoch: the bucket now names this writer, and any
    /// writer still running there is fenced out at its next commit. Unless the tip was a
    /// clean stop (`tip_clean_stop`: its writer is gone), the delta is a fence, which GC
    /// keeps for good: that writer's next commit fails on it however long it stalled.
    pub fn take_over(&self, tip_clean_stop: bool) -> Result<u64, CheckpointError> {
        let _one = self.running.lock();
        let parent = self.view.read().epoch;
        let m = Manifest {
            fence: !tip_clean_stop,
            epoch: parent + 1,
            parent: Some(parent).filter(|&p| p > 0),
            created_ms: now_ms(),
            page_size: PAGE_SIZE as u32,
            writer: self.writer.clone(),
            next_ino: self.view.read().next_ino,
            ..Manifest::default()
        };
        let m = if m.parent.is_none() {
            // An empty bucket: the first manifest is a base of the whole filesystem, which
            // the first real checkpoint writes; here just claim epoch 1 with an empty base.
            self.view
                .read()
                .to_base(1, now_ms(), PAGE_SIZE as u32, &self.writer)
        } else {
            m
        };
        check_invariants(&m)?;
        crate::failpoint::hit("before-takeover-commit");
        let put = self.put_manifest(&m, true);
        self.settle_note();
        match put {
            Ok(len) => self.note_committed(m.parent.is_none(), len.plain),
            // Not fenced: nothing was accepted yet. The caller may read the chain again.
            Err(StoreError::PreconditionFailed { .. }) => {
                return Err(CheckpointError::LostRace { epoch: m.epoch })
            }
            Err(e) => return Err(e.into()),
        }
        // A takeover from a view GC has left behind: its create-if-absent may have landed on
        // a key GC collected (no fence protects a takeover). Read the bucket again.
        if self.rt.block_on(crate::gc::read_boundary(&*self.store))? > m.epoch {
            return Err(CheckpointError::LostRace { epoch: m.epoch });
        }
        self.apply_to_view(&m, None, None);
        self.fs.advance_epoch(m.epoch + 1)?;
        // The cache dir may be older than what this lineage committed (a power loss between a
        // manifest's PUT and the flush of RocksDB after it): no inode number the bucket has
        // seen is handed out again, or a new file would take the lost one's pages.
        self.fs.advance_next_ino(m.next_ino)?;
        Ok(m.epoch)
    }
}
