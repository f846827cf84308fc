//! The bounded cache and what a mount reports, through a real mount and a real S3 protocol
//! server: eviction under pressure (with Postgres), scan resistance, warm restarts that fetch
//! nothing they hold, `--max-dirty` back-pressure, prewarm of a cold start, and the metrics
//! endpoint.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::pg::{run_ok, Postgres};
use common::s3::S3Server;
use common::{http_get, incompressible, promtool_check, read_uncached, sample, wait_for, Mount};

const MIB: u64 = 1 << 20;

fn start(dir: &Path, name: &str, s3: &S3Server, extra: &[&str]) -> Mount {
    let mut args = vec!["--bucket".to_string(), s3.url("db")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Mount::start_with_env(
        &dir.join(format!("mnt-{name}")),
        &dir.join(format!("cache-{name}")),
        &args,
        &s3.env(),
    )
}

/// Stops a mount and asserts it stopped cleanly, with its log if it did not.
fn stop_ok(m: Mount) {
    let log = m.log.clone();
    let status = m.stop();
    assert!(
        status.success(),
        "bucketfs stopped with {status}:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Real disk use under `dir` (allocated blocks, as du counts them).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// Disk use of the cache files alone (data/), without RocksDB's metadata.
fn data_usage(m: &Mount) -> u64 {
    disk_usage(&m.cache.join("data"))
}

#[test]
fn a_scan_larger_than_the_cache_does_not_flush_the_hot_set() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let m = start(dir.path(), "a", &s3, &["--cache-size", "16M"]);
    let hot = incompressible(4 * MIB as usize, 1);
    let big = incompressible(64 * MIB as usize, 2);
    write_file(&m.mnt.join("hot"), &hot);
    write_file(&m.mnt.join("big"), &big);
    m.checkpoint();
    // The hot set: read often.
    for _ in 0..4 {
        assert!(read_uncached(&m.mnt.join("hot")) == hot);
    }
    // One large scan, four times the cache.
    assert!(read_uncached(&m.mnt.join("big")) == big);
    let before = m.status();
    assert!(
        before.fs.evicted_bytes > 32 * MIB,
        "the scan should have been evicted as it went: {:?}",
        before.fs
    );
    assert!(read_uncached(&m.mnt.join("hot")) == hot);
    let after = m.status();
    let misses = after.fs.read_misses - before.fs.read_misses;
    let hits = after.fs.read_hits - before.fs.read_hits;
    let fetched = after.fs.fetched_bytes - before.fs.fetched_bytes;
    assert!(
        fetched <= hot.len() as u64 / 10 && hits >= 9 * (hits + misses) / 10,
        "the hot set lost its place to the scan: {hits} hits, {misses} misses, {fetched} bytes \
         fetched for a {} byte file",
        hot.len()
    );
    let cache = after.cache.expect("bounded");
    assert!(cache.used_bytes <= 16 * MIB, "{cache:?}");
    stop_ok(m);
}

#[test]
fn a_restart_after_a_clean_stop_or_kill_9_fetches_nothing_it_holds() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let data = incompressible(48 * MIB as usize, 3);
    for (round, crash) in [false, true].into_iter().enumerate() {
        let name = format!("r{round}");
        let m = start(dir.path(), &name, &s3, &["--cache-size", "16M"]);
        write_file(&m.mnt.join("f"), &data);
        m.checkpoint();
        // Read it all through a cache a third its size: part is evicted, part stays.
        assert!(read_uncached(&m.mnt.join("f")) == data);
        // Pages marked absent but not yet punched when we kill would be fetched again (by
        // design: the mark comes first); "held" is only what the evictor is done with.
        wait_for("the evictor to catch up", Duration::from_secs(30), || {
            m.status().cache.expect("bounded").evictions_queued == 0
        });
        let cache_dir = m.cache.clone();
        if crash {
            m.kill();
        } else {
            stop_ok(m);
        }
        let held = disk_usage(&cache_dir.join("data"));
        assert!(
            held > 4 * MIB && held < data.len() as u64,
            "the test needs a cache that holds part of the file: {held}"
        );
        let gets = s3.faults.segment_gets();
        // The same cache dir again, unbounded so that nothing is evicted while we read.
        let m = Mount::start_with_env(
            &dir.path().join(format!("mnt-{name}")),
            &cache_dir,
            &["--bucket", &s3.url("db")],
            &s3.env(),
        );
        assert!(read_uncached(&m.mnt.join("f")) == data, "round {round}");
        let s = m.status();
        let missing = data.len() as u64 - held;
        assert!(
            s.fs.fetched_bytes <= missing + 256 * 1024,
            "round {round} (kill -9: {crash}): fetched {} bytes, but only {missing} were not \
             cached",
            s.fs.fetched_bytes
        );
        assert!(
            s.fs.fetched_bytes + held >= data.len() as u64,
            "bytes neither held nor fetched"
        );
        assert!(
            s3.faults.segment_gets() > gets,
            "the evicted part comes from the bucket"
        );
        stop_ok(m);
    }
    s3.assert_verifies("db", "the bucket holds a broken filesystem");
}

#[test]
fn writers_wait_at_max_dirty_and_never_fail() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let m = start(
        dir.path(),
        "a",
        &s3,
        &[
            "--max-dirty",
            "16M",
            "--checkpoint-interval",
            "1h",
            "--compression",
            "none",
        ],
    );
    // A slow bucket: every request takes 100 ms, so the writer outruns the uploads.
    s3.faults.latency_ms.store(100, Ordering::Relaxed);
    let data = incompressible(96 * MIB as usize, 4);
    let mnt = m.mnt.clone();
    let writer = std::thread::spawn(move || {
        let mut f = fs::File::create(mnt.join("f")).unwrap();
        for piece in data.chunks(MIB as usize) {
            f.write_all(piece).unwrap();
            f.sync_data().unwrap();
        }
        data
    });
    let mut peak = 0;
    while !writer.is_finished() {
        peak = peak.max(m.status().fs.dirty_bytes);
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = writer.join().expect("no write failed");
    let s = m.status();
    assert!(
        s.fs.throttled_writes > 0,
        "writers never waited: {:?}",
        s.fs
    );
    // The bound plus what the kernel can have in flight when it is reached (one 1 MiB write
    // per request thread).
    assert!(peak <= 16 * MIB + 17 * MIB, "dirty reached {peak}");
    s3.faults.latency_ms.store(0, Ordering::Relaxed);
    stop_ok(m);
    let m = start(dir.path(), "b", &s3, &[]);
    assert!(
        read_uncached(&m.mnt.join("f")) == data,
        "restored bytes differ"
    );
    stop_ok(m);
}

/// Waits for the mount's prewarm to finish; its status then, and the prewarm's.
fn prewarmed(m: &Mount) -> (bucketfs::status::Status, bucketfs::status::PrewarmStatus) {
    wait_for("prewarm", Duration::from_secs(60), || {
        m.status()
            .bucket
            .and_then(|b| b.prewarm)
            .is_some_and(|p| p.state == "done")
    });
    let status = m.status();
    let p = status.bucket.as_ref().unwrap().prewarm.clone().unwrap();
    (status, p)
}

#[test]
fn a_cold_start_prewarms_the_hot_set_of_the_last_clean_stop() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let m = start(dir.path(), "a", &s3, &["--cache-size", "16M"]);
    let hot = incompressible(2 * MIB as usize, 5);
    let cold = incompressible(64 * MIB as usize, 6);
    write_file(&m.mnt.join("hot"), &hot);
    write_file(&m.mnt.join("cold"), &cold);
    m.checkpoint();
    for _ in 0..4 {
        assert!(read_uncached(&m.mnt.join("hot")) == hot);
    }
    assert!(read_uncached(&m.mnt.join("cold")) == cold);
    stop_ok(m);
    assert!(
        dir.path()
            .join(format!("s3/{}/db/prewarm/hot-set.json", common::s3::BUCKET))
            .exists(),
        "a clean stop records the hot set"
    );

    // A new machine.
    let m = start(dir.path(), "b", &s3, &["--cache-size", "16M"]);
    let (before, p) = prewarmed(&m);
    assert!(p.chunks_done == p.chunks_total && p.failed == 0, "{p:?}");
    assert!(m.log_text().contains("prewarm done"), "progress is logged");
    assert!(read_uncached(&m.mnt.join("hot")) == hot);
    let after = m.status();
    let fetched = after.fs.fetched_bytes - before.fs.fetched_bytes;
    assert!(
        fetched == 0 && after.fs.read_misses == before.fs.read_misses,
        "the hot file was not prewarmed: {fetched} bytes fetched"
    );
    stop_ok(m);
}

