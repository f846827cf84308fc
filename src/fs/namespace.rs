//! Namespace operations: create, mknod, mkdir, symlink, link, unlink, rmdir, rename.
//!
//! Each runs under the namespace lock, locks every inode it changes, persists all changes in
//! one metadata batch, and only then lets go: a crash leaves either the whole change or none
//! of it, and no concurrent write can slip an older attribute record in between. A batch
//! that fails to commit stops the mount as a crash would (`Fs::stop_for_failed_commit`):
//! the records may hold it or not, and no later change may build on a guess.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::touched::StateGuard;

use super::pageset::PageSet;
use super::ROOT_INO;
use super::{check_name, Attr, Caller, FileKind, Fs, FsError, Inode, InodeState, Result};

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target if there is one (rename(2)).
    Replace,
    /// Fail with EEXIST if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap source and target, which must both exist (RENAME_EXCHANGE).
    Exchange,
}

/// Several locked inodes.
struct Locked<'a> {
    entries: Vec<(u64, StateGuard<'a>)>,
}

impl<'a> Locked<'a> {
    fn new(inodes: &'a [(u64, Arc<Inode>)]) -> Locked<'a> {
        let mut entries: Vec<(u64, StateGuard<'a>)> = Vec::new();
        for (ino, inode) in inodes {
            if entries.iter().any(|(i, _)| i == ino) {
                continue;
            }
            entries.push((*ino, inode.state.lock()));
        }
        Locked { entries }
    }

    fn get(&mut self, ino: u64) -> &mut InodeState {
        self.entries
            .iter_mut()
            .find(|(i, _)| *i == ino)
            .map(|(_, g)| &mut **g)
            .expect("only inodes that were locked are asked for")
    }

    fn committed(&mut self, seq: u64) {
        for (_, g) in &mut self.entries {
            g.meta_seq = seq;
        }
    }
}

impl Fs {
    /// Creates a regular file; with `open`, also opens it and returns the handle.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
        open: bool,
    ) -> Result<(Attr, Option<u64>)> {
        let attr = self.make_node(parent, name, FileKind::File, mode, caller, open, |_| {})?;
        let fh = open.then(|| self.next_fh.fetch_add(1, Ordering::Relaxed));
        Ok((attr, fh))
    }

    /// Creates a file, FIFO, socket or device node (the type is in `mode`'s S_IFMT bits).
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<Attr> {
        let kind = FileKind::from_mode(mode).ok_or(FsError::Invalid("unknown file type"))?;
        if matches!(kind, FileKind::Dir | FileKind::Symlink) {
            return Err(FsError::Invalid("mknod of a directory or symlink"));
        }
        self.make_node(parent, name, kind, mode, caller, false, |a| a.rdev = rdev)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<Attr> {
        self.make_node(parent, name, FileKind::Dir, mode, caller, false, |_| {})
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr> {
        if target.is_empty() {
            return Err(FsError::Invalid("empty symlink target"));
        }
        if target.len() > 4096 {
            return Err(FsError::NameTooLong(target.len()));
        }
        self.make_node(parent, name, FileKind::Symlink, 0o777, caller, false, |a| {
            a.target = target.to_vec();
            a.size = target.len() as u64;
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &self,
        parent: u64,
        name: &OsStr,
        kind: FileKind,
        mode: u32,
        caller: Caller,
        open: bool,
        fill: impl FnOnce(&mut Attr),
    ) -> Result<Attr> {
        check_name(name)?;
        let _ns = self.lock_namespace()?;
        let parent_inode = self.require_dir(parent)?;
        if self.meta.get_dirent(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let held = [(parent, parent_inode)];
        let mut locked = Locked::new(&held);
        let p = locked.get(parent);
        let mut perm = (mode & 0o7777) as u16;
        let mut gid = caller.gid;
        // BSD group semantics on a setgid directory, as ext4 does: the group is inherited, and
        // so is the setgid bit by subdirectories.
        if p.attr.perm & libc::S_ISGID as u16 != 0 {
            gid = p.attr.gid;
            if kind == FileKind::Dir {
                perm |= libc::S_ISGID as u16;
            }
        }
        let mut attr = self.new_attr(
            ino,
            kind,
            perm,
            Caller {
                uid: caller.uid,
                gid,
            },
            now,
        );
        fill(&mut attr);
        if kind == FileKind::Dir {
            attr.nlink = 2;
            attr.parent = parent;
            p.attr.nlink += 1;
        }
        p.attr.mtime = now;
        p.attr.ctime = now;
        let mut batch = self.meta.batch();
        batch.put_inode(&attr);
        batch.put_inode(&p.attr);
        batch.put_dirent(parent, name, ino, kind);
        batch.put_next_ino(ino + 1);
        let inode = Inode::new(attr.clone(), PageSet::new(), &self.touched);
        inode.state.lock().open_count = u32::from(open);
        self.inodes.write().insert(ino, Arc::new(inode));
        let seq = self.commit_locked(&mut locked, batch)?;
        // Out of the map before its lock (lock order: an inode's, then the map's).
        let inode = self.inodes.read().get(&ino).cloned();
        if let Some(inode) = inode {
            inode.state.lock().meta_seq = seq;
        }
        Ok(attr)
    }

    /// Adds a name for an existing non-directory inode.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        check_name(newname)?;
        let _ns = self.lock_namespace()?;
        let target = self.inode(ino)?;
        let np = self.require_dir(newparent)?;
        if self.meta.get_dirent(newparent, newname)?.is_some() {
            return Err(FsError::Exists);
        }
        let held = [(ino, target), (newparent, np)];
        let mut locked = Locked::new(&held);
        let now = SystemTime::now();
        let t = locked.get(ino);
        if t.attr.kind == FileKind::Dir {
            return Err(FsError::NotPermitted("hard link to a directory"));
        }
        if t.attr.nlink == 0 {
            return Err(FsError::NotFound);
        }
        t.attr.nlink += 1;
        t.attr.ctime = now;
        let (kind, attr) = (t.attr.kind, t.attr.clone());
        let mut batch = self.meta.batch();
        batch.put_inode(&attr);
        let p = locked.get(newparent);
        p.attr.mtime = now;
        p.attr.ctime = now;
        batch.put_inode(&p.attr);
        batch.put_dirent(newparent, newname, ino, kind);
        self.commit_locked(&mut locked, batch)?;
        Ok(attr)
    }

    /// Removes a name. The inode goes with its last name, or with its last open handle if it
    /// is still open (see `release`).
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        check_name(name)?;
        let _ns = self.lock_namespace()?;
        let p = self.require_dir(parent)?;
        let entry = self
            .meta
            .get_dirent(parent, name)?
            .ok_or(FsError::NotFound)?;
        if entry.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        let target = self.inode(entry.ino)?;
        let held = [(parent, p), (entry.ino, target)];
        let mut locked = Locked::new(&held);
        let now = SystemTime::now();
        let mut batch = self.meta.batch();
        batch.delete_dirent(parent, name);
        let p = locked.get(parent);
        p.attr.mtime = now;
        p.attr.ctime = now;
        batch.put_inode(&p.attr);
        let gone = self.drop_link(locked.get(entry.ino), &mut batch, now);
        self.commit_locked(&mut locked, batch)?;
        if gone {
            self.forget_inode(entry.ino, locked.get(entry.ino));
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        check_name(name)?;
        let _ns = self.lock_namespace()?;
        let p = self.require_dir(parent)?;
        let entry = self
            .meta
            .get_dirent(parent, name)?
            .ok_or(FsError::NotFound)?;
        if entry.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.meta.dir_is_empty(entry.ino)? {
            return Err(FsError::NotEmpty);
        }
        let target = self.inode(entry.ino)?;
        let held = [(parent, p), (entry.ino, target)];
        let mut locked = Locked::new(&held);
        let now = SystemTime::now();
        let mut batch = self.meta.batch();
        batch.delete_dirent(parent, name);
        batch.delete_inode(entry.ino);
        let p = locked.get(parent);
        p.attr.nlink -= 1;
        p.attr.mtime = now;
        p.attr.ctime = now;
        batch.put_inode(&p.attr);
        locked.get(entry.ino).attr.nlink = 0;
        self.commit_locked(&mut locked, batch)?;
        self.forget_inode(entry.ino, locked.get(entry.ino));
        Ok(())
    }

    /// rename(2) and renameat2(2). Atomic: the bucket image and a crash see the old name or
    /// the new one, never neither, and never the new name with the replaced file's contents.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        mode: RenameMode,
    ) -> Result<()> {
        check_name(name)?;
        check_name(newname)?;
        let _ns = self.lock_namespace()?;
        let p = self.require_dir(parent)?;
        let np = self.require_dir(newparent)?;
        let src = self
            .meta
            .get_dirent(parent, name)?
            .ok_or(FsError::NotFound)?;
        let dst = self.meta.get_dirent(newparent, newname)?;
        if mode == RenameMode::NoReplace && dst.is_some() {
            return Err(FsError::Exists);
        }
        if mode == RenameMode::Exchange && dst.is_none() {
            return Err(FsError::NotFound);
        }
        if dst.as_ref().is_some_and(|d| d.ino == src.ino) {
            // Both names already refer to the same inode: POSIX says do nothing.
            return Ok(());
        }
        if src.kind == FileKind::Dir && parent != newparent && self.is_within(newparent, src.ino)? {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        if let Some(d) = &dst {
            if mode == RenameMode::Exchange {
                if d.kind == FileKind::Dir
                    && parent != newparent
                    && self.is_within(parent, d.ino)?
                {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
            } else if src.kind == FileKind::Dir {
                if d.kind != FileKind::Dir {
                    return Err(FsError::NotDir);
                }
                if !self.meta.dir_is_empty(d.ino)? {
                    return Err(FsError::NotEmpty);
                }
            } else if d.kind == FileKind::Dir {
                return Err(FsError::IsDir);
            }
        }
        let mut held = vec![
            (parent, p),
            (newparent, np),
            (src.ino, self.inode(src.ino)?),
        ];
        if let Some(d) = &dst {
            held.push((d.ino, self.inode(d.ino)?));
        }
        let mut locked = Locked::new(&held);
        let now = SystemTime::now();
        let mut batch = self.meta.batch();
        let mut gone = None;
        match (&dst, mode) {
            (Some(d), RenameMode::Exchange) => {
                batch.put_dirent(parent, name, d.ino, d.kind);
                batch.put_dirent(newparent, newname, src.ino, src.kind);
                if parent != newparent {
                    move_dir(&mut locked, src.ino, src.kind, parent, newparent);
                    move_dir(&mut locked, d.ino, d.kind, newparent, parent);
                }
                locked.get(d.ino).attr.ctime = now;
            }
            _ => {
                batch.delete_dirent(parent, name);
                batch.put_dirent(newparent, newname, src.ino, src.kind);
                if let Some(d) = &dst {
                    if d.kind == FileKind::Dir {
                        locked.get(newparent).attr.nlink -= 1;
                        locked.get(d.ino).attr.nlink = 0;
                        batch.delete_inode(d.ino);
                        gone = Some(d.ino);
                    } else if self.drop_link(locked.get(d.ino), &mut batch, now) {
                        gone = Some(d.ino);
                    }
                }
                if parent != newparent {
                    move_dir(&mut locked, src.ino, src.kind, parent, newparent);
                }
            }
        }
        locked.get(src.ino).attr.ctime = now;
        for dir in [parent, newparent] {
            let d = locked.get(dir);
            d.attr.mtime = now;
            d.attr.ctime = now;
        }
        for ino in [parent, newparent, src.ino] {
            batch.put_inode(&locked.get(ino).attr);
        }
        if let Some(d) = &dst {
            if gone != Some(d.ino) {
                batch.put_inode(&locked.get(d.ino).attr);
            }
        }
        self.commit_locked(&mut locked, batch)?;
        if let Some(ino) = gone {
            self.forget_inode(ino, locked.get(ino));
        }
        Ok(())
    }

    /// Is `ino` the directory `ancestor` or inside it? Walks `..` up to the root.
    fn is_within(&self, mut ino: u64, ancestor: u64) -> Result<bool> {
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            ino = self.inode(ino)?.state.lock().attr.parent;
        }
    }

    /// Drops one link of a non-directory; returns whether the inode is now gone (no names
    /// and no open handles). With open handles it stays, nlink 0, until the last release.
    fn drop_link(
        &self,
        st: &mut InodeState,
        batch: &mut crate::cache::MetaBatch<'_>,
        now: SystemTime,
    ) -> bool {
        st.attr.nlink = st.attr.nlink.saturating_sub(1);
        st.attr.ctime = now;
        if st.attr.nlink == 0 && st.open_count == 0 {
            batch.delete_inode(st.attr.ino);
            true
        } else {
            batch.put_inode(&st.attr);
            false
        }
    }

    /// Commits a namespace change's batch; the locked inodes' attributes are the change's.
    /// If the commit fails the mount stops, with the locks still held: memory holds the
    /// change, and the records may or may not.
    fn commit_locked(
        &self,
        locked: &mut Locked<'_>,
        batch: crate::cache::MetaBatch<'_>,
    ) -> Result<u64> {
        match self.meta.commit(batch) {
            Ok(seq) => {
                locked.committed(seq);
                Ok(seq)
            }
            Err(e) => {
                self.stop_for_failed_commit(&format!(
                    "the commit of a namespace change failed ({e})"
                ));
                Err(e.into())
            }
        }
    }

    /// Drops a deleted inode from memory and removes its cache file. Its records are already
    /// deleted by a committed batch.
    pub(super) fn forget_inode(&self, ino: u64, st: &mut InodeState) {
        // The upload of a cut may still need the file's bytes.
        self.keep_for_upload(st, st.attr.size);
        st.file = None;
        self.recount(st, |st| {
            st.dirty = PageSet::new();
            st.pending = PageSet::new();
        });
        st.marked = PageSet::new();
        // Its absent marks went with its records: a fill that fetched before now must find
        // nothing to install, or it would create the removed inode's cache file again.
        st.absent = PageSet::new();
        self.untrack(ino, 0, st.attr.size);
        self.inodes.write().remove(&ino);
        self.remove_cache_file(ino);
    }
}

/// Moves directory `ino` from `from` to `to`: its `..` and both parents' link counts.
fn move_dir(locked: &mut Locked<'_>, ino: u64, kind: FileKind, from: u64, to: u64) {
    if kind != FileKind::Dir {
        return;
    }
    locked.get(ino).attr.parent = to;
    locked.get(from).attr.nlink -= 1;
    locked.get(to).attr.nlink += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testing::open as fs;

    const ME: Caller = Caller { uid: 0, gid: 0 };

    /// rename(2) over a name of a file that has other names: the file loses a link, and a
    /// change of its link count is a change of its ctime (pjdfstest rename/23.t), persisted
    /// with the rename.
    #[test]
    fn rename_over_a_multiply_linked_file_updates_its_ctime_and_link_count() {
        let dir = tempfile::tempdir().unwrap();
        let fs = fs(&dir);
        let name = |s: &str| OsStr::new(s).to_owned();
        let (src, _) = fs.create(ROOT_INO, &name("src"), 0o644, ME, false).unwrap();
        let (dst, _) = fs.create(ROOT_INO, &name("dst"), 0o644, ME, false).unwrap();
        fs.link(dst.ino, ROOT_INO, &name("dst_link")).unwrap();
        let before = fs.lookup(ROOT_INO, &name("dst_link")).unwrap();
        assert_eq!(before.nlink, 2);
        // The core takes its times from SystemTime::now(): wait until that has moved on.
        let t = SystemTime::now();
        while SystemTime::now() <= t {
            std::hint::spin_loop();
        }

        fs.rename(
            ROOT_INO,
            &name("src"),
            ROOT_INO,
            &name("dst"),
            RenameMode::Replace,
        )
        .unwrap();
        let after = fs.lookup(ROOT_INO, &name("dst_link")).unwrap();
        assert_eq!(after.nlink, 1);
        assert!(after.ctime > before.ctime, "{before:?}\n{after:?}");
        assert_eq!(fs.lookup(ROOT_INO, &name("dst")).unwrap().ino, src.ino);

        // Reopened from the cache dir: the same attributes.
        drop(fs);
        let fs = self::fs(&dir);
        let reopened = fs.lookup(ROOT_INO, &name("dst_link")).unwrap();
        assert_eq!((reopened.nlink, reopened.ctime), (1, after.ctime));
    }

    /// A directory entry as `ls -l` shows it (name, kind, link count, size), and a regular
    /// file's bytes.
    type Listed = (String, FileKind, u32, u64, Vec<u8>);

    /// A directory's entries, sorted.
    fn names(fs: &Fs, dir: u64) -> Vec<Listed> {
        let fh = fs.opendir(dir).unwrap();
        let mut out: Vec<_> = fs
            .readdir(fh)
            .unwrap()
            .iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| {
                let a = fs.getattr(e.ino).unwrap();
                let bytes = match e.kind {
                    FileKind::File => fs.read(e.ino, 0, a.size as u32).unwrap(),
                    _ => Vec::new(),
                };
                (
                    e.name.to_string_lossy().into_owned(),
                    e.kind,
                    a.nlink,
                    a.size,
                    bytes,
                )
            })
            .collect();
        fs.releasedir(fh);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The namespace as a user would list it: the root's entries, each directory's entries,
    /// and the root's link count.
    fn tree(fs: &Fs) -> Vec<(String, Vec<Listed>)> {
        let root = names(fs, ROOT_INO);
        let mut out = vec![(
            format!("/ nlink {}", fs.getattr(ROOT_INO).unwrap().nlink),
            root.clone(),
        )];
        for (name, kind, ..) in root {
            if kind == FileKind::Dir {
                let ino = fs.lookup(ROOT_INO, OsStr::new(&name)).unwrap().ino;
                out.push((name, names(fs, ino)));
            }
        }
        out
    }

    type NamespaceChange = fn(&Fs) -> Result<()>;

    /// The namespace changes, each on the tree `populate` makes.
    const CHANGES: [(&str, NamespaceChange); 8] = [
        ("create", |fs| {
            fs.create(ROOT_INO, OsStr::new("new"), 0o644, ME, false)
                .map(drop)
        }),
        ("mkdir", |fs| {
            fs.mkdir(ROOT_INO, OsStr::new("newdir"), 0o755, ME)
                .map(drop)
        }),
        ("symlink", |fs| {
            fs.symlink(ROOT_INO, OsStr::new("ln"), b"f", ME).map(drop)
        }),
        ("link", |fs| {
            let f = fs.lookup(ROOT_INO, OsStr::new("f"))?.ino;
            fs.link(f, ROOT_INO, OsStr::new("f2")).map(drop)
        }),
        ("unlink", |fs| fs.unlink(ROOT_INO, OsStr::new("f"))),
        ("rmdir", |fs| fs.rmdir(ROOT_INO, OsStr::new("empty"))),
        ("rename a file over another", |fs| {
            let d = fs.lookup(ROOT_INO, OsStr::new("d"))?.ino;
            fs.rename(
                ROOT_INO,
                OsStr::new("f"),
                d,
                OsStr::new("g"),
                RenameMode::Replace,
            )
        }),
        ("rename a directory into another", |fs| {
            let d = fs.lookup(ROOT_INO, OsStr::new("d"))?.ino;
            fs.rename(
                ROOT_INO,
                OsStr::new("empty"),
                d,
                OsStr::new("e"),
                RenameMode::Replace,
            )
        }),
    ];

    /// Files `f` (fsync'd bytes) and `d/g`, directories `d` and `empty`.
    fn populate(fs: &Fs) {
        let (f, _) = fs
            .create(ROOT_INO, OsStr::new("f"), 0o644, ME, true)
            .unwrap();
        fs.write(f.ino, 0, b"kept").unwrap();
        fs.fsync(f.ino, false).unwrap();
        // Still open, with times that only the unmount (or an fsync, or the last close)
        // writes: of the attributes memory holds, which after a failed unlink say no name is
        // left.
        fs.write(f.ino, 0, b"kept").unwrap();
        let d = fs.mkdir(ROOT_INO, OsStr::new("d"), 0o755, ME).unwrap();
        fs.create(d.ino, OsStr::new("g"), 0o644, ME, false).unwrap();
        fs.mkdir(ROOT_INO, OsStr::new("empty"), 0o755, ME).unwrap();
    }

    /// A namespace change whose metadata commit fails may or may not be in the cache dir's
    /// records (RocksDB may have written it, whole, before failing), while memory holds one
    /// of the two: the mount must take no more changes, as after a crash, and the next
    /// mount must find the cache dir as a crash would leave it, with the change whole or not
    /// at all and every fsync'd byte.
    #[test]
    fn a_namespace_change_whose_commit_fails_stops_the_mount_as_a_crash_would() {
        use crate::cache::FailCommit;
        for (name, change) in CHANGES {
            let twin = tempfile::tempdir().unwrap();
            let done = {
                let fs = fs(&twin);
                populate(&fs);
                change(&fs).unwrap_or_else(|e| panic!("{name}: {e}"));
                tree(&fs)
            };
            for how in [FailCommit::Lost, FailCommit::Applied] {
                let case = format!("{name}, commit {how:?}");
                let dir = tempfile::tempdir().unwrap();
                let fs = fs(&dir);
                populate(&fs);
                let before = tree(&fs);
                fs.meta.fail_next_commit(how);
                change(&fs).expect_err(&case);
                let later = fs.mkdir(ROOT_INO, OsStr::new("later"), 0o755, ME);
                assert!(
                    matches!(later, Err(FsError::CacheFailed)),
                    "{case}: a later change: {later:?}"
                );
                fs.shutdown()
                    .unwrap_or_else(|e| panic!("{case}: the unmount's sync: {e}"));
                drop(fs);

                let fs = self::fs(&dir);
                let want = match how {
                    FailCommit::Lost => &before,
                    FailCommit::Applied => &done,
                };
                assert_eq!(&tree(&fs), want, "{case}: the reopened cache dir");
            }
        }
    }

    /// Memory that lost track of where a directory went must not let a later rename move a
    /// directory into itself: the two would leave the tree, each inside the other, with
    /// everything under them.
    #[test]
    fn a_rename_whose_commit_failed_cannot_lead_a_later_one_to_cut_directories_off() {
        use crate::cache::FailCommit;
        let dir = tempfile::tempdir().unwrap();
        let fs = fs(&dir);
        let x = fs.mkdir(ROOT_INO, OsStr::new("x"), 0o755, ME).unwrap();
        let y = fs.mkdir(ROOT_INO, OsStr::new("y"), 0o755, ME).unwrap();
        fs.meta.fail_next_commit(FailCommit::Applied);
        fs.rename(
            ROOT_INO,
            OsStr::new("x"),
            y.ino,
            OsStr::new("x"),
            RenameMode::Replace,
        )
        .expect_err("the commit fails");
        // x is inside y now, as far as the records go: moving y into x must fail.
        let moved = fs.rename(
            ROOT_INO,
            OsStr::new("y"),
            x.ino,
            OsStr::new("y"),
            RenameMode::Replace,
        );
        assert!(moved.is_err(), "y moved into x, which is inside it");
        drop(fs);

        let fs = self::fs(&dir);
        let root = names(&fs, ROOT_INO);
        assert_eq!(root.len(), 1, "the root holds {root:?}");
        let top = fs.lookup(ROOT_INO, OsStr::new(&root[0].0)).unwrap();
        let under = names(&fs, top.ino);
        assert_eq!(under.len(), 1, "{} holds {under:?}", root[0].0);
    }
}
