//! Region reads and per-device loads against checkpoints written by real
//! Orbax 0.12.8 (`conformance/generate/make_resharding.py`): arrays saved
//! 8-way sharded on dim 0, loaded here for a 2x4 mesh, must give exactly the
//! per-device slices Orbax itself returns; a byte-counting storage proves a
//! device's shard reads only the chunks it needs.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use orbax::metadata::{PartitionSpecEntry, Sharding};
use orbax::storage::{Capabilities, ListResult, LocalFileSystem, ObjectMeta, PutMode, Storage};
use orbax::{Checkpoint, KeyEntry, KeyPath, LeafLayout, LoadOptions, PyTree, PyTreeItem, ShardedLoad};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected/v0_12_8_v1_resharding.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Storage that counts the bytes read from each key.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Storage>,
    read: Mutex<BTreeMap<String, u64>>,
}

impl Counting {
    fn new(inner: Arc<dyn Storage>) -> Arc<Counting> {
        Arc::new(Counting { inner, read: Mutex::new(BTreeMap::new()) })
    }
    fn note(&self, key: &str, n: usize) {
        *self.read.lock().unwrap().entry(key.to_string()).or_default() += n as u64;
    }
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.read.lock().unwrap())
    }
}

#[async_trait]
impl Storage for Counting {
    async fn get(&self, key: &str) -> orbax::storage::Result<Bytes> {
        let b = self.inner.get(key).await?;
        self.note(key, b.len());
        Ok(b)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> orbax::storage::Result<Bytes> {
        let b = self.inner.get_range(key, range).await?;
        self.note(key, b.len());
        Ok(b)
    }
    async fn head(&self, key: &str) -> orbax::storage::Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> orbax::storage::Result<()> {
        self.inner.put(key, data, mode).await
    }
    async fn delete(&self, key: &str) -> orbax::storage::Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> orbax::storage::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn list_with_delimiter(&self, prefix: &str) -> orbax::storage::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

fn key(name: &str) -> KeyPath {
    KeyPath(vec![KeyEntry::Key(name.to_string())])
}

fn mesh_sharding(leaf: &Value) -> Sharding {
    let spec = leaf["partition_spec"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e {
            Value::Null => PartitionSpecEntry::None,
            Value::String(a) => PartitionSpecEntry::Axis(a.clone()),
            Value::Array(a) => PartitionSpecEntry::Axes(a.iter().map(|s| s.as_str().unwrap().to_string()).collect()),
            other => panic!("partition spec entry {other}"),
        })
        .collect();
    Sharding::Named {
        mesh_shape: vec![2, 4],
        axis_names: vec!["x".into(), "y".into()],
        axis_types: None,
        partition_spec: spec,
        device_ids: (0..8).collect(),
        memory_kind: None,
    }
}

async fn open(store: &Arc<dyn Storage>, name: &str) -> PyTreeItem {
    let checkpoint = Checkpoint::open(store, name, &LoadOptions::default()).await.unwrap();
    checkpoint.pytree(None).await.unwrap()
}

/// The elements of an array as f64, whatever its (float32 / int32) dtype.
fn values(tree: &orbax::Array) -> Vec<f64> {
    let d = tree.data();
    match tree.dtype().size() {
        4 if tree.dtype().to_string() == "float32" => {
            d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
        }
        4 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        n => panic!("unexpected item size {n}"),
    }
}

#[tokio::test]
async fn reshards_onto_a_2x4_mesh_exactly_as_orbax_does() {
    let expected = expected();
    for layout in ["ocdbt", "files"] {
        let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(fixtures().join("fixtures")));
        let item = open(&store, &format!("v0_12_8_v1_resharding_{layout}")).await;
        for (name, leaf) in expected[layout].as_object().unwrap() {
            let sharding = LeafLayout::Sharding(mesh_sharding(leaf));
            let PyTree::Sharded(loaded) =
                item.load_leaf_sharded(&key(name), &sharding, &ShardedLoad::default()).await.unwrap()
            else {
                panic!("{name}: not sharded")
            };
            let want = leaf["shards"].as_array().unwrap();
            assert_eq!(loaded.shards().len(), want.len(), "{layout} {name}");
            for (got, want) in loaded.shards().iter().zip(want) {
                assert_eq!(got.device, want["device"].as_i64().unwrap(), "{layout} {name}");
                let region: Vec<Range<u64>> = want["index"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r[0].as_u64().unwrap()..r[1].as_u64().unwrap())
                    .collect();
                assert_eq!(got.region, region, "{layout} {name} device {}", got.device);
                let data: Vec<f64> = want["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                assert_eq!(values(&got.data), data, "{layout} {name} device {}", got.device);
            }
            // A subset of devices gets just theirs.
            let some = ShardedLoad { devices: Some(vec![3, 6]), max_bytes_in_flight: Some(1) };
            let PyTree::Sharded(two) = item.load_leaf_sharded(&key(name), &sharding, &some).await.unwrap() else {
                panic!("{name}: not sharded")
            };
            let ids: Vec<i64> = two.shards().iter().map(|s| s.device).collect();
            assert_eq!(ids, [3, 6]);
            assert_eq!(two.shards()[1], loaded.shards()[6]);
        }
        let bad = ShardedLoad { devices: Some(vec![9]), max_bytes_in_flight: None };
        let sharding = LeafLayout::Sharding(mesh_sharding(&expected[layout]["w"]));
        let err = item.load_leaf_sharded(&key("w"), &sharding, &bad).await.unwrap_err().to_string();
        assert!(err.contains("device 9"), "{err}");
    }
}

#[tokio::test]
async fn whole_tree_sharded_load_assembles_to_the_plain_load() {
    let expected = expected();
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(fixtures().join("fixtures")));
    let item = open(&store, "v0_12_8_v1_resharding_ocdbt").await;
    let plain = item.load().await.unwrap();
    let layout = |k: &KeyPath, _: &[u64]| {
        let name = k.to_string();
        let name = name.trim_start_matches("['").trim_end_matches("']");
        Some(LeafLayout::Sharding(mesh_sharding(&expected["ocdbt"][name])))
    };
    let sharded = item.load_sharded(&layout, &ShardedLoad::default()).await.unwrap();
    let (PyTree::Dict(plain), PyTree::Dict(sharded)) = (plain, sharded) else { panic!("not dicts") };
    assert_eq!(plain.len(), 2);
    for ((k1, v1), (k2, v2)) in plain.iter().zip(&sharded) {
        assert_eq!(k1, k2);
        let (PyTree::Array(whole), PyTree::Sharded(parts)) = (v1, v2) else { panic!("{k1}: wrong leaf kinds") };
        assert_eq!(&parts.assemble().unwrap(), whole);
    }
}

#[tokio::test]
async fn region_reads_fetch_only_intersecting_chunks() {
    let counting = Counting::new(Arc::new(LocalFileSystem::new(fixtures().join("fixtures"))));
    let store: Arc<dyn Storage> = counting.clone();
    // Per-leaf files: the chunk files read are exactly the intersecting ones, each once.
    let item = open(&store, "v0_12_8_v1_resharding_files").await;
    let whole = item.read_region(&key("w"), &[0..16, 0..8], None).await.unwrap().0;
    counting.take();
    let (part, stats) = item.read_region(&key("w"), &[3..9, 5..7], None).await.unwrap();
    let read = counting.take();
    let chunk_files: Vec<&String> = read.keys().filter(|k| k.contains("/w/c/")).collect();
    // chunk shape (1, 4): rows 3..9 and column chunk 1.
    let want: Vec<String> = (3..9).map(|r| format!("v0_12_8_v1_resharding_files/state/w/c/{r}/1")).collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(chunk_files, want_sorted.iter().collect::<Vec<_>>());
    let sizes: u64 = want.iter().map(|k| std::fs::metadata(fixtures().join("fixtures").join(k)).unwrap().len()).sum();
    let chunk_bytes: u64 = read.iter().filter(|(k, _)| k.contains("/w/c/")).map(|(_, n)| n).sum();
    assert_eq!(chunk_bytes, sizes);
    assert_eq!(stats.chunks_decoded, 6);
    let other: Vec<&String> = read.keys().filter(|k| !k.contains("/w/")).collect();
    assert!(other.is_empty(), "read outside the leaf: {other:?}");
    let whole_values = values(&whole);
    let want_values: Vec<f64> = (3..9).flat_map(|r| (5..7).map(move |c| r * 8 + c)).map(|i| whole_values[i]).collect();
    assert_eq!(values(&part), want_values);

    // The fixture's OCDBT values are small enough to be inline in the b-tree; see below for data files.
    let item = open(&store, "v0_12_8_v1_resharding_ocdbt").await;
    let (one, one_stats) = item.read_region(&key("w"), &[8..16, 2..4], Some(16)).await.unwrap();
    assert_eq!(one_stats.chunks_decoded, 8);
    assert!(one_stats.peak_bytes_in_flight <= 32, "{one_stats:?}");
    let whole_values = values(&whole);
    let want: Vec<f64> = (8..16).flat_map(|r| (2..4).map(move |c| r * 8 + c)).map(|i| whole_values[i]).collect();
    assert_eq!(values(&one), want);

    let err = item.read_region(&key("w"), &[0..17, 0..8], None).await.unwrap_err().to_string();
    assert!(err.contains("not inside the array's shape [16, 8]"), "{err}");
}

fn f32_array(shape: &[u64], seed: u32) -> orbax::Array {
    let n: u64 = shape.iter().product();
    // An LCG: incompressible enough that chunks stay distinct out-of-line values.
    let mut x = seed;
    let data = (0..n)
        .flat_map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x as f32 / 7.0).to_le_bytes()
        })
        .collect();
    orbax::Array::new(orbax::DType::Float32, shape.to_vec(), data).unwrap()
}

