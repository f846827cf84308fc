//! The bucket's layout: the keys of a filesystem's objects under its prefix (the format
//! marker, manifests, segments, the tip note) and the format marker's checks.

use bytes::Bytes;

use super::{now_ms, CheckpointError};
use crate::fs::PAGE_SIZE;
use crate::manifest::FormatError;
pub use crate::store::placement::MANIFESTS;
use crate::store::placement::WAL_SEGMENT_SUFFIX;
use crate::store::{ObjectStore, PutMode, ReadStore, StoreError};

/// The bucket's format marker, written once when a prefix is first used.
pub const FORMAT_KEY: &str = "bucketfs.json";
pub const BUCKET_FORMAT_VERSION: u32 = 1;
/// The version of a filesystem whose classes live in buckets of their own.
pub const SPLIT_FORMAT_VERSION: u32 = 2;

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
pub(super) const TIP_EVERY: u64 = 500;

/// What `TIP_KEY` holds: JSON with a version, sealed with a crc32c as GC's objects are.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct TipNote {
    version: u32,
    pub(super) epoch: u64,
    /// Written beside a clean stop's manifest (the epoch after `epoch`): until a writer
    /// starts again, that manifest is the newest, and a start asks for the manifests up to
    /// it beside its LIST. (A field a bucketfs before it ignores, and whose absence reads as
    /// false: the note is only a hint.)
    #[serde(default)]
    pub(super) stop: bool,
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
pub(super) async fn read_tip(store: &dyn ReadStore) -> Result<Option<TipNote>, String> {
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
pub(super) fn segment_key(epoch: u64, writer: &str, cut: u64, n: usize, wal: bool) -> String {
    let suffix = if wal { WAL_SEGMENT_SUFFIX } else { ".seg" };
    format!("segments/{epoch:020}-{writer}-{cut}-{n:04}{suffix}")
}

/// The cut a key `segment_key` made for `writer` names (None for any other key, a
/// compaction's among them).
pub(super) fn segment_cut(key: &str, writer: &str) -> Option<u64> {
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
pub(super) async fn ensure_format(store: &dyn ObjectStore) -> Result<(), CheckpointError> {
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
}
