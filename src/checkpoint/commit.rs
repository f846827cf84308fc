//! Committing a checkpoint: the manifest a cut makes, checked before it goes out, put with
//! create-if-absent (a 412 fences this mount), the tip note beside it, and what a commit
//! that failed reads after.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{debug, error, warn};

use super::layout::{encode_tip, manifest_key, TIP_EVERY, TIP_KEY};
use super::{CheckpointError, Checkpointer, ManifestLen};
use crate::fs::PAGE_SIZE;
use crate::manifest::view::View;
use crate::manifest::{Extent, FormatError, Manifest, ManifestDirent};
use crate::store::{PutMode, StoreError};

impl Checkpointer {
    /// Commits the manifest (create-only: a 412 means another writer took the epoch);
    /// returns its size.
    pub(super) fn commit(&self, m: &Manifest) -> Result<ManifestLen, CheckpointError> {
        check_invariants(m)?;
        let key = manifest_key(m.epoch);
        match self.put_manifest(m, m.clean_stop) {
            Ok(len) => {
                // Only when another writer could have committed this epoch without a fence
                // (the tip is a clean stop, or the bucket was empty) may GC have freed the key.
                if !self.tip_is_ours.load(Ordering::Acquire) {
                    self.check_boundary(m.epoch)?;
                }
                Ok(len)
            }
            Err(StoreError::PreconditionFailed { .. }) if self.own_earlier_commit(&key)? => {
                // An earlier attempt of ours committed this epoch after all (its answer was
                // lost, the checkpoint counted as failed and its pages stayed dirty). Its
                // segments have keys of their own, so nothing of it was overwritten: take it
                // into the view and let the next checkpoint go on from it.
                warn!(
                    epoch = m.epoch,
                    "an earlier attempt of this writer had committed this epoch; continuing from it"
                );
                Err(CheckpointError::Refused(format!(
                    "epoch {} was already committed by this writer's earlier attempt; the next \
                     checkpoint follows it",
                    m.epoch
                )))
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                self.fence(m.epoch);
                Err(CheckpointError::Fenced { epoch: m.epoch })
            }
            Err(e) => {
                // The manifest may have landed with its answer lost. Should this writer then
                // stall, another take over (its fence on the next epoch) and GC free this key,
                // the retry would land on it: the boundary, raised before that, is what tells.
                // So the next commit reads it.
                self.tip_is_ours.store(false, Ordering::Release);
                Err(e.into())
            }
        }
    }

    /// PUTs manifest `m` if its key is free, and returns its length. Beside it, when one is
    /// due (`TIP_EVERY` epochs since the last, or `always`), the tip note goes out: the epoch
    /// before `m`'s, which this writer's view holds and so is committed, whatever becomes of
    /// `m`, and whether `m` is a clean stop. `settle_note` waits for it. A note that fails is only logged, once until one
    /// succeeds (a restore then lists more).
    pub(super) fn put_manifest(
        &self,
        m: &Manifest,
        always: bool,
    ) -> Result<ManifestLen, StoreError> {
        let body = Bytes::from(m.encode());
        let len = ManifestLen {
            stored: body.len() as u64,
            plain: crate::manifest::plain_len(&body),
        };
        let (noted, stop) = (m.epoch.saturating_sub(1), m.clean_stop);
        let mut last = self.tip_noted.lock();
        if noted > 0 && (always || noted >= *last + TIP_EVERY) {
            *last = noted;
            let (store, failing) = (self.store.clone(), self.note_failing.clone());
            let note = self.rt.spawn(async move {
                match store
                    .put(TIP_KEY, encode_tip(noted, stop), PutMode::Overwrite)
                    .await
                {
                    Ok(_) => failing.store(false, Ordering::Release),
                    Err(e) if !failing.swap(true, Ordering::AcqRel) => warn!(
                        error = %e,
                        "could not note the tip (a restore lists more manifests until a note \
                         lands; not logged again until then)"
                    ),
                    Err(e) => debug!(error = %e, "could not note the tip"),
                }
            });
            // Every caller holds `running` and settles before the next: none is under way.
            *self.note_in_flight.lock() = Some(note);
        }
        drop(last);
        let key = manifest_key(m.epoch);
        self.rt
            .block_on(self.store.put(&key, body, PutMode::Create))
            .map(|_| len)
    }

    /// Waits for the tip note under way, if any: after a checkpoint, once the fsyncs it
    /// covers are released, so that the note (sent beside the manifest) delays at most the
    /// next checkpoint, and a checkpoint is done, note and all, when it returns.
    pub(super) fn settle_note(&self) {
        let note = self.note_in_flight.lock().take();
        if let Some(note) = note {
            // A note's task does not panic; if it did, only the note is lost.
            let _ = self.rt.block_on(note);
        }
    }

