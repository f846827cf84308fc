//! A file's size and allocation: setattr (a truncation with it), fallocate, lseek's data
//! and holes, and the cut of what a failure left in the cache file past the end.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::data::pages;
use super::{Attr, FileKind, Fs, FsError, InodeState, Result, SetAttr, MAX_FILE_SIZE, PAGE_SIZE};

/// fallocate(2)'s mode for a punched hole.
const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

impl Fs {
    pub fn setattr(&self, ino: u64, changes: &SetAttr) -> Result<Attr> {
        let inode = self.inode(ino)?;
        let (_gate, _io) = match changes.size {
            // The page the new end falls in keeps its head and becomes dirty: its old bytes
            // must be here first.
            Some(size) => {
                let edge = |st: &InodeState| {
                    let edge = size.min(st.attr.size);
                    (edge % PAGE_SIZE != 0).then_some(edge / PAGE_SIZE)
                };
                let (gate, io) = self.enter_with_pages(
                    &inode,
                    |st| edge(st).into_iter().collect(),
                    |i| i.io.write(),
                )?;
                (gate, Some(io))
            }
            None => (self.enter()?, None),
        };
        let mut st = inode.state.lock();
        let saved = st.attr.clone();
        let now = SystemTime::now();
        let mut batch = self.meta.batch();
        if let Some(size) = changes.size {
            match st.attr.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("truncate of a special file")),
            }
            if size > MAX_FILE_SIZE {
                return Err(FsError::TooLarge(size));
            }
            // Stopped while this waited for the locks (a failed commit of a change that held
            // them): nothing to change.
            self.refuse_if_stopped()?;
            self.truncate_locked(&mut st, size, &mut batch)?;
            st.attr.mtime = now;
        }
        if let Some(mode) = changes.mode {
            st.attr.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = changes.uid {
            st.attr.uid = uid;
        }
        if let Some(gid) = changes.gid {
            st.attr.gid = gid;
        }
        if let Some(t) = changes.atime {
            st.attr.atime = t.resolve(now);
        }
        if let Some(t) = changes.mtime {
            st.attr.mtime = t.resolve(now);
        }
        st.attr.ctime = changes.ctime.unwrap_or(now);
        if changes.touches_only_times() {
            // With the writeback cache the kernel sends the file's new mtime/ctime in a
            // SETATTR before every fsync and fdatasync. Writing that to the metadata WAL would
            // add a WAL sync to every commit Postgres makes; times are kept in memory instead
            // and persisted by fsync (not fdatasync), release and unmount, as the write path
            // does. A crash may lose times no fsync covered, as POSIX allows.
            st.times_unpersisted = true;
            return Ok(st.attr.clone());
        }
        batch.put_inode(&st.attr);
        self.commit_cut(&mut st, batch, saved)?;
        Ok(st.attr.clone())
    }

    /// Commits a change that may have shrunk the file (`truncate_locked`), then cuts the
    /// cache file: the records hold the new size, synced, before the cache file loses a byte
    /// (`record_before_cut`). When they cannot, the mount has stopped as a crash would and
    /// the cache file is left whole, so the next mount finds the old size over the old bytes
    /// or the new size over bytes past its end, which are not read as contents (rule 16);
    /// never the old size over a cut. The truncation stays done in memory and is answered
    /// as done (answered with an error, the kernel would keep the old size and read zeros
    /// past the new one): a change no fsync makes durable now, as one a crash came after.
    pub(super) fn commit_cut(
        &self,
        st: &mut InodeState,
        batch: crate::cache::MetaBatch<'_>,
        saved: super::Attr,
    ) -> Result<()> {
        let committed = match st.attr.size < saved.size {
            false => self.commit_one(st, batch, saved),
            true => {
                let (cut, old) = (st.attr.clone(), saved.size);
                match self.record_before_cut(st, batch, saved) {
                    Ok(()) => self.cut_cache_file(st, old),
                    Err(_) => st.attr = cut,
                }
                Ok(())
            }
        };
        // Changed once cut: a cache file the cut opened was open before the change, and its
        // next fdatasync reports what went wrong with it (`InodeState::watched`).
        st.write_gen += 1;
        committed
    }

    /// Commits and syncs the record of a change that takes bytes out of a cache file (a
    /// truncation down, a punched hole), which the caller makes only after this succeeded
    /// (rule 24): a cut whose record then failed, or was refused because the mount stopped
    /// meanwhile, or whose record a power cut lost, would leave the records' size and marks
    /// over bytes that are gone, read as zeros and uploaded so. A failure stops the mount as
    /// a failed commit does (the records may hold the change or not; the cache file holds
    /// every byte).
    fn record_before_cut(
        &self,
        st: &mut InodeState,
        batch: crate::cache::MetaBatch<'_>,
        saved: super::Attr,
    ) -> Result<()> {
        self.commit_synced(
            st,
            batch,
            saved,
            "the record of a truncation or a punched hole",
        )?;
        self.step(super::Step::CutRecorded { ino: st.attr.ino });
        Ok(())
    }

    /// Commits `batch` and syncs the records' log. A failure stops the mount as a failed
    /// commit does (`what` says which record failed; a failed sync stops it itself).
    fn commit_synced(
        &self,
        st: &mut InodeState,
        batch: crate::cache::MetaBatch<'_>,
        saved: super::Attr,
        what: &str,
    ) -> Result<()> {
        self.commit_one(st, batch, saved)
            .inspect_err(|e| self.stop_for_failed_commit(&format!("{what} failed ({e})")))?;
        self.sync_records(st.meta_seq)
    }

    /// Forgets the record that a hole is to be punched in `st`'s cache file (`put_punch`),
    /// once the punch is on the disk or has failed: a start must not punch those bytes
    /// again after something was written over them. Synced here, though a later fsync of
    /// the file or a checkpoint would sync it before what they make durable: punches are
    /// rare, and no later path has to be relied on.
    fn punch_done(&self, st: &mut InodeState) -> Result<()> {
        let mut batch = self.meta.batch();
        batch.delete_punch(st.attr.ino);
        let saved = st.attr.clone();
        self.commit_synced(st, batch, saved, "the end of a punched hole's record")
    }

    /// At a start, before the mount serves: punches again the bytes `bytes` of `ino`'s
    /// cache file whose hole was recorded and not known punched (a crash came between the
    /// record and the punch, or before the punch was on the disk). The records hold those
    /// bytes as zeros; punched twice, they are the same zeros.
    pub(super) fn punch_again(&self, ino: u64, bytes: std::ops::Range<u64>) -> Result<()> {
        // (An inode gone has no cache file to punch.)
        let Ok(inode) = self.inode(ino) else {
            return Ok(());
        };
        let mut st = inode.state.lock();
        let punched = self.cache_file(&mut st, false).and_then(|file| match file {
            Some(file) => {
                fallocate_raw(&file, PUNCH, bytes.start, bytes.end - bytes.start)?;
                // (A failure gives the cache dir up, as a failed flush at a start does.)
                self.sync_cache_file(&file, "sync cache file punched again")
            }
            None => Ok(()),
        });
        self.close_if_unused(&mut st);
        punched.inspect_err(|e| {
            tracing::error!(ino, error = %e, "could not punch again a hole recorded before a crash")
        })
    }

    /// Cuts the cache file of a file whose truncation down from `old` bytes is recorded. The
    /// upload of a cut may still need the bytes cut off (and the last page's tail): a file
    /// emptied hands its old cache file to the upload whole, others copy them out first.
    fn cut_cache_file(&self, st: &mut InodeState, old: u64) {
        let size = st.attr.size;
        if size == 0 && self.empty_for_upload(st, old) {
            return;
        }
        self.freeze(st, size / PAGE_SIZE..u64::MAX);
        let cut = self.cache_file(st, false).and_then(|file| match file {
            Some(file) => set_len_raw(&file, size),
            None => Ok(()),
        });
        // The records hold the size: what stays past it is not read as contents, and
        // whatever grows the file over it cuts it first (`tail_unsure`, rule 16).
        if let Err(e) = cut {
            tracing::warn!(ino = st.attr.ino, error = %e, "the cut of a cache file failed");
        }
    }

    /// Sets the size of a file whose io lock the caller holds exclusively. Pages past the new
    /// end stop being dirty; a partial last page is dirty (its tail is now zeros).
    pub(super) fn truncate_locked(
        &self,
        st: &mut InodeState,
        size: u64,
        batch: &mut crate::cache::MetaBatch<'_>,
    ) -> Result<()> {
        let ino = st.attr.ino;
        let old = st.attr.size;
        // A cut of the cache file waits for its record (`commit_cut`); a growth does not: the
        // bytes past a recorded size are not read as contents.
        if size > old {
            if let Some(file) = self.cache_file(st, true)? {
                if st.tail_unsure {
                    cut_past_end(self, st, &file)?;
                }
                file.set_len(size).map_err(FsError::io("grow cache file"))?;
            }
        }
        let keep = size.div_ceil(PAGE_SIZE);
        if size < old {
            // The cache file's cut (made once this is recorded, `commit_cut`) is not synced,
            // nor made at all if the record fails: until it is, a crash could keep the bytes
            // past the new end while a later, larger size is durable. The next growth syncs
            // it first.
            st.tail_unsure = true;
            self.recount(st, |st| {
                st.dirty.truncate(keep);
                st.pending.truncate(keep);
            });
            self.untrack(ino, size, old);
            st.delete_marks_from(batch, keep);
            st.change_absent(batch, keep..u64::MAX, |a| a.truncate(keep));
            let lowest = st.trunc.map_or(keep, |t| t.min(keep));
            st.trunc = Some(lowest);
            // What a crash recovers must also cover the truncation a checkpoint in flight
            // took: if that checkpoint never commits, the bucket has not seen it either.
            batch.put_trunc(ino, st.trunc_pending.map_or(lowest, |p| p.min(lowest)));
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        let edge = if size < old { size } else { old };
        // The new size first: marks stop at the end (`put_dirty_marks`).
        st.attr.size = size;
        if edge % PAGE_SIZE != 0 {
            let page = edge / PAGE_SIZE;
            let added = st.dirty.insert(page..page + 1);
            self.dirty_added(added.iter().map(|r| r.end - r.start).sum());
            st.put_dirty_marks(batch, &added, epoch);
        }
        Ok(())
    }

    /// fallocate(2): mode 0 and KEEP_SIZE allocate (zeros), PUNCH_HOLE|KEEP_SIZE deallocates.
    pub fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        if length == 0 {
            return Err(FsError::Invalid("fallocate of zero length"));
        }
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooLarge(offset))?;
        if mode != 0 && mode != libc::FALLOC_FL_KEEP_SIZE && mode != PUNCH {
            return Err(FsError::NotSupported("fallocate mode"));
        }
        let inode = self.inode(ino)?;
        // Punched pages become dirty zeros; the (at most two) pages punched only in part keep
        // some old bytes: bring those here first if they are only in the bucket.
        let edges = |st: &InodeState| {
            let size = st.attr.size;
            let mut edges = Vec::new();
            if mode == PUNCH {
                if !offset.is_multiple_of(PAGE_SIZE) && offset < size {
                    edges.push(offset / PAGE_SIZE);
                }
                if !end.is_multiple_of(PAGE_SIZE) && end < size {
                    edges.push(end / PAGE_SIZE);
                }
            }
            edges
        };
        let (_gate, _io) = self.enter_with_pages(&inode, edges, |i| i.io.write())?;
        let mut st = inode.state.lock();
        if st.attr.kind != FileKind::File {
            return Err(FsError::NotSupported("fallocate of a non-file"));
        }
        // Stopped while this waited for the locks: nothing to change.
        self.refuse_if_stopped()?;
        let saved = st.attr.clone();
        let mut batch = self.meta.batch();
        let now = SystemTime::now();
        // The pages a punch takes out of the file (none past its end: bytes there are not
        // its contents, and a punch of them only gives the space back).
        let punched = match mode == PUNCH {
            true => pages(offset, end.min(st.attr.size)),
            false => 0..0,
        };
        if !punched.is_empty() {
            // Recorded first, punched after (`record_before_cut`).
            // Pages wholly punched that were only in the bucket are zeros now, not absent.
            let was_absent: Vec<_> = st.absent.overlapping(punched.clone()).collect();
            if !was_absent.is_empty() {
                st.change_absent(&mut batch, punched.clone(), |a| a.remove(punched.clone()));
            }
            let epoch = self.epoch.load(Ordering::Relaxed);
            let added = st.dirty.insert(punched);
            self.dirty_added(added.iter().map(|r| r.end - r.start).sum());
            st.put_dirty_marks(&mut batch, &added, epoch);
            st.stamp(now, &mut batch);
            // Punched again at the next start should the process die before the punch.
            batch.put_punch(st.attr.ino, offset..end);
            if let Err(e) = self.record_before_cut(&mut st, batch, saved) {
                // Nothing punched: the pages only the bucket has are still to be read from
                // it. (The extra dirty pages upload nothing: the mount has stopped.)
                for r in was_absent {
                    st.absent.insert(r);
                }
                return Err(e);
            }
            // The upload of a cut may still need the punched bytes.
            self.freeze(&mut st, pages(offset, end));
            // (Created if there is none: a file only the bucket holds has none yet, and its
            // pages are absent, not holes.)
            let punch = self.cache_file(&mut st, true).and_then(|file| {
                let file = file.expect("created");
                fallocate_raw(&file, mode, offset, length).map(|()| file)
            });
            // Changed once punched (as a truncation's cut, `commit_cut`).
            st.write_gen += 1;
            // Made: on the disk before its record goes (a failed flush gives the cache dir
            // up, as any does). Failed: the pages the cache held keep what the failed
            // fallocate left of their bytes (all of them, or zeros as far as it got), which
            // is what the file reads and the next checkpoint uploads (they are dirty now);
            // those only the bucket held read as the punch's zeros. Memory, records and
            // reads agree, and the program is told the punch failed.
            if let Ok(file) = &punch {
                self.sync_cache_file(file, "sync cache file after a punched hole")?;
            }
            // Should this fail, the mount has stopped, and the next start punches the range
            // if the record's end did not reach the log (a hole made stays made, one that
            // failed is made whole) and leaves it as the punch did if it did. Answered as
            // the punch went.
            let _ = self.punch_done(&mut st);
            return punch.map(drop);
        }
        let file = self.cache_file(&mut st, true)?.expect("created");
        if mode == 0 && end > st.attr.size && st.tail_unsure {
            cut_past_end(self, &mut st, &file)?;
        }
        fallocate_raw(&file, mode, offset, length)?;
        if mode == 0 && end > st.attr.size {
            st.attr.size = end;
        }
        st.write_gen += 1;
        st.stamp(now, &mut batch);
        self.commit_one(&mut st, batch, saved)
    }

    /// lseek with SEEK_DATA or SEEK_HOLE (the kernel answers the other whences itself).
    pub fn lseek(&self, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        let inode = self.inode(ino)?;
        let _io = inode.io.read();
        let (file, size) = {
            let mut st = inode.state.lock();
            (self.cache_file(&mut st, false)?, st.attr.size)
        };
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(FsError::Invalid("lseek whence"));
        }
        if offset >= size {
            return Err(FsError::NoData(offset));
        }
        if !inode.state.lock().absent.is_empty() {
            // Some bytes are only in the bucket: call it all data, never a hole.
            return Ok(if whence == libc::SEEK_DATA {
                offset
            } else {
                size
            });
        }
        let found = match file {
            None => None,
            Some(f) => {
                // SAFETY: lseek only reads the descriptor, which `f` keeps open.
                let r = unsafe { libc::lseek(f.as_raw_fd(), offset as i64, whence) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENXIO) {
                        return Err(FsError::io("seek cache file")(e));
                    }
                    None
                } else {
                    Some(r as u64)
                }
            }
        };
        match whence {
            // No data in the cache file past `offset` (or the data found lies beyond the
            // logical end): none in the file.
            libc::SEEK_DATA => found.filter(|&p| p < size).ok_or(FsError::NoData(offset)),
            // The cache file's end (or a file never written) counts as the hole at `size`, or
            // at `offset` when the cache file is shorter than the file.
            _ => Ok(found.unwrap_or(offset).min(size)),
        }
    }
}

