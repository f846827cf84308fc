//! Commands that read a bucket without mounting it: `bucketfs ls` and `bucketfs verify`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::Context;

use crate::bucket::BucketUrl;
use crate::checkpoint::{epoch_of_key, manifest_key, open_bucket};
use crate::manifest::segment::verify_segment;
use crate::manifest::Manifest;
use crate::store::StoreError;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Multi-threaded, not current-thread: `open_bucket` drives it through a Handle, which on a
    // current-thread runtime would not run the I/O driver and would wait forever.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start the I/O runtime")
}

/// The epoch a segment key belongs to.
fn segment_epoch(key: &str) -> Option<u64> {
    key.strip_prefix("segments/")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// `bucketfs ls`: one line per checkpoint.
pub fn ls(url: &BucketUrl, out: &mut dyn Write) -> anyhow::Result<()> {
    let rt = runtime()?;
    let store = url.open()?;
    // Checks the format marker (and refuses a prefix that is not ours) without writing.
    open_bucket(&*store, rt.handle(), false).with_context(|| format!("open bucket {url}"))?;
    let (manifests, segments) = rt.block_on(async {
        Ok::<_, StoreError>((
            store.list("manifests/").await?,
            store.list("segments/").await?,
        ))
    })?;
    let mut seg_bytes: HashMap<u64, (usize, u64)> = HashMap::new();
    for s in &segments {
        if let Some(e) = segment_epoch(&s.key) {
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
        let man = Manifest::decode(&bytes, &m.key)?;
        let (n, b) = seg_bytes.get(&epoch).copied().unwrap_or_default();
        let kind = if man.parent.is_none() {
            "base"
        } else {
            "delta"
        };
        let note = if man.clean_stop { "clean stop" } else { "" };
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

fn format_ms(ms: u64) -> String {
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

/// `bucketfs verify`: every segment object is whole (index, every run's crc), and every
/// extent of every manifest points at a run that exists with the crc it names. Returns the
/// broken objects, each with why.
pub fn verify(url: &BucketUrl, progress: &mut dyn Write) -> anyhow::Result<Vec<String>> {
    let rt = runtime()?;
    let store = url.open()?;
    open_bucket(&*store, rt.handle(), false).with_context(|| format!("open bucket {url}"))?;
    let mut broken = Vec::new();
    let segments = rt.block_on(store.list("segments/"))?;
    // The runs each segment holds, by (offset, crc), from its own index.
    let mut runs: HashMap<String, BTreeMap<u64, u32>> = HashMap::new();
    for (i, s) in segments.iter().enumerate() {
        writeln!(
            progress,
            "verify: segment {}/{} {}",
            i + 1,
            segments.len(),
            s.key
        )?;
        let bytes = rt.block_on(store.get(&s.key, None))?;
        match verify_segment(&bytes, &s.key) {
            // verify_segment checks the index and every run's crc.
            Ok(list) => {
                runs.insert(
                    s.key.clone(),
                    list.iter().map(|r| (r.offset, r.crc)).collect(),
                );
            }
            Err(e) => broken.push(format!("{}: {e}", s.key)),
        }
    }
    let manifests = rt.block_on(store.list("manifests/"))?;
    for (i, m) in manifests.iter().enumerate() {
        writeln!(
            progress,
            "verify: manifest {}/{} {}",
            i + 1,
            manifests.len(),
            m.key
        )?;
        let Some(epoch) = epoch_of_key(&m.key) else {
            continue;
        };
        let bytes = rt.block_on(store.get(&m.key, None))?;
        let man = match Manifest::decode(&bytes, &m.key) {
            Ok(man) if man.epoch == epoch => man,
            Ok(man) => {
                broken.push(format!(
                    "{}: names epoch {}",
                    manifest_key(epoch),
                    man.epoch
                ));
                continue;
            }
            Err(e) => {
                broken.push(format!("{}: {e}", m.key));
                continue;
            }
        };
        for e in &man.extents {
            match runs.get(&e.segment).map(|r| r.get(&e.run.offset)) {
                None => broken.push(format!(
                    "{}: extent of ino={} points into {}, which is missing or corrupt",
                    m.key, e.run.ino, e.segment
                )),
                Some(None) => broken.push(format!(
                    "{}: extent of ino={} points at offset {} of {}, where no run starts",
                    m.key, e.run.ino, e.run.offset, e.segment
                )),
                Some(Some(&crc)) if crc != e.run.crc => broken.push(format!(
                    "{}: extent of ino={} expects crc32c {:08x} at offset {} of {}, the run has {crc:08x}",
                    m.key, e.run.ino, e.run.crc, e.run.offset, e.segment
                )),
                Some(Some(_)) => {}
            }
        }
    }
    broken.dedup();
    Ok(broken)
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
