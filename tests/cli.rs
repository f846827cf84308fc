//! Bad input to `bucketfs mount`: each case gets a clear message naming the problem, a
//! non-zero exit, no mount left behind, and no change to the cache dir or the mountpoint.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{is_mounted, tree, Mount, BIN};

/// Runs `bucketfs mount MNT --cache-dir CACHE`, which must fail; returns its stderr.
fn mount_fails(mnt: &Path, cache: &Path) -> String {
    mount_fails_with(mnt, cache, &[])
}

/// As `mount_fails`, with `args` after the cache dir.
fn mount_fails_with(mnt: &Path, cache: &Path, args: &[&str]) -> String {
    let out = run_mount(mnt, cache, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "bucketfs mount succeeded on bad input:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status: {}\n{stderr}",
        out.status
    );
    assert!(
        !is_mounted(mnt),
        "a refused mount left a filesystem mounted at {}",
        mnt.display()
    );
    stderr
}

/// `bucketfs mount` on bad input, which must exit at once. One that is still running after a
/// minute has mounted after all: it is stopped, and the test fails instead of hanging.
fn run_mount(mnt: &Path, cache: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .arg("mount")
        .arg(mnt)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bucketfs");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bucketfs") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            // SIGTERM unmounts; the child is not reaped yet, so its pid is still its own.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let stop = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().expect("wait for bucketfs").is_none() {
                if std::time::Instant::now() > stop {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!(
                "bucketfs mount was still running after 60 s on bad input (it mounted):\n{}",
                String::from_utf8_lossy(&stderr.join().expect("stderr"))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

fn assert_mentions(stderr: &str, words: &[&str]) {
    for w in words {
        assert!(stderr.contains(w), "message lacks {w:?}:\n{stderr}");
    }
}

#[test]
fn a_missing_mountpoint_is_refused_and_no_cache_dir_is_created() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("nowhere"), dir.path().join("cache"));
    let stderr = mount_fails(&mnt, &cache);
    assert_mentions(
        &stderr,
        &["mountpoint", "does not exist", mnt.to_str().unwrap()],
    );
    assert!(!mnt.exists(), "the mountpoint was created");
    assert!(
        !cache.exists(),
        "the cache dir was created for a mount that failed"
    );
}

#[test]
fn a_mountpoint_that_is_a_file_is_refused() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("file"), dir.path().join("cache"));
    fs::write(&mnt, b"keep me").unwrap();
    let stderr = mount_fails(&mnt, &cache);
    assert_mentions(&stderr, &["not a directory"]);
    assert_eq!(fs::read(&mnt).unwrap(), b"keep me");
}

/// An empty filesystem mounted there (what Docker mounts on an image's VOLUME) is another
/// filesystem all the same: refused, and left mounted. (The image mounts elsewhere for this:
/// tests/deploy_files.rs.)
#[test]
fn a_mountpoint_with_another_filesystem_on_it_is_refused() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("volume"), dir.path().join("cache"));
    fs::create_dir(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "volume"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount a tmpfs");
    // Unmounted however the test ends.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let stderr = mount_fails(&mnt, &cache);
    let still = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == mnt.to_str());
    assert_mentions(&stderr, &["already mounted", "tmpfs"]);
    assert!(still, "the other filesystem was unmounted");
}

#[test]
fn a_non_empty_mountpoint_is_refused_and_its_files_are_left_alone() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    fs::create_dir_all(mnt.join("sub")).unwrap();
    fs::write(mnt.join("PG_VERSION"), b"15\n").unwrap();
    let before = tree(&mnt);
    let stderr = mount_fails(&mnt, &cache);
    assert_mentions(&stderr, &["not empty", mnt.to_str().unwrap()]);
    assert_eq!(tree(&mnt), before);
    assert!(
        !cache.exists(),
        "the cache dir was created for a mount that failed"
    );
}

#[test]
fn a_cache_dir_held_by_a_running_bucketfs_is_refused_and_the_running_mount_goes_on() {
    let dir = common::scratch();
    let cache = dir.path().join("cache");
    let first = Mount::start(&dir.path().join("mnt1"), &cache, &[]);
    fs::write(first.mnt.join("data"), b"written by the first mount").unwrap();

    let second = dir.path().join("mnt2");
    fs::create_dir(&second).unwrap();
    let stderr = mount_fails(&second, &cache);
    assert_mentions(
        &stderr,
        &["in use by another bucketfs", &first.pid().to_string()],
    );

    // The holder is undisturbed: it still serves, and it still has what was written.
    assert_eq!(
        fs::read(first.mnt.join("data")).unwrap(),
        b"written by the first mount"
    );
    fs::write(first.mnt.join("after"), b"still writable").unwrap();
    let mnt = first.mnt.clone();
    assert!(first.stop().success());
    let again = Mount::start(&mnt, &cache, &[]);
    assert_eq!(
        fs::read(again.mnt.join("after")).unwrap(),
        b"still writable"
    );
    assert!(again.stop().success());
}

