//! The object store contract (docs/store-contract.md): one set of test bodies run against
//! every implementation bucketfs meets: the S3 store against s3s-fs (in-process) and against
//! moto (the Python server many local setups use), and the local-directory store. Each
//! implementation is one test that runs every body and reports pass or fail per body, so a
//! failure names both the operation and the implementation; a body an implementation is
//! known not to satisfy (the racing ones on moto) is reported as not run, with why.
//!
//! Then bucketfs itself on moto: checkpoints whose segments go up by multipart upload, and a
//! bucket that goes away under a mount (a failure that repeats must be loud).

mod common;

use std::fs;
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bucketfs::store::s3::MULTIPART_THRESHOLD;
use bucketfs::store::{
    LocalStore, ObjectMeta, ObjectStore, PutMode, S3Settings, S3Store, StoreError,
};
use bytes::Bytes;
use common::moto::Moto;
use common::s3::S3Server;
use common::{http_get, wait_for, Mount};

/// What a body gets: the store under test, keys of its own, and (for S3) a store whose
/// bucket does not exist.
#[derive(Clone)]
struct Ctx {
    store: Arc<dyn ObjectStore>,
    missing_bucket: Option<Arc<dyn ObjectStore>>,
    /// Whether a listing comes in pages of at most 1000 keys (S3's).
    paged: bool,
    body: &'static str,
}

impl Ctx {
    /// A key in this body's own namespace.
    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.body)
    }
}

type BodyFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Body = fn(Ctx) -> BodyFuture;

/// Every body of the contract, by name.
const BODIES: &[(&str, Body)] = &[
    ("put_get_head", |c| Box::pin(put_get_head(c))),
    ("ranged_get", |c| Box::pin(ranged_get(c))),
    ("missing_key", |c| Box::pin(missing_key(c))),
    ("create_if_absent", |c| Box::pin(create_if_absent(c))),
    ("replace_if_match", |c| Box::pin(replace_if_match(c))),
    ("racing_creates", |c| Box::pin(racing_creates(c))),
    ("racing_replaces", |c| Box::pin(racing_replaces(c))),
    ("multipart_object", |c| Box::pin(multipart_object(c))),
    ("list_with_prefix", |c| Box::pin(list_with_prefix(c))),
    ("list_past_one_page", |c| Box::pin(list_past_one_page(c))),
    ("delete", |c| Box::pin(delete(c))),
    ("check", |c| Box::pin(check(c))),
];

/// `len` bytes that differ for every `seed`.
fn data(len: usize, seed: u64) -> Bytes {
    // incompressible() sets the seed's low bit: keep seeds apart above it.
    Bytes::from(common::incompressible(len, seed << 1))
}

/// A PUT returns the ETag that HEAD and a listing report; GET returns the bytes; an
/// overwrite replaces them and changes the ETag.
async fn put_get_head(c: Ctx) {
    let key = c.key("a");
    let body = data(1000, 1);
    let etag = c
        .store
        .put(&key, body.clone(), PutMode::Overwrite)
        .await
        .expect("put");
    assert!(!etag.is_empty(), "put returned an empty etag");
    assert_eq!(c.store.get(&key, None).await.expect("get"), body);
    let meta = c
        .store
        .head(&key)
        .await
        .expect("head")
        .expect("head finds it");
    assert_eq!(
        meta,
        ObjectMeta {
            key: key.clone(),
            size: 1000,
            etag: etag.clone()
        }
    );
    let other = data(500, 2);
    let etag2 = c
        .store
        .put(&key, other.clone(), PutMode::Overwrite)
        .await
        .expect("overwrite");
    assert_ne!(etag2, etag, "an overwrite with other bytes kept the etag");
    assert_eq!(c.store.get(&key, None).await.expect("get"), other);
    assert_eq!(c.store.head(&key).await.unwrap().unwrap().size, 500);
    // An empty object is an object.
    let empty = c.key("empty");
    c.store
        .put(&empty, Bytes::new(), PutMode::Overwrite)
        .await
        .expect("put empty");
    assert_eq!(c.store.get(&empty, None).await.expect("get empty"), "");
    assert_eq!(c.store.head(&empty).await.unwrap().unwrap().size, 0);
}

