//! What a pass lists: the manifests (as epochs and sizes, taken in page by page), the
//! segments, the chunks of the catalog, and the state the last pass left.

use super::catalog::reserve_gently;
use super::{read_state, State, CATALOG_PREFIX, STATE_KEY};
use crate::checkpoint::{epoch_of_key, CheckpointError};
use crate::store::placement::{MANIFESTS, SEGMENTS};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

/// What a pass lists (step 1): every manifest, every segment and every chunk of the catalog,
/// a LIST request per 1,000 keys, and the state the last pass left. A writer's pass reads them once, before its
/// compaction, which chooses from the same listing (and takes its first window from the
/// state); a compaction's commit and uploads then come after the LIST, as a checkpoint's
/// beside the pass may. (Only passes write the state, one at a time.)
#[derive(Debug, Default)]
pub struct Listing {
    pub manifests: Manifests,
    pub segments: Vec<ObjectMeta>,
    /// The chunks of the catalog in the bucket (`gc/catalog/`).
    pub chunks: Vec<ObjectMeta>,
    pub state: Option<State>,
    /// The ETag `gc/state` had just before it was read (None: there was none): the pass
    /// writes its own only over that one.
    pub state_etag: Option<String>,
}

impl Listing {
    /// Manifests first: a checkpoint that commits between the two LISTs has its segments
    /// listed and not its manifest, and those are its uploads, which `in_flight` keeps.
    /// The state's ETag comes from a HEAD beside the first LIST (no round trip more), before
    /// the state is read.
    pub async fn read(store: &dyn ObjectStore) -> Result<Listing, CheckpointError> {
        let (manifests, state_meta) =
            futures_util::future::try_join(Manifests::list(store), store.head(STATE_KEY)).await?;
        let (mut segments, chunks) =
            futures_util::future::try_join(store.list(SEGMENTS), store.list(CATALOG_PREFIX))
                .await?;
        // In key order, which `size_of` searches (every store lists so; a wrapper might not).
        segments.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing {
            manifests,
            segments,
            chunks,
            state: read_state(store).await?,
            state_etag: state_meta.map(|m| m.etag),
        })
    }

    /// The stored size of a listed segment, or of a listed manifest (which may carry runs):
    /// None for a key the LIST did not find.
    pub fn size_of(&self, key: &str) -> Option<u64> {
        match epoch_of_key(key) {
            Some(epoch) => self.manifests.size_of(epoch),
            None => self
                .segments
                .binary_search_by(|o| o.key.as_str().cmp(key))
                .ok()
                .map(|i| self.segments[i].size),
        }
    }
}

/// The manifests a pass listed: the epoch and stored size of each, in epoch order. Only those
/// two numbers are kept, not the listed objects (a key, a size and an ETag, about 130 bytes
/// each), and a LIST page is turned into them as it arrives: under `--durability remote` every
/// group commit is a manifest, and the window keeps a day of them (millions). A key under
/// `manifests/` that names no epoch is no manifest, and is left out.
#[derive(Debug, Default)]
pub struct Manifests(Vec<(u64, u64)>);

impl Manifests {
    /// Every manifest the bucket holds, a page at a time.
    pub async fn list(store: &dyn ObjectStore) -> Result<Manifests, StoreError> {
        let mut listed = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_page(MANIFESTS, after.as_deref()).await?;
            reserve_gently(&mut listed, page.objects.len());
            listed.extend(
                page.objects
                    .iter()
                    .filter_map(|o| Some((epoch_of_key(&o.key)?, o.size))),
            );
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(Manifests::from_pairs(listed))
    }

    /// From `(epoch, size)` pairs in any order.
    pub fn from_pairs(mut pairs: Vec<(u64, u64)>) -> Manifests {
        pairs.sort_unstable();
        pairs.dedup_by_key(|(epoch, _)| *epoch);
        pairs.shrink_to_fit();
        Manifests(pairs)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, epoch: u64) -> bool {
        self.size_of(epoch).is_some()
    }

