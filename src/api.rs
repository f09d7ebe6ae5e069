//! The PyTree API, in the vocabulary of Orbax's Python API
//! (`orbax.checkpoint.v1`): [`pytree_metadata`], [`load_pytree`],
//! [`checkpointables_metadata`], [`load_checkpointables`].
//!
//! A `path` is a key prefix in a [`Storage`]: a checkpoint directory, one
//! of its item directories, or a v0 checkpoint saved without items.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::item::{PyTreeItem, PyTreeMetadata};
use crate::layout::{
    list_steps, locate_checkpoint, CheckpointLocation, ItemKind, ItemLocation, LocateOptions, StepDir,
};
use crate::metadata::CheckpointMetadata;
use crate::pytree::{KeyPath, PyTree};
use crate::save::{ArraySharding, ShardingFn};
use crate::storage::{join_key, Storage, StorageError};
use crate::target::{load_with_target, Target, TargetOptions};

/// Options for opening a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The checkpointable (item) to use; `None` picks like Orbax's
    /// `checkpointable_name='AUTO'`: `state`, then `pytree`, then
    /// `default`, then the only PyTree item.
    pub item: Option<String>,
    /// Read a checkpoint whose save never finished (temporary or partial-save directory).
    pub allow_uncommitted: bool,
    /// What to load for each leaf (shape, dtype, sharding, placeholders);
    /// `None` loads every leaf as saved. See [`crate::target`].
    pub target: Option<Target>,
    /// With a target: load only the leaves it names (Orbax's `partial_load`).
    pub partial_load: bool,
    /// With a target: pad (with zeros) or truncate arrays whose stored
    /// shape differs from the target's instead of failing.
    pub enable_padding_and_truncation: bool,
    /// With a target: bound on fetched-but-undecoded bytes of each sharded
    /// leaf read, like Orbax's `read_concurrent_bytes` (`None`: unbounded).
    pub read_concurrent_bytes: Option<u64>,
}

impl LoadOptions {
    /// The options [`load_with_target`] uses.
    pub fn target_options(&self) -> TargetOptions {
        TargetOptions {
            partial_load: self.partial_load,
            enable_padding_and_truncation: self.enable_padding_and_truncation,
            read_concurrent_bytes: self.read_concurrent_bytes,
        }
    }
}

/// An item's contents.
#[derive(Debug, Clone, PartialEq)]
pub enum Checkpointable {
    /// A PyTree item.
    PyTree(PyTree),
    /// A JSON item.
    Json(serde_json::Value),
}

/// An item's metadata.
#[derive(Debug, Clone)]
pub enum CheckpointableMetadata {
    /// A PyTree item's leaves.
    PyTree(PyTreeMetadata),
    /// A JSON item (its metadata is its value).
    Json(serde_json::Value),
}

/// The metadata of a whole checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointablesMetadata {
    /// `_CHECKPOINT_METADATA`, if present.
    pub checkpoint: Option<CheckpointMetadata>,
    /// Each item with its metadata, sorted by name (`None` for an unnamed v0 item).
    pub items: Vec<(Option<String>, CheckpointableMetadata)>,
}

impl CheckpointablesMetadata {
    /// The shardings recorded for this checkpoint's `jax.Array` leaves, as a
    /// [`ShardingFn`] for saving the same trees again with the same layout
    /// (what `orbax convert` does).
    pub fn sharding_fn(&self) -> ShardingFn {
        let mut map: HashMap<(String, KeyPath), ArraySharding> = HashMap::new();
        for (name, item) in &self.items {
            let CheckpointableMetadata::PyTree(tree) = item else { continue };
            for leaf in &tree.leaves {
                let (Some(sharding), Some(shape)) = (&leaf.sharding, &leaf.shape) else { continue };
                let write_shape = leaf
                    .storage
                    .as_ref()
                    .and_then(|s| s.write_shape.clone())
                    .unwrap_or_else(|| sharding.shard_shape(shape));
                let key = (name.clone().unwrap_or_else(|| "state".into()), leaf.keypath.clone());
                map.insert(key, ArraySharding { sharding: sharding.clone(), write_shape });
            }
        }
        Arc::new(move |item: &str, path: &KeyPath| map.get(&(item.to_string(), path.clone())).cloned())
    }
}

/// An opened checkpoint: its layout resolved and `_CHECKPOINT_METADATA` read.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    store: Arc<dyn Storage>,
    location: CheckpointLocation,
    metadata: Option<CheckpointMetadata>,
}

impl Checkpoint {
    /// Opens the checkpoint at `path`.
    pub async fn open(store: &Arc<dyn Storage>, path: &str, options: &LoadOptions) -> Result<Checkpoint> {
        let locate = LocateOptions { allow_uncommitted: options.allow_uncommitted };
        let location = locate_checkpoint(store, path, locate).await?;
        let metadata_key = join_key(&location.path, "_CHECKPOINT_METADATA");
        let metadata = match store.get(&metadata_key).await {
            Ok(bytes) => Some(CheckpointMetadata::parse(&bytes, &metadata_key)?),
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Checkpoint { store: store.clone(), location, metadata })
    }

