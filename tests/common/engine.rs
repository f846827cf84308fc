//! An engine without a mount for tests: the fs core with its checkpointer (driven by the
//! test, no background thread), the fetcher and restore, over a local-directory bucket behind
//! the fault injector. "Crash" drops everything without a clean stop, as kill -9 would.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bucketfs::cache::CacheDir;
use bucketfs::checkpoint::{
    open_bucket, restore_of, BucketFetcher, CheckpointSettings, Checkpointer, GcSettings,
};
use bucketfs::fs::{Caller, Fetcher, Fs, FsOptions, SetAttr, PAGE_SIZE, ROOT_INO};
use bucketfs::store::{FaultPlan, FaultyStore, LocalStore, ObjectStore};

pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
pub const PAGE: usize = PAGE_SIZE as usize;

/// One engine: a cache dir attached to a bucket directory, with its checkpointer (driven by
/// the test: no background thread) and the fetcher that serves absent pages.
pub struct Engine {
    pub fs: Arc<Fs>,
    pub cp: Arc<Checkpointer>,
    pub plan: Arc<FaultPlan>,
    /// Reads what the bucket's latest checkpoint holds, past the cache dir.
    bucket: Arc<BucketFetcher>,
    rt: tokio::runtime::Runtime,
}

/// Changes checkpoint settings before the engine starts.
pub type Tune = Box<dyn FnOnce(&mut CheckpointSettings)>;

pub struct Options {
    pub local_only: Vec<String>,
    /// GC and compaction settings (`Checkpointer::gc_pass` needs them).
    pub gc: Option<GcSettings>,
    /// A base manifest every this many checkpoints (`base_every - 1` deltas between), by
    /// count alone: `max_chain` is set the same (`tune` may change both).
    pub base_every: u32,
    /// Wraps the fetcher (a test that must hold fetches up).
    #[allow(clippy::type_complexity)]
    pub wrap_fetcher: Option<Box<dyn FnOnce(Arc<dyn Fetcher>) -> Arc<dyn Fetcher>>>,
    /// Changes the checkpoint settings (segment size, compression, upload concurrency).
    pub tune: Option<Tune>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            local_only: CheckpointSettings::default().local_only,
            gc: None,
            base_every: CheckpointSettings::default().base_every,
            wrap_fetcher: None,
            tune: None,
        }
    }
}

impl Engine {
    /// Opens `cache` on the bucket in `bucket`: a new bucket gets its first checkpoint, an
    /// existing one is taken over (and restored into an empty cache dir).
    pub fn open(cache: &Path, bucket: &Path, options: Options) -> Engine {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let plan = Arc::new(FaultPlan::default());
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(bucket).expect("bucket dir"));
        let store: Arc<dyn ObjectStore> = Arc::new(FaultyStore::new(local, plan.clone()));
        let dir = CacheDir::open(cache, PAGE_SIZE).expect("open cache dir");
        let fs = Arc::new(Fs::new(dir, &FsOptions::default()).expect("open fs"));
        let opened = open_bucket(&*store, rt.handle(), true).expect("open bucket");
        let mut settings = CheckpointSettings {
            local_only: options.local_only,
            gc: options.gc,
            base_every: options.base_every,
            max_chain: options.base_every,
            ..CheckpointSettings::default()
        };
        if let Some(tune) = options.tune {
            tune(&mut settings);
        }
        let cp = Arc::new(Checkpointer::new(
            fs.clone(),
            store.clone(),
            rt.handle().clone(),
            settings,
            format!("{:016x}", fastrand::u64(..)),
            &opened,
        ));
        let restoring = opened.latest.is_some() && fs.is_empty().expect("is empty");
        if opened.latest.is_none() {
            cp.checkpoint(false).expect("first checkpoint");
        } else {
            let clean = opened.latest.as_ref().is_some_and(|m| m.clean_stop);
            cp.take_over(clean).expect("take over");
        }
        if restoring {
            fs.install(restore_of(&cp.view().read()))
                .expect("install restore");
        }
        let bucket = Arc::new(BucketFetcher::new(
            store.clone(),
            rt.handle().clone(),
            cp.view(),
        ));
        let fetcher: Arc<dyn Fetcher> = bucket.clone();
        let fetcher = match options.wrap_fetcher {
            Some(wrap) => wrap(fetcher),
            None => fetcher,
        };
        fs.set_fetcher(fetcher);
        Engine {
            fs,
            cp,
            plan,
            bucket,
            rt,
        }
    }

    /// kill -9: nothing is stopped cleanly. Every handle to the core must be gone after this
    /// (the cache dir's locks with it), or reopening it fails.
    pub fn crash(self) {
        let Engine {
            fs,
            cp,
            plan,
            bucket,
            rt,
        } = self;
        drop((cp, plan, bucket));
        assert_eq!(
            Arc::strong_count(&fs),
            1,
            "something still holds the filesystem"
        );
        drop(fs);
        rt.shutdown_background();
    }

    pub fn checkpoint(&self) {
        self.cp.checkpoint(false).expect("checkpoint");
    }

    pub fn create(&self, name: &str) -> u64 {
        self.create_in(ROOT_INO, name)
    }

    pub fn create_in(&self, dir: u64, name: &str) -> u64 {
        let (attr, _) = self
            .fs
            .create(dir, OsStr::new(name), 0o644, ROOT, false)
            .expect("create");
        attr.ino
    }

    pub fn ino(&self, name: &str) -> u64 {
        self.fs
            .lookup(ROOT_INO, OsStr::new(name))
            .expect("lookup")
            .ino
    }

    /// open, pwrite, fsync, close: as Postgres writes a file.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) {
        self.fs.open(ino, libc::O_RDWR).expect("open");
        self.fs.write(ino, offset, data).expect("write");
        self.fs.fsync(ino, false).expect("fsync");
        self.fs.release(ino).expect("close");
    }

    pub fn read_all(&self, ino: u64) -> Vec<u8> {
        let size = self.fs.getattr(ino).expect("getattr").size;
        self.fs.open(ino, libc::O_RDONLY).expect("open");
        let bytes = self.fs.read(ino, 0, size as u32).expect("read");
        self.fs.release(ino).expect("close");
        bytes
    }

    pub fn truncate(&self, ino: u64, size: u64) {
        set_size(&self.fs, ino, size);
    }

    /// File `ino` as the bucket's latest checkpoint holds it, read from the bucket, not the
    /// cache dir. None: not there, or there only without a name (a restore leaves it out).
    pub fn in_bucket(&self, ino: u64) -> Option<Vec<u8>> {
        let view = self.cp.view();
        let named = view.read().inodes.get(&ino).is_some_and(|a| a.nlink > 0);
        named.then(|| self.in_bucket_nameless(ino))
    }

    /// File `ino` as the bucket's latest checkpoint holds it, with a name or without (a file
    /// unlinked while open). Panics if the checkpoint does not hold it.
    pub fn in_bucket_nameless(&self, ino: u64) -> Vec<u8> {
        let size = self
            .cp
            .view()
            .read()
            .inodes
            .get(&ino)
            .expect("in the bucket's image")
            .size;
        let mut bytes = self
            .bucket
            .fetch(ino, 0..size.div_ceil(PAGE_SIZE))
            .expect("fetch from the bucket");
        bytes.truncate(size as usize);
        bytes
    }

    /// The names in the root directory of the bucket's latest checkpoint.
    pub fn names_in_bucket(&self) -> Vec<String> {
        let view = self.cp.view();
        let view = view.read();
        view.dirents
            .keys()
            .filter(|(parent, _)| *parent == ROOT_INO)
            .map(|(_, name)| name.to_string_lossy().into_owned())
            .collect()
    }
}

