//! Where a cut's bytes wait to be packed: an unnamed file in the cache dir, not the heap.
//!
//! The cut copies every dirty page out while the writers wait (docs/checkpoints.md, "Copy at
//! the cut"), and a cut can be as large as `--max-dirty`. Held in memory, that copy was the
//! mount's peak RSS (886 MiB with the defaults, BENCHMARKS.md). Written here instead, it sits
//! in the page cache, which the kernel reclaims as it needs, and the packer reads it back one
//! run at a time, so a checkpoint holds only the segments being built and uploaded.
//!
//! The file has no name (`O_TMPFILE`): a crash leaves nothing behind, and no other process
//! can open it. It is never synced: the pages it copies are still dirty in RocksDB until the
//! checkpoint commits, so a crash loses nothing but the copy.
//!
//! Staging never fails a checkpoint. Should the file not open, or a write to it fail (a full
//! cache disk), the run is kept in memory instead, as before this file existed, and a warning
//! says so once per cut.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use tracing::warn;

/// One run of pages a cut took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedRun {
    pub ino: u64,
    pub first_page: u64,
    pub pages: u32,
    /// Bytes (the last page may be short at the end of a file).
    pub len: u32,
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

/// A cut's runs, in the order the cut took them.
pub struct Staging {
    file: Option<File>,
    /// Bytes written to the file by this cut.
    file_len: u64,
    runs: Vec<StagedRun>,
    /// Runs that could not go to the file.
    in_memory: Vec<Vec<u8>>,
    /// A staging failure was already reported for this cut.
    warned: bool,
}

impl Staging {
    /// A staging file in `dir` (the cache dir, so on the disk the cache files are on).
    pub fn in_dir(dir: &Path) -> Staging {
        match open_unnamed(dir) {
            Ok(file) => Staging::with_file(Some(file)),
            Err(e) => {
                warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot open a staging file for checkpoints; cuts are held in memory"
                );
                Staging::with_file(None)
            }
        }
    }

    /// Staging on `file` (None: everything in memory). For tests of the fallback.
    pub fn with_file(file: Option<File>) -> Staging {
        Staging {
            file,
            file_len: 0,
            runs: Vec::new(),
            in_memory: Vec::new(),
            warned: false,
        }
    }

    /// Forgets the last cut's runs and gives the file's space back.
    pub fn clear(&mut self) {
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

    /// Adds one run. Never fails: a run the file cannot take is kept in memory.
    pub fn push(&mut self, ino: u64, first_page: u64, pages: u32, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("a run is at most a few MiB");
        let at = match self.write(bytes) {
            Ok(at) => at,
            Err(e) => {
                if !self.warned {
                    self.warned = true;
                    warn!(
                        error = %e,
                        "cannot write the checkpoint staging file; this cut's remaining runs \
                         are held in memory"
                    );
                }
                self.in_memory.push(bytes.to_vec());
                At::Memory(self.in_memory.len() - 1)
            }
        };
        self.runs.push(StagedRun {
            ino,
            first_page,
            pages,
            len,
            at,
        });
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<At> {
        let Some(f) = &self.file else {
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

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Bytes of the runs kept in memory (0 unless staging failed).
    #[cfg(test)]
    pub fn memory_bytes(&self) -> u64 {
        self.in_memory.iter().map(|b| b.len() as u64).sum()
    }

    /// The bytes of `run`, read into `buf` if they are in the file.
    pub fn bytes<'a>(&'a self, run: &StagedRun, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        match run.at {
            At::Memory(n) => Ok(&self.in_memory[n]),
            At::File(at) => {
                let f = self
                    .file
                    .as_ref()
                    .expect("a run is in the file only if there is one");
                buf.clear();
                buf.resize(run.len as usize, 0);
                f.read_exact_at(buf, at)?;
                Ok(buf)
            }
        }
    }
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
        let mut s = Staging::in_dir(dir.path());
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
        s.clear();
        assert!(s.is_empty());
        s.push(1, 0, 1, &run_bytes(4, 8192));
        assert_eq!(read_all(&s), vec![(1, 0, 1, run_bytes(4, 8192))]);
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
}
