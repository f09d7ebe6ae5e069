//! Writing checkpoints that Orbax 0.12 loads: the v1 layout (`state/` item,
//! `_CHECKPOINT_METADATA`, `orbax.checkpoint`, `commit_success.txt`), arrays
//! in OCDBT or one directory per leaf, zarr3 or zarr2.
//!
//! The commit protocol is what makes a save all-or-nothing:
//!
//! * stores that can rename a prefix atomically (local disk): everything is
//!   written below `<path>.orbax-checkpoint-tmp`, `commit_success.txt` last,
//!   and the directory is renamed to `<path>`. Readers ignore `*.orbax-checkpoint-tmp*`.
//!   Overwriting swaps the new directory with the old one in one step
//!   (`renameat2(RENAME_EXCHANGE)` on Linux), so a crash leaves either the
//!   old or the new checkpoint under `<path>`, never a mix and never neither;
//! * other stores (object stores): everything is written in place and
//!   `commit_success.txt` is created last, conditionally where the store
//!   supports put-if-absent; a checkpoint without it is unfinished.
//!
//! In a multi-process save ([`SaveOptions::multiprocess`]) every process runs
//! the same steps between barriers: all check the path, the primary clears a
//! stale work directory (`save-begin`); each writes its share
//! (`save-written`); the primary merges the per-process databases, checks
//! every chunk was written, writes `_CHECKPOINT_METADATA` and commits as
//! above, and all return once it has (`save-committed`). A process that
//! fails gives up the next barrier ([`crate::multiprocess::Coordinator::abort`]),
//! so the others fail there with its error; one that dies makes their
//! barrier time out naming it. Either way nothing is committed.

mod async_save;
mod pytree_item;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::api::Checkpointable;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::TMP_MARKER;
use crate::metadata::Sharding;
use crate::multiprocess::MultiProcess;
use crate::pyjson::{to_string, JsonStyle};
use crate::pytree::{KeyPath, PyTree};
use crate::storage::{join_key, PutMode, Storage, StorageError};

pub use async_save::{load_pytree_async, save_checkpointables_async, save_pytree_async, TaskHandle};
use pytree_item::Role;
pub use pytree_item::PYTREE_HANDLER;

/// `_CHECKPOINT_METADATA` handler name of JSON checkpointables.
pub const JSON_HANDLER: &str = "orbax.checkpoint.experimental.v1._src.handlers.json_handler.JsonHandler";
/// `_CHECKPOINT_METADATA` handler name of the `metrics` item a training
/// `Checkpointer` writes (a JSON file called `metrics`).
pub const METRICS_HANDLER: &str = "orbax.checkpoint.experimental.v1._src.handlers.json_handler.MetricsHandler";
/// Orbax's default `ocdbt_target_data_file_size` on local storage (2 GiB).
pub const DEFAULT_TARGET_DATA_FILE_SIZE: u64 = 2 << 30;

/// Per-array storage choices, like Orbax's `ArrayOptions.Saving.StorageOptions`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StorageOptions {
    /// On-disk dtype; values are cast with numpy `astype` semantics (see [`crate::cast`]).
    pub dtype: Option<DType>,
    /// Upper bound on the bytes of one chunk; chunks then subdivide the array
    /// by Orbax's rules ([`crate::chunking::choose_chunk_shape`]).
    pub chunk_byte_size: Option<u64>,
}

/// Chooses storage options per leaf, like Orbax's
/// `scoped_storage_options_creator(keypath, value)`; its result overrides
/// the global [`SaveOptions::storage`] field by field.
pub type StorageOptionsFn = Arc<dyn Fn(&KeyPath, &PyTree) -> StorageOptions + Send + Sync>;

/// How an array is laid out over devices: the sharding recorded in
/// `_sharding` and the shape each device (process) writes. An array saved
/// with one becomes a `jax.Array` leaf for Orbax, which then restores it
/// onto devices.
#[derive(Debug, Clone, PartialEq)]
pub struct ArraySharding {
    /// The sharding (`NamedSharding` mesh and partition spec, or a single device).
    pub sharding: Sharding,
    /// The shape of the piece each device writes; chunks divide it. For a
    /// plain split this is [`Sharding::shard_shape`] of the global shape.
    pub write_shape: Vec<u64>,
}

/// Called as array data is written: bytes of raw array data encoded and
/// written so far, and the total to write.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Gives the sharding of a leaf, from the item name and the leaf's path.
pub type ShardingFn = Arc<dyn Fn(&str, &KeyPath) -> Option<ArraySharding> + Send + Sync>;

