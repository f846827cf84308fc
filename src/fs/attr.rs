//! Inode attributes and their persisted encoding.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What kind of object an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::Socket => 5,
            FileKind::CharDevice => 6,
            FileKind::BlockDevice => 7,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<FileKind> {
        Some(match code {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDevice,
            7 => FileKind::BlockDevice,
            _ => return None,
        })
    }

    /// The kind encoded in the `S_IFMT` bits of a mode, as mknod receives it.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// The attributes of one inode: everything `stat` shows plus the symlink target and, for a
/// directory, its parent (for `..`).
#[derive(Clone, Debug, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits only (`0o7777`); the type lives in `kind`.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub crtime: SystemTime,
    /// The parent directory of a directory; 0 for anything else.
    pub parent: u64,
    /// The target of a symlink; empty for anything else.
    pub target: Vec<u8>,
}

/// Every field, as a derived comparison would, but the symlink target only when there is
/// one: a checkpoint's delta compares every inode with the bucket's view, and the derived
/// comparison called `memcmp` for two empty targets, which a profile of
/// `cargo bench --profile dev --bench hot_paths -- checkpoint` put at 13% of a checkpoint's
/// samples. The pattern names every field, so a field added to `Attr` must be added here.
impl PartialEq for Attr {
    fn eq(&self, other: &Attr) -> bool {
        let Attr {
            ino,
            kind,
            perm,
            uid,
            gid,
            size,
            nlink,
            rdev,
            atime,
            mtime,
            ctime,
            crtime,
            parent,
            target,
        } = self;
        *ino == other.ino
            && *kind == other.kind
            && *perm == other.perm
            && *uid == other.uid
            && *gid == other.gid
            && *size == other.size
            && *nlink == other.nlink
            && *rdev == other.rdev
            && *atime == other.atime
            && *mtime == other.mtime
            && *ctime == other.ctime
            && *crtime == other.crtime
            && *parent == other.parent
            && target.len() == other.target.len()
            && (target.is_empty() || *target == other.target)
    }
}

/// A persisted record could not be decoded: the bytes are not what this version wrote.
#[derive(Debug, thiserror::Error)]
#[error("corrupt inode record ino={ino}: {why}")]
pub struct DecodeError {
    pub ino: u64,
    pub why: &'static str,
}

const ATTR_VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 1 + 2 + 4 + 4 + 8 + 4 + 4 + 4 * 12 + 8 + 4;

impl Attr {
    /// Record layout (little endian): version u8, kind u8, perm u16, uid u32, gid u32,
    /// size u64, nlink u32, rdev u32, four times as (secs i64, nanos u32), parent u64,
    /// target_len u32, target bytes, crc32c u32 of everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.target.len() + 4);
        out.push(ATTR_VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.perm.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.nlink.to_le_bytes());
        out.extend_from_slice(&self.rdev.to_le_bytes());
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            let (secs, nanos) = split_time(t);
            out.extend_from_slice(&secs.to_le_bytes());
            out.extend_from_slice(&nanos.to_le_bytes());
        }
        out.extend_from_slice(&self.parent.to_le_bytes());
        let target_len = u32::try_from(self.target.len()).expect("symlink targets are < 4 GiB");
        out.extend_from_slice(&target_len.to_le_bytes());
        out.extend_from_slice(&self.target);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(ino: u64, bytes: &[u8]) -> Result<Attr, DecodeError> {
        let err = |why| DecodeError { ino, why };
        if bytes.len() < FIXED_LEN + 4 {
            return Err(err("record too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes(crc.try_into().expect("split_at gave 4 bytes"));
        if crc32c::crc32c(body) != crc {
            return Err(err("checksum mismatch"));
        }
        let mut r = Reader { bytes: body };
        if r.u8() != ATTR_VERSION {
            return Err(err("unknown record version"));
        }
        let kind = FileKind::from_code(r.u8()).ok_or_else(|| err("unknown file kind"))?;
        let perm = u16::from_le_bytes(r.take::<2>());
        let uid = r.u32();
        let gid = r.u32();
        let size = r.u64();
        let nlink = r.u32();
        let rdev = r.u32();
        let mut times = [UNIX_EPOCH; 4];
        for t in &mut times {
            let secs = r.u64() as i64;
            let nanos = r.u32();
            *t = join_time(secs, nanos).ok_or_else(|| err("bad timestamp"))?;
        }
        let parent = r.u64();
        let target_len = r.u32() as usize;
        if r.bytes.len() != target_len {
            return Err(err("symlink target length does not match record length"));
        }
        let [atime, mtime, ctime, crtime] = times;
        Ok(Attr {
            ino,
            kind,
            perm,
            uid,
            gid,
            size,
            nlink,
            rdev,
            atime,
            mtime,
            ctime,
            crtime,
            parent,
            target: r.bytes.to_vec(),
        })
    }
}

/// A cursor over a buffer whose length was checked against `FIXED_LEN` up front.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        head.try_into().expect("split_at gave N bytes")
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

fn join_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(nanos as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attr {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        Attr {
            ino: 7,
            kind: FileKind::Symlink,
            perm: 0o777,
            uid: 26,
            gid: 27,
            size: 9,
            nlink: 1,
            rdev: 0,
            atime: t,
            mtime: t,
            ctime: UNIX_EPOCH - Duration::new(5, 1),
            crtime: t,
            parent: 0,
            target: b"../pg_wal".to_vec(),
        }
    }

    /// The hand-written comparison tells apart two attributes that differ in any one field.
    #[test]
    fn attributes_that_differ_in_any_field_are_not_equal() {
        let a = sample();
        assert_eq!(a, a.clone());
        let later = a.mtime + Duration::from_nanos(1);
        type Change = fn(&mut Attr, SystemTime);
        let changes: [(&str, Change); 14] = [
            ("ino", |a, _| a.ino += 1),
            ("kind", |a, _| a.kind = FileKind::File),
            ("perm", |a, _| a.perm = 0o755),
            ("uid", |a, _| a.uid += 1),
            ("gid", |a, _| a.gid += 1),
            ("size", |a, _| a.size += 1),
            ("nlink", |a, _| a.nlink += 1),
            ("rdev", |a, _| a.rdev += 1),
            ("atime", |a, t| a.atime = t),
            ("mtime", |a, t| a.mtime = t),
            ("ctime", |a, t| a.ctime = t),
            ("crtime", |a, t| a.crtime = t),
            ("parent", |a, _| a.parent += 1),
            ("target", |a, _| a.target = b"../pg_wax".to_vec()),
        ];
        for (field, change) in changes {
            let mut b = a.clone();
            change(&mut b, later);
            assert_ne!(a, b, "{field} differs");
        }
        let (mut empty, mut longer) = (a.clone(), a.clone());
        empty.target.clear();
        longer.target.push(b'/');
        assert_ne!(a, empty, "a target and none");
        assert_ne!(a, longer, "targets of other lengths");
        assert_eq!(empty, empty.clone(), "no target on either side");
    }

    #[test]
    fn roundtrip() {
        let a = sample();
        assert_eq!(Attr::decode(7, &a.encode()).unwrap(), a);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                Attr::decode(7, &bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(Attr::decode(7, &bytes[..10]).is_err());
    }
}
