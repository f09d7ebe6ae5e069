//! Multi-process saves: several processes (each knowing its index and the
//! process count) save one checkpoint together.
//!
//! So far this module holds the coordination layer and the rule of which
//! process writes which region ([`regions_written_by`]): the small [`Coordinator`]
//! trait (a named barrier with a timeout, small enough to back with MPI or a
//! scheduler's barrier) and [`StorageCoordinator`], which coordinates through
//! the checkpoint's own storage so a job needs no extra service. The
//! per-process writes into `ocdbt.process_<i>/` and the primary's merge are
//! not implemented yet.

mod coordinator;
mod ownership;

pub use coordinator::{CoordinationError, Coordinator, StorageCoordinator};
pub use ownership::{contiguous_device_process, regions_written_by};