#[tokio::test]
async fn one_leaf_or_one_shard_of_an_ocdbt_checkpoint_reads_only_its_chunks() {
    use orbax::{SaveOptions, StorageOptions};
    let memory: Arc<dyn Storage> = Arc::new(orbax::storage::InMemory::new());
    let counting = Counting::new(memory.clone());
    let store: Arc<dyn Storage> = counting.clone();
    let big = f32_array(&[64, 64], 1);
    let tree = PyTree::Dict(vec![
        ("big".into(), PyTree::Array(big.clone())),
        ("other".into(), PyTree::Array(f32_array(&[64, 64], 2))),
    ]);
    for use_ocdbt in [true, false] {
        let path = if use_ocdbt { "ocdbt" } else { "files" };
        let options = SaveOptions {
            use_ocdbt,
            use_compression: false,
            storage: StorageOptions { chunk_byte_size: Some(1024), ..Default::default() },
            ..Default::default()
        };
        orbax::save_pytree(&memory, path, &tree, &options).await.unwrap();
        counting.take();
        let item = open(&store, path).await;
        // Metadata: opening the item and the array.
        item.read_region(&key("big"), &[0..0, 0..64], None).await.unwrap();
        let metadata: u64 = counting.take().values().sum();
        let info = item.metadata().await.unwrap();
        assert!(metadata < 4096, "{path}: opening read {metadata} bytes");
        let chunk = info.leaves[0].storage.as_ref().unwrap().read_chunk_shape.clone();
        counting.take();
        // One device's shard of an 8-way dim-0 sharding: rows 8..16, every column.
        let (shard, stats) = item.read_region(&key("big"), &[8..16, 0..64], None).await.unwrap();
        let read: u64 = counting.take().values().sum();
        let needed = (15 / chunk[0] - 8 / chunk[0] + 1) * 64u64.div_ceil(chunk[1]);
        assert!(needed < 16, "{path}: chunks {chunk:?} too large for the test");
        assert_eq!(stats.chunks_decoded, needed, "{path}");
        // Each chunk is a zarr3 shard of one inner chunk: its values plus a 20-byte index (one entry + crc32c).
        assert_eq!(stats.bytes_fetched, needed * (chunk[0] * chunk[1] * 4 + 20), "{path}: {stats:?}");
        // Storage reads: the needed chunks plus at most the metadata reads of opening the array again.
        assert!(read <= stats.bytes_fetched + metadata, "{path}: storage read {read} bytes for {stats:?}");
        assert_eq!(shard.data(), &big.data()[8 * 64 * 4..16 * 64 * 4]);
        // One whole leaf reads its own chunks, never the other leaf's.
        item.load_leaf_at(&key("big")).await.unwrap();
        let read = counting.take();
        let total: u64 = read.values().sum();
        let chunks = 64u64.div_ceil(chunk[0]) * 64u64.div_ceil(chunk[1]);
        assert!(total <= 64 * 64 * 4 + chunks * 20 + metadata, "{path}: {total} bytes for a 16 KiB leaf");
        assert!(read.keys().all(|k| !k.contains("other")), "{path}: {read:?}");
        eprintln!("{path}: metadata {metadata} bytes, one shard {} bytes, one leaf {total} bytes", stats.bytes_fetched);
    }
}

