//! Crash loops with PostgreSQL on a bucketfs mount with a bucket (s3s-fs on 127.0.0.1) and a
//! cache far smaller than the database, so that pages are evicted and fetched back all the
//! time. Each cycle: mount the same cache dir, start Postgres (crash recovery), check every
//! commit acknowledged so far and pg_amcheck, then run pgbench beside a client committing
//! numbered rows, and kill -9 Postgres and bucketfs at a random moment. At the end the bucket
//! is restored into empty cache dirs, after a clean stop and after a kill -9 (`--takeover`),
//! and checked the same way.
//!
//! Every random choice of a cycle comes from its seed, printed with the cycle. A run replays
//! from any cycle with `CRASH_LOOP_SEED=<that cycle's seed>` (the crash moments are the same;
//! the machine's timing is not). `CRASH_LOOP_CYCLES` sets the number of cycles (default 30),
//! `CRASH_LOOP_KEEP=1` keeps the scratch dir (cache dirs, bucket, logs) for a post-mortem.

mod common;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::{run_ok, Postgres};
use common::s3::S3Server;
use common::{wait_for, Mount};

const DEFAULT_CYCLES: usize = 30;
/// pgbench scale 3: about 45 MiB of tables and indexes, three times the cache.
const SCALE: u64 = 3;
const CACHE_SIZE: &str = "16M";
const PREFIX: &str = "loop";
const PORT: u16 = 54_361;
/// A cycle that takes longer than this is stuck: the watchdog dumps bucketfs's threads and
/// kills it, so the test fails with the seed instead of hanging CI.
const CYCLE_DEADLINE: Duration = Duration::from_secs(300);
const TABLES: [&str; 5] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
    "acked",
];

/// splitmix64: small, and the same sequence from the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `lo..=hi` for choosing crash moments.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The seed of the cycle after the one seeded `seed`.
fn next_seed(seed: u64) -> u64 {
    Rng(seed ^ 0x5eed).next()
}

/// What one cycle does, all drawn from its seed.
struct Plan {
    seed: u64,
    checkpoint_interval: &'static str,
    pgbench_clients: u64,
    /// Kill once the numbered client has this many commits acknowledged in this cycle...
    kill_after_acks: u64,
    /// ...and this much longer.
    kill_after_ms: u64,
    /// A Postgres CHECKPOINT (data files written and fsync'd) this long after the load starts.
    pg_checkpoint_ms: Option<u64>,
    /// Which one dies first; the other follows at once.
    bucketfs_first: bool,
}

