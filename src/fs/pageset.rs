//! A set of page numbers stored as disjoint ranges, for per-file dirty-page tracking.
//!
//! Postgres dirties pages in runs (relation extension, WAL segments), so ranges stay few even
//! for a 1 GiB file; a bitmap would cost 16 KiB per GiB for every file whether dirty or not.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageSet {
    /// start -> end (exclusive); ranges are disjoint and never adjacent.
    ranges: BTreeMap<u64, u64>,
    /// Pages in all the ranges, kept as they change (the dirty count asks on every cut).
    pages: u64,
}

impl PageSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of pages in the set.
    pub fn len(&self) -> u64 {
        self.pages
    }

    /// The parts of the set's ranges that lie within `pages`, in order. Only the ranges that
    /// overlap are visited, so this stays cheap on a set of many ranges (a file evicted in
    /// pieces).
    pub fn overlapping(&self, pages: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        // The range that starts at or before `pages.start` may reach into it.
        let from = self
            .ranges
            .range(..=pages.start)
            .next_back()
            .map_or(pages.start, |(&s, _)| s);
        self.ranges
            .range(from..pages.end.max(from))
            .filter_map(move |(&s, &e)| {
                let (s, e) = (s.max(pages.start), e.min(pages.end));
                (s < e).then_some(s..e)
            })
    }

    /// Whether any page of `pages` is in the set.
    pub fn intersects(&self, pages: Range<u64>) -> bool {
        self.overlapping(pages).next().is_some()
    }

    /// Whether every page of `pages` is in the set.
    pub fn covers(&self, pages: Range<u64>) -> bool {
        pages.is_empty()
            || self
                .ranges
                .range(..=pages.start)
                .next_back()
                .is_some_and(|(_, &e)| e >= pages.end)
    }

    pub fn contains(&self, page: u64) -> bool {
        self.ranges
            .range(..=page)
            .next_back()
            .is_some_and(|(_, &end)| page < end)
    }

    /// Adds `pages` and returns the sub-ranges that were not in the set before, so the caller
    /// persists only what is new.
    pub fn insert(&mut self, pages: Range<u64>) -> Vec<Range<u64>> {
        if pages.is_empty() {
            return Vec::new();
        }
        let mut added = Vec::new();
        let mut cursor = pages.start;
        let mut start = pages.start;
        let mut end = pages.end;
        // Absorb every range that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=pages.end)
            .rev()
            .take_while(|(_, &e)| e >= pages.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for &(s, e) in touching.iter().rev() {
            if s > cursor {
                added.push(cursor..s.min(pages.end));
            }
            cursor = cursor.max(e);
            start = start.min(s);
            end = end.max(e);
            self.ranges.remove(&s);
        }
        if cursor < pages.end {
            added.push(cursor..pages.end);
        }
        self.ranges.insert(start, end);
        self.pages += added.iter().map(|r| r.end - r.start).sum::<u64>();
        added
    }

    /// Removes `pages` from the set.
    pub fn remove(&mut self, pages: Range<u64>) {
        if pages.is_empty() {
            return;
        }
        // Only the ranges that overlap `pages` change: cut each down to what lies outside.
        // (Touching only those keeps a checkpoint of a file with many ranges linear.)
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(..pages.end)
            .rev()
            .take_while(|(_, &e)| e > pages.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.ranges.remove(&s);
            self.pages -= e.min(pages.end) - s.max(pages.start);
            if s < pages.start {
                self.ranges.insert(s, pages.start);
            }
            if e > pages.end {
                self.ranges.insert(pages.end, e);
            }
        }
    }

    /// Removes every page at or after `from`.
    pub fn truncate(&mut self, from: u64) {
        let tail: Vec<u64> = self.ranges.range(from..).map(|(&s, _)| s).collect();
        for s in tail {
            if let Some(e) = self.ranges.remove(&s) {
                self.pages -= e - s;
            }
        }
        if let Some((_, end)) = self.ranges.range_mut(..from).next_back() {
            if *end > from {
                self.pages -= *end - from;
                *end = from;
            }
        }
    }

    /// The pages of the set that are not in `other`.
    pub fn difference(&self, other: &PageSet) -> PageSet {
        let mut out = self.clone();
        for r in self.iter() {
            for o in other.overlapping(r) {
                out.remove(o);
            }
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    /// `pages` widened to the whole of every range of the set that overlaps or touches it:
    /// what a change over `pages` can merge, split or shorten.
    pub fn span_touching(&self, pages: Range<u64>) -> Range<u64> {
        let mut span = pages.clone();
        for (&s, &e) in self
            .ranges
            .range(..=pages.end)
            .rev()
            .take_while(|(_, &e)| e >= pages.start)
        {
            span.start = span.start.min(s);
            span.end = span.end.max(e);
        }
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn remove_cuts_ranges() {
        let mut set = PageSet::new();
        set.insert(0..10);
        set.insert(20..30);
        set.remove(5..25);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0..5, 25..30]);
        set.remove(0..100);
        assert!(set.is_empty());
    }

    #[test]
    fn insert_reports_only_new_pages() {
        let mut set = PageSet::new();
        assert_eq!(set.insert(2..4), vec![2..4]);
        assert_eq!(set.insert(0..6), vec![0..2, 4..6]);
        assert_eq!(set.insert(1..3), Vec::<Range<u64>>::new());
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0..6]);
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(ops in prop::collection::vec((0u64..64, 0u64..8, 0u8..3), 1..40)) {
            let mut set = PageSet::new();
            let mut model = BTreeSet::new();
            for (start, len, op) in ops {
                if op == 1 {
                    set.truncate(start);
                    model.retain(|&p| p < start);
                } else if op == 2 {
                    set.remove(start..start + len);
                    model.retain(|&p| p < start || p >= start + len);
                } else {
                    let added = set.insert(start..start + len);
                    let expected: Vec<u64> =
                        (start..start + len).filter(|p| !model.contains(p)).collect();
                    let got: Vec<u64> = added.into_iter().flatten().collect();
                    prop_assert_eq!(got, expected);
                    model.extend(start..start + len);
                }
                prop_assert_eq!(set.len(), model.len() as u64);
                let window = start..start + len + 3;
                let inside: Vec<u64> = set.overlapping(window.clone()).flatten().collect();
                let expected: Vec<u64> = model.range(window.clone()).copied().collect();
                prop_assert_eq!(set.intersects(window.clone()), !expected.is_empty());
                prop_assert_eq!(
                    set.covers(window.clone()),
                    expected.len() as u64 == window.end - window.start
                );
                prop_assert_eq!(inside, expected);
                let mut other = PageSet::new();
                other.insert(window.clone());
                let rest: Vec<u64> = set.difference(&other).iter().flatten().collect();
                let expected: Vec<u64> =
                    model.iter().copied().filter(|p| !window.contains(p)).collect();
                prop_assert_eq!(rest, expected);
                for p in 0..80 {
                    prop_assert_eq!(set.contains(p), model.contains(&p));
                }
                // Ranges stay disjoint and non-adjacent.
                let ranges: Vec<_> = set.iter().collect();
                for pair in ranges.windows(2) {
                    prop_assert!(pair[0].end < pair[1].start);
                }
            }
        }
    }
}
