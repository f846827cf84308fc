//! The bucket, measured in one run: upload amplification and PUTs per GiB under pgbench, pgbench
//! TPS on bucketfs with checkpoints running against the plain local disk, the final checkpoint
//! at stop, and a cold start from the bucket into an empty cache dir with 20 ms added to every
//! S3 request. The bucket is s3s-fs in-process on 127.0.0.1 (tests/common/s3.rs), which counts
//! every request.
//!
//! As root: `cargo bench --locked --profile dev --bench bucket`. Prints a Markdown report on
//! stdout (progress on stderr). Environment: SCALE (20), CLIENTS (4), DURATION (60 s),
//! COLD_SCALE (70, about 1 GiB); QUICK=1 changes the defaults to a smoke run (2, 10 s, 5);
//! BUCKETFS_ARGS adds options to every `bucketfs mount` (e.g. `--compression none`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::pg::{bin_dir, postgres_user, run_ok, Postgres};
use common::s3::{Faults, S3Server};
use common::Mount;

/// Added to every S3 request during the cold start: a bucket in the machine's region.
const COLD_LATENCY_MS: u64 = 20;
/// Ports name the Unix sockets only; the test suite uses 54_3xx.
const PORT_LOCAL: u16 = 54_401;
const PORT_BUCKET: u16 = 54_402;
const PORT_COLD_LOAD: u16 = 54_403;
const PORT_COLD_START: u16 = 54_404;
const GIB: f64 = (1u64 << 30) as f64;

struct Settings {
    scale: u32,
    clients: u32,
    jobs: u32,
    duration: u32,
    cold_scale: u32,
    /// Extra `bucketfs mount` options, from BUCKETFS_ARGS.
    mount_args: String,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("QUICK").is_ok_and(|v| v == "1");
        let knob = |name: &str, full: u32, smoke: u32| match std::env::var(name) {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("{name} must be a positive integer, got {v:?}")),
            Err(_) if quick => smoke,
            Err(_) => full,
        };
        let clients = knob("CLIENTS", 4, 4);
        Settings {
            scale: knob("SCALE", 20, 2),
            clients,
            // pgbench wants clients to be a multiple of its threads.
            jobs: if clients % 2 == 0 { 2 } else { 1 },
            duration: knob("DURATION", 60, 10),
            cold_scale: knob("COLD_SCALE", 70, 5),
            mount_args: std::env::var("BUCKETFS_ARGS").unwrap_or_default(),
        }
    }

    /// The command that reproduces this run (QUICK=1 only changes defaults, spelled out here).
    fn command(&self) -> String {
        let extra = match self.mount_args.as_str() {
            "" => String::new(),
            args => format!("BUCKETFS_ARGS='{args}' "),
        };
        format!(
            "{extra}SCALE={} CLIENTS={} DURATION={} COLD_SCALE={} cargo bench --locked \
             --profile dev --bench bucket",
            self.scale, self.clients, self.duration, self.cold_scale
        )
    }
}

/// The S3 server's counters at one moment; `since` gives what happened between two.
#[derive(Clone, Copy)]
struct S3Counters {
    puts: u64,
    put_bytes: u64,
    gets: u64,
    segment_gets: u64,
    get_bytes: u64,
}

impl S3Counters {
    fn read(f: &Faults) -> S3Counters {
        S3Counters {
            puts: f.puts(),
            put_bytes: f.put_bytes.load(Ordering::SeqCst),
            gets: f.gets(),
            segment_gets: f.segment_gets(),
            get_bytes: f.get_bytes.load(Ordering::SeqCst),
        }
    }

    fn since(self, earlier: S3Counters) -> S3Counters {
        S3Counters {
            puts: self.puts - earlier.puts,
            put_bytes: self.put_bytes - earlier.put_bytes,
            gets: self.gets - earlier.gets,
            segment_gets: self.segment_gets - earlier.segment_gets,
            get_bytes: self.get_bytes - earlier.get_bytes,
        }
    }
}

struct BucketRun {
    /// pgbench's TPS, checkpoints running.
    tps: f64,
    /// Bytes Postgres wrote through the mount, from bucketfs's log at unmount.
    written: u64,
    uploads: S3Counters,
    /// `checkpoint totals for this mount`: checkpoints, segment bytes, manifest bytes.
    totals: [u64; 3],
    /// From SIGTERM (Postgres already stopped) until bucketfs exited.
    stop: Duration,
    final_checkpoint_ms: u64,
}

