//! Commands that read a bucket without mounting it: `bucketfs ls` and `bucketfs verify`.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Context;
use bytes::Bytes;

use crate::bucket::BucketUrl;
use crate::checkpoint::{manifest_key, now_ms, open_bucket, CHAIN_WINDOW};
use crate::gc::{Collector, Manifests, Mode, Report, Retention};
use crate::manifest::Manifest;
use crate::store::{get_each, ReadStore, StoreError};

mod verify;
pub use verify::verify;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Multi-threaded, not current-thread: `open_bucket` drives it through a Handle, which on a
    // current-thread runtime would not run the I/O driver and would wait forever.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start the I/O runtime")
}

/// The GC boundary, and the oldest checkpoint the last GC pass kept restorable (0 when no
/// pass ran: every checkpoint is).
async fn kept(store: &dyn ReadStore) -> anyhow::Result<(u64, u64)> {
    let boundary = crate::gc::read_boundary(store).await?;
    let state = crate::gc::read_state(store).await?;
    Ok((boundary, state.map_or(0, |s| s.oldest_retained)))
}

/// Objects of one kind fetched a window at a time (`get_each`: a round trip each), with a
/// progress line for each ("WHAT i/N KEY", as "verify: segment 3/40 segments/...", printed
/// once its window has arrived). One deleted since its LIST (by a GC pass running beside) is
/// passed over; any other error ends the command.
struct Fetching<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: &'a dyn ReadStore,
    what: &'static str,
    total: usize,
    done: usize,
}

impl<'a> Fetching<'a> {
    fn new(
        rt: &'a tokio::runtime::Runtime,
        store: &'a dyn ReadStore,
        what: &'static str,
        total: usize,
    ) -> Self {
        let done = 0;
        Fetching {
            rt,
            store,
            what,
            total,
            done,
        }
    }

    /// The objects of `items` that are there, in order, with their keys.
    fn window<'i, I>(
        &mut self,
        progress: &mut dyn Write,
        items: &'i [I],
        key: impl Fn(&I) -> String,
    ) -> anyhow::Result<Vec<(&'i I, String, Bytes)>> {
        let whole = |_: &I, _: &str, bytes| Ok::<_, StoreError>(bytes);
        let mut out = Vec::with_capacity(items.len());
        for (item, key, bytes) in self.rt.block_on(get_each(self.store, items, key, whole)) {
            self.done += 1;
            let (what, done, total) = (self.what, self.done, self.total);
            writeln!(progress, "{what} {done}/{total} {key}")?;
            match bytes {
                Err(StoreError::NotFound { .. }) => {}
                bytes => out.push((item, key, bytes?)),
            }
        }
        Ok(out)
    }
}

/// `bucketfs ls`: one line per checkpoint, with whether it is still restorable; only the
/// newest `last` if given. The manifests are read 32 at a time (under `--durability remote`
/// every group commit is one), and one deleted since the LIST (by a GC pass running beside)
/// is passed over.
pub fn ls(url: &BucketUrl, last: Option<usize>, out: &mut dyn Write) -> anyhow::Result<()> {
    let rt = runtime()?;
    let store = url.open()?;
    // Checks the format marker (and refuses a prefix that is not ours) without writing.
    open_bucket(&*store, rt.handle(), false).with_context(|| format!("open bucket {url}"))?;
    let (boundary, oldest_retained) = rt.block_on(kept(&*store))?;
    let (manifests, segments) = rt.block_on(async {
        Ok::<_, StoreError>((
            Manifests::list(&*store).await?,
            store.list("segments/").await?,
        ))
    })?;
    let shown: Vec<(u64, u64)> = match last {
        Some(n) => manifests
            .iter()
            .skip(manifests.len().saturating_sub(n))
            .collect(),
        None => manifests.iter().collect(),
    };
    drop(manifests);
    // Segments by the epoch in their names: what an unreadable manifest is shown with.
    let mut seg_bytes: HashMap<u64, (usize, u64)> = HashMap::new();
    let sizes: HashMap<&str, u64> = segments.iter().map(|s| (s.key.as_str(), s.size)).collect();
    for s in &segments {
        if let Some(e) = crate::gc::segment_epoch(&s.key) {
            let entry = seg_bytes.entry(e).or_default();
            entry.0 += 1;
            entry.1 += s.size;
        }
    }
    writeln!(
        out,
        "{:>8}  {:<5}  {:<24}  {:<16}  {:>8}  {:>12}  NOTE",
        "EPOCH", "KIND", "TIME (UTC)", "WRITER", "SEGMENTS", "BYTES"
    )?;
    let ls = Ls {
        boundary,
        oldest_retained,
        seg_bytes,
        sizes,
    };
    // (Progress lines discarded: its own lines, one per manifest, are its progress.)
    let mut fetching = Fetching::new(&rt, &*store, "ls: manifest", shown.len());
    for window in shown.chunks(CHAIN_WINDOW) {
        let got = fetching.window(&mut std::io::sink(), window, |&(e, _)| manifest_key(e))?;
        for (&(epoch, size), key, bytes) in got {
            ls.line(out, epoch, &key, &bytes, size)?;
        }
    }
    Ok(())
}

