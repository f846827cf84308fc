//! `bucketfs run`, the container's PID 1, for real: a FUSE mount, Debian's PostgreSQL as the
//! postgres user, s3s-fs on 127.0.0.1 or the embedded local bucket. Every test prints the
//! bucketfs log (PostgreSQL's goes to the same place) when a step fails.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::{alive, children_of, run_ok};
use common::run::{dirs, initdb, postgres, psql, query, strs, Run};
use common::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use common::{wait_for, BIN};

/// `bucketfs checkpoint` on a running mount: the bucket has everything so far on return.
fn checkpoint(cache: &Path) {
    run_ok(
        Command::new(BIN)
            .arg("checkpoint")
            .arg("--cache-dir")
            .arg(cache),
    );
}

fn s3_args(s3: &S3Server, prefix: &str) -> Vec<String> {
    vec!["--bucket".into(), s3.url(prefix)]
}

/// An empty bucket: initdb, PostgreSQL, a table; SIGTERM: fast shutdown, the final
/// checkpoint, exit 0; a new empty cache dir starts the same database from the bucket.
#[test]
fn a_new_database_starts_on_an_empty_bucket_and_comes_back_on_a_new_cache_dir() {
    let (dir, _) = dirs();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let sock = dir.path().join("sock");
    let port = 56_401;
    let mut args = s3_args(&s3, "db");
    args.extend(initdb());
    args.extend(["--pg-conf".into(), "max_connections = 21".into()]);
    let pg = postgres(&dir.path().join("a-mnt"), &sock, port);
    let mut a = Run::start(dir.path(), "a", &strs(&args), &s3.env(), &strs(&pg));
    a.wait_ready(&sock, port);
    assert_eq!(
        query(&sock, port, "SHOW max_connections"),
        "21",
        "--pg-conf"
    );
    query(
        &sock,
        port,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g",
    );
    // A slow bucket from here on, so that the final checkpoint reports its progress: it
    // makes at least one request (its manifest's PUT), and one request of 6 s outlasts the
    // 5 s between progress lines. (2 s each was enough while a commit was a PUT and a GET
    // and often a segment too; a small final checkpoint is one PUT now.)
    s3.faults
        .latency_ms
        .store(6000, std::sync::atomic::Ordering::SeqCst);
    a.stop();
    s3.faults
        .latency_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    a.assert_log(&[
        "a new database: making it",
        "received=\"SIGTERM\" sent=\"SIGINT\"",
        "received fast shutdown request",
        "database system is shut down",
        "final checkpoint: in progress bytes_left=",
        "final checkpoint committed",
    ]);
    let log = a.log_text();
    assert!(
        log.find("database system is shut down") < log.find("final checkpoint committed"),
        "the final checkpoint came before PostgreSQL was down:\n{log}"
    );
    assert!(!dir.path().join("a-mnt/PG_VERSION").exists());

    // Another machine: a new, empty cache dir; --initdb as an image would always pass it.
    let pg = postgres(&dir.path().join("b-mnt"), &sock, port);
    let mut b = Run::start(dir.path(), "b", &strs(&args), &s3.env(), &strs(&pg));
    b.wait_ready(&sock, port);
    assert_eq!(
        query(&sock, port, "SELECT count(*) || ':' || sum(id) FROM t"),
        "1000:500500"
    );
    b.assert_log(&[
        "restoring the namespace from the bucket",
        "the mount holds a database (PG_VERSION): no initdb",
    ]);
    assert!(
        !b.log_text().contains("a new database: making it"),
        "initdb ran on a bucket that holds a database:\n{}",
        b.log_text()
    );
    b.stop();
    s3.assert_verifies("db", "the bucket is broken after two runs");
}

