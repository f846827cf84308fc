//! WAL for a hot standby, from the bucket: `bucketfs wal-fetch`, PostgreSQL's
//! `restore_command` on a replica.
//!
//! A WAL file is served from the newest checkpoint that holds it. The primary's pg_wal is in
//! every checkpoint like any directory: a segment still being written is there with the
//! records flushed by that checkpoint, and the standby asks again for the same segment when
//! it reaches the end of them (PostgreSQL reads a full-size segment whose tail is not valid
//! yet as "not there yet", and retries). A segment the primary has removed since is looked
//! for in older retained checkpoints. Every byte comes through the crc-checked fetch path:
//! a damaged object is an error, never a file with wrong bytes.
//!
//! Exit codes (`restore_command` treats any non-zero code as "not available", and one above
//! 125 as a reason to abort recovery, which nothing here asks for):
//! 0 the file is at DEST; 1 the file is not there (yet); 3 it could not be served (a damaged
//! object, the bucket or the replica unreachable: logged, and retried by PostgreSQL).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path};
use std::sync::Arc;

use parking_lot::RwLock;
use tracing::{debug, warn};

use super::Follower;
use crate::checkpoint::{open_bucket_at, At, BucketFetcher};
use crate::fs::{Fetcher, FileKind, PAGE_SIZE, ROOT_INO};
use crate::manifest::view::View;
use crate::store::ReadStore;

pub const EXIT_FOUND: u8 = 0;
pub const EXIT_MISSING: u8 = 1;
pub const EXIT_ERROR: u8 = 3;

/// What a request for a WAL file gets.
#[derive(Debug)]
pub enum Answer {
    Found {
        epoch: u64,
        bytes: Arc<Vec<u8>>,
    },
    /// Not in the bucket yet (or not a file the primary ever had).
    Missing,
    /// The primary removed it, and no retained checkpoint holds it any more: the standby has
    /// fallen out of the window and cannot catch up from the bucket.
    Gone(String),
    Error(String),
}

/// A WAL segment's name: 24 hex digits (timeline, log, segment).
pub(super) fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The names `restore_command` is asked for: segments, timeline history files, and backup
/// history files. Nothing with a path in it.
pub fn check_name(name: &str) -> Result<(), String> {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = is_segment(name)
        || name
            .strip_suffix(".history")
            .is_some_and(|t| t.len() == 8 && hex(t))
        || name.strip_suffix(".partial").is_some_and(is_segment)
        || name
            .strip_suffix(".backup")
            .and_then(|s| s.split_once('.'))
            .is_some_and(|(seg, off)| is_segment(seg) && hex(off));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a WAL file name (a segment, a .history, .partial or .backup file)"
        ))
    }
}

/// The inode and size of `wal_dir/name` in a view, if it is a regular file there.
pub(super) fn locate(view: &View, wal_dir: &Path, name: &str) -> Option<(u64, u64)> {
    lookup(view, wal_dir, name)
}

fn lookup(view: &View, wal_dir: &Path, name: &str) -> Option<(u64, u64)> {
    let mut ino = ROOT_INO;
    for c in wal_dir.components() {
        let Component::Normal(part) = c else {
            continue;
        };
        let (next, kind) = view.dirents.get(&(ino, part.to_owned()))?;
        if *kind != FileKind::Dir {
            return None;
        }
        ino = *next;
    }
    let (file, kind) = view.dirents.get(&(ino, name.into()))?;
    if *kind != FileKind::File {
        return None;
    }
    Some((*file, view.inodes.get(file)?.size))
}

/// The WAL segment names in a view's `wal_dir`, sorted.
fn segments(view: &View, wal_dir: &Path) -> Vec<String> {
    let mut ino = ROOT_INO;
    for c in wal_dir.components() {
        let Component::Normal(part) = c else {
            continue;
        };
        match view.dirents.get(&(ino, part.to_owned())) {
            Some((next, FileKind::Dir)) => ino = *next,
            _ => return Vec::new(),
        }
    }
    let mut out: Vec<String> = view
        .dirents
        .range((ino, std::ffi::OsString::new())..)
        .take_while(|((parent, _), _)| *parent == ino)
        .filter_map(|((_, n), _)| n.to_str().filter(|n| is_segment(n)).map(str::to_string))
        .collect();
    out.sort();
    out
}

/// The file's bytes, through the crc-checked fetch path.
fn read(
    store: &Arc<dyn ReadStore>,
    rt: &tokio::runtime::Handle,
    view: &Arc<RwLock<View>>,
    ino: u64,
    size: u64,
) -> Result<Vec<u8>, String> {
    let fetcher = BucketFetcher::new(store.clone(), rt.clone(), view.clone());
    let mut bytes = fetcher.fetch(ino, 0..size.div_ceil(PAGE_SIZE))?;
    bytes.truncate(size as usize);
    Ok(bytes)
}