/// What `bucketfs ls` shows each manifest with.
struct Ls<'a> {
    boundary: u64,
    oldest_retained: u64,
    /// Segments by the epoch in their names (count, bytes): what an unreadable manifest is
    /// shown with.
    seg_bytes: HashMap<u64, (usize, u64)>,
    /// Every segment's size, by key.
    sizes: HashMap<&'a str, u64>,
}

impl Ls<'_> {
    /// The line of manifest `epoch`, `bytes` as stored at `key` (`size` bytes).
    fn line(
        &self,
        out: &mut dyn Write,
        epoch: u64,
        key: &str,
        bytes: &[u8],
        size: u64,
    ) -> anyhow::Result<()> {
        let (boundary, oldest_retained) = (self.boundary, self.oldest_retained);
        let man = match Manifest::decode_at(bytes, key, epoch) {
            Ok(man) => man,
            Err(e) if epoch < boundary => {
                let (n, b) = self.seg_bytes.get(&epoch).copied().unwrap_or_default();
                // GC keeps what it cannot read below the boundary (it might be a fence).
                writeln!(
                    out,
                    "{epoch:>8}  {:<5}  {:<24}  {:<16}  {n:>8}  {:>12}  below the GC boundary: \
                     unreadable, kept ({e})",
                    "?",
                    "?",
                    "?",
                    b + size
                )?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        // The segments it brought (a compaction's carry the epoch after the view it read).
        let (n, b) = crate::gc::Summary::of(&man)
            .segments
            .iter()
            .filter_map(|key| self.sizes.get(&**key))
            .fold((0, 0), |(n, b), size| (n + 1, b + size));
        let kind = if man.parent.is_none() {
            "base"
        } else {
            "delta"
        };
        let carries = crate::manifest::inline_range(bytes, key)?.is_some_and(|r| !r.is_empty());
        let kept = if epoch < boundary && man.fence {
            "below the GC boundary: a takeover's fence, kept for good"
        } else if epoch < boundary && carries {
            "below the GC boundary: no checkpoint, kept while its pages are used"
        } else if epoch < boundary {
            "below the GC boundary: not part of the bucket"
        } else if epoch >= oldest_retained {
            "retained"
        } else if man.fence {
            "expired, a takeover's fence, kept for good"
        } else {
            "expired"
        };
        let note = if man.clean_stop {
            format!("{kept}, clean stop")
        } else if man.fence && epoch >= oldest_retained {
            format!("{kept}, takeover (a fence)")
        } else {
            kept.to_string()
        };
        writeln!(
            out,
            "{epoch:>8}  {kind:<5}  {:<24}  {:<16}  {n:>8}  {:>12}  {note}",
            format_ms(man.created_ms),
            man.writer,
            b + size
        )?;
        Ok(())
    }
}

pub fn format_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `bucketfs gc`: one pass over the bucket. Deletes only when no writer holds the prefix
/// (its newest checkpoint is a clean stop) and not `dry_run`; otherwise reports what a pass
/// would find. Returns the exit code.
pub fn gc(
    url: &BucketUrl,
    retention: &Retention,
    dry_run: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let rt = runtime()?;
    let store = url.open()?;
    let opened =
        open_bucket(&*store, rt.handle(), false).with_context(|| format!("open bucket {url}"))?;
    let held = opened.latest.as_ref().filter(|m| !m.clean_stop);
    let latest = opened.latest.as_ref().map_or(0, |m| m.epoch);
    // A writer that mounts while this pass runs takes the prefix at latest + 1: stop then.
    let holds = || -> Result<(), crate::checkpoint::CheckpointError> {
        match rt.block_on(store.head(&manifest_key(latest + 1)))? {
            None => Ok(()),
            Some(_) => Err(crate::checkpoint::CheckpointError::Refused(format!(
                "a writer took the prefix (epoch {}) while this pass ran; it deletes no more",
                latest + 1
            ))),
        }
    };
    let mode = if dry_run || held.is_some() {
        Mode::DryRun
    } else {
        // No writer holds the prefix, so no checkpoint is under way beside this pass.
        Mode::Delete {
            holds: &holds,
            in_flight: &|_: &str| false,
        }
    };
    let report = Collector::default().pass(&store, rt.handle(), retention, now_ms(), mode)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        print_report(url, &report, out)?;
    }
    if let BucketUrl::S3 { .. } = url {
        if std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .is_ok_and(|e| e.contains("tigris"))
        {
            writeln!(
                out,
                "note: on Tigris, a bucket with snapshots or soft delete enabled keeps deleted \
                 objects (and bills them) until they expire there"
            )?;
        }
    }
    if let (Some(m), false) = (held, dry_run) {
        let age_s = now_ms().saturating_sub(m.created_ms) / 1000;
        anyhow::bail!(
            "writer {} holds {url} (its newest checkpoint, epoch {}, is {age_s} s old and not a \
             clean stop): only the writer that holds a prefix deletes, and its own GC \
             (--gc-interval) collects this bucket. Nothing was deleted; the report above is what \
             a pass finds",
            m.writer,
            m.epoch
        );
    }
    Ok(0)
}

