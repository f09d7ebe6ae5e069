//! The [`Coordinator`] trait and its storage-based implementation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::storage::{PutMode, Storage, StorageError};
use crate::ErrorKind;

/// Errors of coordination between the processes of one save.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinationError {
    /// Not every process reached the barrier in time (one died or is stuck).
    #[error(
        "barrier {name:?}: process {index} of {count} timed out after {timeout:?} waiting for processes {missing:?}"
    )]
    Timeout {
        /// The barrier's name.
        name: String,
        /// The waiting process.
        index: usize,
        /// The number of processes.
        count: usize,
        /// How long it waited.
        timeout: Duration,
        /// The processes whose markers never appeared.
        missing: Vec<usize>,
    },
    /// The marker this process would create exists (an earlier run used the same prefix).
    #[error("barrier {name:?}: process {index} already arrived ({key} exists): an earlier run left markers; use a fresh prefix per run")]
    Reused {
        /// The barrier's name.
        name: String,
        /// This process.
        index: usize,
        /// The marker that already exists.
        key: String,
    },
    /// A marker names a process beyond the count (processes disagree on the count).
    #[error("barrier {name:?}: marker {key} names a process beyond the process count {count}")]
    BadMarker {
        /// The barrier's name.
        name: String,
        /// The unexpected key.
        key: String,
        /// The number of processes.
        count: usize,
    },
    /// Another process gave up before this barrier (see [`Coordinator::abort`]).
    #[error("barrier {name:?}: process {process} gave up: {reason}")]
    Aborted {
        /// The barrier's name.
        name: String,
        /// The process that gave up.
        process: usize,
        /// Its reason (its error message).
        reason: String,
    },
    /// The process index is not below the process count.
    #[error("process index {index} is not below the process count {count}")]
    BadIndex {
        /// The given index.
        index: usize,
        /// The given count.
        count: usize,
    },
    /// The store failed.
    #[error("barrier {name:?}: {source}")]
    Storage {
        /// The barrier's name.
        name: String,
        /// The storage error (names the key).
        #[source]
        source: StorageError,
    },
}

impl CoordinationError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoordinationError::Timeout { .. } => ErrorKind::Io,
            CoordinationError::Reused { .. } => ErrorKind::AlreadyExists,
            CoordinationError::Aborted { .. } => ErrorKind::Io,
            CoordinationError::BadMarker { .. } | CoordinationError::BadIndex { .. } => ErrorKind::InvalidArgument,
            CoordinationError::Storage { source, .. } => source.kind(),
        }
    }
}

/// Wraps a storage failure during barrier `name`.
fn storage_error(name: &str) -> impl Fn(StorageError) -> CoordinationError + Copy + '_ {
    move |source| CoordinationError::Storage { name: name.to_string(), source }
}

/// Synchronises the processes of one multi-process save.
///
/// Implementations must make [`Coordinator::barrier`] return `Ok` in a process
/// only once every process of the group has called it with the same name.
#[async_trait]
pub trait Coordinator: Send + Sync {
    /// This process's index, `0..process_count()`; process 0 is the primary.
    fn process_index(&self) -> usize;
    /// The number of processes in the group.
    fn process_count(&self) -> usize;
    /// Waits until all processes have reached the barrier `name`, or fails
    /// with [`CoordinationError::Timeout`] naming the missing processes.
    async fn barrier(&self, name: &str, timeout: Duration) -> Result<(), CoordinationError>;

    /// Gives up on the next barrier, called `name`, in place of reaching it:
    /// the processes waiting there (or arriving later) should fail with
    /// [`CoordinationError::Aborted`] carrying `reason`, rather than time out.
    /// Best effort; the default does nothing, so the others time out.
    async fn abort(&self, name: &str, reason: &str) -> Result<(), CoordinationError> {
        let _ = (name, reason);
        Ok(())
    }
}

/// A [`Coordinator`] that uses marker objects in a store: arriving at its
/// `n`-th barrier, called `name`, process `i` creates
/// `<prefix>/<n as 6 digits>-<name>/process_<i>` with [`PutMode::Create`],
/// then lists that directory (polling with exponential backoff up to
/// [`StorageCoordinator::MAX_POLL`]) until all markers are there. Once it has
/// passed barrier `n` every process has passed barrier `n - 1`, so it deletes
/// its marker of that one; only the last barrier's markers stay.
///
/// All processes must call the barriers in the same order (every save does),
/// and the prefix must be fresh for each run of a job (e.g. include the
/// scheduler's job id): a marker left by an earlier run fails with
/// [`CoordinationError::Reused`] instead of letting a barrier pass on stale
/// markers. [`StorageCoordinator::remove`] deletes a barrier's markers.
/// [`Coordinator::abort`] puts `aborted_<i>` (holding the reason) where the
/// marker would go; a process that lists it fails at once.
pub struct StorageCoordinator {
    store: Arc<dyn Storage>,
    prefix: String,
    index: usize,
    count: usize,
    /// The directory of the last barrier passed, and how many were called.
    state: Mutex<(Option<String>, u64)>,
}

