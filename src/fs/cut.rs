//! The fs core's side of a checkpoint: the cut (a consistent image of the namespace and of
//! which pages are dirty, taken with all changes paused), the upload's reads of the cut's
//! bytes (in `cow.rs`), and marking pages clean once the bucket holds them.
//!
//! Copy-on-write: the cut copies no bytes. It moves each dirty page to pending and into
//! the inode's `cow` set, and the upload reads the pages from the cache file afterwards,
//! with the writers going again (`read_cut_run`). A change to a page still in `cow` (a
//! write, a truncation, a punched hole) first copies the page's bytes out (`freeze`, into
//! `Frozen`), under the inode's lock, and takes it out of `cow`; the removal of a file, or
//! its truncation to zero, instead hands its cache file, open, to the upload, with the pages
//! still to read (`keep_for_upload`, `empty_for_upload`). The upload counts what it read from the cache file only for the
//! pages still in `cow` once it holds the inode's lock again, and takes them out; every
//! other page comes from the kept file or its frozen copy. So the upload reads exactly the
//! cut's bytes, and the writers' pause at a cut no longer grows with what is dirty.
//! docs/checkpoints.md, "Copy-on-write at the cut", says why this replaced the copy.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustc_hash::FxHashSet;

use super::pageset::PageSet;
use super::{Attr, FileKind, Fs, FsError, Inode, InodeState, Result, PAGE_SIZE, ROOT_INO};

/// One directory entry in a cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutDirent {
    pub parent: u64,
    pub name: OsString,
    pub ino: u64,
    pub kind: FileKind,
}

/// What a cut took: the filesystem as of the end of `epoch`, less local-only paths.
#[derive(Debug, Default)]
pub struct Cut {
    pub epoch: u64,
    pub next_ino: u64,
    pub inodes: Vec<Attr>,
    /// Every name outside `--local-only` paths (shared with the walk kept for the next cut).
    pub dirents: Arc<Vec<CutDirent>>,
    /// The names' generation (`MetaStore::names_generation`) the dirents are of: two cuts
    /// with the same one have the same names.
    pub names: u64,
    /// The dirty pages the cut took, per inode.
    pub taken: HashMap<u64, PageSet>,
    /// The files of `taken` with their `write_gen` at the cut: what the flush before their
    /// pages are marked clean must cover (`Fs::flush_cut`).
    pub written: Vec<(u64, u64)>,
    /// The same as runs of at most `max_run_pages` pages, in the order the cut took them,
    /// each with its length as of the cut. `Fs::read_cut_run` reads their bytes.
    pub runs: Vec<CutRun>,
    /// Files cut down since the last cut: (ino, pages kept). The bucket's older pages at or
    /// past that point are gone, even where the file has grown again since.
    pub truncations: Vec<(u64, u64)>,
    /// Bytes in `runs`.
    pub bytes: u64,
    /// Files with a name under the WAL directory (`PathFilter::wal`): their pages go in WAL
    /// segments.
    pub wal: Arc<HashSet<u64>>,
    /// `inodes` holds only the inodes changed since the cut of `shape`, which the view
    /// holds: every other inode is as the view has it, and none came or went. False: every
    /// inode in the bucket's image.
    pub partial: bool,
    /// The inodes this cut counted beyond its names (the view's once it commits).
    pub shape: Arc<CutShape>,
    /// The inodes noted as changed that the cut cleared, noted again if it fails (None: the
    /// list had been dropped, and is dropped again).
    touched: Option<Vec<u64>>,
}

/// A run of pages a cut took: `pages` pages from `first_page` of `ino`, `len` bytes long
/// (the last page may be short at the end of the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutRun {
    pub ino: u64,
    pub first_page: u64,
    pub pages: u32,
    pub len: u32,
}

/// The inodes a cut takes, and how.
struct Plan {
    /// Reached by a name outside `--local-only` paths (hard links once), or unlinked while
    /// open: their changes are uploaded.
    upload: Vec<(u64, Arc<Inode>)>,
    /// Reached only under `--local-only` paths: their changes are dropped.
    local_only: Vec<(u64, Arc<Inode>)>,
    /// Local-only or unlinked files with pages only the bucket has: kept in its image
    /// without a name and without their changes.
    nameless: Vec<(u64, Arc<Inode>)>,
    /// Only the inodes touched since the cut of `shape` (`Cut::partial`).
    partial: bool,
    shape: Arc<CutShape>,
}

