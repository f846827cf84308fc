//! The metadata store: inodes, directory entries and dirty-page markers in RocksDB.
//!
//! Every change is one atomic `WriteBatch` written to the RocksDB WAL without syncing, so it
//! survives a crash of this process at once; `sync_to` makes it survive a crash of the machine.
//! Keys are big-endian so that RocksDB's order is (parent, name) and (inode, page) order.

use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB,
};

use crate::fs::attr::{Attr, DecodeError, FileKind};
use crate::fs::pageset::PageSet;

const CF_INODES: &str = "inodes";
const CF_DIRENTS: &str = "dirents";
const CF_DIRTY: &str = "dirty";
const CF_META: &str = "meta";
/// ino -> the lowest page count a file was truncated to since its last checkpoint.
const CF_TRUNCS: &str = "truncs";
/// (ino, first page) -> end page (big-endian): a range of pages whose bytes are in the bucket
/// but not (yet) in the cache file, one key per range of the inode's in-memory set (format 1
/// wrote (ino, page) -> () for every page; still read).
const CF_ABSENT: &str = "absent";
/// ino -> (): files whose dirty marks a cut dropped because it found them only under
/// `--local-only` paths; if one leaves them, all of it is dirty again.
const CF_LOCAL_ONLY: &str = "local_only";
const KEY_NEXT_INO: &[u8] = b"next_ino";
const KEY_EPOCH: &[u8] = b"epoch";
/// In the meta column family, followed by an inode number (big-endian): a hole recorded and
/// not yet known punched in that inode's cache file (`MetaBatch::put_punch`). The value is
/// the hole's first byte and its end, each a little-endian u64.
const KEY_PUNCH: &[u8] = b"punch/";

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("rocksdb {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
    #[error("corrupt {cf} record: {why}")]
    BadRecord { cf: &'static str, why: &'static str },
    /// The mount stopped: its memory may hold a change these records do not, and nothing
    /// more is written on top of that (`MetaStore::refuse_commits`).
    #[error("the mount has stopped: nothing more is written to the cache dir's records")]
    Stopped,
    /// An earlier sync of the log failed: no later one may vouch for what it covered
    /// (`MetaStore::sync_to`).
    #[error("an earlier sync of the cache dir's log failed: nothing more is made durable")]
    SyncFailedBefore,
    #[cfg(test)]
    #[error("a test's injected failure (of a commit or a sync)")]
    Injected,
}

/// Tests: how the next commit fails (`MetaStore::fail_next_commit`).
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum FailCommit {
    /// The batch never reaches RocksDB.
    Lost,
    /// The batch is applied, and the commit reports a failure all the same.
    Applied,
}

fn db_err(context: &'static str) -> impl FnOnce(rocksdb::Error) -> MetaError {
    move |source| MetaError::Db { context, source }
}

/// One directory entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileKind,
}

/// What `load` reads back at mount.
pub struct Loaded {
    pub inodes: Vec<Attr>,
    pub dirty: Vec<(u64, PageSet)>,
    pub truncs: Vec<(u64, u64)>,
    /// Each inode's absent pages, and whether its keys are exactly the set's ranges (a key
    /// per range, as `MetaBatch::change_absent` needs; not after format 1's key per page).
    pub absent: Vec<(u64, PageSet, bool)>,
    pub local_only: Vec<u64>,
    /// Holes recorded and not known punched: each inode and the bytes of its cache file.
    pub punches: Vec<(u64, Range<u64>)>,
    pub next_ino: Option<u64>,
    pub epoch: Option<u64>,
}

