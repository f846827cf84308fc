//! What a running mount reports about itself: the [`Status`] that /status serves as JSON, that
//! /metrics is written from, and that `bucketfs status` prints for a person. The control
//! socket in the cache dir answers `status` (and `checkpoint`, for a writer).
//!
//! Plain snapshots, filled by the modules they describe (GC's report, a replica's state) and
//! read by /status and /metrics: this module imports none of those, so that the checkpointer
//! can record metrics without a circle of imports.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::fs::CacheUsage;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub mountpoint: String,
    pub cache_dir: String,
    pub uptime_seconds: u64,
    /// Where /metrics and /status are served (None: --metrics-addr off).
    pub metrics_addr: Option<String>,
    pub read_only: bool,
    /// Another writer took the bucket over: this mount refuses every change.
    pub fenced: bool,
    /// The disk under the cache dir failed a write-back or a commit: this mount refuses
    /// every change (docs/trust.md, rules 18 and 25).
    #[serde(default)]
    pub cache_failed: bool,
    /// With `cache_failed`: what failed, why, and what to do (whether the cache dir can be
    /// started on again).
    #[serde(default)]
    pub stopped: Option<String>,
    /// Age of the oldest write not yet in the bucket, in ms (0: all of them are).
    pub rpo_ms: u64,
    pub fs: FsStatus,
    /// None when the cache is unbounded.
    pub cache: Option<CacheUsage>,
    /// None without --bucket.
    pub bucket: Option<BucketStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FsStatus {
    /// The epoch new changes belong to (the local counter; see `BucketStatus::epoch`).
    pub local_epoch: u64,
    /// Dirty bytes plus bytes a checkpoint is uploading.
    pub dirty_bytes: u64,
    /// --max-dirty (0: unbounded).
    pub max_dirty_bytes: u64,
    pub bytes_written: u64,
    pub read_hits: u64,
    pub read_misses: u64,
    pub read_hit_bytes: u64,
    pub fetched_bytes: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub throttled_writes: u64,
    pub throttled_micros: u64,
    /// Syncs of the cache dir's log (RocksDB's WAL) to the disk (fsyncs', checkpoints',
    /// evictions', the mount's start).
    #[serde(default)]
    pub log_syncs: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BucketStatus {
    pub url: String,
    /// This mount's writer id (None for a read-only mount).
    pub writer: Option<String>,
    /// The bucket's latest checkpoint as this mount knows it.
    pub epoch: u64,
    /// None for a read-only mount, which takes none.
    pub checkpoints: Option<CheckpointStatus>,
    pub store: Vec<StoreOpStatus>,
    /// None unless this mount started cold and the bucket had a hot set recorded.
    pub prewarm: Option<PrewarmStatus>,
    /// The last GC pass of this mount (None: none yet, or GC is off, or read-only).
    #[serde(default)]
    pub gc: Option<GcReport>,
    /// A replica's base, the bucket's newest checkpoint, what the standby has been served,
    /// and its lag (None: not a replica).
    #[serde(default)]
    pub replica: Option<ReplicaStatus>,
}

/// What one GC pass found and did (`gc::Report`: `bucketfs gc` prints it, the writer's last
/// pass is in /status and /metrics). Sizes are bytes as stored in the bucket.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GcReport {
    /// When the pass ran (unix ms; the time it measured the window and the grace from).
    pub pass_unix_ms: u64,
    pub latest_epoch: u64,
    /// Checkpoints restorable now, and the oldest of them.
    pub retained: u64,
    pub oldest_retained: u64,
    pub boundary: u64,
    /// Manifests a restore of the latest checkpoint reads (its base and deltas).
    pub chain_length: u64,
    pub manifests: u64,
    pub segments: u64,
    /// Chunks of GC's catalog (`gc/catalog/`).
    #[serde(default)]
    pub catalog_chunks: u64,
    /// Every object under manifests/, segments/ and gc/catalog/, and their bytes.
    pub bucket_bytes: u64,
    /// Bytes of the runs the latest checkpoint's image uses.
    pub image_bytes: u64,
    /// bucket_bytes ÷ image_bytes (0 when the image is empty).
    pub space_amplification: f64,
    /// Segments no manifest names at all (uploads never committed, or drained long ago).
    pub orphans: u64,
    /// Manifests older than every retained checkpoint, kept because a retained image still
    /// uses runs they carry (compaction moves those out).
    #[serde(default)]
    pub pinned: u64,
    /// Takeovers' fences older than every retained checkpoint, kept for good: each is the
    /// key that fails the next commit of a writer that was taken over (docs/gc.md).
    #[serde(default)]
    pub fences: u64,
    /// Objects under manifests/ below the boundary that do not decode: kept (each might be
    /// a fence), and counted apart.
    #[serde(default)]
    pub unreadable: u64,
    /// Objects no retained checkpoint needs, waiting out the grace.
    pub pending: u64,
    pub pending_bytes: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// True when the pass only looked (a dry run, or a prefix held by another writer).
    pub dry_run: bool,
}

