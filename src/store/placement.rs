//! Placement by class: every object belongs to a class (a WAL segment, a data segment, or
//! the rest: manifests, the GC state, the format marker, the prewarm list), and each class can
//! live in its own bucket. `Placed` is the store that routes each request to its class's
//! store, by the key alone, so that a writer, a restore, a replica and the admin commands all
//! find every object where it was put (docs/replicas.md, "Placement by class").
//!
//! The class is part of the key: WAL segments end in `WAL_SEGMENT_SUFFIX`. Routing therefore
//! needs no lookup, and an object's bucket never depends on anything but its name.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, ObjectMeta, ObjectStore, PutMode, ReadStore, Sent, StoreResult};

/// What a WAL segment's key ends with (a data segment's ends with plain `.seg`).
pub const WAL_SEGMENT_SUFFIX: &str = ".wal.seg";
/// Where the segments are.
pub const SEGMENTS: &str = "segments/";
/// Where the manifests are (the rest of the layout: checkpoint/layout.rs). Here, with the
/// segments' prefix, so that what sorts keys (placement, the metrics' labels, the fault
/// injection) needs nothing from the checkpoint module.
pub const MANIFESTS: &str = "manifests/";

/// The classes of objects, each with its own bucket when placement is split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Manifests, the GC state, the format marker, the prewarm list: small, and where the
    /// conditional writes that fence a writer happen.
    Manifest,
    /// Segments of the pages of files under PostgreSQL's WAL directory.
    Wal,
    /// Segments of every other file's pages.
    Data,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Manifest, Class::Wal, Class::Data];

    /// The class of the object stored under `key`.
    pub fn of_key(key: &str) -> Class {
        match key.strip_prefix(SEGMENTS) {
            Some(name) if name.ends_with(WAL_SEGMENT_SUFFIX) => Class::Wal,
            Some(_) => Class::Data,
            None => Class::Manifest,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Manifest => "manifest",
            Class::Wal => "wal",
            Class::Data => "data",
        }
    }

    pub fn parse(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether a LIST of `prefix` can return keys of this class.
    fn may_list(self, prefix: &str) -> bool {
        match self {
            // Every key outside segments/ is the manifest class.
            Class::Manifest => !prefix.starts_with(SEGMENTS),
            Class::Wal | Class::Data => {
                prefix.starts_with(SEGMENTS) || SEGMENTS.starts_with(prefix)
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One class's store, and the bucket and prefix it points at (two classes with the same
/// target share a bucket, and a LIST of it is made once).
#[derive(Clone, Debug)]
pub struct Target {
    pub store: Arc<dyn ObjectStore>,
    pub id: String,
}

/// A store that sends each request to its key's class's store.
#[derive(Debug)]
pub struct Placed {
    targets: [Target; 3],
}

impl Placed {
    /// `targets` in the order of `Class::ALL`: manifest, wal, data.
    pub fn new(targets: [Target; 3]) -> Placed {
        Placed { targets }
    }

    fn of(&self, key: &str) -> &Arc<dyn ObjectStore> {
        &self.targets[Class::of_key(key).index()].store
    }

    /// The distinct targets, each with the classes it holds.
    fn groups(&self) -> BTreeMap<&str, (&Arc<dyn ObjectStore>, Vec<Class>)> {
        let mut out: BTreeMap<&str, (&Arc<dyn ObjectStore>, Vec<Class>)> = BTreeMap::new();
        for c in Class::ALL {
            let t = &self.targets[c.index()];
            out.entry(t.id.as_str())
                .or_insert((&t.store, Vec::new()))
                .1
                .push(c);
        }
        out
    }
}

#[async_trait]
impl ReadStore for Placed {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        self.of(key).get(key, range).await
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.of(key).head(key).await
    }

    /// Each target is listed once, and keeps only the keys of the classes it holds: an
    /// object of another class there (which bucketfs never puts) is not part of this
    /// filesystem.
    async fn list_after(&self, prefix: &str, after: Option<&str>) -> StoreResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        for (store, classes) in self.groups().into_values() {
            if !classes.iter().any(|c| c.may_list(prefix)) {
                continue;
            }
            let listed = store.list_after(prefix, after).await?;
            out.extend(
                listed
                    .into_iter()
                    .filter(|o| classes.contains(&Class::of_key(&o.key))),
            );
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// A page of the one target that holds the prefix's keys; when several may (a prefix
    /// that spans classes placed apart), their whole listing as one page.
    async fn list_page(&self, prefix: &str, after: Option<&str>) -> StoreResult<ListPage> {
        let groups = self.groups();
        let mut listing = groups
            .into_values()
            .filter(|(_, classes)| classes.iter().any(|c| c.may_list(prefix)));
        match (listing.next(), listing.next()) {
            (Some((store, classes)), None) => {
                let mut page = store.list_page(prefix, after).await?;
                page.objects
                    .retain(|o| classes.contains(&Class::of_key(&o.key)));
                Ok(page)
            }
            (None, _) => Ok(ListPage::default()),
            (Some(_), Some(_)) => Ok(ListPage {
                objects: self.list_after(prefix, after).await?,
                next: None,
            }),
        }
    }

    async fn check(&self) -> StoreResult<()> {
        for (store, _) in self.groups().into_values() {
            store.check().await?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let groups = self.groups();
        let mut parts = Vec::new();
        for (store, classes) in groups.values() {
            let names: Vec<&str> = classes.iter().map(|c| c.name()).collect();
            parts.push(format!("{} ({})", store.describe(), names.join(", ")));
        }
        parts.join(" + ")
    }
}

#[async_trait]
impl ObjectStore for Placed {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        self.of(key).put(key, body, mode).await
    }

    async fn put_sent(&self, key: &str, body: Bytes, mode: PutMode) -> (StoreResult<String>, Sent) {
        self.of(key).put_sent(key, body, mode).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.of(key).delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[test]
    fn the_class_is_in_the_key() {
        assert_eq!(
            Class::of_key("manifests/00000000000000000007"),
            Class::Manifest
        );
        assert_eq!(Class::of_key("bucketfs.json"), Class::Manifest);
        assert_eq!(Class::of_key("gc/state"), Class::Manifest);
        assert_eq!(Class::of_key("prewarm/hot-set.json"), Class::Manifest);
        assert_eq!(Class::of_key("segments/0001-w-3-0000.seg"), Class::Data);
        assert_eq!(Class::of_key("segments/0001-w-3-0000.wal.seg"), Class::Wal);
        // Only under segments/ does the suffix mean anything.
        assert_eq!(Class::of_key("prewarm/x.wal.seg"), Class::Manifest);
        for c in Class::ALL {
            assert_eq!(Class::parse(c.name()), Some(c));
        }
    }

    fn local(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(LocalStore::new(dir).unwrap())
    }

    async fn keys(store: &dyn ReadStore, prefix: &str) -> Vec<String> {
        let listed = store.list(prefix).await.unwrap();
        listed.into_iter().map(|o| o.key).collect()
    }

    #[tokio::test]
    async fn each_class_goes_to_its_store_and_lists_merge() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<_> = dirs.iter().map(|d| local(d.path())).collect();
        let target = |i: usize| Target {
            store: stores[i].clone(),
            id: format!("t{i}"),
        };
        let placed = Placed::new([target(0), target(1), target(2)]);
        let put = |k: &'static str| {
            let p = &placed;
            async move {
                p.put(k, Bytes::from(k), PutMode::Overwrite).await.unwrap();
            }
        };
        put("manifests/1").await;
        put("segments/1-a-0.wal.seg").await;
        put("segments/1-a-1.seg").await;
        put("segments/2-a-0.seg").await;
        assert_eq!(keys(&*stores[0], "").await, ["manifests/1"]);
        assert_eq!(keys(&*stores[1], "").await, ["segments/1-a-0.wal.seg"]);
        assert_eq!(
            keys(&*stores[2], "").await,
            ["segments/1-a-1.seg", "segments/2-a-0.seg"]
        );
        assert_eq!(
            keys(&placed, "segments/").await,
            [
                "segments/1-a-0.wal.seg",
                "segments/1-a-1.seg",
                "segments/2-a-0.seg"
            ]
        );
        assert_eq!(placed.list("manifests/").await.unwrap().len(), 1);
        assert_eq!(placed.list("").await.unwrap().len(), 4);
        assert_eq!(
            &placed.get("segments/1-a-0.wal.seg", None).await.unwrap()[..],
            b"segments/1-a-0.wal.seg"
        );
        placed.delete("segments/1-a-0.wal.seg").await.unwrap();
        assert!(keys(&*stores[1], "").await.is_empty());
    }

    #[tokio::test]
    async fn classes_sharing_a_bucket_are_listed_once() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sa, sb) = (local(a.path()), local(b.path()));
        // Manifests and WAL in one bucket, data in another.
        let placed = Placed::new([
            Target {
                store: sa.clone(),
                id: "a".into(),
            },
            Target {
                store: sa.clone(),
                id: "a".into(),
            },
            Target {
                store: sb.clone(),
                id: "b".into(),
            },
        ]);
        for k in [
            "manifests/1",
            "segments/1-x-0.wal.seg",
            "segments/1-x-1.seg",
        ] {
            placed
                .put(k, Bytes::from_static(b"x"), PutMode::Overwrite)
                .await
                .unwrap();
        }
        // A stray data segment in the WAL's bucket is not this filesystem's.
        sa.put(
            "segments/9-stray-0.seg",
            Bytes::from_static(b"x"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        assert_eq!(
            keys(&placed, "").await,
            [
                "manifests/1",
                "segments/1-x-0.wal.seg",
                "segments/1-x-1.seg"
            ]
        );
        // A page: the one target's that holds the prefix's class, filtered as a listing is;
        // where two targets hold it, their merged listing, whole.
        let page = placed.list_page("manifests/", None).await.unwrap();
        let names = |page: &ListPage| -> Vec<String> {
            page.objects.iter().map(|o| o.key.clone()).collect()
        };
        assert_eq!(
            (names(&page), page.next),
            (vec!["manifests/1".into()], None)
        );
        let page = placed.list_page("segments/", None).await.unwrap();
        assert_eq!(names(&page), keys(&placed, "segments/").await);
        assert_eq!(page.next, None);
    }
}
