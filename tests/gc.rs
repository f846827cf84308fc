//! Retention, GC and compaction (docs/gc.md) on the engine without a mount: what GC deletes
//! and what it must never delete, the fences and the GC boundary that keep a stalled writer
//! from committing into the past, orphans and their grace, compaction's space bound, and that every retained
//! checkpoint stays restorable. Time is passed to each pass (`gc_pass(now)`), so the grace and
//! the window are crossed without waiting.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bucketfs::checkpoint::{open_bucket_at, At, BucketFetcher, CheckpointError, GcSettings};
use bucketfs::fs::{Fetcher, FsError, PAGE_SIZE, ROOT_INO};
use bucketfs::gc::compact::CompactSettings;
use bucketfs::gc::{chunk_key, chunk_range, Collector, Retention, CATALOG_PREFIX};
use bucketfs::store::{LocalStore, ObjectMeta, ObjectStore, ReadStore};
use common::engine::{assert_same, pattern, restored, Dirs, Engine, Options, PAGE};

const HOUR_MS: u64 = 3_600_000;

/// GC that keeps only the newest `keep` checkpoints and deletes what has been unneeded for an
/// hour; compaction if `compact`.
fn gc(keep: u32, compact: bool) -> Options {
    Options {
        gc: Some(GcSettings::every(
            Duration::from_secs(3600),
            Retention {
                window: Duration::ZERO,
                min_checkpoints: keep,
                grace: Duration::from_secs(3600),
            },
            compact.then(CompactSettings::default),
        )),
        base_every: 4,
        ..Options::default()
    }
}

/// The same, with every checkpoint's runs in segments (none carried in its manifest): for
/// the tests that look at segments.
fn gc_segments(keep: u32, compact: bool) -> Options {
    Options {
        tune: Some(Box::new(|s| s.inline_bytes = 0)),
        ..gc(keep, compact)
    }
}

fn now_ms() -> u64 {
    bucketfs::checkpoint::now_ms()
}

/// Every key in the bucket directory, relative to it.
fn keys(bucket: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in ["manifests", "segments", "gc", "gc/catalog"] {
        let Ok(entries) = std::fs::read_dir(bucket.join(dir)) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if !name.starts_with('.') && !e.file_type().unwrap().is_dir() {
                out.insert(format!("{dir}/{name}"));
            }
        }
    }
    out
}

/// The chunks of GC's catalog in the bucket directory, in key order.
fn chunks(bucket: &Path) -> Vec<String> {
    let all = keys(bucket);
    all.into_iter()
        .filter(|k| k.starts_with(CATALOG_PREFIX))
        .collect()
}

fn epochs(bucket: &Path) -> Vec<u64> {
    keys(bucket)
        .iter()
        .filter_map(|k| bucketfs::checkpoint::epoch_of_key(k))
        .collect()
}

/// File `name` as the checkpoint at or before `at` holds it, read from the bucket alone.
fn read_at(bucket: &Path, at: At, name: &str) -> Result<Vec<u8>, String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(bucket).unwrap());
    let opened = open_bucket_at(&*store, rt.handle(), Some(at)).map_err(|e| e.to_string())?;
    let view = opened.view;
    let &(ino, _) = view
        .dirents
        .get(&(ROOT_INO, name.into()))
        .ok_or_else(|| format!("no {name} at {at}"))?;
    let size = view.inodes[&ino].size;
    let fetcher = BucketFetcher::new(
        store,
        rt.handle().clone(),
        Arc::new(parking_lot::RwLock::new(view)),
    );
    let mut bytes = fetcher.fetch(ino, 0..size.div_ceil(PAGE_SIZE))?;
    bytes.truncate(size as usize);
    Ok(bytes)
}

/// Rewrites page `i % pages` of `ino` with a new tag and checkpoints, `n` times; returns the
/// file's content after each checkpoint, with the epoch it committed.
fn rewrite_and_checkpoint(e: &Engine, ino: u64, pages: usize, n: usize) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let page = pattern((i % 250) as u8, 1);
        e.write(ino, ((i % pages) * PAGE) as u64, &page);
        let epoch =
            e.cp.checkpoint(false)
                .expect("checkpoint")
                .expect("a change")
                .epoch;
        out.push((epoch, e.read_all(ino)));
    }
    out
}

#[test]
fn retained_checkpoints_restore_and_expired_ones_are_collected_after_the_grace() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(5, false));
    let ino = e.create("data");
    e.write(ino, 0, &pattern(1, 8));
    let history = rewrite_and_checkpoint(&e, ino, 8, 20);
    let before = keys(&dirs.bucket());

    // The first pass finds what the newest 5 do not need, and deletes none of it.
    let t0 = now_ms();
    let first = e.cp.gc_pass(t0).expect("first pass");
    assert_eq!(first.deleted, 0, "nothing goes in the pass that finds it");
    assert!(first.pending > 0, "20 rewrites leave garbage: {first:?}");
    assert_eq!(first.retained, 5, "{first:?}");
    // Before the grace is up: still nothing.
    let early = e.cp.gc_pass(t0 + HOUR_MS - 1).expect("early pass");
    assert_eq!(early.deleted, 0, "{early:?}");
    let done = e.cp.gc_pass(t0 + HOUR_MS).expect("pass after the grace");
    assert_eq!(done.deleted, first.pending, "{done:?}");
    assert_eq!(done.pending, 0, "{done:?}");
    let after = keys(&dirs.bucket());
    assert!(
        after.len() < before.len(),
        "{} -> {} objects",
        before.len(),
        after.len()
    );

    // Every retained checkpoint restores what it held; the expired ones are refused.
    for (epoch, want) in &history {
        let got = read_at(&dirs.bucket(), At::Epoch(*epoch), "data");
        if *epoch >= done.oldest_retained {
            assert_same(&format!("epoch {epoch}"), &got.unwrap(), want);
        } else {
            let err = got.expect_err("an expired checkpoint");
            assert!(
                err.contains("no longer restorable") || err.contains("has no checkpoint"),
                "epoch {epoch}: {err}"
            );
        }
    }
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    let want = e.read_all(ino);
    e.crash();
    assert_same("restored latest", &restored(&dirs, 1, "data"), &want);
}

/// A GC pass of a process that knows nothing yet (a new `bucketfs gc`), deleting.
fn fresh_pass(bucket: &Path, now_ms: u64) -> bucketfs::gc::Report {
    new_process_pass(bucket, 1, now_ms, false)
}

/// A GC pass of a new process keeping the newest `keep` checkpoints, deleting unless
/// `dry_run`.
fn new_process_pass(bucket: &Path, keep: u32, now_ms: u64, dry_run: bool) -> bucketfs::gc::Report {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(bucket).unwrap());
    pass_of(&mut Collector::default(), store, keep, now_ms, dry_run)
}

/// A pass of `collector` (which holds what earlier passes of its process learnt) over
/// `store`, as `new_process_pass`.
fn pass_of(
    collector: &mut Collector,
    store: Arc<dyn ObjectStore>,
    keep: u32,
    now_ms: u64,
    dry_run: bool,
) -> bucketfs::gc::Report {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holds = || Ok(());
    let retention = gc(keep, false).gc.unwrap().retention;
    let mode = match dry_run {
        true => bucketfs::gc::Mode::DryRun,
        false => bucketfs::gc::Mode::Delete {
            holds: &holds,
            in_flight: &|_: &str| false,
        },
    };
    collector
        .pass(&store, rt.handle(), &retention, now_ms, mode)
        .unwrap()
}

/// A writer's first pass that fails part way (a manifest's GET in its second window of reads)
/// leaves its catalog holding the first window and the commits the writer posted; the next
/// pass reads the rest, which fall between the two, and must plan what a process that knows
/// nothing plans over the same bucket.
#[test]
fn a_pass_after_one_that_failed_part_way_plans_what_a_new_process_does() {
    let dirs = Dirs::new();
    let first = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(3, false));
    let a = first.create("a");
    rewrite_and_checkpoint(&first, a, 4, 80);
    first.cp.checkpoint(true).unwrap();
    let second = Engine::open(&dirs.cache(1), &dirs.bucket(), gc(3, false));
    let b = second.create("b");
    // Posted to the second writer's catalog: newer than every manifest its first pass reads.
    rewrite_and_checkpoint(&second, b, 2, 5);
    let missing = bucketfs::checkpoint::manifest_key(50);
    second.plan.miss_once(move |key| key == missing);
    let t0 = now_ms();
    let failed = second.cp.gc_pass(t0);
    assert!(
        failed.is_err(),
        "a pass that could not read epoch 50: {failed:?}"
    );
    let r = second.cp.gc_pass(t0).expect("the pass after it");
    let fresh = new_process_pass(&dirs.bucket(), 3, t0, true);
    let plan = |r: &bucketfs::gc::Report| {
        (
            (r.latest_epoch, r.retained, r.oldest_retained, r.boundary),
            (r.manifests, r.segments, r.chain_length, r.bucket_bytes),
            (r.pending, r.pending_bytes, r.orphans, r.pinned, r.fences),
        )
    };
    assert_eq!(plan(&r), plan(&fresh), "{r:?}\n{fresh:?}");
    assert!(r.manifests > 85 && r.pending > 0, "{r:?}");
}

/// A bucket directory that records the keys it is asked to GET, and can hide the chunks of
/// GC's catalog from a LIST (as a bucket written before they were).
#[derive(Debug)]
struct Seen {
    inner: LocalStore,
    hide_chunks: bool,
    gets: Mutex<Vec<String>>,
    puts: Mutex<Vec<String>>,
}

impl Seen {
    fn over(bucket: &Path, hide_chunks: bool) -> Arc<Seen> {
        Arc::new(Seen {
            inner: LocalStore::new(bucket).unwrap(),
            hide_chunks,
            gets: Mutex::default(),
            puts: Mutex::default(),
        })
    }
    fn gets_under(&self, prefix: &str) -> usize {
        let gets = self.gets.lock().unwrap();
        gets.iter().filter(|k| k.starts_with(prefix)).count()
    }
    fn puts_under(&self, prefix: &str) -> usize {
        let puts = self.puts.lock().unwrap();
        puts.iter().filter(|k| k.starts_with(prefix)).count()
    }
}