impl Plan {
    fn new(seed: u64) -> Plan {
        let mut r = Rng(seed);
        Plan {
            seed,
            checkpoint_interval: ["300ms", "1s", "3s"][r.range(0, 2) as usize],
            pgbench_clients: r.range(1, 3),
            kill_after_acks: r.range(0, 100),
            kill_after_ms: r.range(0, 3000),
            pg_checkpoint_ms: (r.range(0, 1) == 1).then(|| r.range(0, 3000)),
            bucketfs_first: r.range(0, 1) == 1,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={:#018x}: checkpoint-interval {}, {} pgbench clients, kill {} first after {} \
             acks + {} ms",
            self.seed,
            self.checkpoint_interval,
            self.pgbench_clients,
            if self.bucketfs_first {
                "bucketfs"
            } else {
                "postgres"
            },
            self.kill_after_acks,
            self.kill_after_ms
        )?;
        if let Some(ms) = self.pg_checkpoint_ms {
            write!(f, ", postgres CHECKPOINT at {ms} ms")?;
        }
        Ok(())
    }
}

/// Every numbered row the client tried to commit, and the ones Postgres acknowledged.
#[derive(Default)]
struct Ledger {
    /// Ids are never reused: every id up to this one was tried.
    last_tried: i64,
    acked: BTreeSet<i64>,
}

/// The test's running state, printed when a check fails: where we were, with which seeds, and
/// the logs that say what happened.
struct Journal {
    root: PathBuf,
    stage: Mutex<String>,
    logs: Mutex<Vec<PathBuf>>,
}

impl Journal {
    fn enter(&self, stage: String, logs: Vec<PathBuf>) {
        println!("{stage}");
        *self.stage.lock().unwrap() = stage;
        *self.logs.lock().unwrap() = logs;
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!(
            "\n=== crash loop failed in: {}\n=== scratch dir: {} (CRASH_LOOP_KEEP=1 keeps it)",
            self.stage.lock().unwrap(),
            self.root.display()
        );
        for log in self.logs.lock().unwrap().iter() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("=== last {} lines of {}:", tail.len(), log.display());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// Dumps bucketfs's threads and kills it if a cycle outlives its deadline: whatever the test
/// was waiting on then fails, and the journal prints where.
struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn arm(what: String, bucketfs_pid: u32, deadline: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(deadline) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            eprintln!("=== watchdog: {what} took more than {deadline:?}; bucketfs threads:");
            let _ = Command::new("gdb")
                .args(["-p", &bucketfs_pid.to_string(), "-batch", "-ex"])
                .arg("thread apply all bt")
                .stdin(Stdio::null())
                .status();
            // SAFETY: signalling the bucketfs this test started: the watchdog is dropped
            // before that mount is stopped or killed, so the pid is still its own.
            unsafe { libc::kill(bucketfs_pid as i32, libc::SIGKILL) };
        });
        Watchdog {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Loop {
    root: PathBuf,
    s3: S3Server,
    journal: Journal,
    ledger: Arc<Mutex<Ledger>>,
}

impl Loop {
    fn mount(&self, name: &str, interval: &str, extra: &[&str]) -> Mount {
        let mut args = vec![
            "--allow-other",
            "--uid",
            "postgres",
            "--gid",
            "postgres",
            "--cache-size",
            CACHE_SIZE,
            "--checkpoint-interval",
            interval,
        ];
        let url = self.s3.url(PREFIX);
        args.extend(["--bucket", url.as_str()]);
        args.extend(extra);
        Mount::start_with_env(
            &self.root.join(format!("mnt-{name}")),
            &self.root.join(format!("cache-{name}")),
            &args,
            &self.s3.env(),
        )
    }

    fn start_postgres(&self, m: &Mount, run: &str) -> Postgres {
        // shared_buffers far below the cache: Postgres' reads and writes reach bucketfs.
        Postgres::start(&m.mnt, &self.root.join(run), PORT, &["shared_buffers=8MB"])
    }

    /// What a user checks after a crash: every commit in `required` is there with its
    /// contents, no row that was never written appeared, pgbench's invariants hold, and
    /// pg_amcheck finds nothing.
    fn check(&self, pg: &Postgres, required: &BTreeSet<i64>, what: &str) {
        let last_tried = self.ledger.lock().unwrap().last_tried;
        let present: BTreeSet<i64> = pg
            .connect()
            .query("SELECT id FROM acked", &[])
            .expect("read the numbered rows")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<i64> = required.difference(&present).copied().collect();
        assert!(
            missing.is_empty(),
            "{what}: {} acknowledged commits lost (of {}), first ones: {:?}",
            missing.len(),
            required.len(),
            &missing[..missing.len().min(20)]
        );
        let unknown: Vec<i64> = present.range(last_tried + 1..).copied().collect();
        assert!(
            unknown.is_empty(),
            "{what}: rows that were never written: {unknown:?}"
        );
        assert_eq!(
            pg.query_one("SELECT count(*) FROM acked WHERE pad <> repeat(md5(id::text), 4)"),
            "0",
            "{what}: numbered rows with wrong contents"
        );
        assert_eq!(
            pg.query_one("SELECT count(*) FROM pgbench_accounts"),
            (SCALE * 100_000).to_string(),
            "{what}: pgbench_accounts"
        );
        // pgbench's invariant: each committed transaction added the same delta to one account,
        // one teller and one branch. A torn image breaks it. (The history is truncated at the
        // start of each pgbench run, so it does not add up across cycles.)
        let sums = pg.query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' \
                 || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' \
                 || (SELECT sum(bbalance) FROM pgbench_branches)",
        );
        let sums: Vec<&str> = sums.split(' ').collect();
        assert!(
            sums.len() == 3 && sums.iter().all(|s| *s == sums[0]),
            "{what}: pgbench balances do not add up (accounts, tellers, branches): {sums:?}"
        );
        pg.amcheck();
    }

    fn acked(&self) -> BTreeSet<i64> {
        self.ledger.lock().unwrap().acked.clone()
    }
}

/// pgbench and the numbered client, running until Postgres goes away.
struct Load {
    pgbench: std::process::Child,
    writer: std::thread::JoinHandle<()>,
    /// Why the numbered client stopped, once it has.
    stopped: Arc<Mutex<Option<String>>>,
    pg_checkpoint: Option<std::thread::JoinHandle<()>>,
    acked_at_start: usize,
}

impl Load {
    fn start(l: &Loop, pg: &Postgres, plan: &Plan) -> Load {
        let acked_at_start = l.ledger.lock().unwrap().acked.len();
        let pgbench = pg
            .tool("pgbench")
            .args(["-c", &plan.pgbench_clients.to_string(), "-T", "600"])
            .arg("postgres")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbench");
        let mut client = pg.connect();
        let ledger = l.ledger.clone();
        let stopped = Arc::new(Mutex::new(None));
        let why = stopped.clone();
        let writer = std::thread::spawn(move || loop {
            let id = {
                let mut l = ledger.lock().unwrap();
                l.last_tried += 1;
                l.last_tried
            };
            // Autocommit: Ok means Postgres acknowledged the commit, after its WAL fsync.
            match client.execute(
                "INSERT INTO acked VALUES ($1::bigint, repeat(md5($1::bigint::text), 4))",
                &[&id],
            ) {
                Ok(_) => {
                    ledger.lock().unwrap().acked.insert(id);
                }
                Err(e) => {
                    // The server is gone.
                    *why.lock().unwrap() = Some(e.to_string());
                    break;
                }
            }
        });
        let pg_checkpoint = plan.pg_checkpoint_ms.map(|ms| {
            let mut cmd = pg.tool("psql");
            cmd.args(["-d", "postgres", "-XAtc", "CHECKPOINT"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            std::thread::spawn(move || {
                // A moment chosen by the seed, not a wait for a condition.
                std::thread::sleep(Duration::from_millis(ms));
                let _ = cmd.status(); // fails if the crash came first
            })
        });
        Load {
            pgbench,
            writer,
            stopped,
            pg_checkpoint,
            acked_at_start,
        }
    }

    /// Waits for the seed's moment: `acks` more commits acknowledged, then `ms` more.
    fn run_until(&self, l: &Loop, acks: u64, ms: u64) {
        let target = self.acked_at_start + acks as usize;
        wait_for(
            "numbered commits before the crash",
            Duration::from_secs(120),
            || {
                if let Some(e) = &*self.stopped.lock().unwrap() {
                    panic!("the numbered client stopped before the crash: {e}");
                }
                l.ledger.lock().unwrap().acked.len() >= target
            },
        );
        // The crash moment, chosen by the seed.
        std::thread::sleep(Duration::from_millis(ms));
    }

    /// After the crash: everyone notices the server is gone.
    fn finish(mut self, l: &Loop) -> usize {
        self.writer.join().expect("numbered client");
        let _ = self.pgbench.wait();
        if let Some(t) = self.pg_checkpoint {
            t.join().expect("checkpoint thread");
        }
        l.ledger.lock().unwrap().acked.len() - self.acked_at_start
    }
}

/// kill -9 of bucketfs and every Postgres process, in the plan's order, one right after the
/// other.
fn crash(pg: Postgres, m: Mount, bucketfs_first: bool) {
    if bucketfs_first {
        // SAFETY: signalling the bucketfs this test started.
        unsafe { libc::kill(m.pid() as i32, libc::SIGKILL) };
    }
    pg.kill_all();
    m.kill();
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

fn stop_ok(m: Mount) {
    let log = m.log.clone();
    let status = m.stop();
    assert!(
        status.success(),
        "bucketfs stopped with {status}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

const MIB: u64 = 1 << 20;

#[test]
fn postgres_survives_repeated_kill_9_with_a_small_cache_and_restores_from_the_bucket() {
    let cycles = env_u64("CRASH_LOOP_CYCLES").map_or(DEFAULT_CYCLES, |n| n as usize);
    let first_seed = env_u64("CRASH_LOOP_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        Rng(t.as_nanos() as u64 ^ u64::from(std::process::id())).next()
    });
    println!("crash loop: {cycles} cycles, CRASH_LOOP_SEED={first_seed:#018x}");

    let dir = common::scratch();
    let root = dir.path().to_owned();
    let _dir = if std::env::var_os("CRASH_LOOP_KEEP").is_some() {
        let kept = dir.keep();
        println!("keeping {}", kept.display());
        None
    } else {
        Some(dir)
    };
    let l = Loop {
        s3: S3Server::start(&root.join("s3")),
        journal: Journal {
            root: root.clone(),
            stage: Mutex::new("set-up".into()),
            logs: Mutex::new(Vec::new()),
        },
        ledger: Arc::default(),
        root,
    };
    let pg_log = |run: &str| l.root.join(run).join(format!("postgres-{PORT}.log"));
    let live_log = l.root.join("cache-a.log");

    // The database: pgbench tables three times the cache, and the numbered rows' table.
    let m = l.mount("a", "1s", &[]);
    Postgres::initdb(&m.mnt);
    let pg = l.start_postgres(&m, "run-0");
    run_ok(
        pg.tool("pgbench")
            .args(["-i", "-s", &SCALE.to_string(), "-q", "postgres"]),
    );
    pg.connect()
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY, pad text NOT NULL)")
        .unwrap();
    pg.stop();
    stop_ok(m);

    let started = Instant::now();
    let mut seed = first_seed;
    let (mut evicted, mut fetched) = (0u64, 0u64);
    let mut prev: Option<String> = None;
    for cycle in 1..=cycles {
        let plan = Plan::new(seed);
        let run = format!("run-{cycle}");
        let mut logs = vec![live_log.clone(), pg_log(&run)];
        if cycle > 1 {
            logs.insert(0, l.root.join(format!("bucketfs-{}.log", cycle - 1)));
            logs.insert(1, pg_log(&format!("run-{}", cycle - 1)));
        }
        l.journal.enter(
            format!(
                "cycle {cycle}/{cycles} {plan}{}",
                prev.as_deref()
                    .map(|p| format!("\n  (checking the crash of cycle {p})"))
                    .unwrap_or_default()
            ),
            logs,
        );
        let t0 = Instant::now();
        let m = l.mount("a", plan.checkpoint_interval, &[]);
        let watchdog = Watchdog::arm(format!("cycle {cycle}"), m.pid(), CYCLE_DEADLINE);
        let pg = l.start_postgres(&m, &run);
        assert_eq!(
            pg.ran_crash_recovery(),
            cycle > 1,
            "crash recovery ran, or did not, against expectation:\n{}",
            pg.log_text()
        );
        let t1 = Instant::now();
        l.check(&pg, &l.acked(), "after remount and crash recovery");
        let t2 = Instant::now();

        let load = Load::start(&l, &pg, &plan);
        load.run_until(&l, plan.kill_after_acks, plan.kill_after_ms);
        let s = m.status();
        evicted += s.fs.evicted_bytes;
        fetched += s.fs.fetched_bytes;
        drop(watchdog);
        crash(pg, m, plan.bucketfs_first);
        let acked = load.finish(&l);
        std::fs::copy(&live_log, l.root.join(format!("bucketfs-{cycle}.log")))
            .expect("keep the mount's log");
        println!(
            "  {acked} commits acknowledged ({} in all), {} MiB evicted, {} MiB fetched; \
             mount and recovery {:.1?}, checks {:.1?}, load {:.1?}; {:.0?} since the start",
            l.ledger.lock().unwrap().acked.len(),
            s.fs.evicted_bytes / MIB,
            s.fs.fetched_bytes / MIB,
            t1 - t0,
            t2 - t1,
            t2.elapsed(),
            started.elapsed()
        );
        prev = Some(format!("{cycle}, seed={seed:#018x}"));
        seed = next_seed(seed);
    }
    // The loop must have done what it is for: evicted pages, fetched them back, and crashed in
    // the middle of commits.
    assert!(
        evicted > 0 && fetched > 0,
        "nothing was evicted ({evicted} bytes) or fetched ({fetched} bytes): the cache is not \
         small enough to test eviction and refetch"
    );
    assert!(
        l.acked().len() >= cycles,
        "only {} commits in {cycles} cycles",
        l.acked().len()
    );

    // The last crash, checked on its own cache dir; then a clean stop, whose final checkpoint
    // must hold everything.
    let plan = Plan::new(seed);
    l.journal.enter(
        format!(
            "final checks {plan}\n  (checking the crash of cycle {})",
            prev.unwrap_or_default()
        ),
        vec![
            l.root.join(format!("bucketfs-{cycles}.log")),
            pg_log(&format!("run-{cycles}")),
            live_log.clone(),
            pg_log("run-final"),
        ],
    );
    let m = l.mount("a", "1s", &[]);
    let pg = l.start_postgres(&m, "run-final");
    assert!(pg.ran_crash_recovery(), "{}", pg.log_text());
    l.check(&pg, &l.acked(), "after the last crash");
    let digest = pg.digest(&TABLES);
    pg.stop();
    stop_ok(m);

    // A new machine: an empty cache dir, the same bucket. No crash recovery: the bucket holds
    // the clean shutdown.
    l.journal.enter(
        format!("restore after a clean stop {plan}"),
        vec![
            live_log.clone(),
            l.root.join("cache-b.log"),
            pg_log("run-restore-b"),
        ],
    );
    let m = l.mount("b", plan.checkpoint_interval, &[]);
    let watchdog = Watchdog::arm("restore b".into(), m.pid(), CYCLE_DEADLINE);
    let pg = l.start_postgres(&m, "run-restore-b");
    assert!(!pg.ran_crash_recovery(), "{}", pg.log_text());
    l.check(&pg, &l.acked(), "restored after a clean stop");
    assert_eq!(pg.digest(&TABLES), digest, "the restored database differs");

    // Then load, a checkpoint forced at the seed's moment, and kill -9 of the machine after
    // it: what was acknowledged before the checkpoint was asked for must be in the bucket.
    let load = Load::start(&l, &pg, &plan);
    load.run_until(&l, plan.kill_after_acks, plan.kill_after_ms);
    let covered = l.acked();
    m.checkpoint();
    load.run_until(&l, 0, Rng(plan.seed ^ 1).range(0, 1000));
    drop(watchdog);
    crash(pg, m, plan.bucketfs_first);
    load.finish(&l);

    l.journal.enter(
        format!("restore after kill -9, with --takeover {plan}"),
        vec![
            l.root.join("cache-b.log"),
            pg_log("run-restore-b"),
            l.root.join("cache-c.log"),
            pg_log("run-restore-c"),
        ],
    );
    let m = l.mount("c", "1s", &["--takeover"]);
    let pg = l.start_postgres(&m, "run-restore-c");
    assert!(pg.ran_crash_recovery(), "{}", pg.log_text());
    l.check(
        &pg,
        &covered,
        "restored after kill -9 (commits before the last checkpoint)",
    );
    pg.stop();
    stop_ok(m);
    l.s3.assert_verifies(PREFIX, "bucketfs verify failed after the crash loop");
    println!(
        "crash loop: {cycles} cycles and two restores in {:.0?}",
        started.elapsed()
    );
}