pub struct MetaStore {
    db: DB,
    /// Highest sequence number known to be synced to disk.
    synced: AtomicU64,
    /// Syncs of the log that reached the disk (`sync_to` calls that flushed).
    syncs: AtomicU64,
    /// The sequence number of the last batch that may not lag behind the bucket (every batch
    /// but those `MetaBatch::may_lag` marks): what a checkpoint syncs before its manifest can
    /// land (`sync_ahead_of_bucket`).
    must_not_lag: AtomicU64,
    /// Held by the one thread syncing the WAL; the others wait and usually find their
    /// sequence number already covered (group commit).
    sync_lock: Mutex<()>,
    /// Moves on with every batch that adds or removes a directory entry: the same number
    /// twice means the same names (a cut reuses its walk of the tree).
    names: AtomicU64,
    /// Set by `refuse_commits`: every later commit fails.
    refusing: AtomicBool,
    /// A sync of the log failed: every later one that has something to sync fails.
    sync_failed: AtomicBool,
    #[cfg(test)]
    fail_next: Mutex<Option<FailCommit>>,
    /// Tests: the next sync of the log fails (`fail_next_sync`).
    #[cfg(test)]
    fail_next_sync: AtomicBool,
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Metadata is small; keep the WAL short so recovery after a crash is quick.
        opts.set_max_total_wal_size(64 << 20);
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        // All column families' memtables together stay under 8 MiB. RocksDB also sizes the
        // space it preallocates for each new WAL from this (by default 70 MiB at every open).
        opts.set_db_write_buffer_size(8 << 20);
        opts.set_manifest_preallocation_size(1 << 20);
        // Opening loads every table file's handle; RocksDB's default starts 16 threads per
        // column family for that (112 here, at every start) for a few small files.
        opts.set_max_file_opening_threads(1);
        let cfs = [
            CF_INODES,
            CF_DIRENTS,
            CF_DIRTY,
            CF_META,
            CF_TRUNCS,
            CF_ABSENT,
            CF_LOCAL_ONLY,
        ]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(db_err("open"))?;
        let store = MetaStore {
            db,
            synced: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            must_not_lag: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            names: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            sync_failed: AtomicBool::new(false),
            #[cfg(test)]
            fail_next: Mutex::new(None),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
        };
        // What RocksDB recovered after a crash may sit only in the page cache: make it
        // durable before anything is acknowledged on top of it.
        store.sync_to(store.latest_seq())?;
        Ok(store)
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    pub fn latest_seq(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Writes a batch atomically (not synced) and returns a sequence number that covers it.
    pub fn commit(&self, batch: MetaBatch) -> Result<u64, MetaError> {
        if batch.batch.is_empty() {
            return Ok(self.latest_seq());
        }
        if self.refusing.load(Ordering::Acquire) {
            return Err(MetaError::Stopped);
        }
        #[cfg(test)]
        let written = match self.fail_next.lock().take() {
            Some(FailCommit::Lost) => Err(MetaError::Injected),
            Some(FailCommit::Applied) => self
                .db
                .write(batch.batch)
                .map_err(db_err("write batch"))
                .and(Err(MetaError::Injected)),
            None => self.db.write(batch.batch).map_err(db_err("write batch")),
        };
        #[cfg(not(test))]
        let written = self.db.write(batch.batch).map_err(db_err("write batch"));
        let seq = self.latest_seq();
        // Even after an error: whether RocksDB applied any of it is not known.
        if batch.names {
            self.names.fetch_add(1, Ordering::AcqRel);
        }
        if !batch.may_lag {
            self.must_not_lag.fetch_max(seq, Ordering::AcqRel);
        }
        written?;
        Ok(seq)
    }

    /// From now on every commit with something to write fails (`MetaError::Stopped`): the
    /// mount has stopped, and a change queued behind the one that stopped it must not write
    /// memory's attributes over records that may disagree with them. Syncs still sync what
    /// was committed before (unless one failed: `sync_to`).
    pub fn refuse_commits(&self) {
        self.refusing.store(true, Ordering::Release);
    }

    /// The sequence number of the last batch that may not lag behind the bucket: syncing to
    /// it makes every name, size and mark durable (`MetaBatch::may_lag`).
    pub fn must_not_lag_seq(&self) -> u64 {
        self.must_not_lag.load(Ordering::Acquire)
    }

    /// Tests: the next commit that has something to write fails, as `how` says.
    #[cfg(test)]
    pub(crate) fn fail_next_commit(&self, how: FailCommit) {
        *self.fail_next.lock() = Some(how);
    }

    /// Tests: the next sync of the log that has something to sync fails.
    #[cfg(test)]
    pub(crate) fn fail_next_sync(&self) {
        self.fail_next_sync.store(true, Ordering::Release);
    }

    /// The names' generation: it changes whenever a committed batch added or removed a
    /// directory entry, so the directory entries are the same as long as it is.
    pub fn names_generation(&self) -> u64 {
        self.names.load(Ordering::Acquire)
    }

    /// True when every batch committed so far is synced.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= self.latest_seq()
    }