/// The program's exit status is bucketfs's, after the final checkpoint: 0, a code, death
/// by a signal (128+N); a program that cannot start is an error.
#[test]
fn the_programs_exit_status_is_bucketfss_after_the_final_checkpoint() {
    let (dir, shared) = dirs();
    let mnt = dir.path().join("a-mnt");
    let m = mnt.display();
    let cases = [
        (format!("echo zero > {m}/f0"), 0),
        (format!("echo three > {m}/f3; exit 3"), 3),
        (
            format!("echo signal > {m}/fs; kill -USR1 $$"),
            128 + libc::SIGUSR1,
        ),
    ];
    for (script, code) in &cases {
        let mut r = Run::start(dir.path(), "a", &[], &[], &["/bin/sh", "-c", script]);
        r.assert_exit(*code, Duration::from_secs(60));
        r.assert_log(&["final checkpoint committed"]);
    }
    // The bucket has all three: a new cache dir reads them from it.
    let bucket = format!("file://{}/bucket", dir.path().join("a-cache").display());
    let m = dir.path().join("b-mnt");
    let out = shared.join("out");
    let script = format!("cat {0}/f0 {0}/f3 {0}/fs > {1}", m.display(), out.display());
    let mut r = Run::start(
        dir.path(),
        "b",
        &["--bucket", &bucket],
        &[],
        &["/bin/sh", "-c", &script],
    );
    r.assert_exit(0, Duration::from_secs(60));
    r.assert_log(&["restoring the namespace from the bucket"]);
    assert_eq!(fs::read_to_string(&out).unwrap(), "zero\nthree\nsignal\n");

    let mut r = Run::start(dir.path(), "c", &[], &[], &["/nonexistent/program"]);
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["bucketfs: error: start /nonexistent/program"]);
}

/// A bucket that cannot be reached, a prefix a live writer holds, a bad cache dir: the
/// program never starts, bucketfs exits 1 and says why.
#[test]
fn the_program_never_starts_when_the_mount_cannot() {
    let (dir, shared) = dirs();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let marker = shared.join("started");
    let touch = format!("touch {}", marker.display());
    let program = ["/bin/sh", "-c", touch.as_str()];

    // An endpoint where nothing listens (a port just released on loopback).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut env = s3.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL_S3");
    env.push(("AWS_ENDPOINT_URL_S3", format!("http://{closed}")));
    let mut r = Run::start(dir.path(), "a", &strs(&s3_args(&s3, "db")), &env, &program);
    r.assert_exit(1, Duration::from_secs(120));
    let log = r.log_text();
    assert!(
        log.contains(&closed.to_string()) || log.contains("connect"),
        "{log}"
    );
    assert!(!log.contains(SECRET_KEY), "{log}");

    // A live writer on the prefix.
    let holder = common::Mount::start_with_env(
        &dir.path().join("w-mnt"),
        &dir.path().join("w-cache"),
        &strs(&s3_args(&s3, "db")),
        &s3.env(),
    );
    let mut r = Run::start(
        dir.path(),
        "b",
        &strs(&s3_args(&s3, "db")),
        &s3.env(),
        &program,
    );
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["is held by writer", "--takeover"]);

    // A cache dir that is a file.
    let file = dir.path().join("c-cache");
    fs::write(&file, b"not a dir").unwrap();
    let mut r = Run::start(dir.path(), "c", &[], &[], &program);
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["is not a directory"]);

    assert!(
        !marker.exists(),
        "the program started although the mount could not"
    );
    assert!(holder.stop().success());
}

/// Another writer takes the prefix over while `run` serves: PostgreSQL gets SIGQUIT,
/// bucketfs exits 1, and nothing written after the takeover reaches the bucket.
#[test]
fn a_takeover_while_run_serves_stops_postgres_and_keeps_its_later_writes_out() {
    let (dir, _) = dirs();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let sock = dir.path().join("sock");
    let port = 56_404;
    let mut args = s3_args(&s3, "db");
    args.extend(initdb());
    args.extend(["--checkpoint-interval".into(), "200ms".into()]);
    let pg = postgres(&dir.path().join("a-mnt"), &sock, port);
    let mut a = Run::start(dir.path(), "a", &strs(&args), &s3.env(), &strs(&pg));
    a.wait_ready(&sock, port);
    query(
        &sock,
        port,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')",
    );
    checkpoint(&a.cache);

    let b = common::Mount::start_with_env(
        &dir.path().join("b-mnt"),
        &dir.path().join("b-cache"),
        &["--bucket", &s3.url("db"), "--takeover"],
        &s3.env(),
    );
    // Written after the takeover: acknowledged or not, it must never reach the bucket.
    let late = psql(&sock, port, "INSERT INTO t VALUES ('after')");
    eprintln!("the insert after the takeover: {:?}", late.status);
    a.assert_exit(1, Duration::from_secs(60));
    // PostgreSQL may also meet EROFS and PANIC before the SIGQUIT lands: either way it is down.
    a.assert_log(&[
        "stopping the program with SIGQUIT",
        "bucketfs: error: this mount is no longer the bucket's writer",
    ]);
    assert!(b.stop().success());

    let pg = postgres(&dir.path().join("c-mnt"), &sock, port);
    let mut c = Run::start(
        dir.path(),
        "c",
        &strs(&s3_args(&s3, "db")),
        &s3.env(),
        &strs(&pg),
    );
    c.wait_ready(&sock, port);
    assert_eq!(
        query(&sock, port, "SELECT string_agg(v, ',') FROM t"),
        "before"
    );
    c.stop();
}

