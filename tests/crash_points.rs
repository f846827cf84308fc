//! A crash at each step of a checkpoint (failpoints: the process aborts as kill -9 would):
//! the bucket stays a complete, verifiable image; the same cache dir mounts again, its next
//! checkpoint succeeds, and a restore then shows exactly what was written. Each step is
//! crossed by a checkpoint that uploads segments and, but for the segment PUT it does not
//! make, by a checkpoint small enough to carry its runs in its manifest.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::s3::S3Server;
use common::{wait_for, Mount, BIN};

const FILES: usize = 5;

/// How much a version writes.
#[derive(Clone, Copy)]
enum Size {
    /// 1 MiB that does not compress: segments.
    Segments,
    /// A few KiB: runs that travel in the manifest.
    Inline,
}

/// File `i` of version `v`.
fn contents(v: u8, i: usize, size: Size) -> Vec<u8> {
    match size {
        Size::Segments => common::incompressible(200_000 + i * 8_192, u64::from(v) * 10 + i as u64),
        Size::Inline => vec![v * 10 + i as u8; 3_000 + i * 100],
    }
}

/// Version `v` of the tree: five files of distinct bytes, plus one file named after `v`.
fn write_version(root: &Path, v: u8, size: Size) {
    for i in 0..FILES {
        let mut f = fs::File::create(root.join(format!("f{i}"))).unwrap();
        f.write_all(&contents(v, i, size)).unwrap();
        f.sync_all().unwrap();
    }
    let _ = fs::remove_file(root.join(format!("only-in-{}", v - 1)));
    fs::write(root.join(format!("only-in-{v}")), [v]).unwrap();
    fs::File::open(root).unwrap().sync_all().unwrap();
}

fn assert_version(root: &Path, v: u8, size: Size) {
    for i in 0..FILES {
        let got = fs::read(root.join(format!("f{i}"))).unwrap();
        assert!(got == contents(v, i, size), "f{i} is not version {v}");
    }
    assert!(root.join(format!("only-in-{v}")).exists());
    assert!(!root.join(format!("only-in-{}", v - 1)).exists());
}

fn bucketfs(args: &[&str], s3: &S3Server) -> std::process::Output {
    Command::new(BIN)
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .args(args)
        .envs(s3.env())
        .output()
        .expect("run bucketfs")
}

fn crash_at(point: &str, size: Size) {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let url = s3.url("crash");
    let (mnt, cache) = (dir.path().join("m"), dir.path().join("c"));
    let quiet = ["--bucket", url.as_str(), "--checkpoint-interval", "1h"];

    let m = Mount::start_with_env(&mnt, &cache, &quiet, &s3.env());
    write_version(&m.mnt, 1, size);
    assert!(m.stop().success());

    let mut env = s3.env();
    env.push(("BUCKETFS_FAILPOINT", point.to_string()));
    let m = Mount::start_with_env(&mnt, &cache, &quiet, &env);
    write_version(&m.mnt, 2, size);
    let out = bucketfs(&["checkpoint", "--cache-dir", cache.to_str().unwrap()], &s3);
    assert!(
        !out.status.success(),
        "the checkpoint survived failpoint {point}"
    );
    wait_for(
        "the failpoint to abort bucketfs",
        Duration::from_secs(30),
        || m.log_text().contains(&format!("failpoint {point} reached")),
    );
    m.kill();

    let verify = bucketfs(&["verify", "--bucket", &url], &s3);
    assert!(
        verify.status.success(),
        "after a crash at {point} the bucket does not verify:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // The same cache dir again: it is this writer's own, so no --takeover; nothing fsync'd
    // is lost, and the next checkpoint goes through.
    let m = Mount::start_with_env(&mnt, &cache, &quiet, &s3.env());
    assert_version(&m.mnt, 2, size);
    let out = bucketfs(&["checkpoint", "--cache-dir", cache.to_str().unwrap()], &s3);
    assert!(
        out.status.success(),
        "the checkpoint after recovering from {point} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.stop().success());

    let r = Mount::start_with_env(
        &dir.path().join("r"),
        &dir.path().join("rc"),
        &quiet,
        &s3.env(),
    );
    assert_version(&r.mnt, 2, size);
    assert!(r.stop().success());
    let segments = objects_named(&dir.path().join("s3"), "segments");
    match size {
        Size::Segments => assert!(segments > 0, "no segment was uploaded"),
        Size::Inline => assert_eq!(segments, 0, "a small checkpoint uploaded a segment"),
    }
}

/// How many objects below `root` sit in a directory called `dir` (the S3 server keeps
/// keys as paths).
fn objects_named(root: &Path, dir: &str) -> usize {
    let mut n = 0;
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += if e.file_name() == dir {
                fs::read_dir(e.path()).unwrap().count()
            } else {
                objects_named(&e.path(), dir)
            };
        }
    }
    n
}

#[test]
fn crash_after_a_segment_put() {
    crash_at("after-segment-put", Size::Segments);
}

#[test]
fn crash_before_the_manifest_commit() {
    crash_at("before-manifest-commit", Size::Segments);
}

#[test]
fn crash_after_the_manifest_commit() {
    crash_at("after-manifest-commit", Size::Segments);
}

#[test]
fn crash_before_a_manifest_carrying_its_runs_is_committed() {
    crash_at("before-manifest-commit", Size::Inline);
}

#[test]
fn crash_after_a_manifest_carrying_its_runs_is_committed() {
    crash_at("after-manifest-commit", Size::Inline);
}

#[test]
fn crash_while_a_manifest_carrying_its_runs_is_marked_clean() {
    crash_at("during-mark-clean", Size::Inline);
}

