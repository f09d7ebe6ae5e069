//! Reads the OCDBT databases in `tests/data/ocdbt/` (written by the
//! independent Python encoder, see `make_test_dbs.py` there) and compares
//! every key, length, value location and SHA-256 with the listing the Python
//! decoder produced; then damages copies of them in memory and checks each
//! damage is reported with the right kind and file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use orbax::kvstore::KvSource;
use orbax::ocdbt::{Database, ManifestKind, ValueRef};
use orbax::storage::{InMemory, LocalFileSystem, PutMode, Storage};
use orbax::ErrorKind;
use serde_json::Value;
use sha2::{Digest, Sha256};

const DATABASES: [&str; 6] = ["demo_raw", "demo_zstd", "demo_numbered", "fanout4", "fanout4_raw", "merged"];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ocdbt")
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(data_dir().join(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of test database `name`, below `prefix` in a fresh in-memory store.
async fn in_memory(name: &str, prefix: &str) -> Arc<InMemory> {
    let store = Arc::new(InMemory::new());
    let root = data_dir().join(name);
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().unwrap() != "expected.json" {
                let rel = path.strip_prefix(&root).unwrap().to_str().unwrap().replace('\\', "/");
                let data = Bytes::from(std::fs::read(&path).unwrap());
                store.put(&format!("{prefix}/{rel}"), data, PutMode::Overwrite).await.unwrap();
            }
        }
    }
    store
}

async fn modify(store: &InMemory, key: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut data = store.get(key).await.unwrap().to_vec();
    edit(&mut data);
    store.put(key, Bytes::from(data), PutMode::Overwrite).await.unwrap();
}

#[tokio::test]
async fn every_key_matches_the_python_listing() {
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(data_dir()));
    for name in DATABASES {
        let expected = expected(name);
        let db = Database::open(store.clone(), name).await.unwrap();
        let version = db.generation();
        assert_eq!(version.generation, expected["generation"].as_u64().unwrap(), "{name}");
        assert_eq!(version.commit_time_ns, expected["commit_time"].as_u64().unwrap(), "{name}");
        assert_eq!(u64::from(version.root_height), expected["root_height"].as_u64().unwrap(), "{name}");
        assert_eq!(version.statistics.num_keys, db.len() as u64, "{name}");

        let rows = expected["keys"].as_array().unwrap();
        let keys: Vec<String> = rows.iter().map(|r| r["key"].as_str().unwrap().to_string()).collect();
        assert_eq!(db.keys().map(|k| std::str::from_utf8(k).unwrap()).collect::<Vec<_>>(), keys, "{name}");

        let values = db.get_many(&keys).await.unwrap();
        for ((row, key), value) in rows.iter().zip(&keys).zip(values) {
            let value = value.unwrap();
            assert_eq!(value.len() as u64, row["length"].as_u64().unwrap(), "{name} {key}");
            assert_eq!(sha256_hex(&value), row["sha256"].as_str().unwrap(), "{name} {key}");
            assert_eq!(db.get(key.as_bytes()).await.unwrap().unwrap(), value, "{name} {key}");
            let location = row["location"].as_str().unwrap();
            match db.value_ref(key.as_bytes()).unwrap() {
                ValueRef::Inline(bytes) => assert_eq!((location, bytes), ("inline", &value)),
                ValueRef::OutOfLine { file, offset, length } => {
                    // "value:<base path>:<relative path>:<offset>:<length>"
                    let parts: Vec<&str> = location.split(':').collect();
                    assert_eq!(&**file, format!("{name}/{}{}", parts[1], parts[2]), "{name} {key}");
                    assert_eq!((offset.to_string(), length.to_string()), (parts[3].into(), parts[4].into()));
                }
            }
        }
        assert!(db.verify_values().await.is_empty(), "{name}");
        assert_eq!(db.versions().await.unwrap(), vec![db.generation().clone()], "{name}");
    }
}