/// Finds `name` in the newest checkpoint (`view`), or in the newest retained one that holds
/// it if the primary has removed it since.
pub fn find(
    store: &Arc<dyn ReadStore>,
    rt: &tokio::runtime::Handle,
    wal_dir: &Path,
    name: &str,
    view: &Arc<RwLock<View>>,
    oldest_retained: u64,
) -> Answer {
    if let Err(e) = check_name(name) {
        return Answer::Error(e);
    }
    let (epoch, found, older) = {
        let v = view.read();
        let older = is_segment(name)
            && segments(&v, wal_dir)
                .first()
                .is_some_and(|first| first.as_str() > name);
        (v.epoch, lookup(&v, wal_dir, name), older)
    };
    if let Some((ino, size)) = found {
        return match read(store, rt, view, ino, size) {
            Ok(bytes) => Answer::Found {
                epoch,
                bytes: Arc::new(bytes),
            },
            Err(e) => Answer::Error(e),
        };
    }
    if !older {
        return Answer::Missing;
    }
    // Removed by the primary since: the newest retained checkpoint that still has it. A
    // segment exists from when it is created to when it is removed, and segments are
    // removed oldest first: "has it, or has only older ones" holds up to its removal.
    match search_older(store, rt, wal_dir, name, epoch, oldest_retained) {
        Ok(Some((view, ino, size))) => {
            let epoch = view.read().epoch;
            match read(store, rt, &view, ino, size) {
                Ok(bytes) => Answer::Found {
                    epoch,
                    bytes: Arc::new(bytes),
                },
                Err(e) => Answer::Error(e),
            }
        }
        Ok(None) => Answer::Gone(format!(
            "WAL segment {name} was removed by the primary, and no checkpoint the bucket \
             retains (from epoch {oldest_retained}) holds it: the standby is further behind \
             than the retention window. It must start again on a newer checkpoint"
        )),
        Err(e) => Answer::Error(e),
    }
}

type Located = (Arc<RwLock<View>>, u64, u64);

fn search_older(
    store: &Arc<dyn ReadStore>,
    rt: &tokio::runtime::Handle,
    wal_dir: &Path,
    name: &str,
    newest: u64,
    oldest_retained: u64,
) -> Result<Option<Located>, String> {
    let mut epochs = rt
        .block_on(crate::checkpoint::list_epochs(
            &**store,
            None,
            oldest_retained,
        ))
        .map_err(|e| e.to_string())?;
    epochs.retain(|&e| e < newest);
    let open = |epoch: u64| -> Result<View, String> {
        open_bucket_at(&**store, rt, Some(At::Epoch(epoch)))
            .map(|o| o.view)
            .map_err(|e| e.to_string())
    };
    // Invariant: epochs[..lo] are before the removal, epochs[hi..] after it.
    let (mut lo, mut hi) = (0usize, epochs.len());
    let mut best: Option<View> = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let view = open(epochs[mid])?;
        let has = lookup(&view, wal_dir, name).is_some();
        let before_it = segments(&view, wal_dir)
            .last()
            .is_none_or(|last| last.as_str() < name);
        if has || before_it {
            lo = mid + 1;
            if has {
                best = Some(view);
            }
        } else {
            hi = mid;
        }
    }
    // The last epoch before the removal is the newest that can hold it.
    if let Some(i) = lo.checked_sub(1) {
        if best.as_ref().is_none_or(|b| b.epoch != epochs[i]) {
            let view = open(epochs[i])?;
            if lookup(&view, wal_dir, name).is_some() {
                best = Some(view);
            }
        }
    }
    Ok(best.and_then(|view| {
        let (ino, size) = lookup(&view, wal_dir, name)?;
        Some((Arc::new(RwLock::new(view)), ino, size))
    }))
}

/// The abstract Unix socket a replica serves WAL on (no file, so no permissions to get
/// right on the cache dir; callers are checked by their credentials instead).
fn socket_name(cache_dir: &Path) -> Vec<u8> {
    // Named by a hash of the path: an abstract name holds at most 107 bytes, and cache dir
    // paths can be longer. The client checks who answers (`request`).
    let dir = std::fs::canonicalize(cache_dir).unwrap_or_else(|_| cache_dir.to_owned());
    let bytes = dir.as_os_str().as_encoded_bytes();
    let reversed: Vec<u8> = bytes.iter().rev().copied().collect();
    format!(
        "bucketfs-wal:{:08x}{:08x}",
        crc32c::crc32c(bytes),
        crc32c::crc32c(&reversed)
    )
    .into_bytes()
}

fn address(cache_dir: &Path) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(socket_name(cache_dir))
}

/// The uid of the process at the other end.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the size given.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

/// Serves WAL requests from the standby (`wal-fetch --cache-dir`) until the process ends.
/// Only root and `allowed_uid` (the user PostgreSQL runs as) are answered.
pub fn serve(
    follower: Arc<Follower>,
    cache_dir: &Path,
    allowed_uid: Option<u32>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = UnixListener::bind_addr(&address(cache_dir)?).with_context(|| {
        format!(
            "listen for WAL requests on the replica's socket (is another replica running on \
             cache dir {}?)",
            cache_dir.display()
        )
    })?;
    std::thread::Builder::new()
        .name("wal-serve".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let uid = peer_uid(&stream);
                if !uid.is_some_and(|u| u == 0 || Some(u) == allowed_uid) {
                    warn!(?uid, "a WAL request from a user that is neither root nor the mount's owner: refused");
                    continue;
                }
                let follower = follower.clone();
                let _ = std::thread::Builder::new()
                    .name("wal-request".into())
                    .spawn(move || {
                        if let Err(e) = answer(&follower, stream) {
                            debug!(error = %e, "a WAL request ended early");
                        }
                    });
            }
        })
        .context("start the WAL server")?;
    Ok(())
}

