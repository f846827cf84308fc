//! The hot set: the chunks a clean stop found in the cache and what its start read first,
//! recorded in the bucket, and the prewarm that fetches them into a new machine's cache.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::prefetch::in_parallel;
use crate::fs::Fs;
use crate::store::ReadStore;

/// Where a clean stop records the hot set, for the prewarm of the next cold start.
pub const HOT_SET_KEY: &str = "prewarm/hot-set.json";
/// The most chunks a hot set names (64 GiB of 256 KiB chunks).
const HOT_SET_MAX_CHUNKS: usize = 1 << 18;
/// Chunks fetched together by prewarm (1 MiB): large enough to batch GETs, small enough not
/// to hold up a read of the same file for long.
const PREWARM_PIECE_CHUNKS: u64 = 4;

/// The hot set's format; a reader skips (no prewarm) any other.
const HOT_SET_VERSION: u32 = 1;

/// The hot set as the bucket holds it: the chunks the cache held at a clean stop. Stored as
/// JSON sealed with a crc32c line (`cache::seal`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HotSet {
    pub version: u32,
    pub epoch: u64,
    pub writer: String,
    pub chunk_pages: u64,
    /// (inode, chunk numbers), in file order.
    pub files: Vec<(u64, Vec<u64>)>,
    /// (inode, chunk) the stopped mount read first, in the order it first read them
    /// (`Fs::first_reads`): fetched first at the next cold start. Absent from a hot set an
    /// older version recorded (read as none); versions before it ignore the field, so
    /// `HotSet` must never refuse unknown fields.
    #[serde(default)]
    pub first_reads: Vec<(u64, u64)>,
}

impl HotSet {
    pub(super) fn of(fs: &Fs, epoch: u64, writer: &str) -> HotSet {
        let mut files: Vec<(u64, Vec<u64>)> = Vec::new();
        for (ino, chunk) in fs.hot_chunks().into_iter().take(HOT_SET_MAX_CHUNKS) {
            match files.last_mut() {
                Some((i, chunks)) if *i == ino => chunks.push(chunk),
                _ => files.push((ino, vec![chunk])),
            }
        }
        HotSet {
            version: HOT_SET_VERSION,
            epoch,
            writer: writer.into(),
            chunk_pages: crate::fs::CHUNK_PAGES,
            files,
            first_reads: fs.first_reads(),
        }
    }

    pub fn chunks(&self) -> u64 {
        self.files.iter().map(|(_, c)| c.len() as u64).sum()
    }

    /// The part of the hot set that fits in `room` bytes of cache (None: no bound), each
    /// chunk weighing what `weigh` says (what the cache's bound will count for it), and how
    /// many chunks were left out. A hot set recorded by a mount with a larger `--cache-size`
    /// (or none) would otherwise be fetched whole and evicted again as it came in. What is
    /// kept: the files with the fewest hot chunks first (catalogs, indexes and small tables,
    /// which hold more of a database's reads per byte than its largest tables), then the
    /// first chunks of the file that no longer fits whole.
    fn within(self, room: Option<u64>, weigh: impl Fn(u64, u64) -> u64) -> (HotSet, u64) {
        let total = self.chunks();
        let Some(room) = room else {
            return (self, 0);
        };
        let HotSet {
            version,
            epoch,
            writer,
            chunk_pages,
            mut files,
            first_reads,
        } = self;
        files.sort_by_key(|(ino, chunks)| (chunks.len(), *ino));
        let weights = files
            .iter()
            .flat_map(|(ino, chunks)| chunks.iter().map(|&chunk| weigh(*ino, chunk)));
        let mut left = fitting(room, weights);
        let mut kept = Vec::new();
        for (ino, mut chunks) in files {
            if left == 0 {
                break;
            }
            chunks.truncate(left);
            left -= chunks.len();
            kept.push((ino, chunks));
        }
        kept.sort_unstable_by_key(|(ino, _)| *ino);
        let kept = HotSet {
            version,
            epoch,
            writer,
            chunk_pages,
            files: kept,
            first_reads,
        };
        let skipped = total - kept.chunks();
        (kept, skipped)
    }

    /// (inode, pages) pieces to fetch, with the chunks each covers (`pieces`).
    fn pieces(&self) -> Vec<(u64, std::ops::Range<u64>, u64)> {
        let chunks = self
            .files
            .iter()
            .flat_map(|(ino, chunks)| chunks.iter().map(move |&chunk| (*ino, chunk)));
        pieces(chunks, self.chunk_pages)
    }