#[tokio::test]
async fn numbered_manifests_are_followed() {
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(data_dir()));
    let db = Database::open(store, "demo_numbered").await.unwrap();
    assert_eq!(db.manifest_file(), "demo_numbered/manifest.0000000000000001");
    assert_eq!(db.config().manifest_kind, ManifestKind::Single);

    // A newer numbered manifest that is damaged is not silently skipped.
    let store = in_memory("demo_numbered", "db").await;
    let m1 = store.get("db/manifest.0000000000000001").await.unwrap();
    store.put("db/manifest.0000000000000002", m1, PutMode::Overwrite).await.unwrap();
    let err = Database::open(store.clone(), "db").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("db/manifest.0000000000000002"), "{err}");

    // Without any numbered manifest the database has no generation.
    for key in ["db/manifest.0000000000000001", "db/manifest.0000000000000002"] {
        store.delete(key).await.unwrap();
    }
    assert_eq!(Database::open(store, "db").await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn kv_source_view() {
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(data_dir()));
    let db: Arc<dyn KvSource> = Arc::new(Database::open(store, "fanout4").await.unwrap());
    assert_eq!(db.list("deep/prefix/").await.unwrap().len(), 6);
    assert_eq!(db.list("arr3/").await.unwrap(), ["arr3/c/0", "arr3/zarr.json"]);
    let whole = db.get("arr6/c/0").await.unwrap().unwrap();
    assert_eq!(whole.len(), 2700);
    assert_eq!(db.get_range("arr6/c/0", 1000..1010).await.unwrap().unwrap(), whole.slice(1000..1010));
    assert_eq!(db.get("missing").await.unwrap(), None);
    assert_eq!(db.get("empty").await.unwrap().unwrap(), Bytes::new());
    assert_eq!(db.describe("arr6/c/0"), "fanout4 (OCDBT) key arr6/c/0");
}

fn data_file(name: &str) -> String {
    let dir = data_dir().join(name).join("d");
    let file = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap();
    format!("state/d/{}", file.file_name().to_str().unwrap())
}

#[tokio::test]
async fn damaged_databases_are_rejected_with_the_file_named() {
    // A flipped byte in the root node (the last object of the data file).
    let store = in_memory("fanout4", "state").await;
    let file = data_file("fanout4");
    modify(&store, &file, |d| {
        let at = d.len() - 10;
        d[at] ^= 0x20;
    })
    .await;
    let err = Database::open(store, "state").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checksum, "{err}");
    assert!(err.to_string().starts_with(&format!("{file}: B+tree node at offset ")), "{err}");

    // A truncated data file.
    let store = in_memory("fanout4_raw", "state").await;
    let file = data_file("fanout4_raw");
    modify(&store, &file, |d| d.truncate(d.len() - 1)).await;
    let err = Database::open(store, "state").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Truncated, "{err}");
    assert!(err.to_string().contains(&file), "{err}");

    // A missing data file.
    let store = in_memory("demo_zstd", "state").await;
    store.delete("state/d/00000000000000000000000000000001").await.unwrap();
    let err = Database::open(store, "state").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("state/d/00000000000000000000000000000001"), "{err}");

    // A manifest that is cut short, and one with a flipped byte.
    let store = in_memory("demo_raw", "state").await;
    modify(&store, "state/manifest.ocdbt", |d| d.truncate(50)).await;
    let err = Database::open(store.clone(), "state").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Truncated, "{err}");
    assert!(err.to_string().starts_with("state/manifest.ocdbt: manifest"), "{err}");
    let store = in_memory("demo_raw", "state").await;
    modify(&store, "state/manifest.ocdbt", |d| d[40] ^= 1).await;
    assert_eq!(Database::open(store, "state").await.unwrap_err().kind(), ErrorKind::Checksum);

    // No database at all.
    let store = Arc::new(InMemory::new());
    assert_eq!(Database::open(store, "state").await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn truncated_values_are_found_by_verify_and_get() {
    // The out-of-line value of a/c/0 is referenced with base path
    // ocdbt.process_1/; cut that file short.
    let store = in_memory("merged", "state").await;
    let file = "state/ocdbt.process_1/d/33333333333333333333333333333333";
    modify(&store, file, |d| d.truncate(100)).await;
    let db = Database::open(store.clone(), "state").await.unwrap();
    let problems = db.verify_values().await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].kind(), ErrorKind::Truncated);
    let message = problems[0].to_string();
    assert!(message.contains(file) && message.contains("a/c/0"), "{message}");
    // Checking extents only (no reads) finds the same problem.
    let extents = db.verify_value_extents().await;
    assert_eq!(extents.iter().map(|p| p.to_string()).collect::<Vec<_>>(), [message]);
    assert_eq!(db.get(b"a/c/0").await.unwrap_err().kind(), ErrorKind::Truncated);
    // Other values are still readable.
    assert_eq!(db.get(b"b/c/0").await.unwrap().unwrap().len(), 1536);

    store.delete("state/ocdbt.process_0/d/22222222222222222222222222222222").await.unwrap();
    // The node of the second leaf lives in the deleted file: opening fails.
    let err = Database::open(store, "state").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// Encodes an envelope the way TensorStore does (raw body).
