use std::process::ExitCode;

use anyhow::{bail, Context};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use bucketfs::bucket::{BucketSettings, BucketUrl, Takeover};
use bucketfs::checkpoint::{CheckpointSettings, GcSettings};
use bucketfs::config::{Command, Compression, Durability, LogFormat, MountArgs, RunArgs};
use bucketfs::gc::compact::CompactSettings;
use bucketfs::mount::{self, MountSettings};
use bucketfs::supervise::{self, InitdbSettings, Maker, RunSettings, User};

fn main() -> ExitCode {
    // Checkpoints allocate and free page runs of up to 256 KiB by the thousand; glibc keeps
    // freed heap of that size resident for good (about 1 GB after a large checkpoint, see
    // BENCHMARKS.md). Buffers from 128 KiB up get mappings of their own, returned on free.
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    let parsed = bucketfs::config::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let given = parsed.settings_line();
    let cli = parsed.cli;
    init_tracing(cli.log_format);
    if let Some(file) = &parsed.file {
        info!(config = %file.display(), "settings read from the config file (flags and BUCKETFS_* variables win over it)");
    }
    // wal-fetch runs every second under PostgreSQL, whose log gets its stderr: errors only.
    let quiet = matches!(cli.command, Command::WalFetch { .. });
    if !given.is_empty() && !quiet {
        info!(settings = %given, "settings");
    }
    let result = match &cli.command {
        Command::Mount(args) => mount_settings(args, bucket_url(args))
            .and_then(|s| mount::run(&s))
            .map(|()| 0),
        Command::Run(args) => run_settings(args).and_then(|s| supervise::run(&s)),
        Command::Checkpoint { cache_dir } => bucketfs::status::request_checkpoint(cache_dir)
            .map(|epoch| println!("checkpoint committed: epoch {epoch}"))
            .map(|()| 0),
        Command::Status { cache_dir, json } => bucketfs::status::request_status(cache_dir)
            .and_then(|s| {
                let mut out = std::io::stdout().lock();
                if *json {
                    serde_json::to_writer_pretty(&mut out, &s)?;
                    println!();
                } else {
                    bucketfs::status::print(&s, &mut out)?;
                }
                Ok(0)
            }),
        Command::Ls { bucket, last } => BucketUrl::parse(bucket)
            .and_then(|url| {
                bucketfs::admin::ls(&url, last.map(|n| n.get()), &mut std::io::stdout().lock())
            })
            .map(|()| 0),
        Command::Gc {
            bucket,
            dry_run,
            json,
            retention,
        } => BucketUrl::parse(bucket).and_then(|url| {
            let mut out = std::io::stdout().lock();
            bucketfs::admin::gc(&url, &retention.retention(), *dry_run, *json, &mut out)
        }),
        Command::WalFetch {
            cache_dir,
            bucket,
            wal_dir,
            file,
            dest,
        } => Ok(bucketfs::replica::wal::fetch_command(
            cache_dir.as_deref(),
            bucket.as_deref(),
            wal_dir,
            file,
            dest,
        )),
        Command::Verify { bucket } => BucketUrl::parse(bucket).and_then(|url| {
            let broken = bucketfs::admin::verify(&url, &mut std::io::stderr().lock())?;
            if broken.is_empty() {
                println!("bucket {url}: every segment, extent and catalog chunk checks out");
                return Ok(0);
            }
            for b in &broken {
                println!("BROKEN {b}");
            }
            anyhow::bail!("{} broken object(s) in {url}", broken.len())
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line on stderr, which is also where the logs go.
            eprintln!("bucketfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; log files and Fly's log shipper get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(NoLateInterruptAnswers))
        .init();
}

/// Drops fuser's error line for an answer to a FUSE_INTERRUPT the kernel no longer wanted.
/// A signal that reaches a process blocked in a request on the mount (PostgreSQL signals its
/// processes all the time) makes the kernel send FUSE_INTERRUPT; fuser answers it with ENOSYS,
/// and when the request itself was answered first the kernel knows no request by that number
/// and refuses the answer with ENOENT, which fuser logs as "Failed to send FUSE reply: No such
/// file or directory": over a hundred ERROR lines in a few minutes of pgbench under
/// `--durability remote`, for nothing that failed. A request bucketfs has not answered yet stays
/// known to the kernel until it is answered, so no other answer is refused so, except after
/// the connection was aborted (`umount -f`, `/sys/fs/fuse/connections/*/abort`), when every
/// answer is: the mount is gone then, and its end is logged on its own.
///
/// fuser logs through the `log` crate: its lines arrive as events of the target "log" with
/// the real target in the field `log.target`.
struct NoLateInterruptAnswers;

impl<S> tracing_subscriber::layer::Filter<S> for NoLateInterruptAnswers {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        #[derive(Default)]
        struct Line {
            from_reply: bool,
            refused: bool,
        }
        impl tracing::field::Visit for Line {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "log.target" => self.from_reply = value == FUSER_REPLY,
                    _ => self.record_debug(field, &value),
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let text = format!("{value:?}");
                    self.refused = text.starts_with("Failed to send FUSE reply")
                        && text.ends_with("(os error 2)");
                }
            }
        }
        const FUSER_REPLY: &str = "fuser::reply";
        let target = event.metadata().target();
        if target != "log" && target != FUSER_REPLY {
            return true;
        }
        let mut line = Line {
            from_reply: target == FUSER_REPLY,
            ..Line::default()
        };
        event.record(&mut line);
        !(line.from_reply && line.refused)
    }
}

/// The mount's settings, with the bucket (if any) already chosen.
fn mount_settings(args: &MountArgs, bucket: Option<String>) -> anyhow::Result<MountSettings> {
    if args.durability == Durability::Remote && bucket.is_none() {
        bail!("--durability remote needs a bucket (--bucket URL): there is nowhere remote to wait for");
    }
    if args.read_only && bucket.is_none() {
        bail!("--read-only needs a bucket (--bucket URL or BUCKET_NAME) to serve");
    }
    if args.cache_size.is_some() && bucket.is_none() {
        bail!("--cache-size needs a bucket (--bucket URL): without one, the cache dir is the only copy and nothing can be evicted");
    }
    if let Some(size) = args.cache_size {
        if size < 16 << 20 {
            bail!("--cache-size {size}: at least 16M (the cache works in 256 KiB chunks, and reads in flight need room)");
        }
    }
    if args.kernel_dirty != 0 && args.kernel_dirty < 16 << 20 {
        bail!(
            "--kernel-dirty {}: 0 (the kernel's own limit) or at least 16M",
            args.kernel_dirty
        );
    }
    if args.max_dirty < 16 << 20 {
        bail!(
            "--max-dirty {}: at least 16M (a single checkpoint's worth of writes must fit)",
            args.max_dirty
        );
    }
    if (args.bucket_wal.is_some() || args.bucket_data.is_some() || !args.region_hint.is_empty())
        && bucket.is_none()
    {
        bail!("--bucket-wal, --bucket-data and --region-hint place a bucket's objects: they need a bucket (--bucket URL or BUCKET_NAME)");
    }
    if args.wal_dir.is_absolute()
        || args
            .wal_dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        || args.wal_dir.as_os_str().is_empty()
    {
        bail!(
            "--wal-dir {}: a directory inside the mount, from its root (e.g. pg_wal)",
            args.wal_dir.display()
        );
    }
    if args.replica && bucket.is_none() {
        bail!("--replica needs a bucket (--bucket URL or BUCKET_NAME) to follow");
    }
    if args.replica && args.durability == Durability::Remote {
        bail!(
            "--replica never writes to the bucket, so --durability remote has nothing to wait for"
        );
    }
    if args.read_only && args.durability == Durability::Remote {
        bail!("--read-only takes no writes, so --durability remote has nothing to wait for");
    }
    let takeover = match (args.takeover, args.takeover_after) {
        (true, _) => Takeover::Always,
        (false, Some(after)) => Takeover::After(after),
        (false, None) => Takeover::Refuse,
    };
    let mut settings = MountSettings {
        mountpoint: args.mountpoint.clone(),
        cache_dir: args.cache_dir.clone(),
        allow_other: args.allow_other,
        root_uid: args.uid.as_deref().map(resolve_user).transpose()?,
        root_gid: args.gid.as_deref().map(resolve_group).transpose()?,
        fuse_threads: usize::from(args.fuse_threads),
        writeback_cache: !args.no_writeback_cache,
        kernel_dirty: args.kernel_dirty,
        read_only: args.read_only,
        cache_size: args.cache_size,
        max_dirty: args.max_dirty,
        metrics_addr: bucketfs::metrics::parse_addr(&args.metrics_addr, args.metrics_allow_remote)?,
        bucket: bucket
            .as_deref()
            .map(|url| -> anyhow::Result<BucketSettings> {
                let mut checkpoint = CheckpointSettings {
                    interval: args.checkpoint_interval,
                    dirty_trigger: args.checkpoint_dirty,
                    zstd_level: match args.compression {
                        Compression::None => None,
                        Compression::Zstd => Some(1),
                    },
                    // A writer that others may take over by age shows it is alive well
                    // within that age.
                    heartbeat: args.takeover_after.map(|a| a / 4),
                    ..CheckpointSettings::default()
                };
                checkpoint.gc = args.gc_interval.0.map(|interval| {
                    GcSettings::every(
                        interval,
                        args.retention.retention(),
                        (!args.no_compaction).then(CompactSettings::default),
                    )
                });
                if !args.local_only.is_empty() {
                    checkpoint.local_only = args.local_only.clone();
                }
                checkpoint.wal_dir = args.wal_dir.clone();
                let parse_class = |flag: &str, u: &Option<String>| {
                    u.as_deref()
                        .map(|u| BucketUrl::parse(u).with_context(|| format!("--{flag}")))
                        .transpose()
                };
                let mut placement = bucketfs::placement::Placement {
                    wal: parse_class("bucket-wal", &args.bucket_wal)?,
                    data: parse_class("bucket-data", &args.bucket_data)?,
                    ..Default::default()
                };
                placement.set_region_hints(&args.region_hint)?;
                Ok(BucketSettings {
                    url: BucketUrl::parse(url)?,
                    placement,
                    takeover,
                    read_only: args.read_only,
                    replica: args.replica.then(|| bucketfs::bucket::ReplicaSettings {
                        wal_dir: args.wal_dir.clone(),
                        wal_uid: None,
                        rebase: false,
                    }),
                    at: args.at,
                    remote_durability: args.durability == Durability::Remote,
                    checkpoint,
                })
            })
            .transpose()?,
    };
    // A replica answers WAL requests from root and from the mount's owner.
    let owner = settings.root_uid;
    if let Some(r) = settings.bucket.as_mut().and_then(|b| b.replica.as_mut()) {
        r.wal_uid = owner;
    }
    Ok(settings)
}

/// `--bucket`, or else s3://$BUCKET_NAME/DATABASE-NAME (`fly storage create` sets
/// BUCKET_NAME).
fn bucket_url(args: &MountArgs) -> Option<String> {
    args.bucket.clone().or_else(|| {
        let name = std::env::var("BUCKET_NAME")
            .ok()
            .filter(|n| !n.is_empty())?;
        let url = format!("s3://{name}/{}", args.database_name);
        info!(bucket = %url, "bucket from BUCKET_NAME and --database-name");
        Some(url)
    })
}

/// How often `run` looks for a takeover while it has nothing to commit. A HEAD each time:
/// about 260,000 a month, a few cents.
const RUN_WRITER_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

fn run_settings(args: &RunArgs) -> anyhow::Result<RunSettings> {
    let (m, r) = (&args.mount, &args.run);
    if m.read_only {
        bail!(
            "--read-only: `run` needs a writable mount (PostgreSQL writes to its data directory)"
        );
    }
    let user = User::lookup(&r.user)?;
    if user.uid == 0 {
        warn!("--user is root: PostgreSQL refuses to run as root");
    }
    let (program, args_) = args.program.split_first().expect("clap requires a program");
    let mut program_line = vec![supervise::resolve_program(program)?];
    program_line.extend(args_.iter().cloned());
    if m.replica && r.initdb {
        bail!("--initdb with --replica: a replica serves the primary's database, never a new one");
    }
    if !r.initdb && (!r.initdb_arg.is_empty() || !r.pg_conf.is_empty()) {
        bail!("--initdb-arg and --pg-conf apply to initdb: they need --initdb");
    }
    let initdb = r
        .initdb
        .then(|| -> anyhow::Result<InitdbSettings> {
            let maker = match &r.initdb_command {
                Some(command) => Maker::Command(command_path(command, &user)?),
                None => Maker::Initdb(find_initdb(r.pg_bin.as_deref(), &program_line[0])?),
            };
            Ok(InitdbSettings {
                maker,
                args: r.initdb_arg.clone(),
                conf: r.pg_conf.clone(),
            })
        })
        .transpose()?;
    let bucket = match bucket_url(m) {
        Some(url) => url,
        None => {
            let dir = std::path::absolute(&m.cache_dir)
                .with_context(|| format!("resolve --cache-dir {}", m.cache_dir.display()))?
                .join("bucket");
            let url = format!("file://{}", dir.display());
            warn!(bucket = %url, "no bucket configured (--bucket, BUCKET_NAME): the directory `bucket` in the cache dir is the bucket. For trying bucketfs out only: it shares the cache dir's disk, so losing that disk loses both");
            url
        }
    };
    let mut mount = mount_settings(m, Some(bucket))?;
    // The program runs as --user: the mount's root is its, and other users may enter.
    mount.allow_other = true;
    mount.root_uid = mount.root_uid.or(Some(user.uid));
    mount.root_gid = mount.root_gid.or(Some(user.gid));
    if let Some(b) = &mut mount.bucket {
        b.checkpoint.writer_check = Some(RUN_WRITER_CHECK);
        if let Some(r) = &mut b.replica {
            r.wal_uid = Some(user.uid);
        }
    }
    Ok(RunSettings {
        mount,
        program: program_line,
        user,
        initdb,
        stop_timeout: r.stop_timeout,
        primary_conninfo: r.primary_conninfo.clone(),
    })
}

/// `--initdb-command`: a path (made absolute: it runs from `/`) or a name on PATH, which must
/// be there and executable by --user now rather than at the first start of a new database.
fn command_path(command: &std::path::Path, user: &User) -> anyhow::Result<std::path::PathBuf> {
    let path = if command.as_os_str().as_encoded_bytes().contains(&b'/') {
        std::path::PathBuf::from(supervise::resolve_program(command.as_os_str())?)
    } else {
        supervise::on_path(&command.to_string_lossy())
            .ok_or_else(|| anyhow::anyhow!("--initdb-command: no {} on PATH", command.display()))?
    };
    if !path.is_file() {
        bail!("--initdb-command: {} is not a file", path.display());
    }
    if !user.can_execute(&path) {
        bail!(
            "--initdb-command: {} cannot execute {}",
            user.name,
            path.display()
        );
    }
    Ok(path)
}

/// initdb: in --pg-bin, else beside the program when it is a path, else on PATH.
fn find_initdb(
    pg_bin: Option<&std::path::Path>,
    program: &std::ffi::OsStr,
) -> anyhow::Result<std::path::PathBuf> {
    let program = std::path::Path::new(program);
    let (path, whence) = match pg_bin {
        Some(dir) => (dir.join("initdb"), "in --pg-bin"),
        None if program.is_absolute() => (
            program
                .parent()
                .unwrap_or(std::path::Path::new("/"))
                .join("initdb"),
            "beside the program",
        ),
        None => (
            supervise::on_path("initdb").ok_or_else(|| {
                anyhow::anyhow!(
                    "--initdb: no initdb on PATH; give --pg-bin DIR (the PostgreSQL bin directory)"
                )
            })?,
            "on PATH",
        ),
    };
    if !path.is_file() {
        bail!(
            "--initdb: no initdb {whence} ({}); give --pg-bin DIR (the PostgreSQL bin directory)",
            path.display()
        );
    }
    Ok(path)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// fuser's line for a refused answer to an interrupt is dropped; its other failed answers,
    /// and everything else, are logged. fuser logs through the `log` crate, so its lines are
    /// sent as `log` records, as the `log` bridge the subscriber installs turns them into events.
    #[test]
    fn only_the_refused_answer_to_an_interrupt_is_dropped() {
        let lines = Lines::default();
        let writer = lines.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(super::NoLateInterruptAnswers);
        let subscriber = tracing_subscriber::registry().with(fmt);
        let log = |target: &str, args: std::fmt::Arguments<'_>| {
            tracing_log::format_trace(
                &tracing_log::log::Record::builder()
                    .target(target)
                    .level(tracing_log::log::Level::Error)
                    .args(args)
                    .build(),
            )
            .unwrap();
        };
        tracing::subscriber::with_default(subscriber, || {
            let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
            let eio = std::io::Error::from_raw_os_error(libc::EIO);
            log(
                "fuser::reply",
                format_args!("Failed to send FUSE reply: {enoent}"),
            );
            log(
                "fuser::reply",
                format_args!("Failed to send FUSE reply: {eio}"),
            );
            log(
                "fuser::session",
                format_args!("Failed to send FUSE reply: {enoent}"),
            );
            tracing::error!(target: "bucketfs::fuse", "read failed: {enoent}");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let kept: Vec<&str> = text.lines().collect();
        assert_eq!(kept.len(), 3, "{text}");
        assert!(kept[0]
            .contains("fuser::reply: Failed to send FUSE reply: Input/output error (os error 5)"));
        assert!(kept[1].contains("fuser::session: Failed to send FUSE reply: No such file"));
        assert!(kept[2].contains("read failed: No such file or directory (os error 2)"));
    }
}