#[async_trait::async_trait]
impl ReadStore for Seen {
    async fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> bucketfs::store::StoreResult<bytes::Bytes> {
        self.gets.lock().unwrap().push(key.to_string());
        self.inner.get(key, range).await
    }
    async fn head(&self, key: &str) -> bucketfs::store::StoreResult<Option<ObjectMeta>> {
        self.inner.head(key).await
    }
    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> bucketfs::store::StoreResult<Vec<ObjectMeta>> {
        let mut listed = self.inner.list_after(prefix, after).await?;
        listed.retain(|o| !(self.hide_chunks && o.key.starts_with(CATALOG_PREFIX)));
        Ok(listed)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[async_trait::async_trait]
impl ObjectStore for Seen {
    async fn put(
        &self,
        key: &str,
        body: bytes::Bytes,
        mode: bucketfs::store::PutMode,
    ) -> bucketfs::store::StoreResult<String> {
        self.puts.lock().unwrap().push(key.to_string());
        self.inner.put(key, body, mode).await
    }
    async fn delete(&self, key: &str) -> bucketfs::store::StoreResult<()> {
        self.inner.delete(key).await
    }
}

/// (epoch, parent, created_ms, fence, the segments it brought).
type Known = (u64, Option<u64>, u64, bool, Vec<String>);

/// Every field of every summary in a catalog, by epoch.
fn catalog_of(c: &Collector) -> Vec<Known> {
    c.catalog
        .summaries_in(0..u64::MAX)
        .map(|(epoch, s)| {
            let names = s.segments.iter().map(|k| k.to_string()).collect();
            (epoch, s.parent, s.created_ms, s.fence, names)
        })
        .collect()
}

/// A deleting pass keeps its catalog in the bucket too, a chunk for each closed range of
/// epochs, so that a new process's first pass reads a chunk instead of every manifest in its
/// range, and learns exactly what reading them teaches. A chunk that does not decode is read
/// past and written again; one whose epochs have all gone below the boundary is collected
/// after the grace.
#[test]
fn a_new_process_reads_the_catalog_from_its_chunks_in_the_bucket() {
    // Eight epochs a chunk: the last closed range holds the boundary once it has risen.
    const SPAN: u64 = 8;
    let dirs = Dirs::new();
    let bucket = dirs.bucket();
    // Runs in segments: no manifest is kept for the pages it carries, which would raise the
    // boundary past most of them at the first pass.
    let mut options = gc_segments(3, false);
    options.gc.as_mut().unwrap().chunk_epochs = SPAN;
    let e = Engine::open(&dirs.cache(0), &bucket, options);
    let a = e.create("a");
    rewrite_and_checkpoint(&e, a, 4, 70);
    let t0 = now_ms();
    // The writer's own pass writes a chunk of every closed range of epochs (asking, before
    // each window of them, whether it still holds the prefix).
    e.cp.gc_pass(t0).expect("the writer's pass");
    e.crash();
    let listed = epochs(&bucket);
    let newest = *listed.last().unwrap();
    let as_store = |s: &Arc<Seen>| -> Arc<dyn ObjectStore> { s.clone() };
    let ranges: Vec<std::ops::Range<u64>> = (0..)
        .map(|k| k * SPAN..(k + 1) * SPAN)
        .take_while(|r| r.end - 1 <= newest)
        .collect();
    let want: Vec<String> = ranges.iter().map(chunk_key).collect();
    assert_eq!(
        chunks(&bucket),
        want,
        "{} manifests, the newest {newest}",
        listed.len()
    );

    // A new process reads them, and learns what one that reads every manifest learns.
    let fresh = |hide_chunks: bool| {
        let store = Seen::over(&bucket, hide_chunks);
        let mut c = Collector::default();
        let report = pass_of(&mut c, as_store(&store), 3, t0, true);
        (store, c, report)
    };
    let plan = |r: &bucketfs::gc::Report| {
        (
            (r.latest_epoch, r.retained, r.oldest_retained, r.boundary),
            (r.manifests, r.segments, r.chain_length),
            (r.orphans, r.pinned, r.fences, r.unreadable),
        )
    };
    // Each manifest in a chunk's range at or above the boundary comes from the chunk; the
    // chains of the retained checkpoints are read whole by both.
    let covered = |r: &bucketfs::gc::Report| {
        let end = ranges.last().unwrap().end;
        let now = epochs(&bucket);
        now.iter().filter(|&&e| e >= r.boundary && e < end).count()
    };
    let (by_chunks, c1, r1) = fresh(false);
    let (by_manifests, c2, r2) = fresh(true);
    assert_eq!(plan(&r1), plan(&r2), "{r1:?}\n{r2:?}");
    assert_eq!(catalog_of(&c1), catalog_of(&c2));
    assert_eq!(r1.catalog_chunks, ranges.len() as u64);
    let saved = by_manifests.gets_under("manifests/") - by_chunks.gets_under("manifests/");
    assert_eq!(saved, covered(&r1), "{r1:?}");
    assert!(
        saved >= 48,
        "{saved} manifest reads saved of {}",
        listed.len()
    );
    assert_eq!(by_chunks.gets_under(CATALOG_PREFIX), ranges.len());

    // A damaged chunk: its manifests are read instead, and a deleting pass that met it writes
    // it again, and only it; the next writes none.
    let last = ranges.last().unwrap().clone();
    let path = bucket.join(chunk_key(&last));
    std::fs::write(&path, b"not a chunk").unwrap();
    let (damaged, c3, r3) = fresh(false);
    assert_eq!(plan(&r3), plan(&r1));
    assert_eq!(catalog_of(&c3), catalog_of(&c1));
    let in_last = listed.iter().filter(|e| last.contains(e)).count();
    assert_eq!(
        damaged.gets_under("manifests/"),
        by_chunks.gets_under("manifests/") + in_last
    );
    let deleting_pass = |now_ms: u64| {
        let store = Seen::over(&bucket, false);
        let mut c = Collector::default().with_chunk_epochs(SPAN);
        let report = pass_of(&mut c, as_store(&store), 3, now_ms, false);
        (store.puts_under(CATALOG_PREFIX), report)
    };
    assert_eq!(
        deleting_pass(t0).0,
        1,
        "chunks written by the pass that met the damaged one"
    );
    assert_ne!(std::fs::read(&path).unwrap(), b"not a chunk");
    assert_eq!(
        deleting_pass(t0).0,
        0,
        "chunks written with every one in the bucket"
    );
    let (mended, c4, _) = fresh(false);
    assert_eq!(catalog_of(&c4), catalog_of(&c1));
    assert_eq!(
        mended.gets_under("manifests/"),
        by_chunks.gets_under("manifests/")
    );

    // Past the grace the expired manifests go and the boundary rises past them, into the
    // chunks' ranges. A key it freed is landed on again (as a stalled writer's commit into
    // the past would be; here another epoch's manifest, which reads as unreadable there):
    // a new process takes no epoch below the boundary from a chunk, and still learns what
    // one that reads every manifest learns.
    let (_, raised) = deleting_pass(t0 + HOUR_MS);
    assert!(raised.deleted > 0 && raised.boundary > SPAN, "{raised:?}");
    // The next pass forgets the deleted keys (a key pending in the state is not read), and
    // finds the chunks all below the boundary unneeded.
    let (_, next) = deleting_pass(t0 + HOUR_MS + 1);
    let below = ranges.iter().filter(|r| r.end <= next.boundary).count() as u64;
    assert!(below > 0, "no chunk fell below {}", next.boundary);
    let now = epochs(&bucket);
    let freed = *listed.iter().rfind(|e| !now.contains(e)).unwrap();
    let manifest = |e: u64| bucket.join(bucketfs::checkpoint::manifest_key(e));
    std::fs::copy(manifest(newest), manifest(freed)).unwrap();
    let (by_chunks, c5, r5) = fresh(false);
    let (by_manifests, c6, r6) = fresh(true);
    assert_eq!(plan(&r5), plan(&r6), "{r5:?}\n{r6:?}");
    assert_eq!(
        r5.pending,
        r6.pending + below,
        "the chunks below the boundary wait"
    );
    assert_eq!(catalog_of(&c5), catalog_of(&c6));
    assert_eq!(r5.unreadable, 1, "the freed key landed on again: {r5:?}");
    let saved = by_manifests.gets_under("manifests/") - by_chunks.gets_under("manifests/");
    assert_eq!(saved, covered(&r5), "{r5:?}");
    assert!(
        saved > 0 && saved < covered(&r1),
        "{saved} of {}",
        covered(&r1)
    );
    std::fs::remove_file(manifest(freed)).unwrap();

    // A chunk all below the boundary goes once it has waited out the grace.
    deleting_pass(t0 + 2 * HOUR_MS + 1);
    let left: Vec<String> = ranges
        .iter()
        .filter(|r| r.end > next.boundary)
        .map(chunk_key)
        .collect();
    assert_eq!(chunks(&bucket), left, "boundary {}", next.boundary);
    assert!(chunks(&bucket).iter().all(|k| chunk_range(k).is_some()));
}

/// The path of manifest `epoch` in the bucket directory.
fn manifest_path(bucket: &Path, epoch: u64) -> std::path::PathBuf {
    bucket.join(bucketfs::checkpoint::manifest_key(epoch))
}

/// Manifest `epoch` as the bucket directory holds it.
fn manifest_at(bucket: &Path, epoch: u64) -> bucketfs::manifest::Manifest {
    let key = bucketfs::checkpoint::manifest_key(epoch);
    let bytes = std::fs::read(bucket.join(&key)).expect("the manifest");
    bucketfs::manifest::Manifest::decode(&bytes, &key).unwrap()
}

/// `bucketfs gc`'s retention that keeps the newest `keep` checkpoints and deletes what has
/// been unneeded for `grace`.
fn keeping(keep: u32, grace: Duration) -> Retention {
    Retention {
        window: Duration::ZERO,
        min_checkpoints: keep,
        grace,
    }
}

/// A manifest missing inside the retained window (between the oldest retained checkpoint
/// and the newest) is a checkpoint that cannot be restored, though retained: `verify` finds
/// it, whether the manifest after it is a delta naming it as its parent or a base naming
/// nothing (it walked the oldest retained checkpoint's chain only, and checked the extents of
/// the manifests after it, so found neither).
#[test]
fn verify_finds_a_manifest_missing_inside_the_retained_window() {
    let dirs = Dirs::new();
    // Runs in segments: a manifest that carried runs a later one uses is found missing by
    // that one's extents already.
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(8, false));
    let a = e.create("a");
    rewrite_and_checkpoint(&e, a, 4, 20);
    let r = e.cp.gc_pass(now_ms()).expect("pass");
    let latest = e.cp.view().read().epoch;
    e.crash();
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let verify = || bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert_eq!(verify(), Vec::<String>::new());
    let parent_of = |epoch: u64| manifest_at(&dirs.bucket(), epoch).parent;
    // The one after the oldest retained (a delta follows it: base every 4), the one just
    // before the first base after that, and the oldest retained itself.
    let base = (r.oldest_retained + 2..latest)
        .find(|&e| parent_of(e).is_none())
        .expect("a base inside the window");
    for gone in [r.oldest_retained + 1, base - 1, r.oldest_retained] {
        let key = bucketfs::checkpoint::manifest_key(gone);
        let path = dirs.bucket().join(&key);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let broken = verify();
        assert!(
            broken
                .iter()
                .any(|b| b.starts_with(&format!("{key}: missing"))),
            "{key} gone: {broken:?}"
        );
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(verify(), Vec::<String>::new());
    }
}

/// `bucketfs verify` checks every extent a restore of a retained checkpoint would read: those
/// of the oldest retained checkpoint's whole image (here a page written long before it, carried
/// in an early manifest that GC keeps for it) and those of every manifest after it (here the
/// newest, which carries its own runs). A damaged run and a missing carrier are both found,
/// under the key of the checkpoint that needs them, as is a missing link of the oldest
/// retained checkpoint's chain.
#[test]
fn verify_finds_a_run_a_retained_checkpoint_needs_damaged_or_gone() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(4, false));
    let b = e.create("b");
    e.write(b, 0, &pattern(7, 1));
    let early = e.cp.checkpoint(false).unwrap().expect("a change").epoch;
    let a = e.create("a");
    rewrite_and_checkpoint(&e, a, 4, 21);
    let r = e.cp.gc_pass(now_ms()).expect("pass");
    let newest = e.cp.view().read().epoch;
    e.crash();
    assert!(early < r.oldest_retained, "{early} {r:?}");
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let verify = || bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert_eq!(verify(), Vec::<String>::new());
    let key = bucketfs::checkpoint::manifest_key;
    let path = |epoch: u64| manifest_path(&dirs.bucket(), epoch);
    let decode = |epoch: u64| manifest_at(&dirs.bucket(), epoch);
    // Where the run a manifest carries for `ino` starts in its object.
    let carried = |epoch: u64, ino: u64| {
        let m = decode(epoch);
        let ext = m.extents.iter().find(|x| x.run.ino == ino);
        let ext = ext.unwrap_or_else(|| panic!("{} names no run of ino {ino}", key(epoch)));
        assert_eq!(&*ext.segment, key(epoch), "not carried");
        ext.run.offset
    };
    let flip = |epoch: u64, at: u64| {
        let mut bytes = std::fs::read(path(epoch)).unwrap();
        bytes[at as usize] ^= 0x40;
        std::fs::write(path(epoch), bytes).unwrap();
    };
    let finds = |needs: u64, damaged: u64, what: &str| {
        let broken = verify();
        let want = format!("{}: extent of ino=", key(needs));
        assert!(
            broken
                .iter()
                .any(|l| l.starts_with(&want) && l.contains(&key(damaged))),
            "{what}: {broken:?}"
        );
    };

    // b's page, in the early carrier, damaged: the oldest retained image needs it.
    let at = carried(early, b);
    flip(early, at);
    finds(r.oldest_retained, early, "the early carrier's run damaged");
    flip(early, at);
    assert_eq!(verify(), Vec::<String>::new());
    // ... and gone.
    let bytes = std::fs::read(path(early)).unwrap();
    std::fs::remove_file(path(early)).unwrap();
    finds(r.oldest_retained, early, "the early carrier gone");
    // ... and replaced by another carrier whose one run starts where b's did: whole, but with
    // another crc.
    let other = (early + 1..newest)
        .find(|&e| carried(e, a) == at)
        .expect("a carrier laid out as the early one");
    std::fs::copy(path(other), path(early)).unwrap();
    let broken = verify();
    assert!(
        broken.iter().any(|l| l.starts_with(&key(r.oldest_retained))
            && l.contains(&format!("at offset {at} of {}, the run has", key(early)))),
        "{broken:?}"
    );
    std::fs::write(path(early), &bytes).unwrap();

    // The newest checkpoint's own run damaged.
    let at = carried(newest, a);
    flip(newest, at);
    finds(newest, newest, "the newest checkpoint's own run damaged");
    flip(newest, at);
    assert_eq!(verify(), Vec::<String>::new());

    // A link of the oldest retained checkpoint's chain gone.
    let parent = decode(r.oldest_retained).parent.expect("a delta");
    let bytes = std::fs::read(path(parent)).unwrap();
    std::fs::remove_file(path(parent)).unwrap();
    let broken = verify();
    assert!(
        broken.iter().any(|l| l.starts_with(&format!(
            "{}: the chain of the oldest retained checkpoint needs {}",
            key(r.oldest_retained),
            key(parent)
        ))),
        "{broken:?}"
    );
    std::fs::write(path(parent), &bytes).unwrap();
    assert_eq!(verify(), Vec::<String>::new());
}

