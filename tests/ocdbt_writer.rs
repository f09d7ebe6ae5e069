//! Writes OCDBT databases with `DatabaseWriter` and reads them back with our
//! own reader (always) and with TensorStore (when `ORBAX_TS_PYTHON` names a
//! Python that has `tensorstore`): every key and value must come back.
//!
//! The databases are written to `target/ocdbt-writer-out/<case>/`, each with
//! `<case>.expected.json` next to it (keys in hex, value lengths and
//! SHA-256), so they can also be inspected by hand, e.g. with
//! `ocdbt_decode.py list`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use orbax::ocdbt::{Compression, Database, DatabaseWriter, ManifestKind, WriteSummary, WriterOptions};
use orbax::storage::{InMemory, LocalFileSystem, PutMode, Storage};
use orbax::ErrorKind;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::orbax_python;

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes.
fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn options(f: impl FnOnce(&mut WriterOptions)) -> WriterOptions {
    let mut options = WriterOptions::default();
    f(&mut options);
    options
}

/// One database to write.
struct Case {
    name: &'static str,
    options: WriterOptions,
    entries: Entries,
    /// The smallest root height the case must produce.
    min_height: u8,
    /// The fewest data files the case must produce.
    min_files: usize,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let case = |name, options, entries: Vec<(Vec<u8>, Vec<u8>)>, min_height, min_files| Case {
        name,
        options,
        entries: entries.into_iter().collect(),
        min_height,
        min_files,
    };
    cases.push(case("empty", WriterOptions::default(), vec![], 0, 0));
    cases.push(case("single_inline", WriterOptions::default(), vec![(b"a".to_vec(), b"hello".to_vec())], 0, 1));
    let mixed = vec![
        (b"params.w/zarr.json".to_vec(), br#"{"zarr_format":3}"#.to_vec()),
        (b"params.w/c/0/0".to_vec(), bytes_of(1, 5000)),
        (b"params.w/c/0/1".to_vec(), bytes_of(2, 1024)),
        (b"params.w/c/1/0".to_vec(), bytes_of(3, 1025)),
        (b"params.b/zarr.json".to_vec(), b"{}".to_vec()),
        (b"params.b/c/0".to_vec(), bytes_of(4, 200_000)),
        (b"empty".to_vec(), Vec::new()),
    ];
    cases.push(case("mixed_zstd", WriterOptions::default(), mixed.clone(), 0, 1));
    cases.push(case("mixed_raw", options(|o| o.compression = Compression::None), mixed, 0, 1));
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..10_000u64)
        .map(|i| {
            let key = format!("layer_{:02}/param_{}/c/{}/{}", i % 37, i % 5, i / 100, i % 100).into_bytes();
            let value = bytes_of(i, if i % 10 == 0 { 1500 + (i as usize % 300) } else { (i as usize * 7) % 200 });
            (key, value)
        })
        .collect();
    cases.push(case("many_keys_deep", options(|o| o.max_decoded_node_bytes = 2000), many.clone(), 2, 1));
    cases.push(case(
        "many_keys_deep_raw",
        options(|o| {
            o.max_decoded_node_bytes = 600;
            o.compression = Compression::None;
        }),
        many.clone(),
        3,
        1,
    ));
    cases.push(case("many_keys_default", WriterOptions::default(), many, 0, 1));
    let split: Vec<(Vec<u8>, Vec<u8>)> =
        (0..40u64).map(|i| (format!("array/c/{i}").into_bytes(), bytes_of(100 + i, 3000 + 100 * i as usize))).collect();
    cases.push(case(
        "several_data_files",
        options(|o| {
            o.target_data_file_size = Some(20_000);
            o.max_decoded_node_bytes = 300;
        }),
        split,
        1,
        5,
    ));
    let shared: Vec<(Vec<u8>, Vec<u8>)> = ["", "a", "aa", "aaa", "aaaa", "aaab", "aab", "ab", "b", "ba"]
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_bytes().to_vec(), bytes_of(i as u64, 10 + i * 400)))
        .collect();
    cases.push(case(
        "shared_prefixes",
        options(|o| {
            o.max_inline_value_bytes = 1000;
            o.max_decoded_node_bytes = 1;
        }),
        shared,
        2,
        1,
    ));
    let unusual = vec![
        ("ключ/значение".as_bytes().to_vec(), "значение".as_bytes().to_vec()),
        ("日本語/キー".as_bytes().to_vec(), bytes_of(7, 3000)),
        (vec![0x00], b"nul".to_vec()),
        (vec![0xff, 0xfe, 0x00, 0x80], bytes_of(8, 2000)),
        (vec![0xff, 0xff], Vec::new()),
        (b"emoji/\xf0\x9f\x98\x80".to_vec(), b"smile".to_vec()),
        (vec![b'k'; 65535], b"longest key".to_vec()),
    ];
    cases.push(case("utf8_and_binary_keys", WriterOptions::default(), unusual, 0, 1));
    cases.push(case(
        "all_out_of_line",
        options(|o| o.max_inline_value_bytes = 0),
        (0..50u64).map(|i| (format!("k{i:03}").into_bytes(), bytes_of(i, i as usize))).collect(),
        0,
        1,
    ));
    cases
}