#[test]
fn a_cold_start_fetches_what_the_last_start_read_first_before_the_other_small_files() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let m = start(dir.path(), "a", &s3, &[]);
    // Above the small-file prefetch's 1 MiB, in a checkpoint (and so a segment) of its own.
    let first = incompressible(2 * MIB as usize, 11);
    write_file(&m.mnt.join("first"), &first);
    m.checkpoint();
    let segments = dir
        .path()
        .join(format!("s3/{}/db/segments", common::s3::BUCKET));
    let names = || -> Vec<String> {
        fs::read_dir(&segments)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let first_segment = match names().as_slice() {
        [one] => format!("db/segments/{one}"),
        other => panic!("expected the one segment of `first`, found {other:?}"),
    };
    // What this mount reads first.
    assert!(read_uncached(&m.mnt.join("first")) == first);
    // More batches of small files than the prefetch fetches at once (32 files to a batch,
    // 16 batches at a time).
    for i in 0..640 {
        fs::write(m.mnt.join(format!("s{i}")), incompressible(8192, i)).unwrap();
    }
    m.checkpoint();
    assert!(
        names().len() > 1,
        "the small files went in a checkpoint of their own"
    );
    stop_ok(m);

    // A new machine, 250 ms per request: the prefetch's first 16 requests go out before
    // any answer comes.
    s3.faults.latency_ms.store(250, Ordering::Relaxed);
    s3.faults.take_get_log();
    let m = start(dir.path(), "b", &s3, &[]);
    let (before, _) = prewarmed(&m);
    let gets = s3.faults.take_get_log();
    let segment_gets: Vec<&String> = gets.iter().filter(|k| k.contains("/segments/")).collect();
    // `first`'s 8 chunks go in two GETs of four chunks, among the first 16 requests; the
    // small files' 20 batches take two rounds.
    let first_last = segment_gets.iter().rposition(|k| **k == first_segment);
    let small_last = segment_gets.iter().rposition(|k| **k != first_segment);
    assert!(
        first_last.is_some_and(|at| at < 16) && small_last.is_some() && first_last < small_last,
        "`first`, read first at the last start, was not fetched first: {segment_gets:?}"
    );
    s3.faults.latency_ms.store(0, Ordering::Relaxed);
    assert!(read_uncached(&m.mnt.join("first")) == first);
    assert_eq!(
        m.status().fs.read_misses,
        before.fs.read_misses,
        "`first` was not in the cache"
    );
    stop_ok(m);
}

