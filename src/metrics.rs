//! Prometheus metrics, and the HTTP endpoint that serves them with /healthz and /status.
//!
//! Latencies are histograms observed where the work happens (FUSE requests, object store
//! requests, checkpoints), in one process-wide registry. Everything else is a count the mount
//! keeps anyway (`FsStats`, the store's and the checkpointer's totals): it is read into a
//! [`Status`] at scrape time and written out from there, so /metrics and /status can never
//! disagree. Names follow `bucketfs_<subsystem>_<what>_<unit>`; label values are bounded (op
//! names and object classes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tracing::{info, warn};

use crate::status::Status;

/// Latency buckets from 20 µs (a cached read) to 60 s (a checkpoint through an outage).
const LATENCY_BUCKETS: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The histograms observed as work happens.
pub struct Metrics {
    registry: Registry,
    fuse_op_seconds: HistogramVec,
    fuse_errors: IntCounterVec,
    s3_request_seconds: HistogramVec,
    s3_permanent_errors: IntCounterVec,
    s3_unreadable_answers: IntCounterVec,
    checkpoint_seconds: Histogram,
    /// What the last GC pass found (gauges, by name) and did (counters): docs/gc.md.
    gc_gauges: Vec<(&'static str, prometheus::Gauge)>,
    gc_deleted_objects: prometheus::IntCounter,
    gc_deleted_bytes: prometheus::IntCounter,
    gc_passes: prometheus::IntCounter,
    /// Object store operations whose latest request failed for good, with its error: what
    /// /healthz reports. An operation leaves it when one of its requests succeeds.
    store_failing: parking_lot::Mutex<BTreeMap<&'static str, Failing>>,
}

/// An object store operation failing for good.
struct Failing {
    error: String,
    /// When it was last logged at ERROR (a failure that repeats is logged again now and then,
    /// not on every request).
    logged: Instant,
    since_logged: u64,
}

/// How often a failure that keeps repeating is logged at ERROR again.
const REPEAT_ERROR_LOG: Duration = Duration::from_secs(300);

/// The gauges a GC pass sets, with their help.
const GC_GAUGES: [(&str, &str); 9] = [
    (
        "bucketfs_bucket_bytes",
        "Bytes of every manifest, segment and chunk of the GC catalog in the bucket, at the last GC pass",
    ),
    (
        "bucketfs_bucket_objects",
        "Manifests, segments and chunks of the GC catalog in the bucket, at the last GC pass",
    ),
    (
        "bucketfs_bucket_image_bytes",
        "Stored bytes the latest checkpoint uses, at the last GC pass",
    ),
    (
        "bucketfs_bucket_space_amplification_ratio",
        "Bucket bytes divided by the bytes the latest checkpoint uses",
    ),
    (
        "bucketfs_bucket_restore_chain_manifests",
        "Manifests a restore of the latest checkpoint reads (its base and deltas)",
    ),
    (
        "bucketfs_gc_retained_checkpoints",
        "Checkpoints the last GC pass kept restorable",
    ),
    (
        "bucketfs_gc_orphan_segments",
        "Segments no manifest names (uploads never committed), at the last GC pass",
    ),
    (
        "bucketfs_gc_pending_objects",
        "Objects no retained checkpoint needs, waiting out --gc-grace",
    ),
    (
        "bucketfs_gc_pending_bytes",
        "Bytes of the objects waiting out --gc-grace",
    ),
];

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let fuse_op_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bucketfs_fuse_op_duration_seconds",
                "Time to answer FUSE requests, by operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        let fuse_errors = IntCounterVec::new(
            Opts::new(
                "bucketfs_fuse_errors_total",
                "FUSE requests answered with an error, by operation",
            ),
            &["op"],
        )
        .expect("valid metric");
        let s3_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bucketfs_s3_request_duration_seconds",
                "Time of object store requests (every attempt; a multipart upload once, whole), by operation and object class",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op", "class"],
        )
        .expect("valid metric");
        let s3_permanent_errors = IntCounterVec::new(
            Opts::new(
                "bucketfs_s3_permanent_errors_total",
                "Object store requests that failed in a way retrying does not help (no such \
                 bucket, access denied, a malformed request), by operation: a person must act",
            ),
            &["op"],
        )
        .expect("valid metric");
        let s3_unreadable_answers = IntCounterVec::new(
            Opts::new(
                "bucketfs_s3_unreadable_answers_total",
                "Successful (2xx) answers whose body could not be read, settled by checking the \
                 object (HEAD, then its bytes), by operation",
            ),
            &["op"],
        )
        .expect("valid metric");
        let checkpoint_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "bucketfs_checkpoint_duration_seconds",
                "Time from cut to commit of checkpoints that committed",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        // What the last GC pass found, one gauge a measure (name, help).
        let gc_gauges: Vec<(&'static str, prometheus::Gauge)> = GC_GAUGES
            .iter()
            .map(|(name, help)| {
                (
                    *name,
                    prometheus::Gauge::new(*name, *help).expect("valid metric"),
                )
            })
            .collect();
        let gc_deleted_objects = prometheus::IntCounter::new(
            "bucketfs_gc_deleted_objects_total",
            "Objects GC deleted from the bucket",
        )
        .expect("valid metric");
        let gc_deleted_bytes = prometheus::IntCounter::new(
            "bucketfs_gc_deleted_bytes_total",
            "Bytes of the objects GC deleted from the bucket",
        )
        .expect("valid metric");
        let gc_passes =
            prometheus::IntCounter::new("bucketfs_gc_passes_total", "GC passes that completed")
                .expect("valid metric");
        for (_, g) in &gc_gauges {
            registry
                .register(Box::new(g.clone()))
                .expect("names are unique");
        }
        for c in [
            Box::new(gc_deleted_objects.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(gc_deleted_bytes.clone()),
            Box::new(gc_passes.clone()),
            Box::new(fuse_op_seconds.clone()),
            Box::new(fuse_errors.clone()),
            Box::new(s3_request_seconds.clone()),
            Box::new(s3_permanent_errors.clone()),
            Box::new(s3_unreadable_answers.clone()),
            Box::new(checkpoint_seconds.clone()),
        ] {
            registry.register(c).expect("names are unique");
        }
        Metrics {
            registry,
            fuse_op_seconds,
            fuse_errors,
            s3_request_seconds,
            s3_permanent_errors,
            s3_unreadable_answers,
            checkpoint_seconds,
            gc_gauges,
            gc_deleted_objects,
            gc_deleted_bytes,
            gc_passes,
            store_failing: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    pub fn fuse_op(&self, op: &str, elapsed: Duration) {
        self.fuse_op_seconds
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    pub fn fuse_error(&self, op: &str) {
        self.fuse_errors.with_label_values(&[op]).inc();
    }

    /// One object store request; `key` decides the class (segment, manifest or other).
    pub fn s3_request(&self, op: &str, key: &str, elapsed: Duration) {
        self.s3_request_seconds
            .with_label_values(&[op, object_class(key)])
            .observe(elapsed.as_secs_f64());
    }

    pub fn checkpoint(&self, elapsed: Duration) {
        self.checkpoint_seconds.observe(elapsed.as_secs_f64());
    }

    /// A GC pass completed with `r`.
    pub fn gc_pass(&self, r: &crate::status::GcReport) {
        for (name, v) in [
            ("bucketfs_bucket_bytes", r.bucket_bytes as f64),
            (
                "bucketfs_bucket_objects",
                (r.manifests + r.segments + r.catalog_chunks) as f64,
            ),
            ("bucketfs_bucket_image_bytes", r.image_bytes as f64),
            (
                "bucketfs_bucket_space_amplification_ratio",
                r.space_amplification,
            ),
            (
                "bucketfs_bucket_restore_chain_manifests",
                r.chain_length as f64,
            ),
            ("bucketfs_gc_retained_checkpoints", r.retained as f64),
            ("bucketfs_gc_orphan_segments", r.orphans as f64),
            ("bucketfs_gc_pending_objects", r.pending as f64),
            ("bucketfs_gc_pending_bytes", r.pending_bytes as f64),
        ] {
            if let Some((_, g)) = self.gc_gauges.iter().find(|(n, _)| *n == name) {
                g.set(v);
            }
        }
        self.gc_deleted_objects.inc_by(r.deleted);
        self.gc_deleted_bytes.inc_by(r.deleted_bytes);
        self.gc_passes.inc();
    }

    /// An object store request of `op` failed for good with `error`. Counted always; returns
    /// whether to log it at ERROR: the first time, and again every `REPEAT_ERROR_LOG` while
    /// it keeps failing (with how many failures were not logged in between).
    pub fn s3_permanent_error(&self, op: &'static str, error: String) -> Option<u64> {
        self.s3_permanent_errors.with_label_values(&[op]).inc();
        let mut failing = self.store_failing.lock();
        match failing.get_mut(op) {
            Some(f) if f.logged.elapsed() < REPEAT_ERROR_LOG => {
                f.error = error;
                f.since_logged += 1;
                None
            }
            Some(f) => {
                let skipped = f.since_logged;
                *f = Failing {
                    error,
                    logged: Instant::now(),
                    since_logged: 0,
                };
                Some(skipped)
            }
            None => {
                failing.insert(
                    op,
                    Failing {
                        error,
                        logged: Instant::now(),
                        since_logged: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// A request of `op` succeeded. Returns true if `op` was failing until now.
    pub fn s3_succeeded(&self, op: &'static str) -> bool {
        self.store_failing.lock().remove(op).is_some()
    }

    /// Why the object store is failing for good, if it is: one line per operation.
    pub fn store_failing(&self) -> Option<String> {
        let failing = self.store_failing.lock();
        (!failing.is_empty()).then(|| {
            failing
                .iter()
                .map(|(op, f)| format!("object store {op} failing: {}\n", f.error))
                .collect()
        })
    }

    /// A 2xx answer to `op` whose body could not be read.
    pub fn s3_unreadable_answer(&self, op: &str) {
        self.s3_unreadable_answers.with_label_values(&[op]).inc();
    }
}

/// Bounded label values for object keys: the placement class of a segment (wal, data),
/// manifests, and the rest (the format marker, `gc/`, `prewarm/`).
fn object_class(key: &str) -> &'static str {
    use crate::store::placement::{Class, MANIFESTS};
    match Class::of_key(key) {
        Class::Wal => "wal",
        Class::Data => "data",
        Class::Manifest if key.starts_with(MANIFESTS) => "manifest",
        Class::Manifest => "other",
    }
}

/// The Prometheus text for `status` plus the histograms.
pub fn render(status: &Status) -> String {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, v: u64| {
        let c = IntCounter::new(name, help).expect("valid metric");
        c.inc_by(v);
        registry.register(Box::new(c)).expect("names are unique");
    };
    let gauge = |name: &str, help: &str, v: i64| {
        let g = IntGauge::new(name, help).expect("valid metric");
        g.set(v);
        registry.register(Box::new(g)).expect("names are unique");
    };
    let fs = &status.fs;
    counter(
        "bucketfs_fuse_write_bytes_total",
        "Bytes written by FUSE WRITE requests",
        fs.bytes_written,
    );
    counter(
        "bucketfs_cache_log_syncs_total",
        "Syncs of the cache dir's log (RocksDB's WAL) to the disk",
        fs.log_syncs,
    );
    counter(
        "bucketfs_cache_hits_total",
        "READ requests served from the cache dir alone",
        fs.read_hits,
    );
    counter(
        "bucketfs_cache_misses_total",
        "READ requests that fetched from the bucket first",
        fs.read_misses,
    );
    counter(
        "bucketfs_cache_hit_bytes_total",
        "Bytes of READ requests served from the cache dir alone",
        fs.read_hit_bytes,
    );
    counter(
        "bucketfs_cache_fetched_bytes_total",
        "Bytes fetched from the bucket into the cache dir (reads, readahead, prefetch, prewarm)",
        fs.fetched_bytes,
    );
    counter(
        "bucketfs_cache_evictions_total",
        "Cache chunks evicted to stay within --cache-size",
        fs.evictions,
    );
    counter(
        "bucketfs_cache_evicted_bytes_total",
        "Bytes punched out of cache files by eviction",
        fs.evicted_bytes,
    );
    let cache = status.cache.unwrap_or_default();
    gauge(
        "bucketfs_cache_capacity_bytes",
        "--cache-size (0: unbounded)",
        cache.capacity_bytes as i64,
    );
    gauge(
        "bucketfs_cache_used_bytes",
        "Clean cached bytes counted against --cache-size",
        cache.used_bytes as i64,
    );
    gauge(
        "bucketfs_cache_evictions_queued",
        "Chunks evicted from the cache's accounting and not yet punched out of their files",
        cache.evictions_queued as i64,
    );
    gauge(
        "bucketfs_dirty_bytes",
        "Bytes not yet in the bucket: dirty, or being uploaded",
        fs.dirty_bytes as i64,
    );
    gauge(
        "bucketfs_dirty_pages",
        "Pages not yet in the bucket: dirty, or being uploaded",
        (fs.dirty_bytes / crate::fs::PAGE_SIZE) as i64,
    );
    gauge(
        "bucketfs_dirty_max_bytes",
        "--max-dirty (0: unbounded)",
        fs.max_dirty_bytes as i64,
    );
    counter(
        "bucketfs_dirty_throttled_writes_total",
        "Writes that waited for the checkpointer at --max-dirty",
        fs.throttled_writes,
    );
    let seconds = |name: &str, help: &str, micros: u64| {
        let c = prometheus::Counter::new(name, help).expect("valid metric");
        c.inc_by(micros as f64 / 1e6);
        registry.register(Box::new(c)).expect("names are unique");
    };
    seconds(
        "bucketfs_dirty_throttled_seconds_total",
        "Time writes spent waiting at --max-dirty",
        fs.throttled_micros,
    );
    let rpo = prometheus::Gauge::new(
        "bucketfs_rpo_seconds",
        "Age of the oldest write not yet in the bucket (0: all in the bucket)",
    )
    .expect("valid metric");
    rpo.set(status.rpo_ms as f64 / 1000.0);
    registry.register(Box::new(rpo)).expect("names are unique");
    gauge(
        "bucketfs_fenced",
        "1 when another writer took the bucket over and this mount refuses changes",
        i64::from(status.fenced),
    );
    gauge(
        "bucketfs_cache_failed",
        "1 when the disk under the cache dir failed (a write-back, or a commit or sync of its \
         records) and this mount refuses changes; /status says whether the cache dir can be \
         started on again",
        i64::from(status.cache_failed),
    );
    if let Some(b) = &status.bucket {
        gauge(
            "bucketfs_checkpoint_epoch",
            "Epoch of the bucket's latest checkpoint this mount knows",
            b.epoch as i64,
        );
        if let Some(cp) = &b.checkpoints {
            counter(
                "bucketfs_checkpoints_total",
                "Checkpoints committed by this mount",
                cp.committed,
            );
            counter(
                "bucketfs_checkpoint_failures_total",
                "Checkpoints that failed (their pages stay dirty and are retried, unless the mount stopped)",
                cp.failed,
            );
            counter(
                "bucketfs_checkpoint_uploaded_bytes_total",
                "Segment bytes uploaded by checkpoints",
                cp.segment_bytes,
            );
            gauge(
                "bucketfs_checkpoint_last_success_timestamp_seconds",
                "Unix time of the last committed checkpoint (0: none yet)",
                (cp.last_commit_unix_ms / 1000) as i64,
            );
        }
        let by_op = |name: &str, help: &str, values: &[(&str, u64)]| {
            let c = IntCounterVec::new(Opts::new(name, help), &["op"]).expect("valid metric");
            for (op, v) in values {
                c.with_label_values(&[op]).inc_by(*v);
            }
            registry.register(Box::new(c)).expect("names are unique");
        };
        let ops = |f: fn(&crate::status::StoreOpStatus) -> u64| -> Vec<(&str, u64)> {
            b.store.iter().map(|o| (o.op.as_str(), f(o))).collect()
        };
        by_op(
            "bucketfs_s3_requests_total",
            "Object store requests (every attempt), by operation",
            &ops(|o| o.requests),
        );
        by_op(
            "bucketfs_s3_errors_total",
            "Object store requests that failed (not counting 404 and 412 answers)",
            &ops(|o| o.errors),
        );
        by_op(
            "bucketfs_s3_bytes_total",
            "Body bytes sent (put) or received (get)",
            &ops(|o| o.bytes),
        );
        if let Some(r) = &b.replica {
            let lag = prometheus::Gauge::new(
                "bucketfs_replica_lag_seconds",
                "Age of the primary state the standby has been given, against the bucket's newest checkpoint (0: it has the newest; the primary's checkpoint interval comes on top)",
            )
            .expect("valid metric");
            lag.set(r.lag_seconds);
            registry.register(Box::new(lag)).expect("names are unique");
            gauge(
                "bucketfs_replica_base_epoch",
                "The checkpoint this replica's files come from",
                r.base_epoch as i64,
            );
            gauge(
                "bucketfs_replica_served_epoch",
                "The checkpoint the last WAL file served to the standby came from",
                r.served_epoch as i64,
            );
            gauge(
                "bucketfs_replica_base_expired",
                "1 when the base has left the primary's retention window (the replica must move to a newer one before GC collects it)",
                i64::from(r.base_expired),
            );
            gauge(
                "bucketfs_replica_behind",
                "1 when the standby needs WAL that no retained checkpoint holds: it cannot catch up from the bucket",
                i64::from(r.trouble.is_some()),
            );
            counter(
                "bucketfs_replica_wal_served_total",
                "WAL files served to the standby",
                r.wal_served,
            );
            counter(
                "bucketfs_replica_wal_errors_total",
                "WAL requests that could not be served (damaged, unreachable, or gone)",
                r.wal_errors,
            );
        }
        if let Some(p) = &b.prewarm {
            gauge(
                "bucketfs_prewarm_chunks",
                "Chunks the prewarm of this cold start has to fetch",
                p.chunks_total as i64,
            );
            gauge(
                "bucketfs_prewarm_done_chunks",
                "Chunks the prewarm has handled so far",
                p.chunks_done as i64,
            );
            gauge(
                "bucketfs_prewarm_skipped_chunks",
                "Chunks of the recorded hot set the prewarm left out: more than the cache has room for",
                p.chunks_skipped as i64,
            );
        }
    }
    let mut families = global().registry.gather();
    families.extend(registry.gather());
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding into memory does not fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Where to serve, from `--metrics-addr` ("off": nowhere). Anything but a loopback address is
/// refused: the endpoint has no authentication.
pub fn parse_addr(s: &str, allow_remote: bool) -> anyhow::Result<Option<SocketAddr>> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let addr: SocketAddr = s.parse().with_context(|| {
        format!("--metrics-addr {s:?}: expected ADDR:PORT (such as 127.0.0.1:9187) or off")
    })?;
    if !addr.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "--metrics-addr {s}: only loopback addresses are served unless \
             --metrics-allow-remote says the network is private (the endpoint has no \
             authentication)"
        );
    }
    if !addr.ip().is_loopback() {
        tracing::warn!(
            addr = %addr,
            "metrics, /healthz and /status are served beyond loopback, without authentication"
        );
    }
    Ok(Some(addr))
}

/// Serves /metrics, /healthz and /status on `listener` (bound by the caller, so that a port
/// in use fails the mount at once) from a thread of its own until the process ends.
pub fn serve(
    std_listener: std::net::TcpListener,
    status: Arc<dyn Fn() -> Status + Send + Sync>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the metrics runtime")?;
    std_listener
        .set_nonblocking(true)
        .context("metrics listener")?;
    let addr = std_listener.local_addr().context("metrics listener")?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "metrics endpoint stopped");
                        return;
                    }
                };
                info!(%addr, "serving /metrics, /healthz and /status");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let status = status.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let status = status.clone();
                            async move { Ok::<_, std::convert::Infallible>(answer(&req, &*status)) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                }
            })
        })
        .context("start metrics thread")?;
    Ok(())
}