/// kill -9 of `bucketfs run` and its PostgreSQL: the next run on the same cache dir has
/// every commit PostgreSQL acknowledged.
#[test]
fn kill_9_of_run_and_postgres_loses_no_acknowledged_commit() {
    let (dir, _) = dirs();
    let sock = dir.path().join("sock");
    let port = 56_405;
    let pg = postgres(&dir.path().join("a-mnt"), &sock, port);
    let mut a = Run::start(dir.path(), "a", &strs(&initdb()), &[], &strs(&pg));
    a.wait_ready(&sock, port);
    query(
        &sock,
        port,
        "CREATE TABLE acked (id bigint PRIMARY KEY, pad text)",
    );
    let conn = format!(
        "host={} port={port} user=postgres dbname=postgres",
        sock.display()
    );
    let mut client = postgres::Client::connect(&conn, postgres::NoTls).expect("connect");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for id in 1.. {
                // Autocommit: Ok means PostgreSQL acknowledged the commit.
                match client.execute("INSERT INTO acked VALUES ($1, repeat('x', 300))", &[&id]) {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => break, // the server is gone
                }
            }
        })
    };
    wait_for("300 acknowledged commits", Duration::from_secs(120), || {
        acked.lock().unwrap().len() >= 300
    });
    a.kill_all();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();

    let pg = postgres(&dir.path().join("a-mnt"), &sock, port);
    let mut b = Run::start(dir.path(), "a", &strs(&initdb()), &[], &strs(&pg));
    b.wait_ready(&sock, port);
    let rows = query(
        &sock,
        port,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM acked",
    );
    let present: std::collections::BTreeSet<i64> =
        rows.split(',').map(|s| s.parse().unwrap()).collect();
    let lost: Vec<i64> = acked
        .iter()
        .filter(|id| !present.contains(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged commits lost: {lost:?}\n{}",
        b.log_text()
    );
    b.assert_log(&["database system was interrupted", "no initdb"]);
    b.stop();
}

