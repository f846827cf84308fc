//! Command line, environment and config file → plain settings.

mod file;

use std::path::PathBuf;

pub use file::{parse, ParseError, Parsed, Setting, Source};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "bucketfs",
    version,
    about = "A FUSE filesystem for a PostgreSQL data directory, with its state in a local cache dir",
    long_about = "bucketfs mounts a filesystem that PostgreSQL (and OrioleDB) can use as its data \
directory. File contents live in sparse cache files and metadata in RocksDB under --cache-dir; \
fsync and fdatasync are truthful: once they return, a crash of bucketfs or of the machine loses \
nothing they covered."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BUCKETFS_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    Local,
    Remote,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    /// Upload page bytes as they are.
    None,
    /// zstd (level 1) for every run of pages it shrinks by an eighth or more.
    Zstd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const RUN_ABOUT: &str = "\
Mount MOUNTPOINT, wait until it serves, then run PROGRAM on it as --user (a PostgreSQL server, \
for instance `-- /usr/lib/postgresql/15/bin/postgres -D MOUNTPOINT`). bucketfs is meant to be \
the container's PID 1: it reaps orphaned processes, and it runs as root (FUSE needs it) while \
PROGRAM does not.

If the mount cannot start (the bucket cannot be reached, another writer holds the prefix, the \
cache dir is bad), PROGRAM never starts and bucketfs exits 1 with the reason.

Signals: SIGINT and SIGQUIT are passed to PROGRAM as they are (PostgreSQL: fast and immediate \
shutdown), SIGHUP too (reload). SIGTERM, which Fly and Docker send to stop a machine, is passed \
as SIGINT: PostgreSQL's fast shutdown, since its smart shutdown (SIGTERM) waits for every client \
to leave, which pooled connections never do. When PROGRAM exits, bucketfs ends what is left of \
its processes, takes the final checkpoint (its progress in the log), unmounts, and exits with \
PROGRAM's status (128+N for death by signal N). If the mount stops being the bucket's writer \
(another writer took the prefix over) or stops serving, PROGRAM gets SIGQUIT at once and \
bucketfs exits 1: PostgreSQL never runs on a mount that is no longer the writer.