struct ColdStart {
    db_bytes: u64,
    /// Time since `bucketfs mount` was spawned and S3 traffic, at each step.
    steps: Vec<(&'static str, Duration, S3Counters)>,
    /// Postgres's own account of its start ("database system was shut down at ...").
    pg_lines: Vec<String>,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root: bucketfs mounts with --allow-other and Postgres runs as the postgres user"
    );
    let s = Settings::from_env();
    // /var/tmp, not /tmp: a tmpfs would make the "local disk" and the cache dirs RAM.
    let scratch = tempfile::Builder::new()
        .prefix("bucketfs-bench-")
        .tempdir_in("/var/tmp")
        .expect("create a scratch dir under /var/tmp");
    let dir = scratch.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .expect("let the postgres user traverse the scratch dir");
    let s3 = S3Server::start(&dir.join("s3"));

    eprintln!("==> local disk: pgbench -i -s {}, pgbench", s.scale);
    let local_tps = local_disk(dir, &s);
    eprintln!("==> bucketfs: pgbench -i -s {}, pgbench, stop", s.scale);
    let bucket = bucket_run(dir, &s3, &s);
    eprintln!(
        "==> cold start: pgbench -i -s {}, stop, restore",
        s.cold_scale
    );
    let cold = cold_start(dir, &s3, &s);
    report(&s, dir, local_tps, &bucket, &cold);
}

/// pgbench's TPS on a data dir on the plain local disk.
fn local_disk(dir: &Path, s: &Settings) -> f64 {
    let data = dir.join("local");
    fs::create_dir(&data).expect("create the local data dir");
    let (uid, gid) = postgres_user();
    std::os::unix::fs::chown(&data, Some(uid), Some(gid))
        .expect("give the local data dir to postgres");
    Postgres::initdb(&data);
    let pg = Postgres::start(&data, &dir.join("run"), PORT_LOCAL, &[]);
    load(&pg, s.scale);
    let tps = pgbench(&pg, s);
    pg.stop();
    tps
}

fn bucket_run(dir: &Path, s3: &S3Server, s: &Settings) -> BucketRun {
    let before = S3Counters::read(&s3.faults);
    let mount = mount_bucket(dir, s3, s, "bench", "bench");
    Postgres::initdb(&mount.mnt);
    let pg = Postgres::start(&mount.mnt, &dir.join("run"), PORT_BUCKET, &[]);
    load(&pg, s.scale);
    let tps = pgbench(&pg, s);
    pg.stop();
    let (stop, log) = stop_clean(mount);
    let totals = "checkpoint totals for this mount";
    BucketRun {
        tps,
        written: log_field(&log, "unmounted; syncing cache dir", "bytes_written"),
        uploads: S3Counters::read(&s3.faults).since(before),
        totals: ["checkpoints", "segment_bytes", "manifest_bytes"]
            .map(|key| log_field(&log, totals, key)),
        stop,
        final_checkpoint_ms: log_field(&log, "final checkpoint committed", "elapsed_ms"),
    }
}

fn cold_start(dir: &Path, s3: &S3Server, s: &Settings) -> ColdStart {
    let run = dir.join("run");
    let mount = mount_bucket(dir, s3, s, "cold", "cold-load");
    Postgres::initdb(&mount.mnt);
    let pg = Postgres::start(&mount.mnt, &run, PORT_COLD_LOAD, &[]);
    load(&pg, s.cold_scale);
    let db_bytes = pg
        .query_one("SELECT pg_database_size('postgres')")
        .parse()
        .expect("pg_database_size is an integer");
    pg.stop();
    stop_clean(mount);

    // A new machine: an empty cache dir, every S3 request COLD_LATENCY_MS away.
    s3.faults
        .latency_ms
        .store(COLD_LATENCY_MS, Ordering::SeqCst);
    let before = S3Counters::read(&s3.faults);
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut step = |name: &'static str| {
        let counters = S3Counters::read(&s3.faults).since(before);
        steps.push((name, started.elapsed(), counters));
    };
    let mount = mount_bucket(dir, s3, s, "cold", "cold");
    step("mount ready");
    let pg = Postgres::start(&mount.mnt, &run, PORT_COLD_START, &[]);
    step("Postgres accepting connections");
    let branches = pg.query_one("SELECT count(*) FROM pgbench_branches");
    step("first query answered");
    assert_eq!(
        branches,
        s.cold_scale.to_string(),
        "pgbench_branches after the cold start"
    );
    let pg_lines = pg
        .log_text()
        .lines()
        // Leave out the FATAL "starting up" answers to pg_isready's polls.
        .filter(|l| l.contains("LOG:") && (l.contains("database system") || l.contains("redo")))
        .map(str::to_owned)
        .collect();
    // Stopping is not measured: take the latency away so that it does not drag.
    s3.faults.latency_ms.store(0, Ordering::SeqCst);
    pg.stop();
    stop_clean(mount);
    ColdStart {
        db_bytes,
        steps,
        pg_lines,
    }
}

