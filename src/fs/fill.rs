//! Filling absent pages: fetching them from the bucket on first use, without holding the
//! inode's locks, and installing the bytes in the cache file once they are here.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::pageset::PageSet;
use super::{Fs, FsError, Inode, InodeState, Result, PAGE_SIZE};

/// Pages fetched together on a miss (256 KiB, one run).
const FETCH_PAGES: u64 = 32;
/// The largest readahead window for a sequential reader (4 MiB).
const MAX_FETCH_WINDOW: u64 = 512;

impl Fs {
    /// Fetches whichever of `pages` are absent and installs them in the cache file.
    ///
    /// When it returns the pages have been present; an eviction may take them again before
    /// the caller locks the inode, so callers check under their locks and fill again if need
    /// be (`enter_with_pages`, `read`). `readahead` (reads only) widens a sequential
    /// reader's fetches. Returns the bytes fetched (0: all of `pages` were here).
    pub(super) fn fill_absent(
        &self,
        inode: &Inode,
        pages: Range<u64>,
        readahead: bool,
    ) -> Result<u64> {
        match self.fetch_absent(inode, pages, readahead)? {
            Some(fetched) => self.install_fill(fetched),
            None => Ok(0),
        }
    }

    /// Claims whichever of `pages` are absent and fetches them, to be installed with
    /// `install_fill` (`fill_absent` does both; a read answers from the fetched bytes in between).
    /// None: none of `pages` was absent.
    ///
    /// The caller holds no lock of the inode and not the gate: a fetch is a network call
    /// that can take minutes in an S3 stall, and nothing other requests need may wait on it
    /// (DESIGN section 1). The bytes are installed afterwards under the inode's locks, only
    /// into pages still absent, and none that were made present some other way and evicted
    /// again meanwhile (`fetch_stale`: the bucket may hold newer bytes by then, and the
    /// caller fills again).
    /// Pages another fill is fetching are waited for, not fetched twice; the claimed pages
    /// stay claimed (`fetching`) until the `Fetched` is installed or dropped.
    pub(super) fn fetch_absent<'a>(
        &self,
        inode: &'a Inode,
        pages: Range<u64>,
        readahead: bool,
    ) -> Result<Option<Fetched<'a>>> {
        if pages.is_empty() || !inode.state.lock().absent.intersects(pages.clone()) {
            return Ok(None);
        }
        let fetcher = self
            .fetcher
            .get()
            .ok_or_else(|| FsError::Fetch("no bucket attached to fetch absent pages".into()))?
            .clone();
        // Fetch in aligned units (whole runs, which is what a GET returns anyway).
        let mut pages =
            pages.start / FETCH_PAGES * FETCH_PAGES..pages.end.div_ceil(FETCH_PAGES) * FETCH_PAGES;
        let (ino, missing, size) = {
            let mut st = inode.state.lock();
            loop {
                if !st.absent.intersects(pages.clone()) {
                    return Ok(None); // a hit: no fetch, and no change to the readahead state
                }
                if !st.fetching.intersects(pages.clone()) {
                    break;
                }
                st.waiting += 1;
                inode.fill_cv.wait(st.inner());
                st.waiting -= 1;
            }
            // Readahead: a miss where the last fetch ended is a sequential reader (a scan, a
            // WAL replay); double its window each time, up to 4 MiB, so a scan of a cold table
            // costs a few large GETs instead of one round trip per 256 KiB.
            if readahead {
                st.fetch_window = if pages.start == st.fetch_next {
                    (st.fetch_window * 2).clamp(FETCH_PAGES, MAX_FETCH_WINDOW)
                } else {
                    FETCH_PAGES
                };
                let size_pages = st.attr.size.div_ceil(PAGE_SIZE);
                pages.end = (pages.start + st.fetch_window)
                    .min(size_pages)
                    .max(pages.end);
                st.fetch_next = pages.end;
            }
            // (The readahead may reach pages another fill is fetching: those are left to it.)
            let missing = st.claim_absent(pages);
            (st.attr.ino, missing, st.attr.size)
        };
        let in_flight = InFlight {
            inode,
            ranges: missing,
        };
        let mut runs = Vec::with_capacity(in_flight.ranges.len());
        for r in &in_flight.ranges {
            let bytes = fetcher.fetch(ino, r.clone()).map_err(FsError::Fetch)?;
            self.step(super::Step::FillFetched { ino });
            runs.push(bytes);
        }
        Ok(Some(Fetched {
            runs,
            size,
            in_flight,
        }))
    }

    /// Installs what `fetch_absent` fetched (see `install_fetched`) and ends the fill.
    /// Returns the bytes fetched.
    pub(super) fn install_fill(&self, fetched: Fetched<'_>) -> Result<u64> {
        let inode = fetched.in_flight.inode;
        let mut bytes = 0;
        for (r, run) in fetched.in_flight.ranges.iter().zip(&fetched.runs) {
            self.install_fetched(inode, r.clone(), run)?;
            bytes += run.len() as u64;
        }
        self.stats.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Writes fetched pages `r` (`bytes`) into the cache file, where they are still absent
    /// and were not made present and evicted again meanwhile (`fetch_stale`). Once a failed
    /// flush or commit has stopped the mount nothing is installed (`FsError::CacheFailed`):
    /// the disk may not hold what is written to it, nor the records take the marks, so the
    /// pages stay absent and reads fetch them.
    pub(super) fn install_fetched(&self, inode: &Inode, r: Range<u64>, bytes: &[u8]) -> Result<()> {
        if self.cache_failed() {
            return Err(FsError::CacheFailed);
        }
        // The io lock keeps truncations and evictions out, the fill lock writers that
        // replace absent pages: while both are held, which pages are absent cannot change.
        let _io = inode.io.read();
        let _fill = inode.fill_lock.lock();
        let (file, still, size, new_file, ino) = {
            let mut st = inode.state.lock();
            let mut still = PageSet::new();
            for a in st.absent.overlapping(r.clone()) {
                still.insert(a);
            }
            for s in st.fetch_stale.overlapping(r.clone()) {
                still.remove(s);
            }
            let still: Vec<Range<u64>> = still.iter().collect();
            if still.is_empty() {
                return Ok(());
            }
            let file = self
                .cache_file(&mut st, true)?
                .expect("cache_file with create returns a file");
            (file, still, st.attr.size, st.new_cache_file, st.attr.ino)
        };
        for s in &still {
            // Never write past the file's end (it may have grown and shrunk since the fetch).
            let start = s.start * PAGE_SIZE;
            let end = (s.end * PAGE_SIZE).min(size);
            if end > start {
                let from = ((s.start - r.start) * PAGE_SIZE) as usize;
                let len = ((end - start) as usize).min(bytes.len().saturating_sub(from));
                file.write_all_at(&bytes[from..from + len], start)
                    .map_err(FsError::io("fill cache file"))?;
            }
        }
        // The absent mark may go only once the bytes are on disk: a machine crash must not
        // leave a page that is neither absent nor in the cache file. A cache file this fill
        // created needs its directory entry on the disk too.
        let synced = {
            // Every fdatasync of a cache file under its sync lock (`Fs::sync_data_to` says
            // why).
            let _sync = inode.sync_lock.lock();
            self.sync_cache_file(&file, "sync filled cache file")
        };
        let synced = synced.and_then(|()| match new_file {
            true => self.sync_cache_file_dir(ino),
            false => Ok(()),
        });
        synced?;
        drop(file);
        self.step(super::Step::FillSynced { ino });
        let mut st = inode.state.lock();
        if self.cache_failed() {
            // Stopped meanwhile: a failed write-back told to another caller (each fdatasync
            // of the file is under its sync lock or, a cut's past the end, its io lock, and
            // one that fails stops the mount before letting go of it) means this sync's
            // success proves nothing.
            self.close_if_unused(&mut st);
            return Err(FsError::CacheFailed);
        }
        // Cleared only once synced: an fsync meanwhile saw it set and synced the directory
        // itself. (Nothing sets it again while the io lock is held.)
        st.new_cache_file &= !new_file;
        let mut batch = self.meta.batch();
        for s in &still {
            st.change_absent(&mut batch, s.clone(), |a| a.remove(s.clone()));
        }
        st.meta_seq = match self.meta.commit(batch) {
            Ok(seq) => seq,
            Err(e) => {
                st.absent_unsure = true;
                return Err(e.into());
            }
        };
        st.write_gen += 1;
        self.close_if_unused(&mut st);
        Ok(())
    }
}

