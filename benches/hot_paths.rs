//! Criterion benchmarks of the hot paths that need no mount: page sets (every write and every
//! read consults one), segment packing and decoding (crc32c and zstd, the cut and every cache
//! miss), manifest encoding and decoding (every checkpoint, every restore and every poll of a
//! replica), view lookups (every miss finds its extent there), and one small checkpoint in a
//! namespace of a thousand files (what every commit of `--durability remote` pays).
//!
//! `make bench-hot` (`cargo bench --locked --profile dev --bench hot_paths`): the dev profile,
//! which the tests build anyway, so that RocksDB is not built a second time. Its dependencies
//! are fully optimised and bucketfs itself at opt-level 1, so these figures compare one change
//! with the next; they are not the release binary's absolute speed.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use bucketfs::fs::attr::{Attr, FileKind};
use bucketfs::fs::pageset::PageSet;
use bucketfs::manifest::segment::{decode_run, verify_segment, SegmentBuilder};
use bucketfs::manifest::view::View;
use bucketfs::manifest::{Extent, Manifest};

const PAGE: usize = 8192;
/// Pages in one run: the unit a cache miss fetches (`run_pages`, 256 KiB).
const RUN_PAGES: u32 = 32;

/// Bytes that compress as table pages do, about 3:1 (a repeated row with a counter).
fn table_pages(pages: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * PAGE);
    let mut n = seed;
    while out.len() < pages * PAGE {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(b"account-balance-row-filler-text\0");
    }
    out.truncate(pages * PAGE);
    out
}

/// Bytes that do not compress (WAL full of new data, or already compressed values).
fn random_pages(pages: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..pages * PAGE).map(|_| rng.u8(..)).collect()
}

fn page_sets(c: &mut Criterion) {
    let mut g = c.benchmark_group("pageset");
    // A file written the way PostgreSQL writes a table under pgbench: scattered single pages.
    let scattered: Vec<u64> = {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..10_000).map(|_| rng.u64(..100_000)).collect()
    };
    g.throughput(Throughput::Elements(scattered.len() as u64));
    g.bench_function("insert 10k scattered pages", |b| {
        b.iter(|| {
            let mut s = PageSet::new();
            for &p in &scattered {
                s.insert(p..p + 1);
            }
            black_box(s.len())
        })
    });
    let mut full = PageSet::new();
    for &p in &scattered {
        full.insert(p..p + 1);
    }
    g.bench_function("covers, 10k lookups", |b| {
        b.iter(|| scattered.iter().filter(|&&p| full.covers(p..p + 2)).count())
    });
    g.bench_function("sequential append, 10k pages", |b| {
        b.iter(|| {
            let mut s = PageSet::new();
            for p in 0..10_000u64 {
                s.insert(p..p + 1);
            }
            black_box(s.len())
        })
    });
    g.finish();
}

fn segments(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment");
    g.measurement_time(Duration::from_secs(4));
    // One 4 MiB segment of 16 runs of 256 KiB, as a checkpoint under pgbench packs them.
    let runs = 16usize;
    for (name, data, level) in [
        (
            "table pages, zstd 1",
            table_pages(runs * RUN_PAGES as usize, 1),
            Some(1),
        ),
        (
            "random pages, zstd 1",
            random_pages(runs * RUN_PAGES as usize, 2),
            Some(1),
        ),
        (
            "table pages, raw",
            table_pages(runs * RUN_PAGES as usize, 3),
            None,
        ),
    ] {
        let run_bytes = RUN_PAGES as usize * PAGE;
        let pack = || {
            let mut b = SegmentBuilder::compressing(level);
            for (i, chunk) in data.chunks(run_bytes).enumerate() {
                b.push_run(7, i as u64 * u64::from(RUN_PAGES), RUN_PAGES, chunk);
            }
            b.finish()
        };
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("pack 4 MiB, {name}"), |b| {
            b.iter(|| black_box(pack()))
        });
        let (bytes, locs) = pack();
        g.bench_function(format!("verify 4 MiB, {name}"), |b| {
            b.iter(|| verify_segment(black_box(&bytes), "segments/x.seg").expect("valid"))
        });
        // A cache miss: one run out of the segment, crc-checked and decompressed.
        let loc = locs[5];
        let stored = &bytes[loc.offset as usize..(loc.offset + u64::from(loc.stored_len)) as usize];
        g.throughput(Throughput::Bytes(run_bytes as u64));
        g.bench_function(format!("decode one 256 KiB run, {name}"), |b| {
            b.iter(|| decode_run(&loc, black_box(stored), "segments/x.seg").expect("valid"))
        });
    }
    g.finish();
}

