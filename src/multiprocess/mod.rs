//! Multi-process saves: several processes (each knowing its index and the
//! process count) save one checkpoint together.
//!
//! So far this module holds the coordination layer: the small [`Coordinator`]
//! trait (a named barrier with a timeout, small enough to back with MPI or a
//! scheduler's barrier) and [`StorageCoordinator`], which coordinates through
//! the checkpoint's own storage so a job needs no extra service. The
//! per-process writes into `ocdbt.process_<i>/` and the primary's merge are
//! not implemented yet.

mod coordinator;

pub use coordinator::{CoordinationError, Coordinator, StorageCoordinator};