Settings come from flags, then BUCKETFS_* environment variables, then the TOML file of \
--config (keys are the long option names), then the defaults, in that order. Repeatable \
options (--local-only, --initdb-arg, --pg-conf) have no variable: give them as flags or as \
TOML arrays. The variables of `fly storage create` work as they are: AWS_ACCESS_KEY_ID, \
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, AWS_REGION and BUCKET_NAME (--bucket then defaults \
to s3://$BUCKET_NAME/DATABASE-NAME). Without any bucket, the directory `bucket` inside the \
cache dir is the bucket (for trying bucketfs out: it shares the cache dir's disk), and the log \
says so. Credentials appear in no log line, and PROGRAM does not inherit them.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a filesystem in the foreground until SIGINT or SIGTERM, then unmount cleanly.
    Mount(MountArgs),
    /// Mount, then run a program on the mount (PostgreSQL) as an unprivileged user; when it
    /// exits, take the final checkpoint, unmount, and exit with its status. The container's
    /// PID 1.
    #[command(long_about = RUN_ABOUT)]
    Run(RunArgs),
    /// Take a checkpoint now on the mount running on a cache dir; prints the committed epoch.
    Checkpoint {
        /// The cache dir of the running mount.
        #[arg(long, env = "BUCKETFS_CACHE_DIR")]
        cache_dir: PathBuf,
    },
    /// List the checkpoints in a bucket: epoch, kind, time, writer, segments, bytes, and
    /// whether it is restorable (retained by the last GC pass) or expired. Under
    /// `--durability remote` every group commit is a checkpoint: `--last` shows the newest.
    Ls {
        /// s3://NAME/PREFIX or file:///PATH
        #[arg(long, env = "BUCKETFS_BUCKET", value_name = "URL")]
        bucket: String,
        /// Only the newest N checkpoints (the bucket is still listed whole; only their
        /// manifests are read).
        #[arg(long, value_name = "N")]
        last: Option<std::num::NonZeroUsize>,
    },
    /// Show how the mount running on a cache dir is doing: bucket, epoch, checkpoint age,
    /// RPO, dirty bytes, cache use and hit rate, object store errors, fencing, prewarm.
    Status {
        /// The cache dir of the running mount.
        #[arg(long, env = "BUCKETFS_CACHE_DIR")]
        cache_dir: PathBuf,
        /// Print the raw JSON (as /status serves it) instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Apply retention to a bucket: report what it holds and what no retained checkpoint
    /// needs, and delete what has waited out --gc-grace. Deletes only when no writer holds
    /// the prefix (its last checkpoint was a clean stop); a running writer's own GC
    /// (--gc-interval) collects its bucket. With --dry-run, only reports.
    Gc {
        /// s3://NAME/PREFIX or file:///PATH
        #[arg(long, env = "BUCKETFS_BUCKET", value_name = "URL")]
        bucket: String,
        /// Report, write nothing, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Check every segment, every manifest, that no retained checkpoint's manifest is
    /// missing, the extents of every retained checkpoint and every chunk of GC's catalog in a
    /// bucket; exits 1 naming the broken objects. Safe beside a running writer and its GC
    /// passes.
    Verify {
        /// s3://NAME/PREFIX or file:///PATH
        #[arg(long, env = "BUCKETFS_BUCKET", value_name = "URL")]
        bucket: String,
    },
    /// Copy a WAL file (a segment or a timeline history file) from the bucket's newest
    /// checkpoint that holds it to DEST: a hot standby's restore_command. Exits 0 when DEST
    /// holds the file, 1 when the file is not there (yet), 3 when it could not be served (a
    /// damaged object, an unreachable bucket or replica; the reason goes to stderr). DEST is
    /// written whole or not at all.
    #[command(long_about = WAL_FETCH_ABOUT)]
    WalFetch {
        /// Ask the replica mounted on this cache dir (what `run --replica` sets up: the
        /// replica holds the bucket's credentials, and serves from what it follows).
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "bucket",
            conflicts_with = "bucket"
        )]
        cache_dir: Option<PathBuf>,
        /// Or read the bucket directly: s3://NAME/PREFIX or file:///PATH (credentials from
        /// the environment).
        #[arg(long, value_name = "URL")]
        bucket: Option<String>,
        /// With --bucket: where the WAL directory is, from the filesystem's root.
        #[arg(long, default_value = "pg_wal", value_name = "DIR")]
        wal_dir: PathBuf,
        /// The file PostgreSQL asks for (%f).
        file: String,
        /// Where to put it (%p).
        dest: PathBuf,
    },
}

const WAL_FETCH_ABOUT: &str = "\
Copy a WAL file from the bucket to DEST: the restore_command of a hot standby on a replica
(`bucketfs run --replica` sets it to `bucketfs wal-fetch --cache-dir DIR %f %p`).

The file comes from the newest checkpoint that holds it: the one being written, with what the
primary had flushed at that checkpoint (the standby asks again when it reaches the end), or,
for a segment the primary has removed since, the newest retained checkpoint that still has it.
Every byte is checked against its crc32c on the way.

Exit codes: 0 DEST holds the file; 1 it is not there (yet); 3 it could not be served (a
damaged object, the bucket or the replica unreachable; the reason is on stderr). None is above
125, so PostgreSQL never aborts recovery over one: it waits and asks again.";

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount: an existing, empty directory.
    pub mountpoint: PathBuf,

    /// Local directory that holds the filesystem's state (created if missing). It is locked
    /// while mounted; mounting it again after a stop or a crash brings back every file.
    #[arg(long, env = "BUCKETFS_CACHE_DIR")]
    pub cache_dir: PathBuf,

    /// A TOML file of settings: keys are the long option names (`cache-dir = "/data/cache"`,
    /// `stop-timeout = "280s"`, `initdb-arg = ["--locale=C"]`). An option given as a flag
    /// wins over its BUCKETFS_* variable, which wins over the file, which wins over the
    /// default. Credentials are never read from it: they come from the environment only.
    #[arg(long, env = "BUCKETFS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Let users other than the one running bucketfs use the mount (needed when bucketfs runs
    /// as root and PostgreSQL as the postgres user). Permission checks follow file modes.
    #[arg(long, env = "BUCKETFS_ALLOW_OTHER")]
    pub allow_other: bool,

    /// Owner of the filesystem's root directory: a user name or number (e.g. postgres).
    #[arg(long, value_name = "USER", env = "BUCKETFS_UID")]
    pub uid: Option<String>,

    /// Group of the filesystem's root directory: a group name or number.
    #[arg(long, value_name = "GROUP", env = "BUCKETFS_GID")]
    pub gid: Option<String>,

    /// Kernel request threads. Each fsync holds one for the length of a disk flush, so this
    /// bounds how many fsyncs run at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256), env = "BUCKETFS_FUSE_THREADS")]
    pub fuse_threads: u16,

    /// Send every write to bucketfs as it happens instead of letting the kernel buffer writes
    /// until fsync or writeback. Slower; for comparison and debugging.
    #[arg(long, env = "BUCKETFS_NO_WRITEBACK_CACHE")]
    pub no_writeback_cache: bool,

    /// Up to about how much data written to the mount the kernel may hold in its page cache
    /// before it must send it to bucketfs (0, or at least 16M; with the writeback cache, not
    /// for --read-only). The kernel's own limit for a FUSE mount is 1% of its dirty limit
    /// (vm.dirty_ratio of free and cached memory): close to it, writers wait while their
    /// pages reach bucketfs in small requests. It keeps this value as a share of its dirty
    /// limit at mount, at most half (more asks for half) and never below its own 1%; 0 keeps
    /// the kernel's limit. Needs root and a writable /sys (else a warning). fsync still sends
    /// every dirty page of the file before it returns, so it may have more to send.
    #[arg(long, default_value = "1G", value_parser = parse_size_or_zero, value_name = "BYTES", env = "BUCKETFS_KERNEL_DIRTY")]
    pub kernel_dirty: u64,

    /// The object store that holds the filesystem: s3://NAME/PREFIX, or file:///PATH for a
    /// local directory. Default: s3://$BUCKET_NAME/DATABASE-NAME when BUCKET_NAME is set (as
    /// `fly storage create` sets it); else, for `mount`, no bucket (the filesystem lives in
    /// the cache dir alone) and, for `run`, the directory `bucket` in the cache dir. Mounting a
    /// bucket on an empty cache dir restores its latest checkpoint (contents are fetched on
    /// first read). S3 credentials, endpoint and region come from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3 and AWS_REGION, as `fly storage create` sets
    /// them; BUCKETFS_S3_PATH_STYLE=1 for path-style addressing.
    #[arg(long, env = "BUCKETFS_BUCKET", value_name = "URL")]
    pub bucket: Option<String>,

    /// Where WAL segments go (the pages of files under --wal-dir): s3://NAME/PREFIX or
    /// file:///PATH. Default: with the manifests, in --bucket. Chosen when the filesystem is
    /// created and recorded in --bucket: later starts, restores, replicas and `bucketfs ls`
    /// find it there (giving it again is allowed; another value is refused). The prefix must
    /// be this filesystem's alone. For fencing, keep manifests and WAL in a single- or
    /// multi-region bucket (docs/replicas.md).
    #[arg(long, value_name = "URL", env = "BUCKETFS_BUCKET_WAL")]
    pub bucket_wal: Option<String>,

    /// Where data segments go (every other file's pages), as --bucket-wal: e.g. a global
    /// bucket, so that replicas in other regions read nearby copies.
    #[arg(long, value_name = "URL", env = "BUCKETFS_BUCKET_DATA")]
    pub bucket_data: Option<String>,

    /// Tigris regions for one class's objects, sent as X-Tigris-Regions on each PUT
    /// (repeatable): CLASS=REGIONS, CLASS one of manifest, wal, data (e.g. wal=iad,
    /// data=fra,sin). Tigris now prefers bucket location types to this per-object hint: the
    /// per-class buckets are the way that works everywhere (docs/replicas.md).
    #[arg(long = "region-hint", value_name = "CLASS=REGIONS")]
    pub region_hint: Vec<String>,

    /// The key prefix under $BUCKET_NAME when --bucket is not given: one database (data
    /// directory) per prefix, so that one bucket can hold several.
    #[arg(long, default_value = "postgres", value_parser = parse_database_name, value_name = "NAME", env = "BUCKETFS_DATABASE_NAME")]
    pub database_name: String,

    /// Time between checkpoints to the bucket (e.g. 500ms, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION", env = "BUCKETFS_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: std::time::Duration,

    /// Start a checkpoint before the interval is up once this much is dirty (e.g. 64M, 1G),
    /// so that a burst of writes goes up in pieces instead of one large checkpoint.
    #[arg(long, default_value = "256M", value_parser = parse_size, value_name = "BYTES", env = "BUCKETFS_CHECKPOINT_DIRTY")]
    pub checkpoint_dirty: u64,

    /// How page bytes are stored in the bucket's segments. Either kind reads back either.
    #[arg(long, value_enum, default_value_t = Compression::Zstd, env = "BUCKETFS_COMPRESSION")]
    pub compression: Compression,

    /// What fsync promises. local: on the local disk (a lost machine loses at most the last
    /// checkpoint interval). remote: also in the bucket (fsync waits for a checkpoint; needs
    /// --bucket).
    #[arg(long, value_enum, default_value_t = Durability::Local, env = "BUCKETFS_DURABILITY")]
    pub durability: Durability,

    /// Take the bucket over from a writer that did not stop cleanly, whatever the age of its
    /// last checkpoint. Only when that writer is gone: it is fenced at its next checkpoint,
    /// but two live writers are never right. Without this (or --takeover-after) such a
    /// bucket is refused, with a message naming the writer and its last checkpoint.
    #[arg(long, conflicts_with = "read_only", env = "BUCKETFS_TAKEOVER")]
    pub takeover: bool,

    /// Take the bucket over from a writer that did not stop cleanly only once its newest
    /// checkpoint is older than this (e.g. 10m); refuse before. A writer run with this option
    /// commits a checkpoint at least every quarter of it, even when idle, so a live one never
    /// looks that old unless it has lost the bucket. See docs/run.md for the risk.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with_all = ["takeover", "read_only"], env = "BUCKETFS_TAKEOVER_AFTER")]
    pub takeover_after: Option<std::time::Duration>,

    /// Serve the bucket's latest checkpoint read-only: writes fail with EROFS, nothing is
    /// ever written to the bucket, and a live writer on the same prefix is left alone. The
    /// cache dir must be empty or one that a read-only mount of the same checkpoint left.
    #[arg(long, env = "BUCKETFS_READ_ONLY")]
    pub read_only: bool,

    /// Serve the bucket's latest checkpoint as a read replica of the writer that holds it:
    /// what is written on the mount stays in the cache dir (a copy-on-write layer), nothing
    /// is ever written to the bucket, newer checkpoints are followed, and their WAL is served
    /// to a PostgreSQL hot standby (`bucketfs wal-fetch`; `bucketfs run --replica` sets the
    /// standby up). Restarted on its cache dir, a replica goes on from where it was; once its
    /// base leaves the writer's retention window, it starts on the newest checkpoint.
    /// Started without --replica (and with --takeover), a replica's cache dir becomes the
    /// writer's: a promotion (docs/replicas.md).
    #[arg(long, conflicts_with_all = ["read_only", "takeover", "takeover_after", "at"], env = "BUCKETFS_REPLICA")]
    pub replica: bool,

    /// Where PostgreSQL's WAL directory is, from the mount's root: its files' pages go in WAL
    /// segments (--bucket-wal), and a replica serves WAL from there.
    #[arg(
        long,
        default_value = "pg_wal",
        value_name = "DIR",
        env = "BUCKETFS_WAL_DIR"
    )]
    pub wal_dir: PathBuf,

    /// With --read-only: serve the newest checkpoint at or before this point instead of the
    /// latest: an epoch number (as `bucketfs ls` lists them) or a UTC time
    /// ("2026-12-01 10:00:00", "2026-12-01T10:00:00Z"). Any retained checkpoint can be served
    /// (point-in-time restore at checkpoint granularity).
    #[arg(long, value_parser = parse_at, value_name = "EPOCH|TIME", requires = "read_only", env = "BUCKETFS_AT")]
    pub at: Option<At>,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// Time between the writer's GC passes (retention, compaction, deletion; docs/gc.md), or
    /// "off". The first pass comes a minute after the start (or at the interval, if shorter),
    /// so that a machine that stops when idle collects too. Only the writer that holds the
    /// prefix deletes.
    #[arg(long, default_value = "10m", value_parser = parse_optional_duration, value_name = "DURATION|off", env = "BUCKETFS_GC_INTERVAL")]
    pub gc_interval: OptionalDuration,

    /// Leave segments as they are: no rewriting of mostly-dead or small segments in GC
    /// passes (the bucket then grows with fragmentation, and restores read more objects).
    #[arg(long, env = "BUCKETFS_NO_COMPACTION")]
    pub no_compaction: bool,

    /// Paths never uploaded (repeatable). A glob without '/' matches any path component, one
    /// with '/' the whole path from the root. Default: pgsql_tmp, postmaster.pid,
    /// postmaster.opts.
    #[arg(long = "local-only", value_name = "GLOB")]
    pub local_only: Vec<String>,

    /// Bound on the clean file data the cache dir keeps (e.g. 10G). Past it, the least
    /// valuable 256 KiB chunks are punched out of their cache files and fetched again from
    /// the bucket when read; a large scan does not push out data read often. Dirty data is
    /// never evicted (see --max-dirty). Needs --bucket. Default: no bound.
    #[arg(long, value_parser = parse_size, value_name = "BYTES", env = "BUCKETFS_CACHE_SIZE")]
    pub cache_size: Option<u64>,

    /// Bound on data not yet in the bucket (dirty, or being uploaded). Writers that reach it
    /// wait for the checkpointer; they never fail. Keep it small enough to upload within the
    /// machine's stop timeout. Needs --bucket.
    #[arg(long, default_value = "1G", value_parser = parse_size, value_name = "BYTES", env = "BUCKETFS_MAX_DIRTY")]
    pub max_dirty: u64,

    /// Where to serve Prometheus metrics (/metrics), /healthz and /status (JSON, what
    /// `bucketfs status` prints). Loopback by default; "off" to serve nothing.
    #[arg(
        long,
        default_value = "127.0.0.1:9187",
        value_name = "ADDR:PORT|off",
        env = "BUCKETFS_METRICS_ADDR"
    )]
    pub metrics_addr: String,

    /// Serve --metrics-addr on an address other than loopback (such as [::]:9187 on a Fly
    /// Machine, where only its private network reaches ports that are not services, or
    /// 0.0.0.0:9187 in a container whose port is published on the host's loopback). The
    /// endpoint has no authentication: only where the network itself is private.
    #[arg(long, env = "BUCKETFS_METRICS_ALLOW_REMOTE")]
    pub metrics_allow_remote: bool,
}