/// bucketfs adopts the processes orphaned below it and reaps them (no zombie is left),
/// and ends those still running when the program exits: SIGKILL for those that ignore
/// SIGTERM, and for those orphaned by that SIGKILL.
#[test]
fn orphans_are_adopted_reaped_and_ended_with_the_program() {
    let (dir, shared) = dirs();
    let s = shared.display();
    // A third orphan ignores SIGTERM, and so does its child, which becomes an orphan only
    // when the SIGKILL round has killed its parent.
    fs::write(
        shared.join("stubborn.sh"),
        format!(
            "trap '' TERM\n\
             sh -c 'echo $$ > {s}/o4.tmp; mv {s}/o4.tmp {s}/o4; exec sleep 600' &\n\
             echo $$ > {s}/o3.tmp; mv {s}/o3.tmp {s}/o3\n\
             wait\n"
        ),
    )
    .unwrap();
    // Two orphans: each subshell starts a sleep and exits at once; then the stubborn one.
    // Then wait for `go`.
    let script = format!(
        "(sleep 600 & echo $! > {s}/o1.tmp; mv {s}/o1.tmp {s}/o1); \
         (sleep 600 & echo $! > {s}/o2.tmp; mv {s}/o2.tmp {s}/o2); \
         (sh {s}/stubborn.sh &); \
         while [ ! -e {s}/go ]; do sleep 0.05; done; exit 0"
    );
    let mut r = Run::start(dir.path(), "a", &[], &[], &["/bin/sh", "-c", &script]);
    let read_pid = |name: &str| -> i32 {
        let path = shared.join(name);
        wait_for(name, Duration::from_secs(60), || path.exists());
        fs::read_to_string(&path).unwrap().trim().parse().unwrap()
    };
    let (o1, o2, o3, o4) = (
        read_pid("o1"),
        read_pid("o2"),
        read_pid("o3"),
        read_pid("o4"),
    );
    for o in [o1, o2, o3] {
        wait_for(
            "bucketfs to adopt the orphan",
            Duration::from_secs(30),
            || children_of(r.pid()).contains(&o),
        );
    }
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(o1, libc::SIGTERM) };
    wait_for(
        "the orphan to be reaped (no zombie)",
        Duration::from_secs(30),
        || !Path::new(&format!("/proc/{o1}")).exists(),
    );
    fs::write(shared.join("go"), b"").unwrap();
    r.assert_exit(0, Duration::from_secs(60));
    for o in [o2, o3, o4] {
        assert!(
            !alive(o),
            "an orphan ({o}) outlived bucketfs:\n{}",
            r.log_text()
        );
    }
    r.assert_log(&[
        "ending the processes the program left",
        "processes outlived the signal: SIGKILL",
    ]);
}

/// SIGINT and SIGQUIT reach PostgreSQL with their meaning: fast shutdown (clean, no
/// recovery at the next start) and immediate shutdown (crash recovery at the next start,
/// nothing committed lost).
#[test]
fn sigint_and_sigquit_reach_postgres_as_fast_and_immediate_shutdown() {
    let (dir, _) = dirs();
    let sock = dir.path().join("sock");
    let port = 56_406;
    let pg = postgres(&dir.path().join("a-mnt"), &sock, port);
    let mut a = Run::start(dir.path(), "a", &strs(&initdb()), &[], &strs(&pg));
    a.wait_ready(&sock, port);
    query(
        &sock,
        port,
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
    );
    a.signal(libc::SIGINT);
    a.assert_exit(0, Duration::from_secs(120));
    a.assert_log(&[
        "received fast shutdown request",
        "database system is shut down",
    ]);

    let mut b = Run::start(dir.path(), "a", &strs(&initdb()), &[], &strs(&pg));
    b.wait_ready(&sock, port);
    b.assert_log(&["database system was shut down at"]);
    query(&sock, port, "INSERT INTO t VALUES (2)");
    b.signal(libc::SIGQUIT);
    // PostgreSQL 15's postmaster exits 0 after an immediate shutdown; what shows that it was
    // one is the crash recovery at the next start.
    b.assert_exit(0, Duration::from_secs(120));
    b.assert_log(&[
        "received=\"SIGQUIT\" sent=\"SIGQUIT\"",
        "received immediate shutdown request",
        "final checkpoint committed",
    ]);

    let mut c = Run::start(dir.path(), "a", &strs(&initdb()), &[], &strs(&pg));
    c.wait_ready(&sock, port);
    c.assert_log(&["database system was interrupted"]);
    assert_eq!(
        query(
            &sock,
            port,
            "SELECT string_agg(v::text, ',' ORDER BY v) FROM t"
        ),
        "1,2"
    );
    c.stop();
}

