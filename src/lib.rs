//! Read and write [Orbax](https://github.com/google/orbax) PyTree
//! checkpoints — the format JAX training jobs write with `orbax-checkpoint`
//! on top of TensorStore — without Python.
//!
//! The crate is layered; each layer is a module that only uses the ones
//! above it in this list:
//!
//! * [`storage`]: bytes by key (local disk, memory; cloud stores in sibling crates,
//!   opened from URLs by [`location`]).
//! * [`ocdbt`]: TensorStore's OCDBT key-value database on top of storage.
//! * [`zarr`]: zarr v3 / v2 arrays on top of a key-value store.
//! * [`metadata`]: Orbax's JSON (and legacy msgpack) metadata files; [`layout`]:
//!   which directories are checkpoints, items and steps.
//! * the PyTree API: reading ([`pytree_metadata`], [`load_pytree`],
//!   [`checkpointables_metadata`], [`load_checkpointables`]), writing
//!   ([`save_pytree`], [`save_checkpointables`]) and [`blocking`] for callers
//!   without an async runtime; [`target`]: loading with a target (shape,
//!   dtype, sharding, placeholders, partial loads).
//! * around it: [`inspect`] (the CLI protocol document), [`export`] /
//!   [`import`] (safetensors, npz), [`verify`], [`cast`] and [`chunking`]
//!   (numpy casting and Orbax's chunk-shape rule).
//! * training loops: [`save_pytree_async`] (returns once the data is
//!   copied) and [`training::Checkpointer`] (steps under a root, save and
//!   preservation policies, like Orbax's `training.Checkpointer`);
//!   [`multiprocess`]: several processes saving one checkpoint (each its
//!   own shards into `ocdbt.process_<i>/`, merged by process 0), coordinated
//!   by a small [`multiprocess::Coordinator`] trait.
//!
//! ```no_run
//! use std::sync::Arc;
//! use orbax::storage::{LocalFileSystem, Storage};
//! use orbax::{blocking, LoadOptions, SaveOptions};
//!
//! let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new("/ckpts"));
//! let tree = blocking::load_pytree(&store, "run1/1000", &LoadOptions::default())?;
//! blocking::block_on(orbax::save_pytree(&store, "copy", &tree, &SaveOptions::default()))?;
//! # Ok::<(), orbax::Error>(())
//! ```
//!
//! The on-disk format is specified in `format-spec/` at the repository root.
#![deny(missing_docs)]

mod api;
pub mod cast;
pub mod chunking;
mod dtype;
mod error;
pub mod export;
pub mod import;
pub mod inspect;
pub mod interop;
mod item;
pub mod kvstore;
pub mod layout;
pub mod location;
pub mod metadata;
pub mod multiprocess;
pub mod npy;
pub mod ocdbt;
pub mod pyjson;
mod python_repr;
mod pytree;
mod save;
pub mod sharded;
pub mod slice;
pub mod storage;
pub mod target;
pub mod training;
pub mod verify;
pub mod zarr;

use orbax_storage::buffer;

pub use api::{
    blocking, checkpointables_metadata, list_checkpoints, load_checkpointables, load_pytree, pytree_metadata,
    Checkpoint, Checkpointable, CheckpointableMetadata, CheckpointablesMetadata, LoadOptions, StepInfo,
};
pub use dtype::{DType, ScalarValue};
pub use error::{Error, Result};
pub use item::{
    load_pytree_sharded, ArrayStorage, LayoutFn, LeafInfo, LeafKind, LeafLayout, PyTreeItem, PyTreeMetadata,
    ShardedLoad,
};
pub use orbax_storage::ErrorKind;
pub use python_repr::{parse_keystr, parse_str_tuple, repr_str, repr_str_tuple};
pub use pytree::{num_elements, Array, KeyEntry, KeyPath, PyTree, Scalar};
pub use save::{
    load_pytree_async, save_checkpointables, save_checkpointables_async, save_pytree, save_pytree_async, TaskHandle,
};
pub use save::{ArraySharding, ProgressFn, SaveOptions, ShardingFn, StorageOptions, StorageOptionsFn};
pub use target::{ArrayTarget, LeafTarget, Target};

/// The README's examples compile (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
