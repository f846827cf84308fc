//! S3 (Tigris, AWS, any S3-compatible service) through aws-sdk-s3.
//!
//! Configuration comes from the environment that `fly storage create` sets
//! (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, AWS_REGION) or from explicit
//! settings. Credentials go only to the SDK: they appear in no message, log or metric.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use tracing::{debug, warn};

use super::{ListPage, ObjectMeta, ObjectStore, PutMode, ReadStore, Sent, StoreError, StoreResult};

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix ("" or "db1"); keys are "<prefix>/<key>".
    pub prefix: String,
    /// e.g. https://fly.storage.tigris.dev; None: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style addressing (endpoint/bucket/key) instead of virtual-hosted
    /// (bucket.endpoint/key); local S3 servers want it.
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Tigris regions for the objects this store puts (`X-Tigris-Regions` on every PUT and
    /// multipart upload), e.g. "fra,sin"; None leaves placement to the bucket.
    pub regions: Option<String>,
}

impl fmt::Debug for S3Settings {
    // By hand, so that the secret can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("regions", &self.regions)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// Reads credentials, endpoint and region from the standard AWS variables.
    pub fn from_env(bucket: &str, prefix: &str) -> Result<S3Settings, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let access_key_id = var("AWS_ACCESS_KEY_ID")
            .ok_or("AWS_ACCESS_KEY_ID is not set (fly storage create sets it)")?;
        let secret_access_key = var("AWS_SECRET_ACCESS_KEY")
            .ok_or("AWS_SECRET_ACCESS_KEY is not set (fly storage create sets it)")?;
        let endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        // Tigris answers for every region as "auto".
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "auto".into());
        let path_style = var("BUCKETFS_S3_PATH_STYLE").is_some_and(|v| v == "1" || v == "true");
        Ok(S3Settings {
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
            endpoint,
            region,
            path_style,
            access_key_id,
            secret_access_key,
            regions: None,
        })
    }
}

/// The header that asks Tigris to keep an object in the regions it names.
pub const REGIONS_HEADER: &str = "x-tigris-regions";

