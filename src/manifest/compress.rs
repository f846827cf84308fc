//! The manifest body's compression (version 5): a large body stored as one zstd frame that
//! states its size, and the length a stored manifest would have with its body plain.

use super::{inline_range, segment, BODY_ZSTD, VERSION_CODEC};

/// A body this long or longer is compressed (if that saves an eighth): bases, and deltas of
/// large changes. A small delta, as a `--durability remote` commit writes hundreds of times a
/// second, is stored as it is.
const COMPRESS_FROM: usize = 64 * 1024;
/// The most a compressed body may say it holds (a corrupt frame must not ask for more).
const MOST_BODY: u64 = 1 << 32;

/// The length a manifest as stored (`bytes`) would have with its body uncompressed: what
/// the cadence of bases counts (`Checkpointer::base_due`), so that compressing bodies changes
/// what a base costs to read and upload, not how often one is written (a base is the whole
/// view to encode; under `--durability remote` a commit waits for it). Reads only the
/// header and the frame's stated size; a manifest it cannot make out counts as stored.
pub fn plain_len(bytes: &[u8]) -> u64 {
    let stored = bytes.len() as u64;
    let Ok(Some(inline)) = inline_range(bytes, "") else {
        return stored;
    };
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("inline_range read it"));
    if version < VERSION_CODEC || bytes.get(inline.end) != Some(&BODY_ZSTD) {
        return stored;
    }
    let Some(frame) = bytes.get(inline.end + 1..bytes.len() - 4) else {
        return stored;
    };
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(body)) if body <= MOST_BODY => stored - frame.len() as u64 + body,
        _ => stored,
    }
}

/// `body` as one zstd frame, if it is long enough to be worth it and that saves an eighth.
pub(super) fn compress_body(body: &[u8]) -> Option<Vec<u8>> {
    // (A body past `MOST_BODY` stays as it is: a reader would refuse its frame.)
    if body.len() < COMPRESS_FROM || body.len() as u64 > MOST_BODY {
        return None;
    }
    let frame = segment::compress(body, 1).ok()?;
    segment::worth_it(frame.len(), body.len()).then_some(frame)
}

/// The body a version 5 manifest holds as one zstd frame. The frame must say how long the
/// body is, within `MOST_BODY`, and hold exactly that.
pub(super) fn decompress_body(frame: &[u8]) -> Result<Vec<u8>, String> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= MOST_BODY => usize::try_from(size).map_err(|e| e.to_string())?,
        Ok(Some(size)) => return Err(format!("a compressed body of {size} bytes")),
        Ok(None) | Err(_) => return Err("a compressed body without its size".into()),
    };
    // (zstd checks that the frame holds the size it states.)
    zstd::bulk::decompress(frame, size).map_err(|e| format!("body does not decompress: {e}"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fragmented_base, sample, with_inline};
    use super::super::*;
    use super::*;

    // Issue 14: every start reads its chain's base, and a base of a fragmented view is
    // megabytes (6 MB at 10 GiB after a few seconds of TPC-B, BENCHMARKS.md). A large body
    // is stored as one zstd frame, and reads back the same; a small one is left as it is.
    #[test]
    fn a_large_body_is_stored_compressed_and_reads_back_the_same() {
        let m = fragmented_base(40, 500);
        let stored = m.encode();
        let plain = m.encode_version(VERSION_EARLIER_SEGMENTS);
        assert_eq!(
            stored[INLINE_OFFSET as usize], BODY_ZSTD,
            "the body's codec"
        );
        assert!(
            stored.len() * 2 < plain.len(),
            "{} bytes stored, {} plain: the body did not shrink by half",
            stored.len(),
            plain.len()
        );
        assert_eq!(Manifest::decode(&stored, "k").unwrap(), m);
        assert_eq!(
            plain_len(&stored),
            plain.len() as u64 + 1,
            "its length stored plain"
        );
        let small = sample().encode();
        assert_eq!(plain_len(&small), small.len() as u64);
        assert_eq!(
            small[INLINE_OFFSET as usize], BODY_RAW,
            "a small body's codec"
        );
        assert_eq!(
            small.len(),
            sample().encode_version(VERSION_EARLIER_SEGMENTS).len() + 1
        );
        // A large delta that carries runs: its inline part stays ahead of the codec byte.
        let (mut carrying, runs, key) = with_inline();
        carrying.extents.extend(m.extents.iter().cloned());
        let stored = carrying.encode();
        let inline = inline_range(&stored, &key)
            .unwrap()
            .expect("an inline part");
        assert_eq!(stored[inline.end], BODY_ZSTD, "the carrying delta's codec");
        let read = Manifest::decode(&stored, &key).unwrap();
        // (Decoding does not keep the inline part: its runs are read by range.)
        assert_eq!(
            read,
            Manifest {
                inline: Vec::new(),
                ..carrying
            }
        );
        for (r, fill) in runs.iter().zip([7u8, 8]) {
            let at = r.offset as usize;
            let run = &stored[at..at + r.stored_len as usize];
            let pages = segment::decode_run(r, run, &key).unwrap();
            assert!(
                pages.iter().all(|&b| b == fill),
                "a carried run, read by its range"
            );
        }
    }

    // A compressed body that is damaged, lies about its size, or is no zstd frame at all is
    // a corrupt manifest: an error, never a panic or a huge allocation.
    #[test]
    fn a_damaged_compressed_body_is_an_error() {
        let good = fragmented_base(10, 500).encode();
        let codec_at = INLINE_OFFSET as usize;
        let frame = &good[codec_at + 1..good.len() - 4];
        // A codec and a body with the checksum made right again, so that they are what is
        // judged, not the checksum.
        let sealed = |codec: u8, body: &[u8]| {
            let mut bytes = good[..codec_at].to_vec();
            bytes.push(codec);
            bytes.extend_from_slice(body);
            let crc = manifest_crc(&bytes, Some(codec_at..codec_at));
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes
        };
        assert_eq!(
            Manifest::decode(&sealed(BODY_ZSTD, frame), "k").unwrap(),
            fragmented_base(10, 500),
            "resealed as it was, it reads back"
        );
        let body = decompress_body(frame).unwrap();
        let mut flipped = good.clone();
        flipped[codec_at + 1 + frame.len() / 2] ^= 0x40;
        // A frame header that says 8 GiB (single segment, an 8-byte content size).
        let mut huge = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        huge.extend_from_slice(&(8u64 << 30).to_le_bytes());
        huge.extend_from_slice(&frame[frame.len() / 2..]);
        for (what, bytes) in [
            ("a flipped bit", flipped),
            (
                "a truncated frame",
                sealed(BODY_ZSTD, &frame[..frame.len() / 2]),
            ),
            (
                "a frame of half the body",
                sealed(
                    BODY_ZSTD,
                    &zstd::bulk::compress(&body[..body.len() / 2], 1).unwrap(),
                ),
            ),
            ("a frame that says 8 GiB", sealed(BODY_ZSTD, &huge)),
            ("no frame", sealed(BODY_ZSTD, &[0u8; 16])),
            ("an empty frame", sealed(BODY_ZSTD, &[])),
            ("an unknown codec", sealed(2, frame)),
            ("a frame read as a raw body", sealed(BODY_RAW, frame)),
        ] {
            let e = Manifest::decode(&bytes, "k").expect_err(what);
            assert!(matches!(e, FormatError::Corrupt { .. }), "{what}: {e}");
        }
        // Refused for its size, before anything is allocated for it.
        let e = decompress_body(&huge).expect_err("a frame that says 8 GiB");
        assert!(e.contains("8589934592 bytes"), "{e}");
    }
}
