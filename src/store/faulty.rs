//! A fault-injecting wrapper for tests: transient errors at a rate, added latency, an outage
//! (of every call, or of writes only) that can be switched on and off, a hang, forced 412s
//! on creates, and request counters. Every knob can be turned while the store is in use, so
//! a test can open and close an outage window in the middle of a workload.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{ListPage, ObjectMeta, ObjectStore, PutMode, ReadStore, StoreError, StoreResult};

/// The faults to inject, shared between the store and the test that steers it.
pub struct FaultPlan {
    /// Probability (0.0 to 1.0) that a call fails with a transient error.
    error_rate: Mutex<f64>,
    /// Added before every call.
    latency: Mutex<Duration>,
    /// While set, every call fails with a transient error.
    outage: AtomicBool,
    /// While set, every PUT and DELETE fails with a transient error; reads are answered.
    writes_refused: AtomicBool,
    /// While true, calls wait (they neither fail nor succeed).
    hang: watch::Sender<bool>,
    /// The next N `Create` PUTs fail with 412, as if another writer had committed first.
    forced_preconditions: AtomicU32,
    /// The next N manifest PUTs that succeed answer with a transient error: the object
    /// landed, the answer was lost on the way back. (Manifests only: a tip note goes out
    /// beside a manifest, and must not take its lost answer.)
    lost_answers: AtomicU32,
    /// Calls made, by kind.
    puts: AtomicU64,
    gets: AtomicU64,
    get_bytes: AtomicU64,
    put_bytes: AtomicU64,
    /// Keys LISTs returned.
    listed: AtomicU64,
    /// GETs under way now, and the most there were at once.
    gets_in_flight: AtomicU64,
    most_gets_in_flight: AtomicU64,
    /// Called with the key at the start of every PUT (before any fault): a test's look at
    /// what the writer is doing as each upload begins.
    on_put: Mutex<Option<PutObserver>>,
    /// GETs of the keys this picks wait until it is cleared (`release_gets`): a slow answer,
    /// or one lost on the way for good.
    held_gets: watch::Sender<Option<KeyFilter>>,
    /// GETs `held_gets` has held.
    gets_held: AtomicU64,
    /// The next GET of a key this picks answers NotFound (`miss_once`).
    missed_once: Mutex<Option<KeyFilter>>,
    round_trips: RoundTrips,
}

type PutObserver = Arc<dyn Fn(&str) + Send + Sync>;
type KeyFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            error_rate: Mutex::new(0.0),
            latency: Mutex::new(Duration::ZERO),
            outage: AtomicBool::new(false),
            writes_refused: AtomicBool::new(false),
            hang: watch::channel(false).0,
            forced_preconditions: AtomicU32::new(0),
            lost_answers: AtomicU32::new(0),
            puts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            get_bytes: AtomicU64::new(0),
            put_bytes: AtomicU64::new(0),
            listed: AtomicU64::new(0),
            gets_in_flight: AtomicU64::new(0),
            most_gets_in_flight: AtomicU64::new(0),
            on_put: Mutex::new(None),
            held_gets: watch::channel(None).0,
            gets_held: AtomicU64::new(0),
            missed_once: Mutex::new(None),
            round_trips: RoundTrips::default(),
        }
    }
}

/// Request counts seen by a `FaultyStore` (including failed ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub puts: u64,
    pub gets: u64,
    pub put_bytes: u64,
    pub get_bytes: u64,
    /// Keys LISTs returned.
    pub listed: u64,
}