    /// The store the checkpoint is in.
    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    /// The checkpoint's directory.
    pub fn path(&self) -> &str {
        &self.location.path
    }

    /// Its items, sorted by name.
    pub fn items(&self) -> &[ItemLocation] {
        &self.location.items
    }

    /// `_CHECKPOINT_METADATA`, if present.
    pub fn metadata(&self) -> Option<&CheckpointMetadata> {
        self.metadata.as_ref()
    }

    /// The item called `name`, or with `None` every item.
    pub fn select_items(&self, name: Option<&str>) -> Result<Vec<&ItemLocation>> {
        match name {
            Some(name) => Ok(vec![self.item(Some(name))?]),
            None => Ok(self.items().iter().collect()),
        }
    }

    /// The item called `name`, or with `None` the default PyTree item.
    pub fn item(&self, name: Option<&str>) -> Result<&ItemLocation> {
        let items = &self.location.items;
        let names = || items.iter().map(|i| i.name.as_deref().unwrap_or("<unnamed>")).collect::<Vec<_>>().join(", ");
        if let Some(name) = name {
            return items.iter().find(|i| i.name.as_deref() == Some(name)).ok_or_else(|| Error::Item {
                path: self.path().to_string(),
                what: format!("no item {name:?} (items: {})", names()),
            });
        }
        let pytrees: Vec<&ItemLocation> = items.iter().filter(|i| i.kind == ItemKind::PyTree).collect();
        for preferred in ["state", "pytree", "default"] {
            if let Some(item) = pytrees.iter().find(|i| i.name.as_deref() == Some(preferred)) {
                return Ok(item);
            }
        }
        match pytrees.as_slice() {
            [only] => Ok(only),
            [] => {
                Err(Error::Item { path: self.path().to_string(), what: format!("no PyTree item (items: {})", names()) })
            }
            _ => Err(Error::Item {
                path: self.path().to_string(),
                what: format!("several PyTree items, choose one (items: {})", names()),
            }),
        }
    }

    /// Opens a PyTree item (see [`Checkpoint::item`]).
    pub async fn pytree(&self, name: Option<&str>) -> Result<PyTreeItem> {
        let item = self.item(name)?;
        if item.kind != ItemKind::PyTree {
            return Err(Error::Item { path: item.path.clone(), what: "is a JSON item, not a PyTree".into() });
        }
        PyTreeItem::open(&self.store, &item.path).await
    }

    /// Reads a JSON item.
    pub async fn json(&self, name: &str) -> Result<serde_json::Value> {
        let item = self.item(Some(name))?;
        let ItemKind::Json { file } = &item.kind else {
            return Err(Error::Item { path: item.path.clone(), what: "is a PyTree item, not JSON".into() });
        };
        let bytes = self.store.get(file).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Structure { path: file.clone(), what: format!("invalid JSON: {e}") })
    }

    /// The metadata of every item.
    pub async fn checkpointables_metadata(&self) -> Result<CheckpointablesMetadata> {
        let mut items = Vec::new();
        for item in &self.location.items {
            let metadata = match &item.kind {
                ItemKind::PyTree => {
                    CheckpointableMetadata::PyTree(PyTreeItem::open(&self.store, &item.path).await?.metadata().await?)
                }
                ItemKind::Json { .. } => {
                    CheckpointableMetadata::Json(self.json(item.name.as_deref().unwrap_or_default()).await?)
                }
            };
            items.push((item.name.clone(), metadata));
        }
        Ok(CheckpointablesMetadata { checkpoint: self.metadata.clone(), items })
    }

    /// Loads every item.
    pub async fn load_checkpointables(&self) -> Result<Vec<(Option<String>, Checkpointable)>> {
        let mut out = Vec::new();
        for item in &self.location.items {
            let value = match &item.kind {
                ItemKind::PyTree => {
                    Checkpointable::PyTree(PyTreeItem::open(&self.store, &item.path).await?.load().await?)
                }
                ItemKind::Json { .. } => {
                    Checkpointable::Json(self.json(item.name.as_deref().unwrap_or_default()).await?)
                }
            };
            out.push((item.name.clone(), value));
        }
        Ok(out)
    }
}

/// One step of a managed root, as `orbax ls` shows it.
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// The step number and directory.
    pub dir: StepDir,
    /// Commit time (or, failing that, start time) from `_CHECKPOINT_METADATA`, ns since the epoch.
    pub time_ns: Option<i64>,
    /// Total bytes stored below the step directory.
    pub size: u64,
    /// Item names.
    pub items: Vec<String>,
    /// Metrics: `_CHECKPOINT_METADATA.metrics`, or a JSON item called `metrics`.
    pub metrics: Option<serde_json::Value>,
}

