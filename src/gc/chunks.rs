//! The catalog in the bucket (`gc/catalog/`): what GC knows of the manifests of a closed range
//! of epochs, one object per range, so that a process's first pass reads one object per
//! `CHUNK_EPOCHS` manifests instead of each of them.
//!
//! Under `--durability remote` every group commit is a manifest, and the window keeps a day of
//! them. A process's first pass read every one (a GET each, 32 at a time): for the 140,000 of
//! an hour at 39 commits a second, over a minute at 20 ms a request, and a Fly Machine that
//! stops when idle starts a new process, and a first pass, at every wake-up. A pass that does
//! not finish before the machine stops again leaves nothing behind, so GC never finished at
//! all.
//!
//! What a chunk says is what `Summary::of` read from each manifest, and a manifest at a key
//! never changes while that key is at or above the GC boundary: it is created once
//! (create-if-absent) and deleted only below the boundary, which only rises. So a reader takes
//! from a chunk only the epochs at or above the boundary it read, that its LIST found, and
//! that it does not know yet; anything else (a key below the boundary, which a stalled writer
//! may have landed on after GC freed it; a manifest the chunk does not name) it reads itself,
//! as before. A chunk that does not decode is read past (its manifests are read) and written
//! again. Chunks are written by deleting passes (a writer's, or `bucketfs gc` on a prefix no
//! writer holds), once all of their range is at or below the newest listed epoch; one whose
//! range is all below the boundary is unneeded and waits out the grace like any object.

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::state::{seal_json, unseal_json};
use super::{Collector, Manifests, Summary};
use crate::checkpoint::{CheckpointError, CHAIN_WINDOW};
use crate::manifest::FormatError;
use crate::store::{get_each, ObjectMeta, ObjectStore, PutMode, StoreError};

/// Where the chunks live (with `gc/state`, in the manifests' bucket under split placement).
pub const CATALOG_PREFIX: &str = "gc/catalog/";
/// Epochs a writer's chunk covers: at 100 commits a second, one chunk every 41 s, and 2,100 of
/// them for a day's window (about 45 bytes a manifest stored).
pub const CHUNK_EPOCHS: u64 = 4096;
const CHUNK_VERSION: u32 = 1;

/// One chunk as stored: sealed JSON, as `gc/state` is.
#[derive(Debug, Serialize, Deserialize)]
struct Chunk {
    version: u32,
    first: u64,
    end: u64,
    /// In epoch order.
    entries: Vec<StoredEntry>,
}

/// (epoch, created_ms, parent, fence, the segments it brought): a JSON array, not an object,
/// so a manifest takes about 45 bytes.
type StoredEntry = (u64, u64, Option<u64>, bool, Vec<String>);

/// The key of the chunk of `epochs`.
pub fn chunk_key(epochs: &Range<u64>) -> String {
    format!("{CATALOG_PREFIX}{:020}-{:020}", epochs.start, epochs.end)
}

/// The epochs a chunk's key says it covers; None for a key that is no chunk's.
pub fn chunk_range(key: &str) -> Option<Range<u64>> {
    let (first, end) = key.strip_prefix(CATALOG_PREFIX)?.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(first) && digits(end)) {
        return None;
    }
    let (first, end) = (first.parse().ok()?, end.parse().ok()?);
    (first < end).then_some(first..end)
}

fn encode(epochs: &Range<u64>, summaries: impl Iterator<Item = (u64, Summary)>) -> Bytes {
    let entries = summaries
        .map(|(epoch, s)| {
            let segments = s.segments.iter().map(|k| k.to_string()).collect();
            (epoch, s.created_ms, s.parent, s.fence, segments)
        })
        .collect();
    seal_json(&Chunk {
        version: CHUNK_VERSION,
        first: epochs.start,
        end: epochs.end,
        entries,
    })
}

/// A chunk's summaries, checked against its key: its checksum, its version, its range, and
/// every epoch inside it, in order.
pub fn decode_chunk(bytes: &[u8], key: &str) -> Result<Vec<(u64, Summary)>, FormatError> {
    let chunk: Chunk = unseal_json(bytes, key)?;
    if chunk.version != CHUNK_VERSION {
        return Err(FormatError::corrupt(
            key,
            format!("a GC catalog chunk of version {}", chunk.version),
        ));
    }
    if chunk_range(key) != Some(chunk.first..chunk.end) {
        return Err(FormatError::corrupt(key, "the range is not the key's"));
    }
    let mut last = None;
    let mut out = Vec::with_capacity(chunk.entries.len());
    for (epoch, created_ms, parent, fence, segments) in chunk.entries {
        if !(chunk.first..chunk.end).contains(&epoch) || last.is_some_and(|l| l >= epoch) {
            return Err(FormatError::corrupt(key, "epochs out of range or order"));
        }
        last = Some(epoch);
        let segments = segments.into_iter().map(Arc::from).collect();
        let summary = Summary {
            parent,
            created_ms,
            fence,
            segments,
        };
        out.push((epoch, summary));
    }
    Ok(out)
}