/// What /status and `bucketfs status` say of a replica.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The checkpoint this mount's files come from.
    pub base_epoch: u64,
    pub base_created_unix_ms: u64,
    /// The bucket's newest checkpoint, as the last poll found it.
    pub newest_epoch: u64,
    pub newest_created_unix_ms: u64,
    /// The oldest checkpoint the primary's last GC pass retained (0: no pass yet).
    pub oldest_retained: u64,
    /// The checkpoint the last WAL file served to the standby came from (its replay
    /// position is in that checkpoint's WAL), and that file.
    pub served_epoch: u64,
    pub served_created_unix_ms: u64,
    pub served_file: Option<String>,
    /// How old the primary state the standby has been given is, against the bucket: 0 when
    /// it has the newest checkpoint's WAL, else the age of the checkpoint it has. The
    /// primary's checkpoint interval comes on top (what the bucket does not have yet).
    pub lag_seconds: f64,
    pub wal_served: u64,
    pub wal_missing: u64,
    pub wal_errors: u64,
    /// The base left the primary's retention window: the replica must move to a newer one
    /// before GC collects it.
    pub base_expired: bool,
    /// Why the replica cannot keep up, if it cannot (also on /healthz).
    pub trouble: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckpointStatus {
    pub committed: u64,
    pub failed: u64,
    pub segment_bytes: u64,
    /// Unix ms of the last commit by this mount (0: none yet).
    pub last_commit_unix_ms: u64,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoreOpStatus {
    pub op: String,
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrewarmStatus {
    /// waiting (a restore's prefetch has yet to read the hot set), running, done, or stopped
    /// (the mount stopped first).
    pub state: String,
    pub chunks_total: u64,
    pub chunks_done: u64,
    pub fetched_bytes: u64,
    pub failed: u64,
    /// Chunks of the recorded hot set left out: more than the cache had room for.
    #[serde(default)]
    pub chunks_skipped: u64,
    pub elapsed_ms: u64,
}

impl Status {
    /// Reads over all READ requests that were served from the cache dir alone.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.fs.read_hits + self.fs.read_misses;
        (total > 0).then(|| self.fs.read_hits as f64 / total as f64)
    }
}

/// The filesystem's part of the status.
pub fn fs_status(fs: &crate::fs::Fs) -> FsStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let s = fs.stats();
    FsStatus {
        local_epoch: fs.epoch(),
        dirty_bytes: fs.unsafe_pages() * crate::fs::PAGE_SIZE,
        max_dirty_bytes: fs.max_dirty_bytes(),
        bytes_written: s.bytes_written.load(Relaxed),
        read_hits: s.read_hits.load(Relaxed),
        read_misses: s.read_misses.load(Relaxed),
        read_hit_bytes: s.read_hit_bytes.load(Relaxed),
        fetched_bytes: s.fetched_bytes.load(Relaxed),
        evictions: s.evictions.load(Relaxed),
        evicted_bytes: s.evicted_pages.load(Relaxed) * crate::fs::PAGE_SIZE,
        throttled_writes: s.throttled_writes.load(Relaxed),
        throttled_micros: s.throttled_micros.load(Relaxed),
        log_syncs: fs.log_syncs(),
    }
}

/// The control socket in the cache dir.
pub const CONTROL_SOCKET: &str = "control.sock";

pub type StatusFn = Arc<dyn Fn() -> Status + Send + Sync>;

/// Takes a checkpoint now: the epoch committed (the latest, if nothing had changed), or why
/// not. (A function, so that the status knows nothing of the checkpointer.)
pub type CheckpointFn = Arc<dyn Fn() -> Result<u64, String> + Send + Sync>;