#[test]
fn a_cold_start_with_a_smaller_cache_prewarms_what_fits_fewest_hot_chunks_first() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let m = start(dir.path(), "a", &s3, &["--cache-size", "64M"]);
    // Both above the small-file prefetch's 1 MiB: not in the small-file prefetch.
    let small = incompressible(2 * MIB as usize, 8);
    let large = incompressible(40 * MIB as usize, 9);
    // The large file first: the lower inode, so that neither inode nor name order would
    // put the small file first.
    write_file(&m.mnt.join("large"), &large);
    write_file(&m.mnt.join("small"), &small);
    m.checkpoint();
    assert!(read_uncached(&m.mnt.join("large")) == large);
    assert!(read_uncached(&m.mnt.join("small")) == small);
    stop_ok(m);

    // A new machine with a quarter of the cache: the recorded hot set (42 MiB) cannot fit.
    let m = start(dir.path(), "b", &s3, &["--cache-size", "16M"]);
    let (before, p) = prewarmed(&m);
    assert!(
        p.fetched_bytes <= 16 * MIB && p.chunks_total * 256 * 1024 <= 16 * MIB,
        "the prewarm fetched more than the cache holds: {p:?}"
    );
    assert!(
        p.chunks_skipped > 0 && p.chunks_done == p.chunks_total && p.failed == 0,
        "{p:?}"
    );
    assert!(
        m.log_text()
            .contains("prewarm: the hot set is larger than the cache's free room"),
        "the log says what was left out"
    );
    // The smaller file went first: all of it is here.
    assert!(read_uncached(&m.mnt.join("small")) == small);
    let after = m.status();
    assert!(
        after.fs.fetched_bytes == before.fs.fetched_bytes
            && after.fs.read_misses == before.fs.read_misses,
        "the small file was not prewarmed whole"
    );
    assert!(read_uncached(&m.mnt.join("large")) == large);
    stop_ok(m);
}

