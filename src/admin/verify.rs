//! `bucketfs verify`: reads every object of a bucket and checks what a restore, a replica and
//! GC rely on. What it holds grows with the data and by a few dozen bytes a manifest, not with
//! the manifests' contents: each manifest is checked as it arrives and dropped, and the
//! oldest retained checkpoint's chain is read again at the end (docs/gc.md, "What `verify`
//! holds").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::num::NonZeroU64;
use std::ops::Range;

use anyhow::Context;

use super::{kept, runtime, Fetching};
use crate::bucket::BucketUrl;
use crate::checkpoint::{epoch_of_key, manifest_key, open_bucket, CHAIN_WINDOW};
use crate::gc::{chunk_range, decode_chunk, Manifests, Summary, CATALOG_PREFIX};
use crate::manifest::segment::{verify_segment, RunLocation};
use crate::manifest::view::View;
use crate::manifest::{Extent, Manifest};
use crate::store::{ObjectMeta, ReadStore};

/// The most bytes of segments `verify` fetches together, by their listed sizes (a larger
/// one goes alone): a round trip each window, not each segment; under `--durability remote`
/// most are small.
const VERIFY_WINDOW_BYTES: u64 = 64 << 20;

/// `objects` in order, in windows of at most `CHAIN_WINDOW` objects and `max_bytes` (by their
/// listed sizes) each; an object larger than that goes alone.
fn windows_by_size(objects: &[ObjectMeta], max_bytes: u64) -> Vec<&[ObjectMeta]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, o) in objects.iter().enumerate() {
        if i > start && (i - start == CHAIN_WINDOW || bytes.saturating_add(o.size) > max_bytes) {
            out.push(&objects[start..i]);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(o.size);
    }
    if start < objects.len() {
        out.push(&objects[start..]);
    }
    out
}

/// The runs the bucket holds whole, by where they start and the crc32c of what is stored:
/// each segment's, from its own index, and each manifest's that carries some. Segments are
/// as many as the data needs; carriers are one per group commit under `--durability remote`
/// (millions in a day's retention), so their runs are kept flat, 24 bytes each.
#[derive(Default)]
struct Runs {
    segments: HashMap<String, BTreeMap<u64, u32>>,
    /// (epoch of the manifest, offset in its object, crc), in that order: manifests are read
    /// oldest first.
    carried: Vec<(u64, u64, u32)>,
}

impl Runs {
    fn add_segment(&mut self, key: &str, runs: &[RunLocation]) {
        let runs = runs.iter().map(|r| (r.offset, r.crc)).collect();
        self.segments.insert(key.to_string(), runs);
    }

    /// The runs manifest `epoch` carries, at `start` in its object; manifests come in order.
    fn add_carried(&mut self, epoch: u64, start: u64, runs: &[RunLocation]) {
        debug_assert!(self.carried.last().is_none_or(|&(e, _, _)| e < epoch));
        let first = self.carried.len();
        self.carried
            .extend(runs.iter().map(|r| (epoch, start + r.offset, r.crc)));
        self.carried[first..].sort_unstable();
    }

    /// Why `e` does not point at a run that exists with the crc it names (None: it does).
    fn why_wrong(&self, e: &Extent) -> Option<String> {
        let crc = match epoch_of_key(&e.segment) {
            Some(epoch) => {
                let from = self.carried.partition_point(|&(c, _, _)| c < epoch);
                let theirs = &self.carried[from..];
                let theirs = &theirs[..theirs.partition_point(|&(c, _, _)| c == epoch)];
                (!theirs.is_empty()).then(|| {
                    let at = theirs.binary_search_by_key(&e.run.offset, |&(_, o, _)| o);
                    at.ok().map(|i| theirs[i].2)
                })
            }
            None => (self.segments.get(&*e.segment)).map(|r| r.get(&e.run.offset).copied()),
        };
        match crc {
            None => Some(format!(
                "extent of ino={} points into {}, which is missing or corrupt",
                e.run.ino, e.segment
            )),
            Some(None) => Some(format!(
                "extent of ino={} points at offset {} of {}, where no run starts",
                e.run.ino, e.run.offset, e.segment
            )),
            Some(Some(crc)) if crc != e.run.crc => Some(format!(
                "extent of ino={} expects crc32c {:08x} at offset {} of {}, the run has {crc:08x}",
                e.run.ino, e.run.crc, e.run.offset, e.segment
            )),
            Some(Some(_)) => None,
        }
    }
}

