//! Deleting checkpoints and old steps without disturbing saves in progress.
//!
//! On object stores a save writes in place and creates `commit_success.txt`
//! last, so a step without it is a save in progress (or one that crashed;
//! the two look the same). [`prune_steps`] only ever deletes committed
//! steps, and [`delete_checkpoint`] removes `commit_success.txt` first, so a
//! reader never sees a half-deleted checkpoint that still looks committed.

use std::sync::Arc;

use crate::layout::list_steps;
use crate::storage::{join_key, Storage, StorageError};
use crate::Result;

const COMMIT_FILE: &str = "commit_success.txt";

/// Deletes the checkpoint at `path`: its commit marker first, then every object below it.
pub async fn delete_checkpoint(store: &Arc<dyn Storage>, path: &str) -> Result<()> {
    store.delete(&join_key(path, COMMIT_FILE)).await?;
    store.delete_prefix(path).await?;
    Ok(())
}

/// Whether the step directory `dir` of `root` holds a finished save.
async fn is_committed(store: &Arc<dyn Storage>, root: &str, dir: &str) -> Result<bool> {
    if store.capabilities().atomic_rename {
        // Saves are renamed into place when finished; the name says it all.
        return Ok(true);
    }
    match store.head(&join_key(&join_key(root, dir), COMMIT_FILE)).await {
        Ok(_) => Ok(true),
        Err(StorageError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the oldest committed steps of the managed root `root`, keeping
/// the newest `keep` committed ones, like a `CheckpointManager` with
/// `max_to_keep`. Unfinished steps (temporary names, or no
/// `commit_success.txt` on stores without atomic rename) are never touched
/// and do not count. Returns the deleted step numbers, oldest first.
pub async fn prune_steps(store: &Arc<dyn Storage>, root: &str, keep: usize) -> Result<Vec<u64>> {
    let mut committed = Vec::new();
    for step in list_steps(store.as_ref(), root).await?.into_iter().filter(|s| s.committed) {
        if is_committed(store, root, &step.dir).await? {
            committed.push(step);
        }
    }
    let excess = committed.len().saturating_sub(keep);
    let mut deleted = Vec::with_capacity(excess);
    for step in &committed[..excess] {
        delete_checkpoint(store, &join_key(root, &step.dir)).await?;
        deleted.push(step.step);
    }
    Ok(deleted)
}