fn attr(ino: u64, kind: FileKind, size: u64) -> Attr {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    Attr {
        ino,
        kind,
        perm: 0o600,
        uid: 999,
        gid: 999,
        size,
        nlink: 1,
        rdev: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        parent: if kind == FileKind::Dir { 1 } else { 0 },
        target: Vec::new(),
    }
}

/// A base manifest of a database of `files` files of `pages` pages each, in runs of
/// `RUN_PAGES`, 128 runs to a segment.
fn base(files: u64, pages: u64) -> Manifest {
    base_in_runs(files, pages, RUN_PAGES)
}

/// As `base`, in runs of `run_pages`.
fn base_in_runs(files: u64, pages: u64, run_pages: u32) -> Manifest {
    let mut m = Manifest {
        epoch: 42,
        parent: None,
        created_ms: 1_790_000_000_000,
        page_size: PAGE as u32,
        writer: "0123456789abcdef".into(),
        next_ino: files + 2,
        ..Manifest::default()
    };
    let mut n = 0u64;
    for f in 0..files {
        let ino = f + 2;
        m.inodes
            .push(attr(ino, FileKind::File, pages * PAGE as u64));
        m.dirents.push(bucketfs::manifest::ManifestDirent {
            parent: 1,
            name: format!("{}", 16_384 + f).into(),
            ino,
            kind: FileKind::File,
        });
        for first in (0..pages).step_by(run_pages as usize) {
            let segment = format!("segments/{:020}-0123456789abcdef-1-{:04}.seg", 42, n / 128);
            let run = bucketfs::manifest::segment::RunLocation {
                ino,
                first_page: first,
                pages: run_pages,
                offset: (n % 128) * 90_000,
                stored_len: 90_000,
                codec: bucketfs::manifest::segment::Codec::Zstd,
                crc: n as u32,
            };
            m.extents.push(Extent::whole(segment, run));
            n += 1;
        }
    }
    m
}