/// How a cut counts an inode that no name outside `--local-only` paths reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unnamed {
    /// Unlinked while open (and not local-only): uploaded, so that its pages that are only
    /// in the bucket can still be fetched. A restore leaves it out; the first cut after its
    /// last close drops it.
    Unlinked,
    /// Local-only (reached only under those paths, or unlinked while local-only) with pages
    /// not all in the cache dir: kept without its changes, since its absent pages are the
    /// bucket's and would read as zeros (and be lost when it leaves the path) were the
    /// bucket's image to drop it.
    Nameless,
    /// Not in the bucket's image.
    Out,
}

impl Names {
    /// How a cut counts `inode`: None if one of these names reaches it.
    fn class(&self, ino: u64, inode: &Inode) -> Option<Unnamed> {
        if self.named.contains(&ino) {
            return None;
        }
        let st = inode.state.lock_unnoted();
        if st.attr.kind != FileKind::File {
            return Some(Unnamed::Out);
        }
        let unlinked = st.attr.nlink == 0;
        Some(if unlinked && !st.local_only {
            Unnamed::Unlinked
        } else if (unlinked || self.local_only.contains(&ino)) && !st.absent.is_empty() {
            Unnamed::Nameless
        } else {
            Unnamed::Out
        })
    }
}

/// The inodes a cut counted beyond its names, and when: what a later cut must find
/// unchanged to take only the inodes touched since (`Cut::partial`). The checkpointer hands
/// it back to `Fs::cut` while the view holds that cut.
#[derive(Debug, Default)]
pub struct CutShape {
    /// The names' generation (`Cut::names`).
    names: u64,
    /// The inode map's changes (`InodeMap::changes`) before the cut read it: while they are
    /// as many, no inode came or went.
    map_changes: u64,
    unlinked: FxHashSet<u64>,
    nameless: FxHashSet<u64>,
}

impl CutShape {
    /// The names' generation of the cut.
    pub fn names(&self) -> u64 {
        self.names
    }

    /// How the cut counted `ino`, if no name reached it.
    fn counted(&self, ino: u64) -> Unnamed {
        if self.unlinked.contains(&ino) {
            Unnamed::Unlinked
        } else if self.nameless.contains(&ino) {
            Unnamed::Nameless
        } else {
            Unnamed::Out
        }
    }
}

impl Plan {
    /// Places `inode`: `class` is None if a name reaches it, else how the cut counts it.
    fn place(&mut self, names: &Names, ino: u64, inode: &Arc<Inode>, class: Option<Unnamed>) {
        let entry = (ino, inode.clone());
        // Reached only under local-only paths (by no other name, and not unlinked while
        // open): its changes are dropped.
        let local_only = matches!(class, Some(Unnamed::Nameless | Unnamed::Out))
            && names.local_only.contains(&ino);
        if local_only {
            self.local_only.push(entry.clone());
        }
        match class {
            None | Some(Unnamed::Unlinked) => self.upload.push(entry),
            Some(Unnamed::Nameless) => self.nameless.push(entry),
            Some(Unnamed::Out) => {}
        }
    }
}

/// The last cut's walk of the names, kept by the caller of `cut` for the next one. Walking
/// reads every directory from RocksDB and matches every path against the filter, with every
/// writer paused; under `--durability remote` a cut comes with every group commit, while the
/// names change only when a file is created, renamed or removed. So a cut walks again only
/// when the names' generation has moved since; otherwise it reuses this.
///
/// Keep one per filter: what the walk found depends on it.
#[derive(Default)]
pub struct WalkMemo(Option<Names>);

/// What the walk of one names' generation found.
struct Names {
    generation: u64,
    dirents: Arc<Vec<CutDirent>>,
    wal: Arc<HashSet<u64>>,
    /// Reached by a name outside `--local-only` paths.
    named: FxHashSet<u64>,
    /// Reached under `--local-only` paths.
    local_only: FxHashSet<u64>,
}

/// Decides which paths are never uploaded (`--local-only`).
pub trait PathFilter {
    /// `path` is relative to the root, components joined by '/'.
    fn local_only(&self, path: &[u8]) -> bool;

    /// Whether `path` is PostgreSQL's WAL directory (everything under it is WAL).
    fn wal(&self, _path: &[u8]) -> bool {
        false
    }
}

