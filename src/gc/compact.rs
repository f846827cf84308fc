//! Compaction of segments: the pages the latest checkpoint still uses, moved out of segments
//! that are mostly dead (or out of many small ones) into new segments. The writer then commits
//! a manifest that points at the new copies; the sources stay until no retained checkpoint
//! names them, and GC deletes them after the grace like any other unneeded object (DESIGN.md,
//! rule 6: rewrite, publish, then delete later).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::task::JoinSet;

use crate::checkpoint::CheckpointError;
use crate::fs::PAGE_SIZE;
use crate::manifest::segment::{decode_run, SegmentBuilder};
use crate::manifest::view::{overlapping, View};
use crate::manifest::Extent;
use crate::store::{ObjectStore, StoreError};

#[derive(Clone, Debug, PartialEq)]
pub struct CompactSettings {
    /// Rewrite a segment once less than this share of its bytes is still used ...
    pub min_live: f64,
    /// ... and at least this many of its bytes are not: rewriting a tiny segment saves less
    /// than it costs, and a fresh one (its index and header are never "used") must not
    /// qualify again at once.
    pub min_dead: u64,
    /// A segment smaller than this is small; `min_small` small ones are merged.
    pub small_bytes: u64,
    pub min_small: usize,
    /// The most source bytes one pass reads, so that a pass stays short.
    pub max_bytes: u64,
}

impl Default for CompactSettings {
    fn default() -> Self {
        CompactSettings {
            // A segment at least this full wastes at most 1/0.7 - 1 = 43% of its bytes: what
            // keeps space amplification under 1.5 once history has left the window.
            min_live: 0.7,
            min_dead: 256 << 10,
            small_bytes: 4 << 20,
            min_small: 4,
            max_bytes: 256 << 20,
        }
    }
}

/// Stored bytes of each segment that the view's extents use (a run counted in proportion to
/// its pages still in use).
pub fn live_bytes(view: &View) -> HashMap<String, u64> {
    let mut runs: HashMap<(&str, u64), (u64, u64, u64)> = HashMap::new();
    for map in view.extents.values() {
        for (start, (end, e)) in map {
            let r = runs.entry((&*e.segment, e.run.offset)).or_insert((
                0,
                u64::from(e.run.pages),
                u64::from(e.run.stored_len),
            ));
            r.0 += end - start;
        }
    }
    let mut out: HashMap<String, u64> = HashMap::new();
    for ((segment, _), (used, pages, stored)) in runs {
        *out.entry(segment.to_string()).or_default() += stored * used.min(pages) / pages.max(1);
    }
    out
}

/// The segments worth rewriting (and manifests carrying runs, which count as segments), with
/// their stored sizes: those under `min_live` used, then, if at least `min_small`
/// small ones are left, those; oldest first, up to `max_bytes` in all. `size_of` gives a
/// listed object's size (None: not listed, so not chosen).
///
/// Only segments written before `before_epoch` (the oldest retained checkpoint) qualify. A
/// source stays in the bucket as long as a retained checkpoint names it, so rewriting a
/// segment inside the window only adds a copy; and pages written recently are the ones still
/// being rewritten, which GC collects without help once they are dead. What is left live in a
/// segment older than the window is long-lived: that is worth packing. (A first version
/// compacted inside the window and doubled the bucket over a five-minute pgbench run:
/// BENCHMARKS.md.)
pub fn choose(
    view: &View,
    size_of: &dyn Fn(&str) -> Option<u64>,
    before_epoch: u64,
    s: &CompactSettings,
) -> Vec<(String, u64)> {
    // What the latest image uses: anything else is GC's, not compaction's.
    let live = live_bytes(view);
    let mut sparse = Vec::new();
    let mut small = Vec::new();
    for (key, used) in live {
        if super::run_holder_epoch(&key).is_none_or(|e| e >= before_epoch) {
            continue; // inside the retention window
        }
        let Some(size) = size_of(&key) else {
            continue;
        };
        if (used as f64) < s.min_live * size as f64 && size.saturating_sub(used) >= s.min_dead {
            sparse.push((key, size));
        } else if size < s.small_bytes {
            small.push((key, size));
        }
    }
    if small.len() < s.min_small {
        small.clear();
    }
    // Keys begin with the zero-padded epoch: in key order is oldest first.
    sparse.sort_unstable();
    small.sort_unstable();
    let mut out = Vec::new();
    let mut budget = s.max_bytes;
    for (key, size) in sparse.into_iter().chain(small) {
        if size > budget && !out.is_empty() {
            break;
        }
        budget = budget.saturating_sub(size);
        out.push((key, size));
    }
    out
}

