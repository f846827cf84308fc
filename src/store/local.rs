//! A directory as an object store: the embedded default when no bucket is configured, and the
//! store of most tests. Keys map to files under the root; every PUT is atomic (a temporary file
//! renamed or linked into place) and durable (fsync of the file and its directory), so a crash
//! leaves the old object or the new one, as S3 would.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{ObjectMeta, ObjectStore, PutMode, ReadStore, StoreError, StoreResult};

/// Temporary files carry this suffix; they are never listed as objects.
const TMP_SUFFIX: &str = ".bucketfs-tmp";

#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    /// Serialises conditional PUTs: check-then-rename must be atomic between our own callers.
    /// (Two processes are fenced by `link`, which fails if the key exists, for `Create`.)
    cond_lock: Mutex<()>,
    tmp_seq: AtomicU64,
}

impl LocalStore {
    /// A store rooted at `root`, which is created if missing.
    pub fn new(root: &Path) -> io::Result<LocalStore> {
        fs::create_dir_all(root)?;
        Ok(LocalStore {
            root: root.to_owned(),
            cond_lock: Mutex::new(()),
            tmp_seq: AtomicU64::new(0),
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

    fn write_tmp(&self, path: &Path, body: &[u8]) -> io::Result<PathBuf> {
        let dir = path.parent().expect("object paths are under the root");
        fs::create_dir_all(dir)?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.{seq}{TMP_SUFFIX}", std::process::id()));
        let mut f = File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        Ok(tmp)
    }

    fn put_sync(&self, key: &str, body: &[u8], mode: &PutMode) -> StoreResult<String> {
        let path = self.path(key)?;
        let io = |e: io::Error| transient("put", key, e);
        let _guard = (*mode != PutMode::Overwrite).then(|| self.cond_lock.lock());
        if let PutMode::Replace { etag } = mode {
            let current = etag_of(&path).map_err(io)?;
            if current.as_deref() != Some(etag.as_str()) {
                return Err(StoreError::PreconditionFailed { key: key.into() });
            }
        }
        let tmp = self.write_tmp(&path, body).map_err(io)?;
        let placed = if *mode == PutMode::Create {
            // link(2) fails with EEXIST if the key exists: atomic across processes too.
            fs::hard_link(&tmp, &path)
        } else {
            fs::rename(&tmp, &path)
        };
        let _ = fs::remove_file(&tmp);
        match placed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::PreconditionFailed { key: key.into() })
            }
            Err(e) => return Err(io(e)),
        }
        sync_dir(path.parent().expect("under the root")).map_err(io)?;
        Ok(etag_of(&path).map_err(io)?.unwrap_or_default())
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
        // than pay a spawn_blocking hop for every object.
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

fn etag_of(path: &Path) -> io::Result<Option<String>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(etag_from_meta(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
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