/// The committed steps of the managed root at `root` (a `CheckpointManager`
/// or `training.Checkpointer` directory), with their metadata, by step.
pub async fn list_checkpoints(store: &Arc<dyn Storage>, root: &str) -> Result<Vec<StepInfo>> {
    let mut out = Vec::new();
    for dir in list_steps(store.as_ref(), root).await?.into_iter().filter(|d| d.committed) {
        let path = join_key(root, &dir.dir);
        let Ok(checkpoint) = Checkpoint::open(store, &path, &LoadOptions::default()).await else { continue };
        let size = store.list(&path).await?.iter().map(|o| o.size).sum();
        let metadata = checkpoint.metadata();
        let time_ns = metadata.and_then(|m| m.commit_timestamp_nsecs.or(m.init_timestamp_nsecs));
        let mut metrics = metadata.map(|m| m.metrics.clone()).filter(|m| m.as_object().is_some_and(|o| !o.is_empty()));
        let has_metrics_item =
            checkpoint.items().iter().any(|i| i.name.as_deref() == Some("metrics") && i.kind != ItemKind::PyTree);
        if metrics.is_none() && has_metrics_item {
            metrics = Some(checkpoint.json("metrics").await?);
        }
        let items = checkpoint.items().iter().map(|i| i.name.clone().unwrap_or_default()).collect();
        out.push(StepInfo { dir, time_ns, size, items, metrics });
    }
    Ok(out)
}

/// The metadata of the PyTree at `path` (shapes, dtypes, chunking,
/// shardings), without reading any array data. Like Orbax's `pytree_metadata`.
pub async fn pytree_metadata(store: &Arc<dyn Storage>, path: &str, options: &LoadOptions) -> Result<PyTreeMetadata> {
    let checkpoint = Checkpoint::open(store, path, options).await?;
    checkpoint.pytree(options.item.as_deref()).await?.metadata().await
}

/// Loads the PyTree at `path`: without `options.target` every value as
/// saved (Orbax's `load_pytree(path)`), with it what the target asks for
/// (Orbax's `load_pytree(path, target)`).
pub async fn load_pytree(store: &Arc<dyn Storage>, path: &str, options: &LoadOptions) -> Result<PyTree> {
    let checkpoint = Checkpoint::open(store, path, options).await?;
    let item = checkpoint.pytree(options.item.as_deref()).await?;
    match &options.target {
        Some(target) => load_with_target(&item, target, options.target_options()).await,
        None => item.load().await,
    }
}

/// The metadata of every item of the checkpoint at `path`.
pub async fn checkpointables_metadata(
    store: &Arc<dyn Storage>,
    path: &str,
    options: &LoadOptions,
) -> Result<CheckpointablesMetadata> {
    Checkpoint::open(store, path, options).await?.checkpointables_metadata().await
}

/// Loads every item of the checkpoint at `path`.
pub async fn load_checkpointables(
    store: &Arc<dyn Storage>,
    path: &str,
    options: &LoadOptions,
) -> Result<Vec<(Option<String>, Checkpointable)>> {
    Checkpoint::open(store, path, options).await?.load_checkpointables().await
}

/// The same API for callers without an async runtime. Each call runs on a
/// shared multi-threaded Tokio runtime created on first use.
pub mod blocking {
    use std::sync::{Arc, OnceLock};

    use super::*;

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("create the Tokio runtime")
        })
    }

    /// Runs a future of this crate to completion on the shared runtime.
    pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
        runtime().block_on(future)
    }

    /// Blocking [`super::pytree_metadata`].
    pub fn pytree_metadata(store: &Arc<dyn Storage>, path: &str, options: &LoadOptions) -> Result<PyTreeMetadata> {
        block_on(super::pytree_metadata(store, path, options))
    }

    /// Blocking [`super::load_pytree`].
    pub fn load_pytree(store: &Arc<dyn Storage>, path: &str, options: &LoadOptions) -> Result<PyTree> {
        block_on(super::load_pytree(store, path, options))
    }

    /// Blocking [`super::checkpointables_metadata`].
    pub fn checkpointables_metadata(
        store: &Arc<dyn Storage>,
        path: &str,
        options: &LoadOptions,
    ) -> Result<CheckpointablesMetadata> {
        block_on(super::checkpointables_metadata(store, path, options))
    }

    /// Blocking [`super::load_checkpointables`].
    pub fn load_checkpointables(
        store: &Arc<dyn Storage>,
        path: &str,
        options: &LoadOptions,
    ) -> Result<Vec<(Option<String>, Checkpointable)>> {
        block_on(super::load_checkpointables(store, path, options))
    }
}