#[test]
fn crash_during_mark_clean() {
    crash_at("during-mark-clean", Size::Segments);
}

/// The disk under the cache dir failing a write-back (failpoint `cache-flush-fails`: every
/// flush of the cache files fails) stops the mount, as a failed fsync stops Postgres: the
/// checkpoint's commit stands, then writes fail with EIO, /healthz answers 503, and status
/// and the metrics say why (docs/trust.md, rule 18).
#[test]
fn a_failed_flush_of_the_cache_files_stops_the_mount_with_eio() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let url = s3.url("flush");
    let (mnt, cache) = (dir.path().join("m"), dir.path().join("c"));
    let quiet = ["--bucket", url.as_str(), "--checkpoint-interval", "1h"];
    let mut env = s3.env();
    env.push(("BUCKETFS_FAILPOINT", "cache-flush-fails".to_string()));
    let m = Mount::start_with_env(&mnt, &cache, &quiet, &env);
    // Not fsync'd (an fsync's flush would fail too): the checkpoint's flush is the first.
    let mut f = fs::File::create(m.mnt.join("a")).unwrap();
    f.write_all(b"written before the flush failed").unwrap();
    drop(f);
    let out = bucketfs(&["checkpoint", "--cache-dir", cache.to_str().unwrap()], &s3);
    assert!(
        !out.status.success(),
        "the checkpoint whose flush failed reported success"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed to write back"),
        "unclear error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = fs::write(m.mnt.join("b"), b"after").expect_err("a write after the failed flush");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let status = m.status();
    assert!(status.cache_failed, "status does not say the mount stopped");
    let stopped = status.stopped.unwrap_or_default();
    assert!(
        stopped.contains("failed to write back") && stopped.contains("empty cache dir"),
        "status does not say what stopped the mount and what to do: {stopped:?}"
    );
    let addr = status.metrics_addr.expect("metrics served");
    let (code, body) = common::http_get(&addr, "/healthz");
    assert_eq!(code, 503, "healthz: {body}");
    assert!(body.contains("empty cache dir"), "healthz: {body}");
    let (_, metrics) = common::http_get(&addr, "/metrics");
    assert_eq!(common::sample(&metrics, "bucketfs_cache_failed"), 1.0);
    // Reads go on.
    assert_eq!(
        fs::read(m.mnt.join("a")).unwrap(),
        b"written before the flush failed"
    );
    m.kill();
    // The cache dir is refused from now on, with what to do.
    let mut again = Command::new(BIN)
        .arg("mount")
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(&cache)
        .args(quiet)
        .envs(s3.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bucketfs");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = again.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            // Mounted after all: take it down before failing.
            let _ = again.kill();
            let _ = again.wait();
            let _ = Command::new("fusermount3").arg("-uz").arg(&mnt).status();
            panic!("the cache dir whose flush failed was mounted again");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut again.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!exited.success(), "the failed cache dir was mounted");
    assert!(
        stderr.contains("cannot be trusted") && stderr.contains("remove the cache dir"),
        "unclear refusal: {stderr}"
    );
}

/// The bytes of file `i` in the write load: distinct per file, checkable on their own.
fn load_file(i: u32) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; 40_000 + (i as usize % 7) * 8_192];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

#[test]
fn kill_9_during_uploads_under_load_loses_nothing_fsynced_and_the_bucket_catches_up() {
    use std::sync::atomic::Ordering;
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let url = s3.url("load");
    let (mnt, cache) = (dir.path().join("m"), dir.path().join("c"));
    let args = ["--bucket", url.as_str(), "--checkpoint-interval", "100ms"];
    // Slow uploads, so that the kill finds some in flight.
    s3.faults.latency_ms.store(100, Ordering::SeqCst);

    let m = Mount::start_with_env(&mnt, &cache, &args, &s3.env());
    // The load: file after file, each written, fsync'd and then counted as acknowledged.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writer = {
        let (root, acked) = (m.mnt.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                let done = fs::File::create(root.join(format!("w{i}"))).and_then(|mut f| {
                    f.write_all(&load_file(i))?;
                    f.sync_all()
                });
                if done.is_err() {
                    return; // the mount died under us
                }
                acked.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    let committed = || m.log_text().matches("checkpoint committed").count();
    let puts = s3.faults.puts();
    wait_for("checkpoints under load", Duration::from_secs(60), || {
        committed() >= 3 && s3.faults.puts() > puts + 5
    });
    m.kill();
    writer.join().unwrap();
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 0, "the load wrote nothing");
    s3.faults.latency_ms.store(0, Ordering::SeqCst);

    // The same cache dir: every acknowledged file is there, whole.
    let m = Mount::start_with_env(&mnt, &cache, &args, &s3.env());
    for i in 0..acked {
        let got = fs::read(m.mnt.join(format!("w{i}"))).unwrap();
        assert!(got == load_file(i), "w{i} differs after kill -9");
    }
    // The bucket catches up: the next checkpoint holds them all, as a restore shows.
    let out = bucketfs(&["checkpoint", "--cache-dir", cache.to_str().unwrap()], &s3);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.stop().success());
    let verify = bucketfs(&["verify", "--bucket", &url], &s3);
    assert!(verify.status.success());
    let r = Mount::start_with_env(
        &dir.path().join("r"),
        &dir.path().join("rc"),
        &args,
        &s3.env(),
    );
    for i in 0..acked {
        let got = fs::read(r.mnt.join(format!("w{i}"))).unwrap();
        assert!(got == load_file(i), "w{i} differs in the bucket");
    }
    assert!(r.stop().success());
}
