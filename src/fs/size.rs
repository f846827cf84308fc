//! A file's size and allocation: setattr (a truncation with it), fallocate, lseek's data
//! and holes, and the cut of what a failure left in the cache file past the end.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::data::pages;
use super::{Attr, FileKind, Fs, FsError, InodeState, Result, SetAttr, MAX_FILE_SIZE, PAGE_SIZE};

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
        self.commit_one(st, batch, saved).inspect_err(|e| {
            self.stop_for_failed_commit(&format!(
                "the record of a truncation or a punched hole failed ({e})"
            ))
        })?;
        // (A failed sync stops the mount itself.)
        self.sync_records(st.meta_seq)?;
        self.step(super::Step::CutRecorded { ino: st.attr.ino });
        Ok(())
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
            Some(file) => file
                .set_len(size)
                .map_err(FsError::io("truncate cache file")),
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
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
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
            let punch = self
                .cache_file(&mut st, true)
                .and_then(|file| fallocate_raw(&file.expect("created"), mode, offset, length));
            // Changed once punched (as a truncation's cut, `commit_cut`).
            st.write_gen += 1;
            // Failed: the pages the cache held keep their bytes, which are what the file
            // reads and the next checkpoint uploads (they are dirty now); those only the
            // bucket held read as the punch's zeros. Memory, records and reads agree, and
            // the program was told the punch failed.
            return punch;
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

