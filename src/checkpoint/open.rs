//! Opening a bucket: the format marker, the GC boundary and the tip note read at once, then
//! the manifest chain of the checkpoint asked for, followed back to its base as it arrives.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tracing::{debug, warn};

use super::layout::{
    check_and_read_marker, check_format, ensure_format, epoch_of_key, list_epochs, manifest_key,
    read_tip, unformatted,
};
use super::{ChainBytes, CheckpointError};
use crate::fs::Restore;
use crate::manifest::view::View;
use crate::manifest::{FormatError, Manifest};
use crate::store::{ObjectStore, ReadStore, StoreError};

/// What the bucket holds when a mount opens it.
pub struct Opened {
    pub view: View,
    /// The newest manifest, if there is one.
    pub latest: Option<Manifest>,
    /// The sizes of the chain's manifests (bodies uncompressed, `crate::manifest::plain_len`),
    /// which the writer's next base is planned with (`Checkpointer::base_due`).
    pub chain_bytes: ChainBytes,
}

/// A point in a bucket's history: an epoch, or a time (unix ms, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Epoch(u64),
    UnixMs(u64),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Epoch(e) => write!(f, "epoch {e}"),
            At::UnixMs(ms) => write!(f, "{} UTC", crate::admin::format_ms(*ms)),
        }
    }
}

/// Reads the format marker (writing it for a new prefix when `create`) and the newest
/// manifest chain. (A mount goes through `crate::placement::open_placed_reading`, which also
/// refuses a foreign prefix and records the placement, then `open_checked_bucket`; with
/// `create` this serves the tests and benchmarks that open a plain store.)
pub fn open_bucket(
    store: &dyn ObjectStore,
    rt: &tokio::runtime::Handle,
    create: bool,
) -> Result<Opened, CheckpointError> {
    if !create {
        return open_bucket_at(store, rt, None);
    }
    rt.block_on(ensure_format(store))?;
    open_chain(store, rt, None, Marker::Checked(None))
}

/// As `open_bucket_at`, for a caller that has checked the bucket and found its format marker
/// already (`crate::placement::open_placed_reading`, which with `create` also writes the
/// marker of a new prefix): every request before a mount serves is a round trip of its
/// start. `start`, if given, is what `ChainStart::read` found beside the marker.
pub fn open_checked_bucket(
    store: &dyn ReadStore,
    rt: &tokio::runtime::Handle,
    at: Option<At>,
    start: Option<ChainStart>,
) -> Result<Opened, CheckpointError> {
    open_chain(store, rt, at, Marker::Checked(start))
}

/// Whether opening a chain reads the format marker first.
enum Marker {
    /// Check the bucket and the marker (a prefix without one is refused), beside the chain's
    /// start.
    Read,
    /// The caller has, and may have read the chain's start beside it.
    Checked(Option<ChainStart>),
}

/// What opening a chain reads before it lists or fetches a manifest: the GC boundary (the
/// manifests below it are not part of the bucket: a stalled writer may have committed one
/// after GC collected its epoch), and where to start. Read beside the format marker
/// (`open_bucket_at`, `crate::placement::open_placed_reading`): a start pays one round trip
/// for the bucket's check, the marker, the boundary and the tip note, not two.
pub struct ChainStart {
    /// The checkpoint it was read for.
    at: Option<At>,
    boundary: Result<u64, CheckpointError>,
    start: Option<Start>,
    /// Why the tip note could not be read, if it could not.
    unreadable_note: Option<String>,
}

impl ChainStart {
    /// The latest checkpoint starts from the tip note; an epoch, from its own manifest if
    /// the bucket holds it (a replica's WAL search opens several, and each would otherwise
    /// list every manifest). A point in time needs every epoch.
    pub async fn read(store: &dyn ReadStore, at: Option<At>) -> ChainStart {
        let (boundary, (start, unreadable_note)) =
            futures_util::future::join(crate::gc::read_boundary(store), async {
                match at {
                    None => match read_tip(store).await {
                        Ok(note) => (
                            note.filter(|n| n.epoch > 0).map(|n| Start::After {
                                note: n.epoch,
                                stop: n.stop,
                            }),
                            None,
                        ),
                        Err(e) => (None, Some(e)),
                    },
                    Some(At::Epoch(e)) => match store.head(&manifest_key(e)).await {
                        Ok(Some(_)) => (Some(Start::Exactly(e)), None),
                        Ok(None) => (None, None),
                        Err(err) => {
                            let why = "HEAD of the manifest failed; listing them";
                            debug!(error = %err, epoch = e, "{why}");
                            (None, None)
                        }
                    },
                    Some(At::UnixMs(_)) => (None, None),
                }
            })
            .await;
        ChainStart {
            at,
            boundary,
            start,
            unreadable_note,
        }
    }
}