    /// After a 412 on manifest `key`: is the manifest there this writer's own (an earlier
    /// attempt whose answer was lost)? If so it joins the view. Anything else is another
    /// writer's, and this one is fenced.
    pub(super) fn own_earlier_commit(&self, key: &str) -> Result<bool, CheckpointError> {
        let bytes = self.rt.block_on(self.store.get(key, None))?;
        let theirs = match Manifest::decode(&bytes, key) {
            Ok(theirs) => theirs,
            // This writer reads what it writes: one it cannot is a later bucketfs's (which
            // took the bucket over) or damaged, and no attempt of its own.
            Err(e) => {
                warn!(key, error = %e, "the manifest at the next epoch does not decode: another writer's");
                return Ok(false);
            }
        };
        if theirs.writer != self.writer || theirs.epoch != self.view.read().epoch + 1 {
            return Ok(false);
        }
        self.check_boundary(theirs.epoch)?;
        self.apply_to_view(&theirs, None, None);
        self.note_committed(theirs.parent.is_none(), crate::manifest::plain_len(&bytes));
        Ok(true)
    }

    /// After a commit of `epoch` succeeded: is it part of the bucket? Once GC has deleted old
    /// manifests, a stalled writer's create-if-absent on a collected epoch succeeds; the GC
    /// boundary, raised before any manifest is deleted, tells it that it committed into the
    /// past. Such a writer is fenced: nothing it committed counts.
    fn check_boundary(&self, epoch: u64) -> Result<(), CheckpointError> {
        let boundary = self.rt.block_on(crate::gc::read_boundary(&*self.store))?;
        if epoch >= boundary {
            return Ok(());
        }
        error!(
            epoch,
            boundary,
            "this commit landed below the GC boundary: other writers have gone on since and \
             GC collected this epoch. It is not part of the bucket"
        );
        self.fence(epoch);
        Err(CheckpointError::Fenced { epoch })
    }
}

/// The manifest invariants, checked before every commit.
///
/// - A delta's parent is older than it (the chain only goes back).
/// - Every extent lies within its run, and no two extents of a file overlap (a page has one
///   source).
/// - Every extent's file is an inode the manifest (or, for a delta, the chain) knows: checked
///   for bases, where the manifest is the whole truth.
pub(super) fn check_invariants(m: &Manifest) -> Result<(), CheckpointError> {
    let key = manifest_key(m.epoch);
    if let Some(p) = m.parent {
        if p >= m.epoch {
            return Err(FormatError::corrupt(&key, "parent is not older").into());
        }
    }
    let mut by_file: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for e in &m.extents {
        let run_end = e.run.first_page + u64::from(e.run.pages);
        if e.first_page < e.run.first_page || e.first_page + e.pages > run_end || e.pages == 0 {
            return Err(FormatError::corrupt(&key, "extent outside its run").into());
        }
        by_file
            .entry(e.run.ino)
            .or_default()
            .push((e.first_page, e.first_page + e.pages));
    }
    for ranges in by_file.values_mut() {
        ranges.sort_unstable();
        if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err(FormatError::corrupt(&key, "overlapping extents").into());
        }
    }
    if m.parent.is_none() {
        let known: HashSet<u64> = m.inodes.iter().map(|a| a.ino).collect();
        if let Some(ino) = by_file.keys().find(|i| !known.contains(i)) {
            return Err(
                FormatError::corrupt(&key, format!("extent of unknown inode {ino}")).into(),
            );
        }
    }
    Ok(())
}

/// What changed between `view` (the bucket) and `cut` (now), as a delta on the view.
/// `names_in_view`: the view already holds the cut's names (no name changed since the cut it
/// was committed from), so they are not compared.
pub(super) fn delta(
    view: &View,
    cut: &crate::fs::Cut,
    names_in_view: bool,
    extents: Vec<Extent>,
) -> Manifest {
    let mut m = Manifest {
        parent: Some(view.epoch).filter(|&e| e > 0),
        page_size: PAGE_SIZE as u32,
        next_ino: cut.next_ino,
        truncations: cut.truncations.clone(),
        extents,
        ..Manifest::default()
    };
    // The cut names each inode once: if every one of them is in the view and they are as
    // many, the view has no other, and nothing was removed. A partial cut names only the
    // inodes touched since the cut the view holds, and none came or went since.
    let mut in_view = 0;
    for a in &cut.inodes {
        match view.inodes.get(&a.ino) {
            Some(v) => {
                in_view += 1;
                if v != a {
                    m.inodes.push(a.clone());
                }
            }
            None => m.inodes.push(a.clone()),
        }
    }
    if !cut.partial && in_view != view.inodes.len() {
        let live: HashSet<u64> = cut.inodes.iter().map(|a| a.ino).collect();
        m.removed_inodes = view
            .inodes
            .keys()
            .filter(|ino| !live.contains(ino))
            .copied()
            .collect();
        m.removed_inodes.sort_unstable();
    }
    if names_in_view {
        return m;
    }
    let mut names = HashSet::new();
    for d in cut.dirents.iter() {
        names.insert((d.parent, d.name.clone()));
        if view.dirents.get(&(d.parent, d.name.clone())) != Some(&(d.ino, d.kind)) {
            m.dirents.push(ManifestDirent {
                parent: d.parent,
                name: d.name.clone(),
                ino: d.ino,
                kind: d.kind,
            });
        }
    }
    m.unlinked = view
        .dirents
        .keys()
        .filter(|k| !names.contains(*k))
        .cloned()
        .collect();
    m
}

pub(super) fn is_empty_delta(m: &Manifest) -> bool {
    m.inodes.is_empty()
        && m.removed_inodes.is_empty()
        && m.dirents.is_empty()
        && m.unlinked.is_empty()
        && m.truncations.is_empty()
        && m.extents.is_empty()
}
