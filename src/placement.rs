//! Where each class of objects lives (`--bucket-wal`, `--bucket-data`, `--region-hint`), and
//! opening a bucket's store with its classes routed (docs/replicas.md, "Placement by class").
//!
//! The split is chosen when the filesystem is created and recorded in its format marker, in
//! the manifest bucket (`--bucket`): objects are found by their key's class, so moving a class
//! later would lose every object already written. Everything that opens a bucket (a writer, a
//! restore on an empty disk, a replica, `ls`, `gc`, `verify`, `wal-fetch --bucket`) reads the
//! record and needs nothing but `--bucket`; flags that disagree with the record are refused.
//!
//! Each class bucket holds a marker that names the filesystem it belongs to: GC deletes what
//! no checkpoint names, so a class prefix shared with another filesystem would lose that
//! one's segments. Region hints are not recorded: they apply to the PUTs of whoever writes.

use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::bucket::BucketUrl;
use crate::checkpoint::FORMAT_KEY;
use crate::store::placement::{Class, Placed, Target};
use crate::store::{
    InstrumentedStore, LocalStore, ObjectStore, PutMode, ReadStore, RetryPolicy, RetryingStore,
    S3Settings, S3Store, StoreError, StoreStats,
};

/// The marker in each class bucket (at its prefix).
pub const CLASS_MARKER_KEY: &str = "bucketfs-class.json";

/// Where the classes go, as configured. None: with the manifests (or, for a filesystem that
/// exists, as it records).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub wal: Option<BucketUrl>,
    pub data: Option<BucketUrl>,
    /// Tigris regions for each class's PUTs, in the order of `Class::ALL`.
    pub regions: [Option<String>; 3],
}

impl Placement {
    fn url(&self, class: Class) -> Option<&BucketUrl> {
        match class {
            Class::Manifest => None,
            Class::Wal => self.wal.as_ref(),
            Class::Data => self.data.as_ref(),
        }
    }

    /// Parses `--region-hint CLASS=REGIONS` values.
    pub fn set_region_hints(&mut self, hints: &[String]) -> anyhow::Result<()> {
        for hint in hints {
            let Some((class, regions)) = hint.split_once('=') else {
                bail!("--region-hint {hint:?}: expected CLASS=REGIONS (e.g. data=fra,sin)");
            };
            let Some(class) = Class::parse(class) else {
                bail!("--region-hint {hint:?}: the classes are manifest, wal and data");
            };
            crate::store::s3::check_regions(regions)
                .map_err(|e| anyhow::anyhow!("--region-hint {hint:?}: {e}"))?;
            self.regions[class as usize] = Some(regions.to_string());
        }
        Ok(())
    }
}

/// What the format marker records of the split (URLs as `BucketUrl` prints them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Recorded {
    pub fn is_split(&self) -> bool {
        self.wal.is_some() || self.data.is_some()
    }

    fn get(&self, class: Class) -> Option<&String> {
        match class {
            Class::Manifest => None,
            Class::Wal => self.wal.as_ref(),
            Class::Data => self.data.as_ref(),
        }
    }
}

/// The claim on a class bucket: sealed with a checksum, versioned.
#[derive(Debug, Serialize, Deserialize)]
struct ClassMarker {
    format: String,
    version: u32,
    /// The manifest bucket of the filesystem these objects belong to.
    owner: String,
}

const CLASS_MARKER_FORMAT: &str = "bucketfs-class";
const CLASS_MARKER_VERSION: u32 = 1;

impl ClassMarker {
    fn new(owner: String) -> ClassMarker {
        ClassMarker {
            format: CLASS_MARKER_FORMAT.into(),
            version: CLASS_MARKER_VERSION,
            owner,
        }
    }

    /// A marker this bucketfs wrote and can read, or None.
    fn read(bytes: &[u8]) -> Option<ClassMarker> {
        crate::gc::unseal_json::<ClassMarker>(bytes, CLASS_MARKER_KEY)
            .ok()
            .filter(|m| m.format == CLASS_MARKER_FORMAT && m.version == CLASS_MARKER_VERSION)
    }
}

