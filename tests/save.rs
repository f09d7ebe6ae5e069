//! The writer's contract on the Rust side: what it rejects (as Orbax does),
//! per-leaf storage options, JSON items, overwrite rules, and reading back
//! exactly what was written (the Orbax side is `conformance/writer/`).

use std::sync::Arc;

use orbax::storage::{InMemory, LocalFileSystem, Storage};
use orbax::{
    blocking, Array, Checkpointable, DType, ErrorKind, KeyEntry, LoadOptions, PyTree, SaveOptions, Scalar,
    StorageOptions,
};
use serde_json::json;

fn f32s(v: &[f32]) -> PyTree {
    PyTree::Array(
        Array::new(DType::Float32, vec![v.len() as u64], v.iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap(),
    )
}

fn memory() -> Arc<dyn Storage> {
    Arc::new(InMemory::new())
}

fn save(store: &Arc<dyn Storage>, path: &str, tree: &PyTree, options: &SaveOptions) -> orbax::Result<()> {
    blocking::block_on(orbax::save_pytree(store, path, tree, options))
}

#[test]
fn every_leaf_kind_round_trips_in_every_layout() {
    let tree = PyTree::Dict(vec![
        ("w".into(), f32s(&[1.0, -2.5, f32::NAN])),
        ("nested".into(), PyTree::List(vec![PyTree::Scalar(Scalar::from(7i64)), PyTree::String("s".into())])),
        ("flag".into(), PyTree::Scalar(Scalar::from(true))),
        ("none".into(), PyTree::None),
        ("empty".into(), PyTree::Dict(vec![])),
        ("empty_list".into(), PyTree::List(vec![])),
        ("empty_tuple".into(), PyTree::Tuple(vec![])),
    ]);
    // What comes back: dict keys in flatten (sorted) order, as Orbax returns them.
    let mut expected_leaves: Vec<(String, PyTree)> =
        tree.leaves().into_iter().map(|(p, l)| (p.to_string(), l.clone())).collect();
    expected_leaves.sort_by(|a, b| a.0.cmp(&b.0));
    for (use_ocdbt, use_zarr3, use_compression) in
        [(true, true, true), (true, false, true), (false, true, true), (false, false, false)]
    {
        let store = memory();
        let options = SaveOptions { use_ocdbt, use_zarr3, use_compression, ..Default::default() };
        save(&store, "ckpt", &tree, &options).unwrap();
        let back = blocking::load_pytree(&store, "ckpt", &LoadOptions::default()).unwrap();
        let mut got: Vec<(String, PyTree)> =
            back.leaves().into_iter().map(|(p, l)| (p.to_string(), l.clone())).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, expected_leaves, "layout ocdbt={use_ocdbt} zarr3={use_zarr3}");
    }
}

#[test]
fn orbax_rejections_are_errors() {
    let store = memory();
    let zero = PyTree::Dict(vec![("z".into(), PyTree::Array(Array::new(DType::Int8, vec![0, 3], vec![]).unwrap()))]);
    let err = save(&store, "zero", &zero, &SaveOptions::default()).unwrap_err();
    assert!(err.to_string().contains("zero size"), "{err}");

    let collide =
        PyTree::Dict(vec![("a.b".into(), f32s(&[1.0])), ("a".into(), PyTree::Dict(vec![("b".into(), f32s(&[2.0]))]))]);
    let err = save(&store, "collide", &collide, &SaveOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("\"a.b\""), "{err}");
    assert!(blocking::block_on(store.list("collide")).unwrap().is_empty(), "a rejected save leaves nothing behind");

    // Per-leaf directories would put this array at `state/../` (outside the item).
    let escape = PyTree::Dict(vec![("..".into(), f32s(&[1.0]))]);
    let per_leaf = SaveOptions { use_ocdbt: false, ..Default::default() };
    let err = save(&store, "escape", &escape, &per_leaf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafePath, "{err}");
}

#[test]
fn existing_checkpoints_need_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
    let one = PyTree::Dict(vec![("x".into(), f32s(&[1.0]))]);
    let two = PyTree::Dict(vec![("x".into(), f32s(&[2.0]))]);
    save(&store, "ckpt", &one, &SaveOptions::default()).unwrap();
    let err = save(&store, "ckpt", &two, &SaveOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    save(&store, "ckpt", &two, &SaveOptions { overwrite: true, ..Default::default() }).unwrap();
    assert_eq!(blocking::load_pytree(&store, "ckpt", &LoadOptions::default()).unwrap(), two);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("ckpt")], "no temporary directories remain");
}

