//! What GC keeps in the bucket: its state (`gc/state`: what the last pass kept restorable,
//! and the objects waiting out their grace) and the boundary (`gc/boundary`) below which no
//! manifest belongs to the bucket, each a small JSON object sealed with a checksum.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::checkpoint::CheckpointError;
use crate::manifest::FormatError;
use crate::store::{ObjectStore, PutMode, ReadStore, StoreError};

/// Where the GC boundary lives: no manifest below it is part of the bucket.
pub const BOUNDARY_KEY: &str = "gc/boundary";
/// What the last pass kept restorable, and the objects found unneeded, waiting out their
/// grace.
pub const STATE_KEY: &str = "gc/state";
pub(super) const STATE_VERSION: u32 = 1;

/// The two small objects GC keeps in the bucket.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Boundary {
    version: u32,
    /// No manifest below this epoch belongs to the bucket any more.
    boundary: u64,
}

/// What GC keeps in `gc/state`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// When the pass that wrote it ran (unix ms), and with which retention.
    pub pass_ms: u64,
    pub window_ms: u64,
    pub min_checkpoints: u32,
    pub grace_ms: u64,
    /// Every checkpoint from this epoch on is restorable; older ones may have lost objects.
    /// Never lowered: what a pass with a shorter window collected cannot come back.
    pub oldest_retained: u64,
    /// The oldest checkpoint the pass that wrote this retained by its own retention, not
    /// raised by earlier passes as `oldest_retained` is: where compaction's floor starts in
    /// the next process, if it has the same retention (0: not recorded, as by a bucketfs
    /// before the thirty-ninth session).
    #[serde(default)]
    pub pass_oldest: u64,
    /// key → when a pass first found it unneeded (unix ms).
    pub pending: BTreeMap<String, u64>,
    /// Fences below the first needed manifest: kept for good, and known to be fences
    /// without reading them again.
    #[serde(default)]
    pub fences: BTreeSet<u64>,
}

/// The state the last GC pass left, if one ever ran (an unreadable one counts as none).
pub async fn read_state(store: &dyn ReadStore) -> Result<Option<State>, CheckpointError> {
    match store.get(STATE_KEY, None).await {
        Ok(bytes) => match unseal_json::<State>(&bytes, STATE_KEY) {
            Ok(s) if s.version == STATE_VERSION => Ok(Some(s)),
            Ok(s) => {
                warn!(
                    version = s.version,
                    "GC state of another version: starting a new one"
                );
                Ok(None)
            }
            Err(e) => {
                warn!(error = %e, "unreadable GC state: starting a new one (deletions wait one more grace)");
                Ok(None)
            }
        },
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The GC boundary: manifests below it are not part of the bucket (0: none collected yet).
pub async fn read_boundary(store: &dyn ReadStore) -> Result<u64, CheckpointError> {
    match store.get(BOUNDARY_KEY, None).await {
        Ok(bytes) => {
            let b: Boundary = unseal_json(&bytes, BOUNDARY_KEY)?;
            Ok(b.boundary)
        }
        Err(StoreError::NotFound { .. }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Raises the boundary to `to` (never lowers it). Conditional on the object being unchanged
/// since it was read, so two passes racing cannot lower it.
pub(super) async fn raise_boundary(
    store: &dyn ObjectStore,
    to: u64,
) -> Result<(), CheckpointError> {
    let mode = match store.head(BOUNDARY_KEY).await? {
        None => PutMode::Create,
        Some(meta) => {
            let b: Boundary = unseal_json(&store.get(BOUNDARY_KEY, None).await?, BOUNDARY_KEY)?;
            if b.boundary >= to {
                return Ok(());
            }
            PutMode::Replace { etag: meta.etag }
        }
    };
    let body = seal_json(&Boundary {
        version: STATE_VERSION,
        boundary: to,
    });
    match store.put(BOUNDARY_KEY, body, mode).await {
        Ok(_) => Ok(()),
        Err(StoreError::PreconditionFailed { .. }) => Err(CheckpointError::Refused(
            "the GC boundary changed while this pass raised it (another pass ran); deleting \
             nothing this time"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// A small JSON object as the bucket keeps it: sealed with a checksum (`cache::seal`).
pub(crate) fn unseal_json<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    key: &str,
) -> Result<T, FormatError> {
    let text = std::str::from_utf8(bytes).map_err(|_| FormatError::corrupt(key, "not UTF-8"))?;
    let body = crate::cache::unseal(text).map_err(|e| FormatError::corrupt(key, e))?;
    serde_json::from_str(body).map_err(|e| FormatError::corrupt(key, e.to_string()))
}

pub(crate) fn seal_json<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(crate::cache::seal(
        &serde_json::to_string(v).expect("a plain struct serializes"),
    ))
}