/// Answers requests on the cache dir's Unix socket (root only, mode 0600), one line each:
/// "status" gets the status as JSON; "checkpoint" (a writer only) takes a checkpoint now and
/// gets "ok EPOCH" or "error MESSAGE". Returns the socket's path, to remove at unmount.
pub fn serve_control(
    cache_dir: &Path,
    status: StatusFn,
    checkpoint: Option<CheckpointFn>,
) -> anyhow::Result<PathBuf> {
    let path = cache_dir.join(CONTROL_SOCKET);
    // A socket left by a crash: we hold the cache dir's lock, so it is stale.
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let reply = match (line.trim(), &checkpoint) {
                    ("status", _) => {
                        serde_json::to_string(&status()).expect("status serializes") + "\n"
                    }
                    ("checkpoint", Some(checkpoint)) => match checkpoint() {
                        Ok(epoch) => format!("ok {epoch}\n"),
                        Err(e) => format!("error {e}\n"),
                    },
                    ("checkpoint", None) => {
                        "error this mount has no bucket to checkpoint to, or is read-only\n"
                            .to_string()
                    }
                    (other, _) => format!("error unknown request {other:?}\n"),
                };
                let _ = conn.write_all(reply.as_bytes());
            }
        })
        .context("start control thread")?;
    Ok(path)
}

/// Sends one request line to the mount running on `cache_dir` and returns its answer.
pub fn ask(cache_dir: &Path, request: &str) -> anyhow::Result<String> {
    let path = cache_dir.join(CONTROL_SOCKET);
    let mut conn = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "connect to {}: is a bucketfs mounted on cache dir {}?",
            path.display(),
            cache_dir.display()
        )
    })?;
    conn.write_all(format!("{request}\n").as_bytes())
        .context("send request")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).context("read reply")?;
    Ok(reply)
}

/// `bucketfs checkpoint`: asks for a checkpoint now; the epoch committed (or the latest, if
/// nothing had changed).
pub fn request_checkpoint(cache_dir: &Path) -> anyhow::Result<u64> {
    let reply = ask(cache_dir, "checkpoint")?;
    let reply = reply.trim();
    if let Some(epoch) = reply.strip_prefix("ok ") {
        return epoch.parse().context("parse epoch in reply");
    }
    bail!(
        "checkpoint failed: {}",
        reply.strip_prefix("error ").unwrap_or(reply)
    )
}

/// `bucketfs status`: the running mount's status.
pub fn request_status(cache_dir: &Path) -> anyhow::Result<Status> {
    let reply = ask(cache_dir, "status")?;
    if let Some(e) = reply.strip_prefix("error ") {
        bail!("status: {}", e.trim());
    }
    serde_json::from_str(&reply).context("parse the mount's status")
}

