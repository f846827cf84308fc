//! Attaching a bucket to a mount: open the store, check the cache dir against the bucket,
//! restore into an empty cache dir, take over the prefix (fencing), and run the checkpointer
//! until unmount, which takes the final checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, info_span, warn};

use crate::checkpoint::{
    open_checked_bucket, restore_of, BucketFetcher, CheckpointError, CheckpointSettings,
    Checkpointer, Opened,
};
use crate::fs::Fs;
use crate::placement::Placement;
use crate::replica::{Follower, Following, REPLICA_WRITER};
use crate::store::{ObjectStore, ReadStore, StoreStats};

/// Where the bucket is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketUrl {
    /// A local directory as the object store.
    File(PathBuf),
    /// An S3 bucket and key prefix.
    S3 { bucket: String, prefix: String },
}

impl BucketUrl {
    pub fn parse(url: &str) -> anyhow::Result<BucketUrl> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!(
                    "--bucket {url:?}: a file:// URL needs an absolute path (file:///srv/bucket)"
                );
            }
            // One spelling per directory: the URL is recorded and compared as a string.
            let path: PathBuf = Path::new(path).components().collect();
            return Ok(BucketUrl::File(path));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("--bucket {url:?}: no bucket name (s3://NAME/PREFIX)");
            }
            return Ok(BucketUrl::S3 {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        bail!("--bucket {url:?}: expected s3://NAME/PREFIX or file:///PATH")
    }

    /// The filesystem's store, with its classes where the bucket records them.
    pub fn open(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        Ok(self.open_with_stats()?.0)
    }

    /// As `open`, with the store's request counters.
    pub fn open_with_stats(&self) -> anyhow::Result<(Arc<dyn ObjectStore>, Arc<StoreStats>)> {
        crate::placement::open(self, &Placement::default(), false)
    }

    /// As `open_with_stats`, as a handle that cannot write: what replicas and read-only
    /// mounts hold.
    pub fn open_read_with_stats(&self) -> anyhow::Result<(Arc<dyn ReadStore>, Arc<StoreStats>)> {
        let (store, stats) = self.open_with_stats()?;
        let store: Arc<dyn ReadStore> = store;
        Ok((store, stats))
    }
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BucketUrl::File(p) => write!(f, "file://{}", p.display()),
            BucketUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// What to do with a bucket whose last writer did not stop cleanly (and is not this cache
/// dir's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// Refuse, naming the writer and its last checkpoint: it may still be alive.
    Refuse,
    /// Take over whatever the age of its last checkpoint (`--takeover`).
    Always,
    /// Take over once its newest checkpoint is older than this (`--takeover-after`).
    After(std::time::Duration),
}

/// The bucket's newest checkpoint as this mount found it, before taking over.
#[derive(Clone, Debug)]
pub struct Found {
    pub epoch: u64,
    pub writer: String,
    pub created_ms: u64,
    pub clean_stop: bool,
    /// The names in the filesystem's root directory.
    pub root_names: Vec<String>,
}

impl Found {
    fn of(opened: &Opened) -> Option<Found> {
        let latest = opened.latest.as_ref()?;
        let root_names = opened
            .view
            .dirents
            .keys()
            .filter(|(parent, _)| *parent == crate::fs::ROOT_INO)
            .map(|(_, name)| name.to_string_lossy().into_owned())
            .collect();
        Some(Found {
            epoch: latest.epoch,
            writer: latest.writer.clone(),
            created_ms: latest.created_ms,
            clean_stop: latest.clean_stop,
            root_names,
        })
    }
}

#[derive(Clone, Debug)]
pub struct BucketSettings {
    /// The manifest bucket: the filesystem's own (`--bucket`).
    pub url: BucketUrl,
    /// Where WAL and data segments go, and the region hints (`--bucket-wal`, `--bucket-data`,
    /// `--region-hint`).
    pub placement: Placement,
    pub takeover: Takeover,
    /// Serve the latest checkpoint and never write to the bucket.
    pub read_only: bool,
    /// With `read_only`: serve the newest checkpoint at or before this point instead.
    pub at: Option<crate::checkpoint::At>,
    /// Serve the latest checkpoint with a local copy-on-write layer, follow the bucket, and
    /// serve its WAL to a standby (`--replica`). Never writes to the bucket.
    pub replica: Option<ReplicaSettings>,
    /// fsync waits until the change is in the bucket.
    pub remote_durability: bool,
    pub checkpoint: CheckpointSettings,
}