/// How long checkpoints stay restorable, and how long unneeded objects wait (docs/gc.md).
#[derive(Clone, Debug, Args)]
pub struct RetentionArgs {
    /// Every checkpoint committed within this long stays restorable (`--at`, a replica, a
    /// branch): e.g. 1h, 24h, 7d. Older ones may be collected, except the newest
    /// --retain-checkpoints.
    #[arg(long, default_value = "24h", value_parser = parse_retention, value_name = "DURATION", env = "BUCKETFS_RETAIN")]
    pub retain: std::time::Duration,

    /// The newest this many checkpoints stay restorable whatever their age (a floor under
    /// --retain, for a database that was stopped for longer than it).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..), value_name = "N", env = "BUCKETFS_RETAIN_CHECKPOINTS")]
    pub retain_checkpoints: u32,

    /// An object that no retained checkpoint needs is deleted only once GC has seen it so for
    /// this long: readers of a checkpoint that just left --retain, and uploads not committed
    /// yet (a checkpoint in flight elsewhere), are safe that long. Hours in production.
    #[arg(long, default_value = "1h", value_parser = parse_retention, value_name = "DURATION", env = "BUCKETFS_GC_GRACE")]
    pub gc_grace: std::time::Duration,
}

impl RetentionArgs {
    pub fn retention(&self) -> crate::gc::Retention {
        crate::gc::Retention {
            window: self.retain,
            min_checkpoints: self.retain_checkpoints,
            grace: self.gc_grace,
        }
    }
}