/// A range is clamped to the object's end: past the end or empty, it reads nothing.
async fn ranged_get(c: Ctx) {
    let key = c.key("r");
    let body = data(1000, 3);
    c.store
        .put(&key, body.clone(), PutMode::Overwrite)
        .await
        .expect("put");
    let get = |r: std::ops::Range<u64>| {
        let (store, key) = (c.store.clone(), key.clone());
        async move {
            store
                .get(&key, Some(r.clone()))
                .await
                .unwrap_or_else(|e| panic!("get range {r:?}: {e}"))
        }
    };
    assert_eq!(get(10..20).await, body.slice(10..20));
    assert_eq!(get(0..1000).await, body);
    assert_eq!(get(990..1000).await, body.slice(990..1000));
    assert_eq!(
        get(990..5000).await,
        body.slice(990..),
        "range past the end"
    );
    assert_eq!(get(5..5).await, "", "empty range");
    assert_eq!(get(1000..1010).await, "", "range starting at the end");
    assert_eq!(get(4000..5000).await, "", "range starting past the end");
}

/// A missing key: GET says NotFound with the key as asked (no store prefix), HEAD says None.
async fn missing_key(c: Ctx) {
    let key = c.key("nothing-here");
    match c.store.get(&key, None).await {
        Err(StoreError::NotFound { key: k }) => assert_eq!(k, key),
        other => panic!("get of a missing key: {other:?}"),
    }
    match c.store.get(&key, Some(0..10)).await {
        Err(StoreError::NotFound { key: k }) => assert_eq!(k, key),
        other => panic!("ranged get of a missing key: {other:?}"),
    }
    assert_eq!(c.store.head(&key).await.expect("head"), None);
}

/// `Create` succeeds once; the second gets PreconditionFailed and leaves the first's bytes.
async fn create_if_absent(c: Ctx) {
    let key = c.key("manifest");
    let first = data(300, 4);
    let etag = c
        .store
        .put(&key, first.clone(), PutMode::Create)
        .await
        .expect("first create");
    match c.store.put(&key, data(300, 5), PutMode::Create).await {
        Err(StoreError::PreconditionFailed { key: k }) => assert_eq!(k, key),
        other => panic!("second create: {other:?}"),
    }
    assert_eq!(c.store.get(&key, None).await.expect("get"), first);
    assert_eq!(c.store.head(&key).await.unwrap().unwrap().etag, etag);
}

/// `Replace` succeeds with the current ETag and fails with PreconditionFailed with a stale
/// one, or when there is no object at all.
async fn replace_if_match(c: Ctx) {
    let key = c.key("x");
    let etag1 = c
        .store
        .put(&key, data(200, 6), PutMode::Overwrite)
        .await
        .expect("put");
    let second = data(200, 7);
    let etag2 = c
        .store
        .put(
            &key,
            second.clone(),
            PutMode::Replace {
                etag: etag1.clone(),
            },
        )
        .await
        .expect("replace with the current etag");
    assert_ne!(etag2, etag1);
    match c
        .store
        .put(&key, data(200, 8), PutMode::Replace { etag: etag1 })
        .await
    {
        Err(StoreError::PreconditionFailed { key: k }) => assert_eq!(k, key),
        other => panic!("replace with a stale etag: {other:?}"),
    }
    assert_eq!(c.store.get(&key, None).await.expect("get"), second);
    let missing = c.key("never-written");
    match c
        .store
        .put(&missing, data(10, 9), PutMode::Replace { etag: etag2 })
        .await
    {
        Err(StoreError::PreconditionFailed { key: k }) => assert_eq!(k, missing),
        other => panic!("replace of a missing key: {other:?}"),
    }
    assert_eq!(c.store.head(&missing).await.expect("head"), None);
}

