//! Merging databases written side by side (one per process) into the
//! database that contains them, as Orbax's `merge_ocdbt_per_process_files`
//! has TensorStore copy each `ocdbt.process_<i>/` into the item's database.
//!
//! Every key of the latest generation of every child is copied into a new
//! B+tree of the parent: inline values are copied (and written out of line
//! into the parent's own data files if longer than the parent's inline
//! limit), out-of-line values are referenced where they are, with the
//! child's directory as the data file's base path
//! (`base_path = "ocdbt.process_0/"`, `relative_path = "d/<hex>"`). Nothing
//! else is read or copied, so the merge costs the children's B+trees, not
//! their data.

use std::collections::HashMap;
use std::sync::Arc;

use super::database::{Database, ValueRef};
use super::writer::{DatabaseWriter, WriteSummary, WriterOptions};
use super::OcdbtError;
use crate::storage::{join_key, Storage};

/// What [`merge_databases`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MergeSummary {
    /// The new database.
    pub written: WriteSummary,
    /// Its keys, in no particular order (callers checking them need not
    /// read the database back).
    pub keys: Vec<Box<[u8]>>,
}

/// Writes a new database at `prefix` holding every key of the databases at
/// `prefix/<child>` for each of `children` (directory names such as
/// `ocdbt.process_0`). A key present in two children is an error naming
/// both. `prefix/manifest.ocdbt` must not exist yet.
pub async fn merge_databases(
    store: Arc<dyn Storage>,
    prefix: &str,
    children: &[String],
    options: WriterOptions,
) -> Result<MergeSummary, OcdbtError> {
    let prefix = prefix.trim_end_matches('/');
    let mut writer = DatabaseWriter::create(store.clone(), prefix, options).await?;
    let mut owner: HashMap<Box<[u8]>, usize> = HashMap::new();
    for (i, child) in children.iter().enumerate() {
        let invalid = |what: String| OcdbtError::InvalidArgument { database: prefix.to_string(), what };
        let base = format!("{}/", child.trim_end_matches('/'));
        if crate::storage::validate_key(&base[..base.len() - 1]).is_err() || child.is_empty() {
            return Err(invalid(format!("{child:?} is not a safe child directory name")));
        }
        let db = Database::open(store.clone(), &join_key(prefix, child)).await?;
        let own_files = format!("{}/", db.prefix());
        for (key, value) in db.entries() {
            if let Some(first) = owner.insert(key.into(), i) {
                return Err(invalid(format!(
                    "key {:?} is in both {} and {child}",
                    String::from_utf8_lossy(key),
                    children[first]
                )));
            }
            match value {
                ValueRef::Inline(bytes) => writer.put(key, bytes.clone()).await?,
                ValueRef::OutOfLine { file, offset, length } => {
                    // The reader resolved `file` below the child's own directory.
                    let relative = file
                        .strip_prefix(&own_files)
                        .ok_or_else(|| invalid(format!("{child}: value file {file} is outside the child database")))?;
                    writer.put_reference(key, &base, relative, *offset, *length)?;
                }
            }
        }
    }
    let written = writer.finish().await?;
    Ok(MergeSummary { written, keys: owner.into_keys().collect() })
}
