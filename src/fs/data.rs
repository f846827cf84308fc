//! File data: open/release, read/write, fsync (setattr, truncation, fallocate and lseek are in
//! `size.rs`).
//!
//! Bytes go to the inode's cache file with pread/pwrite; what changes is recorded as dirty
//! pages (8 KiB) in the same metadata batch as the new size. Of the changes, fsync is what
//! waits for the disk (and the record of a truncation down or a punch, `Fs::commit_cut`);
//! concurrent fsyncs of one file share one sync (`Fs::sync_data_to`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::fill::Fetched;
use super::size::cut_past_end;
use super::{Attr, FileKind, Fs, FsError, Inode, InodeState, Result, MAX_FILE_SIZE, PAGE_SIZE};

/// How often a request fetches pages that an eviction takes again before it can use them,
/// before it gives up (a cache far too small for the work in flight).
const MAX_FILL_ATTEMPTS: usize = 16;

fn evicted_while_filling() -> FsError {
    FsError::Fetch("pages were evicted again as fast as they were fetched; --cache-size is too small for the reads in flight".into())
}

/// What `Fs::read_inner` found: the bytes read from the cache dir, or a miss to answer from
/// the bytes its fill fetched (those of `Fetched::bytes`), which are installed after.
enum Read<'a> {
    Cached(Vec<u8>),
    Fetched(Fetched<'a>, super::fill::AnswerAt),
}

/// The pages a read of `size` bytes at `offset` of a file of `file_size` bytes touches.
fn read_pages(offset: u64, size: u32, file_size: u64) -> std::ops::Range<u64> {
    if offset >= file_size {
        return 0..0;
    }
    pages(offset, offset + (file_size - offset).min(u64::from(size)))
}

/// The pages that bytes `[start, end)` touch.
pub(super) fn pages(start: u64, end: u64) -> std::ops::Range<u64> {
    if end <= start {
        return 0..0;
    }
    start / PAGE_SIZE..end.div_ceil(PAGE_SIZE)
}