#[test]
fn cli_cat_slice_writes_the_numpy_region() {
    let path = fixtures().join("fixtures/v0_12_8_v1_resharding_files");
    let cat = |slice: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_orbax"))
            .args(["cat", path.to_str().unwrap(), "['w']", "--json", "--slice", slice])
            .output()
            .unwrap()
    };
    // w = arange(128).reshape(16, 8) / 4 (make_resharding.py).
    let out = cat("-1, 2:4");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[30.5,30.75]\n");
    let out = cat("1:3,7:");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[[3.75],[5.75]]\n");
    let out = cat("0, 0");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "0.0\n");
    let out = cat("0:4:2");
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid_argument") && err.contains("steps are not supported"), "{err}");
}

/// Every array leaf of the 4x2-mesh fixtures (zarr3 in OCDBT, zarr2 per
/// file) loaded with the sharding it was saved with: the shards reassemble
/// to the plain load, and arbitrary regions equal slices of it.
#[tokio::test]
async fn saved_shardings_and_arbitrary_regions_match_the_plain_load() {
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(fixtures().join("fixtures")));
    for name in ["v0_12_8_v1_sharded8", "v0_12_8_v1_sharded8_files_zarr2"] {
        let item = open(&store, name).await;
        let metadata = item.metadata().await.unwrap();
        let saved: Vec<(KeyPath, Sharding)> =
            metadata.leaves.iter().filter_map(|l| Some((l.keypath.clone(), l.sharding.clone()?))).collect();
        assert!(saved.len() >= 4, "{name}: {saved:?}");
        let layout = |k: &KeyPath, _: &[u64]| {
            saved.iter().find(|(s, _)| s == k).map(|(_, sharding)| LeafLayout::Sharding(sharding.clone()))
        };
        let sharded =
            orbax::load_pytree_sharded(&store, name, &LoadOptions::default(), &layout, &ShardedLoad::default())
                .await
                .unwrap();
        for (keypath, _) in &saved {
            let whole = item.load_leaf_at(keypath).await.unwrap();
            let whole = match whole {
                PyTree::Array(a) => a,
                PyTree::Scalar(_) => continue,
                other => panic!("{name} {keypath}: {other:?}"),
            };
            let PyTree::Sharded(parts) = sharded.get(keypath).unwrap() else { panic!("{name} {keypath}: not sharded") };
            assert_eq!(parts.assemble().unwrap(), whole, "{name} {keypath}");
            let shape = whole.shape().to_vec();
            let item_size = whole.dtype().size();
            // A few regions, including ones straddling chunk boundaries.
            for cut in 0..4u64 {
                let region: Vec<Range<u64>> =
                    shape.iter().map(|&n| (cut * n / 7).min(n)..(n - cut * n / 9).max(cut * n / 7).min(n)).collect();
                let (got, _) = item.read_region(keypath, &region, Some(64)).await.unwrap();
                let cut = orbax::sharded::ShardedArray::from_array(&whole, None, &[(0, region.clone())]).unwrap();
                assert_eq!(got, cut.shards()[0].data, "{name} {keypath} {region:?} ({item_size}-byte items)");
            }
        }
    }
}

#[tokio::test]
async fn explicit_index_domain_regions_per_device() {
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(fixtures().join("fixtures")));
    let item = open(&store, "v0_12_8_v1_resharding_ocdbt").await;
    let PyTree::Array(whole) = item.load_leaf_at(&key("w")).await.unwrap() else { panic!("w is an array") };
    let regions = vec![(4, vec![0..5, 1..3]), (9, vec![5..16, 0..8]), (2, vec![0..5, 1..3])];
    let layout = LeafLayout::Regions(regions.clone());
    let PyTree::Sharded(loaded) = item.load_leaf_sharded(&key("w"), &layout, &ShardedLoad::default()).await.unwrap()
    else {
        panic!("not sharded")
    };
    assert_eq!(loaded, orbax::sharded::ShardedArray::from_array(&whole, None, &regions).unwrap());
    assert!(loaded.sharding().is_none());
    let outside = LeafLayout::Regions(vec![(0, vec![0..17, 0..8])]);
    let err = item.load_leaf_sharded(&key("w"), &outside, &ShardedLoad::default()).await.unwrap_err().to_string();
    assert!(err.contains("['w']") && err.contains("not inside the array's shape [16, 8]"), "{err}");
}