/// Conditional PUTs of one key sent at once, and rounds of them.
const RACERS: u64 = 8;
const RACE_ROUNDS: u64 = 10;

/// What the racing PUTs of a body's rounds were answered.
#[derive(Default)]
struct Raced {
    won: u64,
    refused: u64,
    lost: u64,
}

impl std::ops::AddAssign for Raced {
    fn add_assign(&mut self, round: Raced) {
        self.won += round.won;
        self.refused += round.refused;
        self.lost += round.lost;
    }
}

impl Raced {
    /// At least half of the racers that could not win were refused, rather than lost (so
    /// that the rounds raced); printed, with the counts, for the run's output. (`race`
    /// checks each round's winner.)
    fn check(&self, body: &str) {
        let Raced { won, refused, lost } = self;
        eprintln!("{body}: {won} won, {refused} refused, {lost} lost");
        let least = RACE_ROUNDS * (RACERS - 1) / 2;
        assert!(
            *refused >= least,
            "{body}: {refused} of {} racing PUTs refused, fewer than {least} ({won} won, \
             {lost} lost)",
            RACE_ROUNDS * RACERS
        );
    }
}

/// Sends `RACERS` PUTs of `key` at once, each with bytes of its own and `mode`, over `before`
/// (what the key holds), and checks that one succeeded and every other was PreconditionFailed,
/// or, where some answered a retryable error (an answer lost), that at most one succeeded;
/// and that the key holds the winner's bytes with the ETag its PUT returned, or, with no
/// winner, a lost PUT's bytes (or `before`, if none was refused).
async fn race(c: &Ctx, key: &str, seed: u64, mode: PutMode, before: Option<Bytes>) -> Raced {
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let (store, key, mode) = (c.store.clone(), key.to_string(), mode.clone());
        // Large enough that a server writing the body between its check and its rename
        // holds that window open a while.
        let body = data(256 << 10, seed * RACERS + i);
        puts.spawn(async move { (body.clone(), store.put(&key, body, mode).await) });
    }
    let (mut won, mut lost, mut refused) = (Vec::new(), Vec::new(), 0);
    while let Some(joined) = puts.join_next().await {
        match joined.expect("a PUT's task") {
            (body, Ok(etag)) => won.push((body, etag)),
            (_, Err(StoreError::PreconditionFailed { key: k })) => {
                assert_eq!(k, key);
                refused += 1;
            }
            (body, Err(StoreError::Transient { .. })) => lost.push(body),
            (_, Err(e)) => panic!("{key}: a racing PUT failed otherwise: {e}"),
        }
    }
    assert!(
        won.len() <= 1,
        "{key}: {} of {RACERS} racing PUTs succeeded",
        won.len()
    );
    let got = match answered(|| c.store.get(key, None)).await {
        Ok(bytes) => Some(bytes),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => panic!("{key}: get: {e}"),
    };
    match won.first() {
        Some((body, etag)) => {
            assert!(
                got.as_ref() == Some(body),
                "{key}: the object is not the winner's bytes"
            );
            let head = answered(|| c.store.head(key)).await.expect("head");
            assert_eq!(&head.expect("head finds it").etag, etag);
        }
        // A refusal means that another PUT's object was there: a lost one's.
        None => assert!(
            got.as_ref().is_some_and(|g| lost.contains(g)) || (refused == 0 && got == before),
            "{key}: no PUT succeeded, {refused} were refused, {} lost, and the object is none \
             of the lost ones'",
            lost.len()
        ),
    }
    Raced {
        won: won.len() as u64,
        refused,
        lost: lost.len() as u64,
    }
}

/// `request`'s answer, sent again while it is a retryable error (up to `RACERS` times): a
/// server that refuses a PUT before reading its body closes that connection, and the client
/// may learn it only by sending its next request on it (bucketfs's retrying store sends
/// it again too).
async fn answered<T, F: Future<Output = Result<T, StoreError>>>(
    request: impl Fn() -> F,
) -> Result<T, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match request().await {
            Err(e) if e.is_transient() && tries <= RACERS => continue,
            answer => return answer,
        }
    }
}