    /// The hot set as read from the bucket, checked before any of its numbers is
    /// multiplied: None if a chunk it names lies beyond what a file can hold. First reads
    /// past the most a mount records are dropped (a later version may record more).
    fn checked(mut self) -> Option<HotSet> {
        let max = u64::MAX / self.chunk_pages.max(1).saturating_mul(crate::fs::PAGE_SIZE);
        let chunks = self.files.iter().flat_map(|(_, chunks)| chunks.iter());
        let in_bounds = chunks
            .chain(self.first_reads.iter().map(|(_, chunk)| chunk))
            .all(|&chunk| chunk < max);
        self.first_reads.truncate(crate::fs::FIRST_READS_MAX);
        in_bounds.then_some(self)
    }
}

/// How many of `weights`, taken in order, fit in `room` together.
pub(super) fn fitting(room: u64, weights: impl IntoIterator<Item = u64>) -> usize {
    let mut left = room;
    let mut n = 0;
    for weight in weights {
        if weight > left {
            break;
        }
        left -= weight;
        n += 1;
    }
    n
}

/// (inode, chunk)s in fetch order, as pieces to fetch: runs of consecutive chunks of one
/// file, at most `PREWARM_PIECE_CHUNKS` each, as (inode, pages, chunks covered).
pub(super) fn pieces(
    chunks: impl IntoIterator<Item = (u64, u64)>,
    chunk_pages: u64,
) -> Vec<(u64, std::ops::Range<u64>, u64)> {
    let mut out: Vec<(u64, std::ops::Range<u64>, u64)> = Vec::new();
    for (ino, chunk) in chunks {
        let pages = chunk * chunk_pages..(chunk + 1) * chunk_pages;
        match out.last_mut() {
            Some((i, p, n)) if *i == ino && p.end == pages.start && *n < PREWARM_PIECE_CHUNKS => {
                p.end = pages.end;
                *n += 1;
            }
            _ => out.push((ino, pages, 1)),
        }
    }
    out
}

/// How the prewarm of a cold start is going.
#[derive(Debug, Default)]
pub struct PrewarmProgress {
    pub finished: std::sync::atomic::AtomicBool,
    pub stopped: std::sync::atomic::AtomicBool,
    pub chunks_total: std::sync::atomic::AtomicU64,
    pub chunks_done: std::sync::atomic::AtomicU64,
    pub fetched_bytes: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Chunks of the recorded hot set left out: more than the cache has room for.
    pub chunks_skipped: std::sync::atomic::AtomicU64,
    /// Set when the prewarm starts (None: no prewarm on this mount, or not yet).
    pub started_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// A restore's prefetch has yet to read the hot set (or to start a prewarm of it).
    pub waiting: std::sync::atomic::AtomicBool,
    pub elapsed_ms: std::sync::atomic::AtomicU64,
}

impl PrewarmProgress {
    pub(super) fn status(&self) -> Option<crate::status::PrewarmStatus> {
        let Some(started) = *self.started_at.lock() else {
            return self
                .waiting
                .load(Ordering::Acquire)
                .then(|| crate::status::PrewarmStatus {
                    state: "waiting".into(),
                    chunks_total: 0,
                    chunks_done: 0,
                    fetched_bytes: 0,
                    failed: 0,
                    chunks_skipped: 0,
                    elapsed_ms: 0,
                });
        };
        let finished = self.finished.load(Ordering::Acquire);
        let elapsed_ms = if finished {
            self.elapsed_ms.load(Ordering::Acquire)
        } else {
            started.elapsed().as_millis() as u64
        };
        let state = match (finished, self.stopped.load(Ordering::Acquire)) {
            (false, _) => "running",
            (true, true) => "stopped",
            (true, false) => "done",
        };
        Some(crate::status::PrewarmStatus {
            state: state.into(),
            chunks_total: self.chunks_total.load(Ordering::Acquire),
            chunks_done: self.chunks_done.load(Ordering::Acquire),
            fetched_bytes: self.fetched_bytes.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            chunks_skipped: self.chunks_skipped.load(Ordering::Acquire),
            elapsed_ms,
        })
    }
}

