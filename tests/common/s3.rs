//! A real S3 protocol server for tests: s3s-fs (objects as files) served in-process on
//! 127.0.0.1, behind a wrapper that counts requests and can inject faults (an outage, added
//! latency) while the test runs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bucketfs::store::faulty::RoundTrips;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

pub const ACCESS_KEY: &str = "bucketfs-test-access";
pub const SECRET_KEY: &str = "bucketfs-test-secret-do-not-log";
pub const BUCKET: &str = "pgdata";

/// Knobs and counters shared between the test and the server.
#[derive(Debug, Default)]
pub struct Faults {
    /// While set, every request answers 503 ServiceUnavailable.
    pub outage: AtomicBool,
    /// Milliseconds added to every request.
    pub latency_ms: AtomicU64,
    /// When N > 0, every Nth request answers 503 SlowDown: a steady error rate.
    pub fail_every: AtomicU64,
    /// Requests seen, and how many of them `fail_every` failed.
    pub requests: AtomicU64,
    pub injected_errors: AtomicU64,
    pub puts: AtomicU64,
    /// Bytes of object bodies uploaded (PUTs and parts).
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    /// GETs of file contents (segment objects, and ranged GETs of runs a manifest carries),
    /// as opposed to reads of whole manifests and the marker.
    pub segment_gets: AtomicU64,
    /// The next N manifest PUTs are stored, then answered 503 and followed by an outage
    /// (until the test lifts it): a commit that happened but whose answer was lost.
    pub lose_manifest_answers: AtomicU64,
    /// Parts uploaded by multipart uploads.
    pub parts: AtomicU64,
    /// The next N CompleteMultipartUpload requests answer 503 (their parts stay uploaded).
    pub fail_completes: AtomicU64,
    /// PUTs answered with an error, storing nothing: the first PUT of a key that starts with
    /// an entry's prefix (within the bucket's prefix) takes that entry. S3's 4xx answers that
    /// a retry may get past: 400 RequestTimeout for an upload whose body stalled, 409
    /// ConditionalRequestConflict for conditional writes racing.
    pub fail_puts_with: std::sync::Mutex<Vec<(&'static str, s3s::S3ErrorCode)>>,
    /// When N > 0, a LIST page holds at most N keys (S3's MaxKeys; a server may hand back
    /// fewer than 1000).
    pub list_page_keys: AtomicU64,
    /// A LIST that ignores StartAfter, answering from the prefix's first key again.
    pub list_ignores_start_after: AtomicBool,
    /// A LIST answered with no keys and "truncated": a page that leads nowhere.
    pub list_truncated_empty: AtomicBool,
    /// Every PUT and multipart upload start: where it went and the region header it carried.
    pub put_log: std::sync::Mutex<Vec<PutSeen>>,
    /// The key of every GET, in the order they came (before any latency or fault).
    pub get_log: std::sync::Mutex<Vec<String>>,
    /// While it holds a key, GETs of that key wait, neither answered nor failed, until it is
    /// cleared (`hold_gets_of`, `release_gets`).
    held: tokio::sync::watch::Sender<Option<String>>,
    gets_held: AtomicU64,
    /// HEADs of a bucket, and GETs of a format marker (`bucketfs.json`).
    pub head_buckets: AtomicU64,
    pub head_objects: AtomicU64,
    pub marker_gets: AtomicU64,
    /// Round trips, and the one of the first manifest PUT since `reset_round_trips` (0:
    /// none).
    trips: RoundTrips,
    first_manifest_put: AtomicU64,
}

/// One object write as the server saw it.
#[derive(Clone, Debug)]
pub struct PutSeen {
    pub bucket: String,
    pub key: String,
    /// The `X-Tigris-Regions` header, if the request had one.
    pub regions: Option<String>,
}

impl Faults {
    fn log_put(&self, bucket: &str, key: &str, regions: Option<String>) {
        self.put_log.lock().expect("put log").push(PutSeen {
            bucket: bucket.into(),
            key: key.into(),
            regions,
        });
    }
    pub fn put_log(&self) -> Vec<PutSeen> {
        self.put_log.lock().expect("put log").clone()
    }
    /// The keys GETs asked for since the last call, in the order they came.
    pub fn take_get_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.get_log.lock().expect("get log"))
    }
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }
    pub fn segment_gets(&self) -> u64 {
        self.segment_gets.load(Ordering::SeqCst)
    }
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }
    /// The round trip (`RoundTrips`: requests sent at once count once, with `latency_ms` set
    /// so that all of them arrive before any is answered) in which the first manifest PUT
    /// since `reset_round_trips` arrived (a writer's takeover, or its first checkpoint); 0 if
    /// none has.
    pub fn first_manifest_put_trip(&self) -> u64 {
        self.first_manifest_put.load(Ordering::SeqCst)
    }
    pub fn reset_round_trips(&self) {
        self.trips.reset();
        self.first_manifest_put.store(0, Ordering::SeqCst);
    }
    /// From now on GETs of `key` (the whole key, in the bucket) wait until `release_gets`.
    pub fn hold_gets_of(&self, key: &str) {
        self.held.send_replace(Some(key.into()));
    }
    pub fn release_gets(&self) {
        self.held.send_replace(None);
    }
    /// GETs `hold_gets_of` has held so far.
    pub fn gets_held(&self) -> u64 {
        self.gets_held.load(Ordering::SeqCst)
    }
}

