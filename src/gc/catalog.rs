//! The catalog: what GC needs of each manifest (`Summary`), kept between passes so that each
//! manifest is read once.

use std::collections::BTreeMap;
use std::ops::{Bound, Range};
use std::sync::Arc;

use super::segment_epoch;
use crate::manifest::Manifest;

/// What GC needs of one manifest, kept between passes so that each is read once: as a commit
/// posts it and a pass reads it. The catalog keeps it as an `Entry`, and the segments only of
/// a manifest that brought any. It must stay small whatever the manifest's size: the catalog
/// holds one for every manifest in the bucket, and under `--durability remote` a writer
/// commits hundreds a second, which the window keeps for a day.
#[derive(Clone, Debug)]
pub struct Summary {
    pub parent: Option<u64>,
    pub created_ms: u64,
    /// A takeover's fence: kept for good.
    pub fence: bool,
    /// The segments it brought: a delta's every one, a base's those uploaded under its own
    /// epoch.
    pub segments: Box<[Arc<str>]>,
}

impl Summary {
    /// Only the segments a manifest brought are kept, not every one its extents name. A base
    /// restates the whole image (thousands of segments, and every manifest that still carries
    /// a page), and keeping those names made the catalog grow by the image's size at every
    /// base. GC needs no more: what a manifest names besides its own uploads was in the image
    /// it follows (a base is that image with the delta of its cut applied, `as_committed`; a
    /// delta names only what its cut or compaction uploaded), so it is in the oldest retained
    /// checkpoint's image or brought by a manifest between, both of which a pass counts as
    /// live. Nor the manifests that carry runs: a pass asks only about those older than the
    /// oldest retained checkpoint's chain, and one of those that a later manifest names was,
    /// by the same argument, in that checkpoint's image.
    ///
    /// A delta's segments are all its own, but a compaction's are named by the epoch after
    /// the view it read, and commits beside it may have taken that epoch and more before it
    /// commits: so a delta's count whatever the epoch in their names.
    pub fn of(m: &Manifest) -> Summary {
        let brought = |key: &Arc<str>| match m.parent {
            Some(_) => segment_epoch(key).is_some(),
            None => segment_epoch(key) == Some(m.epoch),
        };
        let mut names: Vec<&Arc<str>> = m
            .extents
            .iter()
            .map(|e| &e.segment)
            .filter(|key| brought(key))
            .collect();
        names.sort_unstable();
        names.dedup();
        Summary {
            parent: m.parent,
            created_ms: m.created_ms,
            fence: m.fence,
            // The manifest's own names, shared, not copied.
            segments: names.into_iter().cloned().collect(),
        }
    }
}

/// What the catalog keeps of one manifest: 24 bytes. The catalog holds one for every manifest in
/// the bucket, and under `--durability remote` that is one per group commit, millions a day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub epoch: u64,
    /// `created_ms`, with `FENCE` set for a takeover's fence.
    created: u64,
    /// The parent's epoch, or `NO_PARENT` for a base.
    parent: u64,
}

const FENCE: u64 = 1 << 63;
const NO_PARENT: u64 = u64::MAX;

impl Entry {
    fn of(epoch: u64, s: &Summary) -> Entry {
        // A time past 2^63 ms (292 million years) would read as a fence's: none is.
        debug_assert!(s.created_ms < FENCE);
        Entry {
            epoch,
            created: (s.created_ms & !FENCE) | if s.fence { FENCE } else { 0 },
            parent: s.parent.unwrap_or(NO_PARENT),
        }
    }

    pub fn created_ms(&self) -> u64 {
        self.created & !FENCE
    }

    /// A takeover's fence: kept for good.
    pub fn fence(&self) -> bool {
        self.created & FENCE != 0
    }

    pub fn parent(&self) -> Option<u64> {
        (self.parent != NO_PARENT).then_some(self.parent)
    }
}

