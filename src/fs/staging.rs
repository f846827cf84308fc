//! Where the bytes of a cut wait when a writer changes them before the upload has read them:
//! an unnamed file in the cache dir past a memory budget, not the heap.
//!
//! A cut no longer copies the dirty pages while the writers wait (docs/checkpoints.md,
//! "Copy-on-write at the cut"): the upload reads them from the cache files afterwards, and a
//! writer about to change a page the upload has not read yet first copies the page's bytes
//! here (`Fs::freeze`). Most cuts freeze nothing or a few pages, but a cut can be as large as
//! `--max-dirty`, and a writer may rewrite all of it during the upload. Held in memory, that
//! was the mount's peak RSS (886 MiB with the defaults, BENCHMARKS.md, when the cut copied
//! everything into the heap). Past `MEMORY_BUDGET` the copies go to this file instead, which
//! sits in the page cache, which the kernel reclaims as it needs.
//!
//! The file has no name (`O_TMPFILE`): a crash leaves nothing behind, and no other process
//! can open it. It is never synced: the pages it copies are still dirty in RocksDB until the
//! checkpoint commits, so a crash loses nothing but the copy.
//!
//! Each run carries the crc32c of the bytes copied, checked when it is read back: a page the
//! kernel lost on the way through the disk (a failed writeback, a late ENOSPC) fails the
//! checkpoint, whose pages then stay dirty, instead of uploading other bytes under a checksum
//! computed on them.
//!
//! Staging never fails by itself. Should the file not open, a write to it fail, or the disk
//! have too little room for the copies with a margin to spare (the cache files and Postgres's
//! own writes need it more), the runs are kept in memory instead, and a warning says so.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

/// One run of pages a cut took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedRun {
    pub ino: u64,
    pub first_page: u64,
    pub pages: u32,
    /// Bytes (the last page may be short at the end of a file).
    pub len: u32,
    /// crc32c of the bytes as the cut took them.
    crc: u32,
    at: At,
}

/// Where a run's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// At this offset of the staging file.
    File(u64),
    /// The `n`th of the runs kept in memory.
    Memory(usize),
}

/// Room the cache disk keeps free beyond a staged cut: below it, the cut stays in memory.
const DISK_MARGIN: u64 = 256 << 20;

/// A cut's first frozen bytes are kept in memory up to this much; the rest go to the file. It
/// adds at most this to the mount's peak memory (BENCHMARKS.md, "Streaming checkpoints").
pub const MEMORY_BUDGET: u64 = 16 << 20;

/// A cut's runs, in the order the cut took them.
pub struct Staging {
    /// Where the file is made (None: never; tests of the fallback).
    dir: Option<PathBuf>,
    file: Option<File>,
    /// Runs are kept in memory until they reach this many bytes.
    budget: u64,
    /// Bytes this cut expects (`begin`), for the room check.
    expected: u64,
    /// Bytes of this cut kept in memory.
    memory_len: u64,
    /// This cut has gone past the budget: its other runs go to the file.
    spilled: bool,
    /// This cut keeps its runs in memory (no file, or the disk is short of room).
    to_memory: bool,
    /// Bytes written to the file by this cut.
    file_len: u64,
    runs: Vec<StagedRun>,
    /// Runs that could not go to the file.
    in_memory: Vec<Vec<u8>>,
    /// A staging failure was already reported for this cut.
    warned: bool,
}

impl Staging {
    /// Staging in `dir` (the cache dir, so on the disk the cache files are on). The file is
    /// made at the first `begin`.
    pub fn in_dir(dir: &Path) -> Staging {
        Staging {
            dir: Some(dir.to_owned()),
            budget: MEMORY_BUDGET,
            ..Staging::with_file(None)
        }
    }

    /// The same with another memory budget (tests: 0 sends every run to the file).
    #[cfg(test)]
    pub fn with_memory_budget(mut self, budget: u64) -> Staging {
        self.budget = budget;
        self
    }

    /// Sets the memory budget from the next `begin` on.
    pub fn set_memory_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    /// Staging on `file` (None: everything in memory). For tests of the fallback.
    pub fn with_file(file: Option<File>) -> Staging {
        Staging {
            dir: None,
            file,
            budget: 0,
            expected: 0,
            memory_len: 0,
            spilled: false,
            to_memory: false,
            file_len: 0,
            runs: Vec::new(),
            in_memory: Vec::new(),
            warned: false,
        }
    }

    /// Gets ready for a cut of `expected` bytes, at most, to copy: forgets the last cut. The
    /// file is only touched once the copies go past the memory budget.
    pub fn begin(&mut self, expected: u64) {
        self.clear();
        self.expected = expected;
    }

