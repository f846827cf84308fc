//! Attaching a reader: a read-only mount or a replica, which never writes to the bucket.

use std::sync::Arc;

use anyhow::{bail, Context};
use tracing::info;

use super::hot::PrewarmProgress;
use super::prefetch::Prefetch;
use super::probe::Probe;
use super::{Attached, BucketSettings, Found, Record, READ_ONLY_WRITER};
use crate::checkpoint::{open_checked_bucket, restore_of, BucketFetcher};
use crate::fs::Fs;
use crate::replica::{Follower, Following, REPLICA_WRITER};
use crate::store::ReadStore;

/// The checkpoint a reader serves: a replica restarted on its cache dir, the base it has (its
/// layer is on top); otherwise `--at`, or the latest.
pub(super) fn reader_at(
    settings: &BucketSettings,
    record: Option<&Record>,
) -> Option<crate::checkpoint::At> {
    match (&settings.replica, record) {
        (Some(_), Some(r)) => Some(crate::checkpoint::At::Epoch(r.epoch)),
        _ => settings.at,
    }
}

/// A read-only mount or a replica: a checkpoint served lazily like a restore. Neither takes
/// the bucket over nor checkpoints, so a live writer goes on undisturbed; the segments they
/// read are immutable, so the writer's later checkpoints cannot change them under them.
///
/// A read-only mount serves the latest checkpoint (or `--at`) as it is, and the kernel
/// refuses changes. A replica takes changes into the cache dir and keeps them there (its
/// copy-on-write layer), follows the bucket, and serves its WAL to a standby; restarted on
/// its cache dir it serves the same base with its layer on top.
pub(super) fn attach_reader(
    fs: &Arc<Fs>,
    settings: &BucketSettings,
    placed: crate::placement::PlacedStore,
    runtime: tokio::runtime::Runtime,
    url: &str,
    record: Option<Record>,
) -> anyhow::Result<Attached> {
    let (store, store_stats): (Arc<dyn ReadStore>, _) = (placed.store, placed.stats);
    let (marker, what) = match settings.replica {
        Some(_) => (REPLICA_WRITER, "a replica"),
        None => (READ_ONLY_WRITER, "a read-only mount"),
    };
    match &record {
        None if !fs.is_empty()? => bail!(
            "cache dir {} holds a filesystem of its own; {what} needs an empty cache dir",
            fs.root().display()
        ),
        Some(r) if r.url != url || r.writer != marker => bail!(
            "cache dir {} belongs to {} of {}; {what} needs an empty cache dir (or one {what} \
             of this bucket left)",
            fs.root().display(),
            match r.writer.as_str() {
                READ_ONLY_WRITER => "a read-only mount".to_string(),
                REPLICA_WRITER => "a replica".to_string(),
                w => format!("writer {w}"),
            },
            r.url
        ),
        _ => {}
    }
    let at = reader_at(settings, record.as_ref());
    // The placement's open checked the bucket, read its marker and the chain's start: the
    // rest of the chain is all that is left to read. (A replica restarted on its cache dir
    // has read them once more, with the GC state, in `must_start_afresh`.)
    let opened = if placed.formatted {
        open_checked_bucket(&*store, runtime.handle(), at, placed.start)
    } else {
        Err(crate::checkpoint::unformatted(&*store))
    }
    .with_context(|| format!("open bucket {url}"))?;
    let Some(latest) = &opened.latest else {
        bail!("bucket {url} has no checkpoint yet: there is nothing to serve");
    };
    let found = Found::of(&opened);
    let installed = record.is_none();
    match &record {
        None => {
            let r = restore_of(&opened.view);
            fs.install(r)
                .context("install the checkpoint's namespace")?;
        }
        Some(r) if r.epoch != latest.epoch && settings.replica.is_some() => bail!(
            "cache dir {} is a replica of epoch {} of {url}, which the bucket no longer holds \
             whole; start the replica on an empty cache dir",
            fs.root().display(),
            r.epoch
        ),
        Some(r) if r.epoch != latest.epoch => bail!(
            "cache dir {} holds epoch {} of {url}, and the bucket is at epoch {} now; mount it \
             read-only on an empty cache dir to see the newer checkpoint",
            fs.root().display(),
            r.epoch,
            latest.epoch
        ),
        Some(_) => {}
    }
    let record = Record {
        url: url.to_string(),
        writer: marker.into(),
        epoch: latest.epoch,
        taking_over: None,
    };
    fs.set_bucket_record(&serde_json::to_vec(&record).expect("a plain struct serializes"))?;
    let view = Arc::new(parking_lot::RwLock::new(opened.view));
    fs.set_fetcher(Arc::new(BucketFetcher::new(
        store.clone(),
        runtime.handle().clone(),
        view.clone(),
    )));
    let (follower, following) = match &settings.replica {
        Some(r) => {
            let follower = Arc::new(Follower::new(
                store.clone(),
                runtime.handle().clone(),
                r.wal_dir.clone(),
                &view.read(),
                latest.created_ms,
            ));
            crate::replica::wal::serve(follower.clone(), fs.root(), r.wal_uid)?;
            let following = Following::start(follower.clone())?;
            info!(bucket = %url, base_epoch = latest.epoch, writer = %latest.writer, restarted = !installed, "bucket attached as a replica: changes stay in the cache dir, nothing is written to the bucket");
            (Some(follower), Some(following))
        }
        None => {
            info!(bucket = %url, epoch = latest.epoch, writer = %latest.writer, "bucket attached read-only");
            (None, None)
        }
    };
    let progress = Arc::new(PrewarmProgress::default());
    let prefetch = installed
        .then(|| Prefetch::start(fs, store.clone(), runtime.handle(), progress.clone()))
        .transpose()?;
    let probe = Arc::new(Probe {
        url: url.to_string(),
        writer: None,
        view,
        checkpointer: None,
        store_stats,
        prewarm: progress,
        replica: follower,
    });
    Ok(Attached {
        found,
        writer: None,
        probe,
        prefetch,
        _following: following,
        _runtime: runtime,
    })
}
