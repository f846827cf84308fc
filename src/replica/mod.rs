//! Read replicas (docs/replicas.md): a mount that serves a checkpoint of another writer's
//! bucket with a local copy-on-write layer, follows the bucket as new checkpoints land, and
//! serves their WAL to a PostgreSQL hot standby (`bucketfs wal-fetch`, its
//! `restore_command`).
//!
//! A replica reaches its bucket only through [`ReadStore`], which has no method that writes:
//! nothing a replica does can PUT or DELETE. What PostgreSQL writes on a replica (replayed
//! pages, its own pg_control, `standby.signal`) stays in the replica's cache dir, as dirty
//! pages no checkpointer ever uploads.
//!
//! The base is the checkpoint the mount was made from. Its pages are served as long as the
//! primary's GC retains it; once the primary's last GC pass says it left the retention window
//! (`gc/state`), the base is due for a rebase: `bucketfs run --replica` stops the standby,
//! drops the local layer and starts it again on the newest checkpoint (docs/replicas.md).
//! GC deletes nothing until `--gc-grace` after that, which is the rebase's time budget.

pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tracing::{error, info, warn};

use crate::checkpoint::{now_ms, open_bucket_at, CheckpointError};
use crate::fs::{Fetcher, PAGE_SIZE};
use crate::manifest::view::{ExtentMap, View};
use crate::store::ReadStore;

/// What /status and `bucketfs status` say of a replica (a snapshot the status module holds).
pub use crate::status::ReplicaStatus;

/// What a replica writes in the cache dir's bucket record instead of a writer id.
pub const REPLICA_WRITER: &str = "replica";

/// How often a replica looks for a newer checkpoint.
pub const POLL: Duration = Duration::from_secs(1);

/// The bucket as a replica follows it.
struct Followed {
    /// The newest checkpoint's view (its WAL is what the standby gets).
    view: Arc<RwLock<View>>,
    newest_created_ms: u64,
    oldest_retained: u64,
    polled: Option<Instant>,
    served: Option<(u64, u64, String)>,
    trouble: Option<String>,
}

/// The WAL file last served, as it was.
struct LastServed {
    name: String,
    epoch: u64,
    ino: u64,
    size: u64,
    extents: ExtentMap,
    bytes: Arc<Vec<u8>>,
    sent: Instant,
}

/// A standby that asks again for a file that has not changed is told "not there yet" for
/// this long (it replays on from its pg_wal, where PostgreSQL keeps what it restored),
/// then sent the file again: never stuck, and not 16 MiB a second for nothing.
const RESEND_UNCHANGED: Duration = Duration::from_secs(30);

/// The page ranges where two extent maps of one file differ.
fn changed(old: &ExtentMap, new: &ExtentMap) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    let mut add = |r: std::ops::Range<u64>| match out.last_mut() {
        Some(l) if l.end >= r.start => l.end = l.end.max(r.end),
        _ => out.push(r),
    };
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for (a, b) in [(old, new), (new, old)] {
        for (&start, (end, x)) in a {
            let same = b
                .get(&start)
                .is_some_and(|(e, y)| e == end && (Arc::ptr_eq(x, y) || **x == **y));
            if !same {
                ranges.push(start..*end);
            }
        }
    }
    ranges.sort_by_key(|r| r.start);
    for r in ranges {
        add(r);
    }
    out
}

/// Follows the primary's bucket: the newest checkpoint, the retention window, and the WAL
/// served to the standby.
pub struct Follower {
    store: Arc<dyn ReadStore>,
    rt: tokio::runtime::Handle,
    /// Where PostgreSQL's WAL is, from the root of the filesystem.
    wal_dir: PathBuf,
    base_epoch: u64,
    base_created_ms: u64,
    state: Mutex<Followed>,
    /// The last WAL file served. The standby asks for the file it is replaying again each
    /// time it reaches the end of what it has: only the pages that changed since are
    /// fetched, and a file that has not changed is not sent again for a while.
    last: Mutex<Option<LastServed>>,
    served: AtomicU64,
    missing: AtomicU64,
    errors: AtomicU64,
    expired_logged: AtomicBool,
    /// The last file served from an older checkpoint than the newest (the primary had
    /// removed it), and that checkpoint.
    older: Mutex<Option<(String, u64)>>,
}

