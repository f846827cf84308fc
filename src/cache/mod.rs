//! The local cache directory: its format marker, its lock, the RocksDB metadata and one
//! sparse cache file per inode.
//!
//! ```text
//! <cache-dir>/bucketfs-cache.json   format marker (magic, version, page size), then a crc line
//! <cache-dir>/lock                  flock'ed by the running mount; holds its pid
//! <cache-dir>/meta/                 RocksDB (see meta.rs)
//! <cache-dir>/data/<xx>/<ino>       file contents, xx = low byte of the inode number
//! ```

mod meta;

#[cfg(test)]
pub(crate) use meta::FailCommit;
pub use meta::{Dirent, Loaded, MetaBatch, MetaError, MetaStore};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Bumped whenever the on-disk layout changes incompatibly. Version 2 keeps a page range
/// only in the bucket as one RocksDB key (version 1: a key per page, which version 2 still
/// reads). Version 3 lets dirty marks run ahead of a writer, over pages that are not dirty
/// and may be only in the bucket: a crash recovers as dirty only the marked pages that are
/// neither absent nor past the end, where a bucketfs of version 2 would upload an absent
/// page's hole. Version 4 records a punched hole before the punch (`MetaBatch::put_punch`)
/// and a start punches again what a crash left recorded: a bucketfs of version 3 would
/// ignore that record, read the bytes the punch was to take out and upload them, and leave
/// the record behind for a later start to punch over what it wrote there since. A cache dir
/// of an older version this bucketfs reads is raised to this one when opened, before
/// anything is written, so that an older bucketfs refuses it from then on.
pub const CACHE_FORMAT_VERSION: u32 = 4;
/// The oldest format version this bucketfs opens.
pub const OLDEST_CACHE_FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "bucketfs-cache";
const FORMAT_FILE: &str = "bucketfs-cache.json";
const LOCK_FILE: &str = "lock";
/// Present while `wipe` empties the cache dir.
const WIPING_FILE: &str = "wiping";
/// Written when the disk under the cache dir failed a write-back (`mark_failed`): the cache
/// dir is not opened again until it is emptied.
const FAILED_FILE: &str = "write-back-failed";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache dir {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "cache dir {path} is not empty and is not a bucketfs cache dir (no {FORMAT_FILE}); \
         refusing to touch it"
    )]
    Foreign { path: PathBuf },
    #[error(
        "cache dir {path} has format version {found}; this bucketfs reads versions \
         {OLDEST_CACHE_FORMAT_VERSION} to {CACHE_FORMAT_VERSION}. Use a matching bucketfs or a \
         new cache dir"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("cache dir {path} has page size {found}; this bucketfs uses {expected}")]
    PageSize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "cache dir {path} cannot be trusted: its disk failed to write back cached bytes \
         ({why}), so it may hold older bytes than the bucket. Check the disk, then remove the \
         cache dir (the next mount restores from the bucket's latest checkpoint) or use \
         another --cache-dir"
    )]
    WriteBackFailed { path: PathBuf, why: String },
    #[error("cache dir {path} is in use by another bucketfs (pid {pid})")]
    InUse { path: PathBuf, pid: String },
    #[error("corrupt {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

fn io_err<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct FormatMarker {
    magic: String,
    version: u32,
    page_size: u64,
    created_unix: u64,
}

/// An open, locked cache directory. Dropping it releases the lock.
pub struct CacheDir {
    root: PathBuf,
    /// The lock file, held open while the cache dir is ours. Also the descriptor syncfs
    /// reports through (`sync_all_data`).
    lock: File,
}