/// As `open_bucket` (never creating), at the newest checkpoint at or before `at` (None: the
/// latest). Reads only: a replica's poll and its WAL search open their bucket through here,
/// and so do the commands (`ls`, `verify`, `gc`, `wal-fetch`). A checkpoint GC has
/// collected, or whose chain it has, is refused with a clear message. The latest chain is
/// read again if GC deletes a manifest of it while it is read.
pub fn open_bucket_at(
    store: &dyn ReadStore,
    rt: &tokio::runtime::Handle,
    at: Option<At>,
) -> Result<Opened, CheckpointError> {
    open_chain(store, rt, at, Marker::Read)
}

/// `open_bucket_at`, reading the marker first or not (`marker`).
fn open_chain(
    store: &dyn ReadStore,
    rt: &tokio::runtime::Handle,
    at: Option<At>,
    marker: Marker,
) -> Result<Opened, CheckpointError> {
    let mut start = match marker {
        Marker::Read => {
            let (marker, start) = rt.block_on(futures_util::future::join(
                check_and_read_marker(store),
                ChainStart::read(store, at),
            ));
            match marker? {
                Some(bytes) => {
                    check_format(&bytes)?;
                }
                None => return Err(unformatted(store)),
            }
            Some(start)
        }
        Marker::Checked(start) => start.filter(|s| s.at == at),
    };
    let mut attempts = 0;
    loop {
        // (Read again for another attempt: GC may have moved on.)
        match open_once(store, rt, at, start.take()) {
            Err(CheckpointError::Store(StoreError::NotFound { key }))
                if at.is_none() && attempts < 3 && epoch_of_key(&key).is_some() =>
            {
                attempts += 1;
                warn!(key, "a manifest of the chain went away while it was read (GC); reading the bucket again");
            }
            Err(CheckpointError::Store(StoreError::NotFound { key }))
                if at.is_some() && epoch_of_key(&key).is_some() =>
            {
                return Err(CheckpointError::Refused(format!(
                    "the checkpoint at or before {} is no longer restorable: its chain needs {key}, \
                     which GC has collected (it is outside the retention window). `bucketfs ls` \
                     lists the retained checkpoints",
                    at.expect("checked")
                )))
            }
            r => return r,
        }
    }
}

