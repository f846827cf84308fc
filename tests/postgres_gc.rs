//! PostgreSQL under a write load with GC and compaction running (docs/gc.md), on a real S3
//! protocol server: the machine stops and starts between bursts of pgbench, as a Fly Machine
//! does; the bucket verifies at every stop; every checkpoint still retained at the end
//! restores into an empty directory and holds the tables it held; the restore chain stays
//! bounded; and once the retention window has passed, the bucket is within 1.5 times the
//! latest image.
//!
//! `GC_PGBENCH_BURSTS` and `GC_PGBENCH_SECONDS` make it longer (`make test-long`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::pg::{postgres_user, run_ok, Postgres};
use common::s3::S3Server;
use common::{Mount, BIN};

const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bucketfs(s3: &S3Server, args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .envs(s3.env())
        .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .expect("run bucketfs");
    assert!(
        out.status.success(),
        "bucketfs {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The writer as a machine runs it: checkpoints every second, GC every second, a window of
/// `retain` with a floor of `floor` checkpoints, and a grace of two seconds.
fn writer(dir: &Path, s3: &S3Server, retain: &str, floor: &str) -> Mount {
    let url = s3.url("pg");
    let args = [
        "--allow-other",
        "--uid",
        "postgres",
        "--gid",
        "postgres",
        "--bucket",
        &url,
        "--checkpoint-interval",
        "1s",
        "--gc-interval",
        "1s",
        "--retain",
        retain,
        "--retain-checkpoints",
        floor,
        "--gc-grace",
        "2s",
    ];
    Mount::start_with_env(&dir.join("mnt"), &dir.join("cache"), &args, &s3.env())
}

/// Checkpoint `epoch`, copied out of a read-only mount of it into an empty local directory,
/// started as a database: its tables.
fn tables_at(dir: &Path, s3: &S3Server, epoch: u64, port: u16) -> Vec<(String, String)> {
    let name = format!("at-{epoch}");
    let url = s3.url("pg");
    let at = epoch.to_string();
    let r = Mount::start_with_env(
        &dir.join(format!("{name}-mnt")),
        &dir.join(format!("{name}-cache")),
        &["--bucket", &url, "--read-only", "--at", &at],
        &s3.env(),
    );
    assert_eq!(r.status().bucket.unwrap().epoch, epoch);
    let copy = dir.join(format!("{name}-data"));
    run_ok(Command::new("cp").arg("-a").arg(&r.mnt).arg(&copy));
    assert!(r.stop().success());
    let (uid, gid) = postgres_user();
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(&copy),
    );
    std::fs::remove_file(copy.join("postmaster.pid")).ok();
    let pg = Postgres::start(&copy, &dir.join("run"), port, &[]);
    let digest = pg.digest(&TABLES);
    pg.stop();
    digest
}

#[test]
fn pgbench_with_gc_and_compaction_keeps_every_retained_checkpoint_and_the_bucket_bounded() {
    let bursts = env_or("GC_PGBENCH_BURSTS", 3);
    let seconds = env_or("GC_PGBENCH_SECONDS", 10);
    let dir = common::scratch();
    let dir = dir.path();
    let s3 = S3Server::start(&dir.join("s3"));
    let url = s3.url("pg");
    let sockets = dir.join("run");

    let m = writer(dir, &s3, "10m", "2");
    Postgres::initdb(&m.mnt);
    let pg = Postgres::start(&m.mnt, &sockets, 54_391, &[]);
    run_ok(pg.tool("pgbench").args(["-i", "-s", "3", "-q", "postgres"]));
    pg.stop();
    assert!(m.stop().success());

    // Bursts of writes, each on a fresh start of the machine, each ending in a clean stop.
    let mut held: Vec<(u64, Vec<(String, String)>)> = Vec::new();
    for burst in 0..bursts {
        let m = writer(dir, &s3, "10m", "2");
        let pg = Postgres::start(&m.mnt, &sockets, 54_392, &[]);
        run_ok(
            pg.tool("pgbench")
                .args(["-c", "4", "-T", &seconds.to_string(), "postgres"])
                .stdout(Stdio::null()),
        );
        let digest = pg.digest(&TABLES);
        pg.stop();
        let gc = m
            .status()
            .bucket
            .unwrap()
            .gc
            .expect("GC ran during the burst");
        // A base every 32 to 128 checkpoints, one delta more for the takeover at the burst's
        // start, and one for a compaction that commits when a base is due: both are always
        // deltas, and the next checkpoint writes the base.
        let longest = u64::from(bucketfs::checkpoint::CheckpointSettings::default().max_chain) + 2;
        assert!(gc.chain_length <= longest, "burst {burst}: {gc:?}");
        assert!(m.stop().success());
        let epoch = latest_epoch(&s3);
        held.push((epoch, digest));
        bucketfs(&s3, &["verify", "--bucket", &url]);
    }

    // Every checkpoint recorded is still retained (ten minutes), and holds its tables.
    for (i, (epoch, digest)) in held.iter().enumerate() {
        let got = tables_at(dir, &s3, *epoch, 54_393 + i as u16);
        assert_eq!(&got, digest, "checkpoint {epoch}");
    }

    // With a window of a second and a floor of one (a compaction's manifest is a checkpoint
    // too: a floor of two would keep the one before the last compaction, and the segments it
    // moved pages out of), GC and compaction bring the bucket within 1.5x the latest image.
    let m = writer(dir, &s3, "1s", "1");
    let bounded = |m: &Mount| {
        m.status()
            .bucket
            .unwrap()
            .gc
            .filter(|g| g.pending == 0 && g.deleted == 0 && g.retained <= 2)
    };
    let mut last = None;
    common::wait_for(
        "GC to settle after the window",
        Duration::from_secs(120),
        || {
            last = bounded(&m);
            last.is_some()
        },
    );
    let gc = last.unwrap();
    println!("after the window: {gc:?}");
    assert!(
        gc.space_amplification <= 1.5,
        "space amplification {:.2}: {gc:?}",
        gc.space_amplification
    );
    assert!(m.stop().success());
    bucketfs(&s3, &["verify", "--bucket", &url]);
}

/// The newest epoch in the bucket, from `bucketfs ls`.
fn latest_epoch(s3: &S3Server) -> u64 {
    let out = bucketfs(s3, &["ls", "--bucket", &s3.url("pg")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .max()
        .expect("a checkpoint")
}
