//! Orbax's metadata files: parsers for the JSON files that describe a
//! checkpoint and its PyTree items, and for the legacy msgpack tree file.
//!
//! | file | parser | written by |
//! |---|---|---|
//! | `<ckpt>/_CHECKPOINT_METADATA` | [`CheckpointMetadata`] | Orbax ≥ 0.5.11 |
//! | `<item>/_METADATA` | [`TreeMetadata`] | Orbax ≥ 0.4.3 (0.3.2 opt-in) |
//! | `<item>/_sharding` | [`ShardingFile`] | Orbax ≥ 0.4.0 (base64 member names since Oct 2023; plain names with empty values in 0.4.1) |
//! | `<item>/_strings.json` | [`StringsFile`] | every version seen (0.4.1 – 0.12.8), only when there are string leaves |
//! | `<item>/array_metadatas/process_<i>` | [`ArrayMetadatas`] | Orbax ≥ 0.11.1 |
//! | `<item>/checkpoint` (msgpack) | [`LegacyCheckpoint`] | Orbax ≤ 0.5.20; the only tree description before 0.4.3 |
//!
//! The layer is *sans-IO*: every parser takes the file's bytes and the path
//! to name in errors, and returns plain structs. The caller decides how to
//! fetch the bytes (local disk, object store, an OCDBT database, async or
//! blocking), so the parsers are usable from every storage backend, are
//! trivially unit-tested and fuzzed on byte slices, and never block.
//!
//! The bytes are untrusted. Parsing is validation-first: sizes are checked
//! against limits and against the input length before anything is
//! allocated, nesting is bounded, and every schema violation is a
//! [`MetadataError`] that names the file and the offending entry — never a
//! panic. Members a newer Orbax might add are ignored; members whose absence
//! has a documented meaning get that meaning (see each field's docs).
//!
//! [`unflatten`] turns the flat `(key path, leaf)` lists these files
//! describe back into a nested [`PyTree`](crate::PyTree).

mod array_metadatas;
mod checkpoint;
mod error;
mod json;
mod legacy_msgpack;
mod sharding;
mod strings;
mod tree;
mod tree_build;
mod tree_typed;

pub use array_metadatas::{ArrayMetadataEntry, ArrayMetadatas};
pub use checkpoint::{CheckpointMetadata, ItemHandlers};
pub use error::MetadataError;
pub use json::MAX_JSON_BYTES;
pub use legacy_msgpack::{LegacyCheckpoint, LegacyLeaf, MAX_DEPTH as MAX_MSGPACK_DEPTH, MAX_MSGPACK_BYTES};
pub use sharding::{PartitionSpecEntry, Sharding, ShardingFile};
pub use strings::StringsFile;
pub use tree::{LeafMetadata, TreeMetadata, ValueType, MAX_KEY_LEVELS};
pub use tree_build::unflatten;