/// Fetches the hot set into the cache (as much of it as the cache has room for, after the
/// small files), logging progress every few seconds.
pub(super) fn prewarm(fs: &Fs, hot: HotSet, stop: &AtomicBool, progress: &PrewarmProgress) {
    let recorded = hot.chunks();
    // (`cache_usage` first: it settles what the bound admitted, so that a chunk it refused
    // does not count as cached below.)
    let room = fs
        .cache_usage()
        .map(|u| u.capacity_bytes.saturating_sub(u.used_bytes));
    // What the small-file prefetch brought in already takes room and needs no fetch.
    let mut hot = hot;
    for (ino, chunks) in &mut hot.files {
        chunks.retain(|&c| !fs.chunk_cached(*ino, c));
    }
    hot.files.retain(|(_, chunks)| !chunks.is_empty());
    let (hot, skipped) = hot.within(room, |ino, chunk| fs.chunk_weight_now(ino, chunk));
    let pieces = hot.pieces();
    let started = std::time::Instant::now();
    progress.chunks_total.store(hot.chunks(), Ordering::Release);
    progress.chunks_skipped.store(skipped, Ordering::Release);
    *progress.started_at.lock() = Some(started);
    info!(
        chunks = hot.chunks(),
        epoch = hot.epoch,
        "prewarm: fetching the hot set the last clean stop recorded"
    );
    if skipped > 0 {
        info!(
            recorded,
            skipped,
            room_bytes = room.unwrap_or(0),
            "prewarm: the hot set is larger than the cache's free room; the files with the \
             fewest hot chunks go first, the rest is left to reads"
        );
    }
    let last_log = parking_lot::Mutex::new(started);
    in_parallel(pieces, stop, |(ino, pages, chunks)| {
        if fs.cache_failed() {
            // Nothing can be installed any more (logged when it stopped).
            stop.store(true, Ordering::Release);
            return;
        }
        match fs.prefetch_pages(ino, pages) {
            Ok(bytes) => {
                progress.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                progress.failed.fetch_add(chunks, Ordering::Relaxed);
                warn!(ino, error = %e, "prewarm fetch failed; a read fetches it again");
            }
        }
        let done = progress.chunks_done.fetch_add(chunks, Ordering::AcqRel) + chunks;
        let mut last = last_log.lock();
        if last.elapsed() >= std::time::Duration::from_secs(5) {
            *last = std::time::Instant::now();
            info!(
                done,
                total = hot.chunks(),
                fetched_bytes = progress.fetched_bytes.load(Ordering::Relaxed),
                "prewarm: in progress"
            );
        }
    });
    let elapsed = started.elapsed();
    progress
        .elapsed_ms
        .store(elapsed.as_millis() as u64, Ordering::Release);
    progress
        .stopped
        .store(stop.load(Ordering::Acquire), Ordering::Release);
    progress.finished.store(true, Ordering::Release);
    info!(
        chunks = progress.chunks_done.load(Ordering::Acquire),
        total = hot.chunks(),
        fetched_bytes = progress.fetched_bytes.load(Ordering::Acquire),
        failed = progress.failed.load(Ordering::Acquire),
        stopped_early = stop.load(Ordering::Acquire),
        elapsed_ms = elapsed.as_millis() as u64,
        "prewarm done"
    );
}