/// What `verify` writes as progress, a line at a time, handed to `on_line` as it comes: a
/// test acts on the bucket between the steps of a run.
struct OnLine<F: FnMut(&str)> {
    line: Vec<u8>,
    on_line: F,
}

impl<F: FnMut(&str)> OnLine<F> {
    fn new(on_line: F) -> Self {
        let line = Vec::new();
        OnLine { line, on_line }
    }
}

impl<F: FnMut(&str)> std::io::Write for OnLine<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                (self.on_line)(&String::from_utf8_lossy(&self.line));
                self.line.clear();
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `verify` reads the oldest retained checkpoint's chain again once it has read every
/// manifest (it keeps none of them). A link deleted in between is reported, unless a GC pass
/// has moved the oldest retained checkpoint on meanwhile (and may have deleted it): then the
/// chain checked is the new oldest's. After five such moves in one run it stops and says
/// that the chain was not checked.
#[test]
fn verify_reads_the_oldest_retained_chain_again_and_a_link_gone_meanwhile_is_broken_unless_gc_moved_on(
) {
    let dirs = Dirs::new();
    // A base every 40 checkpoints: the chain of the oldest retained one (epoch 34 of 51) is
    // longer than what verify fetches at once (32), and so are those of the five after it.
    let e = Engine::open(
        &dirs.cache(0),
        &dirs.bucket(),
        Options {
            base_every: 40,
            ..gc(18, false)
        },
    );
    let a = e.create("a");
    rewrite_and_checkpoint(&e, a, 4, 50);
    let r = e.cp.gc_pass(now_ms()).expect("pass");
    // A clean stop, after which `bucketfs gc` may delete.
    e.cp.checkpoint(true).unwrap();
    e.crash();
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let key = bucketfs::checkpoint::manifest_key;
    let path = |epoch: u64| manifest_path(&dirs.bucket(), epoch);
    let parent_of = |epoch: u64| manifest_at(&dirs.bucket(), epoch).parent;
    let chain_of = |mut epoch: u64| {
        let mut chain = vec![epoch];
        while let Some(p) = parent_of(epoch) {
            chain.push(p);
            epoch = p;
        }
        chain
    };
    let oldest = chain_of(r.oldest_retained);
    assert!(oldest.len() > 33, "a chain of {}", oldest.len());
    // The link of the second window that goes.
    let link = oldest[1];
    let verify = |on_line: &mut dyn FnMut(&str)| {
        let mut progress = OnLine::new(on_line);
        bucketfs::admin::verify(&url, &mut progress).unwrap()
    };
    let bytes = std::fs::read(path(link)).unwrap();
    assert_eq!(verify(&mut |_| ()), Vec::<String>::new());

    // Gone once every manifest was read: broken.
    let last = format!(
        "verify: manifest {n}/{n} ",
        n = epochs(&dirs.bucket()).len()
    );
    let broken = verify(&mut |l| {
        if l.starts_with(&last) {
            std::fs::remove_file(path(link)).unwrap();
        }
    });
    let want = format!(
        "{}: the chain of the oldest retained checkpoint needs {}, gone since it was read",
        key(r.oldest_retained),
        key(link)
    );
    assert_eq!(broken, [want]);
    std::fs::write(path(link), &bytes).unwrap();

    // Gone at every try, while a GC pass moves the oldest retained checkpoint on by one each
    // time: after five tries it says that it did not check, and which link it missed last.
    // Each try, once it has read its first window: the link taken at the last try is put
    // back, a pass keeps one checkpoint fewer (it needs the whole chain to count the rest as
    // checkpoints), and the try's own link (in its second window) is taken.
    let keep_after = |epoch: u64| {
        let kept = epochs(&dirs.bucket())
            .iter()
            .filter(|&&e| e > epoch)
            .count();
        keeping(u32::try_from(kept).unwrap(), Duration::from_secs(3600))
    };
    let mut oldest_now = r.oldest_retained;
    let mut taken: Option<(u64, Vec<u8>)> = None;
    let mut tries = 0;
    let chased = verify(&mut |l| {
        if !l.starts_with("verify: chain 1/") {
            return;
        }
        tries += 1;
        if let Some((epoch, bytes)) = taken.take() {
            std::fs::write(path(epoch), bytes).unwrap();
        }
        let retention = keep_after(oldest_now);
        bucketfs::admin::gc(&url, &retention, false, false, &mut std::io::sink()).unwrap();
        let chain = chain_of(oldest_now);
        assert!(chain.len() > 33, "try {tries}: a chain of {}", chain.len());
        taken = Some((chain[1], std::fs::read(path(chain[1])).unwrap()));
        std::fs::remove_file(path(chain[1])).unwrap();
        oldest_now += 1;
    });
    assert_eq!(tries, 5, "verify tried {tries} times");
    let (missed, bytes) = taken.expect("a link taken");
    let want = format!(
        "{}: the chain of the oldest retained checkpoint needs {}, gone since it was read while \
         GC passes moved the oldest retained checkpoint on five times: not checked, run verify \
         again",
        key(oldest_now - 1),
        key(missed)
    );
    assert_eq!(chased, [want]);
    std::fs::write(path(missed), bytes).unwrap();

    // Gone while the chain is read, and a GC pass (keeping fewer) has moved on past the next
    // base: the new oldest retained checkpoint is checked, whose chain does not need it.
    let link = chain_of(oldest_now)[1];
    let newer = (oldest_now + 1..)
        .find(|&e| !chain_of(e).contains(&link))
        .expect("a base after the link");
    let keep = epochs(&dirs.bucket())
        .iter()
        .filter(|&&e| e >= newer)
        .count();
    let retention = keeping(u32::try_from(keep).unwrap(), Duration::from_secs(3600));
    let mut tries = 0;
    let broken = verify(&mut |l| {
        if l.starts_with("verify: chain 1/") {
            tries += 1;
            if tries == 1 {
                std::fs::remove_file(path(link)).unwrap();
                bucketfs::admin::gc(&url, &retention, false, false, &mut std::io::sink()).unwrap();
            }
        }
    });
    assert_eq!(tries, 2, "verify read {tries} chains");
    assert_eq!(broken, Vec::<String>::new());
}

/// A GC pass that raises the boundary and the oldest retained checkpoint and deletes below
/// them while `verify` reads the manifests leaves nothing for it to report: what it reads
/// after the pass is judged by the boundary and the oldest retained checkpoint as they are
/// at its end (the manifests deleted before it read them are no gap, the segments and
/// carriers gone are no expired checkpoint's concern).
#[test]
fn verify_beside_a_gc_pass_that_deletes_finds_nothing_wrong() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(40, false));
    let a = e.create("a");
    rewrite_and_checkpoint(&e, a, 4, 60);
    e.cp.gc_pass(now_ms()).expect("pass");
    e.cp.checkpoint(true).unwrap();
    e.crash();
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    assert_eq!(
        bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap(),
        Vec::<String>::new()
    );
    let before = epochs(&dirs.bucket());
    let retention = keeping(3, Duration::ZERO);
    let mut passed = false;
    let mut progress = OnLine::new(|l: &str| {
        if l.starts_with("verify: manifest 10/") && !passed {
            passed = true;
            // The first pass finds what is unneeded, the second deletes it.
            for _ in 0..2 {
                bucketfs::admin::gc(&url, &retention, false, false, &mut std::io::sink()).unwrap();
            }
        }
    });
    let broken = bucketfs::admin::verify(&url, &mut progress).unwrap();
    assert!(passed);
    let after = epochs(&dirs.bucket());
    assert!(
        after.len() + 20 < before.len(),
        "the pass deleted {} of {} manifests",
        before.len() - after.len(),
        before.len()
    );
    assert_eq!(broken, Vec::<String>::new());
}

/// `bucketfs ls` shows every checkpoint in epoch order (more than two of the windows of 32
/// it reads at a time), each with its kind and whether it is retained, or with `last` only
/// the newest few; a manifest deleted between the LIST and its read (by a GC pass beside) is
/// passed over.
#[test]
fn ls_shows_every_checkpoint_in_order_or_the_newest_few() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(5, false));
    let a = e.create("a");
    rewrite_and_checkpoint(&e, a, 4, 70);
    let r = e.cp.gc_pass(now_ms()).expect("pass");
    e.crash();
    let all = epochs(&dirs.bucket());
    assert!(all.len() > 64, "{}", all.len());
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    // The epoch and the whole of each line; `at_header` runs once the header is out, after
    // the LIST and before any manifest is read.
    let ls = |last, at_header: &mut dyn FnMut()| {
        let mut lines = Vec::new();
        let mut out = OnLine::new(|l: &str| {
            if lines.is_empty() {
                assert!(l.trim_start().starts_with("EPOCH"), "{l}");
                at_header();
            }
            lines.push(l.to_string());
        });
        bucketfs::admin::ls(&url, last, &mut out).unwrap();
        let line = |l: &String| {
            let epoch = l.split_whitespace().next().unwrap().parse::<u64>().unwrap();
            (epoch, l.clone())
        };
        lines[1..].iter().map(line).collect::<Vec<_>>()
    };
    let listed = ls(None, &mut || ());
    let shown: Vec<u64> = listed.iter().map(|(e, _)| *e).collect();
    assert_eq!(shown, all);
    for (epoch, line) in &listed {
        let kind = match manifest_at(&dirs.bucket(), *epoch).parent {
            None => "base",
            Some(_) => "delta",
        };
        assert_eq!(line.split_whitespace().nth(1), Some(kind), "{line}");
        let note = &line[line.find(kind).unwrap()..];
        match *epoch >= r.oldest_retained {
            true => assert!(note.ends_with("retained"), "{line}"),
            false => assert!(
                note.ends_with("expired") || note.contains("below the GC boundary"),
                "{line}"
            ),
        }
    }
    assert!(r.oldest_retained > all[0], "{r:?}: nothing expired");
    assert_eq!(ls(Some(3), &mut || ()), listed[listed.len() - 3..]);
    assert_eq!(ls(Some(all.len() + 10), &mut || ()), listed);

    let gone = dirs
        .bucket()
        .join(bucketfs::checkpoint::manifest_key(all[40]));
    let without: Vec<_> = listed
        .iter()
        .filter(|(e, _)| *e != all[40])
        .cloned()
        .collect();
    let listing = ls(None, &mut || std::fs::remove_file(&gone).unwrap());
    assert_eq!(listing, without);
}