impl Follower {
    pub fn new(
        store: Arc<dyn ReadStore>,
        rt: tokio::runtime::Handle,
        wal_dir: PathBuf,
        base: &View,
        base_created_ms: u64,
    ) -> Follower {
        Follower {
            store,
            rt,
            wal_dir,
            base_epoch: base.epoch,
            base_created_ms,
            state: Mutex::new(Followed {
                view: Arc::new(RwLock::new(base.clone())),
                newest_created_ms: base_created_ms,
                oldest_retained: 0,
                polled: None,
                served: None,
                trouble: None,
            }),
            last: Mutex::new(None),
            served: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            expired_logged: AtomicBool::new(false),
            older: Mutex::new(None),
        }
    }

    pub fn base_epoch(&self) -> u64 {
        self.base_epoch
    }

    /// Looks for a newer checkpoint and reads the retention window. Cheap when nothing has
    /// changed: the GC boundary, one LIST of the manifests after the view's (however many
    /// older ones the retention window keeps) and the GC state.
    pub fn poll(&self) -> Result<(), CheckpointError> {
        let known = self.state.lock().view.read().epoch;
        let (epochs, boundary, oldest_retained) = self.rt.block_on(async {
            let boundary = crate::gc::read_boundary(&*self.store).await?;
            let epochs =
                crate::checkpoint::list_epochs(&*self.store, Some(known), boundary).await?;
            let kept = crate::gc::read_state(&*self.store)
                .await?
                .map_or(0, |s| s.oldest_retained);
            Ok::<_, CheckpointError>((epochs, boundary, kept))
        })?;
        let (known, view) = {
            let s = self.state.lock();
            let epoch = s.view.read().epoch;
            (epoch, s.view.clone())
        };
        let newer: Vec<u64> = epochs.into_iter().filter(|&e| e > known).collect();
        if !newer.is_empty() {
            // The manifests since the known one, applied in order: a GET each, not the whole
            // chain. A manifest whose parent is not the view's epoch (a new writer's chain)
            // means reading the chain from its base.
            let mut next = view.read().clone();
            let mut created = None;
            for epoch in newer {
                let key = crate::checkpoint::manifest_key(epoch);
                let m = self.rt.block_on(self.store.get(&key, None))?;
                let m = crate::manifest::Manifest::decode(&m, &key)?;
                if m.parent.is_some_and(|p| p != next.epoch) {
                    let opened = open_bucket_at(&*self.store, &self.rt, None)?;
                    next = opened.view;
                    created = opened.latest.map(|l| l.created_ms);
                    break;
                }
                next.apply(&m);
                created = Some(m.created_ms);
            }
            let mut s = self.state.lock();
            if next.epoch > s.view.read().epoch {
                s.view = Arc::new(RwLock::new(next));
                s.newest_created_ms = created.unwrap_or(s.newest_created_ms);
            }
        }
        let mut s = self.state.lock();
        s.oldest_retained = oldest_retained.max(boundary);
        s.polled = Some(Instant::now());
        drop(s);
        if self.base_expired() && !self.expired_logged.swap(true, Ordering::AcqRel) {
            error!(
                base_epoch = self.base_epoch,
                oldest_retained,
                "the replica's base checkpoint has left the primary's retention window: GC \
                 deletes its pages after --gc-grace. `bucketfs run --replica` moves the \
                 standby to the newest checkpoint now; a plain `mount --replica` must be \
                 restarted (it starts on the newest checkpoint by itself)"
            );
        }
        Ok(())
    }

    /// The standby must start again on a newer base: the base has left the retention
    /// window, or the standby needs WAL the bucket does not hold.
    pub fn rebase_due(&self) -> bool {
        self.base_expired() || self.state.lock().trouble.is_some()
    }