#[test]
fn a_cold_start_with_the_same_cache_prewarms_a_hot_set_of_partly_filled_chunks_whole() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let m = start(dir.path(), "a", &s3, &["--cache-size", "16M"]);
    // 14 files of 1 MiB and 48 KiB (above the small-file prefetch's 1 MiB): 70 chunks, 14 of
    // them holding 48 KiB. 14.7 MiB in all: they fit the 16 MiB cache, though 70 whole
    // chunks would not.
    let files: Vec<Vec<u8>> = (0..14)
        .map(|i| incompressible((MIB + 48 * 1024) as usize, 20 + i))
        .collect();
    for (i, f) in files.iter().enumerate() {
        write_file(&m.mnt.join(format!("f{i}")), f);
    }
    m.checkpoint();
    for (i, f) in files.iter().enumerate() {
        assert!(read_uncached(&m.mnt.join(format!("f{i}"))) == *f);
    }
    stop_ok(m);

    let m = start(dir.path(), "b", &s3, &["--cache-size", "16M"]);
    let (before, p) = prewarmed(&m);
    // What mount a read first came before the prewarm, as much as half the room holds: by
    // bytes, f0 to f6 (7 x 1072 KiB) and two whole chunks of f7, 8016 of 8192 KiB. The
    // prewarm then finds 33 chunks (6992 KiB) for the 8368 KiB left: they fit if weighed by
    // their bytes, not if weighed whole (8448 KiB).
    assert!(
        p.chunks_skipped == 0 && p.chunks_total == 33 && p.chunks_done == 33 && p.failed == 0,
        "the hot set fits, and was fetched whole: {p:?}"
    );
    for (i, f) in files.iter().enumerate() {
        assert!(read_uncached(&m.mnt.join(format!("f{i}"))) == *f);
    }
    let after = m.status();
    assert!(
        after.fs.fetched_bytes == before.fs.fetched_bytes,
        "a prewarmed file was fetched again"
    );
    stop_ok(m);
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_the_workload() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let m = start(dir.path(), "a", &s3, &[]);
    let addr = m.status().metrics_addr.expect("metrics served");
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, first) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    promtool_check(&first);

    let data = incompressible(4 * MIB as usize, 7);
    write_file(&m.mnt.join("f"), &data);
    m.checkpoint();
    let (_, second) = http_get(&addr, "/metrics");
    promtool_check(&second);
    assert_eq!(
        sample(&second, "bucketfs_checkpoints_total"),
        sample(&first, "bucketfs_checkpoints_total") + 1.0
    );
    let puts = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("bucketfs_s3_requests_total{op=\"put\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    assert!(
        puts(&second) >= puts(&first) + 2.0,
        "a segment and a manifest"
    );
    assert!(
        sample(&second, "bucketfs_checkpoint_uploaded_bytes_total")
            - sample(&first, "bucketfs_checkpoint_uploaded_bytes_total")
            >= data.len() as f64
    );
    assert!(sample(&second, "bucketfs_fuse_write_bytes_total") >= data.len() as f64);
    assert!(
        sample(
            &second,
            "bucketfs_checkpoint_last_success_timestamp_seconds"
        ) > 0.0
    );
    assert_eq!(sample(&second, "bucketfs_fenced"), 0.0);
    stop_ok(m);

    // A cold start without a hot set to prewarm: the first read misses, the second hits.
    fs::remove_file(
        dir.path()
            .join(format!("s3/{}/db/prewarm/hot-set.json", common::s3::BUCKET)),
    )
    .expect("the clean stop recorded a hot set");
    let m = start(dir.path(), "b", &s3, &[]);
    let addr = m.status().metrics_addr.unwrap();
    let (_, before) = http_get(&addr, "/metrics");
    assert!(read_uncached(&m.mnt.join("f")) == data);
    let (_, cold) = http_get(&addr, "/metrics");
    assert!(
        sample(&cold, "bucketfs_cache_misses_total")
            > sample(&before, "bucketfs_cache_misses_total")
    );
    assert!(
        sample(&cold, "bucketfs_cache_fetched_bytes_total") >= data.len() as f64,
        "the whole file came from the bucket"
    );
    assert!(read_uncached(&m.mnt.join("f")) == data);
    let (_, warm) = http_get(&addr, "/metrics");
    promtool_check(&warm);
    assert_eq!(
        sample(&warm, "bucketfs_cache_misses_total"),
        sample(&cold, "bucketfs_cache_misses_total")
    );
    assert!(
        sample(&warm, "bucketfs_cache_hits_total") > sample(&cold, "bucketfs_cache_hits_total")
    );
    assert_eq!(
        sample(&warm, "bucketfs_cache_fetched_bytes_total"),
        sample(&cold, "bucketfs_cache_fetched_bytes_total")
    );
    assert!(sample(&warm, "bucketfs_fuse_op_duration_seconds_count") > 0.0);
    assert!(warm.contains("bucketfs_s3_request_duration_seconds_count{class=\"data\",op=\"get\"}"));
    let (code, status) = http_get(&addr, "/status");
    assert_eq!(code, 200);
    for text in [&warm, &status] {
        assert!(!text.contains(common::s3::SECRET_KEY) && !text.contains(common::s3::ACCESS_KEY));
    }
    let status: bucketfs::status::Status = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status.bucket.unwrap().url, s3.url("db"));
    assert_eq!(http_get(&addr, "/nope").0, 404);

    // And for a person.
    let out = Command::new(common::BIN)
        .args(["status", "--cache-dir"])
        .arg(&m.cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "bucket",
        "epoch",
        "rpo",
        "dirty",
        "cache",
        "hit rate",
        "object store",
    ] {
        assert!(text.contains(word), "status lacks {word:?}:\n{text}");
    }
    assert!(!text.contains(common::s3::SECRET_KEY), "{text}");
    stop_ok(m);
}