#[test]
fn per_leaf_storage_options_override_the_default() {
    let store = memory();
    let tree = PyTree::Dict(vec![("keep".into(), f32s(&[1.5; 64])), ("cast".into(), f32s(&[1.5; 64]))]);
    let options = SaveOptions {
        storage: StorageOptions { chunk_byte_size: Some(64), ..Default::default() },
        storage_for: Some(Arc::new(|path: &orbax::KeyPath, _leaf: &PyTree| match path.entries() {
            [KeyEntry::Key(k)] if k == "cast" => StorageOptions { dtype: Some(DType::BFloat16), ..Default::default() },
            _ => StorageOptions::default(),
        })),
        ..Default::default()
    };
    save(&store, "ckpt", &tree, &options).unwrap();
    let meta = blocking::pytree_metadata(&store, "ckpt", &LoadOptions::default()).unwrap();
    let by_name = |n: &str| meta.leaves.iter().find(|l| l.param_name == n).unwrap();
    assert_eq!(by_name("cast").dtype, Some(DType::BFloat16));
    assert_eq!(by_name("keep").dtype, Some(DType::Float32));
    assert_eq!(by_name("keep").storage.as_ref().unwrap().chunk_shape, vec![16], "64-byte chunks of float32");
    assert_eq!(
        by_name("cast").storage.as_ref().unwrap().chunk_shape,
        vec![32],
        "the default chunk_byte_size still applies"
    );
}

#[test]
fn json_and_pytree_items_round_trip() {
    let store = memory();
    let params = PyTree::Dict(vec![("w".into(), f32s(&[3.0]))]);
    let config = json!({"lr": 0.001, "layers": [64, 32], "name": "run ✓"});
    let items = vec![
        ("params".to_string(), Checkpointable::PyTree(params.clone())),
        ("config".to_string(), Checkpointable::Json(config.clone())),
    ];
    blocking::block_on(orbax::save_checkpointables(&store, "ckpt", &items, &SaveOptions::default())).unwrap();
    let back = blocking::load_checkpointables(&store, "ckpt", &LoadOptions::default()).unwrap();
    assert_eq!(
        back,
        vec![
            (Some("config".into()), Checkpointable::Json(config)),
            (Some("params".into()), Checkpointable::PyTree(params))
        ]
    );
}

#[test]
fn large_single_chunk_arrays_stream_in_every_layout() {
    // 24 MiB: above the streaming threshold, several 4 MiB pieces.
    let n = 6 << 20;
    let data: Vec<u8> = (0..n as u32).flat_map(|i| ((i % 1000) as f32 * 0.5).to_le_bytes()).collect();
    let big = PyTree::Array(Array::new(DType::Float32, vec![n as u64], data).unwrap());
    let tree = PyTree::Dict(vec![("big".into(), big)]);
    for (use_ocdbt, use_zarr3, use_compression) in
        [(true, true, true), (true, true, false), (false, false, true), (false, true, false)]
    {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
        let options = SaveOptions { use_ocdbt, use_zarr3, use_compression, ..Default::default() };
        save(&store, "ckpt", &tree, &options).unwrap();
        let back = blocking::load_pytree(&store, "ckpt", &LoadOptions::default()).unwrap();
        assert!(back == tree, "layout ocdbt={use_ocdbt} zarr3={use_zarr3} compression={use_compression}");
    }
}