/// `bucketfs mount` on DIR/mnt-NAME with the cache dir DIR/cache-NAME (empty if new), the bucket
/// being PREFIX in the S3 server.
fn mount_bucket(dir: &Path, s3: &S3Server, s: &Settings, prefix: &str, name: &str) -> Mount {
    let (mnt, cache) = (
        dir.join(format!("mnt-{name}")),
        dir.join(format!("cache-{name}")),
    );
    let bucket = s3.url(prefix);
    let mut args: Vec<&str> = "--allow-other --uid postgres --gid postgres --bucket"
        .split(' ')
        .collect();
    args.push(&bucket);
    args.extend(s.mount_args.split_whitespace());
    Mount::start_with_env(&mnt, &cache, &args, &s3.env())
}

/// SIGTERM to bucketfs (Postgres already stopped); the time until it exited, and its log.
fn stop_clean(mount: Mount) -> (Duration, String) {
    let log_path = mount.log.clone();
    let started = Instant::now();
    let status = mount.stop();
    let elapsed = started.elapsed();
    let log = fs::read_to_string(&log_path).expect("read bucketfs's log");
    assert!(
        status.success(),
        "bucketfs did not stop cleanly ({status}):\n{log}"
    );
    (elapsed, log)
}

/// pgbench -i, then a Postgres CHECKPOINT, so that the timed run starts from the same state on
/// every target (as benches/pgbench_vs_local.sh does).
fn load(pg: &Postgres, scale: u32) {
    run_ok(
        pg.tool("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]),
    );
    pg.query_one("CHECKPOINT");
}

/// pgbench's "tps = N (without initial connection time)".
fn pgbench(pg: &Postgres, s: &Settings) -> f64 {
    let [c, j, t] = [s.clients, s.jobs, s.duration].map(|n| n.to_string());
    let out = run_ok(
        pg.tool("pgbench")
            .args(["-c", &c, "-j", &j, "-T", &t, "postgres"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no \"tps = \" line in pgbench's output:\n{text}"))
}

/// The integer field `key=N` of the last line of bucketfs's log that contains `message`.
fn log_field(log: &str, message: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} line in bucketfs's log:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no integer {key}= in bucketfs's log line: {line}"))
}

fn report(s: &Settings, dir: &Path, local_tps: f64, b: &BucketRun, cold: &ColdStart) {
    let checkout = common::checkout::checkout();
    let repo = checkout.to_str().expect("a UTF-8 checkout path");
    let unknown = || "unknown".to_owned();
    let command = s.command();
    let date = output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(unknown);
    let machine = machine();
    let rev = output("git", &["-C", repo, "rev-parse", "--short", "HEAD"]).unwrap_or_else(unknown);
    let changes = output("git", &["-C", repo, "status", "--porcelain"]);
    let dirty = if changes.is_some_and(|c| !c.is_empty()) {
        " + uncommitted changes"
    } else {
        ""
    };
    let postgres = bin_dir().join("postgres");
    let version = output(postgres.to_str().expect("UTF-8 path"), &["--version"]);
    let version = version.unwrap_or_else(unknown);
    let (bin, bucket_dir) = (common::BIN, dir.display());
    let mount_args = match s.mount_args.as_str() {
        "" => "defaults otherwise",
        args => args,
    };
    let (scale, clients, jobs, duration) = (s.scale, s.clients, s.jobs, s.duration);
    print!(
        "command:   {command}
date:      {date}
machine:   {machine}
git:       {rev}{dirty}
postgres:  {version}
bucketfs:  dev profile ({bin}), mount --bucket s3://pgdata/PREFIX --allow-other --uid postgres --gid postgres, {mount_args}
bucket:    s3s-fs in-process on 127.0.0.1, objects under {bucket_dir}/s3 (same disk as the local data dir and the cache dirs)
workload:  pgbench -i -s {scale}; CHECKPOINT; pgbench -c {clients} -j {jobs} -T {duration} (TPC-B); Postgres defaults, Unix socket only
"
    );

    let (written, uploaded, puts) = (size(b.written), size(b.uploads.put_bytes), b.uploads.puts);
    let ratio = b.uploads.put_bytes as f64 / b.written as f64;
    let puts_per_gib = b.uploads.puts as f64 / (b.written as f64 / GIB);
    let [checkpoints, segment_bytes, manifest_bytes] = b.totals;
    let (segment_bytes, manifest_bytes) = (size(segment_bytes), size(manifest_bytes));
    print!(
        "
### Uploads (whole run: initdb, pgbench -i, pgbench, shutdown, final checkpoint)

| measure | value | goal |
|---|---:|---|
| bytes Postgres wrote (`bytes_written` at unmount) | {written} | |
| bytes uploaded (PUT and part bodies) | {uploaded} | |
| uploaded / written | {ratio:.2} | at most 1.5 |
| PUT requests (multipart create, parts and complete included) | {puts} | |
| PUTs per GiB written | {puts_per_gib:.1} | tens |
| bucketfs's totals: checkpoints; segment bytes; manifest bytes | {checkpoints}; {segment_bytes}; {manifest_bytes} | |

bucketfs logs `bytes_written` only at unmount, so the load and the pgbench run are not separated.
"
    );

    let (bucket_tps, vs_local) = (b.tps, b.tps / local_tps);
    print!(
        "
### pgbench TPS, checkpoints running vs the local disk

| target | TPS | vs local disk |
|---|---:|---:|
| local disk | {local_tps:.1} | 1.00x |
| bucketfs, checkpoints running | {bucket_tps:.1} | {vs_local:.2}x |

TPS is pgbench's \"tps = N (without initial connection time)\"; one run per target.
"
    );

    let (stop_s, final_ms) = (b.stop.as_secs_f64(), b.final_checkpoint_ms);
    print!(
        "
### Final checkpoint at stop (Postgres already stopped)

| measure | value |
|---|---:|
| SIGTERM to bucketfs exit | {stop_s:.2} s |
| final checkpoint (`elapsed_ms` of its log line) | {final_ms} ms |
"
    );

    let (cold_scale, db_size) = (s.cold_scale, size(cold.db_bytes));
    print!(
        "
### Cold start from the bucket, empty cache dir, {COLD_LATENCY_MS} ms per S3 request

Database: pgbench -i -s {cold_scale} ({db_size} per pg_database_size), checkpointed, stopped cleanly.

| step | since spawning bucketfs (s) | GETs | segment GETs | bytes fetched |
|---|---:|---:|---:|---:|
"
    );
    for (name, at, c) in &cold.steps {
        let (at, fetched) = (at.as_secs_f64(), size(c.get_bytes));
        println!(
            "| {name} | {at:.2} | {} | {} | {fetched} |",
            c.gets, c.segment_gets
        );
    }
    print!(
        "
Goal: the first query (`SELECT count(*) FROM pgbench_branches` via psql) under 2 s. Steps are
polled every 20 ms (mountinfo, pg_isready) and include process starts. Postgres's log of that
start:

"
    );
    for line in &cold.pg_lines {
        println!("    {line}");
    }
}

/// CPUs, RAM and kernel, as in the other benchmarks' reports.
fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map_or("unknown CPU", str::trim);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: u64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let kernel = output("uname", &["-srm"]).unwrap_or_else(|| "unknown kernel".into());
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB RAM, {kernel}",
        ram_kib as f64 / (1 << 20) as f64
    )
}

/// A command's trimmed stdout, or None if it could not run or failed: the report says "unknown".
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn size(bytes: u64) -> String {
    if bytes as f64 >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}
