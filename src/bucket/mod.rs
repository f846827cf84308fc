//! Attaching a bucket to a mount: open the store, check the cache dir against the bucket,
//! restore into an empty cache dir, take over the prefix (fencing), and run the checkpointer
//! until unmount, which takes the final checkpoint.
//!
//! Layout: this file attaches a writer and stops it; `reader.rs` attaches a read-only
//! mount or a replica; `writer.rs` runs a writer's checkpointer and GC and takes its final
//! checkpoint; `prefetch.rs` is a restore's background prefetch; `hot.rs` the hot set a clean
//! stop records and the prewarm that reads it; `probe.rs` what status reads.

mod hot;
mod prefetch;
mod probe;
mod reader;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::checkpoint::{
    open_checked_bucket, restore_of, BucketFetcher, CheckpointError, CheckpointSettings,
    Checkpointer, Opened,
};
use crate::fs::Fs;
use crate::placement::Placement;
use crate::replica::{Following, REPLICA_WRITER};
use crate::store::{ObjectStore, ReadStore, StoreStats};

pub use hot::{HotSet, PrewarmProgress, HOT_SET_KEY};
use prefetch::Prefetch;
pub use probe::Probe;
use reader::{attach_reader, reader_at};
use writer::Writing;

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
    /// The writer a start on this cache dir is taking the bucket over as, recorded before its
    /// takeover's PUT: if that PUT lands and the start goes no further (an answer lost and an
    /// outage, a crash), the bucket's newest checkpoint names a writer the record does not,
    /// and only this says it was the cache dir's own. (Absent in records from before it.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    taking_over: Option<String>,
}

impl Record {
    /// Whether `writer` is this cache dir's: the one it is in step with, or the one a start
    /// on it was taking the bucket over as.
    fn names(&self, writer: &str) -> bool {
        self.writer == writer || self.taking_over.as_deref() == Some(writer)
    }
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
        (Some(latest), Some(r)) if latest.epoch > r.epoch && !r.names(&latest.writer) => bail!(
            "cache dir is behind bucket {url}: it is in step with epoch {}, and writer {} has \
             committed epoch {} since. Mount the bucket on an empty cache dir",
            r.epoch,
            latest.writer,
            latest.epoch
        ),
        _ => {}
    }
    if let Some(latest) = &opened.latest {
        let ours = record.is_some_and(|r| r.names(&latest.writer));
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
        // check and the marker's read made again, once in the filesystem's life). The
        // requests of the first read count too.
        let early = opening.placed.stats.clone();
        opening = open_writer(settings, true)?;
        opening.placed.stats.absorb(&early);
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
    if record.as_ref().is_some_and(|r| {
        r.writer == READ_ONLY_WRITER
            && opened.latest.as_ref().map(|m| m.epoch) != Some(r.epoch)
            && !opened.latest.as_ref().is_some_and(|m| r.names(&m.writer))
    }) {
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
        if let Some(r) = &record {
            // Durably, before the takeover can land: the next start on this cache dir must
            // know the writer the bucket's newest checkpoint may name from now on. When that
            // checkpoint is the cache dir's own already (a start before this one took the
            // bucket over and went no further), the cache dir is in step with it: the record
            // moves to it, so that a start failing in turn loses no writer of the cache dir's.
            let latest = opened.latest.as_ref().filter(|m| r.names(&m.writer));
            let pending = Record {
                taking_over: Some(writer.clone()),
                url: r.url.clone(),
                writer: latest.map_or_else(|| r.writer.clone(), |m| m.writer.clone()),
                epoch: latest.map_or(r.epoch, |m| m.epoch),
            };
            fs.set_bucket_record(
                &serde_json::to_vec(&pending).expect("a plain struct serializes"),
            )?;
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
        taking_over: None,
    };
    fs.set_bucket_record(&serde_json::to_vec(&record).expect("a plain struct serializes"))?;
    checkpointer.set_record_url(url.clone());
    info!(bucket = %url, writer, epoch, restored = restoring, "bucket attached");

    let writing = Writing::start(
        checkpointer.clone(),
        fs.clone(),
        store.clone(),
        runtime.handle().clone(),
    )?;
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
        writer: Some(writing),
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

impl Attached {
    /// The bucket's newest checkpoint when this mount attached (None: a new prefix).
    pub fn found(&self) -> Option<&Found> {
        self.found.as_ref()
    }

    /// What the bucket's part of the status is read from.
    pub fn probe(&self) -> Arc<Probe> {
        self.probe.clone()
    }

    /// Stops the writer, if there is one, with its final checkpoint. `close` comes after it.
    pub fn final_checkpoint(&mut self) -> anyhow::Result<()> {
        // Before the runtime the fetches run on goes away with `self`.
        if let Some(p) = self.prefetch.take() {
            p.finish();
        }
        match &mut self.writer {
            Some(w) => w.final_checkpoint(),
            None => Ok(()),
        }
    }

    /// Waits for what may still run after the final checkpoint (a writer's GC pass under
    /// way, which deletes nothing more) and logs the store's totals.
    pub fn close(self) {
        if let Some(w) = self.writer {
            w.wait_for_gc();
        }
        let s = &self.probe.store_stats;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        info!(
            puts = n(&s.put.requests),
            put_bytes = n(&s.put.bytes),
            gets = n(&s.get.requests),
            get_bytes = n(&s.get.bytes),
            heads = n(&s.head.requests),
            lists = n(&s.list.requests),
            deletes = n(&s.delete.requests),
            errors = n(&s.put.errors)
                + n(&s.get.errors)
                + n(&s.head.errors)
                + n(&s.list.errors)
                + n(&s.delete.errors),
            "object store totals for this mount"
        );
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
}
