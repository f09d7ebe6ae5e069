//! Loading what the caller asks for: a [`Target`] says, per leaf, the shape,
//! dtype and sharding to load it as, or that it is skipped
//! ([`LeafTarget::Placeholder`]), as the target (`abstract_pytree`) of
//! Orbax's `load_pytree(path, target)` does.
//!
//! Semantics (Orbax 0.12.8, see format-spec/10-targeted-loads.md):
//!
//! * the target's leaves must match the checkpoint's; with
//!   [`LoadOptions::partial_load`](crate::LoadOptions) only the leaves the
//!   target names are loaded. Either way, mismatching key paths are listed
//!   in the error;
//! * a placeholder leaf skips that leaf, or every leaf below it; the result
//!   holds `None` there (Orbax returns `...`);
//! * an array whose stored shape differs from the target's is an error
//!   naming both shapes, unless padding and truncation are enabled: then
//!   the overlap is kept and the rest filled with zeros (Orbax reads into
//!   `np.zeros`, not the zarr fill value);
//! * the dtype is converted after padding with numpy `astype` semantics
//!   ([`crate::cast`]: complex → real drops the imaginary part, float → int
//!   truncates toward zero and saturates out-of-range values);
//! * a target sharding gives a [`PyTree::Sharded`] leaf with one shard per
//!   device of the sharding, each read from only the chunks it intersects
//!   (whole-array read and split by [`load_sharded_leaf`] only when the
//!   target also pads or truncates).

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};

use crate::cast::{cast_array, cast_scalar};
use crate::error::{Error, Result};
use crate::item::{LeafKind, LeafLayout, PyTreeItem, PyTreeMetadata, ShardedLoad};
use crate::metadata::{unflatten, Sharding};
use crate::pytree::{num_elements, Array, KeyEntry, KeyPath, PyTree, Scalar};
use crate::sharded::{device_regions, Shard, ShardedArray};
use crate::storage::join_key;
use crate::zarr::{copy_block, on_cpu_pool, Region};
use crate::DType;

/// Leaves loaded concurrently by [`load_with_target`].
const LOAD_CONCURRENCY: usize = 4;

/// Key paths listed in a structure-mismatch error before it is cut short.
const MAX_LISTED_KEYS: usize = 20;

/// How to load one array leaf, like a `jax.ShapeDtypeStruct`.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayTarget {
    /// The shape to load (`[]` for scalars).
    pub shape: Vec<u64>,
    /// The dtype to convert to.
    pub dtype: DType,
    /// The device layout to load onto; `None` loads one whole array.
    pub sharding: Option<Sharding>,
}

/// How to load one leaf of the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum LeafTarget {
    /// As saved: on-disk shape and dtype (strings, `None`, empty containers,
    /// or arrays the caller has no wishes for).
    AsSaved,
    /// As an array of this shape, dtype and sharding.
    Array(ArrayTarget),
    /// Skip this leaf, or every leaf below this key path (`ocp.PLACEHOLDER`).
    Placeholder,
}

/// What to load: a [`LeafTarget`] per key path, like the target PyTree of
/// Orbax's `load_pytree`. Build one from a tree of concrete values
/// (`Target::from(&tree)`), from [`PyTreeMetadata`] (the metadata of a
/// checkpoint is a valid target for it), or leaf by leaf.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    leaves: Vec<(KeyPath, LeafTarget)>,
}

impl Target {
    /// A target with these leaves.
    pub fn new(leaves: impl IntoIterator<Item = (KeyPath, LeafTarget)>) -> Target {
        Target { leaves: leaves.into_iter().collect() }
    }

    /// The leaves, in the order given.
    pub fn leaves(&self) -> &[(KeyPath, LeafTarget)] {
        &self.leaves
    }

    /// The target of the leaf at `keypath`, if it has one.
    pub fn get(&self, keypath: &KeyPath) -> Option<&LeafTarget> {
        self.leaves.iter().find(|(k, _)| k == keypath).map(|(_, t)| t)
    }

    /// Sets the target of the leaf at `keypath`, adding it if absent.
    pub fn set(&mut self, keypath: KeyPath, target: LeafTarget) {
        match self.leaves.iter_mut().find(|(k, _)| *k == keypath) {
            Some((_, t)) => *t = target,
            None => self.leaves.push((keypath, target)),
        }
    }