/// Cuts the cache file back to the file's size before the size grows over what lies past
/// it (`InodeState::tail_unsure`): grown over, those bytes would read back where the file
/// must hold zeros. The cut (this one, or a truncation's) is synced before the new size can
/// be: RocksDB's log is shared, so another file's fsync may make this one's size durable
/// before this file is fsync'd. The caller holds the io lock exclusively (no write in
/// flight). Rare (after a truncation, a failure or a crash), so the sync under the locks is
/// paid once per such event.
pub(super) fn cut_past_end(fs: &Fs, st: &mut InodeState, file: &File) -> Result<()> {
    let len = file
        .metadata()
        .map_err(FsError::io("stat cache file"))?
        .len();
    if len > st.attr.size {
        file.set_len(st.attr.size)
            .map_err(FsError::io("cut cache file past the end"))?;
    }
    fs.sync_cache_file(file, "sync cache file cut past the end")?;
    st.tail_unsure = false;
    Ok(())
}

/// Tests: fails with EIO if the test running on this thread asked for the next cut of a
/// cache file (a punch, or a truncation's) to fail (`tests::NEXT_CUT_FAILS`).
fn injected_cut_failure(context: &'static str) -> Result<()> {
    #[cfg(test)]
    if tests::NEXT_CUT_FAILS.with(|fails| fails.replace(false)) {
        return Err(FsError::io(context)(io::Error::from_raw_os_error(
            libc::EIO,
        )));
    }
    let _ = context;
    Ok(())
}

/// A truncation's cut of its cache file.
fn set_len_raw(file: &File, size: u64) -> Result<()> {
    injected_cut_failure("truncate cache file")?;
    file.set_len(size)
        .map_err(FsError::io("truncate cache file"))
}

pub(super) fn fallocate_raw(file: &File, mode: i32, offset: u64, length: u64) -> Result<()> {
    injected_cut_failure("fallocate cache file")?;
    // SAFETY: fallocate only reads the descriptor, which `file` keeps open.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, length as i64) };
    if r != 0 {
        return Err(FsError::io("fallocate cache file")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