/// Epochs, kept as the runs of consecutive ones they form: what `verify` read of the
/// manifests at or above the boundary, where a gap is a missing checkpoint.
#[derive(Default)]
struct Epochs(Vec<Range<u64>>);

impl Epochs {
    /// Adds `epoch`, above every one added before.
    fn push(&mut self, epoch: u64) {
        match self.0.last_mut() {
            Some(last) if last.end == epoch => last.end += 1,
            _ => self.0.push(epoch..epoch + 1),
        }
    }

    /// The gaps between `from` (if it is to be there) or the first one at or after it, and
    /// the last.
    fn gaps_from(&self, from: u64, from_is_wanted: bool) -> Vec<Range<u64>> {
        let mut gaps = Vec::new();
        let mut next = from_is_wanted.then_some(from);
        for r in &self.0 {
            let first = r.start.max(from);
            if first >= r.end {
                continue;
            }
            if let Some(want) = next.filter(|&want| first > want) {
                gaps.push(want..first);
            }
            next = Some(r.end);
        }
        gaps
    }
}

/// What the manifest pass keeps of the manifests at or above the boundary, each dropped once
/// checked.
#[derive(Default)]
struct ManifestPass {
    /// Those read, whether they decoded or not.
    epochs: Epochs,
    /// The parent of each that decoded (None: a base), in epoch order: the chain of the oldest
    /// retained checkpoint is found by them once the pass knows which that is.
    parents: Vec<(u64, Option<NonZeroU64>)>,
    /// The extents found wrong in manifests after the oldest retained checkpoint (as the
    /// pass began), with the epoch of the manifest that names them.
    wrong: Vec<(u64, String)>,
}

impl ManifestPass {
    /// The parent of `epoch`, if its manifest decoded: Some(None) for a base.
    fn parent(&self, epoch: u64) -> Option<Option<u64>> {
        let i = self
            .parents
            .binary_search_by_key(&epoch, |(e, _)| *e)
            .ok()?;
        Some(self.parents[i].1.map(NonZeroU64::get))
    }
}

/// The epochs a chunk gets wrong, each with the fields that differ (parent, time, fence,
/// segments).
type WrongEpochs = Vec<(u64, [bool; 4])>;