#[test]
fn postgres_answers_correctly_from_a_cache_far_smaller_than_its_tables() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let sockets = dir.path().join("run");
    let mut args = vec![
        "--allow-other",
        "--uid",
        "postgres",
        "--gid",
        "postgres",
        "--cache-size",
        "16M",
        "--max-dirty",
        "32M",
        "--checkpoint-interval",
        "1s",
    ];
    let m = start(dir.path(), "a", &s3, &args);
    Postgres::initdb(&m.mnt);
    // shared_buffers smaller than the cache: reads reach bucketfs.
    let pg = Postgres::start(&m.mnt, &sockets, 54_351, &["shared_buffers=8MB"]);
    // Scale 8: about 120 MiB of tables and indexes, over seven times the cache.
    run_ok(pg.tool("pgbench").args(["-i", "-s", "8", "-q", "postgres"]));
    run_ok(
        pg.tool("pgbench")
            .args(["-c", "2", "-t", "300", "postgres"])
            .stdout(Stdio::null()),
    );
    let check = |pg: &Postgres| {
        assert_eq!(
            pg.query_one("SELECT count(*) FROM pgbench_accounts"),
            "800000"
        );
        // Every transaction adds the same delta to an account and to the history.
        assert_eq!(
            pg.query_one("SELECT sum(abalance) FROM pgbench_accounts"),
            pg.query_one("SELECT sum(delta) FROM pgbench_history")
        );
        assert_eq!(pg.query_one("SELECT count(*) FROM pgbench_history"), "600");
        run_ok(
            pg.tool("pg_amcheck")
                .args(["--all", "--install-missing", "--heapallindexed"]),
        );
    };
    check(&pg);
    // What moka has evicted the evictor punches out shortly after; under load it can be
    // behind by megabytes. The bound is on what the cache dir holds once it has caught up.
    let mut s = m.status();
    wait_for("the evictor to catch up", Duration::from_secs(60), || {
        s = m.status();
        s.cache.as_ref().expect("bounded").evictions_queued == 0
    });
    let cache = s.cache.expect("bounded");
    assert!(
        s.fs.evicted_bytes > 64 * MIB,
        "the tables did not go through the cache: {:?}",
        s.fs
    );
    // du of the cache dir: the bound, plus what is dirty, plus metadata (RocksDB).
    let meta = disk_usage(&m.cache.join("meta"));
    let used = disk_usage(&m.cache);
    assert!(
        used <= cache.capacity_bytes + s.fs.dirty_bytes + meta + 8 * MIB,
        "cache dir uses {used} bytes: bound {} + dirty {} + metadata {meta}",
        cache.capacity_bytes,
        s.fs.dirty_bytes
    );
    assert!(
        data_usage(&m) < 64 * MIB,
        "cache files use {}",
        data_usage(&m)
    );
    pg.stop();
    stop_ok(m);

    // Again on a new machine, through the same small cache.
    args.retain(|a| *a != "--max-dirty" && *a != "32M");
    let m = start(dir.path(), "b", &s3, &args);
    let pg = Postgres::start(&m.mnt, &sockets, 54_352, &["shared_buffers=8MB"]);
    check(&pg);
    assert!(
        data_usage(&m) < 64 * MIB,
        "cache files use {}",
        data_usage(&m)
    );
    pg.stop();
    stop_ok(m);
}