/// Options of [`save_pytree`] / [`save_checkpointables`].
#[derive(Clone)]
pub struct SaveOptions {
    /// Store arrays in one OCDBT database per item (Orbax's default) rather
    /// than one directory per leaf.
    pub use_ocdbt: bool,
    /// zarr v3 (default) or v2.
    pub use_zarr3: bool,
    /// zstd-compress chunks (default).
    pub use_compression: bool,
    /// Replace an existing checkpoint at the path (otherwise an error).
    pub overwrite: bool,
    /// Default storage options of every array.
    pub storage: StorageOptions,
    /// Per-leaf storage options.
    pub storage_for: Option<StorageOptionsFn>,
    /// OCDBT data files are split at this size; arrays larger than it are
    /// chunked to fit.
    pub ocdbt_target_data_file_size: u64,
    /// `custom_metadata` of `_CHECKPOINT_METADATA`.
    pub custom_metadata: Map<String, Value>,
    /// Shardings of array leaves; those that have one are saved as
    /// `jax.Array` with `_sharding` and `array_metadatas/process_0`.
    pub sharding_for: Option<ShardingFn>,
    /// Progress of array writing, per item.
    pub progress: Option<ProgressFn>,
    /// Take part in a save by several processes (see [`crate::multiprocess`]);
    /// `None` (default): this process saves alone.
    pub multiprocess: Option<MultiProcess>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            use_ocdbt: true,
            use_zarr3: true,
            use_compression: true,
            overwrite: false,
            storage: StorageOptions::default(),
            storage_for: None,
            ocdbt_target_data_file_size: DEFAULT_TARGET_DATA_FILE_SIZE,
            custom_metadata: Map::new(),
            sharding_for: None,
            progress: None,
            multiprocess: None,
        }
    }
}

impl std::fmt::Debug for SaveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveOptions")
            .field("use_ocdbt", &self.use_ocdbt)
            .field("use_zarr3", &self.use_zarr3)
            .field("use_compression", &self.use_compression)
            .field("overwrite", &self.overwrite)
            .field("storage", &self.storage)
            .field("storage_for", &self.storage_for.as_ref().map(|_| "<fn>"))
            .field("ocdbt_target_data_file_size", &self.ocdbt_target_data_file_size)
            .field("custom_metadata", &self.custom_metadata)
            .field("sharding_for", &self.sharding_for.as_ref().map(|_| "<fn>"))
            .field("progress", &self.progress.as_ref().map(|_| "<fn>"))
            .field("multiprocess", &self.multiprocess)
            .finish()
    }
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Saves `tree` as the `state` item of a new checkpoint at `path`, like
/// Orbax's `save_pytree(path, tree)`.
pub async fn save_pytree(store: &Arc<dyn Storage>, path: &str, tree: &PyTree, options: &SaveOptions) -> Result<()> {
    save_items(store, path, &[("state", Item::PyTree(tree))], options).await
}