/// The check of GC's catalog in the bucket: a new process's first pass takes what a chunk
/// says of a manifest at or above the boundary instead of reading it, so a chunk naming other
/// segments than the manifest would have GC delete what a checkpoint uses. Each chunk is
/// fetched once the manifest pass has read past its range, and compared with the summaries
/// of the manifests in it; a summary is kept only while a chunk not yet checked may need it.
/// (What a chunk leaves out, or says of an epoch not listed, no pass takes from it.) The
/// chunks are listed before the manifests: one that GC writes while `verify` runs is not
/// checked (the next run checks it).
struct CatalogCheck<'a> {
    /// The chunks not yet checked, in descending order of their range's end: the next due is
    /// at the back (a key that names no range is due at the end of the pass: it fails to
    /// decode, which is what is reported).
    pending: Vec<(Range<u64>, &'a ObjectMeta)>,
    fetching: Fetching<'a>,
    /// The first epoch a pending chunk covers (u64::MAX: none).
    needed: u64,
    /// What the manifests at or above the boundary (as the pass began) from `needed` on say,
    /// in epoch order.
    summaries: VecDeque<(u64, Summary)>,
    /// For each chunk that says other than a manifest: its key, and the epochs it gets wrong
    /// with the fields that differ (parent, time, fence, segments). Reported from the
    /// boundary as it is after the pass (a key freed meanwhile and landed on again by a
    /// stalled writer is below it).
    wrong: Vec<(&'a str, WrongEpochs)>,
}

impl<'a> CatalogCheck<'a> {
    fn new(chunks: &'a [ObjectMeta], fetching: Fetching<'a>) -> Self {
        let range = |c: &ObjectMeta| chunk_range(&c.key).unwrap_or(u64::MAX..u64::MAX);
        let mut pending: Vec<_> = chunks.iter().map(|c| (range(c), c)).collect();
        pending.sort_by(|a, b| (b.0.end, &b.1.key).cmp(&(a.0.end, &a.1.key)));
        let mut check = CatalogCheck {
            pending,
            fetching,
            needed: 0,
            summaries: VecDeque::new(),
            wrong: Vec::new(),
        };
        check.needed = check.first_pending();
        check
    }

    fn first_pending(&self) -> u64 {
        let start = |(r, _): &(Range<u64>, _)| r.start;
        self.pending.iter().map(start).min().unwrap_or(u64::MAX)
    }

    /// Keeps what manifest `epoch` (read after every one before it) says, if a pending chunk
    /// may say something of it.
    fn note(&mut self, epoch: u64, man: &Manifest) {
        if epoch >= self.needed {
            self.summaries.push_back((epoch, Summary::of(man)));
        }
    }

    /// Checks every pending chunk whose range ends at or below `read_to` (every epoch below
    /// it has been read), a window at a time, and forgets the summaries no chunk left needs.
    fn check_due(
        &mut self,
        read_to: u64,
        progress: &mut dyn Write,
        broken: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let due = self.pending.partition_point(|(r, _)| r.end > read_to);
        if due == self.pending.len() {
            return Ok(());
        }
        let mut due: Vec<&ObjectMeta> = self.pending.drain(due..).map(|(_, c)| c).collect();
        due.reverse();
        for window in due.chunks(CHAIN_WINDOW) {
            for (&c, key, bytes) in self.fetching.window(progress, window, |c| c.key.clone())? {
                match decode_chunk(&bytes, &key) {
                    Ok(said) => self.compare(&c.key, &said),
                    Err(e) => broken.push(format!("{key}: {e}")),
                }
            }
        }
        self.needed = self.first_pending();
        while self
            .summaries
            .front()
            .is_some_and(|(e, _)| *e < self.needed)
        {
            self.summaries.pop_front();
        }
        Ok(())
    }

    fn compare(&mut self, key: &'a str, said: &[(u64, Summary)]) {
        let mut wrong = Vec::new();
        for (epoch, said) in said {
            let i = self.summaries.binary_search_by_key(epoch, |(e, _)| *e);
            let Ok(i) = i else {
                continue;
            };
            // Every field named: one added to the summary is compared or does not build.
            let Summary {
                parent,
                created_ms,
                fence,
                segments,
            } = &self.summaries[i].1;
            let fields = [
                said.parent != *parent,
                said.created_ms != *created_ms,
                said.fence != *fence,
                said.segments != *segments,
            ];
            if fields.contains(&true) {
                wrong.push((*epoch, fields));
            }
        }
        if !wrong.is_empty() {
            self.wrong.push((key, wrong));
        }
    }

    /// One line a chunk that says other than the manifests at or above `boundary`: how many
    /// epochs it gets wrong, the first of them, and what differs.
    fn report(&self, boundary: u64, broken: &mut Vec<String>) {
        const FIELDS: [&str; 4] = ["parent", "time", "fence", "segments"];
        for (key, wrong) in &self.wrong {
            let wrong: Vec<_> = wrong.iter().filter(|(e, _)| *e >= boundary).collect();
            let Some((first, _)) = wrong.first() else {
                continue;
            };
            let differ: Vec<&str> = (FIELDS.iter().enumerate())
                .filter(|&(i, _)| wrong.iter().any(|(_, f)| f[i]))
                .map(|(_, name)| *name)
                .collect();
            broken.push(format!(
                "{key}: says other than the manifests of {} epoch(s), from {}: their {}",
                wrong.len(),
                manifest_key(*first),
                differ.join(", ")
            ));
        }
    }
}

/// `bucketfs verify`: every segment object is whole (index, every run's crc), every manifest
/// at or above the GC boundary decodes, none from the oldest retained checkpoint on is
/// missing, every extent of the oldest retained checkpoint's
/// image and of each manifest after it points at a run that exists with the crc it names,
/// and every chunk of GC's catalog decodes and says of each manifest at or above the
/// boundary what the manifest says. Returns the broken objects, each with why.
pub fn verify(url: &BucketUrl, progress: &mut dyn Write) -> anyhow::Result<Vec<String>> {
    let rt = runtime()?;
    let store = url.open()?;
    open_bucket(&*store, rt.handle(), false).with_context(|| format!("open bucket {url}"))?;
    let mut broken = Vec::new();
    // The manifests are listed first: a segment is uploaded before the manifest that names
    // it, so every segment a listed manifest names was there to be listed after them. (Listed
    // the other way round, a checkpoint committing meanwhile named a segment this run never
    // read, reported as missing.)
    // Manifests below the boundary are not part of the bucket (their runs are checked all
    // the same, below). The manifests are listed as GC lists them, by epoch (a key under
    // `manifests/` that names none is not one, and is fetched under its epoch's own key),
    // a page at a time.
    let (boundary, oldest_retained) = rt.block_on(kept(&*store))?;
    let epochs: Vec<u64> = rt
        .block_on(Manifests::list(&*store))?
        .iter()
        .map(|(e, _)| e)
        .collect();
    let segments = rt.block_on(store.list("segments/"))?;
    let chunks = rt.block_on(store.list(CATALOG_PREFIX))?;
    let mut runs = Runs::default();
    let mut fetching = Fetching::new(&rt, &*store, "verify: segment", segments.len());
    for window in windows_by_size(&segments, VERIFY_WINDOW_BYTES) {
        for (_, key, bytes) in fetching.window(progress, window, |s| s.key.clone())? {
            // verify_segment checks the index and every run's crc.
            match verify_segment(&bytes, &key) {
                Ok(list) => runs.add_segment(&key, &list),
                Err(e) => broken.push(format!("{key}: {e}")),
            }
        }
    }
    drop(segments);
    // Every manifest must decode; the extents of each after the oldest retained checkpoint
    // must point at runs that exist, checked as it arrives: a carrier's runs are read before
    // any later manifest names them, and a segment before any manifest. An expired checkpoint
    // may name segments GC has collected: it is no longer restorable, and `ls` says so.
    let mut pass = ManifestPass::default();
    pass.parents.reserve_exact(epochs.len());
    let mut catalog = CatalogCheck::new(
        &chunks,
        Fetching::new(&rt, &*store, "verify: chunk", chunks.len()),
    );
    let mut fetching = Fetching::new(&rt, &*store, "verify: manifest", epochs.len());
    // Small and many (one per group commit under `--durability remote`): 32 at once.
    for window in epochs.chunks(CHAIN_WINDOW) {
        for (&epoch, key, bytes) in fetching.window(progress, window, |&e| manifest_key(e))? {
            // Runs the manifest carries are checked as a segment's are, below the boundary too
            // (GC keeps such a manifest while a retained checkpoint uses its runs).
            let inline = crate::manifest::inline_range(&bytes, &key).and_then(|range| {
                let Some(range) = range.filter(|r| !r.is_empty()) else {
                    return Ok(None);
                };
                let list = verify_segment(&bytes[range.clone()], &key)?;
                Ok(Some((range.start as u64, list)))
            });
            match inline {
                Ok(Some((start, list))) => runs.add_carried(epoch, start, &list),
                Ok(None) => {}
                Err(e) => broken.push(format!("{key}: {e}")),
            }
            if epoch < boundary {
                continue; // not part of the bucket
            }
            pass.epochs.push(epoch);
            let man = match Manifest::decode_at(&bytes, &key, epoch) {
                Ok(man) => man,
                Err(e) => {
                    broken.push(format!("{key}: {e}"));
                    continue;
                }
            };
            pass.parents
                .push((epoch, man.parent.and_then(NonZeroU64::new)));
            catalog.note(epoch, &man);
            // Only those after the oldest retained checkpoint as the pass began: GC's state
            // never lowers it. (A state gone or damaged by the end reads as none, and the
            // manifests between are then not checked.)
            if epoch > oldest_retained {
                let wrong = man.extents.iter().filter_map(|e| runs.why_wrong(e));
                pass.wrong
                    .extend(wrong.map(|why| (epoch, format!("{key}: {why}"))));
            }
        }
        let read_to = window.last().map_or(0, |e| e + 1);
        catalog.check_due(read_to, progress, &mut broken)?;
    }
    catalog.check_due(u64::MAX, progress, &mut broken)?;
    drop(epochs);
    // The boundary and the oldest retained checkpoint as they are now, after every segment
    // and manifest was read: a GC pass running beside may have raised them (GC's state never
    // lowers them) and deleted what is below (below the boundary, what a manifest or a chunk
    // says is no longer part of the bucket, and a key freed since a chunk was written may
    // have been landed on again by a stalled writer, which a manifest read after that was
    // read after the boundary rose past its key; segments only checkpoints older than the
    // oldest retained one named may be gone, and the extents checked are those of the
    // retained ones). The oldest retained checkpoint's whole image is built from its chain
    // read again; a link gone meanwhile is broken only if no pass has moved on since (one
    // that has may have deleted it), else the image checked is that of the oldest the pass
    // keeps.
    let mut tries = 0;
    let (boundary, oldest_retained, image) = loop {
        let (boundary, oldest_retained) = rt.block_on(kept(&*store))?;
        let first = pass
            .parents
            .iter()
            .map(|(e, _)| *e)
            .find(|&e| e >= oldest_retained);
        let Some(first) = first else {
            break (boundary, oldest_retained, None);
        };
        let mut image = image_of(&rt, &*store, progress, &pass, first)?;
        tries += 1;
        if let Err(Unbuilt::Gone(link)) = image {
            if rt.block_on(kept(&*store))? != (boundary, oldest_retained) {
                if tries < 5 {
                    continue;
                }
                image = Err(Unbuilt::Chased(link));
            }
        }
        break (boundary, oldest_retained, Some((first, image)));
    };
    catalog.report(boundary, &mut broken);
    // Every epoch from the oldest retained checkpoint to the newest listed is a checkpoint
    // (each commit takes the epoch after the one before, a takeover's fence too): one with no
    // manifest is a retained checkpoint that cannot be restored, and the chains through it
    // are broken. (One missing just before a base breaks no later chain: only this finds it.)
    // The oldest retained one, which GC's state names, is looked for too, unless a pass since
    // has raised the boundary past it.
    let from = oldest_retained.max(boundary);
    let wanted = oldest_retained > 0 && oldest_retained >= boundary;
    for gap in pass.epochs.gaps_from(from, wanted) {
        let keys = match gap.end - gap.start {
            1 => manifest_key(gap.start),
            _ => format!("{}..{}", manifest_key(gap.start), manifest_key(gap.end - 1)),
        };
        broken.push(format!(
            "{keys}: missing, within the retained checkpoints (the oldest retained is \
             epoch {oldest_retained}, the next manifest there {})",
            manifest_key(gap.end)
        ));
    }
    if let Some((first, image)) = image {
        // The oldest retained checkpoint's whole image ...
        let key = manifest_key(first);
        match image {
            Ok(view) => {
                for map in view.extents.values() {
                    let wrong = map.values().filter_map(|(_, e)| runs.why_wrong(e));
                    broken.extend(wrong.map(|why| format!("{key}: {why}")));
                }
            }
            Err(why) => broken.push(format!("{key}: {why}")),
        }
        // ... and what every later one adds to it (checked as the pass read them: every one
        // after the oldest retained as it was then, at or before this one).
        let later = pass.wrong.iter().filter(|(e, _)| *e > first);
        broken.extend(later.map(|(_, why)| why.clone()));
    }
    broken.dedup();
    Ok(broken)
}

/// Why the image of the oldest retained checkpoint could not be built: a link of its chain
/// whose manifest did not decode in the pass (or was not there), a parent that is no earlier
/// epoch, or a link gone or changed since the pass read it.
#[derive(Debug)]
enum Unbuilt {
    Missing(u64),
    /// A parent at or after its child: a chain that would never end.
    Climbs(u64),
    Gone(u64),
    /// Gone, while GC's passes moved the oldest retained checkpoint on at every try.
    Chased(u64),
    Changed(u64, String),
}

impl std::fmt::Display for Unbuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let needs = "the chain of the oldest retained checkpoint needs";
        match self {
            Unbuilt::Missing(e) => write!(f, "{needs} {}, which is missing", manifest_key(*e)),
            Unbuilt::Climbs(e) => write!(f, "{needs} {}, not an earlier epoch", manifest_key(*e)),
            Unbuilt::Gone(e) => write!(f, "{needs} {}, gone since it was read", manifest_key(*e)),
            Unbuilt::Chased(e) => write!(
                f,
                "{needs} {}, gone since it was read while GC passes moved the oldest retained \
                 checkpoint on five times: not checked, run verify again",
                manifest_key(*e)
            ),
            Unbuilt::Changed(e, why) => write!(
                f,
                "{needs} {}, which no longer decodes: {why}",
                manifest_key(*e)
            ),
        }
    }
}

