//! `bucketfs mount`: check the mountpoint, open the cache dir, serve FUSE until a signal, then
//! unmount and make everything durable.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tracing::{error, info, warn};

use crate::cache::CacheDir;
use crate::fs::{Fs, FsOptions, PAGE_SIZE};
use crate::fuse::{FuseFs, FuseSettings};
use crate::status::{Status, StatusFn};

/// Everything `mount` needs, resolved from the command line.
#[derive(Clone, Debug)]
pub struct MountSettings {
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub allow_other: bool,
    pub root_uid: Option<u32>,
    pub root_gid: Option<u32>,
    pub fuse_threads: usize,
    pub writeback_cache: bool,
    /// `--kernel-dirty`: bytes written to the mount the kernel may hold (0: its own limit).
    pub kernel_dirty: u64,
    /// The kernel refuses every change with EROFS (`--read-only`).
    pub read_only: bool,
    pub bucket: Option<crate::bucket::BucketSettings>,
    /// `--cache-size`: bound on clean cached bytes (None: unbounded).
    pub cache_size: Option<u64>,
    /// `--max-dirty`: writers wait past this many bytes not yet in the bucket.
    pub max_dirty: u64,
    /// `--metrics-addr` (None: off).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The source the kernel shows for our mounts (`fsname`).
const FS_NAME: &str = "bucketfs";

/// What /proc/self/mountinfo says is mounted at a path.
struct MountedFs {
    /// MAJOR:MINOR of the filesystem's device (for FUSE, also the name of its bdi).
    dev: String,
    fs_type: String,
    source: String,
}

impl MountedFs {
    fn is_bucketfs(&self) -> bool {
        self.fs_type.starts_with("fuse") && self.source == FS_NAME
    }
}

/// `bucketfs mount`: mounts, then serves until SIGINT or SIGTERM, then unmounts and makes
/// everything durable.
pub fn run(settings: &MountSettings) -> anyhow::Result<()> {
    // Signals are taken by one thread with sigwait. Block them before any thread starts
    // (RocksDB starts its own), so that every thread inherits the mask and none dies of them.
    let signals = block_signals(&[libc::SIGINT, libc::SIGTERM]);
    let mut mounted = start(settings)?;
    let watcher_mountpoint = mounted.mountpoint().to_owned();
    let unmounter = mounted.unmounter();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_and_unmount(signals, &watcher_mountpoint, unmounter))
        .context("start signal thread")?;
    mounted.serve()
}

/// A filesystem the kernel has mounted; requests queue until `serve` runs the session.
pub struct Mounted {
    session: Session<FuseFs>,
    mountpoint: PathBuf,
    fs: Arc<Fs>,
    attached: Option<crate::bucket::Attached>,
    evictor: Option<crate::fs::Evictor>,
    socket: PathBuf,
    /// Set when the FUSE session stops serving requests (before the final checkpoint).
    requests_ended: Arc<std::sync::atomic::AtomicBool>,
}

