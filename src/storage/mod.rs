//! Storage: bytes by key, ranged reads, listing and the primitives atomic
//! commit needs.
//!
//! The trait and the local stores live in the `orbax-storage` crate (so that
//! the cloud backend crates in `backends/` can implement it without
//! depending on this crate); everything is re-exported here unchanged.
//! [`battery`] is the test battery every backend runs: it saves and loads
//! whole checkpoints, so it lives here, above the storage layer.

pub mod battery;

pub use orbax_storage::*;