/// A replica's settings.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    /// Where PostgreSQL's WAL is, from the root of the filesystem (`pg_wal`).
    pub wal_dir: PathBuf,
    /// Besides root, the user whose WAL requests are answered (the mount's owner).
    pub wal_uid: Option<u32>,
    /// Start on the newest checkpoint, dropping the local layer (a rebase).
    pub rebase: bool,
}

/// What the cache dir remembers of the bucket it is in step with.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    url: String,
    writer: String,
    epoch: u64,
}

/// Refuses a bucket that this cache dir does not belong with, or one that another writer
/// may still hold.
fn check_bucket(
    fs: &Fs,
    settings: &BucketSettings,
    url: &str,
    opened: &Opened,
    record: Option<&Record>,
) -> anyhow::Result<()> {
    if let Some(r) = record {
        if r.url != url {
            bail!(
                "cache dir belongs to bucket {} (writer {} at epoch {}), not {url}; use that \
                 bucket or an empty cache dir",
                r.url,
                r.writer,
                r.epoch
            );
        }
    }
    match (&opened.latest, record) {
        (None, Some(r)) => bail!(
            "bucket {url} has no checkpoint, but this cache dir was in step with its epoch {} \
             (writer {}): was the prefix deleted? Use an empty cache dir to start afresh",
            r.epoch,
            r.writer
        ),
        (Some(latest), None) if !fs.is_empty()? => bail!(
            "bucket {url} holds a filesystem (epoch {}) and cache dir {} holds another one; \
             mount the bucket on an empty cache dir",
            latest.epoch,
            fs.root().display()
        ),
        (Some(latest), Some(r)) if latest.epoch > r.epoch && latest.writer != r.writer => bail!(
            "cache dir is behind bucket {url}: it is in step with epoch {}, and writer {} has \
             committed epoch {} since. Mount the bucket on an empty cache dir",
            r.epoch,
            latest.writer,
            latest.epoch
        ),
        _ => {}
    }
    if let Some(latest) = &opened.latest {
        let ours = record.is_some_and(|r| r.writer == latest.writer);
        if latest.clean_stop || ours {
            return Ok(());
        }
        let age_ms = crate::checkpoint::now_ms().saturating_sub(latest.created_ms);
        let age_s = age_ms / 1000;
        match settings.takeover {
            Takeover::Refuse => bail!(
                "bucket {url} is held by writer {}, whose last checkpoint (epoch {}) was {age_s} s \
                 ago and which has not stopped cleanly. If that writer is gone, mount with \
                 --takeover (or --takeover-after DURATION); two live writers would fence each \
                 other",
                latest.writer,
                latest.epoch
            ),
            Takeover::After(after) if u128::from(age_ms) < after.as_millis() => bail!(
                "bucket {url} is held by writer {}, whose last checkpoint (epoch {}) was {age_s} s \
                 ago, less than --takeover-after {} s: it may still be alive, and is taken over \
                 only once its last checkpoint is older than that (or now with --takeover, if it \
                 is gone)",
                latest.writer,
                latest.epoch,
                after.as_secs_f64()
            ),
            Takeover::After(after) => warn!(
                writer = %latest.writer,
                epoch = latest.epoch,
                age_s,
                takeover_after_s = after.as_secs_f64(),
                "taking the bucket over: its writer did not stop cleanly and its last checkpoint is older than --takeover-after"
            ),
            Takeover::Always => warn!(
                writer = %latest.writer,
                epoch = latest.epoch,
                age_s,
                "taking the bucket over (--takeover): its writer did not stop cleanly"
            ),
        }
    }
    Ok(())
}

/// A bucket attached to a running mount.
pub struct Attached {
    /// None for a read-only mount, which never writes to the bucket.
    writer: Option<Writing>,
    /// The bucket's newest checkpoint when this mount attached (None: a new prefix).
    found: Option<Found>,
    probe: Arc<Probe>,
    /// Running after a restore into an empty cache dir.
    prefetch: Option<Prefetch>,
    /// A replica's poller (stopped before the runtime goes).
    _following: Option<Following>,
    // Owns the runtime the store and fetcher run on; dropped last.
    _runtime: tokio::runtime::Runtime,
}

