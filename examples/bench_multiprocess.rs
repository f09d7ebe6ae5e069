//! A save by N processes against one process saving the same tree (not a
//! test; results in BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example bench_multiprocess -- DIR [MIB] [N...]
//! ```
//! The tree: 16 float32 leaves of MIB/16 MiB each (default 256 MiB total,
//! pseudo-random values, so zstd gains little, as with trained weights),
//! each split by rows over 8 devices (`P('x', None)`, ids 0..8). One process
//! saves it whole (arrays with that sharding); then, for each N (default 1 2
//! 4), N OS processes (this binary, re-executed) each hold the shards of 8/N
//! devices and save together through a `StorageCoordinator` on the same
//! disk. Each save runs three times; the medians are printed as JSON lines.
//! A multi-process save is timed as the slowest process's call (all return
//! once process 0 has committed), tree construction excluded.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbax::metadata::{PartitionSpecEntry, Sharding};
use orbax::multiprocess::{MultiProcess, StorageCoordinator};
use orbax::sharded::{device_regions, ShardedArray};
use orbax::storage::{LocalFileSystem, Storage};
use orbax::{blocking, Array, ArraySharding, DType, PyTree, SaveOptions};

const LEAVES: usize = 16;
const DEVICES: i64 = 8;

fn sharding() -> Sharding {
    Sharding::Named {
        mesh_shape: vec![DEVICES as u64],
        axis_names: vec!["x".into()],
        axis_types: None,
        partition_spec: vec![PartitionSpecEntry::Axis("x".into()), PartitionSpecEntry::None],
        device_ids: (0..DEVICES).collect(),
        memory_kind: None,
    }
}

/// Leaf `i`: `rows` × 1024 float32 of pseudo-random values.
fn leaf(i: usize, rows: u64) -> Array {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
    let data: Vec<u8> = (0..rows * 1024)
        .flat_map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / 1e4).to_le_bytes()
        })
        .collect();
    Array::new(DType::Float32, vec![rows, 1024], data).unwrap()
}

fn rows(mib: u64) -> u64 {
    (mib << 20) / LEAVES as u64 / 4 / 1024
}

/// The tree as process `process` of `count` holds it (`None`: whole arrays).
fn tree(mib: u64, process: Option<(i64, i64)>) -> PyTree {
    PyTree::Dict(
        (0..LEAVES)
            .map(|i| {
                let array = leaf(i, rows(mib));
                let value = match process {
                    None => PyTree::Array(array),
                    Some((p, n)) => {
                        let mine: Vec<_> = device_regions(&sharding(), array.shape())
                            .unwrap()
                            .into_iter()
                            .filter(|(d, _)| d / (DEVICES / n) == p)
                            .collect();
                        PyTree::Sharded(ShardedArray::from_array(&array, Some(sharding()), &mine).unwrap())
                    }
                };
                (format!("w{i:02}"), value)
            })
            .collect(),
    )
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

/// In a child: one process's share of the save; prints the seconds it took.
fn child(dir: &str, mib: u64, path: &str, p: i64, n: i64, run: &str) {
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir));
    let tree = tree(mib, Some((p, n)));
    let coordinator = StorageCoordinator::new(store.clone(), format!("coordination/{run}"), p as usize, n as usize);
    let options =
        SaveOptions { multiprocess: Some(MultiProcess::new(Arc::new(coordinator.unwrap()))), ..Default::default() };
    let start = Instant::now();
    blocking::block_on(orbax::save_pytree(&store, path, &tree, &options)).unwrap();
    println!("{}", start.elapsed().as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let p = |i: usize| args[i].parse::<i64>().unwrap();
        return child(&args[1], p(2) as u64, &args[3], p(4), p(5), &args[6]);
    }
    let dir = args.first().expect("usage: bench_multiprocess DIR [MIB] [N...]");
    let mib: u64 = args.get(1).map_or(256, |m| m.parse().expect("MIB is a number"));
    let counts: Vec<i64> = match args.get(2..) {
        Some(n) if !n.is_empty() => n.iter().map(|n| n.parse().expect("N is a number")).collect(),
        _ => vec![1, 2, 4],
    };
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir));
    let whole = tree(mib, None);
    let write_shape = vec![rows(mib) / DEVICES as u64, 1024];
    let options = SaveOptions {
        sharding_for: Some(Arc::new(move |_: &str, _: &orbax::KeyPath| {
            Some(ArraySharding { sharding: sharding(), write_shape: write_shape.clone() })
        })),
        ..Default::default()
    };
    let times: Vec<Duration> = (0..3)
        .map(|run| {
            let start = Instant::now();
            blocking::block_on(orbax::save_pytree(&store, &format!("single{run}"), &whole, &options)).unwrap();
            start.elapsed()
        })
        .collect();
    println!("{{\"mib\": {mib}, \"processes\": \"one, alone\", \"save_s\": {:.3}}}", median(times));
    drop(whole);
    let exe = std::env::current_exe().unwrap();
    let id = format!("{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    for n in counts {
        let times: Vec<Duration> = (0..3)
            .map(|run| {
                let path = format!("multi{n}-{run}");
                let children: Vec<_> = (0..n)
                    .map(|p| {
                        Command::new(&exe)
                            .args(["--child", dir, &mib.to_string(), &path, &p.to_string(), &n.to_string()])
                            .arg(format!("{id}-{n}-{run}"))
                            .stdout(Stdio::piped())
                            .spawn()
                    })
                    .collect::<Result<_, _>>()
                    .unwrap();
                children
                    .into_iter()
                    .map(|child| {
                        let out = child.wait_with_output().unwrap();
                        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                        Duration::from_secs_f64(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
                    })
                    .max()
                    .unwrap()
            })
            .collect();
        println!("{{\"mib\": {mib}, \"processes\": {n}, \"save_s\": {:.3}}}", median(times));
    }
}