/// The status for a person.
pub fn print(s: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "bucketfs {} on {} (cache dir {}), pid {}, up {}",
        s.version,
        s.mountpoint,
        s.cache_dir,
        s.pid,
        duration(s.uptime_seconds as f64)
    )?;
    if let Some(addr) = &s.metrics_addr {
        writeln!(out, "metrics       http://{addr}/metrics")?;
    }
    if let Some(why) = &s.stopped {
        writeln!(out, "STOPPED       {why}")?;
    }
    match &s.bucket {
        None => writeln!(
            out,
            "bucket        none: the filesystem lives in the cache dir only"
        )?,
        Some(b) => {
            let who = match &b.writer {
                Some(w) => format!("writer {w}"),
                None => "read-only".into(),
            };
            writeln!(
                out,
                "bucket        {}  {who}  epoch {}{}",
                b.url,
                b.epoch,
                if s.fenced {
                    "  FENCED: another writer took over; changes are refused"
                } else if s.cache_failed {
                    "  STOPPED: changes are refused (above)"
                } else {
                    ""
                }
            )?;
            if let Some(c) = &b.checkpoints {
                let last = if c.last_commit_unix_ms == 0 {
                    "none yet by this mount".to_string()
                } else {
                    let age = crate::fs::unix_ms().saturating_sub(c.last_commit_unix_ms);
                    format!("last {} ago", duration(age as f64 / 1000.0))
                };
                writeln!(
                    out,
                    "checkpoints   {last}; {} committed, {} failed, {} uploaded",
                    c.committed,
                    c.failed,
                    bytes(c.segment_bytes)
                )?;
                if let Some(e) = &c.last_error {
                    writeln!(out, "              last error: {e}")?;
                }
            }
            if let Some(r) = &b.replica {
                writeln!(
                    out,
                    "replica       base epoch {}, bucket at epoch {}; standby given WAL of epoch \
                     {} ({}), lag {}; {} WAL files served, {} errors",
                    r.base_epoch,
                    r.newest_epoch,
                    r.served_epoch,
                    r.served_file.as_deref().unwrap_or("none yet"),
                    duration(r.lag_seconds),
                    r.wal_served,
                    r.wal_errors
                )?;
                if r.base_expired {
                    writeln!(
                        out,
                        "              BASE EXPIRED: it left the primary's retention window \
                         (oldest retained epoch {}); the replica must move to a newer base",
                        r.oldest_retained
                    )?;
                }
                if let Some(t) = &r.trouble {
                    writeln!(out, "              CANNOT KEEP UP: {t}")?;
                }
            }
            if let Some(g) = &b.gc {
                writeln!(
                    out,
                    "bucket size   {} in {} objects; the latest checkpoint uses {} (space \
                     amplification {:.2}); restore chain {}; {} checkpoints retained",
                    bytes(g.bucket_bytes),
                    g.manifests + g.segments + g.catalog_chunks,
                    bytes(g.image_bytes),
                    g.space_amplification,
                    g.chain_length,
                    g.retained
                )?;
                writeln!(
                    out,
                    "gc            last pass: {} deleted ({}), {} waiting out the grace ({}), {} \
                     orphans",
                    g.deleted,
                    bytes(g.deleted_bytes),
                    g.pending,
                    bytes(g.pending_bytes),
                    g.orphans
                )?;
            }
        }
    }
    let replica = s.bucket.as_ref().is_some_and(|b| b.replica.is_some());
    if replica {
        writeln!(
            out,
            "local layer   {} written on the replica (stays in the cache dir, never uploaded)",
            bytes(s.fs.dirty_bytes)
        )?;
    } else {
        writeln!(
            out,
            "rpo           {}",
            if s.rpo_ms == 0 {
                "0 (everything written is in the bucket)".to_string()
            } else {
                duration(s.rpo_ms as f64 / 1000.0)
            }
        )?;
        let max = if s.fs.max_dirty_bytes > 0 {
            format!(" of at most {}", bytes(s.fs.max_dirty_bytes))
        } else {
            String::new()
        };
        writeln!(
            out,
            "dirty         {}{max}; {} writes waited for the checkpointer",
            bytes(s.fs.dirty_bytes),
            s.fs.throttled_writes
        )?;
    }
    let used = match &s.cache {
        Some(c) => format!(
            "{} used of {}",
            bytes(c.used_bytes),
            bytes(c.capacity_bytes)
        ),
        None => "unbounded".into(),
    };
    let rate = match s.hit_ratio() {
        Some(r) => format!("{:.1}%", r * 100.0),
        None => "n/a".into(),
    };
    writeln!(
        out,
        "cache         {used}; hit rate {rate} ({} hits, {} misses); {} fetched; {} evicted",
        s.fs.read_hits,
        s.fs.read_misses,
        bytes(s.fs.fetched_bytes),
        bytes(s.fs.evicted_bytes)
    )?;
    if let Some(b) = &s.bucket {
        let requests: u64 = b.store.iter().map(|o| o.requests).sum();
        let errors: u64 = b.store.iter().map(|o| o.errors).sum();
        writeln!(out, "object store  {requests} requests, {errors} errors")?;
        if let Some(p) = &b.prewarm {
            writeln!(
                out,
                "prewarm       {}: {}/{} chunks, {} fetched, {} failed, {} left out (no room), {}",
                p.state,
                p.chunks_done,
                p.chunks_total,
                bytes(p.fetched_bytes),
                p.failed,
                p.chunks_skipped,
                duration(p.elapsed_ms as f64 / 1000.0)
            )?;
        }
    }
    Ok(())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        format!("{}m {:02}s", (secs / 60.0) as u64, secs as u64 % 60)
    } else {
        format!(
            "{}h {:02}m",
            (secs / 3600.0) as u64,
            (secs as u64 % 3600) / 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(1.25), "1.2 s");
        assert_eq!(duration(125.0), "2m 05s");
        assert_eq!(duration(7265.0), "2h 01m");
    }
}
