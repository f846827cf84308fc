//! The catalog: what GC needs of each manifest (`Summary`), kept between passes so that each
//! manifest is read once.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::segment_epoch;
use crate::manifest::Manifest;

/// What GC needs of one manifest, kept between passes so that each is read once. It must stay
/// small whatever the manifest's size: the catalog holds one for every manifest in the bucket,
/// and under `--durability remote` a writer commits hundreds a second, which the window keeps
/// for a day.
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

/// Manifest summaries by epoch.
#[derive(Debug, Default)]
pub struct Catalog {
    pub(super) summaries: BTreeMap<u64, Summary>,
}

impl Catalog {
    /// A manifest this process committed or read: no need to read it again.
    pub fn insert(&mut self, m: &Manifest) {
        self.summaries.insert(m.epoch, Summary::of(m));
    }
}
