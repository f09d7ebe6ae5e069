//! Writing one PyTree item: `_METADATA`, `_strings.json` and the arrays
//! (scalars are rank-0 arrays), in an OCDBT database or one directory per leaf.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;
use serde_json::{json, Map, Value};

use super::{ArraySharding, ProgressFn, SaveOptions, StorageOptions};
use crate::cast::cast_array;
use crate::chunking::choose_chunk_shape;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::metadata::{Sharding, ShardingFile};
use crate::multiprocess::regions_written_by;
use crate::ocdbt::{merge_databases, DatabaseWriter, WriterOptions};
use crate::pyjson::{to_string, JsonStyle};
use crate::python_repr::repr_str_tuple;
use crate::pytree::{num_elements, Array, KeyEntry, KeyPath, PyTree};
use crate::sharded::{device_regions, ShardedArray};
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

/// This process's place in a save: alone, or one of several.
#[derive(Debug, Clone, Copy)]
pub(super) struct Role {
    /// The process index (0 when saving alone).
    pub index: usize,
    /// Whether other processes save the same checkpoint.
    pub shared: bool,
}

impl Role {
    /// Saving alone.
    pub const ALONE: Role = Role { index: 0, shared: false };

    /// The process that writes metadata, whole arrays and commits.
    pub fn is_primary(self) -> bool {
        self.index == 0
    }
}

/// The elements of a planned array this process writes.
enum Source<'a> {
    /// The whole array.
    Whole(Cow<'a, Array>),
    /// Blocks of it: the regions of a sharded array this process owns
    /// (none: it writes no chunk).
    Blocks(Vec<Block<'a>>),
}

/// A block of an array: the global index of its first element and its elements.
type Block<'a> = (Vec<u64>, Cow<'a, Array>);

/// An array ready to be encoded: on-disk dtype applied, chunking chosen.
/// Borrows the caller's data unless a cast made a new copy.
struct PlannedArray<'a> {
    name: String,
    metadata: ArrayMetadata,
    source: Source<'a>,
    sharding: Option<ArraySharding>,
}

fn plan_array<'a>(
    path: &KeyPath,
    leaf: &'a PyTree,
    sharding: Option<ArraySharding>,
    options: &SaveOptions,
    role: Role,
) -> Result<PlannedArray<'a>> {
    let invalid = |what: String| Error::InvalidArgument(format!("{path}: {what}"));
    let (shape, dtype, source) = match leaf {
        PyTree::Sharded(s) if role.shared => {
            let Some(sharding) = &sharding else {
                return Err(invalid("a sharded leaf needs its sharding in a multi-process save".into()));
            };
            (
                s.global_shape().to_vec(),
                s.dtype(),
                Source::Blocks(owned_blocks(s, &sharding.sharding).map_err(invalid)?),
            )
        }
        PyTree::Array(a) if role.shared && !role.is_primary() => {
            (a.shape().to_vec(), a.dtype(), Source::Blocks(vec![]))
        }
        PyTree::Scalar(s) if role.shared && !role.is_primary() => (vec![], s.dtype(), Source::Blocks(vec![])),
        PyTree::Array(a) => (a.shape().to_vec(), a.dtype(), Source::Whole(Cow::Borrowed(a))),
        PyTree::Sharded(s) => {
            let a = s.assemble().map_err(invalid)?;
            (a.shape().to_vec(), a.dtype(), Source::Whole(Cow::Owned(a)))
        }
        PyTree::Scalar(s) => {
            let a = Array::new(s.dtype(), vec![], s.bytes().to_vec()).map_err(Error::InvalidArgument)?;
            (vec![], a.dtype(), Source::Whole(Cow::Owned(a)))
        }
        _ => unreachable!("only arrays and scalars are planned"),
    };
    if num_elements(&shape) == Some(0) {
        return Err(invalid(format!("cannot save arrays with zero size (shape {shape:?})")));
    }
    let chosen = options.storage_for.as_ref().map(|f| f(path, leaf)).unwrap_or_default();
    let storage = StorageOptions {
        dtype: chosen.dtype.or(options.storage.dtype),
        chunk_byte_size: chosen.chunk_byte_size.or(options.storage.chunk_byte_size),
    };
    let (dtype, source) = match storage.dtype {
        Some(to) if to != dtype => (to, source.cast(to)),
        _ => (dtype, source),
    };
    let write_shape = match &sharding {
        Some(s) if s.write_shape.len() != shape.len() || s.write_shape.iter().zip(&shape).any(|(w, g)| w > g) => {
            return Err(invalid(format!("write shape {:?} does not fit the array's shape {shape:?}", s.write_shape)));
        }
        Some(s) => s.write_shape.clone(),
        None => shape.clone(),
    };
    let nbytes = num_elements(&write_shape).unwrap_or(u64::MAX).saturating_mul(dtype.size() as u64);
    let target = options.ocdbt_target_data_file_size;
    let limit = match storage.chunk_byte_size {
        Some(size) => Some(size.min(target)),
        None if nbytes > target => Some(target),
        None => None,
    };
    let chunk_shape = choose_chunk_shape(&shape, &write_shape, dtype.size(), limit, &[]).map_err(invalid)?;
    let metadata = ArrayMetadata::orbax(dtype, shape, chunk_shape, options.use_zarr3, options.use_compression);
    Ok(PlannedArray { name: path.param_name(), metadata, source, sharding })
}

