//! The segment format: runs of pages packed into one object, each run checksummed, with an
//! index at the end so that a segment can be verified or rebuilt on its own.
//!
//! ```text
//! header   magic "BFSSEG01" (8) | version u32 | reserved u32
//! runs     the bytes of each run, back to back (codec per run: raw, or one zstd frame)
//! index    count u32, then per run: ino u64 | first_page u64 | pages u32 | offset u64 |
//!          stored_len u32 | codec u8 | crc32c u32 (of the stored bytes)
//! footer   index_offset u64 | index_len u32 | index_crc32c u32 | magic "BFSSEGIX" (8)
//! ```
//! All integers are little-endian. A run's location (offset, stored_len, crc) is what a
//! manifest extent points at, so a reader fetches one run with one ranged GET and checks it
//! without the rest of the segment.

use super::wire::{Reader, Writer};
use super::FormatError;

const MAGIC: &[u8; 8] = b"BFSSEG01";
const INDEX_MAGIC: &[u8; 8] = b"BFSSEGIX";
pub const SEGMENT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
const FOOTER_LEN: usize = 24;
const INDEX_ENTRY_LEN: usize = 8 + 8 + 4 + 8 + 4 + 1 + 4;
const PAGE_BYTES: usize = crate::fs::PAGE_SIZE as usize;

/// How a run's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    /// One zstd frame holding the run's bytes.
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A run is stored compressed only when that saves at least an eighth: below that, the CPU
/// of decompressing on every cache miss buys too little.
pub(super) fn worth_it(compressed: usize, raw: usize) -> bool {
    compressed <= raw - raw / 8
}

