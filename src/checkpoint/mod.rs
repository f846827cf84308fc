//! The checkpointer: turns the dirty state into crash-consistent checkpoints in the bucket,
//! and restores a bucket into an empty cache dir.
//!
//! One checkpoint, in order (DESIGN.md section 3):
//! 1. *cut*: `Fs::cut` pauses every change, closes epoch E and says which dirty pages E
//!    takes; it copies no bytes (copy-on-write, `fs/cut.rs`);
//! 2. *pack and upload*: the runs' bytes are read as of the cut (`Fs::read_cut_run`) and
//!    become segments here, each uploaded as soon as it is full (in parallel, retried by the
//!    store wrapper), with few in memory at once;
//! 3. *commit* the manifest for E with `If-None-Match: *`: only then does the checkpoint exist;
//!    a 412 means another writer took over, and this mount stops accepting changes;
//! 4. *mark clean* what was uploaded and not written again.
//!
//! A failure before 3 leaves unreferenced segments (garbage), never a torn image; the pages
//! stay dirty and the next checkpoint takes them again.

mod fetch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{debug, error, info, warn};

use crate::fs::{CutShape, Fs, FsError, PathFilter, Restore, PAGE_SIZE};
use crate::manifest::segment::SegmentBuilder;
use crate::manifest::view::View;
use crate::manifest::{Extent, FormatError, Manifest, ManifestDirent};
use crate::store::placement::{Class, WAL_SEGMENT_SUFFIX};
use crate::store::{ObjectStore, PutMode, ReadStore, StoreError};

pub use fetch::BucketFetcher;

/// The bucket's format marker, written once when a prefix is first used.
pub const FORMAT_KEY: &str = "bucketfs.json";
pub const BUCKET_FORMAT_VERSION: u32 = 1;
/// The version of a filesystem whose classes live in buckets of their own.
pub const SPLIT_FORMAT_VERSION: u32 = 2;
pub const MANIFESTS: &str = "manifests/";

/// The most packed bytes a checkpoint carries in its manifest (`inline_bytes`): a group
/// commit's WAL and the pages written since the last one fit many times over, and a restore
/// reads a few MiB more at worst (the chain's first `base_every` deltas; past them, deltas
/// that add up to a quarter of a base make the next one due).
pub const INLINE_BYTES: u64 = 256 << 10;

pub fn manifest_key(epoch: u64) -> String {
    format!("{MANIFESTS}{epoch:020}")
}

/// Where the writer notes a recent epoch (`Checkpointer::put_manifest`), so that opening the
/// latest checkpoint LISTs `manifests/` from there: under `--durability remote` every group
/// commit adds a manifest, and the retention window keeps them all. Only a hint, never
/// above the tip: a restore that finds it missing, unreadable or past every manifest lists
/// the whole prefix as before.
pub const TIP_KEY: &str = "tip";

/// A tip note every this many epochs (and at every takeover and clean stop): opening the
/// latest checkpoint then lists at most about this many manifests, half a LIST page, and
/// the note costs a PUT per this many commits (under `--durability remote` at a hundred
/// commits a second, one every five seconds; a mount with a checkpoint every few seconds
/// rarely writes one but at its start and stop). The note goes out beside a manifest's
/// PUT; the checkpointer waits for it after the commit has released the fsyncs it covers
/// (`settle_note`), so it can delay the next checkpoint, not this one's fsyncs.
const TIP_EVERY: u64 = 500;

/// What `TIP_KEY` holds: JSON with a version, sealed with a crc32c as GC's objects are.
#[derive(serde::Serialize, serde::Deserialize)]
struct TipNote {
    version: u32,
    epoch: u64,
    /// Written beside a clean stop's manifest (the epoch after `epoch`): until a writer
    /// starts again, that manifest is the newest, and a start asks for the manifests up to
    /// it beside its LIST. (A field a bucketfs before it ignores, and whose absence reads as
    /// false: the note is only a hint.)
    #[serde(default)]
    stop: bool,
}

const TIP_VERSION: u32 = 1;

/// The body of a tip note naming `epoch`, written beside a clean stop's manifest or not.
pub fn encode_tip(epoch: u64, stop: bool) -> Bytes {
    crate::gc::seal_json(&TipNote {
        version: TIP_VERSION,
        epoch,
        stop,
    })
}

/// The note `TIP_KEY` holds, if there is one (None) and this version can read it (Err: why
/// not, for the open to say if it gets that far; a start whose bucket check fails reads the
/// note beside it).
async fn read_tip(store: &dyn ReadStore) -> Result<Option<TipNote>, String> {
    match store.get(TIP_KEY, None).await {
        Ok(bytes) => crate::gc::unseal_json::<TipNote>(&bytes, TIP_KEY)
            .map_err(|e| e.to_string())
            .and_then(|n| match n.version {
                TIP_VERSION => Ok(Some(n)),
                v => Err(format!("version {v}, this bucketfs reads {TIP_VERSION}")),
            }),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// A segment's key names the bucket epoch it is for, the writer, and the local cut that made
/// it. The cut number makes every attempt's keys new: a checkpoint retried after a commit
/// whose answer was lost (so it may be in the bucket after all) must never overwrite the
/// segments that commit points at.
/// WAL pages go in segments of their own (their class, `Class::Wal`, is in the key).
fn segment_key(epoch: u64, writer: &str, cut: u64, n: usize, wal: bool) -> String {
    let suffix = if wal { WAL_SEGMENT_SUFFIX } else { ".seg" };
    format!("segments/{epoch:020}-{writer}-{cut}-{n:04}{suffix}")
}

/// The cut a key `segment_key` made for `writer` names (None for any other key, a
/// compaction's among them).
fn segment_cut(key: &str, writer: &str) -> Option<u64> {
    let (_, after) = key
        .strip_prefix("segments/")?
        .split_once(&format!("-{writer}-"))?;
    after.split('-').next()?.parse().ok()
}

/// The epoch a manifest key names, if it is one.
pub fn epoch_of_key(key: &str) -> Option<u64> {
    key.strip_prefix(MANIFESTS)?.parse().ok()
}

/// The epochs of the manifests the bucket holds above `after` (all of them with None), at
/// or above `from`, in order.
pub async fn list_epochs(
    store: &dyn ReadStore,
    after: Option<u64>,
    from: u64,
) -> Result<Vec<u64>, StoreError> {
    let after = after.map(manifest_key);
    let mut epochs: Vec<u64> = store
        .list_after(MANIFESTS, after.as_deref())
        .await?
        .iter()
        .filter_map(|m| epoch_of_key(&m.key))
        .filter(|&e| e >= from)
        .collect();
    epochs.sort_unstable();
    Ok(epochs)
}

#[derive(Clone, Debug)]
pub struct CheckpointSettings {
    /// Time between checkpoints.
    pub interval: Duration,
    /// Checkpoint early once this many bytes are dirty.
    pub dirty_trigger: u64,
    /// Close a segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// zstd level for runs that compress by at least an eighth; None uploads raw bytes.
    pub zstd_level: Option<i32>,
    /// Largest run of pages in one piece (the unit a cache miss fetches).
    pub run_pages: u32,
    /// Segment uploads in flight at once.
    pub upload_concurrency: usize,
    /// Of the pages writers change while their cut's upload has yet to read them, the
    /// first bytes up to this many are copied into memory, the rest into a file in the
    /// cache dir (`fs::FROZEN_MEMORY_BUDGET`).
    pub staging_memory: u64,
    /// The fewest checkpoints from one base to the next (a chain of a base and
    /// `base_every - 1` deltas). Past it a base is written once the deltas since the last one
    /// add up to a quarter of its size (`BASE_SHARE`), and at `max_chain` checkpoints whatever
    /// their size: a restore reads a chain of at most `max_chain` manifests (one more for each
    /// takeover since the last checkpoint, whose manifest is always a delta, and for a
    /// compaction that checkpoints committed beside, whose manifest is then a delta),
    /// and past `base_every` a base, which is the whole view, is at most four times the bytes
    /// of the deltas before it, plus what the view grew since the last base.
    pub base_every: u32,
    /// The most checkpoints from one base to the next.
    pub max_chain: u32,
    /// A checkpoint whose packed runs come to at most this many bytes carries them in its
    /// manifest: one PUT instead of a segment's and then the manifest's, which is what a
    /// `--durability remote` commit waits for (docs/checkpoints.md, "Small checkpoints
    /// travel in their manifest"). 0: always in segments.
    pub inline_bytes: u64,
    /// Paths never uploaded.
    pub local_only: Vec<String>,
    /// PostgreSQL's WAL directory, from the root: its files' pages go in WAL segments (their
    /// own class, which placement can send to a bucket of its own).
    pub wal_dir: std::path::PathBuf,
    /// Commit a checkpoint at least this often, even with nothing to upload, so that the
    /// bucket shows this writer alive (`--takeover-after` judges a writer by the age of its
    /// newest checkpoint). None: only when something changed.
    pub heartbeat: Option<Duration>,
    /// While nothing is committed, look this often for another writer's manifest after the
    /// last one, so that a takeover fences an idle mount at once rather than at its next
    /// write. None: a takeover is noticed at the next commit.
    pub writer_check: Option<Duration>,
    /// Retention, GC and compaction in the background of the writer; None: never.
    pub gc: Option<GcSettings>,
}

/// The writer's background GC (docs/gc.md).
#[derive(Clone, Debug, PartialEq)]
pub struct GcSettings {
    pub retention: crate::gc::Retention,
    /// Time between passes (`--gc-interval`).
    pub interval: Duration,
    /// Rewrite mostly-dead and small segments before each pass; None: never.
    pub compact: Option<crate::gc::compact::CompactSettings>,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            interval: Duration::from_secs(5),
            dirty_trigger: 256 << 20,
            segment_bytes: 32 << 20,
            zstd_level: Some(1),
            run_pages: 32,
            upload_concurrency: 4,
            staging_memory: crate::fs::FROZEN_MEMORY_BUDGET,
            base_every: 32,
            max_chain: 128,
            inline_bytes: INLINE_BYTES,
            local_only: vec![
                "pgsql_tmp".into(),
                "postmaster.pid".into(),
                "postmaster.opts".into(),
            ],
            wal_dir: "pg_wal".into(),
            heartbeat: None,
            writer_check: None,
            gc: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "fenced: another writer committed epoch {epoch} first; this mount no longer writes to \
         the bucket"
    )]
    Fenced { epoch: u64 },
    #[error("another writer committed epoch {epoch} while this mount was taking the bucket over")]
    LostRace { epoch: u64 },
    #[error(
        "stopped: the disk under the cache dir failed to write back cached bytes ({reason}); \
         this mount takes no more changes. The bucket's latest checkpoint is epoch {epoch} \
         (writes not fsync'd before the failure may be missing from it). Check the disk, then \
         start again on an empty cache dir, which restores from the bucket: this one is marked \
         failed and is not mounted again"
    )]
    CacheFailed { epoch: u64, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// `--local-only` globs: a pattern without '/' matches any one path component ('*' and '?'
/// wildcards), one with '/' matches the whole path from the root.
#[derive(Clone, Debug, Default)]
pub struct LocalOnly {
    patterns: Vec<Vec<u8>>,
    wal_dir: Vec<u8>,
}

impl LocalOnly {
    /// `wal_dir` is relative to the root (`pg_wal`, `./pg_wal/` alike).
    pub fn new(patterns: &[String], wal_dir: &std::path::Path) -> LocalOnly {
        use std::os::unix::ffi::OsStrExt;
        let mut wal = Vec::new();
        for c in wal_dir.components() {
            if let std::path::Component::Normal(name) = c {
                if !wal.is_empty() {
                    wal.push(b'/');
                }
                wal.extend_from_slice(name.as_bytes());
            }
        }
        LocalOnly {
            patterns: patterns.iter().map(|p| p.as_bytes().to_vec()).collect(),
            wal_dir: wal,
        }
    }
}

impl PathFilter for LocalOnly {
    fn wal(&self, path: &[u8]) -> bool {
        path == self.wal_dir.as_slice()
    }

    fn local_only(&self, path: &[u8]) -> bool {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        self.patterns.iter().any(|p| {
            if p.contains(&b'/') {
                glob(p, path)
            } else {
                glob(p, name)
            }
        })
    }
}

/// '*' (any run, not crossing '/') and '?' (one byte) matching.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text)
                || (!text.is_empty() && text[0] != b'/' && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// What the bucket holds when a mount opens it.
pub struct Opened {
    pub view: View,
    /// The newest manifest, if there is one.
    pub latest: Option<Manifest>,
    /// The sizes of the chain's manifests (bodies uncompressed, `crate::manifest::plain_len`),
    /// which the writer's next base is planned with (`Checkpointer::base_due`).
    pub chain_bytes: ChainBytes,
}

/// A point in a bucket's history: an epoch, or a time (unix ms, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Epoch(u64),
    UnixMs(u64),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Epoch(e) => write!(f, "epoch {e}"),
            At::UnixMs(ms) => write!(f, "{} UTC", crate::admin::format_ms(*ms)),
        }
    }
}