fn open_once(
    store: &dyn ReadStore,
    rt: &tokio::runtime::Handle,
    at: Option<At>,
    start: Option<ChainStart>,
) -> Result<Opened, CheckpointError> {
    rt.block_on(async {
        let ChainStart {
            boundary,
            start,
            unreadable_note,
            ..
        } = match start {
            Some(start) => start,
            None => ChainStart::read(store, at).await,
        };
        let boundary = boundary?;
        if let Some(e) = unreadable_note {
            warn!(error = %e, "could not read the tip note; listing every manifest");
        }
        let mut fetch = ChainFetch::new(store, boundary);
        let mut epochs = match start {
            // From the epoch before the note's (so that the noted one is listed too): empty
            // only if the note is past every manifest, which a note never is unless the prefix
            // was tampered with; then every manifest, as without one.
            Some(Start::After { note: t, stop }) => {
                // After a clean stop (a Machine waking on its volume, or a new one) the
                // newest manifest is the stop's, the one after the note, and the chain ends
                // there: its manifests are asked for beside the LIST, which takes a round trip
                // of its own. A note written while a writer ran says little of where the
                // newest manifest is (up to `TIP_EVERY` epochs on), so nothing is guessed.
                let top = t.saturating_add(1);
                if stop && top >= boundary {
                    fetch.ask_window(top, true);
                }
                let after = Some(t.max(boundary).max(1) - 1);
                let epochs = fetch.beside(list_epochs(store, after, boundary)).await?;
                if epochs
                    .last()
                    .is_some_and(|&l| l >= top.saturating_add(CHAIN_WINDOW as u64))
                {
                    fetch.forget_guesses();
                }
                epochs
            }
            Some(Start::Exactly(e)) if e >= boundary => vec![e],
            _ => Vec::new(),
        };
        if epochs.is_empty() {
            epochs = list_epochs(store, None, boundary).await?;
        }
        if epochs.is_empty() {
            return Ok(Opened {
                view: View::default(),
                latest: None,
                chain_bytes: ChainBytes::default(),
            });
        }
        let chosen = match at {
            None => epochs.last().copied(),
            Some(At::Epoch(e)) => epochs.iter().rev().find(|&&x| x <= e).copied(),
            Some(At::UnixMs(t)) => newest_at_or_before(store, &epochs, t).await?,
        };
        // A point in time must be one GC still keeps whole: an expired checkpoint may lack
        // segments that only it named.
        if let (Some(at), Some(e)) = (at, chosen) {
            let kept = crate::gc::read_state(store)
                .await?
                .map_or(0, |s| s.oldest_retained);
            if e < kept {
                return Err(CheckpointError::Refused(format!(
                    "the checkpoint at or before {at} (epoch {e}) is no longer restorable: it \
                     left the retention window and GC may have collected its segments; the \
                     oldest retained one is epoch {kept} (`bucketfs ls` lists them)"
                )));
            }
        }
        let Some(latest_epoch) = chosen else {
            return Err(CheckpointError::Refused(format!(
                "{} has no checkpoint at or before {}: the oldest it holds is epoch {}",
                store.describe(),
                at.expect("only a point in time can miss"),
                epochs[0]
            )));
        };
        // Follow parents back to a base, then apply forwards. A delta's parent is the epoch
        // before it, so the chain is the epochs just below: they are asked for up to
        // CHAIN_WINDOW at once, and a restore waits a round trip per window of its chain,
        // not one per delta (up to `max_chain`, 128 by default, at 20 ms each on S3). They are
        // counted down from the epoch rather than taken from the LIST, which may have
        // started at the tip note, above the base. A window may reach past the base, which
        // is found only by reading it: the chain is followed as the manifests arrive, a
        // manifest is decoded only if the chain reaches it, and the GETs still under way
        // below the base are dropped once the base is in, so that a start waits for neither
        // an older base's megabytes nor a slow answer it does not need.
        let mut chain = Vec::new();
        let mut epoch = latest_epoch;
        loop {
            let bytes = fetch.get(epoch).await;
            // Only the manifests the chain reaches count: one below the base may be gone
            // (GC deletes old ones) or fail to read, and that is not this restore's error.
            let key = manifest_key(epoch);
            let bytes = bytes?;
            let m = Manifest::decode_at(&bytes, &key, epoch)?;
            let parent = m.parent;
            chain.push((m, crate::manifest::plain_len(&bytes)));
            match parent {
                None => break,
                Some(p) if p < epoch => epoch = p,
                Some(p) => {
                    return Err(
                        FormatError::corrupt(&key, format!("parent {p} is not older")).into(),
                    );
                }
            }
        }
        drop(fetch);
        let mut view = View::default();
        let mut chain_bytes = ChainBytes::default();
        for (m, len) in chain.iter().rev() {
            view.apply(m);
            chain_bytes.note(m.parent.is_none(), *len);
        }
        let latest = chain.into_iter().next().map(|(m, _)| m);
        Ok(Opened {
            view,
            latest,
            chain_bytes,
        })
    })
}

/// The manifests of a chain on their way: asked for a window of epochs at a time (at once,
/// not one round trip each), kept as they arrive, and dropped with it (a GET still under
/// way below the base is one a start need not wait for).
struct ChainFetch<'a> {
    store: &'a dyn ReadStore,
    boundary: u64,
    asked: HashSet<u64>,
    in_flight: Gets<'a>,
    /// Asked for before a LIST said they exist (`ask_window` with `guess`): one found missing is asked for
    /// again when the chain reaches it, as it may have landed since.
    guessed: HashSet<u64>,
    guesses: Gets<'a>,
    arrived: HashMap<u64, Result<Bytes, StoreError>>,
}

type Gets<'a> = futures_util::stream::FuturesUnordered<
    futures_util::future::BoxFuture<'a, (u64, Result<Bytes, StoreError>)>,
>;

