//! `bucketfs run`: the container's PID 1. Mounts (through `mount`), waits until the mount
//! serves, runs initdb on a new database, starts the program as an unprivileged user, passes
//! stop signals on, reaps orphans, and when the program exits takes the final checkpoint,
//! unmounts and exits with its status.
//!
//! One thread does all of it, waiting in `sigtimedwait` for the signals it has blocked
//! (the stop signals, SIGHUP and SIGCHLD), so that every child is reaped in one place and no
//! signal handler runs. The FUSE session runs on a thread of its own, and its end (after the
//! unmount) is where `mount` takes the final checkpoint.
//!
//! Three things stop the program without being asked: the mount stops being the bucket's
//! writer (another writer took the prefix over, so this mount is fenced), the disk under the
//! cache dir fails a write-back or a commit (the mount takes no more changes), or the FUSE
//! session ends
//! under it. Then the program gets SIGQUIT at once (PostgreSQL: immediate shutdown) and
//! bucketfs exits 1: PostgreSQL must never run on a mount that no longer takes its writes.

mod child;
mod initdb;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tracing::{debug, error, info, warn};

use crate::bucket::Found;
use crate::checkpoint::Checkpointer;
use crate::fs::{Fs, PAGE_SIZE};
use crate::mount::{self, MountSettings};

pub use child::{on_path, resolve_program, User, SECRET_VARS};

/// Everything `run` needs, resolved from the command line.
#[derive(Debug)]
pub struct RunSettings {
    pub mount: MountSettings,
    /// The program, then its arguments.
    pub program: Vec<OsString>,
    pub user: User,
    /// Some with `--initdb`.
    pub initdb: Option<InitdbSettings>,
    /// `--stop-timeout`: the program's shutdown plus the final checkpoint.
    pub stop_timeout: Duration,
    /// With `--replica`: `primary_conninfo` for the standby (streaming, with the bucket as
    /// the fallback).
    pub primary_conninfo: Option<String>,
}

#[derive(Debug)]
pub struct InitdbSettings {
    /// What makes the new database.
    pub maker: Maker,
    /// `--initdb-arg`s.
    pub args: Vec<String>,
    /// `--pg-conf` lines.
    pub conf: Vec<String>,
}

/// What `--initdb` runs to make a new database.
#[derive(Debug)]
pub enum Maker {
    /// This initdb executable, as `initdb -D DIR --no-instructions ARGS`.
    Initdb(PathBuf),
    /// `--initdb-command`, as `COMMAND ARGS` with PGDATA=DIR.
    Command(PathBuf),
}

/// Who a signal for a child goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Whom {
    /// The program alone, stop signals as `forwarded_as` says: PostgreSQL's postmaster
    /// stops its own processes, and a signal to all of them at once would be taken by each
    /// backend as its own.
    Program,
    /// The child's whole process group (it is a group leader: `child::spawn`), every stop
    /// signal as SIGTERM: an `--initdb-command` script and what it runs in the foreground
    /// (initdb, psql), none of which a signal to the shell alone would stop.
    Group,
}

impl Whom {
    /// What `kill` takes for this child: its pid, or its process group.
    fn target(self, pid: libc::pid_t) -> libc::pid_t {
        match self {
            Whom::Program => pid,
            Whom::Group => -pid,
        }
    }
}

/// The signals `run` waits for: the ones it passes on, and SIGCHLD.
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGCHLD,
];
/// How long a process has after SIGQUIT (or orphans after SIGTERM) before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// How long a standby has to stop for a rebase before SIGQUIT.
const REBASE_STOP: Duration = Duration::from_secs(30);
/// How often the supervisor looks at fencing and deadlines between signals.
const TICK: Duration = Duration::from_millis(100);

/// What the program is sent for a signal bucketfs receives (None: not passed on).
fn forwarded_as(sig: libc::c_int) -> Option<libc::c_int> {
    match sig {
        // Fly and Docker stop with SIGTERM; PostgreSQL's SIGTERM (smart shutdown) waits for
        // every client to leave, which pooled connections never do. SIGINT is its fast
        // shutdown: clients are disconnected, a shutdown checkpoint is written.
        libc::SIGTERM | libc::SIGINT => Some(libc::SIGINT),
        libc::SIGQUIT => Some(libc::SIGQUIT),
        libc::SIGHUP => Some(libc::SIGHUP),
        _ => None,
    }
}

