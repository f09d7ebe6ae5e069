//! Writing one PyTree item: `_METADATA`, `_strings.json` and the arrays
//! (scalars are rank-0 arrays), in an OCDBT database or one directory per leaf.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;
use serde_json::{json, Map, Value};

use super::{ArraySharding, ProgressFn, SaveOptions, StorageOptions};
use crate::cast::cast_array;
use crate::chunking::choose_chunk_shape;
use crate::error::{Error, Result};
use crate::metadata::{Sharding, ShardingFile};
use crate::ocdbt::{DatabaseWriter, WriterOptions};
use crate::pyjson::{to_string, JsonStyle};
use crate::python_repr::repr_str_tuple;
use crate::pytree::{num_elements, Array, KeyEntry, KeyPath, PyTree};
use crate::storage::{join_key, validate_key, PutMode, Storage};
use crate::zarr::{array_key, unravel, ArrayMetadata};

/// `_CHECKPOINT_METADATA` handler name of PyTree checkpointables.
pub const PYTREE_HANDLER: &str = "orbax.checkpoint.experimental.v1._src.handlers.pytree_handler.PyTreeHandler";

/// Where encoded array keys go.
enum ArraySink {
    Ocdbt(Box<DatabaseWriter>),
    Directory { store: Arc<dyn Storage>, prefix: String },
}

impl ArraySink {
    async fn put(&mut self, key: &str, value: Bytes) -> Result<()> {
        match self {
            ArraySink::Ocdbt(db) => Ok(db.put(key.as_bytes(), value).await?),
            ArraySink::Directory { store, prefix } => {
                Ok(store.put(&join_key(prefix, key), value, PutMode::Overwrite).await?)
            }
        }
    }

    async fn finish(self) -> Result<()> {
        match self {
            ArraySink::Ocdbt(db) => db.finish().await.map(|_| ()).map_err(Error::from),
            ArraySink::Directory { .. } => Ok(()),
        }
    }
}

/// `value_type` and `skip_deserialize` of a leaf, as Orbax's v1 API records
/// them (arrays with a sharding are `jax.Array`, handled by the caller).
fn value_type(leaf: &PyTree) -> (&'static str, bool) {
    match leaf {
        PyTree::Array(_) | PyTree::Sharded(_) => ("np.ndarray", false),
        PyTree::Scalar(_) => ("scalar", false),
        PyTree::String(_) => ("string", false),
        PyTree::None => ("None", true),
        PyTree::Dict(_) | PyTree::Attrs(_) => ("Dict", true),
        PyTree::List(_) => ("List", true),
        PyTree::Tuple(_) => ("Tuple", true),
    }
}

fn key_metadata(path: &KeyPath) -> Value {
    Value::Array(
        path.entries()
            .iter()
            .map(|e| match e {
                KeyEntry::Key(k) | KeyEntry::Attr(k) => json!({"key": k, "key_type": 2}),
                KeyEntry::Index(i) => json!({"key": i.to_string(), "key_type": 1}),
            })
            .collect(),
    )
}

fn key_names(path: &KeyPath) -> Vec<String> {
    path.entries()
        .iter()
        .map(|e| match e {
            KeyEntry::Key(k) | KeyEntry::Attr(k) => k.clone(),
            KeyEntry::Index(i) => i.to_string(),
        })
        .collect()
}

/// An array ready to be encoded: on-disk dtype applied, chunking chosen.
/// Borrows the caller's array unless a cast made a new one.
struct PlannedArray<'a> {
    name: String,
    metadata: ArrayMetadata,
    data: Cow<'a, Array>,
    sharding: Option<ArraySharding>,
}

