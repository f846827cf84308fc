//! Compaction of segments: the pages the latest checkpoint still uses, moved out of segments
//! that are mostly dead (or out of many small ones) into new segments. The writer then commits
//! a manifest that points at the new copies; the sources stay until no retained checkpoint
//! names them, and GC deletes them after the grace like any other unneeded object (DESIGN.md,
//! rule 6: rewrite, publish, then delete later).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::checkpoint::CheckpointError;
use crate::fs::PAGE_SIZE;
use crate::manifest::segment::{decode_run, SegmentBuilder};
use crate::manifest::view::View;
use crate::manifest::Extent;
use crate::store::ObjectStore;

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

/// The segments worth rewriting (and manifests carrying runs, which count as segments):
/// those under `min_live` used, then, if at least `min_small`
/// small ones are left, those; oldest first, up to `max_bytes` in all.
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
    sizes: &BTreeMap<String, u64>,
    before_epoch: u64,
    s: &CompactSettings,
) -> Vec<String> {
    let live = live_bytes(view);
    let mut sparse = Vec::new();
    let mut small = Vec::new();
    for (key, &size) in sizes {
        let Some(&used) = live.get(key) else {
            continue; // unused by the latest image: GC's, not compaction's
        };
        if super::run_holder_epoch(key).is_none_or(|e| e >= before_epoch) {
            continue; // inside the retention window
        }
        if (used as f64) < s.min_live * size as f64 && size.saturating_sub(used) >= s.min_dead {
            sparse.push((key.clone(), size));
        } else if size < s.small_bytes {
            small.push((key.clone(), size));
        }
    }
    if small.len() < s.min_small {
        small.clear();
    }
    let mut out = Vec::new();
    let mut budget = s.max_bytes;
    // Keys begin with the zero-padded epoch: in key order is oldest first.
    for (key, size) in sparse.into_iter().chain(small) {
        if size > budget && !out.is_empty() {
            break;
        }
        budget = budget.saturating_sub(size);
        out.push(key);
    }
    out
}

/// The pages of `view` that live in `sources`, read from them and packed into new segments
/// of about `segment_bytes` each, named by `key_of(n)`. Returns the segments to upload and the
/// extents that point at them (each covering exactly the pages it replaces).
pub async fn rewrite(
    store: &dyn ObjectStore,
    view: &View,
    sources: &[String],
    key_of: &dyn Fn(usize) -> String,
    zstd_level: Option<i32>,
    segment_bytes: u64,
) -> Result<(Vec<(String, Vec<u8>)>, Vec<Extent>), CheckpointError> {
    let wanted: HashSet<&str> = sources.iter().map(String::as_str).collect();
    // (ino, start, end, extent), in file order.
    let mut pieces: Vec<(u64, u64, u64, &Extent)> = Vec::new();
    for (ino, map) in &view.extents {
        for (start, (end, e)) in map {
            if wanted.contains(&*e.segment) {
                pieces.push((*ino, *start, *end, e));
            }
        }
    }
    pieces.sort_by_key(|p| (p.0, p.1));
    let mut objects: HashMap<&str, bytes::Bytes> = HashMap::new();
    for key in sources {
        objects.insert(key.as_str(), store.get(key, None).await?);
    }
    let mut decoded: HashMap<(&str, u64), Vec<u8>> = HashMap::new();
    let mut segments = Vec::new();
    let mut extents = Vec::new();
    let mut builder = SegmentBuilder::compressing(zstd_level);
    let seal = |builder: SegmentBuilder,
                segments: &mut Vec<(String, Vec<u8>)>,
                extents: &mut Vec<Extent>| {
        let key = key_of(segments.len());
        let shared: Arc<str> = key.as_str().into();
        let (bytes, runs) = builder.finish();
        extents.extend(runs.into_iter().map(|r| Extent::whole(shared.clone(), r)));
        segments.push((key, bytes));
    };
    for (ino, start, end, e) in pieces {
        let data = match decoded.entry((&*e.segment, e.run.offset)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let object = &objects[&*e.segment];
                let from = e.run.offset as usize;
                let to = from + e.run.stored_len as usize;
                let stored = object.get(from..to).ok_or_else(|| {
                    crate::manifest::FormatError::corrupt(
                        &e.segment,
                        format!("run at {from}..{to} is past the object's end"),
                    )
                })?;
                v.insert(decode_run(&e.run, stored, &e.segment)?)
            }
        };
        let src = ((start - e.run.first_page) * PAGE_SIZE) as usize;
        let len = ((end - start) * PAGE_SIZE) as usize;
        let from = src.min(data.len());
        let to = (src + len).min(data.len());
        let pages = u32::try_from(end - start).expect("an extent lies within one run");
        builder.push_run(ino, start, pages, &data[from..to]);
        if builder.len() >= segment_bytes {
            let full = std::mem::replace(&mut builder, SegmentBuilder::compressing(zstd_level));
            seal(full, &mut segments, &mut extents);
        }
    }
    if !builder.is_empty() {
        seal(builder, &mut segments, &mut extents);
    }
    Ok((segments, extents))
}
