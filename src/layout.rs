//! Where things are: checkpoints, their items, and the steps of a managed root.
//!
//! Orbax has written several directory layouts over the years (see
//! `format-spec/01-layout.md`): v1 checkpoints with one directory per
//! checkpointable (`state/`, formerly `pytree/`), v0 `CheckpointManager`
//! steps with named items (`default/`, `state/`, ...), and v0 direct saves
//! that put the PyTree files in the checkpoint directory itself. This module
//! recognises all of them by the files present, never by version numbers.

use std::sync::Arc;

use crate::storage::{join_key, key_basename, Storage, StorageError};
use crate::Error;

/// Files whose presence marks a directory as holding a PyTree item.
const PYTREE_MARKERS: &[&str] = &["_METADATA", "manifest.ocdbt", "checkpoint", "_sharding", "_strings.json"];
/// Files that mark a checkpoint directory.
const CHECKPOINT_MARKERS: &[&str] = &["_CHECKPOINT_METADATA", "orbax.checkpoint"];
/// Files in an item directory that are not the item's payload.
const BOOKKEEPING_FILES: &[&str] = &["commit_success.txt"];

/// The name part Orbax adds to a directory while a save is in progress.
pub const TMP_MARKER: &str = ".orbax-checkpoint-tmp";
/// Suffix of a staged partial save (`ocp.partial.save`).
pub const PARTIAL_SAVE_SUFFIX: &str = ".partial_save";

/// Why a directory name marks an unfinished save, if it does.
pub fn unfinished_reason(name: &str) -> Option<&'static str> {
    if name.contains(TMP_MARKER) {
        Some("its name marks a save that has not finished (it contains '.orbax-checkpoint-tmp')")
    } else if name.ends_with(PARTIAL_SAVE_SUFFIX) {
        Some("its name marks a partial save that was never finalized ('.partial_save')")
    } else {
        None
    }
}

/// What an item directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    /// A PyTree (arrays, scalars, strings, ...).
    PyTree,
    /// A JSON document stored in one file.
    Json {
        /// The key of that file.
        file: String,
    },
}

/// One item ("checkpointable") of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLocation {
    /// The item name; `None` for a v0 checkpoint saved without item directories.
    pub name: Option<String>,
    /// The item's directory (key prefix).
    pub path: String,
    /// What it holds.
    pub kind: ItemKind,
}

/// A checkpoint directory and its items, sorted by name.
#[derive(Debug, Clone)]
pub struct CheckpointLocation {
    /// The checkpoint directory (key prefix).
    pub path: String,
    /// Its items.
    pub items: Vec<ItemLocation>,
    /// Whether `commit_success.txt` is present (absent in pre-0.12.3 local checkpoints).
    pub has_commit_file: bool,
}

/// Options for locating a checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocateOptions {
    /// Read a checkpoint whose save never finished.
    pub allow_uncommitted: bool,
}

struct Listing {
    files: Vec<String>,
    dirs: Vec<String>,
}

impl Listing {
    async fn of(store: &dyn Storage, path: &str) -> Result<Listing, StorageError> {
        let list = store.list_with_delimiter(path).await?;
        Ok(Listing {
            files: list.objects.iter().map(|o| key_basename(&o.key).to_string()).collect(),
            dirs: list.prefixes.iter().map(|p| key_basename(p).to_string()).collect(),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.files.iter().any(|f| f == name)
    }

    fn has_any(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.has(n))
    }

    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }
}