impl Fs {
    /// Takes a cut: pauses every change, closes the current epoch, records the namespace and
    /// which dirty pages the cut takes, in runs of at most `max_run_pages` pages. Changes
    /// resume when it returns; pages written from then on belong to the next epoch. The
    /// upload reads the runs' bytes with `read_cut_run`, and ends with `release_cut` (or
    /// `untake` on failure); only one cut is read at a time.
    ///
    /// `memo` is the walk of the names the last cut with this `filter` made: it is reused if
    /// no name changed since, and replaced otherwise. `in_view`: the shape of the cut the
    /// view holds (`Cut::shape`, None if the view holds no cut of this mount's): while the
    /// filesystem still has that shape, the cut takes only the inodes changed since
    /// (`Cut::partial`). `memory_budget`: how many bytes of the pages writers change before
    /// the upload reads them are kept in memory; the rest wait in a file in the cache dir.
    pub fn cut(
        &self,
        filter: &dyn PathFilter,
        memo: &mut WalkMemo,
        in_view: Option<&Arc<CutShape>>,
        max_run_pages: u32,
        memory_budget: u64,
    ) -> Result<Cut> {
        let _gate = self.gate.write();
        let mut cut = Cut {
            epoch: self.epoch.load(Ordering::Acquire),
            next_ino: self.next_ino.load(Ordering::Acquire),
            // Every inode changed since the last cut (once each: an inode can be noted
            // again while a cut of every inode runs). A cut that fails gives them back.
            touched: self.touched.take().map(|mut listed| {
                listed.sort_unstable();
                listed.dedup();
                listed
            }),
            ..Cut::default()
        };
        // Their notes are cleared before they are read: a change after that notes the inode
        // again, for the next cut.
        let found: Vec<(u64, Arc<Inode>)> = {
            let map = self.inodes.read();
            let listed = cut.touched.iter().flatten();
            let found = listed.filter_map(|&ino| map.get(&ino).map(|i| (ino, i.clone())));
            found.collect()
        };
        for (_, inode) in &found {
            inode.state.clear_note();
        }
        // A dropped list: every inode.
        let in_view = in_view.filter(|_| cut.touched.is_some());
        let upload = match self.plan_cut(filter, memo, in_view, &found, &mut cut) {
            Ok(upload) => upload,
            Err(e) => {
                self.give_back(cut.touched.as_deref());
                return Err(e);
            }
        };
        self.rpo_cut();
        // From here on the cut moves pages from dirty to pending: if it fails part-way, every
        // move is undone, so that nothing taken is left stranded as neither dirty nor sent.
        match self.take(&upload, max_run_pages, &mut cut) {
            Ok(()) => {}
            Err(e) => {
                self.untake(cut);
                return Err(e);
            }
        }
        let mut batch = self.meta.batch();
        batch.put_epoch(cut.epoch + 1);
        // A counter of this mount's: nothing after a restart depends on it.
        batch.may_lag();
        if let Err(e) = self.meta.commit(batch) {
            self.untake(cut);
            return Err(e.into());
        }
        self.epoch.store(cut.epoch + 1, Ordering::Release);
        self.frozen.lock().begin(cut.bytes, memory_budget);
        Ok(cut)
    }

    /// Records the namespace in `cut` and decides which inodes it takes (only the `touched`
    /// ones while the view holds the others, `in_view`): drops the changes of local-only
    /// files, records the nameless ones, and returns the inodes whose changes are uploaded.
    fn plan_cut(
        &self,
        filter: &dyn PathFilter,
        memo: &mut WalkMemo,
        in_view: Option<&Arc<CutShape>>,
        touched: &[(u64, Arc<Inode>)],
        cut: &mut Cut,
    ) -> Result<Vec<(u64, Arc<Inode>)>> {
        // Under the gate, so no name changes between reading the generation and the walk.
        let generation = self.meta.names_generation();
        let names = match memo.0.take() {
            Some(n) if n.generation == generation => n,
            _ => self.walk_names(filter, generation)?,
        };
        let names = &*memo.0.insert(names);
        cut.names = generation;
        cut.dirents = names.dirents.clone();
        cut.wal = names.wal.clone();
        // Only the touched inodes while the view holds every other one as it is (no name
        // changed, no inode came or went, none of the touched changed how it is counted);
        // otherwise every inode.
        let plan = in_view
            .filter(|s| s.names == generation && s.map_changes == self.inodes.changes())
            .and_then(|shape| self.plan_touched(names, shape, touched))
            .map_or_else(|| self.plan_all(names), Ok)?;
        cut.inodes
            .reserve_exact(plan.upload.len() + plan.nameless.len());
        // Local-only files are never uploaded, so nothing of theirs waits to be: forget
        // their dirty pages (a file with another, uploaded name is uploaded all the same).
        // That they were dropped is recorded: should the file leave its local-only path
        // (renamed or linked out), all of it is uploaded then.
        let mut batch = self.meta.batch();
        for (ino, inode) in &plan.local_only {
            let mut st = inode.state.lock_unnoted();
            if !st.local_only {
                st.local_only = true;
                batch.put_local_only(*ino);
            }
            if !st.marked.is_empty() {
                self.recount(&mut st, |st| st.dirty = PageSet::new());
                st.marked = PageSet::new();
                batch.delete_dirty_from(*ino, 0);
            }
        }
        self.meta.commit(batch)?;
        // Files that stay in the bucket's image without a name, only so that the pages they
        // have nowhere else can still be fetched: nothing of them is uploaded, and a restore
        // leaves them out (no links).
        for (_, inode) in &plan.nameless {
            let mut attr = inode.state.lock_unnoted().attr.clone();
            attr.nlink = 0;
            cut.inodes.push(attr);
        }
        cut.partial = plan.partial;
        cut.shape = plan.shape;
        Ok(plan.upload)
    }

