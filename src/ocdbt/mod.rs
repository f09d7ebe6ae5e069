//! TensorStore's OCDBT key-value database: reading any, writing new ones.
//!
//! OCDBT ("Optionally-Cooperative Distributed B+Tree") is the database Orbax
//! stores a checkpoint's arrays in: a `manifest.ocdbt` file that names the
//! root of a versioned B+tree, and log-structured data files (`d/<hex>`)
//! holding out-of-line values and encoded tree nodes.
//!
//! The module is split the way the format is: pure decoders that turn bytes
//! into structures and never do I/O (`codec` for the shared envelope and
//! varints, then the data file table, manifest, version tree and B+tree
//! node decoders), and one I/O layer, [`Database`], that walks the tree
//! through [`crate::storage::Storage`]. Keeping the decoders sans-IO makes
//! every malformed-input case unit-testable with a byte string, and lets the
//! walker choose how to batch reads (all nodes of one tree level at once,
//! ranges of one data file in one coalesced request).
//!
//! Opening a database reads the whole B+tree of one version and keeps a
//! sorted in-memory index from key to value location; values themselves are
//! read on demand. An Orbax item typically has thousands of keys, so the
//! index is small, and every later lookup costs no I/O.
//!
//! [`DatabaseWriter`] writes a new single-generation database the way Orbax
//! has TensorStore write one: pure encoders (`encode`, the inverses of the
//! decoders) and one I/O layer that streams large values into data files,
//! builds the B+tree bottom-up and writes `manifest.ocdbt` last.
//! [`merge_databases`] combines per-process databases into their parent as
//! Orbax does after a multi-process save.

mod btree;
mod codec;
mod data_file_table;
mod database;
mod encode;
mod error;
mod manifest;
mod merge;
mod version_tree;
mod writer;

pub use database::{Database, Limits, ValueRef};
pub use error::OcdbtError;
pub use manifest::{Compression, Config, ManifestKind};
pub use merge::{merge_databases, MergeSummary};
pub use version_tree::{Statistics, VersionInfo};
pub use writer::{DatabaseWriter, WriteSummary, WriterOptions};
