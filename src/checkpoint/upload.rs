//! A checkpoint's segments: packed from the cut's runs as they are read, each uploaded as
//! soon as it is full, a bounded number in flight.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::layout::{manifest_key, segment_key};
use super::{CheckpointError, Checkpointer, Sent, Upload};
use crate::manifest::segment::SegmentBuilder;
use crate::manifest::Extent;
use crate::store::{ObjectStore, PutMode, StoreError};

impl Checkpointer {
    /// Packs the cut's runs into segments and uploads each as soon as it is full: WAL pages
    /// and the rest never share a segment (their classes may live in different buckets, and
    /// WAL dies young). At most `upload_concurrency + 1` segments are in memory at once, being
    /// built or uploaded: a builder takes a permit when it starts and its upload gives it back,
    /// so packing waits for the bucket instead of building the whole cut in memory. The first
    /// failed upload ends it (those in flight are dropped; the caller puts the pages back).
    pub(super) fn pack_and_upload(
        &self,
        cut: &crate::fs::Cut,
        epoch: u64,
        may_carry: bool,
    ) -> Result<Sent, CheckpointError> {
        self.upload_progress_from(0);
        let result = self.pack_and_upload_runs(cut, epoch, may_carry);
        self.upload_progress_from(0);
        result
    }

    fn pack_and_upload_runs(
        &self,
        cut: &crate::fs::Cut,
        epoch: u64,
        may_carry: bool,
    ) -> Result<Sent, CheckpointError> {
        let level = self.settings.zstd_level;
        // Two builders may hold a permit each at once: with fewer than two, neither could
        // ever finish.
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.settings.upload_concurrency.max(1) + 1,
        ));
        // Of those, at most `upload_concurrency` are being uploaded (the others are filling).
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            self.settings.upload_concurrency.max(1),
        ));
        let mut uploads = tokio::task::JoinSet::new();
        let mut sent = Sent::default();
        let mut builders: [Option<(SegmentBuilder, tokio::sync::OwnedSemaphorePermit)>; 2] =
            [None, None];
        let mut buf = Vec::new();
        for run in &cut.runs {
            let wal = cut.wal.contains(&run.ino);
            let slot = &mut builders[usize::from(wal)];
            let (builder, _) = match slot {
                Some(open) => open,
                None => {
                    let permit = self
                        .rt
                        .block_on(permits.clone().acquire_owned())
                        .expect("the semaphore is never closed");
                    slot.insert((SegmentBuilder::compressing(level), permit))
                }
            };
            self.fs.read_cut_run(run, &mut buf)?;
            builder.push_run(run.ino, run.first_page, run.pages, &buf);
            if builder.len() >= self.settings.segment_bytes {
                let (full, permit) = slot.take().expect("the slot was filled above");
                let upload = Upload {
                    permit,
                    in_flight: in_flight.clone(),
                    cut_no: cut.epoch,
                    wal,
                };
                self.send(full, upload, epoch, &mut sent, &mut uploads);
            }
            // Fail fast: a failed upload stops the packing.
            while let Some(done) = uploads.try_join_next() {
                done.expect("upload task does not panic")?;
                crate::failpoint::hit("after-segment-put");
            }
        }
        let open: u64 = builders.iter().flatten().map(|(b, _)| b.len()).sum();
        if may_carry && sent.segments == 0 && open > 0 && open <= self.settings.inline_bytes {
            // Nothing sent yet and little to send: the runs travel in the manifest.
            let mut parts = builders.into_iter().flatten().map(|(b, _)| b);
            let mut one = parts.next().expect("something is open");
            parts.for_each(|b| one.append(b));
            let (bytes, runs) = one.finish();
            let key: Arc<str> = manifest_key(epoch).into();
            sent.extents.extend(runs.into_iter().map(|mut r| {
                r.offset += crate::manifest::INLINE_OFFSET;
                Extent::whole(key.clone(), r)
            }));
            // Counted with the manifest, whose PUT sends them (not as segment bytes, whose
            // upload time gives the upload rate a stop's budget is planned with).
            sent.inline = bytes;
            return Ok(sent);
        }
        for (i, slot) in builders.into_iter().enumerate() {
            if let Some((builder, permit)) = slot {
                let upload = Upload {
                    permit,
                    in_flight: in_flight.clone(),
                    cut_no: cut.epoch,
                    wal: i == 1,
                };
                self.send(builder, upload, epoch, &mut sent, &mut uploads);
            }
        }
        self.rt.block_on(async {
            while let Some(done) = uploads.join_next().await {
                done.expect("upload task does not panic")?;
                crate::failpoint::hit("after-segment-put");
            }
            Ok::<_, CheckpointError>(())
        })?;
        Ok(sent)
    }

    /// Seals `builder` as the next segment of this checkpoint and starts its upload, which
    /// gives the builder's permit back when it ends.
    fn send(
        &self,
        builder: SegmentBuilder,
        upload: Upload,
        epoch: u64,
        sent: &mut Sent,
        uploads: &mut tokio::task::JoinSet<Result<(), StoreError>>,
    ) {
        let Upload {
            permit,
            in_flight,
            cut_no,
            wal,
        } = upload;
        let key = segment_key(epoch, &self.writer, cut_no, sent.segments, wal);
        let shared: Arc<str> = key.as_str().into();
        let (bytes, runs) = builder.finish();
        sent.extents
            .extend(runs.into_iter().map(|r| Extent::whole(shared.clone(), r)));
        let len = bytes.len() as u64;
        sent.segments += 1;
        sent.bytes += len;
        self.upload_total.fetch_add(len, Ordering::AcqRel);
        let put = put_segment(self.store.clone(), key, bytes, self.upload_sent.clone());
        uploads.spawn_on(
            async move {
                let turn = in_flight
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let r = put.await;
                drop((turn, permit));
                r
            },
            &self.rt,
        );
    }

    /// Starts the upload progress over: nothing sent of `total`.
    fn upload_progress_from(&self, total: u64) {
        self.upload_total.store(total, Ordering::Release);
        self.upload_sent.store(0, Ordering::Release);
    }
}

/// PUTs one segment, and counts its bytes as sent once the bucket has them.
pub(super) async fn put_segment(
    store: Arc<dyn ObjectStore>,
    key: String,
    bytes: Vec<u8>,
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), StoreError> {
    let len = bytes.len() as u64;
    store
        .put(&key, Bytes::from(bytes), PutMode::Overwrite)
        .await?;
    progress.fetch_add(len, Ordering::AcqRel);
    Ok(())
}