impl std::fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultPlan")
            .field("error_rate", &*self.error_rate.lock())
            .field("latency", &*self.latency.lock())
            .field("outage", &self.outage)
            .field("writes_refused", &self.writes_refused)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl FaultPlan {
    /// Calls `f(key)` as every PUT starts.
    pub fn on_put(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self.on_put.lock() = Some(Arc::new(f));
    }
    /// From now on, a GET of a key `f` picks waits until `release_gets` (for ever without
    /// it); the other calls are answered.
    pub fn hold_gets(&self, f: impl Fn(&str) -> bool + Send + Sync + 'static) {
        self.held_gets.send_replace(Some(Arc::new(f)));
    }
    /// Answers the GETs `hold_gets` holds, and holds no more.
    pub fn release_gets(&self) {
        self.held_gets.send_replace(None);
    }
    /// GETs `hold_gets` has held so far.
    pub fn gets_held(&self) -> u64 {
        self.gets_held.load(Ordering::SeqCst)
    }
    /// The next GET of a key `f` picks answers NotFound, as one sent just before the object
    /// landed would; the GETs after it are answered.
    pub fn miss_once(&self, f: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.missed_once.lock() = Some(Arc::new(f));
    }
    pub fn set_error_rate(&self, rate: f64) {
        *self.error_rate.lock() = rate.clamp(0.0, 1.0);
    }
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock() = latency;
    }
    pub fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
    }
    /// An outage of the bucket's writes only: what a checkpoint uploads fails, while a
    /// read that runs beside it (a writer's fill) is answered.
    pub fn refuse_writes(&self, on: bool) {
        self.writes_refused.store(on, Ordering::SeqCst);
    }
    pub fn set_hang(&self, on: bool) {
        self.hang.send_replace(on);
    }
    pub fn force_preconditions(&self, n: u32) {
        self.forced_preconditions.store(n, Ordering::SeqCst);
    }
    pub fn lose_answers(&self, n: u32) {
        self.lost_answers.store(n, Ordering::SeqCst);
    }
    /// The most GETs that were under way at once (with latency set, requests a caller makes
    /// one after another never overlap).
    pub fn most_gets_in_flight(&self) -> u64 {
        self.most_gets_in_flight.load(Ordering::SeqCst)
    }
    /// Round trips since the last `reset_round_trips` (`RoundTrips`); with latency set, a
    /// caller's requests sent together are all under way before any is answered.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.deepest()
    }
    pub fn reset_round_trips(&self) {
        self.round_trips.reset();
    }
    pub fn counts(&self) -> Counts {
        Counts {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            put_bytes: self.put_bytes.load(Ordering::Relaxed),
            get_bytes: self.get_bytes.load(Ordering::Relaxed),
            listed: self.listed.load(Ordering::Relaxed),
        }
    }
}

/// Round trips to a store, for tests (`FaultPlan`, and the S3 server of the integration
/// tests): the longest chain of requests each of which began after the one before it was
/// answered, which is what a caller waits for at a given latency. A request's depth is one
/// more than the deepest answered when it began, so requests sent at once count once, as
/// long as all of them begin before any is answered (add latency).
#[derive(Debug, Default)]
pub struct RoundTrips {
    answered: AtomicU64,
    deepest: AtomicU64,
}

impl RoundTrips {
    /// Counts a request as it begins; the guard counts it answered when dropped.
    pub fn begin(&self) -> Trip<'_> {
        let depth = self.answered.load(Ordering::SeqCst) + 1;
        self.deepest.fetch_max(depth, Ordering::SeqCst);
        Trip { trips: self, depth }
    }
    /// The deepest request begun since the last `reset`.
    pub fn deepest(&self) -> u64 {
        self.deepest.load(Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.answered.store(0, Ordering::SeqCst);
        self.deepest.store(0, Ordering::SeqCst);
    }
}

/// One request under way (`RoundTrips::begin`).
pub struct Trip<'a> {
    trips: &'a RoundTrips,
    /// The round trip it belongs to.
    pub depth: u64,
}