/// A first start whose bucket is a directory in its cache dir (what `bucketfs run` makes when
/// no bucket is configured) mounts. Seen failing while the bucket was read beside the cache
/// dir's first opening: the store made its directory first, and the new cache dir, no longer
/// empty and without its `bucketfs-cache.json`, was refused (13 starts of 60 by hand, and one
/// run of the suite). Twenty starts, as one in five lost that race.
#[test]
fn a_first_start_with_its_bucket_in_the_cache_dir_mounts() {
    let dir = common::scratch();
    for i in 0..20 {
        let cache = dir.path().join(format!("c{i}"));
        let url = format!("file://{}", cache.join("bucket").display());
        let m = Mount::start(
            &dir.path().join(format!("m{i}")),
            &cache,
            &["--bucket", &url],
        );
        assert!(m.stop().success());
    }
}

/// A read-only mount of a prefix that holds no filesystem is refused, saying so, and writes
/// nothing there. (The marker a reader's start looks for is read once, by the placement's
/// open; the chain's open does not read it again.)
#[test]
fn a_read_only_mount_of_a_prefix_without_a_filesystem_is_refused() {
    let dir = common::scratch();
    let (mnt, cache, bucket) = (
        dir.path().join("m"),
        dir.path().join("c"),
        dir.path().join("empty"),
    );
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&bucket).unwrap();
    let url = format!("file://{}", bucket.display());
    let stderr = mount_fails_with(&mnt, &cache, &["--bucket", &url, "--read-only"]);
    assert_mentions(&stderr, &["holds no bucketfs filesystem", &url]);
    assert!(
        fs::read_dir(&bucket).unwrap().next().is_none(),
        "a refused read-only mount wrote to the bucket"
    );
}

#[test]
fn a_cache_dir_of_another_format_version_is_refused_untouched() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    let m = Mount::start(&mnt, &cache, &[]);
    fs::write(m.mnt.join("file"), b"contents").unwrap();
    assert!(m.stop().success());

    // What a future bucketfs would write: the same marker with a higher version and a valid
    // checksum (a bad checksum is a different error, tested below).
    let marker = cache.join("bucketfs-cache.json");
    let text = fs::read_to_string(&marker).unwrap();
    let (body, _) = text
        .rsplit_once("\ncrc32c=")
        .expect("marker ends with a crc line");
    let current = format!("\"version\": {}", bucketfs::cache::CACHE_FORMAT_VERSION);
    assert!(
        body.contains(&current),
        "the marker names this version: {body}"
    );
    let body = body.replace(&current, "\"version\": 99");
    fs::write(
        &marker,
        format!("{body}\ncrc32c={:08x}\n", crc32c::crc32c(body.as_bytes())),
    )
    .unwrap();
    let lock = cache.join("lock");
    let before: BTreeMap<_, _> = tree(&cache)
        .into_iter()
        .filter(|(p, _)| *p != lock)
        .collect();

    let stderr = mount_fails(&mnt, &cache);
    assert_mentions(
        &stderr,
        &[
            "format version 99",
            "versions 1 to",
            cache.to_str().unwrap(),
        ],
    );
    let after: BTreeMap<_, _> = tree(&cache)
        .into_iter()
        .filter(|(p, _)| *p != lock)
        .collect();
    assert!(
        after == before,
        "the cache dir changed after a refused mount"
    );
}

#[test]
fn a_corrupt_format_marker_is_refused() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    let m = Mount::start(&mnt, &cache, &[]);
    assert!(m.stop().success());
    let marker = cache.join("bucketfs-cache.json");
    let text = fs::read_to_string(&marker).unwrap();
    let v = bucketfs::cache::CACHE_FORMAT_VERSION;
    let corrupt = text.replace(
        &format!("\"version\": {v}"),
        &format!("\"version\": {}", v + 1),
    );
    assert_ne!(corrupt, text, "the marker names this version");
    fs::write(&marker, corrupt).unwrap();
    let stderr = mount_fails(&mnt, &cache);
    assert_mentions(&stderr, &["corrupt", "checksum mismatch"]);
}