    /// The base has left the primary's retention window.
    pub fn base_expired(&self) -> bool {
        self.base_epoch < self.state.lock().oldest_retained
    }

    /// Polls every `POLL` until `stop`.
    pub fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            if let Err(e) = self.poll() {
                warn!(error = %e, "replica: could not read the bucket; trying again");
            }
            let until = Instant::now() + POLL;
            while Instant::now() < until && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Serves one WAL file (a segment or a timeline history file) to the standby.
    pub fn fetch_wal(&self, name: &str) -> wal::Answer {
        let answer = self.fetch_wal_once(name);
        if !matches!(answer, wal::Answer::Missing) {
            return answer;
        }
        // Nothing new in the checkpoint last polled: one that landed since may have it.
        let known = self.state.lock().view.read().epoch;
        if let Err(e) = self.poll() {
            warn!(error = %e, "replica: could not read the bucket for a WAL request");
        }
        if self.state.lock().view.read().epoch == known {
            self.missing.fetch_add(1, Ordering::Relaxed);
            return answer;
        }
        let answer = self.fetch_wal_once(name);
        if matches!(answer, wal::Answer::Missing) {
            self.missing.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    fn fetch_wal_once(&self, name: &str) -> wal::Answer {
        let (view, created_ms, oldest_retained) = {
            let s = self.state.lock();
            (s.view.clone(), s.newest_created_ms, s.oldest_retained)
        };
        let epoch = view.read().epoch;
        if let Some(answer) = self.again(name, &view, created_ms) {
            return answer;
        }
        let answer = wal::find(
            &self.store,
            &self.rt,
            &self.wal_dir,
            name,
            &view,
            oldest_retained,
        );
        match &answer {
            wal::Answer::Found { epoch: e, bytes } => {
                let created = if *e == epoch {
                    created_ms
                } else {
                    // From an older checkpoint (the primary has removed the file since):
                    // the standby is that far behind.
                    self.base_created_ms.min(created_ms)
                };
                let served = {
                    let v = view.read();
                    wal::locate(&v, &self.wal_dir, name)
                        .filter(|_| *e == epoch)
                        .map(|(ino, size)| LastServed {
                            name: name.to_string(),
                            epoch,
                            ino,
                            size,
                            extents: v.extents.get(&ino).cloned().unwrap_or_default(),
                            bytes: bytes.clone(),
                            sent: Instant::now(),
                        })
                };
                // Not under the view's lock: `again` takes that one under this.
                *self.last.lock() = served;
                self.note_served(name, *e, created);
                let mut older = self.older.lock();
                if *e == epoch {
                    *older = None;
                    self.state.lock().trouble = None;
                } else if older.as_ref().is_some_and(|(n, o)| n == name && o == e) {
                    // Asked again for a removed segment's last copy: the standby reached its
                    // end and needs more, which no checkpoint holds (the primary finished the
                    // segment and removed it within one checkpoint interval).
                    let why = format!(
                        "WAL segment {name} was removed by the primary before a checkpoint \
                         held it whole (the last copy is epoch {e}): the standby cannot \
                         replay past it. It moves to a newer base; set wal_keep_size on the \
                         primary (docs/replicas.md) so that this does not happen"
                    );
                    if self.state.lock().trouble.is_none() {
                        error!(file = name, "replica cannot keep up: {why}");
                    }
                    self.state.lock().trouble = Some(why);
                } else {
                    *older = Some((name.to_string(), *e));
                }
            }
            wal::Answer::Missing => {}
            wal::Answer::Gone(why) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                error!(file = name, "replica cannot keep up: {why}");
                self.state.lock().trouble = Some(why.clone());
            }
            wal::Answer::Error(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                error!(file = name, error = %e, "replica: WAL file could not be served");
            }
        }
        answer
    }

    /// A request for the file served last: None when it must be looked up afresh.
    fn again(&self, name: &str, view: &Arc<RwLock<View>>, created_ms: u64) -> Option<wal::Answer> {
        // Only segments: PostgreSQL keeps restored segments in pg_wal, not history files, which
        // it reads again at once during a timeline switch.
        if !wal::is_segment(name) {
            return None;
        }
        let mut guard = self.last.lock();
        let last = guard.as_mut().filter(|l| l.name == name)?;
        let (epoch, ino, size, extents) = {
            let v = view.read();
            let (ino, size) = wal::locate(&v, &self.wal_dir, name)?;
            (
                v.epoch,
                ino,
                size,
                v.extents.get(&ino).cloned().unwrap_or_default(),
            )
        };
        if ino != last.ino || size != last.size || epoch < last.epoch {
            return None;
        }
        let ranges = changed(&last.extents, &extents);
        if ranges.is_empty() {
            // Nothing new: the standby has all of it. (Still holding `last`, which no one
            // takes under the state's lock: let go and taken again, it could be another
            // file's by then, sent under this one's name.)
            last.epoch = epoch;
            self.note_position(name, epoch, created_ms);
            if last.sent.elapsed() < RESEND_UNCHANGED {
                return Some(wal::Answer::Missing);
            }
            last.sent = Instant::now();
            self.served.fetch_add(1, Ordering::Relaxed);
            return Some(wal::Answer::Found {
                epoch,
                bytes: last.bytes.clone(),
            });
        }
        let fetcher = crate::checkpoint::BucketFetcher::new(
            self.store.clone(),
            self.rt.clone(),
            view.clone(),
        );
        let mut bytes = (*last.bytes).clone();
        for r in ranges {
            let got = match fetcher.fetch(ino, r.clone()) {
                Ok(g) => g,
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    error!(file = name, error = %e, "replica: WAL file could not be served");
                    return Some(wal::Answer::Error(e));
                }
            };
            let from = (r.start * PAGE_SIZE) as usize;
            let to = ((r.end * PAGE_SIZE) as usize).min(bytes.len());
            if from < to {
                bytes[from..to].copy_from_slice(&got[..to - from]);
            }
        }
        let bytes = Arc::new(bytes);
        last.epoch = epoch;
        last.extents = extents;
        last.bytes = bytes.clone();
        last.sent = Instant::now();
        drop(guard);
        self.note_served(name, epoch, created_ms);
        Some(wal::Answer::Found { epoch, bytes })
    }

