//! Retry with exponential backoff and full jitter, for transient errors only.
//!
//! A conditional PUT (`Create` for a manifest commit, `Replace` for GC's state and boundary)
//! needs care: if the first attempt reached the store but its answer was lost, the retry finds
//! the key taken (or its ETag changed) and gets 412. That is not another writer's doing: the
//! object holds exactly our bytes. So after a transient failure, a 412 is checked against the
//! object's contents before it is believed.
//!
//! An error that retrying does not help (no such bucket, access denied) is returned at once,
//! and since the caller will meet it again on its next try, it is reported here, where the
//! retrying stops: counted, logged at ERROR (a person must act), and shown by /healthz until a
//! request of the same kind succeeds.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::{debug, error, info, warn};

use super::{ListPage, ObjectMeta, ObjectStore, PutMode, ReadStore, StoreError, StoreResult};

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt` (1 = the first retry): uniformly random up to
    /// base * 2^(attempt-1), capped ("full jitter", so retries of many callers spread out).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max_delay);
        cap.mul_f64(fastrand::f64())
    }
}

#[derive(Debug)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> RetryingStore {
        RetryingStore { inner, policy }
    }

    async fn retry<T, F, Fut>(&self, op: &'static str, key: &str, mut call: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = StoreResult<T>> + Send,
        T: Send,
    {
        let mut attempt = 0;
        loop {
            match report(op, key, call().await) {
                Err(e) if e.is_transient() && attempt + 1 < self.policy.max_attempts => {
                    attempt += 1;
                    let pause = self.policy.delay(attempt);
                    debug!(op, key, attempt, ?pause, error = %e, "retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(e) if e.is_transient() => {
                    warn!(op, key, attempts = attempt + 1, error = %e, "giving up after retries");
                    return Err(e);
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl ReadStore for RetryingStore {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        self.retry("get", key, || self.inner.get(key, range.clone()))
            .await
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.retry("head", key, || self.inner.head(key)).await
    }

    async fn list_after(&self, prefix: &str, after: Option<&str>) -> StoreResult<Vec<ObjectMeta>> {
        self.retry("list", prefix, || self.inner.list_after(prefix, after))
            .await
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>) -> StoreResult<ListPage> {
        self.retry("list", prefix, || self.inner.list_page(prefix, after))
            .await
    }

    async fn check(&self) -> StoreResult<()> {
        self.retry("check", "", || self.inner.check()).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        let mut attempt = 0;
        loop {
            let err = match report(
                "put",
                key,
                self.inner.put(key, body.clone(), mode.clone()).await,
            ) {
                Ok(etag) => return Ok(etag),
                Err(e) => e,
            };
            match err {
                StoreError::PreconditionFailed { .. }
                    if attempt > 0 && mode != PutMode::Overwrite =>
                {
                    return self.confirm_own_write(key, &body, err).await;
                }
                e if e.is_transient() && attempt + 1 < self.policy.max_attempts => {
                    attempt += 1;
                    let pause = self.policy.delay(attempt);
                    debug!(op = "put", key, attempt, ?pause, error = %e, "retrying");
                    tokio::time::sleep(pause).await;
                }
                e => {
                    if e.is_transient() {
                        warn!(op = "put", key, attempts = attempt + 1, error = %e, "giving up after retries");
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.retry("delete", key, || self.inner.delete(key)).await
    }
}

impl RetryingStore {
    /// A conditional PUT (`Create`, or `Replace` of an ETag) that failed transiently, then
    /// found its condition false on a retry: our earlier attempt landed if the object holds
    /// exactly our bytes, someone else's write did otherwise.
    async fn confirm_own_write(
        &self,
        key: &str,
        body: &Bytes,
        precondition: StoreError,
    ) -> StoreResult<String> {
        let existing = self.retry("get", key, || self.inner.get(key, None)).await?;
        if existing != *body {
            return Err(precondition);
        }
        debug!(
            key,
            "a retried conditional PUT found its own earlier attempt"
        );
        let meta = self.retry("head", key, || self.inner.head(key)).await?;
        Ok(meta.map(|m| m.etag).unwrap_or_default())
    }
}

/// Reports the outcome of one request to the store's health (see the module doc).
fn report<T>(op: &'static str, key: &str, result: StoreResult<T>) -> StoreResult<T> {
    let metrics = crate::metrics::global();
    match &result {
        Ok(_) => {
            if metrics.s3_succeeded(op) {
                info!(op, "the object store accepts this kind of request again");
            }
        }
        Err(e @ StoreError::Permanent { .. }) => {
            if let Some(unlogged) = metrics.s3_permanent_error(op, e.to_string()) {
                error!(
                    op,
                    key,
                    error = %e,
                    unlogged_repeats = unlogged,
                    "the object store refuses this request and retrying will not help: check \
                     the bucket, the credentials and the endpoint"
                );
            }
        }
        // Answers (404, 412) say nothing of the store's health; transient errors are retried
        // and show as latency and in the RPO.
        Err(_) => {}
    }
    result
}
