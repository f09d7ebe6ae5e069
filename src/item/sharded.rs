//! Region reads and per-device (sharded) loads of a PyTree item's leaves:
//! each device gets the region of the global array its `Sharding` assigns
//! it, read with [`ZarrArray::read_region`] so only the intersecting chunks
//! (and, inside zarr3 shards, only their byte ranges) are fetched.

use std::ops::Range;

use futures::{StreamExt, TryStreamExt};

use super::{load_concurrency, LeafPlan, PyTreeItem, Source};
use crate::error::{Error, Result};
use crate::metadata::unflatten;
use crate::metadata::Sharding;
use crate::pytree::{Array, KeyPath, PyTree};
use crate::sharded::{device_regions, IndexRegion, Shard, ShardedArray};
use crate::storage::join_key;
use crate::zarr::{RegionRead, RegionStats};

/// Which devices a sharded load is for and how much it may buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardedLoad {
    /// Device ids to load shards for (`None`: every device of the sharding).
    pub devices: Option<Vec<i64>>,
    /// Bound on fetched-but-undecoded bytes of each region read, like
    /// Orbax's `read_concurrent_bytes` (`None`: unbounded). Regions are read
    /// one at a time per leaf, but [`PyTreeItem::load_sharded`] loads several
    /// leaves at once, so its total is a small multiple of the bound.
    pub max_bytes_in_flight: Option<u64>,
}

/// The per-leaf layout of a sharded load: a `Sharding` to derive device
/// regions from, or explicit regions per device (index-domain slices).
#[derive(Debug, Clone, PartialEq)]
pub enum LeafLayout {
    /// A `NamedSharding` (or single-device sharding).
    Sharding(Sharding),
    /// Explicit `(device, region)` pairs.
    Regions(Vec<(i64, IndexRegion)>),
}

/// Chooses each leaf's layout from its key path and global shape (`None`:
/// load the leaf whole).
pub type LayoutFn<'a> = &'a (dyn Fn(&KeyPath, &[u64]) -> Option<LeafLayout> + Sync);

/// Loads the PyTree at `path` (a checkpoint, the item `options.item`) with
/// every leaf `layout` names as per-device shards for `load`'s devices; see
/// [`PyTreeItem::load_sharded`].
pub async fn load_pytree_sharded(
    store: &std::sync::Arc<dyn crate::storage::Storage>,
    path: &str,
    options: &crate::LoadOptions,
    layout: LayoutFn<'_>,
    load: &ShardedLoad,
) -> Result<PyTree> {
    let checkpoint = crate::Checkpoint::open(store, path, options).await?;
    checkpoint.pytree(options.item.as_deref()).await?.load_sharded(layout, load).await
}

impl PyTreeItem {
    /// Reads `region` (`start..end` per dimension) of the array leaf at
    /// `keypath`, fetching only the chunks that intersect it.
    pub async fn read_region(
        &self,
        keypath: &KeyPath,
        region: &[Range<u64>],
        max_bytes_in_flight: Option<u64>,
    ) -> Result<(Array, RegionStats)> {
        let leaf = self.leaf(keypath)?;
        self.read_leaf_region(leaf, region, max_bytes_in_flight).await.map_err(|e| e.at_leaf(keypath))
    }

    async fn read_leaf_region(
        &self,
        leaf: &LeafPlan,
        region: &[Range<u64>],
        max_bytes_in_flight: Option<u64>,
    ) -> Result<(Array, RegionStats)> {
        match &leaf.source {
            Source::Zarr => {
                let kv = self.kv()?;
                let options = RegionRead { missing: self.missing, max_bytes_in_flight };
                Ok(self.open_array(leaf).await?.read_region(kv.as_ref(), region, options).await?)
            }
            Source::Inline(PyTree::Array(a)) => {
                let cut = ShardedArray::from_array(a, None, &[(0, region.to_vec())]).map_err(Error::InvalidArgument)?;
                let data = cut.into_shards().pop().expect("one region").data;
                Ok((data, RegionStats::default()))
            }
            _ => Err(Error::InvalidArgument(format!("{}: leaf {} is not an array", self.path, leaf.keypath))),
        }
    }

