//! The object store seam: one trait, a real S3 implementation, a local directory, and wrappers
//! (retry, instrumentation, fault injection) that compose around any of them.
//!
//! Keys are plain `/`-separated strings relative to the store's prefix; the store adds the
//! prefix. Every method is async: the S3 client is, and the fs core reaches the store through
//! a tokio runtime handle from its own threads (see `checkpoint`).

pub mod faulty;
pub mod instrumented;
pub mod local;
pub mod placement;
pub mod retry;
pub mod s3;

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

pub use faulty::{FaultPlan, FaultyStore};
pub use instrumented::{InstrumentedStore, OpStats, StoreStats};
pub use local::LocalStore;
pub use retry::{RetryPolicy, RetryingStore};
pub use s3::{S3Settings, S3Store};

/// When a PUT may happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Always (create or overwrite).
    Overwrite,
    /// Only if no object has the key (`If-None-Match: *`): how manifests are committed, and so
    /// how two writers are fenced.
    Create,
    /// Only if the object's current ETag is this one (`If-Match`).
    Replace { etag: String },
}

/// What a listing or a HEAD says of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object not found: key={key}")]
    NotFound { key: String },
    /// `If-None-Match` or `If-Match` did not hold (HTTP 412). Never retried: for a manifest
    /// it means another writer took over.
    #[error("precondition failed: key={key}")]
    PreconditionFailed { key: String },
    /// Worth retrying: timeouts, connection errors, 5xx, throttling.
    #[error("{op} key={key}: {message} (transient)")]
    Transient {
        op: &'static str,
        key: String,
        message: String,
    },
    /// Not worth retrying: bad credentials, no such bucket, a malformed request.
    #[error("{op} key={key}: {message}")]
    Permanent {
        op: &'static str,
        key: String,
        message: String,
    },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// The reading half of an object store. A replica holds its bucket only through this trait:
/// it has no method that writes, so no path through a replica's code can PUT or DELETE
/// (issue 13: "a store handle that cannot write").
#[async_trait]
pub trait ReadStore: Send + Sync + fmt::Debug {
    /// Reads a whole object, or the byte range `range` of it (clamped to its end).
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes>;

    /// The object's size and ETag, or None if there is none.
    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.list_after(prefix, None).await
    }

    /// The same, only the keys that sort after `after` (S3's `StartAfter`): a caller that
    /// knows where the new keys begin reads only those, however many older ones the prefix
    /// holds (a restore and a replica's poll of `manifests/`, which grows with every commit).
    async fn list_after(&self, prefix: &str, after: Option<&str>) -> StoreResult<Vec<ObjectMeta>>;

    /// Checks that the store is reachable and the bucket exists, with the credentials given:
    /// called once before mounting so that bad configuration fails fast and clearly.
    async fn check(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Where this store points, for messages (never with credentials).
    fn describe(&self) -> String;
}

/// An object store: S3, a local directory, or a wrapper around one. A writer's handle.
#[async_trait]
pub trait ObjectStore: ReadStore {
    /// Writes a whole object. Returns its new ETag.
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String>;

    /// Deletes an object; deleting one that does not exist is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;
}
