//! Reading one PyTree item: its metadata files, its key-value store (OCDBT
//! or plain directory) and each leaf.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::kvstore::{DirectoryKv, KvSource};
use crate::metadata::{
    unflatten, ArrayMetadatas, LegacyCheckpoint, LegacyLeaf, Sharding, ShardingFile, StringsFile, TreeMetadata,
    ValueType,
};
use crate::ocdbt::Database;
use crate::pytree::{KeyPath, PyTree, Scalar};
use crate::storage::{join_key, Storage, StorageError};
use crate::zarr::{ArrayToBytes, BytesCodec, MetadataCache, MissingChunks, ZarrArray};
use crate::DType;

mod sharded;
pub use sharded::{load_pytree_sharded, LayoutFn, LeafLayout, ShardedLoad};

/// Leaves whose metadata is read concurrently by [`PyTreeItem::metadata`].
const METADATA_CONCURRENCY: usize = 16;

/// Leaves loaded concurrently by [`PyTreeItem::load`]: one decoding per core
/// plus one being fetched, which bounds the compressed bytes held at once.
fn load_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) + 1
}

/// The kind of a leaf, as the CLI protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// An n-d array (`jax.Array` or `np.ndarray`).
    Array,
    /// A Python or numpy scalar.
    Scalar,
    /// A string.
    String,
    /// `None`.
    None,
    /// `{}`.
    EmptyDict,
    /// `[]`.
    EmptyList,
    /// `()`.
    EmptyTuple,
}

impl LeafKind {
    /// The protocol name (`array`, `scalar`, `string`, `none`, `empty_dict`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LeafKind::Array => "array",
            LeafKind::Scalar => "scalar",
            LeafKind::String => "string",
            LeafKind::None => "none",
            LeafKind::EmptyDict => "empty_dict",
            LeafKind::EmptyList => "empty_list",
            LeafKind::EmptyTuple => "empty_tuple",
        }
    }

    fn empty_tree(self) -> Option<PyTree> {
        match self {
            LeafKind::None => Some(PyTree::None),
            LeafKind::EmptyDict => Some(PyTree::Dict(vec![])),
            LeafKind::EmptyList => Some(PyTree::List(vec![])),
            LeafKind::EmptyTuple => Some(PyTree::Tuple(vec![])),
            _ => None,
        }
    }
}

/// How an array or scalar leaf is stored as a zarr array.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayStorage {
    /// Shape of the zarr chunk grid's chunks (shards).
    pub chunk_shape: Vec<u64>,
    /// Shape of the chunks actually encoded (inner chunks of a shard).
    pub read_chunk_shape: Vec<u64>,
    /// Shape each process wrote (`write_shape` in `_METADATA`), if recorded.
    pub write_shape: Option<Vec<u64>>,
    /// 2 or 3.
    pub zarr_format: u8,
    /// Whether chunks are compressed.
    pub compressed: bool,
}

/// Metadata of one leaf.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafInfo {
    /// Path from the item's root.
    pub keypath: KeyPath,
    /// Orbax's parameter name (keys joined by `.`), which names the stored array.
    pub param_name: String,
    /// What kind of leaf.
    pub kind: LeafKind,
    /// The `value_type` recorded by Orbax (`jax.Array`, `np.ndarray`, `scalar`, ...).
    pub value_type: String,
    /// On-disk dtype of array and scalar leaves.
    pub dtype: Option<DType>,
    /// Shape of array and scalar leaves (`[]` for scalars).
    pub shape: Option<Vec<u64>>,
    /// Chunking and encoding, for leaves stored as zarr arrays (not for
    /// values kept inside the legacy msgpack file).
    pub storage: Option<ArrayStorage>,
    /// The sharding recorded in `_sharding`, if any.
    pub sharding: Option<Sharding>,
}

/// The metadata of a PyTree item, as `pytree_metadata` returns it.
#[derive(Debug, Clone)]
pub struct PyTreeMetadata {
    /// Every leaf in flatten order.
    pub leaves: Vec<LeafInfo>,
    /// PyTree-level `custom_metadata` from `_METADATA` (v0 API).
    pub custom_metadata: serde_json::Value,
    /// Whether arrays are in an OCDBT database.
    pub use_ocdbt: bool,
    /// Whether arrays are zarr v3.
    pub use_zarr3: bool,
}

#[derive(Debug, Clone)]
enum Source {
    Zarr,
    String,
    Empty,
    Inline(PyTree),
}