/// A borrowed item to save (saving never copies the caller's data).
enum Item<'a> {
    PyTree(&'a PyTree),
    Json(&'a Value),
    /// The `metrics` item of a training step: JSON in a file called `metrics`.
    Metrics(&'a Value),
}

/// Saves named items (PyTrees and JSON documents) as one checkpoint, like
/// Orbax's `save_checkpointables(path, {name: item})`.
pub async fn save_checkpointables(
    store: &Arc<dyn Storage>,
    path: &str,
    items: &[(String, Checkpointable)],
    options: &SaveOptions,
) -> Result<()> {
    save_items(store, path, &borrow_items(items), options).await
}

fn borrow_items(items: &[(String, Checkpointable)]) -> Vec<(&str, Item<'_>)> {
    items
        .iter()
        .map(|(name, item)| {
            let item = match item {
                Checkpointable::PyTree(tree) => Item::PyTree(tree),
                Checkpointable::Json(value) => Item::Json(value),
            };
            (name.as_str(), item)
        })
        .collect()
}

/// Saves one step of a training root as Orbax's `training.Checkpointer`
/// does: the items plus, when given, `metrics` as a JSON item called
/// `metrics`, with `item_handlers` in name order.
pub(crate) async fn save_step(
    store: &Arc<dyn Storage>,
    path: &str,
    items: &[(String, Checkpointable)],
    metrics: Option<&Value>,
    options: &SaveOptions,
) -> Result<()> {
    if items.iter().any(|(name, _)| name == "metrics") && metrics.is_some() {
        return Err(Error::InvalidArgument("an item called \"metrics\" clashes with the step's metrics".into()));
    }
    let mut borrowed = borrow_items(items);
    if let Some(metrics) = metrics {
        borrowed.push(("metrics", Item::Metrics(metrics)));
    }
    borrowed.sort_by(|a, b| a.0.cmp(b.0));
    save_items(store, path, &borrowed, options).await
}

async fn save_items(
    store: &Arc<dyn Storage>,
    path: &str,
    items: &[(&str, Item<'_>)],
    options: &SaveOptions,
) -> Result<()> {
    let mut phases = Phases { options, next: 0 };
    let result = save_in_phases(store, path, items, options, &mut phases).await;
    if let Err(e) = &result {
        phases.abort(e).await;
    }
    result
}

/// The barriers of a multi-process save, in order (see the module docs).
const PHASES: [&str; 3] = ["save-begin", "save-written", "save-committed"];

/// Where a save is among [`PHASES`]; without other processes there is nothing to wait for.
struct Phases<'a> {
    options: &'a SaveOptions,
    /// Index of the next barrier in [`PHASES`].
    next: usize,
}

impl Phases<'_> {
    /// Waits for the other processes at the next barrier.
    async fn pass(&mut self) -> Result<()> {
        let phase = PHASES[self.next];
        self.next += 1;
        if let Some(mp) = &self.options.multiprocess {
            mp.coordinator.barrier(phase, mp.barrier_timeout).await?;
        }
        Ok(())
    }

    /// Tells the other processes this one gave up with `error`, so that they
    /// fail at the next barrier instead of timing out there. Coordination
    /// failures are not passed on: the others see them at the same barrier.
    async fn abort(&self, error: &Error) {
        let (Some(mp), Some(phase)) = (&self.options.multiprocess, PHASES.get(self.next)) else { return };
        if matches!(error, Error::Coordination(_)) {
            return;
        }
        let reason = error.to_string();
        if let Err(e) = mp.coordinator.abort(phase, &reason).await {
            eprintln!("orbax: process {} could not tell the others that it failed ({reason}): {e}", mp.index());
        }
    }
}

async fn save_in_phases(
    store: &Arc<dyn Storage>,
    path: &str,
    items: &[(&str, Item<'_>)],
    options: &SaveOptions,
    phases: &mut Phases<'_>,
) -> Result<()> {
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Err(Error::InvalidArgument("a checkpoint needs a non-empty path".into()));
    }
    for (name, _) in items {
        if name.is_empty() || name.contains('/') || name.starts_with('.') || name.starts_with('_') {
            return Err(Error::InvalidArgument(format!("{name:?} is not a valid item name")));
        }
    }
    let role = match &options.multiprocess {
        Some(mp) => Role { index: mp.index(), shared: true },
        None => Role::ALONE,
    };
    let existing = store.list_with_delimiter(path).await?;
    let exists = !existing.objects.is_empty() || !existing.prefixes.is_empty();
    if exists && !options.overwrite {
        return Err(Error::Storage(StorageError::AlreadyExists { key: path.to_string() }));
    }
    let atomic = store.capabilities().atomic_rename;
    let work = if atomic { format!("{path}{TMP_MARKER}") } else { path.to_string() };
    if role.is_primary() && (atomic || exists) {
        store.delete_prefix(&work).await?;
    }
    phases.pass().await?;

    let init = now_ns();
    let mut handlers = Map::new();
    let mut written = Vec::new();
    for (name, item) in items {
        let dir = join_key(&work, name);
        match item {
            Item::PyTree(tree) => {
                written.push((dir.clone(), pytree_item::write(store, &dir, name, tree, options, role).await?));
                handlers.insert(name.to_string(), json!(PYTREE_HANDLER));
            }
            Item::Json(value) | Item::Metrics(value) => {
                let (file, handler) = if matches!(item, Item::Metrics(_)) {
                    ("metrics", METRICS_HANDLER)
                } else {
                    ("data.json", JSON_HANDLER)
                };
                if role.is_primary() {
                    let text = to_string(value, JsonStyle::Python);
                    store.put(&join_key(&dir, file), Bytes::from(text), PutMode::Overwrite).await?;
                }
                handlers.insert(name.to_string(), json!(handler));
            }
        }
    }
    phases.pass().await?;
    if !role.is_primary() {
        return phases.pass().await;
    }
    if let Some(mp) = &options.multiprocess {
        for (dir, arrays) in &written {
            pytree_item::finish_shared(store, dir, arrays, mp.coordinator.process_count(), options).await?;
        }
    }
    let metadata = json!({
        "item_handlers": handlers,
        "metrics": {},
        "performance_metrics": {},
        "init_timestamp_nsecs": init,
        "commit_timestamp_nsecs": now_ns(),
        "custom_metadata": options.custom_metadata,
    });
    store
        .put(
            &join_key(&work, "_CHECKPOINT_METADATA"),
            Bytes::from(to_string(&metadata, JsonStyle::Python)),
            PutMode::Overwrite,
        )
        .await?;
    store.put(&join_key(&work, "orbax.checkpoint"), Bytes::new(), PutMode::Overwrite).await?;
    let commit = format!("Checkpoint commit was successful to {path}");
    let mode = if store.capabilities().conditional_create { PutMode::Create } else { PutMode::Overwrite };
    store.put(&join_key(&work, "commit_success.txt"), Bytes::from(commit), mode).await?;

    if atomic {
        if !exists {
            store.rename_prefix(&work, path).await?;
        } else if store.capabilities().atomic_replace {
            store.replace_prefix(&work, path).await?;
        } else {
            // Without an atomic swap there is a moment with no checkpoint at
            // `path`; the old one then sits under an unfinished-save name.
            let old = format!("{path}{TMP_MARKER}-old");
            store.delete_prefix(&old).await?;
            store.rename_prefix(path, &old).await?;
            store.rename_prefix(&work, path).await?;
            store.delete_prefix(&old).await?;
        }
    }
    phases.pass().await
}