pub(super) fn fallocate_raw(file: &File, mode: i32, offset: u64, length: u64) -> Result<()> {
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
mod tests {
    use super::*;
    use crate::cache::FailCommit;
    use crate::fs::testing::{new_file, open};
    use crate::fs::SetAttr;
    use std::os::unix::fs::FileExt;

    /// How the cache file came to hold bytes past the file's end.
    #[derive(Clone, Copy, Debug)]
    enum Leftover {
        /// A write past the end whose commit was lost.
        Lost,
        /// One whose commit was applied but reported a failure (memory keeps the old size).
        Applied,
        /// A crash kept bytes whose new size was never recorded.
        Crash,
    }

    /// Bytes the cache file holds past the file's end (the size is not on a page boundary)
    /// must read as zeros once something grows the file over them: a write leaving a hole, a
    /// truncation up, fallocate.
    #[test]
    fn what_a_failed_write_left_past_the_end_reads_as_zeros_once_the_file_grows() {
        type Grow = fn(&Fs, u64);
        const SIZE: u64 = 100;
        let grows: [(&str, Grow); 3] = [
            ("a write leaving a hole", |fs, ino| {
                fs.write(ino, 3 * PAGE_SIZE, &[0xbb; PAGE_SIZE as usize])
                    .map(drop)
                    .unwrap()
            }),
            ("a truncation up", |fs, ino| {
                let size = SetAttr {
                    size: Some(4 * PAGE_SIZE),
                    ..SetAttr::default()
                };
                fs.setattr(ino, &size).map(drop).unwrap()
            }),
            ("fallocate", |fs, ino| {
                fs.fallocate(ino, SIZE, 4 * PAGE_SIZE - SIZE, 0).unwrap()
            }),
        ];
        for leftover in [Leftover::Lost, Leftover::Applied, Leftover::Crash] {
            for (how, grow) in grows {
                let dir = tempfile::tempdir().unwrap();
                let mut fs = open(&dir);
                let ino = new_file(&fs);
                fs.write(ino, 0, &[0x11; SIZE as usize]).unwrap();
                let junk = [0xaa; PAGE_SIZE as usize];
                match leftover {
                    Leftover::Lost | Leftover::Applied => {
                        fs.meta.fail_next_commit(match leftover {
                            Leftover::Lost => FailCommit::Lost,
                            _ => FailCommit::Applied,
                        });
                        fs.write(ino, SIZE, &junk).expect_err("the commit fails");
                    }
                    Leftover::Crash => {
                        fs.fsync(ino, false).unwrap();
                        let path = fs.cache_file_path(ino);
                        drop(fs);
                        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                        file.write_all_at(&junk, SIZE).unwrap();
                        fs = open(&dir);
                        fs.open(ino, libc::O_RDWR).unwrap();
                    }
                }
                let case = format!("{leftover:?}, then {how}");
                assert_eq!(fs.getattr(ino).unwrap().size, SIZE, "{case}");
                grow(&fs, ino);
                assert_eq!(fs.getattr(ino).unwrap().size, 4 * PAGE_SIZE, "{case}");
                let got = fs.read(ino, SIZE, PAGE_SIZE as u32).unwrap();
                assert!(
                    got.iter().all(|&b| b == 0),
                    "{case}: past the old end reads {:#x}.., not zeros",
                    got[0]
                );
                assert_eq!(
                    fs.read(ino, 0, SIZE as u32).unwrap(),
                    vec![0x11; SIZE as usize],
                    "{case}: the bytes before the old end"
                );
            }
        }
    }

    /// setattr(2) of the size to half a page.
    fn truncate_to_half_a_page(fs: &Fs, ino: u64) -> Result<()> {
        let size = SetAttr {
            size: Some(PAGE_SIZE / 2),
            ..SetAttr::default()
        };
        fs.setattr(ino, &size).map(drop)
    }

    /// How the record of a truncation or a punched hole fails.
    #[derive(Clone, Copy, Debug)]
    enum RecordFails {
        /// Its commit, the batch lost or applied.
        Commit(FailCommit),
        /// Refused: the mount stopped after the change looked (a failed commit elsewhere).
        Refused,
        /// The sync of the records after its commit.
        Sync,
    }

    /// A truncation down or a punched hole whose record fails (its commit, the sync after
    /// it, or refused because another change's failed commit stopped the mount after this
    /// one looked) must leave the cache file whole: the mount stops as a crash would, the
    /// cache dir is not given up, and the next mount finds every fsync'd byte, or the change
    /// done, never the old size with zeros where the bytes were. Before, the cut came
    /// first: the file read as zeros after the restart, or the cache dir was given up with
    /// every fsync'd byte not yet in the bucket.
    #[test]
    fn a_truncation_or_punch_whose_record_fails_keeps_every_fsynced_byte() {
        type Change = fn(&Fs, u64) -> Result<()>;
        let old = vec![0x11; 3 * PAGE_SIZE as usize];
        // What each change leaves when done: a truncation its prefix, a punch zeros.
        let punched = [
            vec![0; 2 * PAGE_SIZE as usize],
            old[2 * PAGE_SIZE as usize..].to_vec(),
        ];
        let changes: [(&str, Change, Vec<u8>); 3] = [
            (
                "setattr",
                truncate_to_half_a_page,
                old[..PAGE_SIZE as usize / 2].to_vec(),
            ),
            ("open with O_TRUNC", open_truncating, Vec::new()),
            ("a punched hole", punch_two_pages, punched.concat()),
        ];
        let fails = [
            RecordFails::Commit(FailCommit::Lost),
            RecordFails::Commit(FailCommit::Applied),
            RecordFails::Refused,
            RecordFails::Sync,
        ];
        for how in fails {
            for (name, change, done) in &changes {
                let dir = tempfile::tempdir().unwrap();
                let fs = open(&dir);
                let ino = new_file(&fs);
                fs.write(ino, 0, &old).unwrap();
                fs.fsync(ino, false).unwrap();
                match how {
                    RecordFails::Commit(how) => fs.meta.fail_next_commit(how),
                    RecordFails::Refused => fs.meta.refuse_commits(),
                    RecordFails::Sync => fs.meta.fail_next_sync(),
                }
                let case = format!("{name}, {how:?}");
                let answer = change(&fs, ino);
                let punch = *name == "a punched hole";
                // Live: a truncation is done in memory (the kernel drops its pages past the
                // new end), a punch is not.
                let got = fs.read(ino, 0, old.len() as u32).unwrap();
                match punch {
                    true => assert!(answer.is_err() && got == old, "{case}: {answer:?}"),
                    false => assert!(
                        answer.is_ok() && got == *done,
                        "{case}: {answer:?}, {} bytes",
                        got.len()
                    ),
                }
                assert!(!fs.cache_given_up(), "{case}: the cache dir was given up");
                assert!(fs.cache_failed(), "{case}: the mount did not stop");
                fs.fsync(ino, false)
                    .expect_err("an fsync after the failed record");
                // (The unmount writes nothing once stopped; after a failed sync it says so.)
                let unmounted = fs.shutdown();
                assert!(
                    unmounted.is_ok() || matches!(how, RecordFails::Sync),
                    "{case}: {unmounted:?}"
                );
                drop(fs);
                let fs = open(&dir);
                let got = fs.read(ino, 0, old.len() as u32).unwrap();
                // (A punch answered with an error has made no hole in pages the cache held.)
                assert!(
                    got == old || (got == *done && !punch),
                    "{case}: after a restart the file reads {} bytes, {:#x}.., neither the old \
                     bytes nor the change done",
                    got.len(),
                    got.first().copied().unwrap_or(0)
                );
            }
        }
    }

    /// open(2) with O_TRUNC.
    fn open_truncating(fs: &Fs, ino: u64) -> Result<()> {
        fs.open(ino, libc::O_RDWR | libc::O_TRUNC).map(drop)
    }

    /// fallocate(2) punching the first two pages.
    fn punch_two_pages(fs: &Fs, ino: u64) -> Result<()> {
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        fs.fallocate(ino, 0, 2 * PAGE_SIZE, punch)
    }

    /// A power cut may keep a cache file's cut and lose the unsynced record of it (the two
    /// are on different files): the truncation or punch must be in the synced records
    /// before the cache file loses a byte, and the cache file cut once it is.
    #[test]
    fn a_truncation_or_punch_is_durable_in_the_records_before_the_cache_file_is_cut() {
        use std::sync::atomic::{AtomicBool, Ordering};
        type Change = fn(&Fs, u64) -> Result<()>;
        let old = vec![0x11; 3 * PAGE_SIZE as usize];
        // The cache file once cut: its length, and the bytes it then holds from the start.
        let changes: [(&str, Change, u64, Vec<u8>); 2] = [
            (
                "a truncation",
                truncate_to_half_a_page,
                PAGE_SIZE / 2,
                old[..PAGE_SIZE as usize / 2].to_vec(),
            ),
            (
                "a punched hole",
                punch_two_pages,
                old.len() as u64,
                [
                    vec![0; 2 * PAGE_SIZE as usize],
                    old[..PAGE_SIZE as usize].to_vec(),
                ]
                .concat(),
            ),
        ];
        for (name, change, len, cut) in changes {
            let dir = tempfile::tempdir().unwrap();
            let fs = std::sync::Arc::new(open(&dir));
            let ino = new_file(&fs);
            fs.write(ino, 0, &old).unwrap();
            fs.fsync(ino, false).unwrap();
            let path = fs.cache_file_path(ino);
            let cache_file = move || {
                let bytes = std::fs::read(&path).unwrap();
                (bytes.len() as u64, bytes)
            };
            let recorded = std::sync::Arc::new(AtomicBool::new(false));
            {
                let (fs_in_hook, recorded) = (std::sync::Arc::downgrade(&fs), recorded.clone());
                let (cache_file, old) = (cache_file.clone(), old.clone());
                fs.set_step_hook(Box::new(move |step| {
                    if let (crate::fs::Step::CutRecorded { .. }, Some(fs)) =
                        (step, fs_in_hook.upgrade())
                    {
                        assert!(
                            fs.log_synced_seq() >= fs.log_seq(),
                            "{name}: recorded, not synced ({} of {})",
                            fs.log_synced_seq(),
                            fs.log_seq()
                        );
                        assert!(
                            cache_file().1 == old,
                            "{name}: the cache file was cut before its record"
                        );
                        recorded.store(true, Ordering::Release);
                    }
                }));
            }
            change(&fs, ino).unwrap();
            assert!(recorded.load(Ordering::Acquire), "{name}: no record");
            let (got_len, got) = cache_file();
            assert_eq!(got_len, len, "{name}: the cache file's length once cut");
            assert!(got.starts_with(&cut), "{name}: the cache file once cut");
        }
    }

    /// The cache file a truncation opens to cut (nobody had it open) was open before the
    /// change, as far as the next fsync is concerned: that fsync flushes it through its
    /// descriptor, which reports a failed write-back of the cut, and needs no flush of the
    /// whole cache disk (`InodeState::watched`).
    #[test]
    fn the_fsync_after_a_truncation_of_a_closed_file_flushes_that_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let fs = open(&dir);
        let ino = new_file(&fs);
        fs.write(ino, 0, &[0x11; 3 * PAGE_SIZE as usize]).unwrap();
        fs.fsync(ino, false).unwrap();
        fs.release(ino).unwrap();
        truncate_to_half_a_page(&fs, ino).unwrap();
        let flushes = |fs: &Fs| {
            let stats = &fs.stats;
            [&stats.cache_file_syncs, &stats.cache_flushes].map(|n| n.load(Ordering::Relaxed))
        };
        let [files, disks] = flushes(&fs);
        fs.fsync(ino, false).unwrap();
        assert_eq!(
            flushes(&fs),
            [files + 1, disks],
            "the fsync's flushes [of the file, of the cache disk]"
        );
    }

    /// A truncation or a punched hole that passed the stop check while a change whose
    /// commit then failed held the file's lock (that stop is crash-like: the cache dir is
    /// opened again) changes nothing once it holds the file, and fails with EIO as every
    /// change after the stop does. (One past that look has its record refused and leaves
    /// the cache file whole, rule 24; a truncation is then done in memory.)
    #[test]
    fn a_cut_or_punch_that_entered_before_a_failed_commit_stopped_the_mount_changes_nothing() {
        type Change = fn(&Fs, u64) -> Result<()>;
        let changes: [(&str, Change); 3] = [
            ("a truncation", truncate_to_half_a_page),
            ("an open with O_TRUNC", open_truncating),
            ("a punched hole", punch_two_pages),
        ];
        for (name, change) in changes {
            let dir = tempfile::tempdir().unwrap();
            let fs = std::sync::Arc::new(open(&dir));
            let ino = new_file(&fs);
            let old = vec![0x11; 3 * PAGE_SIZE as usize];
            fs.write(ino, 0, &old).unwrap();
            fs.fsync(ino, false).unwrap();
            {
                let fs_in_hook = std::sync::Arc::downgrade(&fs);
                fs.set_step_hook(Box::new(move |step| {
                    if let (crate::fs::Step::Entered { .. }, Some(fs)) =
                        (step, fs_in_hook.upgrade())
                    {
                        fs.stop_for_failed_commit("a test's failed commit");
                    }
                }));
            }
            let got = change(&fs, ino);
            assert!(
                matches!(got, Err(FsError::CacheFailed)),
                "{name} after the stop: {got:?}"
            );
            assert!(!fs.cache_given_up(), "{name}: the cache dir was given up");
            assert_eq!(fs.read(ino, 0, old.len() as u32).unwrap(), old, "{name}");
            fs.shutdown().unwrap();
            drop(fs);
            let fs = open(&dir);
            assert_eq!(
                fs.read(ino, 0, old.len() as u32).unwrap(),
                old,
                "{name}: after a restart"
            );
        }
    }
}