/// The `X-Tigris-Regions` header of a request.
fn regions_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-tigris-regions")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

struct Faulty {
    inner: Arc<s3s_fs::FileSystem>,
    faults: Arc<Faults>,
    /// Held by a conditional PUT (If-None-Match, If-Match) from its check to its answer (the
    /// body's upload, the rename and the ETag's record, so that an If-Match after it compares
    /// with the new ETag). s3s-fs checks the condition, then writes the body and renames it
    /// in: of creates of one key sent at once, up to all of them succeeded
    /// (tests/store_contract.rs, `racing_creates`), so a takeover's fence and the fenced
    /// writer's commit of the same epoch could both land. S3 decides a condition and the
    /// write as one; so does this. (bucketfs sends no conditional CompleteMultipartUpload:
    /// only `Overwrite` goes up in parts.) One for the server, taken inside the PUT's task
    /// and held while the body arrives: an upload that stalled would hold up every
    /// conditional PUT, and no test stalls one.
    conditional: Arc<tokio::sync::Mutex<()>>,
}

impl Faulty {
    async fn gate(&self) -> S3Result<()> {
        let ms = self.faults.latency_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if self.faults.outage.load(Ordering::SeqCst) {
            return Err(s3_error!(ServiceUnavailable, "injected outage"));
        }
        let n = self.faults.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let every = self.faults.fail_every.load(Ordering::SeqCst);
        if every > 0 && n.is_multiple_of(every) {
            self.faults.injected_errors.fetch_add(1, Ordering::SeqCst);
            return Err(s3_error!(SlowDown, "injected error"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3 for Faulty {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let trip = self.faults.trips.begin();
        self.faults.puts.fetch_add(1, Ordering::SeqCst);
        let manifest = req.input.key.contains("manifests/");
        if manifest {
            let _ = self.faults.first_manifest_put.compare_exchange(
                0,
                trip.depth,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        self.gate().await?;
        let fail = {
            let mut fail = self.faults.fail_puts_with.lock().expect("faults");
            let key = req.input.key.split_once('/').map_or("", |(_, rest)| rest);
            let at = fail.iter().position(|(prefix, _)| key.starts_with(prefix));
            at.map(|i| fail.remove(i).1)
        };
        if let Some(code) = fail {
            self.faults.injected_errors.fetch_add(1, Ordering::SeqCst);
            return Err(s3s::S3Error::with_message(code, "injected"));
        }
        self.faults
            .log_put(&req.input.bucket, &req.input.key, regions_of(&req.headers));
        let len = req.input.content_length.unwrap_or(0) as u64;
        let conditional = req.input.if_none_match.is_some() || req.input.if_match.is_some();
        // Run to its end even if the client goes away meanwhile (a writer killed mid-PUT):
        // s3s-fs renames the object in, then records its ETag and checksums in a file of its
        // own, and a PUT dropped in between left the object beside the last one's record, so
        // that every GET of it after failed the SDK's checksum check (a primary killed while
        // its GC wrote gc/state left its replica unable to read it, tests/replica.rs). S3
        // stores an object whole or not at all.
        let (inner, lock) = (self.inner.clone(), self.conditional.clone());
        let resp = tokio::spawn(async move {
            let _decided = match conditional {
                true => Some(lock.lock_owned().await),
                false => None,
            };
            inner.put_object(req).await
        })
        .await
        .map_err(|_| s3_error!(InternalError, "the PUT's task failed"))??;
        self.faults.put_bytes.fetch_add(len, Ordering::SeqCst);
        let lose = &self.faults.lose_manifest_answers;
        if manifest
            && lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.faults.outage.store(true, Ordering::SeqCst);
            return Err(s3_error!(ServiceUnavailable, "injected: answer lost"));
        }
        Ok(resp)
    }
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let _trip = self.faults.trips.begin();
        self.faults.gets.fetch_add(1, Ordering::SeqCst);
        let key = &req.input.key;
        self.faults
            .get_log
            .lock()
            .expect("get log")
            .push(key.clone());
        if key.ends_with("bucketfs.json") {
            self.faults.marker_gets.fetch_add(1, Ordering::SeqCst);
        }
        if key.contains("segments/") || (key.contains("manifests/") && req.input.range.is_some()) {
            self.faults.segment_gets.fetch_add(1, Ordering::SeqCst);
        }
        let mut held = self.faults.held.subscribe();
        let picked = held.borrow().as_deref() == Some(key.as_str());
        if picked {
            self.faults.gets_held.fetch_add(1, Ordering::SeqCst);
            // Err only if the sender is gone, and the server owns it.
            let _ = held.wait_for(|k| k.is_none()).await;
        }
        self.gate().await?;
        let resp = self.inner.get_object(req).await?;
        self.faults.get_bytes.fetch_add(
            resp.output.content_length.unwrap_or(0) as u64,
            Ordering::SeqCst,
        );
        Ok(resp)
    }
    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let _trip = self.faults.trips.begin();
        self.faults.head_objects.fetch_add(1, Ordering::SeqCst);
        self.gate().await?;
        self.inner.head_object(req).await
    }
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let _trip = self.faults.trips.begin();
        self.faults.head_buckets.fetch_add(1, Ordering::SeqCst);
        self.gate().await?;
        self.inner.head_bucket(req).await
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let _trip = self.faults.trips.begin();
        self.gate().await?;
        let mut req = req;
        let page = self.faults.list_page_keys.load(Ordering::SeqCst);
        if page > 0 {
            req.input.max_keys = Some(page as i32);
        }
        if self.faults.list_ignores_start_after.load(Ordering::SeqCst) {
            req.input.start_after = None;
        }
        let mut resp = self.inner.list_objects_v2(req).await?;
        if self.faults.list_truncated_empty.load(Ordering::SeqCst) {
            resp.output.contents = None;
            resp.output.key_count = Some(0);
            resp.output.is_truncated = Some(true);
        }
        Ok(resp)
    }
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let _trip = self.faults.trips.begin();
        self.gate().await?;
        self.inner.delete_object(req).await
    }
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let _trip = self.faults.trips.begin();
        self.faults.puts.fetch_add(1, Ordering::SeqCst);
        self.gate().await?;
        self.faults
            .log_put(&req.input.bucket, &req.input.key, regions_of(&req.headers));
        self.inner.create_multipart_upload(req).await
    }
    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let _trip = self.faults.trips.begin();
        self.faults.puts.fetch_add(1, Ordering::SeqCst);
        self.faults.parts.fetch_add(1, Ordering::SeqCst);
        self.gate().await?;
        let len = req.input.content_length.unwrap_or(0) as u64;
        let resp = self.inner.upload_part(req).await?;
        self.faults.put_bytes.fetch_add(len, Ordering::SeqCst);
        Ok(resp)
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let _trip = self.faults.trips.begin();
        self.faults.puts.fetch_add(1, Ordering::SeqCst);
        self.gate().await?;
        let fail = &self.faults.fail_completes;
        if fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(s3_error!(ServiceUnavailable, "injected: complete failed"));
        }
        self.inner.complete_multipart_upload(req).await
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let _trip = self.faults.trips.begin();
        self.gate().await?;
        self.inner.abort_multipart_upload(req).await
    }
}