/// `bucketfs verify` checks GC's catalog in the bucket against the manifests: a new process's
/// first pass takes what a chunk says instead of reading them, so a chunk that names the wrong
/// segments would have GC delete what a checkpoint uses. A chunk another prefix wrote (whole,
/// with its checksum, at the same range's key) and one that does not decode are both found.
#[test]
fn verify_finds_a_chunk_of_the_catalog_that_is_not_what_the_manifests_say() {
    const SPAN: u64 = 8;
    let write = |dirs: &Dirs| {
        let mut options = gc_segments(3, false);
        options.gc.as_mut().unwrap().chunk_epochs = SPAN;
        let e = Engine::open(&dirs.cache(0), &dirs.bucket(), options);
        let a = e.create("a");
        // More manifests than verify fetches at once (32), in many chunks.
        rewrite_and_checkpoint(&e, a, 4, 80);
        e.cp.gc_pass(now_ms()).expect("the writer's pass");
        e.crash();
    };
    let (ours, theirs) = (Dirs::new(), Dirs::new());
    write(&ours);
    write(&theirs);
    let key = chunk_key(&(0..SPAN));
    let (path, other) = (ours.bucket().join(&key), theirs.bucket().join(&key));
    let written = std::fs::read(&path).expect("the writer's pass wrote the first chunk");
    assert_ne!(written, std::fs::read(&other).unwrap());
    let verify = || {
        let url = bucketfs::bucket::BucketUrl::File(ours.bucket());
        let mut progress = Vec::new();
        let broken = bucketfs::admin::verify(&url, &mut progress).unwrap();
        (broken, String::from_utf8(progress).unwrap())
    };
    let (broken, progress) = verify();
    assert!(broken.is_empty(), "{broken:?}");
    assert!(
        progress
            .lines()
            .any(|l| l.starts_with("verify: chunk 1/") && l.ends_with(&format!(" {key}"))),
        "{progress}"
    );

    // Each chunk in turn (verify compares a chunk once it has read past its range, and keeps
    // only what the chunks not yet compared may need).
    let all = chunks(&ours.bucket());
    assert!(all.len() >= 2, "{all:?}");
    for key in &all {
        let (path, other) = (ours.bucket().join(key), theirs.bucket().join(key));
        let ours_was = std::fs::read(&path).unwrap();
        std::fs::copy(&other, &path).unwrap();
        let (broken, _) = verify();
        // Every epoch it holds is another writer's (compared whole, not before verify had
        // read them all), and its segments are the other writer's: what would have GC
        // delete ours.
        let said = bucketfs::gc::decode_chunk(&std::fs::read(&other).unwrap(), key).unwrap();
        assert!(said.len() as u64 >= SPAN - 1, "{key}: {said:?}"); // no epoch 0
        let n = said.len();
        let want = format!("{key}: says other than the manifests of {n} epoch(s), from ");
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert!(
            broken[0].starts_with(&want) && broken[0].contains("segments"),
            "{broken:?}"
        );
        std::fs::write(&path, ours_was).unwrap();
    }

    std::fs::write(&path, b"not a chunk").unwrap();
    let (broken, _) = verify();
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].starts_with(&format!("{key}: ")), "{broken:?}");
    std::fs::write(&path, &written).unwrap();

    // A key under the catalog's prefix that names no range is no chunk a pass would take:
    // reported, after the others.
    let junk = format!("{CATALOG_PREFIX}junk");
    std::fs::write(ours.bucket().join(&junk), b"{}").unwrap();
    let (broken, progress) = verify();
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].starts_with(&format!("{junk}: ")), "{broken:?}");
    let last = progress.lines().rfind(|l| l.starts_with("verify: chunk "));
    assert!(last.is_some_and(|l| l.ends_with(&junk)), "{progress}");
    std::fs::remove_file(ours.bucket().join(&junk)).unwrap();

    std::fs::write(&path, &written).unwrap();
    assert_eq!(verify().0, Vec::<String>::new());
}

/// A writer that wrote file `a` and stalled after its checkpoint (a clean stop if `clean`),
/// and another that took the prefix over, rewrote file `b` twelve times and ran GC twice, an
/// hour apart, so that what the grace allows is collected.
struct TakenOver {
    stalled: Engine,
    a: u64,
    /// The epoch the stalled writer commits next: the taker's first.
    next: u64,
    _taker: Engine,
    /// File b after each of the taker's checkpoints.
    history: Vec<(u64, Vec<u8>)>,
    t0: u64,
    /// The second GC pass.
    report: bucketfs::gc::Report,
}

fn stall_and_take_over(dirs: &Dirs, clean: bool) -> TakenOver {
    let stalled = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(1, false));
    let a = stalled.create("a");
    stalled.write(a, 0, &pattern(1, 2));
    stalled.cp.checkpoint(clean).unwrap();
    let next = stalled.cp.view().read().epoch + 1;
    let taker = Engine::open(&dirs.cache(1), &dirs.bucket(), gc(1, false));
    let b = taker.create("b");
    let history = rewrite_and_checkpoint(&taker, b, 2, 12);
    let t0 = now_ms();
    taker.cp.gc_pass(t0).unwrap();
    let report = taker.cp.gc_pass(t0 + HOUR_MS).unwrap();
    TakenOver {
        stalled,
        a,
        next,
        _taker: taker,
        history,
        t0,
        report,
    }
}

#[test]
fn a_stalled_writer_fails_on_the_takeovers_fence_which_gc_never_collects() {
    let dirs = Dirs::new();
    // The taker's first manifest, at `next`, is a fence; GC collects everything around it.
    let TakenOver {
        stalled,
        a,
        next,
        history,
        t0,
        report: r,
        ..
    } = stall_and_take_over(&dirs, false);
    assert!(r.deleted > 0, "{r:?}");
    assert_eq!(r.fences, 1, "{r:?}");
    assert!(r.boundary > next, "{r:?}");
    let kept = epochs(&dirs.bucket());
    assert!(
        kept.contains(&next),
        "the fence {next} was collected: {kept:?}"
    );
    // Below it only what holds pages still used (file a's, carried by the stalled writer's
    // last checkpoint) is left.
    let below = kept.iter().filter(|&&e| e < next).count() as u64;
    assert_eq!(below, r.pinned, "{kept:?} {r:?}");
    assert!(!kept.contains(&1), "{kept:?}");

    // A GC that has forgotten everything (its state gone, a new process) still keeps it,
    // and keeps an object below the boundary that it cannot read (it might be a fence).
    std::fs::remove_file(dirs.bucket().join("gc/state")).unwrap();
    let garbage = bucketfs::checkpoint::manifest_key(1);
    std::fs::write(dirs.bucket().join(&garbage), b"not a manifest").unwrap();
    for hours in [2, 3] {
        let r = fresh_pass(&dirs.bucket(), t0 + hours * HOUR_MS);
        assert_eq!((r.fences, r.unreadable), (1, 1), "{r:?}");
    }
    let kept = epochs(&dirs.bucket());
    assert!(kept.contains(&next) && kept.contains(&1), "{kept:?}");
    // `ls` names both, and `verify` finds the bucket whole.
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let mut listing = Vec::new();
    bucketfs::admin::ls(&url, None, &mut listing).unwrap();
    let listing = String::from_utf8(listing).unwrap();
    assert!(
        listing.contains("a takeover's fence, kept for good"),
        "{listing}"
    );
    assert!(listing.contains("unreadable, kept"), "{listing}");
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");

    // The stalled writer wakes up: its create-if-absent of `next` fails on the fence.
    stalled.write(a, 0, &pattern(9, 2));
    match stalled.cp.checkpoint(false) {
        Err(CheckpointError::Fenced { .. }) => {}
        other => panic!("a commit into the past was believed: {other:?}"),
    }
    stalled.fs.open(a, libc::O_RDWR).unwrap();
    assert!(matches!(stalled.fs.write(a, 0, b"x"), Err(FsError::Fenced)));
    // The bucket is the other writer's.
    let latest = history.last().unwrap();
    assert_same(
        "b",
        &read_at(&dirs.bucket(), At::Epoch(u64::MAX), "b").unwrap(),
        &latest.1,
    );
    assert_same(
        "a",
        &read_at(&dirs.bucket(), At::Epoch(u64::MAX), "a").unwrap(),
        &pattern(1, 2),
    );
}

/// A takeover of a prefix whose tip is a clean stop writes no fence (its writer has gone),
/// so GC collects that epoch like any other. A writer that committed again after its own
/// clean stop must then learn from the boundary that its commit landed in the past.
#[test]
fn a_writer_whose_tip_is_a_clean_stop_checks_the_boundary_after_it_commits() {
    let dirs = Dirs::new();
    let TakenOver {
        stalled,
        a,
        next,
        history,
        report: r,
        ..
    } = stall_and_take_over(&dirs, true);
    assert_eq!(r.fences, 0, "{r:?}");
    assert!(
        !epochs(&dirs.bucket()).contains(&next),
        "manifest {next} (the takeover after a clean stop) was collected"
    );

    // Its create-if-absent of `next` succeeds, and it must not believe it.
    stalled.write(a, 0, &pattern(9, 2));
    match stalled.cp.checkpoint(false) {
        Err(CheckpointError::Fenced { .. }) => {}
        other => panic!("a commit into the past was believed: {other:?}"),
    }
    assert!(matches!(stalled.fs.write(a, 0, b"x"), Err(FsError::Fenced)));
    assert_same(
        "b",
        &read_at(&dirs.bucket(), At::Epoch(u64::MAX), "b").unwrap(),
        &history.last().unwrap().1,
    );
}

/// What a commit costs in requests: after a takeover, a small checkpoint is one PUT (its
/// runs carried in the manifest) and nothing read; after a clean stop, the next commit also
/// reads the GC boundary. (The takeover and the clean stop note the tip; the next note is
/// due only hundreds of epochs later, so these commits send none.)
#[test]
fn a_small_commit_is_one_put_and_reads_the_boundary_only_after_a_clean_stop() {
    let dirs = Dirs::new();
    Engine::open(&dirs.cache(0), &dirs.bucket(), Options::default()).crash();
    let e = Engine::open(&dirs.cache(1), &dirs.bucket(), Options::default());
    let ino = e.create("f");
    let commit = |tag: u8| {
        e.write(ino, 0, &pattern(tag, 1));
        let before = e.plan.counts();
        e.checkpoint();
        let after = e.plan.counts();
        (after.puts - before.puts, after.gets - before.gets)
    };
    assert_eq!(
        commit(1),
        (1, 0),
        "(PUTs, GETs) of a commit after a takeover"
    );
    assert_eq!(commit(2), (1, 0));
    e.cp.checkpoint(true).unwrap();
    assert_eq!(
        commit(3),
        (1, 1),
        "(PUTs, GETs) of the commit after a clean stop"
    );
    assert_eq!(commit(4), (1, 0));
}

#[test]
fn a_fenced_writers_gc_deletes_nothing() {
    let dirs = Dirs::new();
    let old = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(1, false));
    let ino = old.create("data");
    rewrite_and_checkpoint(&old, ino, 4, 12);
    let t0 = now_ms();
    let r = old.cp.gc_pass(t0).unwrap();
    assert!(r.pending > 0, "garbage is waiting: {r:?}");
    let _new = Engine::open(&dirs.cache(1), &dirs.bucket(), gc(1, false));
    let before = keys(&dirs.bucket());
    match old.cp.gc_pass(t0 + HOUR_MS) {
        Err(CheckpointError::Fenced { .. }) => {}
        other => panic!("a fenced writer's GC ran: {other:?}"),
    }
    assert_eq!(keys(&dirs.bucket()), before, "a fenced writer deleted");
}