#[test]
fn streamed_chunks_with_damage_are_errors() {
    let n = 4 << 20;
    let data: Vec<u8> = (0..n as u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let tree =
        PyTree::Dict(vec![("big".into(), PyTree::Array(Array::new(DType::Float32, vec![n as u64], data).unwrap()))]);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
    save(&store, "ckpt", &tree, &SaveOptions { use_ocdbt: false, ..Default::default() }).unwrap();
    let chunk = dir.path().join("ckpt/state/big/c/0");
    let original = std::fs::read(&chunk).unwrap();
    // A flipped byte in the shard index, a truncated shard, a damaged zstd frame.
    let len = original.len();
    let mut index_flip = original.clone();
    index_flip[len - 10] ^= 1;
    let mut frame_flip = original.clone();
    frame_flip[len / 2] ^= 0xff;
    frame_flip[len / 2 + 1] ^= 0xff;
    for (what, bytes) in [("index", index_flip), ("truncated", original[..len / 2].to_vec()), ("frame", frame_flip)] {
        std::fs::write(&chunk, &bytes).unwrap();
        match blocking::load_pytree(&store, "ckpt", &LoadOptions::default()) {
            Err(e) => assert!(e.to_string().contains("big/c/0"), "{what}: the error names the chunk: {e}"),
            Ok(back) => assert!(back != tree, "{what}: damage went unnoticed and the values came back equal"),
        }
    }
}

/// An in-memory store that, like S3 or GCS, cannot rename: saves take the
/// write-in-place path with `commit_success.txt` last.
#[derive(Debug, Default)]
struct NoRename(InMemory);

#[async_trait::async_trait]
impl Storage for NoRename {
    async fn get(&self, key: &str) -> orbax::storage::Result<bytes::Bytes> {
        self.0.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> orbax::storage::Result<bytes::Bytes> {
        self.0.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> orbax::storage::Result<orbax::storage::ObjectMeta> {
        self.0.head(key).await
    }
    async fn put(&self, key: &str, data: bytes::Bytes, mode: orbax::storage::PutMode) -> orbax::storage::Result<()> {
        self.0.put(key, data, mode).await
    }
    async fn delete(&self, key: &str) -> orbax::storage::Result<()> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str) -> orbax::storage::Result<Vec<orbax::storage::ObjectMeta>> {
        self.0.list(prefix).await
    }
    async fn list_with_delimiter(&self, prefix: &str) -> orbax::storage::Result<orbax::storage::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    fn capabilities(&self) -> orbax::storage::Capabilities {
        orbax::storage::Capabilities { conditional_create: true, ..Default::default() }
    }
}

#[test]
fn stores_without_rename_commit_with_the_marker_written_last() {
    let store: Arc<dyn Storage> = Arc::new(NoRename::default());
    let tree = PyTree::Dict(vec![("x".into(), f32s(&[1.0, 2.0]))]);
    save(&store, "ckpt", &tree, &SaveOptions::default()).unwrap();
    assert!(blocking::block_on(store.head("ckpt/commit_success.txt")).is_ok());
    assert_eq!(blocking::load_pytree(&store, "ckpt", &LoadOptions::default()).unwrap(), tree);

    // A save that died before its marker: readers refuse it unless asked.
    blocking::block_on(store.delete("ckpt/commit_success.txt")).unwrap();
    let err = blocking::load_pytree(&store, "ckpt", &LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Uncommitted, "{err}");
    let err = blocking::load_pytree(&store, "ckpt/state", &LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Uncommitted, "{err}");
    let anyway = LoadOptions { allow_uncommitted: true, ..Default::default() };
    assert_eq!(blocking::load_pytree(&store, "ckpt", &anyway).unwrap(), tree);

    // Overwrite in place, then the marker again.
    let two = PyTree::Dict(vec![("x".into(), f32s(&[3.0]))]);
    save(&store, "ckpt", &two, &SaveOptions { overwrite: true, ..Default::default() }).unwrap();
    assert_eq!(blocking::load_pytree(&store, "ckpt", &LoadOptions::default()).unwrap(), two);
}

#[test]
fn sharded_leaves_are_saved_whole_with_their_sharding() {
    use orbax::metadata::{PartitionSpecEntry, Sharding};
    use orbax::sharded::{device_regions, ShardedArray};
    let whole = Array::new(DType::Int32, vec![8, 2], (0..16i32).flat_map(|v| v.to_le_bytes()).collect()).unwrap();
    let sharding = Sharding::Named {
        mesh_shape: vec![4],
        axis_names: vec!["x".into()],
        axis_types: None,
        partition_spec: vec![PartitionSpecEntry::Axis("x".into())],
        device_ids: vec![0, 1, 2, 3],
        memory_kind: None,
    };
    let regions = device_regions(&sharding, whole.shape()).unwrap();
    let sharded = ShardedArray::from_array(&whole, Some(sharding.clone()), &regions).unwrap();
    let store = memory();
    let tree = PyTree::Dict(vec![("w".into(), PyTree::Sharded(sharded.clone()))]);
    save(&store, "ckpt", &tree, &SaveOptions::default()).unwrap();
    let back = blocking::load_pytree(&store, "ckpt", &LoadOptions::default()).unwrap();
    assert_eq!(back, PyTree::Dict(vec![("w".into(), PyTree::Array(whole.clone()))]));
    let meta = blocking::pytree_metadata(&store, "ckpt", &LoadOptions::default()).unwrap();
    assert_eq!(meta.leaves[0].sharding.as_ref(), Some(&sharding));

    // Shards that do not cover the array cannot be saved by one process.
    let partial = ShardedArray::from_array(&whole, Some(sharding), &regions[..2]).unwrap();
    let err =
        save(&store, "ckpt2", &PyTree::Dict(vec![("w".into(), PyTree::Sharded(partial))]), &SaveOptions::default())
            .unwrap_err();
    assert!(err.to_string().contains("cover 8 of the 16"), "{err}");
}