    /// Replaces every leaf at or below `prefix` by one placeholder at
    /// `prefix`: that subtree is not loaded.
    pub fn skip(mut self, prefix: &KeyPath) -> Target {
        let position = self.leaves.iter().position(|(k, _)| is_prefix(prefix, k));
        self.leaves.retain(|(k, _)| !is_prefix(prefix, k));
        let at = position.unwrap_or(self.leaves.len()).min(self.leaves.len());
        self.leaves.insert(at, (prefix.clone(), LeafTarget::Placeholder));
        self
    }

    /// Applies `f` to every array leaf (as `jax.tree.map` over
    /// `ShapeDtypeStruct`s), e.g. to change every dtype or sharding.
    pub fn map_arrays(mut self, mut f: impl FnMut(&KeyPath, ArrayTarget) -> LeafTarget) -> Target {
        for (keypath, leaf) in &mut self.leaves {
            if let LeafTarget::Array(array) = leaf {
                *leaf = f(keypath, array.clone());
            }
        }
        self
    }

    /// The same target with every array leaf converted to `dtype`.
    pub fn with_dtype(self, dtype: DType) -> Target {
        self.map_arrays(|_, a| LeafTarget::Array(ArrayTarget { dtype, ..a }))
    }

    /// The same target with every array leaf loaded whole (no sharding).
    pub fn unsharded(self) -> Target {
        self.map_arrays(|_, a| LeafTarget::Array(ArrayTarget { sharding: None, ..a }))
    }