/// Opens the cache dir, attaches the bucket, serves status and metrics, and mounts. The
/// caller blocks the signals it wants to take before calling this, as threads start here.
pub fn start(settings: &MountSettings) -> anyhow::Result<Mounted> {
    let mountpoint = check_mountpoint(&settings.mountpoint)?;
    raise_fd_limit();
    // A writer's S3 bucket is read beside the cache dir's opening; `attach` waits for it.
    let opening = settings.bucket.as_ref().and_then(crate::bucket::begin_open);
    let open = || -> anyhow::Result<Arc<Fs>> {
        let cache = CacheDir::open(&settings.cache_dir, PAGE_SIZE)?;
        let options = FsOptions {
            root_uid: settings.root_uid,
            root_gid: settings.root_gid,
        };
        Ok(Arc::new(
            Fs::new(cache, &options).context("open filesystem")?,
        ))
    };
    let mut fs = open()?;
    // A replica's cache dir holds only what the replica made of its base: dropped when the
    // replica moves to a newer base or becomes the writer.
    if let Some(why) = settings
        .bucket
        .as_ref()
        .map(|b| crate::bucket::must_start_afresh(&fs, b))
        .transpose()?
        .flatten()
    {
        warn!(cache_dir = %settings.cache_dir.display(), "{why}: the replica's local layer is dropped");
        drop(fs);
        CacheDir::wipe(&settings.cache_dir).context("empty the replica's cache dir")?;
        fs = open()?;
    }

    // Bounded before the bucket is attached, so that a restore's prefetch is counted.
    let evictor = settings
        .cache_size
        .map(|capacity| fs.bound_cache(capacity))
        .transpose()
        .context("bound the cache")?;
    let attached = settings
        .bucket
        .as_ref()
        .map(|b| crate::bucket::attach(&fs, b, opening))
        .transpose()?;
    let probe = attached.as_ref().map(|a| a.probe());
    let checkpointer = probe.as_ref().and_then(|p| p.checkpointer());
    if let Some(cp) = &checkpointer {
        let weak = Arc::downgrade(cp);
        fs.set_max_dirty(
            settings.max_dirty,
            Box::new(move || {
                if let Some(cp) = weak.upgrade() {
                    cp.request();
                }
            }),
        );
    }
    // The status knows the metrics address, and the metrics endpoint serves the status: bind
    // first, serve once the status can be built.
    let metrics_listener = settings
        .metrics_addr
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("--metrics-addr {addr}: cannot listen"))
        })
        .transpose()?;
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .transpose()
        .context("metrics listener")?;
    let status: StatusFn = {
        let (fs, started) = (fs.clone(), std::time::Instant::now());
        let (mountpoint, read_only) = (mountpoint.display().to_string(), settings.read_only);
        Arc::new(move || Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            mountpoint: mountpoint.clone(),
            cache_dir: fs.root().display().to_string(),
            uptime_seconds: started.elapsed().as_secs(),
            metrics_addr: metrics_addr.clone(),
            read_only,
            fenced: fs.is_fenced(),
            cache_failed: fs.cache_failed(),
            stopped: fs.stop_report().map(|(cause, why)| cause.describe(why)),
            rpo_ms: fs.rpo_ms(),
            fs: crate::status::fs_status(&fs),
            cache: fs.cache_usage(),
            bucket: probe.as_ref().map(|p| p.status()),
        })
    };
    let checkpoint = checkpointer.map(|cp| -> crate::status::CheckpointFn {
        Arc::new(move || match cp.checkpoint(false) {
            Ok(Some(o)) => Ok(o.epoch),
            Ok(None) => Ok(cp.view().read().epoch),
            Err(e) => Err(e.to_string()),
        })
    });
    let socket = crate::status::serve_control(fs.root(), status.clone(), checkpoint)?;
    if let Some(listener) = metrics_listener {
        crate::metrics::serve(listener, status)?;
    }

    let mut options = vec![
        MountOption::FSName(FS_NAME.into()),
        MountOption::Subtype("bucketfs".into()),
        // The kernel checks permissions from the modes we report, as for a local disk.
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if settings.read_only {
        // The kernel answers every write, create, rename, chmod... with EROFS itself; none
        // reaches the filesystem.
        options.push(MountOption::RO);
    }
    let acl = if settings.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    if settings.allow_other {
        options.push(MountOption::CUSTOM("allow_other".into()));
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = acl;
    config.n_threads = Some(settings.fuse_threads);
    config.clone_fd = true;
    let adapter = FuseFs::new(
        fs.clone(),
        FuseSettings {
            writeback_cache: settings.writeback_cache,
        },
    );
    let session = Session::new(adapter, &mountpoint, &config)
        .with_context(|| format!("mount {}", mountpoint.display()))?;
    if settings.writeback_cache && !settings.read_only && settings.kernel_dirty > 0 {
        set_kernel_dirty_limit(&mountpoint, settings.kernel_dirty);
    }
    info!(mountpoint = %mountpoint.display(), cache_dir = %fs.root().display(), "mounted");
    Ok(Mounted {
        session,
        mountpoint,
        fs,
        attached,
        evictor,
        socket,
        requests_ended: Arc::default(),
    })
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn fs(&self) -> Arc<Fs> {
        self.fs.clone()
    }

    /// The bucket's writer, if this mount is one.
    pub fn checkpointer(&self) -> Option<Arc<crate::checkpoint::Checkpointer>> {
        self.attached
            .as_ref()
            .and_then(|a| a.probe().checkpointer())
    }

    /// The bucket attached, if any.
    pub fn attached(&self) -> Option<&crate::bucket::Attached> {
        self.attached.as_ref()
    }

    /// What ends the session from another thread.
    pub fn unmounter(&mut self) -> SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Set once the session has stopped serving requests: the mount is gone or its
    /// connection aborted, whoever did it (the final checkpoint comes after).
    pub fn requests_ended(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.requests_ended.clone()
    }

    /// Serves requests until the filesystem is unmounted, then takes the final checkpoint,
    /// makes the cache dir durable, and waits for a GC pass under way (which deletes nothing
    /// more).
    pub fn serve(self) -> anyhow::Result<()> {
        let Mounted {
            session,
            fs,
            attached,
            evictor,
            socket,
            requests_ended,
            ..
        } = self;
        let served = session_end(session.run());
        requests_ended.store(true, std::sync::atomic::Ordering::Release);
        let _ = std::fs::remove_file(&socket);
        // Whatever ended the session, the final checkpoint and the sync still run: after a
        // stop signal there is no later chance to take them, and an error serving requests is
        // no reason to leave the bucket without the last changes.
        if let Err(e) = &served {
            error!(error = %e, "serving FUSE requests failed; taking the final checkpoint and syncing anyway");
        }
        let mut attached = attached;
        let last = attached.as_mut().map(|a| a.final_checkpoint()).transpose();
        if let Some(e) = evictor {
            e.finish();
        }
        info!(
            bytes_written = fs
                .stats()
                .bytes_written
                .load(std::sync::atomic::Ordering::Relaxed),
            "unmounted; syncing cache dir"
        );
        let synced = fs.shutdown().context("sync cache dir at unmount");
        // Last, a GC pass under way: the bucket and the cache dir have all they need by now,
        // so a kill while it ends costs only the pass.
        if let Some(a) = attached {
            a.close();
        }
        synced?;
        served.context("serve FUSE requests")?;
        last?;
        info!("stopped cleanly");
        Ok(())
    }
}

/// What the end of the FUSE session means for the exit. An unmount (ours after a stop signal,
/// a lazy one when the last file closes, or `umount` by hand) ends every request thread's read
/// of /dev/fuse with ENODEV, which fuser counts as the end. But the kernel tears the connection
/// down in two steps (`fuse_abort_conn` closes the per-thread queues before the input queue),
/// and a thread that takes a request between them gets ECONNABORTED instead ("must not put
/// request on fpq->io queue after having been shut down"). fuser 0.18 returns that as the
/// session's error; it is the same end, and more likely the busier the machine.
fn session_end(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            info!("the kernel aborted the FUSE connection while a request was being read: the unmount has ended the session");
            Ok(())
        }
        other => other,
    }
}