/// Settings: a flag wins over its BUCKETFS_* variable, which wins over the --config file
/// (or BUCKETFS_CONFIG), which wins over the default; BUCKET_NAME gives the bucket; no
/// bucket means the embedded one; credentials are in no log line and not in the program's
/// environment.
#[test]
fn settings_come_from_flags_then_env_then_the_file_and_credentials_stay_out() {
    let (dir, shared) = dirs();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let config = dir.path().join("bucketfs.toml");
    fs::write(
        &config,
        "stop-timeout = \"41s\"\ndatabase_name = \"fromfile\"\nuser = \"nobody\"\n",
    )
    .unwrap();
    let mut fly = s3.env();
    fly.push(("BUCKET_NAME", common::s3::BUCKET.into()));
    // The program writes who it runs as and the names in its environment to $OUT.
    let program = [
        "/bin/sh",
        "-c",
        "{ echo \"user=$(id -un)\"; env | cut -d= -f1; } > \"$OUT\"",
    ];
    let out =
        |name: &str| -> (&'static str, String) { ("OUT", shared.join(name).display().to_string()) };
    let with_out = |env: &[(&'static str, String)], name: &str| {
        let mut env = env.to_vec();
        env.push(out(name));
        env
    };
    let program_saw = |name: &str| fs::read_to_string(shared.join(name)).unwrap();
    let config_flag = format!("--config={}", config.display());

    // The file alone (the AWS_* variables and BUCKET_NAME, as `fly storage create` sets them).
    let mut r = Run::start(
        dir.path(),
        "a",
        &[&config_flag],
        &with_out(&fly, "a"),
        &program,
    );
    r.assert_exit(0, Duration::from_secs(60));
    r.assert_log(&[
        "--stop-timeout=41s (file)",
        "stop_timeout_s=41",
        "bucket=s3://pgdata/fromfile",
    ]);
    assert!(program_saw("a").starts_with("user=nobody\n"));

    // Variables over the file (named by BUCKETFS_CONFIG this time).
    let mut env = fly.clone();
    env.push(("BUCKETFS_CONFIG", config.display().to_string()));
    env.push(("BUCKETFS_STOP_TIMEOUT", "42s".into()));
    env.push(("BUCKETFS_DATABASE_NAME", "fromenv".into()));
    let mut r2 = Run::start(dir.path(), "b", &[], &with_out(&env, "b"), &program);
    r2.assert_exit(0, Duration::from_secs(60));
    r2.assert_log(&[
        "--stop-timeout=42s (env)",
        "stop_timeout_s=42",
        "bucket=s3://pgdata/fromenv",
    ]);
    assert!(program_saw("b").starts_with("user=nobody\n"));

    // Flags over both.
    let flags = [
        "--stop-timeout",
        "43s",
        "--database-name",
        "fromflag",
        "--user",
        "postgres",
    ];
    let mut r3 = Run::start(dir.path(), "c", &flags, &with_out(&env, "c"), &program);
    r3.assert_exit(0, Duration::from_secs(60));
    r3.assert_log(&[
        "--stop-timeout=43s (flag)",
        "stop_timeout_s=43",
        "bucket=s3://pgdata/fromflag",
    ]);
    assert!(program_saw("c").starts_with("user=postgres\n"));

    // No bucket anywhere: the embedded one, and the log says so.
    let mut r4 = Run::start(dir.path(), "d", &[], &[out("d")], &program);
    r4.assert_exit(0, Duration::from_secs(60));
    let embedded = format!("file://{}/bucket", r4.cache.display());
    r4.assert_log(&["no bucket configured", &embedded]);

    for run in [&r, &r2, &r3, &r4] {
        let log = run.log_text();
        assert!(
            !log.contains(SECRET_KEY) && !log.contains(ACCESS_KEY),
            "a credential is in the log:\n{log}"
        );
    }
    for name in ["a", "b", "c"] {
        let names: Vec<String> = program_saw(name).lines().map(str::to_owned).collect();
        assert!(
            names.iter().any(|n| n == "AWS_ENDPOINT_URL_S3") && names.iter().any(|n| n == "HOME"),
            "the program's environment lacks what it should have: {names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|n| n == "AWS_SECRET_ACCESS_KEY" || n == "AWS_ACCESS_KEY_ID"),
            "the program inherited the credentials: {names:?}"
        );
    }

    // A file with a key that is not an option: refused, naming the key and not its value.
    fs::write(
        &config,
        format!("aws-secret-access-key = \"{SECRET_KEY}\"\n"),
    )
    .unwrap();
    let mut r5 = Run::start(dir.path(), "e", &[&config_flag], &fly, &program);
    r5.assert_exit(2, Duration::from_secs(60));
    r5.assert_log(&["unknown key \"aws-secret-access-key\""]);
    assert!(!r5.log_text().contains(SECRET_KEY), "{}", r5.log_text());
}

/// The takeover after a lost host, both ways: `--takeover-after` refuses while the last
/// writer's newest checkpoint is young (a live, idle writer keeps it young with heartbeats)
/// and takes over once it is older; `--takeover` takes over at once. Without either, or
/// within the age, the program never starts.
#[test]
fn a_lost_writer_is_taken_over_with_takeover_or_once_its_checkpoint_is_old_enough() {
    let (dir, shared) = dirs();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let sock = dir.path().join("sock");
    let port = 56_408;
    let marker = shared.join("started");
    let touch = format!("touch {}", marker.display());
    let refused_program = ["/bin/sh", "-c", touch.as_str()];
    let bucket = s3_args(&s3, "db");
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v = bucket.clone();
        v.extend(initdb());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    let pg = postgres(&dir.path().join("a-mnt"), &sock, port);
    let mut a = Run::start(
        dir.path(),
        "a",
        &strs(&with(&["--takeover-after", "2s"])),
        &s3.env(),
        &strs(&pg),
    );
    a.wait_ready(&sock, port);
    query(
        &sock,
        port,
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
    );
    checkpoint(&a.cache);

    // A is alive and idle for longer than 2 s: its heartbeats keep it from being taken over.
    let idle = Instant::now();
    wait_for("A to be idle for 3 s", Duration::from_secs(10), || {
        idle.elapsed() >= Duration::from_secs(3)
    });
    let mut r = Run::start(
        dir.path(),
        "r1",
        &strs(&with(&["--takeover-after", "2s"])),
        &s3.env(),
        &refused_program,
    );
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["less than --takeover-after"]);

    // The host is lost.
    a.kill_all();
    let lost = Instant::now();
    let mut r = Run::start(
        dir.path(),
        "r2",
        &strs(&with(&[])),
        &s3.env(),
        &refused_program,
    );
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["has not stopped cleanly", "--takeover"]);
    let mut r = Run::start(
        dir.path(),
        "r3",
        &strs(&with(&["--takeover-after", "1h"])),
        &s3.env(),
        &refused_program,
    );
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["less than --takeover-after"]);
    assert!(!marker.exists(), "a refused run started its program");

    // Once A's last checkpoint is older than 2 s, --takeover-after 2s takes over.
    wait_for(
        "A's last checkpoint to be 2.5 s old",
        Duration::from_secs(10),
        || lost.elapsed() >= Duration::from_millis(2500),
    );
    let pg = postgres(&dir.path().join("b-mnt"), &sock, port);
    let mut b = Run::start(
        dir.path(),
        "b",
        &strs(&with(&["--takeover-after", "2s"])),
        &s3.env(),
        &strs(&pg),
    );
    b.wait_ready(&sock, port);
    b.assert_log(&["taking the bucket over", "no initdb"]);
    query(&sock, port, "INSERT INTO t VALUES (2)");
    checkpoint(&b.cache);
    b.kill_all();

    // --takeover does not wait.
    let pg = postgres(&dir.path().join("c-mnt"), &sock, port);
    let mut c = Run::start(
        dir.path(),
        "c",
        &strs(&with(&["--takeover"])),
        &s3.env(),
        &strs(&pg),
    );
    c.wait_ready(&sock, port);
    c.assert_log(&["taking the bucket over (--takeover)"]);
    assert_eq!(
        query(
            &sock,
            port,
            "SELECT string_agg(v::text, ',' ORDER BY v) FROM t"
        ),
        "1,2"
    );
    c.stop();
}