fn is_stop(sig: libc::c_int) -> bool {
    matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT)
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGKILL => "SIGKILL",
        libc::SIGCHLD => "SIGCHLD",
        _ => "signal",
    }
}

/// Runs `bucketfs run`; the exit code is the program's (128+N for death by signal N).
pub fn run(settings: &RunSettings) -> anyhow::Result<u8> {
    // Before any thread starts, so that all inherit the mask and none takes these signals.
    let signals = mount::block_signals(&SIGNALS);
    take_signals_back();
    become_reaper();
    // Set by the exec below: this start follows a rebase.
    let rebase = std::env::var_os(REBASE_ENV).is_some();
    if rebase {
        // Before any thread starts; PostgreSQL must not inherit it.
        std::env::remove_var(REBASE_ENV);
    }
    match run_once(settings, signals, rebase)? {
        Ran::Exited(code) => Ok(code),
        Ran::Rebase => {
            // A fresh process image: every thread, socket and lock of the mount that ended
            // is gone with the old one, and PID 1 stays PID 1.
            info!("the standby stopped; starting again on the bucket's newest checkpoint");
            let exe = std::env::current_exe().context("find the bucketfs executable")?;
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(REBASE_ENV, "1")
                .exec();
            Err(anyhow!("start again for the rebase: {err}"))
        }
    }
}

/// Tells a `run --replica` started by its own exec that it follows a rebase.
const REBASE_ENV: &str = "BUCKETFS_REPLICA_REBASE";

/// How one mount of `run` ended.
enum Ran {
    Exited(u8),
    /// A replica's standby was stopped to move it to a newer base.
    Rebase,
}

fn run_once(settings: &RunSettings, signals: libc::sigset_t, rebase: bool) -> anyhow::Result<Ran> {
    let mut mount_settings = settings.mount.clone();
    if let Some(r) = mount_settings
        .bucket
        .as_mut()
        .and_then(|b| b.replica.as_mut())
    {
        r.rebase = rebase;
    }
    let mut mounted = mount::start(&mount_settings)?;
    let follower = mounted.attached().and_then(|a| a.probe().follower());
    let mountpoint = mounted.mountpoint().to_owned();
    let found = mounted.attached().and_then(|a| a.found().cloned());
    let mut unmounter = mounted.unmounter();
    let fs = mounted.fs();
    let checkpointer = mounted.checkpointer();
    let requests_ended = mounted.requests_ended();
    let session_ended = Arc::new(AtomicBool::new(false));
    let session = {
        let ended = session_ended.clone();
        std::thread::Builder::new()
            .name("fuse-session".into())
            .spawn(move || {
                let r = mounted.serve();
                ended.store(true, Ordering::Release);
                r
            })
            .context("start the FUSE session thread")?
    };
    let mut sup = Supervisor {
        settings,
        signals,
        fs,
        checkpointer,
        follower,
        rebasing: false,
        session_ended,
        requests_ended,
        stop: None,
        program_deadline: None,
        lost: None,
        connection: None,
        rate_logged: false,
    };
    let ran = sup.main(&mountpoint, found.as_ref());
    if let Err(e) = &ran {
        error!(error = %format!("{e:#}"), "run failed; unmounting");
    }
    sup.end_the_rest(libc::SIGTERM);
    info!("unmounting; the final checkpoint follows");
    sup.unmount(&mountpoint, &mut unmounter);
    let served = session
        .join()
        .map_err(|_| anyhow!("the FUSE session thread panicked"))?;
    // Anything that ended while the session wound down.
    for e in child::reap() {
        debug!(pid = e.pid, status = %e.describe(), "reaped an orphaned process");
    }
    if let Some(at) = sup.stop {
        let took = at.elapsed();
        if took > settings.stop_timeout {
            warn!(
                took_s = took.as_secs(),
                stop_timeout_s = settings.stop_timeout.as_secs(),
                "the stop took longer than --stop-timeout: if the final checkpoint took it, lower --max-dirty, or raise --stop-timeout (and the platform's kill timeout); a GC pass under way, waited for after the final checkpoint, loses nothing if the stop is killed"
            );
        } else {
            info!(
                took_ms = took.as_millis() as u64,
                "stopped within --stop-timeout"
            );
        }
    }
    if let Some(reason) = sup.lost.take() {
        let status = match &ran {
            Ok(Some(e)) => format!(" (it ended with {})", e.describe()),
            _ => String::new(),
        };
        return Err(anyhow!(
            "{reason}: the program was stopped with SIGQUIT{status}, and nothing it wrote after \
             that reaches the bucket"
        ));
    }
    let ended = ran?;
    served.context("the program ended, but the final checkpoint or the unmount failed")?;
    if sup.rebasing && sup.stop.is_none() {
        return Ok(Ran::Rebase);
    }
    Ok(Ran::Exited(ended.map_or(0, |e| e.code())))
}

