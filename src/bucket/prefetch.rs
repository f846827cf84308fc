//! A restore's background prefetch: what the last start read first, then the small files,
//! then the hot set, into an empty cache dir, while the mount serves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use tracing::{debug, error, info, info_span, warn};

use super::hot::{fitting, pieces, prewarm, read_hot_set, HotSet, PrewarmProgress};
use crate::fs::Fs;
use crate::store::ReadStore;

/// Files up to this size are fetched in the background right after a restore.
const PREFETCH_MAX_FILE: u64 = 1 << 20;
/// Prefetch fetches in flight at once (each one GET, mostly of a few KiB: round trips, not
/// bandwidth, are what they wait on).
const PREFETCH_WORKERS: usize = 16;

/// How long the prefetch waits for the hot set (one GET, beside the mount's first requests)
/// before it fetches the small files without knowing what the last start read first: a
/// bucket that slow holds up the small files' GETs as much.
const HOT_SET_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Small files the last start read first, fetched together, in the order read: few, so that
/// each is installed soon after its answer comes (a batch installs its files one by one).
const FIRST_BATCH_FILES: usize = 4;

/// The hot set: read, or still being read after `HOT_SET_WAIT`.
enum HotRead {
    Read(Result<Option<HotSet>, tokio::task::JoinError>),
    Reading(tokio::task::JoinHandle<Option<HotSet>>),
}

/// One fetch of the prefetch: small files whole, or pages of a larger file.
#[derive(Debug, PartialEq)]
enum Work {
    Files(Vec<u64>),
    Pages(u64, std::ops::Range<u64>),
}

/// What a cold start's prefetch fetches, in order: the chunks the last start read first
/// (`first_reads`: its small files whole, `FIRST_BATCH_FILES` to a request in the order
/// read, `group` permitting; consecutive chunks of a larger file together, as `pieces`
/// makes them), then the other small files of `small` in `group`'s batches.
fn prefetch_plan(
    first_reads: &[(u64, u64)],
    small: Vec<u64>,
    group: impl Fn(Vec<u64>) -> Vec<Vec<u64>>,
) -> Vec<Work> {
    let is_small: std::collections::HashSet<u64> = small.iter().copied().collect();
    let mut planned = std::collections::HashSet::new();
    let mut out = Vec::new();
    // Read first and not yet planned: small files, or chunks of larger ones (never both).
    let (mut files, mut chunks) = (Vec::new(), Vec::new());
    let flush_files = |files: &mut Vec<u64>, out: &mut Vec<Work>| {
        if !files.is_empty() {
            out.extend(group(std::mem::take(files)).into_iter().map(Work::Files));
        }
    };
    let flush_chunks = |chunks: &mut Vec<(u64, u64)>, out: &mut Vec<Work>| {
        let runs = pieces(std::mem::take(chunks), crate::fs::CHUNK_PAGES);
        out.extend(
            runs.into_iter()
                .map(|(ino, pages, _)| Work::Pages(ino, pages)),
        );
    };
    for &(ino, chunk) in first_reads {
        if !is_small.contains(&ino) {
            flush_files(&mut files, &mut out);
            chunks.push((ino, chunk));
        } else if planned.insert(ino) {
            flush_chunks(&mut chunks, &mut out);
            files.push(ino);
            if files.len() == FIRST_BATCH_FILES {
                flush_files(&mut files, &mut out);
            }
        }
    }
    flush_files(&mut files, &mut out);
    flush_chunks(&mut chunks, &mut out);
    let rest = small
        .into_iter()
        .filter(|ino| !planned.contains(ino))
        .collect();
    out.extend(group(rest).into_iter().map(Work::Files));
    out
}

/// As much of `first_reads` as fits in half the cache's free room (all of it without a
/// bound), so that the prewarm after it still has room.
fn first_within_room<'a>(fs: &Fs, first_reads: &'a [(u64, u64)]) -> &'a [(u64, u64)] {
    let Some(usage) = fs.cache_usage() else {
        return first_reads;
    };
    let room = usage.capacity_bytes.saturating_sub(usage.used_bytes) / 2;
    let weights = first_reads
        .iter()
        .map(|&(ino, chunk)| fs.chunk_weight_now(ino, chunk));
    &first_reads[..fitting(room, weights)]
}

/// Fetches in the background, after a restore: what the last start read first, the small
/// files (newest first), then the hot set the last clean stop recorded (prewarm). Postgres
/// opens dozens of catalog files one after another as it starts and answers its first
/// queries; fetched on demand, each costs a round trip to the bucket in turn.
pub(super) struct Prefetch {
    stop: Arc<AtomicBool>,
    /// The read of the hot set (aborted at unmount: the thread may be waiting for it, as in
    /// an S3 stall).
    hot: tokio::task::AbortHandle,
    thread: Option<JoinHandle<()>>,
}

/// Runs `work` on each item from 16 threads until done or `stop`.
pub(super) fn in_parallel<T: Send>(items: Vec<T>, stop: &AtomicBool, work: impl Fn(T) + Sync) {
    let total = items.len();
    let queue = parking_lot::Mutex::new(items.into_iter());
    std::thread::scope(|s| {
        for _ in 0..PREFETCH_WORKERS.min(total) {
            s.spawn(|| loop {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Some(item) = queue.lock().next() else {
                    return;
                };
                work(item);
            });
        }
    });
}

