//! The bucket over time: which checkpoints are retained, which objects no retained checkpoint
//! needs, and deleting those in the order that cannot lose a needed byte (DESIGN.md, "The
//! bucket over time"; docs/gc.md).
//!
//! A pass, in order:
//! 1. *List* `manifests/`, `segments/` and the catalog's chunks (`gc/catalog/`), and take in
//!    what the catalog does not know yet of each manifest (its time, its parent, the
//!    segments it uploaded: `Summary::of`), from the chunks that cover it or from the
//!    manifest itself.
//! 2. *Retain* the latest checkpoint, the newest `min_checkpoints`, and every one committed
//!    within `window`. The oldest of them is restorable, so its chain back to a base is
//!    needed, and so is every manifest after it.
//! 3. *Live* segments: those the oldest retained checkpoint's image names, and those any
//!    later manifest uploaded. Every retained image is made of them.
//! 4. *Unneeded*: manifests older than the first needed one, segments that are not live. An
//!    unneeded object becomes *pending* with the time a pass first saw it so; it is deleted
//!    by a later pass (never the one that drained it) once it has been pending for `grace`.
//!    Uploads not yet committed (a checkpoint in flight elsewhere, a crashed writer's) are
//!    unneeded too, and the same grace protects them: it is the orphan horizon. The writer's
//!    own checkpoint under way beside the pass (`Mode::Delete`'s `in_flight`) waits however
//!    long it takes.
//!    A *fence* (a takeover's manifest, docs/gc.md) is never unneeded: its key is what fails
//!    the next commit of the writer it took over from, however long that writer stalled.
//! 5. *Raise the boundary* (`gc/boundary`) above every manifest about to be deleted, before
//!    deleting any: a writer whose tip is no fence of its own checks it after a commit, so
//!    one whose create-if-absent lands on a collected epoch learns that it committed into
//!    the past.
//! 6. *Check* that the prefix is still this writer's, then *delete* in batches, checking
//!    again between batches. Any error ends the pass; what it did not delete stays pending.
//!
//! A crash anywhere leaks objects at worst: the next pass finds them unneeded again.

mod catalog;
mod chunks;
pub mod compact;
mod listing;
mod reads;
mod state;

/// What one pass found and did: a snapshot that /status and /metrics read too.
pub use crate::status::GcReport as Report;
pub use catalog::{Catalog, Summary};
pub use chunks::{chunk_key, chunk_range, decode_chunk, CATALOG_PREFIX, CHUNK_EPOCHS};
pub use listing::{Listing, Manifests};
use reads::chain_view;
use state::{raise_boundary, STATE_VERSION};
pub use state::{read_boundary, read_state, State, BOUNDARY_KEY, STATE_KEY};
pub(crate) use state::{seal_json, unseal_json};

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::checkpoint::{epoch_of_key, manifest_key, CheckpointError};
use crate::manifest::view::View;
use crate::manifest::Manifest;
use crate::store::{ObjectStore, PutMode, StoreError};

/// Deletes sent at once; the prefix is checked again between batches.
const DELETE_BATCH: usize = 100;

/// How long checkpoints stay restorable, and how long an unneeded object waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Every checkpoint committed within this long stays restorable (`--retain`).
    pub window: Duration,
    /// The newest this many checkpoints stay restorable whatever their age
    /// (`--retain-checkpoints`).
    pub min_checkpoints: u32,
    /// An object no retained checkpoint needs is deleted once it has been seen so for this
    /// long (`--gc-grace`): readers of a checkpoint that just left the window, and uploads
    /// not yet committed (but the writer's own under way), have this long.
    pub grace: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            window: Duration::from_secs(24 * 3600),
            min_checkpoints: 8,
            grace: Duration::from_secs(3600),
        }
    }
}

/// Who is asking, and whether it may delete.
pub enum Mode<'a> {
    /// Compute and report; write and delete nothing.
    DryRun,
    /// Delete, if `holds` keeps answering Ok (this process still holds the prefix).
    Delete {
        holds: &'a (dyn Fn() -> Result<(), CheckpointError> + Sync),
        /// Whether a segment key is an upload of the writer's own that may still be committed
        /// (a checkpoint under way beside the pass): never deleted while its epoch is above
        /// every listed manifest.
        in_flight: &'a (dyn Fn(&str) -> bool + Sync),
    },
}