    /// Every inode: those to upload, those under `--local-only` paths only, and those kept
    /// nameless.
    fn plan_all(&self, names: &Names) -> Result<Plan> {
        // Read before the map: an inode that goes after this makes the next cut see a change.
        let map_changes = self.inodes.changes();
        let inodes = self.inode_snapshot();
        let mut plan = Plan {
            upload: Vec::with_capacity(names.named.len()),
            local_only: Vec::new(),
            nameless: Vec::new(),
            partial: false,
            shape: Arc::default(),
        };
        let mut shape = CutShape {
            names: names.generation,
            map_changes,
            ..CutShape::default()
        };
        for (&ino, inode) in &inodes {
            // Read now: a change after this notes it again (and an inode noted while the
            // list was dropped is in no list, which a cut of every inode repairs).
            inode.state.clear_note();
            let class = names.class(ino, inode);
            match class {
                Some(Unnamed::Unlinked) => shape.unlinked.insert(ino),
                Some(Unnamed::Nameless) => shape.nameless.insert(ino),
                _ => false,
            };
            plan.place(names, ino, inode, class);
        }
        if plan.upload.len() < names.named.len() + shape.unlinked.len() {
            return Err(FsError::Invalid("directory entry names a missing inode"));
        }
        plan.shape = Arc::new(shape);
        Ok(plan)
    }

    /// Only the `touched` inodes, while the view holds every other one as the cut of `shape`
    /// left it: None if one of them is no longer counted as that cut counted it (unlinked,
    /// nameless or neither).
    fn plan_touched(
        &self,
        names: &Names,
        shape: &Arc<CutShape>,
        touched: &[(u64, Arc<Inode>)],
    ) -> Option<Plan> {
        let mut plan = Plan {
            upload: Vec::with_capacity(touched.len()),
            local_only: Vec::new(),
            nameless: Vec::new(),
            partial: true,
            shape: shape.clone(),
        };
        for (ino, inode) in touched {
            let class = names.class(*ino, inode);
            if class.is_some_and(|now| now != shape.counted(*ino)) {
                return None;
            }
            plan.place(names, *ino, inode, class);
        }
        Some(plan)
    }

    /// Walks the tree from the root: every name outside `--local-only` paths, and which
    /// inodes those names and the local-only ones reach.
    fn walk_names(&self, filter: &dyn PathFilter, generation: u64) -> Result<Names> {
        let mut dirents = Vec::new();
        let mut wal_files = HashSet::new();
        let mut seen = FxHashSet::default();
        let mut local_only = FxHashSet::default();
        let mut stack: Vec<(u64, Vec<u8>, bool, bool)> = vec![(ROOT_INO, Vec::new(), false, false)];
        seen.insert(ROOT_INO);
        while let Some((dir, path, excluded, wal)) = stack.pop() {
            for d in self.meta.list_dir(dir)? {
                let mut child = path.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(d.name.as_encoded_bytes());
                let excluded = excluded || filter.local_only(&child);
                if excluded {
                    if local_only.insert(d.ino) && d.kind == FileKind::Dir {
                        stack.push((d.ino, child, true, false));
                    }
                    continue;
                }
                let wal = wal || filter.wal(&child);
                if wal {
                    wal_files.insert(d.ino);
                }
                dirents.push(CutDirent {
                    parent: dir,
                    name: d.name,
                    ino: d.ino,
                    kind: d.kind,
                });
                if seen.insert(d.ino) && d.kind == FileKind::Dir {
                    stack.push((d.ino, child, false, wal));
                }
            }
        }
        Ok(Names {
            generation,
            dirents: Arc::new(dirents),
            wal: Arc::new(wal_files),
            named: seen,
            local_only,
        })
    }