impl CacheDir {
    /// Opens (creating if needed) and locks a cache dir. Checks come before any write, so a
    /// directory that is not ours, or one of another version, is left exactly as it was.
    pub fn open(path: &Path, page_size: u64) -> Result<CacheDir, CacheError> {
        if path.join(WIPING_FILE).exists() {
            // A wipe that did not finish (the process died in it): finish it.
            CacheDir::wipe(path)?;
        }
        match fs::metadata(path) {
            Ok(m) if !m.is_dir() => {
                return Err(CacheError::NotADirectory {
                    path: path.to_owned(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path).map_err(io_err("create cache dir", path))?;
            }
            Err(e) => return Err(io_err("stat cache dir", path)(e)),
        }
        let failed = path.join(FAILED_FILE);
        match fs::read(&failed) {
            Ok(why) => {
                return Err(CacheError::WriteBackFailed {
                    path: path.to_owned(),
                    why: String::from_utf8_lossy(&why).trim().to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", &failed)(e)),
        }
        let root = path
            .canonicalize()
            .map_err(io_err("resolve cache dir", path))?;
        let marker_path = root.join(FORMAT_FILE);
        let existing = read_marker(&marker_path)?;
        match &existing {
            Some(m)
                if !(OLDEST_CACHE_FORMAT_VERSION..=CACHE_FORMAT_VERSION).contains(&m.version) =>
            {
                return Err(CacheError::Version {
                    path: root,
                    found: m.version,
                })
            }
            Some(m) if m.page_size != page_size => {
                return Err(CacheError::PageSize {
                    path: root,
                    found: m.page_size,
                    expected: page_size,
                })
            }
            Some(_) => {}
            None => {
                let foreign = fs::read_dir(&root)
                    .map_err(io_err("list cache dir", &root))?
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name() != LOCK_FILE);
                if foreign {
                    return Err(CacheError::Foreign { path: root });
                }
            }
        }
        let lock = take_lock(&root)?;
        match &existing {
            None => write_marker(&root, page_size, None)?,
            Some(m) if m.version != CACHE_FORMAT_VERSION => {
                write_marker(&root, page_size, Some(m.created_unix))?
            }
            Some(_) => {}
        }
        let data = root.join("data");
        for shard in 0..=0xffu32 {
            let dir = data.join(format!("{shard:02x}"));
            fs::create_dir_all(&dir).map_err(io_err("create data dir", &dir))?;
        }
        Ok(CacheDir { root, lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Empties a cache dir that is not open (a replica's local layer, dropped for a rebase or
    /// a promotion), holding its lock meanwhile. Only a bucketfs cache dir is emptied. A
    /// tombstone written first and removed last makes an interrupted wipe finish at the next
    /// open, never leave a half-emptied cache dir that no open accepts.
    pub fn wipe(path: &Path) -> Result<(), CacheError> {
        let root = path
            .canonicalize()
            .map_err(io_err("resolve cache dir", path))?;
        let tombstone = root.join(WIPING_FILE);
        if !tombstone.exists() && read_marker(&root.join(FORMAT_FILE))?.is_none() {
            return Err(CacheError::Foreign { path: root });
        }
        let _lock = take_lock(&root)?;
        File::create(&tombstone)
            .and_then(|f| f.sync_all())
            .map_err(io_err("write", &tombstone))?;
        sync_dir(&root)?;
        let remove = |path: &Path, dir: bool| {
            let removed = if dir {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            match removed {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(io_err("empty cache dir", path)(e))
                }
                _ => Ok(()),
            }
        };
        for entry in fs::read_dir(&root).map_err(io_err("list cache dir", &root))? {
            let entry = entry.map_err(io_err("list cache dir", &root))?;
            let name = entry.file_name();
            if name == LOCK_FILE || name == WIPING_FILE || name == FORMAT_FILE {
                continue;
            }
            remove(&entry.path(), entry.file_type().is_ok_and(|t| t.is_dir()))?;
        }
        remove(&root.join(FORMAT_FILE), false)?;
        sync_dir(&root)?;
        remove(&tombstone, false)?;
        sync_dir(&root)
    }

    pub fn meta_path(&self) -> PathBuf {
        self.root.join("meta")
    }

    /// Where the contents of inode `ino` are cached.
    pub fn data_path(&self, ino: u64) -> PathBuf {
        self.root
            .join("data")
            .join(format!("{:02x}", ino & 0xff))
            .join(format!("{ino:016x}"))
    }

    /// Inode numbers of every cache file present, for sweeping files whose inode is gone.
    pub fn cached_inodes(&self) -> Result<Vec<u64>, CacheError> {
        let mut out = Vec::new();
        let data = self.root.join("data");
        for shard in fs::read_dir(&data).map_err(io_err("list data dir", &data))? {
            let shard = shard.map_err(io_err("list data dir", &data))?.path();
            for entry in fs::read_dir(&shard).map_err(io_err("list data dir", &shard))? {
                let entry = entry.map_err(io_err("list data dir", &shard))?;
                if let Some(ino) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| u64::from_str_radix(n, 16).ok())
                {
                    out.push(ino);
                }
            }
        }
        Ok(out)
    }

    /// Records that the disk under the cache dir failed a write-back (`why`): no later open
    /// accepts this cache dir until it is emptied (`wipe`, or removed by hand), since its
    /// files may hold older bytes than the bucket. Best effort, on a disk that is failing.
    pub fn mark_failed(&self, why: &str) -> Result<(), CacheError> {
        let path = self.root.join(FAILED_FILE);
        fs::write(&path, format!("{why}\n"))
            .and_then(|()| File::open(&path)?.sync_all())
            .map_err(io_err("write", &path))?;
        sync_dir(&self.root)
    }

    /// Flushes every cache file of this filesystem to disk at once (syncfs), and fails if any
    /// write-back on this filesystem failed since the last call (Linux 5.8 and later report
    /// those). Through the one descriptor held since the open: syncfs reports an error once
    /// to each descriptor, and a descriptor opened after another one was told of it never
    /// is, so one opened per call would miss a write-back failure an earlier call (or any
    /// other syncfs on this filesystem) had already reported. A page whose write-back failed
    /// is no longer dirty: no later syncfs writes it, or fails on it again.
    pub fn sync_all_data(&self) -> Result<(), CacheError> {
        // SAFETY: syncfs only reads the descriptor, which `self.lock` keeps open.
        if unsafe { libc::syncfs(self.lock.as_raw_fd()) } != 0 {
            return Err(io_err("sync cache dir", &self.root)(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

fn read_marker(path: &Path) -> Result<Option<FormatMarker>, CacheError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let corrupt = |why: String| CacheError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let body = unseal(&text).map_err(corrupt)?;
    let marker: FormatMarker =
        serde_json::from_str(body).map_err(|e| corrupt(format!("bad json: {e}")))?;
    if marker.magic != MAGIC {
        return Err(corrupt(format!("magic is {:?}", marker.magic)));
    }
    Ok(Some(marker))
}

/// Writes the format marker of this version (`created_unix`: kept from an older marker).
fn write_marker(root: &Path, page_size: u64, created_unix: Option<u64>) -> Result<(), CacheError> {
    let marker = FormatMarker {
        magic: MAGIC.into(),
        version: CACHE_FORMAT_VERSION,
        page_size,
        created_unix: created_unix.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }),
    };
    let body = serde_json::to_string_pretty(&marker).expect("a plain struct serializes");
    let text = seal(&body);
    let tmp = root.join(format!("{FORMAT_FILE}.tmp"));
    let path = root.join(FORMAT_FILE);
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(text.as_bytes())
        .map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(root)
}

fn sync_dir(root: &Path) -> Result<(), CacheError> {
    File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", root))
}

/// A small text record with its checksum: `body`, then a line `crc32c=XXXXXXXX`. For the
/// cache dir's format marker and the bucket's hot set.
pub fn seal(body: &str) -> String {
    format!("{body}\ncrc32c={:08x}\n", crc32c::crc32c(body.as_bytes()))
}

/// The body of a record `seal` wrote, once its checksum matches.
pub fn unseal(text: &str) -> Result<&str, String> {
    let (body, crc_line) = text
        .trim_end()
        .rsplit_once('\n')
        .ok_or("missing crc line")?;
    let crc = crc_line
        .strip_prefix("crc32c=")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("malformed crc line")?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

fn take_lock(root: &Path) -> Result<File, CacheError> {
    let path = root.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open", &path))?;
    // SAFETY: flock only reads the descriptor, which `file` owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(CacheError::InUse {
                path: root.to_owned(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
            });
        }
        return Err(io_err("lock", &path)(err));
    }
    file.set_len(0).map_err(io_err("write", &path))?;
    write!(file, "{}", std::process::id()).map_err(io_err("write", &path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache dir of format 1, 2 or 3 opens, and its marker says 4 from then on (so that a
    /// bucketfs of an older format refuses what this one may write: ranges of absent pages,
    /// marks ahead of a writer, punched holes to punch again), with its creation time kept.
    #[test]
    fn a_cache_dir_of_an_older_format_is_raised_when_opened() {
        for old in [1, 2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c");
            drop(CacheDir::open(&path, 8192).unwrap());
            let marker = path.join(FORMAT_FILE);
            let mut m = read_marker(&marker).unwrap().unwrap();
            m.version = old;
            m.created_unix = 1_700_000_000;
            let body = serde_json::to_string_pretty(&m).unwrap();
            std::fs::write(&marker, seal(&body)).unwrap();

            drop(CacheDir::open(&path, 8192).unwrap());
            let m = read_marker(&marker).unwrap().unwrap();
            assert_eq!(m.version, CACHE_FORMAT_VERSION, "from format {old}");
            assert_eq!(m.created_unix, 1_700_000_000);
        }
        assert_eq!(CACHE_FORMAT_VERSION, 4);
    }

    #[test]
    fn a_wipe_cut_short_is_finished_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        drop(CacheDir::open(&path, 8192).unwrap());
        std::fs::write(path.join("data/00/leftover"), b"x").unwrap();
        // As if the process died in a wipe after the marker went and before the rest did.
        std::fs::write(path.join(WIPING_FILE), b"").unwrap();
        std::fs::remove_file(path.join(FORMAT_FILE)).unwrap();
        let c = CacheDir::open(&path, 8192).expect("the next open finishes the wipe");
        assert!(!path.join("data/00/leftover").exists());
        assert!(!path.join(WIPING_FILE).exists());
        assert!(path.join(FORMAT_FILE).exists());
        drop(c);
        // A whole wipe: nothing but the lock is left, and the next open starts afresh.
        std::fs::write(path.join("data/00/leftover"), b"x").unwrap();
        CacheDir::wipe(&path).unwrap();
        let left: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(LOCK_FILE)]);
        drop(CacheDir::open(&path, 8192).unwrap());
    }

    #[test]
    fn only_a_bucketfs_cache_dir_is_wiped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), b"x").unwrap();
        assert!(matches!(
            CacheDir::wipe(dir.path()),
            Err(CacheError::Foreign { .. })
        ));
        assert!(dir.path().join("precious").exists());
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let first = CacheDir::open(dir.path(), 8192).unwrap();
        let err = CacheDir::open(dir.path(), 8192)
            .err()
            .expect("second open must fail");
        assert!(matches!(err, CacheError::InUse { .. }), "{err}");
        assert!(err.to_string().contains(&std::process::id().to_string()));
        drop(first);
        CacheDir::open(dir.path(), 8192).expect("lock is released on drop");
    }

    #[test]
    fn foreign_and_future_dirs_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        let err = CacheDir::open(dir.path(), 8192).err().unwrap();
        assert!(matches!(err, CacheError::Foreign { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let dir = tempfile::tempdir().unwrap();
        drop(CacheDir::open(dir.path(), 8192).unwrap());
        let marker = dir.path().join(FORMAT_FILE);
        let text = fs::read_to_string(&marker).unwrap();
        let body = text.rsplit_once("\ncrc32c=").unwrap().0.replace(
            &format!("\"version\": {CACHE_FORMAT_VERSION}"),
            "\"version\": 99",
        );
        let forged = format!("{body}\ncrc32c={:08x}\n", crc32c::crc32c(body.as_bytes()));
        fs::write(&marker, &forged).unwrap();
        let err = CacheDir::open(dir.path(), 8192).err().unwrap();
        assert!(
            matches!(err, CacheError::Version { found: 99, .. }),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&marker).unwrap(), forged);
    }
}