/// The manifests a writer committed since the last pass took them in: the next pass need not
/// read them back. Commits post here, not into the catalog, because a pass holds the catalog
/// for as long as it runs and commits go on beside it.
#[derive(Debug, Default)]
pub struct Inbox(parking_lot::Mutex<Vec<(u64, Summary)>>);

impl Inbox {
    pub fn post(&self, m: &Manifest) {
        self.0.lock().push((m.epoch, Summary::of(m)));
    }
}

/// A pass over a bucket. The catalog lives as long as the collector, so a writer's passes
/// read each manifest once, and a deleting pass keeps it in the bucket too, in chunks of
/// `CHUNK_EPOCHS` manifests (src/gc/chunks.rs), so a new process reads each manifest of a
/// closed range of epochs from one object.
#[derive(Debug)]
pub struct Collector {
    pub catalog: Catalog,
    inbox: Arc<Inbox>,
    /// Epochs a chunk of the catalog this collector writes covers.
    chunk_epochs: u64,
}

impl Default for Collector {
    fn default() -> Self {
        Collector::with_inbox(Arc::default())
    }
}

/// The plan of one pass: pure arithmetic over what was listed.
#[derive(Debug, Default)]
struct Plan {
    report: Report,
    /// Raise the boundary to this before deleting (None: no manifest is deleted).
    raise_to: Option<u64>,
    delete: Vec<(String, u64)>,
    state: State,
    /// The ETag of the `gc/state` the pass read (None: there was none).
    state_etag: Option<String>,
    /// Ranges of epochs whose chunk of the catalog a deleting pass writes, with the epochs
    /// from this one on (the boundary the pass leaves: no reader takes one below it).
    chunks_due: Vec<Range<u64>>,
    chunks_from: u64,
}

impl Collector {
    /// A collector whose catalog also takes in what is posted to `inbox`.
    pub fn with_inbox(inbox: Arc<Inbox>) -> Collector {
        Collector {
            catalog: Catalog::default(),
            inbox,
            chunk_epochs: CHUNK_EPOCHS,
        }
    }

    /// A collector whose chunks of the catalog cover `epochs` epochs each, not
    /// `CHUNK_EPOCHS`: tests reach a chunk's end with tens of manifests. (A reader takes any
    /// chunk's range from its key.)
    pub fn with_chunk_epochs(mut self, epochs: u64) -> Collector {
        assert!(epochs > 0, "a chunk covers at least one epoch");
        self.chunk_epochs = epochs;
        self
    }

    /// A pass that lists the bucket itself.
    pub fn pass(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        rt: &tokio::runtime::Handle,
        retention: &Retention,
        now_ms: u64,
        mode: Mode<'_>,
    ) -> Result<Report, CheckpointError> {
        let listed = rt.block_on(Listing::read(&**store))?;
        self.pass_listed(store, rt, retention, now_ms, mode, listed)
    }

    /// A pass over what `listed` holds: a manifest committed after its LIST is newer than
    /// every one the pass keeps, and uploads not listed are left alone.
    pub fn pass_listed(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        rt: &tokio::runtime::Handle,
        retention: &Retention,
        now_ms: u64,
        mode: Mode<'_>,
        listed: Listing,
    ) -> Result<Report, CheckpointError> {
        let dry_run = matches!(mode, Mode::DryRun);
        let in_flight = match &mode {
            Mode::Delete { in_flight, .. } => *in_flight,
            Mode::DryRun => &|_: &str| false,
        };
        let mut plan =
            rt.block_on(self.plan(store, listed, retention, now_ms, dry_run, in_flight))?;
        if plan.report.dry_run && !dry_run {
            // No checkpoint to plan from: nothing to delete, and the state stays as it is.
            return Ok(plan.report);
        }
        match mode {
            Mode::DryRun => {
                plan.report.pending += plan.delete.len() as u64;
                plan.report.pending_bytes += plan.delete.iter().map(|(_, s)| s).sum::<u64>();
                Ok(plan.report)
            }
            // The holder check blocks on the runtime itself: run outside it.
            Mode::Delete { holds, .. } => self.execute(store, rt, plan, holds),
        }
    }