/// The pages a fill claimed, with the bytes fetched for them, not yet installed. Until it is
/// installed or dropped its pages stay claimed: other fills of them wait, and an eviction of
/// one of them (made present some other way meanwhile) marks it stale.
pub(super) struct Fetched<'a> {
    /// The bytes of each claimed range (`in_flight.ranges`), in order.
    runs: Vec<Vec<u8>>,
    /// The file's size when the pages were claimed.
    size: u64,
    in_flight: InFlight<'a>,
}

impl Fetched<'_> {
    /// Where the answer to a read of `len` bytes at `offset` lies in the fetched bytes, if
    /// they are the file's bytes now (`st` is the inode's state, locked): every page the read
    /// touches was fetched by this fill and has stayed absent since it was claimed (not
    /// written, cut off by a truncation, nor made present and evicted again, which marks it
    /// stale), and the file's size is the one it had then. Otherwise None: the caller
    /// installs and reads the cache file.
    pub(super) fn answer(&self, st: &InodeState, offset: u64, len: u32) -> Option<AnswerAt> {
        if st.attr.size != self.size {
            return None;
        }
        let end = (offset + u64::from(len)).min(self.size);
        if end <= offset {
            return None;
        }
        let pages = offset / PAGE_SIZE..end.div_ceil(PAGE_SIZE);
        let at = self
            .in_flight
            .ranges
            .iter()
            .position(|r| r.start <= pages.start && pages.end <= r.end)?;
        if !st.absent.covers(pages.clone()) || st.fetch_stale.intersects(pages) {
            return None;
        }
        let from = (offset - self.in_flight.ranges[at].start * PAGE_SIZE) as usize;
        let bytes = from..from + (end - offset) as usize;
        // (A fetcher answers whole pages; a short run is read from the cache file instead.)
        self.runs[at].get(bytes.clone())?;
        Some(AnswerAt { run: at, bytes })
    }

    /// The fetched bytes of the pages among `pages` that are absent (`st` is the inode's
    /// state, locked), as (byte offset in the file, bytes), if this fill fetched all of them:
    /// a mount a failed flush or commit stopped installs nothing, and answers a read with
    /// these laid over the cache file's bytes. None if an absent page was not fetched by this
    /// fill or was made present and evicted again since (stale), or the file's size changed.
    pub(super) fn cover(&self, st: &InodeState, pages: Range<u64>) -> Option<Vec<(u64, &[u8])>> {
        if st.attr.size != self.size || st.fetch_stale.intersects(pages.clone()) {
            return None;
        }
        let mut pieces = Vec::new();
        for a in st.absent.overlapping(pages.clone()) {
            let a = a.start.max(pages.start)..a.end.min(pages.end);
            let mut covered = 0;
            for (r, run) in self.in_flight.ranges.iter().zip(&self.runs) {
                let p = a.start.max(r.start)..a.end.min(r.end);
                if p.is_empty() {
                    continue;
                }
                let from = ((p.start - r.start) * PAGE_SIZE) as usize;
                let to = ((p.end - r.start) * PAGE_SIZE) as usize;
                pieces.push((p.start * PAGE_SIZE, run.get(from..to)?));
                covered += p.end - p.start;
            }
            if covered != a.end - a.start {
                return None;
            }
        }
        Some(pieces)
    }

    /// The bytes `answer` found.
    pub(super) fn bytes(&self, at: AnswerAt) -> &[u8] {
        &self.runs[at.run][at.bytes]
    }
}

/// Where in a `Fetched` a read's answer lies (`Fetched::answer`).
pub(super) struct AnswerAt {
    run: usize,
    bytes: Range<usize>,
}

/// Pages a fill is fetching; when it ends (done or failed), other fills may take them.
pub(super) struct InFlight<'a> {
    pub(super) inode: &'a Inode,
    pub(super) ranges: Vec<Range<u64>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.inode.state.lock();
        for r in &self.ranges {
            st.fetching.remove(r.clone());
            st.fetch_stale.remove(r.clone());
        }
        self.inode.fill_cv.notify_all();
    }
}