/// Manifest summaries by epoch, kept small: an `Entry` each in one vector in epoch order (no
/// node or allocation of its own), and the segments a manifest brought only for the manifests
/// that brought any. (A map of `Summary` took about 107 bytes a manifest, BENCHMARKS.md "The GC
/// catalog under `--durability remote`"; a remote commit's delta carries its runs in its
/// manifest and brings no segment, only a base does.)
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Vec<Entry>,
    segments: BTreeMap<u64, Box<[Arc<str>]>>,
    /// Entries were appended out of epoch order: `settle` sorts them.
    unsettled: bool,
}

impl Catalog {
    /// A manifest this process committed or read: no need to read it again.
    pub fn insert(&mut self, m: &Manifest) {
        self.extend([(m.epoch, Summary::of(m))]);
    }

    /// Summaries in any order; a later one of an epoch replaces an earlier.
    pub fn extend(&mut self, summaries: impl IntoIterator<Item = (u64, Summary)>) {
        self.append(summaries);
        self.settle();
    }

    /// `extend` without the sort: batches appended one after another are sorted once, by
    /// `settle`, which must come before the catalog is read. (A pass's reads go on its end,
    /// but after a pass that failed part way the next one's fall between what it read and
    /// what was posted: a sort of the whole vector for each batch of 32 would be quadratic.)
    pub fn append(&mut self, summaries: impl IntoIterator<Item = (u64, Summary)>) {
        let summaries = summaries.into_iter();
        reserve_gently(&mut self.entries, summaries.size_hint().0);
        for (epoch, s) in summaries {
            self.unsettled |= self.entries.last().is_some_and(|last| last.epoch >= epoch);
            self.entries.push(Entry::of(epoch, &s));
            match s.segments.is_empty() {
                true => self.segments.remove(&epoch),
                false => self.segments.insert(epoch, s.segments),
            };
        }
    }

    /// Puts what `append` left out of order in epoch order.
    pub fn settle(&mut self) {
        if !std::mem::take(&mut self.unsettled) {
            return;
        }
        // Stable: of two entries for one epoch, the later appended stays.
        self.entries.sort_by_key(|e| e.epoch);
        self.entries.dedup_by(|later, earlier| {
            let same = later.epoch == earlier.epoch;
            if same {
                *earlier = *later;
            }
            same
        });
    }

    /// Room for `n` more, exactly.
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve_exact(n);
    }

    pub fn get(&self, epoch: u64) -> Option<Entry> {
        debug_assert!(!self.unsettled, "the catalog is read before it is settled");
        let i = self
            .entries
            .binary_search_by_key(&epoch, |e| e.epoch)
            .ok()?;
        Some(self.entries[i])
    }

    pub fn contains(&self, epoch: u64) -> bool {
        self.get(epoch).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps the manifests whose epoch `keep` says to (once a pass: it also gives back the
    /// vector's spare room, when that is more than an eighth of it).
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.entries.retain(|e| keep(e.epoch));
        self.segments.retain(|&epoch, _| keep(epoch));
        if self.entries.capacity() > self.entries.len() + self.entries.len() / 8 {
            self.entries.shrink_to_fit();
        }
    }

    /// The summaries of the manifests in `epochs`, in epoch order (what a chunk of the
    /// catalog in the bucket holds).
    pub fn summaries_in(&self, epochs: Range<u64>) -> impl Iterator<Item = (u64, Summary)> + '_ {
        debug_assert!(!self.unsettled, "the catalog is read before it is settled");
        let from = self.entries.partition_point(|e| e.epoch < epochs.start);
        let to = self.entries.partition_point(|e| e.epoch < epochs.end);
        self.entries[from..to].iter().map(|e| {
            let segments = self.segments.get(&e.epoch).cloned().unwrap_or_default();
            let summary = Summary {
                parent: e.parent(),
                created_ms: e.created_ms(),
                fence: e.fence(),
                segments,
            };
            (e.epoch, summary)
        })
    }

    /// The segments brought by the manifests after `epoch`.
    pub fn segments_after(&self, epoch: u64) -> impl Iterator<Item = &Arc<str>> {
        self.segments
            .range((Bound::Excluded(epoch), Bound::Unbounded))
            .flat_map(|(_, names)| names.iter())
    }

    /// The segments brought by every manifest in the catalog.
    pub fn segments(&self) -> impl Iterator<Item = &Arc<str>> {
        self.segments.values().flat_map(|names| names.iter())
    }
}

