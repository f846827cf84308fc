//! GC with real mounts and the real binary (docs/gc.md): read-only mounts of retained and of
//! expired checkpoints while the writer's GC runs, `--at`, `bucketfs gc` and `ls`, and
//! crashes (kill -9 at a failpoint) in the middle of a GC pass and of a compaction.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::s3::S3Server;
use common::{wait_for, Mount, BIN};

type Env = Vec<(&'static str, String)>;

fn bucketfs(args: &[&str], env: &Env) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .expect("run bucketfs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn segments(bucket: &Path) -> BTreeSet<String> {
    fs::read_dir(bucket.join("segments"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// A bucket for one test: a local directory (whose segments a test can list), or a prefix
/// on an S3 server (s3s-fs on loopback).
struct Setup {
    dir: tempfile::TempDir,
    bucket: PathBuf,
    url: String,
    env: Env,
    _s3: Option<S3Server>,
}

fn setup() -> Setup {
    let dir = common::scratch();
    let bucket = dir.path().join("bucket");
    let url = format!("file://{}", bucket.display());
    Setup {
        dir,
        bucket,
        url,
        env: Env::new(),
        _s3: None,
    }
}

fn setup_s3() -> Setup {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    Setup {
        bucket: PathBuf::new(),
        url: s3.url("gc"),
        env: s3.env(),
        dir,
        _s3: Some(s3),
    }
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `bucketfs gc` on this bucket, keeping the newest two checkpoints, with no grace.
    fn gc_args(&self) -> Vec<&str> {
        let keep = [
            "--retain",
            "0",
            "--retain-checkpoints",
            "2",
            "--gc-grace",
            "0",
        ];
        let mut args = vec!["gc", "--bucket", &self.url];
        args.extend(keep);
        args
    }

    fn bucketfs(&self, args: &[&str]) -> Output {
        bucketfs(args, &self.env)
    }

    fn verify_ok(&self) {
        let o = self.bucketfs(&["verify", "--bucket", &self.url]);
        assert!(o.status.success(), "verify: {}", text(&o));
    }

    fn mount(&self, name: &str, args: &[&str], failpoint: Option<&str>) -> Mount {
        let mut env = self.env.clone();
        if let Some(f) = failpoint {
            env.push(("BUCKETFS_FAILPOINT", f.into()));
        }
        Mount::start_with_env(
            &self.path(&format!("{name}-mnt")),
            &self.path(&format!("{name}-cache")),
            args,
            &env,
        )
    }
}

/// Waits for the failpoint to abort `m`, and clears the dead mount it leaves.
fn crashed(m: Mount, failpoint: &str) {
    wait_for(
        "the failpoint to abort bucketfs",
        Duration::from_secs(60),
        || {
            m.log_text()
                .contains(&format!("failpoint {failpoint} reached"))
        },
    );
    m.kill();
}

/// A writer whose GC keeps only the newest `keep` checkpoints, with a grace of a second and
/// a pass every `gc_interval`; checkpoints only when asked (`bucketfs checkpoint`).
fn writer(s: &Setup, keep: &str, gc_interval: &str, extra: &[&str]) -> Mount {
    let mut args = vec![
        "--bucket",
        &s.url,
        "--checkpoint-interval",
        "1h",
        "--gc-interval",
        gc_interval,
        "--retain",
        "0",
        "--retain-checkpoints",
        keep,
        "--gc-grace",
        "1s",
    ];
    args.extend_from_slice(extra);
    s.mount("w", &args, None)
}

/// File contents that do not compress: a checkpoint of them is too large to travel in its
/// manifest, so it uploads segments (which these tests watch).
fn body(tag: u8, len: usize) -> Vec<u8> {
    common::incompressible(len, u64::from(tag) + 1)
}

fn reader(s: &Setup, name: &str, extra: &[&str]) -> Mount {
    let mut args = vec!["--bucket", &s.url, "--read-only"];
    args.extend_from_slice(extra);
    s.mount(name, &args, None)
}

#[test]
fn a_read_only_mount_reads_on_while_its_checkpoint_is_retained_and_fails_clearly_after() {
    let s = setup();
    let w = writer(&s, "3", "200ms", &["--no-compaction"]);
    // Files over 1 MiB: a restore prefetches smaller ones, and these must be read only when
    // the test says.
    const LEN: usize = 2 << 20;
    let (one, two) = (w.mnt.join("one"), w.mnt.join("two"));
    fs::write(&one, body(1, LEN)).unwrap();
    fs::write(&two, body(2, LEN)).unwrap();
    let before = segments(&s.bucket);
    w.checkpoint();
    let first: BTreeSet<String> = segments(&s.bucket).difference(&before).cloned().collect();
    assert!(!first.is_empty(), "the checkpoint uploaded segments");
    let epoch = w.status().bucket.unwrap().epoch;
    let r = reader(&s, "r", &[]);

    // One newer checkpoint: the reader's is still among the newest three. GC runs past
    // its grace; the reader reads a file it never read before.
    fs::write(&one, body(3, LEN)).unwrap();
    fs::write(&two, body(4, LEN)).unwrap();
    w.checkpoint();
    // A pass more than the grace after the checkpoint: whatever it left pending has gone.
    let committed = bucketfs::checkpoint::now_ms();
    let last_pass = |m: &Mount| m.status().bucket.unwrap().gc.map_or(0, |g| g.pass_unix_ms);
    wait_for("a GC pass past the grace", Duration::from_secs(30), || {
        last_pass(&w) > committed + 1500
    });
    // What the passes found is in /metrics, as Prometheus reads it.
    let addr = w.status().metrics_addr.expect("metrics served");
    let (_, metrics) = common::http_get(&addr, "/metrics");
    common::promtool_check(&metrics);
    let gc = w.status().bucket.unwrap().gc.unwrap();
    assert!(common::sample(&metrics, "bucketfs_gc_passes_total") >= 1.0);
    assert!(
        common::sample(&metrics, "bucketfs_bucket_bytes") > 0.0,
        "{metrics}"
    );
    assert!(
        common::sample(&metrics, "bucketfs_bucket_image_bytes") > 0.0,
        "{metrics}"
    );
    assert!(
        common::sample(&metrics, "bucketfs_gc_retained_checkpoints") >= 2.0,
        "{gc:?}"
    );
    assert!(
        first
            .iter()
            .all(|k| s.bucket.join("segments").join(k).exists()),
        "a segment of a retained checkpoint was collected"
    );
    assert!(
        fs::read(r.mnt.join("one")).unwrap() == body(1, LEN),
        "one as it was"
    );

    // Three more: the reader's checkpoint leaves the newest three, and GC collects it.
    for tag in 5..8u8 {
        fs::write(&two, body(tag, LEN)).unwrap();
        w.checkpoint();
    }
    wait_for(
        "GC to collect the first checkpoint's segments",
        Duration::from_secs(60),
        || {
            first
                .iter()
                .all(|k| !s.bucket.join("segments").join(k).exists())
        },
    );
    let err = fs::read(r.mnt.join("two"))
        .map(|b| b.len())
        .expect_err("its segments are gone");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        r.log_text().contains("GC collected it"),
        "the reader says why:\n{}",
        r.log_text()
    );
    // An expired checkpoint cannot be mounted; a retained one can, by epoch.
    fs::create_dir(s.path("x-mnt")).unwrap();
    let mut child = Command::new(BIN)
        .args(["mount", s.path("x-mnt").to_str().unwrap(), "--cache-dir"])
        .arg(s.path("x-cache"))
        .args([
            "--bucket",
            &s.url,
            "--read-only",
            "--at",
            &epoch.to_string(),
        ])
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the mount of an expired checkpoint to be refused",
        Duration::from_secs(30),
        || child.try_wait().unwrap().is_some(),
    );
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("no longer restorable") || stderr.contains("has no checkpoint"),
        "{stderr}"
    );
    let latest = w.status().bucket.unwrap().epoch;
    let at = reader(&s, "at", &["--at", &(latest - 1).to_string()]);
    assert!(
        fs::read(at.mnt.join("two")).unwrap() == body(6, LEN),
        "two as it was at {}",
        latest - 1
    );
    assert_eq!(at.status().bucket.unwrap().epoch, latest - 1);
    drop((at, r));
    assert!(w.stop().success());
    s.verify_ok();
}

#[test]
fn bucketfs_gc_collects_a_stopped_bucket_and_refuses_to_delete_under_a_live_writer() {
    let s = setup();
    let w = writer(&s, "2", "off", &[]);
    let f = w.mnt.join("f");
    for tag in 0..8u8 {
        fs::write(&f, body(tag, 400_000)).unwrap();
        w.checkpoint();
    }
    let gc = |extra: &[&str]| {
        let mut args = s.gc_args();
        args.extend_from_slice(extra);
        s.bucketfs(&args)
    };
    // A live writer holds the prefix: report, delete nothing, exit 1.
    let before = segments(&s.bucket);
    let o = gc(&[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("only the writer that holds a prefix deletes"),
        "{}",
        text(&o)
    );
    assert_eq!(segments(&s.bucket), before);
    assert!(w.stop().success());

    // Stopped cleanly: the first pass finds, the second deletes.
    let first = gc(&["--json"]);
    assert!(first.status.success(), "{}", text(&first));
    let r: bucketfs::gc::Report = serde_json::from_slice(&first.stdout).unwrap();
    assert!(r.pending > 0 && r.deleted == 0, "{r:?}");
    let second = gc(&["--json"]);
    let r2: bucketfs::gc::Report = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(r2.deleted, r.pending, "{r2:?}");
    assert!(segments(&s.bucket).len() < before.len());
    s.verify_ok();
    let ls = s.bucketfs(&["ls", "--bucket", &s.url]);
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(listing.contains("retained"), "{listing}");
    // The last checkpoint is whole: a read-only mount reads it.
    let r = reader(&s, "r", &[]);
    assert_eq!(fs::read(r.mnt.join("f")).unwrap(), body(7, 400_000));
}

/// A writer's bucket with garbage: 40 rewrites (more than the 32 deltas after which a base
/// manifest is written, so that old manifests can go too), then a clean stop. The file ends
/// as 39s.
fn churned(s: &Setup) {
    let w = writer(s, "2", "off", &[]);
    let f = w.mnt.join("f");
    for tag in 0..40u8 {
        fs::write(&f, vec![tag; 300_000]).unwrap();
        w.checkpoint();
    }
    assert!(w.stop().success());
}

/// `bucketfs gc` killed at `failpoint`, on an S3 server: the bucket verifies, its latest
/// checkpoint reads back, and the next pass finishes the job.
fn crash_gc_at(failpoint: &str) {
    let s = setup_s3();
    churned(&s);
    let args = s.gc_args();
    let o = s.bucketfs(&args);
    assert!(o.status.success(), "{}", text(&o));
    let mut env = s.env.clone();
    env.push(("BUCKETFS_FAILPOINT", failpoint.into()));
    let o = bucketfs(&args, &env);
    assert!(
        !o.status.success(),
        "the failpoint was reached: {}",
        text(&o)
    );
    assert!(text(&o).contains("failpoint"), "{}", text(&o));
    s.verify_ok();
    let r = reader(&s, "r1", &[]);
    assert!(fs::read(r.mnt.join("f")).unwrap() == vec![39u8; 300_000]);
    drop(r);
    // The next pass finishes the job: nothing unneeded is left after it.
    let o = s.bucketfs(&args);
    assert!(o.status.success(), "{}", text(&o));
    let mut json = args.to_vec();
    json.extend(["--dry-run", "--json"]);
    let o = s.bucketfs(&json);
    let r: bucketfs::gc::Report = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r.pending, 0, "{r:?}");
    assert!(r.deleted == 0 && r.dry_run, "{r:?}");
    s.verify_ok();
    let r = reader(&s, "r2", &[]);
    assert!(fs::read(r.mnt.join("f")).unwrap() == vec![39u8; 300_000]);
}

#[test]
fn a_crash_after_raising_the_gc_boundary_leaves_a_verifiable_bucket() {
    crash_gc_at("gc-after-boundary");
}

#[test]
fn a_crash_between_delete_batches_leaves_a_verifiable_bucket() {
    crash_gc_at("gc-after-delete-batch");
}

/// A writer killed at `failpoint` in a compaction: the bucket verifies, the same cache dir
/// mounts again with every file whole, and its next compaction and GC leave one or two
/// segments.
fn crash_compaction_at(failpoint: &str) {
    let s = setup();
    let args = [
        "--bucket",
        s.url.as_str(),
        "--checkpoint-interval",
        "1h",
        "--gc-interval",
        "100ms",
        "--retain",
        "0",
        "--retain-checkpoints",
        "1",
        "--gc-grace",
        "0",
    ];
    let w = s.mount("w", &args, Some(failpoint));
    // Five files, a checkpoint each: five small segments. Those older than the latest
    // checkpoint (what has left the window: four, or all five when the restart's own
    // manifest is the latest) are compacted into one.
    let want = |tag: u8| vec![tag; 100_000 + usize::from(tag)];
    for tag in 0..5u8 {
        fs::write(w.mnt.join(format!("f{tag}")), want(tag)).unwrap();
        let o = s.bucketfs(&["checkpoint", "--cache-dir", w.cache.to_str().unwrap()]);
        if !o.status.success() {
            break; // the failpoint came first
        }
    }
    crashed(w, failpoint);
    s.verify_ok();
    let w = s.mount("w", &args, None);
    for tag in 0..5u8 {
        assert!(
            fs::read(w.mnt.join(format!("f{tag}"))).unwrap() == want(tag),
            "f{tag}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let gc = w.status().bucket.unwrap().gc;
        if gc
            .as_ref()
            .is_some_and(|g| g.segments <= 2 && g.pending == 0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction of the small segments into one: {gc:?}\n{}",
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(w.stop().success());
    s.verify_ok();
    let r = reader(&s, "r", &[]);
    for tag in 0..5u8 {
        assert!(
            fs::read(r.mnt.join(format!("f{tag}"))).unwrap() == want(tag),
            "f{tag}"
        );
    }
}

#[test]
fn a_crash_after_compaction_uploads_leaves_orphans_the_next_pass_collects() {
    crash_compaction_at("compact-after-upload");
}

#[test]
fn a_crash_after_compaction_commits_leaves_a_verifiable_bucket() {
    crash_compaction_at("compact-after-commit");
}

/// A stop that comes while a GC pass is under way commits its final checkpoint without
/// waiting for the pass. A writer's first pass reads every manifest of the window, which
/// under `--durability remote` (a manifest per group commit) and 20 ms a request can take
/// longer than Fly waits for a stop; a stop killed before its final checkpoint leaves the
/// bucket without what was written since the last one. The pass, let go after the final
/// checkpoint, still records what it found (`gc/state`) before the process exits.
#[test]
fn a_stop_commits_its_final_checkpoint_without_waiting_for_a_gc_pass_under_way() {
    let s = setup_s3();
    let s3 = s._s3.as_ref().expect("an S3 server");
    // A first writer without GC: a manifest per fsync, more than a base's chain, so that the
    // next start's open reads a chain that begins above the oldest manifest, and its first GC
    // pass reads that one.
    let w = writer(&s, "100", "off", &["--durability", "remote"]);
    for i in 0..40u8 {
        let mut f = fs::File::create(w.mnt.join(format!("f{i}"))).unwrap();
        std::io::Write::write_all(&mut f, &[i; 100]).unwrap();
        f.sync_all().unwrap();
    }
    assert!(w.stop().success());
    let manifests: Vec<String> = s3
        .keys(common::s3::BUCKET, "gc/manifests")
        .into_iter()
        .map(|k| format!("gc/manifests/{k}"))
        .collect();
    assert!(manifests.len() > 34, "{manifests:?}");
    let state = || {
        s3.keys(common::s3::BUCKET, "gc/gc")
            .contains(&"state".to_string())
    };
    assert!(!state(), "a GC state before any pass");
    s3.faults.hold_gets_of(&manifests[0]);

    let w = writer(&s, "100", "2s", &[]);
    common::wait_for(
        "the first GC pass to read the oldest manifest",
        Duration::from_secs(60),
        || s3.faults.gets_held() > 0,
    );
    // Written after the last checkpoint, never synced: the final checkpoint takes it up.
    fs::write(w.mnt.join("last"), body(7, 50_000)).unwrap();
    w.signal(libc::SIGTERM);
    common::wait_for(
        "the final checkpoint while the GC pass waits",
        Duration::from_secs(60),
        || w.log_text().contains("final checkpoint committed"),
    );
    assert_eq!(s3.faults.gets_held(), 1, "{}", w.log_text());
    s3.faults.release_gets();
    let log = w.log.clone();
    let status = w.wait_exit();
    let log = fs::read_to_string(log).unwrap();
    assert!(status.success(), "{log}");
    assert!(
        state(),
        "the pass let go after the final checkpoint recorded nothing:\n{log}"
    );
    s.verify_ok();
    let r = reader(&s, "r", &[]);
    assert!(fs::read(r.mnt.join("last")).unwrap() == body(7, 50_000));
}

/// `bucketfs verify` beside a writer that commits while it reads: the new checkpoint names a
/// segment uploaded after verify listed the segments. Verify listed them before the
/// manifests, so it took the new manifest's extents for pointers into a missing segment and
/// failed a healthy bucket; every manifest it lists must name only segments it listed.
#[test]
fn verify_beside_a_writer_that_commits_meanwhile_finds_nothing_wrong() {
    let s = setup_s3();
    let s3 = s._s3.as_ref().expect("an S3 server");
    let w = writer(&s, "100", "off", &[]);
    fs::write(w.mnt.join("first"), body(1, 1 << 20)).unwrap();
    w.checkpoint();
    let segments = s3.keys(common::s3::BUCKET, "gc/segments");
    assert!(
        !segments.is_empty(),
        "a checkpoint of 1 MiB uploads a segment"
    );
    s3.faults
        .hold_gets_of(&format!("gc/segments/{}", segments[0]));
    let verify = Command::new(BIN)
        .args(["verify", "--bucket", &s.url])
        .envs(s.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bucketfs verify");
    wait_for("verify to read a segment", Duration::from_secs(60), || {
        s3.faults.gets_held() > 0
    });
    fs::write(w.mnt.join("second"), body(2, 1 << 20)).unwrap();
    w.checkpoint();
    assert!(
        s3.keys(common::s3::BUCKET, "gc/segments").len() > segments.len(),
        "the second checkpoint uploads a segment of its own"
    );
    s3.faults.release_gets();
    let out = verify.wait_with_output().expect("wait for verify");
    assert!(out.status.success(), "verify: {}", text(&out));
    assert!(w.stop().success());
    s.verify_ok();
}