/// The shards of `array` this process writes in a multi-process save: one
/// per distinct region of `sharding`, if this process holds the region's
/// first device (see [`regions_written_by`]).
fn owned_blocks<'a>(array: &'a ShardedArray, sharding: &Sharding) -> std::result::Result<Vec<Block<'a>>, String> {
    let regions = device_regions(sharding, array.global_shape())?;
    let holds = |device: i64| array.shards().iter().any(|shard| shard.device == device);
    regions_written_by(&regions, holds)
        .into_iter()
        .map(|(device, region)| {
            let shard = array.shards().iter().find(|shard| shard.device == device).expect("held");
            if shard.region != region {
                return Err(format!(
                    "the shard of device {device} covers {:?}, but the sharding gives that device {region:?}",
                    shard.region
                ));
            }
            Ok((region.iter().map(|r| r.start).collect(), Cow::Borrowed(&shard.data)))
        })
        .collect()
}

impl Source<'_> {
    /// The same elements cast to `dtype` (numpy `astype`).
    fn cast(self, dtype: DType) -> Self {
        match self {
            Source::Whole(a) => Source::Whole(Cow::Owned(cast_array(&a, dtype))),
            Source::Blocks(blocks) => Source::Blocks(
                blocks.into_iter().map(|(origin, a)| (origin, Cow::Owned(cast_array(&a, dtype)))).collect(),
            ),
        }
    }
}

/// Raw bytes of chunks encoded together before they are written: bounds
/// the memory held by encoded-but-unwritten chunks while keeping every core
/// busy.
const ENCODE_BATCH_BYTES: u64 = 64 << 20;

/// One chunk to encode: which array, which chunk of its grid and, for an
/// array written in blocks, which block holds it.
struct ChunkJob {
    array: usize,
    index: Vec<u64>,
    block: Option<usize>,
    bytes: u64,
}

