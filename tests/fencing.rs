//! One writer per bucket prefix, and no wrong bytes ever: a second writer is refused, a
//! takeover fences the old writer at once, and a corrupt segment reads as EIO.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::s3::{S3Server, BUCKET};
use common::{wait_for, wait_for_or, Mount, BIN};

fn mount(mnt: &Path, cache: &Path, s3: &S3Server, extra: &[&str]) -> Mount {
    let url = s3.url("fence");
    let mut args = vec!["--bucket", url.as_str()];
    args.extend_from_slice(extra);
    Mount::start_with_env(mnt, cache, &args, &s3.env())
}

/// A write and an fsync on `root`: the errno if either fails.
fn write_and_fsync(root: &Path, name: &str) -> Result<(), i32> {
    let mut f = fs::File::create(root.join(name)).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    f.write_all(b"x")
        .map_err(|e| e.raw_os_error().unwrap_or(0))?;
    f.sync_all().map_err(|e| e.raw_os_error().unwrap_or(0))
}

#[test]
fn a_second_writer_is_refused_and_a_takeover_fences_the_first() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let a = mount(
        &dir.path().join("a"),
        &dir.path().join("ca"),
        &s3,
        &["--checkpoint-interval", "200ms"],
    );
    write_and_fsync(&a.mnt, "from-a").unwrap();
    // Make sure the bucket has it (a checkpoint now, committed when the command returns).
    a.checkpoint();
    let writer_a = {
        let log = a.log_text();
        let at = log.find("writer=").expect("the log names the writer");
        log[at + 7..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches('"')
            .to_string()
    };

    // B without --takeover: refused, naming A and the way out; A goes on.
    let b_mnt = dir.path().join("b");
    fs::create_dir_all(&b_mnt).unwrap();
    let out = Command::new(BIN)
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .args(["mount", b_mnt.to_str().unwrap(), "--cache-dir"])
        .arg(dir.path().join("cb"))
        .args(["--bucket", &s3.url("fence")])
        .envs(s3.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second writer mounted");
    assert!(
        err.contains(&writer_a) && err.contains("--takeover"),
        "{err}"
    );
    write_and_fsync(&a.mnt, "a-still-writes").expect("A stopped working");

    // B with --takeover: A is fenced at its next checkpoint and refuses changes from then on.
    let b = mount(&b_mnt, &dir.path().join("cb"), &s3, &["--takeover"]);
    assert!(b.mnt.join("from-a").exists(), "B did not restore A's files");
    let mut n = 0;
    let last = std::cell::Cell::new(Ok(()));
    wait_for_or(
        "A to be fenced",
        Duration::from_secs(60),
        || {
            n += 1;
            last.set(write_and_fsync(&a.mnt, &format!("late-{n}")));
            last.get() == Err(libc::EROFS)
        },
        || {
            format!(
                "the last write answered {:?}; A's log:\n{}\nB's log:\n{}",
                last.get(),
                a.log_text(),
                b.log_text()
            )
        },
    );
    assert!(a.log_text().contains("fenced"), "A's log does not say why");
    write_and_fsync(&b.mnt, "from-b").expect("B cannot write");
    drop(a); // A is killed: a fenced writer's state is of no use to anyone
    assert!(b.stop().success());

    s3.assert_verifies("fence", "the bucket is broken after a takeover");
    let c = mount(&dir.path().join("c"), &dir.path().join("cc"), &s3, &[]);
    assert!(c.mnt.join("from-b").exists() && c.mnt.join("from-a").exists());
    assert!(c.stop().success());
}

#[test]
fn a_corrupt_segment_reads_as_eio_and_the_log_names_it() {
    corrupt_segment_case("none");
    corrupt_segment_case("zstd");
}

/// Pages that compress to about half: more than a checkpoint carries in its manifest
/// (256 KiB) either way, and stored compressed under zstd.
fn half_compressible(len: usize) -> Vec<u8> {
    let mut v = common::incompressible(len, 7);
    for page in v.chunks_mut(8192) {
        let n = page.len();
        page[4096.min(n)..].fill(0);
    }
    v
}

fn corrupt_segment_case(compression: &str) {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let a = mount(
        &dir.path().join("a"),
        &dir.path().join("ca"),
        &s3,
        &["--compression", compression],
    );
    fs::write(a.mnt.join("data"), half_compressible(1 << 20)).unwrap();
    assert!(a.stop().success());

    let segments = dir.path().join("s3").join(BUCKET).join("fence/segments");
    let seg = fs::read_dir(&segments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment object");
    let mut bytes = fs::read(&seg).unwrap();
    bytes[20] ^= 0x20; // just past the 16-byte header: inside the first run
    fs::write(&seg, &bytes).unwrap();

    let b = mount(&dir.path().join("b"), &dir.path().join("cb"), &s3, &[]);
    let err = fs::read(b.mnt.join("data")).expect_err("corrupt bytes were served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{compression}: {err}");
    let key = format!("segments/{}", seg.file_name().unwrap().to_str().unwrap());
    wait_for(
        "the log to name the object",
        Duration::from_secs(10),
        || b.log_text().contains(&key),
    );
    assert!(b.stop().success());
}

/// A damaged run that a checkpoint carried in its manifest fails the reads of its file's
/// pages, as one in a segment does; the manifest itself (its own checksum leaves the runs
/// out) still restores, and every other file reads. On a `file://` bucket: an S3 server
/// checks a whole object's checksum on the way out, which would hide what bucketfs does.
#[test]
fn a_corrupt_run_carried_in_a_manifest_reads_as_eio_and_the_rest_restores() {
    let dir = common::scratch();
    let bucket = dir.path().join("bucket");
    fs::create_dir(&bucket).unwrap();
    let url = format!("file://{}", bucket.display());
    let args = ["--bucket", url.as_str(), "--checkpoint-interval", "1h"];
    let a = Mount::start(&dir.path().join("a"), &dir.path().join("ca"), &args);
    fs::write(a.mnt.join("other"), b"checkpointed before").unwrap();
    a.checkpoint();
    fs::write(a.mnt.join("data"), vec![7u8; 100_000]).unwrap();
    assert!(a.stop().success());
    assert!(
        !bucket.join("segments").exists(),
        "the checkpoints uploaded segments"
    );

    // The newest manifest carrying runs holds only data's.
    let mut carrying: Vec<_> = fs::read_dir(bucket.join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let bytes = fs::read(p).unwrap();
            let key = format!("manifests/{}", p.file_name().unwrap().to_str().unwrap());
            bucketfs::manifest::inline_range(&bytes, &key)
                .unwrap()
                .is_some_and(|r| !r.is_empty())
        })
        .collect();
    carrying.sort();
    let m = carrying.pop().expect("a manifest carrying runs");
    let mut bytes = fs::read(&m).unwrap();
    // Past the manifest's 20-byte header and the segment's 16-byte one: the first run.
    bytes[40] ^= 0x20;
    fs::write(&m, &bytes).unwrap();

    let b = Mount::start(&dir.path().join("b"), &dir.path().join("cb"), &args);
    assert_eq!(
        fs::read(b.mnt.join("other")).unwrap(),
        b"checkpointed before"
    );
    let err = fs::read(b.mnt.join("data")).expect_err("corrupt bytes were served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let key = format!("manifests/{}", m.file_name().unwrap().to_str().unwrap());
    wait_for(
        "the log to name the object",
        Duration::from_secs(10),
        || b.log_text().contains(&key),
    );
    assert!(b.stop().success());
}

#[test]
fn a_read_only_mount_serves_a_checkpoint_beside_a_live_writer_and_never_writes() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    // The writer checkpoints only when asked, so every PUT below is accounted for.
    let a = mount(
        &dir.path().join("a"),
        &dir.path().join("ca"),
        &s3,
        &["--checkpoint-interval", "1h"],
    );
    let v1 = vec![1u8; 1 << 20];
    fs::write(a.mnt.join("data"), &v1).unwrap();
    a.checkpoint();

    let puts_before = s3.faults.puts();
    let r = mount(
        &dir.path().join("r"),
        &dir.path().join("cr"),
        &s3,
        &["--read-only"],
    );
    assert_eq!(fs::read(r.mnt.join("data")).unwrap(), v1);
    let erofs = |res: std::io::Result<()>| res.unwrap_err().raw_os_error() == Some(libc::EROFS);
    assert!(erofs(fs::write(r.mnt.join("new"), b"x")));
    assert!(erofs(fs::write(r.mnt.join("data"), b"x")));
    assert!(erofs(fs::create_dir(r.mnt.join("d"))));
    assert!(erofs(fs::remove_file(r.mnt.join("data"))));
    assert!(erofs(fs::rename(r.mnt.join("data"), r.mnt.join("moved"))));
    assert_eq!(
        s3.faults.puts(),
        puts_before,
        "a read-only mount wrote to the bucket"
    );

    // The writer is not disturbed, and the read-only mount goes on serving its checkpoint.
    let v2 = vec![2u8; 1 << 20];
    fs::write(a.mnt.join("data"), &v2).unwrap();
    a.checkpoint();
    assert_eq!(fs::read(r.mnt.join("data")).unwrap(), v1);
    let puts_with_r = s3.faults.puts();
    assert!(r.stop().success());
    assert_eq!(
        s3.faults.puts(),
        puts_with_r,
        "stopping a read-only mount wrote to the bucket"
    );

    // Its cache dir holds the older checkpoint: refused, with the way out.
    let again = Command::new(BIN)
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .args([
            "mount",
            dir.path().join("r").to_str().unwrap(),
            "--read-only",
        ])
        .arg("--cache-dir")
        .arg(dir.path().join("cr"))
        .args(["--bucket", &s3.url("fence")])
        .envs(s3.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success(),
        "a stale read-only cache dir mounted"
    );
    assert!(err.contains("empty cache dir"), "{err}");

    // A fresh read-only mount sees the newer checkpoint; the writer's stop still succeeds.
    let r2 = mount(
        &dir.path().join("r2"),
        &dir.path().join("cr2"),
        &s3,
        &["--read-only"],
    );
    assert_eq!(fs::read(r2.mnt.join("data")).unwrap(), v2);
    assert!(r2.stop().success());
    assert!(a.stop().success());
    s3.assert_verifies("fence", "the bucket is broken after read-only mounts");
}

#[test]
fn a_commit_whose_answer_was_lost_is_neither_overwritten_nor_a_reason_to_fence() {
    use std::sync::atomic::Ordering;
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let a = mount(
        &dir.path().join("a"),
        &dir.path().join("ca"),
        &s3,
        &["--checkpoint-interval", "200ms"],
    );
    write_and_fsync(&a.mnt, "first").unwrap();
    wait_for("a first checkpoint", Duration::from_secs(30), || {
        a.log_text().contains("checkpoint committed")
    });
    // The next manifest lands in the bucket, but its answer is lost and an outage follows,
    // so the checkpoint counts as failed and its pages stay dirty.
    s3.faults.lose_manifest_answers.store(1, Ordering::SeqCst);
    fs::write(a.mnt.join("second"), vec![2u8; 300_000]).unwrap();
    wait_for("the lost answer", Duration::from_secs(60), || {
        s3.faults.lose_manifest_answers.load(Ordering::SeqCst) == 0
            && a.log_text().contains("checkpoint failed")
    });
    // Written meanwhile: the retry's cut differs from the lost one's.
    fs::write(a.mnt.join("third"), vec![3u8; 200_000]).unwrap();
    s3.faults.outage.store(false, Ordering::SeqCst);
    wait_for(
        "the writer to go on from its own commit",
        Duration::from_secs(60),
        || {
            a.log_text()
                .contains("an earlier attempt of this writer had committed")
        },
    );
    write_and_fsync(&a.mnt, "after").expect("the writer fenced itself");
    assert!(a.stop().success());

    s3.assert_verifies(
        "fence",
        "a segment of a committed checkpoint was overwritten",
    );
    let b = mount(&dir.path().join("b"), &dir.path().join("cb"), &s3, &[]);
    assert_eq!(fs::read(b.mnt.join("second")).unwrap(), vec![2u8; 300_000]);
    assert_eq!(fs::read(b.mnt.join("third")).unwrap(), vec![3u8; 200_000]);
    assert!(b.mnt.join("after").exists() && b.mnt.join("first").exists());
    assert!(b.stop().success());
}

/// A writer killed with changes fsync'd only to its cache dir (`--durability local`) restarts
/// there; the restart's takeover lands in the bucket, but its answer is lost and an outage
/// follows, so the start goes no further. The bucket's newest checkpoint now names a writer
/// the cache dir never recorded: the next start must still know it for its own, or it
/// refuses the cache dir ("behind the bucket"), and the only way on, an empty one, loses
/// the changes.
#[test]
fn a_takeover_that_landed_when_its_start_failed_is_still_the_cache_dirs_own() {
    use std::sync::atomic::Ordering;
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let (mnt, cache) = (dir.path().join("a"), dir.path().join("ca"));
    let slow = ["--checkpoint-interval", "1h"];
    let a = mount(&mnt, &cache, &s3, &slow);
    write_and_fsync(&a.mnt, "checkpointed").unwrap();
    a.checkpoint();
    fs::write(mnt.join("local-only"), b"fsync'd to the cache dir only").unwrap();
    fs::File::open(mnt.join("local-only"))
        .unwrap()
        .sync_all()
        .unwrap();
    a.kill();

    // A start on the cache dir that is to fail: its stderr.
    let failed_start = |failpoint: &str| {
        let out = Command::new(BIN)
            .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
            .env("BUCKETFS_FAILPOINT", failpoint)
            .args(["mount", mnt.to_str().unwrap(), "--cache-dir"])
            .arg(&cache)
            .args(["--bucket", &s3.url("fence")])
            .args(slow)
            .envs(s3.env())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "mounted: {err}");
        err
    };
    s3.faults.lose_manifest_answers.store(1, Ordering::SeqCst);
    let err = failed_start("");
    assert_eq!(
        s3.faults.lose_manifest_answers.load(Ordering::SeqCst),
        0,
        "the takeover never reached the bucket: {err}"
    );
    assert!(err.contains("take over the bucket"), "{err}");

    // Another start, killed before its own takeover's PUT (a restart loop through the
    // outage): the cache dir must still know the writer of the first one's.
    s3.faults.outage.store(false, Ordering::SeqCst);
    let err = failed_start("before-takeover-commit");
    assert!(
        err.contains("failpoint before-takeover-commit reached"),
        "{err}"
    );

    let b = mount(&mnt, &cache, &s3, &slow);
    assert_eq!(
        fs::read(b.mnt.join("local-only")).unwrap(),
        b"fsync'd to the cache dir only"
    );
    assert!(b.mnt.join("checkpointed").exists());
    assert!(b.stop().success());
    s3.assert_verifies("fence", "the bucket is broken after the restarts");
    let c = mount(&dir.path().join("c"), &dir.path().join("cc"), &s3, &[]);
    assert_eq!(
        fs::read(c.mnt.join("local-only")).unwrap(),
        b"fsync'd to the cache dir only"
    );
    assert!(c.stop().success());
}