fn print_report(url: &BucketUrl, r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "bucket {url}: latest epoch {}, {} checkpoint(s) retained (the oldest: epoch {}), GC \
         boundary {}",
        r.latest_epoch, r.retained, r.oldest_retained, r.boundary
    )?;
    writeln!(
        out,
        "objects: {} manifests, {} segments and {} chunks of the GC catalog, {} bytes; the \
         latest checkpoint uses {} bytes (space amplification {:.2}); a restore reads a chain \
         of {} manifest(s)",
        r.manifests,
        r.segments,
        r.catalog_chunks,
        r.bucket_bytes,
        r.image_bytes,
        r.space_amplification,
        r.chain_length
    )?;
    writeln!(
        out,
        "unneeded, waiting out --gc-grace: {} object(s), {} bytes ({} orphan segment(s) that no \
         manifest names)",
        r.pending, r.pending_bytes, r.orphans
    )?;
    if r.dry_run {
        writeln!(out, "deleted: nothing (a dry run)")?;
    } else {
        writeln!(
            out,
            "deleted: {} object(s), {} bytes",
            r.deleted, r.deleted_bytes
        )?;
    }
    writeln!(
        out,
        "older than every retained checkpoint and kept: {} manifest(s) holding pages still \
         used, {} takeover fence(s), {} unreadable object(s) below the GC boundary",
        r.pinned, r.fences, r.unreadable
    )
}

#[cfg(test)]
mod tests {
    use super::format_ms;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_ms(1_795_000_000_123), "2026-11-18 11:06:40.123");
    }
}