pub use crate::checkpoint::At;

/// A duration that may be "off".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<std::time::Duration>);

fn parse_optional_duration(s: &str) -> Result<OptionalDuration, String> {
    if s.trim() == "off" {
        return Ok(OptionalDuration(None));
    }
    parse_duration(s).map(|d| OptionalDuration(Some(d)))
}

/// A retention: as `parse_duration`, plus days ("7d"), up to ten years; 0 is allowed
/// (keep only the --retain-checkpoints floor; grace 0: delete at the next pass).
pub fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if let Some(days) = t.strip_suffix('d') {
        let n: u64 = days
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (try 30m, 24h or 7d)"))?;
        if n > 3650 {
            return Err(format!("{s:?}: at most ten years (3650d)"));
        }
        return Ok(std::time::Duration::from_secs(n * 86_400));
    }
    if t.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    parse_duration(t).map_err(|e| format!("{e}; or days, e.g. 7d"))
}

/// An epoch number, or a UTC time "YYYY-MM-DD HH:MM:SS[.mmm]" (a 'T' for the space and a
/// trailing 'Z' are accepted, as in RFC 3339).
pub fn parse_at(s: &str) -> Result<At, String> {
    let t = s.trim();
    if let Ok(epoch) = t.parse::<u64>() {
        return Ok(At::Epoch(epoch));
    }
    let bad = || {
        format!(
            "{s:?}: expected an epoch number or a UTC time such as \"2026-12-01 10:00:00\" or \
             2026-12-01T10:00:00Z"
        )
    };
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, time) = t.split_once([' ', 'T']).ok_or_else(bad)?;
    let num = |v: &str| v.parse::<u64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let (secs, millis) = match time.split_once('.') {
        Some((s, ms)) if ms.len() <= 3 => (s, num(&format!("{ms:0<3}"))?),
        Some(_) => return Err(bad()),
        None => (time, 0),
    };
    let hms: Vec<&str> = secs.split(':').collect();
    if d.len() != 3 || hms.len() != 3 {
        return Err(bad());
    }
    let (y, mo, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (h, mi, sec) = (num(hms[0])?, num(hms[1])?, num(hms[2])?);
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(y as i64, mo as u32, day as u32);
    Ok(At::UnixMs(
        (days as u64 * 86_400 + h * 3600 + mi * 60 + sec) * 1000 + millis,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's method).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `bucketfs run`: a mount, and a program on it.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub mount: MountArgs,

    #[command(flatten)]
    pub run: RunOptions,

    /// The program to run once the mount serves, and its arguments, after `--` (e.g.
    /// `-- /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/pgdata`).
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]")]
    pub program: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Run options")]
pub struct RunOptions {
    /// The user that initdb (or --initdb-command) and PROGRAM run as (bucketfs itself stays
    /// root, which FUSE needs).
    /// The mount's root is owned by this user (unless --uid/--gid say otherwise) and open to
    /// other users (--allow-other).
    #[arg(
        long,
        default_value = "postgres",
        value_name = "USER",
        env = "BUCKETFS_USER"
    )]
    pub user: String,

    /// On a new database (the mount has no PG_VERSION and the bucket held none), make it
    /// before PROGRAM: initdb (or --initdb-command) runs as --user into a directory of its own
    /// on the mount, moved into place once it has finished, so that a stop or a lost machine
    /// in the middle leaves nothing a later start takes for a database. A bucket that holds a
    /// database is never initialised again; a mount with files but no PG_VERSION is refused.
    #[arg(long, env = "BUCKETFS_INITDB")]
    pub initdb: bool,

    /// An argument for initdb, or for --initdb-command (repeatable), e.g.
    /// --initdb-arg=--locale=C --initdb-arg=--encoding=UTF8 --initdb-arg=--auth=scram-sha-256.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub initdb_arg: Vec<String>,

    /// With --initdb: make the new database with COMMAND instead of initdb, e.g. an image's
    /// own first start (initdb, then a temporary server for its init scripts). COMMAND runs as
    /// --user, with the --initdb-args as its arguments and PGDATA naming the directory (not
    /// there yet) to make the database in: one of bucketfs's own on the mount, moved into
    /// place once COMMAND exits 0 with a PG_VERSION in it, and made again from the start if
    /// the machine stops first. A stop signal reaches COMMAND's whole process group as SIGTERM
    /// (SIGHUP is not passed on), and whatever it left running (a temporary server) is ended
    /// before bucketfs goes on.
    #[arg(
        long,
        value_name = "COMMAND",
        requires = "initdb",
        env = "BUCKETFS_INITDB_COMMAND"
    )]
    pub initdb_command: Option<PathBuf>,

    /// A line appended to PGDATA/postgresql.conf right after initdb (or --initdb-command),
    /// once (repeatable), e.g.
    /// --pg-conf "shared_preload_libraries = 'orioledb'".
    #[arg(long, value_name = "'KEY = VALUE'")]
    pub pg_conf: Vec<String>,

    /// Where initdb is. Default: beside PROGRAM when PROGRAM is a path, else on PATH.
    #[arg(
        long,
        value_name = "DIR",
        env = "BUCKETFS_PG_BIN",
        conflicts_with = "initdb_command"
    )]
    pub pg_bin: Option<PathBuf>,

    /// The budget for a stop: PROGRAM's shutdown plus the final checkpoint, from the stop
    /// signal on. Keep it under the platform's (Fly: kill_timeout, at most 300 s). Past its
    /// share of the budget PROGRAM gets SIGQUIT (PostgreSQL: immediate shutdown), and SIGKILL
    /// 10 s later.
    #[arg(long, default_value = "280s", value_parser = parse_duration, value_name = "DURATION", env = "BUCKETFS_STOP_TIMEOUT")]
    pub stop_timeout: std::time::Duration,
    /// With --replica: the standby's primary_conninfo, to stream WAL from the primary when
    /// it is reachable (lower lag); the bucket stays the fallback (restore_command). Never
    /// logged (it may hold a password); set it in the environment (a Fly secret) rather than
    /// as a flag, which `ps` shows.
    #[arg(
        long,
        value_name = "CONNINFO",
        requires = "replica",
        env = "BUCKETFS_PRIMARY_CONNINFO"
    )]
    pub primary_conninfo: Option<String>,
}

