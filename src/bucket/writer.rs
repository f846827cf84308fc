//! The writer's half of an attached bucket: the checkpointer's and GC's threads while it is
//! mounted, and at unmount the final checkpoint, its progress in the log, and the hot set a
//! clean stop records for the next cold start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use tracing::{error, info, info_span, warn};

use super::hot::{HotSet, HOT_SET_KEY};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::fs::Fs;
use crate::store::ObjectStore;

/// The writer's half: the checkpointer thread, and what a clean stop records.
pub(super) struct Writing {
    checkpointer: Arc<Checkpointer>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// GC passes (waited for after the final checkpoint; a pass under way deletes nothing
    /// more once `stop` is set).
    gc_thread: Option<JoinHandle<()>>,
    fs: Arc<Fs>,
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Handle,
}

impl Writing {
    /// Starts the checkpointer's thread and GC's beside it (GC's ends at once when GC is off).
    pub(super) fn start(
        checkpointer: Arc<Checkpointer>,
        fs: Arc<Fs>,
        store: Arc<dyn ObjectStore>,
        rt: tokio::runtime::Handle,
    ) -> anyhow::Result<Writing> {
        let stop = Arc::new(AtomicBool::new(false));
        let (cp, halt) = (checkpointer.clone(), stop.clone());
        let thread = spawn_in(
            "checkpointer",
            info_span!(parent: None, "checkpointer"),
            move || cp.run(&halt),
        )?;
        // GC beside the checkpoints, not between them.
        let (cp, halt) = (checkpointer.clone(), stop.clone());
        let gc_thread = spawn_in("gc", info_span!(parent: None, "gc"), move || {
            cp.run_gc(&halt)
        })?;
        Ok(Writing {
            checkpointer,
            stop,
            thread: Some(thread),
            gc_thread: Some(gc_thread),
            fs,
            store,
            rt,
        })
    }
}

/// Starts `run` on a thread named `name`, inside `span`.
fn spawn_in(
    name: &str,
    span: tracing::Span,
    run: impl FnOnce() + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || span.in_scope(run))
        .with_context(|| format!("start the {name} thread"))
}

impl Writing {
    /// Stops the periodic checkpoints and takes the final one, marked as a clean stop. It
    /// does not wait for a GC pass under way (`wait_for_gc` does, after it): a writer's first
    /// pass reads every manifest of the window, which under `--durability remote` may take
    /// longer than the platform waits for a stop. Once `stop` is set the pass deletes nothing
    /// more and its compaction commits nothing, so the final checkpoint stays the last
    /// manifest of this mount.
    pub(super) fn final_checkpoint(&mut self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        info!(
            dirty_bytes = self.fs.unsafe_pages() * crate::fs::PAGE_SIZE,
            "final checkpoint: uploading what the bucket does not have yet"
        );
        let (fs, cp) = (self.fs.clone(), self.checkpointer.clone());
        let (done, finished) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(move || report_final_progress(&fs, &cp, started, &finished));
            let r = self.stop_and_checkpoint();
            drop(done);
            r
        })
    }

    /// Waits for a GC pass under way to end: it records what it found waiting (the next
    /// start's grace goes on from there), unless another pass wrote `gc/state` meanwhile, and
    /// deletes nothing more.
    pub(super) fn wait_for_gc(mut self) {
        if let Some(t) = self.gc_thread.take() {
            if self.checkpointer.gc_pass_under_way() {
                info!("waiting for the GC pass under way to record what it found (it collects nothing more)");
            }
            let _ = t.join();
        }
    }

    fn stop_and_checkpoint(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        // A checkpoint in flight finishes first, and counts in the progress reports.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let started = std::time::Instant::now();
        match self.checkpointer.checkpoint(true) {
            Ok(o) => {
                info!(
                    epoch = o.map(|o| o.epoch),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "final checkpoint committed"
                );
                let t = self.checkpointer.totals();
                info!(
                    checkpoints = t.checkpoints,
                    segments = t.segments,
                    segment_bytes = t.segment_bytes,
                    manifest_bytes = t.manifest_bytes,
                    "checkpoint totals for this mount"
                );
                self.record_hot_set();
                Ok(())
            }
            Err(e @ CheckpointError::CacheFailed { .. }) => {
                error!(error = %e, "no final checkpoint");
                Err(e).context("final checkpoint")
            }
            Err(e) => {
                error!(error = %e, "final checkpoint failed: the bucket lacks the last changes (the cache dir has them)");
                Err(e).context("final checkpoint")
            }
        }
    }
}

/// Logs every few seconds how much the final checkpoint has left to upload, until `finished`
/// disconnects. On Fly the stop has at most `kill_timeout`: whoever reads the log should see
/// whether it will make it.
fn report_final_progress(
    fs: &Fs,
    cp: &Checkpointer,
    started: std::time::Instant,
    finished: &std::sync::mpsc::Receiver<()>,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(EVERY) {
        let p = cp.upload_progress();
        info!(
            bytes_left = fs.unsafe_pages() * crate::fs::PAGE_SIZE,
            segment_bytes_sent = p.sent,
            segment_bytes_to_send = p.total.saturating_sub(p.sent),
            elapsed_s = started.elapsed().as_secs(),
            "final checkpoint: in progress"
        );
    }
}

impl Writing {
    /// Records the hot set in the bucket for the next cold start's prefetch and prewarm.
    /// Best effort: a failure costs the next cold start its prewarm, nothing else.
    fn record_hot_set(&self) {
        let epoch = self.checkpointer.view().read().epoch;
        let hot = HotSet::of(&self.fs, epoch, self.checkpointer.writer());
        let body =
            crate::cache::seal(&serde_json::to_string(&hot).expect("a plain struct serializes"));
        let len = body.len();
        match self.rt.block_on(self.store.put(
            HOT_SET_KEY,
            bytes::Bytes::from(body),
            crate::store::PutMode::Overwrite,
        )) {
            Ok(_) => info!(
                chunks = hot.chunks(),
                files = hot.files.len(),
                first_reads = hot.first_reads.len(),
                bytes = len,
                "hot set recorded for the next cold start's prewarm"
            ),
            Err(e) => {
                warn!(error = %e, "could not record the hot set; the next cold start has no prewarm")
            }
        }
    }
}