/// Reads the format marker (writing it for a new prefix when `create`) and the newest
/// manifest chain. (A mount goes through `crate::placement::open_placed_reading`, which also
/// refuses a foreign prefix and records the placement, then `open_checked_bucket`; with
/// `create` this serves the tests and benchmarks that open a plain store.)
pub fn open_bucket(
    store: &dyn ObjectStore,
    rt: &tokio::runtime::Handle,
    create: bool,
) -> Result<Opened, CheckpointError> {
    if !create {
        return open_bucket_at(store, rt, None);
    }
    rt.block_on(ensure_format(store))?;
    open_chain(store, rt, None, Marker::Checked(None))
}

/// As `open_bucket_at`, for a caller that has checked the bucket and found its format marker
/// already (`crate::placement::open_placed_reading`, which with `create` also writes the
/// marker of a new prefix): every request before a mount serves is a round trip of its
/// start. `start`, if given, is what `ChainStart::read` found beside the marker.
pub fn open_checked_bucket(
    store: &dyn ReadStore,
    rt: &tokio::runtime::Handle,
    at: Option<At>,
    start: Option<ChainStart>,
) -> Result<Opened, CheckpointError> {
    open_chain(store, rt, at, Marker::Checked(start))
}

/// Why `store` cannot be opened: its prefix holds no filesystem (no format marker).
pub fn unformatted(store: &dyn ReadStore) -> CheckpointError {
    CheckpointError::Refused(format!(
        "{} holds no bucketfs filesystem (no {FORMAT_KEY})",
        store.describe()
    ))
}