/// Finds the items of the checkpoint at `path`. `path` may be a checkpoint,
/// one of its item directories, or a v0 checkpoint without item directories.
pub async fn locate_checkpoint(
    store: &Arc<dyn Storage>,
    path: &str,
    options: LocateOptions,
) -> Result<CheckpointLocation, Error> {
    let path = path.trim_end_matches('/').to_string();
    if let Some(reason) = unfinished_reason(key_basename(&path)) {
        if !options.allow_uncommitted {
            return Err(Error::Uncommitted { path, reason: reason.to_string() });
        }
    }
    let listing = Listing::of(store.as_ref(), &path).await?;
    if listing.is_empty() {
        return Err(Error::NotACheckpoint { path, what: "nothing is stored there".into() });
    }
    let has_commit_file = listing.has("commit_success.txt");
    if listing.has_any(PYTREE_MARKERS) {
        // The directory holds a PyTree itself: either an item directory of a
        // checkpoint, or a v0 direct save.
        let parent = match path.rfind('/') {
            Some(i) => path[..i].to_string(),
            None => String::new(),
        };
        let parent_listing = if listing.has_any(CHECKPOINT_MARKERS) || path.is_empty() {
            None
        } else {
            Some(Listing::of(store.as_ref(), &parent).await?).filter(|l| l.has_any(CHECKPOINT_MARKERS))
        };
        let name = parent_listing.as_ref().map(|_| key_basename(&path).to_string());
        let committed = has_commit_file || parent_listing.is_some_and(|l| l.has("commit_success.txt"));
        require_commit_file(store.as_ref(), &path, committed, options)?;
        let items = vec![ItemLocation { name, path: path.clone(), kind: ItemKind::PyTree }];
        return Ok(CheckpointLocation { path, items, has_commit_file });
    }
    let mut items = Vec::new();
    for dir in &listing.dirs {
        if unfinished_reason(dir).is_some() {
            continue;
        }
        let item_path = join_key(&path, dir);
        let sub = Listing::of(store.as_ref(), &item_path).await?;
        if sub.has_any(PYTREE_MARKERS) {
            items.push(ItemLocation { name: Some(dir.clone()), path: item_path, kind: ItemKind::PyTree });
        } else if sub.dirs.is_empty() {
            let payload: Vec<&String> = sub.files.iter().filter(|f| !BOOKKEEPING_FILES.contains(&f.as_str())).collect();
            if let [file] = payload.as_slice() {
                let file = join_key(&item_path, file);
                items.push(ItemLocation { name: Some(dir.clone()), path: item_path, kind: ItemKind::Json { file } });
            }
        }
    }
    if items.is_empty() {
        let steps = parse_steps(&listing.dirs);
        let what = if !steps.is_empty() {
            format!(
                "this is a root of {} step(s) ({}); pass one step directory",
                steps.len(),
                steps.iter().take(5).map(|s| s.dir.as_str()).collect::<Vec<_>>().join(", ")
            )
        } else if listing.has_any(CHECKPOINT_MARKERS) {
            "the checkpoint has no items".to_string()
        } else {
            "no Orbax metadata (_CHECKPOINT_METADATA, _METADATA, manifest.ocdbt) found".to_string()
        };
        return Err(Error::NotACheckpoint { path, what });
    }
    require_commit_file(store.as_ref(), &path, has_commit_file, options)?;
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(CheckpointLocation { path, items, has_commit_file })
}

/// On stores without atomic rename (object stores) a save is written in
/// place and `commit_success.txt` is written last, so its absence marks a
/// save that has not finished. On local disks it is optional: checkpoints
/// written before Orbax 0.12.3 do not have it.
fn require_commit_file(store: &dyn Storage, path: &str, committed: bool, options: LocateOptions) -> Result<(), Error> {
    if committed || options.allow_uncommitted || store.capabilities().atomic_rename {
        return Ok(());
    }
    Err(Error::Uncommitted {
        path: path.to_string(),
        reason: "commit_success.txt is missing, and on this store it is written last by every save".into(),
    })
}

/// A step directory of a managed root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDir {
    /// The step number.
    pub step: u64,
    /// The directory name (`7`, `ckpt_7`, `0007`, ...).
    pub dir: String,
    /// False for leftovers of unfinished saves (`7.orbax-checkpoint-tmp...`).
    pub committed: bool,
}

/// Parses a step directory name as Orbax's step name formats write it:
/// `<step>`, `<prefix>_<step>`, zero-padded variants, plus an unfinished-save
/// suffix.
pub fn parse_step_name(name: &str) -> Option<StepDir> {
    let (base, committed) = match name.find(TMP_MARKER) {
        Some(i) => (&name[..i], false),
        None => (name, true),
    };
    let digits = match base.rfind('_') {
        Some(i) if i > 0 => &base[i + 1..],
        _ => base,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = digits.parse().ok()?;
    Some(StepDir { step, dir: name.to_string(), committed })
}

fn parse_steps(dirs: &[String]) -> Vec<StepDir> {
    let mut steps: Vec<StepDir> = dirs.iter().filter_map(|d| parse_step_name(d)).collect();
    steps.sort_by(|a, b| (a.step, &a.dir).cmp(&(b.step, &b.dir)));
    steps
}

/// The step directories of a managed root, sorted by step, including
/// unfinished ones (marked `committed: false`).
pub async fn list_steps(store: &dyn Storage, root: &str) -> Result<Vec<StepDir>, Error> {
    let listing = Listing::of(store, root).await?;
    Ok(parse_steps(&listing.dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names() {
        let s = |n: &str| parse_step_name(n).map(|s| (s.step, s.committed));
        assert_eq!(s("0"), Some((0, true)));
        assert_eq!(s("ckpt_00007"), Some((7, true)));
        assert_eq!(s("0023"), Some((23, true)));
        assert_eq!(s("step_23.orbax-checkpoint-tmp-17"), Some((23, false)));
        assert_eq!(s("5.orbax-checkpoint-tmp"), Some((5, false)));
        assert_eq!(s("metadata"), None);
        assert_eq!(s("ckpt_"), None);
    }

    #[test]
    fn unfinished_names() {
        assert!(unfinished_reason("3.orbax-checkpoint-tmp-1234").is_some());
        assert!(unfinished_reason("ckpt.partial_save").is_some());
        assert!(unfinished_reason("3").is_none());
    }
}