    /// The standby has everything of `name` as of `epoch` (nothing new was sent).
    fn note_position(&self, name: &str, epoch: u64, created_ms: u64) {
        let mut s = self.state.lock();
        if s.served.as_ref().is_none_or(|(e, _, _)| epoch >= *e) {
            s.served = Some((epoch, created_ms, name.to_string()));
        }
    }

    /// `name` as of `epoch` was sent to the standby.
    fn note_served(&self, name: &str, epoch: u64, created_ms: u64) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.note_position(name, epoch, created_ms);
    }

    pub fn status(&self) -> ReplicaStatus {
        let s = self.state.lock();
        let newest_epoch = s.view.read().epoch;
        let (served_epoch, served_created, served_file) = s.served.clone().map_or(
            (self.base_epoch, self.base_created_ms, None),
            |(e, c, f)| (e, c, Some(f)),
        );
        let lag_ms = if served_epoch >= newest_epoch {
            0
        } else {
            now_ms().saturating_sub(served_created)
        };
        ReplicaStatus {
            base_epoch: self.base_epoch,
            base_created_unix_ms: self.base_created_ms,
            newest_epoch,
            newest_created_unix_ms: s.newest_created_ms,
            oldest_retained: s.oldest_retained,
            served_epoch,
            served_created_unix_ms: served_created,
            served_file,
            lag_seconds: lag_ms as f64 / 1000.0,
            wal_served: self.served.load(Ordering::Relaxed),
            wal_missing: self.missing.load(Ordering::Relaxed),
            wal_errors: self.errors.load(Ordering::Relaxed),
            base_expired: self.base_epoch < s.oldest_retained,
            trouble: s.trouble.clone(),
        }
    }
}