#[test]
fn an_uncommitted_segment_is_collected_only_once_it_is_older_than_the_grace() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, false));
    let ino = e.create("data");
    e.write(ino, 0, &pattern(3, 4));
    e.checkpoint();
    // An upload of a checkpoint that never committed: a writer that crashed before its
    // manifest, at an epoch the bucket has passed since. (One at an epoch above every
    // manifest may still be under way: see the next test.)
    let orphan = "segments/00000000000000000001-feedfacefeedface-7-0000.seg";
    std::fs::write(dirs.bucket().join(orphan), b"not committed yet").unwrap();

    let t0 = now_ms();
    let r = e.cp.gc_pass(t0).unwrap();
    assert_eq!(r.orphans, 1, "{r:?}");
    e.cp.gc_pass(t0 + HOUR_MS - 1).unwrap();
    assert!(
        keys(&dirs.bucket()).contains(orphan),
        "younger than the grace: kept"
    );
    // One uploaded later is seen for the first time now: it has its own grace.
    let late = "segments/00000000000000000001-feedfacefeedface-8-0000.seg";
    std::fs::write(dirs.bucket().join(late), b"seen later").unwrap();
    let r = e.cp.gc_pass(t0 + HOUR_MS).unwrap();
    assert_eq!(r.deleted, 1, "{r:?}");
    let left = keys(&dirs.bucket());
    assert!(!left.contains(orphan), "older than the grace: collected");
    assert!(left.contains(late), "first seen now: kept");
    assert_same("data", &e.in_bucket(ino).unwrap(), &pattern(3, 4));
}

/// Blocks the first PUT whose key `matches` until the returned sender is used (or dropped),
/// and tells the receiver when it got there.
fn hold_put(
    e: &Engine,
    matches: impl Fn(&str) -> bool + Send + Sync + 'static,
) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (reached, at) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let once = std::sync::Mutex::new(Some((reached, released)));
    e.plan.on_put(move |key| {
        if !matches(key) {
            return;
        }
        let Some((reached, released)) = once.lock().unwrap().take() else {
            return;
        };
        reached.send(()).unwrap();
        let _ = released.recv();
    });
    (at, release)
}

const WAIT: Duration = Duration::from_secs(60);

/// A checkpoint started on a thread and held where it PUTs its manifest, its segments up: a
/// send on the sender (or its drop) lets the PUT go.
#[allow(clippy::type_complexity)]
fn checkpoint_held_at_its_commit(
    e: &Engine,
) -> (
    std::thread::JoinHandle<Result<Option<bucketfs::checkpoint::Outcome>, CheckpointError>>,
    std::sync::mpsc::Sender<()>,
) {
    let (at, release) = hold_put(e, |key| key.starts_with("manifests/"));
    let cp = e.cp.clone();
    let checkpoint = std::thread::spawn(move || cp.checkpoint(false));
    at.recv_timeout(WAIT)
        .expect("the checkpoint reaches its commit");
    (checkpoint, release)
}

#[test]
fn a_checkpoint_commits_while_a_gc_pass_runs() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(1, false));
    let ino = e.create("data");
    rewrite_and_checkpoint(&e, ino, 4, 12);
    // A first pass finds the garbage; the second, past the grace, deletes it, and stops
    // where it records what waits (its plan made, its deletes to come).
    let t0 = now_ms();
    assert!(e.cp.gc_pass(t0).unwrap().pending > 0);
    let (at, release) = hold_put(&e, |key| key == bucketfs::gc::STATE_KEY);
    let cp = e.cp.clone();
    let pass = std::thread::spawn(move || cp.gc_pass(t0 + HOUR_MS));
    at.recv_timeout(WAIT).expect("the pass records its state");

    // Mid-pass, writes and their checkpoints (a base among them: one every 4th): committed
    // now, not once the pass is over.
    let (done, committed) = std::sync::mpsc::channel();
    let writer = {
        let (fs, cp) = (e.fs.clone(), e.cp.clone());
        std::thread::spawn(move || {
            fs.open(ino, libc::O_RDWR).expect("open");
            for tag in 90..96u8 {
                let page = u64::from(tag % 4) * PAGE_SIZE;
                fs.write(ino, page, &pattern(tag, 1)).expect("write");
                fs.fsync(ino, false).expect("fsync");
                cp.checkpoint(false).expect("checkpoint");
            }
            fs.release(ino).expect("close");
            done.send(()).unwrap();
        })
    };
    let waited = committed.recv_timeout(WAIT).is_err();
    release.send(()).unwrap();
    let r = pass.join().unwrap().expect("the pass");
    writer.join().unwrap();
    assert!(!waited, "the checkpoints waited for the GC pass");
    // What the pass planned before those commits it deleted after them: nothing they need.
    assert!(r.deleted > 0, "{r:?}");
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    assert_same(
        "in the bucket",
        &e.in_bucket(ino).unwrap(),
        &e.read_all(ino),
    );
    let want: Vec<u8> = (92..96u8).flat_map(|tag| pattern(tag, 1)).collect();
    assert_same("written", &e.read_all(ino), &want);
}

#[test]
fn a_checkpoint_still_uploading_keeps_its_segments_through_gc_passes() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, false));
    let ino = e.create("data");
    rewrite_and_checkpoint(&e, ino, 4, 3);
    let next = e.cp.view().read().epoch + 1;
    // A checkpoint whose segments are up and whose manifest is held back, and a crashed
    // writer's upload at the same epoch.
    e.write(ino, 0, &pattern(77, 4));
    let orphan = format!("segments/{next:020}-feedfacefeedface-9-0000.seg");
    std::fs::write(dirs.bucket().join(&orphan), b"never committed").unwrap();
    let (checkpoint, release) = checkpoint_held_at_its_commit(&e);

    // Passes meanwhile, the last one past the grace. Both uploads are at an epoch above
    // every manifest; the checkpoint's, under way, waits; the other writer's is collected.
    // (On a thread: a pass that waited for the checkpoint would wait for ever.)
    let t0 = now_ms();
    let (reported, report) = std::sync::mpsc::channel();
    let cp = e.cp.clone();
    std::thread::spawn(move || {
        let _ = cp.gc_pass(t0);
        let _ = reported.send(cp.gc_pass(t0 + 2 * HOUR_MS));
    });
    let r = report.recv_timeout(WAIT).expect("the passes end").unwrap();
    release.send(()).unwrap();
    checkpoint.join().unwrap().expect("the checkpoint");
    assert_same("in the bucket", &e.in_bucket(ino).unwrap(), &pattern(77, 4));
    assert!(
        r.pending == 1 && r.deleted == 1 && r.orphans == 1,
        "the upload under way waits, the crashed one goes: {r:?}"
    );
    assert!(!keys(&dirs.bucket()).contains(&orphan));
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");
}

#[test]
fn a_failed_checkpoints_uploads_get_their_whole_grace_once_it_has_ended() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, false));
    let ino = e.create("data");
    rewrite_and_checkpoint(&e, ino, 4, 3);
    let next = e.cp.view().read().epoch + 1;
    let attempt = |bucket: &Path| -> Vec<String> {
        let prefix = format!("segments/{next:020}-");
        keys(bucket)
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect()
    };
    e.write(ino, 0, &pattern(66, 4));
    let (checkpoint, release) = checkpoint_held_at_its_commit(&e);
    // A pass while it is under way, then its commit fails.
    let t0 = now_ms();
    let cp = e.cp.clone();
    let pass = std::thread::spawn(move || cp.gc_pass(t0));
    pass.join().unwrap().unwrap();
    e.plan.refuse_writes(true);
    release.send(()).unwrap();
    assert!(
        checkpoint.join().unwrap().is_err(),
        "the commit was refused"
    );
    e.plan.refuse_writes(false);
    let uploads = attempt(&dirs.bucket());
    assert!(!uploads.is_empty());

    // Two hours after the first pass saw them, but the first pass since the attempt ended:
    // garbage now, with a whole grace ahead.
    e.cp.gc_pass(t0 + 2 * HOUR_MS).unwrap();
    assert_eq!(
        attempt(&dirs.bucket()),
        uploads,
        "collected without a grace"
    );
    e.cp.gc_pass(t0 + 3 * HOUR_MS).unwrap();
    assert!(attempt(&dirs.bucket()).is_empty(), "kept past the grace");
}

/// A commit whose answer was lost had landed. Its writer stalls; another takes over (its
/// fence on the next epoch) and GC collects that commit. The stalled writer's retry lands on
/// the freed key, and must learn from the GC boundary that it committed into the past.
#[test]
fn a_retry_after_a_lost_answer_that_lands_on_a_collected_key_is_not_believed() {
    let dirs = Dirs::new();
    let stalled = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, false));
    let a = stalled.create("a");
    stalled.write(a, 0, &pattern(1, 2));
    stalled.checkpoint();
    stalled.write(a, 0, &pattern(2, 2));
    stalled.plan.lose_answers(1);
    assert!(stalled.cp.checkpoint(false).is_err(), "the answer was lost");
    let lost = stalled.cp.view().read().epoch + 1;
    assert!(epochs(&dirs.bucket()).contains(&lost), "it landed");

    let taker = Engine::open(&dirs.cache(1), &dirs.bucket(), gc_segments(1, false));
    let ta = taker.ino("a");
    rewrite_and_checkpoint(&taker, ta, 2, 12);
    let t0 = now_ms();
    taker.cp.gc_pass(t0).unwrap();
    let r = taker.cp.gc_pass(t0 + HOUR_MS).unwrap();
    assert!(
        !epochs(&dirs.bucket()).contains(&lost) && r.boundary > lost,
        "GC collected the lost-answer commit: {r:?}"
    );

    match stalled.cp.checkpoint(false) {
        Err(CheckpointError::Fenced { .. }) => {}
        other => panic!("a commit into the past was believed: {other:?}"),
    }
    let broken = bucketfs::admin::verify(
        &bucketfs::bucket::BucketUrl::File(dirs.bucket()),
        &mut std::io::sink(),
    )
    .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
}

/// Whether `key` is one of compaction's new segments (`<epoch>-<writer>-c<nonce>-<n>`).
fn compaction_output(key: &str) -> bool {
    key.strip_prefix("segments/")
        .and_then(|rest| rest.split('-').nth(2))
        .is_some_and(|f| f.len() == 17 && f.starts_with('c'))
}

#[test]
fn a_compaction_that_fails_leaves_no_upload_behind_and_the_pass_goes_on() {
    let dirs = Dirs::new();
    let e = Engine::open(
        &dirs.cache(0),
        &dirs.bucket(),
        Options {
            // Raw runs in segments of four pages, one upload at a time: compaction seals and
            // uploads a segment before it reaches the source that fails.
            tune: Some(Box::new(|s| {
                s.inline_bytes = 0;
                s.zstd_level = None;
                s.segment_bytes = 4 * PAGE_SIZE;
                s.upload_concurrency = 1;
            })),
            ..gc(1, true)
        },
    );
    let mut files = Vec::new();
    for n in 0..6u8 {
        let ino = e.create(&format!("f{n}"));
        e.write(ino, 0, &pattern(n * 10, 3));
        e.checkpoint();
        files.push(ino);
    }
    let t = now_ms();
    e.cp.gc_pass(t).unwrap();
    // The newest of the five sources does not check out.
    let bad = segments_of(&e, files[4]).into_iter().next().unwrap();
    let path = dirs.bucket().join(&bad);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let uploaded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = uploaded.clone();
    e.plan.on_put(move |key| {
        if compaction_output(key) {
            seen.lock().unwrap().push(key.to_string());
        }
    });

    let r = e.cp.gc_pass(t + HOUR_MS).expect("the pass goes on");
    assert!(
        !uploaded.lock().unwrap().is_empty(),
        "compaction uploaded nothing"
    );
    let left: Vec<String> = keys(&dirs.bucket())
        .into_iter()
        .filter(|k| compaction_output(k))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?} ({r:?})");
    for (n, ino) in files.iter().enumerate() {
        if n != 4 {
            assert_same(
                "in the bucket",
                &e.in_bucket(*ino).unwrap(),
                &pattern(n as u8 * 10, 3),
            );
        }
    }
}

