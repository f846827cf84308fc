//! Copy-on-write for the cut being uploaded: the upload's reads of the cut's bytes, the
//! copies a change makes first of pages the upload has yet to read (`Frozen`), and the cache
//! files of removed or emptied files kept open for it (see `cut.rs`'s module doc).

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::pageset::PageSet;
use super::staging::Staging;
use super::{Cut, CutRun, Fs, FsError, InodeState, Result, PAGE_SIZE};

impl Fs {
    /// Reads the bytes of `run` as the cut took them into `buf`: from the cache file the
    /// pages no change has touched since, the others from their frozen copies.
    ///
    /// The cache file is read without the inode's lock (a run can take a while to read, and
    /// every read and write of the file would wait for it); what it read counts only for
    /// the pages still in `cow` afterwards, under the lock. A writer freezes a page (copies
    /// it out and takes it out of `cow`) before it changes it, so a page still in `cow` was
    /// not changed while the file was read, and a page that left `cow` meanwhile has its
    /// frozen copy.
    pub fn read_cut_run(&self, run: &CutRun, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        buf.resize(run.len as usize, 0);
        let len = buf.len();
        let pages = run.first_page..run.first_page + u64::from(run.pages);
        let span = |r: &Range<u64>| {
            let to = (((r.end - run.first_page) * PAGE_SIZE) as usize).min(len);
            let from = (((r.start - run.first_page) * PAGE_SIZE) as usize).min(to);
            from..to
        };
        let mut from_file = PageSet::new();
        let inode = self.inodes.read().get(&run.ino).cloned();
        if let Some(inode) = inode {
            let file = {
                let mut st = inode.state.lock_unnoted();
                if st.cow.intersects(pages.clone()) {
                    let file = self.cache_file(&mut st, false)?;
                    self.close_if_unused(&mut st);
                    Some(file)
                } else {
                    None
                }
            };
            if let Some(file) = file {
                if let Some(f) = &file {
                    read_full(f, buf, run.first_page * PAGE_SIZE)?;
                } // never written: a hole, zeros already in buf
                self.step(super::Step::CutRunRead { ino: run.ino });
                let mut st = inode.state.lock_unnoted();
                let unchanged: Vec<_> = st.cow.overlapping(pages.clone()).collect();
                for r in unchanged {
                    st.cow.remove(r.clone());
                    from_file.insert(r);
                }
            }
        }
        if from_file.covers(pages.clone()) {
            return Ok(());
        }
        // Pages of a file removed or emptied since the cut, its old cache file kept open for
        // the upload (`keep_for_upload`).
        let kept = {
            let frozen = self.frozen.lock();
            frozen.removed.get(&run.ino).map(|(file, unread)| {
                let ranges: Vec<_> = unread.overlapping(pages.clone()).collect();
                (file.clone(), ranges)
            })
        };
        if let Some((file, ranges)) = kept {
            for r in ranges {
                let span = span(&r);
                buf[span.clone()].fill(0);
                if let Some(f) = &file {
                    read_full(f, &mut buf[span], r.start * PAGE_SIZE)?;
                }
                from_file.insert(r);
            }
            if from_file.covers(pages.clone()) {
                return Ok(());
            }
        }
        // Every other page of the run was changed after the cut, and frozen before that.
        let frozen = self.frozen.lock();
        let mut scratch = Vec::new();
        for page in pages {
            if !from_file.contains(page) {
                let span = span(&(page..page + 1));
                frozen.read(run.ino, page, &mut buf[span], &mut scratch)?;
            }
        }
        Ok(())
    }