/// initdb interrupted by a lost machine leaves `.bucketfs-initdb`: the next start removes it
/// and runs initdb again. A mount with files but no PG_VERSION is refused.
#[test]
fn an_unfinished_initdb_is_run_again_and_a_foreign_directory_is_refused() {
    let (dir, shared) = dirs();
    let m = common::Mount::start(
        &dir.path().join("a-mnt"),
        &dir.path().join("a-cache"),
        &[
            "--bucket",
            &format!("file://{}", dir.path().join("a-bucket").display()),
        ],
    );
    fs::create_dir(m.mnt.join(".bucketfs-initdb")).unwrap();
    fs::write(m.mnt.join(".bucketfs-initdb/PG_VERSION"), b"15\n").unwrap();
    assert!(m.stop().success());
    let bucket = format!("file://{}", dir.path().join("a-bucket").display());
    let check = format!(
        "test -f {0}/PG_VERSION && test -f {0}/global/pg_control && ! test -e {0}/.bucketfs-initdb && echo data-dir-ok",
        dir.path().join("a-mnt").display()
    );
    let mut args = vec!["--bucket".to_string(), bucket];
    args.extend(initdb());
    let mut r = Run::start(
        dir.path(),
        "a",
        &strs(&args),
        &[],
        &["/bin/sh", "-c", &check],
    );
    r.assert_exit(0, Duration::from_secs(120));
    r.assert_log(&[
        "an initdb that did not finish",
        "initdb done",
        "data-dir-ok",
    ]);

    let m = common::Mount::start(&dir.path().join("b-mnt"), &dir.path().join("b-cache"), &[]);
    fs::write(m.mnt.join("notes.txt"), b"mine").unwrap();
    assert!(m.stop().success());
    let marker = shared.join("started");
    let touch = format!("touch {}", marker.display());
    let mut r = Run::start(
        dir.path(),
        "b",
        &strs(&initdb()),
        &[],
        &["/bin/sh", "-c", &touch],
    );
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["notes.txt", "but no PG_VERSION"]);
    assert!(!marker.exists());
}

