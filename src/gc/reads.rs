//! What a pass reads of the manifests: those it does not know into the catalog, and a chain's,
//! each in windows of `CHAIN_WINDOW` GETs at once (`store::get_each`; the chunks of the
//! catalog, in chunks.rs, the same way): a round trip per window, not per object.

use std::collections::BTreeSet;

use bytes::Bytes;
use tracing::warn;

use super::{Collector, Summary};
use crate::checkpoint::{manifest_key, CheckpointError, CHAIN_WINDOW};
use crate::manifest::view::View;
use crate::manifest::Manifest;
use crate::store::{get_each, ReadStore, StoreError};

impl Collector {
    /// Reads the manifests `unknown` (in epoch order) into the catalog, `CHAIN_WINDOW` at a
    /// time: those committed since the last pass, and at a process's first pass those no
    /// chunk of the catalog gave. Returns those below the boundary that could not be read.
    pub(super) async fn read_unknown(
        &mut self,
        store: &dyn ReadStore,
        unknown: &[u64],
        boundary: u64,
    ) -> Result<BTreeSet<u64>, CheckpointError> {
        self.catalog.reserve(unknown.len());
        let read = self.read_windows(store, unknown, boundary).await;
        self.catalog.settle();
        read
    }

    /// `read_unknown`'s reads, appended to the catalog unsorted.
    async fn read_windows(
        &mut self,
        store: &dyn ReadStore,
        unknown: &[u64],
        boundary: u64,
    ) -> Result<BTreeSet<u64>, CheckpointError> {
        let mut unreadable: BTreeSet<u64> = BTreeSet::new();
        let summary = |&epoch: &u64, key: &str, bytes: Bytes| {
            Ok::<_, CheckpointError>(Summary::of(&Manifest::decode_at(&bytes, key, epoch)?))
        };
        for window in unknown.chunks(CHAIN_WINDOW) {
            let read = get_each(store, window, |&e| manifest_key(e), summary).await;
            let mut summaries = Vec::with_capacity(read.len());
            for (&epoch, key, s) in read {
                match s {
                    Ok(s) => summaries.push((epoch, s)),
                    Err(e) if epoch >= boundary => return Err(e),
                    // Below the boundary nothing reads it, and GC never frees a key it
                    // cannot class: it might be a fence.
                    Err(CheckpointError::Store(StoreError::NotFound { .. })) => {} // deleted since
                    Err(e) => {
                        warn!(key, error = %e, "an object below the GC boundary that cannot be read is kept");
                        unreadable.insert(epoch);
                    }
                }
            }
            self.catalog.append(summaries);
        }
        Ok(unreadable)
    }
}

/// The view a chain builds (`epochs` newest first, as `chain_epochs` gives them), its
/// manifests fetched `CHAIN_WINDOW` at a time rather than one round trip each: a chain may be
/// 128 manifests long.
pub(super) async fn chain_view(
    store: &dyn ReadStore,
    epochs: &[u64],
) -> Result<View, CheckpointError> {
    let oldest_first: Vec<u64> = epochs.iter().rev().copied().collect();
    let mut view = View::default();
    let decode =
        |_: &u64, key: &str, bytes: Bytes| Ok::<_, CheckpointError>(Manifest::decode(&bytes, key)?);
    for window in oldest_first.chunks(CHAIN_WINDOW) {
        for (_, _, m) in get_each(store, window, |&e| manifest_key(e), decode).await {
            view.apply(&m?);
        }
    }
    Ok(view)
}