impl Prefetch {
    /// Starts after a restore: what the last start read first (the hot set the last clean
    /// stop recorded in `store` says, one round trip away), then the small files, then the
    /// rest of the hot set (prewarm). The hot set is read beside the mount's first requests,
    /// not before the mount serves.
    pub(super) fn start(
        fs: &Arc<Fs>,
        store: Arc<dyn ReadStore>,
        rt: &tokio::runtime::Handle,
        progress: Arc<PrewarmProgress>,
    ) -> anyhow::Result<Prefetch> {
        let small = fs.small_absent_files(PREFETCH_MAX_FILE);
        let hot = rt.spawn(async move { read_hot_set(&*store).await });
        progress.waiting.store(true, Ordering::Release);
        let stop = Arc::new(AtomicBool::new(false));
        let (fs, flag, rt, abort) = (fs.clone(), stop.clone(), rt.clone(), hot.abort_handle());
        let thread = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                let _span = info_span!("prefetch").entered();
                let started = std::time::Instant::now();
                let total = small.len();
                // Waited for a moment only: a slow bucket must not hold up the small files.
                // (The timeout is made inside the runtime: its timer needs one.)
                let mut hot = hot;
                let waited = rt.block_on(async { tokio::time::timeout(HOT_SET_WAIT, &mut hot).await });
                let hot = match waited {
                    Ok(read) => HotRead::Read(read),
                    Err(_) => HotRead::Reading(hot),
                };
                let first = match &hot {
                    HotRead::Read(Ok(Some(h))) => first_within_room(&fs, &h.first_reads),
                    _ => &[],
                };
                if !first.is_empty() {
                    info!(
                        chunks = first.len(),
                        "prefetch: the chunks the last start read first go first"
                    );
                }
                let work = prefetch_plan(first, small, |files| fs.group_for_prefetch(files));
                let batches = work.len();
                let failed = std::sync::atomic::AtomicUsize::new(0);
                in_parallel(work, &flag, |work| {
                    if fs.cache_failed() {
                        // Nothing can be installed any more (logged when it stopped).
                        flag.store(true, Ordering::Release);
                        return;
                    }
                    // A failure here is not fatal: a read of the file fetches again and
                    // reports the error to its caller. (Files deleted since the restore,
                    // as Postgres removes its pid file as it starts, are skipped.)
                    match work {
                        Work::Files(batch) => {
                            let done = fs.prefetch_batch(&batch);
                            if let Some((ino, error)) = done.failed.first() {
                                failed.fetch_add(done.failed.len(), Ordering::Relaxed);
                                warn!(
                                    files = done.failed.len(),
                                    ino, error, "prefetch of restored files failed"
                                );
                            }
                        }
                        Work::Pages(ino, pages) => {
                            if let Err(e) = fs.prefetch_pages(ino, pages) {
                                failed.fetch_add(1, Ordering::Relaxed);
                                warn!(ino, error = %e, "prefetch of what the last start read first failed");
                            }
                        }
                    }
                });
                info!(
                    files = total,
                    first_chunks = first.len(),
                    batches,
                    failed = failed.load(Ordering::Relaxed),
                    stopped_early = flag.load(Ordering::Acquire),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "prefetch of small files after restore done"
                );
                let hot = match hot {
                    HotRead::Read(read) => read,
                    HotRead::Reading(hot) => rt.block_on(hot),
                };
                match hot {
                    Ok(Some(hot)) => prewarm(&fs, hot, &flag, &progress),
                    // No hot set (`read_hot_set` said why, if it was not just missing).
                    Ok(None) => {}
                    Err(e) if e.is_panic() => {
                        error!(error = %e, "reading the hot set panicked; no prewarm")
                    }
                    Err(_) => debug!("the mount stopped before the hot set was read; no prewarm"),
                }
                progress.waiting.store(false, Ordering::Release);
            })
            .context("start prefetch")?;
        Ok(Prefetch {
            stop,
            hot: abort,
            thread: Some(thread),
        })
    }

    /// Stops taking new work and waits for the fetches in flight.
    pub(super) fn finish(mut self) {
        self.stop_now();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn stop_now(&self) {
        self.stop.store(true, Ordering::Release);
        self.hot.abort();
    }
}

/// A mount that fails after its bucket was attached drops the prefetch without `finish`: it
/// stops taking new work all the same (the thread is not waited for).
impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_fetches_what_the_last_start_read_first_in_its_order_then_the_small_files() {
        // Small files 1 to 9 (absent); 20 and 21 larger. Grouping keeps the files it is
        // given together, in order.
        let group = |files: Vec<u64>| files.chunks(3).map(<[u64]>::to_vec).collect();
        let first = [
            (5, 0),
            (20, 3),
            (20, 4),
            (2, 0),
            (5, 1), // a second chunk of a small file: fetched whole already
            (6, 0),
            (7, 0),
            (8, 0),
            (9, 0),
            (20, 5),
            (20, 6),
            (20, 7),
            (20, 8),
            (20, 9),  // a fifth in a row: a new piece
            (20, 11), // not after the last: a new piece
            (21, 0),
        ];
        let plan = prefetch_plan(&first, (1..=9).collect(), group);
        let pages = |a: u64, b: u64| a * 32..b * 32;
        assert_eq!(
            plan,
            vec![
                Work::Files(vec![5]),
                Work::Pages(20, pages(3, 5)),
                // Four small files to a request: 2, 6, 7, 8, grouped as `group` says.
                Work::Files(vec![2, 6, 7]),
                Work::Files(vec![8]),
                Work::Files(vec![9]),
                // At most four chunks to a piece.
                Work::Pages(20, pages(5, 9)),
                Work::Pages(20, pages(9, 10)),
                Work::Pages(20, pages(11, 12)),
                Work::Pages(21, pages(0, 1)),
                // Then the other small files, each once.
                Work::Files(vec![1, 3, 4]),
            ]
        );
        // Nothing read first (a hot set an older version recorded): the small files alone.
        let plan = prefetch_plan(&[], (1..=4).collect(), group);
        assert_eq!(plan, vec![Work::Files(vec![1, 2, 3]), Work::Files(vec![4])]);
    }
}
