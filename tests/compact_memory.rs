//! Compaction's memory. A pass rewrites up to `max_bytes` of sources (256 MiB by default), and
//! their runs decompress to several times their stored size; what the writer holds meanwhile
//! must stay a few segments, or a GC pass is what runs a small machine out of memory. This
//! binary counts every allocation (its own global allocator, so it holds this one test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bucketfs::fs::PAGE_SIZE;
use bucketfs::gc::compact::{rewrite, Output};
use bucketfs::manifest::segment::{decode_run, SegmentBuilder};
use bucketfs::manifest::view::{insert, View};
use bucketfs::manifest::Extent;
use bucketfs::store::{LocalStore, ObjectStore, PutMode};
use bytes::Bytes;
use futures_util::FutureExt;

/// The system allocator, counting the bytes allocated and not yet freed, and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, size) };
        if !q.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(size);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SOURCES: u64 = 16;
const RUNS: u64 = 8;
const RUN_PAGES: u64 = 64;
const MIB: usize = 1 << 20;

/// Page `page` of file `ino`: half random (so that the sources are not tiny), half a pattern.
fn page(ino: u64, page: u64, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut p: Vec<u8> = (0..PAGE_SIZE as usize / 2).map(|_| rng.u8(..)).collect();
    p.extend((0..PAGE_SIZE / 2).map(|i| (ino * 31 + page * 7 + i) as u8));
    p
}

#[test]
fn compaction_holds_a_few_segments_whatever_it_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // SOURCES segments of RUNS runs of RUN_PAGES pages, each file's pages spread over every
    // source: 64 MiB of pages in all, about half that stored.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut view = View::default();
    let mut expected = Vec::new();
    let mut sources = Vec::new();
    for s in 0..SOURCES {
        let key = format!("segments/{:020}-w-0000.seg", s + 1);
        let mut builder = SegmentBuilder::compressing(Some(1));
        for r in 0..RUNS {
            let (ino, first) = (100 + r, s * RUN_PAGES);
            let data: Vec<u8> = (first..first + RUN_PAGES)
                .flat_map(|p| page(ino, p, &mut rng))
                .collect();
            builder.push_run(ino, first, RUN_PAGES as u32, &data);
            expected.push((ino, first, data));
        }
        let (bytes, runs) = builder.finish();
        let len = bytes.len() as u64;
        rt.block_on(store.put(&key, Bytes::from(bytes), PutMode::Overwrite))
            .unwrap();
        let shared: Arc<str> = key.as_str().into();
        for run in runs {
            let map = view.extents.entry(run.ino).or_default();
            let end = run.first_page + u64::from(run.pages);
            insert(
                map,
                run.first_page,
                end,
                Arc::new(Extent::whole(shared.clone(), run)),
            );
        }
        sources.push((key, len));
    }
    let pages_bytes = (SOURCES * RUNS * RUN_PAGES * PAGE_SIZE) as usize;

    let key_of = |n: usize| format!("segments/{:020}-w-c-{n:04}.seg", SOURCES + 1);
    let put = |key: String, bytes: Vec<u8>| {
        let store = store.clone();
        async move {
            store
                .put(&key, Bytes::from(bytes), PutMode::Overwrite)
                .await
                .map(|_| ())
        }
        .boxed()
    };
    let out = Output {
        key_of: &key_of,
        zstd_level: Some(1),
        segment_bytes: MIB as u64,
        uploads: 2,
        put: &put,
    };
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let done = rt
        .block_on(rewrite(&*store, &view, &sources, &out))
        .unwrap();
    let held = PEAK.load(Ordering::Relaxed) - before;
    eprintln!(
        "compaction held {:.1} MiB at its peak",
        held as f64 / MIB as f64
    );

    // One source, one decoded run, the segment being packed and two uploads in flight: a few
    // MiB, however much is rewritten (keeping every source, run and new segment is over
    // 100 MiB here).
    assert!(
        held < 16 * MIB,
        "compaction held {:.1} MiB at its peak while rewriting {} MiB of pages",
        held as f64 / MIB as f64,
        pages_bytes / MIB
    );

    // And every page is in the new segments, as it was written.
    assert!(done.segments > 1, "{} new segments", done.segments);
    let mut rewritten = View::default();
    for e in &done.extents {
        let map = rewritten.extents.entry(e.run.ino).or_default();
        insert(
            map,
            e.first_page,
            e.first_page + e.pages,
            Arc::new(e.clone()),
        );
    }
    for (ino, first, data) in expected {
        for p in 0..RUN_PAGES {
            let (_, _, e) = rewritten
                .extent_at(ino, first + p)
                .unwrap_or_else(|| panic!("page {} of {ino} is in no new segment", first + p));
            let range = e.run.offset..e.run.offset + u64::from(e.run.stored_len);
            let stored = rt.block_on(store.get(&e.segment, Some(range))).unwrap();
            let run = decode_run(&e.run, &stored, &e.segment).unwrap();
            let at = ((first + p - e.run.first_page) * PAGE_SIZE) as usize;
            let want = &data[(p * PAGE_SIZE) as usize..((p + 1) * PAGE_SIZE) as usize];
            assert!(
                run[at..at + PAGE_SIZE as usize] == *want,
                "page {} of {ino} differs after compaction",
                first + p
            );
        }
    }
}
