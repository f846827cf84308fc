use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use bucketfs::bucket::{BucketSettings, BucketUrl};
use bucketfs::checkpoint::CheckpointSettings;
use bucketfs::config::{Cli, Command, Compression, Durability, LogFormat, MountArgs};
use bucketfs::mount::{self, MountSettings};

fn main() -> ExitCode {
    // Checkpoints allocate and free page runs of up to 256 KiB by the thousand; glibc keeps
    // freed heap of that size resident for good (about 1 GB after a large checkpoint, see
    // BENCHMARKS.md). Buffers from 128 KiB up get mappings of their own, returned on free.
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match &cli.command {
        Command::Mount(args) => mount_settings(args).and_then(|s| mount::run(&s)),
        Command::Checkpoint { cache_dir } => bucketfs::status::request_checkpoint(cache_dir)
            .map(|epoch| println!("checkpoint committed: epoch {epoch}")),
        Command::Status { cache_dir, json } => bucketfs::status::request_status(cache_dir)
            .and_then(|s| {
                let mut out = std::io::stdout().lock();
                if *json {
                    serde_json::to_writer_pretty(&mut out, &s)?;
                    println!();
                } else {
                    bucketfs::status::print(&s, &mut out)?;
                }
                Ok(())
            }),
        Command::Ls { bucket } => BucketUrl::parse(bucket)
            .and_then(|url| bucketfs::admin::ls(&url, &mut std::io::stdout().lock())),
        Command::Verify { bucket } => BucketUrl::parse(bucket).and_then(|url| {
            let broken = bucketfs::admin::verify(&url, &mut std::io::stderr().lock())?;
            if broken.is_empty() {
                println!("bucket {url}: every segment and extent checks out");
                return Ok(());
            }
            for b in &broken {
                println!("BROKEN {b}");
            }
            anyhow::bail!("{} broken object(s) in {url}", broken.len())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, which is also where the logs go.
            eprintln!("bucketfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; log files and Fly's log shipper get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn mount_settings(args: &MountArgs) -> anyhow::Result<MountSettings> {
    if args.durability == Durability::Remote && bucket_url(args).is_none() {
        bail!("--durability remote needs a bucket (--bucket URL): there is nowhere remote to wait for");
    }
    if args.read_only && bucket_url(args).is_none() {
        bail!("--read-only needs a bucket (--bucket URL or BUCKET_NAME) to serve");
    }
    if args.cache_size.is_some() && bucket_url(args).is_none() {
        bail!("--cache-size needs a bucket (--bucket URL): without one, the cache dir is the only copy and nothing can be evicted");
    }
    if let Some(size) = args.cache_size {
        if size < 16 << 20 {
            bail!("--cache-size {size}: at least 16M (the cache works in 256 KiB chunks, and reads in flight need room)");
        }
    }
    if args.max_dirty < 16 << 20 {
        bail!(
            "--max-dirty {}: at least 16M (a single checkpoint's worth of writes must fit)",
            args.max_dirty
        );
    }
    if args.read_only && args.durability == Durability::Remote {
        bail!("--read-only takes no writes, so --durability remote has nothing to wait for");
    }
    Ok(MountSettings {
        mountpoint: args.mountpoint.clone(),
        cache_dir: args.cache_dir.clone(),
        allow_other: args.allow_other,
        root_uid: args.uid.as_deref().map(resolve_user).transpose()?,
        root_gid: args.gid.as_deref().map(resolve_group).transpose()?,
        fuse_threads: usize::from(args.fuse_threads),
        writeback_cache: !args.no_writeback_cache,
        read_only: args.read_only,
        cache_size: args.cache_size,
        max_dirty: args.max_dirty,
        metrics_addr: bucketfs::metrics::parse_addr(&args.metrics_addr, args.metrics_allow_remote)?,
        bucket: bucket_url(args)
            .as_deref()
            .map(|url| -> anyhow::Result<BucketSettings> {
                let mut checkpoint = CheckpointSettings {
                    interval: args.checkpoint_interval,
                    dirty_trigger: args.checkpoint_dirty,
                    zstd_level: match args.compression {
                        Compression::None => None,
                        Compression::Zstd => Some(1),
                    },
                    ..CheckpointSettings::default()
                };
                if !args.local_only.is_empty() {
                    checkpoint.local_only = args.local_only.clone();
                }
                Ok(BucketSettings {
                    url: BucketUrl::parse(url)?,
                    takeover: args.takeover,
                    read_only: args.read_only,
                    remote_durability: args.durability == Durability::Remote,
                    checkpoint,
                })
            })
            .transpose()?,
    })
}

/// `--bucket`, or else the bucket that `fly storage create` names in BUCKET_NAME.
fn bucket_url(args: &MountArgs) -> Option<String> {
    args.bucket.clone().or_else(|| {
        std::env::var("BUCKET_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .map(|n| format!("s3://{n}/"))
    })
}

/// A user name or number → uid.
fn resolve_user(name: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).context("user name has a NUL byte")?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read before any other
    // call that could overwrite it.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        bail!("--uid: no such user {name:?}");
    }
    Ok(unsafe { (*pw).pw_uid })
}

/// A group name or number → gid.
fn resolve_group(name: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).context("group name has a NUL byte")?;
    // SAFETY: as for getpwnam.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        bail!("--gid: no such group {name:?}");
    }
    Ok(unsafe { (*gr).gr_gid })
}