/// A process outside bucketfs that keeps the mount busy (a shell whose working directory is
/// the data directory, holding a file it wrote) does not hold the final checkpoint back past
/// the grace, nor when someone else detached the mount lazily first: its files on the mount
/// fail, the final checkpoint is taken as a clean stop, and a new cache dir starts from the
/// bucket without a takeover, with the program's file and the outsider's.
#[test]
fn a_mount_kept_busy_from_outside_still_gets_its_final_checkpoint() {
    let (dir, shared) = dirs();
    for (case, detached) in [("busy", false), ("detached", true)] {
        let bucket = format!("file://{}", dir.path().join(case).display());
        let args = ["--bucket", bucket.as_str()];
        let (a_name, b_name) = (format!("{case}-a"), format!("{case}-b"));
        let mnt = dir.path().join(format!("{a_name}-mnt"));
        let go = shared.join(format!("{case}-go"));
        let script = format!(
            "echo from-the-program > {}/note; while [ ! -e {} ]; do sleep 0.05; done; exit 0",
            mnt.display(),
            go.display()
        );
        let mut a = Run::start(dir.path(), &a_name, &args, &[], &["/bin/sh", "-c", &script]);
        wait_for("the program's note", Duration::from_secs(60), || {
            mnt.join("note").exists()
        });
        // Not a child of bucketfs: it is not among the processes the program left. Killed
        // when the test ends, however it ends.
        struct Outsider(std::process::Child);
        impl Drop for Outsider {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _outsider = Outsider(
            // Written and kept open, no copy of it ever closed (a close would send the
            // kernel's dirty pages of the file to bucketfs): the kernel holds the bytes,
            // and only the sync before the abort sends them.
            Command::new("python3")
                .args([
                    "-c",
                    "import time\n\
                     f = open('held', 'w'); f.write('from-outside\\n'); f.flush()\n\
                     open('held.done', 'w').close()\n\
                     time.sleep(600)",
                ])
                .current_dir(&mnt)
                .spawn()
                .expect("start the outsider"),
        );
        wait_for("the outsider's file", Duration::from_secs(60), || {
            mnt.join("held.done").exists()
        });
        if detached {
            run_ok(Command::new("umount").arg("-l").arg(&mnt));
        }
        fs::write(&go, b"").unwrap();
        a.assert_exit(0, Duration::from_secs(90));
        a.assert_log(&[
            "the mount still serves after the grace",
            "final checkpoint committed",
        ]);

        let out = shared.join(format!("{case}-out"));
        let b_mnt = dir.path().join(format!("{b_name}-mnt"));
        let read = format!(
            "cat {0}/note {0}/held > {1}",
            b_mnt.display(),
            out.display()
        );
        let mut b = Run::start(dir.path(), &b_name, &args, &[], &["/bin/sh", "-c", &read]);
        b.assert_exit(0, Duration::from_secs(90));
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "from-the-program\nfrom-outside\n",
            "{case}"
        );
    }
}