/// Room for `additional` more: when full, a vector as long as the window grows by an eighth
/// (or by what is asked, if more), not by doubling, which would leave up to as much again
/// unused.
pub(super) fn reserve_gently<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity() - v.len() < additional {
        v.reserve_exact(additional.max(v.len() / 8));
    }
}

/// A summary as a test writes one.
#[cfg(test)]
pub(super) fn summary(
    created_ms: u64,
    parent: Option<u64>,
    fence: bool,
    segments: &[&str],
) -> Summary {
    Summary {
        parent,
        created_ms,
        fence,
        segments: segments.iter().map(|&s| Arc::from(s)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Summaries come in any order (a pass's reads, then the commits posted meanwhile, which
    /// are newer); the catalog answers by epoch, a later summary of an epoch replacing an
    /// earlier one, its segments too, and each field reads back as it went in.
    #[test]
    fn summaries_in_any_order_read_back_by_epoch_and_the_later_of_two_wins() {
        let mut c = Catalog::default();
        c.extend([
            (5, summary(500, Some(4), false, &["segments/5-a"])),
            (7, summary(700, Some(6), false, &[])),
        ]);
        // Batches appended out of order, sorted once.
        let two = summary(200, None, false, &["segments/2-a", "segments/2-b"]);
        c.append([(2, two), (6, summary(600, Some(5), true, &[]))]);
        c.append([
            (5, summary(501, Some(4), false, &["segments/5-b"])),
            (7, summary(701, Some(6), false, &["segments/7-a"])),
        ]);
        c.settle();
        c.insert(&Manifest {
            epoch: 3,
            parent: Some(2),
            created_ms: 300,
            ..Manifest::default()
        });
        assert_eq!(c.len(), 5);
        let e = c.get(2).expect("epoch 2");
        assert_eq!((e.created_ms(), e.parent(), e.fence()), (200, None, false));
        let e = c.get(6).expect("epoch 6");
        assert_eq!(
            (e.created_ms(), e.parent(), e.fence()),
            (600, Some(5), true)
        );
        assert_eq!(c.get(5).map(|e| e.created_ms()), Some(501));
        assert_eq!(c.get(3).and_then(|e| e.parent()), Some(2));
        assert!(!c.contains(4) && !c.contains(8));
        let after = |c: &Catalog, epoch| {
            let names = c.segments_after(epoch).map(|s| s.to_string());
            names.collect::<Vec<_>>()
        };
        assert_eq!(after(&c, 2), ["segments/5-b", "segments/7-a"]);
        assert_eq!(after(&c, 5), ["segments/7-a"]);
        assert_eq!(c.segments().count(), 4);

        c.retain(|epoch| epoch >= 5);
        assert_eq!(c.len(), 3);
        assert!(!c.contains(2) && !c.contains(3));
        assert_eq!(after(&c, 0), ["segments/5-b", "segments/7-a"]);
    }

    /// The catalog holds a manifest in 24 bytes (the window's count of them is what it
    /// grows with), and a pass's retain gives back spare room beyond an eighth.
    #[test]
    fn an_entry_is_24_bytes_and_a_pass_gives_back_spare_room() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let mut c = Catalog::default();
        for epoch in 1..=10_000u64 {
            c.extend([(epoch, summary(epoch, Some(epoch - 1), false, &[]))]);
        }
        c.retain(|epoch| epoch > 5_000);
        assert_eq!(c.len(), 5_000);
        assert!(
            c.entries.capacity() <= 5_000 + 5_000 / 8,
            "capacity {} for 5,000 entries",
            c.entries.capacity()
        );
    }
}
