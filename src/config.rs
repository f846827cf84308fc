//! Command line (and environment) → plain settings.

use std::path::PathBuf;

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
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a filesystem in the foreground until SIGINT or SIGTERM, then unmount cleanly.
    Mount(MountArgs),
    /// Take a checkpoint now on the mount running on a cache dir; prints the committed epoch.
    Checkpoint {
        /// The cache dir of the running mount.
        #[arg(long, env = "BUCKETFS_CACHE_DIR")]
        cache_dir: PathBuf,
    },
    /// List the checkpoints in a bucket: epoch, kind, time, writer, segments, bytes.
    Ls {
        /// s3://NAME/PREFIX or file:///PATH
        #[arg(long, env = "BUCKETFS_BUCKET", value_name = "URL")]
        bucket: String,
    },
    /// Check every segment and every manifest extent in a bucket; exits 1 naming the broken
    /// objects.
    Verify {
        /// s3://NAME/PREFIX or file:///PATH
        #[arg(long, env = "BUCKETFS_BUCKET", value_name = "URL")]
        bucket: String,
    },
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount: an existing, empty directory.
    pub mountpoint: PathBuf,

    /// Local directory that holds the filesystem's state (created if missing). It is locked
    /// while mounted; mounting it again after a stop or a crash brings back every file.
    #[arg(long, env = "BUCKETFS_CACHE_DIR")]
    pub cache_dir: PathBuf,

    /// Let users other than the one running bucketfs use the mount (needed when bucketfs runs
    /// as root and PostgreSQL as the postgres user). Permission checks follow file modes.
    #[arg(long, env = "BUCKETFS_ALLOW_OTHER")]
    pub allow_other: bool,

    /// Owner of the filesystem's root directory: a user name or number (e.g. postgres).
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,

    /// Group of the filesystem's root directory: a group name or number.
    #[arg(long, value_name = "GROUP")]
    pub gid: Option<String>,

    /// Kernel request threads. Each fsync holds one for the length of a disk flush, so this
    /// bounds how many fsyncs run at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub fuse_threads: u16,

    /// Send every write to bucketfs as it happens instead of letting the kernel buffer writes
    /// until fsync or writeback. Slower; for comparison and debugging.
    #[arg(long)]
    pub no_writeback_cache: bool,

    /// The object store that holds the filesystem: s3://NAME/PREFIX, or file:///PATH for a
    /// local directory. Without it (and without BUCKET_NAME) the filesystem lives in the
    /// cache dir alone. Mounting a bucket on an empty cache dir restores its latest checkpoint
    /// (contents are fetched on first read). S3 credentials, endpoint and region come from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3 and AWS_REGION, as
    /// `fly storage create` sets them; BUCKETFS_S3_PATH_STYLE=1 for path-style addressing.
    #[arg(long, env = "BUCKETFS_BUCKET", value_name = "URL")]
    pub bucket: Option<String>,

    /// Time between checkpoints to the bucket (e.g. 500ms, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub checkpoint_interval: std::time::Duration,

    /// What fsync promises. local: on the local disk (a lost machine loses at most the last
    /// checkpoint interval). remote: also in the bucket (fsync waits for a checkpoint; needs
    /// --bucket).
    #[arg(long, value_enum, default_value_t = Durability::Local, env = "BUCKETFS_DURABILITY")]
    pub durability: Durability,

    /// Take the bucket over from a writer that did not stop cleanly. Only when that writer is
    /// gone: it is fenced at its next checkpoint, but two live writers are never right.
    #[arg(long)]
    pub takeover: bool,

    /// Paths never uploaded (repeatable). A glob without '/' matches any path component, one
    /// with '/' the whole path from the root. Default: pgsql_tmp, postmaster.pid,
    /// postmaster.opts.
    #[arg(long = "local-only", value_name = "GLOB")]
    pub local_only: Vec<String>,
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
