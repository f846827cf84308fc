//! What the writer runs beside its checkpoints to keep the bucket bounded: GC passes and
//! compaction (docs/gc.md).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tracing::{error, info, warn};

use super::layout::{manifest_key, segment_cut};
use super::upload::put_segment;
use super::{now_ms, CheckpointError, Checkpointer};
use crate::fs::PAGE_SIZE;
use crate::gc::Listing;
use crate::manifest::Manifest;
use crate::store::placement::{Class, WAL_SEGMENT_SUFFIX};
use crate::store::StoreError;

/// The writer's background GC (docs/gc.md).
#[derive(Clone, Debug, PartialEq)]
pub struct GcSettings {
    pub retention: crate::gc::Retention,
    /// Time between passes (`--gc-interval`).
    pub interval: Duration,
    /// Time from the writer's start to its first pass (`GcSettings::every`: a minute, or the
    /// interval if shorter).
    pub first_after: Duration,
    /// Rewrite mostly-dead and small segments in each pass, from its listing, before
    /// retention and deletion; None: never.
    pub compact: Option<crate::gc::compact::CompactSettings>,
    /// Epochs each chunk of GC's catalog in the bucket covers (`crate::gc::CHUNK_EPOCHS`;
    /// tests take fewer).
    pub chunk_epochs: u64,
}

/// The longest a writer waits after its start before its first GC pass. A Fly Machine that
/// stops when idle is stopped a few minutes after its last connection closes: had the first
/// pass waited out a whole `--gc-interval` (10 minutes by default), a database woken for
/// short spells would never collect, and its bucket would grow without bound. A minute is
/// well past a start's own work (a restore, its prefetch of small files, Postgres's recovery:
/// about a second at 20 ms a request, BENCHMARKS.md), which the pass's reads would otherwise
/// share the cores and the bandwidth with; nothing waits for that work to end.
pub const FIRST_GC_PASS_AFTER: Duration = Duration::from_secs(60);

impl GcSettings {
    /// Passes every `interval`, the first `FIRST_GC_PASS_AFTER` after the start (or
    /// `interval`, if shorter).
    pub fn every(
        interval: Duration,
        retention: crate::gc::Retention,
        compact: Option<crate::gc::compact::CompactSettings>,
    ) -> GcSettings {
        GcSettings {
            retention,
            interval,
            first_after: interval.min(FIRST_GC_PASS_AFTER),
            compact,
            chunk_epochs: crate::gc::CHUNK_EPOCHS,
        }
    }
}

impl Checkpointer {
    /// One GC pass (docs/gc.md): compaction first if the settings ask for it (a manifest that
    /// points at the rewritten pages), then retention and deletion. Deletes only while this
    /// mount still holds the prefix; a fenced mount deletes nothing. `now_ms` is the time the
    /// retention window and the grace are measured from.
    pub fn gc_pass(&self, now_ms: u64) -> Result<crate::gc::Report, CheckpointError> {
        self.gc_pass_until(now_ms, &AtomicBool::new(false))
    }

    /// `gc_pass`, ended early once `stop` is set: nothing deleted from then on, and no
    /// compaction committed (the mount's final checkpoint, which does not wait for this
    /// pass, stays its last manifest); the plan is still recorded in `gc/state`, unless
    /// another pass wrote it meanwhile.
    ///
    /// Checkpoints go on meanwhile: only compaction, which commits a manifest of its own,
    /// takes the checkpoint lock, and only to commit. The pass lists the bucket once, and
    /// compaction chooses from that listing and runs after it, on the pass's thread, so no
    /// pass lists its uploads while they wait for their commit (its segments are not
    /// `in_flight`: they carry no cut). Retention and deletion plan from what the pass lists:
    /// a manifest committed after its LIST (a compaction's among them) is newer than every
    /// one it keeps, and its checkpoint's uploads are `in_flight` (docs/gc.md, "Beside the
    /// checkpoints"). The manifests this writer commits reach the catalog
    /// through its inbox. Before, a pass held every commit: at 20 ms a request that is
    /// seconds, and a LIST per 1,000 manifests of the window.
    fn gc_pass_until(
        &self,
        now_ms: u64,
        stop: &AtomicBool,
    ) -> Result<crate::gc::Report, CheckpointError> {
        let Some(gc) = self.settings.gc.clone() else {
            return Err(CheckpointError::Refused(
                "GC is not enabled on this mount".into(),
            ));
        };
        let mut collector = self.collector.lock();
        let holds = || {
            if stop.load(Ordering::Acquire) {
                return Err(CheckpointError::Refused(
                    "the mount is stopping: GC deletes nothing more this pass".into(),
                ));
            }
            if self.fs.cache_failed() {
                return Err(CheckpointError::Refused(
                    "the checkpointer stopped after a failed flush or commit in the cache dir: \
                     GC deletes nothing more"
                        .into(),
                ));
            }
            self.holds_prefix()
        };
        holds()?;
        // Read before the LIST: a cut after the last settled one may commit at any time.
        let settled = self.cut_settled.load(Ordering::Acquire);
        let in_flight = |key: &str| segment_cut(key, &self.writer).is_some_and(|cut| cut > settled);
        // One LIST for the pass: compaction chooses from it, then retention and deletion
        // plan from it, for which the compaction's commit is one more after the LIST.
        let listed = self.rt.block_on(Listing::read(&*self.store))?;
        if let Some(c) = &gc.compact {
            match self.compact(c, &gc.retention, &listed, stop) {
                Ok(_) => {}
                Err(e @ (CheckpointError::Fenced { .. } | CheckpointError::CacheFailed { .. })) => {
                    return Err(e)
                }
                // Retention and deletion go on: a compaction that keeps failing (a source
                // that does not check out) must not stop the bucket's GC.
                Err(e) => warn!(error = %e, "compaction failed; this pass goes on without it"),
            }
        }
        let report = collector.pass_listed(
            &self.store,
            &self.rt,
            &gc.retention,
            now_ms,
            crate::gc::Mode::Delete {
                holds: &holds,
                in_flight: &in_flight,
            },
            listed,
        )?;
        crate::metrics::global().gc_pass(&report);
        *self.last_gc.lock() = Some(report.clone());
        Ok(report)
    }