/// Opens the store of the filesystem at `url`, with its classes routed as the bucket records
/// (or, for a filesystem not yet created and `create`, as `placement` says, recording it).
/// Retries around instrumentation around the routing, so the counters see every attempt to
/// every bucket.
pub fn open(
    url: &BucketUrl,
    placement: &Placement,
    create: bool,
) -> anyhow::Result<(Arc<dyn ObjectStore>, Arc<StoreStats>)> {
    open_placed(url, placement, create).map(|p| (p.store, p.stats))
}

/// A filesystem's store, opened by `open_placed`.
pub struct PlacedStore {
    pub store: Arc<dyn ObjectStore>,
    pub stats: Arc<StoreStats>,
    /// The classes go apart (buckets or regions of their own): a checkpoint must not carry
    /// its pages in its manifest (they would land with the manifests).
    pub classes_apart: bool,
    /// The bucket was checked and its format marker found (or, with `create`, written):
    /// opening the chain need not read it again (`checkpoint::open_checked_bucket`). False
    /// only without `create`, for a prefix that holds no filesystem.
    pub formatted: bool,
    /// The start of the chain (`open_placed_reading`), read beside the marker; None from
    /// `open_placed`, and for a prefix whose marker this open wrote or found missing.
    pub start: Option<crate::checkpoint::ChainStart>,
}

/// As `open`, with what else the open found.
pub fn open_placed(
    url: &BucketUrl,
    placement: &Placement,
    create: bool,
) -> anyhow::Result<PlacedStore> {
    open_placed_inner(url, placement, create, None)
}

/// As `open_placed`, reading beside the format marker the start of the chain of checkpoint
/// `at` (None: the latest), for `crate::checkpoint::open_checked_bucket`: a round trip less
/// before a mount serves.
pub fn open_placed_reading(
    url: &BucketUrl,
    placement: &Placement,
    create: bool,
    at: Option<crate::checkpoint::At>,
) -> anyhow::Result<PlacedStore> {
    open_placed_inner(url, placement, create, Some(at))
}

fn open_placed_inner(
    url: &BucketUrl,
    placement: &Placement,
    create: bool,
    chain: Option<Option<crate::checkpoint::At>>,
) -> anyhow::Result<PlacedStore> {
    let raw = |u: &BucketUrl, class: Class| {
        raw_store(u, class, placement.regions[class as usize].as_deref())
    };
    let manifest = raw(url, Class::Manifest)?;
    // Every request counts in the one total, those of the first round trip too (the check,
    // the marker, the boundary, the tip note) and the class buckets' claims: they are billed
    // like the rest.
    let stats = Arc::new(StoreStats::default());
    let counted_manifest = counted(&manifest, &stats);
    // The marker is read (and written) on a runtime of its own, in a thread of its own: a
    // caller may be inside a runtime already.
    let (recorded, formatted, start) = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<(Recorded, bool, Option<_>)> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start a runtime")?;
            rt.block_on(settle(
                url,
                &counted_manifest,
                placement,
                create,
                chain,
                &stats,
            ))
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("reading the placement panicked")))
    })?;
    let regions_apart = placement.regions[Class::Wal as usize]
        != placement.regions[Class::Manifest as usize]
        || placement.regions[Class::Data as usize] != placement.regions[Class::Manifest as usize];
    let apart = recorded.is_split() || regions_apart;
    let inner: Arc<dyn ObjectStore> = if recorded.is_split() {
        let mut targets = Vec::new();
        for class in Class::ALL {
            let target = match recorded.get(class) {
                None => Target {
                    store: if class == Class::Manifest {
                        manifest.clone()
                    } else {
                        raw(url, class)?
                    },
                    id: url.to_string(),
                },
                Some(u) => Target {
                    store: raw(&BucketUrl::parse(u)?, class)?,
                    id: u.clone(),
                },
            };
            targets.push(target);
        }
        let targets: [Target; 3] = targets.try_into().expect("one target per class");
        tracing::info!(
            manifests = %url,
            wal = recorded.wal.as_deref().unwrap_or("with the manifests"),
            data = recorded.data.as_deref().unwrap_or("with the manifests"),
            "classes placed in buckets of their own"
        );
        Arc::new(Placed::new(targets))
    } else if regions_apart {
        // One bucket, but classes with their own regions.
        let target = |class: Class| -> anyhow::Result<Target> {
            Ok(Target {
                store: raw(url, class)?,
                id: url.to_string(),
            })
        };
        Arc::new(Placed::new([
            target(Class::Manifest)?,
            target(Class::Wal)?,
            target(Class::Data)?,
        ]))
    } else {
        manifest
    };
    let counted = InstrumentedStore::with_stats(inner, stats.clone());
    let store = RetryingStore::new(Arc::new(counted), RetryPolicy::default());
    Ok(PlacedStore {
        store: Arc::new(store),
        stats,
        classes_apart: apart,
        formatted,
        start,
    })
}