    /// Moves the dirty pages of `upload` to pending (and into `cow`, for the upload to read),
    /// recording what it took in `cut` as it goes (so that `untake` can undo a part-way
    /// failure).
    fn take(&self, upload: &[(u64, Arc<Inode>)], max_run_pages: u32, cut: &mut Cut) -> Result<()> {
        let epoch = cut.epoch;
        for &(ino, ref inode) in upload {
            let mut st = inode.state.lock_unnoted();
            if st.local_only {
                self.leave_local_only(&mut st, epoch)?;
            }
            cut.inodes.push(st.attr.clone());
            if let Some(keep) = st.trunc.take() {
                cut.truncations.push((ino, keep));
                st.trunc_pending = Some(keep);
            }
            if st.dirty.is_empty() || st.attr.kind != FileKind::File {
                continue;
            }
            // From dirty to pending: still counted, still not evictable.
            let taken = std::mem::take(&mut st.dirty);
            for r in taken.iter() {
                st.pending.insert(r);
            }
            cut.written.push((ino, st.write_gen));
            let taken = cut.taken.entry(ino).or_insert(taken);
            let size = st.attr.size;
            for range in taken.iter() {
                let mut first = range.start;
                while first < range.end && first * PAGE_SIZE < size {
                    // Never past the end: dirty marks can outlive a failed size change.
                    let pages = (range.end - first)
                        .min(u64::from(max_run_pages))
                        .min(size.div_ceil(PAGE_SIZE) - first);
                    let end = ((first + pages) * PAGE_SIZE).min(size);
                    let len = end - first * PAGE_SIZE;
                    st.cow.insert(first..first + pages);
                    cut.runs.push(CutRun {
                        ino,
                        first_page: first,
                        pages: pages as u32,
                        len: u32::try_from(len).expect("a run is at most a few MiB"),
                    });
                    cut.bytes += len;
                    first += pages;
                }
            }
        }
        Ok(())
    }

    /// A file the last cut found only under local-only paths is reachable again: the bucket
    /// has none of the changes made to it since (their dirty marks were dropped), so every
    /// page it holds is dirty again, durably.
    fn leave_local_only(&self, st: &mut InodeState, epoch: u64) -> Result<()> {
        let ino = st.attr.ino;
        let mut batch = self.meta.batch();
        let mut all = PageSet::new();
        all.insert(0..st.attr.size.div_ceil(PAGE_SIZE));
        // Pages still absent are the bucket's own bytes, untouched since.
        for r in st.absent.iter() {
            all.remove(r);
        }
        for r in all.iter() {
            batch.put_dirty(ino, r, epoch);
        }
        batch.delete_local_only(ino);
        let seq = self.meta.commit(batch)?;
        // The next fsync syncs these marks: its writes may add none of their own.
        st.meta_seq = st.meta_seq.max(seq);
        self.recount(st, |st| {
            for r in all.iter() {
                st.dirty.insert(r.clone());
                st.marked.insert(r);
            }
        });
        st.local_only = false;
        Ok(())
    }

    /// The checkpoint that uploaded `taken` failed: those pages are dirty again (RocksDB still
    /// says so; this puts memory back in step), and so are its truncations.
    pub fn untake(&self, cut: Cut) {
        self.release_cut(&cut);
        self.give_back(cut.touched.as_deref());
        let inodes = self.inode_snapshot();
        for (ino, keep) in cut.truncations {
            if let Some(inode) = inodes.get(&ino) {
                let mut st = inode.state.lock();
                st.trunc = Some(st.trunc.map_or(keep, |t| t.min(keep)));
                st.trunc_pending = None;
            }
        }
        for (ino, pages) in cut.taken {
            if let Some(inode) = inodes.get(&ino) {
                let mut st = inode.state.lock();
                self.recount(&mut st, |st| {
                    // Only what is still pending: pages truncated away since are gone from
                    // RocksDB's dirty marks too, and must not come back in memory alone.
                    for r in pages.iter() {
                        let still: Vec<_> = st.pending.overlapping(r.clone()).collect();
                        for r in still {
                            st.pending.remove(r.clone());
                            st.dirty.insert(r);
                        }
                    }
                });
            }
        }
        self.rpo_settled(false);
    }