impl<'a> ChainFetch<'a> {
    fn new(store: &'a dyn ReadStore, boundary: u64) -> ChainFetch<'a> {
        ChainFetch {
            store,
            boundary,
            asked: HashSet::new(),
            in_flight: Gets::new(),
            guessed: HashSet::new(),
            guesses: Gets::new(),
            arrived: HashMap::new(),
        }
    }

    fn ask(&mut self, epoch: u64, guess: bool) {
        let store = self.store;
        let get = async move { (epoch, store.get(&manifest_key(epoch), None).await) }.boxed();
        match guess {
            true => self.guesses.push(get),
            false => self.in_flight.push(get),
        }
    }

    /// Asks for `top` and the epochs below it, `CHAIN_WINDOW` in all (none below the
    /// boundary), that were not asked for yet; `guess`, before a LIST said they exist.
    fn ask_window(&mut self, top: u64, guess: bool) {
        let lowest = top
            .saturating_sub(CHAIN_WINDOW as u64 - 1)
            .max(self.boundary)
            .max(1)
            .min(top);
        for e in (lowest..=top).rev() {
            if self.asked.insert(e) {
                if guess {
                    self.guessed.insert(e);
                }
                self.ask(e, guess);
            }
        }
    }

    /// Drops the guessed window (the chain starts more than a window above it: the GETs the
    /// chain needs should not share the bandwidth with it).
    fn forget_guesses(&mut self) {
        self.guesses = Gets::new();
        for e in self.guessed.drain() {
            self.asked.remove(&e);
            self.arrived.remove(&e);
        }
    }

    /// Manifest `epoch`, asking for its window if it was not asked for yet. The chain goes
    /// down, so each window holds the chain's next steps until it reaches below it.
    async fn get(&mut self, epoch: u64) -> Result<Bytes, StoreError> {
        if !self.asked.contains(&epoch) {
            self.ask_window(epoch, false);
        }
        loop {
            if let Some(got) = self.arrived.remove(&epoch) {
                if matches!(got, Err(StoreError::NotFound { .. })) && self.guessed.remove(&epoch) {
                    self.ask(epoch, false);
                    continue;
                }
                return got;
            }
            let ChainFetch {
                in_flight, guesses, ..
            } = self;
            let (e, got) = tokio::select! {
                Some(got) = in_flight.next(), if !in_flight.is_empty() => got,
                Some(got) = guesses.next(), if !guesses.is_empty() => got,
                else => unreachable!("every epoch asked for is under way or has arrived"),
            };
            self.arrived.insert(e, got);
        }
    }

    /// Awaits `f`, taking in the manifests that arrive meanwhile.
    async fn beside<T>(&mut self, f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        let ChainFetch {
            in_flight,
            guesses,
            arrived,
            ..
        } = self;
        loop {
            let (e, got) = tokio::select! {
                biased;
                out = &mut f => return out,
                Some(got) = in_flight.next(), if !in_flight.is_empty() => got,
                Some(got) = guesses.next(), if !guesses.is_empty() => got,
            };
            arrived.insert(e, got);
        }
    }
}

/// Where an open starts instead of listing every manifest.
enum Start {
    /// List the manifests from the tip note's epoch on (`note`); `stop`: the note was
    /// written beside a clean stop's manifest.
    After { note: u64, stop: bool },
    /// The epoch asked for, whose manifest is in the bucket: nothing to list.
    Exactly(u64),
}

/// Manifests a restore (and a GC pass) fetches at once while it follows a chain back to its
/// base (beside a guessed window, `ChainFetch::guesses`, until the LIST shows it is not the
/// chain's). The same as the default `base_every`: a chain of that length is one window and
/// never the base before; one of 128 manifests (the default `max_chain`) four.
pub(crate) const CHAIN_WINDOW: usize = 32;

/// The newest of `epochs` (ascending) committed at or before `unix_ms`, by binary search on
/// the manifests' times (they grow with the epoch: each commit follows the one before it).
async fn newest_at_or_before(
    store: &dyn ReadStore,
    epochs: &[u64],
    unix_ms: u64,
) -> Result<Option<u64>, CheckpointError> {
    let (mut lo, mut hi) = (0usize, epochs.len());
    // Invariant: epochs[..lo] are at or before, epochs[hi..] after.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let key = manifest_key(epochs[mid]);
        let m = Manifest::decode(&store.get(&key, None).await?, &key)?;
        if m.created_ms <= unix_ms {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo.checked_sub(1).map(|i| epochs[i]))
}

/// The namespace and pages of a view, for installing into an empty cache dir.
pub fn restore_of(view: &View) -> Restore {
    // Files unlinked while open on the writer stay in its checkpoints, nameless, until their
    // last close; a restore has no use for them.
    let live = |ino: &u64| view.inodes.get(ino).is_some_and(|a| a.nlink > 0);
    let pages = view
        .extents
        .iter()
        .filter(|(ino, _)| live(ino))
        .map(|(ino, map)| {
            let mut set = crate::fs::pageset::PageSet::new();
            for (&s, (e, _)) in map {
                set.insert(s..*e);
            }
            (*ino, set)
        })
        .collect();
    Restore {
        epoch: view.epoch,
        next_ino: view.next_ino,
        inodes: view
            .inodes
            .values()
            .filter(|a| a.nlink > 0)
            .cloned()
            .collect(),
        dirents: view
            .dirents
            .iter()
            .map(|((parent, name), (ino, kind))| crate::fs::CutDirent {
                parent: *parent,
                name: name.clone(),
                ino: *ino,
                kind: *kind,
            })
            .collect(),
        pages,
    }
}