/// The option that names a class's bucket.
fn flag(class: Class) -> &'static str {
    match class {
        Class::Manifest => "--bucket",
        Class::Wal => "--bucket-wal",
        Class::Data => "--bucket-data",
    }
}

/// One class's store, without retries or counters.
fn raw_store(
    url: &BucketUrl,
    class: Class,
    regions: Option<&str>,
) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(match url {
        BucketUrl::File(path) => {
            if regions.is_some() {
                bail!(
                    "--region-hint {class}=...: {url} ({}) is a local directory; region hints \
                     are for s3:// buckets",
                    flag(class)
                );
            }
            Arc::new(
                LocalStore::new(path)
                    .with_context(|| format!("open local bucket {}", path.display()))?,
            )
        }
        BucketUrl::S3 { bucket, prefix } => {
            let mut settings = S3Settings::from_env(bucket, prefix)
                .map_err(|e| anyhow::anyhow!("{} {url}: {e}", flag(class)))?;
            settings.regions = regions.map(str::to_string);
            Arc::new(S3Store::new(&settings))
        }
    })
}

fn retrying(store: &Arc<dyn ObjectStore>) -> RetryingStore {
    RetryingStore::new(store.clone(), RetryPolicy::default())
}

/// `store`, its requests counted into `stats`.
fn counted(store: &Arc<dyn ObjectStore>, stats: &Arc<StoreStats>) -> Arc<dyn ObjectStore> {
    Arc::new(InstrumentedStore::with_stats(store.clone(), stats.clone()))
}