fn plan_array<'a>(
    path: &KeyPath,
    leaf: &'a PyTree,
    sharding: Option<ArraySharding>,
    options: &SaveOptions,
) -> Result<PlannedArray<'a>> {
    let array: Cow<'a, Array> = match leaf {
        PyTree::Array(a) => Cow::Borrowed(a),
        PyTree::Sharded(s) => Cow::Owned(s.assemble().map_err(|e| Error::InvalidArgument(format!("{path}: {e}")))?),
        PyTree::Scalar(s) => {
            Cow::Owned(Array::new(s.dtype(), vec![], s.bytes().to_vec()).map_err(Error::InvalidArgument)?)
        }
        _ => unreachable!("only arrays and scalars are planned"),
    };
    if array.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{path}: cannot save arrays with zero size (shape {:?})",
            array.shape()
        )));
    }
    let chosen = options.storage_for.as_ref().map(|f| f(path, leaf)).unwrap_or_default();
    let storage = StorageOptions {
        dtype: chosen.dtype.or(options.storage.dtype),
        chunk_byte_size: chosen.chunk_byte_size.or(options.storage.chunk_byte_size),
    };
    let data = match storage.dtype {
        Some(dtype) if dtype != array.dtype() => Cow::Owned(cast_array(&array, dtype)),
        _ => array,
    };
    let shape = data.shape().to_vec();
    let write_shape = match &sharding {
        Some(s) if s.write_shape.len() != shape.len() || s.write_shape.iter().zip(&shape).any(|(w, g)| w > g) => {
            return Err(Error::InvalidArgument(format!(
                "{path}: write shape {:?} does not fit the array's shape {shape:?}",
                s.write_shape
            )));
        }
        Some(s) => s.write_shape.clone(),
        None => shape.clone(),
    };
    let nbytes = num_elements(&write_shape).unwrap_or(u64::MAX).saturating_mul(data.dtype().size() as u64);
    let target = options.ocdbt_target_data_file_size;
    let limit = match storage.chunk_byte_size {
        Some(size) => Some(size.min(target)),
        None if nbytes > target => Some(target),
        None => None,
    };
    let chunk_shape = choose_chunk_shape(&shape, &write_shape, data.dtype().size(), limit, &[])
        .map_err(|e| Error::InvalidArgument(format!("{path}: {e}")))?;
    let metadata = ArrayMetadata::orbax(data.dtype(), shape, chunk_shape, options.use_zarr3, options.use_compression);
    Ok(PlannedArray { name: path.param_name(), metadata, data, sharding })
}

/// Raw bytes of chunks encoded together before they are written: bounds
/// the memory held by encoded-but-unwritten chunks while keeping every core
/// busy.
const ENCODE_BATCH_BYTES: u64 = 64 << 20;

/// One chunk to encode: which array and which chunk of its grid.
struct ChunkJob {
    array: usize,
    index: Vec<u64>,
    bytes: u64,
}

/// Every array's metadata key and value, then its chunks in grid order.
fn chunk_jobs(arrays: &[PlannedArray]) -> Vec<ChunkJob> {
    let mut jobs = Vec::new();
    for (i, array) in arrays.iter().enumerate() {
        let m = &array.metadata;
        let grid = m.grid_shape();
        let chunk_bytes = num_elements(&m.chunk_shape).unwrap_or(1) * m.dtype.size() as u64;
        let count = num_elements(&grid).expect("bounded by the array size");
        jobs.extend((0..count).map(|n| ChunkJob { array: i, index: unravel(n, &grid), bytes: chunk_bytes }));
    }
    jobs
}

fn encode(array: &PlannedArray, index: &[u64]) -> (String, Bytes) {
    let m = &array.metadata;
    let chunk = m.extract_chunk(array.data.data(), index);
    (array_key(&array.name, &m.key_encoding.key(index)), Bytes::from(m.encode_chunk(&chunk)))
}

/// Encodes all chunks in parallel, batch by batch, and writes each batch in order.
async fn write_arrays(arrays: &[PlannedArray<'_>], sink: &mut ArraySink, progress: Option<&ProgressFn>) -> Result<()> {
    for array in arrays {
        let m = &array.metadata;
        sink.put(&array_key(&array.name, m.file_name()), Bytes::from(m.to_json_bytes())).await?;
    }
    let jobs = chunk_jobs(arrays);
    let total: u64 = jobs.iter().map(|j| j.bytes).sum();
    let mut done = 0;
    let mut start = 0;
    while start < jobs.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < jobs.len() && (end == start || bytes + jobs[end].bytes <= ENCODE_BATCH_BYTES) {
            bytes += jobs[end].bytes;
            end += 1;
        }
        // CPU-bound: rayon encodes the batch on all cores while this task waits.
        let encoded: Vec<(String, Bytes)> =
            jobs[start..end].par_iter().map(|job| encode(&arrays[job.array], &job.index)).collect();
        for (key, value) in encoded {
            sink.put(&key, value).await?;
        }
        done += bytes;
        if let Some(report) = progress {
            report(done, total);
        }
        start = end;
    }
    Ok(())
}