/// Whether `epochs` holds one of `unknown` (in order) at or above `boundary`.
fn holds_any(unknown: &[u64], epochs: &Range<u64>, boundary: u64) -> bool {
    let from = epochs.start.max(boundary);
    let i = unknown.partition_point(|&e| e < from);
    unknown.get(i).is_some_and(|&e| e < epochs.end)
}

impl Collector {
    /// Takes from the chunks listed what they say of the epochs in `unknown` (in order) at or
    /// above `boundary`, and leaves in `unknown` the epochs no chunk gave. Returns the keys of
    /// chunks that could not be read (written again by a deleting pass).
    pub(super) async fn read_chunks(
        &mut self,
        store: &dyn ObjectStore,
        chunks: &[ObjectMeta],
        unknown: &mut Vec<u64>,
        boundary: u64,
    ) -> BTreeSet<String> {
        let wanted: Vec<&str> = chunks
            .iter()
            .filter(|o| chunk_range(&o.key).is_some_and(|r| holds_any(unknown, &r, boundary)))
            .map(|o| o.key.as_str())
            .collect();
        let mut unreadable = BTreeSet::new();
        if wanted.is_empty() {
            return unreadable;
        }
        let decode = |_: &&str, key: &str, bytes: Bytes| {
            Ok::<_, CheckpointError>(decode_chunk(&bytes, key)?)
        };
        for window in wanted.chunks(CHAIN_WINDOW) {
            let read = get_each(store, window, |k| k.to_string(), decode).await;
            let mut taken = Vec::new();
            for (_, key, summaries) in read {
                match summaries {
                    Ok(summaries) => taken.extend(
                        summaries
                            .into_iter()
                            .filter(|(e, _)| *e >= boundary && unknown.binary_search(e).is_ok()),
                    ),
                    // Deleted since the LIST (by a pass that found it all below the boundary).
                    Err(CheckpointError::Store(StoreError::NotFound { .. })) => {}
                    // Not fetched: nothing says the chunk is bad, so it is not written again.
                    Err(CheckpointError::Store(e)) => {
                        warn!(key, error = %e, "a chunk of the GC catalog could not be fetched: its manifests are read instead");
                    }
                    Err(e) => {
                        warn!(key, error = %e, "a chunk of the GC catalog that does not decode: its manifests are read instead, and a deleting pass writes it again");
                        unreadable.insert(key);
                    }
                }
            }
            self.catalog.append(taken);
        }
        self.catalog.settle();
        unknown.retain(|&e| !self.catalog.contains(e));
        unreadable
    }

    /// The ranges of epochs a deleting pass writes a chunk of: closed (every epoch in them at
    /// or below the newest listed), holding manifests at or above `boundary` that the catalog
    /// knows every one of, and with no readable chunk in the bucket.
    pub(super) fn chunks_due(
        &self,
        manifests: &Manifests,
        boundary: u64,
        present: &HashSet<Range<u64>>,
    ) -> Vec<Range<u64>> {
        let Some(newest) = manifests.last() else {
            return Vec::new();
        };
        let span = self.chunk_epochs;
        let mut due = Vec::new();
        // The range at hand, and whether it is due so far (each epoch looked up only in a
        // range the bucket has no chunk of: a pass goes through every manifest).
        let mut at: Option<(Range<u64>, bool)> = None;
        for (epoch, _) in manifests.iter().filter(|&(e, _)| e >= boundary) {
            let first = epoch - epoch % span;
            let range = first..first.saturating_add(span);
            if range.end - 1 > newest {
                break;
            }
            if at.as_ref().is_none_or(|(r, _)| *r != range) {
                if let Some((r, true)) = at.take() {
                    due.push(r);
                }
                let wanted = !present.contains(&range);
                at = Some((range, wanted));
            }
            if let Some((_, wanted)) = &mut at {
                *wanted = *wanted && self.catalog.contains(epoch);
            }
        }
        if let Some((r, true)) = at {
            due.push(r);
        }
        due
    }

