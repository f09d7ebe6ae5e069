//! Multi-process saves with the processes as tasks of one test (fast, every
//! layout): 4 processes of 2 devices each save one checkpoint; it reads
//! back exactly, with one process's share missing the save fails naming the
//! array, and the merged database references the per-process data files.

use std::sync::Arc;
use std::time::Duration;

mod mp_tree;

use mp_tree::{assert_not_committed, axis, expected, globals, tree_of, PROCESSES};
use orbax::metadata::{PartitionSpecEntry, Sharding};
use orbax::multiprocess::{MultiProcess, StorageCoordinator};
use orbax::sharded::{device_regions, ShardedArray};
use orbax::storage::{InMemory, LocalFileSystem, Storage};
use orbax::{Array, DType, LoadOptions, PyTree, SaveOptions};

/// Runs the save in `PROCESSES` tasks; returns each process's result.
async fn save_together(
    store: &Arc<dyn Storage>,
    path: &str,
    base: &SaveOptions,
    drop: &[i64],
    run: &str,
    timeout: Duration,
) -> Vec<orbax::Result<()>> {
    save_trees(store, path, base, run, timeout, |p| tree_of(p, drop)).await
}

/// Runs the save in `PROCESSES` tasks, process `p` saving `tree(p)`.
async fn save_trees(
    store: &Arc<dyn Storage>,
    path: &str,
    base: &SaveOptions,
    run: &str,
    timeout: Duration,
    tree: impl Fn(usize) -> PyTree,
) -> Vec<orbax::Result<()>> {
    let tasks: Vec<_> = (0..PROCESSES)
        .map(|p| {
            let store = store.clone();
            let coordinator =
                StorageCoordinator::new(store.clone(), format!("coordination/{run}"), p, PROCESSES).unwrap();
            let mut multiprocess = MultiProcess::new(Arc::new(coordinator));
            multiprocess.barrier_timeout = timeout;
            let options = SaveOptions { multiprocess: Some(multiprocess), ..base.clone() };
            let (path, tree) = (path.to_string(), tree(p));
            tokio::spawn(async move { orbax::save_pytree(&store, &path, &tree, &options).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_save_one_checkpoint_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn Storage>> = vec![Arc::new(InMemory::new()), Arc::new(LocalFileSystem::new(dir.path()))];
    for store in &stores {
        for (n, (use_ocdbt, use_zarr3)) in
            [(true, true), (true, false), (false, true), (false, false)].into_iter().enumerate()
        {
            let options = SaveOptions { use_ocdbt, use_zarr3, ..Default::default() };
            let path = format!("ckpt{n}");
            let results = save_together(store, &path, &options, &[], &format!("run{n}"), Duration::from_secs(60)).await;
            assert!(results.iter().all(|r| r.is_ok()), "{store:?} {path}: {results:?}");
            let back = orbax::load_pytree(store, &path, &LoadOptions::default()).await.unwrap();
            assert_eq!(back, expected(), "{store:?} {path}");
            if use_ocdbt {
                let keys: Vec<String> =
                    store.list(&format!("{path}/state")).await.unwrap().into_iter().map(|o| o.key).collect();
                for p in 0..PROCESSES {
                    assert!(keys.contains(&format!("{path}/state/ocdbt.process_{p}/manifest.ocdbt")), "{keys:?}");
                    assert!(keys.contains(&format!("{path}/state/array_metadatas/process_{p}")), "{keys:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_nobody_writes_fails_the_save_naming_the_array() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    // Device 6 holds rows 12..14 of "x" alone; without its shard nobody writes them.
    let timeout = Duration::from_secs(60);
    let start = std::time::Instant::now();
    let results = save_together(&store, "ckpt", &SaveOptions::default(), &[6], "missing", timeout).await;
    assert!(start.elapsed() < Duration::from_secs(20), "the processes waited for the timeout");
    let err = results[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("no process wrote x/c/6/0 of array \"x\" (1 key missing in all)"), "{err}");
    // The others fail at the next barrier with process 0's error, without waiting for the timeout.
    for result in &results[1..] {
        let err = result.as_ref().unwrap_err().to_string();
        assert!(err.contains("barrier \"save-committed\": process 0 gave up: ckpt"), "{err}");
        assert!(err.contains("no process wrote x/c/6/0"), "{err}");
    }
    assert_not_committed(&store, "ckpt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_saving_different_trees_fail_the_save() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    // Process 1 has a leaf the others lack (and writes its shards of it).
    let tree = |p: usize| {
        let PyTree::Dict(mut leaves) = tree_of(p, &[]) else { unreachable!() };
        if p == 1 {
            let (_, array, sharding) = globals().remove(0);
            let regions: Vec<_> =
                device_regions(&sharding, array.shape()).unwrap().into_iter().filter(|(d, _)| *d / 2 == 1).collect();
            leaves.push((
                "zzz".into(),
                PyTree::Sharded(ShardedArray::from_array(&array, Some(sharding), &regions).unwrap()),
            ));
        }
        PyTree::Dict(leaves)
    };
    let results = save_trees(&store, "ckpt", &SaveOptions::default(), "differ", Duration::from_secs(60), tree).await;
    for result in &results {
        let err = result.as_ref().unwrap_err().to_string();
        assert!(err.contains("a process wrote zzz/c/2/0, which belongs to no array of process 0's tree"), "{err}");
    }
    assert_not_committed(&store, "ckpt").await;
}

/// Keys of the OCDBT database at `prefix`.
async fn keys(store: &Arc<dyn Storage>, prefix: &str) -> Vec<String> {
    let db = orbax::ocdbt::Database::open(store.clone(), prefix).await.unwrap();
    db.keys().map(|k| String::from_utf8(k.to_vec()).unwrap()).collect()
}

/// The tree of `conformance/generate/make_multiprocess.py` saved by 2 processes
/// (JAX CPU device ids 0 and 2048) as Orbax 0.12.8 did: the metadata files are
/// byte-identical, each process's database has the same keys as Orbax's, the
/// merged database too, and the values read back equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_process_save_matches_orbax_fixture() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/fixtures/v0_12_8_v1_two_process");
    let orbax_store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(fixture));
    let sharding = |spec: Vec<PartitionSpecEntry>| Sharding::Named {
        mesh_shape: vec![2],
        axis_names: vec!["x".into()],
        axis_types: Some(vec!["AxisType.Auto".into()]),
        partition_spec: spec,
        device_ids: vec![0, 2048],
        memory_kind: None,
    };
    let x_values: Vec<u8> = (0..2400).flat_map(|i| (i as f32 / 3.0).to_le_bytes()).collect();
    let x = Array::new(DType::Float32, vec![8, 300], x_values).unwrap();
    let rep = Array::new(DType::Int32, vec![5], (0..5i32).flat_map(|i| (i * 7).to_le_bytes()).collect()).unwrap();
    let host = Array::new(DType::Int16, vec![2, 3], (0..6i16).flat_map(|i| i.to_le_bytes()).collect()).unwrap();
    let tree_of = |device: i64| {
        let shards = |array: &Array, sharding: Sharding| {
            let regions: Vec<_> =
                device_regions(&sharding, array.shape()).unwrap().into_iter().filter(|(d, _)| *d == device).collect();
            PyTree::Sharded(ShardedArray::from_array(array, Some(sharding), &regions).unwrap())
        };
        // In JAX's flatten order (sorted dict keys).
        PyTree::Dict(vec![
            ("host_np".into(), PyTree::Array(host.clone())),
            ("n".into(), PyTree::Scalar(9i64.into())),
            ("rep".into(), shards(&rep, sharding(vec![]))),
            ("s".into(), PyTree::String("two processes".into())),
            ("x".into(), shards(&x, sharding(vec![axis("x"), PartitionSpecEntry::None]))),
        ])
    };
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let tasks: Vec<_> = [0i64, 2048]
        .into_iter()
        .enumerate()
        .map(|(p, device)| {
            let store = store.clone();
            let coordinator = StorageCoordinator::new(store.clone(), "coordination", p, 2).unwrap();
            let options =
                SaveOptions { multiprocess: Some(MultiProcess::new(Arc::new(coordinator))), ..Default::default() };
            let tree = tree_of(device);
            tokio::spawn(async move { orbax::save_pytree(&store, "ckpt", &tree, &options).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for file in ["_METADATA", "_sharding", "_strings.json", "array_metadatas/process_0", "array_metadatas/process_1"] {
        let ours = store.get(&format!("ckpt/state/{file}")).await.unwrap();
        let theirs = orbax_store.get(&format!("state/{file}")).await.unwrap();
        assert_eq!(ours, theirs, "{file}");
    }
    for db in ["state/ocdbt.process_0", "state/ocdbt.process_1", "state"] {
        assert_eq!(keys(&store, &format!("ckpt/{db}")).await, keys(&orbax_store, db).await, "{db}");
    }
    let merged = orbax::ocdbt::Database::open(store.clone(), "ckpt/state").await.unwrap();
    let orbax_merged = orbax::ocdbt::Database::open(orbax_store.clone(), "state").await.unwrap();
    for key in merged.keys().filter(|k| k.ends_with(b"zarr.json")) {
        assert_eq!(merged.get(key).await.unwrap(), orbax_merged.get(key).await.unwrap());
    }
    let ours = orbax::load_pytree(&store, "ckpt", &LoadOptions::default()).await.unwrap();
    let theirs = orbax::load_pytree(&orbax_store, "", &LoadOptions::default()).await.unwrap();
    assert_eq!(ours, theirs);
}

/// Four processes run a training loop with one `Checkpointer` each on the
/// same root: every saved step is one checkpoint written together; process 0
/// alone deletes what the policy drops, and all agree on the kept steps.
#[test]
fn four_process_training_loop_keeps_the_policy_steps() {
    use orbax::training::preservation::LatestN;
    use orbax::training::save_decision::FixedInterval;
    use orbax::training::{Checkpointer, CheckpointerOptions, StepSave};
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn Storage>> = vec![Arc::new(LocalFileSystem::new(dir.path())), Arc::new(InMemory::new())];
    for store in stores {
        let threads: Vec<_> = (0..PROCESSES)
            .map(|p| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let coordinator =
                        StorageCoordinator::new(store.clone(), "coordination/loop", p, PROCESSES).unwrap();
                    let mut multiprocess = MultiProcess::new(Arc::new(coordinator));
                    multiprocess.barrier_timeout = Duration::from_secs(60);
                    let options = CheckpointerOptions {
                        save_decision: Arc::new(FixedInterval(2)),
                        preservation: Arc::new(LatestN(2)),
                        save_options: SaveOptions { multiprocess: Some(multiprocess), ..Default::default() },
                        ..Default::default()
                    };
                    let mut ckpt = Checkpointer::open(store, "run", options).unwrap();
                    let tree = tree_of(p, &[]);
                    for step in 0..10 {
                        if step % 4 == 0 {
                            ckpt.save_async(step, &tree, StepSave::default()).unwrap();
                        } else {
                            ckpt.save(step, &tree, StepSave::default()).unwrap();
                        }
                    }
                    ckpt.wait().unwrap();
                    let kept: Vec<u64> = ckpt.checkpoints().unwrap().iter().map(|c| c.step).collect();
                    ckpt.close().unwrap();
                    kept
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), [6, 8], "{store:?}");
        }
        let mut reopened = Checkpointer::open(store.clone(), "run", CheckpointerOptions::default()).unwrap();
        let steps: Vec<u64> = reopened.checkpoints().unwrap().iter().map(|c| c.step).collect();
        assert_eq!(steps, [6, 8], "{store:?}");
        assert_eq!(reopened.load(None, &LoadOptions::default()).unwrap(), expected(), "{store:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_process_fails_the_others_with_its_error() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    // Process 3 gives device 6 the rows of device 7.
    let tree = |p: usize| {
        let PyTree::Dict(mut leaves) = tree_of(p, &[]) else { unreachable!() };
        if p == 3 {
            let (_, array, sharding) = globals().remove(0);
            let regions = device_regions(&sharding, array.shape()).unwrap();
            let wrong = vec![(6, regions[7].1.clone()), (7, regions[7].1.clone())];
            leaves[0].1 = PyTree::Sharded(ShardedArray::from_array(&array, Some(sharding), &wrong).unwrap());
        }
        PyTree::Dict(leaves)
    };
    let start = std::time::Instant::now();
    let results = save_trees(&store, "ckpt", &SaveOptions::default(), "fails", Duration::from_secs(60), tree).await;
    assert!(start.elapsed() < Duration::from_secs(20), "the processes waited for the timeout");
    let own = results[3].as_ref().unwrap_err().to_string();
    assert!(own.contains("['x']: the shard of device 6 covers [14..16, 0..300]"), "{own}");
    for result in &results[..3] {
        let err = result.as_ref().unwrap_err().to_string();
        assert!(err.contains("barrier \"save-written\": process 3 gave up: ['x']: the shard of device 6"), "{err}");
    }
    assert_not_committed(&store, "ckpt").await;
}