impl Fs {
    /// Opens a regular file and returns a handle. Only metadata is touched: the cache file
    /// itself is opened on first I/O.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let inode = self.inode(ino)?;
        let truncate = flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY;
        let _gate = if truncate { Some(self.enter()?) } else { None };
        let _io = truncate.then(|| inode.io.write());
        if truncate {
            self.step(super::Step::Entered { ino });
        }
        let mut st = inode.state.lock();
        match st.attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("open of a special file")),
        }
        if truncate && st.attr.size != 0 {
            // (As `setattr`'s truncation: stopped while this waited for the locks.)
            self.refuse_if_stopped()?;
            let saved = st.attr.clone();
            let mut batch = self.meta.batch();
            self.truncate_locked(&mut st, 0, &mut batch)?;
            st.stamp(SystemTime::now(), &mut batch);
            self.commit_cut(&mut st, batch, saved)?;
        }
        st.open_count += 1;
        Ok(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }

    /// Closes a handle. The last close of an unlinked file deletes it.
    pub fn release(&self, ino: u64) -> Result<()> {
        let inode = self.inode(ino)?;
        {
            let mut st = inode.state.lock();
            st.open_count = st.open_count.saturating_sub(1);
            if st.open_count > 0 {
                return Ok(());
            }
            st.file = None;
            if self.cache_failed() {
                // A stopped mount's records take no commits (the unmount writes no times
                // either); an unlinked file goes at the next start, as after a crash.
                return Ok(());
            }
            if st.attr.nlink > 0 {
                if st.times_unpersisted {
                    self.persist_attr(&mut st)?;
                }
                self.drop_kept_marks(&mut st)?;
                return Ok(());
            }
        }
        // Unlinked and closed: delete it, under the namespace lock like any deletion.
        let _ns = self.lock_namespace()?;
        let mut st = inode.state.lock();
        if st.open_count == 0 && st.attr.nlink == 0 && self.inodes.read().contains_key(&ino) {
            let mut batch = self.meta.batch();
            batch.delete_inode(ino);
            self.meta.commit(batch)?;
            self.forget_inode(ino, &mut st);
        }
        Ok(())
    }

    /// At the last close: the marks a checkpoint kept for a writer of the file
    /// (`InodeState::kept_marks`) go, as the checkpoint would have deleted them, so that only
    /// open files have clean pages marked (each of which a crash uploads again). From memory
    /// first, as `mark_clean` does; the deletes may lag.
    fn drop_kept_marks(&self, st: &mut InodeState) -> Result<()> {
        let kept = st.marked.difference(&st.dirty).difference(&st.pending);
        if kept.is_empty() {
            return Ok(());
        }
        let mut batch = self.meta.batch();
        for r in kept.iter() {
            batch.delete_dirty(st.attr.ino, r.clone());
            st.marked.remove(r);
        }
        batch.may_lag();
        self.meta.commit(batch)?;
        Ok(())
    }

    /// Reads `size` bytes at `offset` (fewer at the end of the file).
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut out = None;
        self.read_then(ino, offset, size, |r| out = Some(r.map(<[u8]>::to_vec)));
        out.expect("read_then answers every read")
    }

    /// Reads `size` bytes at `offset` and passes them to `answer`, called exactly once, with
    /// no lock of the filesystem held.
    ///
    /// A miss is answered from the bytes its fill fetched when every page the read touches
    /// was fetched by it and is still absent (not made present, nor made present and evicted
    /// again, meanwhile) and the file's size has not changed: then they are the file's bytes
    /// now. They are installed in the cache file only after the answer (a write, an
    /// fdatasync and a metadata commit the reader need not wait for). Until then the pages
    /// stay claimed: a read of them waits for the install, and so does a write of part of
    /// one, so `answer` must not wait on such requests; a whole-page write replaces them
    /// (the install leaves them alone).
    pub fn read_then(&self, ino: u64, offset: u64, size: u32, answer: impl FnOnce(Result<&[u8]>)) {
        let inode = match self.inode(ino) {
            Ok(inode) => inode,
            Err(e) => return answer(Err(e)),
        };
        self.note_read(ino, offset, size);
        match self.read_inner(ino, &inode, offset, size) {
            Ok(Read::Cached(buf)) => answer(Ok(&buf)),
            Ok(Read::Fetched(fetched, bytes)) => {
                answer(Ok(fetched.bytes(bytes)));
                match self.install_fill(fetched) {
                    Ok(_) => {}
                    // A stopped mount installs nothing (logged when it stopped; this fill's
                    // own flush may be what stopped it).
                    Err(_) if self.cache_failed() => return,
                    Err(e) => {
                        tracing::warn!(ino, error = %e, "could not install pages fetched for a read; a read fetches them again");
                        return;
                    }
                }
                // Counted once installed (were the chunk refused by the bound before, its
                // pages would be made present untracked, never evicted), as the cached path
                // does, under the io lock and with the size now; and not for a file deleted
                // since the answer (its last close may come right after the reply:
                // `forget_inode` untracks it under the state lock).
                let _io = inode.io.read();
                let st = inode.state.lock();
                if st.attr.nlink > 0 || st.open_count > 0 {
                    let file_size = st.attr.size;
                    self.touch(ino, read_pages(offset, size, file_size), file_size);
                }
            }
            Err(e) => answer(Err(e)),
        };
    }

    fn read_inner<'a>(
        &self,
        ino: u64,
        inode: &'a Inode,
        offset: u64,
        size: u32,
    ) -> Result<Read<'a>> {
        let mut missed = false;
        for _ in 0..MAX_FILL_ATTEMPTS {
            let wanted = {
                let st = inode.state.lock();
                if st.attr.kind == FileKind::Dir {
                    return Err(FsError::IsDir);
                }
                read_pages(offset, size, st.attr.size)
            };
            // With no lock held (see `fetch_absent`).
            // (A mount a failed flush or commit stopped installs nothing: the pages it
            // fetched are laid over the cache file's bytes instead.)
            let mut over = None;
            // (No readahead on a stopped mount: what it fetches is used once.)
            let readahead = !self.cache_failed();
            if let Some(fetched) = self.fetch_absent(inode, wanted, readahead)? {
                missed = true;
                let answer = fetched.answer(&inode.state.lock(), offset, size);
                if let Some(bytes) = answer {
                    self.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                    return Ok(Read::Fetched(fetched, bytes));
                }
                match self.cache_failed() {
                    true => over = Some(fetched),
                    false => match self.install_fill(fetched) {
                        Ok(_) => {}
                        // Stopped by this fill's flush, or meanwhile: the pages are still
                        // absent, and the next attempt lays them over the cache file's.
                        Err(_) if self.cache_failed() => continue,
                        Err(e) => return Err(e),
                    },
                }
            }
            let _io = inode.io.read();
            let (file, file_size, wanted, pieces) = {
                let mut st = inode.state.lock();
                let wanted = read_pages(offset, size, st.attr.size);
                let pieces = match &over {
                    Some(fetched) => match fetched.cover(&st, wanted.clone()) {
                        Some(pieces) => pieces,
                        None => continue, // not all fetched by this fill, or evicted again
                    },
                    None if st.absent.intersects(wanted.clone()) => {
                        continue; // evicted again before we got here: fetch again
                    }
                    None => Vec::new(),
                };
                (
                    self.cache_file(&mut st, false)?,
                    st.attr.size,
                    wanted,
                    pieces,
                )
            };
            if offset >= file_size {
                return Ok(Read::Cached(Vec::new()));
            }
            let len = (file_size - offset).min(u64::from(size)) as usize;
            if missed {
                self.stats.read_misses.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.read_hits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .read_hit_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            if over.is_none() {
                // (What a stopped mount did not install takes no room in the cache.)
                self.touch(ino, wanted, file_size);
            }
            let mut buf = vec![0u8; len];
            if let Some(file) = file {
                let mut done = 0;
                while done < len {
                    match file.read_at(&mut buf[done..], offset + done as u64) {
                        // Past the cache file's end the file is a hole: the zeros already in
                        // `buf`.
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(FsError::io("read cache file")(e)),
                    }
                }
            }
            for (at, bytes) in pieces {
                let start = at.max(offset);
                let end = (at + bytes.len() as u64).min(offset + len as u64);
                if end > start {
                    buf[(start - offset) as usize..(end - offset) as usize]
                        .copy_from_slice(&bytes[(start - at) as usize..(end - at) as usize]);
                }
            }
            return Ok(Read::Cached(buf));
        }
        Err(evicted_while_filling())
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= MAX_FILE_SIZE)
            .ok_or(FsError::TooLarge(offset))?;
        let inode = self.inode(ino)?;
        self.throttle();
        // A page only partly overwritten needs its old bytes first, if they are only in the
        // bucket; whole pages are simply replaced.
        let mut partial = Vec::new();
        if !offset.is_multiple_of(PAGE_SIZE) {
            partial.push(offset / PAGE_SIZE);
        }
        if !end.is_multiple_of(PAGE_SIZE) {
            partial.push(end / PAGE_SIZE);
        }
        // A write past the end leaves a hole, which must read as zeros; after a failure or
        // a crash the cache file may hold bytes there (`tail_unsure`). Cutting them needs no
        // other write in flight: such a write takes the io lock exclusively. (Writes past the
        // end are common, the kernel's writeback sends a growing file's pages in any order;
        // bytes left there are not.)
        // The shared lock first: the look below retries exclusively in that rare case.
        let past_unsure_end = |st: &InodeState| offset > st.attr.size && st.tail_unsure;
        let mut sole = false;
        let (gate, _io, file, has_absent, over_absent, gate_held) = loop {
            let (gate, io) = self.enter_with_pages(
                &inode,
                |_| partial.clone(),
                |i| match sole {
                    true => IoGuard::Sole(i.io.write()),
                    false => IoGuard::Shared(i.io.read()),
                },
            )?;
            let mut st = inode.state.lock();
            if st.attr.kind != FileKind::File {
                return Err(FsError::IsDir);
            }
            // (Opening the cache file may find bytes past the end: before the look below.)
            let file = self
                .cache_file(&mut st, true)?
                .expect("cache_file with create returns a file");
            if past_unsure_end(&st) && !sole {
                // Take the lock again, exclusively.
                sole = true;
                continue;
            }
            // The upload of a cut may still need these pages' bytes as they are.
            self.freeze(&mut st, pages(offset, end));
            if past_unsure_end(&st) {
                cut_past_end(self, &mut st, &file)?;
            }
            let has_absent = !st.absent.is_empty();
            let over_absent = st.absent_unsure || st.absent.intersects(pages(offset, end));
            // A cut must not come between this write's bytes and its record (below) when it
            // grows the file: bytes past the end are a cut's business (docs/trust.md rule 16).
            let gate_held = end > st.attr.size;
            break (gate, io, file, has_absent, over_absent, gate_held);
        };
        // A fill of this file (a read's, or the prefetch) may have fetched these pages and be
        // about to install them; it must not write the bucket's older bytes over ours. Fills
        // choose the pages still absent and write them under the fill lock, so hold it over
        // our cache write and the clearing of their absent marks. While we hold the io lock
        // nothing becomes absent (eviction takes it exclusively): a file with nothing absent
        // needs none of this.
        let _fill = has_absent.then(|| inode.fill_lock.lock());
        // Pages only the bucket held may lose their absent marks only once these bytes are on
        // the disk, as a fill's (fill.rs): anything may sync the log before the kernel writes
        // them back (another file's fsync, a checkpoint), and after a power loss a page neither
        // absent nor in the cache file would read as zeros, and be uploaded so. (While the io
        // lock is held nothing becomes absent: `over_absent` may only be more than is left.)
        let mut gate = Some(gate);
        let written = file
            .write_all_at(data, offset)
            .map_err(FsError::io("write cache file"))
            .and_then(|()| {
                if !over_absent {
                    return Ok(());
                }
                // Not under the gate unless `gate_held`: a cut would wait for the flush, and
                // every request behind the cut. The bytes are in place, counted in the file's
                // generation first: a cut taken meanwhile that takes a page this write made
                // dirty before uploads its new bytes, and its flush then covers them (it
                // waits for this one, under the sync lock) before its mark clean (rule 18).
                // The rest of the write it sees not done (the next cut takes it); the io and
                // fill locks keep evictions and fills off its pages.
                inode.state.lock().write_gen += 1;
                if !gate_held {
                    drop(gate.take());
                }
                self.flush_written(&inode, &file)
            });
        if let Err(e) = written {
            // Some of it may be there, past the end too: a later sync must cover it.
            let mut st = inode.state.lock();
            st.tail_unsure = true;
            st.write_gen += 1;
            return Err(e);
        }
        self.stats
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut st = inode.state.lock();
        if !over_absent {
            st.write_gen += 1;
        }
        let now = SystemTime::now();
        st.attr.mtime = now;
        st.attr.ctime = now;
        let epoch = self.epoch.load(Ordering::Relaxed);
        let written = pages(offset, end);
        if !written.is_empty() {
            st.last_page = written.end - 1;
        }
        let added = st.dirty.insert(written.clone());
        self.dirty_added(added.iter().map(|r| r.end - r.start).sum());
        self.touch_written(ino, written.clone());
        let grew = end > st.attr.size;
        let absent = st.absent_unsure || st.absent.intersects(written.clone());
        if !grew && !absent && st.marks_cover(&added) {
            // The common case for hot pages and a sequential writer's next ones: nothing new
            // to record (and so nothing for the next fsync to sync in the log).
            st.times_unpersisted = true;
            return Ok(data.len() as u32);
        }
        let saved = st.attr.clone();
        if grew {
            st.attr.size = end;
        }
        let mut batch = self.meta.batch();
        // A page written whole is no longer absent: its bytes are the new ones. (After a
        // failed commit RocksDB may mark these pages although memory does not, even pages
        // memory holds dirty already: the rewrite of every mark clears that too.)
        if absent {
            st.change_absent(&mut batch, written.clone(), |a| a.remove(written));
        }
        st.put_dirty_marks(&mut batch, &added, epoch);
        batch.put_inode(&st.attr);
        self.commit_one(&mut st, batch, saved)?;
        Ok(data.len() as u32)
    }
    /// Flushes what a write just put in `file`, and the cache file's directory entry if it is
    /// new (its fsync syncs that again): before the write's change of absent marks goes into
    /// the log (`write`).
    fn flush_written(&self, inode: &super::Inode, file: &File) -> Result<()> {
        let (new_file, ino) = {
            let st = inode.state.lock_unnoted();
            (st.new_cache_file, st.attr.ino)
        };
        {
            // Every fdatasync of a cache file under its sync lock (`sync_data_to` says why).
            let _sync = inode.sync_lock.lock();
            self.sync_cache_file(file, "fdatasync cache file")?;
        }
        if new_file {
            self.sync_cache_file_dir(ino)?;
        }
        self.stats.cache_file_syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the file durable: its bytes (one sync shared by concurrent callers) and its
    /// metadata (the RocksDB WAL, group-committed). `datasync` skips times held in memory.
    pub fn fsync(&self, ino: u64, datasync: bool) -> Result<()> {
        let inode = self.inode(ino)?;
        // Once another writer holds the bucket, nothing this mount does is durable in the
        // sense Postgres means: it must stop (DESIGN section 3, fencing).
        self.refuse_if_stopped()?;
        // The metadata to sync: up to the inode's last change, its times included.
        let seq = {
            let mut st = inode.state.lock();
            if !datasync && st.times_unpersisted {
                self.persist_attr(&mut st)?;
            }
            st.meta_seq
        };
        // Every write this fsync covers has been answered (the kernel flushes its cache
        // before it sends FSYNC): under `--durability remote` the checkpoint that will hold
        // them is asked for now, to run beside the local sync of the bytes.
        let remote = self.begin_remote();
        let needed = {
            let st = inode.state.lock();
            (st.synced_gen < st.write_gen).then_some(st.write_gen)
        };
        if let Some(target) = needed {
            self.sync_data_to(&inode, target)?;
        }
        // The log last: a remote checkpoint syncs it through its cut before its PUT, so once
        // the wait is over this is no flush of its own (two would otherwise queue one behind
        // the other, the fsync's before the checkpoint's).
        self.finish_remote(remote)?;
        self.sync_records(seq)?;
        Ok(())
    }

    /// Makes the cache file of `inode` durable through `target` (a `write_gen`), shared by
    /// concurrent callers: the one holding `sync_lock` syncs what was written up to then,
    /// and the others find `synced_gen` past their target once it is done. Through the
    /// file's own fdatasync when its descriptor has been open since the last sync
    /// (`InodeState::watched`), or else by syncfs of the cache filesystem, which reports a
    /// write-back that failed while no descriptor was open (with `sync_lock` let go: a fill
    /// of the file need not wait for the whole filesystem). A file with no cache file has no
    /// bytes to sync, only its directory entry's removal, if that is new.
    ///
    /// A failed write-back is reported to one caller of one descriptor only, and every
    /// other fdatasync of a cache file runs under its `sync_lock` (a fill's) or its state
    /// lock (`cut_past_end`), stopping the mount before that lock goes if it fails: so a sync
    /// here that succeeded counts only if the mount has not stopped by the time it holds
    /// both again. (`sync_cache_files` does the same for syncfs.)
    pub(super) fn sync_data_to(&self, inode: &super::Inode, target: u64) -> Result<()> {
        let leader = inode.sync_lock.lock();
        let (file, covers, dir_sync, ino) = {
            let mut st = inode.state.lock_unnoted();
            if st.synced_gen >= target {
                return Ok(());
            }
            let file = match st.watched() {
                true => st.file.clone(),
                false => None,
            };
            let dir_sync = std::mem::take(&mut st.new_cache_file);
            (file, st.write_gen, dir_sync, st.attr.ino)
        };
        // A cache file created, or one removed when the file was emptied during an upload
        // (`empty_for_upload`): the shard directory holds the change.
        let sync_dir = || match dir_sync {
            true => self.sync_cache_file_dir(ino),
            false => Ok(()),
        };
        let synced = if self.cache_failed() {
            Err(FsError::CacheFailed)
        } else if let Some(file) = &file {
            self.sync_cache_file(file, "fdatasync cache file")
                .and_then(|()| sync_dir())
        } else if self
            .cache
            .data_path(ino)
            .symlink_metadata()
            .is_err_and(|e| {
                // Looked for after `covers` was read: a write counted in it made the file first.
                e.kind() == io::ErrorKind::NotFound
            })
        {
            sync_dir()
        } else {
            drop(leader);
            self.sync_cache_files() // the directory entries too
        };
        if let Err(e) = synced {
            // The next sync syncs the directory again: a failed one proved nothing.
            inode.state.lock_unnoted().new_cache_file |= dir_sync;
            return Err(e);
        }
        let mut st = inode.state.lock_unnoted();
        if self.cache_failed() {
            // Told to another caller (this sync's success proves nothing).
            return Err(FsError::CacheFailed);
        }
        if file.is_some() {
            self.stats.cache_file_syncs.fetch_add(1, Ordering::Relaxed);
        }
        st.synced_gen = st.synced_gen.max(covers);
        Ok(())
    }

    /// The inode's cache file, opened on first use (created with `create`).
    pub(super) fn cache_file(
        &self,
        st: &mut InodeState,
        create: bool,
    ) -> Result<Option<Arc<File>>> {
        if let Some(f) = &st.file {
            return Ok(Some(f.clone()));
        }
        let path = self.cache.data_path(st.attr.ino);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path);
        let file = match opened {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) => return Err(FsError::io("open cache file")(e)),
        };
        match file.metadata().map(|m| m.len()) {
            Ok(len) => {
                if create && len == 0 {
                    // Possibly a new directory entry in data/xx: the first fsync syncs that
                    // too.
                    st.new_cache_file = true;
                }
                if len > st.attr.size {
                    // Left by a crash or a failure; cut before the file grows over it.
                    st.tail_unsure = true;
                }
            }
            // Not known: the growth that needs to know asks again.
            Err(_) => st.tail_unsure = true,
        }
        st.file = Some(file.clone());
        st.file_gen = st.write_gen;
        Ok(Some(file))
    }

    /// Takes the gate (shared) and the inode's io lock (`lock`), once the pages `needed`
    /// names are present in the cache file: those only in the bucket are fetched first, with
    /// no lock held, so that a slow fetch holds up no other request (a cut waits for the
    /// gate, and every writer behind it). `needed` is asked again under the locks, where an
    /// eviction in between means fetching again.
    pub(super) fn enter_with_pages<'a, G>(
        &'a self,
        inode: &'a super::Inode,
        needed: impl Fn(&InodeState) -> Vec<u64>,
        lock: impl Fn(&'a super::Inode) -> G,
    ) -> Result<(parking_lot::RwLockReadGuard<'a, ()>, G)> {
        for _ in 0..MAX_FILL_ATTEMPTS {
            let pages = needed(&inode.state.lock());
            for &page in &pages {
                self.fill_absent(inode, page..page + 1, false)?;
            }
            let gate = self.enter()?;
            let io = lock(inode);
            let st = inode.state.lock();
            if needed(&st)
                .into_iter()
                .all(|page| !st.absent.contains(page))
            {
                let ino = st.attr.ino;
                drop(st);
                self.step(super::Step::Entered { ino });
                return Ok((gate, io));
            }
        }
        Err(evicted_while_filling())
    }

    /// Background work (a cut, a fill, an eviction) opened the cache file of an inode nobody
    /// has open: close it again, so that the descriptors held stay bounded by the files the
    /// kernel has open, however many files the background work visits.
    pub(super) fn close_if_unused(&self, st: &mut InodeState) {
        if st.open_count == 0 {
            st.file = None;
        }
    }

    /// fdatasync of a cache file through its shared descriptor. A failure stops the mount
    /// (`stop_for_failed_flush`): a failed write-back is reported once per descriptor, so
    /// the next sync through this one (PostgreSQL's own fsync, say) would be told all is
    /// well.
    pub(super) fn sync_cache_file(&self, file: &File, context: &'static str) -> Result<()> {
        let synced = match self.flush_fails_now() {
            true => Err(io::Error::from_raw_os_error(libc::EIO)),
            false => file.sync_data(),
        };
        synced.map_err(|e| {
            let e = FsError::io(context)(e);
            self.stop_for_failed_flush(&e.to_string());
            e
        })
    }

    /// fsync of the shard directory holding the cache file of `ino` (a cache file created or
    /// removed). A failure stops the mount, as a cache file's does: the entry, and the bytes
    /// behind it, may not be on the disk, and the checkpoint waiting for this flush must not
    /// mark pages clean or stop without the mount stopping too.
    pub(super) fn sync_cache_file_dir(&self, ino: u64) -> Result<()> {
        let path = self.cache.data_path(ino);
        let dir = path
            .parent()
            .expect("cache files live in a shard directory");
        let synced = match self.dir_sync_fails.load(Ordering::Acquire) {
            true => Err(io::Error::from_raw_os_error(libc::EIO)),
            false => File::open(dir).and_then(|d| d.sync_all()),
        };
        synced.map_err(|e| {
            let e = FsError::io("sync cache shard dir")(e);
            self.stop_for_failed_flush(&e.to_string());
            e
        })
    }

    fn persist_attr(&self, st: &mut InodeState) -> Result<()> {
        let mut batch = self.meta.batch();
        batch.put_inode(&st.attr);
        st.meta_seq = self.meta.commit(batch)?;
        st.times_unpersisted = false;
        Ok(())
    }

    /// Commits a batch for one locked inode, restoring `saved` if it fails.
    pub(super) fn commit_one(
        &self,
        st: &mut InodeState,
        batch: crate::cache::MetaBatch<'_>,
        saved: Attr,
    ) -> Result<()> {
        match self.meta.commit(batch) {
            Ok(seq) => {
                st.meta_seq = seq;
                st.times_unpersisted = false;
                Ok(())
            }
            Err(e) => {
                st.attr = saved;
                st.absent_unsure = true;
                st.dirty_unsure = true;
                // A write past the end that failed to commit left its bytes there.
                st.tail_unsure = true;
                Err(e.into())
            }
        }
    }
}