/// Checks that `path` can be mounted on, clearing a dead bucketfs mount left by a crash.
fn check_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    match fs::metadata(path) {
        Ok(m) if !m.is_dir() => bail!("mountpoint {} is not a directory", path.display()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!(
                "mountpoint {} does not exist; create an empty directory first",
                path.display()
            )
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            // A bucketfs that died (kill -9, OOM) leaves its mount behind, answering ENOTCONN.
            let abs = absolute(path)?;
            match mounted_at(&abs)? {
                Some(m) if m.is_bucketfs() => {
                    warn!(mountpoint = %abs.display(), "detaching the dead mount of a bucketfs that stopped without unmounting");
                    detach(&abs).with_context(|| format!("detach dead mount {}", abs.display()))?;
                }
                _ => bail!(
                    "mountpoint {} is a disconnected mount of another filesystem; unmount it first",
                    path.display()
                ),
            }
        }
        Err(e) => return Err(e).with_context(|| format!("stat mountpoint {}", path.display())),
    }
    let abs = path
        .canonicalize()
        .with_context(|| format!("resolve mountpoint {}", path.display()))?;
    if let Some(m) = mounted_at(&abs)? {
        // A stat can be answered from attributes the kernel cached (for a day) before the
        // bucketfs behind the mount died; opening the directory always asks the daemon.
        let dead = matches!(fs::read_dir(&abs), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
        if m.is_bucketfs() && dead {
            warn!(mountpoint = %abs.display(), "detaching the dead mount of a bucketfs that stopped without unmounting");
            detach(&abs).with_context(|| format!("detach dead mount {}", abs.display()))?;
            return check_mountpoint(path);
        }
        bail!(
            "mountpoint {} is already mounted ({} from {}); unmount it first",
            abs.display(),
            m.fs_type,
            m.source
        );
    }
    let mut entries =
        fs::read_dir(&abs).with_context(|| format!("list mountpoint {}", abs.display()))?;
    if entries.next().is_some() {
        bail!(
            "mountpoint {} is not empty; bucketfs would hide its contents. Use an empty directory",
            abs.display()
        );
    }
    Ok(abs)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir().context("current dir")?.join(path))
}