    /// Writes the chunks of `due` from the catalog (its epochs from `from` on: a reader
    /// takes none below its boundary, and below it the catalog may hold what a freed key
    /// held), `CHAIN_WINDOW` at a time, asking `holds` (which blocks on `rt` itself) before
    /// each window. A failed write is left to a later pass.
    pub(super) fn write_chunks(
        &self,
        store: &dyn ObjectStore,
        rt: &tokio::runtime::Handle,
        due: &[Range<u64>],
        from: u64,
        holds: &(dyn Fn() -> Result<(), CheckpointError> + Sync),
    ) -> Result<u64, CheckpointError> {
        let mut written = 0;
        for window in due.chunks(CHAIN_WINDOW) {
            holds()?;
            let puts = window.iter().map(|range| {
                let epochs = range.start.max(from)..range.end;
                let body = encode(range, self.catalog.summaries_in(epochs));
                async move { store.put(&chunk_key(range), body, PutMode::Overwrite).await }
            });
            for put in rt.block_on(futures_util::future::join_all(puts)) {
                match put {
                    Ok(_) => written += 1,
                    Err(e) => {
                        warn!(error = %e, "a chunk of the GC catalog was not written; a later pass writes it");
                        return Ok(written);
                    }
                }
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::summary;
    use super::*;

    fn fields(s: &Summary) -> (Option<u64>, u64, bool, Vec<String>) {
        let names = s.segments.iter().map(|k| k.to_string()).collect();
        (s.parent, s.created_ms, s.fence, names)
    }

    /// A chunk reads back as it was written, field by field, and its key names its range.
    #[test]
    fn a_chunk_reads_back_what_was_written() {
        let range = 4096..8192;
        let key = chunk_key(&range);
        assert_eq!(key, "gc/catalog/00000000000000004096-00000000000000008192");
        assert_eq!(chunk_range(&key), Some(range.clone()));
        let written = [
            (4096, summary(10, None, false, &["segments/4096-a.seg"])),
            (4097, summary(11, Some(4096), false, &[])),
            (5000, summary(12, Some(4999), true, &[])),
        ];
        let bytes = encode(&range, written.iter().cloned());
        let read = decode_chunk(&bytes, &key).unwrap();
        assert_eq!(read.len(), written.len());
        for ((we, ws), (re, rs)) in written.iter().zip(&read) {
            assert_eq!((we, fields(ws)), (re, fields(rs)));
        }
    }

    /// A reader takes from a chunk only what it does not know, at or above its boundary: a
    /// key below it may have been freed and landed on again since the chunk was written.
    /// The rest stays unknown, to be read from the manifests; so does all of a chunk that
    /// does not decode, which is reported for writing again.
    #[tokio::test]
    async fn a_chunk_gives_only_unknown_epochs_at_or_above_the_boundary() {
        let dir = tempfile::tempdir().unwrap();
        use crate::store::ReadStore;
        let store = crate::store::LocalStore::new(dir.path()).unwrap();
        let (good, bad) = (0..16, 16..32);
        let entries = (0..16).map(|e| (e, summary(100 + e, e.checked_sub(1), false, &[])));
        store
            .put(
                &chunk_key(&good),
                encode(&good, entries),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        store
            .put(
                &chunk_key(&bad),
                Bytes::from_static(b"{}"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let listed = store.list(CATALOG_PREFIX).await.unwrap();
        let mut c = Collector::default();
        let mut unknown = vec![3, 10, 12, 20];
        let unreadable = c.read_chunks(&store, &listed, &mut unknown, 10).await;
        assert_eq!(unknown, [3, 20]);
        assert_eq!(c.catalog.len(), 2);
        assert_eq!(c.catalog.get(12).map(|e| e.created_ms()), Some(112));
        assert_eq!(unreadable, BTreeSet::from([chunk_key(&bad)]));
    }

    /// A chunk whose bytes were changed, that sits at another range's key, or whose epochs
    /// leave its range is an error, never a catalog read wrong.
    #[test]
    fn a_damaged_or_misplaced_chunk_is_an_error() {
        let range = 0..16;
        let key = chunk_key(&range);
        let bytes = encode(&range, [(3, summary(5, Some(2), false, &[]))].into_iter());
        // (Not the final newline, which the seal's reader trims.)
        for i in 0..bytes.len() - 1 {
            let mut bad = bytes.to_vec();
            bad[i] ^= 0x01;
            assert!(
                decode_chunk(&bad, &key).is_err(),
                "byte {i} flipped was read"
            );
        }
        assert!(decode_chunk(&bytes, &chunk_key(&(16..32))).is_err());
        let outside = encode(&range, [(16, summary(5, Some(15), false, &[]))].into_iter());
        assert!(decode_chunk(&outside, &key).is_err());
        for key in [
            "gc/catalog/1-2",
            "gc/catalog/00000000000000000016-00000000000000000016",
            "gc/state",
        ] {
            assert_eq!(chunk_range(key), None, "{key}");
        }
    }
}
