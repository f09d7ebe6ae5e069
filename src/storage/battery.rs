//! A reusable test battery for [`Storage`] implementations, like
//! object_store's `integration.rs`: every backend (the core crate's stores
//! and those in `backends/`) runs the same checks of the contract the
//! format layers rely on.
//!
//! Each function panics with a message naming the failed expectation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::{object_writer, PutMode, Storage, StorageError};
use crate::{Array, Checkpoint, Checkpointable, DType, ErrorKind, LoadOptions, PyTree, SaveOptions, Scalar};

/// What a battery run may assume about the server behind a store.
#[derive(Debug, Clone)]
pub struct BatteryOptions {
    /// Keys written for the listing check; more than 1000 crosses the page
    /// size of S3's and Azure's list calls.
    pub list_keys: usize,
    /// The server enforces put-if-absent. False only for servers known to
    /// accept and ignore the condition (fake-gcs-server): then the
    /// conditional-create and racing-writers checks cannot prove anything.
    pub enforces_conditional_create: bool,
    /// Size of the object streamed through [`Storage::put_writer`] by
    /// [`streaming_writes`]; above the backend's part size it is a multipart
    /// upload.
    pub streamed_bytes: usize,
    /// A checkpoint directory written by real Orbax, uploaded and read back
    /// by [`orbax_fixture`].
    pub orbax_fixture: Option<PathBuf>,
}

impl Default for BatteryOptions {
    fn default() -> Self {
        BatteryOptions { list_keys: 1100, enforces_conditional_create: true, streamed_bytes: 5000, orbax_fixture: None }
    }
}

/// Runs every check with [`BatteryOptions::default`].
pub async fn run_all(store: &Arc<dyn Storage>, prefix: &str) {
    run_with(store, prefix, &BatteryOptions::default()).await;
}

/// Runs every check below `prefix` (which should be empty and unique to the run).
pub async fn run_with(store: &Arc<dyn Storage>, prefix: &str, options: &BatteryOptions) {
    put_get_head_delete(store.as_ref(), prefix).await;
    ranged_reads(store.as_ref(), prefix).await;
    listing(store.as_ref(), prefix, options.list_keys).await;
    if options.enforces_conditional_create {
        conditional_create(store.as_ref(), prefix).await;
    }
    streaming_writes(store, prefix, options.streamed_bytes).await;
    invalid_keys(store.as_ref()).await;
    unusual_keys(store.as_ref(), prefix).await;
    multi_item_checkpoint(store, prefix).await;
    commit_protocol(store, prefix, options.enforces_conditional_create).await;
    if let Some(fixture) = &options.orbax_fixture {
        orbax_fixture(store, prefix, fixture).await;
    }
}

fn key(prefix: &str, name: &str) -> String {
    super::join_key(prefix, name)
}

/// Whole-object put, get, head, overwrite and delete (deleting twice is fine).
pub async fn put_get_head_delete(store: &dyn Storage, prefix: &str) {
    let k = key(prefix, "a/b/object");
    assert!(matches!(store.get(&k).await, Err(StorageError::NotFound { .. })), "get of a missing key is NotFound");
    store.put(&k, Bytes::from_static(b"hello"), PutMode::Overwrite).await.expect("put");
    assert_eq!(store.get(&k).await.expect("get"), Bytes::from_static(b"hello"));
    assert_eq!(store.head(&k).await.expect("head").size, 5);
    store.put(&k, Bytes::from_static(b"bye"), PutMode::Overwrite).await.expect("overwrite");
    assert_eq!(store.get(&k).await.expect("get after overwrite"), Bytes::from_static(b"bye"));
    store.delete(&k).await.expect("delete");
    store.delete(&k).await.expect("deleting a missing object succeeds");
    assert!(matches!(store.head(&k).await, Err(StorageError::NotFound { .. })), "head after delete");
}