/// The filesystem mounted exactly at `path`, if any (from /proc/self/mountinfo).
fn mounted_at(path: &Path) -> anyhow::Result<Option<MountedFs>> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let want = path.as_os_str().as_bytes();
    let mut found = None;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount: Vec<&str> = left.split(' ').collect();
        let (Some(dev), Some(point)) = (mount.get(2), mount.get(4)) else {
            continue;
        };
        if unescape_mountinfo(point) == want {
            // The last match is the one on top.
            let mut super_block = right.split(' ');
            found = Some(MountedFs {
                dev: (*dev).to_owned(),
                fs_type: super_block.next().unwrap_or_default().to_owned(),
                source: super_block.next().unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// `--kernel-dirty`: lets the kernel hold up to about `limit` bytes written to the mount in its
/// page cache before writeback must send them to us. Its own limit for a FUSE mount is 1% of
/// its dirty limit (about 50 MB on a 24 GiB machine), enforced even when the machine holds
/// little dirty data (the bdi's strict limit): close to it a writer waits while its pages
/// reach us, random ones in small requests (docs/fuse-options.md). The kernel keeps the limit
/// as a share of its dirty limit at this moment, so the bytes move with free memory later, and
/// it is a ceiling on the mount's share of writeback, not a reservation; the strict limit
/// stays. Failing to set it (no root, a read-only /sys in a container, a kernel before 6.2
/// for `max_bytes`) costs speed, not correctness, so it is a warning.
fn set_kernel_dirty_limit(mountpoint: &Path, limit: u64) {
    let set = mounted_at(mountpoint).and_then(|m| {
        let m = m.context("the new mount is not in /proc/self/mountinfo")?;
        let threshold = dirty_threshold().context("read the kernel's dirty limit")?;
        let bdi = Path::new("/sys/class/bdi").join(&m.dev);
        set_bdi_max(&bdi, limit, threshold)
    });
    match set {
        Ok(BdiMax::Bytes(bytes)) => info!(
            bytes,
            "the kernel may hold up to about this much written to the mount before sending it (--kernel-dirty)"
        ),
        Ok(BdiMax::HalfDirtyLimit(bytes)) => info!(
            asked = limit,
            bytes,
            "--kernel-dirty is more than half the kernel's dirty limit: the mount may hold half of it"
        ),
        Ok(BdiMax::KernelsOwn(bytes)) => info!(
            asked = limit,
            bytes,
            "--kernel-dirty is less than the kernel's own limit for the mount, which stays"
        ),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "--kernel-dirty: could not set the kernel's limit on data written to the mount and not yet sent to bucketfs (needs root and a writable /sys); writes past 1% of the kernel's dirty limit wait for bucketfs. --kernel-dirty 0 leaves the kernel's limit without trying")
        }
    }
}

/// What a bdi's dirty limit was set to, in bytes at the time.
#[derive(Debug, PartialEq)]
enum BdiMax {
    Bytes(u64),
    /// Half of the kernel's dirty limit, as the bytes asked for were more: at most half, so
    /// that the other half stays for the cache dir's disk, where bucketfs writes what the
    /// mount sends it.
    HalfDirtyLimit(u64),
    /// The kernel's own limit (1% of its dirty limit) was already more than asked.
    KernelsOwn(u64),
}

/// Sets the most dirty data the bdi at `bdi` (a /sys/class/bdi directory) may hold to `bytes`
/// (within 1% to 50% of `threshold`, the kernel's dirty limit in bytes).
fn set_bdi_max(bdi: &Path, bytes: u64, threshold: u64) -> anyhow::Result<BdiMax> {
    // Opened without O_CREAT: a kernel without the file answers ENOENT, not EACCES.
    let write = |name: &str, value: &str| -> anyhow::Result<()> {
        let path = bdi.join(name);
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .with_context(|| format!("write {value} to {}", path.display()))
    };
    // The kernel keeps the bytes as a share of its dirty limit (a share above 100% is EINVAL).
    if bytes > threshold / 2 {
        write("max_ratio", "50")?;
        return Ok(BdiMax::HalfDirtyLimit(threshold / 2));
    }
    if bytes <= threshold / 100 {
        return Ok(BdiMax::KernelsOwn(threshold / 100));
    }
    write("max_bytes", &bytes.to_string())?;
    Ok(BdiMax::Bytes(bytes))
}

/// The kernel's dirty limit in bytes (`nr_dirty_threshold` in /proc/vmstat, in pages).
fn dirty_threshold() -> io::Result<u64> {
    let vmstat = fs::read_to_string("/proc/vmstat")?;
    let pages = vmstat_value(&vmstat, "nr_dirty_threshold")
        .ok_or_else(|| io::Error::other("/proc/vmstat has no nr_dirty_threshold"))?;
    // SAFETY: sysconf has no preconditions.
    let kernel_page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    Ok(pages.saturating_mul(kernel_page))
}

/// The value of `key` in the text of /proc/vmstat.
fn vmstat_value(vmstat: &str, key: &str) -> Option<u64> {
    vmstat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

fn detach(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks `signals` in the calling thread (and so in every thread it starts from now on), and
/// returns them as a set for sigwait.
pub fn block_signals(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT/SIGTERM and unmounts; the FUSE session then ends and `run` goes on to
/// the final sync.
fn wait_and_unmount(set: libc::sigset_t, mountpoint: &Path, mut unmounter: SessionUnmounter) {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid out-parameter.
    while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
    info!(signal = sig, "stopping: unmounting");
    if unmount(&mut unmounter) == Unmount::Busy {
        warn!(mountpoint = %mountpoint.display(), "mount is busy; detaching it lazily, bucketfs exits when the last file on it is closed");
        detach_lazily(mountpoint);
    }
}

/// Detaches a busy mount: it goes on serving the processes that have files on it, and the
/// session ends when they close them.
fn detach_lazily(mountpoint: &Path) {
    if let Err(e) = detach(mountpoint) {
        warn!(error = %e, "lazy unmount failed");
    }
}

/// `detach_lazily`, if a bucketfs is what is mounted at `mountpoint`.
pub fn detach_bucketfs_lazily(mountpoint: &Path) {
    if mounted_at(mountpoint)
        .ok()
        .flatten()
        .is_some_and(|m| m.is_bucketfs())
    {
        detach_lazily(mountpoint);
    }
}

/// What an unmount did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmount {
    /// Unmounted: the FUSE session is ending.
    Done,
    /// A process has a file or its working directory on the mount: still mounted.
    Busy,
    /// Not mounted at the path any more: someone else unmounted it (the session is ending
    /// on its own), or detached it lazily (it serves the processes still in it).
    Gone,
}

/// Unmounts, which ends the FUSE session; a mount still in use stays mounted (`Busy`).
pub fn unmount(unmounter: &mut SessionUnmounter) -> Unmount {
    match unmounter.unmount() {
        Ok(()) => Unmount::Done,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Unmount::Busy,
        Err(e) => {
            warn!(error = %e, "unmount failed: someone else unmounted or detached the mount");
            Unmount::Gone
        }
    }
}

/// The FUSE connection of a mount, found once it serves: its device, and its abort file
/// in /sys/fs/fuse/connections held open. A write to that file aborts this connection and
/// no other: once the connection is gone the kernel unhooks the open file from it, while a
/// later mount may reuse its number.
pub struct Connection {
    mountpoint: PathBuf,
    /// The minor number of its device (FUSE mounts have major 0).
    minor: u32,
    abort: Option<fs::File>,
}

/// Where the fusectl filesystem lives.
const FUSECTL: &str = "/sys/fs/fuse/connections";
/// fusectl's statfs magic.
const FUSECTL_MAGIC: i64 = 0x6573_5543;

impl Connection {
    /// The connection serving `mountpoint`, with its abort file if fusectl can be reached
    /// (mounted at /sys/fs/fuse/connections if it is not there yet: a plain Linux boot
    /// mounts it, a Fly Machine's init may not; a read-only /sys, as in a container that is
    /// not privileged, leaves none).
    pub fn of(mountpoint: &Path) -> Option<Connection> {
        use std::os::unix::fs::MetadataExt;
        let dev = fs::metadata(mountpoint).ok()?.dev();
        if libc::major(dev) != 0 {
            return None;
        }
        let minor = libc::minor(dev);
        if !is_fusectl(FUSECTL) {
            let dir = CString::new(FUSECTL).ok()?;
            // SAFETY: valid C strings; no data argument.
            let r = unsafe {
                libc::mount(
                    c"fusectl".as_ptr(),
                    dir.as_ptr(),
                    c"fusectl".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            };
            match r {
                0 => info!(
                    at = FUSECTL,
                    "mounted fusectl, to abort a mount kept busy at the stop"
                ),
                _ => {
                    info!(error = %io::Error::last_os_error(), at = FUSECTL, "cannot mount fusectl (a read-only /sys?): a mount kept busy at the stop can only be forced by its path")
                }
            }
        }
        let path = Path::new(FUSECTL).join(minor.to_string()).join("abort");
        let abort = fs::OpenOptions::new().write(true).open(&path);
        if let Err(e) = &abort {
            info!(error = %e, path = %path.display(), "no fusectl abort file for this mount: a mount kept busy at the stop can only be forced by its path");
        }
        Some(Connection {
            mountpoint: mountpoint.to_owned(),
            minor,
            abort: abort.ok(),
        })
    }

    /// Whether the mount at the path is still this connection (from mountinfo: a stat of
    /// an aborted mount fails, and of a detached one reaches what is underneath).
    pub fn mounted(&self) -> bool {
        connection_at(&self.mountpoint, self.minor)
    }

    /// Another attempt at unmounting after `Busy`, by path: only while the mount there is
    /// still this one (after someone else detached it, the path leads to what is underneath).
    pub fn unmount_again(&self) -> bool {
        if !self.mounted() {
            return false;
        }
        let Ok(c) = CString::new(self.mountpoint.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `c` is a valid C string.
        unsafe { libc::umount2(c.as_ptr(), 0) == 0 }
    }

    /// Writes back what the kernel holds dirty for the mount, waiting at most `within`: a
    /// FUSE server that cannot answer (writers held back by `--max-dirty` while the bucket
    /// is unreachable) would hold it for good. syncfs of the mount, reached by its path, or
    /// once someone else detached it through a process still in it (`a_way_in`); sync(2),
    /// which reaches every mount, if none is found or it cannot be opened. The search runs
    /// within the bound too. Returns whether it finished.
    pub fn sync_within(&self, within: std::time::Duration) -> bool {
        let (mountpoint, minor) = (self.mountpoint.clone(), self.minor);
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("sync-busy-mount".into())
            .spawn(move || {
                let file = a_way_in(&mountpoint, minor).and_then(|path| {
                    use std::os::unix::fs::OpenOptionsExt;
                    fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                        .open(path)
                        .ok()
                });
                let r = match file {
                    Some(file) => {
                        use std::os::fd::AsRawFd;
                        // SAFETY: syncfs on a descriptor this closure owns.
                        match unsafe { libc::syncfs(file.as_raw_fd()) } {
                            0 => Ok(()),
                            _ => Err(io::Error::last_os_error()),
                        }
                    }
                    None => {
                        // SAFETY: sync has no arguments and no memory effects.
                        unsafe { libc::sync() };
                        Ok(())
                    }
                };
                let _ = done.send(r);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the sync of the busy mount");
            return false;
        }
        match finished.recv_timeout(within) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!(error = %e, "syncfs of the busy mount failed");
                false
            }
            Err(_) => {
                warn!(
                    within_s = within.as_secs(),
                    "the sync of the busy mount did not finish in time"
                );
                false
            }
        }
    }

    /// Ends the connection now: every file still open on the mount fails from then on, a
    /// sync waiting on it returns, and the session ends. Through the abort file; without
    /// one, a forced unmount (FUSE aborts its connection for MNT_FORCE before the kernel
    /// finds the mount busy) while the mount at the path is this one. Then the mount is
    /// detached if it is still there. Returns whether the connection was aborted.
    pub fn abort(&self) -> bool {
        let aborted = match self.abort.as_ref().map(|mut f| {
            use std::io::Write as _;
            f.write_all(b"1")
        }) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                warn!(error = %e, "writing the fusectl abort file failed");
                false
            }
            None => false,
        };
        let forced = !aborted && self.mounted() && {
            let c = CString::new(self.mountpoint.as_os_str().as_bytes()).ok();
            // SAFETY: `c` is a valid C string. EBUSY is expected (the connection is aborted
            // first); EPERM (a user namespace) means it was not.
            c.is_some_and(|c| {
                let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_FORCE) };
                r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY)
            })
        };
        if self.mounted() {
            detach_lazily(&self.mountpoint);
        }
        aborted || forced
    }
}