    /// Keeps only the leaves whose JAX keystr (`['params']['w']`) matches
    /// one of `globs` (`*`: any run of characters, `?`: one character;
    /// everything else literal); load the result with `partial_load`.
    pub fn filter_keys<S: AsRef<str>>(mut self, globs: &[S]) -> Target {
        self.leaves.retain(|(k, _)| {
            let keystr = k.to_string();
            globs.iter().any(|g| glob_match(g.as_ref(), &keystr))
        });
        self
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters and `?` any one character (iterative, linear backtracking).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A leaf converted to `dtype` with numpy `astype` semantics (arrays and
/// scalars; other leaves cannot be cast).
pub fn cast_leaf(leaf: PyTree, dtype: DType) -> Result<PyTree> {
    match leaf {
        PyTree::Array(array) => Ok(PyTree::Array(cast_array(&array, dtype))),
        PyTree::Scalar(scalar) => {
            let bytes = cast_scalar(scalar.value(), dtype);
            Ok(PyTree::Scalar(Scalar::from_bytes(dtype, bytes).map_err(Error::InvalidArgument)?))
        }
        other => Err(Error::InvalidArgument(format!("cannot cast a {} to {dtype}", other.kind_name()))),
    }
}

fn is_prefix(prefix: &KeyPath, path: &KeyPath) -> bool {
    path.entries().starts_with(prefix.entries())
}

impl From<&PyTree> for Target {
    /// A concrete tree as a target: arrays are loaded with their shape and
    /// dtype (and sharding, for sharded arrays); other leaves as saved.
    fn from(tree: &PyTree) -> Target {
        Target::new(tree.leaves().into_iter().map(|(keypath, leaf)| {
            let target = match leaf {
                PyTree::Array(a) => {
                    LeafTarget::Array(ArrayTarget { shape: a.shape().to_vec(), dtype: a.dtype(), sharding: None })
                }
                PyTree::Sharded(s) => LeafTarget::Array(ArrayTarget {
                    shape: s.global_shape().to_vec(),
                    dtype: s.dtype(),
                    sharding: s.sharding().cloned(),
                }),
                _ => LeafTarget::AsSaved,
            };
            (keypath, target)
        }))
    }
}

impl From<&PyTreeMetadata> for Target {
    /// A checkpoint's metadata as a target: arrays and scalars with their
    /// saved shape, dtype and sharding; other leaves as saved.
    fn from(metadata: &PyTreeMetadata) -> Target {
        Target::new(metadata.leaves.iter().map(|leaf| {
            let target = match (leaf.kind, &leaf.shape, leaf.dtype) {
                (LeafKind::Array | LeafKind::Scalar, Some(shape), Some(dtype)) => LeafTarget::Array(ArrayTarget {
                    shape: shape.clone(),
                    dtype,
                    sharding: if leaf.kind == LeafKind::Array { leaf.sharding.clone() } else { None },
                }),
                _ => LeafTarget::AsSaved,
            };
            (leaf.keypath.clone(), target)
        }))
    }
}

impl From<PyTreeMetadata> for Target {
    /// See `From<&PyTreeMetadata>`.
    fn from(metadata: PyTreeMetadata) -> Target {
        Target::from(&metadata)
    }
}

/// Options of a targeted load (the fields of [`crate::LoadOptions`] it uses).
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetOptions {
    /// Load only the leaves the target names (Orbax's `partial_load`).
    pub partial_load: bool,
    /// Pad or truncate arrays whose stored shape differs from the target's.
    pub enable_padding_and_truncation: bool,
    /// Bound on fetched-but-undecoded bytes of each sharded leaf read.
    pub read_concurrent_bytes: Option<u64>,
}

/// A Python tuple rendering of a shape: `(8,)`, `(2, 3)`, `()`.
fn shape_repr(shape: &[u64]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

fn list_keys(out: &mut String, keys: &[&KeyPath], what: &str) {
    for key in keys.iter().take(MAX_LISTED_KEYS) {
        out.push_str(&format!(
            "\n  {}: {what}",
            if key.entries().is_empty() { "<root>".into() } else { key.to_string() }
        ));
    }
    if keys.len() > MAX_LISTED_KEYS {
        out.push_str(&format!("\n  ... and {} more {what}", keys.len() - MAX_LISTED_KEYS));
    }
}

/// What to do with each saved leaf, in the checkpoint's order.
enum Plan<'a> {
    Load(&'a KeyPath, &'a LeafTarget),
    /// A placeholder at this key path (emitted once per placeholder).
    Skip(&'a KeyPath),
}

/// Matches the target against the checkpoint's key paths.
fn plan<'a>(item: &'a PyTreeItem, target: &'a Target, options: TargetOptions) -> Result<Vec<Plan<'a>>> {
    let saved: Vec<&KeyPath> = item.keypaths().collect();
    let saved_leaves: HashSet<&KeyPath> = saved.iter().copied().collect();
    // Every saved leaf and every node above one.
    let saved_nodes: HashSet<&[KeyEntry]> =
        saved.iter().flat_map(|k| (0..=k.entries().len()).map(move |n| &k.entries()[..n])).collect();
    let by_key: HashMap<&[KeyEntry], (&KeyPath, &LeafTarget)> =
        target.leaves.iter().map(|(k, t)| (k.entries(), (k, t))).collect();

    let not_saved: Vec<&KeyPath> = target
        .leaves
        .iter()
        .filter(|(k, t)| match t {
            // A placeholder may stand for a whole subtree.
            LeafTarget::Placeholder => !saved_nodes.contains(k.entries()),
            _ => !saved_leaves.contains(k),
        })
        .map(|(k, _)| k)
        .collect();
    let mut plans = Vec::new();
    let mut not_targeted = Vec::new();
    let mut skipped: HashSet<&KeyPath> = HashSet::new();
    for &keypath in &saved {
        // The target of this leaf, or of the nearest node above it.
        let found = (0..=keypath.entries().len()).rev().find_map(|n| by_key.get(&keypath.entries()[..n]));
        match found {
            Some((k, LeafTarget::Placeholder)) => {
                if skipped.insert(k) {
                    plans.push(Plan::Skip(k));
                }
            }
            Some((k, leaf)) if *k == keypath => plans.push(Plan::Load(keypath, leaf)),
            _ => not_targeted.push(keypath),
        }
    }
    let missing_from_target = !options.partial_load && !not_targeted.is_empty();
    if not_saved.is_empty() && !missing_from_target {
        return Ok(plans);
    }
    let mut what = String::from("the target's tree structure does not match the checkpoint's:");
    list_keys(&mut what, &not_saved, "in the target, not in the checkpoint");
    if missing_from_target {
        list_keys(&mut what, &not_targeted, "in the checkpoint, not in the target");
        what.push_str("\nIf this mismatch is intentional, set partial_load to load only the leaves the target names.");
    }
    Err(Error::Structure { path: join_key(item.path(), "_METADATA"), what })
}

/// Loads the leaves of `item` that `target` asks for, as it asks for them,
/// and rebuilds the tree (see the module documentation for the rules).
pub async fn load_with_target(item: &PyTreeItem, target: &Target, options: TargetOptions) -> Result<PyTree> {
    let plans = plan(item, target, options)?;
    let leaves: Vec<(KeyPath, PyTree)> = futures::stream::iter(plans)
        .map(|plan| async move {
            match plan {
                Plan::Skip(keypath) => Ok((keypath.clone(), PyTree::None)),
                Plan::Load(keypath, leaf) => {
                    if let Some(value) = load_sharded_in_place(item, keypath, leaf, options).await? {
                        return Ok((keypath.clone(), value));
                    }
                    let saved = item.load_leaf_at(keypath).await?;
                    // Casting and padding are CPU-bound: on the pool, like chunk decoding.
                    let leaf = leaf.clone();
                    let value =
                        on_cpu_pool(move || conform(saved, &leaf, options)).await.map_err(|e| e.at_leaf(keypath))?;
                    Ok::<_, Error>((keypath.clone(), value))
                }
            }
        })
        .buffered(LOAD_CONCURRENCY)
        .try_collect()
        .await?;
    unflatten(leaves).map_err(|what| Error::Structure { path: join_key(item.path(), "_METADATA"), what })
}

/// A leaf whose target has a sharding and the stored shape: each device's
/// region read on its own (only the chunks it needs, see
/// [`PyTreeItem::load_leaf_sharded`]), then cast. `None` when the target asks
/// for something else (no sharding, or a padded / truncated shape, which is
/// read whole and split by [`load_sharded_leaf`]).
async fn load_sharded_in_place(
    item: &PyTreeItem,
    keypath: &KeyPath,
    leaf: &LeafTarget,
    options: TargetOptions,
) -> Result<Option<PyTree>> {
    let LeafTarget::Array(ArrayTarget { shape, dtype, sharding: Some(sharding) }) = leaf else { return Ok(None) };
    if item.array_shape(keypath).await?.as_deref() != Some(shape.as_slice()) {
        return Ok(None);
    }
    device_regions(sharding, shape)
        .map_err(|e| Error::InvalidArgument(format!("target sharding: {e}")).at_leaf(keypath))?;
    let load = ShardedLoad { devices: None, max_bytes_in_flight: options.read_concurrent_bytes };
    let loaded = item.load_leaf_sharded(keypath, &LeafLayout::Sharding(sharding.clone()), &load).await?;
    let dtype = *dtype;
    let cast = on_cpu_pool(move || cast_shards(loaded, dtype)).await.map_err(|e| e.at_leaf(keypath))?;
    Ok(Some(cast))
}

/// Every shard of a sharded leaf converted to `dtype`.
fn cast_shards(leaf: PyTree, dtype: DType) -> Result<PyTree> {
    let PyTree::Sharded(sharded) = leaf else { return cast_leaf(leaf, dtype) };
    if sharded.dtype() == dtype {
        return Ok(PyTree::Sharded(sharded));
    }
    let (shape, sharding) = (sharded.global_shape().to_vec(), sharded.sharding().cloned());
    let shards = sharded.into_shards().into_iter().map(|s| Shard { data: cast_array(&s.data, dtype), ..s }).collect();
    ShardedArray::new(shape, dtype, sharding, shards).map(PyTree::Sharded).map_err(Error::InvalidArgument)
}

/// Gives a loaded leaf the target's shape, dtype and sharding.
fn conform(saved: PyTree, leaf: &LeafTarget, options: TargetOptions) -> Result<PyTree> {
    let LeafTarget::Array(target) = leaf else { return Ok(saved) };
    match saved {
        PyTree::Array(array) => {
            let array = if array.shape() == target.shape.as_slice() {
                array
            } else if options.enable_padding_and_truncation {
                pad_or_truncate(&array, &target.shape)?
            } else {
                return Err(Error::InvalidArgument(format!(
                    "requested shape {} is not compatible with the stored shape {}; \
                     enable_padding_and_truncation pads or truncates it",
                    shape_repr(&target.shape),
                    shape_repr(array.shape())
                )));
            };
            let array = if array.dtype() == target.dtype { array } else { cast_array(&array, target.dtype) };
            match &target.sharding {
                Some(sharding) => load_sharded_leaf(array, sharding),
                None => Ok(PyTree::Array(array)),
            }
        }
        PyTree::Scalar(scalar) => {
            if !target.shape.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "requested shape {} for a scalar leaf (stored shape ())",
                    shape_repr(&target.shape)
                )));
            }
            cast_leaf(PyTree::Scalar(scalar), target.dtype)
        }
        other => Err(Error::InvalidArgument(format!(
            "the target asks for an array of shape {} and dtype {}, but the checkpoint holds a {}",
            shape_repr(&target.shape),
            target.dtype,
            other.kind_name()
        ))),
    }
}