    /// Returns once every change up to `seq` is on disk. Concurrent callers share one sync.
    /// Once a sync has failed, every later one that has something to sync fails too: the
    /// kernel may have dropped the log's pages it could not write, and a sync that then
    /// succeeded would vouch for them. (RocksDB latches such a failure too, but resumes
    /// after some, a full disk's; the failure is latched here under the lock, before a
    /// caller waiting for it can sync.)
    pub fn sync_to(&self, seq: u64) -> Result<(), MetaError> {
        if self.synced.load(Ordering::Acquire) >= seq && seq != 0 {
            return Ok(());
        }
        let _leader = self.sync_lock.lock();
        if self.synced.load(Ordering::Acquire) >= seq && seq != 0 {
            return Ok(());
        }
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(MetaError::SyncFailedBefore);
        }
        let covered = self.latest_seq();
        #[cfg(test)]
        let flushed = match self.fail_next_sync.swap(false, Ordering::AcqRel) {
            true => Err(MetaError::Injected),
            false => self.db.flush_wal(true).map_err(db_err("sync wal")),
        };
        #[cfg(not(test))]
        let flushed = self.db.flush_wal(true).map_err(db_err("sync wal"));
        if flushed.is_err() {
            self.sync_failed.store(true, Ordering::Release);
        }
        flushed?;
        self.synced.fetch_max(covered, Ordering::AcqRel);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Returns once every batch that may not lag behind the bucket is on disk (those that may,
    /// `MetaBatch::may_lag`, are synced with them only if they came before). A checkpoint
    /// calls it before its manifest can land; when everything since the last sync may lag
    /// (under `--durability remote`, a commit that wrote only into pages marked already),
    /// it is no flush at all.
    pub fn sync_ahead_of_bucket(&self) -> Result<(), MetaError> {
        match self.must_not_lag_seq() {
            0 => Ok(()),
            seq => self.sync_to(seq),
        }
    }

    /// The highest sequence number known to be synced.
    pub fn synced_seq(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// How many times the log was synced to the disk since it was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub fn get_dirent(&self, parent: u64, name: &OsStr) -> Result<Option<Dirent>, MetaError> {
        let key = dirent_key(parent, name);
        match self
            .db
            .get_pinned_cf(self.cf(CF_DIRENTS), &key)
            .map_err(db_err("get dirent"))?
        {
            None => Ok(None),
            Some(v) => decode_dirent(name.to_owned(), &v).map(Some),
        }
    }

    /// All entries of a directory, in name order.
    pub fn list_dir(&self, parent: u64) -> Result<Vec<Dirent>, MetaError> {
        let prefix = parent.to_be_bytes();
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_DIRENTS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(db_err("list dir"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let name = OsString::from_vec(k[8..].to_vec());
            out.push(decode_dirent(name, &v)?);
        }
        Ok(out)
    }

    pub fn dir_is_empty(&self, parent: u64) -> Result<bool, MetaError> {
        let prefix = parent.to_be_bytes();
        let mut iter = self.db.iterator_cf(
            self.cf(CF_DIRENTS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        match iter.next() {
            None => Ok(true),
            Some(item) => {
                let (k, _) = item.map_err(db_err("list dir"))?;
                Ok(!k.starts_with(&prefix))
            }
        }
    }

    /// Reads everything the fs core keeps in memory.
    pub fn load(&self) -> Result<Loaded, MetaError> {
        let mut inodes = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_INODES), IteratorMode::Start) {
            let (k, v) = item.map_err(db_err("load inodes"))?;
            let ino = be_u64(&k).ok_or(MetaError::BadRecord {
                cf: CF_INODES,
                why: "key is not 8 bytes",
            })?;
            inodes.push(Attr::decode(ino, &v)?);
        }
        let mut dirty: Vec<(u64, PageSet)> = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_DIRTY), IteratorMode::Start) {
            let (k, _) = item.map_err(db_err("load dirty pages"))?;
            if k.len() != 16 {
                return Err(MetaError::BadRecord {
                    cf: CF_DIRTY,
                    why: "key is not 16 bytes",
                });
            }
            let ino = be_u64(&k[..8]).expect("length checked");
            let page = be_u64(&k[8..]).expect("length checked");
            match dirty.last_mut() {
                Some((last, set)) if *last == ino => {
                    set.insert(page..page + 1);
                }
                _ => {
                    let mut set = PageSet::new();
                    set.insert(page..page + 1);
                    dirty.push((ino, set));
                }
            }
        }
        let absent = self.load_absent()?;
        let mut truncs = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TRUNCS), IteratorMode::Start) {
            let (k, v) = item.map_err(db_err("load truncations"))?;
            let bad = || MetaError::BadRecord {
                cf: CF_TRUNCS,
                why: "key or value is not 8 bytes",
            };
            let ino = be_u64(&k).ok_or_else(bad)?;
            let keep = u64::from_le_bytes(v.as_ref().try_into().map_err(|_| bad())?);
            truncs.push((ino, keep));
        }
        let mut local_only = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_LOCAL_ONLY), IteratorMode::Start)
        {
            let (k, _) = item.map_err(db_err("load local-only marks"))?;
            local_only.push(be_u64(&k).ok_or(MetaError::BadRecord {
                cf: CF_LOCAL_ONLY,
                why: "key is not 8 bytes",
            })?);
        }
        Ok(Loaded {
            inodes,
            dirty,
            truncs,
            absent,
            local_only,
            punches: self.load_punches()?,
            next_ino: self.get_meta_u64(KEY_NEXT_INO)?,
            epoch: self.get_meta_u64(KEY_EPOCH)?,
        })
    }

    /// The holes recorded and not known punched (`MetaBatch::put_punch`).
    fn load_punches(&self) -> Result<Vec<(u64, Range<u64>)>, MetaError> {
        let bad = |why| MetaError::BadRecord { cf: CF_META, why };
        let mut out = Vec::new();
        let from = IteratorMode::From(KEY_PUNCH, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_META), from) {
            let (k, v) = item.map_err(db_err("load punched holes"))?;
            let Some(ino) = k.strip_prefix(KEY_PUNCH) else {
                break;
            };
            let ino = be_u64(ino).ok_or_else(|| bad("a punched hole's inode is not 8 bytes"))?;
            let (start, end) = v
                .split_at_checked(8)
                .and_then(|(s, e)| Some((le_u64(s)?, le_u64(e)?)))
                .filter(|(s, e)| s < e)
                .ok_or_else(|| bad("a punched hole is not two offsets, the first lower"))?;
            out.push((ino, start..end));
        }
        Ok(out)
    }

    /// The absent pages of every inode: a key per range (its first page, the end as the
    /// value), or in a cache dir of format 1 a key per page with an empty value; and whether
    /// the inode's keys are its set's ranges one for one (no two merged into one range).
    fn load_absent(&self) -> Result<Vec<(u64, PageSet, bool)>, MetaError> {
        let bad = |why| MetaError::BadRecord { cf: CF_ABSENT, why };
        let mut out: Vec<(u64, PageSet, usize)> = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_ABSENT), IteratorMode::Start) {
            let (k, v) = item.map_err(db_err("load absent pages"))?;
            if k.len() != 16 {
                return Err(bad("key is not 16 bytes"));
            }
            let ino = be_u64(&k[..8]).expect("length checked");
            let start = be_u64(&k[8..]).expect("length checked");
            let end = match v.len() {
                0 => start
                    .checked_add(1)
                    .ok_or(bad("page number out of range"))?,
                8 => be_u64(&v).expect("length checked"),
                _ => return Err(bad("value is neither empty nor a page number")),
            };
            if end <= start {
                return Err(bad("range ends before it starts"));
            }
            match out.last_mut() {
                Some((last, set, keys)) if *last == ino => {
                    set.insert(start..end);
                    *keys += 1;
                }
                _ => {
                    let mut set = PageSet::new();
                    set.insert(start..end);
                    out.push((ino, set, 1));
                }
            }
        }
        // As many keys as ranges: none was merged with another, so each is one range.
        Ok(out
            .into_iter()
            .map(|(ino, set, keys)| {
                let exact = set.iter().count() == keys;
                (ino, set, exact)
            })
            .collect())
    }

    /// How many keys mark absent pages.
    #[cfg(test)]
    pub(crate) fn absent_keys(&self) -> usize {
        self.db
            .iterator_cf(self.cf(CF_ABSENT), IteratorMode::Start)
            .count()
    }

    /// A small value in the meta column family (None if never set).
    pub fn get_meta_bytes(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.db
            .get_cf(self.cf(CF_META), key)
            .map_err(db_err("get meta"))
    }

    fn get_meta_u64(&self, key: &[u8]) -> Result<Option<u64>, MetaError> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_META), key)
            .map_err(db_err("get meta"))?
        {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| MetaError::BadRecord {
                    cf: CF_META,
                    why: "value is not 8 bytes",
                })?;
                Ok(Some(u64::from_le_bytes(bytes)))
            }
        }
    }

    pub fn batch(&self) -> MetaBatch<'_> {
        MetaBatch {
            store: self,
            batch: WriteBatch::default(),
            names: false,
            may_lag: false,
        }
    }
}