/// Of creates of one key sent at once, exactly one succeeds: how a takeover's fence and the
/// writer it fences, committing the same epoch at the same moment, are told apart.
async fn racing_creates(c: Ctx) {
    let mut raced = Raced::default();
    for round in 0..RACE_ROUNDS {
        let key = c.key(&format!("m-{round}"));
        raced += race(&c, &key, 100 + round, PutMode::Create, None).await;
    }
    raced.check(c.body);
}

/// Of replaces of one key with the same (current) ETag sent at once, exactly one succeeds:
/// how GC's state and boundary are moved by two processes at once.
async fn racing_replaces(c: Ctx) {
    let mut raced = Raced::default();
    for round in 0..RACE_ROUNDS {
        let key = c.key(&format!("state-{round}"));
        let before = data(100, 200 + round);
        // (The last round's refused PUTs may have left closed connections behind.)
        let put = || c.store.put(&key, before.clone(), PutMode::Overwrite);
        let etag = answered(put).await.expect("put");
        let replace = PutMode::Replace { etag };
        raced += race(&c, &key, 300 + round, replace, Some(before)).await;
    }
    raced.check(c.body);
}

/// An object above the multipart threshold (S3 uploads it in parts) reads back whole and in
/// ranges across part boundaries, and HEAD agrees with the PUT.
async fn multipart_object(c: Ctx) {
    let key = c.key("segment");
    let len = MULTIPART_THRESHOLD + MULTIPART_THRESHOLD / 2 + 12_345;
    let body = data(len, 10);
    let etag = c
        .store
        .put(&key, body.clone(), PutMode::Overwrite)
        .await
        .expect("put a multipart-sized object");
    let meta = c
        .store
        .head(&key)
        .await
        .expect("head")
        .expect("head finds it");
    assert_eq!(meta.size, len as u64);
    assert_eq!(meta.etag, etag, "head's etag is not the put's");
    let got = c.store.get(&key, None).await.expect("get");
    assert!(got == body, "the object read back differs");
    let part = bucketfs::store::s3::PART_SIZE;
    let across = (part - 100) as u64..(part + 100) as u64;
    assert_eq!(
        c.store.get(&key, Some(across.clone())).await.expect("get"),
        body.slice(across.start as usize..across.end as usize)
    );
    // Overwritten by another multipart upload: the new bytes.
    let again = data(len, 11);
    c.store
        .put(&key, again.clone(), PutMode::Overwrite)
        .await
        .expect("overwrite a multipart-sized object");
    assert!(c.store.get(&key, None).await.unwrap() == again);
}

/// A listing returns exactly the keys under the prefix, in order, with sizes and ETags (an
/// ETag may be empty: s3s-fs lists none; nothing reads them from listings); from a key on
/// (`list_after`), only those that sort after it.
async fn list_with_prefix(c: Ctx) {
    let mut etags = std::collections::BTreeMap::new();
    for (name, len) in [("a/1", 10), ("a/2", 20), ("ab", 30), ("b/1", 40)] {
        let key = c.key(name);
        let etag = c
            .store
            .put(&key, data(len, len as u64), PutMode::Overwrite)
            .await
            .expect("put");
        etags.insert(key, (len as u64, etag));
    }
    let listed_after = |prefix: String, after: Option<String>| {
        let store = c.store.clone();
        let etags = etags.clone();
        async move {
            let mut got = store
                .list_after(&prefix, after.as_deref())
                .await
                .expect("list");
            for m in &mut got {
                if m.etag.is_empty() {
                    m.etag = etags.get(&m.key).map(|e| e.1.clone()).unwrap_or_default();
                }
            }
            got
        }
    };
    let want = |names: &[&str]| -> Vec<ObjectMeta> {
        names
            .iter()
            .map(|n| {
                let key = c.key(n);
                let (size, etag) = etags[&key].clone();
                ObjectMeta { key, size, etag }
            })
            .collect()
    };
    let listed = |prefix: String| listed_after(prefix, None);
    assert_eq!(listed(c.key("a/")).await, want(&["a/1", "a/2"]));
    assert_eq!(listed(c.key("a")).await, want(&["a/1", "a/2", "ab"]));
    assert_eq!(listed(c.key("")).await, want(&["a/1", "a/2", "ab", "b/1"]));
    assert_eq!(listed(c.key("none/")).await, Vec::<ObjectMeta>::new());
    assert_eq!(
        listed_after(c.key("a/"), Some(c.key("a/1"))).await,
        want(&["a/2"])
    );
    assert_eq!(
        listed_after(c.key(""), Some(c.key("a/2"))).await,
        want(&["ab", "b/1"])
    );
    assert_eq!(
        listed_after(c.key(""), Some(c.key("b/1"))).await,
        Vec::<ObjectMeta>::new()
    );
}