/// The follower's thread: polls until dropped.
pub struct Following {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Following {
    pub fn start(follower: Arc<Follower>) -> anyhow::Result<Following> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("replica".into())
            .spawn(move || follower.run(&flag))?;
        Ok(Following {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The files `bucketfs run --replica` adds to the data directory (all local to the replica).
pub const STANDBY_SIGNAL: &str = "standby.signal";
const AUTO_CONF: &str = "postgresql.auto.conf";
const MARK: &str = "# bucketfs run --replica: local to this replica, never in the bucket";
/// The settings `prepare_standby` owns in postgresql.auto.conf.
const STANDBY_KEYS: [&str; 4] = [
    "hot_standby",
    "wal_retrieve_retry_interval",
    "restore_command",
    "primary_conninfo",
];

/// Makes the data directory at `data` a hot standby that restores WAL with `restore_command`
/// (and streams from `primary_conninfo`, if given). Idempotent: a warm restart finds it done.
pub fn prepare_standby(
    data: &Path,
    restore_command: &str,
    primary_conninfo: Option<&str>,
    owner: (u32, u32),
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    if !data.join("PG_VERSION").exists() {
        anyhow::bail!(
            "{} holds no PostgreSQL data directory (no PG_VERSION): a replica serves the \
             primary's database, and the bucket's newest checkpoint has none",
            data.display()
        );
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let signal = data.join(STANDBY_SIGNAL);
    std::fs::write(&signal, b"").with_context(|| format!("write {}", signal.display()))?;
    let conf = data.join(AUTO_CONF);
    let text = std::fs::read_to_string(&conf).unwrap_or_default();
    // Written afresh at every start (a new binary path, a new --primary-conninfo): our lines,
    // and any earlier copy of them (ALTER SYSTEM rewrites the file without comments), go first.
    let ours = |line: &str| {
        let key = line.split('=').next().unwrap_or("").trim();
        line.trim() == MARK || STANDBY_KEYS.contains(&key)
    };
    let mut kept: String = text
        .lines()
        .filter(|l| !ours(l))
        .map(|l| format!("{l}\n"))
        .collect();
    while kept.ends_with("\n\n") {
        kept.pop();
    }
    kept.push_str(&format!(
        "\n{MARK}\nhot_standby = on\nwal_retrieve_retry_interval = '1s'\nrestore_command = {}\n",
        quote(restore_command)
    ));
    if let Some(c) = primary_conninfo {
        kept.push_str(&format!("primary_conninfo = {}\n", quote(c)));
    }
    if kept != text {
        let tmp = data.join(format!("{AUTO_CONF}.bucketfs"));
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("write {}", tmp.display()))?;
        f.write_all(kept.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &conf).with_context(|| format!("replace {}", conf.display()))?;
        info!(conf = %conf.display(), "standby settings written (restore_command: bucketfs wal-fetch)");
    }
    for path in [&signal, &conf] {
        std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_settings_are_written_afresh_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        assert!(
            prepare_standby(data, "old", None, (0, 0)).is_err(),
            "no PG_VERSION"
        );
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(
            data.join(AUTO_CONF),
            "work_mem = '8MB'\nrestore_command = 'x'\n",
        )
        .unwrap();
        // SAFETY: getuid and getgid have no preconditions.
        let me = unsafe { (libc::getuid(), libc::getgid()) };
        prepare_standby(data, "/old/bucketfs wal-fetch %f %p", None, me).unwrap();
        prepare_standby(data, "/new/bucketfs wal-fetch %f %p", Some("host=p'q"), me).unwrap();
        let conf = std::fs::read_to_string(data.join(AUTO_CONF)).unwrap();
        let lines: Vec<&str> = conf.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            vec![
                "work_mem = '8MB'",
                MARK,
                "hot_standby = on",
                "wal_retrieve_retry_interval = '1s'",
                "restore_command = '/new/bucketfs wal-fetch %f %p'",
                "primary_conninfo = 'host=p''q'",
            ]
        );
        assert!(data.join(STANDBY_SIGNAL).exists());
    }
}