/// Single and multiple ranges, including past the end (an error, never short).
pub async fn ranged_reads(store: &dyn Storage, prefix: &str) {
    let k = key(prefix, "ranges");
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put(&k, Bytes::from(data.clone()), PutMode::Overwrite).await.expect("put");
    assert_eq!(store.get_range(&k, 10..20).await.expect("range"), &data[10..20]);
    assert_eq!(store.get_range(&k, 0..0).await.expect("empty range").len(), 0);
    let ranges = [9000..9100, 0..4, 4..8, 5000..5001];
    let got = store.get_ranges(&k, &ranges).await.expect("ranges");
    for (r, b) in ranges.iter().zip(&got) {
        assert_eq!(&b[..], &data[r.start as usize..r.end as usize], "range {r:?}");
    }
    assert!(
        matches!(store.get_range(&k, 9990..10_010).await, Err(StorageError::OutOfRange { .. })),
        "a range past the end is OutOfRange"
    );
    store.delete(&k).await.expect("delete");
}

/// Recursive and one-level listings of `n` keys.
pub async fn listing(store: &dyn Storage, prefix: &str, n: usize) {
    let dir = key(prefix, "list");
    for i in 0..n {
        store
            .put(&key(&dir, &format!("{:02}/k{i:05}", i % 7)), Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .expect("put");
    }
    store.put(&key(&dir, "top"), Bytes::from_static(b"y"), PutMode::Overwrite).await.expect("put");
    let all = store.list(&dir).await.expect("list");
    assert_eq!(all.len(), n + 1, "recursive listing sees every key");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "listing is sorted");
    let level = store.list_with_delimiter(&dir).await.expect("list_with_delimiter");
    assert_eq!(level.objects.len(), 1, "one object directly below");
    assert_eq!(level.prefixes.len(), 7.min(n), "one prefix per sub-directory");
    assert!(store.list(&key(prefix, "no-such-prefix")).await.expect("list of nothing").is_empty());
    store.delete_prefix(&dir).await.expect("delete_prefix");
    assert!(store.list(&dir).await.expect("list after delete").is_empty(), "delete_prefix removes everything");
}

/// Put-if-absent: the second create of a key fails with AlreadyExists.
pub async fn conditional_create(store: &dyn Storage, prefix: &str) {
    if !store.capabilities().conditional_create {
        return;
    }
    let k = key(prefix, "create-once");
    store.put(&k, Bytes::from_static(b"first"), PutMode::Create).await.expect("first create");
    let second = store.put(&k, Bytes::from_static(b"second"), PutMode::Create).await;
    assert!(matches!(second, Err(StorageError::AlreadyExists { .. })), "second create must fail, got {second:?}");
    assert_eq!(store.get(&k).await.expect("get"), Bytes::from_static(b"first"), "the first value survives");
    store.delete(&k).await.expect("delete");
}

/// A streamed object of `size` bytes (written in five pieces) appears only
/// once finished, whole and exact.
pub async fn streaming_writes(store: &Arc<dyn Storage>, prefix: &str, size: usize) {
    let k = key(prefix, "streamed");
    let expected: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = object_writer(store, &k).await.expect("writer");
    for piece in expected.chunks(size.div_ceil(5).max(1)) {
        writer.write(Bytes::copy_from_slice(piece)).await.expect("write");
    }
    assert_eq!(writer.written(), size as u64);
    assert!(matches!(store.head(&k).await, Err(StorageError::NotFound { .. })), "invisible before finish");
    writer.finish().await.expect("finish");
    let data = store.get(&k).await.expect("get");
    assert!(data == expected, "the streamed object reads back exactly ({} of {size} bytes)", data.len());
    let abandoned = key(prefix, "abandoned");
    let mut writer = object_writer(store, &abandoned).await.expect("writer");
    writer.write(Bytes::from_static(b"partial")).await.expect("write");
    drop(writer);
    assert!(
        matches!(store.head(&abandoned).await, Err(StorageError::NotFound { .. })),
        "dropped writer leaves nothing"
    );
    store.delete(&k).await.expect("delete");
}

/// Keys that would escape the root are rejected before any I/O.
pub async fn invalid_keys(store: &dyn Storage) {
    for bad in ["../x", "a/../../x", "/etc/passwd", "a/./b"] {
        assert!(matches!(store.get(bad).await, Err(StorageError::InvalidKey { .. })), "{bad:?} must be rejected");
        assert!(
            matches!(store.put(bad, Bytes::new(), PutMode::Overwrite).await, Err(StorageError::InvalidKey { .. })),
            "{bad:?} must be rejected for writes"
        );
    }
}