/// The supervisor's state, shared by the initdb and program phases.
pub(crate) struct Supervisor<'a> {
    settings: &'a RunSettings,
    signals: libc::sigset_t,
    fs: Arc<Fs>,
    checkpointer: Option<Arc<Checkpointer>>,
    /// A replica's view of the bucket (None: the writer).
    follower: Option<Arc<crate::replica::Follower>>,
    /// The standby was stopped to move to a newer base.
    rebasing: bool,
    /// Set when the FUSE session (and the final checkpoint after it) is over.
    session_ended: Arc<AtomicBool>,
    /// Set when the session stops serving requests (`Mounted::requests_ended`).
    requests_ended: Arc<AtomicBool>,
    /// When the first stop signal came.
    stop: Option<Instant>,
    /// When the program's share of the stop budget runs out.
    program_deadline: Option<Instant>,
    /// Why the mount can no longer serve the program, once it cannot.
    lost: Option<String>,
    /// The mount's FUSE connection, found once it serves.
    connection: Option<mount::Connection>,
    rate_logged: bool,
}

impl Supervisor<'_> {
    /// Everything between the mount and the program's end: None if the program was not
    /// started (a stop signal came first).
    fn main(
        &mut self,
        mountpoint: &Path,
        found: Option<&Found>,
    ) -> anyhow::Result<Option<child::Ended>> {
        // A stat of the root goes through FUSE: it returns once the session serves.
        std::fs::metadata(mountpoint)
            .with_context(|| format!("the mount at {} does not serve", mountpoint.display()))?;
        info!(mountpoint = %mountpoint.display(), "the mount serves");
        self.connection = mount::Connection::of(mountpoint);
        self.log_stop_budget();
        if let Some(follower) = &self.follower {
            let exe = std::env::current_exe().context("find the bucketfs executable")?;
            if !self.settings.user.can_execute(&exe) {
                anyhow::bail!(
                    "the standby runs `bucketfs wal-fetch` as {} (its restore_command), who \
                     cannot execute {}: install bucketfs where that user can run it (as the \
                     image does, /usr/local/bin)",
                    self.settings.user.name,
                    exe.display()
                );
            }
            let restore = format!(
                "{} wal-fetch --cache-dir {} %f %p",
                shell_quote(&exe.display().to_string()),
                shell_quote(&self.fs.root().display().to_string())
            );
            crate::replica::prepare_standby(
                mountpoint,
                &restore,
                self.settings.primary_conninfo.as_deref(),
                (self.settings.user.uid, self.settings.user.gid),
            )?;
            info!(
                base_epoch = follower.base_epoch(),
                "replica: PostgreSQL starts as a hot standby (standby.signal), restoring WAL from the bucket"
            );
        } else if let Some(initdb) = &self.settings.initdb {
            if self.stop_pending() || !initdb::prepare(self, mountpoint, found, initdb)? {
                return Ok(None);
            }
        }
        if self.stop_pending() {
            return Ok(None);
        }
        if let Some(reason) = &self.lost {
            return Err(anyhow!("{reason}: the program was not started"));
        }
        clear_stale_lock(mountpoint)?;
        let (program, args) = self
            .settings
            .program
            .split_first()
            .expect("clap requires a program");
        info!(
            program = %Path::new(program).display(),
            args = ?args,
            user = %self.settings.user.name,
            "starting the program"
        );
        let pid = child::spawn(&self.settings.user, program, args, &[])?;
        let ended = self.watch(pid, Whom::Program)?;
        info!(pid, status = %ended.describe(), "the program exited");
        Ok(Some(ended))
    }

    /// Unmounts once the program and what it left have ended. A mount that a process outside
    /// bucketfs keeps busy (a shell whose working directory is the data directory) gets the
    /// grace to let go; then what the kernel holds dirty for it is written back (for at most
    /// the grace again) and its FUSE connection aborted (`mount::Connection`): the machine is
    /// stopping (or, for a replica's rebase, starting again), and a final checkpoint held back
    /// until that process ends would be cut short by the platform's kill.
    fn unmount(&mut self, mountpoint: &Path, unmounter: &mut fuser::SessionUnmounter) {
        // fuser unmounts by path: someone else may have detached this mount, leaving what
        // lies underneath there.
        let ours = self.connection.as_ref().is_none_or(|c| c.mounted());
        let first = match ours {
            true => mount::unmount(unmounter),
            false => mount::Unmount::Gone,
        };
        let mut busy = match first {
            // The session ends once its requests are answered, as ever.
            mount::Unmount::Done => return,
            mount::Unmount::Busy => true,
            // Someone else unmounted it, or detached it with a process still in it: the
            // session's end tells which.
            mount::Unmount::Gone => false,
        };
        if busy {
            warn!(
                grace_s = GRACE.as_secs(),
                "the mount is busy: a process outside bucketfs has a file or its working directory on it (a shell in the data directory?); past the grace its files on the mount fail and the final checkpoint goes on"
            );
        }
        let deadline = Instant::now() + GRACE;
        loop {
            if self.requests_ended.load(Ordering::Acquire) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            if let Some(sig) = self.next_signal(Duration::from_millis(10)) {
                if is_stop(sig) {
                    self.begin_stop(sig);
                }
            }
            if busy && self.connection.as_ref().is_some_and(|c| c.unmount_again()) {
                info!("unmounted: the last file on the mount was closed");
                busy = false;
            }
        }
        let Some(connection) = &self.connection else {
            warn!("the mount still serves, and its FUSE connection is not known: detaching it lazily, and waiting for its last file to close");
            mount::detach_bucketfs_lazily(mountpoint);
            return;
        };
        warn!("the mount still serves after the grace: writing back what the kernel holds for it, then aborting it");
        connection.sync_within(GRACE);
        if self.requests_ended.load(Ordering::Acquire) {
            return;
        }
        if !connection.abort() {
            warn!("the FUSE connection could not be aborted (no fusectl, and no forced unmount: a user namespace?): the mount is detached, and the final checkpoint waits for its last file to close");
        }
    }

    /// Takes the signals that came while no child ran (while mounting, say); true if one was
    /// a stop, which means nothing more is started.
    fn stop_pending(&mut self) -> bool {
        while let Some(sig) = self.next_signal(Duration::ZERO) {
            self.handle(sig, None);
        }
        if self.stop.is_some() {
            info!("a stop signal came before the program started: not starting it");
        }
        self.stop.is_some()
    }

    /// Waits for child `pid` to end, passing signals on, reaping orphans, and stopping it
    /// when the mount can no longer serve it or its share of the stop budget runs out.
    fn watch(&mut self, pid: libc::pid_t, whom: Whom) -> anyhow::Result<child::Ended> {
        let to = whom.target(pid);
        let mut quit_sent = false;
        let mut kill_at: Option<Instant> = None;
        loop {
            if self.lost.is_none() {
                if self.fs.is_fenced() {
                    self.lost = Some(
                        "this mount is no longer the bucket's writer: another writer took the \
                         prefix over, and the mount is fenced"
                            .into(),
                    );
                } else if let Some((cause, why)) = self.fs.stop_report() {
                    // (What to do next is in the log line of the stop, and in /status.)
                    self.lost = Some(format!(
                        "{} ({why}), and the mount takes no more changes",
                        cause.what()
                    ));
                } else if self.session_ended.load(Ordering::Acquire) {
                    self.lost =
                        Some("the mount stopped serving (it was unmounted or failed)".into());
                }
                if let Some(reason) = &self.lost {
                    error!(pid, reason = %reason, "stopping the program with SIGQUIT (PostgreSQL: immediate shutdown) now: it must not run on a mount that no longer takes its writes");
                    child::signal(to, libc::SIGQUIT);
                    quit_sent = true;
                    kill_at = Some(Instant::now() + GRACE);
                }
            }
            if !self.rebasing
                && self.stop.is_none()
                && self.follower.as_ref().is_some_and(|f| f.rebase_due())
            {
                warn!(pid, "the replica must move to a newer base (its base left the primary's retention window, or the standby needs WAL that no checkpoint holds): stopping the standby (fast shutdown) to start it again on the newest checkpoint");
                child::signal(pid, libc::SIGINT);
                self.rebasing = true;
                self.program_deadline = Some(Instant::now() + REBASE_STOP);
            }
            let now = Instant::now();
            if !quit_sent && self.program_deadline.is_some_and(|d| now >= d) {
                warn!(pid, "the program has not stopped within its share of --stop-timeout: SIGQUIT (PostgreSQL: immediate shutdown; crash recovery at the next start)");
                child::signal(to, libc::SIGQUIT);
                quit_sent = true;
                kill_at = Some(now + GRACE);
            }
            if kill_at.is_some_and(|d| now >= d) {
                warn!(
                    pid,
                    grace_s = GRACE.as_secs(),
                    "the program did not exit after SIGQUIT: SIGKILL"
                );
                child::signal(to, libc::SIGKILL);
                kill_at = None;
            }
            self.log_rate_once();
            for e in child::reap() {
                if e.pid == pid {
                    return Ok(e);
                }
                debug!(pid = e.pid, status = %e.describe(), "reaped an orphaned process");
            }
            if let Some(sig) = self.next_signal(TICK) {
                self.handle(sig, Some((pid, whom)));
            }
        }
    }

    /// Passes a signal on to the child (if one runs) and starts the stop on a stop signal.
    fn handle(&mut self, sig: libc::c_int, child: Option<(libc::pid_t, Whom)>) {
        let Some(to) = forwarded_as(sig) else {
            return;
        };
        if is_stop(sig) {
            self.begin_stop(sig);
        }
        if let Some((pid, whom)) = child {
            let to = match whom {
                Whom::Program => to,
                Whom::Group if is_stop(sig) => libc::SIGTERM,
                // A reload: no server runs yet that could take one, and a shell or initdb
                // would die of it.
                Whom::Group => {
                    info!(received = name(sig), pid, "a new database is being made: nothing to reload, the signal is not passed on");
                    return;
                }
            };
            info!(
                received = name(sig),
                sent = name(to),
                pid,
                group = whom == Whom::Group,
                "passing the signal on to the program"
            );
            child::signal(whom.target(pid), to);
        } else {
            info!(
                received = name(sig),
                "signal received while no program runs"
            );
        }
    }

    /// The first stop signal: the budget starts. The program gets what the final
    /// checkpoint is not expected to need: --max-dirty at the measured upload rate (half the
    /// budget while none is measured), and at least a quarter of it.
    fn begin_stop(&mut self, sig: libc::c_int) {
        if self.stop.is_some() {
            return;
        }
        let now = Instant::now();
        let budget = self.settings.stop_timeout;
        let rate = self.upload_rate();
        let drain = match rate {
            Some(r) => Duration::from_secs_f64(self.settings.mount.max_dirty as f64 / r),
            None => budget / 2,
        };
        let share = program_share(budget, drain);
        self.stop = Some(now);
        self.program_deadline = Some(now + share);
        info!(
            signal = name(sig),
            stop_timeout_s = budget.as_secs(),
            program_share_s = share.as_secs(),
            dirty_bytes = self.fs.unsafe_pages() * PAGE_SIZE,
            upload_rate_mib_s = rate.map(|r| format!("{:.1}", r / (1 << 20) as f64)),
            "stopping: the program has its share of the budget to exit (then SIGQUIT), the final checkpoint the rest"
        );
    }

    /// Ends whatever is left below bucketfs once the program has exited: orphans get `first`
    /// (SIGTERM; SIGQUIT when what they work on is being thrown away), and SIGKILL after the
    /// grace. As PID 1, bucketfs's exit would end them anyway; this way none keeps a file open
    /// on the mount past the unmount.
    fn end_the_rest(&mut self, first: libc::c_int) {
        let left = child::children();
        if left.is_empty() {
            return;
        }
        info!(processes = ?left, signal = name(first), "ending the processes the program left: the signal, SIGKILL after the grace");
        for &pid in &left {
            child::signal(pid, first);
        }
        let mut killed = false;
        let mut deadline = Instant::now() + GRACE;
        loop {
            for e in child::reap() {
                debug!(pid = e.pid, status = %e.describe(), "reaped an orphaned process");
            }
            let left = child::children();
            if left.is_empty() {
                return;
            }
            if killed {
                // Orphaned since (a killed postmaster's backends, say): the same end.
                for &pid in &left {
                    child::signal(pid, libc::SIGKILL);
                }
            }
            if Instant::now() >= deadline {
                if killed {
                    warn!(processes = ?left, "processes outlived SIGKILL (stuck in the kernel?); going on");
                    return;
                }
                warn!(processes = ?left, signal = name(first), "processes outlived the signal: SIGKILL");
                for &pid in &left {
                    child::signal(pid, libc::SIGKILL);
                }
                killed = true;
                // Time to die: a process in the middle of a system call goes at its end.
                deadline = Instant::now() + GRACE;
            }
            if let Some(sig) = self.next_signal(TICK) {
                if is_stop(sig) {
                    self.begin_stop(sig);
                }
            }
        }
    }

    /// The next of the blocked signals, waiting at most `timeout`.
    fn next_signal(&self, timeout: Duration) -> Option<libc::c_int> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `signals` is an initialised set; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(&self.signals, std::ptr::null_mut(), &ts) };
        (sig > 0).then_some(sig)
    }

    fn upload_rate(&self) -> Option<f64> {
        self.checkpointer
            .as_ref()
            .and_then(|cp| cp.totals().upload_rate())
    }

    /// At start: can --max-dirty drain within --stop-timeout at the upload rate measured so
    /// far?
    fn log_stop_budget(&mut self) {
        if self.upload_rate().is_some() {
            self.log_rate_once();
            return;
        }
        info!(
            max_dirty_bytes = self.settings.mount.max_dirty,
            stop_timeout_s = self.settings.stop_timeout.as_secs(),
            "stop budget: no upload rate is measured yet, so whether --max-dirty drains within --stop-timeout is not known; it is logged once checkpoints have uploaded 1 MiB"
        );
    }

    /// Once a rate is measured: the drain time of a full --max-dirty against the budget.
    fn log_rate_once(&mut self) {
        if self.rate_logged {
            return;
        }
        let Some(rate) = self.upload_rate() else {
            return;
        };
        self.rate_logged = true;
        let max_dirty = self.settings.mount.max_dirty;
        let budget = self.settings.stop_timeout;
        let drain = Duration::from_secs_f64(max_dirty as f64 / rate);
        let mib_s = format!("{:.1}", rate / (1 << 20) as f64);
        if drain <= budget / 2 {
            info!(
                upload_rate_mib_s = mib_s,
                max_dirty_bytes = max_dirty,
                drain_s = drain.as_secs(),
                stop_timeout_s = budget.as_secs(),
                "stop budget: --max-dirty drains well within --stop-timeout at the measured upload rate"
            );
        } else {
            warn!(
                upload_rate_mib_s = mib_s,
                max_dirty_bytes = max_dirty,
                drain_s = drain.as_secs(),
                stop_timeout_s = budget.as_secs(),
                fits_bytes = (rate * budget.as_secs_f64() / 2.0) as u64,
                "stop budget: at the measured upload rate a full --max-dirty takes more than half of --stop-timeout to drain, leaving the program little time to stop: lower --max-dirty (fits_bytes drains in half the budget)"
            );
        }
    }
}

