//! Multi-process saves by real OS processes: four processes (this test
//! binary, re-executed in child mode) save one checkpoint together to a
//! local directory and to the local S3 server; our reader loads it whole and
//! as the shards of a different device count, and real Orbax (one process,
//! `ORBAX_TS_PYTHON`, set by `./test.sh`) loads it exactly. A process that
//! never starts makes the others fail naming it, with nothing committed.

mod mp_tree;
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mp_tree::{assert_not_committed, expected, tree_of, PROCESSES};
use orbax::location::{open_store, Backend, Location, LocationOptions};
use orbax::metadata::{PartitionSpecEntry, Sharding};
use orbax::multiprocess::{MultiProcess, StorageCoordinator};
use orbax::sharded::ShardedArray;
use orbax::storage::remote::Service;
use orbax::storage::{LocalFileSystem, Storage};
use orbax::{Array, DType, KeyPath, LeafLayout, LoadOptions, PyTree, SaveOptions, ShardedLoad, StorageOptions};
use serde_json::Value;
use support::{orbax_python, run_children};

/// Selects child mode: `<store>|<path>|<index>|<run>|<timeout ms>`, where
/// `<store>` is `dir:<directory>` or `s3-<backend>:<endpoint>`.
const CHILD_ENV: &str = "ORBAX_TEST_MP_CHILD";
const ORBAX_LOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mp_tree/orbax_load.py");

/// Runs a future to completion on a fresh runtime.
fn block<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Runtime::new().unwrap().block_on(future)
}

fn s3_store(endpoint: &str, backend: Backend) -> Arc<dyn Storage> {
    let options =
        [("endpoint", endpoint), ("access_key_id", "test"), ("secret_access_key", "test"), ("region", "us-east-1")];
    let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let location = Location { service: Service::S3, bucket: "test".into(), path: String::new() };
    open_store(&location, backend, &LocationOptions { backend: None, options }).unwrap()
}

fn open(spec: &str) -> Arc<dyn Storage> {
    match spec.split_once(':').unwrap() {
        ("dir", dir) => Arc::new(LocalFileSystem::new(dir)),
        ("s3-ObjectStore", url) => s3_store(url, Backend::ObjectStore),
        ("s3-OpenDal", url) => s3_store(url, Backend::OpenDal),
        other => panic!("unknown store {other:?}"),
    }
}

/// In a child: saves process `index`'s share and prints `RESULT: ok` or the error.
fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (store, path, index, run) = (open(parts[0]), parts[1], parts[2].parse().unwrap(), parts[3]);
    let timeout = Duration::from_millis(parts[4].parse().unwrap());
    let coordinator = StorageCoordinator::new(store.clone(), format!("coordination/{run}"), index, PROCESSES).unwrap();
    let mut multiprocess = MultiProcess::new(Arc::new(coordinator));
    multiprocess.barrier_timeout = timeout;
    let options = SaveOptions {
        // Several chunks per shard of "x".
        storage_for: Some(Arc::new(|path: &KeyPath, _: &PyTree| StorageOptions {
            chunk_byte_size: (path.param_name() == "x").then_some(1200),
            ..Default::default()
        })),
        multiprocess: Some(multiprocess),
        ..Default::default()
    };
    match block(orbax::save_pytree(&store, path, &tree_of(index, &[]), &options)) {
        Ok(()) => println!("RESULT: ok"),
        Err(e) => println!("RESULT: {e}"),
    }
}

