//! What the status of an attached bucket is read from.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::hot::PrewarmProgress;
use crate::checkpoint::Checkpointer;
use crate::replica::Follower;
use crate::store::StoreStats;

/// What the status of an attached bucket is read from.
pub struct Probe {
    pub(super) url: String,
    pub(super) writer: Option<String>,
    pub(super) view: Arc<parking_lot::RwLock<crate::manifest::view::View>>,
    pub(super) checkpointer: Option<Arc<Checkpointer>>,
    pub(super) store_stats: Arc<StoreStats>,
    pub(super) prewarm: Arc<PrewarmProgress>,
    pub(super) replica: Option<Arc<Follower>>,
}

impl Probe {
    pub fn status(&self) -> crate::status::BucketStatus {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.store_stats;
        let store = [
            ("put", &s.put),
            ("get", &s.get),
            ("head", &s.head),
            ("list", &s.list),
            ("delete", &s.delete),
        ]
        .into_iter()
        .map(|(op, o)| crate::status::StoreOpStatus {
            op: op.into(),
            requests: n(&o.requests),
            errors: n(&o.errors),
            bytes: n(&o.bytes),
            seconds: n(&o.micros) as f64 / 1e6,
        })
        .collect();
        crate::status::BucketStatus {
            url: self.url.clone(),
            writer: self.writer.clone(),
            epoch: self.view.read().epoch,
            checkpoints: self.checkpointer.as_ref().map(|cp| {
                let t = cp.totals();
                crate::status::CheckpointStatus {
                    committed: t.checkpoints,
                    failed: t.failures,
                    segment_bytes: t.segment_bytes,
                    last_commit_unix_ms: t.last_commit_ms,
                    last_error: t.last_error,
                }
            }),
            store,
            prewarm: self.prewarm.status(),
            gc: self.checkpointer.as_ref().and_then(|cp| cp.last_gc()),
            replica: self.replica.as_ref().map(|f| f.status()),
        }
    }

    pub fn checkpointer(&self) -> Option<Arc<Checkpointer>> {
        self.checkpointer.clone()
    }

    pub fn follower(&self) -> Option<Arc<Follower>> {
        self.replica.clone()
    }
}
