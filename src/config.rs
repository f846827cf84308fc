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

    /// Start a checkpoint before the interval is up once this much is dirty (e.g. 64M, 1G),
    /// so that a burst of writes goes up in pieces instead of one large checkpoint.
    #[arg(long, default_value = "256M", value_parser = parse_size, value_name = "BYTES")]
    pub checkpoint_dirty: u64,

    /// How page bytes are stored in the bucket's segments. Either kind reads back either.
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compression: Compression,

    /// What fsync promises. local: on the local disk (a lost machine loses at most the last
    /// checkpoint interval). remote: also in the bucket (fsync waits for a checkpoint; needs
    /// --bucket).
    #[arg(long, value_enum, default_value_t = Durability::Local, env = "BUCKETFS_DURABILITY")]
    pub durability: Durability,

    /// Take the bucket over from a writer that did not stop cleanly. Only when that writer is
    /// gone: it is fenced at its next checkpoint, but two live writers are never right.
    #[arg(long, conflicts_with = "read_only")]
    pub takeover: bool,

    /// Serve the bucket's latest checkpoint read-only: writes fail with EROFS, nothing is
    /// ever written to the bucket, and a live writer on the same prefix is left alone. The
    /// cache dir must be empty or one that a read-only mount of the same checkpoint left.
    #[arg(long)]
    pub read_only: bool,

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