/// The chunks this process writes, in grid order per array (per block for
/// arrays written in blocks). Every chunk of a block must lie inside it
/// (clipped to the array), as it does when chunks divide the write shape.
fn chunk_jobs(arrays: &[PlannedArray]) -> Result<Vec<ChunkJob>> {
    let mut jobs = Vec::new();
    for (i, array) in arrays.iter().enumerate() {
        let m = &array.metadata;
        let grid = m.grid_shape();
        let chunk_bytes = num_elements(&m.chunk_shape).unwrap_or(1) * m.dtype.size() as u64;
        match &array.source {
            Source::Whole(_) => {
                let count = num_elements(&grid).expect("bounded by the array size");
                jobs.extend((0..count).map(|n| ChunkJob {
                    array: i,
                    index: unravel(n, &grid),
                    block: None,
                    bytes: chunk_bytes,
                }));
            }
            Source::Blocks(blocks) => {
                for (b, (origin, data)) in blocks.iter().enumerate() {
                    let end: Vec<u64> = origin.iter().zip(data.shape()).map(|(o, n)| o + n).collect();
                    let first: Vec<u64> = origin.iter().zip(&m.chunk_shape).map(|(o, c)| o / c).collect();
                    let extent: Vec<u64> =
                        end.iter().zip(&m.chunk_shape).zip(&first).map(|((e, c), f)| e.div_ceil(*c) - f).collect();
                    for n in 0..num_elements(&extent).expect("bounded by the block size") {
                        let index: Vec<u64> = unravel(n, &extent).iter().zip(&first).map(|(k, f)| k + f).collect();
                        let (chunk_origin, chunk_extent) = m.chunk_region(&index);
                        let inside = (0..index.len())
                            .all(|d| chunk_origin[d] >= origin[d] && chunk_origin[d] + chunk_extent[d] <= end[d]);
                        if !inside {
                            return Err(Error::InvalidArgument(format!(
                                "{}: chunk shape {:?} does not divide the shard at {origin:?} of shape {:?}",
                                array.name,
                                m.chunk_shape,
                                data.shape()
                            )));
                        }
                        jobs.push(ChunkJob { array: i, index, block: Some(b), bytes: chunk_bytes });
                    }
                }
            }
        }
    }
    Ok(jobs)
}

fn encode(array: &PlannedArray, job: &ChunkJob) -> (String, Bytes) {
    let m = &array.metadata;
    let chunk = match (&array.source, job.block) {
        (Source::Whole(a), _) => m.extract_chunk(a.data(), &job.index),
        (Source::Blocks(blocks), Some(b)) => {
            let (origin, data) = &blocks[b];
            m.extract_chunk_from(data.data(), data.shape(), origin, &job.index)
        }
        (Source::Blocks(_), None) => unreachable!("chunk_jobs gives every chunk of a block its block"),
    };
    (array_key(&array.name, &m.key_encoding.key(&job.index)), Bytes::from(m.encode_chunk(&chunk)))
}

/// Encodes all chunks in parallel, batch by batch, and writes each batch in order.
async fn write_arrays(
    arrays: &[PlannedArray<'_>],
    sink: &mut ArraySink,
    role: Role,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    if role.is_primary() {
        for array in arrays {
            let m = &array.metadata;
            sink.put(&array_key(&array.name, m.file_name()), Bytes::from(m.to_json_bytes())).await?;
        }
    }
    let jobs = chunk_jobs(arrays)?;
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
            jobs[start..end].par_iter().map(|job| encode(&arrays[job.array], job)).collect();
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

/// How item databases are written: Orbax's configuration with the target data file size.
fn writer_options(options: &SaveOptions) -> WriterOptions {
    WriterOptions { target_data_file_size: Some(options.ocdbt_target_data_file_size), ..WriterOptions::default() }
}

/// The directory of process `index`'s database inside an item (Orbax's name).
pub(super) fn process_database(index: usize) -> String {
    format!("ocdbt.process_{index}")
}

/// Writes `tree` as the PyTree item `item` at `dir`: all of it when saving
/// alone; in a multi-process save, this process's share (chunks of the
/// regions it owns into its own database; the primary also whole arrays,
/// array metadata and the item's metadata files). Returns the name and
/// metadata of every array of the item.
pub(super) async fn write(
    store: &Arc<dyn Storage>,
    dir: &str,
    item: &str,
    tree: &PyTree,
    options: &SaveOptions,
    role: Role,
) -> Result<Vec<(String, ArrayMetadata)>> {
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
                arrays.push(plan_array(path, leaf, sharding, options, role)?)
            }
            PyTree::String(s) => {
                strings.insert(name, s.clone());
            }
            _ => {}
        }
    }

    if !arrays.is_empty() {
        let mut sink = if options.use_ocdbt {
            let writer_options = writer_options(options);
            let db = if role.shared { join_key(dir, &process_database(role.index)) } else { dir.to_string() };
            ArraySink::Ocdbt(Box::new(DatabaseWriter::create(store.clone(), &db, writer_options).await?))
        } else {
            ArraySink::Directory { store: store.clone(), prefix: dir.to_string() }
        };
        write_arrays(&arrays, &mut sink, role, options.progress.as_ref()).await?;
        sink.finish().await?;
    }
    let written = arrays.iter().map(|a| (a.name.clone(), a.metadata.clone())).collect();

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
    if role.is_primary() {
        put("_METADATA", to_string(&metadata, JsonStyle::Python)).await?;
    }
    let sharded: Vec<&PlannedArray> = arrays.iter().filter(|a| a.sharding.is_some()).collect();
    if !sharded.is_empty() {
        if role.is_primary() {
            let shardings: Vec<(String, Sharding)> = sharded
                .iter()
                .map(|a| (a.name.clone(), a.sharding.as_ref().expect("filtered").sharding.clone()))
                .collect();
            put("_sharding", ShardingFile::encode(&shardings)).await?;
        }
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
        let file = format!("array_metadatas/process_{}", role.index);
        put(&file, to_string(&json!({ "array_metadatas": list }), JsonStyle::Python)).await?;
    }
    if !strings.is_empty() && role.is_primary() {
        let object: Map<String, Value> = strings.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        put("_strings.json", to_string(&Value::Object(object), JsonStyle::Compact)).await?;
    }
    Ok(written)
}