/// Checks the bucket (`ReadStore::check`: a missing bucket, bad credentials or an unreachable
/// endpoint each get an error that says so) and reads the format marker, both at once: one
/// round trip. None: the prefix has no marker.
pub(crate) async fn check_and_read_marker(
    store: &dyn ReadStore,
) -> Result<Option<Bytes>, StoreError> {
    let (checked, marker) =
        futures_util::future::join(store.check(), store.get(FORMAT_KEY, None)).await;
    checked?;
    match marker {
        Ok(bytes) => Ok(Some(bytes)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks the format marker, writing it for a new prefix (if another writer wrote it first,
/// theirs is read back and checked).
async fn ensure_format(store: &dyn ObjectStore) -> Result<(), CheckpointError> {
    if let Some(bytes) = check_and_read_marker(store).await? {
        check_format(&bytes)?;
        return Ok(());
    }
    match store
        .put(FORMAT_KEY, format_marker(None), PutMode::Create)
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::PreconditionFailed { .. }) => {
            check_format(&store.get(FORMAT_KEY, None).await?)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether opening a chain reads the format marker first.
enum Marker {
    /// Check the bucket and the marker (a prefix without one is refused), beside the chain's
    /// start.
    Read,
    /// The caller has, and may have read the chain's start beside it.
    Checked(Option<ChainStart>),
}

/// What opening a chain reads before it lists or fetches a manifest: the GC boundary (the
/// manifests below it are not part of the bucket: a stalled writer may have committed one
/// after GC collected its epoch), and where to start. Read beside the format marker
/// (`open_bucket_at`, `crate::placement::open_placed_reading`): a start pays one round trip
/// for the bucket's check, the marker, the boundary and the tip note, not two.
pub struct ChainStart {
    /// The checkpoint it was read for.
    at: Option<At>,
    boundary: Result<u64, CheckpointError>,
    start: Option<Start>,
    /// Why the tip note could not be read, if it could not.
    unreadable_note: Option<String>,
}

impl ChainStart {
    /// The latest checkpoint starts from the tip note; an epoch, from its own manifest if
    /// the bucket holds it (a replica's WAL search opens several, and each would otherwise
    /// list every manifest). A point in time needs every epoch.
    pub async fn read(store: &dyn ReadStore, at: Option<At>) -> ChainStart {
        let (boundary, (start, unreadable_note)) =
            futures_util::future::join(crate::gc::read_boundary(store), async {
                match at {
                    None => match read_tip(store).await {
                        Ok(note) => (
                            note.filter(|n| n.epoch > 0).map(|n| Start::After {
                                note: n.epoch,
                                stop: n.stop,
                            }),
                            None,
                        ),
                        Err(e) => (None, Some(e)),
                    },
                    Some(At::Epoch(e)) => match store.head(&manifest_key(e)).await {
                        Ok(Some(_)) => (Some(Start::Exactly(e)), None),
                        Ok(None) => (None, None),
                        Err(err) => {
                            let why = "HEAD of the manifest failed; listing them";
                            debug!(error = %err, epoch = e, "{why}");
                            (None, None)
                        }
                    },
                    Some(At::UnixMs(_)) => (None, None),
                }
            })
            .await;
        ChainStart {
            at,
            boundary,
            start,
            unreadable_note,
        }
    }
}

/// The format marker of a new filesystem. One whose classes are split is version
/// `SPLIT_FORMAT_VERSION`, so that a bucketfs that knows nothing of placement refuses it
/// instead of looking for segments in the wrong bucket.
pub fn format_marker(placement: Option<&crate::placement::Recorded>) -> Bytes {
    let mut marker = serde_json::json!({
        "format": "bucketfs",
        "version": BUCKET_FORMAT_VERSION,
        "page_size": PAGE_SIZE,
        "created_unix_ms": now_ms(),
    });
    if let Some(p) = placement.filter(|p| p.is_split()) {
        marker["version"] = SPLIT_FORMAT_VERSION.into();
        marker["placement"] = serde_json::to_value(p).expect("placement serialises");
    }
    Bytes::from(marker.to_string())
}

/// As `open_bucket` (never creating), at the newest checkpoint at or before `at` (None: the
/// latest). Reads only: a replica's poll and its WAL search open their bucket through here,
/// and so do the commands (`ls`, `verify`, `gc`, `wal-fetch`). A checkpoint GC has
/// collected, or whose chain it has, is refused with a clear message. The latest chain is
/// read again if GC deletes a manifest of it while it is read.
pub fn open_bucket_at(
    store: &dyn ReadStore,
    rt: &tokio::runtime::Handle,
    at: Option<At>,
) -> Result<Opened, CheckpointError> {
    open_chain(store, rt, at, Marker::Read)
}

/// `open_bucket_at`, reading the marker first or not (`marker`).
fn open_chain(
    store: &dyn ReadStore,
    rt: &tokio::runtime::Handle,
    at: Option<At>,
    marker: Marker,
) -> Result<Opened, CheckpointError> {
    let mut start = match marker {
        Marker::Read => {
            let (marker, start) = rt.block_on(futures_util::future::join(
                check_and_read_marker(store),
                ChainStart::read(store, at),
            ));
            match marker? {
                Some(bytes) => {
                    check_format(&bytes)?;
                }
                None => return Err(unformatted(store)),
            }
            Some(start)
        }
        Marker::Checked(start) => start.filter(|s| s.at == at),
    };
    let mut attempts = 0;
    loop {
        // (Read again for another attempt: GC may have moved on.)
        match open_once(store, rt, at, start.take()) {
            Err(CheckpointError::Store(StoreError::NotFound { key }))
                if at.is_none() && attempts < 3 && epoch_of_key(&key).is_some() =>
            {
                attempts += 1;
                warn!(key, "a manifest of the chain went away while it was read (GC); reading the bucket again");
            }
            Err(CheckpointError::Store(StoreError::NotFound { key }))
                if at.is_some() && epoch_of_key(&key).is_some() =>
            {
                return Err(CheckpointError::Refused(format!(
                    "the checkpoint at or before {} is no longer restorable: its chain needs {key}, \
                     which GC has collected (it is outside the retention window). `bucketfs ls` \
                     lists the retained checkpoints",
                    at.expect("checked")
                )))
            }
            r => return r,
        }
    }
}

fn open_once(
    store: &dyn ReadStore,
    rt: &tokio::runtime::Handle,
    at: Option<At>,
    start: Option<ChainStart>,
) -> Result<Opened, CheckpointError> {
    rt.block_on(async {
        let ChainStart {
            boundary,
            start,
            unreadable_note,
            ..
        } = match start {
            Some(start) => start,
            None => ChainStart::read(store, at).await,
        };
        let boundary = boundary?;
        if let Some(e) = unreadable_note {
            warn!(error = %e, "could not read the tip note; listing every manifest");
        }
        let mut fetch = ChainFetch::new(store, boundary);
        let mut epochs = match start {
            // From the epoch before the note's (so that the noted one is listed too): empty
            // only if the note is past every manifest, which a note never is unless the prefix
            // was tampered with; then every manifest, as without one.
            Some(Start::After { note: t, stop }) => {
                // After a clean stop (a Machine waking on its volume, or a new one) the
                // newest manifest is the stop's, the one after the note, and the chain ends
                // there: its manifests are asked for beside the LIST, which takes a round trip
                // of its own. A note written while a writer ran says little of where the
                // newest manifest is (up to `TIP_EVERY` epochs on), so nothing is guessed.
                let top = t.saturating_add(1);
                if stop && top >= boundary {
                    fetch.ask_window(top, true);
                }
                let after = Some(t.max(boundary).max(1) - 1);
                let epochs = fetch.beside(list_epochs(store, after, boundary)).await?;
                if epochs
                    .last()
                    .is_some_and(|&l| l >= top.saturating_add(CHAIN_WINDOW as u64))
                {
                    fetch.forget_guesses();
                }
                epochs
            }
            Some(Start::Exactly(e)) if e >= boundary => vec![e],
            _ => Vec::new(),
        };
        if epochs.is_empty() {
            epochs = list_epochs(store, None, boundary).await?;
        }
        if epochs.is_empty() {
            return Ok(Opened {
                view: View::default(),
                latest: None,
                chain_bytes: ChainBytes::default(),
            });
        }
        let chosen = match at {
            None => epochs.last().copied(),
            Some(At::Epoch(e)) => epochs.iter().rev().find(|&&x| x <= e).copied(),
            Some(At::UnixMs(t)) => newest_at_or_before(store, &epochs, t).await?,
        };
        // A point in time must be one GC still keeps whole: an expired checkpoint may lack
        // segments that only it named.
        if let (Some(at), Some(e)) = (at, chosen) {
            let kept = crate::gc::read_state(store)
                .await?
                .map_or(0, |s| s.oldest_retained);
            if e < kept {
                return Err(CheckpointError::Refused(format!(
                    "the checkpoint at or before {at} (epoch {e}) is no longer restorable: it \
                     left the retention window and GC may have collected its segments; the \
                     oldest retained one is epoch {kept} (`bucketfs ls` lists them)"
                )));
            }
        }
        let Some(latest_epoch) = chosen else {
            return Err(CheckpointError::Refused(format!(
                "{} has no checkpoint at or before {}: the oldest it holds is epoch {}",
                store.describe(),
                at.expect("only a point in time can miss"),
                epochs[0]
            )));
        };
        // Follow parents back to a base, then apply forwards. A delta's parent is the epoch
        // before it, so the chain is the epochs just below: they are asked for up to
        // CHAIN_WINDOW at once, and a restore waits a round trip per window of its chain,
        // not one per delta (up to `max_chain`, 128 by default, at 20 ms each on S3). They are
        // counted down from the epoch rather than taken from the LIST, which may have
        // started at the tip note, above the base. A window may reach past the base, which
        // is found only by reading it: the chain is followed as the manifests arrive, a
        // manifest is decoded only if the chain reaches it, and the GETs still under way
        // below the base are dropped once the base is in, so that a start waits for neither
        // an older base's megabytes nor a slow answer it does not need.
        let mut chain = Vec::new();
        let mut epoch = latest_epoch;
        loop {
            let bytes = fetch.get(epoch).await;
            // Only the manifests the chain reaches count: one below the base may be gone
            // (GC deletes old ones) or fail to read, and that is not this restore's error.
            let key = manifest_key(epoch);
            let bytes = bytes?;
            let m = Manifest::decode_at(&bytes, &key, epoch)?;
            let parent = m.parent;
            chain.push((m, crate::manifest::plain_len(&bytes)));
            match parent {
                None => break,
                Some(p) if p < epoch => epoch = p,
                Some(p) => {
                    return Err(
                        FormatError::corrupt(&key, format!("parent {p} is not older")).into(),
                    );
                }
            }
        }
        drop(fetch);
        let mut view = View::default();
        let mut chain_bytes = ChainBytes::default();
        for (m, len) in chain.iter().rev() {
            view.apply(m);
            chain_bytes.note(m.parent.is_none(), *len);
        }
        let latest = chain.into_iter().next().map(|(m, _)| m);
        Ok(Opened {
            view,
            latest,
            chain_bytes,
        })
    })
}

/// The manifests of a chain on their way: asked for a window of epochs at a time (at once,
/// not one round trip each), kept as they arrive, and dropped with it (a GET still under
/// way below the base is one a start need not wait for).
struct ChainFetch<'a> {
    store: &'a dyn ReadStore,
    boundary: u64,
    asked: HashSet<u64>,
    in_flight: Gets<'a>,
    /// Asked for before a LIST said they exist (`ask_window` with `guess`): one found missing is asked for
    /// again when the chain reaches it, as it may have landed since.
    guessed: HashSet<u64>,
    guesses: Gets<'a>,
    arrived: HashMap<u64, Result<Bytes, StoreError>>,
}

type Gets<'a> = futures_util::stream::FuturesUnordered<
    futures_util::future::BoxFuture<'a, (u64, Result<Bytes, StoreError>)>,
>;

impl<'a> ChainFetch<'a> {
    fn new(store: &'a dyn ReadStore, boundary: u64) -> ChainFetch<'a> {
        ChainFetch {
            store,
            boundary,
            asked: HashSet::new(),
            in_flight: Gets::new(),
            guessed: HashSet::new(),
            guesses: Gets::new(),
            arrived: HashMap::new(),
        }
    }

    fn ask(&mut self, epoch: u64, guess: bool) {
        let store = self.store;
        let get = async move { (epoch, store.get(&manifest_key(epoch), None).await) }.boxed();
        match guess {
            true => self.guesses.push(get),
            false => self.in_flight.push(get),
        }
    }

    /// Asks for `top` and the epochs below it, `CHAIN_WINDOW` in all (none below the
    /// boundary), that were not asked for yet; `guess`, before a LIST said they exist.
    fn ask_window(&mut self, top: u64, guess: bool) {
        let lowest = top
            .saturating_sub(CHAIN_WINDOW as u64 - 1)
            .max(self.boundary)
            .max(1)
            .min(top);
        for e in (lowest..=top).rev() {
            if self.asked.insert(e) {
                if guess {
                    self.guessed.insert(e);
                }
                self.ask(e, guess);
            }
        }
    }

    /// Drops the guessed window (the chain starts more than a window above it: the GETs the
    /// chain needs should not share the bandwidth with it).
    fn forget_guesses(&mut self) {
        self.guesses = Gets::new();
        for e in self.guessed.drain() {
            self.asked.remove(&e);
            self.arrived.remove(&e);
        }
    }

    /// Manifest `epoch`, asking for its window if it was not asked for yet. The chain goes
    /// down, so each window holds the chain's next steps until it reaches below it.
    async fn get(&mut self, epoch: u64) -> Result<Bytes, StoreError> {
        if !self.asked.contains(&epoch) {
            self.ask_window(epoch, false);
        }
        loop {
            if let Some(got) = self.arrived.remove(&epoch) {
                if matches!(got, Err(StoreError::NotFound { .. })) && self.guessed.remove(&epoch) {
                    self.ask(epoch, false);
                    continue;
                }
                return got;
            }
            let ChainFetch {
                in_flight, guesses, ..
            } = self;
            let (e, got) = tokio::select! {
                Some(got) = in_flight.next(), if !in_flight.is_empty() => got,
                Some(got) = guesses.next(), if !guesses.is_empty() => got,
                else => unreachable!("every epoch asked for is under way or has arrived"),
            };
            self.arrived.insert(e, got);
        }
    }

    /// Awaits `f`, taking in the manifests that arrive meanwhile.
    async fn beside<T>(&mut self, f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        let ChainFetch {
            in_flight,
            guesses,
            arrived,
            ..
        } = self;
        loop {
            let (e, got) = tokio::select! {
                biased;
                out = &mut f => return out,
                Some(got) = in_flight.next(), if !in_flight.is_empty() => got,
                Some(got) = guesses.next(), if !guesses.is_empty() => got,
            };
            arrived.insert(e, got);
        }
    }
}

/// Where an open starts instead of listing every manifest.
enum Start {
    /// List the manifests from the tip note's epoch on (`note`); `stop`: the note was
    /// written beside a clean stop's manifest.
    After { note: u64, stop: bool },
    /// The epoch asked for, whose manifest is in the bucket: nothing to list.
    Exactly(u64),
}

/// Manifests a restore (and a GC pass) fetches at once while it follows a chain back to its
/// base (beside a guessed window, `ChainFetch::guesses`, until the LIST shows it is not the
/// chain's). The same as the default `base_every`: a chain of that length is one window and
/// never the base before; one of 128 manifests (the default `max_chain`) four.
pub(crate) const CHAIN_WINDOW: usize = 32;

/// The newest of `epochs` (ascending) committed at or before `unix_ms`, by binary search on
/// the manifests' times (they grow with the epoch: each commit follows the one before it).
async fn newest_at_or_before(
    store: &dyn ReadStore,
    epochs: &[u64],
    unix_ms: u64,
) -> Result<Option<u64>, CheckpointError> {
    let (mut lo, mut hi) = (0usize, epochs.len());
    // Invariant: epochs[..lo] are at or before, epochs[hi..] after.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let key = manifest_key(epochs[mid]);
        let m = Manifest::decode(&store.get(&key, None).await?, &key)?;
        if m.created_ms <= unix_ms {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo.checked_sub(1).map(|i| epochs[i]))
}

/// Checks a format marker; returns the placement it records.
pub fn check_format(bytes: &[u8]) -> Result<crate::placement::Recorded, CheckpointError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| FormatError::corrupt(FORMAT_KEY, format!("bad json: {e}")))?;
    let version = v.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if v.get("format").and_then(|f| f.as_str()) != Some("bucketfs") {
        return Err(FormatError::corrupt(FORMAT_KEY, "not a bucketfs format marker").into());
    }
    let placement: crate::placement::Recorded = match v.get("placement") {
        None => Default::default(),
        Some(p) => serde_json::from_value(p.clone())
            .map_err(|e| FormatError::corrupt(FORMAT_KEY, format!("bad placement: {e}")))?,
    };
    let expected = if placement.is_split() {
        SPLIT_FORMAT_VERSION
    } else {
        BUCKET_FORMAT_VERSION
    };
    if version == u64::from(SPLIT_FORMAT_VERSION) && !placement.is_split() {
        return Err(FormatError::corrupt(
            FORMAT_KEY,
            "version 2 (classes in buckets of their own) but no placement recorded",
        )
        .into());
    }
    if version != u64::from(expected) {
        return Err(FormatError::Version {
            key: FORMAT_KEY.into(),
            found: version as u32,
            supported: expected,
        }
        .into());
    }
    let page_size = v.get("page_size").and_then(|v| v.as_u64()).unwrap_or(0);
    if page_size != PAGE_SIZE {
        return Err(CheckpointError::Refused(format!(
            "bucket page size is {page_size}; this bucketfs uses {PAGE_SIZE}"
        )));
    }
    Ok(placement)
}

/// The namespace and pages of a view, for installing into an empty cache dir.
pub fn restore_of(view: &View) -> Restore {
    // Files unlinked while open on the writer stay in its checkpoints, nameless, until their
    // last close; a restore has no use for them.
    let live = |ino: &u64| view.inodes.get(ino).is_some_and(|a| a.nlink > 0);
    let pages = view
        .extents
        .iter()
        .filter(|(ino, _)| live(ino))
        .map(|(ino, map)| {
            let mut set = crate::fs::pageset::PageSet::new();
            for (&s, (e, _)) in map {
                set.insert(s..*e);
            }
            (*ino, set)
        })
        .collect();
    Restore {
        epoch: view.epoch,
        next_ino: view.next_ino,
        inodes: view
            .inodes
            .values()
            .filter(|a| a.nlink > 0)
            .cloned()
            .collect(),
        dirents: view
            .dirents
            .iter()
            .map(|((parent, name), (ino, kind))| crate::fs::CutDirent {
                parent: *parent,
                name: name.clone(),
                ino: *ino,
                kind: *kind,
            })
            .collect(),
        pages,
    }
}

pub use crate::fs::unix_ms as now_ms;

/// What the checkpoints of this mount did, all together.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub checkpoints: u64,
    pub segments: u64,
    /// Segment bytes uploaded (manifests, and the runs they carry, not counted).
    pub segment_bytes: u64,
    pub manifest_bytes: u64,
    /// Checkpoints that failed, and the error of the last one if it failed.
    pub failures: u64,
    pub last_error: Option<String>,
    /// Unix ms of the last commit (0: none yet).
    pub last_commit_ms: u64,
    /// Wall time spent packing and uploading segments (the two overlap: segments go up as
    /// they fill), in ms: `segment_bytes` over it is the upload rate.
    pub upload_ms: u64,
}

impl Totals {
    /// Segment bytes uploaded per second, once enough has gone up to say (1 MiB).
    pub fn upload_rate(&self) -> Option<f64> {
        (self.segment_bytes >= 1 << 20 && self.upload_ms > 0)
            .then(|| self.segment_bytes as f64 * 1000.0 / self.upload_ms as f64)
    }
}

/// The upload of the checkpoint in flight: segment bytes sent, and packed so far (segments
/// are packed as the upload goes, so `total` grows until the last one is sealed).
#[derive(Clone, Copy, Debug, Default)]
pub struct UploadProgress {
    pub sent: u64,
    pub total: u64,
}

/// What a completed checkpoint did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub epoch: u64,
    pub segments: usize,
    pub bytes: u64,
    pub base: bool,
    /// Pages that writers copied out of the cache files while this checkpoint's upload
    /// still needed them (frozen copies).
    pub frozen: u64,
    /// The cut took only the inodes changed since the cut before (`Cut::partial`).
    pub partial: bool,
    /// The inodes whose attributes the cut took (every inode in the bucket's image, unless
    /// `partial`).
    pub inodes: usize,
}

/// A sealed segment's way to the bucket: the permit its builder took (memory), the limit on
/// uploads at once, and what its key needs.
struct Upload {
    permit: tokio::sync::OwnedSemaphorePermit,
    in_flight: Arc<tokio::sync::Semaphore>,
    cut_no: u64,
    wal: bool,
}

/// The flush of the cut's files a checkpoint runs beside its upload (`Fs::flush_cut`, which
/// stops the mount itself if it fails): waited for before the cut's pages are marked clean,
/// and on drop (a checkpoint that fails), so that it never outlives its checkpoint.
struct Flush<'a> {
    fs: &'a Arc<Fs>,
    rt: &'a tokio::runtime::Handle,
    task: Option<tokio::task::JoinHandle<Result<(), FsError>>>,
}