#[test]
fn a_compaction_commits_beside_checkpoints_and_keeps_what_they_wrote() {
    // Checkpoints before the compaction stay retained: the oldest one's image does not name
    // its segments, only its own manifest does.
    const KEEP: u32 = 6;
    let dirs = Dirs::new();
    // Raw runs in segments of four pages, one upload at a time: compaction uploads a segment
    // and is held at its second, mid-rewrite.
    let options = || Options {
        tune: Some(Box::new(|s| {
            s.inline_bytes = 0;
            s.zstd_level = None;
            s.segment_bytes = 4 * PAGE_SIZE;
            s.upload_concurrency = 1;
        })),
        ..gc(KEEP, true)
    };
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), options());
    let mut want = bytes_of(a_file_per_checkpoint(&e, 6));
    // Enough checkpoints after those for their segments to leave the retained ones.
    want.insert("pad".into(), pad_checkpoints(&e, KEEP));
    let t = now_ms();
    e.cp.gc_pass(t).unwrap();
    let read_from = e.cp.view().read().epoch;
    let put = Arc::new(Mutex::new(BTreeSet::new()));
    let (at, release) = {
        let put = put.clone();
        hold_put(&e, move |key| {
            compaction_output(key)
                && put.lock().unwrap().insert(key.to_owned())
                && key.ends_with("-0001.seg")
        })
    };
    let cp = e.cp.clone();
    let pass = std::thread::spawn(move || cp.gc_pass(t + HOUR_MS));
    at.recv_timeout(WAIT).expect("compaction uploads");

    // Mid-rewrite: a page it copies rewritten, a file it copies truncated (and extended again:
    // holes) and one removed, the two files of its last new segment rewritten and removed
    // (none of that segment's pages is left to commit), a new file, over four checkpoints (a
    // base among them: one every 4th), all committed now.
    let f3 = e.ino("f3");
    let (done, committed) = std::sync::mpsc::channel();
    let writer = {
        let (fs, cp) = (e.fs.clone(), e.cp.clone());
        let (f1, f2, f4) = (e.ino("f1"), e.ino("f2"), e.ino("f4"));
        std::thread::spawn(move || {
            let write = |ino: u64, offset: u64, bytes: &[u8]| {
                fs.open(ino, libc::O_RDWR).expect("open");
                fs.write(ino, offset, bytes).expect("write");
                fs.fsync(ino, false).expect("fsync");
                fs.release(ino).expect("close");
            };
            write(f1, PAGE_SIZE, &pattern(91, 1));
            cp.checkpoint(false).expect("checkpoint");
            common::engine::set_size(&fs, f2, PAGE_SIZE);
            common::engine::set_size(&fs, f2, 3 * PAGE_SIZE);
            cp.checkpoint(false).expect("checkpoint");
            write(f4, 0, &pattern(94, 3));
            for name in ["f3", "f5"] {
                fs.unlink(ROOT_INO, std::ffi::OsStr::new(name))
                    .expect("unlink");
            }
            cp.checkpoint(false).expect("checkpoint");
            let (f6, _) = fs
                .create(
                    ROOT_INO,
                    std::ffi::OsStr::new("f6"),
                    0o644,
                    common::engine::ROOT,
                    false,
                )
                .expect("create");
            write(f6.ino, 0, &pattern(66, 2));
            cp.checkpoint(false).expect("checkpoint");
            done.send(()).unwrap();
        })
    };
    let waited = committed.recv_timeout(WAIT).is_err();
    release.send(()).unwrap();
    pass.join().unwrap().expect("the pass");
    writer.join().unwrap();
    assert!(!waited, "the checkpoints waited for the compaction");
    want.get_mut("f1").unwrap()[PAGE..2 * PAGE].copy_from_slice(&pattern(91, 1));
    want.get_mut("f2").unwrap()[PAGE..].fill(0);
    want.remove("f3");
    want.insert("f4".into(), pattern(94, 3));
    want.remove("f5");
    want.insert("f6".into(), pattern(66, 2));

    // It committed after those four, with what they left alone: the files it moved read from
    // its segments (named by the epoch after the view it read), the rest as they wrote it.
    let compacted = e.cp.view().read().epoch;
    assert_eq!(compacted, read_from + 5, "the compaction's commit");
    let moved = |name: &str| -> BTreeSet<String> { segments_of(&e, e.ino(name)) };
    assert!(
        moved("f0").iter().all(|k| compaction_output(k)),
        "{:?}",
        moved("f0")
    );
    assert!(
        moved("f1").iter().any(|k| !compaction_output(k)),
        "{:?}",
        moved("f1")
    );
    assert!(moved("f0")
        .iter()
        .all(|k| k.starts_with(&format!("segments/{:020}-", read_from + 1))));
    assert_eq!(e.names_in_bucket().len(), want.len());
    assert!(!e.cp.view().read().extents.contains_key(&f3), "f3's pages");
    // `bucketfs ls` shows them with the manifest that brought them.
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let mut listing = Vec::new();
    bucketfs::admin::ls(&url, None, &mut listing).unwrap();
    let listing = String::from_utf8(listing).unwrap();
    // EPOCH KIND DATE TIME WRITER SEGMENTS BYTES NOTE
    let row = |epoch: u64| -> Vec<&str> {
        listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&epoch.to_string()))
            .map_or_else(Vec::new, |l| l.split_whitespace().collect())
    };
    let outputs: BTreeSet<String> = want
        .keys()
        .flat_map(|name| moved(name))
        .filter(|k| compaction_output(k))
        .collect();
    assert!(!outputs.is_empty());
    assert_eq!(
        row(compacted).get(5).copied(),
        Some(&*outputs.len().to_string()),
        "{listing}"
    );
    // The checkpoints beside it wrote a base, which the compaction's delta follows.
    let kind = |epoch: u64| row(epoch).get(1).copied();
    assert!(
        (read_from + 1..compacted).any(|epoch| kind(epoch) == Some("base")),
        "{listing}"
    );
    assert_eq!(kind(compacted), Some("delta"), "{listing}");
    // The new segment none of whose pages it committed (f4's and f5's) is gone.
    let uploaded: BTreeSet<String> = keys(&dirs.bucket())
        .into_iter()
        .filter(|k| compaction_output(k))
        .collect();
    let put = put.lock().unwrap().clone();
    assert!(put.len() > outputs.len(), "{put:?}");
    assert_eq!(uploaded, outputs);
    for (name, bytes) in &want {
        assert_same(name, &e.in_bucket(e.ino(name)).unwrap(), bytes);
    }
    // Past the grace, GC keeps the segments it wrote: its manifest brought them, whatever
    // epoch their names carry.
    for hours in [2, 3] {
        e.cp.gc_pass(t + hours * HOUR_MS).unwrap();
    }
    let left = keys(&dirs.bucket());
    assert!(moved("f0").iter().all(|k| left.contains(k)), "collected");
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    e.crash();

    // A restore has every file, and a file created after it takes an inode of its own.
    let e = Engine::open(&dirs.cache(1), &dirs.bucket(), options());
    let late = e.create("late");
    e.write(late, 0, &pattern(44, 1));
    e.checkpoint();
    e.crash();
    want.insert("late".into(), pattern(44, 1));
    for (name, bytes) in &want {
        assert_same(name, &restored(&dirs, 2, name), bytes);
    }
}

#[test]
fn a_compaction_on_an_idle_database_writes_the_base_that_is_due() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(2, true));
    for n in 0..6u8 {
        let ino = e.create(&format!("f{n}"));
        e.write(ino, 0, &pattern(n * 10, 3));
        e.checkpoint();
    }
    // Checkpoints until the next one is due to be a base (one every 4th).
    let pad = e.create("pad");
    let mut n = 0u8;
    while n < 2 || e.cp.view().read().deltas_since_base != 3 {
        e.write(pad, 0, &pattern(200 + n, 1));
        e.checkpoint();
        n += 1;
    }
    let t = now_ms();
    e.cp.gc_pass(t).unwrap();
    let before = e.cp.view().read().epoch;
    e.cp.gc_pass(t + HOUR_MS).unwrap();
    let view = e.cp.view();
    let (epoch, chain) = {
        let v = view.read();
        (v.epoch, v.deltas_since_base)
    };
    assert_eq!(
        (epoch, chain),
        (before + 1, 0),
        "the compaction is the base"
    );
    let f0 = segments_of(&e, e.ino("f0"));
    assert!(f0.iter().all(|k| compaction_output(k)), "{f0:?}");
    // Its segments outlive the checkpoint before it.
    for hours in [2, 3] {
        e.cp.gc_pass(t + hours * HOUR_MS).unwrap();
    }
    let left = keys(&dirs.bucket());
    assert!(f0.iter().all(|k| left.contains(k)), "collected");
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    for n in 0..6u8 {
        assert_same(
            "restored",
            &restored(&dirs, 1 + u32::from(n), &format!("f{n}")),
            &pattern(n * 10, 3),
        );
    }
}

#[test]
fn compaction_bounds_space_amplification_and_keeps_every_byte() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(1, true));
    let ino = e.create("data");
    // 64 pages of incompressible bytes, then many checkpoints that each rewrite a few.
    let mut image = common::incompressible(64 * PAGE, 7);
    e.write(ino, 0, &image);
    e.checkpoint();
    let mut t = now_ms();
    for round in 0..40u64 {
        for k in 0..3u64 {
            let page = ((round * 7 + k * 13) % 64) as usize;
            let bytes = common::incompressible(PAGE, round * 100 + k);
            image[page * PAGE..(page + 1) * PAGE].copy_from_slice(&bytes);
            e.write(ino, (page * PAGE) as u64, &bytes);
        }
        e.checkpoint();
        t += HOUR_MS;
        e.cp.gc_pass(t).expect("gc pass");
    }
    // Once the writes stop: a pass that compacts what has left the window, and passes that
    // collect the sources after the grace, until one finds nothing to do.
    let mut r = e.cp.gc_pass(t).unwrap();
    for _ in 0..4 {
        t += HOUR_MS;
        r = e.cp.gc_pass(t).unwrap();
    }
    assert!(r.pending == 0 && r.deleted == 0, "settled: {r:?}");
    assert!(
        r.space_amplification <= 1.5,
        "space amplification {:.2}: {r:?}",
        r.space_amplification
    );
    assert!(r.chain_length <= 4, "{r:?}");
    assert_same("in the bucket", &e.in_bucket(ino).unwrap(), &image);
    // A restore reads few segments for the file.
    let view = e.cp.view();
    let segments: BTreeSet<String> = view.read().extents[&ino]
        .values()
        .map(|(_, x)| x.segment.to_string())
        .collect();
    assert!(
        segments.len() <= 5,
        "the file is in {} segments",
        segments.len()
    );
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    e.crash();
    assert_same("restored", &restored(&dirs, 1, "data"), &image);
}

/// A store that runs `on_miss` the first time a GET finds nothing: what a compaction commit
/// landing while a fetch is in flight looks like to that fetch. With `late`, the first GET of
/// each segment finds nothing: a global bucket's copy in this region lagging the manifest
/// that names it.
struct MovesOnMiss {
    inner: Arc<dyn ObjectStore>,
    #[allow(clippy::type_complexity)]
    on_miss: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    late: Option<std::sync::Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for MovesOnMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MovesOnMiss({:?})", self.inner)
    }
}

