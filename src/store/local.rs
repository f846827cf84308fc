//! A directory as an object store: the embedded default when no bucket is configured, and the
//! store of most tests. Keys map to files under the root; every PUT is atomic (a temporary file
//! renamed or linked into place) and durable (fsync of the file and its directory), so a crash
//! leaves the old object or the new one, as S3 would.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, PutMode, ReadStore, StoreError, StoreResult};

/// Temporary files carry this suffix; they are never listed as objects.
const TMP_SUFFIX: &str = ".bucketfs-tmp";

#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    /// How long a `Replace` waits for another's lock on its object (`REPLACE_LOCK_WAIT`).
    replace_wait: Duration,
    /// Called with the root and the key once a PUT has placed its object, before it returns:
    /// a test's other process acting in between.
    #[cfg(test)]
    placed: Option<fn(&Path, &str)>,
}

impl LocalStore {
    /// A store rooted at `root`, which is created if missing.
    pub fn new(root: &Path) -> io::Result<LocalStore> {
        fs::create_dir_all(root)?;
        Ok(LocalStore {
            root: root.to_owned(),
            replace_wait: REPLACE_LOCK_WAIT,
            #[cfg(test)]
            placed: None,
        })
    }

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key.ends_with(TMP_SUFFIX)
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            return Err(StoreError::Permanent {
                op: "resolve",
                key: key.into(),
                message: "invalid object key".into(),
            });
        }
        Ok(self.root.join(key))
    }

    /// Writes `body` to a new temporary file beside `path`, flushed. Its name is this
    /// process's and a number no other PUT of the process takes (one counter for every store:
    /// two may share a root, as `--bucket-wal` and `--bucket-data` naming one place do), and it
    /// is created only if no file has that name (another process with the same pid, in
    /// another container on one shared directory, takes the next number).
    fn write_tmp(&self, path: &Path, body: &[u8]) -> io::Result<PathBuf> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = path.parent().expect("object paths are under the root");
        fs::create_dir_all(dir)?;
        loop {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".{}.{seq}{TMP_SUFFIX}", std::process::id()));
            let mut f = match File::options().write(true).create_new(true).open(&tmp) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            f.write_all(body)?;
            f.sync_all()?;
            return Ok(tmp);
        }
    }

    fn put_sync(&self, key: &str, body: &[u8], mode: &PutMode) -> StoreResult<String> {
        let path = self.path(key)?;
        let io = |e: io::Error| transient("put", key, e);
        // Held until the new object is in place: another Replace of this key, from this
        // process or another, waits for it, then finds the object it names gone.
        let _held = match mode {
            PutMode::Replace { etag } => {
                match lock_if_current(&path, etag, self.replace_wait).map_err(io)? {
                    Some(held) => Some(held),
                    None => return Err(StoreError::PreconditionFailed { key: key.into() }),
                }
            }
            _ => None,
        };
        let tmp = self.write_tmp(&path, body).map_err(io)?;
        // The ETag of the file placed (its inode, size and mtime: a rename or a link keeps
        // them), not of whatever is at the key once it is: another Replace may follow at once.
        let etag = fs::metadata(&tmp).map(|m| etag_from_meta(&m));
        let placed = if *mode == PutMode::Create {
            // link(2) fails with EEXIST if the key exists: atomic across processes.
            fs::hard_link(&tmp, &path)
        } else {
            fs::rename(&tmp, &path)
        };
        if *mode == PutMode::Create || placed.is_err() {
            // Still there under its own name. (After a rename the name is free, and another
            // process's temporary file may already have it.)
            let _ = fs::remove_file(&tmp);
        }
        match placed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::PreconditionFailed { key: key.into() })
            }
            Err(e) => return Err(io(e)),
        }
        #[cfg(test)]
        if let Some(placed) = self.placed {
            placed(&self.root, key);
        }
        sync_dir(path.parent().expect("under the root")).map_err(io)?;
        etag.map_err(io)
    }

    fn get_sync(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        let path = self.path(key)?;
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { key: key.into() })
            }
            Err(e) => return Err(transient("get", key, e)),
        };
        let io = |e: io::Error| transient("get", key, e);
        let len = f.metadata().map_err(io)?.len();
        let Range { start, end } = range.unwrap_or(0..len);
        let (start, end) = (start.min(len), end.min(len));
        let mut buf = vec![0u8; (end.saturating_sub(start)) as usize];
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        f.read_exact(&mut buf).map_err(io)?;
        Ok(Bytes::from(buf))
    }

    fn list_sync(&self, prefix: &str, after: Option<&str>) -> StoreResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        // Only the directory the prefix names can hold its keys (keys are paths).
        let start = prefix
            .rfind('/')
            .and_then(|i| self.path(&prefix[..i]).ok())
            .unwrap_or_else(|| self.root.clone());
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(transient("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| transient("list", prefix, e))?;
                let path = entry.path();
                let ft = entry
                    .file_type()
                    .map_err(|e| transient("list", prefix, e))?;
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Some(key) = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|k| k.to_str())
                    .map(str::to_owned)
                else {
                    continue;
                };
                if key.ends_with(TMP_SUFFIX)
                    || !key.starts_with(prefix)
                    || after.is_some_and(|a| key.as_str() <= a)
                {
                    continue;
                }
                let meta = entry.metadata().map_err(|e| transient("list", prefix, e))?;
                out.push(ObjectMeta {
                    etag: etag_from_meta(&meta),
                    size: meta.len(),
                    key,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[async_trait]
impl ReadStore for LocalStore {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        self.get_sync(key, range)
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.into(),
                size: m.len(),
                etag: etag_from_meta(&m),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(transient("head", key, e)),
        }
    }

    async fn list_after(&self, prefix: &str, after: Option<&str>) -> StoreResult<Vec<ObjectMeta>> {
        self.list_sync(prefix, after)
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        // Local file I/O is fast and the callers are background tasks: run it inline rather
        // than pay a spawn_blocking hop for every object. (A `Replace` may wait for another's
        // to finish; those are GC's few small objects.)
        self.put_sync(key, &body, &mode)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(transient("delete", key, e)),
        }
    }
}

