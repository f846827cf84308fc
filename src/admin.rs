//! Commands that read a bucket without mounting it: `bucketfs ls` and `bucketfs verify`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

use anyhow::Context;
use bytes::Bytes;

use crate::bucket::BucketUrl;
use crate::checkpoint::{epoch_of_key, manifest_key, now_ms, open_bucket, CHAIN_WINDOW};
use crate::gc::{decode_chunk, Collector, Mode, Report, Retention, Summary, CATALOG_PREFIX};
use crate::manifest::segment::verify_segment;
use crate::manifest::view::View;
use crate::manifest::Manifest;
use crate::store::{get_each, ObjectMeta, ReadStore, StoreError};

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
async fn kept(store: &dyn crate::store::ReadStore) -> anyhow::Result<(u64, u64)> {
    let boundary = crate::gc::read_boundary(store).await?;
    let state = crate::gc::read_state(store).await?;
    Ok((boundary, state.map_or(0, |s| s.oldest_retained)))
}

/// `bucketfs ls`: one line per checkpoint, with whether it is still restorable.
pub fn ls(url: &BucketUrl, out: &mut dyn Write) -> anyhow::Result<()> {
    let rt = runtime()?;
    let store = url.open()?;
    // Checks the format marker (and refuses a prefix that is not ours) without writing.
    open_bucket(&*store, rt.handle(), false).with_context(|| format!("open bucket {url}"))?;
    let (boundary, oldest_retained) = rt.block_on(kept(&*store))?;
    let (manifests, segments) = rt.block_on(async {
        Ok::<_, StoreError>((
            store.list("manifests/").await?,
            store.list("segments/").await?,
        ))
    })?;
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
    for m in &manifests {
        let Some(epoch) = epoch_of_key(&m.key) else {
            continue;
        };
        let bytes = rt.block_on(store.get(&m.key, None))?;
        let man = match Manifest::decode_at(&bytes, &m.key, epoch) {
            Ok(man) => man,
            Err(e) if epoch < boundary => {
                let (n, b) = seg_bytes.get(&epoch).copied().unwrap_or_default();
                // GC keeps what it cannot read below the boundary (it might be a fence).
                writeln!(
                    out,
                    "{epoch:>8}  {:<5}  {:<24}  {:<16}  {n:>8}  {:>12}  below the GC boundary: \
                     unreadable, kept ({e})",
                    "?",
                    "?",
                    "?",
                    b + m.size
                )?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // The segments it brought (a compaction's carry the epoch after the view it read).
        let (n, b) = crate::gc::Summary::of(&man)
            .segments
            .iter()
            .filter_map(|key| sizes.get(&**key))
            .fold((0, 0), |(n, b), size| (n + 1, b + size));
        let kind = if man.parent.is_none() {
            "base"
        } else {
            "delta"
        };
        let carries = crate::manifest::inline_range(&bytes, &m.key)?.is_some_and(|r| !r.is_empty());
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
            b + m.size
        )?;
    }
    Ok(())
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

/// The most bytes of segments `verify` fetches together, by their listed sizes (a larger
/// one goes alone): a round trip each window, not each segment; under `--durability remote`
/// most are small.
const VERIFY_WINDOW_BYTES: u64 = 64 << 20;

/// `objects` in order, in windows of at most `CHAIN_WINDOW` objects and `max_bytes` (by their
/// listed sizes) each; an object larger than that goes alone.
fn windows_by_size(objects: &[ObjectMeta], max_bytes: u64) -> Vec<&[ObjectMeta]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, o) in objects.iter().enumerate() {
        if i > start && (i - start == CHAIN_WINDOW || bytes.saturating_add(o.size) > max_bytes) {
            out.push(&objects[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(o.size);
    }
    if start < objects.len() {
        out.push(&objects[start..]);
    }
    out
}

/// Fetches the objects of `windows` a window at a time (`get_each`: a round trip each) and
/// hands each one's bytes to `check`, in order, after its progress line ("verify: WHAT i/N
/// KEY", printed once its window has arrived). One deleted since its LIST (by a GC pass
/// running beside) is passed over; any other error ends the run.
fn fetch_each<'a, I>(
    rt: &tokio::runtime::Runtime,
    store: &dyn ReadStore,
    progress: &mut dyn Write,
    what: &str,
    windows: Vec<&'a [I]>,
    key: impl Fn(&I) -> String,
    mut check: impl FnMut(&'a I, &str, Bytes) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let total: usize = windows.iter().map(|w| w.len()).sum();
    let mut done = 0;
    for window in windows {
        let whole = |_: &I, _: &str, bytes| Ok::<_, StoreError>(bytes);
        for (item, key, bytes) in rt.block_on(get_each(store, window, &key, whole)) {
            done += 1;
            writeln!(progress, "verify: {what} {done}/{total} {key}")?;
            match bytes {
                Err(StoreError::NotFound { .. }) => {}
                bytes => check(item, &key, bytes?)?,
            }
        }
    }
    Ok(())
}

/// `bucketfs verify`: every segment object is whole (index, every run's crc), every manifest
/// at or above the GC boundary decodes, none from the oldest retained checkpoint on is
/// missing, every extent of the oldest retained checkpoint's
/// image and of each manifest after it points at a run that exists with the crc it names,
/// and every chunk of GC's catalog decodes and says of each manifest at or above the
/// boundary what the manifest says. Returns the broken objects, each with why.
pub fn verify(url: &BucketUrl, progress: &mut dyn Write) -> anyhow::Result<Vec<String>> {
    let rt = runtime()?;
    let store = url.open()?;
    open_bucket(&*store, rt.handle(), false).with_context(|| format!("open bucket {url}"))?;
    let mut broken = Vec::new();
    // The manifests are listed first: a segment is uploaded before the manifest that names
    // it, so every segment a listed manifest names was there to be listed after them. (Listed
    // the other way round, a checkpoint committing meanwhile named a segment this run never
    // read, reported as missing.)
    // Manifests below the boundary are not part of the bucket (their runs are checked all
    // the same, below).
    let boundary = rt.block_on(crate::gc::read_boundary(&*store))?;
    let manifests = rt.block_on(store.list("manifests/"))?;
    let segments = rt.block_on(store.list("segments/"))?;
    // The runs each segment holds, by (offset, crc), from its own index.
    let mut runs: HashMap<String, BTreeMap<u64, u32>> = HashMap::new();
    let windows = windows_by_size(&segments, VERIFY_WINDOW_BYTES);
    let key = |s: &ObjectMeta| s.key.clone();
    fetch_each(
        &rt,
        &*store,
        progress,
        "segment",
        windows,
        key,
        |_, key, bytes| {
            match verify_segment(&bytes, key) {
                // verify_segment checks the index and every run's crc.
                Ok(list) => {
                    let list = list.iter().map(|r| (r.offset, r.crc)).collect();
                    runs.insert(key.to_string(), list);
                }
                Err(e) => broken.push(format!("{key}: {e}")),
            }
            Ok(())
        },
    )?;
    // Every manifest must decode; the extents of the retained checkpoints (as the last GC
    // pass left them) must point at runs that exist. An expired checkpoint may name segments
    // GC has collected: it is no longer restorable, and `ls` says so.
    let manifests: Vec<(u64, &str)> = manifests
        .iter()
        .filter_map(|m| epoch_of_key(&m.key).map(|e| (e, m.key.as_str())))
        .collect();
    let mut decoded: BTreeMap<u64, Manifest> = BTreeMap::new();
    // The epochs at or above the boundary whose manifest was there to read, decoded or not.
    let mut read = BTreeSet::new();
    // Small and many (one per group commit under `--durability remote`): 32 at once.
    let windows = manifests.chunks(CHAIN_WINDOW).collect();
    let key = |&(_, k): &(u64, &str)| k.to_string();
    fetch_each(
        &rt,
        &*store,
        progress,
        "manifest",
        windows,
        key,
        |&(epoch, _), key, bytes| {
            // Runs the manifest carries are checked as a segment's are, below the boundary too
            // (GC keeps such a manifest while a retained checkpoint uses its runs).
            let inline = crate::manifest::inline_range(&bytes, key).and_then(|range| {
                let Some(range) = range.filter(|r| !r.is_empty()) else {
                    return Ok(None);
                };
                let list = verify_segment(&bytes[range.clone()], key)?;
                Ok(Some((range.start as u64, list)))
            });
            match inline {
                Ok(Some((start, list))) => {
                    let list = list.iter().map(|r| (start + r.offset, r.crc)).collect();
                    runs.insert(key.to_string(), list);
                }
                Ok(None) => {}
                Err(e) => broken.push(format!("{key}: {e}")),
            }
            if epoch < boundary {
                return Ok(()); // not part of the bucket
            }
            read.insert(epoch);
            match Manifest::decode_at(&bytes, key, epoch) {
                Ok(man) => {
                    decoded.insert(epoch, man);
                }
                Err(e) => broken.push(format!("{key}: {e}")),
            }
            Ok(())
        },
    )?;
    let check = |key: &str, e: &crate::manifest::Extent, broken: &mut Vec<String>| {
        match runs.get(&*e.segment).map(|r| r.get(&e.run.offset)) {
            None => broken.push(format!(
                "{key}: extent of ino={} points into {}, which is missing or corrupt",
                e.run.ino, e.segment
            )),
            Some(None) => broken.push(format!(
                "{key}: extent of ino={} points at offset {} of {}, where no run starts",
                e.run.ino, e.run.offset, e.segment
            )),
            Some(Some(&crc)) if crc != e.run.crc => broken.push(format!(
                "{key}: extent of ino={} expects crc32c {:08x} at offset {} of {}, the run has {crc:08x}",
                e.run.ino, e.run.crc, e.run.offset, e.segment
            )),
            Some(Some(_)) => {}
        }
    };
    // The boundary and the oldest retained checkpoint as they are now, after every segment
    // and manifest was read: a GC pass running beside may have raised them and deleted what
    // is below (below the boundary, what a manifest or a chunk says is no longer part of the
    // bucket, and a key freed since a chunk was written may have been landed on again by a
    // stalled writer, which a manifest read after that was read after the boundary rose past
    // its key; segments only checkpoints older than the oldest retained one named may be
    // gone, and the extents checked are those of the retained ones).
    let (boundary, oldest_retained) = rt.block_on(kept(&*store))?;
    // Every epoch from the oldest retained checkpoint to the newest listed is a checkpoint
    // (each commit takes the epoch after the one before, a takeover's fence too): one with no
    // manifest is a retained checkpoint that cannot be restored, and the chains through it
    // are broken. (One missing just before a base breaks no later chain: only this finds it.)
    // The oldest retained one, which GC's state names, is looked for too, unless a pass since
    // has raised the boundary past it.
    let mut next = (oldest_retained > 0 && oldest_retained >= boundary).then_some(oldest_retained);
    for &epoch in read.range(oldest_retained.max(boundary)..) {
        if let Some(want) = next.filter(|&want| epoch > want) {
            let gap = match epoch - want {
                1 => manifest_key(want),
                _ => format!("{}..{}", manifest_key(want), manifest_key(epoch - 1)),
            };
            broken.push(format!(
                "{gap}: missing, within the retained checkpoints (the oldest retained is \
                 epoch {oldest_retained}, the next manifest there {})",
                manifest_key(epoch)
            ));
        }
        next = Some(epoch + 1);
    }
    if let Some(&first) = decoded.range(oldest_retained..).next().map(|(e, _)| e) {
        // The oldest retained checkpoint's whole image, from its chain ...
        let mut chain = vec![first];
        while let Some(p) = decoded[chain.last().expect("not empty")].parent {
            if !decoded.contains_key(&p) {
                broken.push(format!(
                    "{}: the chain of the oldest retained checkpoint needs {}, which is missing",
                    manifest_key(first),
                    manifest_key(p)
                ));
                break;
            }
            chain.push(p);
        }
        let mut view = View::default();
        for epoch in chain.iter().rev() {
            view.apply(&decoded[epoch]);
        }
        let key = manifest_key(first);
        for map in view.extents.values() {
            for (_, e) in map.values() {
                check(&key, e, &mut broken);
            }
        }
        // ... and what every later one adds to it.
        for (epoch, m) in decoded.range(first + 1..) {
            let key = manifest_key(*epoch);
            for e in &m.extents {
                check(&key, e, &mut broken);
            }
        }
    }
    // GC's catalog in the bucket: a new process's first pass takes what a chunk says of a
    // manifest at or above the boundary instead of reading it, so a chunk naming other
    // segments than the manifest would have GC delete what a checkpoint uses. (What a chunk
    // leaves out, or says of an epoch not listed, no pass takes from it.) Compared at or
    // above the boundary as it is now (read again above).
    let chunks = rt.block_on(store.list(CATALOG_PREFIX))?;
    let windows = chunks.chunks(CHAIN_WINDOW).collect();
    let key = |c: &ObjectMeta| c.key.clone();
    fetch_each(
        &rt,
        &*store,
        progress,
        "chunk",
        windows,
        key,
        |_, key, bytes| {
            let said = match decode_chunk(&bytes, key) {
                Ok(said) => said,
                Err(e) => {
                    broken.push(format!("{key}: {e}"));
                    return Ok(());
                }
            };
            // One line a chunk: the epochs it gets wrong, the first of them, and what differs.
            let (mut wrong, mut first) = (0, None);
            let mut differ = [
                ("parent", false),
                ("time", false),
                ("fence", false),
                ("segments", false),
            ];
            for (epoch, said) in said.iter().filter(|(e, _)| *e >= boundary) {
                let Some(m) = decoded.get(epoch) else {
                    continue;
                };
                // Every field named: one added to the summary is compared or does not build.
                let Summary {
                    parent,
                    created_ms,
                    fence,
                    segments,
                } = Summary::of(m);
                let fields = [
                    said.parent != parent,
                    said.created_ms != created_ms,
                    said.fence != fence,
                    said.segments != segments,
                ];
                if fields.contains(&true) {
                    wrong += 1;
                    first.get_or_insert(*epoch);
                    for (d, f) in differ.iter_mut().zip(fields) {
                        d.1 |= f;
                    }
                }
            }
            if let Some(first) = first {
                let differ: Vec<&str> = differ.iter().filter(|d| d.1).map(|d| d.0).collect();
                broken.push(format!(
                    "{key}: says other than the manifests of {wrong} epoch(s), from {}: their {}",
                    manifest_key(first),
                    differ.join(", ")
                ));
            }
            Ok(())
        },
    )?;
    broken.dedup();
    Ok(broken)
}

#[cfg(test)]
mod tests {
    use super::{format_ms, windows_by_size, ObjectMeta, CHAIN_WINDOW};

    /// Windows keep the order, hold every object once, and stay within both bounds; an
    /// object larger than the byte bound goes alone.
    #[test]
    fn windows_stay_within_their_bounds() {
        let objects = |sizes: &[u64]| -> Vec<ObjectMeta> {
            let meta = |(i, &size)| ObjectMeta {
                key: format!("segments/{i:04}"),
                size,
                etag: String::new(),
            };
            sizes.iter().enumerate().map(meta).collect()
        };
        let lens = |sizes: &[u64], max| -> Vec<usize> {
            let o = objects(sizes);
            let windows = windows_by_size(&o, max);
            let flat: Vec<&ObjectMeta> = windows.iter().flat_map(|w| w.iter()).collect();
            assert_eq!(flat, o.iter().collect::<Vec<_>>());
            windows.iter().map(|w| w.len()).collect()
        };
        assert_eq!(lens(&[], 10), Vec::<usize>::new());
        assert_eq!(lens(&[4, 4, 4, 4], 10), [2, 2]);
        assert_eq!(lens(&[4, 20, 4, 6, 1], 10), [1, 1, 2, 1]);
        assert_eq!(lens(&[20], 10), [1]);
        let many = vec![1; CHAIN_WINDOW * 2 + 1];
        assert_eq!(lens(&many, 1 << 20), [CHAIN_WINDOW, CHAIN_WINDOW, 1]);
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_ms(1_795_000_000_123), "2026-11-18 11:06:40.123");
    }
}