impl<'a> Flush<'a> {
    /// Starts the flush of `cut`'s files (a cut with no runs has no bytes to flush).
    fn start(fs: &'a Arc<Fs>, rt: &'a tokio::runtime::Handle, cut: &crate::fs::Cut) -> Flush<'a> {
        let task = (!cut.runs.is_empty()).then(|| {
            let (fs, written) = (fs.clone(), cut.written.clone());
            rt.spawn_blocking(move || fs.flush_cut(&written))
        });
        Flush { fs, rt, task }
    }

    fn wait(mut self) -> Result<(), FsError> {
        match self.task.take() {
            None => Ok(()),
            Some(task) => self.join(task),
        }
    }

    /// The flush's answer; a flush that never answered (its task panicked or was cancelled)
    /// may have taken a write-back error with it: that stops the mount too.
    fn join(&self, task: tokio::task::JoinHandle<Result<(), FsError>>) -> Result<(), FsError> {
        self.rt.block_on(task).unwrap_or_else(|e| {
            let e = FsError::io("flush the cache files")(std::io::Error::other(e));
            self.fs.stop_for_failed_flush(&e.to_string());
            Err(e)
        })
    }
}

impl Drop for Flush<'_> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = self.join(task);
        }
    }
}

/// What a checkpoint's packing sent to the bucket, or left for its manifest to carry.
#[derive(Default)]
struct Sent {
    extents: Vec<Extent>,
    segments: usize,
    bytes: u64,
    /// The runs, as one segment, when they are few enough to go in the manifest.
    inline: Vec<u8>,
}

/// What a checkpoint remembers of the names between two cuts, so that a cut with no name
/// changed since the last commit neither walks the tree nor compares every name with the view
/// (every group commit of `--durability remote` is a checkpoint).
#[derive(Default)]
struct NamesSeen {
    /// The last cut's walk (`Fs::cut` reuses it while no name changes).
    walk: crate::fs::WalkMemo,
    /// What the cut the view holds counted: its names' generation, and the inodes it took
    /// beyond the names (`Fs::cut` takes only the inodes touched since while they stay the
    /// same). Set by the commit of a cut, cleared by any other change of the view.
    in_view: Option<Arc<CutShape>>,
}

pub struct Checkpointer {
    fs: Arc<Fs>,
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Handle,
    settings: CheckpointSettings,
    filter: LocalOnly,
    writer: String,
    /// The bucket as of the last committed manifest; shared with the fetcher.
    view: Arc<RwLock<View>>,
    /// One checkpoint at a time.
    running: Mutex<()>,
    /// The names as the last cut walked them, and which of them the view holds.
    names: Mutex<NamesSeen>,
    fenced: AtomicBool,
    /// The cut of the checkpoint under way, or of the last one (0: none yet), and the last
    /// whose attempt ended (committed or failed): uploads of a later cut may still be
    /// committed, which GC, running beside, must know (`in_flight`).
    cut_taken: std::sync::atomic::AtomicU64,
    cut_settled: std::sync::atomic::AtomicU64,
    /// The view's tip is a manifest this writer committed, and not a clean stop. Another
    /// writer can then commit the next epoch only by taking over, and a takeover of a
    /// prefix whose tip is no clean stop writes a fence, a key GC never frees: a commit
    /// that lands is this writer's, with no need to read the GC boundary after it.
    tip_is_ours: AtomicBool,
    /// The bucket URL recorded in the cache dir after each commit (unset in tests).
    record_url: Mutex<Option<String>>,
    /// The epoch the last tip note named (`TIP_KEY`; 0: none yet), the one still under way,
    /// and whether the last one failed (warned about once until one succeeds).
    tip_noted: Mutex<u64>,
    note_in_flight: Mutex<Option<tokio::task::JoinHandle<()>>>,
    note_failing: Arc<AtomicBool>,
    /// The highest cut epoch whose changes are all in the bucket, and who waits for it.
    covered: Mutex<u64>,
    covered_cv: Condvar,
    /// Set by a remote-durability fsync to start a checkpoint now (group commit: one
    /// checkpoint serves every waiter).
    wanted: Mutex<bool>,
    wanted_cv: Condvar,
    totals: Mutex<Totals>,
    /// The upload in flight (sent, total), for progress reports.
    upload_sent: Arc<std::sync::atomic::AtomicU64>,
    upload_total: std::sync::atomic::AtomicU64,
    /// What GC knows of the manifests, kept between passes; and the last pass's report.
    collector: Mutex<crate::gc::Collector>,
    /// What this writer commits, for the next GC pass (which runs beside commits).
    gc_inbox: Arc<crate::gc::Inbox>,
    last_gc: Mutex<Option<crate::gc::Report>>,
    /// The bytes of the chain's base and of its deltas since (read at the open, then counted
    /// as this mount commits), which decide when the next base is due (`base_due`).
    chain_bytes: Mutex<ChainBytes>,
}

/// The sizes of a chain's manifests as they would be stored with their bodies uncompressed
/// (`crate::manifest::plain_len`): the base's, and the deltas' since. Read from the bucket
/// when a mount opens it, then counted as the mount commits (`base_due`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainBytes {
    pub base: u64,
    pub deltas: u64,
}

impl ChainBytes {
    /// Counts a manifest of `len` bytes: a base starts the count again.
    fn note(&mut self, base: bool, len: u64) {
        if base {
            *self = ChainBytes {
                base: len,
                deltas: 0,
            };
        } else {
            self.deltas = self.deltas.saturating_add(len);
        }
    }
}

/// A committed manifest's length: as stored, and with its body uncompressed (what the
/// cadence of bases counts, `crate::manifest::plain_len`).
#[derive(Clone, Copy)]
struct ManifestLen {
    stored: u64,
    plain: u64,
}

/// A base is due once the deltas since the last one add up to this share of its size (and
/// at least `base_every` of them were written).
const BASE_SHARE: u64 = 4;

impl Checkpointer {
    pub fn new(
        fs: Arc<Fs>,
        store: Arc<dyn ObjectStore>,
        rt: tokio::runtime::Handle,
        settings: CheckpointSettings,
        writer: String,
        opened: &Opened,
    ) -> Checkpointer {
        let gc_inbox = Arc::new(crate::gc::Inbox::default());
        Checkpointer {
            filter: LocalOnly::new(&settings.local_only, &settings.wal_dir),
            fs,
            store,
            rt,
            settings,
            writer,
            view: Arc::new(RwLock::new(opened.view.clone())),
            running: Mutex::new(()),
            names: Mutex::new(NamesSeen::default()),
            fenced: AtomicBool::new(false),
            cut_taken: std::sync::atomic::AtomicU64::new(0),
            cut_settled: std::sync::atomic::AtomicU64::new(0),
            tip_is_ours: AtomicBool::new(false),
            record_url: Mutex::new(None),
            tip_noted: Mutex::new(0),
            note_in_flight: Mutex::new(None),
            note_failing: Arc::new(AtomicBool::new(false)),
            covered: Mutex::new(0),
            covered_cv: Condvar::new(),
            wanted: Mutex::new(false),
            wanted_cv: Condvar::new(),
            totals: Mutex::new(Totals::default()),
            upload_sent: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            upload_total: std::sync::atomic::AtomicU64::new(0),
            collector: Mutex::new(crate::gc::Collector::with_inbox(gc_inbox.clone())),
            gc_inbox,
            last_gc: Mutex::new(None),
            chain_bytes: Mutex::new(opened.chain_bytes),
        }
    }

    /// After each commit, record in the cache dir that it is in step with this epoch.
    pub fn set_record_url(&self, url: String) {
        *self.record_url.lock() = Some(url);
    }

    /// Not synced: a commit would otherwise wait for one more sync of the cache dir's log
    /// (`Fs::note_bucket_record` says why a record left behind by a crash is safe).
    fn record(&self, epoch: u64) -> Result<(), CheckpointError> {
        if let Some(url) = self.record_url.lock().as_ref() {
            let record = serde_json::json!({ "url": url, "writer": self.writer, "epoch": epoch });
            self.fs.note_bucket_record(record.to_string().as_bytes())?;
        }
        Ok(())
    }

    pub fn view(&self) -> Arc<RwLock<View>> {
        self.view.clone()
    }