    /// Steps 1 to 4.
    async fn plan(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        listed: Listing,
        retention: &Retention,
        now_ms: u64,
        dry_run: bool,
        in_flight: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Plan, CheckpointError> {
        // Read after the LIST (`listed`) and before any chunk: a key at or above this boundary
        // has never been freed (GC frees keys only below a boundary it has raised, and it
        // only rises), so what any chunk says of such an epoch is what the manifest at that
        // key says (src/gc/chunks.rs).
        let boundary = read_boundary(&**store).await?;
        let Listing {
            manifests,
            segments,
            chunks,
            state,
            state_etag,
        } = listed;
        let old = state.unwrap_or_default();
        // What this writer committed since the last pass: not read back. A manifest committed
        // after the LIST stays for the next pass, which lists it.
        let newest = manifests.last();
        let mut posted = std::mem::take(&mut *self.inbox.0.lock());
        posted.sort_by_key(|(epoch, _)| *epoch);
        let is_posted = |epoch: u64| posted.binary_search_by_key(&epoch, |(e, _)| *e).is_ok();
        // Every manifest is read once, to know whether it is a fence; below the boundary
        // not those the state already classed. A pending key is no fence: it was read before
        // it was pended, and a fence landing on it after it was deleted would be a takeover
        // of a view GC had already left behind, which reads the boundary and gives up.
        let is_unknown = |&epoch: &u64| {
            !(self.catalog.contains(epoch)
                || is_posted(epoch)
                || (epoch < boundary
                    && (old.fences.contains(&epoch)
                        || old.pending.contains_key(&manifest_key(epoch)))))
        };
        // Counted first: as long as the window on a first pass, and not to be doubled.
        let epochs = || manifests.iter().map(|(epoch, _)| epoch);
        let mut unknown = Vec::with_capacity(epochs().filter(is_unknown).count());
        unknown.extend(epochs().filter(is_unknown));
        // What the catalog in the bucket says of them, then the manifests it did not cover.
        let unusable = self
            .read_chunks(&**store, &chunks, &mut unknown, boundary)
            .await;
        // Read before the posted ones go in, which are usually newer: the catalog is a vector
        // in epoch order, and what is read then goes on its end (else it is sorted once).
        let read = self.read_unknown(&**store, &unknown, boundary).await;
        drop(unknown);
        self.catalog.extend(posted);
        self.catalog
            .retain(|e| manifests.contains(e) || newest.is_none_or(|n| e > n));
        let unreadable = read?;
        let chunks_due = match dry_run {
            true => Vec::new(),
            false => {
                let present = chunks
                    .iter()
                    .filter(|o| !unusable.contains(&o.key))
                    .filter_map(|o| chunk_range(&o.key))
                    .collect();
                self.chunks_due(&manifests, boundary, &present)
            }
        };
        let Some(plan_in) = self.retained(&manifests, boundary, retention, now_ms) else {
            // No checkpoint yet: nothing to keep, nothing known to be garbage.
            let mut plan = Plan::default();
            plan.report.boundary = boundary;
            plan.report.dry_run = true;
            return Ok(plan);
        };
        // The image of the oldest retained checkpoint, from its chain.
        let view = chain_view(&**store, &plan_in.chain_of_oldest).await?;
        let mut live: HashSet<String> = view
            .extents
            .values()
            .flat_map(|map| map.values().map(|(_, e)| e.segment.to_string()))
            .collect();
        live.extend(
            self.catalog
                .segments_after(plan_in.oldest)
                .map(|k| k.to_string()),
        );
        let named: HashSet<&str> = self.catalog.segments().map(|k| &**k).collect();
        let mut plan = Plan {
            state_etag,
            chunks_due,
            ..Plan::default()
        };
        let r = &mut plan.report;
        r.pass_unix_ms = now_ms;
        r.latest_epoch = plan_in.latest;
        r.retained = plan_in.retained;
        r.oldest_retained = plan_in.oldest;
        r.boundary = boundary;
        r.chain_length = plan_in.chain_of_latest;
        r.manifests = manifests.len() as u64;
        r.segments = segments.len() as u64;
        r.catalog_chunks = chunks.len() as u64;
        r.bucket_bytes =
            manifests.bytes() + segments.iter().chain(&chunks).map(|m| m.size).sum::<u64>();
        r.dry_run = dry_run;
        // Unneeded: manifests before the first needed one, segments not live. A manifest
        // whose inline runs a retained image still uses is live as a segment is: it stays,
        // below the boundary (raised past it below), where it is no checkpoint any more but
        // still holds pages, until those are rewritten or overwritten.
        // Fences stay for good, below the boundary too, and so does what GC cannot read
        // there (it is read again each pass, not listed in the state).
        let fences: BTreeSet<u64> = manifests
            .below(plan_in.first_needed)
            .map(|(e, _)| e)
            .filter(|e| old.fences.contains(e) || self.catalog.get(*e).is_some_and(|s| s.fence()))
            .collect();
        let (pinned, mut unneeded): (Vec<_>, Vec<(String, u64)>) = manifests
            .below(plan_in.first_needed)
            .filter(|(e, _)| !fences.contains(e) && !unreadable.contains(e))
            .map(|(e, size)| (manifest_key(e), size))
            .partition(|(key, _)| live.contains(key));
        r.pinned = pinned.len() as u64;
        r.fences = fences.len() as u64;
        r.unreadable = unreadable.len() as u64;
        // A chunk of the catalog whose epochs are all below the boundary tells a reader
        // nothing any more (it takes no epoch below its boundary from a chunk).
        unneeded.extend(
            chunks
                .iter()
                .filter(|o| chunk_range(&o.key).is_some_and(|r| r.end <= boundary))
                .map(|o| (o.key.clone(), o.size)),
        );
        // An upload of the writer's own checkpoint under way beside the pass (or committed
        // since the LIST) looks like an orphan: its epoch is above every listed manifest. It
        // waits, however long, and is not counted as an orphan. A failed attempt's uploads
        // are not `in_flight`: the grace collects them, as it collects a crash's.
        let uncommitted = |key: &str| {
            segment_epoch(key).is_some_and(|e| newest.is_none_or(|n| e > n)) && in_flight(key)
        };
        for s in &segments {
            if !live.contains(&s.key) {
                unneeded.push((s.key.clone(), s.size));
                // An orphan: no manifest names it, and it is not the leftover of a
                // checkpoint GC has collected (its epoch's manifest is still here, or its
                // epoch was never committed: a failed or crashed upload).
                let epoch = segment_epoch(&s.key);
                let collected =
                    epoch.is_some_and(|e| e <= plan_in.latest && !self.catalog.contains(e));
                if !named.contains(s.key.as_str()) && !collected && !uncommitted(&s.key) {
                    r.orphans += 1;
                }
            }
        }
        let grace_ms = retention.grace.as_millis() as u64;
        plan.state = State {
            version: STATE_VERSION,
            pass_ms: now_ms,
            window_ms: retention.window.as_millis() as u64,
            min_checkpoints: retention.min_checkpoints,
            grace_ms,
            oldest_retained: old.oldest_retained.max(plan_in.oldest),
            pass_oldest: plan_in.oldest,
            pending: BTreeMap::new(),
            fences,
        };
        for (key, size) in unneeded {
            if uncommitted(&key) {
                // Pending, but not in the state: should its attempt fail, its grace starts
                // at the first pass after that.
                r.pending += 1;
                r.pending_bytes += size;
                continue;
            }
            match old.pending.get(&key) {
                Some(&since) if since + grace_ms <= now_ms => {
                    // Kept in the state too: a crash before it is deleted leaves it due.
                    plan.state.pending.insert(key.clone(), since);
                    plan.delete.push((key, size));
                }
                since => {
                    r.pending += 1;
                    r.pending_bytes += size;
                    plan.state
                        .pending
                        .insert(key, since.copied().unwrap_or(now_ms));
                }
            }
        }
        plan.raise_to = plan
            .delete
            .iter()
            .chain(&pinned)
            .filter_map(|(k, _)| epoch_of_key(k))
            .chain(plan.state.fences.iter().copied())
            .max()
            .map(|e| e + 1)
            .filter(|&b| b > boundary);
        // No chunk whose epochs all fall below the boundary this pass leaves: no reader would
        // take anything from it.
        let left = plan.raise_to.unwrap_or(boundary);
        plan.chunks_due.retain(|r| r.end > left);
        plan.chunks_from = left;
        let image = self.image_bytes(&**store, &plan_in).await?;
        plan.report.image_bytes = image;
        plan.report.space_amplification = if image > 0 {
            plan.report.bucket_bytes as f64 / image as f64
        } else {
            0.0
        };
        Ok(plan)
    }

    /// Steps 5 and 6: boundary, check, delete in batches, the pending list.
    fn execute(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        rt: &tokio::runtime::Handle,
        mut plan: Plan,
        holds: &(dyn Fn() -> Result<(), CheckpointError> + Sync),
    ) -> Result<Report, CheckpointError> {
        // What waits is recorded first: a crash below leaves it to the next pass. Only over
        // the state this pass read: another pass may have written one since (`bucketfs gc`
        // by hand, or a new writer's once this one's final checkpoint was taken, a pass
        // under way running on after it), and this one, planned from an older LIST, must not
        // replace it (its pending times would start again, its window go back).
        let mode = match plan.state_etag.take() {
            Some(etag) => PutMode::Replace { etag },
            None => PutMode::Create,
        };
        match rt.block_on(store.put(STATE_KEY, seal_json(&plan.state), mode)) {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed { .. }) => {
                return Err(CheckpointError::Refused(
                    "another GC pass wrote gc/state while this one ran; this one records and \
                     deletes nothing"
                        .into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        // The catalog in the bucket: what this pass knows of closed ranges of epochs that no
        // chunk holds yet (a writer's first pass on a bucket from before chunks: all of them).
        let chunks = self.write_chunks(&**store, rt, &plan.chunks_due, plan.chunks_from, holds)?;
        if chunks > 0 {
            info!(chunks, "GC wrote chunks of its catalog to the bucket");
        }
        if plan.delete.is_empty() && plan.raise_to.is_none() {
            return Ok(plan.report);
        }
        if let Some(b) = plan.raise_to {
            holds()?;
            rt.block_on(raise_boundary(&**store, b))?;
            plan.report.boundary = b;
            crate::failpoint::hit("gc-after-boundary");
        }
        // Segments first, then manifests oldest first: a crash between leaves manifests
        // that name deleted segments only below the boundary, where nothing reads them.
        plan.delete
            .sort_by_key(|(k, _)| (epoch_of_key(k).is_some(), k.clone()));
        for batch in plan.delete.chunks(DELETE_BATCH) {
            holds()?;
            let done: Vec<Result<(String, u64), StoreError>> = rt.block_on(async {
                let mut deletes = tokio::task::JoinSet::new();
                for (key, size) in batch {
                    let (store, key, size) = (store.clone(), key.clone(), *size);
                    deletes.spawn(async move { store.delete(&key).await.map(|()| (key, size)) });
                }
                let mut done = Vec::new();
                while let Some(r) = deletes.join_next().await {
                    done.push(r.expect("a delete task does not panic"));
                }
                done
            });
            // (The catalog forgets a deleted manifest at the next pass, which does not list
            // it: removing each from the middle of its vector here would move the rest.)
            for r in done {
                let (_, size) = r?;
                plan.report.deleted += 1;
                plan.report.deleted_bytes += size;
            }
            crate::failpoint::hit("gc-after-delete-batch");
        }
        info!(
            deleted = plan.report.deleted,
            deleted_bytes = plan.report.deleted_bytes,
            boundary = plan.report.boundary,
            "GC deleted objects no retained checkpoint needs"
        );
        Ok(plan.report)
    }

    /// Step 2: which checkpoints are retained, and which manifests that makes needed.
    fn retained(
        &self,
        manifests: &Manifests,
        boundary: u64,
        retention: &Retention,
        now_ms: u64,
    ) -> Option<Retained> {
        let s = &self.catalog;
        // Checkpoints: at or above the boundary, with their chain back to a base there. (A
        // manifest kept for the runs it carries has the boundary raised past it by the pass
        // that keeps it; until then it may still look like a checkpoint, but one older than
        // the window and than the newest `min_checkpoints`, so never the oldest retained.)
        // In ascending order, so a parent's verdict is in `valid` before its child asks.
        let mut valid: Vec<u64> = Vec::with_capacity(manifests.len());
        for e in manifests.iter().map(|(e, _)| e).filter(|&e| e >= boundary) {
            let whole = s.get(e).is_some_and(|m| match m.parent() {
                None => true,
                Some(p) => p < e && valid.binary_search(&p).is_ok(),
            });
            if whole {
                valid.push(e);
            }
        }
        let latest = *valid.last()?;
        let window_ms = retention.window.as_millis() as u64;
        // The window: every checkpoint committed within it.
        let mut oldest = latest;
        for &e in &valid {
            if s.get(e)
                .is_some_and(|m| m.created_ms() + window_ms >= now_ms)
            {
                oldest = oldest.min(e);
                break;
            }
        }
        // The floor: the newest `min_checkpoints`, whatever their age. A compaction's
        // manifest counts as one (docs/gc.md).
        let floor = valid
            .len()
            .saturating_sub(retention.min_checkpoints.max(1) as usize);
        oldest = oldest.min(valid[floor]);
        let retained = valid.iter().filter(|&&e| e >= oldest).count() as u64;
        let chain_of_oldest = chain_epochs(&self.catalog, oldest);
        let first_needed = *chain_of_oldest.last().expect("a chain has its start");
        Some(Retained {
            latest,
            oldest,
            retained,
            chain_of_latest: chain_epochs(&self.catalog, latest).len() as u64,
            chain_of_oldest,
            first_needed,
        })
    }

    /// The stored bytes the latest checkpoint's image uses: for each run it names, the share
    /// of the run's pages its extents cover.
    async fn image_bytes(
        &self,
        store: &dyn ObjectStore,
        r: &Retained,
    ) -> Result<u64, CheckpointError> {
        let view = chain_view(store, &chain_epochs(&self.catalog, r.latest)).await?;
        Ok(image_bytes(&view))
    }
}

/// The epoch a segment's key begins with.
pub fn segment_epoch(key: &str) -> Option<u64> {
    key.strip_prefix("segments/")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The epoch of an object that holds runs: a segment, or a manifest carrying its own.
pub fn run_holder_epoch(key: &str) -> Option<u64> {
    segment_epoch(key).or_else(|| epoch_of_key(key))
}

/// `from` and its parents back to a base (or to the first one not in the catalog), newest
/// first.
fn chain_epochs(c: &Catalog, from: u64) -> Vec<u64> {
    let mut out = vec![from];
    let mut at = from;
    while let Some(p) = c.get(at).and_then(|m| m.parent()) {
        if p >= at || !c.contains(p) {
            break;
        }
        out.push(p);
        at = p;
    }
    out
}

/// The stored bytes a view's extents use (a run counted once, in proportion to the pages
/// of it that are still part of the image).
pub fn image_bytes(view: &View) -> u64 {
    compact::live_bytes(view).values().sum()
}

struct Retained {
    latest: u64,
    oldest: u64,
    retained: u64,
    chain_of_latest: u64,
    chain_of_oldest: Vec<u64>,
    first_needed: u64,
}

/// Shared with the status and metrics: the last pass's report.
pub type LastReport = Arc<parking_lot::Mutex<Option<Report>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::segment::{Codec, RunLocation};
    use crate::manifest::Extent;

    fn names(view: &View) -> BTreeSet<Arc<str>> {
        let extents = view.extents.values().flat_map(|map| map.values());
        extents.map(|(_, e)| e.segment.clone()).collect()
    }

    /// A chain modelled on the checkpointer's: deltas whose runs go to segments of their own
    /// epoch or ride in the manifest, compactions' deltas whose segments carry an earlier
    /// epoch, truncations, and a base every 8th commit made as
    /// `as_committed` makes it (the view with the delta applied). The catalog holds each
    /// segment once, in the summary of the manifest that brought it, and for every choice of
    /// the oldest retained checkpoint a pass counts the same objects live as it would with
    /// every name of every manifest.
    #[test]
    fn summaries_hold_what_each_manifest_brought_and_a_pass_finds_the_same_live_set() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut view = View::default();
        let mut manifests: Vec<Manifest> = Vec::new();
        let mut images: Vec<View> = Vec::new();
        let mut uploaded: BTreeSet<Arc<str>> = BTreeSet::new();
        for epoch in 1..=240u64 {
            let mut m = Manifest {
                epoch,
                parent: (epoch > 1).then(|| epoch - 1),
                page_size: 8192,
                next_ino: 16,
                ..Manifest::default()
            };
            // A compaction's delta: its segments carry the epoch after the view it read, which
            // checkpoints beside it took first (never a base: one is written only when none
            // came beside it, and then the names carry its own epoch).
            let compaction = epoch % 8 != 1 && rng.u8(..6) == 0;
            for n in 0..rng.u64(1..4) {
                let key: Arc<str> = match rng.bool() {
                    _ if compaction => {
                        let named = epoch - rng.u64(1..4).min(epoch - 1);
                        format!("segments/{named:020}-w-c{epoch:016x}-{n:04}.seg").into()
                    }
                    true => manifest_key(epoch).into(),
                    false => format!("segments/{epoch:020}-w-{epoch}-{n:04}.seg").into(),
                };
                if key.starts_with("segments/") {
                    uploaded.insert(key.clone());
                }
                let run = RunLocation {
                    // Files 1-3, 4-6, 7-9: no two runs of a manifest overlap.
                    ino: 1 + 3 * n + rng.u64(0..3),
                    first_page: rng.u64(0..48),
                    pages: rng.u32(1..24),
                    offset: 0,
                    stored_len: 1,
                    codec: Codec::Raw,
                    crc: 0,
                };
                m.extents.push(Extent::whole(key, run));
            }
            if rng.u8(..8) == 0 {
                m.truncations.push((rng.u64(1..10), rng.u64(0..32)));
            }
            let m = match epoch % 8 == 1 {
                true => {
                    let mut next = view.clone();
                    next.apply(&m);
                    next.to_base(epoch, 0, 8192, "w")
                }
                false => m,
            };
            view.apply(&m);
            images.push(view.clone());
            manifests.push(m);
        }
        assert!(
            manifests
                .iter()
                .filter(|m| m.parent.is_none() && m.epoch > 1)
                .all(|b| b.extents.len() >= 10),
            "the bases after the first restate images of many extents"
        );
        let mut catalog = Catalog::default();
        for m in &manifests {
            catalog.insert(m);
        }
        let held: Vec<&Arc<str>> = catalog.segments().collect();
        assert_eq!(
            held.len(),
            uploaded.len(),
            "each segment held once, by the manifest that brought it"
        );
        for oldest in 1..=manifests.len() as u64 {
            let image = names(&images[oldest as usize - 1]);
            let after = manifests.iter().filter(|m| m.epoch > oldest);
            let every_name: BTreeSet<Arc<str>> = after
                .flat_map(|m| m.extents.iter().map(|e| e.segment.clone()))
                .chain(image.iter().cloned())
                .collect();
            let from_summaries: BTreeSet<Arc<str>> = catalog
                .segments_after(oldest)
                .cloned()
                .chain(image.iter().cloned())
                .collect();
            // Segments: the same live set. Manifests that carry runs, which summaries leave
            // out: a pass asks only about those older than the oldest retained checkpoint's
            // chain, and (the premise of leaving them out, a property of how bases are made)
            // any of those a later manifest names is in the image.
            let segments = |set: &BTreeSet<Arc<str>>| -> BTreeSet<Arc<str>> {
                set.iter()
                    .filter(|k| k.starts_with("segments/"))
                    .cloned()
                    .collect()
            };
            let (kept, named) = (segments(&from_summaries), segments(&every_name));
            let differ: Vec<_> = kept.symmetric_difference(&named).collect();
            assert!(
                differ.is_empty(),
                "oldest {oldest}: live by one count only: {differ:?}"
            );
            for key in every_name
                .iter()
                .filter(|k| epoch_of_key(k).is_some_and(|e| e <= oldest))
            {
                assert!(
                    image.contains(key),
                    "oldest {oldest}: {key} is live only by a later name"
                );
            }
        }
    }
}
