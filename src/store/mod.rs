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

/// One page of a listing (`ReadStore::list_page`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// In key order.
    pub objects: Vec<ObjectMeta>,
    /// Where the next page begins (list again after this key), or None after the last. Not
    /// always the last object's key: a wrapper may leave some of a page out.
    pub next: Option<String>,
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

/// The requests one `put` sent (`ObjectStore::put_sent`), by kind. Bytes are those of the
/// requests answered, as the server counts them: a multipart upload's parts' each as it is
/// answered, whether the upload completes or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// The PUT, or a multipart upload's create, parts and complete.
    pub puts: Count,
    /// The HEAD and the GET that check a multipart upload whose completion came back
    /// unreadable (bytes: what the GET read).
    pub heads: Count,
    pub gets: Count,
    /// A multipart upload's abort after a failure (an HTTP DELETE of the upload).
    pub deletes: Count,
}

/// Requests of one kind: how many, how many of them failed, the body bytes they carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub requests: u64,
    pub failed: u64,
    pub bytes: u64,
}

impl Count {
    /// One more request, answered with `result`, that carried `bytes` if it was answered.
    pub fn add<T>(&mut self, result: &StoreResult<T>, bytes: u64) {
        self.requests += 1;
        if is_failure(result) {
            self.failed += 1;
        } else {
            self.bytes += bytes;
        }
    }
}

impl Sent {
    /// One PUT of `bytes`, answered with `result`.
    pub fn one_put<T>(result: &StoreResult<T>, bytes: u64) -> Sent {
        let mut sent = Sent::default();
        sent.puts.add(result, bytes);
        sent
    }
}

/// Whether `result` is a request that failed: a missing object and a failed precondition
/// are answers.
fn is_failure<T>(result: &StoreResult<T>) -> bool {
    !matches!(
        result,
        Ok(_) | Err(StoreError::NotFound { .. } | StoreError::PreconditionFailed { .. })
    )
}

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

    /// The first page of `list_after`: one request's worth on S3 (up to 1,000 keys), so that
    /// a caller that keeps little of each key holds one page at a time rather than the whole
    /// listing (a GC pass over the millions of manifests a day of `--durability remote`
    /// commits). A store whose listing comes whole (a local directory, read in one go) hands
    /// it over as one page.
    async fn list_page(&self, prefix: &str, after: Option<&str>) -> StoreResult<ListPage> {
        Ok(ListPage {
            objects: self.list_after(prefix, after).await?,
            next: None,
        })
    }

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

    /// `put`, with the requests it sent: one PUT, unless the store sends more for one object
    /// (S3's multipart upload). What `InstrumentedStore` counts, so that the totals are the
    /// requests the server answered; a wrapper between it and the store passes it on.
    async fn put_sent(&self, key: &str, body: Bytes, mode: PutMode) -> (StoreResult<String>, Sent) {
        let len = body.len() as u64;
        let result = self.put(key, body, mode).await;
        let sent = Sent::one_put(&result, len);
        (result, sent)
    }

    /// Deletes an object; deleting one that does not exist is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;
}

/// The objects of `items` (at `key(item)`), fetched all at once and each decoded by `decode`,
/// in order; a failed GET is that item's error. What a caller that reads many objects
/// (manifests, chunks of GC's catalog, `verify`'s segments) does a window at a time: a round
/// trip per window, not per object.
pub async fn get_each<'a, I, T, E: From<StoreError>>(
    store: &dyn ReadStore,
    items: &'a [I],
    key: impl Fn(&I) -> String,
    decode: impl Fn(&I, &str, Bytes) -> Result<T, E>,
) -> Vec<(&'a I, String, Result<T, E>)> {
    let (key, decode) = (&key, &decode);
    futures_util::future::join_all(items.iter().map(|item| async move {
        let key = key(item);
        let got = match store.get(&key, None).await {
            Ok(bytes) => decode(item, &key, bytes),
            Err(e) => Err(e.into()),
        };
        (item, key, got)
    }))
    .await
}
