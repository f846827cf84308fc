//! Reading file contents from the bucket for pages that are not in the cache file.
//!
//! A request names a page range of one file; the extents covering it are looked up in the
//! bucket view, each run they point into is fetched once with a ranged GET (adjacent runs of
//! one segment in a single GET), checked against its crc32c, and the pages copied out. A run
//! that fails its checksum is an error naming the object and offset: never wrong bytes.

use std::ops::Range;
use std::sync::Arc;

use parking_lot::RwLock;
use tracing::error;

use crate::fs::{Fetcher, PAGE_SIZE};
use crate::manifest::segment::decode_run;
use crate::manifest::view::View;
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

/// One ranged GET: consecutive runs of one segment.
struct Get {
    segment: String,
    start: u64,
    end: u64,
    runs: Vec<Arc<Extent>>,
}

impl Fetcher for BucketFetcher {
    fn holds(&self, ino: u64) -> bool {
        self.view.read().inodes.contains_key(&ino)
    }

    /// A segment that is gone (404) means the view moved on and GC collected it: read the
    /// view again and retry. A view that has not moved (a read-only mount of a checkpoint
    /// that left the retention window) gets a clear error, never wrong bytes.
    ///
    /// Before a segment counts as gone it is asked for again for a few seconds: in a global
    /// bucket (the data class, docs/replicas.md) a region's copy can lag the manifest that
    /// names it, which is in a strongly consistent bucket.
    fn fetch(&self, ino: u64, pages: Range<u64>) -> Result<Vec<u8>, String> {
        let mut attempts = 0;
        let mut waits = NOT_YET_VISIBLE.iter();
        loop {
            let epoch = self.view.read().epoch;
            match self.fetch_once(ino, pages.clone()) {
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
    fn fetch_once(&self, ino: u64, pages: Range<u64>) -> Result<Vec<u8>, Failed> {
        let mut out = vec![0u8; ((pages.end - pages.start) * PAGE_SIZE) as usize];
        // (first page, end page, extent) pieces that overlap the request.
        let pieces: Vec<(u64, u64, Arc<Extent>)> = {
            let view = self.view.read();
            let Some(map) = view.extents.get(&ino) else {
                return Ok(out);
            };
            let from = map
                .range(..=pages.start)
                .next_back()
                .map_or(pages.start, |(&s, _)| s);
            map.range(from..pages.end)
                .filter(|(_, (end, _))| *end > pages.start)
                .map(|(&s, (e, x))| (s.max(pages.start), (*e).min(pages.end), x.clone()))
                .collect()
        };
        // Distinct runs, in segment order, merged into ranged GETs where adjacent.
        let mut runs: Vec<Arc<Extent>> = Vec::new();
        for (_, _, e) in &pieces {
            if !runs
                .iter()
                .any(|r| r.segment == e.segment && r.run.offset == e.run.offset)
            {
                runs.push(e.clone());
            }
        }
        runs.sort_by(|a, b| (&a.segment, a.run.offset).cmp(&(&b.segment, b.run.offset)));
        let mut gets: Vec<Get> = Vec::new();
        for r in runs {
            let end = r.run.offset + u64::from(r.run.stored_len);
            match gets.last_mut() {
                Some(g) if g.segment == r.segment && g.end == r.run.offset => {
                    g.end = end;
                    g.runs.push(r);
                }
                _ => gets.push(Get {
                    segment: r.segment.clone(),
                    start: r.run.offset,
                    end,
                    runs: vec![r],
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
            for run in &g.runs {
                let at = (run.run.offset - g.start) as usize;
                let stored = &bytes[at..at + run.run.stored_len as usize];
                let data = decode_run(&run.run, stored, &run.segment).map_err(|e| {
                    error!(error = %e, "corrupt run in the bucket: refusing to serve its bytes");
                    e.to_string()
                })?;
                for (first, end, e) in &pieces {
                    if e.segment != run.segment || e.run.offset != run.run.offset {
                        continue;
                    }
                    let src = ((first - run.run.first_page) * PAGE_SIZE) as usize;
                    let dst = ((first - pages.start) * PAGE_SIZE) as usize;
                    let len = ((end - first) * PAGE_SIZE) as usize;
                    // The run's last page may be short (end of file): the rest stays zero.
                    let avail = data.len().saturating_sub(src).min(len);
                    out[dst..dst + avail].copy_from_slice(&data[src..src + avail]);
                }
            }
        }
        Ok(out)
    }
}