#[async_trait::async_trait]
impl ReadStore for MovesOnMiss {
    async fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> bucketfs::store::StoreResult<bytes::Bytes> {
        if let Some(seen) = &self.late {
            if key.starts_with("segments/") && seen.lock().unwrap().insert(key.to_string()) {
                return Err(bucketfs::store::StoreError::NotFound { key: key.into() });
            }
        }
        let r = self.inner.get(key, range).await;
        if let Err(bucketfs::store::StoreError::NotFound { .. }) = &r {
            if let Some(f) = self.on_miss.lock().unwrap().take() {
                f();
            }
        }
        r
    }
    async fn head(
        &self,
        key: &str,
    ) -> bucketfs::store::StoreResult<Option<bucketfs::store::ObjectMeta>> {
        self.inner.head(key).await
    }
    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> bucketfs::store::StoreResult<Vec<bucketfs::store::ObjectMeta>> {
        self.inner.list_after(prefix, after).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[async_trait::async_trait]
impl ObjectStore for MovesOnMiss {
    async fn put(
        &self,
        key: &str,
        body: bytes::Bytes,
        mode: bucketfs::store::PutMode,
    ) -> bucketfs::store::StoreResult<String> {
        self.inner.put(key, body, mode).await
    }
    async fn delete(&self, key: &str) -> bucketfs::store::StoreResult<()> {
        self.inner.delete(key).await
    }
}

#[test]
fn a_fetch_that_finds_its_segment_collected_reads_the_moved_view_again() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, true));
    // Five small segments, one file each: the four older than the latest checkpoint are
    // compacted.
    let mut files = Vec::new();
    for n in 0..5u8 {
        let ino = e.create(&format!("f{n}"));
        e.write(ino, 0, &pattern(n * 10, 3));
        e.checkpoint();
        files.push(ino);
    }
    let before = e.cp.view().read().clone();
    // A first pass finds the window; the second compacts what is older; the third finds the
    // sources unneeded (the second planned from its LIST, made before it compacted); the
    // fourth, past the grace, deletes them.
    let t = now_ms();
    e.cp.gc_pass(t).unwrap();
    e.cp.gc_pass(t + HOUR_MS).unwrap();
    e.cp.gc_pass(t + HOUR_MS + 1).unwrap();
    let r = e.cp.gc_pass(t + 2 * HOUR_MS + 1).unwrap();
    assert!(r.deleted >= 4, "{r:?}");
    let after = e.cp.view().read().clone();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&dirs.bucket()).unwrap());
    // A fetch that began before the compaction: its first GET misses, and by then the view
    // has moved on.
    let view = Arc::new(parking_lot::RwLock::new(before.clone()));
    let moved = view.clone();
    let store: Arc<dyn ObjectStore> = Arc::new(MovesOnMiss {
        inner: local.clone(),
        on_miss: std::sync::Mutex::new(Some(Box::new(move || *moved.write() = after))),
        late: None,
    });
    let fetcher = BucketFetcher::new(store, rt.handle().clone(), view);
    let got = fetcher
        .fetch(files[2], 0..3)
        .expect("read again from the moved view");
    assert_same("f2", &got, &pattern(20, 3));

    // A reader whose view cannot move (a read-only mount of the old checkpoint): a clear
    // error, never wrong bytes.
    let stuck = BucketFetcher::new(
        local,
        rt.handle().clone(),
        Arc::new(parking_lot::RwLock::new(before)),
    );
    let err = stuck
        .fetch(files[2], 0..3)
        .expect_err("its segment is gone");
    assert!(err.contains("GC collected it"), "{err}");
}

/// The segments that hold a file's pages in the latest checkpoint.
fn segments_of(e: &Engine, ino: u64) -> BTreeSet<String> {
    e.cp.view().read().extents[&ino]
        .values()
        .map(|(_, x)| x.segment.to_string())
        .collect()
}

#[test]
fn wal_pages_go_in_wal_segments_and_compaction_keeps_them_there() {
    use bucketfs::store::placement::Class;
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, true));
    let wal_dir =
        e.fs.mkdir(
            ROOT_INO,
            std::ffi::OsStr::new("pg_wal"),
            0o700,
            common::engine::ROOT,
        )
        .unwrap()
        .ino;
    let wal = e.create_in(wal_dir, "000000010000000000000001");
    let data = e.create("16384");
    let mut wal_image = common::incompressible(64 * PAGE, 1);
    let mut data_image = common::incompressible(64 * PAGE, 2);
    e.write(wal, 0, &wal_image);
    e.write(data, 0, &data_image);
    e.checkpoint();
    let classes = |ino| -> BTreeSet<Class> {
        segments_of(&e, ino)
            .iter()
            .map(|k| Class::of_key(k))
            .collect()
    };
    assert_eq!(classes(wal), BTreeSet::from([Class::Wal]));
    assert_eq!(classes(data), BTreeSet::from([Class::Data]));
    // Both rewritten a little at a time, then compacted: each class stays in its own.
    let mut t = now_ms();
    for round in 0..30u64 {
        let page = ((round * 7) % 64) as usize;
        for (ino, image, seed) in [
            (wal, &mut wal_image, round * 10),
            (data, &mut data_image, round * 10 + 5),
        ] {
            let bytes = common::incompressible(PAGE, seed);
            image[page * PAGE..(page + 1) * PAGE].copy_from_slice(&bytes);
            e.write(ino, (page * PAGE) as u64, &bytes);
        }
        e.checkpoint();
        t += HOUR_MS;
        e.cp.gc_pass(t).expect("gc pass");
    }
    // Compaction wrote segments of both classes.
    let compacted: BTreeSet<Class> = keys(&dirs.bucket())
        .iter()
        .filter(|k| k.split('-').nth(2).is_some_and(|f| f.starts_with('c')))
        .map(|k| Class::of_key(k))
        .collect();
    assert_eq!(
        compacted,
        BTreeSet::from([Class::Wal, Class::Data]),
        "{:?}",
        keys(&dirs.bucket())
    );
    assert_eq!(classes(wal), BTreeSet::from([Class::Wal]));
    assert_eq!(classes(data), BTreeSet::from([Class::Data]));
    assert_same("wal in the bucket", &e.in_bucket(wal).unwrap(), &wal_image);
    assert_same(
        "data in the bucket",
        &e.in_bucket(data).unwrap(),
        &data_image,
    );
}

#[test]
fn a_segment_not_yet_visible_is_asked_for_again_not_reported_gone() {
    let dirs = Dirs::new();
    // Runs in segments: the store below delays only segment keys.
    let options = Options {
        tune: Some(Box::new(|s| s.inline_bytes = 0)),
        ..Options::default()
    };
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), options);
    let ino = e.create("f");
    e.write(ino, 0, &pattern(3, 5));
    e.checkpoint();
    let view = e.cp.view().read().clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn ReadStore> = Arc::new(MovesOnMiss {
        inner: Arc::new(LocalStore::new(&dirs.bucket()).unwrap()),
        on_miss: Default::default(),
        late: Some(Default::default()),
    });
    let fetcher = BucketFetcher::new(
        store,
        rt.handle().clone(),
        Arc::new(parking_lot::RwLock::new(view)),
    );
    let got = fetcher
        .fetch(ino, 0..5)
        .expect("the copy shows up on the second GET");
    assert_same("f", &got, &pattern(3, 5));
}

/// A checkpoint small enough to carry its runs in its manifest leaves that manifest holding
/// pages after its checkpoint has expired: GC keeps it while a retained checkpoint uses them,
/// raises the boundary past it (it is no checkpoint any more, only a holder of runs), and once
/// compaction has moved its pages out, collects it like any other manifest.
#[test]
fn a_manifest_whose_runs_are_still_used_outlives_its_checkpoint_until_compaction_moves_them() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(1, false));
    let cold = e.create("cold");
    let cold_bytes = pattern(42, 2);
    e.write(cold, 0, &cold_bytes);
    let carrier = e.cp.checkpoint(false).unwrap().expect("a change").epoch;
    let carrier_key = bucketfs::checkpoint::manifest_key(carrier);
    assert!(
        !dirs.bucket().join("segments").exists(),
        "a small checkpoint uploaded a segment"
    );
    // Newer checkpoints (and bases) that never touch cold.
    let hot = e.create("hot");
    e.write(hot, 0, &pattern(1, 4));
    let history = rewrite_and_checkpoint(&e, hot, 4, 12);
    let (latest, hot_bytes) = history.last().unwrap().clone();

    let t0 = now_ms();
    let first = e.cp.gc_pass(t0).expect("first pass");
    // The carrier, and the manifests of hot's last rewrites before the latest base.
    assert!(first.pinned >= 1, "{first:?}");
    assert!(
        first.boundary > carrier,
        "the carrier is still a checkpoint: {first:?}"
    );
    let done = e.cp.gc_pass(t0 + HOUR_MS).expect("pass after the grace");
    assert!(done.deleted > 0, "{done:?}");
    let below: Vec<u64> = epochs(&dirs.bucket())
        .into_iter()
        .filter(|&x| x < done.boundary)
        .collect();
    assert!(
        below.contains(&carrier),
        "GC deleted a manifest whose runs are in use"
    );
    assert_eq!(below.len() as u64, first.pinned, "{done:?}");
    let err = read_at(&dirs.bucket(), At::Epoch(carrier), "cold")
        .expect_err("the carrier's checkpoint expired");
    assert!(
        err.contains("no longer restorable") || err.contains("has no checkpoint"),
        "{err}"
    );
    assert_same(
        "cold, from the bucket alone",
        &read_at(&dirs.bucket(), At::Epoch(latest), "cold").unwrap(),
        &cold_bytes,
    );
    let url = bucketfs::bucket::BucketUrl::File(dirs.bucket());
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    e.crash();

    // With compaction, its pages move to a segment and the carrier goes after the grace.
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc(1, true));
    let t1 = t0 + 2 * HOUR_MS;
    // (The first pass may compact already, from the window `gc/state` recorded; a pass plans
    // from its LIST, made before it compacts, so the carrier is found unneeded by a pass
    // after the compacting one.)
    e.cp.gc_pass(t1).expect("a first pass");
    e.cp.gc_pass(t1 + 1).expect("a second pass");
    assert!(
        dirs.bucket().join("segments").exists(),
        "compaction wrote no segment"
    );
    e.cp.gc_pass(t1 + 2)
        .expect("a pass that finds the carrier unneeded");
    let last =
        e.cp.gc_pass(t1 + HOUR_MS + 2)
            .expect("a pass past the grace");
    assert_eq!(last.pinned, 0, "{last:?}");
    assert!(
        !keys(&dirs.bucket()).contains(&carrier_key),
        "the carrier outlived its pages: {last:?}"
    );
    let broken = bucketfs::admin::verify(&url, &mut std::io::sink()).unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    e.crash();
    assert_same("cold restored", &restored(&dirs, 1, "cold"), &cold_bytes);
    assert_same("hot restored", &restored(&dirs, 2, "hot"), &hot_bytes);
}

/// `n` checkpoints of a page rewritten in file `pad`, after which older ones leave the
/// newest `n`: the file's bytes.
fn pad_checkpoints(e: &Engine, n: u32) -> Vec<u8> {
    let pad = e.create("pad");
    for i in 0..n {
        e.write(pad, 0, &pattern(200 + i as u8, 1));
        e.checkpoint();
    }
    pattern(200 + n as u8 - 1, 1)
}

/// Files `f0`, `f1`, ... (`n` of them), three pages each, each written in a checkpoint of its
/// own (with `gc_segments`, a small segment each): their bytes, and the epoch each came in.
fn a_file_per_checkpoint(e: &Engine, n: u8) -> BTreeMap<String, (Vec<u8>, u64)> {
    (0..n)
        .map(|n| {
            let (name, bytes) = (format!("f{n}"), pattern(n * 10, 3));
            let ino = e.create(&name);
            e.write(ino, 0, &bytes);
            e.checkpoint();
            (name, (bytes, e.cp.view().read().epoch))
        })
        .collect()
}

/// Each file as `want` has it, in the bucket and, after a crash, restored from the bucket.
fn assert_kept(e: Engine, dirs: &Dirs, want: &BTreeMap<String, Vec<u8>>) {
    for (name, bytes) in want {
        assert_same(name, &e.in_bucket(e.ino(name)).unwrap(), bytes);
    }
    e.crash();
    for (name, bytes) in want {
        assert_same(name, &restored(dirs, 1, name), bytes);
    }
}

/// The writer's GC loop on a thread of its own, and the flag that stops it.
fn run_gc(e: &Engine) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (cp, flag) = (e.cp.clone(), stop.clone());
    (stop, std::thread::spawn(move || cp.run_gc(&flag)))
}

fn bytes_of(files: BTreeMap<String, (Vec<u8>, u64)>) -> BTreeMap<String, Vec<u8>> {
    files.into_iter().map(|(k, (b, _))| (k, b)).collect()
}