/// `array` with shape `shape`: the overlap kept, the rest zero (Orbax's
/// `enable_padding_and_truncation`). The rank must match.
pub fn pad_or_truncate(array: &Array, shape: &[u64]) -> Result<Array> {
    if array.shape().len() != shape.len() {
        return Err(Error::InvalidArgument(format!(
            "requested shape {} has a different rank than the stored shape {}; padding and truncation keep the rank",
            shape_repr(shape),
            shape_repr(array.shape())
        )));
    }
    let item = array.dtype().size();
    let bytes = num_elements(shape)
        .and_then(|n| n.checked_mul(item as u64))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| Error::InvalidArgument(format!("requested shape {} is too large", shape_repr(shape))))?;
    let mut data = vec![0u8; bytes];
    let overlap: Vec<u64> = array.shape().iter().zip(shape).map(|(&a, &b)| a.min(b)).collect();
    let origin = vec![0; shape.len()];
    copy_block(
        array.data(),
        Region { shape: array.shape(), origin: &origin },
        &mut data,
        Region { shape, origin: &origin },
        &overlap,
        item,
    );
    Array::new(array.dtype(), shape.to_vec(), data).map_err(Error::InvalidArgument)
}

/// THE hook for loading a leaf onto a device layout: splits the loaded
/// global `array` into one shard per device of `sharding`, in JAX's
/// `devices_indices_map` order. (Region reads that fetch only each
/// device's chunks replace the whole-array read behind this function.)
pub fn load_sharded_leaf(array: Array, sharding: &Sharding) -> Result<PyTree> {
    let regions =
        device_regions(sharding, array.shape()).map_err(|e| Error::InvalidArgument(format!("target sharding: {e}")))?;
    let sharded = ShardedArray::from_array(&array, Some(sharding.clone()), &regions)
        .map_err(|e| Error::InvalidArgument(format!("target sharding: {e}")))?;
    Ok(PyTree::Sharded(sharded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> KeyPath {
        KeyPath::parse_keystr(s).unwrap()
    }

    #[test]
    fn globs_match_keystrs() {
        assert!(glob_match("['params']*", "['params']['w']"));
        assert!(glob_match("*['w']", "['params']['w']"));
        assert!(glob_match("['opt_state'][?]", "['opt_state'][1]"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyybc"));
        assert!(!glob_match("['params']", "['params']['w']"));
        assert!(!glob_match("['opt_state'][?]", "['opt_state'][10]"));
        assert!(!glob_match("a*b*c", "axxcyyb"));
    }

    #[test]
    fn skip_replaces_a_subtree_by_one_placeholder_in_place() {
        let leaves = ["['a']", "['b'][0]", "['b'][1]", "['c']"].map(|k| (key(k), LeafTarget::AsSaved));
        let target = Target::new(leaves).skip(&key("['b']"));
        let keys: Vec<String> = target.leaves().iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["['a']", "['b']", "['c']"]);
        assert_eq!(target.get(&key("['b']")), Some(&LeafTarget::Placeholder));
    }

    #[test]
    fn filter_and_dtype_apply_to_matching_array_leaves() {
        let array = |dtype| LeafTarget::Array(ArrayTarget { shape: vec![2], dtype, sharding: None });
        let target = Target::new([
            (key("['p']['w']"), array(DType::Float32)),
            (key("['p']['name']"), LeafTarget::AsSaved),
            (key("['opt']"), array(DType::Float32)),
        ])
        .filter_keys(&["['p']*"])
        .with_dtype(DType::BFloat16);
        assert_eq!(
            target.leaves(),
            &[(key("['p']['w']"), array(DType::BFloat16)), (key("['p']['name']"), LeafTarget::AsSaved)]
        );
    }

    #[test]
    fn cast_leaf_refuses_non_numeric_leaves() {
        let err = cast_leaf(PyTree::String("x".into()), DType::Int8).unwrap_err().to_string();
        assert_eq!(err, "cannot cast a string to int8");
    }
}