    /// The cut goes past the memory budget: opens the file if it is not open yet (a failure
    /// is tried again at the next cut), and keeps the rest of this cut in memory if the disk
    /// lacks room for it and `DISK_MARGIN` beside.
    fn spill(&mut self) {
        self.spilled = true;
        let expected = self.expected.saturating_sub(self.memory_len);
        let Some(dir) = &self.dir else {
            return;
        };
        if self.file.is_none() {
            match open_unnamed(dir) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.to_memory = true;
                    self.warn(&format!(
                        "cannot open a staging file in {}: {e}; this cut is held in memory",
                        dir.display()
                    ));
                    return;
                }
            }
        }
        match free_bytes(dir) {
            Ok(free) if free < expected.saturating_add(DISK_MARGIN) => {
                self.to_memory = true;
                self.warn(&format!(
                    "the cache disk has {free} bytes free, too few to stage a cut of about \
                     {expected} bytes beside a margin of {DISK_MARGIN}; this cut is held in \
                     memory"
                ));
            }
            Ok(_) => {}
            // The write itself will tell.
            Err(_) => {}
        }
    }

    /// One warning per cut.
    fn warn(&mut self, message: &str) {
        if !self.warned {
            self.warned = true;
            warn!("checkpoint staging: {message}");
        }
    }

    /// Forgets the last cut's runs and gives the file's space back.
    pub fn clear(&mut self) {
        self.to_memory = false;
        self.spilled = false;
        self.expected = 0;
        self.memory_len = 0;
        self.runs.clear();
        self.in_memory = Vec::new();
        self.warned = false;
        if self.file_len > 0 {
            if let Some(f) = &self.file {
                if let Err(e) = f.set_len(0) {
                    // The next cut writes over the old bytes; only the space is not back yet.
                    warn!(error = %e, "cannot truncate the checkpoint staging file");
                }
            }
            self.file_len = 0;
        }
    }

    /// Adds one run and returns its index in `runs()`. Never fails: a run the file cannot take
    /// is kept in memory.
    pub fn push(&mut self, ino: u64, first_page: u64, pages: u32, bytes: &[u8]) -> usize {
        let len = u32::try_from(bytes.len()).expect("a run is at most a few MiB");
        if !self.spilled && self.memory_len + u64::from(len) > self.budget {
            self.spill();
        }
        let at = if self.spilled {
            match self.write(bytes) {
                Ok(at) => Some(at),
                Err(e) => {
                    if self.file.is_some() && !self.to_memory {
                        self.warn(&format!(
                            "cannot write the staging file: {e}; this cut's remaining runs \
                             are held in memory"
                        ));
                        self.to_memory = true;
                    }
                    None
                }
            }
        } else {
            None
        };
        let at = at.unwrap_or_else(|| {
            self.memory_len += u64::from(len);
            self.in_memory.push(bytes.to_vec());
            At::Memory(self.in_memory.len() - 1)
        });
        self.runs.push(StagedRun {
            ino,
            first_page,
            pages,
            len,
            crc: crc32c::crc32c(bytes),
            at,
        });
        self.runs.len() - 1
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<At> {
        let Some(f) = self.file.as_ref().filter(|_| !self.to_memory) else {
            return Err(io::Error::other("no staging file"));
        };
        let at = self.file_len;
        f.write_all_at(bytes, at)?;
        self.file_len += bytes.len() as u64;
        Ok(At::File(at))
    }

    pub fn runs(&self) -> &[StagedRun] {
        &self.runs
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Bytes of the runs kept in memory: within the budget, or because the file failed.
    #[cfg(test)]
    pub fn memory_bytes(&self) -> u64 {
        self.in_memory.iter().map(|b| b.len() as u64).sum()
    }

    /// The bytes of `run`, read into `buf` if they are in the file; an error if they are not
    /// the bytes the cut took.
    pub fn bytes<'a>(&'a self, run: &StagedRun, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        let bytes: &[u8] = match run.at {
            At::Memory(n) => &self.in_memory[n],
            At::File(at) => {
                let f = self
                    .file
                    .as_ref()
                    .expect("a run is in the file only if there is one");
                buf.clear();
                buf.resize(run.len as usize, 0);
                f.read_exact_at(buf, at)?;
                buf
            }
        };
        if crc32c::crc32c(bytes) != run.crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the staged run of ino={} first_page={} pages={} came back with other bytes \
                     than the cut took (crc32c mismatch)",
                    run.ino, run.first_page, run.pages
                ),
            ));
        }
        Ok(bytes)
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a valid statvfs to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// An unnamed file in `dir`; where the filesystem has no `O_TMPFILE`, a named one unlinked at
/// once.
fn open_unnamed(dir: &Path) -> io::Result<File> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(f) => Ok(f),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
            ) =>
        {
            let path = dir.join(".checkpoint-staging");
            // A crash between the create and the unlink below leaves this name; take it over.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    fn read_all(s: &Staging) -> Vec<(u64, u64, u32, Vec<u8>)> {
        let mut buf = Vec::new();
        s.runs()
            .iter()
            .map(|r| {
                let b = s.bytes(r, &mut buf).expect("read staged run").to_vec();
                (r.ino, r.first_page, r.pages, b)
            })
            .collect()
    }

    #[test]
    fn runs_come_back_in_order_with_their_bytes_and_leave_the_heap_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Staging::in_dir(dir.path()).with_memory_budget(0);
        s.begin(1 << 20);
        let want = vec![
            (7, 0, 32, run_bytes(1, 32 * 8192)),
            (7, 40, 1, run_bytes(2, 100)),
            (9, 3, 2, run_bytes(3, 2 * 8192)),
        ];
        for (ino, first, pages, b) in &want {
            s.push(*ino, *first, *pages, b);
        }
        assert_eq!(read_all(&s), want);
        assert_eq!(s.memory_bytes(), 0, "every run went to the file");
        // Unnamed: nothing in the cache dir shows it.
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        s.begin(8192);
        assert!(s.is_empty());
        s.push(1, 0, 1, &run_bytes(4, 8192));
        assert_eq!(read_all(&s), vec![(1, 0, 1, run_bytes(4, 8192))]);
    }

    #[test]
    fn a_small_cut_stays_in_memory_and_a_large_one_goes_to_the_file_past_the_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Staging::in_dir(dir.path()).with_memory_budget(3 * 8192);
        s.begin(2 * 8192);
        let small = vec![(1, 0, 1, run_bytes(1, 8192)), (2, 5, 1, run_bytes(2, 8192))];
        for (ino, first, pages, b) in &small {
            s.push(*ino, *first, *pages, b);
        }
        assert_eq!(read_all(&s), small);
        assert_eq!(s.memory_bytes(), 2 * 8192);
        assert!(
            s.file.is_none(),
            "a cut within the budget never opens the file"
        );
        s.begin(10 * 8192);
        let large: Vec<_> = (0..6u64)
            .map(|n| (3, n * 2, 1, run_bytes(n as u8, 8192)))
            .collect();
        for (ino, first, pages, b) in &large {
            s.push(*ino, *first, *pages, b);
        }
        assert_eq!(read_all(&s), large, "in the order the cut took them");
        assert_eq!(
            s.memory_bytes(),
            3 * 8192,
            "the first three, within the budget"
        );
        assert_eq!(s.file_len, 3 * 8192, "the other three in the file");
        // A run that alone exceeds what is left of the budget goes to the file, and so does
        // every run after it, even one that would fit.
        s.begin(4 * 8192);
        s.push(4, 0, 2, &run_bytes(7, 2 * 8192));
        s.push(4, 2, 2, &run_bytes(8, 2 * 8192));
        s.push(4, 4, 1, &run_bytes(9, 100));
        assert_eq!(s.memory_bytes(), 2 * 8192);
        assert_eq!(s.file_len, 2 * 8192 + 100);
        assert_eq!(
            read_all(&s),
            vec![
                (4, 0, 2, run_bytes(7, 2 * 8192)),
                (4, 2, 2, run_bytes(8, 2 * 8192)),
                (4, 4, 1, run_bytes(9, 100))
            ]
        );
    }

    #[test]
    fn a_file_that_refuses_writes_keeps_the_runs_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").expect("create");
        let read_only = File::open(&path).expect("open read-only");
        let mut s = Staging::with_file(Some(read_only));
        s.push(5, 0, 1, &run_bytes(9, 8192));
        s.push(5, 1, 1, &run_bytes(10, 8192));
        assert_eq!(
            read_all(&s),
            vec![
                (5, 0, 1, run_bytes(9, 8192)),
                (5, 1, 1, run_bytes(10, 8192))
            ]
        );
        assert_eq!(s.memory_bytes(), 2 * 8192);
        let mut none = Staging::with_file(None);
        none.push(1, 2, 1, &run_bytes(11, 10));
        assert_eq!(read_all(&none), vec![(1, 2, 1, run_bytes(11, 10))]);
    }

    #[test]
    fn a_cut_larger_than_the_room_on_the_disk_stays_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Staging::in_dir(dir.path()).with_memory_budget(0);
        s.begin(u64::MAX / 2);
        s.push(3, 0, 1, &run_bytes(5, 8192));
        assert_eq!(read_all(&s), vec![(3, 0, 1, run_bytes(5, 8192))]);
        assert_eq!(s.memory_bytes(), 8192, "no room on the disk: in memory");
        // The next cut, small, goes to the file again.
        s.begin(8192);
        s.push(3, 1, 1, &run_bytes(6, 8192));
        assert_eq!(s.memory_bytes(), 0);
        assert_eq!(read_all(&s), vec![(3, 1, 1, run_bytes(6, 8192))]);
    }

    #[test]
    fn a_run_that_comes_back_changed_from_the_disk_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Staging::in_dir(dir.path()).with_memory_budget(0);
        s.begin(1 << 20);
        s.push(4, 0, 2, &run_bytes(7, 2 * 8192));
        s.push(4, 2, 1, &run_bytes(8, 8192));
        // What a lost writeback looks like: a page of the first run reads back as zeros.
        let f = s.file.as_ref().expect("the staging file is open");
        f.write_all_at(&[0; 8192], 8192).expect("damage the file");
        let mut buf = Vec::new();
        let err = s.bytes(&s.runs()[0], &mut buf).expect_err("damaged run");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("ino=4 first_page=0"), "{err}");
        // The other run is whole.
        assert_eq!(
            s.bytes(&s.runs()[1], &mut buf).expect("whole run"),
            run_bytes(8, 8192)
        );
    }
}