/// Whether FUSE connection `minor` is what is mounted at `mountpoint` (mountinfo's
/// MAJOR:MINOR, major 0).
fn connection_at(mountpoint: &Path, minor: u32) -> bool {
    mounted_at(mountpoint)
        .ok()
        .flatten()
        .is_some_and(|m| m.dev == format!("0:{minor}"))
}

/// A path into the mount of connection `minor`: its mount point while it is there;
/// once detached, the working directory or an open file of a process still in it
/// (/proc/PID/cwd, /proc/PID/fd/N; without CAP_SYS_PTRACE only those of bucketfs's own
/// user), found by the device of what the link leads to, read without asking any server.
fn a_way_in(mountpoint: &Path, minor: u32) -> Option<PathBuf> {
    if connection_at(mountpoint, minor) {
        return Some(mountpoint.to_owned());
    }
    let pids = fs::read_dir("/proc").ok()?.flatten().filter(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    });
    for pid in pids {
        let cwd = pid.path().join("cwd");
        if leads_onto(&cwd, minor) {
            return Some(cwd);
        }
        let Ok(fds) = fs::read_dir(pid.path().join("fd")) else {
            continue;
        };
        if let Some(fd) = fds
            .flatten()
            .map(|e| e.path())
            .find(|p| leads_onto(p, minor))
        {
            return Some(fd);
        }
    }
    None
}