/// What the status of an attached bucket is read from.
pub struct Probe {
    url: String,
    writer: Option<String>,
    view: Arc<parking_lot::RwLock<crate::manifest::view::View>>,
    checkpointer: Option<Arc<Checkpointer>>,
    store_stats: Arc<StoreStats>,
    prewarm: Arc<PrewarmProgress>,
    replica: Option<Arc<Follower>>,
}

/// The writer's half: the checkpointer thread, and what a clean stop records.
struct Writing {
    checkpointer: Arc<Checkpointer>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// GC passes (ended, a pass under way cut short, before the final checkpoint).
    gc_thread: Option<JoinHandle<()>>,
    fs: Arc<Fs>,
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Handle,
}

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
    fn of(fs: &Fs, epoch: u64, writer: &str) -> HotSet {
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
fn fitting(room: u64, weights: impl IntoIterator<Item = u64>) -> usize {
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
fn pieces(
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
    fn status(&self) -> Option<crate::status::PrewarmStatus> {
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

impl Probe {
    pub fn status(&self) -> crate::status::BucketStatus {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.store_stats;
        let store = [
            ("put", &s.put),
            ("get", &s.get),
            ("head", &s.head),
            ("list", &s.list),
            ("delete", &s.delete),
        ]
        .into_iter()
        .map(|(op, o)| crate::status::StoreOpStatus {
            op: op.into(),
            requests: n(&o.requests),
            errors: n(&o.errors),
            bytes: n(&o.bytes),
            seconds: n(&o.micros) as f64 / 1e6,
        })
        .collect();
        crate::status::BucketStatus {
            url: self.url.clone(),
            writer: self.writer.clone(),
            epoch: self.view.read().epoch,
            checkpoints: self.checkpointer.as_ref().map(|cp| {
                let t = cp.totals();
                crate::status::CheckpointStatus {
                    committed: t.checkpoints,
                    failed: t.failures,
                    segment_bytes: t.segment_bytes,
                    last_commit_unix_ms: t.last_commit_ms,
                    last_error: t.last_error,
                }
            }),
            store,
            prewarm: self.prewarm.status(),
            gc: self.checkpointer.as_ref().and_then(|cp| cp.last_gc()),
            replica: self.replica.as_ref().map(|f| f.status()),
        }
    }

    pub fn checkpointer(&self) -> Option<Arc<Checkpointer>> {
        self.checkpointer.clone()
    }

    pub fn follower(&self) -> Option<Arc<Follower>> {
        self.replica.clone()
    }
}

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
struct Prefetch {
    stop: Arc<AtomicBool>,
    /// The read of the hot set (aborted at unmount: the thread may be waiting for it, as in
    /// an S3 stall).
    hot: tokio::task::AbortHandle,
    thread: Option<JoinHandle<()>>,
}

/// Runs `work` on each item from 16 threads until done or `stop`.
fn in_parallel<T: Send>(items: Vec<T>, stop: &AtomicBool, work: impl Fn(T) + Sync) {
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
    fn start(
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
    fn finish(mut self) {
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

/// Fetches the hot set into the cache (as much of it as the cache has room for, after the
/// small files), logging progress every few seconds.
fn prewarm(fs: &Fs, hot: HotSet, stop: &AtomicBool, progress: &PrewarmProgress) {
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
async fn read_hot_set(store: &dyn ReadStore) -> Option<HotSet> {
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

/// What a read-only mount writes in the cache dir's bucket record instead of a writer id.
const READ_ONLY_WRITER: &str = "read-only";

/// The runtime a mount's bucket I/O runs on, for as long as it is mounted.
fn io_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bucket-io")
        .enable_all()
        .build()
        .context("start the I/O runtime")
}

/// What a writer's start reads of its bucket: the store as placed (the bucket checked and
/// its format marker read, or written for a new prefix when opened with `create`), and the
/// chain of manifests.
struct Opening {
    placed: crate::placement::PlacedStore,
    /// None: the prefix holds no filesystem yet (opened without `create`).
    opened: Option<Opened>,
    /// Last, so that it is dropped after the store, as `Attached`'s is.
    runtime: tokio::runtime::Runtime,
}

/// A writer's bucket, being read beside the opening of its cache dir (`begin_open`).
pub struct BucketOpening(JoinHandle<anyhow::Result<Opening>>);

/// Starts reading a writer's bucket in a thread of its own, to go beside the opening of the
/// cache dir (its RocksDB and its files took longer than the S3 client and the bucket's
/// check with the marker's read: BENCHMARKS.md, "Issue 14: the cache dir opened beside the
/// bucket"): neither needs the other. It only reads: a new prefix's format marker (and its
/// class buckets' claims) are written by `attach`, once the cache dir is open, so a start
/// that fails on its cache dir writes nothing. S3 buckets only: what is saved is round trips,
/// and a `file://` store creates its directory as it opens, which in a new cache dir (the
/// bucket `bucketfs run` makes there when none is configured) made the cache dir's first
/// opening refuse it as someone else's. None for those, for a read-only mount or a replica
/// (left as they were), or if no thread could be started: `attach` reads the bucket itself.
pub fn begin_open(settings: &BucketSettings) -> Option<BucketOpening> {
    let urls = [
        Some(&settings.url),
        settings.placement.wal.as_ref(),
        settings.placement.data.as_ref(),
    ];
    if settings.read_only
        || settings.replica.is_some()
        || urls
            .into_iter()
            .flatten()
            .any(|u| matches!(u, BucketUrl::File(_)))
    {
        return None;
    }
    let settings = settings.clone();
    std::thread::Builder::new()
        .name("bucket-open".into())
        .spawn(move || open_writer(&settings, false))
        .ok()
        .map(BucketOpening)
}

/// Opens a writer's store and reads its chain. With `create`, a new prefix's format marker
/// is written first; without, such a prefix is left for a call with `create` (`opened`
/// None).
fn open_writer(settings: &BucketSettings, create: bool) -> anyhow::Result<Opening> {
    let runtime = io_runtime()?;
    let mut placed =
        crate::placement::open_placed_reading(&settings.url, &settings.placement, create, None)?;
    // `open_placed_reading` has checked the bucket and its format marker, and read the
    // chain's start beside them: the rest of the chain is all that is left to read.
    let start = placed.start.take();
    let opened = placed
        .formatted
        .then(|| open_checked_bucket(&*placed.store, runtime.handle(), None, start))
        .transpose()
        .with_context(|| format!("open bucket {}", settings.url))?;
    Ok(Opening {
        placed,
        opened,
        runtime,
    })
}

/// Attaches the bucket to the filesystem: a writer takes it over (reading it through
/// `opening`, begun beside the cache dir's opening, if there is one), a reader opens the
/// checkpoint it serves.
pub fn attach(
    fs: &Arc<Fs>,
    settings: &BucketSettings,
    opening: Option<BucketOpening>,
) -> anyhow::Result<Attached> {
    let url = settings.url.to_string();
    let record = read_record(fs)?;
    if settings.read_only || settings.replica.is_some() {
        // Readers never hold a handle that can write.
        let placed = crate::placement::open_placed_reading(
            &settings.url,
            &settings.placement,
            false,
            reader_at(settings, record.as_ref()),
        )?;
        return attach_reader(fs, settings, placed, io_runtime()?, &url, record);
    }
    let early = opening.is_some();
    let mut opening = match opening {
        Some(BucketOpening(thread)) => thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("opening the bucket panicked")))?,
        None => open_writer(settings, true)?,
    };
    // Whether the chain was read after the cache dir was opened.
    let mut reread = !early;
    if opening.opened.is_none() {
        // A new prefix, read before the cache dir was open: its marker is written now (the
        // check and the marker's read made again, once in the filesystem's life).
        opening = open_writer(settings, true)?;
        reread = true;
    }
    let Opening {
        placed,
        opened,
        runtime,
    } = opening;
    let opened = opened.expect("a prefix opened with `create` holds a filesystem");
    let crate::placement::PlacedStore {
        store,
        stats: store_stats,
        classes_apart,
        ..
    } = placed;
    let mut checkpoint_settings = settings.checkpoint.clone();
    if classes_apart {
        // Pages carried in a manifest would land with the manifests, not where the classes
        // are placed.
        checkpoint_settings.inline_bytes = 0;
    }
    if record.as_ref().is_some_and(|r| r.writer == REPLICA_WRITER) {
        bail!(
            "cache dir {} is a replica's; a writer starts on an empty cache dir",
            fs.root().display()
        );
    }
    if record
        .as_ref()
        .is_some_and(|r| r.writer == READ_ONLY_WRITER)
        && opened.latest.as_ref().map(|m| m.epoch) != record.as_ref().map(|r| r.epoch)
    {
        bail!(
            "cache dir {} was a read-only mount's, of an older checkpoint of {url}; mount the \
             bucket on an empty cache dir",
            fs.root().display()
        );
    }
    let writer = format!("{:016x}", fastrand::u64(..));
    let mut opened = opened;
    let mut attempts = 0;
    // Take the bucket over before touching the cache dir: if a writer still running there
    // commits first, nothing local has changed and the chain can be read again.
    let (checkpointer, epoch) = loop {
        if let Err(e) = check_bucket(fs, settings, &url, &opened, record.as_ref()) {
            if reread {
                return Err(e);
            }
            // The chain was read beside the cache dir's opening: a writer that has stopped
            // cleanly since is refused only on what the bucket holds now.
            reread = true;
            match open_checked_bucket(&*store, runtime.handle(), None, None) {
                Ok(now) => opened = now,
                Err(again) => {
                    warn!(error = %format!("{again:#}"), "could not read the bucket again before refusing it");
                    return Err(e);
                }
            }
            continue;
        }
        let cp = Arc::new(Checkpointer::new(
            fs.clone(),
            store.clone(),
            runtime.handle().clone(),
            checkpoint_settings.clone(),
            writer.clone(),
            &opened,
        ));
        if opened.latest.is_none() {
            // A new prefix: the first checkpoint is the base of everything in the cache dir.
            let epoch = cp
                .checkpoint(false)
                .context("first checkpoint")?
                .map(|o| o.epoch)
                .unwrap_or(0);
            break (cp, epoch);
        }
        match cp.take_over(opened.latest.as_ref().is_some_and(|m| m.clean_stop)) {
            Ok(epoch) => break (cp, epoch),
            Err(CheckpointError::LostRace { epoch }) if attempts < 5 => {
                attempts += 1;
                warn!(
                    epoch,
                    "another writer committed while taking over; reading the bucket again"
                );
                opened = open_checked_bucket(&*store, runtime.handle(), None, None)
                    .with_context(|| format!("open bucket {url}"))?;
                reread = true;
            }
            Err(e) => return Err(e).context("take over the bucket"),
        }
    };
    let found = Found::of(&opened);
    let restoring = opened.latest.is_some() && record.is_none();
    if restoring {
        let r = restore_of(&checkpointer.view().read());
        info!(
            epoch = r.epoch,
            inodes = r.inodes.len(),
            "restoring the namespace from the bucket; file contents follow on first read"
        );
        fs.install(r).context("install the restored namespace")?;
    }
    let fetcher = BucketFetcher::new(store.clone(), runtime.handle().clone(), checkpointer.view());
    fs.set_fetcher(Arc::new(fetcher));
    if settings.remote_durability {
        let remote: Arc<dyn crate::fs::RemoteSync> = checkpointer.clone();
        fs.set_remote_sync(&remote);
    }
    let record = Record {
        url: url.clone(),
        writer: writer.clone(),
        epoch,
    };
    fs.set_bucket_record(&serde_json::to_vec(&record).expect("a plain struct serializes"))?;
    checkpointer.set_record_url(url.clone());
    info!(bucket = %url, writer, epoch, restored = restoring, "bucket attached");

    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (cp, stop) = (checkpointer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || {
                let _span = info_span!("checkpointer").entered();
                cp.run(&stop)
            })
            .context("start checkpointer")?
    };
    // GC beside the checkpoints, not between them (the thread ends at once when GC is off).
    let gc_thread = {
        let (cp, stop) = (checkpointer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("gc".into())
            .spawn(move || {
                let _span = info_span!("gc").entered();
                cp.run_gc(&stop)
            })
            .context("start GC")?
    };
    let progress = Arc::new(PrewarmProgress::default());
    let prefetch = restoring
        .then(|| Prefetch::start(fs, store.clone(), runtime.handle(), progress.clone()))
        .transpose()?;
    let probe = Arc::new(Probe {
        url,
        writer: Some(writer),
        view: checkpointer.view(),
        checkpointer: Some(checkpointer.clone()),
        store_stats,
        prewarm: progress,
        replica: None,
    });
    Ok(Attached {
        found,
        _following: None,
        writer: Some(Writing {
            checkpointer,
            stop,
            thread: Some(thread),
            gc_thread: Some(gc_thread),
            fs: fs.clone(),
            store,
            rt: runtime.handle().clone(),
        }),
        probe,
        prefetch,
        _runtime: runtime,
    })
}

fn read_record(fs: &Fs) -> anyhow::Result<Option<Record>> {
    match fs.bucket_record()? {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).context("read the cache dir's bucket record")?,
        )),
    }
}

/// Why a cache dir a replica left must be emptied before this mount opens it (None: it need
/// not): a promotion (the replica becomes the writer, from the bucket's newest checkpoint),
/// a rebase asked for, or a base the primary's GC no longer retains.
pub fn must_start_afresh(fs: &Fs, settings: &BucketSettings) -> anyhow::Result<Option<String>> {
    let Some(record) = read_record(fs)? else {
        return Ok(None);
    };
    if record.writer != REPLICA_WRITER || record.url != settings.url.to_string() {
        return Ok(None);
    }
    let Some(replica) = &settings.replica else {
        if settings.read_only {
            return Ok(None);
        }
        // Becoming the writer drops the replica's layer: only when asked for in so many words.
        if settings.takeover != Takeover::Always {
            bail!(
                "cache dir is a replica's (of {}, base epoch {}): mount it with --replica, or \
                 with --takeover to promote the replica to the bucket's writer",
                record.url,
                record.epoch
            );
        }
        return Ok(Some(format!(
            "promoting a replica (base epoch {}) to the bucket's writer: the database starts \
             from the bucket's newest checkpoint, which holds all the WAL the replica had",
            record.epoch
        )));
    };
    if replica.rebase {
        return Ok(Some(format!(
            "moving the replica from base epoch {} to the newest checkpoint",
            record.epoch
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a runtime")?;
    let (store, _) = settings.url.open_read_with_stats()?;
    let kept = rt
        .block_on(crate::gc::read_state(&*store))
        .with_context(|| format!("read the GC state of {}", settings.url))?
        .map_or(0, |s| s.oldest_retained);
    Ok((record.epoch < kept).then(|| base_left_window(record.epoch, kept)))
}

/// Why a replica restarted on its cache dir starts on the newest checkpoint: its base
/// `epoch` is older than the oldest one the primary's GC retains, `kept`.
fn base_left_window(epoch: u64, kept: u64) -> String {
    format!(
        "the replica's base (epoch {epoch}) has left the primary's retention window (the oldest \
         retained checkpoint is epoch {kept}): starting on the newest checkpoint"
    )
}

/// The checkpoint a reader serves: a replica restarted on its cache dir, the base it has (its
/// layer is on top); otherwise `--at`, or the latest.
fn reader_at(settings: &BucketSettings, record: Option<&Record>) -> Option<crate::checkpoint::At> {
    match (&settings.replica, record) {
        (Some(_), Some(r)) => Some(crate::checkpoint::At::Epoch(r.epoch)),
        _ => settings.at,
    }
}

/// A read-only mount or a replica: a checkpoint served lazily like a restore. Neither takes
/// the bucket over nor checkpoints, so a live writer goes on undisturbed; the segments they
/// read are immutable, so the writer's later checkpoints cannot change them under them.
///
/// A read-only mount serves the latest checkpoint (or `--at`) as it is, and the kernel
/// refuses changes. A replica takes changes into the cache dir and keeps them there (its
/// copy-on-write layer), follows the bucket, and serves its WAL to a standby; restarted on
/// its cache dir it serves the same base with its layer on top.
fn attach_reader(
    fs: &Arc<Fs>,
    settings: &BucketSettings,
    placed: crate::placement::PlacedStore,
    runtime: tokio::runtime::Runtime,
    url: &str,
    record: Option<Record>,
) -> anyhow::Result<Attached> {
    let (store, store_stats): (Arc<dyn ReadStore>, _) = (placed.store, placed.stats);
    let (marker, what) = match settings.replica {
        Some(_) => (REPLICA_WRITER, "a replica"),
        None => (READ_ONLY_WRITER, "a read-only mount"),
    };
    match &record {
        None if !fs.is_empty()? => bail!(
            "cache dir {} holds a filesystem of its own; {what} needs an empty cache dir",
            fs.root().display()
        ),
        Some(r) if r.url != url || r.writer != marker => bail!(
            "cache dir {} belongs to {} of {}; {what} needs an empty cache dir (or one {what} \
             of this bucket left)",
            fs.root().display(),
            match r.writer.as_str() {
                READ_ONLY_WRITER => "a read-only mount".to_string(),
                REPLICA_WRITER => "a replica".to_string(),
                w => format!("writer {w}"),
            },
            r.url
        ),
        _ => {}
    }
    let at = reader_at(settings, record.as_ref());
    // The placement's open checked the bucket, read its marker and the chain's start: the
    // rest of the chain is all that is left to read. (A replica restarted on its cache dir
    // has read them once more, with the GC state, in `must_start_afresh`.)
    let opened = if placed.formatted {
        open_checked_bucket(&*store, runtime.handle(), at, placed.start)
    } else {
        Err(crate::checkpoint::unformatted(&*store))
    }
    .with_context(|| format!("open bucket {url}"))?;
    let Some(latest) = &opened.latest else {
        bail!("bucket {url} has no checkpoint yet: there is nothing to serve");
    };
    let found = Found::of(&opened);
    let installed = record.is_none();
    match &record {
        None => {
            let r = restore_of(&opened.view);
            fs.install(r)
                .context("install the checkpoint's namespace")?;
        }
        Some(r) if r.epoch != latest.epoch && settings.replica.is_some() => bail!(
            "cache dir {} is a replica of epoch {} of {url}, which the bucket no longer holds \
             whole; start the replica on an empty cache dir",
            fs.root().display(),
            r.epoch
        ),
        Some(r) if r.epoch != latest.epoch => bail!(
            "cache dir {} holds epoch {} of {url}, and the bucket is at epoch {} now; mount it \
             read-only on an empty cache dir to see the newer checkpoint",
            fs.root().display(),
            r.epoch,
            latest.epoch
        ),
        Some(_) => {}
    }
    let record = Record {
        url: url.to_string(),
        writer: marker.into(),
        epoch: latest.epoch,
    };
    fs.set_bucket_record(&serde_json::to_vec(&record).expect("a plain struct serializes"))?;
    let view = Arc::new(parking_lot::RwLock::new(opened.view));
    fs.set_fetcher(Arc::new(BucketFetcher::new(
        store.clone(),
        runtime.handle().clone(),
        view.clone(),
    )));
    let (follower, following) = match &settings.replica {
        Some(r) => {
            let follower = Arc::new(Follower::new(
                store.clone(),
                runtime.handle().clone(),
                r.wal_dir.clone(),
                &view.read(),
                latest.created_ms,
            ));
            crate::replica::wal::serve(follower.clone(), fs.root(), r.wal_uid)?;
            let following = Following::start(follower.clone())?;
            info!(bucket = %url, base_epoch = latest.epoch, writer = %latest.writer, restarted = !installed, "bucket attached as a replica: changes stay in the cache dir, nothing is written to the bucket");
            (Some(follower), Some(following))
        }
        None => {
            info!(bucket = %url, epoch = latest.epoch, writer = %latest.writer, "bucket attached read-only");
            (None, None)
        }
    };
    let progress = Arc::new(PrewarmProgress::default());
    let prefetch = installed
        .then(|| Prefetch::start(fs, store.clone(), runtime.handle(), progress.clone()))
        .transpose()?;
    let probe = Arc::new(Probe {
        url: url.to_string(),
        writer: None,
        view,
        checkpointer: None,
        store_stats,
        prewarm: progress,
        replica: follower,
    });
    Ok(Attached {
        found,
        writer: None,
        probe,
        prefetch,
        _following: following,
        _runtime: runtime,
    })
}

impl Attached {
    /// The bucket's newest checkpoint when this mount attached (None: a new prefix).
    pub fn found(&self) -> Option<&Found> {
        self.found.as_ref()
    }

    /// What the bucket's part of the status is read from.
    pub fn probe(&self) -> Arc<Probe> {
        self.probe.clone()
    }

    /// Stops the writer (final checkpoint) if there is one, and logs the store's totals.
    pub fn finish(self) -> anyhow::Result<()> {
        // Before the runtime the fetches run on goes away with `self`.
        if let Some(p) = self.prefetch {
            p.finish();
        }
        let result = match self.writer {
            Some(w) => w.finish(),
            None => Ok(()),
        };
        let s = &self.probe.store_stats;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        info!(
            puts = n(&s.put.requests),
            put_bytes = n(&s.put.bytes),
            gets = n(&s.get.requests),
            get_bytes = n(&s.get.bytes),
            lists = n(&s.list.requests),
            deletes = n(&s.delete.requests),
            errors = n(&s.put.errors) + n(&s.get.errors) + n(&s.head.errors) + n(&s.list.errors),
            "object store totals for this mount"
        );
        result
    }
}

impl Writing {
    /// Stops the periodic checkpoints and takes the final one, marked as a clean stop.
    fn finish(mut self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        info!(
            dirty_bytes = self.fs.unsafe_pages() * crate::fs::PAGE_SIZE,
            "final checkpoint: uploading what the bucket does not have yet"
        );
        let (fs, cp) = (self.fs.clone(), self.checkpointer.clone());
        let (done, finished) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(move || report_final_progress(&fs, &cp, started, &finished));
            let r = self.finish_inner();
            drop(done);
            r
        })
    }

    fn finish_inner(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        // A checkpoint in flight finishes first, and counts in the progress reports.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.gc_thread.take() {
            let _ = t.join();
        }
        let started = std::time::Instant::now();
        match self.checkpointer.checkpoint(true) {
            Ok(o) => {
                info!(
                    epoch = o.map(|o| o.epoch),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "final checkpoint committed"
                );
                let t = self.checkpointer.totals();
                info!(
                    checkpoints = t.checkpoints,
                    segments = t.segments,
                    segment_bytes = t.segment_bytes,
                    manifest_bytes = t.manifest_bytes,
                    "checkpoint totals for this mount"
                );
                self.record_hot_set();
                Ok(())
            }
            Err(e @ CheckpointError::CacheFailed { .. }) => {
                error!(error = %e, "no final checkpoint");
                Err(e).context("final checkpoint")
            }
            Err(e) => {
                error!(error = %e, "final checkpoint failed: the bucket lacks the last changes (the cache dir has them)");
                Err(e).context("final checkpoint")
            }
        }
    }
}

/// Logs every few seconds how much the final checkpoint has left to upload, until `finished`
/// disconnects. On Fly the stop has at most `kill_timeout`: whoever reads the log should see
/// whether it will make it.
fn report_final_progress(
    fs: &Fs,
    cp: &Checkpointer,
    started: std::time::Instant,
    finished: &std::sync::mpsc::Receiver<()>,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(EVERY) {
        let p = cp.upload_progress();
        info!(
            bytes_left = fs.unsafe_pages() * crate::fs::PAGE_SIZE,
            segment_bytes_sent = p.sent,
            segment_bytes_to_send = p.total.saturating_sub(p.sent),
            elapsed_s = started.elapsed().as_secs(),
            "final checkpoint: in progress"
        );
    }
}

impl Writing {
    /// Records the hot set in the bucket for the next cold start's prefetch and prewarm.
    /// Best effort: a failure costs the next cold start its prewarm, nothing else.
    fn record_hot_set(&self) {
        let epoch = self.checkpointer.view().read().epoch;
        let hot = HotSet::of(&self.fs, epoch, self.checkpointer.writer());
        let body =
            crate::cache::seal(&serde_json::to_string(&hot).expect("a plain struct serializes"));
        let len = body.len();
        match self.rt.block_on(self.store.put(
            HOT_SET_KEY,
            bytes::Bytes::from(body),
            crate::store::PutMode::Overwrite,
        )) {
            Ok(_) => info!(
                chunks = hot.chunks(),
                files = hot.files.len(),
                first_reads = hot.first_reads.len(),
                bytes = len,
                "hot set recorded for the next cold start's prewarm"
            ),
            Err(e) => {
                warn!(error = %e, "could not record the hot set; the next cold start has no prewarm")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_a_replica_starts_afresh_reads_as_one_sentence() {
        let why = base_left_window(7, 12);
        assert!(!why.contains("  "), "a run of spaces in {why:?}");
        assert!(
            why.contains("(epoch 7)") && why.contains("is epoch 12"),
            "{why}"
        );
    }

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