/// Completes a PyTree item of a multi-process save once every process has
/// written its share (run by the primary): merges the per-process databases
/// into the item's database (OCDBT layout), then checks that some process
/// wrote every chunk of every array (`arrays`, as [`write`] returned them).
pub(super) async fn finish_shared(
    store: &Arc<dyn Storage>,
    dir: &str,
    arrays: &[(String, ArrayMetadata)],
    process_count: usize,
    options: &SaveOptions,
) -> Result<()> {
    if arrays.is_empty() {
        return Ok(());
    }
    // Every key the item must have: each array's metadata and chunks.
    let mut expected: HashSet<String> = HashSet::new();
    for (name, metadata) in arrays {
        expected.insert(array_key(name, metadata.file_name()));
        let grid = metadata.grid_shape();
        for n in 0..num_elements(&grid).expect("bounded by the array size") {
            expected.insert(array_key(name, &metadata.key_encoding.key(&unravel(n, &grid))));
        }
    }
    let present: HashSet<String> = if options.use_ocdbt {
        let children: Vec<String> = (0..process_count).map(process_database).collect();
        let merged = merge_databases(store.clone(), dir, &children, writer_options(options)).await?;
        let present: HashSet<String> = merged.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        // Keys of no array of this item: the processes disagree on the tree.
        if let Some(key) = present.iter().filter(|k| !expected.contains(*k)).min() {
            return Err(Error::InvalidArgument(format!(
                "{dir}: a process wrote {key}, which belongs to no array of process 0's tree; \
                 all processes must save the same tree structure"
            )));
        }
        present
    } else {
        let prefix = format!("{dir}/");
        let listed = store.list(dir).await?;
        listed.into_iter().filter_map(|object| object.key.strip_prefix(&prefix).map(str::to_string)).collect()
    };
    let mut missing: Vec<&String> = expected.iter().filter(|k| !present.contains(*k)).collect();
    missing.sort();
    if let Some(key) = missing.first() {
        let array = arrays
            .iter()
            .map(|(name, _)| name)
            .filter(|name| key.starts_with(&format!("{name}/")))
            .max_by_key(|n| n.len());
        return Err(Error::InvalidArgument(format!(
            "{dir}: no process wrote {key} of array {:?} ({} missing in all): the process holding the first \
             device of that region (in mesh order) must pass that device's shard",
            array.map_or("?", |n| n.as_str()),
            if missing.len() == 1 { "1 key".to_string() } else { format!("{} keys", missing.len()) }
        )));
    }
    Ok(())
}