impl Drop for Trip<'_> {
    fn drop(&mut self) {
        self.trips.answered.fetch_max(self.depth, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<FaultPlan>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: Arc<FaultPlan>) -> FaultyStore {
        FaultyStore { inner, plan }
    }

    /// Applies latency, hang, outage and the error rate to one call.
    async fn before(&self, op: &'static str, key: &str) -> StoreResult<()> {
        let latency = *self.plan.latency.lock();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut hang = self.plan.hang.subscribe();
        // Err only if the sender is gone, and the plan owns it: it cannot be.
        let _ = hang.wait_for(|h| !*h).await;
        let write = matches!(op, "put" | "delete");
        let fail = self.plan.outage.load(Ordering::SeqCst)
            || (write && self.plan.writes_refused.load(Ordering::SeqCst))
            || {
                let rate = *self.plan.error_rate.lock();
                rate > 0.0 && fastrand::f64() < rate
            };
        if fail {
            return Err(StoreError::Transient {
                op,
                key: key.into(),
                message: "injected fault".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ReadStore for FaultyStore {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        let _trip = self.plan.round_trips.begin();
        self.plan.gets.fetch_add(1, Ordering::Relaxed);
        let now = self.plan.gets_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.plan
            .most_gets_in_flight
            .fetch_max(now, Ordering::SeqCst);
        struct Done<'a>(&'a AtomicU64);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _done = Done(&self.plan.gets_in_flight);
        let mut held = self.plan.held_gets.subscribe();
        let picked = held.borrow().as_ref().is_some_and(|f| f(key));
        if picked {
            self.plan.gets_held.fetch_add(1, Ordering::SeqCst);
            // Err only if the sender is gone, and the plan owns it: it cannot be.
            let _ = held.wait_for(|f| f.is_none()).await;
        }
        self.before("get", key).await?;
        let missed = {
            let mut once = self.plan.missed_once.lock();
            let picked = once.as_ref().is_some_and(|f| f(key));
            if picked {
                *once = None;
            }
            picked
        };
        if missed {
            return Err(StoreError::NotFound { key: key.into() });
        }
        let bytes = self.inner.get(key, range).await?;
        self.plan
            .get_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let _trip = self.plan.round_trips.begin();
        self.before("head", key).await?;
        self.inner.head(key).await
    }

    async fn list_after(&self, prefix: &str, after: Option<&str>) -> StoreResult<Vec<ObjectMeta>> {
        let _trip = self.plan.round_trips.begin();
        self.before("list", prefix).await?;
        let listed = self.inner.list_after(prefix, after).await?;
        self.plan
            .listed
            .fetch_add(listed.len() as u64, Ordering::Relaxed);
        Ok(listed)
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>) -> StoreResult<ListPage> {
        let _trip = self.plan.round_trips.begin();
        self.before("list", prefix).await?;
        let page = self.inner.list_page(prefix, after).await?;
        self.plan
            .listed
            .fetch_add(page.objects.len() as u64, Ordering::Relaxed);
        Ok(page)
    }

    async fn check(&self) -> StoreResult<()> {
        let _trip = self.plan.round_trips.begin();
        self.before("check", "").await?;
        self.inner.check().await
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        let _trip = self.plan.round_trips.begin();
        let observer = self.plan.on_put.lock().clone();
        if let Some(f) = observer {
            f(key);
        }
        self.plan.puts.fetch_add(1, Ordering::Relaxed);
        self.plan
            .put_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        self.before("put", key).await?;
        if mode == PutMode::Create
            && self
                .plan
                .forced_preconditions
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::PreconditionFailed { key: key.into() });
        }
        let etag = self.inner.put(key, body, mode).await?;
        if key.starts_with(super::placement::MANIFESTS)
            && self
                .plan
                .lost_answers
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Transient {
                op: "put",
                key: key.into(),
                message: "injected fault: the answer was lost".into(),
            });
        }
        Ok(etag)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let _trip = self.plan.round_trips.begin();
        self.before("delete", key).await?;
        self.inner.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalStore, RetryPolicy, RetryingStore};

    fn stack() -> (tempfile::TempDir, Arc<FaultPlan>, RetryingStore) {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let plan = Arc::new(FaultPlan::default());
        let faulty: Arc<dyn ObjectStore> = Arc::new(FaultyStore::new(local, plan.clone()));
        let policy = RetryPolicy {
            max_attempts: 50,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
        };
        (dir, plan, RetryingStore::new(faulty, policy))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_ride_out_an_error_rate() {
        let (_d, plan, store) = stack();
        plan.set_error_rate(0.5);
        for i in 0..20 {
            let key = format!("k/{i}");
            store
                .put(&key, Bytes::from(vec![i as u8; 10]), PutMode::Overwrite)
                .await
                .unwrap();
            assert_eq!(store.get(&key, None).await.unwrap(), vec![i as u8; 10]);
        }
        assert!(
            plan.counts().puts > 20,
            "no fault was injected: {:?}",
            plan.counts()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_ends_in_failure_after_the_last_attempt() {
        let (_d, plan, store) = stack();
        plan.set_outage(true);
        let err = store
            .put("k", Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(plan.counts().puts, 50);
        plan.set_outage(false);
        store
            .put("k", Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_412_is_not_retried() {
        let (_d, plan, store) = stack();
        plan.force_preconditions(1);
        let err = store
            .put("m/1", Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed { .. }));
        assert_eq!(plan.counts().puts, 1);
        store
            .put("m/1", Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();
    }

    /// A retrying store over `local` whose calls fail until the outage it starts with is
    /// lifted (`set_outage(false)`).
    fn retrying_through_an_outage(local: &Arc<dyn ObjectStore>) -> (Arc<FaultPlan>, RetryingStore) {
        let plan = Arc::new(FaultPlan::default());
        let faulty: Arc<dyn ObjectStore> = Arc::new(FaultyStore::new(local.clone(), plan.clone()));
        plan.set_outage(true);
        (plan, RetryingStore::new(faulty, RetryPolicy::default()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_create_that_had_landed_is_recognised_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        // The first attempt lands but its answer is lost: simulate by writing it directly,
        // then failing the wrapper's first call.
        local
            .put("m/7", Bytes::from_static(b"ours"), PutMode::Create)
            .await
            .unwrap();
        let (plan, store) = retrying_through_an_outage(&local);
        let retry = tokio::spawn(async move {
            let ours = store
                .put("m/7", Bytes::from_static(b"ours"), PutMode::Create)
                .await;
            let theirs = store
                .put("m/7", Bytes::from_static(b"theirs"), PutMode::Create)
                .await;
            (ours, theirs)
        });
        // Let the first attempt fail, then lift the outage for the retry.
        while plan.counts().puts == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        plan.set_outage(false);
        let (ours, theirs) = retry.await.unwrap();
        ours.expect("our own earlier create is success");
        assert!(matches!(theirs, Err(StoreError::PreconditionFailed { .. })));
    }

    // A `Replace` whose first attempt landed but whose answer was lost: the retry finds the
    // ETag changed, by its own write (GC's state, the boundary).
    #[tokio::test(start_paused = true)]
    async fn a_retried_replace_that_had_landed_is_recognised_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let first = local
            .put("gc/s", Bytes::from_static(b"v1"), PutMode::Create)
            .await
            .unwrap();
        // The first attempt's write, landed.
        local
            .put("gc/s", Bytes::from_static(b"v2"), PutMode::Overwrite)
            .await
            .unwrap();
        let (plan, store) = retrying_through_an_outage(&local);
        let replace = |body: &'static [u8]| {
            store.put(
                "gc/s",
                Bytes::from_static(body),
                PutMode::Replace {
                    etag: first.clone(),
                },
            )
        };
        let retry = async {
            let ours = replace(b"v2").await;
            let theirs = replace(b"v3").await;
            (ours, theirs)
        };
        let lift = async {
            while plan.counts().puts == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            plan.set_outage(false);
        };
        let ((ours, theirs), ()) = tokio::join!(retry, lift);
        ours.expect("our own earlier replace is success");
        assert!(matches!(theirs, Err(StoreError::PreconditionFailed { .. })));
        assert_eq!(local.get("gc/s", None).await.unwrap(), &b"v2"[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hang_holds_calls_until_released() {
        let (_d, plan, store) = stack();
        plan.set_hang(true);
        let mut call = tokio::spawn(async move {
            store
                .put("k", Bytes::from_static(b"x"), PutMode::Overwrite)
                .await
        });
        // A minute of (paused, auto-advancing) time passes with the call still waiting.
        let waited = tokio::time::timeout(Duration::from_secs(60), &mut call).await;
        assert!(waited.is_err(), "a call went through a hang");
        plan.set_hang(false);
        call.await.unwrap().unwrap();
    }
}
