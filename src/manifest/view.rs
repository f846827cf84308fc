//! The filesystem as a chain of manifests describes it: what a restore builds, and what the
//! checkpointer diffs a cut against to write a delta.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{Extent, Manifest, ManifestDirent};
use crate::fs::attr::{Attr, FileKind};

/// A file's extent map: start page -> (end page, extent), ranges disjoint.
pub type ExtentMap = BTreeMap<u64, (u64, Arc<Extent>)>;

#[derive(Clone, Debug, Default)]
pub struct View {
    /// The epoch of the last manifest applied (0: none).
    pub epoch: u64,
    pub next_ino: u64,
    /// Keyed by inode numbers, which this filesystem assigns: a fast hash (every checkpoint
    /// looks up every inode here) needs no protection from chosen keys.
    pub inodes: FxHashMap<u64, Attr>,
    pub dirents: BTreeMap<(u64, OsString), (u64, FileKind)>,
    pub extents: FxHashMap<u64, ExtentMap>,
    /// Deltas applied since the last base (bounds the restore chain).
    pub deltas_since_base: u32,
}

impl View {
    /// Applies a base (which replaces everything) or a delta on the current epoch.
    pub fn apply(&mut self, m: &Manifest) {
        match m.parent {
            None => {
                *self = View::default();
            }
            Some(_) => self.deltas_since_base += 1,
        }
        for ino in &m.removed_inodes {
            self.inodes.remove(ino);
            self.extents.remove(ino);
        }
        for (parent, name) in &m.unlinked {
            self.dirents.remove(&(*parent, name.clone()));
        }
        for a in &m.inodes {
            self.inodes.insert(a.ino, a.clone());
        }
        for d in &m.dirents {
            self.dirents
                .insert((d.parent, d.name.clone()), (d.ino, d.kind));
        }
        for &(ino, keep) in &m.truncations {
            if let Some(map) = self.extents.get_mut(&ino) {
                truncate(map, keep);
            }
        }
        match m.parent {
            None => self.extents = base_extents(&m.extents),
            Some(_) => {
                for e in &m.extents {
                    insert_extent(self.extents.entry(e.run.ino).or_default(), e);
                }
            }
        }
        // Pages past a file's end can never be read: drop them (a shrink in a base). Only
        // files this manifest touched can have any: the others' sizes and extents are as the
        // last apply left them.
        let page_size = u64::from(m.page_size.max(1));
        let touched: Vec<u64> = if m.parent.is_none() {
            self.extents.keys().copied().collect()
        } else {
            let inodes = m.inodes.iter().map(|a| a.ino);
            inodes.chain(m.extents.iter().map(|e| e.run.ino)).collect()
        };
        for ino in touched {
            if let (Some(map), Some(a)) = (self.extents.get_mut(&ino), self.inodes.get(&ino)) {
                truncate(map, a.size.div_ceil(page_size));
            }
        }
        self.epoch = m.epoch;
        self.next_ino = m.next_ino;
    }

    /// The extent holding `page` of `ino`, if the bucket has its bytes.
    pub fn extent_at(&self, ino: u64, page: u64) -> Option<(u64, u64, Arc<Extent>)> {
        let map = self.extents.get(&ino)?;
        let (&start, (end, e)) = map.range(..=page).next_back()?;
        (page < *end).then(|| (start, *end, e.clone()))
    }

    /// Everything as one base manifest.
    pub fn to_base(&self, epoch: u64, created_ms: u64, page_size: u32, writer: &str) -> Manifest {
        let mut inodes: Vec<Attr> = self.inodes.values().cloned().collect();
        inodes.sort_by_key(|a| a.ino);
        // By file, then by page: each file's map is in page order already.
        let mut files: Vec<(&u64, &ExtentMap)> = self.extents.iter().collect();
        files.sort_unstable_by_key(|(ino, _)| **ino);
        Manifest {
            epoch,
            parent: None,
            created_ms,
            page_size,
            writer: writer.into(),
            next_ino: self.next_ino,
            inodes,
            dirents: self
                .dirents
                .iter()
                .map(|((parent, name), (ino, kind))| ManifestDirent {
                    parent: *parent,
                    name: name.clone(),
                    ino: *ino,
                    kind: *kind,
                })
                .collect(),
            extents: files
                .into_iter()
                .flat_map(|(_, map)| map.iter())
                .map(|(start, (end, e))| Extent {
                    first_page: *start,
                    pages: end - start,
                    ..(**e).clone()
                })
                .collect(),
            ..Manifest::default()
        }
    }
}

/// A base's extents as maps, as inserting them one by one would leave them (newest wins). A
/// file's extents that come together, in page order and disjoint, as `View::to_base` writes
/// them, are built into its map in one pass: a restore of a fragmented view (an extent per
/// page) otherwise spends a tree search and an insert per extent.
fn base_extents(extents: &[Extent]) -> FxHashMap<u64, ExtentMap> {
    let mut maps: FxHashMap<u64, ExtentMap> = FxHashMap::default();
    let mut rest = extents;
    while let Some(first) = rest.first() {
        let ino = first.run.ino;
        let n = rest.iter().take_while(|e| e.run.ino == ino).count();
        let (file, after) = rest.split_at(n);
        rest = after;
        // (An extent whose end would overflow is left to `insert`, as before; decoding
        // refuses such extents anyway.)
        let end = |e: &Extent| e.first_page.checked_add(e.pages);
        let ordered = file.iter().all(|e| e.pages > 0 && end(e).is_some())
            && file
                .windows(2)
                .all(|w| end(&w[0]).is_some_and(|e| e <= w[1].first_page));
        let map = maps.entry(ino).or_default();
        if ordered && map.is_empty() {
            *map = file
                .iter()
                .map(|e| (e.first_page, (e.first_page + e.pages, Arc::new(e.clone()))))
                .collect();
        } else {
            for e in file {
                insert_extent(map, e);
            }
        }
    }
    maps
}