/// The split the filesystem records, checked against the flags; for a new one (and
/// `create`), the flags' split, with each class bucket claimed and the record written. The
/// record is written before anything else of the filesystem, with `If-None-Match`, and read
/// back: two starts that race to create it both end with the one record that won. Also
/// whether the prefix holds a filesystem (false: no record, and not `create`), and the start
/// of the chain of `chain`'s checkpoint, if asked for and the prefix held a filesystem.
async fn settle(
    url: &BucketUrl,
    manifest: &Arc<dyn ObjectStore>,
    placement: &Placement,
    create: bool,
    chain: Option<Option<crate::checkpoint::At>>,
    stats: &Arc<StoreStats>,
) -> anyhow::Result<(Recorded, bool, Option<crate::checkpoint::ChainStart>)> {
    let wanted = wanted(url, placement)?;
    let store = retrying(manifest);
    let mut claimed = Vec::new();
    // The bucket checked beside the read: a missing bucket, bad credentials or an unreachable
    // endpoint fail with an error that says so, in the one round trip. The chain's start
    // (reads only) goes out with them and counts only if the marker is found and good.
    let (marker, start) =
        futures_util::future::join(crate::checkpoint::check_and_read_marker(&store), async {
            match chain {
                Some(at) => Some(crate::checkpoint::ChainStart::read(&store, at).await),
                None => None,
            }
        })
        .await;
    let marker = marker.with_context(|| format!("open {url}"))?;
    let found = marker.is_some();
    let recorded = match marker {
        Some(bytes) => crate::checkpoint::check_format(&bytes)?,
        None if create => {
            refuse_foreign(url, &store).await?;
            // Claim the class buckets first: a marker left by a start that got no further is
            // this filesystem's and is found again.
            for class in [Class::Wal, Class::Data] {
                if let Some(u) = wanted.get(class) {
                    claim(url, class, &BucketUrl::parse(u)?, placement, true, stats).await?;
                    claimed.push((class, u.clone()));
                }
            }
            let body = crate::checkpoint::format_marker(Some(&wanted));
            match store.put(FORMAT_KEY, body, PutMode::Create).await {
                // Another start wrote it first: theirs stands, checked below.
                Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("create {url}")),
            }
            let bytes = store.get(FORMAT_KEY, None).await?;
            crate::checkpoint::check_format(&bytes)?
        }
        // Nothing there yet: opening it reports that.
        None => return Ok((wanted, false, None)),
    };
    // A start that lost the race to another with a different split gives back what it
    // claimed, so that the bucket is not refused to others for nothing.
    for (class, u) in &claimed {
        if recorded.get(*class) != Some(u) {
            release(url, *class, &BucketUrl::parse(u)?, placement, stats).await;
        }
    }
    for class in [Class::Wal, Class::Data] {
        let had = recorded.get(class);
        if let Some(want) = wanted.get(class).filter(|&w| Some(w) != had) {
            bail!(
                "{} {want}: {url} keeps its {class} segments in {}; the buckets of each class \
                 are chosen when the filesystem is created and cannot change (leave the option \
                 out: the bucket's record is used)",
                flag(class),
                had.map_or_else(|| url.to_string(), String::clone)
            );
        }
        if let Some(u) = had {
            claim(url, class, &BucketUrl::parse(u)?, placement, false, stats).await?;
        }
    }
    Ok((recorded, true, start.filter(|_| found)))
}

/// Refuses to create a filesystem in a prefix that holds another one's segments: a class
/// bucket of another filesystem, or segments without a format marker (what is left of one).
/// GC would delete what it does not know.
async fn refuse_foreign(url: &BucketUrl, store: &RetryingStore) -> anyhow::Result<()> {
    match store.get(CLASS_MARKER_KEY, None).await {
        Ok(bytes) => {
            let owner =
                ClassMarker::read(&bytes).map_or_else(|| "another filesystem".into(), |m| m.owner);
            bail!(
                "--bucket {url}: it is a class bucket of {owner} (it holds {CLASS_MARKER_KEY}); \
                 give this filesystem a prefix of its own"
            );
        }
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e).with_context(|| format!("read {CLASS_MARKER_KEY} of {url}")),
    }
    if let Some(o) = store.list("segments/").await?.first() {
        bail!(
            "--bucket {url}: it holds segments ({}) but no {FORMAT_KEY}: the objects of another \
             filesystem, or what is left of one; give this filesystem an empty prefix",
            o.key
        );
    }
    Ok(())
}