/// A listing longer than one S3 page (1000 keys) comes back whole.
async fn list_past_one_page(c: Ctx) {
    let n = 1234;
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    for i in 0..n {
        let (store, key, gate) = (c.store.clone(), c.key(&format!("k{i:05}")), gate.clone());
        tasks.spawn(async move {
            let _p = gate.acquire().await.unwrap();
            store
                .put(&key, Bytes::from(format!("{i}")), PutMode::Overwrite)
                .await
                .expect("put");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("put task");
    }
    let keys: Vec<String> = c
        .store
        .list(&c.key(""))
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    let want: Vec<String> = (0..n).map(|i| c.key(&format!("k{i:05}"))).collect();
    assert_eq!(keys.len(), n, "listed {} of {n} keys", keys.len());
    assert!(keys == want, "the listing is not every key in order");
    // From a key on, past a page boundary too.
    let after: Vec<String> = c
        .store
        .list_after(&c.key(""), Some(&c.key("k00100")))
        .await
        .expect("list after a key")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(
        after == want[101..],
        "listed {} keys after k00100, want the {} after it in order",
        after.len(),
        n - 101
    );
    // A page at a time (what a GC pass reads manifests with), each from where the last
    // said the next begins: every key once, in order. S3 pages are 1,000 keys at most; a
    // local directory may hand its listing over whole.
    let (mut paged, mut pages, mut after) = (Vec::new(), 0, Some(c.key("k00100")));
    loop {
        let page = c
            .store
            .list_page(&c.key(""), after.as_deref())
            .await
            .expect("list a page");
        pages += 1;
        paged.extend(page.objects.into_iter().map(|m| m.key));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 100, "the pages do not end");
    }
    assert!(
        paged == want[101..],
        "listed {} keys after k00100 page by page, want the {} after it in order",
        paged.len(),
        n - 101
    );
    if c.paged {
        assert!(
            pages >= 2,
            "an S3 listing of {} keys came in {pages} page(s)",
            n - 101
        );
    }
}

/// Delete removes the object from GET, HEAD and listings; deleting a missing key is fine.
async fn delete(c: Ctx) {
    let key = c.key("d");
    c.store
        .put(&key, data(10, 12), PutMode::Overwrite)
        .await
        .expect("put");
    c.store.delete(&key).await.expect("delete");
    assert!(matches!(
        c.store.get(&key, None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(c.store.head(&key).await.expect("head"), None);
    assert_eq!(
        c.store.list(&c.key("")).await.expect("list"),
        Vec::<ObjectMeta>::new()
    );
    c.store.delete(&key).await.expect("delete a missing key");
    c.store
        .delete(&c.key("never-was"))
        .await
        .expect("delete a key that never was");
}

/// `check` passes on a reachable store, and fails as Permanent (bad configuration, not worth
/// retrying) when the bucket does not exist. (A PUT into a missing bucket is Permanent on S3
/// and moto; s3s-fs creates the bucket's directory instead, so that is tested on moto only, by
/// `a_failure_that_repeats_is_loud`.)
async fn check(c: Ctx) {
    c.store.check().await.expect("check of a good store");
    if let Some(missing) = &c.missing_bucket {
        match missing.check().await {
            Err(StoreError::Permanent { message, .. }) => {
                assert!(message.contains("NoSuchBucket"), "{message}")
            }
            other => panic!("check of a missing bucket: {other:?}"),
        }
    }
}

/// Runs every body against the stores `make` gives, each on keys of its own, and fails with
/// the list of bodies that failed.
fn run_contract(implementation: &str, make: impl Fn() -> Ctx) {
    run_contract_but(implementation, &[], make)
}

/// `run_contract`, passing over the bodies `gaps` names, each with why: what an
/// implementation is known not to do, said in the output rather than failing one run in
/// many.
fn run_contract_but(implementation: &str, gaps: &[(&str, &str)], make: impl Fn() -> Ctx) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    let mut failed = Vec::new();
    for (gap, _) in gaps {
        assert!(
            BODIES.iter().any(|(name, _)| name == gap),
            "{implementation}: no body is called {gap}"
        );
    }
    let mut run = 0;
    for (name, body) in BODIES {
        if let Some((_, why)) = gaps.iter().find(|(gap, _)| gap == name) {
            eprintln!("store contract: {implementation}: {name}: not run ({why})");
            continue;
        }
        run += 1;
        let mut ctx = make();
        ctx.body = name;
        let task = rt.spawn(body(ctx));
        let outcome = rt.block_on(tokio::time::timeout(Duration::from_secs(300), task));
        let verdict = match outcome {
            Ok(Ok(())) => "pass".to_string(),
            Ok(Err(e)) => {
                let why = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    })
                    .unwrap_or_else(|| "cancelled".into());
                failed.push(format!("{name}: {why}"));
                "FAIL".into()
            }
            Err(_) => {
                failed.push(format!("{name}: timed out"));
                "FAIL (timeout)".into()
            }
        };
        eprintln!("store contract: {implementation}: {name}: {verdict}");
    }
    assert!(
        failed.is_empty(),
        "store contract on {implementation}: {} of {} failed:\n{}",
        failed.len(),
        run,
        failed.join("\n")
    );
}

fn s3_store(endpoint: &str, bucket: &str, prefix: &str, key: &str, secret: &str) -> S3Store {
    S3Store::new(&S3Settings {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint.into()),
        region: "us-east-1".into(),
        path_style: true,
        access_key_id: key.into(),
        secret_access_key: secret.into(),
        regions: None,
    })
}