    pub fn size_of(&self, epoch: u64) -> Option<u64> {
        let i = self.0.binary_search_by_key(&epoch, |&(e, _)| e).ok()?;
        Some(self.0[i].1)
    }

    /// The newest listed.
    pub fn last(&self) -> Option<u64> {
        self.0.last().map(|&(e, _)| e)
    }

    /// Every one, oldest first, with its size.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied()
    }

    /// Those below `epoch`, oldest first, with their sizes.
    pub fn below(&self, epoch: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = self.0.partition_point(|&(e, _)| e < epoch);
        self.0[..end].iter().copied()
    }

    /// The bytes they take in the bucket.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|&(_, size)| size).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::checkpoint::manifest_key;
    use crate::store::{ListPage, PutMode, ReadStore, StoreResult};

    /// A listing in pages of three keys, as S3's of 1,000.
    #[derive(Debug, Default)]
    struct Paged {
        objects: Vec<ObjectMeta>,
        pages: AtomicUsize,
    }

    #[async_trait]
    impl ReadStore for Paged {
        async fn get(&self, key: &str, _: Option<Range<u64>>) -> StoreResult<Bytes> {
            Err(StoreError::NotFound { key: key.into() })
        }

        async fn head(&self, _: &str) -> StoreResult<Option<ObjectMeta>> {
            Ok(None)
        }

        async fn list_after(
            &self,
            prefix: &str,
            after: Option<&str>,
        ) -> StoreResult<Vec<ObjectMeta>> {
            let after = after.unwrap_or("");
            let listed = self
                .objects
                .iter()
                .filter(|o| o.key.starts_with(prefix) && *o.key > *after);
            Ok(listed.cloned().collect())
        }

        async fn list_page(&self, prefix: &str, after: Option<&str>) -> StoreResult<ListPage> {
            self.pages.fetch_add(1, Ordering::Relaxed);
            let mut objects = self.list_after(prefix, after).await?;
            let more = objects.len() > 3;
            objects.truncate(3);
            let next = more.then(|| objects[2].key.clone());
            Ok(ListPage { objects, next })
        }

        fn describe(&self) -> String {
            "paged".into()
        }
    }

    #[async_trait]
    impl ObjectStore for Paged {
        async fn put(&self, _: &str, _: Bytes, _: PutMode) -> StoreResult<String> {
            unreachable!("a listing writes nothing")
        }

        async fn delete(&self, _: &str) -> StoreResult<()> {
            unreachable!("a listing deletes nothing")
        }
    }

    /// Every manifest of a listing that comes in pages, once, with its size, whatever the
    /// page boundaries; a key under `manifests/` that names no epoch is no manifest.
    #[tokio::test]
    async fn manifests_are_taken_in_page_by_page_every_one_once() {
        let meta = |key: String, size| ObjectMeta {
            key,
            size,
            etag: String::new(),
        };
        let mut objects: Vec<ObjectMeta> =
            (1..=10).map(|e| meta(manifest_key(e), 100 + e)).collect();
        objects.push(meta(format!("{MANIFESTS}stray"), 7));
        objects.push(meta(
            format!("{SEGMENTS}00000000000000000001-w-1-0000.seg"),
            9,
        ));
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        let store = Paged {
            objects,
            ..Paged::default()
        };
        let listed = Manifests::list(&store).await.expect("list");
        assert_eq!(
            store.pages.load(Ordering::Relaxed),
            4,
            "11 keys in pages of 3"
        );
        let want: Vec<(u64, u64)> = (1..=10).map(|e| (e, 100 + e)).collect();
        assert_eq!(listed.iter().collect::<Vec<_>>(), want);
        assert_eq!(
            (listed.len(), listed.last(), listed.bytes()),
            (10, Some(10), 1055)
        );
        assert_eq!(
            listed.below(4).map(|(e, _)| e).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!((listed.size_of(7), listed.size_of(11)), (Some(107), None));
    }
}