fn transient(op: &'static str, key: &str, e: io::Error) -> StoreError {
    StoreError::Transient {
        op,
        key: key.into(),
        message: e.to_string(),
    }
}

/// An ETag for a local object: its inode, size and mtime, which change on every PUT (each PUT
/// places a new file).
fn etag_from_meta(m: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{:x}-{:x}-{:x}{:09}",
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec()
    )
}

/// How long a `Replace` waits for another's lock on the object: another's check, write, fsync
/// and rename take milliseconds; a holder stopped or stuck on its disk must not hang a GC pass
/// for good.
const REPLACE_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The object at `path`, locked (flock(2), which on a local filesystem conflicts between any
/// two opens, in one process or two) if it is still the one `etag` names once the lock is
/// held; `None` if it is missing or another. Every `Replace` takes this lock before it checks
/// and keeps it until its rename, so no two can both find the same ETag current. A waiter
/// wakes holding the replaced file, which is no longer at `path`: that is "another".
/// (Opened for writing too: over NFS Linux takes flock as an fcntl lock, which needs it for
/// an exclusive lock and conflicts only between processes. Unconditional PUTs and deletes
/// take no lock, as on S3; nothing overwrites or deletes the objects GC replaces.)
fn lock_if_current(path: &Path, etag: &str, wait: Duration) -> io::Result<Option<File>> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let file = match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let waited_from = std::time::Instant::now();
    // SAFETY: flock only reads the descriptor, which `file` owns.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        if waited_from.elapsed() > wait {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("another replace of this object held it for {wait:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let held = file.metadata()?;
    let current = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let same = (held.dev(), held.ino()) == (current.dev(), current.ino());
    Ok((same && etag_from_meta(&current) == etag).then_some(file))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(&dir.path().join("bucket")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn put_get_ranges_list_delete() {
        let (_d, s) = store();
        s.put(
            "a/b/one",
            Bytes::from_static(b"0123456789"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        s.put("a/two", Bytes::from_static(b"xy"), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(&s.get("a/b/one", None).await.unwrap()[..], b"0123456789");
        assert_eq!(&s.get("a/b/one", Some(2..5)).await.unwrap()[..], b"234");
        assert_eq!(&s.get("a/b/one", Some(8..100)).await.unwrap()[..], b"89");
        let keys: Vec<_> = s
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["a/b/one", "a/two"]);
        assert_eq!(s.list("a/b").await.unwrap().len(), 1);
        s.delete("a/two").await.unwrap();
        s.delete("a/two").await.unwrap();
        assert!(matches!(
            s.get("a/two", None).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(s.head("a/two").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn create_fails_with_precondition_when_the_key_exists() {
        let (_d, s) = store();
        s.put("m/1", Bytes::from_static(b"first"), PutMode::Create)
            .await
            .unwrap();
        let err = s
            .put("m/1", Bytes::from_static(b"second"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed { .. }),
            "{err}"
        );
        assert_eq!(&s.get("m/1", None).await.unwrap()[..], b"first");
        // No temporary file is left behind or listed.
        assert_eq!(s.list("").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn replace_needs_the_current_etag() {
        let (_d, s) = store();
        let etag = s
            .put("lease", Bytes::from_static(b"v1"), PutMode::Overwrite)
            .await
            .unwrap();
        let stale = "not-the-etag".to_string();
        let err = s
            .put(
                "lease",
                Bytes::from_static(b"v2"),
                PutMode::Replace { etag: stale },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed { .. }));
        let new = s
            .put(
                "lease",
                Bytes::from_static(b"v2"),
                PutMode::Replace { etag: etag.clone() },
            )
            .await
            .unwrap();
        assert_ne!(new, etag);
        assert_eq!(&s.get("lease", None).await.unwrap()[..], b"v2");
    }

    /// Two stores on one directory stand for two processes (a writer's GC pass and `bucketfs
    /// gc` by hand raising `gc/boundary` on one `file://` bucket): of the replacements that
    /// name the same ETag at once, exactly one may succeed, whichever store each comes from.
    #[test]
    fn of_replacements_racing_from_two_stores_exactly_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bucket");
        let stores = [
            LocalStore::new(&root).unwrap(),
            LocalStore::new(&root).unwrap(),
        ];
        const RACERS: usize = 6;
        for round in 0..30 {
            let etag = stores[0]
                .put_sync(
                    "gc/boundary",
                    format!("round {round}").as_bytes(),
                    &PutMode::Overwrite,
                )
                .unwrap();
            let start = std::sync::Barrier::new(RACERS);
            let won: Vec<usize> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..RACERS)
                    .map(|i| {
                        let (store, start, etag) = (&stores[i % 2], &start, etag.clone());
                        s.spawn(move || {
                            start.wait();
                            let body = format!("round {round} racer {i}");
                            match store.put_sync(
                                "gc/boundary",
                                body.as_bytes(),
                                &PutMode::Replace { etag },
                            ) {
                                Ok(_) => Some(i),
                                Err(StoreError::PreconditionFailed { .. }) => None,
                                Err(e) => panic!("racer {i}: {e}"),
                            }
                        })
                    })
                    .collect();
                racers
                    .into_iter()
                    .filter_map(|r| r.join().unwrap())
                    .collect()
            });
            assert_eq!(
                won.len(),
                1,
                "round {round}: racers {won:?} all replaced one ETag"
            );
            let held = stores[1].get_sync("gc/boundary", None).unwrap();
            assert_eq!(
                &held[..],
                format!("round {round} racer {}", won[0]).as_bytes()
            );
        }
    }

    /// A replace whose object another holds locked (a process stopped in the middle of its
    /// own replace) gives up with an error worth retrying, and succeeds once the lock is
    /// let go.
    #[test]
    fn a_replace_waits_for_anothers_lock_only_so_long() {
        use std::os::unix::io::AsRawFd;
        let (_d, mut s) = store();
        s.replace_wait = Duration::from_millis(200);
        let etag = s.put_sync("gc/state", b"v1", &PutMode::Overwrite).unwrap();
        let other = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(s.path("gc/state").unwrap())
            .unwrap();
        // SAFETY: flock only reads the descriptor, which `other` owns.
        assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX) }, 0);
        let replace = PutMode::Replace { etag };
        let err = s.put_sync("gc/state", b"v2", &replace).unwrap_err();
        assert!(matches!(err, StoreError::Transient { .. }), "{err}");
        assert_eq!(&s.get_sync("gc/state", None).unwrap()[..], b"v1");
        drop(other);
        s.put_sync("gc/state", b"v2", &replace).unwrap();
        assert_eq!(&s.get_sync("gc/state", None).unwrap()[..], b"v2");
    }

    /// Two stores on one root in one process (`--bucket-wal` and `--bucket-data` naming the
    /// same place, whose segments go up side by side) never write one temporary file: one's
    /// would take the other's bytes, and its object hold them under its own key.
    #[test]
    fn two_stores_on_one_root_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bucket");
        let (wal, data) = (
            LocalStore::new(&root).unwrap(),
            LocalStore::new(&root).unwrap(),
        );
        let ours = wal
            .write_tmp(&wal.path("segments/a").unwrap(), b"wal")
            .unwrap();
        let theirs = data
            .write_tmp(&data.path("segments/b").unwrap(), b"data")
            .unwrap();
        assert_ne!(ours, theirs);
        assert_eq!(fs::read(&ours).unwrap(), b"wal");
        assert_eq!(fs::read(&theirs).unwrap(), b"data");
    }

    /// The ETag a PUT returns is the one of the object it placed, not of whatever is at the
    /// key by the time it returns: another process may replace it in between, and with that
    /// one's ETag this writer's next Replace would overwrite it unseen (GC's state, replaced
    /// by a writer's pass and by `bucketfs gc` by hand).
    #[test]
    fn a_put_returns_the_etag_of_what_it_placed_not_of_a_replace_after_it() {
        let (_d, mut s) = store();
        let v1 = s.put_sync("gc/state", b"v1", &PutMode::Overwrite).unwrap();
        s.placed = Some(|root, key| {
            // Another process finds the new object (as a LIST or HEAD gives it) and replaces it.
            let other = LocalStore::new(root).unwrap();
            let path = other.path(key).unwrap();
            let etag = etag_from_meta(&fs::metadata(path).unwrap());
            let theirs = PutMode::Replace { etag };
            other.put_sync(key, b"theirs", &theirs).unwrap();
        });
        let mine = s.put_sync("gc/state", b"mine", &PutMode::Replace { etag: v1 });
        s.placed = None;
        let mine = mine.unwrap();
        assert_eq!(&s.get_sync("gc/state", None).unwrap()[..], b"theirs");
        let replace = PutMode::Replace { etag: mine };
        let err = s
            .put_sync("gc/state", b"over theirs", &replace)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed { .. }),
            "{err}"
        );
        assert_eq!(&s.get_sync("gc/state", None).unwrap()[..], b"theirs");
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let (_d, s) = store();
        for key in ["../x", "/abs", "a//b", "", "a/./b"] {
            let err = s
                .put(key, Bytes::from_static(b"x"), PutMode::Overwrite)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Permanent { .. }), "{key}: {err}");
        }
    }
}