/// Whether `path` leads to a directory or a regular file on the FUSE connection `minor`:
/// statx with AT_STATX_DONT_SYNC, which FUSE and network filesystems answer from what the
/// kernel has cached (the device needs no server). Not sockets, FIFOs or symlinks, which
/// an open for syncfs could not use or would wait on.
fn leads_onto(path: &Path, minor: u32) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statx with a valid path and out-parameter.
    let st = unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        if libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE,
            &mut st,
        ) != 0
        {
            return false;
        }
        st
    };
    let kind = u32::from(st.stx_mode) & libc::S_IFMT;
    st.stx_dev_major == 0
        && st.stx_dev_minor == minor
        && (kind == libc::S_IFDIR || kind == libc::S_IFREG)
}

/// Whether `dir` is where fusectl is mounted.
fn is_fusectl(dir: &str) -> bool {
    let Ok(c) = CString::new(dir) else {
        return false;
    };
    // SAFETY: statfs with a valid path and out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == FUSECTL_MAGIC
    }
}

fn raise_fd_limit() {
    // Each open file on the mount can hold a cache file open: allow as many as the hard limit.
    // SAFETY: getrlimit/setrlimit with a valid out-parameter.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{session_end, set_bdi_max, unescape_mountinfo, vmstat_value, BdiMax};
    use std::io;

    #[test]
    fn an_aborted_read_ends_the_session_like_an_unmount() {
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert!(session_end(Err(aborted)).is_ok());
        assert!(session_end(Ok(())).is_ok());
        let other = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(session_end(Err(other)).is_err());
    }

    #[test]
    fn a_bdi_gets_the_bytes_asked_within_1_to_50_percent_of_the_dirty_limit() {
        let dir = tempfile::tempdir().unwrap();
        let bdi = dir.path();
        let read = |name: &str| std::fs::read_to_string(bdi.join(name)).unwrap();
        let fresh = || {
            std::fs::write(bdi.join("max_bytes"), "").unwrap();
            std::fs::write(bdi.join("max_ratio"), "").unwrap();
        };
        let gib = 1u64 << 30;
        fresh();
        assert_eq!(set_bdi_max(bdi, gib, 5 * gib).unwrap(), BdiMax::Bytes(gib));
        assert_eq!(
            (read("max_bytes"), read("max_ratio")),
            (gib.to_string(), String::new())
        );
        fresh();
        assert_eq!(
            set_bdi_max(bdi, gib, gib).unwrap(),
            BdiMax::HalfDirtyLimit(gib / 2)
        );
        assert_eq!(
            (read("max_bytes"), read("max_ratio")),
            (String::new(), "50".into())
        );
        fresh();
        assert_eq!(
            set_bdi_max(bdi, gib, 200 * gib).unwrap(),
            BdiMax::KernelsOwn(2 * gib)
        );
        assert_eq!(
            (read("max_bytes"), read("max_ratio")),
            (String::new(), String::new())
        );
        // A kernel without the file (before 6.2): an error naming it, and nothing created.
        std::fs::remove_file(bdi.join("max_bytes")).unwrap();
        let e = set_bdi_max(bdi, gib, 5 * gib).unwrap_err();
        assert!(format!("{e:#}").contains("max_bytes"), "{e:#}");
        assert!(!bdi.join("max_bytes").exists());
    }

    #[test]
    fn vmstat_values_by_name() {
        let text =
            "nr_dirty 12\nnr_dirty_threshold 1206950\nnr_dirty_background_threshold 602741\n";
        assert_eq!(vmstat_value(text, "nr_dirty_threshold"), Some(1_206_950));
        assert_eq!(vmstat_value(text, "nr_dirty"), Some(12));
        assert_eq!(vmstat_value(text, "nr_dirtied"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
    }
}