    /// The shape of the leaf at `keypath` if it is an array (not a scalar,
    /// string or empty container).
    pub async fn array_shape(&self, keypath: &KeyPath) -> Result<Option<Vec<u64>>> {
        let leaf = self.leaf(keypath)?;
        match (&leaf.source, leaf.kind) {
            (_, super::LeafKind::Scalar) => Ok(None),
            (Source::Zarr | Source::Inline(PyTree::Array(_)), _) => {
                self.leaf_shape(leaf).await.map(Some).map_err(|e| e.at_leaf(keypath))
            }
            _ => Ok(None),
        }
    }

    /// The global shape of an array leaf.
    async fn leaf_shape(&self, leaf: &LeafPlan) -> Result<Vec<u64>> {
        match &leaf.source {
            Source::Zarr => Ok(self.open_array(leaf).await?.metadata().shape.clone()),
            Source::Inline(PyTree::Array(a)) => Ok(a.shape().to_vec()),
            _ => Err(Error::InvalidArgument(format!("{}: leaf {} is not an array", self.path, leaf.keypath))),
        }
    }

    /// Loads the array leaf at `keypath` as the shards `layout` assigns to
    /// the devices of `load`: each distinct region is read once (replicas
    /// share it), fetching only the chunks it needs.
    pub async fn load_leaf_sharded(
        &self,
        keypath: &KeyPath,
        layout: &LeafLayout,
        load: &ShardedLoad,
    ) -> Result<PyTree> {
        let leaf = self.leaf(keypath)?;
        self.load_sharded_leaf(leaf, layout, load).await.map_err(|e| e.at_leaf(keypath))
    }

    async fn load_sharded_leaf(&self, leaf: &LeafPlan, layout: &LeafLayout, load: &ShardedLoad) -> Result<PyTree> {
        let shape = self.leaf_shape(leaf).await?;
        let (sharding, mut regions) = match layout {
            LeafLayout::Sharding(s) => (Some(s.clone()), device_regions(s, &shape).map_err(Error::InvalidArgument)?),
            LeafLayout::Regions(r) => (None, r.clone()),
        };
        if let Some(devices) = &load.devices {
            if let Some(d) = devices.iter().find(|d| !regions.iter().any(|(r, _)| r == *d)) {
                return Err(Error::InvalidArgument(format!("device {d} is not in the sharding of {}", leaf.keypath)));
            }
            regions.retain(|(d, _)| devices.contains(d));
        }
        let mut shards: Vec<Shard> = Vec::with_capacity(regions.len());
        for (device, region) in regions {
            let data = match shards.iter().find(|s| s.region == region) {
                Some(replica) => replica.data.clone(),
                None => self.read_leaf_region(leaf, &region, load.max_bytes_in_flight).await?.0,
            };
            shards.push(Shard { device, region, data });
        }
        let dtype = match shards.first() {
            Some(s) => s.data.dtype(),
            None => self.read_leaf_region(leaf, &vec![0..0; shape.len()], None).await?.0.dtype(),
        };
        let sharded = ShardedArray::new(shape, dtype, sharding, shards).map_err(Error::InvalidArgument)?;
        Ok(PyTree::Sharded(sharded))
    }

    /// Loads the whole tree, every array leaf for which `layout` gives a
    /// layout as per-device shards ([`PyTree::Sharded`]), other leaves whole.
    pub async fn load_sharded(&self, layout: LayoutFn<'_>, load: &ShardedLoad) -> Result<PyTree> {
        let leaves: Vec<(KeyPath, PyTree)> = futures::stream::iter(&self.leaves)
            .map(|leaf| async move {
                let value = async {
                    let shape = match &leaf.source {
                        Source::Zarr | Source::Inline(PyTree::Array(_)) => Some(self.leaf_shape(leaf).await?),
                        _ => None,
                    };
                    match shape.and_then(|s| layout(&leaf.keypath, &s)) {
                        Some(l) if leaf.kind != super::LeafKind::Scalar => self.load_sharded_leaf(leaf, &l, load).await,
                        _ => self.load_leaf(leaf).await,
                    }
                };
                let value = value.await.map_err(|e| e.at_leaf(&leaf.keypath))?;
                Ok::<_, Error>((leaf.keypath.clone(), value))
            })
            .buffered(load_concurrency())
            .try_collect()
            .await?;
        unflatten(leaves).map_err(|what| Error::Structure { path: join_key(&self.path, "_METADATA"), what })
    }
}
