//! The checkpointer's loop: a checkpoint at each interval, when asked (`--max-dirty`, a
//! remote fsync) and for heartbeats, a look for another writer while idle, and the wait of a
//! `--durability remote` fsync for the commit that covers it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::{CheckpointError, Checkpointer};
use crate::fs::{FsError, PAGE_SIZE};

impl Checkpointer {
    /// Asks the running loop for a checkpoint now (`--max-dirty` reached, or a remote fsync
    /// begins). One that has not started yet serves every request made before it cuts.
    pub fn request(&self) {
        let mut wanted = self.wanted.lock();
        *wanted = true;
        self.wanted_cv.notify_one();
    }

    /// Checkpoints every `interval` until `stop` is set; errors are logged and retried at the
    /// next tick (the pages stay dirty), except fencing and a failed flush or commit in the
    /// cache dir, which end the loop.
    pub fn run(&self, stop: &AtomicBool) {
        let tick = Duration::from_millis(50);
        let mut last = Instant::now();
        let mut failed = false;
        // The last commit, or the last look for another writer, whichever is later: both
        // show that this mount was still the writer then.
        let mut last_commit = Instant::now();
        let mut last_check = Instant::now();
        while !stop.load(Ordering::Acquire) {
            {
                // Sleep until the next tick or until a remote-durability fsync asks.
                let mut wanted = self.wanted.lock();
                if !*wanted {
                    self.wanted_cv.wait_for(&mut wanted, tick);
                }
                // The dirty-bytes trigger waits out the interval after a failure, so that an
                // outage is not hammered every tick.
                let early =
                    !failed && self.fs.unsafe_pages() * PAGE_SIZE >= self.settings.dirty_trigger;
                // A heartbeat may be due before the interval is up (so may not be missed).
                let heartbeat = !failed
                    && self
                        .settings
                        .heartbeat
                        .is_some_and(|h| last_commit.elapsed() >= h);
                let checkpoint_due =
                    *wanted || early || heartbeat || last.elapsed() >= self.settings.interval;
                if !checkpoint_due {
                    continue;
                }
                *wanted = false;
            }
            last = Instant::now();
            failed = false;
            let heartbeat = self
                .settings
                .heartbeat
                .is_some_and(|h| last_commit.elapsed() >= h);
            match self.checkpoint_with(false, heartbeat) {
                Ok(Some(_)) => {
                    last_commit = Instant::now();
                    last_check = last_commit;
                }
                Ok(None) => {
                    let due = self
                        .settings
                        .writer_check
                        .is_some_and(|w| last_check.elapsed() >= w);
                    if due {
                        last_check = Instant::now();
                        match self.check_writer() {
                            Ok(()) => {}
                            Err(e @ CheckpointError::Fenced { .. }) => {
                                error!(error = %e, "checkpointer stops");
                                return;
                            }
                            Err(e) => {
                                warn!(error = %e, "could not look for another writer; trying again later")
                            }
                        }
                    }
                }
                Err(e @ CheckpointError::Fenced { .. }) => {
                    error!(error = %e, "checkpointer stops");
                    return;
                }
                Err(CheckpointError::CacheFailed { .. }) => return, // logged when it stopped
                Err(e) => {
                    failed = true;
                    warn!(error = %e, "checkpoint failed; the pages stay dirty and the next one retries")
                }
            }
        }
    }
}

impl crate::fs::RemoteSync for Checkpointer {
    fn request(&self) {
        Checkpointer::request(self)
    }

    fn wait_committed(&self, epoch: u64) -> Result<(), FsError> {
        let mut covered = self.covered.lock();
        // The fsync asked for a checkpoint when it began (`request`), after it read `epoch`:
        // whichever checkpoint takes that request up cuts at `epoch` or later. Asking again
        // now would only queue one more after it, which the next fsync would wait behind.
        let mut ask = false;
        while *covered < epoch {
            if self.fenced.load(Ordering::Acquire) {
                return Err(FsError::Fenced);
            }
            if self.fs.cache_failed() {
                return Err(FsError::CacheFailed);
            }
            if ask {
                self.request();
            }
            // Ask again when no commit came for a while: the checkpoint that would have
            // covered us may have failed, and the next one is due only at the interval. (One
            // slower than that gets one more queued behind it: harmless.)
            ask = self
                .covered_cv
                .wait_for(&mut covered, Duration::from_millis(500))
                .timed_out();
        }
        // Covered, but if a flush has failed since, that commit may hold older bytes of what
        // this fsync covers (the upload reads through the page cache).
        if self.fs.cache_failed() {
            return Err(FsError::CacheFailed);
        }
        Ok(())
    }
}