/// Where `rewrite` puts what it packs: the keys of the new segments, how they are packed, and
/// how they are uploaded.
pub struct Output<'a> {
    /// The key of the `n`th new segment.
    pub key_of: &'a (dyn Fn(usize) -> String + Sync),
    pub zstd_level: Option<i32>,
    /// A new segment is sealed once it holds this many bytes.
    pub segment_bytes: u64,
    /// Uploads in flight at most: a sealed segment waits for one to end.
    pub uploads: usize,
    /// Uploads one sealed segment.
    pub put: &'a (dyn Fn(String, Vec<u8>) -> BoxFuture<'static, Result<(), StoreError>> + Sync),
}

/// What `rewrite` uploaded: the extents that point at it, and its size.
#[derive(Debug, Default)]
pub struct Rewritten {
    pub extents: Vec<Extent>,
    pub segments: usize,
    pub bytes: u64,
}

/// The pages of `view` that live in `sources`, read from them and packed into new segments
/// of about `segment_bytes` each, uploaded as they fill. Returns the extents that point at
/// them (each covering exactly the pages it replaces).
///
/// Memory stays a few segments whatever the sources add up to (up to `max_bytes`, and runs
/// decompress to several times their stored size): a segment's worth of sources read at a
/// time (`sources` carries each one's size), one run decoded at a time, the segment being
/// packed and the uploads in flight. (The first version read every source and decoded every
/// run before packing, and built every new segment before uploading one: 379 MB of decoded
/// runs at a pass's peak, BENCHMARKS.md.) Pages are packed source by source, in file order
/// within each.
pub async fn rewrite(
    store: &dyn ObjectStore,
    view: &View,
    sources: &[(String, u64)],
    out: &Output<'_>,
) -> Result<Rewritten, CheckpointError> {
    let order: HashMap<&str, usize> = sources
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();
    // A source's pieces together, in file order.
    let mut pieces: Vec<Piece> = Vec::new();
    for (ino, map) in &view.extents {
        for (start, (end, e)) in map {
            if let Some(&i) = order.get(&*e.segment) {
                pieces.push((i, *ino, *start, *end, e));
            }
        }
    }
    pieces.sort_by_key(|p| (p.0, p.1, p.2));
    let mut uploads: JoinSet<Result<(), StoreError>> = JoinSet::new();
    let r = async {
        let mut done = Rewritten::default();
        let mut builder = SegmentBuilder::compressing(out.zstd_level);
        let by_source: Vec<&[Piece]> = pieces.chunk_by(|a, b| a.0 == b.0).collect();
        // Sources are read a segment's worth at a time (at most `READ_AT_ONCE` of them): a pass
        // over many small ones (manifests that carry runs) is not one round trip each.
        let mut at = 0;
        while at < by_source.len() {
            let mut end = at + 1;
            let mut bytes = sources[by_source[at][0].0].1;
            while end < by_source.len() && end - at < READ_AT_ONCE {
                let size = sources[by_source[end][0].0].1;
                if bytes + size > out.segment_bytes {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let batch = &by_source[at..end];
            at = end;
            let objects = futures_util::future::try_join_all(
                batch
                    .iter()
                    .map(|of_source| store.get(&sources[of_source[0].0].0, None)),
            )
            .await?;
            for (&of_source, object) in batch.iter().zip(objects) {
                pack(
                    of_source,
                    &object,
                    out,
                    &mut builder,
                    &mut done,
                    &mut uploads,
                )
                .await?;
            }
        }
        if !builder.is_empty() {
            seal(builder, out, &mut done, &mut uploads).await?;
        }
        while let Some(r) = uploads.join_next().await {
            uploaded(r)?;
        }
        Ok(done)
    }
    .await;
    if r.is_err() {
        // Every upload task has ended when this returns, so the caller's cleanup comes after
        // them (on S3 a PUT already sent may still land: GC collects it after the grace).
        uploads.abort_all();
        while uploads.join_next().await.is_some() {}
    }
    r
}

/// `still_current`'s answer.
#[derive(Debug, Default)]
pub struct StillCurrent {
    pub extents: Vec<Extent>,
    /// Pages of the rewrite left out: rewritten, truncated or removed since it read them.
    pub dropped_pages: u64,
}

/// What of compaction's new `extents` (copies of pages as the view `then` had them) still
/// holds in the view `now` that commits beside the rewrite have moved it to: the pages `now`
/// still takes from the run `then` took them from (runs are immutable, so their bytes are
/// the copy's). A page a commit wrote, truncated or removed since is left to `now`: the
/// copy would bring back an older version of it.
pub fn still_current(then: &View, now: &View, extents: Vec<Extent>) -> StillCurrent {
    if then.epoch == now.epoch {
        return StillCurrent {
            extents,
            dropped_pages: 0,
        };
    }
    let mut out = StillCurrent::default();
    for x in extents {
        let (from, to) = (x.first_page, x.first_page + x.pages);
        let mut kept = 0;
        if let (Some(old), Some(new)) = (then.extents.get(&x.run.ino), now.extents.get(&x.run.ino))
        {
            for (start, end, was) in overlapping(old, from, to) {
                for (s, e, is) in overlapping(new, start, end) {
                    if is.segment == was.segment && is.run.offset == was.run.offset {
                        kept += e - s;
                        out.extents.push(Extent {
                            first_page: s,
                            pages: e - s,
                            ..x.clone()
                        });
                    }
                }
            }
        }
        out.dropped_pages += x.pages - kept;
    }
    out
}

/// (source, ino, start, end, extent): the pages `[start, end)` of `ino`, in `extent`.
type Piece<'a> = (usize, u64, u64, u64, &'a Extent);

/// Sources read at once, at most.
const READ_AT_ONCE: usize = 32;

/// Packs the pages of one source, read as `object`, sealing and uploading each segment that
/// fills.
async fn pack(
    of_source: &[Piece<'_>],
    object: &[u8],
    out: &Output<'_>,
    builder: &mut SegmentBuilder,
    done: &mut Rewritten,
    uploads: &mut JoinSet<Result<(), StoreError>>,
) -> Result<(), CheckpointError> {
    // The run last decoded: a run's extents are next to each other in file order.
    let mut decoded: Option<(u64, Vec<u8>)> = None;
    for &(_, ino, start, end, e) in of_source {
        if decoded.as_ref().is_none_or(|(at, _)| *at != e.run.offset) {
            let from = e.run.offset as usize;
            let to = from + e.run.stored_len as usize;
            let stored = object.get(from..to).ok_or_else(|| {
                crate::manifest::FormatError::corrupt(
                    &e.segment,
                    format!("run at {from}..{to} is past the object's end"),
                )
            })?;
            decoded = Some((e.run.offset, decode_run(&e.run, stored, &e.segment)?));
        }
        let data = &decoded.as_ref().expect("decoded just above").1;
        let src = ((start - e.run.first_page) * PAGE_SIZE) as usize;
        let len = ((end - start) * PAGE_SIZE) as usize;
        let from = src.min(data.len());
        let to = (src + len).min(data.len());
        let pages = u32::try_from(end - start).expect("an extent lies within one run");
        builder.push_run(ino, start, pages, &data[from..to]);
        if builder.len() >= out.segment_bytes {
            let full = std::mem::replace(builder, SegmentBuilder::compressing(out.zstd_level));
            seal(full, out, done, uploads).await?;
        }
    }
    Ok(())
}

/// Seals `builder` as the next new segment and starts its upload, once fewer than
/// `out.uploads` are in flight.
async fn seal(
    builder: SegmentBuilder,
    out: &Output<'_>,
    done: &mut Rewritten,
    uploads: &mut JoinSet<Result<(), StoreError>>,
) -> Result<(), CheckpointError> {
    while uploads.len() >= out.uploads.max(1) {
        let r = uploads.join_next().await.expect("the set is not empty");
        uploaded(r)?;
    }
    let key = (out.key_of)(done.segments);
    let shared: Arc<str> = key.as_str().into();
    let (bytes, runs) = builder.finish();
    done.extents
        .extend(runs.into_iter().map(|r| Extent::whole(shared.clone(), r)));
    done.segments += 1;
    done.bytes += bytes.len() as u64;
    uploads.spawn((out.put)(key, bytes));
    Ok(())
}

fn uploaded(
    r: Result<Result<(), StoreError>, tokio::task::JoinError>,
) -> Result<(), CheckpointError> {
    r.expect("an upload task does not panic")?;
    crate::failpoint::hit("after-segment-put");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::segment::{Codec, RunLocation};
    use crate::manifest::view::{insert, truncate};
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    fn run(segment: &str, offset: u64, start: u64, end: u64) -> Arc<Extent> {
        Arc::new(Extent::whole(
            segment,
            RunLocation {
                ino: 1,
                first_page: start,
                pages: (end - start) as u32,
                offset,
                stored_len: 0,
                codec: Codec::Raw,
                crc: 0,
            },
        ))
    }

    /// Compaction's copy of every page of `then`, one new run per extent, as `rewrite` makes
    /// it.
    fn copy_of(then: &View) -> Vec<Extent> {
        let map = &then.extents[&1];
        map.iter()
            .enumerate()
            .map(|(n, (&start, (end, _)))| (*run("segments/new", n as u64, start, *end)).clone())
            .collect()
    }

    /// Page -> (segment, run offset) of a view's file 1.
    fn source(v: &View, page: u64) -> Option<(String, u64)> {
        v.extent_at(1, page)
            .map(|(_, _, e)| (e.segment.to_string(), e.run.offset))
    }

    /// `first`: (start, len) of the runs `then` took its pages from, in order; `since`: (kind,
    /// start, len) of the changes before `now`, kind 0 a new write, 1 a truncation, 2 a base
    /// restating the run `then` had there.
    fn holds_where_unchanged(
        first: &[(u64, u64)],
        since: &[(u8, u64, u64)],
    ) -> Result<(), TestCaseError> {
        let mut then = View {
            epoch: 5,
            ..View::default()
        };
        let map = then.extents.entry(1).or_default();
        for (i, &(start, len)) in first.iter().enumerate() {
            insert(
                map,
                start,
                start + len,
                run("segments/s", i as u64, start, start + len),
            );
        }
        let mut now = then.clone();
        now.epoch = 9;
        let map = now.extents.get_mut(&1).unwrap();
        for (j, &(kind, start, len)) in since.iter().enumerate() {
            match kind {
                // In the same segment, another run: a run is its segment and offset.
                0 => {
                    let fresh = run("segments/s", 100 + j as u64, start, start + len);
                    insert(map, start, start + len, fresh);
                }
                1 => truncate(map, start),
                _ => {
                    // The same run under a new Arc, over what of it `then` used.
                    if let Some((s, e, x)) = then.extent_at(1, start) {
                        insert(map, s, e, Arc::new((*x).clone()));
                    }
                }
            }
        }
        let copy = copy_of(&then);
        let r = still_current(&then, &now, copy.clone());
        let kept: u64 = r.extents.iter().map(|x| x.pages).sum();
        prop_assert_eq!(
            r.dropped_pages + kept,
            copy.iter().map(|x| x.pages).sum::<u64>()
        );
        let mut after = now.clone();
        for x in &r.extents {
            let (from, to) = (x.first_page, x.first_page + x.pages);
            // Each piece lies within the copy it came from, and pieces do not overlap.
            let within = |c: &Extent| c.first_page <= from && to <= c.first_page + c.pages;
            prop_assert!(copy.iter().any(|c| c.run == x.run && within(c)));
            let overlaps = |y: &&Extent| y.first_page < to && from < y.first_page + y.pages;
            prop_assert_eq!(r.extents.iter().filter(overlaps).count(), 1);
            let map = after.extents.get_mut(&1).unwrap();
            insert(map, from, to, Arc::new(x.clone()));
        }
        for page in 0..48 {
            let was = source(&then, page);
            let got = source(&after, page);
            if was.is_some() && was == source(&now, page) {
                let new = Some("segments/new".to_string());
                prop_assert_eq!(got.map(|(s, _)| s), new, "page {}", page);
            } else {
                prop_assert_eq!(got, source(&now, page), "page {}", page);
            }
        }
        Ok(())
    }

    proptest! {
        /// A page keeps compaction's copy exactly when the view now still takes it from the
        /// run it was copied from; the rest stays as commits beside the rewrite left it.
        #[test]
        fn the_copy_holds_where_the_page_still_comes_from_the_run_it_was_read_from(
            first in prop::collection::vec((0u64..32, 1u64..12), 1..8),
            since in prop::collection::vec((0u8..3, 0u64..32, 1u64..12), 0..8),
        ) {
            holds_where_unchanged(&first, &since)?;
        }
    }

    #[test]
    fn a_file_removed_since_keeps_nothing_of_the_copy_and_an_unmoved_view_keeps_it_all() {
        let mut then = View {
            epoch: 5,
            ..View::default()
        };
        insert(
            then.extents.entry(1).or_default(),
            0,
            8,
            run("segments/s", 0, 0, 8),
        );
        let copy = copy_of(&then);
        let same = still_current(&then, &then.clone(), copy.clone());
        assert_eq!((same.extents, same.dropped_pages), (copy.clone(), 0));
        let mut now = then.clone();
        now.epoch = 6;
        now.extents.remove(&1);
        let gone = still_current(&then, &now, copy);
        assert_eq!((gone.extents.len(), gone.dropped_pages), (0, 8));
    }
}