type Body = http_body_util::Full<bytes::Bytes>;

fn answer<B>(
    req: &hyper::Request<B>,
    status: &(dyn Fn() -> Status + Send + Sync),
) -> hyper::Response<Body> {
    let reply = |code: u16, kind: &str, body: String| {
        hyper::Response::builder()
            .status(code)
            .header("content-type", kind)
            .body(Body::new(body.into()))
            .expect("a valid response")
    };
    if req.method() != hyper::Method::GET {
        return reply(405, "text/plain", "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render(&status()),
        ),
        "/status" => reply(
            200,
            "application/json",
            serde_json::to_string_pretty(&status()).expect("status serializes") + "\n",
        ),
        "/healthz" => {
            let s = status();
            if s.fenced {
                reply(
                    503,
                    "text/plain",
                    "fenced: another writer owns the bucket\n".into(),
                )
            } else if s.cache_failed {
                let why = s
                    .stopped
                    .as_deref()
                    .unwrap_or("the disk under the cache dir failed a write-back or a commit");
                reply(503, "text/plain", format!("stopped: {why}\n"))
            } else if let Some(why) = s
                .bucket
                .as_ref()
                .and_then(|b| b.replica.as_ref())
                .and_then(|r| r.trouble.clone())
            {
                reply(
                    503,
                    "text/plain",
                    format!("replica cannot keep up: {why}\n"),
                )
            } else if let Some(r) = s
                .bucket
                .as_ref()
                .and_then(|b| b.replica.as_ref())
                .filter(|r| r.base_expired)
            {
                reply(
                    503,
                    "text/plain",
                    format!(
                        "replica: base checkpoint {} has left the primary's retention window (oldest retained: {}); it must move to a newer base\n",
                        r.base_epoch, r.oldest_retained
                    ),
                )
            } else if let Some(why) = global().store_failing() {
                // Not a passing outage (those are retried and show in the RPO): the store
                // refuses what we ask, and will until a person fixes the bucket or the
                // credentials.
                reply(503, "text/plain", why)
            } else {
                reply(200, "text/plain", "ok\n".into())
            }
        }
        _ => reply(
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /status\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_go_beyond_loopback_only_when_asked() {
        let addr = |s: &str, remote| parse_addr(s, remote).map_err(|e| e.to_string());
        assert_eq!(addr("off", false), Ok(None));
        assert!(addr("127.0.0.1:9187", false).is_ok_and(|a| a.is_some()));
        assert!(addr("[::1]:9187", false).is_ok_and(|a| a.is_some()));
        for remote in ["[::]:9187", "0.0.0.0:9187", "10.0.0.7:9187"] {
            let refused = addr(remote, false).expect_err(remote);
            assert!(refused.contains("--metrics-allow-remote"), "{refused}");
            assert!(addr(remote, true).is_ok_and(|a| a.is_some()), "{remote}");
        }
        assert!(addr("localhost", true).is_err());
    }

    #[test]
    fn a_store_failure_that_repeats_is_logged_once_and_cleared_by_a_success() {
        let m = Metrics::new();
        assert_eq!(m.store_failing(), None);
        assert_eq!(
            m.s3_permanent_error("put", "NoSuchBucket 1".into()),
            Some(0)
        );
        assert_eq!(m.s3_permanent_error("put", "NoSuchBucket 2".into()), None);
        assert_eq!(m.s3_permanent_error("put", "NoSuchBucket 3".into()), None);
        assert_eq!(
            m.store_failing().as_deref(),
            Some("object store put failing: NoSuchBucket 3\n")
        );
        assert_eq!(m.s3_permanent_errors.with_label_values(&["put"]).get(), 3);
        assert!(
            !m.s3_succeeded("get"),
            "another kind of request clears nothing"
        );
        assert!(m.store_failing().is_some());
        assert!(m.s3_succeeded("put"));
        assert_eq!(m.store_failing(), None);
        assert_eq!(
            m.s3_permanent_error("put", "NoSuchBucket 4".into()),
            Some(0),
            "a failure after a recovery is news again"
        );
    }
}
