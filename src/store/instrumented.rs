//! Counts what a store does: requests, bytes, errors and time, per kind of request, and traces
//! each request at debug level. It sits inside the retry wrapper, so every attempt counts:
//! these are the requests the provider bills and the errors it returned.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::debug;

use super::{
    Count, ListPage, ObjectMeta, ObjectStore, PutMode, ReadStore, StoreError, StoreResult,
};

/// Counters of one kind of request.
#[derive(Debug, Default)]
pub struct OpStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Body bytes sent (PUT) or received (GET).
    pub bytes: AtomicU64,
    pub micros: AtomicU64,
}

impl OpStats {
    fn record<T>(&self, started: Instant, result: &StoreResult<T>, bytes: u64) {
        let mut count = Count::default();
        count.add(result, bytes);
        self.add(&count);
        self.micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn add(&self, count: &Count) {
        self.requests.fetch_add(count.requests, Ordering::Relaxed);
        self.errors.fetch_add(count.failed, Ordering::Relaxed);
        self.bytes.fetch_add(count.bytes, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct StoreStats {
    pub put: OpStats,
    pub get: OpStats,
    pub head: OpStats,
    pub list: OpStats,
    pub delete: OpStats,
    /// Conditional PUTs refused with 412 (a manifest another writer committed first).
    pub precondition_failed: AtomicU64,
}

impl StoreStats {
    /// Adds `other`'s counts to these: the requests of a store given up for another.
    pub fn absorb(&self, other: &StoreStats) {
        let pairs = [
            (&self.put, &other.put),
            (&self.get, &other.get),
            (&self.head, &other.head),
            (&self.list, &other.list),
            (&self.delete, &other.delete),
        ];
        for (to, from) in pairs {
            for (t, f) in [
                (&to.requests, &from.requests),
                (&to.errors, &from.errors),
                (&to.bytes, &from.bytes),
                (&to.micros, &from.micros),
            ] {
                t.fetch_add(f.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        let refused = other.precondition_failed.load(Ordering::Relaxed);
        self.precondition_failed
            .fetch_add(refused, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    stats: Arc<StoreStats>,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> InstrumentedStore {
        InstrumentedStore::with_stats(inner, Arc::default())
    }

    /// Counting into `stats`, which other stores may count into too (one total for the
    /// requests a mount sends through several).
    pub fn with_stats(inner: Arc<dyn ObjectStore>, stats: Arc<StoreStats>) -> InstrumentedStore {
        InstrumentedStore { inner, stats }
    }

    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }
}

#[async_trait]
impl ReadStore for InstrumentedStore {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        let started = Instant::now();
        let r = self.inner.get(key, range).await;
        let len = r.as_ref().map_or(0, |b| b.len() as u64);
        self.stats.get.record(started, &r, len);
        crate::metrics::global().s3_request("get", key, started.elapsed());
        debug!(
            key,
            bytes = len,
            ok = r.is_ok(),
            us = started.elapsed().as_micros() as u64,
            "GET"
        );
        r
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let started = Instant::now();
        let r = self.inner.head(key).await;
        self.stats.head.record(started, &r, 0);
        crate::metrics::global().s3_request("head", key, started.elapsed());
        r
    }

    async fn list_after(&self, prefix: &str, after: Option<&str>) -> StoreResult<Vec<ObjectMeta>> {
        let started = Instant::now();
        let r = self.inner.list_after(prefix, after).await;
        self.stats.list.record(started, &r, 0);
        crate::metrics::global().s3_request("list", prefix, started.elapsed());
        r
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>) -> StoreResult<ListPage> {
        let started = Instant::now();
        let r = self.inner.list_page(prefix, after).await;
        self.stats.list.record(started, &r, 0);
        crate::metrics::global().s3_request("list", prefix, started.elapsed());
        r
    }

    async fn check(&self) -> StoreResult<()> {
        // A HEAD of the bucket, billed as a HEAD of an object is.
        let started = Instant::now();
        let r = self.inner.check().await;
        self.stats.head.record(started, &r, 0);
        crate::metrics::global().s3_request("head", "", started.elapsed());
        r
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        let (started, len) = (Instant::now(), body.len() as u64);
        let (r, sent) = self.inner.put_sent(key, body, mode).await;
        if matches!(r, Err(StoreError::PreconditionFailed { .. })) {
            self.stats
                .precondition_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        // Every request the put sent: a multipart upload's create, parts and complete each
        // count as a PUT, as the provider bills them. The time is all the PUT's: the whole
        // upload's, a check's HEAD and GET and an abort included.
        let s = &self.stats;
        s.put.add(&sent.puts);
        s.put
            .micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        s.head.add(&sent.heads);
        s.get.add(&sent.gets);
        s.delete.add(&sent.deletes);
        crate::metrics::global().s3_request("put", key, started.elapsed());
        debug!(
            key,
            bytes = len,
            ok = r.is_ok(),
            us = started.elapsed().as_micros() as u64,
            "PUT"
        );
        r
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let started = Instant::now();
        let r = self.inner.delete(key).await;
        self.stats.delete.record(started, &r, 0);
        crate::metrics::global().s3_request("delete", key, started.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultPlan, FaultyStore, LocalStore};

    #[tokio::test]
    async fn counts_requests_bytes_and_errors_but_not_answers() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let store = InstrumentedStore::new(local);
        let s = store.stats();
        store
            .put("a", Bytes::from_static(b"hello"), PutMode::Overwrite)
            .await
            .unwrap();
        assert!(matches!(
            store
                .put("a", Bytes::from_static(b"x"), PutMode::Create)
                .await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert_eq!(&store.get("a", Some(1..3)).await.unwrap()[..], b"el");
        assert!(store.get("missing", None).await.is_err());
        assert_eq!(s.put.requests.load(Ordering::Relaxed), 2);
        assert_eq!(s.put.bytes.load(Ordering::Relaxed), 6);
        assert_eq!(s.put.errors.load(Ordering::Relaxed), 0);
        assert_eq!(s.precondition_failed.load(Ordering::Relaxed), 1);
        assert_eq!(s.get.requests.load(Ordering::Relaxed), 2);
        assert_eq!(s.get.bytes.load(Ordering::Relaxed), 2);
        assert_eq!(s.get.errors.load(Ordering::Relaxed), 0);

        // A store that fails every request: each attempt is an error.
        let plan = Arc::new(FaultPlan::default());
        plan.set_outage(true);
        let failing: Arc<dyn ObjectStore> = Arc::new(FaultyStore::new(
            Arc::new(LocalStore::new(dir.path()).unwrap()),
            plan,
        ));
        let store = InstrumentedStore::new(failing);
        assert!(store.get("a", None).await.is_err());
        assert_eq!(store.stats().get.errors.load(Ordering::Relaxed), 1);
    }
}