/// Runs processes `present` of the save in child processes of `test`; returns their RESULT lines.
fn save_in_processes(test: &str, store: &str, path: &str, present: &[usize], timeout_ms: u64) -> Vec<String> {
    let run = format!("{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    let specs: Vec<String> = present.iter().map(|i| format!("{store}|{path}|{i}|{run}|{timeout_ms}")).collect();
    run_children(test, CHILD_ENV, &specs)
}

/// The merged database references chunks in every process's database, and
/// each process left its own database and array metadata.
fn check_layout(store: &Arc<dyn Storage>, path: &str) {
    let keys: Vec<String> =
        block(store.list(path)).unwrap().into_iter().map(|o| o.key[path.len() + 1..].to_string()).collect();
    for file in ["commit_success.txt", "_CHECKPOINT_METADATA", "state/manifest.ocdbt", "state/_METADATA"] {
        assert!(keys.iter().any(|k| k == file), "{file} missing: {keys:?}");
    }
    for p in 0..PROCESSES {
        assert!(keys.contains(&format!("state/ocdbt.process_{p}/manifest.ocdbt")), "{keys:?}");
        assert!(keys.contains(&format!("state/array_metadatas/process_{p}")), "{keys:?}");
    }
    let db = block(orbax::ocdbt::Database::open(store.clone(), &format!("{path}/state"))).unwrap();
    for p in 0..PROCESSES {
        let referenced = db.entries().any(|(_, value)| {
            matches!(value, orbax::ocdbt::ValueRef::OutOfLine { file, .. } if file.contains(&format!("/state/ocdbt.process_{p}/d/")))
        });
        assert!(referenced, "the merged database references no value of process {p}");
    }
}

/// Our reader as 2 processes of 4 devices each: each loads its devices' rows of "x".
fn check_resharded_reads(store: &Arc<dyn Storage>, path: &str) {
    let x = match &expected() {
        PyTree::Dict(leaves) => leaves.iter().find(|(k, _)| k == "x").map(|(_, v)| v.clone()).unwrap(),
        _ => unreachable!(),
    };
    let PyTree::Array(x) = x else { unreachable!() };
    let sharding = Sharding::Named {
        mesh_shape: vec![2, 4],
        axis_names: vec!["p".into(), "d".into()],
        axis_types: None,
        partition_spec: vec![PartitionSpecEntry::Axis("p".into()), PartitionSpecEntry::Axis("d".into())],
        device_ids: (0..8).collect(),
        memory_kind: None,
    };
    let layout =
        |keypath: &KeyPath, _: &[u64]| (keypath.param_name() == "x").then(|| LeafLayout::Sharding(sharding.clone()));
    for reader in 0..2i64 {
        let load = ShardedLoad { devices: Some((reader * 4..reader * 4 + 4).collect()), max_bytes_in_flight: None };
        let tree = block(orbax::load_pytree_sharded(store, path, &LoadOptions::default(), &layout, &load)).unwrap();
        let PyTree::Dict(leaves) = tree else { panic!("not a dict") };
        let Some((_, PyTree::Sharded(sharded))) = leaves.iter().find(|(k, _)| k == "x") else {
            panic!("x not sharded")
        };
        assert_eq!(sharded.shards().len(), 4);
        for shard in sharded.shards() {
            let want = ShardedArray::from_array(&x, None, &[(shard.device, shard.region.clone())]).unwrap();
            assert_eq!(shard.data, want.shards()[0].data, "device {} of reader {reader}", shard.device);
        }
    }
}

/// An array's elements as f64 (the dtypes of the test tree).
fn values(array: &Array) -> Vec<f64> {
    let data = array.data();
    match array.dtype() {
        DType::Float32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        DType::Int64 => data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        other => panic!("the test tree has no {other}"),
    }
}

/// Real Orbax loads the checkpoint at `dir` and gets exactly the expected tree.
fn check_orbax_reads(python: &std::ffi::OsStr, dir: &Path) {
    let output = Command::new(python).arg(ORBAX_LOAD).arg(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "Orbax failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let loaded: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let loaded = &loaded[dir.to_str().unwrap()];
    let PyTree::Dict(leaves) = expected() else { unreachable!() };
    assert_eq!(loaded.as_object().unwrap().len(), leaves.len(), "{loaded}");
    for (name, leaf) in leaves {
        let got = &loaded[format!("['{name}']")];
        match leaf {
            PyTree::String(s) => assert_eq!(got["values"], s.as_str(), "{name}"),
            PyTree::Array(a) => {
                assert_eq!(got["dtype"], a.dtype().to_string(), "{name}");
                assert_eq!(got["shape"], serde_json::json!(a.shape()), "{name}");
                let want: Vec<Value> = values(&a).into_iter().map(Value::from).collect();
                assert_eq!(got["values"].as_array().unwrap(), &want, "{name}");
            }
            PyTree::Scalar(s) => {
                let want = values(&Array::new(s.dtype(), vec![], s.bytes().to_vec()).unwrap());
                assert_eq!(got["values"][0].as_f64(), Some(want[0]), "{name}");
                assert_eq!(got["shape"], serde_json::json!([]), "{name}");
            }
            other => panic!("unexpected leaf {other:?}"),
        }
    }
}

#[test]
fn four_os_processes_save_one_checkpoint_to_a_local_directory() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    let dir = tempfile::tempdir().unwrap();
    let store_spec = format!("dir:{}", dir.path().display());
    let results = save_in_processes(
        "four_os_processes_save_one_checkpoint_to_a_local_directory",
        &store_spec,
        "ckpt",
        &[0, 1, 2, 3],
        120_000,
    );
    assert!(results.iter().all(|r| r == "RESULT: ok"), "{results:?}");
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
    check_layout(&store, "ckpt");
    assert_eq!(block(orbax::load_pytree(&store, "ckpt", &LoadOptions::default())).unwrap(), expected());
    check_resharded_reads(&store, "ckpt");
    if let Some(python) = orbax_python("multiprocess: the real-Orbax check") {
        check_orbax_reads(&python, &dir.path().join("ckpt"));
    }

    // One process never starts: the others fail naming it, nothing is committed.
    let results = save_in_processes(
        "four_os_processes_save_one_checkpoint_to_a_local_directory",
        &store_spec,
        "dead",
        &[0, 1, 3],
        2_000,
    );
    for line in &results {
        assert!(line.contains("timed out") && line.contains("waiting for processes [2]"), "{line}");
    }
    block(assert_not_committed(&store, "dead"));
}

#[test]
fn four_os_processes_save_one_checkpoint_to_s3() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    let url = match std::env::var("ORBAX_TEST_S3_ENDPOINT") {
        Ok(url) => url,
        Err(_) if std::env::var_os("CI").is_some() => panic!("CI must set ORBAX_TEST_S3_ENDPOINT (./test.sh does)"),
        Err(_) => return eprintln!("ORBAX_TEST_S3_ENDPOINT is not set: the S3 multi-process save is NOT run"),
    };
    let downloads = tempfile::tempdir().unwrap();
    for backend in [Backend::ObjectStore, Backend::OpenDal] {
        let path = format!(
            "mp-{}-{}-{backend:?}/ckpt",
            std::process::id(),
            std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()
        );
        let store_spec = format!("s3-{backend:?}:{url}");
        let results = save_in_processes(
            "four_os_processes_save_one_checkpoint_to_s3",
            &store_spec,
            &path,
            &[0, 1, 2, 3],
            120_000,
        );
        assert!(results.iter().all(|r| r == "RESULT: ok"), "{backend:?}: {results:?}");
        let store = s3_store(&url, backend);
        check_layout(&store, &path);
        assert_eq!(block(orbax::load_pytree(&store, &path, &LoadOptions::default())).unwrap(), expected());
        check_resharded_reads(&store, &path);
        let target = downloads.path().join(format!("{backend:?}"));
        block(async {
            for object in store.list(&path).await.unwrap() {
                let file = target.join(&object.key[path.len() + 1..]);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, store.get(&object.key).await.unwrap()).unwrap();
            }
            store.delete_prefix(path.split('/').next().unwrap()).await.unwrap();
        });
        if let Some(python) = orbax_python("multiprocess: the real-Orbax check") {
            check_orbax_reads(&python, &target);
        }
    }
}
