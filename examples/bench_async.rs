//! How long `save_pytree_async` blocks the caller, against a synchronous
//! `save_pytree` of the same tree (not a test; results in BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example bench_async -- DIR [MIB]
//! ```
//! Saves a float32 tree of MIB MiB (default 256) in 64 leaves to DIR three
//! times each way and prints the medians as one JSON line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orbax::storage::{LocalFileSystem, Storage};
use orbax::{blocking, save_pytree_async, Array, DType, PyTree, SaveOptions};

fn tree(mib: usize) -> PyTree {
    let leaves = 64;
    let elements = mib * (1 << 20) / 4 / leaves;
    PyTree::Dict(
        (0..leaves)
            .map(|i| {
                let data: Vec<u8> = (0..elements).flat_map(|j| ((i * 7 + j) as f32).to_le_bytes()).collect();
                (format!("w{i:02}"), PyTree::Array(Array::new(DType::Float32, vec![elements as u64], data).unwrap()))
            })
            .collect(),
    )
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().expect("usage: bench_async DIR [MIB]");
    let mib: usize = args.get(1).map_or(256, |m| m.parse().expect("MIB is a number"));
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir));
    let tree = tree(mib);
    let options = SaveOptions { overwrite: true, ..Default::default() };
    let (mut sync, mut blocked, mut committed) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..3 {
        let start = Instant::now();
        blocking::block_on(orbax::save_pytree(&store, &format!("sync{run}"), &tree, &options)).unwrap();
        sync.push(start.elapsed());

        let start = Instant::now();
        let handle = save_pytree_async(&store, &format!("async{run}"), &tree, &options);
        blocked.push(start.elapsed());
        handle.wait().unwrap();
        committed.push(start.elapsed());
    }
    println!(
        "{{\"mib\": {mib}, \"sync_save_s\": {:.4}, \"async_blocks_caller_s\": {:.4}, \"async_commit_s\": {:.4}}}",
        median(sync),
        median(blocked),
        median(committed)
    );
}