thread_local! {
    /// Each thread's compression context, kept from run to run: making one costs more than
    /// compressing the few KiB a `--durability remote` commit carries, and such commits come
    /// a hundred times a second. Reusing a context does not change what it writes.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// One zstd frame of `data` at `level`.
pub(super) fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    #[cfg(test)]
    TRIES.set(TRIES.get() + 1);
    COMPRESSOR.with_borrow_mut(|kept| {
        let compressor = match kept {
            Some((l, c)) if *l == level => c,
            _ => &mut kept.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        compressor.compress(data)
    })
}

#[cfg(test)]
thread_local! {
    /// Runs this thread tried to compress (tests count what the skipping saves).
    static TRIES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Bytes of a file that must fail to compress in a row before its runs are skipped, and the
/// first skip; each further miss doubles the skip, up to `MOST_SKIPPED`.
const FIRST_SKIP: usize = 256 * 1024;
const MOST_SKIPPED: usize = 4 * 1024 * 1024;

/// A file's runs that did not compress, for `SegmentBuilder::push_run` to stop trying them.
/// Bytes that zstd cannot shrink by an eighth (values compressed or encrypted before they
/// reach Postgres, media, fio's random buffers) cost it CPU all the same and are then stored
/// raw, on the cores that serve the writes. So once a file's runs have missed for 256 KiB in
/// a row, its next 256 KiB are stored raw without a try, and each further miss doubles that,
/// up to 4 MiB: a file that does not compress costs a try every few MiB. The state is the
/// builder's, so it starts over with each segment (32 MiB by default), and less than 256 KiB
/// of a file saves nothing. A run that compresses resets it: a file that compresses is tried
/// at every run, and so is one whose lone pages miss beside longer runs that compress (fio's
/// one buffer, repeated), as long as its misses in a row stay under 256 KiB. A file that
/// compresses again is noticed within 4 MiB and a run; a run of another file is always tried
/// (a file's runs come together in a cut and in a compaction).
#[derive(Debug, Default)]
struct Misses {
    ino: u64,
    /// Bytes tried in a row that did not compress.
    missed: usize,
    /// The skip the next miss starts (0: the first, `FIRST_SKIP`).
    next_skip: usize,
    /// Bytes still to store raw without a try.
    skip_bytes: usize,
}

impl Misses {
    /// Whether to try `len` bytes of `ino` (if not, they count against the skip).
    fn try_next(&mut self, ino: u64, len: usize) -> bool {
        if ino != self.ino {
            *self = Misses {
                ino,
                ..Misses::default()
            };
        }
        if self.skip_bytes == 0 {
            return true;
        }
        self.skip_bytes = self.skip_bytes.saturating_sub(len);
        false
    }

    fn tried(&mut self, len: usize, compressed: bool) {
        if compressed {
            self.missed = 0;
            self.next_skip = 0;
            return;
        }
        self.missed = self.missed.saturating_add(len);
        if self.missed >= FIRST_SKIP {
            self.skip_bytes = self.next_skip.max(FIRST_SKIP);
            self.next_skip = (self.skip_bytes * 2).min(MOST_SKIPPED);
        }
    }
}

/// Where one run of pages sits in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLocation {
    pub ino: u64,
    pub first_page: u64,
    pub pages: u32,
    pub offset: u64,
    pub stored_len: u32,
    pub codec: Codec,
    pub crc: u32,
}

/// Builds one segment in memory.
pub struct SegmentBuilder {
    buf: Vec<u8>,
    runs: Vec<RunLocation>,
    /// zstd level for runs that compress well; None stores every run raw.
    zstd_level: Option<i32>,
    misses: Misses,
}

impl Default for SegmentBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SegmentBuilder {
    pub fn new() -> SegmentBuilder {
        let mut w = Writer::default();
        w.bytes(MAGIC);
        w.u32(SEGMENT_VERSION);
        w.u32(0);
        SegmentBuilder {
            buf: w.into_inner(),
            runs: Vec::new(),
            zstd_level: None,
            misses: Misses::default(),
        }
    }

    /// A builder that stores each run zstd-compressed at `level` where that pays.
    pub fn compressing(level: Option<i32>) -> SegmentBuilder {
        SegmentBuilder {
            zstd_level: level,
            ..SegmentBuilder::new()
        }
    }

    /// Bytes so far (the index and footer add a little at `finish`).
    pub fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Appends `pages` pages of inode `ino` starting at `first_page`; `data` is their bytes
    /// (the last page may be short at the end of a file).
    pub fn push_run(&mut self, ino: u64, first_page: u64, pages: u32, data: &[u8]) -> RunLocation {
        let compressed = match self.zstd_level {
            Some(level) if self.misses.try_next(ino, data.len()) => {
                let c = compress(data, level)
                    .ok()
                    .filter(|c| worth_it(c.len(), data.len()));
                self.misses.tried(data.len(), c.is_some());
                c
            }
            _ => None,
        };
        let (stored, codec) = match &compressed {
            Some(c) => (c.as_slice(), Codec::Zstd),
            None => (data, Codec::Raw),
        };
        let loc = RunLocation {
            ino,
            first_page,
            pages,
            offset: self.buf.len() as u64,
            stored_len: u32::try_from(stored.len()).expect("runs are bounded well below 4 GiB"),
            codec,
            crc: crc32c::crc32c(stored),
        };
        self.buf.extend_from_slice(stored);
        self.runs.push(loc);
        loc
    }

    /// Moves `other`'s runs to the end of this segment (a checkpoint small enough to travel
    /// in its manifest packs its WAL and data runs as one segment).
    pub fn append(&mut self, other: SegmentBuilder) {
        let shift = self.buf.len() as u64 - HEADER_LEN;
        self.buf
            .extend_from_slice(&other.buf[HEADER_LEN as usize..]);
        self.runs.extend(other.runs.into_iter().map(|mut r| {
            r.offset += shift;
            r
        }));
    }

    /// The finished object and the location of every run in it.
    pub fn finish(self) -> (Vec<u8>, Vec<RunLocation>) {
        let SegmentBuilder { mut buf, runs, .. } = self;
        let index_offset = buf.len() as u64;
        let mut w = Writer::default();
        w.u32(runs.len() as u32);
        for r in &runs {
            w.u64(r.ino);
            w.u64(r.first_page);
            w.u32(r.pages);
            w.u64(r.offset);
            w.u32(r.stored_len);
            w.u8(r.codec as u8);
            w.u32(r.crc);
        }
        let index = w.into_inner();
        let index_crc = crc32c::crc32c(&index);
        buf.extend_from_slice(&index);
        let mut f = Writer::default();
        f.u64(index_offset);
        f.u32(index.len() as u32);
        f.u32(index_crc);
        f.bytes(INDEX_MAGIC);
        buf.extend_from_slice(&f.into_inner());
        (buf, runs)
    }
}

/// Checks one run's stored bytes against its location and returns the page bytes.
pub fn decode_run(loc: &RunLocation, stored: &[u8], key: &str) -> Result<Vec<u8>, FormatError> {
    if loc.pages > super::MAX_RUN_PAGES {
        return Err(FormatError::corrupt(
            key,
            format!("run ino={} claims {} pages", loc.ino, loc.pages),
        ));
    }
    if stored.len() != loc.stored_len as usize {
        return Err(FormatError::corrupt(
            key,
            format!(
                "run ino={} page={} is {} bytes, expected {}",
                loc.ino,
                loc.first_page,
                stored.len(),
                loc.stored_len
            ),
        ));
    }
    let crc = crc32c::crc32c(stored);
    if crc != loc.crc {
        return Err(FormatError::corrupt(
            key,
            format!(
                "run ino={} page={} offset={} has crc32c {crc:08x}, expected {:08x}",
                loc.ino, loc.first_page, loc.offset, loc.crc
            ),
        ));
    }
    match loc.codec {
        Codec::Raw => Ok(stored.to_vec()),
        Codec::Zstd => {
            // A run is at most `pages` pages; a frame that claims more is corrupt, and the
            // bound keeps a bad frame from allocating without limit.
            let most = loc.pages as usize * PAGE_BYTES;
            zstd::bulk::decompress(stored, most).map_err(|e| {
                FormatError::corrupt(
                    key,
                    format!(
                        "run ino={} page={} offset={} does not decompress: {e}",
                        loc.ino, loc.first_page, loc.offset
                    ),
                )
            })
        }
    }
}

/// Reads a whole segment's index and checks every run: what `bucketfs verify` does to a
/// segment, and how a lost manifest could be rebuilt.
pub fn verify_segment(bytes: &[u8], key: &str) -> Result<Vec<RunLocation>, FormatError> {
    let corrupt = |why: String| FormatError::corrupt(key, why);
    if bytes.len() < HEADER_LEN as usize + FOOTER_LEN {
        return Err(corrupt(format!("{} bytes is too short", bytes.len())));
    }
    let mut h = Reader::new(&bytes[..HEADER_LEN as usize], key);
    if h.bytes(8)? != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let version = h.u32()?;
    if version != SEGMENT_VERSION {
        return Err(FormatError::Version {
            key: key.into(),
            found: version,
            supported: SEGMENT_VERSION,
        });
    }
    let mut f = Reader::new(&bytes[bytes.len() - FOOTER_LEN..], key);
    let index_offset = f.u64()?;
    let index_len = f.u32()? as u64;
    let index_crc = f.u32()?;
    if f.bytes(8)? != INDEX_MAGIC {
        return Err(corrupt("bad index magic".into()));
    }
    let index_end = index_offset
        .checked_add(index_len)
        .filter(|&e| e == (bytes.len() - FOOTER_LEN) as u64 && index_offset >= HEADER_LEN)
        .ok_or_else(|| corrupt("index bounds".into()))?;
    let index = &bytes[index_offset as usize..index_end as usize];
    if crc32c::crc32c(index) != index_crc {
        return Err(corrupt("index checksum mismatch".into()));
    }
    let mut r = Reader::new(index, key);
    let count = r.u32()? as usize;
    if count.checked_mul(INDEX_ENTRY_LEN) != Some(index.len() - 4) {
        return Err(corrupt(format!(
            "index of {} bytes cannot hold {count} runs",
            index.len()
        )));
    }
    let mut runs = Vec::with_capacity(count);
    for _ in 0..count {
        let loc = RunLocation {
            ino: r.u64()?,
            first_page: r.u64()?,
            pages: r.u32()?,
            offset: r.u64()?,
            stored_len: r.u32()?,
            codec: Codec::from_u8(r.u8()?).ok_or_else(|| corrupt("unknown codec".into()))?,
            crc: r.u32()?,
        };
        let end = loc
            .offset
            .checked_add(u64::from(loc.stored_len))
            .filter(|&e| loc.offset >= HEADER_LEN && e <= index_offset)
            .ok_or_else(|| corrupt(format!("run at {} out of bounds", loc.offset)))?;
        decode_run(&loc, &bytes[loc.offset as usize..end as usize], key)?;
        runs.push(loc);
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_compression_context_writes_what_a_new_one_would() {
        let data: Vec<u8> = (0..40_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect();
        for level in [1, 19, 1, 3, 3] {
            assert_eq!(
                compress(&data, level).expect("compress"),
                zstd::bulk::compress(&data, level).expect("compress"),
                "level {level}"
            );
        }
    }

    #[test]
    fn round_trip_and_ranged_decode() {
        let mut b = SegmentBuilder::new();
        let a = b.push_run(7, 0, 2, &[1u8; 16384]);
        let c = b.push_run(9, 5, 1, &[2u8; 100]);
        let (bytes, runs) = b.finish();
        assert_eq!(runs, vec![a, c]);
        assert_eq!(verify_segment(&bytes, "k").unwrap(), runs);
        let stored = &bytes[c.offset as usize..(c.offset + u64::from(c.stored_len)) as usize];
        assert_eq!(decode_run(&c, stored, "k").unwrap(), vec![2u8; 100]);
    }

    #[test]
    fn an_appended_builder_makes_one_segment_holding_both_runs() {
        let mut wal = SegmentBuilder::compressing(Some(1));
        wal.push_run(3, 0, 1, &[5u8; 8192]);
        let mut data = SegmentBuilder::new();
        data.push_run(7, 4, 2, &[1u8; 16384]);
        data.push_run(9, 0, 1, &[2u8; 100]);
        wal.append(data);
        let (bytes, runs) = wal.finish();
        assert_eq!(verify_segment(&bytes, "k").unwrap(), runs);
        let expect: [(u64, Vec<u8>); 3] =
            [(3, vec![5; 8192]), (7, vec![1; 16384]), (9, vec![2; 100])];
        assert_eq!(runs.len(), 3);
        for (r, (ino, page_bytes)) in runs.iter().zip(expect) {
            assert_eq!(r.ino, ino);
            let stored = &bytes[r.offset as usize..(r.offset + u64::from(r.stored_len)) as usize];
            assert_eq!(decode_run(r, stored, "k").unwrap(), page_bytes);
        }
    }

    #[test]
    fn compressible_runs_are_stored_compressed_and_come_back_exact() {
        let text: Vec<u8> = (0..3 * 8192u32)
            .map(|i| b"pgbench row "[i as usize % 12])
            .collect();
        let noise = noise(8192, 0);
        let mut b = SegmentBuilder::compressing(Some(3));
        let t = b.push_run(1, 0, 3, &text);
        let n = b.push_run(2, 0, 1, &noise);
        let (bytes, runs) = b.finish();
        assert_eq!(t.codec, Codec::Zstd);
        assert!((t.stored_len as usize) < text.len() / 10);
        assert_eq!(
            n.codec,
            Codec::Raw,
            "incompressible bytes were stored compressed"
        );
        assert_eq!(verify_segment(&bytes, "k").unwrap(), runs);
        let stored = |r: &RunLocation| &bytes[r.offset as usize..][..r.stored_len as usize];
        assert_eq!(decode_run(&t, stored(&t), "k").unwrap(), text);
        assert_eq!(decode_run(&n, stored(&n), "k").unwrap(), noise);
        // A frame that claims more than its run's pages is refused, not inflated.
        let mut short = t;
        short.pages = 1;
        assert!(decode_run(&short, stored(&t), "k").is_err());
    }

    /// `len` bytes that do not compress.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    /// Packs `runs` (ino, bytes) into one compressing segment; returns each run's codec and
    /// how many compressions were tried, after checking that every run reads back exact.
    fn pack(runs: &[(u64, Vec<u8>)]) -> (Vec<Codec>, u64) {
        let before = TRIES.get();
        let mut b = SegmentBuilder::compressing(Some(1));
        for (i, (ino, data)) in runs.iter().enumerate() {
            let pages = data.len().div_ceil(PAGE_BYTES) as u32;
            b.push_run(*ino, i as u64 * 64, pages, data);
        }
        let tries = TRIES.get() - before;
        let (bytes, locs) = b.finish();
        assert_eq!(verify_segment(&bytes, "k").unwrap(), locs);
        for (loc, (_, data)) in locs.iter().zip(runs) {
            let stored = &bytes[loc.offset as usize..][..loc.stored_len as usize];
            assert_eq!(&decode_run(loc, stored, "k").unwrap(), data);
        }
        (locs.iter().map(|l| l.codec).collect(), tries)
    }

    #[test]
    fn a_file_that_does_not_compress_is_tried_only_now_and_then() {
        // 32 MiB of one file in runs of 256 KiB: 128 runs.
        let runs: Vec<_> = (0..128).map(|i| (5, noise(256 * 1024, i))).collect();
        let (_, tries) = pack(&runs);
        // Skips of 256 KiB doubling to 4 MiB: runs 0, 2, 5, 10, 19, 36, then one in 17.
        assert_eq!(tries, 11, "incompressible runs of 256 KiB tried, of 128");
        // Small runs likewise, once 256 KiB of them did not compress: 2,048 of 8 KiB.
        let runs: Vec<_> = (0..2048).map(|i| (6, noise(8192, i))).collect();
        let (_, tries) = pack(&runs);
        // Runs 0 to 31, then 64, 129, 258, 515, 1028 and 1541.
        assert_eq!(tries, 38, "incompressible runs of 8 KiB tried, of 2048");
    }

    #[test]
    fn runs_that_compress_are_compressed_after_runs_that_did_not() {
        let text = |len: usize| -> Vec<u8> { (0..len).map(|i| b"pgbench row "[i % 12]).collect() };
        // Another file is tried at once.
        let mut runs: Vec<_> = (0..40).map(|i| (1, noise(256 * 1024, i))).collect();
        runs.extend((0..4).map(|_| (2, text(256 * 1024))));
        let (codecs, _) = pack(&runs);
        assert_eq!(codecs[40..], [Codec::Zstd; 4]);
        // The same file, once it compresses again: within 4 MiB (16 runs), and from then on.
        let mut runs: Vec<_> = (0..40).map(|i| (3, noise(256 * 1024, i))).collect();
        runs.extend((0..40).map(|_| (3, text(256 * 1024))));
        let (codecs, _) = pack(&runs);
        let first = 40 + codecs[40..].iter().position(|c| *c == Codec::Zstd).unwrap();
        assert!(first <= 40 + 16, "raw until run {first}");
        assert!(codecs[first..].iter().all(|c| *c == Codec::Zstd));
        // Then misses again: its skips start over from 256 KiB. Tried: runs 0, 2, 5, 10, 19
        // and 36 of the noise; of the text, 53 (the first after the 4 MiB skip) to 59; of the
        // noise after it, 60, 62, 65, 70 and 79. Skips that went on doubling from where they
        // were would try 60 and 77 only.
        let mut runs: Vec<_> = (0..40).map(|i| (3, noise(256 * 1024, i))).collect();
        runs.extend((0..20).map(|_| (3, text(256 * 1024))));
        runs.extend((0..20).map(|i| (3, noise(256 * 1024, 100 + i))));
        assert_eq!(pack(&runs).1, 6 + 7 + 5);
        // Another file's misses start from nothing: 31 lone pages of one file that did not
        // compress (248 KiB), then two of another, both tried.
        let mut runs: Vec<_> = (0..31).map(|i| (1, noise(8192, i))).collect();
        runs.extend((0..2).map(|i| (2, noise(8192, 50 + i))));
        assert_eq!(pack(&runs).1, 33);
        // A file that compresses is tried at every run.
        let runs: Vec<_> = (0..20).map(|_| (4, text(64 * 1024))).collect();
        assert_eq!(pack(&runs), (vec![Codec::Zstd; 20], 20));
        // One whose lone pages do not compress and whose longer runs do (random 8 KiB writes
        // of one buffer, as fio's): every run is tried, every longer run compressed. (A
        // first version skipped after any miss and stored these raw: more bytes uploaded.)
        let page = noise(8192, 1_000_000);
        let runs: Vec<_> = (0..200)
            .map(|i| match i % 3 {
                0 => (5, noise(8192, i)),
                _ => (5, page.repeat(4)),
            })
            .collect();
        let (codecs, tries) = pack(&runs);
        assert_eq!(tries, 200);
        for (i, c) in codecs.iter().enumerate() {
            let want = if i % 3 == 0 { Codec::Raw } else { Codec::Zstd };
            assert_eq!(*c, want, "run {i}");
        }
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let mut b = SegmentBuilder::new();
        b.push_run(1, 0, 1, &[5u8; 8192]);
        b.push_run(2, 3, 1, &[6u8; 10]);
        let (bytes, _) = b.finish();
        for i in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                verify_segment(&bad, "k").is_err(),
                "flip at {i} not detected"
            );
        }
        assert!(verify_segment(&bytes[..bytes.len() - 3], "k").is_err());
    }
}