/// An S3 server on 127.0.0.1 with one bucket, `BUCKET`, stored under `root`.
pub struct S3Server {
    pub endpoint: String,
    root: std::path::PathBuf,
    pub faults: Arc<Faults>,
    _rt: tokio::runtime::Runtime,
}

impl S3Server {
    pub fn start(root: &Path) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).expect("create bucket dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test S3 runtime");
        let faults = Arc::new(Faults::default());
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut b = s3s::service::S3ServiceBuilder::new(Faulty {
            inner: Arc::new(fs),
            faults: faults.clone(),
            conditional: Arc::default(),
        });
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        rt.spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                // As a real S3 endpoint does: without it Nagle adds ~40 ms to small replies.
                let _ = socket.set_nodelay(true);
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        S3Server {
            endpoint: format!("http://{addr}"),
            root: root.to_path_buf(),
            faults,
            _rt: rt,
        }
    }

    /// The environment a bucketfs child needs to reach this server, as `fly storage create`
    /// would set it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            ("AWS_REGION", "auto".into()),
            ("BUCKETFS_S3_PATH_STYLE", "1".into()),
        ]
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// Creates another bucket on this server.
    pub fn add_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.join(name)).expect("create bucket dir");
    }

    /// The keys under `prefix` in bucket `name`, as the server stores them.
    pub fn keys(&self, name: &str, prefix: &str) -> Vec<String> {
        let dir = self.root.join(name).join(prefix);
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&dir) {
                    let rel = rel.to_string_lossy().into_owned();
                    // s3s-fs keeps its own metadata beside the objects.
                    if !rel.starts_with(".s3s") && !rel.contains("/.s3s") {
                        out.push(rel);
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// `bucketfs verify` of `prefix`: panics with what it found broken, and `why`.
    pub fn assert_verifies(&self, prefix: &str, why: &str) {
        let out = std::process::Command::new(super::BIN)
            .args(["verify", "--bucket", &self.url(prefix)])
            .envs(self.env())
            .output()
            .expect("run bucketfs verify");
        assert!(
            out.status.success(),
            "{why}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