/// The image of checkpoint `epoch`: its chain (found by the parents the pass kept) fetched
/// again, a window at a time, and applied from its base.
fn image_of(
    rt: &tokio::runtime::Runtime,
    store: &dyn ReadStore,
    progress: &mut dyn Write,
    pass: &ManifestPass,
    epoch: u64,
) -> anyhow::Result<Result<View, Unbuilt>> {
    let mut chain = vec![epoch];
    while let Some(p) = pass.parent(*chain.last().expect("not empty")).flatten() {
        if p >= *chain.last().expect("not empty") {
            return Ok(Err(Unbuilt::Climbs(p)));
        }
        if pass.parent(p).is_none() {
            return Ok(Err(Unbuilt::Missing(p)));
        }
        chain.push(p);
    }
    chain.reverse();
    let mut fetching = Fetching::new(rt, store, "verify: chain", chain.len());
    let mut view = View::default();
    for window in chain.chunks(CHAIN_WINDOW) {
        let got = fetching.window(progress, window, |&e| manifest_key(e))?;
        if let Some(&gone) = window
            .iter()
            .find(|&e| !got.iter().any(|(g, _, _)| *g == e))
        {
            return Ok(Err(Unbuilt::Gone(gone)));
        }
        for (&e, key, bytes) in got {
            match Manifest::decode_at(&bytes, &key, e) {
                Ok(man) if Some(man.parent) == pass.parent(e) => view.apply(&man),
                Ok(_) => return Ok(Err(Unbuilt::Changed(e, "another parent".into()))),
                Err(why) => return Ok(Err(Unbuilt::Changed(e, why.to_string()))),
            }
        }
    }
    Ok(Ok(view))
}