#[derive(Debug, Clone)]
struct LeafPlan {
    keypath: KeyPath,
    param_name: String,
    kind: LeafKind,
    value_type: String,
    write_shape: Option<Vec<u64>>,
    source: Source,
}

/// An opened PyTree item: metadata files parsed, key-value store opened.
#[derive(Debug)]
pub struct PyTreeItem {
    path: String,
    leaves: Vec<LeafPlan>,
    /// Position in `leaves` of each key path.
    by_keypath: HashMap<KeyPath, usize>,
    kv: Option<Arc<dyn KvSource>>,
    strings: Option<StringsFile>,
    shardings: Option<ShardingFile>,
    missing: MissingChunks,
    use_ocdbt: bool,
    use_zarr3: bool,
    custom_metadata: serde_json::Value,
    zarr_metadata: MetadataCache,
}

async fn get_optional(store: &dyn Storage, key: &str) -> Result<Option<Bytes>> {
    match store.get(key).await {
        Ok(b) => Ok(Some(b)),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn kind_of(value_type: &ValueType) -> LeafKind {
    match value_type {
        ValueType::JaxArray | ValueType::NdArray | ValueType::Other(_) => LeafKind::Array,
        ValueType::Scalar => LeafKind::Scalar,
        ValueType::String => LeafKind::String,
        ValueType::None | ValueType::Placeholder => LeafKind::None,
        ValueType::EmptyDict => LeafKind::EmptyDict,
        ValueType::EmptyList => LeafKind::EmptyList,
        ValueType::EmptyTuple | ValueType::EmptyNamedTuple => LeafKind::EmptyTuple,
    }
}

fn inline_kind(tree: &PyTree) -> LeafKind {
    match tree {
        PyTree::Array(_) | PyTree::Sharded(_) => LeafKind::Array,
        PyTree::Scalar(_) => LeafKind::Scalar,
        PyTree::String(_) => LeafKind::String,
        PyTree::Dict(_) | PyTree::Attrs(_) => LeafKind::EmptyDict,
        PyTree::List(_) => LeafKind::EmptyList,
        PyTree::Tuple(_) => LeafKind::EmptyTuple,
        PyTree::None => LeafKind::None,
    }
}

impl PyTreeItem {
    /// Opens the PyTree item stored at `path`.
    pub async fn open(store: &Arc<dyn Storage>, path: &str) -> Result<PyTreeItem> {
        let s = store.as_ref();
        let metadata_key = join_key(path, "_METADATA");
        let legacy_key = join_key(path, "checkpoint");
        let strings_key = join_key(path, "_strings.json");
        let sharding_key = join_key(path, "_sharding");
        let manifest_key = join_key(path, "manifest.ocdbt");
        let (metadata, legacy, strings, shardings, manifest) = futures::try_join!(
            get_optional(s, &metadata_key),
            get_optional(s, &legacy_key),
            get_optional(s, &strings_key),
            get_optional(s, &sharding_key),
            async {
                match s.head(&manifest_key).await {
                    Ok(_) => Ok(true),
                    Err(StorageError::NotFound { .. }) => Ok(false),
                    Err(e) => Err(Error::from(e)),
                }
            },
        )?;
        let tree = metadata.map(|b| TreeMetadata::parse(&b, &metadata_key)).transpose()?;
        let legacy = legacy.map(|b| LegacyCheckpoint::parse(&b, &legacy_key)).transpose()?;
        let strings = strings.map(|b| StringsFile::parse(&b, &strings_key)).transpose()?;
        let shardings = shardings.map(|b| ShardingFile::parse(&b, &sharding_key)).transpose()?;

        let inline_values: HashMap<KeyPath, PyTree> = legacy
            .as_ref()
            .map(|l| {
                l.leaves
                    .iter()
                    .filter_map(|(k, leaf)| match leaf {
                        LegacyLeaf::Value(v) => Some((k.clone(), v.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let inline_at = |k: &KeyPath| inline_values.get(k).cloned();

        let leaves: Vec<LeafPlan> = if let Some(tree) = &tree {
            tree.entries
                .iter()
                .map(|e| {
                    let value_type = e.value_type.as_str().to_string();
                    let mut kind = kind_of(&e.value_type);
                    let source = if let Some(v) = inline_at(&e.key_path) {
                        kind = inline_kind(&v);
                        Source::Inline(v)
                    } else {
                        match kind {
                            LeafKind::Array | LeafKind::Scalar => Source::Zarr,
                            LeafKind::String => Source::String,
                            _ => Source::Empty,
                        }
                    };
                    LeafPlan {
                        keypath: e.key_path.clone(),
                        param_name: e.param_name(),
                        kind,
                        value_type,
                        write_shape: e.write_shape.clone(),
                        source,
                    }
                })
                .collect()
        } else if let Some(legacy) = &legacy {
            legacy
                .leaves
                .iter()
                .map(|(keypath, leaf)| {
                    let (kind, source, param_name) = match leaf {
                        LegacyLeaf::Placeholder(name) => {
                            if strings.as_ref().is_some_and(|s| s.get(name).is_some()) {
                                (LeafKind::String, Source::String, name.clone())
                            } else {
                                (LeafKind::Array, Source::Zarr, name.clone())
                            }
                        }
                        LegacyLeaf::Value(v) => (inline_kind(v), Source::Inline(v.clone()), keypath.param_name()),
                        LegacyLeaf::None => (LeafKind::None, Source::Empty, keypath.param_name()),
                        LegacyLeaf::EmptyDict => (LeafKind::EmptyDict, Source::Empty, keypath.param_name()),
                        LegacyLeaf::EmptyList => (LeafKind::EmptyList, Source::Empty, keypath.param_name()),
                    };
                    let value_type = match kind {
                        LeafKind::String => "string",
                        LeafKind::Array => "np.ndarray",
                        _ => "None",
                    };
                    LeafPlan {
                        keypath: keypath.clone(),
                        param_name,
                        kind,
                        value_type: value_type.into(),
                        write_shape: None,
                        source,
                    }
                })
                .collect()
        } else {
            return Err(Error::NotACheckpoint {
                path: path.to_string(),
                what: "neither _METADATA nor the legacy msgpack 'checkpoint' file exists".into(),
            });
        };

        let use_ocdbt = tree.as_ref().and_then(|t| t.use_ocdbt).unwrap_or(manifest);
        let needs_kv = leaves.iter().any(|l| matches!(l.source, Source::Zarr));
        let kv: Option<Arc<dyn KvSource>> = if !needs_kv {
            None
        } else if use_ocdbt {
            Some(Arc::new(Database::open(store.clone(), path).await?))
        } else {
            Some(Arc::new(DirectoryKv::new(store.clone(), path)))
        };
        let fill_missing = !tree.as_ref().is_some_and(|t| t.store_array_data_equal_to_fill_value);
        let mut by_keypath = HashMap::with_capacity(leaves.len());
        for (i, leaf) in leaves.iter().enumerate() {
            by_keypath.entry(leaf.keypath.clone()).or_insert(i);
        }
        Ok(PyTreeItem {
            path: path.to_string(),
            leaves,
            by_keypath,
            kv,
            strings,
            shardings,
            missing: if fill_missing { MissingChunks::Fill } else { MissingChunks::Error },
            use_ocdbt,
            use_zarr3: tree.as_ref().is_some_and(|t| t.use_zarr3),
            custom_metadata: tree.map(|t| t.custom_metadata).unwrap_or(serde_json::Value::Null),
            zarr_metadata: MetadataCache::default(),
        })
    }

    /// The item's directory.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the item's arrays are in an OCDBT database.
    pub fn uses_ocdbt(&self) -> bool {
        self.use_ocdbt
    }

    /// Key paths of the leaves, in flatten order.
    pub fn keypaths(&self) -> impl Iterator<Item = &KeyPath> {
        self.leaves.iter().map(|l| &l.keypath)
    }

    fn kv(&self) -> Result<&Arc<dyn KvSource>> {
        self.kv.as_ref().ok_or_else(|| Error::Structure {
            path: self.path.clone(),
            what: "array leaves exist but no array store was found".into(),
        })
    }

    async fn open_array(&self, leaf: &LeafPlan) -> Result<ZarrArray> {
        Ok(ZarrArray::open_cached(self.kv()?.as_ref(), &leaf.param_name, &self.zarr_metadata).await?)
    }

    async fn leaf_info(&self, leaf: &LeafPlan) -> Result<LeafInfo> {
        let (mut dtype, mut shape, mut storage) = (None, None, None);
        match &leaf.source {
            Source::Zarr => {
                let zarr = self.open_array(leaf).await?;
                let m = zarr.metadata();
                let compressed = |codecs: &[BytesCodec]| codecs.iter().any(|c| *c != BytesCodec::Crc32c);
                let compressed = compressed(&m.codecs.bytes_to_bytes)
                    || matches!(&m.codecs.array_to_bytes, ArrayToBytes::Sharding(s) if compressed(&s.inner.bytes_to_bytes));
                (dtype, shape) = (Some(m.dtype), Some(m.shape.clone()));
                storage = Some(ArrayStorage {
                    chunk_shape: m.chunk_shape.clone(),
                    read_chunk_shape: m.read_chunk_shape().to_vec(),
                    write_shape: leaf.write_shape.clone(),
                    zarr_format: m.zarr_format,
                    compressed,
                });
            }
            Source::Inline(PyTree::Array(a)) => (dtype, shape) = (Some(a.dtype()), Some(a.shape().to_vec())),
            Source::Inline(PyTree::Scalar(s)) => (dtype, shape) = (Some(s.dtype()), Some(vec![])),
            _ => {}
        }
        Ok(LeafInfo {
            keypath: leaf.keypath.clone(),
            param_name: leaf.param_name.clone(),
            kind: leaf.kind,
            value_type: leaf.value_type.clone(),
            dtype,
            shape,
            storage,
            sharding: self.shardings.as_ref().and_then(|s| s.get(&leaf.param_name)).cloned(),
        })
    }

    /// The item's metadata: every leaf's kind, dtype, shape, chunking and sharding.
    pub async fn metadata(&self) -> Result<PyTreeMetadata> {
        let leaves = futures::stream::iter(&self.leaves)
            .map(|leaf| async move { self.leaf_info(leaf).await.map_err(|e| e.at_leaf(&leaf.keypath)) })
            .buffered(METADATA_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(PyTreeMetadata {
            leaves,
            custom_metadata: self.custom_metadata.clone(),
            use_ocdbt: self.use_ocdbt,
            use_zarr3: self.use_zarr3,
        })
    }

    async fn load_leaf(&self, leaf: &LeafPlan) -> Result<PyTree> {
        match &leaf.source {
            Source::Inline(v) => Ok(v.clone()),
            Source::Empty => Ok(leaf.kind.empty_tree().unwrap_or(PyTree::None)),
            Source::String => {
                let value = self.strings.as_ref().and_then(|s| s.get(&leaf.param_name));
                value.map(|s| PyTree::String(s.to_string())).ok_or_else(|| Error::Structure {
                    path: join_key(&self.path, "_strings.json"),
                    what: format!("no value for string leaf {:?}", leaf.param_name),
                })
            }
            Source::Zarr => {
                let kv = self.kv()?;
                let array = self.open_array(leaf).await?.read(kv.as_ref(), self.missing).await?;
                if leaf.kind == LeafKind::Scalar {
                    if !array.shape().is_empty() {
                        return Err(Error::Structure {
                            path: kv.describe(&leaf.param_name),
                            what: format!("scalar leaf stored with shape {:?}", array.shape()),
                        });
                    }
                    let dtype = array.dtype();
                    Ok(PyTree::Scalar(Scalar::from_bytes(dtype, array.into_data()).expect("0-d array has one element")))
                } else {
                    Ok(PyTree::Array(array))
                }
            }
        }
    }

    /// Loads one leaf by key path.
    pub async fn load_leaf_at(&self, keypath: &KeyPath) -> Result<PyTree> {
        let leaf = self.leaf(keypath)?;
        self.load_leaf(leaf).await.map_err(|e| e.at_leaf(keypath))
    }

    /// The leaf at `keypath`, or an error naming it.
    fn leaf(&self, keypath: &KeyPath) -> Result<&LeafPlan> {
        self.by_keypath
            .get(keypath)
            .map(|&i| &self.leaves[i])
            .ok_or_else(|| Error::InvalidArgument(format!("{}: no leaf at {keypath}", self.path)))
    }

    /// Loads every leaf and rebuilds the tree.
    pub async fn load(&self) -> Result<PyTree> {
        let leaves: Vec<(KeyPath, PyTree)> = futures::stream::iter(&self.leaves)
            .map(|leaf| async move {
                let value = self.load_leaf(leaf).await.map_err(|e| e.at_leaf(&leaf.keypath))?;
                Ok::<_, Error>((leaf.keypath.clone(), value))
            })
            .buffered(load_concurrency())
            .try_collect()
            .await?;
        unflatten(leaves).map_err(|what| Error::Structure { path: join_key(&self.path, "_METADATA"), what })
    }

    /// Parses `array_metadatas/process_*` files, if the item has them.
    pub async fn array_metadatas(&self, store: &Arc<dyn Storage>) -> Result<Vec<ArrayMetadatas>> {
        let prefix = join_key(&self.path, "array_metadatas");
        let mut out = Vec::new();
        for object in store.list(&prefix).await? {
            let bytes = store.get(&object.key).await?;
            out.push(ArrayMetadatas::parse(&bytes, &object.key)?);
        }
        Ok(out)
    }
}
