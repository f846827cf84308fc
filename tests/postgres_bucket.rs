//! PostgreSQL on a bucketfs mount with a bucket (a real S3 protocol server, s3s-fs on
//! 127.0.0.1): what the bucket holds is always a database Postgres can start from, on a new
//! machine with an empty cache dir.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::pg::{run_ok, Postgres};
use common::s3::S3Server;
use common::{wait_for, Mount};

const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

fn mount_args(s3: &S3Server, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--allow-other", "--uid", "postgres", "--gid", "postgres"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push("--bucket".into());
    args.push(s3.url("pg"));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start_mount(mnt: &Path, cache: &Path, s3: &S3Server, args: &[String]) -> Mount {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Mount::start_with_env(mnt, cache, &args, &s3.env())
}

/// Row count and an order-independent checksum of every row of every pgbench table.
fn table_digest(pg: &Postgres) -> Vec<(String, String)> {
    TABLES
        .iter()
        .map(|t| {
            let sql = format!(
                "SELECT count(*) || ':' || coalesce(sum(hashtext(x::text)::bigint), 0) FROM {t} x"
            );
            (t.to_string(), pg.query_one(&sql))
        })
        .collect()
}

fn amcheck(pg: &Postgres) {
    run_ok(
        pg.tool("pg_amcheck")
            .args(["--all", "--install-missing", "--heapallindexed"]),
    );
}

#[test]
fn a_database_restored_from_the_bucket_equals_the_one_checkpointed() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let sockets = dir.path().join("run");
    let args = mount_args(&s3, &[]);

    let mount = start_mount(
        &dir.path().join("mnt1"),
        &dir.path().join("cache1"),
        &s3,
        &args,
    );
    Postgres::initdb(&mount.mnt);
    let pg = Postgres::start(&mount.mnt, &sockets, 54_331, &[]);
    run_ok(pg.tool("pgbench").args(["-i", "-s", "5", "-q", "postgres"]));
    run_ok(
        pg.tool("pgbench")
            .args(["-c", "2", "-t", "500", "postgres"])
            .stdout(Stdio::null()),
    );
    let before = table_digest(&pg);
    pg.stop();
    assert!(mount.stop().success(), "bucketfs did not stop cleanly");

    // A new machine: an empty cache dir, the same bucket.
    let mount = start_mount(
        &dir.path().join("mnt2"),
        &dir.path().join("cache2"),
        &s3,
        &args,
    );
    let pg = Postgres::start(&mount.mnt, &sockets, 54_332, &[]);
    assert_eq!(table_digest(&pg), before, "restored tables differ");
    amcheck(&pg);
    pg.stop();
    assert!(mount.stop().success());
    s3.assert_verifies("pg", "bucketfs verify failed");
}

#[test]
fn after_kill_9_and_the_loss_of_the_cache_dir_the_bucket_is_a_consistent_database() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let sockets = dir.path().join("run");
    let args = mount_args(&s3, &["--checkpoint-interval", "300ms"]);

    let mount = start_mount(
        &dir.path().join("mnt1"),
        &dir.path().join("cache1"),
        &s3,
        &args,
    );
    Postgres::initdb(&mount.mnt);
    let pg = Postgres::start(&mount.mnt, &sockets, 54_333, &[]);
    run_ok(pg.tool("pgbench").args(["-i", "-s", "5", "-q", "postgres"]));
    // Load while checkpoints run, then crash everything in the middle of it.
    let mut load = pg
        .tool("pgbench")
        .args(["-c", "2", "-T", "600", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbench");
    // Two more checkpoints from now: the second one's cut began after pgbench -i had
    // committed, so the bucket must hold the whole load (what came after may be lost: the
    // default durability is local).
    let log = mount.log.clone();
    let committed = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("checkpoint committed")
            .count()
    };
    let loaded = committed();
    wait_for(
        "two checkpoints under load",
        Duration::from_secs(120),
        || committed() >= loaded + 2,
    );
    pg.kill_all();
    mount.kill();
    let _ = load.wait();
    // The machine is gone: its cache dir with it.
    std::fs::remove_dir_all(dir.path().join("cache1")).expect("remove the cache dir");

    let mount = start_mount(
        &dir.path().join("mnt2"),
        &dir.path().join("cache2"),
        &s3,
        &mount_args(&s3, &["--takeover"]),
    );
    let pg = Postgres::start(&mount.mnt, &sockets, 54_334, &[]);
    assert!(
        pg.log_text().contains("database system was interrupted")
            || pg.log_text().contains("not properly shut down"),
        "no crash recovery ran:\n{}",
        pg.log_text()
    );
    assert_eq!(
        pg.query_one("SELECT count(*) FROM pgbench_accounts"),
        "500000"
    );
    // pgbench's invariant: each committed transaction moved the same delta into one account,
    // one teller and one branch. A torn image (WAL and data from different moments) breaks it.
    assert_eq!(
        pg.query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(bbalance) FROM pgbench_branches) \
             AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches)"
        ),
        "t"
    );
    amcheck(&pg);
    pg.stop();
    assert!(mount.stop().success());
}

#[test]
fn with_remote_durability_every_acknowledged_commit_survives_the_loss_of_the_machine() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let sockets = dir.path().join("run");
    let args = mount_args(&s3, &["--durability", "remote"]);

    let mount = start_mount(
        &dir.path().join("mnt1"),
        &dir.path().join("cache1"),
        &s3,
        &args,
    );
    Postgres::initdb(&mount.mnt);
    let pg = Postgres::start(&mount.mnt, &sockets, 54_335, &[]);
    let mut client = pg.connect();
    client
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .unwrap();
    let mut acked = Vec::new();
    for id in 1..=150i64 {
        // Autocommit: Ok means Postgres acknowledged the commit, after its WAL fsync, which
        // with --durability remote returned only once the bucket had it.
        client
            .execute("INSERT INTO acked VALUES ($1)", &[&id])
            .expect("commit");
        acked.push(id);
    }
    // The machine is lost at once: no clean stop of anything, and no cache dir afterwards.
    pg.kill_all();
    mount.kill();
    drop(client);
    std::fs::remove_dir_all(dir.path().join("cache1")).expect("remove the cache dir");

    let mount = start_mount(
        &dir.path().join("mnt2"),
        &dir.path().join("cache2"),
        &s3,
        &mount_args(&s3, &["--takeover"]),
    );
    let pg = Postgres::start(&mount.mnt, &sockets, 54_336, &[]);
    let present: Vec<i64> = pg
        .connect()
        .query("SELECT id FROM acked ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        present, acked,
        "acknowledged commits missing from the bucket"
    );
    amcheck(&pg);
    pg.stop();
    assert!(mount.stop().success());
}