    /// A change is about to alter the cache file's bytes of `pages`: copies those of them
    /// the upload has yet to read out of the file first. Called with
    /// the inode's lock held and the gate held shared (so no cut runs). Never fails the
    /// change: a page whose bytes cannot be read is recorded as lost, and the checkpoint
    /// reading the cut fails instead (its pages stay dirty for the next one).
    pub(super) fn freeze(&self, st: &mut InodeState, pages: Range<u64>) {
        if st.cow.is_empty() {
            return;
        }
        let changed: Vec<_> = st.cow.overlapping(pages).collect();
        if changed.is_empty() {
            return;
        }
        let ino = st.attr.ino;
        let file = self.cache_file(st, false);
        let mut frozen = self.frozen.lock();
        let mut buf = Vec::new();
        for r in changed {
            // A piece at a time, each read in one call (a truncation may reach many pages).
            let mut first = r.start;
            while first < r.end {
                let n = (r.end - first).min(FREEZE_PAGES);
                buf.clear();
                buf.resize((n * PAGE_SIZE) as usize, 0);
                let read = match &file {
                    Ok(Some(f)) => {
                        read_full(f, &mut buf, first * PAGE_SIZE).map_err(|e| e.to_string())
                    }
                    Ok(None) => Ok(()), // never written: a hole, zeros
                    Err(e) => Err(e.to_string()),
                };
                for (page, bytes) in (first..first + n).zip(buf.chunks(PAGE_SIZE as usize)) {
                    match &read {
                        Ok(()) => frozen.put(ino, page, bytes),
                        Err(why) => frozen.lose(ino, page, why.clone()),
                    }
                }
                first += n;
            }
            st.cow.remove(r);
        }
        drop(frozen);
        self.close_if_unused(st);
    }

    /// The file of `st` is being removed (or emptied, `empty_for_upload`), and the upload may
    /// still need pages it has not read: instead of copying them (a removed file can be
    /// large, and its removal holds the namespace lock), the cache file stays open for the
    /// upload until it ends. Nothing can change its bytes any more: no name leads to it, and
    /// the inode's own handle to it (`st.file`) is dropped or never used again.
    /// `size` is how far the file reached (its size before a truncation emptied it): the
    /// space past the unread pages and up to there goes back to the disk at once.
    pub(super) fn keep_for_upload(&self, st: &mut InodeState, size: u64) {
        if st.cow.is_empty() {
            return;
        }
        match self.cache_file(st, false) {
            Ok(file) => {
                let unread = std::mem::take(&mut st.cow);
                if let Some(f) = &file {
                    // Only the unread pages are kept: the rest of the file's space goes back
                    // to the disk now, as without a cut in flight (the cache's bound stops
                    // counting it at once). A failure costs space until the upload ends.
                    let end = size.div_ceil(PAGE_SIZE);
                    let mut gaps = Vec::new();
                    let mut from = 0;
                    for r in unread.iter() {
                        gaps.push(from..r.start.min(end));
                        from = r.end;
                    }
                    gaps.push(from..end);
                    for gap in gaps.into_iter().filter(|g| g.start < g.end) {
                        let _ = super::size::fallocate_raw(
                            f,
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            gap.start * PAGE_SIZE,
                            (gap.end - gap.start) * PAGE_SIZE,
                        );
                    }
                }
                let earlier = self
                    .frozen
                    .lock()
                    .removed
                    .insert(st.attr.ino, (file, unread));
                // `cow` is filled only by a cut, and this emptied it: one hand-over per inode
                // and upload.
                debug_assert!(earlier.is_none(), "inode handed to the upload twice");
            }
            // Copied then, or recorded as lost if the file cannot be read either.
            Err(_) => self.freeze(st, 0..u64::MAX),
        }
    }

    /// The file of `st` is being emptied (truncated to zero) while the upload still needs
    /// pages of its cache file: rather than copying them (Postgres empties a dropped
    /// relation's first segment, which can be a GiB just written), the cache file goes to the
    /// upload as a removed file's does (`keep_for_upload`) and the inode starts a new one
    /// when next written. Its name goes first; the next fsync syncs the shard directory
    /// (`new_cache_file`). A crash before that leaves the old file at its old length or no
    /// file; the truncation's record is synced before the name goes (`Fs::commit_cut`), so
    /// an old file's bytes are past the recorded end (rule 16). `size` is the file's size
    /// before the truncation (`keep_for_upload`).
    ///
    /// The caller holds the inode's io lock exclusively (a truncation does): no write, fill,
    /// punch or eviction holds the old file's handle while it is handed over, and none gets
    /// it afterwards (they take `st.file` under that lock).
    ///
    /// False when nothing was handed over (no unread pages, no cache file, or the name could
    /// not be removed): the caller copies out what the upload needs instead.
    pub(super) fn empty_for_upload(&self, st: &mut InodeState, size: u64) -> bool {
        if st.cow.is_empty() || !matches!(self.cache_file(st, false), Ok(Some(_))) {
            return false;
        }
        if std::fs::remove_file(self.cache.data_path(st.attr.ino)).is_err() {
            return false;
        }
        // `st.file` is the old file: kept open for the upload, with only its unread pages.
        self.keep_for_upload(st, size);
        st.file = None;
        st.new_cache_file = true;
        true
    }