#[cfg(test)]
mod tests {
    use super::{windows_by_size, Epochs, ObjectMeta, CHAIN_WINDOW};

    /// Windows keep the order, hold every object once, and stay within both bounds; an
    /// object larger than the byte bound goes alone.
    #[test]
    fn windows_stay_within_their_bounds() {
        let objects = |sizes: &[u64]| -> Vec<ObjectMeta> {
            let meta = |(i, &size)| ObjectMeta {
                key: format!("segments/{i:04}"),
                size,
                etag: String::new(),
            };
            sizes.iter().enumerate().map(meta).collect()
        };
        let lens = |sizes: &[u64], max| -> Vec<usize> {
            let o = objects(sizes);
            let windows = windows_by_size(&o, max);
            let flat: Vec<&ObjectMeta> = windows.iter().flat_map(|w| w.iter()).collect();
            assert_eq!(flat, o.iter().collect::<Vec<_>>());
            windows.iter().map(|w| w.len()).collect()
        };
        assert_eq!(lens(&[], 10), Vec::<usize>::new());
        assert_eq!(lens(&[4, 4, 4, 4], 10), [2, 2]);
        assert_eq!(lens(&[4, 20, 4, 6, 1], 10), [1, 1, 2, 1]);
        assert_eq!(lens(&[20], 10), [1]);
        let many = vec![1; CHAIN_WINDOW * 2 + 1];
        assert_eq!(lens(&many, 1 << 20), [CHAIN_WINDOW, CHAIN_WINDOW, 1]);
    }

    /// The gaps are those between the epochs read, from the first wanted on, as the epochs
    /// one at a time would give them.
    #[test]
    fn gaps_are_found_between_runs_of_epochs() {
        let mut read = Epochs::default();
        for e in [3, 4, 5, 8, 9, 12] {
            read.push(e);
        }
        let gaps = |from, wanted| -> Vec<(u64, u64)> {
            let gaps = read.gaps_from(from, wanted);
            gaps.iter().map(|r| (r.start, r.end)).collect()
        };
        assert_eq!(gaps(0, false), [(6, 8), (10, 12)]);
        assert_eq!(gaps(2, true), [(2, 3), (6, 8), (10, 12)]);
        assert_eq!(gaps(4, true), [(6, 8), (10, 12)]);
        assert_eq!(gaps(7, true), [(7, 8), (10, 12)]);
        assert_eq!(gaps(9, false), [(10, 12)]);
        assert_eq!(gaps(13, true), []);
    }
}
