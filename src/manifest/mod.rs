//! The bucket's formats: segments (packed page runs) and manifests (the whole filesystem at one
//! epoch, as a base or as a delta on its parent). Every format has a magic, a version and a
//! checksum, and decoding never trusts an unchecked length.
//!
//! ```text
//! manifest  magic "BFSMAN01" | version u32 | [inline_len u64 | inline] | [codec u8] | body |
//!           crc32c u32 (of everything before it but `inline`, the body as stored)
//!           version 1: no inline part. Versions 2 and later: `inline` is a whole segment
//!           (segment.rs) holding the runs of a checkpoint small enough to travel in its
//!           manifest (or nothing, inline_len 0). Version 3 has a flags byte where 1 and 2
//!           have a clean_stop byte: a bucketfs that reads only 1 or 2 would neither keep
//!           fences nor write them, so it must refuse the bucket (docs/gc.md, "Fences").
//!           Version 4 is laid out as 3; its deltas may name segments whose names carry an
//!           earlier epoch, which a GC that reads only up to 3 would delete (docs/gc.md,
//!           "Beside the checkpoints"). Version 5 (the one written) adds the codec byte: 0,
//!           the body follows as it is; 1, it follows as one zstd frame stating its size. A
//!           body of 64 KiB or more is compressed if that saves an eighth (every start reads
//!           its chain's base, and a base of a fragmented view shrinks about four times)
//! body      epoch u64 | parent u64 (0: a base) | created_ms u64 | page_size u32 |
//!           writer blob | next_ino u64 | flags u8 (1: clean stop, 2: fence) |
//!           segments: count u32, key blob each          (the table extents index into;
//!                                                         an empty key: this object's inline
//!                                                         segment, offsets from the object's
//!                                                         start)
//!           inodes:   count u32, (ino u64, attr blob)   (upserts; attr as in RocksDB)
//!           removed:  count u32, ino u64                (deleted inodes, delta only)
//!           dirents:  count u32, (parent u64, name blob, ino u64, kind u8)
//!           unlinked: count u32, (parent u64, name blob) (delta only)
//!           truncs:   count u32, (ino u64, keep_pages u64) (drop extents from that page)
//!           extents:  count u32, (ino u64, first_page u64, pages u32, segment u32,
//!                                 offset u64, stored_len u32, codec u8, crc u32,
//!                                 valid_first u64, valid_pages u64)
//! ```

mod compress;
mod inline;
pub mod segment;
pub mod view;
pub mod wire;

pub use compress::plain_len;
pub use inline::inline_range;

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use crate::fs::attr::{Attr, FileKind};
use crate::fs::{MAX_FILE_SIZE, PAGE_SIZE};
use compress::{compress_body, decompress_body};
use inline::manifest_crc;
use segment::{Codec, RunLocation};
use wire::{Reader, Writer};

const MANIFEST_MAGIC: &[u8; 8] = b"BFSMAN01";
/// Read only: no inline part, a clean_stop byte.
const VERSION_PLAIN: u32 = 1;
/// Read only: an inline part, a clean_stop byte.
const VERSION_INLINE: u32 = 2;
/// Read only: an inline part, a flags byte (clean stop, fence). A delta of this version
/// names only segments whose names carry its own epoch.
const VERSION_FENCE: u32 = 3;
/// Read only, laid out as 3. From this version on, a delta may name segments whose names carry an
/// earlier epoch (a compaction's, when checkpoints committed beside it, docs/gc.md): a GC that
/// reads only up to version 3 would take them for no manifest's and delete them, so it must
/// refuse the bucket instead. (Only the tests write it.)
#[cfg(test)]
const VERSION_EARLIER_SEGMENTS: u32 = 4;
/// As 4, with a codec byte before the body (`BODY_RAW`, `BODY_ZSTD`).
const VERSION_CODEC: u32 = 5;
/// The version written.
pub const MANIFEST_VERSION: u32 = VERSION_CODEC;
const BODY_RAW: u8 = 0;
const BODY_ZSTD: u8 = 1;
const FLAG_CLEAN_STOP: u8 = 1;
const FLAG_FENCE: u8 = 2;
/// Where a version 2 or later manifest's inline segment starts: a run's offset in it is
/// `INLINE_OFFSET` plus its offset in the segment.
pub const INLINE_OFFSET: u64 = 8 + 4 + 8;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("corrupt object key={key}: {why}")]
    Corrupt { key: String, why: String },
    #[error(
        "object key={key} has format version {found}; this bucketfs reads version {supported}"
    )]
    Version {
        key: String,
        found: u32,
        supported: u32,
    },
}

