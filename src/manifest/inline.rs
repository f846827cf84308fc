//! The inline segment: a small checkpoint's runs carried in its manifest object, where they
//! lie in it, and the manifest's checksum, which leaves them out.

use super::{FormatError, INLINE_OFFSET, MANIFEST_VERSION, VERSION_INLINE};

/// The manifest's checksum: of everything before it but the inline segment, whose runs and
/// index have checksums of their own. A damaged run then fails the reads of its pages, as in
/// a segment, instead of the whole checkpoint.
pub(super) fn manifest_crc(body: &[u8], inline: Option<std::ops::Range<usize>>) -> u32 {
    match inline {
        None => crc32c::crc32c(body),
        Some(r) => crc32c::crc32c_append(crc32c::crc32c(&body[..r.start]), &body[r.end..]),
    }
}

/// Where the inline segment of a manifest's bytes lies (None: version 1; empty: a manifest
/// that carries no runs), its length checked against the object. The manifest's checksum
/// leaves these bytes out: they are a segment, checked as one (its index and each run have
/// their own crc32c).
pub fn inline_range(
    bytes: &[u8],
    key: &str,
) -> Result<Option<std::ops::Range<usize>>, FormatError> {
    let version = bytes.get(8..12).map(|v| v.try_into().expect("4 bytes"));
    if !version
        .is_some_and(|v| (VERSION_INLINE..=MANIFEST_VERSION).contains(&u32::from_le_bytes(v)))
    {
        return Ok(None);
    }
    let start = INLINE_OFFSET as usize;
    let len = bytes
        .get(12..start)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| FormatError::corrupt(key, "too short for its inline length"))?;
    // The body and the crc follow the inline part: at least 4 bytes.
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&end| bytes.len().checked_sub(4).is_some_and(|max| end <= max))
        .ok_or_else(|| FormatError::corrupt(key, "inline length past the object"))?;
    Ok(Some(start..end))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{sample, with_inline};
    use super::super::*;

    #[test]
    fn inline_runs_are_read_by_range_from_the_manifest_object() {
        let (m, runs, key) = with_inline();
        let key = key.as_str();
        let bytes = m.encode();
        let back = Manifest::decode(&bytes, key).unwrap();
        assert_eq!(
            back.extents, m.extents,
            "inline extents name the object itself"
        );
        assert!(back.inline.is_empty());
        let range = inline_range(&bytes, key).unwrap().expect("an inline part");
        assert_eq!(
            segment::verify_segment(&bytes[range.clone()], key)
                .unwrap()
                .len(),
            2
        );
        for (r, fill) in runs.iter().zip([vec![7u8; 8192], vec![8u8; 9000]]) {
            let stored = &bytes[r.offset as usize..(r.offset + u64::from(r.stored_len)) as usize];
            assert_eq!(segment::decode_run(r, stored, key).unwrap(), fill);
            assert!(range.contains(&(r.offset as usize)));
        }
        // Without inline runs the inline part is there, empty.
        assert_eq!(inline_range(&sample().encode(), "k").unwrap(), Some(20..20));
        assert_eq!(
            inline_range(&sample().encode_version(VERSION_PLAIN), "k").unwrap(),
            None
        );
        // Version 2, as older bucketfs wrote it, reads the same.
        let old = m.encode_version(VERSION_INLINE);
        assert_eq!(Manifest::decode(&old, key).unwrap().extents, m.extents);
        assert_eq!(inline_range(&old, key).unwrap(), Some(range));
    }

    #[test]
    fn an_inline_length_near_the_top_of_u64_is_an_error_never_a_panic() {
        let (m, _, key) = with_inline();
        let good = m.encode();
        for len in [
            u64::MAX,
            u64::MAX - 20,
            u64::MAX - 23,
            u64::MAX - 24,
            1 << 40,
        ] {
            let mut bad = good.clone();
            bad[12..20].copy_from_slice(&len.to_le_bytes());
            assert!(inline_range(&bad, &key).is_err(), "length {len}");
            assert!(Manifest::decode(&bad, &key).is_err(), "length {len}");
        }
        // Nothing inline: no extent may name an inline segment.
        let mut named = sample();
        named.extents[0].segment = "".into();
        named.extents[1].segment = crate::checkpoint::manifest_key(1).into();
        let bytes = named.encode();
        assert_eq!(inline_range(&bytes, "k").unwrap(), Some(20..20));
        assert!(Manifest::decode(&bytes, "k").is_err());
    }

    #[test]
    fn a_corrupt_inline_manifest_is_an_error_never_a_panic() {
        let (m, runs, key) = with_inline();
        let key = key.as_str();
        let bytes = m.encode();
        let inline = inline_range(&bytes, key).unwrap().unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            if !inline.contains(&i) {
                assert!(Manifest::decode(&bad, key).is_err(), "flip at {i} accepted");
                continue;
            }
            // A flip among the runs leaves the manifest readable, and is caught where the
            // runs are checked: by the segment's index, or by the run that holds it.
            assert_eq!(Manifest::decode(&bad, key).unwrap().extents, m.extents);
            if (inline.start + 12..inline.start + 16).contains(&i) {
                continue; // the segment header's reserved word, which nothing reads
            }
            assert!(
                segment::verify_segment(&bad[inline.clone()], key).is_err(),
                "flip at {i}"
            );
            if let Some(r) = runs
                .iter()
                .find(|r| (r.offset..r.offset + u64::from(r.stored_len)).contains(&(i as u64)))
            {
                let stored = &bad[r.offset as usize..(r.offset + u64::from(r.stored_len)) as usize];
                assert!(
                    segment::decode_run(r, stored, key).is_err(),
                    "flip at {i} read back"
                );
            }
        }
        for n in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..n], key).is_err(),
                "prefix {n} accepted"
            );
            let _ = inline_range(&bytes[..n], key);
        }
        // A version 1 manifest may not name an inline segment.
        let mut v1 = sample();
        v1.extents[0].segment = "".into();
        assert!(Manifest::decode(&v1.encode_version(VERSION_PLAIN), "k").is_err());
    }
}
