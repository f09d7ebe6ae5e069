//! Reads the OCDBT databases of the conformance corpus (written by real
//! TensorStore / Orbax, see `conformance/README.md`):
//!
//! * every `fixtures.json` entry of kind `ocdbt` is compared with its
//!   `expected/<name>/kv.json` (latest generation and, where listed, every
//!   older generation, key by key with size and SHA-256);
//! * every `manifest.ocdbt` anywhere below `conformance/fixtures/` (Orbax
//!   items, per-process databases, raw databases) opens, and every value of
//!   its latest generation can be read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orbax::ocdbt::Database;
use orbax::storage::{LocalFileSystem, Storage};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn store() -> Arc<dyn Storage> {
    Arc::new(LocalFileSystem::new(conformance_dir().join("fixtures")))
}

/// Checks that `db` holds exactly the keys of `expected` (`{key: {size, sha256}}`).
async fn check_keys(db: &Database, expected: &serde_json::Map<String, Value>, what: &str) {
    let keys: Vec<String> = db.keys().map(|k| String::from_utf8(k.to_vec()).unwrap()).collect();
    let expected_keys: Vec<&String> = expected.keys().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    assert_eq!(keys.iter().collect::<Vec<_>>(), expected_keys, "{what}: keys");
    let values = db.get_many(&keys).await.unwrap();
    for (key, value) in keys.iter().zip(values) {
        let value = value.unwrap();
        assert_eq!(value.len() as u64, expected[key]["size"].as_u64().unwrap(), "{what}: size of {key}");
        assert_eq!(sha256_hex(&value), expected[key]["sha256"].as_str().unwrap(), "{what}: sha256 of {key}");
    }
}

#[tokio::test]
async fn raw_ocdbt_fixtures_match_kv_json() {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(conformance_dir().join("fixtures.json")).unwrap()).unwrap();
    let store = store();
    let mut checked = 0;
    for entry in index.as_array().unwrap().iter().filter(|e| e["kind"] == "ocdbt") {
        let name = entry["name"].as_str().unwrap();
        let path = entry["path"].as_str().unwrap();
        let kv_path = conformance_dir().join("expected").join(name).join("kv.json");
        let kv: Value = serde_json::from_str(&std::fs::read_to_string(kv_path).unwrap()).unwrap();

        let db = Database::open(store.clone(), path).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(db.generation().generation, kv["generation"].as_u64().unwrap(), "{name}");
        check_keys(&db, kv["keys"].as_object().unwrap(), name).await;

        if let Some(versions) = kv.get("versions").and_then(Value::as_object) {
            let listed: Vec<u64> = db.versions().await.unwrap().iter().map(|v| v.generation).collect();
            let expected: BTreeMap<u64, &Value> = versions.iter().map(|(g, keys)| (g.parse().unwrap(), keys)).collect();
            assert_eq!(listed, expected.keys().copied().collect::<Vec<_>>(), "{name}: generations");
            for (generation, keys) in expected {
                let old = Database::open_at(store.clone(), path, generation).await.unwrap();
                assert_eq!(old.generation().generation, generation);
                check_keys(&old, keys.as_object().unwrap(), &format!("{name} generation {generation}")).await;
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "fixtures.json has no entry of kind ocdbt");
}

/// Every directory below `dir` that holds a `manifest.ocdbt`, relative to `root`.
fn databases(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            databases(root, &path, out);
        } else if path.file_name().unwrap() == "manifest.ocdbt" {
            let rel = dir.strip_prefix(root).unwrap().to_str().unwrap().replace('\\', "/");
            out.push(rel);
        }
    }
}

#[tokio::test]
async fn every_database_in_the_corpus_reads_completely() {
    let root = conformance_dir().join("fixtures");
    let mut found = Vec::new();
    databases(&root, &root, &mut found);
    assert!(!found.is_empty(), "no manifest.ocdbt below {}", root.display());
    let store = store();
    for prefix in found {
        let db = Database::open(store.clone(), &prefix).await.unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert_eq!(db.generation().statistics.num_keys, db.len() as u64, "{prefix}");
        let keys: Vec<&[u8]> = db.keys().collect();
        let values = db.get_many(&keys).await.unwrap();
        for ((key, value), (_, location)) in keys.iter().zip(values).zip(db.entries()) {
            assert_eq!(value.map(|v| v.len() as u64), Some(location.len()), "{prefix}: {key:?}");
        }
        let problems = db.verify_values().await;
        assert!(problems.is_empty(), "{prefix}: {problems:?}");
    }
}
