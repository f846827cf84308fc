//! The chunks a mount read first, in the order it first read them. A clean stop records them
//! beside the hot set, and the next cold start fetches them before anything else: a database
//! reads much the same files as it starts each time (its settings, its control file, the
//! catalogs its first connection loads, what its first queries touch), one after another,
//! and on a new machine each one it reads before its fetch has begun costs it a round trip
//! to the bucket (docs/cache.md, "Prewarm").

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::bound::CHUNK_BYTES;
use super::Fs;

/// The most chunks recorded (64 MiB of 256 KiB chunks): a start's reads, and the first
/// queries'. Past it, or `FIRST_READS_WINDOW` after the first read, a read pays one atomic
/// load.
pub const FIRST_READS_MAX: usize = 256;
const FIRST_READS_WINDOW: Duration = Duration::from_secs(60);

/// (ino, chunk).
type Chunk = (u64, u64);

#[derive(Default)]
pub(super) struct FirstReads {
    full: AtomicBool,
    seen: Mutex<Seen>,
}

/// The chunks read, in the order first read, and the same as a set; when the first was.
#[derive(Default)]
struct Seen {
    order: Vec<Chunk>,
    set: HashSet<Chunk>,
    since: Option<Instant>,
}

impl FirstReads {
    /// A READ of `size` bytes at `offset` of file `ino`.
    fn note(&self, ino: u64, offset: u64, size: u32) {
        self.note_at(ino, offset, size, Instant::now());
    }

    /// `note`, at `now`.
    fn note_at(&self, ino: u64, offset: u64, size: u32, now: Instant) {
        if size == 0 || self.full.load(Ordering::Relaxed) {
            return;
        }
        let end = offset.saturating_add(u64::from(size));
        let chunks = offset / CHUNK_BYTES..end.div_ceil(CHUNK_BYTES);
        let mut seen = self.seen.lock();
        if now.duration_since(*seen.since.get_or_insert(now)) > FIRST_READS_WINDOW {
            self.full.store(true, Ordering::Relaxed);
            return;
        }
        for chunk in chunks {
            if seen.order.len() >= FIRST_READS_MAX {
                self.full.store(true, Ordering::Relaxed);
                return;
            }
            if seen.set.insert((ino, chunk)) {
                seen.order.push((ino, chunk));
            }
        }
    }
}

impl Fs {
    pub(super) fn note_read(&self, ino: u64, offset: u64, size: u32) {
        self.first_reads.note(ino, offset, size);
    }

    /// The chunks this mount read first, (ino, chunk) in the order it first read them; at
    /// most `FIRST_READS_MAX`.
    pub fn first_reads(&self) -> Vec<Chunk> {
        self.first_reads.seen.lock().order.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_chunk_once_in_the_order_first_read_up_to_the_most() {
        let r = FirstReads::default();
        r.note(7, 3 * CHUNK_BYTES + 100, 8192);
        r.note(2, 0, 4096);
        // Across a chunk's end: both chunks, the one already seen not again.
        r.note(7, 4 * CHUNK_BYTES - 10, 20);
        r.note(2, 10, 0);
        assert_eq!(r.seen.lock().order, vec![(7, 3), (2, 0), (7, 4)]);
        for ino in 100..100 + FIRST_READS_MAX as u64 {
            r.note(ino, 0, 1);
        }
        let order = r.seen.lock().order.clone();
        assert_eq!(order.len(), FIRST_READS_MAX);
        assert_eq!(order[3], (100, 0));
        assert!(r.full.load(Ordering::Relaxed));
    }

    #[test]
    fn records_nothing_once_its_window_has_passed() {
        // Times after the first read, not before it: an `Instant` earlier than the
        // machine's boot cannot be made, and a CI machine may be up for less than a minute.
        let r = FirstReads::default();
        let first = Instant::now();
        r.note_at(1, 0, 1, first);
        r.note_at(3, 0, 1, first + FIRST_READS_WINDOW);
        let past = first + FIRST_READS_WINDOW + Duration::from_millis(1);
        r.note_at(2, 0, 1, past);
        r.note_at(4, 0, 1, first + FIRST_READS_WINDOW);
        assert_eq!(r.seen.lock().order, vec![(1, 0), (3, 0)]);
        assert!(r.full.load(Ordering::Relaxed));
    }
}