    pub fn totals(&self) -> Totals {
        self.totals.lock().clone()
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The segment upload in flight (both 0 when none is).
    pub fn upload_progress(&self) -> UploadProgress {
        // The total first: a segment counts there before its bytes count as sent, so read in
        // this order `sent` may be ahead of `total` (a reader must saturate), never behind.
        let total = self.upload_total.load(Ordering::Acquire);
        UploadProgress {
            sent: self.upload_sent.load(Ordering::Acquire),
            total,
        }
    }

    /// Is this mount still the bucket's writer? Looks for a manifest at the epoch after the
    /// last one it committed: one there that another writer committed means a takeover, and
    /// this mount is fenced now, not at its next commit (which an idle mount may not make
    /// for hours). Cheap: one HEAD while nobody has taken over.
    pub fn check_writer(&self) -> Result<(), CheckpointError> {
        let _one = self.running.lock();
        self.check_writer_locked()
    }

    fn check_writer_locked(&self) -> Result<(), CheckpointError> {
        let next = self.view_epoch_unless_fenced()? + 1;
        let key = manifest_key(next);
        if self.rt.block_on(self.store.head(&key))?.is_none() {
            return Ok(());
        }
        // Ours only if an earlier attempt's answer was lost; the next checkpoint goes on from
        // it (see `commit`).
        if self.own_earlier_commit(&key)? {
            return Ok(());
        }
        self.fence(next);
        Err(CheckpointError::Fenced { epoch: next })
    }

    /// The view's epoch, or Fenced.
    fn view_epoch_unless_fenced(&self) -> Result<u64, CheckpointError> {
        let epoch = self.view.read().epoch;
        if self.fenced.load(Ordering::Acquire) {
            return Err(CheckpointError::Fenced { epoch });
        }
        Ok(epoch)
    }

    /// Another writer committed `epoch`: accept no more changes, and wake whoever waits for
    /// a commit that can no longer come.
    fn fence(&self, epoch: u64) {
        self.fenced.store(true, Ordering::Release);
        self.fs.fence();
        // Remote-durability fsyncs waiting for a commit fail now, not at their next look.
        {
            let _covered = self.covered.lock();
            self.covered_cv.notify_all();
        }
        error!(
            epoch,
            writer = %self.writer,
            "another writer committed this epoch first: this mount is fenced and accepts no \
             more changes (writes and fsyncs fail with EROFS)"
        );
    }

    /// The flush of the cache files after the cut of `epoch` (committed) failed, and the
    /// filesystem has stopped (`Fs::stop_for_failed_flush`): the fsyncs waiting for a later
    /// commit fail now, and the checkpointer stops. The pages keep their dirty marks.
    fn stop_for_failed_flush(&self, epoch: u64, e: FsError) -> CheckpointError {
        // Every flush stops the mount where it fails; should one ever return an error without
        // doing so, the mount must not go on taking changes with no checkpointer.
        self.fs.stop_for_failed_flush(&e.to_string());
        {
            let _covered = self.covered.lock();
            self.covered_cv.notify_all();
        }
        let e = CheckpointError::CacheFailed {
            epoch,
            // The first failure's reason, kept by the filesystem that stopped.
            reason: self
                .fs
                .cache_failure()
                .map_or_else(|| e.to_string(), str::to_owned),
        };
        error!(error = %e, "checkpointer stops");
        e
    }

    /// Commits an empty delta at the next epoch: the bucket now names this writer, and any
    /// writer still running there is fenced out at its next commit. Unless the tip was a
    /// clean stop (`tip_clean_stop`: its writer is gone), the delta is a fence, which GC
    /// keeps for good: that writer's next commit fails on it however long it stalled.
    pub fn take_over(&self, tip_clean_stop: bool) -> Result<u64, CheckpointError> {
        let _one = self.running.lock();
        let parent = self.view.read().epoch;
        let m = Manifest {
            fence: !tip_clean_stop,
            epoch: parent + 1,
            parent: Some(parent).filter(|&p| p > 0),
            created_ms: now_ms(),
            page_size: PAGE_SIZE as u32,
            writer: self.writer.clone(),
            next_ino: self.view.read().next_ino,
            ..Manifest::default()
        };
        let m = if m.parent.is_none() {
            // An empty bucket: the first manifest is a base of the whole filesystem, which
            // the first real checkpoint writes; here just claim epoch 1 with an empty base.
            self.view
                .read()
                .to_base(1, now_ms(), PAGE_SIZE as u32, &self.writer)
        } else {
            m
        };
        check_invariants(&m)?;
        let put = self.put_manifest(&m, true);
        self.settle_note();
        match put {
            Ok(len) => self.note_committed(m.parent.is_none(), len.plain),
            // Not fenced: nothing was accepted yet. The caller may read the chain again.
            Err(StoreError::PreconditionFailed { .. }) => {
                return Err(CheckpointError::LostRace { epoch: m.epoch })
            }
            Err(e) => return Err(e.into()),
        }
        // A takeover from a view GC has left behind: its create-if-absent may have landed on
        // a key GC collected (no fence protects a takeover). Read the bucket again.
        if self.rt.block_on(crate::gc::read_boundary(&*self.store))? > m.epoch {
            return Err(CheckpointError::LostRace { epoch: m.epoch });
        }
        self.apply_to_view(&m, None, None);
        self.fs.advance_epoch(m.epoch + 1)?;
        // The cache dir may be older than what this lineage committed (a power loss between a
        // manifest's PUT and the flush of RocksDB after it): no inode number the bucket has
        // seen is handed out again, or a new file would take the lost one's pages.
        self.fs.advance_next_ino(m.next_ino)?;
        Ok(m.epoch)
    }

    /// Takes one checkpoint. Returns None when nothing changed since the last one (and no
    /// clean-stop mark was asked for).
    pub fn checkpoint(&self, clean_stop: bool) -> Result<Option<Outcome>, CheckpointError> {
        self.checkpoint_with(clean_stop, clean_stop)
    }

    /// As `checkpoint`; `commit_empty` commits a manifest even when nothing changed (a
    /// clean-stop mark, or a heartbeat).
    fn checkpoint_with(
        &self,
        clean_stop: bool,
        commit_empty: bool,
    ) -> Result<Option<Outcome>, CheckpointError> {
        let _one = self.running.lock();
        let started = Instant::now();
        let r = self.checkpoint_locked(clean_stop, commit_empty);
        // Committed (the manifest is in the bucket) or failed (its uploads are garbage).
        self.cut_settled
            .store(self.cut_taken.load(Ordering::Acquire), Ordering::Release);
        let took = started.elapsed();
        self.settle_note();
        let mut t = self.totals.lock();
        match &r {
            Ok(Some(_)) => {
                t.last_commit_ms = now_ms();
                t.last_error = None;
                crate::metrics::global().checkpoint(took);
            }
            Ok(None) => t.last_error = None,
            Err(e) => {
                t.failures += 1;
                t.last_error = Some(e.to_string());
            }
        }
        r
    }

    fn checkpoint_locked(
        &self,
        clean_stop: bool,
        commit_empty: bool,
    ) -> Result<Option<Outcome>, CheckpointError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(CheckpointError::Fenced {
                epoch: self.view.read().epoch,
            });
        }
        if let Some(why) = self.fs.cache_failure() {
            return Err(CheckpointError::CacheFailed {
                epoch: self.view.read().epoch,
                reason: why.to_owned(),
            });
        }
        let started = Instant::now();
        // Bucket epochs are consecutive: this checkpoint is the next one after the last the
        // bucket holds, whatever the local epoch counter says (it also moves on empty and
        // failed cuts). That is what makes fencing work: a writer that was taken over tries
        // to commit an epoch that the takeover manifest already holds, and gets 412.
        let epoch_now = self.view.read().epoch + 1;
        // The cut copies no bytes (every writer waits while it runs): reading the pages,
        // compressing, packing and uploading happen after, with the writers going again, and
        // a writer copies out a page the upload has yet to read before changing it.
        let mut names = self.names.lock();
        let cut_started = Instant::now();
        let NamesSeen { walk, in_view } = &mut *names;
        let cut = self.fs.cut(
            &self.filter,
            walk,
            in_view.as_ref(),
            self.settings.run_pages,
            self.settings.staging_memory,
        )?;
        self.cut_taken.store(cut.epoch, Ordering::Release);
        let cut_ms = cut_started.elapsed().as_millis() as u64;
        let names_in_view = in_view.as_ref().map(|s| s.names()) == Some(cut.names);
        drop(names);
        if cut.runs.is_empty() {
            let view = self.view.read();
            let m = delta(&view, &cut, names_in_view, Vec::new());
            if is_empty_delta(&m) && !commit_empty && view.epoch > 0 {
                // Nothing differs, names included: the view holds the cut's names (a file
                // created and removed again since the last commit moved the generation).
                self.names.lock().in_view = Some(cut.shape.clone());
                drop(view);
                // No runs: no bytes to flush (pages taken past the end have none).
                self.fs.mark_clean(&cut)?;
                self.covered_through(cut.epoch);
                return Ok(None);
            }
        }
        self.fs.step(crate::fs::Step::CutTaken { epoch: cut.epoch });
        // The cut's bytes go to the disk beside the upload: its pages are marked clean once the
        // manifest lands, and must not then be older on the disk than in the bucket.
        let flush = Flush::start(&self.fs, &self.rt, &cut);
        let upload_started = Instant::now();
        // A base would keep the whole namespace as long as any page it carried is used: its
        // runs go in segments.
        let may_carry = !self.base_due(&self.view.read());
        let sent = self.pack_and_upload(&cut, epoch_now, may_carry);
        let frozen = self.fs.release_cut(&cut);
        let Sent {
            extents,
            segments: count,
            bytes,
            inline,
        } = match sent {
            Ok(sent) => sent,
            Err(e) => {
                self.fs.untake(cut);
                return Err(e);
            }
        };
        let (manifest, next) = {
            let view = self.view.read();
            let mut m = delta(&view, &cut, names_in_view, extents);
            m.epoch = epoch_now;
            m.created_ms = now_ms();
            m.writer = self.writer.clone();
            m.clean_stop = clean_stop;
            m.inline = inline;
            self.as_committed(&view, m)
        };
        let upload_ms = upload_started.elapsed().as_millis() as u64;
        // The cache dir's log durable up to the cut before the manifest can land
        // (`Fs::sync_log` says why).
        let log_sync_started = Instant::now();
        if let Err(e) = self.fs.sync_log() {
            self.fs.untake(cut);
            return Err(e.into());
        }
        let log_sync_us = log_sync_started.elapsed().as_micros() as u64;
        self.fs.step(crate::fs::Step::Uploaded { epoch: cut.epoch });
        // A flush that failed meanwhile has stopped the mount: the upload may have read older
        // bytes through the page cache, so nothing more is committed (and the cut is not
        // given back: nothing cuts again).
        if let Some(why) = self.fs.cache_failure() {
            return Err(CheckpointError::CacheFailed {
                epoch: self.view.read().epoch,
                reason: why.to_owned(),
            });
        }
        crate::failpoint::hit("before-manifest-commit");
        let commit_started = Instant::now();
        let manifest_len = match self.commit(&manifest) {
            Ok(len) => len,
            Err(e) => {
                // Fenced, the mount has stopped for good: nothing to give back.
                if !matches!(e, CheckpointError::Fenced { .. }) {
                    self.fs.untake(cut);
                }
                return Err(e);
            }
        };
        let commit_us = commit_started.elapsed().as_micros() as u64;
        crate::failpoint::hit("after-manifest-commit");
        self.fs
            .step(crate::fs::Step::Committed { epoch: cut.epoch });
        let base = next.is_some();
        self.note_committed(base, manifest_len.plain);
        self.apply_to_view(&manifest, next, Some(cut.shape.clone()));
        // The bucket holds the cut: every fsync waiting on it may return (each also syncs its
        // own file locally, and returns once both are done). Marking the pages clean is local
        // work.
        self.covered_through(cut.epoch);
        if self.settings.gc.is_some() {
            self.gc_inbox.post(&manifest);
        }
        let committed_us = started.elapsed().as_micros() as u64;
        if let Err(e) = flush.wait() {
            return Err(self.stop_for_failed_flush(manifest.epoch, e));
        }
        let flushed_us = started.elapsed().as_micros() as u64;
        self.fs.mark_clean(&cut)?;
        self.record(manifest.epoch)?;
        {
            let mut t = self.totals.lock();
            t.checkpoints += 1;
            t.segments += count as u64;
            t.segment_bytes += bytes;
            t.manifest_bytes += manifest_len.stored;
            if bytes > 0 {
                t.upload_ms += upload_ms.max(1);
            }
        }
        info!(
            epoch = manifest.epoch,
            base,
            segments = count,
            inline_bytes = manifest.inline.len(),
            bytes,
            cut_ms,
            partial = cut.partial,
            inodes = cut.inodes.len(),
            frozen,
            log_sync_us,
            commit_us,
            committed_us,
            flushed_us,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint committed"
        );
        Ok(Some(Outcome {
            epoch: manifest.epoch,
            segments: count,
            bytes,
            base,
            frozen,
            partial: cut.partial,
            inodes: cut.inodes.len(),
        }))
    }

    /// Applies a committed manifest to the view. `next`: for a base, the view it describes,
    /// made by `as_committed` from the view it follows. `cut`: what the cut it was made from
    /// counted (None: not from a cut, or not known; the next cut then takes every inode and
    /// compares every name with the view).
    fn apply_to_view(&self, m: &Manifest, next: Option<View>, cut: Option<Arc<CutShape>>) {
        let mut view = self.view.write();
        let mut seen = self.names.lock();
        match next {
            // Only the checkpointer changes the view, one checkpoint at a time; should that
            // ever not hold, building it from the base is always right.
            Some(next) if next.epoch == m.epoch && view.epoch + 1 == m.epoch => *view = next,
            _ => view.apply(m),
        }
        seen.in_view = cut;
        // Every manifest applied here is this writer's own.
        self.tip_is_ours.store(!m.clean_stop, Ordering::Release);
    }

    fn covered_through(&self, epoch: u64) {
        let mut c = self.covered.lock();
        *c = (*c).max(epoch);
        self.covered_cv.notify_all();
    }

    /// Packs the cut's runs into segments and uploads each as soon as it is full: WAL pages
    /// and the rest never share a segment (their classes may live in different buckets, and
    /// WAL dies young). At most `upload_concurrency + 1` segments are in memory at once, being
    /// built or uploaded: a builder takes a permit when it starts and its upload gives it back,
    /// so packing waits for the bucket instead of building the whole cut in memory. The first
    /// failed upload ends it (those in flight are dropped; the caller puts the pages back).
    fn pack_and_upload(
        &self,
        cut: &crate::fs::Cut,
        epoch: u64,
        may_carry: bool,
    ) -> Result<Sent, CheckpointError> {
        self.upload_progress_from(0);
        let result = self.pack_and_upload_runs(cut, epoch, may_carry);
        self.upload_progress_from(0);
        result
    }

    fn pack_and_upload_runs(
        &self,
        cut: &crate::fs::Cut,
        epoch: u64,
        may_carry: bool,
    ) -> Result<Sent, CheckpointError> {
        let level = self.settings.zstd_level;
        // Two builders may hold a permit each at once: with fewer than two, neither could
        // ever finish.
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.settings.upload_concurrency.max(1) + 1,
        ));
        // Of those, at most `upload_concurrency` are being uploaded (the others are filling).
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            self.settings.upload_concurrency.max(1),
        ));
        let mut uploads = tokio::task::JoinSet::new();
        let mut sent = Sent::default();
        let mut builders: [Option<(SegmentBuilder, tokio::sync::OwnedSemaphorePermit)>; 2] =
            [None, None];
        let mut buf = Vec::new();
        for run in &cut.runs {
            let wal = cut.wal.contains(&run.ino);
            let slot = &mut builders[usize::from(wal)];
            let (builder, _) = match slot {
                Some(open) => open,
                None => {
                    let permit = self
                        .rt
                        .block_on(permits.clone().acquire_owned())
                        .expect("the semaphore is never closed");
                    slot.insert((SegmentBuilder::compressing(level), permit))
                }
            };
            self.fs.read_cut_run(run, &mut buf)?;
            builder.push_run(run.ino, run.first_page, run.pages, &buf);
            if builder.len() >= self.settings.segment_bytes {
                let (full, permit) = slot.take().expect("the slot was filled above");
                let upload = Upload {
                    permit,
                    in_flight: in_flight.clone(),
                    cut_no: cut.epoch,
                    wal,
                };
                self.send(full, upload, epoch, &mut sent, &mut uploads);
            }
            // Fail fast: a failed upload stops the packing.
            while let Some(done) = uploads.try_join_next() {
                done.expect("upload task does not panic")?;
                crate::failpoint::hit("after-segment-put");
            }
        }
        let open: u64 = builders.iter().flatten().map(|(b, _)| b.len()).sum();
        if may_carry && sent.segments == 0 && open > 0 && open <= self.settings.inline_bytes {
            // Nothing sent yet and little to send: the runs travel in the manifest.
            let mut parts = builders.into_iter().flatten().map(|(b, _)| b);
            let mut one = parts.next().expect("something is open");
            parts.for_each(|b| one.append(b));
            let (bytes, runs) = one.finish();
            let key: Arc<str> = manifest_key(epoch).into();
            sent.extents.extend(runs.into_iter().map(|mut r| {
                r.offset += crate::manifest::INLINE_OFFSET;
                Extent::whole(key.clone(), r)
            }));
            // Counted with the manifest, whose PUT sends them (not as segment bytes, whose
            // upload time gives the upload rate a stop's budget is planned with).
            sent.inline = bytes;
            return Ok(sent);
        }
        for (i, slot) in builders.into_iter().enumerate() {
            if let Some((builder, permit)) = slot {
                let upload = Upload {
                    permit,
                    in_flight: in_flight.clone(),
                    cut_no: cut.epoch,
                    wal: i == 1,
                };
                self.send(builder, upload, epoch, &mut sent, &mut uploads);
            }
        }
        self.rt.block_on(async {
            while let Some(done) = uploads.join_next().await {
                done.expect("upload task does not panic")?;
                crate::failpoint::hit("after-segment-put");
            }
            Ok::<_, CheckpointError>(())
        })?;
        Ok(sent)
    }

    /// Seals `builder` as the next segment of this checkpoint and starts its upload, which
    /// gives the builder's permit back when it ends.
    fn send(
        &self,
        builder: SegmentBuilder,
        upload: Upload,
        epoch: u64,
        sent: &mut Sent,
        uploads: &mut tokio::task::JoinSet<Result<(), StoreError>>,
    ) {
        let Upload {
            permit,
            in_flight,
            cut_no,
            wal,
        } = upload;
        let key = segment_key(epoch, &self.writer, cut_no, sent.segments, wal);
        let shared: Arc<str> = key.as_str().into();
        let (bytes, runs) = builder.finish();
        sent.extents
            .extend(runs.into_iter().map(|r| Extent::whole(shared.clone(), r)));
        let len = bytes.len() as u64;
        sent.segments += 1;
        sent.bytes += len;
        self.upload_total.fetch_add(len, Ordering::AcqRel);
        let put = put_segment(self.store.clone(), key, bytes, self.upload_sent.clone());
        uploads.spawn_on(
            async move {
                let turn = in_flight
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let r = put.await;
                drop((turn, permit));
                r
            },
            &self.rt,
        );
    }

    /// Starts the upload progress over: nothing sent of `total`.
    fn upload_progress_from(&self, total: u64) {
        self.upload_total.store(total, Ordering::Release);
        self.upload_sent.store(0, Ordering::Release);
    }

    /// Commits the manifest (create-only: a 412 means another writer took the epoch);
    /// returns its size.
    fn commit(&self, m: &Manifest) -> Result<ManifestLen, CheckpointError> {
        check_invariants(m)?;
        let key = manifest_key(m.epoch);
        match self.put_manifest(m, m.clean_stop) {
            Ok(len) => {
                // Only when another writer could have committed this epoch without a fence
                // (the tip is a clean stop, or the bucket was empty) may GC have freed the key.
                if !self.tip_is_ours.load(Ordering::Acquire) {
                    self.check_boundary(m.epoch)?;
                }
                Ok(len)
            }
            Err(StoreError::PreconditionFailed { .. }) if self.own_earlier_commit(&key)? => {
                // An earlier attempt of ours committed this epoch after all (its answer was
                // lost, the checkpoint counted as failed and its pages stayed dirty). Its
                // segments have keys of their own, so nothing of it was overwritten: take it
                // into the view and let the next checkpoint go on from it.
                warn!(
                    epoch = m.epoch,
                    "an earlier attempt of this writer had committed this epoch; continuing from it"
                );
                Err(CheckpointError::Refused(format!(
                    "epoch {} was already committed by this writer's earlier attempt; the next \
                     checkpoint follows it",
                    m.epoch
                )))
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                self.fence(m.epoch);
                Err(CheckpointError::Fenced { epoch: m.epoch })
            }
            Err(e) => {
                // The manifest may have landed with its answer lost. Should this writer then
                // stall, another take over (its fence on the next epoch) and GC free this key,
                // the retry would land on it: the boundary, raised before that, is what tells.
                // So the next commit reads it.
                self.tip_is_ours.store(false, Ordering::Release);
                Err(e.into())
            }
        }
    }

    /// PUTs manifest `m` if its key is free, and returns its length. Beside it, when one is
    /// due (`TIP_EVERY` epochs since the last, or `always`), the tip note goes out: the epoch
    /// before `m`'s, which this writer's view holds and so is committed, whatever becomes of
    /// `m`, and whether `m` is a clean stop. `settle_note` waits for it. A note that fails is only logged, once until one
    /// succeeds (a restore then lists more).
    fn put_manifest(&self, m: &Manifest, always: bool) -> Result<ManifestLen, StoreError> {
        let body = Bytes::from(m.encode());
        let len = ManifestLen {
            stored: body.len() as u64,
            plain: crate::manifest::plain_len(&body),
        };
        let (noted, stop) = (m.epoch.saturating_sub(1), m.clean_stop);
        let mut last = self.tip_noted.lock();
        if noted > 0 && (always || noted >= *last + TIP_EVERY) {
            *last = noted;
            let (store, failing) = (self.store.clone(), self.note_failing.clone());
            let note = self.rt.spawn(async move {
                match store
                    .put(TIP_KEY, encode_tip(noted, stop), PutMode::Overwrite)
                    .await
                {
                    Ok(_) => failing.store(false, Ordering::Release),
                    Err(e) if !failing.swap(true, Ordering::AcqRel) => warn!(
                        error = %e,
                        "could not note the tip (a restore lists more manifests until a note \
                         lands; not logged again until then)"
                    ),
                    Err(e) => debug!(error = %e, "could not note the tip"),
                }
            });
            // Every caller holds `running` and settles before the next: none is under way.
            *self.note_in_flight.lock() = Some(note);
        }
        drop(last);
        let key = manifest_key(m.epoch);
        self.rt
            .block_on(self.store.put(&key, body, PutMode::Create))
            .map(|_| len)
    }

    /// Waits for the tip note under way, if any: after a checkpoint, once the fsyncs it
    /// covers are released, so that the note (sent beside the manifest) delays at most the
    /// next checkpoint, and a checkpoint is done, note and all, when it returns.
    fn settle_note(&self) {
        let note = self.note_in_flight.lock().take();
        if let Some(note) = note {
            // A note's task does not panic; if it did, only the note is lost.
            let _ = self.rt.block_on(note);
        }
    }

    /// After a 412 on manifest `key`: is the manifest there this writer's own (an earlier
    /// attempt whose answer was lost)? If so it joins the view. Anything else is another
    /// writer's, and this one is fenced.
    fn own_earlier_commit(&self, key: &str) -> Result<bool, CheckpointError> {
        let bytes = self.rt.block_on(self.store.get(key, None))?;
        let theirs = Manifest::decode(&bytes, key)?;
        if theirs.writer != self.writer || theirs.epoch != self.view.read().epoch + 1 {
            return Ok(false);
        }
        self.check_boundary(theirs.epoch)?;
        self.apply_to_view(&theirs, None, None);
        self.note_committed(theirs.parent.is_none(), crate::manifest::plain_len(&bytes));
        Ok(true)
    }

    /// After a commit of `epoch` succeeded: is it part of the bucket? Once GC has deleted old
    /// manifests, a stalled writer's create-if-absent on a collected epoch succeeds; the GC
    /// boundary, raised before any manifest is deleted, tells it that it committed into the
    /// past. Such a writer is fenced: nothing it committed counts.
    fn check_boundary(&self, epoch: u64) -> Result<(), CheckpointError> {
        let boundary = self.rt.block_on(crate::gc::read_boundary(&*self.store))?;
        if epoch >= boundary {
            return Ok(());
        }
        error!(
            epoch,
            boundary,
            "this commit landed below the GC boundary: other writers have gone on since and \
             GC collected this epoch. It is not part of the bucket"
        );
        self.fence(epoch);
        Err(CheckpointError::Fenced { epoch })
    }

    /// Whether the next manifest is a base: when the bucket has none yet, and otherwise once
    /// it would make the chain since the last base `base_every` manifests long and the deltas
    /// add up to a quarter of that base's size, or `max_chain` long (so that a restore reads
    /// a bounded chain). A base is the whole view, and under `--durability remote` the commit
    /// that writes it waits for it: counted only in deltas, a view fragmented by many small
    /// commits made every 32nd commit wait for a manifest of megabytes (docs/checkpoints.md,
    /// "Base and delta manifests").
    fn base_due(&self, view: &View) -> bool {
        let chain = view.deltas_since_base + 1;
        let bytes = *self.chain_bytes.lock();
        view.epoch == 0
            || chain >= self.settings.max_chain.max(self.settings.base_every)
            || (chain >= self.settings.base_every && bytes.deltas >= bytes.base / BASE_SHARE)
    }

    /// Counts a committed manifest of `len` bytes towards the next base (`base_due`).
    fn note_committed(&self, base: bool, len: u64) {
        self.chain_bytes.lock().note(base, len);
    }

    /// The sizes the next base is planned with: the chain's base and its deltas since.
    pub fn chain_bytes(&self) -> ChainBytes {
        *self.chain_bytes.lock()
    }

    fn as_committed(&self, view: &View, m: Manifest) -> (Manifest, Option<View>) {
        if self.base_due(view) {
            let mut next = view.clone();
            next.apply(&m);
            next.deltas_since_base = 0;
            let mut b = next.to_base(m.epoch, m.created_ms, m.page_size, &m.writer);
            b.clean_stop = m.clean_stop;
            // The base names the runs the delta carried: it carries them instead. (A
            // checkpoint due a base packs its runs in segments, so this is only a fallback.)
            b.inline = m.inline;
            (b, Some(next))
        } else {
            (m, None)
        }
    }

    /// One GC pass (docs/gc.md): compaction first if the settings ask for it (a manifest that
    /// points at the rewritten pages), then retention and deletion. Deletes only while this
    /// mount still holds the prefix; a fenced mount deletes nothing. `now_ms` is the time the
    /// retention window and the grace are measured from.
    pub fn gc_pass(&self, now_ms: u64) -> Result<crate::gc::Report, CheckpointError> {
        self.gc_pass_until(now_ms, &AtomicBool::new(false))
    }

    /// `gc_pass`, ended early (nothing deleted from then on) once `stop` is set.
    ///
    /// Checkpoints go on meanwhile: only compaction, which commits a manifest of its own,
    /// takes the checkpoint lock, and only to commit. It runs before the pass's LIST, on the
    /// pass's thread, so no pass lists its uploads while they wait for their commit (its
    /// segments are not `in_flight`: they carry no cut). Retention and deletion plan from
    /// what the pass lists: a manifest committed after its LIST is newer
    /// than every one it keeps, and its checkpoint's uploads are `in_flight` (docs/gc.md,
    /// "Beside the checkpoints"). The manifests this writer commits reach the catalog
    /// through its inbox. Before, a pass held every commit: at 20 ms a request that is
    /// seconds, and a LIST per 1,000 manifests of the window.
    fn gc_pass_until(
        &self,
        now_ms: u64,
        stop: &AtomicBool,
    ) -> Result<crate::gc::Report, CheckpointError> {
        let Some(gc) = self.settings.gc.clone() else {
            return Err(CheckpointError::Refused(
                "GC is not enabled on this mount".into(),
            ));
        };
        let mut collector = self.collector.lock();
        let holds = || {
            if stop.load(Ordering::Acquire) {
                return Err(CheckpointError::Refused(
                    "the mount is stopping: GC deletes nothing more this pass".into(),
                ));
            }
            if self.fs.cache_failed() {
                return Err(CheckpointError::Refused(
                    "the checkpointer stopped after a failed flush of the cache files: GC \
                     deletes nothing more"
                        .into(),
                ));
            }
            self.holds_prefix()
        };
        holds()?;
        if let Some(c) = &gc.compact {
            match self.compact(c) {
                Ok(_) => {}
                Err(e @ (CheckpointError::Fenced { .. } | CheckpointError::CacheFailed { .. })) => {
                    return Err(e)
                }
                // Retention and deletion go on: a compaction that keeps failing (a source
                // that does not check out) must not stop the bucket's GC.
                Err(e) => warn!(error = %e, "compaction failed; this pass goes on without it"),
            }
        }
        // Read before the LIST: a cut after the last settled one may commit at any time.
        let settled = self.cut_settled.load(Ordering::Acquire);
        let in_flight = |key: &str| segment_cut(key, &self.writer).is_some_and(|cut| cut > settled);
        let report = collector.pass(
            &self.store,
            &self.rt,
            &gc.retention,
            now_ms,
            crate::gc::Mode::Delete {
                holds: &holds,
                in_flight: &in_flight,
            },
        )?;
        crate::metrics::global().gc_pass(&report);
        *self.last_gc.lock() = Some(report.clone());
        Ok(report)
    }

    /// Whether this mount still holds the prefix, for GC, which runs beside checkpoints and so
    /// leaves the view alone (`check_writer_locked` may apply a commit to it): not fenced, and
    /// the epoch after the view's is free or this writer's own (a commit under way, or one
    /// whose answer was lost, which the checkpointer settles).
    fn holds_prefix(&self) -> Result<(), CheckpointError> {
        let epoch = self.view_epoch_unless_fenced()?;
        // After one of ours (its answer possibly lost, and not yet in the view), a takeover
        // would have put its fence on the next key.
        for next in [epoch + 1, epoch + 2] {
            match self.writer_at(next)? {
                None => return Ok(()),
                Some(w) if w == self.writer => {}
                Some(_) => {
                    self.fence(next);
                    return Err(CheckpointError::Fenced { epoch: next });
                }
            }
        }
        Ok(()) // two commits of ours landed since the view was read
    }

    /// Who wrote manifest `epoch`, if the bucket has it (a HEAD, then a GET if it does).
    fn writer_at(&self, epoch: u64) -> Result<Option<String>, CheckpointError> {
        let key = manifest_key(epoch);
        if self.rt.block_on(self.store.head(&key))?.is_none() {
            return Ok(None);
        }
        match self.rt.block_on(self.store.get(&key, None)) {
            Ok(bytes) => Ok(Some(Manifest::decode(&bytes, &key)?.writer)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The last GC pass's report, if one ran.
    pub fn last_gc(&self) -> Option<crate::gc::Report> {
        self.last_gc.lock().clone()
    }

    /// A GC pass's compaction: sources chosen, read, rewritten and uploaded without the
    /// checkpoint lock, so that commits go on meanwhile (a rewrite took 0.6-1.2 s in
    /// BENCHMARKS.md's runs); then, under the lock, the new extents that still hold against
    /// the view as it is now (`still_current`) committed on it. Returns the epoch committed,
    /// if any.
    ///
    /// The new segments are named by the epoch after the view they were read from, which
    /// commits beside the rewrite may take first: the compaction's manifest is then a delta,
    /// and a delta's summary counts every segment it names as its own, whatever the epoch in
    /// the name (docs/gc.md, "Beside the checkpoints").
    fn compact(
        &self,
        c: &crate::gc::compact::CompactSettings,
    ) -> Result<Option<u64>, CheckpointError> {
        let started = Instant::now();
        // Manifests too: one that carries runs is a small segment to compaction. A LIST per
        // 1,000 objects of the bucket.
        let sizes: std::collections::BTreeMap<String, u64> = self.rt.block_on(async {
            let mut all = self.store.list("segments/").await?;
            all.extend(self.store.list(MANIFESTS).await?);
            Ok::<_, StoreError>(all.into_iter().map(|o| (o.key, o.size)).collect())
        })?;
        // A moment of the view (commits change it under its write lock), copied only when
        // there is something to compact.
        let floor = self.compaction_floor();
        let (then, sources) = {
            let view = self.view.read();
            let sources = crate::gc::compact::choose(&view, &sizes, floor, c);
            if sources.is_empty() {
                return Ok(None);
            }
            (view.clone(), sources)
        };
        self.holds_prefix()?;
        // This compaction's new segments, and all of them if it fails. The epoch in the name
        // is not this compaction's own (that is known only at its commit), so the nonce is
        // what keeps two compactions' keys apart: one whose commit's answer was lost, not yet
        // in the view, has the same epoch in its names as the next.
        let prefix = format!(
            "segments/{:020}-{}-c{:016x}-",
            then.epoch + 1,
            self.writer,
            fastrand::u64(..)
        );
        let delete_uploads = || {
            self.rt.block_on(async {
                for o in self.store.list(&prefix).await.unwrap_or_default() {
                    let _ = self.store.delete(&o.key).await;
                }
            })
        };
        // Each class is rewritten on its own: a WAL segment's pages stay in WAL segments.
        // Runs a manifest carried go to data segments (WAL pages among them included: only
        // runs older than the retention window are compacted, and WAL that old is rarely
        // still in use). New segments upload as they fill; they are not the checkpoints'
        // uploads, whose progress `upload_progress` shows.
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let put = |key: String, bytes: Vec<u8>| {
            put_segment(self.store.clone(), key, bytes, sent.clone()).boxed()
        };
        let mut extents = Vec::new();
        let (mut count, mut written) = (0, 0);
        for class in [Class::Data, Class::Wal] {
            let of_class: Vec<(String, u64)> = sources
                .iter()
                .filter(|k| match Class::of_key(k) {
                    Class::Manifest => class == Class::Data,
                    c => c == class,
                })
                .map(|k| (k.clone(), sizes[k]))
                .collect();
            if of_class.is_empty() {
                continue;
            }
            let suffix = if class == Class::Wal {
                WAL_SEGMENT_SUFFIX
            } else {
                ".seg"
            };
            let key_of = |n: usize| format!("{prefix}{n:04}{suffix}");
            let out = crate::gc::compact::Output {
                key_of: &key_of,
                zstd_level: self.settings.zstd_level,
                segment_bytes: self.settings.segment_bytes,
                uploads: self.settings.upload_concurrency,
                put: &put,
            };
            let done = self.rt.block_on(crate::gc::compact::rewrite(
                &*self.store,
                &then,
                &of_class,
                &out,
            ));
            let done = match done {
                Ok(done) => done,
                Err(e) => {
                    // What it uploaded is garbage: deleted now, or by GC after the grace.
                    delete_uploads();
                    return Err(e);
                }
            };
            extents.extend(done.extents);
            count += done.segments;
            written += done.bytes;
        }
        let read: u64 = sources.iter().map(|k| sizes[k]).sum();
        crate::failpoint::hit("compact-after-upload");

        let one = self.running.lock();
        // A takeover since is found by the commit's create-if-absent, as a checkpoint's is
        // (no HEAD first: at 20 ms a request, 20 ms more of holding the commits). A fenced
        // writer deletes nothing, its uploads included: the new writer's GC collects them
        // after the grace.
        self.view_epoch_unless_fenced()?;
        if let Some(why) = self.fs.cache_failure() {
            return Err(CheckpointError::CacheFailed {
                epoch: self.view.read().epoch,
                reason: why.to_owned(),
            });
        }
        let uploaded: HashSet<Arc<str>> = extents.iter().map(|x| x.segment.clone()).collect();
        // The view changes only under the lock held here.
        let committing = {
            let now = self.view.read();
            let kept = crate::gc::compact::still_current(&then, &now, extents);
            (!kept.extents.is_empty()).then(|| {
                let delta = Manifest {
                    epoch: now.epoch + 1,
                    parent: Some(now.epoch),
                    created_ms: now_ms(),
                    page_size: PAGE_SIZE as u32,
                    writer: self.writer.clone(),
                    next_ino: now.next_ino,
                    extents: kept.extents,
                    ..Manifest::default()
                };
                // With no commit beside it, the epoch in its segments' names is its own, so
                // it may be the base that is due (a base's summary counts the segments named
                // by its epoch): on an idle database nothing else would write one. Otherwise
                // a delta, and the next checkpoint writes the base.
                let (m, next) = if now.epoch == then.epoch {
                    self.as_committed(&now, delta)
                } else {
                    (delta, None)
                };
                (m, next, kept.dropped_pages)
            })
        };
        let Some((m, next, dropped)) = committing else {
            // Every page it moved was rewritten or removed meanwhile.
            drop(one);
            delete_uploads();
            return Ok(None);
        };
        let base = next.is_some();
        let committed = self.commit(&m);
        self.settle_note();
        self.note_committed(base, committed?.plain);
        crate::failpoint::hit("compact-after-commit");
        self.apply_to_view(&m, next, None);
        self.gc_inbox.post(&m);
        let recorded = self.record(m.epoch);
        drop(one);
        // New segments none of whose pages made it into the manifest: no manifest names them.
        let named: HashSet<&Arc<str>> = m.extents.iter().map(|x| &x.segment).collect();
        self.rt.block_on(async {
            for key in uploaded.iter().filter(|k| !named.contains(k)) {
                let _ = self.store.delete(key).await;
            }
        });
        recorded?;
        info!(
            epoch = m.epoch,
            base,
            read_from = then.epoch,
            sources = sources.len(),
            read_bytes = read,
            segments = count,
            written_bytes = written,
            pages_changed_meanwhile = dropped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compaction committed: the pages in use moved out of mostly-dead or small segments"
        );
        Ok(Some(m.epoch))
    }

    /// Segments older than the oldest retained checkpoint, as the last pass found it (none
    /// before a first pass), are compaction's to choose from.
    fn compaction_floor(&self) -> u64 {
        self.last_gc
            .lock()
            .as_ref()
            .map_or(0, |r| r.oldest_retained)
    }

    /// Asks the running loop for a checkpoint now (`--max-dirty` reached, or a remote fsync
    /// begins). One that has not started yet serves every request made before it cuts.
    pub fn request(&self) {
        let mut wanted = self.wanted.lock();
        *wanted = true;
        self.wanted_cv.notify_one();
    }

    /// Checkpoints every `interval` until `stop` is set; errors are logged and retried at the
    /// next tick (the pages stay dirty), except fencing and a failed flush of the cache
    /// files, which end the loop.
    pub fn run(&self, stop: &AtomicBool) {
        let tick = Duration::from_millis(50);
        let mut last = Instant::now();
        let mut failed = false;
        // The last commit, or the last look for another writer, whichever is later: both
        // show that this mount was still the writer then.
        let mut last_commit = Instant::now();
        let mut last_check = Instant::now();
        while !stop.load(Ordering::Acquire) {
            {
                // Sleep until the next tick or until a remote-durability fsync asks.
                let mut wanted = self.wanted.lock();
                if !*wanted {
                    self.wanted_cv.wait_for(&mut wanted, tick);
                }
                // The dirty-bytes trigger waits out the interval after a failure, so that an
                // outage is not hammered every tick.
                let early =
                    !failed && self.fs.unsafe_pages() * PAGE_SIZE >= self.settings.dirty_trigger;
                // A heartbeat may be due before the interval is up (so may not be missed).
                let heartbeat = !failed
                    && self
                        .settings
                        .heartbeat
                        .is_some_and(|h| last_commit.elapsed() >= h);
                let checkpoint_due =
                    *wanted || early || heartbeat || last.elapsed() >= self.settings.interval;
                if !checkpoint_due {
                    continue;
                }
                *wanted = false;
            }
            last = Instant::now();
            failed = false;
            let heartbeat = self
                .settings
                .heartbeat
                .is_some_and(|h| last_commit.elapsed() >= h);
            match self.checkpoint_with(false, heartbeat) {
                Ok(Some(_)) => {
                    last_commit = Instant::now();
                    last_check = last_commit;
                }
                Ok(None) => {
                    let due = self
                        .settings
                        .writer_check
                        .is_some_and(|w| last_check.elapsed() >= w);
                    if due {
                        last_check = Instant::now();
                        match self.check_writer() {
                            Ok(()) => {}
                            Err(e @ CheckpointError::Fenced { .. }) => {
                                error!(error = %e, "checkpointer stops");
                                return;
                            }
                            Err(e) => {
                                warn!(error = %e, "could not look for another writer; trying again later")
                            }
                        }
                    }
                }
                Err(e @ CheckpointError::Fenced { .. }) => {
                    error!(error = %e, "checkpointer stops");
                    return;
                }
                Err(CheckpointError::CacheFailed { .. }) => return, // logged when it stopped
                Err(e) => {
                    failed = true;
                    warn!(error = %e, "checkpoint failed; the pages stay dirty and the next one retries")
                }
            }
        }
    }

    /// GC passes every `--gc-interval` until `stop` is set or this mount is fenced, on a
    /// thread of their own beside `run` (docs/gc.md): a pass that lists a day of manifests
    /// must not hold the commits that fsyncs wait for. Nothing when GC is off.
    pub fn run_gc(&self, stop: &AtomicBool) {
        let Some(interval) = self.settings.gc.as_ref().map(|g| g.interval) else {
            return;
        };
        let tick = Duration::from_millis(100);
        let mut last = Instant::now();
        // A failed flush of the cache files ends the checkpointer (`run`), and GC with it.
        let ended = || {
            stop.load(Ordering::Acquire)
                || self.fenced.load(Ordering::Acquire)
                || self.fs.cache_failed()
        };
        while !ended() {
            let waited = last.elapsed();
            if waited < interval {
                std::thread::sleep(tick.min(interval - waited));
                continue;
            }
            last = Instant::now();
            match self.gc_pass_until(now_ms(), stop) {
                Ok(r) => tracing::debug!(?r, "GC pass"),
                Err(e @ CheckpointError::Fenced { .. }) => {
                    error!(error = %e, "GC stops: this mount no longer holds the prefix");
                    return;
                }
                Err(_) if ended() => return,
                Err(e) => {
                    warn!(error = %e, "GC pass skipped; nothing was deleted that a retained checkpoint needs, and the next pass tries again")
                }
            }
        }
    }
}

impl crate::fs::RemoteSync for Checkpointer {
    fn request(&self) {
        Checkpointer::request(self)
    }

    fn wait_committed(&self, epoch: u64) -> Result<(), FsError> {
        let mut covered = self.covered.lock();
        // The fsync asked for a checkpoint when it began (`request`), after it read `epoch`:
        // whichever checkpoint takes that request up cuts at `epoch` or later. Asking again
        // now would only queue one more after it, which the next fsync would wait behind.
        let mut ask = false;
        while *covered < epoch {
            if self.fenced.load(Ordering::Acquire) {
                return Err(FsError::Fenced);
            }
            if self.fs.cache_failed() {
                return Err(FsError::CacheFailed);
            }
            if ask {
                self.request();
            }
            // Ask again when no commit came for a while: the checkpoint that would have
            // covered us may have failed, and the next one is due only at the interval. (One
            // slower than that gets one more queued behind it: harmless.)
            ask = self
                .covered_cv
                .wait_for(&mut covered, Duration::from_millis(500))
                .timed_out();
        }
        // Covered, but if a flush has failed since, that commit may hold older bytes of what
        // this fsync covers (the upload reads through the page cache).
        if self.fs.cache_failed() {
            return Err(FsError::CacheFailed);
        }
        Ok(())
    }
}

/// PUTs one segment, and counts its bytes as sent once the bucket has them.
async fn put_segment(
    store: Arc<dyn ObjectStore>,
    key: String,
    bytes: Vec<u8>,
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), StoreError> {
    let len = bytes.len() as u64;
    store
        .put(&key, Bytes::from(bytes), PutMode::Overwrite)
        .await?;
    progress.fetch_add(len, Ordering::AcqRel);
    Ok(())
}

/// The manifest invariants, checked before every commit.
///
/// - A delta's parent is older than it (the chain only goes back).
/// - Every extent lies within its run, and no two extents of a file overlap (a page has one
///   source).
/// - Every extent's file is an inode the manifest (or, for a delta, the chain) knows: checked
///   for bases, where the manifest is the whole truth.
fn check_invariants(m: &Manifest) -> Result<(), CheckpointError> {
    let key = manifest_key(m.epoch);
    if let Some(p) = m.parent {
        if p >= m.epoch {
            return Err(FormatError::corrupt(&key, "parent is not older").into());
        }
    }
    let mut by_file: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for e in &m.extents {
        let run_end = e.run.first_page + u64::from(e.run.pages);
        if e.first_page < e.run.first_page || e.first_page + e.pages > run_end || e.pages == 0 {
            return Err(FormatError::corrupt(&key, "extent outside its run").into());
        }
        by_file
            .entry(e.run.ino)
            .or_default()
            .push((e.first_page, e.first_page + e.pages));
    }
    for ranges in by_file.values_mut() {
        ranges.sort_unstable();
        if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err(FormatError::corrupt(&key, "overlapping extents").into());
        }
    }
    if m.parent.is_none() {
        let known: HashSet<u64> = m.inodes.iter().map(|a| a.ino).collect();
        if let Some(ino) = by_file.keys().find(|i| !known.contains(i)) {
            return Err(
                FormatError::corrupt(&key, format!("extent of unknown inode {ino}")).into(),
            );
        }
    }
    Ok(())
}

/// What changed between `view` (the bucket) and `cut` (now), as a delta on the view.
/// `names_in_view`: the view already holds the cut's names (no name changed since the cut it
/// was committed from), so they are not compared.
fn delta(view: &View, cut: &crate::fs::Cut, names_in_view: bool, extents: Vec<Extent>) -> Manifest {
    let mut m = Manifest {
        parent: Some(view.epoch).filter(|&e| e > 0),
        page_size: PAGE_SIZE as u32,
        next_ino: cut.next_ino,
        truncations: cut.truncations.clone(),
        extents,
        ..Manifest::default()
    };
    // The cut names each inode once: if every one of them is in the view and they are as
    // many, the view has no other, and nothing was removed. A partial cut names only the
    // inodes touched since the cut the view holds, and none came or went since.
    let mut in_view = 0;
    for a in &cut.inodes {
        match view.inodes.get(&a.ino) {
            Some(v) => {
                in_view += 1;
                if v != a {
                    m.inodes.push(a.clone());
                }
            }
            None => m.inodes.push(a.clone()),
        }
    }
    if !cut.partial && in_view != view.inodes.len() {
        let live: HashSet<u64> = cut.inodes.iter().map(|a| a.ino).collect();
        m.removed_inodes = view
            .inodes
            .keys()
            .filter(|ino| !live.contains(ino))
            .copied()
            .collect();
        m.removed_inodes.sort_unstable();
    }
    if names_in_view {
        return m;
    }
    let mut names = HashSet::new();
    for d in cut.dirents.iter() {
        names.insert((d.parent, d.name.clone()));
        if view.dirents.get(&(d.parent, d.name.clone())) != Some(&(d.ino, d.kind)) {
            m.dirents.push(ManifestDirent {
                parent: d.parent,
                name: d.name.clone(),
                ino: d.ino,
                kind: d.kind,
            });
        }
    }
    m.unlinked = view
        .dirents
        .keys()
        .filter(|k| !names.contains(*k))
        .cloned()
        .collect();
    m
}

fn is_empty_delta(m: &Manifest) -> bool {
    m.inodes.is_empty()
        && m.removed_inodes.is_empty()
        && m.dirents.is_empty()
        && m.unlinked.is_empty()
        && m.truncations.is_empty()
        && m.extents.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What GC's in-flight rule reads from a key: this writer's cut, nothing from another
    /// writer's key or a compaction's.
    #[test]
    fn a_segment_key_gives_back_its_cut_to_its_writer_only() {
        let key = segment_key(42, "00ab", 7, 3, true);
        assert_eq!(segment_cut(&key, "00ab"), Some(7));
        assert_eq!(
            segment_cut(&segment_key(42, "00ab", 8, 0, false), "00ab"),
            Some(8)
        );
        assert_eq!(segment_cut(&key, "00ac"), None);
        assert_eq!(
            segment_cut(
                "segments/00000000000000000042-00ab-c0badf00d-0000.seg",
                "00ab"
            ),
            None
        );
        assert_eq!(segment_cut("manifests/00000000000000000042", "00ab"), None);
    }

    #[test]
    fn local_only_globs() {
        let f = LocalOnly::new(
            &[
                "pgsql_tmp".into(),
                "postmaster.*".into(),
                "base/1/tmp?".into(),
            ],
            std::path::Path::new("./pg_wal/"),
        );
        assert!(f.wal(b"pg_wal") && !f.wal(b"base/pg_wal") && !f.wal(b"pg_wal2"));
        assert!(f.local_only(b"base/pgsql_tmp"));
        assert!(f.local_only(b"postmaster.pid"));
        assert!(f.local_only(b"postmaster.opts"));
        assert!(f.local_only(b"base/1/tmp7"));
        assert!(!f.local_only(b"base/1/tmp77"));
        assert!(!f.local_only(b"base/2/tmp7"));
        assert!(!f.local_only(b"base/16384/2619"));
        assert!(!f.local_only(b"postmaster"));
    }
}
