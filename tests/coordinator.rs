//! The storage-based `Coordinator`: threads over `InMemory`, OS processes over
//! `LocalFileSystem`, and processes that never arrive (the others must time
//! out naming them, not hang).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orbax::multiprocess::{CoordinationError, Coordinator, StorageCoordinator};
use orbax::storage::{InMemory, LocalFileSystem, Storage};
use support::run_children;

/// Runs barrier `name` in processes `present` of `count` concurrently (on tokio tasks over threads).
async fn run_barrier(
    store: &Arc<dyn Storage>,
    name: &str,
    present: &[usize],
    count: usize,
    timeout: Duration,
) -> Vec<Result<(), CoordinationError>> {
    let tasks: Vec<_> = present
        .iter()
        .map(|&i| {
            let coordinator = StorageCoordinator::new(store.clone(), "coord", i, count).unwrap();
            let name = name.to_string();
            tokio::spawn(async move { coordinator.barrier(&name, timeout).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_barrier_releases_all_processes() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    // Four processes, each passing the same three barriers in order (one name twice).
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let coordinator = StorageCoordinator::new(store.clone(), "coord", i, 4).unwrap();
            tokio::spawn(async move {
                for name in ["written", "committed", "written"] {
                    coordinator.barrier(name, Duration::from_secs(20)).await?;
                }
                Ok::<_, CoordinationError>(coordinator)
            })
        })
        .collect();
    let mut coordinators = Vec::new();
    for task in tasks {
        coordinators.push(task.await.unwrap().unwrap());
    }
    // Passing a barrier deletes this process's marker of the one before.
    assert!(store.list("coord/000000-written/").await.unwrap().is_empty());
    assert!(store.list("coord/000001-committed/").await.unwrap().is_empty());
    assert_eq!(store.list("coord/000002-written/").await.unwrap().len(), 4);
    coordinators[0].remove("written").await.unwrap();
    assert!(store.list("coord").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_dead_process_gives_timeout_naming_it() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let start = Instant::now();
    let results = run_barrier(&store, "save-2/written", &[0, 1, 3], 4, Duration::from_millis(300)).await;
    assert!(start.elapsed() < Duration::from_secs(10));
    for result in results {
        match result {
            Err(CoordinationError::Timeout { missing, count: 4, .. }) => assert_eq!(missing, vec![2]),
            other => panic!("expected a timeout naming process 2, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborting_process_fails_the_others_at_once_with_its_reason() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let start = Instant::now();
    let waiting = run_barrier(&store, "first", &[0, 1], 3, Duration::from_secs(30));
    let aborting = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let coordinator = StorageCoordinator::new(store.clone(), "coord", 2, 3).unwrap();
        coordinator.abort("first", "disk full").await
    };
    let (results, aborted) = tokio::join!(waiting, aborting);
    aborted.unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    for result in results {
        match result {
            Err(CoordinationError::Aborted { process: 2, reason, .. }) => assert_eq!(reason, "disk full"),
            other => panic!("expected process 2's abort, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn reused_barrier_name_and_bad_index_are_errors() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let coordinator = StorageCoordinator::new(store.clone(), "coord", 0, 1).unwrap();
    coordinator.barrier("once", Duration::from_secs(5)).await.unwrap();
    // A second run on the same prefix finds the first run's marker.
    let rerun = StorageCoordinator::new(store.clone(), "coord", 0, 1).unwrap();
    let err = rerun.barrier("once", Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, CoordinationError::Reused { .. }), "{err:?}");
    assert!(err.to_string().contains("coord/000000-once/process_0"), "{err}");
    assert!(err.to_string().contains("fresh prefix"), "{err}");
    let err = StorageCoordinator::new(store.clone(), "coord", 2, 2).err().unwrap();
    assert!(matches!(err, CoordinationError::BadIndex { index: 2, count: 2 }), "{err:?}");
    store.put("coord/000001-odd/process_9", bytes::Bytes::new(), orbax::storage::PutMode::Create).await.unwrap();
    let err = coordinator.barrier("odd", Duration::from_secs(5)).await.unwrap_err();
    assert!(err.to_string().contains("coord/000001-odd/process_9"), "{err}");
}

const CHILD_ENV: &str = "ORBAX_TEST_COORD_CHILD";

/// In a child (env `ORBAX_TEST_COORD_CHILD=<dir>,<index>,<count>,<timeout_ms>`): one barrier over
/// `LocalFileSystem`, result printed. Otherwise the parent: runs 4 processes of this test binary
/// through one barrier, then 3 of 4 (one never starts) through another.
#[test]
fn local_fs_barrier_across_os_processes() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let parts: Vec<&str> = spec.split(',').collect();
        let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(parts[0]));
        let index = parts[1].parse().unwrap();
        let count = parts[2].parse().unwrap();
        let timeout = Duration::from_millis(parts[3].parse().unwrap());
        let coordinator = StorageCoordinator::new(store, "ckpt/.coord", index, count).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        match runtime.block_on(coordinator.barrier("barrier", timeout)) {
            Ok(()) => println!("RESULT: ok"),
            Err(e) => println!("RESULT: {e}"),
        }
        return;
    }
    let run = |dir: &std::path::Path, present: &[usize], count: usize, timeout_ms: u64| -> Vec<String> {
        let specs: Vec<String> =
            present.iter().map(|i| format!("{},{i},{count},{timeout_ms}", dir.display())).collect();
        run_children("local_fs_barrier_across_os_processes", CHILD_ENV, &specs)
    };
    let all = tempfile::tempdir().unwrap();
    for line in run(all.path(), &[0, 1, 2, 3], 4, 60_000) {
        assert_eq!(line, "RESULT: ok");
    }
    let dead = tempfile::tempdir().unwrap();
    let start = Instant::now();
    for line in run(dead.path(), &[0, 2, 3], 4, 1_500) {
        assert!(line.contains("timed out") && line.contains("waiting for processes [1]"), "{line}");
    }
    assert!(start.elapsed() < Duration::from_secs(60));
}

/// The same barriers on the local S3 server (moto) through both cloud backends, when
/// `ORBAX_TEST_S3_ENDPOINT` is set (`./test.sh` sets it; under CI it must be).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_barrier_and_dead_process() {
    use orbax::location::{open_store, Backend, Location, LocationOptions};
    use orbax::storage::remote::Service;
    let url = match std::env::var("ORBAX_TEST_S3_ENDPOINT") {
        Ok(url) => url,
        Err(_) if std::env::var_os("CI").is_some() => panic!("CI must set ORBAX_TEST_S3_ENDPOINT (./test.sh does)"),
        Err(_) => return eprintln!("ORBAX_TEST_S3_ENDPOINT is not set: S3 coordinator checks NOT run"),
    };
    let options = [("endpoint", url), ("access_key_id", "test".into()), ("secret_access_key", "test".into())];
    let mut options: Vec<(String, String)> = options.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    options.push(("region".into(), "us-east-1".into()));
    let location = Location { service: Service::S3, bucket: "test".into(), path: String::new() };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    for backend in [Backend::ObjectStore, Backend::OpenDal] {
        let store =
            open_store(&location, backend, &LocationOptions { backend: None, options: options.clone() }).unwrap();
        let save = format!("coord-{}-{nanos}-{backend:?}", std::process::id());
        let results = run_barrier(&store, &format!("{save}-all"), &[0, 1, 2, 3], 4, Duration::from_secs(60)).await;
        assert!(results.iter().all(|r| r.is_ok()), "{backend:?}: {results:?}");
        let results = run_barrier(&store, &format!("{save}-dead"), &[1, 2, 3], 4, Duration::from_secs(2)).await;
        for result in results {
            match result {
                Err(CoordinationError::Timeout { missing, .. }) => assert_eq!(missing, vec![0], "{backend:?}"),
                other => panic!("{backend:?}: expected a timeout naming process 0, got {other:?}"),
            }
        }
        let coordinator = StorageCoordinator::new(store.clone(), "coord", 0, 4).unwrap();
        for phase in ["all", "dead"] {
            coordinator.remove(&format!("{save}-{phase}")).await.unwrap();
        }
        assert!(store.list(&format!("coord/000000-{save}-all/")).await.unwrap().is_empty());
    }
}