#[test]
fn a_cache_dir_that_holds_other_files_is_refused_untouched() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    fs::create_dir_all(&mnt).unwrap();
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join("precious.txt"), b"not bucketfs's").unwrap();
    let before = tree(&cache);
    let stderr = mount_fails(&mnt, &cache);
    assert_mentions(
        &stderr,
        &["not a bucketfs cache dir", cache.to_str().unwrap()],
    );
    assert_eq!(tree(&cache), before);
}

#[test]
fn help_explains_every_mount_option() {
    let out = Command::new(BIN)
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .args(["mount", "--help"])
        .output()
        .expect("run bucketfs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cache-dir",
        "--allow-other",
        "--uid",
        "--gid",
        "--fuse-threads",
        "--no-writeback-cache",
        "--bucket",
        "--checkpoint-interval",
        "--checkpoint-dirty",
        "--compression",
        "--durability",
        "--takeover",
        "--read-only",
        "--local-only",
    ] {
        assert!(help.contains(flag), "--help does not list {flag}:\n{help}");
    }
    // An unknown flag is a usage error (clap's exit status 2), not a crash.
    let out = Command::new(BIN)
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .args(["mount", "--no-such-flag"])
        .output()
        .expect("run bucketfs");
    assert_eq!(out.status.code(), Some(2));
}

/// `bucketfs mount` with `args` after the mountpoint and cache dir: it must fail before
/// mounting or creating the cache dir; returns (exit code, stderr).
fn mount_with(args: &[&str]) -> (Option<i32>, String) {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("m"), dir.path().join("c"));
    fs::create_dir(&mnt).unwrap();
    let out = Command::new(BIN)
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .arg("mount")
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .env_remove("BUCKET_NAME")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run bucketfs");
    assert!(!out.status.success(), "bucketfs mount {args:?} succeeded");
    assert!(!is_mounted(&mnt));
    assert!(!cache.exists(), "a refused mount created the cache dir");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn options_that_cannot_work_together_or_parse_are_refused_before_mounting() {
    let (code, err) = mount_with(&["--read-only"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["--read-only", "bucket"]);

    let (code, err) = mount_with(&["--durability", "remote"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["--durability remote", "bucket"]);

    let (code, err) = mount_with(&[
        "--bucket",
        "file:///nonexistent",
        "--read-only",
        "--takeover",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert_mentions(&err, &["--takeover", "--read-only"]);

    let (code, err) = mount_with(&["--checkpoint-dirty", "12X"]);
    assert_eq!(code, Some(2), "{err}");
    assert_mentions(&err, &["12X", "unknown unit"]);

    let (code, err) = mount_with(&["--checkpoint-interval", "0s"]);
    assert_eq!(code, Some(2), "{err}");
    assert_mentions(&err, &["0s"]);

    let (code, err) = mount_with(&["--bucket", "ftp://somewhere/x"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["s3://NAME/PREFIX", "file:///PATH"]);

    // Without a bucket the cache dir is the only copy: nothing may be evicted.
    let (code, err) = mount_with(&["--cache-size", "1G"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["--cache-size", "bucket"]);

    let (code, err) = mount_with(&["--bucket", "file:///nonexistent", "--cache-size", "1M"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["--cache-size", "at least 16M"]);

    let (code, err) = mount_with(&["--max-dirty", "1M"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["--max-dirty", "at least 16M"]);

    let (code, err) = mount_with(&["--kernel-dirty", "4K"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["--kernel-dirty", "at least 16M"]);

    // The endpoint has no authentication: loopback only.
    let (code, err) = mount_with(&["--metrics-addr", "0.0.0.0:9187"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["--metrics-addr", "loopback"]);

    let (code, err) = mount_with(&["--metrics-addr", "localhost"]);
    assert_eq!(code, Some(1), "{err}");
    assert_mentions(&err, &["--metrics-addr", "ADDR:PORT", "off"]);
}

#[test]
fn a_metrics_port_in_use_fails_the_mount_and_says_which() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = common::scratch();
    let mnt = dir.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new(BIN)
        .args(["mount", mnt.to_str().unwrap(), "--cache-dir"])
        .arg(dir.path().join("c"))
        .args(["--metrics-addr", &addr])
        .env_remove("BUCKET_NAME")
        .stdin(Stdio::null())
        .output()
        .expect("run bucketfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_mentions(&err, &["--metrics-addr", &addr, "cannot listen"]);
    assert!(!is_mounted(&mnt));
}

#[test]
fn status_without_a_running_mount_says_so() {
    let dir = common::scratch();
    let out = Command::new(BIN)
        .args(["status", "--cache-dir"])
        .arg(dir.path())
        .output()
        .expect("run bucketfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_mentions(&err, &["is a bucketfs mounted on cache dir"]);
}
