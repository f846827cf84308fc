//! PostgreSQL end to end on a real bucketfs mount: initdb, pgbench, a client that records
//! every commit Postgres acknowledged, kill -9 of Postgres and bucketfs at once, remount of
//! the same cache dir, crash recovery, and amcheck.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::{run_ok, Postgres};
use common::{wait_for, Mount};

const PORT: u16 = 54_321;

#[test]
fn acknowledged_commits_survive_kill_9_of_postgres_and_bucketfs() {
    let dir = common::scratch();
    let (mnt, cache, sockets) = (
        dir.path().join("mnt"),
        dir.path().join("cache"),
        dir.path().join("run"),
    );
    let mount_args = ["--allow-other", "--uid", "postgres", "--gid", "postgres"];
    let mount = Mount::start(&mnt, &cache, &mount_args);
    Postgres::initdb(&mnt);
    let pg = Postgres::start(&mnt, &sockets, PORT, &[]);
    run_ok(
        pg.tool("pgbench")
            .args(["-i", "-s", "10", "-q", "postgres"]),
    );

    // Load in the background while numbered commits go on in the foreground.
    let mut load = pg
        .tool("pgbench")
        .args(["-c", "2", "-T", "600", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgbench");

    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut client = pg.connect();
    client
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)")
        .unwrap();
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            for id in 1.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Autocommit: Ok means Postgres acknowledged the commit to us.
                match client.execute("INSERT INTO acked VALUES ($1, repeat('x', 200))", &[&id]) {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => break, // the server is gone
                }
            }
        })
    };
    wait_for("500 acknowledged commits", Duration::from_secs(300), || {
        acked.lock().unwrap().len() >= 500
    });

    // The crash: every Postgres process and bucketfs, as close to at once as we can.
    let bucketfs_pid = mount.pid() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(bucketfs_pid, libc::SIGKILL) };
    pg.kill_all();
    mount.kill();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let _ = load.wait();
    let acked: BTreeSet<i64> = acked.lock().unwrap().iter().copied().collect();
    assert!(acked.len() >= 500);

    // Same cache dir, new process: Postgres must recover and have every acknowledged commit.
    let mount = Mount::start(&mnt, &cache, &mount_args);
    let pg = Postgres::start(&mnt, &sockets, PORT, &[]);
    assert!(
        pg.log_text().contains("database system was interrupted"),
        "no crash recovery ran:\n{}",
        pg.log_text()
    );
    let mut client = pg.connect();
    let present: BTreeSet<i64> = client
        .query("SELECT id FROM acked", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<_> = acked.difference(&present).take(10).collect();
    assert!(
        missing.is_empty(),
        "acknowledged commits lost after the crash: {missing:?}"
    );
    assert_eq!(
        pg.query_one("SELECT count(*) FROM pgbench_accounts"),
        "1000000"
    );
    // pgbench's invariant: every committed transaction updated one account, teller and branch
    // by the same delta.
    assert_eq!(
        pg.query_one("SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(bbalance) FROM pgbench_branches)"),
        "t"
    );
    let check = run_ok(pg.tool("pg_amcheck").args([
        "--all",
        "--install-missing",
        "--heapallindexed",
        "--progress",
    ]));
    assert!(check.status.success());
    drop(client);
    pg.stop();
    assert!(mount.stop().success());
}