#[test]
fn contract_on_s3s_fs() {
    let dir = common::scratch();
    let server = S3Server::start(&dir.path().join("s3"));
    let (ak, sk, bucket) = (
        common::s3::ACCESS_KEY,
        common::s3::SECRET_KEY,
        common::s3::BUCKET,
    );
    run_contract("s3s-fs", || Ctx {
        store: Arc::new(s3_store(&server.endpoint, bucket, "contract", ak, sk)),
        missing_bucket: Some(Arc::new(s3_store(
            &server.endpoint,
            "no-such-bucket",
            "",
            ak,
            sk,
        ))),
        paged: true,
        body: "",
    });
}

#[test]
fn contract_on_moto() {
    let Some(moto) = Moto::start_or_skip("contract_on_moto") else {
        return;
    };
    let (ak, sk, bucket) = (
        common::moto::ACCESS_KEY,
        common::moto::SECRET_KEY,
        common::moto::BUCKET,
    );
    // moto checks a condition, then stores the object, in Python between which another
    // request's thread may run (moto/s3/responses.py, `put_object`): two racing creates
    // seldom both succeed there, but may. Nothing of bucketfs's on moto races its writes.
    let not_atomic = "moto checks a PUT's condition and then writes; not one step";
    let gaps = [
        ("racing_creates", not_atomic),
        ("racing_replaces", not_atomic),
    ];
    run_contract_but("moto", &gaps, || Ctx {
        store: Arc::new(s3_store(&moto.endpoint, bucket, "contract", ak, sk)),
        missing_bucket: Some(Arc::new(s3_store(
            &moto.endpoint,
            "no-such-bucket",
            "",
            ak,
            sk,
        ))),
        paged: true,
        body: "",
    });
}