    /// Whether this mount still holds the prefix, for GC, which runs beside checkpoints and so
    /// leaves the view alone (`check_writer_locked` may apply a commit to it): not fenced, and
    /// the epoch after the view's is free or this writer's own (a commit under way, or one
    /// whose answer was lost, which the checkpointer settles).
    fn holds_prefix(&self) -> Result<(), CheckpointError> {
        let epoch = self.view_epoch_unless_fenced()?;
        // After one of ours (its answer possibly lost, and not yet in the view), a takeover
        // would have put its fence on the next key.
        for next in [epoch + 1, epoch + 2] {
            match self.ours_at(next)? {
                None => return Ok(()),
                Some(true) => {}
                Some(false) => {
                    self.fence(next);
                    return Err(CheckpointError::Fenced { epoch: next });
                }
            }
        }
        Ok(()) // two commits of ours landed since the view was read
    }

    /// Whether this writer wrote manifest `epoch`, if the bucket has it (a HEAD, then a GET if
    /// it does). One that does not decode is not its own (`own_earlier_commit` says why).
    fn ours_at(&self, epoch: u64) -> Result<Option<bool>, CheckpointError> {
        let key = manifest_key(epoch);
        if self.rt.block_on(self.store.head(&key))?.is_none() {
            return Ok(None);
        }
        match self.rt.block_on(self.store.get(&key, None)) {
            Ok(bytes) => Ok(Some(
                Manifest::decode(&bytes, &key).is_ok_and(|m| m.writer == self.writer),
            )),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a GC pass is running now (its collector is taken for the whole pass).
    pub fn gc_pass_under_way(&self) -> bool {
        self.collector.is_locked()
    }

    /// The last GC pass's report, if one ran.
    pub fn last_gc(&self) -> Option<crate::gc::Report> {
        self.last_gc.lock().clone()
    }

    /// A GC pass's compaction: sources chosen, read, rewritten and uploaded without the
    /// checkpoint lock, so that commits go on meanwhile (a rewrite took 0.6-1.2 s in
    /// BENCHMARKS.md's runs); then, under the lock, the new extents that still hold against
    /// the view as it is now (`still_current`) committed on it. Returns the epoch committed,
    /// if any.
    ///
    /// The new segments are named by the epoch after the view they were read from, which
    /// commits beside the rewrite may take first: the compaction's manifest is then a delta,
    /// and a delta's summary counts every segment it names as its own, whatever the epoch in
    /// the name (docs/gc.md, "Beside the checkpoints").
    ///
    /// Once `stop` is set it commits nothing: the final checkpoint of a mount that stops does
    /// not wait for a pass under way, and must be the last manifest it commits (a clean
    /// stop, which the next start takes over without a fence).
    fn compact(
        &self,
        c: &crate::gc::compact::CompactSettings,
        retention: &crate::gc::Retention,
        listed: &Listing,
        stop: &AtomicBool,
    ) -> Result<Option<u64>, CheckpointError> {
        let started = Instant::now();
        // A moment of the view (commits change it under its write lock), copied only when
        // there is something to compact.
        let floor = self.compaction_floor(retention, listed.state.as_ref());
        let stopping = || stop.load(Ordering::Acquire);
        if stopping() {
            return Ok(None);
        }
        let (then, sources) = {
            let view = self.view.read();
            // Manifests too: one that carries runs is a small segment to compaction.
            let sources = crate::gc::compact::choose(&view, &|key| listed.size_of(key), floor, c);
            if sources.is_empty() {
                return Ok(None);
            }
            (view.clone(), sources)
        };
        self.holds_prefix()?;
        // This compaction's new segments, and all of them if it fails. The epoch in the name
        // is not this compaction's own (that is known only at its commit), so the nonce is
        // what keeps two compactions' keys apart: one whose commit's answer was lost, not yet
        // in the view, has the same epoch in its names as the next.
        let prefix = format!(
            "segments/{:020}-{}-c{:016x}-",
            then.epoch + 1,
            self.writer,
            fastrand::u64(..)
        );
        let delete_uploads = || {
            self.rt.block_on(async {
                for o in self.store.list(&prefix).await.unwrap_or_default() {
                    let _ = self.store.delete(&o.key).await;
                }
            })
        };
        let abandon = || {
            delete_uploads();
            info!("the mount is stopping: compaction ends without a commit, and deletes what it uploaded");
            Ok(None)
        };
        // Each class is rewritten on its own: a WAL segment's pages stay in WAL segments.
        // Runs a manifest carried go to data segments (WAL pages among them included: only
        // runs older than the retention window are compacted, and WAL that old is rarely
        // still in use). New segments upload as they fill; they are not the checkpoints'
        // uploads, whose progress `upload_progress` shows.
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // A stop ends the rewrite at its next upload (`abandon` below).
        let put = |key: String, bytes: Vec<u8>| {
            if stopping() {
                let e = StoreError::Permanent {
                    op: "put",
                    key,
                    message: "the mount is stopping".into(),
                };
                return futures_util::future::ready(Err(e)).boxed();
            }
            put_segment(self.store.clone(), key, bytes, sent.clone()).boxed()
        };
        let mut extents = Vec::new();
        let (mut count, mut written) = (0, 0);
        for class in [Class::Data, Class::Wal] {
            let of_class: Vec<(String, u64)> = sources
                .iter()
                .filter(|(k, _)| match Class::of_key(k) {
                    Class::Manifest => class == Class::Data,
                    c => c == class,
                })
                .cloned()
                .collect();
            if of_class.is_empty() {
                continue;
            }
            if stopping() {
                return abandon();
            }
            let suffix = if class == Class::Wal {
                WAL_SEGMENT_SUFFIX
            } else {
                ".seg"
            };
            let key_of = |n: usize| format!("{prefix}{n:04}{suffix}");
            let out = crate::gc::compact::Output {
                key_of: &key_of,
                zstd_level: self.settings.zstd_level,
                segment_bytes: self.settings.segment_bytes,
                uploads: self.settings.upload_concurrency,
                put: &put,
            };
            let done = self.rt.block_on(crate::gc::compact::rewrite(
                &*self.store,
                &then,
                &of_class,
                &out,
            ));
            let done = match done {
                Ok(done) => done,
                Err(_) if stopping() => return abandon(),
                Err(e) => {
                    // What it uploaded is garbage: deleted now, or by GC after the grace.
                    delete_uploads();
                    return Err(e);
                }
            };
            extents.extend(done.extents);
            count += done.segments;
            written += done.bytes;
        }
        let read: u64 = sources.iter().map(|(_, size)| size).sum();
        crate::failpoint::hit("compact-after-upload");

        let one = self.running.lock();
        // Under the lock the final checkpoint takes after it sets `stop`: either this commit
        // comes before the final one, or it sees the stop.
        if stopping() {
            drop(one);
            return abandon();
        }
        // A takeover since is found by the commit's create-if-absent, as a checkpoint's is
        // (no HEAD first: at 20 ms a request, 20 ms more of holding the commits). A fenced
        // writer deletes nothing, its uploads included: the new writer's GC collects them
        // after the grace.
        self.view_epoch_unless_fenced()?;
        if let Some(e) = self.stopped() {
            return Err(e);
        }
        let uploaded: HashSet<Arc<str>> = extents.iter().map(|x| x.segment.clone()).collect();
        // The view changes only under the lock held here.
        let committing = {
            let now = self.view.read();
            let kept = crate::gc::compact::still_current(&then, &now, extents);
            (!kept.extents.is_empty()).then(|| {
                let delta = Manifest {
                    epoch: now.epoch + 1,
                    parent: Some(now.epoch),
                    created_ms: now_ms(),
                    page_size: PAGE_SIZE as u32,
                    writer: self.writer.clone(),
                    next_ino: now.next_ino,
                    extents: kept.extents,
                    ..Manifest::default()
                };
                // With no commit beside it, the epoch in its segments' names is its own, so
                // it may be the base that is due (a base's summary counts the segments named
                // by its epoch): on an idle database nothing else would write one. Otherwise
                // a delta, and the next checkpoint writes the base.
                let (m, next) = if now.epoch == then.epoch {
                    self.as_committed(&now, delta)
                } else {
                    (delta, None)
                };
                (m, next, kept.dropped_pages)
            })
        };
        let Some((m, next, dropped)) = committing else {
            // Every page it moved was rewritten or removed meanwhile.
            drop(one);
            delete_uploads();
            return Ok(None);
        };
        let base = next.is_some();
        let committed = self.commit(&m);
        self.settle_note();
        self.note_committed(base, committed?.plain);
        crate::failpoint::hit("compact-after-commit");
        self.apply_to_view(&m, next, None);
        self.gc_inbox.post(&m);
        let recorded = self.record(m.epoch);
        drop(one);
        // New segments none of whose pages made it into the manifest: no manifest names them.
        let named: HashSet<&Arc<str>> = m.extents.iter().map(|x| &x.segment).collect();
        self.rt.block_on(async {
            for key in uploaded.iter().filter(|k| !named.contains(k)) {
                let _ = self.store.delete(key).await;
            }
        });
        recorded?;
        info!(
            epoch = m.epoch,
            base,
            read_from = then.epoch,
            sources = sources.len(),
            read_bytes = read,
            segments = count,
            written_bytes = written,
            pages_changed_meanwhile = dropped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compaction committed: the pages in use moved out of mostly-dead or small segments"
        );
        Ok(Some(m.epoch))
    }

    /// Segments older than the oldest retained checkpoint are compaction's to choose from: as
    /// this process's last pass found it, or before its first, as the last pass of any
    /// process found it with the same retention and recorded it in `gc/state` (none if none
    /// did; not `oldest_retained` there, which earlier passes with a shorter window may have
    /// raised above what this window retains). A
    /// Machine that stops when idle may run one pass per start: had compaction waited for a
    /// pass of the process's own, such a database would never compact. (The floor only
    /// keeps compaction from copying what retained checkpoints still name, which would not
    /// free their sources; what it moves is committed only where still current, whatever
    /// the floor.)
    fn compaction_floor(
        &self,
        retention: &crate::gc::Retention,
        state: Option<&crate::gc::State>,
    ) -> u64 {
        if let Some(r) = self.last_gc.lock().as_ref() {
            return r.oldest_retained;
        }
        state
            .filter(|s| {
                s.window_ms == retention.window.as_millis() as u64
                    && s.min_checkpoints == retention.min_checkpoints
            })
            .map_or(0, |s| s.pass_oldest)
    }

    /// GC passes every `--gc-interval`, the first a minute after the start (or the interval,
    /// if shorter: `GcSettings::first_after`), until `stop` is set or this mount is fenced,
    /// on a thread of their own beside `run` (docs/gc.md): a pass that lists a day of
    /// manifests must not hold the commits that fsyncs wait for. Nothing when GC is off.
    pub fn run_gc(&self, stop: &AtomicBool) {
        let Some((interval, first_after)) = self
            .settings
            .gc
            .as_ref()
            .map(|g| (g.interval, g.first_after))
        else {
            return;
        };
        let tick = Duration::from_millis(100);
        // The first pass comes `first_after` after the start, the others `interval` apart.
        let mut last = Instant::now();
        let mut wait = first_after;
        // A failed flush or commit in the cache dir ends the checkpointer (`run`), and GC
        // with it.
        let ended = || {
            stop.load(Ordering::Acquire)
                || self.fenced.load(Ordering::Acquire)
                || self.fs.cache_failed()
        };
        while !ended() {
            let waited = last.elapsed();
            if waited < wait {
                std::thread::sleep(tick.min(wait - waited));
                continue;
            }
            last = Instant::now();
            wait = interval;
            match self.gc_pass_until(now_ms(), stop) {
                Ok(r) => tracing::debug!(?r, "GC pass"),
                Err(e @ CheckpointError::Fenced { .. }) => {
                    error!(error = %e, "GC stops: this mount no longer holds the prefix");
                    return;
                }
                Err(_) if ended() => return,
                Err(e) => {
                    warn!(error = %e, "GC pass skipped; nothing was deleted that a retained checkpoint needs, and the next pass tries again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The first pass of a writer with the default `--gc-interval` (10 minutes) comes a minute
    // after its start; with a shorter interval, at the interval.
    #[test]
    fn the_first_pass_comes_a_minute_after_the_start_or_at_a_shorter_interval() {
        let every = |secs| {
            let s = GcSettings::every(Duration::from_secs(secs), Default::default(), None);
            (s.interval.as_secs(), s.first_after.as_secs())
        };
        assert_eq!(every(600), (600, 60));
        assert_eq!(every(3600), (3600, 60));
        assert_eq!(every(20), (20, 20));
        assert_eq!(every(60), (60, 60));
    }
}