/// Writes `tree` as the PyTree item `item` at `dir`.
pub(super) async fn write(
    store: &Arc<dyn Storage>,
    dir: &str,
    item: &str,
    tree: &PyTree,
    options: &SaveOptions,
) -> Result<()> {
    let leaves = tree.leaves();
    let mut names: HashMap<String, &KeyPath> = HashMap::new();
    let mut entries = Map::new();
    let mut strings: BTreeMap<String, String> = BTreeMap::new();
    let mut arrays = Vec::new();
    for (path, leaf) in &leaves {
        let name = path.param_name();
        if let Some(other) = names.insert(name.clone(), path) {
            return Err(Error::InvalidArgument(format!(
                "leaves {other} and {path} would both be stored as {name:?} (Orbax joins keys with '.')"
            )));
        }
        if !options.use_ocdbt && matches!(leaf, PyTree::Array(_) | PyTree::Sharded(_) | PyTree::Scalar(_)) {
            validate_key(&join_key(dir, &name))?;
        }
        let sharding = match (leaf, &options.sharding_for) {
            (PyTree::Array(_), Some(f)) => f(item, path),
            (PyTree::Sharded(s), f) => f.as_ref().and_then(|f| f(item, path)).or_else(|| {
                s.sharding().map(|sharding| ArraySharding {
                    sharding: sharding.clone(),
                    write_shape: sharding.shard_shape(s.global_shape()),
                })
            }),
            _ => None,
        };
        let (value_type, skip) = value_type(leaf);
        let value_metadata = match &sharding {
            Some(s) => json!({"value_type": "jax.Array", "skip_deserialize": false, "write_shape": s.write_shape}),
            None => json!({"value_type": value_type, "skip_deserialize": skip}),
        };
        entries.insert(
            repr_str_tuple(&key_names(path)),
            json!({"key_metadata": key_metadata(path), "value_metadata": value_metadata}),
        );
        match leaf {
            PyTree::Array(_) | PyTree::Sharded(_) | PyTree::Scalar(_) => {
                arrays.push(plan_array(path, leaf, sharding, options)?)
            }
            PyTree::String(s) => {
                strings.insert(name, s.clone());
            }
            _ => {}
        }
    }

    if !arrays.is_empty() {
        let mut sink = if options.use_ocdbt {
            let writer_options = WriterOptions {
                target_data_file_size: Some(options.ocdbt_target_data_file_size),
                ..WriterOptions::default()
            };
            ArraySink::Ocdbt(Box::new(DatabaseWriter::create(store.clone(), dir, writer_options).await?))
        } else {
            ArraySink::Directory { store: store.clone(), prefix: dir.to_string() }
        };
        write_arrays(&arrays, &mut sink, options.progress.as_ref()).await?;
        sink.finish().await?;
    }

    let metadata = json!({
        "tree_metadata": entries,
        "use_ocdbt": options.use_ocdbt,
        "use_zarr3": options.use_zarr3,
        "store_array_data_equal_to_fill_value": true,
        "custom_metadata": null,
    });
    let put = |name: &str, text: String| {
        let key = join_key(dir, name);
        async move { store.put(&key, Bytes::from(text), PutMode::Overwrite).await }
    };
    put("_METADATA", to_string(&metadata, JsonStyle::Python)).await?;
    let sharded: Vec<&PlannedArray> = arrays.iter().filter(|a| a.sharding.is_some()).collect();
    if !sharded.is_empty() {
        let shardings: Vec<(String, Sharding)> =
            sharded.iter().map(|a| (a.name.clone(), a.sharding.as_ref().expect("filtered").sharding.clone())).collect();
        put("_sharding", ShardingFile::encode(&shardings)).await?;
        let list: Vec<Value> = sharded
            .iter()
            .map(|a| {
                json!({"array_metadata": {
                    "param_name": a.name,
                    "write_shape": a.sharding.as_ref().expect("filtered").write_shape,
                    "chunk_shape": a.metadata.chunk_shape,
                    "ext_metadata": null}})
            })
            .collect();
        put("array_metadatas/process_0", to_string(&json!({ "array_metadatas": list }), JsonStyle::Python)).await?;
    }
    if !strings.is_empty() {
        let object: Map<String, Value> = strings.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        put("_strings.json", to_string(&Value::Object(object), JsonStyle::Compact)).await?;
    }
    Ok(())
}