/// A pass lists the bucket once, whether or not it compacts: compaction chooses its sources
/// from the LIST that retention and deletion then plan from. Under `--durability remote` the
/// window holds a manifest per group commit, millions a day, and every 1,000 keys are a LIST
/// request: a second LIST per pass doubled a pass's requests and their time.
#[test]
fn a_pass_lists_the_bucket_once_whether_or_not_it_compacts() {
    const KEEP: u32 = 4;
    let dirs = Dirs::new();
    // Small raw segments, each file's in its own checkpoint: compaction has sources once
    // they leave the retained checkpoints.
    let options = Options {
        tune: Some(Box::new(|s| {
            s.inline_bytes = 0;
            s.zstd_level = None;
            s.segment_bytes = 4 * PAGE_SIZE;
        })),
        ..gc(KEEP, true)
    };
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), options);
    let mut want = bytes_of(a_file_per_checkpoint(&e, 6));
    want.insert("pad".into(), pad_checkpoints(&e, KEEP));
    let t = now_ms();
    let mut compacted = 0;
    for (pass, now) in [t, t + HOUR_MS, t + 2 * HOUR_MS].into_iter().enumerate() {
        let objects = keys(&dirs.bucket())
            .iter()
            .filter(|k| !k.starts_with("gc/"))
            .count() as u64;
        let (listed, epoch) = (e.plan.counts().listed, e.cp.view().read().epoch);
        let report = e.cp.gc_pass(now).expect("a pass");
        let listed = e.plan.counts().listed - listed;
        if e.cp.view().read().epoch > epoch {
            compacted += 1;
        }
        assert_eq!(
            listed, objects,
            "pass {pass}: keys listed, with {objects} manifests and segments in the bucket"
        );
        assert_eq!(report.manifests + report.segments, objects, "pass {pass}");
    }
    assert!(compacted > 0, "no pass compacted");
    // What the passes compacted and deleted leaves every file as written.
    assert_kept(e, &dirs, &want);
}

/// A writer's first GC pass comes soon after its start (a minute by default), not a whole
/// interval later: a Fly Machine that stops when idle is stopped a few minutes after its
/// last connection closes, and with its first pass an interval (10 minutes) after the start
/// a database woken for short spells never collected, its bucket growing without bound.
#[test]
fn a_writers_first_gc_pass_comes_soon_after_its_start_not_an_interval_later() {
    let dirs = Dirs::new();
    let mut options = gc(1, false);
    let settings = options.gc.as_mut().unwrap();
    assert_eq!(settings.interval, Duration::from_secs(3600));
    settings.first_after = Duration::from_millis(200);
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), options);
    let ino = e.create("data");
    e.write(ino, 0, &pattern(1, 2));
    rewrite_and_checkpoint(&e, ino, 2, 4);
    let (stop, gc) = run_gc(&e);
    common::wait_for("the writer's first GC pass", WAIT, || {
        e.cp.last_gc().is_some()
    });
    stop.store(true, Ordering::Release);
    gc.join().unwrap();
    let report = e.cp.last_gc().unwrap();
    // It found what the rewrites left behind; the grace deletes it at a later pass.
    assert!(report.pending > 0, "{report:?}");
}

/// A writer's first pass compacts, from the oldest retained checkpoint the last pass of any
/// process recorded in `gc/state`: a Machine that stops when idle may run one pass per start,
/// and had compaction waited for a pass of the process's own to know the window, such a
/// database would never compact (its segments' dead bytes staying for good).
#[test]
fn a_writers_first_pass_compacts_from_the_window_the_last_process_recorded() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, true));
    // Five small segments, one file each: the four older than the latest checkpoint are
    // compaction's once a pass has found the window.
    let want = bytes_of(a_file_per_checkpoint(&e, 5));
    let t = now_ms();
    e.cp.gc_pass(t).unwrap();
    assert!(
        !keys(&dirs.bucket()).iter().any(|k| compaction_output(k)),
        "a process's first pass compacted with no window known"
    );
    e.crash();

    // The next start's first pass.
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, true));
    e.cp.gc_pass(t + 1).unwrap();
    let moved: BTreeSet<String> = keys(&dirs.bucket())
        .into_iter()
        .filter(|k| compaction_output(k))
        .collect();
    assert!(
        !moved.is_empty(),
        "the next start's first pass compacted nothing"
    );
    assert_kept(e, &dirs, &want);
}

/// The window a first pass compacts from is one the last pass found with the same retention,
/// by that pass's own reckoning: not one found with another retention, nor `gc/state`'s
/// `oldest_retained`, which a shorter window's passes raised and a longer window does not
/// lower. Either would have compaction copy segments that retained checkpoints still name,
/// which frees nothing.
#[test]
fn a_first_pass_compacts_only_below_the_window_of_its_own_retention() {
    let dirs = Dirs::new();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(1, true));
    // Ten small segments, a file each, and the epoch each came in.
    let written = a_file_per_checkpoint(&e, 10);
    let t = now_ms();
    // A pass keeping only the newest checkpoint: the window starts at the latest.
    let short = e.cp.gc_pass(t).unwrap();
    assert_eq!(short.oldest_retained, e.cp.view().read().epoch);
    e.crash();

    // A process keeping the newest five: its first pass has no window of its own retention
    // to compact from.
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(5, true));
    let long = e.cp.gc_pass(t + 1).unwrap();
    assert!(
        !keys(&dirs.bucket()).iter().any(|k| compaction_output(k)),
        "a first pass compacted from a window found with another retention"
    );
    assert!(long.oldest_retained < short.oldest_retained, "{long:?}");
    e.crash();

    // The next process with that retention compacts below the window the last one found
    // (at least four small segments: compaction's least), not below the one `gc/state`
    // keeps from the shorter window.
    let below = written
        .values()
        .filter(|&&(_, epoch)| epoch < long.oldest_retained)
        .count();
    assert!(below >= 4, "{below} files below the window: {written:?}");
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), gc_segments(5, true));
    e.cp.gc_pass(t + 2).unwrap();
    let mut moved = 0;
    for (name, &(_, epoch)) in &written {
        if segments_of(&e, e.ino(name))
            .iter()
            .any(|k| compaction_output(k))
        {
            moved += 1;
            assert!(
                epoch < long.oldest_retained,
                "{name}, written at epoch {epoch}, compacted inside the window (from epoch {})",
                long.oldest_retained
            );
        }
    }
    assert!(
        moved > 0,
        "the first pass compacted nothing below the window"
    );
}

/// After the first pass, passes come `--gc-interval` apart (the first's minute is only the
/// first's).
#[test]
fn after_the_first_gc_pass_the_next_come_an_interval_apart() {
    let dirs = Dirs::new();
    let mut options = gc(1, false);
    let settings = options.gc.as_mut().unwrap();
    settings.interval = Duration::from_secs(2);
    settings.first_after = Duration::from_millis(100);
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), options);
    let ino = e.create("data");
    e.write(ino, 0, &pattern(1, 1));
    e.checkpoint();
    let (stop, gc) = run_gc(&e);
    // When each pass began (the time it measured retention from), as its report gives it.
    let mut began: Vec<u64> = Vec::new();
    common::wait_for("three GC passes", WAIT, || {
        if let Some(r) = e.cp.last_gc() {
            if began.last() != Some(&r.pass_unix_ms) {
                began.push(r.pass_unix_ms);
            }
        }
        began.len() >= 3
    });
    stop.store(true, Ordering::Release);
    gc.join().unwrap();
    for pair in began.windows(2) {
        // (Less a little for the wall clock against the monotonic one the loop waits by.)
        assert!(pair[1] - pair[0] >= 1_900, "passes began at {began:?}");
    }
}

/// A writer whose GC (a pass every hour, the first 100 ms after it starts) has a compaction
/// due: five small segments, of which a pass has found the four below the window.
fn compaction_due(dirs: &Dirs) -> (Engine, BTreeMap<String, Vec<u8>>) {
    let mut options = gc_segments(1, true);
    options.gc.as_mut().unwrap().first_after = Duration::from_millis(100);
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), options);
    let want = bytes_of(a_file_per_checkpoint(&e, 5));
    e.cp.gc_pass(now_ms()).unwrap();
    (e, want)
}

/// That writer stopped while its GC pass's compaction waits on its reads of the sources:
/// the pass's thread, and the epoch of the final checkpoint, taken while the reads wait
/// (they are answered once `release_gets` is called).
fn stopped_during_a_compaction(e: &Engine) -> (std::thread::JoinHandle<()>, u64) {
    e.plan.hold_gets(|key| key.starts_with("segments/"));
    let (stop, gc) = run_gc(e);
    common::wait_for("the compaction to read its sources", WAIT, || {
        e.plan.gets_held() > 0
    });
    stop.store(true, Ordering::Release);
    let last =
        e.cp.checkpoint(true)
            .unwrap()
            .expect("the final checkpoint commits")
            .epoch;
    (gc, last)
}

/// The compaction ended without a commit: the bucket's newest manifest is still `tip`, none
/// of its uploads is left, and every file is kept.
fn assert_compaction_abandoned(e: Engine, dirs: &Dirs, tip: u64, want: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(
        epochs(&dirs.bucket()).last(),
        Some(&tip),
        "a manifest was committed after the stop"
    );
    let left: Vec<String> = keys(&dirs.bucket())
        .into_iter()
        .filter(|k| compaction_output(k))
        .collect();
    assert!(left.is_empty(), "the compaction left its uploads: {left:?}");
    assert_kept(e, dirs, want);
}

fn gc_state(dirs: &Dirs) -> Vec<u8> {
    std::fs::read(dirs.bucket().join("gc/state")).expect("gc/state")
}

/// A compaction under way when the mount stops commits nothing: the final checkpoint does not
/// wait for a GC pass under way, and must stay the last manifest the mount commits. A commit
/// after it would leave the bucket's tip a manifest that is no clean stop, which the next
/// start takes over with a fence, kept for good.
#[test]
fn a_compaction_under_way_at_a_stop_commits_nothing_after_the_final_checkpoint() {
    let dirs = Dirs::new();
    let (e, want) = compaction_due(&dirs);
    let (gc, last) = stopped_during_a_compaction(&e);
    let before = gc_state(&dirs);
    e.plan.release_gets();
    gc.join().unwrap();
    // The pass went on to record its plan, over the state the pass before it wrote.
    assert!(
        gc_state(&dirs) != before,
        "the pass after the stop recorded nothing"
    );
    assert_compaction_abandoned(e, &dirs, last, &want);
}

/// The stop may come after a compaction's last upload began and before its commit: the
/// commit looks at the stop under the lock the final checkpoint takes after setting it, so
/// that it either comes before the final checkpoint or not at all.
#[test]
fn a_compaction_that_meets_the_stop_at_its_commit_commits_nothing() {
    let dirs = Dirs::new();
    let (e, want) = compaction_due(&dirs);
    let before = e.cp.view().read().epoch;
    // Its one upload (five files of three pages, one segment) waits at the store until the
    // stop is set: past the checks before it, so only the commit's can see the stop.
    let uploads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = uploads.clone();
    let (at, release) = hold_put(&e, move |key| {
        let ours = compaction_output(key);
        if ours {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        ours
    });
    let (stop, gc) = run_gc(&e);
    at.recv_timeout(WAIT).expect("the compaction uploads");
    stop.store(true, Ordering::Release);
    release.send(()).unwrap();
    gc.join().unwrap();
    assert_eq!(
        uploads.load(Ordering::SeqCst),
        1,
        "uploads of the compaction"
    );
    assert_compaction_abandoned(e, &dirs, before, &want);
}

/// A pass writes `gc/state` only over the one it read. After a stop its pass runs on beside
/// other passes (`bucketfs gc` by hand, or a new writer's once the final checkpoint was
/// taken); a state planned from its older LIST, written over theirs, would start their
/// pending objects' grace again and lower the window they recorded.
#[test]
fn a_pass_does_not_replace_a_gc_state_written_while_it_ran() {
    let dirs = Dirs::new();
    let (e, _) = compaction_due(&dirs);
    let (gc, _) = stopped_during_a_compaction(&e);
    // Another pass, a minute later by its clock.
    fresh_pass(&dirs.bucket(), now_ms() + 60_000);
    let theirs = gc_state(&dirs);
    e.plan.release_gets();
    gc.join().unwrap();
    assert!(
        gc_state(&dirs) == theirs,
        "the stopped writer's pass replaced the gc/state another pass wrote while it ran"
    );
}