    /// The checkpoint of `epoch` is committed: pages taken by its cut and not written since
    /// are clean. Their dirty marks go; pages written again stay dirty for the next epoch.
    /// From then on the cache files' bytes stand for the bucket's: the caller has flushed
    /// them to the disk (`flush_cut`) since the cut.
    ///
    /// A commit of the marks' deletes that fails does not stop it: the bucket holds the cut
    /// whatever RocksDB says, so every inode's pending pages are let go all the same (left
    /// pending, they would count against `--max-dirty` and stay in the cache for good), and
    /// the first failure is returned at the end. (Marks left in RocksDB only cost an upload.)
    pub fn mark_clean(&self, cut: &Cut) -> Result<u64> {
        let mut failed = None;
        // The inodes the cut touched, looked up one by one (not a copy of the whole map:
        // under `--durability remote` this runs at every group commit).
        for (ino, _) in &cut.truncations {
            if let Ok(inode) = self.inode(*ino) {
                let mut st = inode.state.lock_unnoted();
                st.trunc_pending = None;
                // The bucket has the cut's truncation now; what a crash must recover is only
                // the one made since, if any.
                let mut batch = self.meta.batch();
                match st.trunc {
                    None => batch.delete_trunc(*ino),
                    Some(keep) => batch.put_trunc(*ino, keep),
                }
                // Lost, the truncation is sent again, with the pages whose marks were
                // deleted after it (the log is ordered): those are lost too, so dirty again.
                batch.may_lag();
                if let Err(e) = self.meta.commit(batch) {
                    failed.get_or_insert(e);
                }
            }
        }
        self.step(super::Step::MarkingClean { epoch: cut.epoch });
        let taken = &cut.taken;
        let mut cleaned = 0;
        for (ino, pages) in taken {
            let Ok(inode) = self.inode(*ino) else {
                continue; // deleted since the cut: its marks went with it
            };
            // Under the inode's lock, so a write cannot re-mark a page between our check and
            // the delete.
            let mut st = inode.state.lock_unnoted();
            for r in pages.iter() {
                let again: u64 = st
                    .dirty
                    .overlapping(r.clone())
                    .map(|d| d.end - d.start)
                    .sum();
                cleaned += r.end - r.start - again;
            }
            // The marks of clean pages go (only one cut is in flight, so every pending page
            // is this cut's), but for an open file's page the last write ended in and the
            // marks ahead of it (`InodeState::kept_marks`): a writer goes on there, and a
            // write into a marked page records nothing. Out of memory first: a commit that
            // fails may have deleted them all the same, and memory must never count a mark
            // RocksDB lacks (a write would record nothing). Lost in a crash, the deletes
            // leave pages dirty that the bucket holds, uploaded again: they may lag.
            let mut stale = st.marked.difference(&st.dirty);
            if st.open_count > 0 {
                stale.remove(st.kept_marks());
            }
            let mut batch = self.meta.batch();
            for r in stale.iter() {
                batch.delete_dirty(*ino, r.clone());
                st.marked.remove(r);
            }
            batch.may_lag();
            if let Err(e) = self.meta.commit(batch) {
                failed.get_or_insert(e);
            }
            self.recount(&mut st, |st| {
                for r in pages.iter() {
                    st.pending.remove(r);
                }
            });
            // Clean now: the cache may keep them or evict them (counted under the lock: the
            // file may be deleted or cut short as soon as it is let go).
            for r in pages.iter() {
                self.touch_locked(*ino, &st, r.clone());
            }
            drop(st);
            self.step(super::Step::MarkedClean { ino: *ino });
            crate::failpoint::hit("during-mark-clean");
        }
        self.rpo_settled(true);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(cleaned),
        }
    }

    /// Gives back what a cut that failed took of the inodes noted as changed (`Cut::touched`):
    /// the next cut takes them again.
    fn give_back(&self, touched: Option<&[u64]>) {
        let map = self.inodes.read();
        self.touched.give_back(touched, |ino| {
            if let Some(inode) = map.get(&ino) {
                inode.state.note(ino);
            }
        });
    }

    /// The inode map as it is now. Lock order is an inode's lock before the map's (creating
    /// a file holds its directory's and then inserts; deleting one holds its own and then
    /// removes), so code that walks the map and locks inodes works on a copy, never while
    /// holding the map.
    pub(super) fn inode_snapshot(&self) -> HashMap<u64, Arc<Inode>> {
        self.inodes.read().clone()
    }
}