/// Removes the `postmaster.pid` of a PostgreSQL that did not stop (killed with the machine or
/// with bucketfs). PostgreSQL refuses to start while the pid in it names a live process, and
/// in a new container that pid is soon taken by someone else (a thread of bucketfs, say):
/// "lock file already exists". It is stale for sure: bucketfs mounted this data directory a
/// moment ago and has started nothing on it, so no postmaster can be using it.
fn clear_stale_lock(mountpoint: &Path) -> anyhow::Result<()> {
    let lock = mountpoint.join("postmaster.pid");
    if !mountpoint.join("PG_VERSION").exists() || !lock.exists() {
        return Ok(());
    }
    let pid = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_default();
    warn!(pid = %pid, "removing the postmaster.pid of a PostgreSQL that did not stop (nothing runs on this fresh mount yet)");
    std::fs::remove_file(&lock).with_context(|| format!("remove {}", lock.display()))
}

/// A process may inherit SIGINT and SIGQUIT ignored (a shell's background job does), and an
/// ignored signal is discarded even while blocked: sigtimedwait would never see it. The
/// program inherits these defaults too.
fn take_signals_back() {
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGCHLD,
    ] {
        // SAFETY: resetting a disposition to its default has no memory effects.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// PID 1 adopts every orphan in its namespace; anywhere else, ask the kernel to make
/// bucketfs the reaper of the orphans below it.
fn become_reaper() {
    // SAFETY: getpid and prctl have no memory effects.
    unsafe {
        if libc::getpid() == 1 {
            return;
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) != 0 {
            warn!(error = %std::io::Error::last_os_error(), "cannot become the reaper of orphaned processes");
        }
    }
}

/// `s` as one word for the shell PostgreSQL runs `restore_command` with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The waits that may follow the program's share before the final checkpoint starts: SIGQUIT
/// and the grace before SIGKILL; the program's orphans (SIGTERM, the grace, SIGKILL and the
/// grace again); a mount kept busy from outside (the grace to let go, then at most the grace
/// for its sync).
const AFTER_SHARE: Duration = Duration::from_secs(5 * GRACE.as_secs());

/// The program's share of the stop budget: what the final checkpoint is not expected to need
/// (`drain`), less `AFTER_SHARE`, and at least a quarter of the budget.
fn program_share(budget: Duration, drain: Duration) -> Duration {
    budget
        .saturating_sub(drain)
        .saturating_sub(AFTER_SHARE)
        .max(budget / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop whose program takes its whole share, then ignores SIGQUIT, and leaves orphans
    /// that ignore SIGTERM still leaves the final checkpoint what it is expected to need,
    /// within the budget (Fly's kill_timeout is the budget and 20 s more: fly.toml).
    #[test]
    fn the_programs_share_leaves_the_final_checkpoint_its_drain() {
        let budget = Duration::from_secs(280);
        // Up to the drain where the share reaches its floor of a quarter (280 - 50 - 70 s).
        for drain_s in [1, 20, 60, 140, 160] {
            let drain = Duration::from_secs(drain_s);
            let share = program_share(budget, drain);
            assert!(
                share + AFTER_SHARE + drain <= budget,
                "drain {drain_s} s: share {share:?}"
            );
            assert!(share >= budget / 4, "drain {drain_s} s: share {share:?}");
        }
        // A longer drain: the program still has a quarter.
        for drain_s in [180, 280] {
            let share = program_share(budget, Duration::from_secs(drain_s));
            assert_eq!(share, budget / 4, "drain {drain_s} s");
        }
    }
}
