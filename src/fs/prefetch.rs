//! Prefetching: the small files a new machine fetches in the background after a restore,
//! in batches of few requests, and the pages a prewarm asks for.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::fill::InFlight;
use super::{FileKind, Fs, Inode, Result, PAGE_SIZE};

impl Fs {
    /// Files of at most `max_bytes` with pages still only in the bucket: what a new machine
    /// fetches in the background right after a restore (catalogs, control files, visibility
    /// maps), so that Postgres's start and first queries do not wait on one round trip per
    /// file. Most recently modified first (what the last stop wrote, its control file and
    /// the files it writes anew at each checkpoint, is what the next start reads first),
    /// then smallest first.
    pub fn small_absent_files(&self, max_bytes: u64) -> Vec<u64> {
        let mut files: Vec<(std::cmp::Reverse<std::time::SystemTime>, u64, u64)> = self
            .inode_snapshot()
            .values()
            .filter_map(|inode| {
                let st = inode.state.lock();
                (st.attr.kind == FileKind::File
                    && st.attr.size <= max_bytes
                    && !st.absent.is_empty())
                .then_some((std::cmp::Reverse(st.attr.mtime), st.attr.size, st.attr.ino))
            })
            .collect();
        files.sort_unstable();
        files.into_iter().map(|(_, _, ino)| ino).collect()
    }

    /// `files` in batches that `prefetch_batch` fetches with few requests each (the
    /// fetcher's grouping; each file alone if no bucket is attached).
    pub fn group_for_prefetch(&self, files: Vec<u64>) -> Vec<Vec<u64>> {
        match self.fetcher.get() {
            Some(fetcher) => fetcher.group_for_prefetch(files),
            None => files.into_iter().map(|ino| vec![ino]).collect(),
        }
    }

    /// Fetches every absent page of `files` into the cache with one `fetch_batch`, as reads
    /// would. Pages another fill is fetching now are left to it (it never waits, so batches
    /// and fills cannot wait on each other); files gone since are skipped. Files a read is
    /// waiting for are installed first, and each is released to its readers as soon as it is
    /// installed; a file that fails to install does not hold up the others.
    pub fn prefetch_batch(&self, files: &[u64]) -> Prefetched {
        let mut held: Vec<Held> = Vec::new();
        for &ino in files {
            let Ok(inode) = self.inode(ino) else {
                continue;
            };
            let missing = {
                let mut st = inode.state.lock();
                let all = 0..st.attr.size.div_ceil(PAGE_SIZE);
                st.claim_absent(all)
            };
            if !missing.is_empty() {
                held.push(Held {
                    ino,
                    inode,
                    missing,
                });
            }
        }
        let mut in_flight: Vec<Option<InFlight<'_>>> = held
            .iter()
            .map(|h| {
                Some(InFlight {
                    inode: &h.inode,
                    ranges: h.missing.clone(),
                })
            })
            .collect();
        let mut done = Prefetched::default();
        if held.is_empty() {
            return done;
        }
        let wants: Vec<(u64, Range<u64>)> = held
            .iter()
            .flat_map(|h| h.missing.iter().map(|r| (h.ino, r.clone())))
            .collect();
        let fetched = match self.fetcher.get() {
            Some(fetcher) => fetcher.fetch_batch(&wants),
            None => Err("no bucket attached to fetch absent pages".into()),
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(e) => {
                done.failed = held.iter().map(|h| (h.ino, e.clone())).collect();
                return done;
            }
        };
        // Each file's answers: they follow `wants`, file by file.
        let mut answers = Vec::with_capacity(held.len());
        let mut next = fetched.into_iter();
        for h in &held {
            answers.push(Some(
                next.by_ref().take(h.missing.len()).collect::<Vec<_>>(),
            ));
        }
        for _ in 0..held.len() {
            let waited = held
                .iter()
                .enumerate()
                .position(|(i, h)| answers[i].is_some() && h.inode.state.lock().waiting > 0);
            let i = waited.unwrap_or_else(|| {
                answers
                    .iter()
                    .position(Option::is_some)
                    .expect("a file left to install")
            });
            let (h, data) = (&held[i], answers[i].take().expect("not installed yet"));
            self.step(super::Step::FillFetched { ino: h.ino });
            for (r, bytes) in h.missing.iter().zip(&data) {
                match self.install_fetched(&h.inode, r.clone(), bytes) {
                    Ok(()) => done.bytes += bytes.len() as u64,
                    Err(e) => {
                        done.failed.push((h.ino, e.to_string()));
                        break;
                    }
                }
            }
            drop(in_flight[i].take());
            // Counted for the bounded cache (nothing was installed in a stopped mount).
            if !self.cache_failed() {
                // (Read only: no change for a cut to note.)
                self.touch_locked(h.ino, &h.inode.state.lock_unnoted(), 0..u64::MAX);
            }
        }
        self.stats
            .fetched_bytes
            .fetch_add(done.bytes, Ordering::Relaxed);
        done
    }

    /// Fetches whichever of `pages` of file `ino` are absent, as a read would, and counts
    /// them as used (prewarm). Returns the bytes fetched; a file gone since is no error.
    pub fn prefetch_pages(&self, ino: u64, pages: Range<u64>) -> Result<u64> {
        let Ok(inode) = self.inode(ino) else {
            return Ok(0);
        };
        let size = inode.state.lock().attr.size;
        let pages = pages.start..pages.end.min(size.div_ceil(PAGE_SIZE));
        if pages.is_empty() {
            return Ok(0);
        }
        let fetched = self.fill_absent(&inode, pages.clone(), false)?;
        // (Read only: no change for a cut to note.)
        self.touch_locked(ino, &inode.state.lock_unnoted(), pages);
        Ok(fetched)
    }
}

/// What `Fs::prefetch_batch` did.
#[derive(Debug, Default)]
pub struct Prefetched {
    /// Bytes fetched and installed.
    pub bytes: u64,
    /// Files that could not be fetched or installed, with why (a read fetches them again
    /// and reports its own error).
    pub failed: Vec<(u64, String)>,
}

/// A file of a prefetch batch: its absent pages this batch fetches (marked as being
/// fetched).
struct Held {
    ino: u64,
    inode: Arc<Inode>,
    missing: Vec<Range<u64>>,
}
