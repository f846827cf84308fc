//! Reading file contents from the bucket for pages that are not in the cache file.
//!
//! A request names a page range of one file (or, for the prefetch after a restore, page
//! ranges of many files); the extents covering it are looked up in the bucket view, each run
//! they point into is fetched once with a ranged GET (adjacent runs of one segment in a single
//! GET, and in a batch runs a little apart too), checked against its crc32c, and the pages
//! copied out. A run that fails its checksum is an error naming the object and offset: never
//! wrong bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::RwLock;
use tracing::error;

use crate::fs::{Fetcher, PAGE_SIZE};
use crate::manifest::segment::decode_run;
use crate::manifest::view::{overlapping, View};
use crate::manifest::Extent;
use crate::store::ReadStore;

pub struct BucketFetcher {
    store: Arc<dyn ReadStore>,
    rt: tokio::runtime::Handle,
    view: Arc<RwLock<View>>,
}

impl BucketFetcher {
    pub fn new(
        store: Arc<dyn ReadStore>,
        rt: tokio::runtime::Handle,
        view: Arc<RwLock<View>>,
    ) -> BucketFetcher {
        BucketFetcher { store, rt, view }
    }
}

/// One ranged GET: runs of one segment in order.
struct Get {
    segment: Arc<str>,
    start: u64,
    end: u64,
    runs: Vec<RunUse>,
}

/// A run to fetch, and the pieces of the request it serves (indexes).
struct RunUse {
    run: Arc<Extent>,
    pieces: Vec<usize>,
}

impl Fetcher for BucketFetcher {
    fn holds(&self, ino: u64) -> bool {
        self.view.read().inodes.contains_key(&ino)
    }

    fn fetch(&self, ino: u64, pages: Range<u64>) -> Result<Vec<u8>, String> {
        let mut out = self.fetch_retrying(&[(ino, pages)], 0)?;
        Ok(out.pop().expect("one answer per want"))
    }

    /// Runs of one segment up to `BATCH_GAP` apart share a GET: the bytes between them cost
    /// less than another round trip.
    fn fetch_batch(&self, wants: &[(u64, Range<u64>)]) -> Result<Vec<Vec<u8>>, String> {
        self.fetch_retrying(wants, BATCH_GAP)
    }

    /// Files whose first extent is in the same segment go together, in the segment's order,
    /// up to `BATCH_BYTES` of stored runs or `BATCH_FILES` files a batch. Files without an
    /// extent (the bucket holds only zeros for them) go in a batch of their own, which fetches
    /// nothing. Batches come in the order of their first file in `files`.
    fn group_for_prefetch(&self, files: Vec<u64>) -> Vec<Vec<u64>> {
        let view = self.view.read();
        // Each segment's place: the order of its first file in `files`.
        let mut place: HashMap<Option<&str>, usize> = HashMap::new();
        // (segment's place, offset of the file's first run, stored bytes of its runs, ino)
        let mut order: Vec<(usize, u64, u64, u64)> = Vec::with_capacity(files.len());
        for ino in files {
            let extents = view.extents.get(&ino);
            let first = extents.and_then(|m| m.values().next()).map(|(_, e)| e);
            let stored = extents
                .map(|m| m.values().map(|(_, e)| u64::from(e.run.stored_len)).sum())
                .unwrap_or(0);
            let next = place.len();
            let at = *place.entry(first.map(|e| &*e.segment)).or_insert(next);
            order.push((at, first.map_or(0, |e| e.run.offset), stored, ino));
        }
        order.sort_unstable();
        let mut batches: Vec<Vec<u64>> = Vec::new();
        let (mut segment, mut bytes) = (usize::MAX, 0);
        for (at, _, stored, ino) in order {
            match batches.last_mut() {
                Some(batch)
                    if at == segment
                        && bytes + stored <= BATCH_BYTES
                        && batch.len() < BATCH_FILES =>
                {
                    batch.push(ino);
                    bytes += stored;
                }
                _ => {
                    batches.push(vec![ino]);
                    (segment, bytes) = (at, stored);
                }
            }
        }
        batches
    }
}

/// How far apart two runs of one segment may lie and still share a GET of a batch.
const BATCH_GAP: u64 = 256 << 10;
/// The most a ranged GET that joins runs across a gap may read.
const MAX_JOINED_GET: u64 = 16 << 20;
/// The stored bytes, and the files, of one prefetch batch at most: small enough that the
/// installs (a write and an fdatasync per file) of several batches run side by side.
const BATCH_BYTES: u64 = 2 << 20;
const BATCH_FILES: usize = 32;

impl BucketFetcher {
    /// A segment that is gone (404) means the view moved on and GC collected it: read the
    /// view again and retry. A view that has not moved (a read-only mount of a checkpoint
    /// that left the retention window) gets a clear error, never wrong bytes.
    ///
    /// Before a segment counts as gone it is asked for again for a few seconds: in a global
    /// bucket (the data class, docs/replicas.md) a region's copy can lag the manifest that
    /// names it, which is in a strongly consistent bucket.
    fn fetch_retrying(
        &self,
        wants: &[(u64, Range<u64>)],
        gap: u64,
    ) -> Result<Vec<Vec<u8>>, String> {
        let mut attempts = 0;
        let mut waits = NOT_YET_VISIBLE.iter();
        loop {
            let epoch = self.view.read().epoch;
            match self.fetch_once(wants, gap) {
                Err(Failed::Gone(_)) if attempts < 3 && self.view.read().epoch != epoch => {
                    attempts += 1;
                }
                Err(Failed::Gone(key)) if waits.len() > 0 => {
                    let wait = *waits.next().expect("checked");
                    tracing::warn!(
                        key,
                        wait_ms = wait.as_millis() as u64,
                        "a segment the checkpoint names is not in the bucket (yet?); asking again"
                    );
                    std::thread::sleep(wait);
                }
                Err(Failed::Gone(key)) => {
                    let e = format!(
                        "segment {key} is gone from the bucket: GC collected it, so the \
                         checkpoint this mount serves (epoch {epoch}) has left the bucket's \
                         retention window (--retain, --gc-grace). Mount a newer checkpoint to \
                         read on"
                    );
                    error!("{e}");
                    return Err(e);
                }
                Err(Failed::Other(e)) => return Err(e),
                Ok(out) => return Ok(out),
            }
        }
    }
}