/// The io lock of a write: shared, or exclusive for one that leaves a hole.
enum IoGuard<'a> {
    Shared(#[allow(dead_code)] parking_lot::RwLockReadGuard<'a, ()>),
    Sole(#[allow(dead_code)] parking_lot::RwLockWriteGuard<'a, ()>),
}

#[cfg(test)]
mod tests {
    use crate::cache::MetaError;
    use crate::fs::testing::{new_file, open};
    use crate::fs::{FsError, StopCause, PAGE_SIZE};

    /// A sync of the cache dir's records that fails may have lost the pages of the log the
    /// kernel could not write: a later sync that succeeded would vouch for them, and the
    /// open after a crash, which stops reading the log at the first batch it lacks, would
    /// drop every batch after it. So after a failed fsync no later fsync succeeds, and the
    /// next mount opens the cache dir (as after a crash) and finds what the last good fsync
    /// made durable.
    #[test]
    fn after_a_failed_sync_of_the_records_no_fsync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let fs = open(&dir);
        let ino = new_file(&fs);
        let page = |b: u8| vec![b; PAGE_SIZE as usize];
        fs.write(ino, 0, &page(1)).unwrap();
        fs.fsync(ino, false).unwrap();
        // A new page: a new mark, whose batch the fsync must sync.
        fs.write(ino, PAGE_SIZE, &page(2)).unwrap();
        fs.meta.fail_next_sync();
        let failed = fs.fsync(ino, false);
        assert!(
            matches!(failed, Err(FsError::Meta(MetaError::Injected))),
            "the fsync whose sync failed: {failed:?}"
        );
        let later = fs.fsync(ino, false);
        assert!(
            matches!(later, Err(FsError::CacheFailed)),
            "an fsync after the failed one: {later:?}"
        );
        assert_eq!(
            fs.stop_report().map(|(cause, _)| cause),
            Some(StopCause::FailedCommit)
        );
        // Nor a sync of the records that asks on its own (one that was waiting for the failed
        // one's lock would, before the mount has stopped): the failure is latched.
        let waiting = fs.meta.sync_to(fs.meta.latest_seq());
        assert!(
            matches!(waiting, Err(MetaError::SyncFailedBefore)),
            "a sync after the failed one: {waiting:?}"
        );
        fs.shutdown()
            .expect_err("the unmount's sync after the failed one");
        // Crash-like: the next mount opens the cache dir (one marked failed is refused).
        assert!(!fs.cache_given_up(), "the cache dir was given up");
        drop(fs);
        open(&dir);
    }
}