#[test]
fn contract_on_local_directory() {
    let dir = common::scratch();
    let root = dir.path().join("store");
    run_contract("local directory", || Ctx {
        store: Arc::new(LocalStore::new(&root).unwrap()),
        missing_bucket: None,
        paged: false,
        body: "",
    });
}

/// The S3 store pages a listing with StartAfter and takes a server's word for where it ends.
/// A server that answers a LIST wrongly must make the listing an error: not an endless one,
/// and never a shorter one (GC would count the segments of manifests it did not see
/// unneeded). Neither s3s-fs nor moto answers so of itself; the test server is told to.
#[test]
fn the_s3_store_refuses_a_listing_a_server_answers_wrongly() {
    use bucketfs::store::ReadStore;
    use std::sync::atomic::Ordering::SeqCst;
    let dir = common::scratch();
    let server = S3Server::start(&dir.path().join("s3"));
    let store = s3_store(
        &server.endpoint,
        common::s3::BUCKET,
        "lists",
        common::s3::ACCESS_KEY,
        common::s3::SECRET_KEY,
    );
    let keys = |listed: Vec<ObjectMeta>| listed.into_iter().map(|m| m.key).collect::<Vec<_>>();
    let faults = &server.faults;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for key in ["m/1", "m/2", "m/3"] {
            store
                .put(key, Bytes::from_static(b"x"), PutMode::Overwrite)
                .await
                .expect("put");
        }
        // Pages of one key, as a server may answer: every key once, in order.
        faults.list_page_keys.store(1, SeqCst);
        let first = store.list_page("m/", None).await.expect("a page");
        assert_eq!(keys(first.objects), ["m/1"]);
        assert_eq!(first.next.as_deref(), Some("m/1"));
        assert_eq!(
            keys(store.list("m/").await.expect("list")),
            ["m/1", "m/2", "m/3"]
        );

        // Ignoring StartAfter, the server hands the first page back: refused at the second
        // page, not followed round again.
        faults.list_ignores_start_after.store(true, SeqCst);
        let before = faults.requests.load(SeqCst);
        let listed = tokio::time::timeout(Duration::from_secs(60), store.list("m/"))
            .await
            .expect("the listing ended");
        let err = listed.expect_err("a listing that went round the same page");
        assert!(matches!(err, StoreError::Permanent { .. }), "{err}");
        assert!(err.to_string().contains("StartAfter"), "{err}");
        assert_eq!(
            faults.requests.load(SeqCst) - before,
            2,
            "LIST requests sent"
        );
        faults.list_ignores_start_after.store(false, SeqCst);

        // A truncated page with no keys leads nowhere: an error worth retrying, not the end.
        faults.list_truncated_empty.store(true, SeqCst);
        let err = store.list("m/").await.expect_err("a listing cut short");
        assert!(matches!(err, StoreError::Transient { .. }), "{err}");
        let err = store
            .list_page("m/", None)
            .await
            .expect_err("a page leading nowhere");
        assert!(matches!(err, StoreError::Transient { .. }), "{err}");
        faults.list_truncated_empty.store(false, SeqCst);
        assert_eq!(store.list("m/").await.expect("list").len(), 3);
    });
}

fn mount_on(moto: &Moto, mnt: &Path, cache: &Path, prefix: &str) -> Mount {
    let url = moto.url(prefix);
    Mount::start_with_env(mnt, cache, &["--bucket", url.as_str()], &moto.env())
}

