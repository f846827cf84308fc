//! The checkpointer: turns the dirty state into crash-consistent checkpoints in the bucket,
//! and restores a bucket into an empty cache dir.
//!
//! One checkpoint, in order (DESIGN.md section 3):
//! 1. *cut*: `Fs::cut` pauses every change, closes epoch E and says which dirty pages E
//!    takes; it copies no bytes (copy-on-write, `fs/cut.rs` and `fs/cow.rs`);
//! 2. *pack and upload*: the runs' bytes are read as of the cut (`Fs::read_cut_run`) and
//!    become segments here, each uploaded as soon as it is full (in parallel, retried by the
//!    store wrapper), with few in memory at once;
//! 3. *commit* the manifest for E with `If-None-Match: *`: only then does the checkpoint exist;
//!    a 412 means another writer took over, and this mount stops accepting changes;
//! 4. *mark clean* what was uploaded and not written again.
//!
//! A failure before 3 leaves unreferenced segments (garbage), never a torn image; the pages
//! stay dirty and the next checkpoint takes them again.
//!
//! Layout: this file holds the checkpointer and one checkpoint (cut, flush, mark clean);
//! `run.rs` its loop; `fence.rs` the takeover and the fences; `upload.rs` packs and uploads
//! the segments; `commit.rs` makes the manifest, checks it and commits it; `open.rs` opens a
//! bucket (the chain to a view, the restore); `layout.rs` names the bucket's keys and checks
//! its format marker; `collect.rs` runs GC and compaction beside the checkpoints; `filter.rs`
//! says what stays local; `fetch.rs` fills the cache from the bucket.

mod collect;
mod commit;
mod fence;
mod fetch;
mod filter;
mod layout;
mod open;
mod run;
mod upload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use tracing::info;

use crate::fs::{CutShape, Fs, FsError};
use crate::manifest::view::View;
use crate::manifest::{Extent, FormatError, Manifest};
use crate::store::{ObjectStore, StoreError};

pub use collect::{GcSettings, FIRST_GC_PASS_AFTER};
use commit::{check_invariants, delta, is_empty_delta};
pub use fetch::BucketFetcher;
pub use filter::LocalOnly;
pub(crate) use layout::check_and_read_marker;
pub use layout::{
    check_format, encode_tip, epoch_of_key, format_marker, list_epochs, manifest_key, unformatted,
    BUCKET_FORMAT_VERSION, FORMAT_KEY, INLINE_BYTES, MANIFESTS, SPLIT_FORMAT_VERSION, TIP_KEY,
};
pub(crate) use open::CHAIN_WINDOW;
pub use open::{
    open_bucket, open_bucket_at, open_checked_bucket, restore_of, At, ChainStart, Opened,
};

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
    #[error("stopped: {report} The bucket's latest checkpoint is epoch {epoch}.")]
    CacheFailed {
        epoch: u64,
        /// `StopCause::describe`'s story.
        report: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Fs(#[from] FsError),
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
        let mut collector = crate::gc::Collector::with_inbox(gc_inbox.clone());
        if let Some(gc) = &settings.gc {
            collector = collector.with_chunk_epochs(gc.chunk_epochs);
        }
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
            collector: Mutex::new(collector),
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
        if let Some(e) = self.stopped() {
            return Err(e);
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
            // A failed sync has stopped the mount: the checkpointer stops too.
            return Err(self.stopped().unwrap_or_else(|| e.into()));
        }
        let log_sync_us = log_sync_started.elapsed().as_micros() as u64;
        self.fs.step(crate::fs::Step::Uploaded { epoch: cut.epoch });
        // A flush that failed meanwhile has stopped the mount: the upload may have read older
        // bytes through the page cache, so nothing more is committed (and the cut is not
        // given back: nothing cuts again).
        if let Some(e) = self.stopped() {
            return Err(e);
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
}