fn envelope(magic: u32, body: &[u8]) -> Bytes {
    let mut out = magic.to_be_bytes().to_vec();
    out.extend(((4 + 8 + 2 + body.len() + 4) as u64).to_le_bytes());
    out.extend([0, 0]);
    out.extend(body);
    let crc = crc32c::crc32c(&out);
    out.extend(crc.to_le_bytes());
    Bytes::from(out)
}

#[tokio::test]
async fn data_file_paths_cannot_escape_the_database() {
    for path in ["../secret", "d/../../x", "/etc/passwd", "d//x", "c:x"] {
        let mut body = vec![0u8; 16];
        body.extend([0, 100, 100, 4, 0]); // config
        body.extend([1, path.len() as u8, 0]);
        body.extend(path.as_bytes());
        body.extend([1, 1, 0, 0, 0, 20, 0, 0, 0]); // one version: root (file 0, 0, 20)
        body.extend(0u64.to_le_bytes());
        body.push(0);
        let store = Arc::new(InMemory::new());
        store.put("state/manifest.ocdbt", envelope(0x0CDB_3A2A, &body), PutMode::Overwrite).await.unwrap();
        let err = Database::open(store, "state").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafePath, "{path}: {err}");
        assert!(err.to_string().starts_with("state/manifest.ocdbt: data file path"), "{err}");
    }
}

/// A store that counts the requests it forwards.
#[derive(Debug)]
struct Counting {
    inner: InMemory,
    requests: std::sync::Mutex<Vec<String>>,
}

impl Counting {
    fn log(&self, what: String) {
        self.requests.lock().unwrap().push(what);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Storage for Counting {
    async fn get(&self, key: &str) -> orbax::storage::Result<Bytes> {
        self.log(format!("get {key}"));
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> orbax::storage::Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn get_ranges(&self, key: &str, ranges: &[std::ops::Range<u64>]) -> orbax::storage::Result<Vec<Bytes>> {
        self.log(format!("get_ranges {key} x{}", ranges.len()));
        self.inner.get_ranges(key, ranges).await
    }
    async fn head(&self, key: &str) -> orbax::storage::Result<orbax::storage::ObjectMeta> {
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> orbax::storage::Result<()> {
        self.inner.put(key, data, mode).await
    }
    async fn delete(&self, key: &str) -> orbax::storage::Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> orbax::storage::Result<Vec<orbax::storage::ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn list_with_delimiter(&self, prefix: &str) -> orbax::storage::Result<orbax::storage::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    fn capabilities(&self) -> orbax::storage::Capabilities {
        self.inner.capabilities()
    }
}

#[tokio::test]
async fn reads_are_batched_per_level_and_per_data_file() {
    let source = in_memory("fanout4", "state").await;
    let inner = InMemory::new();
    for meta in source.list("state").await.unwrap() {
        inner.put(&meta.key, source.get(&meta.key).await.unwrap(), PutMode::Overwrite).await.unwrap();
    }
    let store = Arc::new(Counting { inner, requests: Default::default() });
    let db = Database::open(store.clone(), "state").await.unwrap();
    let file = data_file("fanout4");
    // The manifest, then one request for the root level and one for the 6 leaves.
    assert_eq!(
        store.take(),
        ["get state/manifest.ocdbt".to_string(), format!("get_ranges {file} x1"), format!("get_ranges {file} x6")]
    );
    let keys: Vec<&[u8]> = db.keys().collect();
    let out_of_line = db.entries().filter(|(_, v)| matches!(v, ValueRef::OutOfLine { .. })).count();
    assert!(out_of_line > 1);
    db.get_many(&keys).await.unwrap();
    assert_eq!(store.take(), [format!("get_ranges {file} x{out_of_line}")]);
}
