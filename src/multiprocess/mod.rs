//! Multi-process saves: several processes (each knowing its index and the
//! process count) save one checkpoint together, as a multi-host JAX job
//! does with Orbax.
//!
//! Every process calls [`crate::save_pytree`] (or
//! [`crate::save_checkpointables`]) with the same path, the same tree
//! structure and [`SaveOptions::multiprocess`](crate::SaveOptions::multiprocess)
//! set. Its [`PyTree::Sharded`](crate::PyTree::Sharded) leaves hold only the
//! shards of its own devices. Each process writes the chunks of the regions it
//! owns ([`regions_written_by`]: a region is written once, by the process
//! holding the region's first device in mesh order, so replicated data is
//! written once) into its own OCDBT database `<item>/ocdbt.process_<i>/`
//! (without OCDBT, straight into the arrays' directories).
//! The primary (process 0) also writes everything a process holds whole
//! (arrays without shards, scalars, strings, JSON items) and the item
//! metadata; after a barrier it merges the per-process databases into the
//! item's top-level database as Orbax does (values stay where they were
//! written and are referenced from the merged B+tree), checks that every
//! chunk was written, and commits. A process whose save fails makes the
//! others fail at their next barrier with its error ([`Coordinator::abort`]);
//! one that dies makes them time out naming it. A [`crate::training::Checkpointer`]
//! per process does the same for each step.
//!
//! Coordination goes through the small [`Coordinator`] trait (a named
//! barrier with a timeout, small enough to back with MPI or a scheduler's
//! barrier); [`StorageCoordinator`] coordinates through the checkpoint's own
//! storage so a job needs no extra service.

mod coordinator;
mod ownership;

use std::sync::Arc;
use std::time::Duration;

pub use coordinator::{CoordinationError, Coordinator, StorageCoordinator};
pub use ownership::regions_written_by;

/// How one process takes part in a multi-process save.
///
/// ```
/// use std::sync::Arc;
/// use orbax::multiprocess::{MultiProcess, StorageCoordinator};
/// use orbax::storage::InMemory;
///
/// let store = Arc::new(InMemory::new());
/// let coordinator = StorageCoordinator::new(store, "coordination/job-42", 0, 1).unwrap();
/// let options = orbax::SaveOptions { multiprocess: Some(MultiProcess::new(Arc::new(coordinator))), ..Default::default() };
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct MultiProcess {
    /// This process's index and count, and the barriers between the phases of a save.
    pub coordinator: Arc<dyn Coordinator>,
    /// How long a process waits at a barrier for the others (default 10 minutes,
    /// Orbax's default async timeout).
    pub barrier_timeout: Duration,
}

impl MultiProcess {
    /// The default barrier timeout.
    pub const DEFAULT_BARRIER_TIMEOUT: Duration = Duration::from_secs(600);

    /// Takes part in saves through `coordinator`, with the default timeout.
    pub fn new(coordinator: Arc<dyn Coordinator>) -> Self {
        MultiProcess { coordinator, barrier_timeout: Self::DEFAULT_BARRIER_TIMEOUT }
    }

    /// This process's index.
    pub fn index(&self) -> usize {
        self.coordinator.process_index()
    }

    /// Whether this is the primary process (index 0), which writes the metadata and commits.
    pub fn is_primary(&self) -> bool {
        self.index() == 0
    }
}

impl std::fmt::Debug for MultiProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiProcess")
            .field("process_index", &self.coordinator.process_index())
            .field("process_count", &self.coordinator.process_count())
            .field("barrier_timeout", &self.barrier_timeout)
            .finish()
    }
}