impl FormatError {
    pub fn corrupt(key: &str, why: impl Into<String>) -> FormatError {
        FormatError::Corrupt {
            key: key.into(),
            why: why.into(),
        }
    }
}

/// One extent: pages `first_page..first_page + pages` of file `run.ino`, whose bytes are in
/// the run `run` of object `segment`. A newer write can supersede part of a run, so an
/// extent may cover only part of its run; a reader fetches and checks the whole run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Shared: a manifest names few segments, in many extents, and views, bases and
    /// summaries copy them.
    pub segment: Arc<str>,
    pub run: RunLocation,
    pub first_page: u64,
    pub pages: u64,
}

impl Extent {
    /// An extent that is the whole of its run.
    pub fn whole(segment: impl Into<Arc<str>>, run: RunLocation) -> Extent {
        Extent {
            first_page: run.first_page,
            pages: u64::from(run.pages),
            segment: segment.into(),
            run,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestDirent {
    pub parent: u64,
    pub name: OsString,
    pub ino: u64,
    pub kind: FileKind,
}

/// The filesystem at one epoch (a base), or what changed since the parent epoch (a delta).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub epoch: u64,
    /// The epoch this is a delta on; None for a base.
    pub parent: Option<u64>,
    pub created_ms: u64,
    pub page_size: u32,
    /// Who wrote it (a writer id, for `ls` and fencing messages).
    pub writer: String,
    pub next_ino: u64,
    /// Written by a writer's final checkpoint at a clean stop: no writer holds the prefix.
    pub clean_stop: bool,
    /// Written by a takeover whose parent is not a clean stop: the writer of the parent may
    /// still be running, and this key is what fails its next commit. GC never deletes it,
    /// which is what lets a writer believe a commit without reading the GC boundary after
    /// it (docs/gc.md, "Fences").
    pub fence: bool,
    pub inodes: Vec<Attr>,
    pub removed_inodes: Vec<u64>,
    pub dirents: Vec<ManifestDirent>,
    pub unlinked: Vec<(u64, OsString)>,
    /// (ino, keep_pages): extents of older epochs at or past this page no longer count.
    pub truncations: Vec<(u64, u64)>,
    pub extents: Vec<Extent>,
    /// A segment carried in the manifest object itself (one PUT for a small checkpoint
    /// instead of a segment and a manifest). The extents of its runs name the manifest's own
    /// key (`manifest_key(epoch)`) and are located from the object's start. `decode` leaves
    /// it empty: readers fetch those runs by range like any segment's.
    pub inline: Vec<u8>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        self.encode_version(MANIFEST_VERSION)
    }

    /// As `encode`, in an older version (tests of what this bucketfs still reads). Version 1
    /// cannot say that runs are inline, and neither 1 nor 2 that the manifest is a fence.
    /// Version 3 is laid out as 4, and 5 is 4 with a codec byte before the body.
    fn encode_version(&self, version: u32) -> Vec<u8> {
        let own = crate::checkpoint::manifest_key(self.epoch);
        let mut w = Writer::default();
        w.bytes(MANIFEST_MAGIC);
        w.u32(version);
        if version != VERSION_PLAIN {
            w.u64(self.inline.len() as u64);
            w.bytes(&self.inline);
        }
        // Where the body starts, after its codec byte (version 5): it is written as it is,
        // and replaced by its compressed frame below if that is worth it.
        let body_at = (version >= VERSION_CODEC).then(|| {
            w.u8(BODY_RAW);
            INLINE_OFFSET as usize + self.inline.len() + 1
        });
        w.u64(self.epoch);
        w.u64(self.parent.unwrap_or(0));
        w.u64(self.created_ms);
        w.u32(self.page_size);
        w.blob(self.writer.as_bytes());
        w.u64(self.next_ino);
        let mut flags = u8::from(self.clean_stop) * FLAG_CLEAN_STOP;
        if version >= VERSION_FENCE && self.fence {
            flags |= FLAG_FENCE;
        }
        w.u8(flags);
        // The segment table, in first-use order.
        let mut table: Vec<&str> = Vec::new();
        let mut index = rustc_hash::FxHashMap::default();
        for e in &self.extents {
            index.entry(&*e.segment).or_insert_with(|| {
                table.push(&*e.segment);
                (table.len() - 1) as u32
            });
        }
        w.u32(table.len() as u32);
        for key in &table {
            let this = !self.inline.is_empty() && *key == own;
            w.blob(if this { b"" } else { key.as_bytes() });
        }
        w.u32(self.inodes.len() as u32);
        for a in &self.inodes {
            w.u64(a.ino);
            w.blob(&a.encode());
        }
        w.u32(self.removed_inodes.len() as u32);
        for ino in &self.removed_inodes {
            w.u64(*ino);
        }
        w.u32(self.dirents.len() as u32);
        for d in &self.dirents {
            w.u64(d.parent);
            w.blob(d.name.as_bytes());
            w.u64(d.ino);
            w.u8(d.kind.code());
        }
        w.u32(self.unlinked.len() as u32);
        for (parent, name) in &self.unlinked {
            w.u64(*parent);
            w.blob(name.as_bytes());
        }
        w.u32(self.truncations.len() as u32);
        for (ino, keep) in &self.truncations {
            w.u64(*ino);
            w.u64(*keep);
        }
        w.u32(self.extents.len() as u32);
        for e in &self.extents {
            let r = &e.run;
            w.u64(r.ino);
            w.u64(r.first_page);
            w.u32(r.pages);
            w.u32(index[&*e.segment]);
            w.u64(r.offset);
            w.u32(r.stored_len);
            w.u8(r.codec as u8);
            w.u32(r.crc);
            w.u64(e.first_page);
            w.u64(e.pages);
        }
        let mut out = w.into_inner();
        if let Some(at) = body_at {
            if let Some(frame) = compress_body(&out[at..]) {
                out.truncate(at - 1);
                out.push(BODY_ZSTD);
                out.extend_from_slice(&frame);
            }
        }
        let inline = (version != VERSION_PLAIN)
            .then(|| INLINE_OFFSET as usize..INLINE_OFFSET as usize + self.inline.len());
        let crc = manifest_crc(&out, inline);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// As `decode`, for the object at epoch `epoch`'s key: a manifest naming another epoch
    /// is corrupt.
    pub fn decode_at(bytes: &[u8], key: &str, epoch: u64) -> Result<Manifest, FormatError> {
        let m = Manifest::decode(bytes, key)?;
        if m.epoch != epoch {
            return Err(FormatError::corrupt(
                key,
                format!("names epoch {}", m.epoch),
            ));
        }
        Ok(m)
    }

    pub fn decode(bytes: &[u8], key: &str) -> Result<Manifest, FormatError> {
        let corrupt = |why: &str| FormatError::corrupt(key, why);
        if bytes.len() < 16 {
            return Err(corrupt("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if bytes[..8] != MANIFEST_MAGIC[..] {
            return Err(corrupt("bad magic"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("length checked"));
        if !(VERSION_PLAIN..=MANIFEST_VERSION).contains(&version) {
            return Err(FormatError::Version {
                key: key.into(),
                found: version,
                supported: MANIFEST_VERSION,
            });
        }
        let inline = inline_range(bytes, key)?;
        if manifest_crc(body, inline.clone())
            != u32::from_le_bytes(crc.try_into().expect("4 bytes"))
        {
            return Err(corrupt("checksum mismatch"));
        }
        let carries = inline.as_ref().is_some_and(|r| !r.is_empty());
        let start = inline.map_or(12, |r| r.end);
        let decompressed;
        let mut r = Reader::new(&body[start..], key);
        if version >= VERSION_CODEC {
            match r.u8()? {
                BODY_RAW => {}
                BODY_ZSTD => {
                    decompressed = decompress_body(&body[start + 1..]).map_err(|e| corrupt(&e))?;
                    r = Reader::new(&decompressed, key);
                }
                _ => return Err(corrupt("unknown body codec")),
            }
        }
        let epoch = r.u64()?;
        let parent = Some(r.u64()?).filter(|&p| p != 0);
        let created_ms = r.u64()?;
        let page_size = r.u32()?;
        let writer = String::from_utf8(r.blob()?.to_vec()).map_err(|_| corrupt("writer"))?;
        let next_ino = r.u64()?;
        let flags = r.u8()?;
        let known = if version >= VERSION_FENCE {
            FLAG_CLEAN_STOP | FLAG_FENCE
        } else {
            FLAG_CLEAN_STOP
        };
        if flags & !known != 0 {
            return Err(corrupt("unknown flags"));
        }
        if flags == FLAG_CLEAN_STOP | FLAG_FENCE {
            // A takeover (a fence) is never its writer's clean stop.
            return Err(corrupt("a clean stop flagged a fence"));
        }
        // Each count is checked against the bytes left (every record takes at least 8) so a
        // corrupt count cannot ask for a huge allocation.
        let count = |r: &mut Reader| -> Result<usize, FormatError> {
            let n = r.u32()? as usize;
            if n > r.remaining() / 4 {
                return Err(corrupt("count exceeds the object"));
            }
            Ok(n)
        };
        let mut table = Vec::new();
        for _ in 0..count(&mut r)? {
            let name = r.blob()?;
            if name.is_empty() && !carries {
                return Err(corrupt("an inline segment named without one"));
            }
            let name = if name.is_empty() {
                key.as_bytes()
            } else {
                name
            };
            let name = std::str::from_utf8(name).map_err(|_| corrupt("segment key"))?;
            table.push(Arc::<str>::from(name));
        }
        let mut m = Manifest {
            epoch,
            parent,
            created_ms,
            page_size,
            writer,
            next_ino,
            clean_stop: flags & FLAG_CLEAN_STOP != 0,
            fence: flags & FLAG_FENCE != 0,
            ..Manifest::default()
        };
        for _ in 0..count(&mut r)? {
            let ino = r.u64()?;
            let attr = Attr::decode(ino, r.blob()?).map_err(|e| corrupt(&e.to_string()))?;
            if attr.size > MAX_FILE_SIZE {
                return Err(corrupt(&format!("inode {ino} has size {}", attr.size)));
            }
            m.inodes.push(attr);
        }
        for _ in 0..count(&mut r)? {
            m.removed_inodes.push(r.u64()?);
        }
        for _ in 0..count(&mut r)? {
            let parent = r.u64()?;
            let name = OsString::from_vec(r.blob()?.to_vec());
            let ino = r.u64()?;
            let kind = FileKind::from_code(r.u8()?).ok_or_else(|| corrupt("file kind"))?;
            m.dirents.push(ManifestDirent {
                parent,
                name,
                ino,
                kind,
            });
        }
        for _ in 0..count(&mut r)? {
            let parent = r.u64()?;
            m.unlinked
                .push((parent, OsString::from_vec(r.blob()?.to_vec())));
        }
        for _ in 0..count(&mut r)? {
            m.truncations.push((r.u64()?, r.u64()?));
        }
        for _ in 0..count(&mut r)? {
            let ino = r.u64()?;
            let first_page = r.u64()?;
            let pages = r.u32()?;
            let seg = r.u32()? as usize;
            let segment = table
                .get(seg)
                .ok_or_else(|| corrupt("segment index"))?
                .clone();
            let run = RunLocation {
                ino,
                first_page,
                pages,
                offset: r.u64()?,
                stored_len: r.u32()?,
                codec: Codec::from_u8(r.u8()?).ok_or_else(|| corrupt("unknown codec"))?,
                crc: r.u32()?,
            };
            let (first_page, pages) = (r.u64()?, r.u64()?);
            check_extent(&run, first_page, pages).map_err(corrupt)?;
            m.extents.push(Extent {
                segment,
                run,
                first_page,
                pages,
            });
        }
        if r.remaining() != 0 {
            return Err(corrupt("trailing bytes"));
        }
        Ok(m)
    }
}

/// The most pages a file can have.
const MAX_PAGES: u64 = MAX_FILE_SIZE / PAGE_SIZE;
/// The most pages one run may hold: far above what a writer packs (`--run-pages`), low enough
/// that decoding a run never allocates more than 512 MiB.
pub const MAX_RUN_PAGES: u32 = 1 << 16;

/// An extent's numbers, decoded from a manifest, are ones the rest of the code can do
/// arithmetic on without overflow: its run lies within the largest file and the object's
/// addressable range, and the extent lies within its run. Returns why not.
fn check_extent(run: &RunLocation, first_page: u64, pages: u64) -> Result<(), &'static str> {
    if run.pages == 0 || run.pages > MAX_RUN_PAGES {
        return Err("run page count out of range");
    }
    let run_end = run
        .first_page
        .checked_add(u64::from(run.pages))
        .filter(|&e| e <= MAX_PAGES)
        .ok_or("run past the largest file")?;
    run.offset
        .checked_add(u64::from(run.stored_len))
        .ok_or("run past the end of any object")?;
    let end = first_page
        .checked_add(pages)
        .ok_or("extent past the largest file")?;
    if pages == 0 || first_page < run.first_page || end > run_end {
        return Err("extent outside its run");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn attr(ino: u64, kind: FileKind) -> Attr {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        Attr {
            ino,
            kind,
            perm: 0o640,
            uid: 101,
            gid: 102,
            size: 3 * 8192 + 5,
            nlink: 1,
            rdev: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            parent: 1,
            target: Vec::new(),
        }
    }

    pub(super) fn sample() -> Manifest {
        let run = |ino, first_page, offset| RunLocation {
            ino,
            first_page,
            pages: 2,
            offset,
            stored_len: 16384,
            codec: Codec::Raw,
            crc: 0xdead_beef,
        };
        Manifest {
            epoch: 42,
            parent: Some(41),
            created_ms: 1_700_000_000_000,
            page_size: 8192,
            writer: "w-1".into(),
            next_ino: 9,
            clean_stop: true,
            inodes: vec![attr(1, FileKind::Dir), attr(7, FileKind::File)],
            removed_inodes: vec![5],
            dirents: vec![ManifestDirent {
                parent: 1,
                name: "base".into(),
                ino: 7,
                kind: FileKind::File,
            }],
            unlinked: vec![(1, "old".into())],
            truncations: vec![(7, 4)],
            extents: vec![
                Extent::whole("segments/a", run(7, 0, 16)),
                Extent {
                    first_page: 3,
                    pages: 1,
                    ..Extent::whole("segments/b", run(7, 2, 16))
                },
                Extent::whole("segments/a", run(8, 0, 16400)),
            ],
            ..Manifest::default()
        }
    }

    /// A base of `files` files, each fragmented into `runs` one-page extents of their own
    /// runs, as a table churned by small random writes is (what makes bases large).
    pub(super) fn fragmented_base(files: u64, runs: u64) -> Manifest {
        let mut m = Manifest {
            epoch: 7,
            created_ms: 1_700_000_000_000,
            page_size: 8192,
            writer: "w-1".into(),
            next_ino: files + 2,
            ..Manifest::default()
        };
        for ino in 2..files + 2 {
            m.inodes.push(Attr {
                size: runs * 2 * 8192,
                ..attr(ino, FileKind::File)
            });
            for k in 0..runs {
                let run = RunLocation {
                    ino,
                    first_page: 2 * k,
                    pages: 1,
                    offset: (ino * runs + k) * 8192,
                    stored_len: 8192,
                    codec: Codec::Raw,
                    crc: (ino * 31 + k * 7) as u32,
                };
                m.extents.push(Extent::whole(
                    format!("segments/{:020}-w-1-{}-0000.seg", 3 + k % 5, k % 5).as_str(),
                    run,
                ));
            }
        }
        m
    }

    /// A manifest carrying its checkpoint's runs, its inline runs
    /// named by the key it is read under and found at their offsets in the object.
    pub(super) fn with_inline() -> (Manifest, Vec<RunLocation>, String) {
        let mut b = segment::SegmentBuilder::compressing(Some(1));
        b.push_run(7, 4, 1, &[7u8; 8192]);
        b.push_run(8, 0, 2, &[8u8; 9000]);
        let (bytes, runs) = b.finish();
        let mut m = sample();
        m.inline = bytes;
        let key = crate::checkpoint::manifest_key(m.epoch);
        let runs: Vec<RunLocation> = runs
            .into_iter()
            .map(|mut r| {
                r.offset += INLINE_OFFSET;
                r
            })
            .collect();
        m.extents
            .extend(runs.iter().map(|r| Extent::whole(key.clone(), *r)));
        (m, runs, key)
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(&m.encode()[8..12], &MANIFEST_VERSION.to_le_bytes());
        assert_eq!(Manifest::decode(&m.encode(), "k").unwrap(), m);
        let fence = Manifest {
            fence: true,
            clean_stop: false,
            ..sample()
        };
        assert_eq!(Manifest::decode(&fence.encode(), "k").unwrap(), fence);
        // What older bucketfs wrote still reads.
        for version in [
            VERSION_PLAIN,
            VERSION_INLINE,
            VERSION_FENCE,
            VERSION_EARLIER_SEGMENTS,
        ] {
            let bytes = m.encode_version(version);
            assert_eq!(&bytes[8..12], &version.to_le_bytes());
            assert_eq!(
                Manifest::decode(&bytes, "k").unwrap(),
                m,
                "version {version}"
            );
        }
    }

    #[test]
    fn a_flag_its_version_does_not_know_is_refused() {
        // The flags byte: the one byte a change of clean_stop changes (the crc aside).
        let at = |version: u32| {
            let m = sample();
            let flipped = Manifest {
                clean_stop: !m.clean_stop,
                ..m.clone()
            };
            let (a, b) = (m.encode_version(version), flipped.encode_version(version));
            (0..a.len() - 4)
                .find(|&i| a[i] != b[i])
                .expect("the flags byte")
        };
        for version in [
            VERSION_PLAIN,
            VERSION_INLINE,
            VERSION_FENCE,
            VERSION_EARLIER_SEGMENTS,
            VERSION_CODEC,
        ] {
            let good = sample().encode_version(version);
            let i = at(version);
            for flags in 0..=255u8 {
                let mut bytes = good.clone();
                bytes[i] = flags;
                let inline = inline_range(&bytes, "k").unwrap();
                let crc = manifest_crc(&bytes[..bytes.len() - 4], inline);
                let n = bytes.len();
                bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
                // Versions 3 and later: clean stop (1) or fence (2), never both.
                let highest = if version >= VERSION_FENCE { 2 } else { 1 };
                match Manifest::decode(&bytes, "k") {
                    Ok(m) => {
                        assert!(flags <= highest, "version {version} took flags {flags}");
                        assert_eq!(m.clean_stop, flags & 1 != 0);
                        assert_eq!(m.fence, flags & 2 != 0);
                    }
                    Err(_) => assert!(flags > highest, "version {version} refused flags {flags}"),
                }
            }
        }
    }

    #[test]
    fn corruption_and_truncation_are_errors_never_panics() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Manifest::decode(&bad, "k").is_err(), "flip at {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..n], "k").is_err(),
                "prefix {n} accepted"
            );
        }
        // `plain_len` reads the header and the frame's stated size of anything, never
        // panicking: a compressed manifest's prefixes and flipped bytes.
        let compressed = fragmented_base(4, 500).encode();
        assert_eq!(compressed[INLINE_OFFSET as usize], BODY_ZSTD);
        for n in 0..compressed.len() {
            plain_len(&compressed[..n]);
        }
        for i in 0..64 {
            let mut bad = compressed.clone();
            bad[i] ^= 0xff;
            plain_len(&bad);
        }
    }
}