/// Writes `entries` (in a scrambled order) with `options`.
async fn write(store: Arc<dyn Storage>, prefix: &str, options: WriterOptions, entries: &Entries) -> WriteSummary {
    let mut writer = DatabaseWriter::create(store, prefix, options).await.unwrap();
    let mut order: Vec<(&Vec<u8>, &Vec<u8>)> = entries.iter().collect();
    let n = order.len();
    for i in 0..n {
        order.swap(i, (i * 7919 + 13) % n);
    }
    for (key, value) in order {
        writer.put(key, Bytes::from(value.clone())).await.unwrap();
    }
    writer.finish().await.unwrap()
}

/// Reads the database back with our reader and compares everything.
async fn check_round_trip(store: Arc<dyn Storage>, prefix: &str, case: &Case, summary: &WriteSummary) {
    let db = Database::open(store.clone(), prefix).await.unwrap();
    let name = case.name;
    assert_eq!(db.len(), case.entries.len(), "{name}");
    let keys: Vec<&[u8]> = db.keys().collect();
    let expected_keys: Vec<&[u8]> = case.entries.keys().map(Vec::as_slice).collect();
    assert_eq!(keys, expected_keys, "{name}");
    let values = db.get_many(&expected_keys).await.unwrap();
    for ((key, expected), value) in case.entries.iter().zip(values) {
        assert_eq!(value.as_deref(), Some(expected.as_slice()), "{name}: key {}", String::from_utf8_lossy(key));
    }
    let config = db.config();
    assert_eq!(config.manifest_kind, ManifestKind::Single);
    assert_eq!(config.max_inline_value_bytes, case.options.max_inline_value_bytes);
    assert_eq!(config.max_decoded_node_bytes, case.options.max_decoded_node_bytes);
    assert_eq!(config.version_tree_arity_log2, case.options.version_tree_arity_log2);
    assert_eq!(config.compression, case.options.compression);
    let version = db.generation();
    assert_eq!(version.generation, 1);
    assert!(version.commit_time_ns > 1_700_000_000_000_000_000, "{name}: commit time");
    assert_eq!(version.root_height, summary.root_height);
    assert!(version.root_height >= case.min_height, "{name}: height {}", version.root_height);
    assert_eq!(version.is_empty(), case.entries.is_empty());
    let stats = version.statistics;
    assert_eq!(stats, summary.statistics);
    assert_eq!(stats.num_keys, case.entries.len() as u64, "{name}");
    let inline_limit = case.options.max_inline_value_bytes as usize;
    let indirect: usize = case.entries.values().map(Vec::len).filter(|len| *len > inline_limit).sum();
    assert_eq!(stats.num_indirect_value_bytes, indirect as u64, "{name}");
    assert_eq!(summary.num_keys, case.entries.len() as u64);
    assert!(summary.data_files.len() >= case.min_files, "{name}: {} data files", summary.data_files.len());
    assert!(db.verify_values().await.is_empty(), "{name}");
    // Every byte written is in a data file or the manifest.
    let mut total = store.head(&summary.manifest).await.unwrap().size;
    for file in &summary.data_files {
        let key = file.strip_prefix(&format!("{prefix}/")).unwrap();
        assert!(key.starts_with("d/") && key.len() == 34 && key[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        let size = store.head(file).await.unwrap().size;
        if let Some(target) = case.options.target_data_file_size {
            let largest = case.entries.values().map(Vec::len).max().unwrap_or(0) as u64;
            // Values respect the target; the B+tree nodes go to the last file.
            if file != summary.data_files.last().unwrap() {
                assert!(size <= target.max(largest), "{name}: {file} has {size} bytes");
            }
        }
        total += size;
    }
    assert_eq!(total, summary.bytes_written, "{name}");
    assert_eq!(store.list(prefix).await.unwrap().len(), summary.data_files.len() + 1, "{name}");
}

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ocdbt-writer-out")
}

fn expected_json(case: &Case) -> Value {
    let entries: Vec<Value> = case
        .entries
        .iter()
        .map(|(k, v)| {
            let sha: String = hex(&Sha256::digest(v));
            json!([hex(k), v.len(), sha])
        })
        .collect();
    json!({"name": case.name, "entries": entries, "root_height": case.min_height})
}

/// Reads every database of `cases.json` with TensorStore: `list()` and every
/// `read()` through the `ocdbt` driver, and `tensorstore.ocdbt.dump` of the
/// manifest and of every B+tree node, checking heights, keys, values and
/// the statistics recorded for each subtree.
const TENSORSTORE_CHECK: &str = r#"
import hashlib, json, sys
import tensorstore as ts

root = sys.argv[1]
cases = json.load(open(root + "/cases.json"))
failures, checked_nodes = [], 0

def fail(case, what):
    failures.append(case + ": " + what)

for case in cases:
    name = case["name"]
    expected = {bytes.fromhex(k): (n, h) for k, n, h in case["entries"]}
    base = "file://" + root + "/" + name + "/"
    kv = ts.KvStore.open({"driver": "ocdbt", "base": base}).result()
    keys = sorted(bytes(k) for k in kv.list().result())
    if keys != sorted(expected):
        fail(name, "list() returned %d keys, expected %d" % (len(keys), len(expected)))
    for key, (n, h) in expected.items():
        r = kv.read(key).result()
        v = bytes(r.value)
        if r.state != "value" or len(v) != n or hashlib.sha256(v).hexdigest() != h:
            fail(name, "read(%r) returned state %s and %d bytes" % (key[:40], r.state, len(v)))
    manifest = ts.ocdbt.dump(kv.base).result()
    versions = manifest["versions"]
    if len(versions) != 1 or versions[0]["generation_number"] != 1 or manifest["version_tree_nodes"]:
        fail(name, "unexpected versions %r" % versions)
        continue
    version = versions[0]
    if not expected:
        if "location" in version["root"] or version["root"]["statistics"]["num_keys"] != 0:
            fail(name, "empty database has a root %r" % version["root"])
        continue
    found = {}

    def walk(location, height, prefix, lower_bound):
        global checked_nodes
        node = ts.ocdbt.dump(kv.base, location).result()
        checked_nodes += 1
        if node["height"] != height:
            fail(name, "%s has height %d, expected %d" % (location, node["height"], height))
        stats = {"num_keys": 0, "num_tree_bytes": int(location.split(":")[-1]), "num_indirect_value_bytes": 0}
        entries = node["entries"]
        first = prefix + bytes(entries[0]["key"])
        if first < lower_bound:
            fail(name, "%s starts below its parent's key" % location)
        for e in entries:
            key = prefix + bytes(e["key"])
            if height == 0:
                stats["num_keys"] += 1
                if "inline_value" in e:
                    value = bytes(e["inline_value"])
                else:
                    value = bytes(ts.ocdbt.dump(kv.base, e["indirect_value"]).result())
                    stats["num_indirect_value_bytes"] += len(value)
                found[key] = (len(value), hashlib.sha256(value).hexdigest())
            else:
                child = walk(e["location"], height - 1, prefix + bytes(e["subtree_common_prefix"]), key)
                if child != e["statistics"]:
                    fail(name, "statistics of %s: recorded %r, actual %r" % (e["location"], e["statistics"], child))
                for k in stats:
                    stats[k] += child[k]
        return stats

    stats = walk(version["root"]["location"], version["root_height"], b"", b"")
    if stats != version["root"]["statistics"]:
        fail(name, "root statistics: recorded %r, actual %r" % (version["root"]["statistics"], stats))
    if found != expected:
        fail(name, "dump() found %d keys, expected %d" % (len(found), len(expected)))
    if version["root_height"] < case["root_height"]:
        fail(name, "root height %d" % version["root_height"])

print(json.dumps({"cases": len(cases), "nodes": checked_nodes, "failures": failures}))
sys.exit(1 if failures else 0)
"#;

#[tokio::test]
async fn databases_round_trip_through_our_reader_and_tensorstore() {
    let root = out_dir();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(&root));
    let cases = cases();
    let mut manifest = Vec::new();
    for case in &cases {
        let summary = write(store.clone(), case.name, case.options, &case.entries).await;
        check_round_trip(store.clone(), case.name, case, &summary).await;
        // The same bytes through the in-memory store (buffered, not streamed writes).
        let memory: Arc<dyn Storage> = Arc::new(InMemory::new());
        let summary = write(memory.clone(), "db", case.options, &case.entries).await;
        check_round_trip(memory, "db", case, &summary).await;
        manifest.push(expected_json(case));
    }
    std::fs::write(root.join("cases.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    eprintln!("ocdbt_writer: our reader read back {} databases (local and in-memory)", cases.len());

    if let Some(python) = orbax_python("ocdbt_writer: the TensorStore check") {
        let output = std::process::Command::new(&python)
            .args(["-c", TENSORSTORE_CHECK])
            .arg(&root)
            .output()
            .expect("run ORBAX_TS_PYTHON");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "TensorStore check failed:\n{stdout}\n{stderr}");
        eprintln!("ocdbt_writer: TensorStore read every database: {}", stdout.trim());
    }
}

#[tokio::test]
async fn duplicate_keys_are_rejected_by_name() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let mut writer = DatabaseWriter::create(store.clone(), "db", WriterOptions::default()).await.unwrap();
    writer.put(b"a", Bytes::from_static(b"1")).await.unwrap();
    writer.put(b"dup/key", Bytes::from(vec![1u8; 5000])).await.unwrap();
    writer.put(b"dup/key", Bytes::from_static(b"2")).await.unwrap();
    let err = writer.finish().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains(r#"duplicate key "dup/key""#), "{err}");
    // No manifest: the database does not exist.
    assert!(store.head("db/manifest.ocdbt").await.is_err());

    let mut writer = DatabaseWriter::create(store, "db2", WriterOptions::default()).await.unwrap();
    writer.put(&[0xff, 0x00], Bytes::new()).await.unwrap();
    writer.put(&[0xff, 0x00], Bytes::new()).await.unwrap();
    let err = writer.finish().await.unwrap_err();
    assert!(err.to_string().contains(r#"duplicate key b"\xff\x00""#), "{err}");
}

#[tokio::test]
async fn invalid_keys_options_and_existing_databases_are_rejected() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let mut writer = DatabaseWriter::create(store.clone(), "db", WriterOptions::default()).await.unwrap();
    let err = writer.put(&vec![b'k'; 65536], Bytes::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("65536 bytes long"), "{err}");
    // The writer is still usable after a rejected key.
    writer.put(b"k", Bytes::new()).await.unwrap();
    writer.finish().await.unwrap();

    // A database that exists is not overwritten.
    let err = DatabaseWriter::create(store.clone(), "db", WriterOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    store.put("other/manifest.ocdbt", Bytes::from_static(b"x"), PutMode::Overwrite).await.unwrap();
    let err = DatabaseWriter::create(store.clone(), "other/", WriterOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    for bad in [
        options(|o| o.max_inline_value_bytes = (1 << 20) + 1),
        options(|o| o.version_tree_arity_log2 = 0),
        options(|o| o.version_tree_arity_log2 = 17),
        options(|o| o.compression = Compression::Zstd { level: 23 }),
    ] {
        let err = DatabaseWriter::create(store.clone(), "new", bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
}

#[tokio::test]
async fn each_writer_gets_a_fresh_uuid_and_data_file_names() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let mut uuids = Vec::new();
    let mut files = Vec::new();
    for i in 0..4 {
        let mut writer =
            DatabaseWriter::create(store.clone(), &format!("db{i}"), WriterOptions::default()).await.unwrap();
        uuids.push(writer.config().uuid);
        writer.put(b"big", Bytes::from(vec![0u8; 2000])).await.unwrap();
        let summary = writer.finish().await.unwrap();
        files.extend(summary.data_files.iter().map(|f| f[4..].to_string()));
        assert_eq!(Database::open(store.clone(), &format!("db{i}")).await.unwrap().config().uuid, uuids[i]);
    }
    uuids.sort();
    uuids.dedup();
    files.sort();
    files.dedup();
    assert_eq!((uuids.len(), files.len()), (4, 4));
}
