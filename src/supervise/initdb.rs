//! `--initdb`: the first start of a new database, made safe to interrupt.
//!
//! initdb (or `--initdb-command`) makes the database in a directory of its own on the mount
//! (`.bucketfs-initdb`, its PGDATA), and its files move up to the root only once it has
//! finished and the `--pg-conf` lines are in: a machine stopped or lost in the middle leaves
//! either that directory (removed, and the database made again at the next start) or
//! `.bucketfs-initdb-done` (whose files are moved up at the next start), never a half-made
//! data directory that PostgreSQL would try to start, or that a later start would take for a
//! made one. Both names are in the bucket's checkpoints like any file, so this holds across
//! machines too.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use tracing::{info, warn};

use super::{InitdbSettings, Maker, Supervisor, Whom};
use crate::bucket::Found;

/// Where initdb runs.
const RUNNING: &str = ".bucketfs-initdb";
/// initdb finished: its files are moving up to the root.
const DONE: &str = ".bucketfs-initdb-done";
/// The file that makes a directory a PostgreSQL data directory.
const PG_VERSION: &str = "PG_VERSION";

/// Makes sure the mount holds a data directory, running initdb on a new database. Returns
/// false when a stop signal ended initdb (the program is then not started).
pub(super) fn prepare(
    sup: &mut Supervisor<'_>,
    mnt: &Path,
    found: Option<&Found>,
    initdb: &InitdbSettings,
) -> anyhow::Result<bool> {
    let done = mnt.join(DONE);
    if done.exists() {
        warn!("an initdb finished before bucketfs stopped, but its files had not all moved into place: moving the rest");
        move_up(&done, mnt)?;
        return Ok(true);
    }
    let running = mnt.join(RUNNING);
    if running.exists() {
        warn!("removing what an initdb that did not finish left (bucketfs stopped during it); running it again");
        fs::remove_dir_all(&running)
            .with_context(|| format!("remove the unfinished initdb {}", running.display()))?;
        sync_dir(mnt)?;
    }
    if mnt.join(PG_VERSION).exists() {
        info!("the mount holds a database (PG_VERSION): no initdb");
        return Ok(true);
    }
    let names: Vec<String> = fs::read_dir(mnt)
        .with_context(|| format!("list {}", mnt.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !names.is_empty() {
        bail!(
            "--initdb: {} holds {} entries ({}) but no {PG_VERSION}: it is not a PostgreSQL data \
             directory, and bucketfs runs initdb only on an empty one. Use another bucket \
             prefix (--database-name), or clear this one",
            mnt.display(),
            names.len(),
            names.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(f) = found.filter(|f| f.root_names.iter().any(|n| n == PG_VERSION)) {
        bail!(
            "--initdb: the mount is empty, but the bucket's checkpoint (epoch {}, writer {}) \
             holds a database ({PG_VERSION}): refusing to initialise it again. The cache dir has \
             lost files that the bucket has: mount the bucket on an empty cache dir",
            f.epoch,
            f.writer
        );
    }
    let (maker, mut args): (&Path, Vec<OsString>) = match &initdb.maker {
        Maker::Initdb(path) => (
            path,
            vec![
                "-D".into(),
                running.clone().into_os_string(),
                "--no-instructions".into(),
            ],
        ),
        Maker::Command(path) => (path, Vec::new()),
    };
    args.extend(initdb.args.iter().map(Into::into));
    info!(maker = %maker.display(), args = ?initdb.args, pgdata = %running.display(), "a new database: making it in a directory of its own on the mount");
    let env = [("PGDATA", running.as_os_str())];
    let pid = super::child::spawn(&sup.settings.user, maker.as_os_str(), &args, &env)?;
    let ended = sup.watch(pid, Whom::Group)?;
    // Stopped (whatever its exit code: a command may take SIGTERM and still exit 0), fenced,
    // or failed: what it made is thrown away, and so is what it left running (SIGQUIT: a
    // temporary server's immediate shutdown, no checkpoint of a database about to go).
    let keep = ended.code() == 0 && sup.stop.is_none() && sup.lost.is_none();
    sup.end_the_rest(if keep { libc::SIGTERM } else { libc::SIGQUIT });
    if !keep {
        // initdb removes what it made when it fails, a command may not; the next start must
        // find no trace.
        let _ = fs::remove_dir_all(&running);
        if sup.stop.is_some() || sup.lost.is_some() {
            info!(status = %ended.describe(), "making the new database was stopped; the next start makes it again");
            return Ok(false);
        }
        bail!(
            "making the new database failed: {} ended with {}; the program was not started (its \
             own messages are above)",
            maker.display(),
            ended.describe()
        );
    }
    if !running.join(PG_VERSION).is_file() {
        let _ = fs::remove_dir_all(&running);
        bail!(
            "--initdb: {} exited 0 but made no database in PGDATA ({} has no {PG_VERSION}); \
             the program was not started",
            maker.display(),
            running.display()
        );
    }
    if !initdb.conf.is_empty() {
        let conf = running.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .with_context(|| format!("open {}", conf.display()))?;
        let mut text = String::from("\n# Added by bucketfs run --pg-conf after initdb\n");
        for line in &initdb.conf {
            text.push_str(line);
            text.push('\n');
        }
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("append --pg-conf lines to {}", conf.display()))?;
        info!(
            lines = initdb.conf.len(),
            "--pg-conf lines appended to postgresql.conf"
        );
    }
    // PostgreSQL checks its data directory's mode: give the root the one initdb chose.
    let mode = fs::metadata(&running)
        .with_context(|| format!("stat {}", running.display()))?
        .permissions()
        .mode()
        & 0o7777;
    fs::set_permissions(mnt, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", mnt.display()))?;
    fs::rename(&running, &done).with_context(|| format!("rename {RUNNING} to {DONE}"))?;
    sync_dir(mnt)?;
    move_up(&done, mnt)?;
    info!("initdb done: a new database on the mount");
    Ok(true)
}

/// Moves every entry of `from` into `to`, then removes `from`, durably.
fn move_up(from: &Path, to: &Path) -> anyhow::Result<()> {
    for e in fs::read_dir(from).with_context(|| format!("list {}", from.display()))? {
        let e = e.with_context(|| format!("list {}", from.display()))?;
        let target = to.join(e.file_name());
        fs::rename(e.path(), &target)
            .with_context(|| format!("move {} into {}", e.path().display(), to.display()))?;
    }
    sync_dir(to)?;
    fs::remove_dir(from).with_context(|| format!("remove {}", from.display()))?;
    sync_dir(to)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}