/// A database name as a key prefix: letters, digits, '.', '_' and '-'.
fn parse_database_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(format!(
            "{s:?}: a database name is 1 to 128 letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(s.to_string())
}

/// "4096", "64K", "256M", "1G" (or "64KiB", "1GiB"): powers of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 4096, 64K, 256M or 1G)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?}: must be more than 0 and fit in 64 bits"))
}

/// A size as `parse_size`, or zero (in any unit) for an option where 0 turns it off.
fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let unit = t.trim_start_matches(|c: char| c.is_ascii_digit());
    let digits = &t[..t.len() - unit.len()];
    if !digits.is_empty() && digits.bytes().all(|b| b == b'0') {
        // The unit must still be one.
        return parse_size(&format!("1{unit}")).map(|_| 0);
    }
    parse_size(s)
}

/// "500ms", "5s", "2m", "1h", or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 500ms, 5s or 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s:?}: must be more than 0 and at most a day"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_single_valued_option_has_its_bucketfs_variable() {
        use clap::{ArgAction, CommandFactory};
        let cli = Cli::command();
        for sub in ["mount", "run"] {
            for a in cli.find_subcommand(sub).unwrap().get_arguments() {
                let Some(long) = a.get_long() else { continue };
                if matches!(
                    a.get_action(),
                    ArgAction::Append | ArgAction::Help | ArgAction::HelpLong | ArgAction::Version
                ) {
                    continue;
                }
                let want = format!("BUCKETFS_{}", long.to_uppercase().replace('-', "_"));
                assert_eq!(
                    a.get_env().and_then(|e| e.to_str()),
                    Some(want.as_str()),
                    "{sub} --{long}"
                );
            }
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_size_or_zero("0"), Ok(0));
        assert_eq!(parse_size_or_zero("0M"), Ok(0));
        assert!(parse_size_or_zero("0X").is_err());
        assert!(parse_size_or_zero("").is_err());
        assert_eq!(parse_size_or_zero("1G"), Ok(1 << 30));
        assert!(parse_size_or_zero("-1").is_err());
    }

    #[test]
    fn points_in_time() {
        assert_eq!(parse_at("42"), Ok(At::Epoch(42)));
        assert_eq!(
            parse_at("2026-11-18 11:06:40.123"),
            Ok(At::UnixMs(1_795_000_000_123))
        );
        assert_eq!(
            parse_at("2026-11-18T11:06:40Z"),
            Ok(At::UnixMs(1_795_000_000_000))
        );
        assert_eq!(parse_at("1970-01-01 00:00:00"), Ok(At::UnixMs(0)));
        // What `ls` prints reads back as the same instant.
        assert_eq!(
            parse_at(&crate::admin::format_ms(1_795_123_456_789)),
            Ok(At::UnixMs(1_795_123_456_789))
        );
        assert!(parse_at("yesterday").is_err());
        assert!(parse_at("2026-13-01 00:00:00").is_err());
        assert!(parse_at("2026-11-18 11:06").is_err());
    }

    #[test]
    fn retentions() {
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_retention("0"), Ok(Duration::ZERO));
        assert_eq!(parse_retention("0s"), Ok(Duration::ZERO));
        assert!(parse_retention("3651d").is_err());
        assert!(parse_retention("soon").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("2m"),
            Ok(std::time::Duration::from_secs(120))
        );
        assert_eq!(parse_duration("7"), Ok(std::time::Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