/// The seed's own workload in small: a file big enough that its checkpoint segment goes up by
/// multipart upload (moto's answer to CompleteMultipartUpload is not the XML S3 sends), a
/// checkpoint, a clean stop, and a restore into an empty cache dir that reads it all back.
#[test]
fn bucketfs_checkpoints_multipart_segments_to_moto_and_restores() {
    let Some(moto) = Moto::start_or_skip("bucketfs_checkpoints_multipart_segments_to_moto") else {
        return;
    };
    let dir = common::scratch();
    let m = mount_on(&moto, &dir.path().join("a"), &dir.path().join("ca"), "db");
    let big = common::incompressible(MULTIPART_THRESHOLD + (5 << 20), 42);
    {
        let mut f = fs::File::create(m.mnt.join("big")).unwrap();
        f.write_all(&big).unwrap();
        f.sync_all().unwrap();
    }
    fs::write(m.mnt.join("small"), b"hello\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["checkpoint", "--cache-dir"])
        .arg(&m.cache)
        .output()
        .expect("run bucketfs checkpoint");
    assert!(
        out.status.success(),
        "bucketfs checkpoint failed: {}\nmount log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
    let log = m.log_text();
    // Whether this moto's answer needed settling (5.2.1's does; later versions' do not).
    for line in log
        .lines()
        .filter(|l| l.contains("CompleteMultipartUpload"))
    {
        eprintln!("mount log: {line}");
    }
    let status = m.stop();
    assert!(status.success(), "clean stop failed ({status}):\n{log}");

    let b = mount_on(&moto, &dir.path().join("b"), &dir.path().join("cb"), "db");
    let mut back = Vec::new();
    fs::File::open(b.mnt.join("big"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big, "the restored file differs");
    assert_eq!(fs::read(b.mnt.join("small")).unwrap(), b"hello\n");
    let log = b.log_text();
    assert!(
        b.stop().success(),
        "clean stop of the restore failed:\n{log}"
    );
}

/// A bucket deleted under a running mount: every checkpoint fails the same way, for good.
/// Someone must hear of it: an ERROR in the log, a metric that counts it, /healthz unhealthy.
/// When the bucket is back, the next checkpoint commits and /healthz is healthy again.
#[test]
fn a_failure_that_repeats_is_loud() {
    let Some(moto) = Moto::start_or_skip("a_failure_that_repeats_is_loud") else {
        return;
    };
    let dir = common::scratch();
    let url = moto.url("db");
    let m = Mount::start_with_env(
        &dir.path().join("a"),
        &dir.path().join("ca"),
        &["--bucket", url.as_str(), "--checkpoint-interval", "1s"],
        &moto.env(),
    );
    let addr = m.status().metrics_addr.expect("metrics served");
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    moto.delete_bucket();
    fs::write(m.mnt.join("f"), b"changed after the bucket went away").unwrap();
    wait_for(
        "/healthz to report the store failing",
        Duration::from_secs(60),
        || http_get(&addr, "/healthz").0 == 503,
    );
    let (_, health) = http_get(&addr, "/healthz");
    assert!(health.contains("NoSuchBucket"), "/healthz says: {health}");
    let (_, metrics) = http_get(&addr, "/metrics");
    let permanent: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("bucketfs_s3_permanent_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(permanent >= 1.0, "no permanent error counted:\n{metrics}");
    let log = m.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("NoSuchBucket")),
        "no ERROR line names the failure:\n{log}"
    );
    assert!(
        !log.contains(common::moto::SECRET_KEY),
        "the log holds the secret"
    );

    // The bucket comes back: the next checkpoint commits and the mount is healthy again.
    let (code, body) = moto.http("PUT", &format!("/{}", common::moto::BUCKET));
    assert_eq!(code, 200, "re-create the bucket: {body}");
    wait_for(
        "/healthz to recover once the bucket is back",
        Duration::from_secs(60),
        || http_get(&addr, "/healthz").0 == 200,
    );
    let log = m.log_text();
    assert!(m.stop().success(), "clean stop failed:\n{log}");
}