/// Removes this filesystem's claim on a class bucket it does not use after all.
async fn release(
    url: &BucketUrl,
    class: Class,
    class_url: &BucketUrl,
    placement: &Placement,
    stats: &Arc<StoreStats>,
) {
    let go = async {
        let raw = raw_store(
            class_url,
            class,
            placement.regions[class as usize].as_deref(),
        )?;
        let store = retrying(&counted(&raw, stats));
        let bytes = store.get(CLASS_MARKER_KEY, None).await?;
        if ClassMarker::read(&bytes).is_some_and(|m| m.owner == url.to_string()) {
            store.delete(CLASS_MARKER_KEY).await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = go.await {
        tracing::warn!(bucket = %class_url, "could not give back the claim on an unused class bucket: {e:#}");
    }
}

/// The split the flags ask for, with a class "in its own bucket" that is the manifest bucket
/// taken as not split.
fn wanted(url: &BucketUrl, placement: &Placement) -> anyhow::Result<Recorded> {
    let mut out = Recorded::default();
    for class in [Class::Wal, Class::Data] {
        let Some(u) = placement.url(class) else {
            continue;
        };
        if u == url {
            continue;
        }
        if overlaps(u, url) {
            bail!(
                "--bucket-{class} {u} and --bucket {url} overlap: give each class a prefix of \
                 its own (or a bucket of its own)"
            );
        }
        let s = Some(u.to_string());
        match class {
            Class::Wal => out.wal = s,
            _ => out.data = s,
        }
    }
    if let (Some(w), Some(d)) = (&placement.wal, &placement.data) {
        if w != d && overlaps(w, d) {
            bail!("--bucket-wal {w} and --bucket-data {d} overlap: use one prefix for both, or two that do not nest");
        }
    }
    Ok(out)
}

/// Whether one URL's objects would be listed under the other's prefix.
fn overlaps(a: &BucketUrl, b: &BucketUrl) -> bool {
    let nests = |x: &str, y: &str| {
        x.is_empty()
            || y.is_empty()
            || x == y
            || y.starts_with(&format!("{x}/"))
            || x.starts_with(&format!("{y}/"))
    };
    match (a, b) {
        (
            BucketUrl::S3 {
                bucket: ba,
                prefix: pa,
            },
            BucketUrl::S3 {
                bucket: bb,
                prefix: pb,
            },
        ) => ba == bb && nests(pa, pb),
        (BucketUrl::File(pa), BucketUrl::File(pb)) => pa.starts_with(pb) || pb.starts_with(pa),
        _ => false,
    }
}

/// Checks that the class bucket at `class_url` belongs to the filesystem at `url`; with
/// `create`, claims an empty one (with `If-None-Match`: of two filesystems claiming it at
/// once, one wins).
async fn claim(
    url: &BucketUrl,
    class: Class,
    class_url: &BucketUrl,
    placement: &Placement,
    create: bool,
    stats: &Arc<StoreStats>,
) -> anyhow::Result<()> {
    let raw = raw_store(
        class_url,
        class,
        placement.regions[class as usize].as_deref(),
    )?;
    let store = retrying(&counted(&raw, stats));
    let name = flag(class);
    store
        .check()
        .await
        .with_context(|| format!("{name} {class_url}"))?;
    let owner = url.to_string();
    let owned = |bytes: &[u8]| -> anyhow::Result<()> {
        let marker = ClassMarker::read(bytes).ok_or_else(|| {
            anyhow::anyhow!(
                "{name} {class_url}: its {CLASS_MARKER_KEY} is not a bucketfs class marker"
            )
        })?;
        if marker.owner != owner {
            bail!(
                "{name} {class_url}: it holds the segments of {} (or a start of that filesystem \
                 claimed it); give each filesystem's {class} segments a prefix of their own",
                marker.owner
            );
        }
        Ok(())
    };
    match store.get(CLASS_MARKER_KEY, None).await {
        Ok(bytes) => owned(&bytes),
        Err(StoreError::NotFound { .. }) if create => {
            let refuse = |why: String| -> anyhow::Result<()> {
                bail!(
                    "{name} {class_url}: {why}; give each filesystem's {class} segments a prefix \
                     of their own"
                )
            };
            if store.head(FORMAT_KEY).await?.is_some() {
                return refuse("it is the bucket of another filesystem".into());
            }
            if let Some(o) = store.list("").await?.first() {
                return refuse(format!("it is not empty (it holds {})", o.key));
            }
            let body = crate::gc::seal_json(&ClassMarker::new(owner.clone()));
            match store.put(CLASS_MARKER_KEY, body, PutMode::Create).await {
                Ok(_) => Ok(()),
                // Another start claimed it first: only ours if it is this filesystem.
                Err(StoreError::PreconditionFailed { .. }) => {
                    owned(&store.get(CLASS_MARKER_KEY, None).await?)
                }
                Err(e) => Err(e).with_context(|| {
                    format!("claim {class_url} for the {class} segments of {url}")
                }),
            }
        }
        Err(StoreError::NotFound { .. }) => bail!(
            "{name} {class_url}: {url} records it as its {class} bucket, but it has no \
             {CLASS_MARKER_KEY}: check that the credentials reach that bucket and that nothing \
             removed its objects (without them the filesystem cannot be read)"
        ),
        Err(e) => Err(e).with_context(|| format!("read {CLASS_MARKER_KEY} of {class_url}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(b: &str, p: &str) -> BucketUrl {
        BucketUrl::S3 {
            bucket: b.into(),
            prefix: p.into(),
        }
    }

    #[test]
    fn prefixes_that_nest_overlap() {
        assert!(overlaps(&s3("a", "db"), &s3("a", "db/wal")));
        assert!(overlaps(&s3("a", ""), &s3("a", "wal")));
        assert!(!overlaps(&s3("a", "db"), &s3("a", "db-wal")));
        assert!(!overlaps(&s3("a", "db"), &s3("b", "db")));
    }

    #[test]
    fn region_hints_parse_by_class() {
        let mut p = Placement::default();
        p.set_region_hints(&["wal=iad".into(), "data=fra,sin".into()])
            .unwrap();
        assert_eq!(
            p.regions,
            [None, Some("iad".into()), Some("fra,sin".into())]
        );
        for bad in ["wal", "logs=iad", "data=", "data=fra;sin", "data=fra,,sin"] {
            assert!(p.set_region_hints(&[bad.into()]).is_err(), "{bad}");
        }
    }

    fn file(dir: &std::path::Path) -> BucketUrl {
        BucketUrl::File(dir.to_path_buf())
    }

    /// A manifest bucket `m` under `root`, with WAL and data in buckets of their own (`w`,
    /// `d`), and the placement that says so.
    fn split(
        root: &std::path::Path,
    ) -> (
        std::path::PathBuf,
        std::path::PathBuf,
        std::path::PathBuf,
        Placement,
    ) {
        let (m, w, d) = (root.join("m"), root.join("w"), root.join("d"));
        let placement = Placement {
            wal: Some(file(&w)),
            data: Some(file(&d)),
            ..Placement::default()
        };
        (m, w, d, placement)
    }

    /// Why creating a filesystem in `dir` with `placement` is refused.
    fn refused(dir: &std::path::Path, placement: &Placement) -> String {
        format!("{:#}", open(&file(dir), placement, true).unwrap_err())
    }

    /// What a writer's start reads beside the opening of its cache dir (`bucket::begin_open`)
    /// opens without creating: a new prefix, even with class buckets of its own, is found
    /// empty and left so, for the start to create once its cache dir is open.
    #[test]
    fn an_open_without_create_finds_a_new_prefix_empty_and_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (m, w, d, placement) = split(root.path());
        let placed = open_placed(&file(&m), &placement, false).unwrap();
        assert!(
            !placed.formatted,
            "an empty prefix was taken for a filesystem"
        );
        for dir in [&m, &w, &d] {
            let written: Vec<_> = std::fs::read_dir(dir)
                .map(|entries| entries.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default();
            assert!(
                written.is_empty(),
                "an open without create wrote {written:?}"
            );
        }
        // With create, the same prefix is made a filesystem, and found as one after.
        assert!(open_placed(&file(&m), &placement, true).unwrap().formatted);
        assert!(m.join(FORMAT_KEY).exists() && w.join(CLASS_MARKER_KEY).exists());
        assert!(
            open_placed(&file(&m), &Placement::default(), false)
                .unwrap()
                .formatted
        );
    }

    #[test]
    fn the_split_is_recorded_and_found_again_from_the_manifest_bucket_alone() {
        let root = tempfile::tempdir().unwrap();
        let (m, w, d, placement) = split(root.path());
        let (store, _) = open(&file(&m), &placement, true).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            for k in [
                "manifests/1",
                "segments/1-a-0.wal.seg",
                "segments/1-a-1.seg",
            ] {
                store
                    .put(k, bytes::Bytes::from_static(b"x"), PutMode::Overwrite)
                    .await
                    .unwrap();
            }
        });
        assert!(m.join("manifests/1").exists() && m.join(FORMAT_KEY).exists());
        assert!(w.join("segments/1-a-0.wal.seg").exists() && w.join(CLASS_MARKER_KEY).exists());
        assert!(d.join("segments/1-a-1.seg").exists());
        // Without the flags: the record.
        let (again, _) = open(&file(&m), &Placement::default(), false).unwrap();
        let n = rt.block_on(again.list("segments/")).unwrap().len();
        assert_eq!(n, 2);
        // Flags that disagree with the record.
        let moved = Placement {
            data: Some(file(&root.path().join("elsewhere"))),
            ..Placement::default()
        };
        let e = refused(&m, &moved);
        assert!(e.contains("cannot change"), "{e}");
        // Another filesystem may not use this one's data bucket...
        let other = Placement {
            data: Some(file(&d)),
            ..Placement::default()
        };
        let e = refused(&root.path().join("m2"), &other);
        assert!(e.contains("holds the segments of"), "{e}");
        // ... nor a bucket with objects in it, nor another filesystem's own bucket.
        std::fs::create_dir_all(root.path().join("full")).unwrap();
        std::fs::write(root.path().join("full/x"), b"x").unwrap();
        let full = Placement {
            wal: Some(file(&root.path().join("full"))),
            ..Placement::default()
        };
        let e = refused(&root.path().join("m3"), &full);
        assert!(e.contains("not empty"), "{e}");
        let theirs = Placement {
            wal: Some(file(&m)),
            ..Placement::default()
        };
        let e = refused(&root.path().join("m4"), &theirs);
        assert!(e.contains("another filesystem"), "{e}");
        // No filesystem is created in another's class bucket, nor where segments are left
        // without a record: GC there would delete what it does not know.
        let e = refused(&d, &Placement::default());
        assert!(e.contains("class bucket of"), "{e}");
        std::fs::create_dir_all(root.path().join("left/segments")).unwrap();
        std::fs::write(root.path().join("left/segments/1-x-0.seg"), b"x").unwrap();
        let e = refused(&root.path().join("left"), &Placement::default());
        assert!(e.contains("holds segments"), "{e}");
        // An unsplit filesystem is recorded as such at once, before its first checkpoint:
        // a start with a split that comes second is refused instead of writing elsewhere.
        let plain = root.path().join("plain");
        open(&file(&plain), &Placement::default(), true).unwrap();
        assert!(plain.join(FORMAT_KEY).exists());
        let late = Placement {
            data: Some(file(&root.path().join("late-data"))),
            ..Placement::default()
        };
        let e = refused(&plain, &late);
        assert!(e.contains("cannot change"), "{e}");
        // A damaged marker is not believed (it is sealed with a checksum).
        let marker = w.join(CLASS_MARKER_KEY);
        let good = std::fs::read(&marker).unwrap();
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x20;
        std::fs::write(&marker, &bad).unwrap();
        let e = format!(
            "{:#}",
            open(&file(&m), &Placement::default(), false).unwrap_err()
        );
        assert!(e.contains("not a bucketfs class marker"), "{e}");
        std::fs::write(&marker, &good).unwrap();
        open(&file(&m), &Placement::default(), false).unwrap();
        // A lost class bucket is named.
        std::fs::remove_file(w.join(CLASS_MARKER_KEY)).unwrap();
        let e = format!(
            "{:#}",
            open(&file(&m), &Placement::default(), false).unwrap_err()
        );
        assert!(e.contains("no bucketfs-class.json"), "{e}");
    }
}