/// Keys with characters object stores treat specially (spaces, `%`,
/// brackets, `#`, non-ASCII) come back from listings exactly as written.
pub async fn unusual_keys(store: &dyn Storage, prefix: &str) {
    let dir = key(prefix, "odd names");
    let names = ["a b[1]{x}.json", "100%#&=+;,.txt", "ключ/ü~!'()*@$.zarr"];
    for name in names {
        store.put(&key(&dir, name), Bytes::from(name.as_bytes().to_vec()), PutMode::Overwrite).await.expect(name);
    }
    let listed: Vec<String> = store.list(&dir).await.expect("list").into_iter().map(|o| o.key).collect();
    let mut expected: Vec<String> = names.iter().map(|n| key(&dir, n)).collect();
    expected.sort();
    assert_eq!(listed, expected, "listed keys are the keys written");
    for k in &expected {
        assert_eq!(store.get(k).await.expect("get"), &k.as_bytes()[dir.len() + 1..], "{k}");
    }
    store.delete_prefix(&dir).await.expect("delete_prefix");
}

fn floats(values: &[f32]) -> PyTree {
    let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    PyTree::Array(Array::new(DType::Float32, vec![values.len() as u64], bytes).expect("valid array"))
}

fn sample_tree(seed: f32) -> PyTree {
    PyTree::Dict(vec![
        ("w".into(), floats(&[seed, seed + 0.5, -seed])),
        ("b".into(), floats(&[seed * 2.0; 7])),
        ("step".into(), PyTree::Scalar(Scalar::from(seed as i64))),
    ])
}

/// A checkpoint of two PyTree items and a JSON item saves and loads back equal.
pub async fn multi_item_checkpoint(store: &Arc<dyn Storage>, prefix: &str) {
    let path = key(prefix, "multi/10");
    let items = vec![
        ("params".to_string(), Checkpointable::PyTree(sample_tree(1.0))),
        ("opt".to_string(), Checkpointable::PyTree(sample_tree(3.0))),
        ("config".to_string(), Checkpointable::Json(json!({"lr": 0.5, "name": "run"}))),
    ];
    crate::save_checkpointables(store, &path, &items, &SaveOptions::default()).await.expect("save");
    let mut back = crate::load_checkpointables(store, &path, &LoadOptions::default()).await.expect("load");
    back.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<(Option<String>, Checkpointable)> =
        items.into_iter().map(|(name, item)| (Some(name), item)).collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(back == expected, "the multi-item checkpoint loads back equal");
    store.delete_prefix(&key(prefix, "multi")).await.expect("delete_prefix");
}

