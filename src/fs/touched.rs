//! Which inodes changed since the last cut, so that a cut with no name changed visits those
//! instead of every inode (docs/checkpoints.md, "A cut that visits what changed").
//!
//! Every change to an inode's state is made under its lock, and the lock's guard notes the
//! inode in a shared list when it is released, unless the inode is noted already. A cut
//! takes the list and clears each listed inode's note before it locks the inode to read it:
//! a change made after that read notes the inode again, for the next cut. So nothing needs
//! to remember to note a change. Only the cut and the checkpointer lock without noting
//! (`lock_unnoted`): the cut's reads, its own changes (dirty pages taken, a local-only
//! file's dropped, truncations sent; a failed cut puts them back through noting locks),
//! and the checkpointer's changes that no cut reads (pending pages, copy-on-write); the
//! cache bound's scans and a prefetch's count of what it fetched, which only read; and the
//! syncs of a cache file (`Fs::sync_data_to`, `Fs::flush_cut`), whose record of what is
//! synced no cut reads. Every other lock notes, reads included: the lock cannot tell a read
//! from a change, and a read noted costs the next cut a visit, never a change.
//!
//! A change that must be in a cut is made under the gate (`Fs::gate`, which the cut takes
//! exclusively) and its guard is released before the gate: the cut then finds it noted.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Inode, InodeState};

/// The inodes noted since the last cut took the list (each once until a cut clears its note).
#[derive(Default)]
pub(super) struct Touched(Mutex<Noted>);

#[derive(Default)]
struct Noted {
    inodes: Vec<u64>,
    /// The list grew past `MAX_NOTED` and was dropped: the next cut visits every inode (and
    /// clears every note). A mount that never cuts (a read replica) notes each inode it
    /// touches once, removed ones included.
    dropped: bool,
}

/// The most inodes noted between two cuts before the list is dropped (8 MiB).
const MAX_NOTED: usize = 1 << 20;

impl Touched {
    /// Takes the list: the inodes noted since the last take. None: too many were, and the
    /// list was dropped; the caller must visit every inode.
    pub(super) fn take(&self) -> Option<Vec<u64>> {
        let mut noted = self.0.lock();
        let room = noted.inodes.len();
        let inodes = std::mem::replace(&mut noted.inodes, Vec::with_capacity(room));
        (!std::mem::take(&mut noted.dropped)).then_some(inodes)
    }

    /// Gives back what a cut took and could not commit: the inodes it took (noted again) or,
    /// if it took a dropped list, the drop (the next cut visits every inode).
    pub(super) fn give_back(&self, took: Option<&[u64]>, note: impl Fn(u64)) {
        match took {
            Some(inodes) => inodes.iter().for_each(|&ino| note(ino)),
            None => self.0.lock().dropped = true,
        }
    }

    fn push(&self, ino: u64) {
        let mut noted = self.0.lock();
        if noted.inodes.len() >= MAX_NOTED {
            noted.inodes = Vec::new();
            noted.dropped = true;
        }
        if !noted.dropped {
            noted.inodes.push(ino);
        }
    }
}

/// An inode's state and its lock, whose guard notes the inode in `Touched` on release.
pub(super) struct StateLock {
    mutex: Mutex<InodeState>,
    /// In the list (or about to be): set under the lock, cleared by a cut.
    noted: AtomicBool,
    touched: Arc<Touched>,
}

impl StateLock {
    pub(super) fn new(state: InodeState, touched: &Arc<Touched>) -> StateLock {
        StateLock {
            mutex: Mutex::new(state),
            noted: AtomicBool::new(false),
            touched: touched.clone(),
        }
    }

    /// Locks the state; the inode is noted for the next cut when the guard is released.
    pub(super) fn lock(&self) -> StateGuard<'_> {
        StateGuard {
            guard: self.mutex.lock(),
            lock: self,
        }
    }

    /// Locks the state without noting the inode: only for the cut and the checkpointer
    /// (see the module's comment).
    pub(super) fn lock_unnoted(&self) -> MutexGuard<'_, InodeState> {
        self.mutex.lock()
    }

    /// Clears the note, before a cut locks the inode to read it: a change after that read
    /// notes the inode again.
    pub(super) fn clear_note(&self) {
        self.noted.store(false, Ordering::Release);
    }

    /// Notes the inode for the next cut (a failed cut gives back what it took).
    pub(super) fn note(&self, ino: u64) {
        if !self.noted.swap(true, Ordering::AcqRel) {
            self.touched.push(ino);
        }
    }
}

/// A locked inode state that notes the inode when released.
pub(super) struct StateGuard<'a> {
    guard: MutexGuard<'a, InodeState>,
    lock: &'a StateLock,
}

impl<'a> StateGuard<'a> {
    /// The plain guard, for a condition variable's wait, which releases the lock and takes it
    /// again: what was changed before the wait is noted now, what changes after it when this
    /// guard is released.
    pub(super) fn inner(&mut self) -> &mut MutexGuard<'a, InodeState> {
        self.lock.note(self.guard.attr.ino);
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        // Still under the lock: a cut that cleared the note before it locked the inode
        // either read this change, or sees the note gone and finds the inode in the list.
        if !self.lock.noted.load(Ordering::Acquire) {
            let ino = self.guard.attr.ino;
            self.lock.note(ino);
        }
    }
}

impl Deref for StateGuard<'_> {
    type Target = InodeState;
    fn deref(&self) -> &InodeState {
        &self.guard
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut InodeState {
        &mut self.guard
    }
}

/// The inode map, with a count of the inodes ever added or removed: a cut that finds it
/// where the last cut the view holds left it knows that no inode came or went since.
#[derive(Default)]
pub(super) struct InodeMap {
    map: RwLock<HashMap<u64, Arc<Inode>>>,
    changes: AtomicU64,
}

impl InodeMap {
    pub(super) fn new(map: HashMap<u64, Arc<Inode>>) -> InodeMap {
        InodeMap {
            map: RwLock::new(map),
            changes: AtomicU64::new(0),
        }
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, HashMap<u64, Arc<Inode>>> {
        self.map.read()
    }

    /// Write access, counted as a change whether or not the caller adds or removes one.
    pub(super) fn write(&self) -> RwLockWriteGuard<'_, HashMap<u64, Arc<Inode>>> {
        let map = self.map.write();
        self.changes.fetch_add(1, Ordering::AcqRel);
        map
    }

    /// How many times the map was written to.
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_too_long_is_dropped_and_a_failed_cut_drops_it_again() {
        let touched = Touched::default();
        touched.push(7);
        touched.push(9);
        assert_eq!(touched.take(), Some(vec![7, 9]));
        assert_eq!(touched.take(), Some(vec![]));
        for ino in 0..=MAX_NOTED as u64 {
            touched.push(ino);
        }
        touched.push(3);
        assert_eq!(touched.take(), None, "past the limit: every inode");
        assert_eq!(touched.take(), Some(vec![]));
        // A cut that took the dropped list and failed: the next one visits every inode too.
        touched.give_back(None, |_| unreachable!());
        assert_eq!(touched.take(), None);
        let again = Mutex::new(Vec::new());
        touched.give_back(Some(&[4, 5]), |ino| again.lock().push(ino));
        assert_eq!(*again.lock(), [4, 5]);
    }
}