/// The waits before a missing segment counts as gone (3.75 s in all).
const NOT_YET_VISIBLE: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(250),
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
];

/// Why a fetch failed.
enum Failed {
    /// This segment is not in the bucket (any more).
    Gone(String),
    Other(String),
}

impl From<String> for Failed {
    fn from(e: String) -> Failed {
        Failed::Other(e)
    }
}

impl BucketFetcher {
    /// The bytes of each of `wants` (file, pages), as the view holds them now. Runs of one
    /// segment at most `gap` bytes apart share a ranged GET (adjacent ones always do); the
    /// GETs run at once.
    fn fetch_once(&self, wants: &[(u64, Range<u64>)], gap: u64) -> Result<Vec<Vec<u8>>, Failed> {
        let mut out: Vec<Vec<u8>> = wants
            .iter()
            .map(|(_, pages)| vec![0u8; ((pages.end - pages.start) * PAGE_SIZE) as usize])
            .collect();
        // (want, first page, end page, extent) pieces that overlap a want.
        let mut pieces: Vec<(usize, u64, u64, Arc<Extent>)> = Vec::new();
        {
            let view = self.view.read();
            for (i, (ino, pages)) in wants.iter().enumerate() {
                let Some(map) = view.extents.get(ino) else {
                    continue;
                };
                pieces.extend(
                    overlapping(map, pages.start, pages.end).map(|(s, e, x)| (i, s, e, x.clone())),
                );
            }
        }
        // Distinct runs, in segment order, with the pieces each one serves.
        let mut runs: HashMap<(&str, u64), RunUse> = HashMap::new();
        for (at, (_, _, _, e)) in pieces.iter().enumerate() {
            runs.entry((&*e.segment, e.run.offset))
                .or_insert_with(|| RunUse {
                    run: e.clone(),
                    pieces: Vec::new(),
                })
                .pieces
                .push(at);
        }
        let mut runs: Vec<RunUse> = runs.into_values().collect();
        runs.sort_by(|a, b| {
            (&a.run.segment, a.run.run.offset).cmp(&(&b.run.segment, b.run.run.offset))
        });
        let mut gets: Vec<Get> = Vec::new();
        for RunUse {
            run: r,
            pieces: served,
        } in runs
        {
            let end = r.run.offset + u64::from(r.run.stored_len);
            match gets.last_mut() {
                Some(g)
                    if g.segment == r.segment
                        && g.end <= r.run.offset
                        && r.run.offset - g.end <= gap
                        && (gap == 0 || end - g.start <= MAX_JOINED_GET) =>
                {
                    g.end = end;
                    g.runs.push(RunUse {
                        run: r,
                        pieces: served,
                    });
                }
                _ => gets.push(Get {
                    segment: r.segment.clone(),
                    start: r.run.offset,
                    end,
                    runs: vec![RunUse {
                        run: r,
                        pieces: served,
                    }],
                }),
            }
        }
        let store = self.store.clone();
        let fetched: Vec<(Get, bytes::Bytes)> = self.rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for g in gets {
                let store = store.clone();
                tasks.spawn(async move {
                    let bytes = store.get(&g.segment, Some(g.start..g.end)).await;
                    (g, bytes)
                });
            }
            let mut done = Vec::new();
            while let Some(r) = tasks.join_next().await {
                let (g, bytes) = r.map_err(|e| Failed::Other(format!("fetch task: {e}")))?;
                let bytes = bytes.map_err(|e| match e {
                    crate::store::StoreError::NotFound { key } => Failed::Gone(key),
                    e => Failed::Other(e.to_string()),
                })?;
                done.push((g, bytes));
            }
            Ok::<_, Failed>(done)
        })?;
        for (g, bytes) in fetched {
            if bytes.len() as u64 != g.end - g.start {
                return Err(Failed::Other(format!(
                    "short read key={} range={}..{}: got {} bytes",
                    g.segment,
                    g.start,
                    g.end,
                    bytes.len()
                )));
            }
            for RunUse {
                run,
                pieces: served,
            } in &g.runs
            {
                let at = (run.run.offset - g.start) as usize;
                let stored = &bytes[at..at + run.run.stored_len as usize];
                let data = decode_run(&run.run, stored, &run.segment).map_err(|e| {
                    error!(error = %e, "corrupt run in the bucket: refusing to serve its bytes");
                    e.to_string()
                })?;
                for &p in served {
                    let (want, first, end, _) = &pieces[p];
                    let pages = &wants[*want].1;
                    let src = ((first - run.run.first_page) * PAGE_SIZE) as usize;
                    let dst = ((first - pages.start) * PAGE_SIZE) as usize;
                    let len = ((end - first) * PAGE_SIZE) as usize;
                    // The run's last page may be short (end of file): the rest stays zero.
                    let avail = data.len().saturating_sub(src).min(len);
                    out[*want][dst..dst + avail].copy_from_slice(&data[src..src + avail]);
                }
            }
        }
        Ok(out)
    }
}