/// The commit protocol of stores without atomic rename: `commit_success.txt`
/// is written last, a step without it is unfinished and ignored, a second
/// save of the same path fails, of two racing savers exactly one commits,
/// and pruning old steps leaves unfinished ones alone.
pub async fn commit_protocol(store: &Arc<dyn Storage>, prefix: &str, enforces_conditional_create: bool) {
    let root = key(prefix, "steps");
    let step = |n: u32| key(&root, &n.to_string());
    let options = SaveOptions::default();
    crate::save_pytree(store, &step(1), &sample_tree(1.0), &options).await.expect("save step 1");
    let again = crate::save_pytree(store, &step(1), &sample_tree(2.0), &options).await;
    assert_eq!(again.map_err(|e| e.kind()), Err(ErrorKind::AlreadyExists), "a second save of a path fails");
    if store.capabilities().atomic_rename {
        store.delete_prefix(&root).await.expect("delete_prefix");
        return;
    }
    store.head(&key(&step(1), "commit_success.txt")).await.expect("commit_success.txt is written");
    // A save in progress: everything but commit_success.txt.
    crate::save_pytree(store, &step(2), &sample_tree(2.0), &options).await.expect("save step 2");
    store.delete(&key(&step(2), "commit_success.txt")).await.expect("delete");
    let open = Checkpoint::open(store, &step(2), &LoadOptions::default()).await;
    assert_eq!(open.err().map(|e| e.kind()), Some(ErrorKind::Uncommitted), "an unfinished step is refused");
    let steps = crate::list_checkpoints(store, &root).await.expect("list_checkpoints");
    assert_eq!(steps.iter().map(|s| s.dir.dir.as_str()).collect::<Vec<_>>(), ["1"], "unfinished steps are not listed");

    if enforces_conditional_create && store.capabilities().conditional_create {
        let (a, b, path) = (sample_tree(5.0), sample_tree(6.0), step(3));
        let (ra, rb) = futures::join!(
            crate::save_pytree(store, &path, &a, &options),
            crate::save_pytree(store, &path, &b, &options)
        );
        let winner = match (&ra, &rb) {
            (Ok(()), Err(e)) | (Err(e), Ok(())) if e.kind() == ErrorKind::AlreadyExists => {
                if ra.is_ok() {
                    &a
                } else {
                    &b
                }
            }
            _ => panic!("of two racing saves exactly one must commit: {ra:?} / {rb:?}"),
        };
        let loaded = crate::load_pytree(store, &path, &LoadOptions::default()).await.expect("load the winner");
        assert!(&loaded == winner, "the committed step holds the winner's tree");
        store.delete_prefix(&path).await.expect("delete_prefix");
    }

    // Deleting old steps never touches the save in progress (step 2).
    crate::save_pytree(store, &step(4), &sample_tree(4.0), &options).await.expect("save step 4");
    let committed = crate::training::list_root(store, &root, None).await.expect("list the root");
    let policy = crate::training::preservation::LatestN(1);
    let kept = crate::training::collect_garbage(store, &root, committed, &policy).await.expect("collect garbage");
    assert_eq!(kept.iter().map(|c| c.step).collect::<Vec<_>>(), [4], "only the newest committed step is kept");
    assert!(store.list(&step(1)).await.expect("list").is_empty(), "step 1 is gone");
    let in_progress = store.list(&step(2)).await.expect("list");
    assert!(!in_progress.is_empty(), "the unfinished step 2 is untouched");
    crate::load_pytree(store, &step(4), &LoadOptions::default()).await.expect("step 4 survives");
    store.delete_prefix(&root).await.expect("delete_prefix");
}

/// Uploads a checkpoint directory written by real Orbax, object by object,
/// and reads it back through the store exactly as from the local copy.
pub async fn orbax_fixture(store: &Arc<dyn Storage>, prefix: &str, fixture: &Path) {
    let parent = fixture.parent().expect("the fixture is a directory with a parent");
    let name = fixture.file_name().and_then(|n| n.to_str()).expect("a UTF-8 fixture name");
    let local: Arc<dyn Storage> = Arc::new(super::LocalFileSystem::new(parent));
    let uploaded = key(prefix, "orbax-written");
    let mut objects = local.list(name).await.expect("list the fixture");
    // commit_success.txt last, as Orbax itself writes it on object stores.
    objects.sort_by_key(|o| o.key.ends_with("commit_success.txt"));
    for object in &objects {
        let data = local.get(&object.key).await.expect("read the fixture");
        let relative = &object.key[name.len() + 1..];
        store.put(&key(&uploaded, relative), data, PutMode::Overwrite).await.expect("upload");
    }
    let options = LoadOptions::default();
    let expected = crate::load_checkpointables(&local, name, &options).await.expect("load the local fixture");
    let got = crate::load_checkpointables(store, &uploaded, &options).await.expect("load the uploaded fixture");
    assert!(got == expected, "the uploaded Orbax checkpoint {} reads exactly", fixture.display());
    store.delete_prefix(&uploaded).await.expect("delete_prefix");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{InMemory, LocalFileSystem};

    fn with_fixture() -> BatteryOptions {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/fixtures/v0_12_8_v1_multi_item");
        BatteryOptions { orbax_fixture: Some(fixture), ..BatteryOptions::default() }
    }

    #[tokio::test]
    async fn in_memory_passes_the_battery() {
        let store: Arc<dyn Storage> = Arc::new(InMemory::new());
        run_with(&store, "battery", &with_fixture()).await;
    }

    #[tokio::test]
    async fn local_filesystem_passes_the_battery() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
        run_with(&store, "battery", &with_fixture()).await;
    }
}