/// A set of changes that commit together or not at all.
pub struct MetaBatch<'a> {
    store: &'a MetaStore,
    batch: WriteBatch,
    /// Adds or removes a directory entry.
    names: bool,
    /// May lag behind the bucket (`may_lag`).
    may_lag: bool,
}

impl MetaBatch<'_> {
    /// Marks the batch as one that a power loss may drop although a checkpoint committed
    /// after it: it records only what the bucket holds already, or a counter of this mount's
    /// own. Lost, it costs pages uploaded again, never a wrong byte: marks deleted because the
    /// bucket holds their pages (which a crash then recovers as dirty), a truncation the
    /// bucket holds (sent again with those pages), the epoch a cut closed, the bucket epoch
    /// the cache dir is in step with (accepted when behind with the same writer). The
    /// log is ordered, so a batch after it that is synced takes it along. Every other batch
    /// is synced before the next manifest can land (`MetaStore::sync_ahead_of_bucket`).
    pub fn may_lag(&mut self) {
        self.may_lag = true;
    }

    pub fn put_inode(&mut self, attr: &Attr) {
        let cf = self.store.cf(CF_INODES);
        self.batch.put_cf(cf, attr.ino.to_be_bytes(), attr.encode());
    }

    /// Deletes an inode with its dirty markers (its directory entries are the caller's).
    pub fn delete_inode(&mut self, ino: u64) {
        self.batch
            .delete_cf(self.store.cf(CF_INODES), ino.to_be_bytes());
        self.delete_trunc(ino);
        self.delete_local_only(ino);
        self.delete_absent(ino);
        self.delete_dirty_from(ino, 0);
    }

    pub fn put_dirent(&mut self, parent: u64, name: &OsStr, ino: u64, kind: FileKind) {
        let mut value = ino.to_le_bytes().to_vec();
        value.push(kind.code());
        self.names = true;
        self.batch
            .put_cf(self.store.cf(CF_DIRENTS), dirent_key(parent, name), value);
    }

    pub fn delete_dirent(&mut self, parent: u64, name: &OsStr) {
        self.names = true;
        self.batch
            .delete_cf(self.store.cf(CF_DIRENTS), dirent_key(parent, name));
    }

    /// Marks pages dirty as of `epoch`, the checkpoint epoch that must upload them.
    pub fn put_dirty(&mut self, ino: u64, pages: Range<u64>, epoch: u64) {
        let cf = self.store.cf(CF_DIRTY);
        for page in pages {
            self.batch
                .put_cf(cf, dirty_key(ino, page), epoch.to_le_bytes());
        }
    }

    /// Records that a file was cut down to `keep_pages` pages since its last checkpoint, so
    /// the bucket's older pages past that point are dropped by the next one.
    pub fn put_trunc(&mut self, ino: u64, keep_pages: u64) {
        self.batch.put_cf(
            self.store.cf(CF_TRUNCS),
            ino.to_be_bytes(),
            keep_pages.to_le_bytes(),
        );
    }

    /// Records that a cut dropped the dirty marks of file `ino`, found only under
    /// `--local-only` paths.
    pub fn put_local_only(&mut self, ino: u64) {
        self.batch
            .put_cf(self.store.cf(CF_LOCAL_ONLY), ino.to_be_bytes(), []);
    }

    pub fn delete_local_only(&mut self, ino: u64) {
        self.batch
            .delete_cf(self.store.cf(CF_LOCAL_ONLY), ino.to_be_bytes());
    }

    /// Records that bytes `bytes` of `ino`'s cache file are to be punched (the records say
    /// they read as zeros from now on), before the punch: a start that finds the record
    /// punches them again, in case a crash came before the punch. `delete_punch` once the
    /// punch is on the disk, and before anything can be written there again.
    pub fn put_punch(&mut self, ino: u64, bytes: Range<u64>) {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&bytes.start.to_le_bytes());
        value[8..].copy_from_slice(&bytes.end.to_le_bytes());
        self.batch
            .put_cf(self.store.cf(CF_META), punch_key(ino), value);
    }

    pub fn delete_punch(&mut self, ino: u64) {
        self.batch.delete_cf(self.store.cf(CF_META), punch_key(ino));
    }

    pub fn delete_trunc(&mut self, ino: u64) {
        self.batch
            .delete_cf(self.store.cf(CF_TRUNCS), ino.to_be_bytes());
    }

    /// Forgets the dirty markers of `pages` (their bytes are in the bucket).
    pub fn delete_dirty(&mut self, ino: u64, pages: Range<u64>) {
        let cf = self.store.cf(CF_DIRTY);
        for page in pages {
            self.batch.delete_cf(cf, dirty_key(ino, page));
        }
    }

    /// Forgets the dirty markers of every page at or after `page`.
    pub fn delete_dirty_from(&mut self, ino: u64, page: u64) {
        self.batch
            .delete_range_cf(self.store.cf(CF_DIRTY), dirty_key(ino, page), keys_end(ino));
    }

    pub fn put_next_ino(&mut self, next: u64) {
        self.batch
            .put_cf(self.store.cf(CF_META), KEY_NEXT_INO, next.to_le_bytes());
    }

    pub fn put_meta_bytes(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.cf(CF_META), key, value);
    }

    /// Records that pages `pages` of `ino` are only in the bucket, as one key: the first
    /// page, with the end as the value. `pages` must be a whole range of the inode's absent
    /// set, and no other key may start within it (a new inode's, or `change_absent`): every
    /// key is then the start of one range of the set, which is what lets a change find them.
    ///
    /// (Cache dirs of format 1 hold a key per page, with an empty value; they load alike,
    /// flagged, and the inode's first change replaces them all, `rewrite_absent`.)
    pub fn put_absent(&mut self, ino: u64, pages: Range<u64>) {
        debug_assert!(pages.start < pages.end, "an empty absent range");
        if pages.is_empty() {
            return; // (a key the loader would refuse)
        }
        self.batch.put_cf(
            self.store.cf(CF_ABSENT),
            dirty_key(ino, pages.start),
            pages.end.to_be_bytes(),
        );
    }

    /// Changes the absent marks of `ino` from `before` to `after`, each a run of whole ranges
    /// of the inode's absent set in order (before and after a change), `before` exactly as
    /// RocksDB holds them: a key each. A range that went or now starts elsewhere loses its
    /// key, a new or changed one is written, one key at a time. Never a range deletion:
    /// RocksDB's flush splits every range tombstone of a memtable at every other one's ends
    /// and keeps, for each piece, every tombstone over it, so the memory a flush takes grows
    /// with their product, and fills and evictions that rewrite one large run of absent pages
    /// again and again made it gigabytes (docs/trust.md, rule 15).
    pub fn change_absent(&mut self, ino: u64, before: &[Range<u64>], after: &[Range<u64>]) {
        let ends = |rs: &[Range<u64>]| -> std::collections::BTreeMap<u64, u64> {
            rs.iter().map(|r| (r.start, r.end)).collect()
        };
        let (was, now) = (ends(before), ends(after));
        let cf = self.store.cf(CF_ABSENT);
        for start in was.keys().filter(|s| !now.contains_key(s)) {
            self.batch.delete_cf(cf, dirty_key(ino, *start));
        }
        for (&start, &end) in &now {
            if was.get(&start) != Some(&end) {
                self.put_absent(ino, start..end);
            }
        }
    }

    /// Writes every absent mark of `ino` again: all its keys go (whatever ranges they hold,
    /// after a batch that may or may not have landed, or a key per page of format 1), and
    /// `ranges`, the inode's whole absent set, are written. One range deletion, once after
    /// such a doubt, not at every change (`change_absent` says why).
    pub fn rewrite_absent(&mut self, ino: u64, ranges: impl IntoIterator<Item = Range<u64>>) {
        self.delete_absent(ino);
        for r in ranges {
            self.put_absent(ino, r);
        }
    }

    /// A key per page with an empty value: how a cache dir of format 1 marks absent pages.
    #[cfg(test)]
    pub(crate) fn put_absent_page_format_1(&mut self, ino: u64, page: u64) {
        self.batch
            .put_cf(self.store.cf(CF_ABSENT), dirty_key(ino, page), []);
    }

    /// Forgets every absent marker of `ino`.
    fn delete_absent(&mut self, ino: u64) {
        self.batch
            .delete_range_cf(self.store.cf(CF_ABSENT), dirty_key(ino, 0), keys_end(ino));
    }

    pub fn put_epoch(&mut self, epoch: u64) {
        self.batch
            .put_cf(self.store.cf(CF_META), KEY_EPOCH, epoch.to_le_bytes());
    }
}

/// The end (exclusive) of `ino`'s keys in a column family keyed by `dirty_key`.
fn keys_end(ino: u64) -> [u8; 16] {
    match ino.checked_add(1) {
        Some(next) => dirty_key(next, 0),
        None => [0xff; 16],
    }
}

fn dirent_key(parent: u64, name: &OsStr) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    key.extend_from_slice(&parent.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

fn dirty_key(ino: u64, page: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&ino.to_be_bytes());
    key[8..].copy_from_slice(&page.to_be_bytes());
    key
}

fn punch_key(ino: u64) -> Vec<u8> {
    [KEY_PUNCH, &ino.to_be_bytes()].concat()
}

fn le_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn decode_dirent(name: OsString, value: &[u8]) -> Result<Dirent, MetaError> {
    let bad = |why| MetaError::BadRecord {
        cf: CF_DIRENTS,
        why,
    };
    if value.len() != 9 {
        return Err(bad("value is not 9 bytes"));
    }
    let ino = u64::from_le_bytes(value[..8].try_into().expect("length checked"));
    let kind = FileKind::from_code(value[8]).ok_or_else(|| bad("unknown file kind"))?;
    Ok(Dirent { name, ino, kind })
}