    /// The upload of `cut` has read all it needs (or given up): nothing of it is left to
    /// read, and its frozen copies go. Returns how many pages were frozen.
    pub fn release_cut(&self, cut: &Cut) -> u64 {
        for ino in cut.taken.keys() {
            if let Ok(inode) = self.inode(*ino) {
                inode.state.lock_unnoted().cow = PageSet::new();
            }
        }
        self.frozen.lock().clear()
    }
}

fn read_full(f: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break, // past the cache file's end: a hole, zeros already in buf
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FsError::io("read cache file")(e)),
        }
    }
    Ok(())
}

/// Pages a freeze reads from the cache file in one call.
const FREEZE_PAGES: u64 = 64;

/// The pages of the cut being uploaded that a change reached before the upload read them,
/// with their bytes as the cut took them (see the module's doc).
pub(super) struct Frozen {
    staging: Staging,
    /// (ino, page) to its run in `staging`.
    pages: HashMap<(u64, u64), usize>,
    /// Pages whose bytes could not be read before the change: (ino, page, why).
    lost: Vec<(u64, u64, String)>,
    /// Files removed or emptied since the cut, with the pages the upload has yet to read from
    /// them: their old cache files, kept open (None: there was none, all holes).
    removed: HashMap<u64, (Option<Arc<std::fs::File>>, PageSet)>,
}

impl Frozen {
    pub(super) fn in_dir(dir: &Path) -> Frozen {
        Frozen {
            staging: Staging::in_dir(dir),
            pages: HashMap::new(),
            lost: Vec::new(),
            removed: HashMap::new(),
        }
    }

    /// Gets ready for a cut of `bytes`: at most that much can be frozen.
    pub(super) fn begin(&mut self, bytes: u64, memory_budget: u64) {
        self.clear();
        self.staging.set_memory_budget(memory_budget);
        self.staging.begin(bytes);
    }

    fn put(&mut self, ino: u64, page: u64, bytes: &[u8]) {
        let run = self.staging.push(ino, page, 1, bytes);
        self.pages.insert((ino, page), run);
    }

    fn lose(&mut self, ino: u64, page: u64, why: String) {
        self.lost.push((ino, page, why));
    }

    /// The frozen bytes of `page` of `ino`, as many as `out` holds.
    fn read(&self, ino: u64, page: u64, out: &mut [u8], scratch: &mut Vec<u8>) -> Result<()> {
        let Some(&run) = self.pages.get(&(ino, page)) else {
            let why = match self.lost.iter().find(|l| l.0 == ino && l.1 == page) {
                Some((_, _, why)) => format!(
                    "page {page} of inode {ino} was changed after the cut, and its bytes as \
                     of the cut could not be kept: {why}"
                ),
                None => format!(
                    "page {page} of inode {ino} is neither in the cache file as of the cut \
                     nor frozen (a bug)"
                ),
            };
            return Err(FsError::io("read the cut's bytes")(io::Error::other(why)));
        };
        let run = self.staging.runs()[run];
        let bytes = self
            .staging
            .bytes(&run, scratch)
            .map_err(FsError::io("read frozen page"))?;
        out.copy_from_slice(&bytes[..out.len()]);
        Ok(())
    }

    /// Forgets every frozen page; returns how many there were.
    fn clear(&mut self) -> u64 {
        let n = self.pages.len() as u64;
        self.pages.clear();
        self.lost.clear();
        self.removed.clear();
        self.staging.clear();
        n
    }
}