/// Checks a `--region-hint` value: region codes (letters and digits), comma-separated.
pub fn check_regions(regions: &str) -> Result<(), String> {
    let ok = |r: &str| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if regions.split(',').all(ok) {
        Ok(())
    } else {
        Err(format!(
            "{regions:?} is not a list of region codes (e.g. \"fra\" or \"iad,sin\")"
        ))
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    regions: Option<String>,
    describe: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

impl S3Store {
    pub fn new(s: &S3Settings) -> S3Store {
        use aws_smithy_http_client::{tls, Builder};
        let http = Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let creds = Credentials::new(
            s.access_key_id.clone(),
            s.secret_access_key.clone(),
            None,
            None,
            "bucketfs",
        );
        // Our RetryingStore retries (with jitter, and knowing which errors are worth it); the
        // SDK's own retries would multiply with it. Timeouts keep a dead connection from
        // hanging a checkpoint or a read forever.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .http_client(http)
            .region(Region::new(s.region.clone()))
            .credentials_provider(creds)
            .force_path_style(s.path_style);
        if let Some(ep) = &s.endpoint {
            conf = conf.endpoint_url(ep.clone());
        }
        S3Store {
            client: Client::from_conf(conf.build()),
            bucket: s.bucket.clone(),
            prefix: s.prefix.clone(),
            regions: s.regions.clone(),
            describe: format!(
                "s3://{}/{} (endpoint {})",
                s.bucket,
                s.prefix,
                s.endpoint.as_deref().unwrap_or("AWS default")
            ),
        }
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// The request's hook that adds `REGIONS_HEADER` to a PUT (and to the start of a
    /// multipart upload), when this store has regions.
    fn regions_hook(&self) -> impl Fn(&mut aws_sdk_s3::config::http::HttpRequest) + Send + Sync {
        let regions = self.regions.clone();
        move |req| {
            if let Some(r) = &regions {
                req.headers_mut().insert(REGIONS_HEADER, r.clone());
            }
        }
    }

    fn strip<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
        }
    }
}

/// Objects larger than this go up with multipart upload, in parts of `PART_SIZE`.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
pub const PART_SIZE: usize = 8 << 20;

impl S3Store {
    /// The upload of `body` in parts, counting into `sent` each request it sends.
    async fn put_multipart(&self, key: &str, body: Bytes, sent: &mut Sent) -> StoreResult<String> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let full = self.full_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .customize()
            .mutate_request(self.regions_hook())
            .send()
            .await
            .map_err(|e| classify("create multipart upload", key, e));
        sent.puts.add(&created, 0);
        let created = created?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let parts = async {
            let mut set = tokio::task::JoinSet::new();
            for (i, chunk) in body.chunks(PART_SIZE).enumerate() {
                let part_number = i as i32 + 1;
                let req = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(part_number)
                    .body(ByteStream::from(body.slice_ref(chunk)));
                let (key, len) = (key.to_string(), chunk.len() as u64);
                set.spawn(async move {
                    let out = req
                        .send()
                        .await
                        .map_err(|e| classify("upload part", &key, e))?;
                    let part = CompletedPart::builder()
                        .part_number(part_number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build();
                    Ok::<_, StoreError>((part, len))
                });
            }
            let (mut done, mut failure) = (Vec::new(), None);
            while let Some(joined) = set.join_next().await {
                let part = match joined {
                    Ok(part) => part,
                    // Cut off below, perhaps after the server had it: sent, not failed.
                    Err(e) if e.is_cancelled() => {
                        sent.puts.requests += 1;
                        continue;
                    }
                    Err(e) => Err(StoreError::Transient {
                        op: "upload part",
                        key: key.into(),
                        message: format!("task: {e}"),
                    }),
                };
                let len = part.as_ref().map_or(0, |(_, len)| *len);
                sent.puts.add(&part, len);
                match part {
                    Ok((part, _)) => done.push(part),
                    Err(e) => {
                        // The upload has failed: the parts still running are cut off, and
                        // those already answered are still counted as they were answered.
                        set.abort_all();
                        if failure.is_none() {
                            failure = Some(e);
                        }
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            done.sort_by_key(|p| p.part_number());
            Ok::<_, StoreError>(done)
        }
        .await;
        let result = match parts {
            Ok(parts) => {
                let completed = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                match completed {
                    Ok(out) => {
                        sent.puts.requests += 1;
                        Ok(out.e_tag().unwrap_or_default().to_string())
                    }
                    // Answered, unreadably: the check reads the object back.
                    Err(e) if e.status().is_some_and(|s| (200..300).contains(&s)) => {
                        let checked = self.settle_unreadable_complete(key, &body, e, sent).await;
                        // Failed if the check found the upload not done (S3's 200
                        // InternalError, or no object with our bytes).
                        sent.puts.add(&checked, 0);
                        checked
                    }
                    Err(e) => {
                        let failed: StoreResult<String> =
                            Err(classify("complete multipart upload", key, e));
                        sent.puts.add(&failed, 0);
                        failed
                    }
                }
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Best effort: an upload left open only costs storage until the bucket's
            // lifecycle rule (or a later abort) removes it.
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await
                .map_err(|e| classify("abort multipart upload", key, e));
            sent.deletes.add(&aborted, 0);
        }
        result
    }
}

impl S3Store {
    /// CompleteMultipartUpload answered 2xx with a body the SDK refused: moto's root element
    /// is `CompleteMultipartUploadResponse` where S3 says `CompleteMultipartUploadResult`, and
    /// S3 itself may answer 200 with an `<Error>` body. The upload may or may not have
    /// completed, and repeating the same request would get the same answer: find out. The
    /// object counts as written only if it is there with our size (HEAD) and our bytes (read
    /// back: the only check that holds whatever ETag scheme the server uses; paid only on
    /// this path).
    async fn settle_unreadable_complete<E, R>(
        &self,
        key: &str,
        body: &Bytes,
        err: SdkError<E, R>,
        sent: &mut Sent,
    ) -> StoreResult<String>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug,
        SdkError<E, R>: HasStatus,
    {
        const OP: &str = "complete multipart upload";
        crate::metrics::global().s3_unreadable_answer(OP);
        static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
            warn!(
                key,
                endpoint = %self.describe,
                "the endpoint answered CompleteMultipartUpload with a body that is not S3's; \
                 each multipart upload is checked by reading the object back"
            );
        }
        // An error code in the body (S3's 200 InternalError) says the upload did not complete
        // and a new attempt may; anything else unexplained is not worth repeating blindly.
        let code = err.code().map(str::to_string);
        let retryable = matches!(
            code.as_deref(),
            Some("InternalError" | "SlowDown" | "ServiceUnavailable" | "RequestTimeout")
        );
        let failed = |what: String| {
            let message = format!(
                "answered http {} with an unreadable body ({}), and {what}",
                err.status().unwrap_or(0),
                code.as_deref().unwrap_or("no error code")
            );
            let key = key.to_string();
            if retryable {
                StoreError::Transient {
                    op: OP,
                    key,
                    message,
                }
            } else {
                StoreError::Permanent {
                    op: OP,
                    key,
                    message,
                }
            }
        };
        let head = self.head(key).await;
        sent.heads.add(&head, 0);
        let meta = match head? {
            None => return Err(failed("the object is not there".into())),
            Some(m) if m.size != body.len() as u64 => {
                return Err(failed(format!(
                    "the object there has size={} where size={} was uploaded",
                    m.size,
                    body.len()
                )))
            }
            Some(m) => m,
        };
        let stored = self.get(key, None).await;
        let read = stored.as_ref().map_or(0, |b| b.len() as u64);
        sent.gets.add(&stored, read);
        let stored = stored?;
        if stored != *body {
            return Err(failed("the object there holds other bytes".into()));
        }
        debug!(key, etag = %meta.etag, "multipart upload confirmed by reading it back");
        Ok(meta.etag)
    }
}

/// Maps an SDK error to the store's error kinds, by HTTP status and S3 error code. The SDK's
/// messages carry no credentials.
fn classify<E, R>(op: &'static str, key: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
    SdkError<E, R>: HasStatus,
{
    let status = err.status();
    let code = err.code().unwrap_or_default().to_string();
    let message = match (&err, err.message()) {
        (_, Some(m)) => format!("{code} {m} (http {})", status.unwrap_or(0)),
        (SdkError::TimeoutError(_), _) => "timed out".to_string(),
        (SdkError::DispatchFailure(e), _) => format!("could not reach the endpoint: {e:?}"),
        _ => format!("{code} (http {})", status.unwrap_or(0)),
    };
    let key = key.to_string();
    // 4xx answers that another try may get past: S3's RequestTimeout (400: the request's body
    // stalled on the way), a proxy's 408, and the 409s of conditional writes or other
    // operations racing on the key (AWS says to retry both).
    let retry_4xx = status == Some(408)
        || matches!(
            code.as_str(),
            "RequestTimeout" | "ConditionalRequestConflict" | "OperationAborted"
        );
    match status {
        Some(412) => StoreError::PreconditionFailed { key },
        Some(404) if code != "NoSuchBucket" => StoreError::NotFound { key },
        Some(s) if s == 429 || s >= 500 || retry_4xx => StoreError::Transient { op, key, message },
        Some(_) => StoreError::Permanent { op, key, message },
        // No response at all: a timeout or a connection error, worth another try.
        None => StoreError::Transient { op, key, message },
    }
}

/// The HTTP status of an SDK error's response, if there was one.
trait HasStatus {
    fn status(&self) -> Option<u16>;
}

impl<E> HasStatus for SdkError<E, aws_sdk_s3::config::http::HttpResponse> {
    fn status(&self) -> Option<u16> {
        self.raw_response().map(|r| r.status().as_u16())
    }
}

#[async_trait]
impl ReadStore for S3Store {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        if let Some(r) = &range {
            if r.is_empty() {
                return Ok(Bytes::new());
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = match req.send().await {
            Ok(out) => out,
            // A range that starts at or past the end (416): the contract clamps it to the
            // object's end, which leaves nothing. A missing object is a 404, not this.
            Err(e) if range.is_some() && e.status() == Some(416) => return Ok(Bytes::new()),
            Err(e) => return Err(classify("get", key, e)),
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Transient {
                op: "get",
                key: key.into(),
                message: format!("read body: {e}"),
            })?;
        Ok(body.into_bytes())
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.into(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().unwrap_or_default().to_string(),
            })),
            Err(e) => match classify("head", key, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list_after(&self, prefix: &str, after: Option<&str>) -> StoreResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut after = after.map(str::to_string);
        loop {
            let page = self.list_page(prefix, after.as_deref()).await?;
            out.extend(page.objects);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// One ListObjectsV2 request, starting after `after` (so a page needs no continuation
    /// token: the next begins after this one's last key).
    async fn list_page(&self, prefix: &str, after: Option<&str>) -> StoreResult<ListPage> {
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix));
        if let Some(a) = after {
            req = req.start_after(self.full_key(a));
        }
        let page = req.send().await.map_err(|e| classify("list", prefix, e))?;
        let mut objects: Vec<ObjectMeta> = page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: self.strip(o.key()?).to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().unwrap_or_default().to_string(),
                })
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        // The next page begins after this one's last key: a server that ignored StartAfter
        // would hand the same page back for ever.
        if let (Some(a), Some(first)) = (after, objects.first()) {
            if first.key.as_str() <= a {
                return Err(StoreError::Permanent {
                    op: "list",
                    key: prefix.into(),
                    message: "the server listed keys at or before StartAfter".into(),
                });
            }
        }
        let next = match (page.is_truncated().unwrap_or(false), objects.last()) {
            (false, _) => None,
            (true, Some(last)) => Some(last.key.clone()),
            // A listing that stopped short would look like a bucket without the rest: GC
            // would count their segments unneeded.
            (true, None) => {
                return Err(StoreError::Transient {
                    op: "list",
                    key: prefix.into(),
                    message: "a truncated LIST page with no keys".into(),
                })
            }
        };
        Ok(ListPage { objects, next })
    }

    async fn check(&self) -> StoreResult<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| match classify("head bucket", &self.bucket, e) {
                // HEAD has no body, so a missing bucket is a bare 404.
                StoreError::NotFound { key } => StoreError::Permanent {
                    op: "head bucket",
                    key,
                    message: "NoSuchBucket: the bucket does not exist".into(),
                },
                other => other,
            })?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        self.put_sent(key, body, mode).await.0
    }

    async fn put_sent(&self, key: &str, body: Bytes, mode: PutMode) -> (StoreResult<String>, Sent) {
        // Large objects (segments) go up in parts, in parallel; a failed part fails the
        // whole PUT, which the retry wrapper repeats. Conditional PUTs (manifests) are small
        // and stay single.
        if body.len() > MULTIPART_THRESHOLD && mode == PutMode::Overwrite {
            let mut sent = Sent::default();
            let result = self.put_multipart(key, body, &mut sent).await;
            return (result, sent);
        }
        let len = body.len() as u64;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .body(ByteStream::from(body));
        match &mode {
            PutMode::Overwrite => {}
            PutMode::Create => req = req.if_none_match("*"),
            PutMode::Replace { etag } => req = req.if_match(etag),
        }
        let sent = req
            .customize()
            .mutate_request(self.regions_hook())
            .send()
            .await;
        let result = match sent.map_err(|e| classify("put", key, e)) {
            Ok(out) => Ok(out.e_tag().unwrap_or_default().to_string()),
            // S3 answers If-Match on a missing key with 404: the precondition did not hold.
            Err(StoreError::NotFound { key }) if matches!(mode, PutMode::Replace { .. }) => {
                Err(StoreError::PreconditionFailed { key })
            }
            Err(e) => Err(e),
        };
        let sent = Sent::one_put(&result, len);
        (result, sent)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| classify("delete", key, e))?;
        Ok(())
    }
}