fn manifests(c: &mut Criterion) {
    let mut g = c.benchmark_group("manifest");
    g.measurement_time(Duration::from_secs(4));
    // 1 GiB in 1,000 files (4,000 runs), and a delta of one checkpoint under pgbench.
    let m = base(1_000, 128);
    let bytes = m.encode();
    g.throughput(Throughput::Elements(m.extents.len() as u64));
    g.bench_function("encode a 1 GiB base", |b| b.iter(|| black_box(m.encode())));
    g.bench_function("decode a 1 GiB base", |b| {
        b.iter(|| Manifest::decode(black_box(&bytes), "manifests/x").expect("valid"))
    });
    g.bench_function("apply a 1 GiB base to an empty view", |b| {
        b.iter_batched(
            View::default,
            |mut v| {
                v.apply(&m);
                v
            },
            BatchSize::LargeInput,
        )
    });
    // A base as a random update load leaves it: an extent per page (here 1,000 files of 128
    // pages, the 10 GiB pgbench database after 10 s of TPC-B had about 100,000 extents).
    let fragmented = base_in_runs(1_000, 128, 1);
    g.throughput(Throughput::Elements(fragmented.extents.len() as u64));
    g.bench_function(
        "apply a base of 128,000 one-page extents to an empty view",
        |b| {
            b.iter_batched(
                View::default,
                |mut v| {
                    v.apply(&fragmented);
                    v
                },
                BatchSize::LargeInput,
            )
        },
    );
    let mut view = View::default();
    view.apply(&m);
    let delta = {
        let mut d = base(40, 4);
        d.parent = Some(42);
        d.epoch = 43;
        d.inodes.clear();
        d.dirents.clear();
        d
    };
    g.throughput(Throughput::Elements(delta.extents.len() as u64));
    g.bench_function("apply a 40-run delta to a 1 GiB view", |b| {
        b.iter_batched(
            || view.clone(),
            |mut v| {
                v.apply(&delta);
                v
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("view");
    let lookups: Vec<(u64, u64)> = {
        let mut rng = fastrand::Rng::with_seed(9);
        (0..10_000)
            .map(|_| (rng.u64(2..1_002), rng.u64(..128)))
            .collect()
    };
    g.throughput(Throughput::Elements(lookups.len() as u64));
    g.bench_function("extent_at, 10k random pages of 1 GiB", |b| {
        b.iter(|| {
            lookups
                .iter()
                .filter(|&&(ino, page)| view.extent_at(ino, page).is_some())
                .count()
        })
    });
    g.finish();
}

/// One checkpoint of a single dirty page, in a database-sized namespace whose view is
/// fragmented by many small checkpoints: the cost `--durability remote` pays per group commit,
/// less the store's (the bucket and the cache dir are on tmpfs, where fsync is free).
fn small_checkpoints(c: &mut Criterion) {
    use std::ffi::OsStr;
    use std::sync::Arc;

    use bucketfs::cache::CacheDir;
    use bucketfs::checkpoint::{open_bucket, CheckpointSettings, Checkpointer};
    use bucketfs::fs::{Caller, Fs, FsOptions, ROOT_INO};
    use bucketfs::store::{LocalStore, ObjectStore};

    const DIRS: u64 = 10;
    const FILES_PER_DIR: u64 = 100;
    /// Single pages written per file before the measurement: the extents of the view.
    const PAGES_PER_FILE: u64 = 8;
    let root = Caller { uid: 0, gid: 0 };
    let tmp = tempfile::tempdir_in("/dev/shm").expect("a dir on tmpfs");
    let (cache, bucket) = (tmp.path().join("cache"), tmp.path().join("bucket"));
    std::fs::create_dir_all(&bucket).expect("bucket dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&bucket).expect("bucket"));
    let dir = CacheDir::open(&cache, PAGE as u64).expect("cache dir");
    let fs = Arc::new(Fs::new(dir, &FsOptions::default()).expect("fs"));
    let opened = open_bucket(&*store, rt.handle(), true).expect("open bucket");
    let cp = Checkpointer::new(
        fs.clone(),
        store,
        rt.handle().clone(),
        CheckpointSettings::default(),
        "bench".into(),
        &opened,
    );
    cp.checkpoint(false).expect("first checkpoint");
    let page = table_pages(1, 1);
    let mut files = Vec::new();
    for d in 0..DIRS {
        let dir = fs
            .mkdir(ROOT_INO, OsStr::new(&format!("d{d}")), 0o755, root)
            .expect("mkdir")
            .ino;
        for f in 0..FILES_PER_DIR {
            let (a, _) = fs
                .create(dir, OsStr::new(&format!("{f}")), 0o644, root, false)
                .expect("create");
            files.push(a.ino);
        }
    }
    for p in 0..PAGES_PER_FILE {
        for &ino in &files {
            fs.open(ino, libc::O_RDWR).expect("open");
            fs.write(ino, 2 * p * PAGE as u64, &page).expect("write");
            fs.release(ino).expect("close");
        }
        cp.checkpoint(false).expect("checkpoint");
    }
    for &ino in &files {
        fs.open(ino, libc::O_RDWR).expect("open");
    }
    let mut g = c.benchmark_group("checkpoint");
    g.measurement_time(Duration::from_secs(6));
    let mut rng = fastrand::Rng::with_seed(3);
    g.bench_function("one dirty page, 1,000 files, 8,000 extents", |b| {
        b.iter(|| {
            let ino = files[rng.usize(..files.len())];
            let at = rng.u64(..2 * PAGES_PER_FILE) * PAGE as u64;
            fs.write(ino, at, &page).expect("write");
            cp.checkpoint(false).expect("checkpoint")
        })
    });
    g.finish();
}

criterion_group!(benches, page_sets, segments, manifests, small_checkpoints);
criterion_main!(benches);