/// The hot set recorded in the bucket, if there is one and it reads back. A missing or
/// unreadable one only means no prewarm.
pub(super) async fn read_hot_set(store: &dyn ReadStore) -> Option<HotSet> {
    let parse = |bytes: &[u8]| -> Result<HotSet, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let body = crate::cache::unseal(text)?;
        serde_json::from_str(body).map_err(|e| e.to_string())
    };
    match store.get(HOT_SET_KEY, None).await {
        Ok(bytes) => match parse(&bytes) {
            Ok(h) if h.version == HOT_SET_VERSION && h.chunk_pages == crate::fs::CHUNK_PAGES => {
                let checked = h.checked();
                if checked.is_none() {
                    warn!(
                        key = HOT_SET_KEY,
                        "hot set naming chunks out of bounds; no prewarm"
                    );
                }
                checked
            }
            Ok(h) => {
                warn!(
                    version = h.version,
                    chunk_pages = h.chunk_pages,
                    "hot set of another format or chunk size; no prewarm"
                );
                None
            }
            Err(e) => {
                warn!(key = HOT_SET_KEY, error = %e, "unreadable hot set; no prewarm");
                None
            }
        },
        Err(crate::store::StoreError::NotFound { .. }) => None,
        Err(e) => {
            warn!(key = HOT_SET_KEY, error = %e, "could not read the hot set; no prewarm");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_set_larger_than_the_room_keeps_the_files_with_fewest_chunks_then_first_chunks() {
        let chunk = 32 * crate::fs::PAGE_SIZE;
        let hot = || HotSet {
            version: HOT_SET_VERSION,
            chunk_pages: 32,
            files: vec![(5, (0..10).collect()), (7, vec![3, 4]), (9, vec![0])],
            ..HotSet::default()
        };
        let whole = |_: u64, _: u64| chunk;
        // Room for all, or no bound: all of it.
        for room in [None, Some(13 * chunk), Some(20 * chunk)] {
            let (kept, skipped) = hot().within(room, whole);
            assert_eq!((kept.files, skipped), (hot().files, 0), "room {room:?}");
        }
        // Room for 6 chunks and a half: the two small files whole, then 3 of the large one.
        let (kept, skipped) = hot().within(Some(6 * chunk + chunk / 2), whole);
        assert_eq!(
            kept.files,
            vec![(5, vec![0, 1, 2]), (7, vec![3, 4]), (9, vec![0])]
        );
        assert_eq!(skipped, 7);
        // Room for 2: the smallest file, then the next one cut.
        let (kept, skipped) = hot().within(Some(2 * chunk), whole);
        assert_eq!(kept.files, vec![(7, vec![3]), (9, vec![0])]);
        assert_eq!(skipped, 11);
        // No room at all: nothing.
        let (kept, skipped) = hot().within(Some(chunk - 1), whole);
        assert_eq!((kept.chunks(), skipped), (0, 13));
        // Chunks weigh what the bound counts: a file's last chunk, partly filled, less than
        // a whole one, and a chunk past the file's end nothing. Here the 13 chunks weigh
        // 7.5 whole ones: all fit in room for 8, and in room for 7 all but file 5's last.
        let partial = |ino: u64, c: u64| match (ino, c) {
            (5, 9) => chunk / 2,
            (5, _) => chunk / 2 + chunk / 18,
            (7, 4) => 0,
            _ => chunk,
        };
        let (kept, skipped) = hot().within(Some(8 * chunk), partial);
        assert_eq!((kept.files, skipped), (hot().files, 0));
        let (kept, skipped) = hot().within(Some(7 * chunk), partial);
        assert_eq!(
            kept.files,
            vec![(5, (0..9).collect()), (7, vec![3, 4]), (9, vec![0])]
        );
        assert_eq!(skipped, 1);
    }

    #[test]
    fn a_hot_set_is_fetched_in_runs_of_at_most_four_chunks() {
        let hot = HotSet {
            version: HOT_SET_VERSION,
            chunk_pages: 32,
            files: vec![(7, vec![0, 1, 2, 3, 4, 5, 9]), (8, vec![2])],
            ..HotSet::default()
        };
        assert_eq!(hot.chunks(), 8);
        assert_eq!(
            hot.pieces(),
            vec![
                (7, 0..128, 4),
                (7, 128..192, 2),
                (7, 288..320, 1),
                (8, 64..96, 1)
            ]
        );
    }

    #[test]
    fn a_hot_set_without_first_reads_is_read_as_having_none() {
        // As version 1 wrote it before the first reads were recorded.
        let old = r#"{"version":1,"epoch":9,"writer":"w","chunk_pages":32,"files":[[5,[0,1]]]}"#;
        let hot: HotSet = serde_json::from_str(old).unwrap();
        assert_eq!(
            (hot.files, hot.first_reads),
            (vec![(5, vec![0, 1])], vec![])
        );
        let new = HotSet {
            first_reads: vec![(5, 1), (3, 0)],
            ..HotSet::default()
        };
        let again: HotSet = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(again.first_reads, new.first_reads);
    }

    #[test]
    fn a_hot_set_naming_chunks_no_file_can_hold_is_refused_and_its_first_reads_capped() {
        let hot = |files: Vec<(u64, Vec<u64>)>, first_reads: Vec<(u64, u64)>| HotSet {
            version: HOT_SET_VERSION,
            chunk_pages: crate::fs::CHUNK_PAGES,
            files,
            first_reads,
            ..HotSet::default()
        };
        let last = u64::MAX / (crate::fs::CHUNK_PAGES * crate::fs::PAGE_SIZE) - 1;
        assert!(hot(vec![(5, vec![0, last])], vec![(5, last)])
            .checked()
            .is_some());
        assert!(hot(vec![(5, vec![0, last + 1])], vec![])
            .checked()
            .is_none());
        assert!(hot(vec![], vec![(5, u64::MAX)]).checked().is_none());
        // More first reads than this version records: the first ones kept.
        let many: Vec<(u64, u64)> = (0..=crate::fs::FIRST_READS_MAX as u64)
            .map(|c| (5, c))
            .collect();
        let kept = hot(vec![], many.clone()).checked().expect("in bounds");
        assert_eq!(kept.first_reads, many[..crate::fs::FIRST_READS_MAX]);
    }

    #[test]
    fn a_damaged_hot_set_is_refused() {
        let body = serde_json::to_string(&HotSet::default()).unwrap();
        let sealed = crate::cache::seal(&body);
        assert_eq!(crate::cache::unseal(&sealed), Ok(body.as_str()));
        let damaged = sealed.replacen("\"epoch\":0", "\"epoch\":9", 1);
        assert_ne!(damaged, sealed);
        assert!(crate::cache::unseal(&damaged).is_err());
    }
}