fn insert_extent(map: &mut ExtentMap, e: &Extent) {
    insert(
        map,
        e.first_page,
        e.first_page + e.pages,
        Arc::new(e.clone()),
    );
}

/// Newest wins: `[start, end)` now maps to `e`; older extents are trimmed or split.
pub fn insert(map: &mut ExtentMap, start: u64, end: u64, e: Arc<Extent>) {
    if start >= end {
        return;
    }
    // An older extent that starts before `start` and reaches into the range: keep its head,
    // and its tail past `end` if it spans the whole range.
    if let Some((&s, &(old_end, ref old))) = map.range(..start).next_back() {
        if old_end > start {
            let old = old.clone();
            map.insert(s, (start, old.clone()));
            if old_end > end {
                map.insert(end, (old_end, old));
            }
        }
    }
    let inside: Vec<u64> = map.range(start..end).map(|(&s, _)| s).collect();
    for s in inside {
        let (old_end, old) = map.remove(&s).expect("key just listed");
        if old_end > end {
            map.insert(end, (old_end, old));
        }
    }
    map.insert(start, (end, e));
}

/// The extents of `map` that overlap `[from, to)`, clipped to it.
pub fn overlapping(
    map: &ExtentMap,
    from: u64,
    to: u64,
) -> impl Iterator<Item = (u64, u64, &Arc<Extent>)> {
    let first = map
        .range(..=from)
        .next_back()
        .filter(|(_, (end, _))| *end > from)
        .map_or(from, |(start, _)| *start);
    map.range(first..to)
        .map(move |(&start, (end, e))| (start.max(from), (*end).min(to), e))
}

/// Drops every page at or past `keep`.
pub fn truncate(map: &mut ExtentMap, keep: u64) {
    let tail: Vec<u64> = map.range(keep..).map(|(&s, _)| s).collect();
    for s in tail {
        map.remove(&s);
    }
    if let Some((_, (end, _))) = map.range_mut(..keep).next_back() {
        if *end > keep {
            *end = keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::segment::{Codec, RunLocation};
    use proptest::prelude::*;

    fn ext(tag: u64, start: u64, end: u64) -> Arc<Extent> {
        Arc::new(Extent::whole(
            format!("s{tag}"),
            RunLocation {
                ino: 1,
                first_page: start,
                pages: (end - start) as u32,
                offset: 0,
                stored_len: 0,
                codec: Codec::Raw,
                crc: 0,
            },
        ))
    }

    proptest! {
        /// A base's maps built in one pass are the maps its extents inserted one by one
        /// leave: for files in page order (as bases are written) and for any other order,
        /// overlap, empty extent or file split in two.
        #[test]
        fn a_base_built_in_one_pass_is_the_base_inserted_extent_by_extent(
            files in prop::collection::vec(
                (1u64..5, prop::collection::vec((0u64..20, 0u64..4), 0..12), any::<bool>()),
                0..8,
            )
        ) {
            let mut extents = Vec::new();
            for (ino, runs, in_order) in files {
                // In order: each run starts past the last one's end (gaps of 0..5 pages); out
                // of order: anywhere in the first 20 pages, overlapping at will.
                let mut next = 0;
                for (at, pages) in runs {
                    let first = if in_order { next + at % 5 } else { at };
                    next = first + pages;
                    let mut e = (*ext(extents.len() as u64, first, first + pages)).clone();
                    e.run.ino = ino;
                    extents.push(e);
                }
            }
            let mut one_by_one: FxHashMap<u64, ExtentMap> = FxHashMap::default();
            for e in &extents {
                insert_extent(one_by_one.entry(e.run.ino).or_default(), e);
            }
            let built = base_extents(&extents);
            let flat = |maps: &FxHashMap<u64, ExtentMap>| {
                let mut v: Vec<(u64, u64, u64, String)> = maps
                    .iter()
                    .flat_map(|(ino, map)| {
                        map.iter().map(move |(s, (e, x))| (*ino, *s, *e, x.segment.to_string()))
                    })
                    .collect();
                v.sort();
                v
            };
            let mut inos: Vec<&u64> = built.keys().collect();
            let mut want: Vec<&u64> = one_by_one.keys().collect();
            inos.sort();
            want.sort();
            prop_assert_eq!(inos, want);
            prop_assert_eq!(flat(&built), flat(&one_by_one));
        }

        /// The extent map agrees with a plain page -> newest-writer array.
        #[test]
        fn newest_wins_like_a_page_array(
            ops in prop::collection::vec((0u64..40, 1u64..12, any::<bool>()), 1..40)
        ) {
            let mut map = ExtentMap::new();
            let mut pages: Vec<Option<String>> = vec![None; 64];
            for (i, (start, len, trunc)) in ops.into_iter().enumerate() {
                if trunc {
                    truncate(&mut map, start);
                    for p in pages.iter_mut().skip(start as usize) { *p = None; }
                } else {
                    insert(&mut map, start, start + len, ext(i as u64, start, start + len));
                    for p in start..start + len { pages[p as usize] = Some(format!("s{i}")); }
                }
                let mut last_end = 0;
                for (&s, (e, _)) in &map {
                    prop_assert!(s >= last_end && *e > s, "overlap or empty range");
                    last_end = *e;
                }
            }
            for (p, want) in pages.iter().enumerate() {
                let got = map
                    .range(..=p as u64)
                    .next_back()
                    .filter(|(_, (end, _))| (p as u64) < *end)
                    .map(|(_, (_, e))| e.segment.to_string());
                prop_assert_eq!(&got, want, "page {}", p);
            }
        }
    }
}