fn answer(follower: &Follower, stream: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut out = std::io::BufWriter::new(stream);
    let Some(name) = line.trim_end().strip_prefix("wal ") else {
        return writeln!(out, "error expected \"wal NAME\"");
    };
    match follower.fetch_wal(name) {
        Answer::Found { epoch, bytes } => {
            writeln!(out, "ok {epoch} {}", bytes.len())?;
            out.write_all(&bytes)?;
        }
        Answer::Missing => writeln!(out, "missing")?,
        Answer::Gone(why) | Answer::Error(why) => {
            writeln!(out, "error {}", why.replace('\n', " "))?
        }
    }
    out.flush()
}

/// Asks the replica running on `cache_dir` for a WAL file.
pub fn request(cache_dir: &Path, name: &str) -> Answer {
    let ask = || -> std::io::Result<Answer> {
        let stream = UnixStream::connect_addr(&address(cache_dir)?)?;
        // An abstract name can be taken by anyone: only a replica run by root (or by this
        // user) is believed.
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        match peer_uid(&stream) {
            Some(uid) if uid == 0 || uid == me => {}
            uid => {
                return Err(std::io::Error::other(format!(
                    "the process answering is not a replica run by root (uid {uid:?}): refused"
                )))
            }
        }
        let mut w = stream.try_clone()?;
        writeln!(w, "wal {name}")?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line == "missing" {
            return Ok(Answer::Missing);
        }
        if let Some(e) = line.strip_prefix("error ") {
            return Ok(Answer::Error(e.to_string()));
        }
        let bad = || std::io::Error::other(format!("unexpected answer {line:?}"));
        let mut parts = line.strip_prefix("ok ").ok_or_else(bad)?.split(' ');
        let epoch: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let len: usize = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let mut bytes = vec![0u8; len];
        reader.read_exact(&mut bytes)?;
        Ok(Answer::Found {
            epoch,
            bytes: Arc::new(bytes),
        })
    };
    ask().unwrap_or_else(|e| {
        Answer::Error(format!(
            "no replica answers on cache dir {}: {e}",
            cache_dir.display()
        ))
    })
}

/// Writes the file at `dest` whole or not at all (a temporary name, then a rename).
pub fn write_dest(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".bucketfs-partial");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dest)
}

/// `bucketfs wal-fetch`: the exit code `restore_command` needs.
pub fn fetch_command(
    cache_dir: Option<&Path>,
    bucket: Option<&str>,
    wal_dir: &Path,
    name: &str,
    dest: &Path,
) -> u8 {
    let answer = match (cache_dir, bucket) {
        (Some(dir), _) => match check_name(name) {
            Ok(()) => request(dir, name),
            Err(e) => Answer::Error(e),
        },
        (None, Some(url)) => from_bucket(url, wal_dir, name),
        (None, None) => Answer::Error("--cache-dir or --bucket is needed".into()),
    };
    match answer {
        Answer::Found { epoch, bytes } => match write_dest(dest, &bytes) {
            Ok(()) => {
                tracing::debug!(file = name, epoch, bytes = bytes.len(), "WAL file restored");
                EXIT_FOUND
            }
            Err(e) => {
                tracing::error!(file = name, dest = %dest.display(), error = %e, "could not write the WAL file");
                EXIT_ERROR
            }
        },
        // PostgreSQL asks for files that do not exist yet all the time: no noise.
        Answer::Missing => EXIT_MISSING,
        Answer::Gone(e) | Answer::Error(e) => {
            tracing::error!(file = name, "WAL file not served: {e}");
            EXIT_ERROR
        }
    }
}

/// One request straight from the bucket: the newest checkpoint, then the retained ones.
fn from_bucket(url: &str, wal_dir: &Path, name: &str) -> Answer {
    let go = || -> anyhow::Result<Answer> {
        check_name(name).map_err(anyhow::Error::msg)?;
        let url = crate::bucket::BucketUrl::parse(url)?;
        // Multi-threaded: the fetch path spawns its GETs and waits from outside the runtime.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (store, _) = url.open_read_with_stats()?;
        let opened = open_bucket_at(&*store, rt.handle(), None)?;
        let kept = rt
            .block_on(crate::gc::read_state(&*store))?
            .map_or(0, |s| s.oldest_retained)
            .max(rt.block_on(crate::gc::read_boundary(&*store))?);
        let view = Arc::new(RwLock::new(opened.view));
        Ok(find(&store, rt.handle(), wal_dir, name, &view, kept))
    };
    go().unwrap_or_else(|e| Answer::Error(format!("{e:#}")))
}