impl StorageCoordinator {
    /// The first polling interval.
    pub const MIN_POLL: Duration = Duration::from_millis(10);
    /// The longest polling interval.
    pub const MAX_POLL: Duration = Duration::from_millis(500);

    /// A coordinator for process `index` of `count`, keeping markers under `prefix` in `store`.
    pub fn new(
        store: Arc<dyn Storage>,
        prefix: impl Into<String>,
        index: usize,
        count: usize,
    ) -> Result<Self, CoordinationError> {
        if index >= count {
            return Err(CoordinationError::BadIndex { index, count });
        }
        let prefix = prefix.into().trim_end_matches('/').to_string();
        Ok(StorageCoordinator { store, prefix, index, count, state: Mutex::new((None, 0)) })
    }

    /// Deletes the markers of every barrier whose name is `name` (whatever its number).
    pub async fn remove(&self, name: &str) -> Result<(), CoordinationError> {
        let storage = storage_error(name);
        let listed = self.store.list_with_delimiter(&self.prefix).await.map_err(storage)?;
        for dir in listed.prefixes {
            let numbered = dir.rsplit('/').next().and_then(|last| last.split_once('-'));
            if numbered.is_some_and(|(n, rest)| n.bytes().all(|b| b.is_ascii_digit()) && rest == name) {
                self.store.delete_prefix(&dir).await.map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Counts a barrier called `name`: the directory of the last one passed
    /// and the directory of this one.
    fn next_barrier(&self, name: &str) -> (Option<String>, String) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.1 += 1;
        (state.0.clone(), format!("{}/{:06}-{name}/", self.prefix, state.1 - 1))
    }

    /// The processes whose markers are not yet in `dir`, the directory of
    /// barrier `name`; an error if one of them gave up there.
    async fn missing(&self, name: &str, dir: &str) -> Result<Vec<usize>, CoordinationError> {
        let storage = storage_error(name);
        let listed = self.store.list(dir).await.map_err(storage)?;
        let mut arrived = vec![false; self.count];
        for meta in listed {
            let Some(rest) = meta.key.strip_prefix(dir) else { continue };
            let (aborted, index) = match (rest.strip_prefix("process_"), rest.strip_prefix("aborted_")) {
                (Some(i), _) => (false, i),
                (_, Some(i)) => (true, i),
                // The store's own temporary files (e.g. a local disk's `.process_3.<pid>.tmp`).
                _ => continue,
            };
            let Ok(index) = index.parse::<usize>() else { continue };
            if index >= self.count {
                return Err(CoordinationError::BadMarker { name: name.to_string(), key: meta.key, count: self.count });
            }
            if aborted {
                let reason = self.store.get(&meta.key).await.map_err(storage)?;
                let reason = String::from_utf8_lossy(&reason).into_owned();
                return Err(CoordinationError::Aborted { name: name.to_string(), process: index, reason });
            }
            arrived[index] = true;
        }
        Ok((0..self.count).filter(|&i| !arrived[i]).collect())
    }
}

#[async_trait]
impl Coordinator for StorageCoordinator {
    fn process_index(&self) -> usize {
        self.index
    }

    fn process_count(&self) -> usize {
        self.count
    }

    async fn barrier(&self, name: &str, timeout: Duration) -> Result<(), CoordinationError> {
        let (previous, dir) = self.next_barrier(name);
        let key = format!("{dir}process_{}", self.index);
        match self.store.put(&key, Bytes::new(), PutMode::Create).await {
            Ok(()) => {}
            Err(StorageError::AlreadyExists { .. }) => {
                return Err(CoordinationError::Reused { name: name.to_string(), index: self.index, key })
            }
            Err(source) => return Err(storage_error(name)(source)),
        }
        let start = Instant::now();
        let mut poll = Self::MIN_POLL;
        loop {
            let missing = self.missing(name, &dir).await?;
            if missing.is_empty() {
                if let Some(previous) = previous {
                    let own = format!("{previous}process_{}", self.index);
                    self.store.delete(&own).await.map_err(storage_error(name))?;
                }
                self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).0 = Some(dir);
                return Ok(());
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(CoordinationError::Timeout {
                    name: name.to_string(),
                    index: self.index,
                    count: self.count,
                    timeout,
                    missing,
                });
            }
            tokio::time::sleep(poll.min(timeout - elapsed)).await;
            poll = (poll * 2).min(Self::MAX_POLL);
        }
    }

    async fn abort(&self, name: &str, reason: &str) -> Result<(), CoordinationError> {
        let (_, dir) = self.next_barrier(name);
        let key = format!("{dir}aborted_{}", self.index);
        let reason = Bytes::from(reason.to_string());
        self.store.put(&key, reason, PutMode::Overwrite).await.map_err(storage_error(name))
    }
}
