//! PostgreSQL in local durability mode does not notice the bucket's trouble: under a steady
//! error rate, latency spikes and a 30 s outage of the S3 server (s3s-fs on 127.0.0.1 behind
//! a fault injector), every pgbench transaction and every CHECKPOINT succeeds, and once the
//! store is back the backlog drains into a bucket that restores to the same database.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::pg::{run_ok, Postgres};
use common::s3::S3Server;
use common::{wait_for, Mount};

fn start_mount(mnt: &Path, cache: &Path, s3: &S3Server) -> Mount {
    let url = s3.url("faults");
    let args = [
        "--allow-other",
        "--uid",
        "postgres",
        "--gid",
        "postgres",
        "--bucket",
        &url,
        "--checkpoint-interval",
        "300ms",
    ];
    Mount::start_with_env(mnt, cache, &args, &s3.env())
}

/// Row count and an order-independent checksum of every pgbench table.
fn digest(pg: &Postgres) -> String {
    [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ]
    .iter()
    .map(|t| {
        pg.query_one(&format!(
            "SELECT count(*) || ':' || coalesce(sum(hashtext(x::text)::bigint), 0) FROM {t} x"
        ))
    })
    .collect::<Vec<_>>()
    .join(" ")
}

/// pgbench for `secs` seconds; panics (with its output) if any transaction failed.
fn pgbench_for(pg: &Postgres, secs: u32) {
    let out = run_ok(
        pg.tool("pgbench")
            .args(["-c", "2", "-T", &secs.to_string(), "postgres"])
            .stderr(Stdio::piped()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("number of failed transactions: 0 "),
        "pgbench saw failures:\n{text}"
    );
}

#[test]
fn postgres_never_sees_the_buckets_errors_latency_or_outage_and_the_backlog_drains() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let sockets = dir.path().join("run");
    let mount = start_mount(&dir.path().join("m1"), &dir.path().join("c1"), &s3);
    Postgres::initdb(&mount.mnt);
    let pg = Postgres::start(&mount.mnt, &sockets, 54_341, &[]);
    run_ok(pg.tool("pgbench").args(["-i", "-s", "5", "-q", "postgres"]));
    let committed = || mount.log_text().matches("checkpoint committed").count();

    // One request in five fails, and every request is slow: 10 s of load.
    s3.faults.fail_every.store(5, Ordering::SeqCst);
    s3.faults.latency_ms.store(150, Ordering::SeqCst);
    pgbench_for(&pg, 10);
    pg.query_one("CHECKPOINT");
    assert!(
        s3.faults.injected_errors.load(Ordering::SeqCst) > 0,
        "no error was injected: the test tested nothing"
    );
    s3.faults.fail_every.store(0, Ordering::SeqCst);
    s3.faults.latency_ms.store(0, Ordering::SeqCst);

    // A 30 s outage with load and Postgres checkpoints (every one an fsync of each file).
    s3.faults.outage.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let puts_before = s3.faults.puts();
    pgbench_for(&pg, 25);
    pg.query_one("CHECKPOINT");
    let before_end = committed();
    while started.elapsed() < Duration::from_secs(30) {
        pg.query_one(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())",
        );
    }
    pg.query_one("CHECKPOINT");
    assert!(
        s3.faults.puts() > puts_before,
        "no upload was attempted during the outage"
    );
    assert_eq!(
        committed(),
        before_end,
        "a checkpoint committed during the outage"
    );
    s3.faults.outage.store(false, Ordering::SeqCst);

    // The backlog drains: a checkpoint commits, and then one holds everything written so far.
    wait_for(
        "a checkpoint after the outage",
        Duration::from_secs(120),
        || committed() > before_end,
    );
    let log = pg.log_text();
    for bad in ["could not fsync", "PANIC", "could not write", "I/O error"] {
        assert!(!log.contains(bad), "Postgres saw {bad:?}:\n{log}");
    }
    assert!(
        mount.log_text().contains("checkpoint failed"),
        "the outage never reached the checkpointer"
    );
    let want = digest(&pg);
    pg.stop();
    assert!(mount.stop().success(), "bucketfs did not stop cleanly");

    // Everything is in the bucket: a new machine restores the same database.
    let mount = start_mount(&dir.path().join("m2"), &dir.path().join("c2"), &s3);
    let pg = Postgres::start(&mount.mnt, &sockets, 54_342, &[]);
    assert_eq!(digest(&pg), want, "the restored database differs");
    pg.stop();
    assert!(mount.stop().success());
}