/// ftruncate(2) of file `ino` to `size`.
pub fn set_size(fs: &Fs, ino: u64, size: u64) {
    let changes = SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    fs.setattr(ino, &changes).expect("truncate");
}

/// `pages` pages, page i filled with `tag + i`.
pub fn pattern(tag: u8, pages: usize) -> Vec<u8> {
    (0..pages)
        .flat_map(|i| std::iter::repeat_n(tag.wrapping_add(i as u8), PAGE))
        .collect()
}

/// Compares two file images page by page, naming the first page that differs.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(page) = (0..want.len().div_ceil(PAGE)).find(|p| {
        let r = p * PAGE..((p + 1) * PAGE).min(want.len());
        got[r.clone()] != want[r]
    }) {
        let at = page * PAGE;
        panic!(
            "{what}: page {page} differs (first bytes {:?}, want {:?})",
            &got[at..at + 4.min(got.len() - at)],
            &want[at..at + 4.min(want.len() - at)]
        );
    }
}

pub struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        Dirs::new_in(&std::env::temp_dir())
    }

    /// In memory (/dev/shm) where the machine has it: for the model test, whose thousands of
    /// cases would otherwise wait on the disk's fsyncs. What it checks does not depend on
    /// the disk (a process crash keeps what was written either way).
    pub fn in_memory() -> Dirs {
        let shm = Path::new("/dev/shm");
        Dirs::new_in(if shm.is_dir() { shm } else { Path::new("/tmp") })
    }

    /// On a disk's filesystem (/var/tmp), for a test that watches the page cache: /tmp may be
    /// tmpfs, whose pages never stop being dirty.
    pub fn on_disk() -> Dirs {
        Dirs::new_in(Path::new("/var/tmp"))
    }

    fn new_in(parent: &Path) -> Dirs {
        let tmp = tempfile::tempdir_in(parent).expect("tempdir");
        let root = tmp.path().to_owned();
        Dirs { _tmp: tmp, root }
    }
    pub fn cache(&self, n: u32) -> PathBuf {
        self.root.join(format!("cache{n}"))
    }
    pub fn bucket(&self) -> PathBuf {
        self.root.join("bucket")
    }
}

/// After a crash of `e`: the cache dir gives `want` back as the bytes of `name`, and so does
/// a restore into an empty cache dir of the bucket as a checkpoint from it leaves it.
pub fn assert_survives_a_crash(dirs: &Dirs, e: Engine, name: &str, want: &[u8]) {
    e.crash();
    let e = Engine::open(&dirs.cache(0), &dirs.bucket(), Options::default());
    assert_same("after the crash", &e.read_all(e.ino(name)), want);
    e.checkpoint();
    e.crash();
    assert_same("restored", &restored(dirs, 1, name), want);
}

/// A restore of the bucket into a new, empty cache dir, and `name`'s bytes there.
pub fn restored(dirs: &Dirs, n: u32, name: &str) -> Vec<u8> {
    let e = Engine::open(&dirs.cache(n), &dirs.bucket(), Options::default());
    let ino = e.ino(name);
    let bytes = e.read_all(ino);
    e.crash();
    bytes
}
