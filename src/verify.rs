//! `verify`: read every byte of a checkpoint, check every checksum, and
//! report every problem instead of stopping at the first.

use std::sync::Arc;

use crate::api::{Checkpoint, LoadOptions};
use crate::error::Error;
use crate::item::PyTreeItem;
use crate::layout::ItemKind;
use crate::ocdbt::Database;
use crate::storage::{join_key, key_basename, Storage};
use crate::ErrorKind;

/// One problem found by [`verify_checkpoint`].
#[derive(Debug)]
pub struct Problem {
    /// What it is.
    pub kind: ErrorKind,
    /// The message, naming the file, key or leaf.
    pub message: String,
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem { kind: e.kind(), message: e.to_string() }
    }
}

/// What [`verify_checkpoint`] looked at and found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Items checked.
    pub items: usize,
    /// Leaves read.
    pub leaves: usize,
    /// OCDBT databases whose every node was read and every value's extent checked.
    pub databases: usize,
    /// Values of OCDBT databases checked.
    pub values: usize,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True if no problem was found.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Opens the database at `prefix` (checking its manifest and every node)
/// and checks that every value lies within its data file. The values' bytes
/// are read by the leaf loads (per-process databases hold the same values
/// as the merged one), so they are not read a second time here.
async fn verify_database(store: &Arc<dyn Storage>, prefix: &str, report: &mut VerifyReport) {
    match Database::open(store.clone(), prefix).await {
        Ok(db) => {
            report.databases += 1;
            for problem in db.verify_value_extents().await {
                report.problems.push(Error::from(problem).into());
            }
            report.values += db.len();
        }
        Err(e) => report.problems.push(Error::from(e).into()),
    }
}

/// Reads everything in the checkpoint at `path`: every item's metadata,
/// every leaf (decoding every chunk, checking shard-index CRCs), and every
/// OCDBT database including the per-process ones (checking manifest and
/// node CRCs and that every value lies within its data file).
pub async fn verify_checkpoint(store: &Arc<dyn Storage>, path: &str, options: &LoadOptions) -> VerifyReport {
    let mut report = VerifyReport::default();
    let checkpoint = match Checkpoint::open(store, path, options).await {
        Ok(c) => c,
        Err(e) => {
            report.problems.push(e.into());
            return report;
        }
    };
    for location in checkpoint.items() {
        report.items += 1;
        match &location.kind {
            ItemKind::Json { .. } => {
                if let Err(e) = checkpoint.json(location.name.as_deref().unwrap_or_default()).await {
                    report.problems.push(e.into());
                }
            }
            ItemKind::PyTree => {
                let item = match PyTreeItem::open(store, &location.path).await {
                    Ok(item) => item,
                    Err(e) => {
                        report.problems.push(e.into());
                        continue;
                    }
                };
                if let Err(e) = item.array_metadatas(store).await {
                    report.problems.push(e.into());
                }
                let keypaths: Vec<_> = item.keypaths().cloned().collect();
                for keypath in keypaths {
                    report.leaves += 1;
                    if let Err(e) = item.load_leaf_at(&keypath).await {
                        report.problems.push(e.into());
                    }
                }
                if item.uses_ocdbt() {
                    verify_database(store, &location.path, &mut report).await;
                    match store.list_with_delimiter(&location.path).await {
                        Ok(listing) => {
                            for sub in listing.prefixes.iter().filter(|p| key_basename(p).starts_with("ocdbt.process_"))
                            {
                                if store.head(&join_key(sub, "manifest.ocdbt")).await.is_ok() {
                                    verify_database(store, sub, &mut report).await;
                                }
                            }
                        }
                        Err(e) => report.problems.push(Error::from(e).into()),
                    }
                }
            }
        }
    }
    report
}
