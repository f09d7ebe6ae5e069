//! Timing and memory probe used by `bench/run.sh` (not a test).
//!
//! ```text
//! bench load PATH            load a checkpoint
//! bench save IN OUT          load IN, then save it to OUT (only the save is measured)
//! bench metadata PATH        pytree_metadata only
//! bench load-cast PATH DTYPE load with the checkpoint's metadata as target, every array cast to DTYPE
//! ```
//! Prints one JSON line: seconds, bytes of array data, and the peak resident
//! memory of the measured phase above the memory held before it.

use std::sync::Arc;
use std::time::Instant;

use orbax::storage::{LocalFileSystem, Storage};
use orbax::{blocking, LoadOptions, PyTree, SaveOptions};

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the kernel's peak-RSS counter (VmHWM) so the next phase is measured alone.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn open(path: &str) -> (Arc<dyn Storage>, String) {
    let p = std::path::Path::new(path);
    let parent = p.parent().unwrap_or(std::path::Path::new(".")).to_path_buf();
    let name = p.file_name().and_then(|n| n.to_str()).expect("a path with a file name").to_string();
    (Arc::new(LocalFileSystem::new(parent)), name)
}

fn data_bytes(tree: &PyTree) -> u64 {
    tree.leaves()
        .iter()
        .map(|(_, l)| match l {
            PyTree::Array(a) => a.data().len() as u64,
            PyTree::Scalar(s) => s.bytes().len() as u64,
            _ => 0,
        })
        .sum()
}

fn report(op: &str, seconds: f64, bytes: u64, base_kib: u64) {
    let peak_kib = status_kib("VmHWM:");
    println!(
        "{{\"op\": \"{op}\", \"seconds\": {seconds:.4}, \"data_bytes\": {bytes}, \"peak_rss_bytes\": {}, \"base_rss_bytes\": {}}}",
        peak_kib * 1024,
        base_kib * 1024
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let options = LoadOptions::default();
    match args.get(1).map(String::as_str) {
        Some("load") => {
            let (store, key) = open(&args[2]);
            reset_peak();
            let base = status_kib("VmRSS:");
            let start = Instant::now();
            let tree = blocking::load_pytree(&store, &key, &options).expect("load");
            report("load", start.elapsed().as_secs_f64(), data_bytes(&tree), base);
        }
        Some("save") => {
            let (store, key) = open(&args[2]);
            let tree = blocking::load_pytree(&store, &key, &options).expect("load");
            let (out_store, out_key) = open(&args[3]);
            let save = SaveOptions { overwrite: true, ..Default::default() };
            reset_peak();
            let base = status_kib("VmRSS:");
            let start = Instant::now();
            blocking::block_on(orbax::save_pytree(&out_store, &out_key, &tree, &save)).expect("save");
            report("save", start.elapsed().as_secs_f64(), data_bytes(&tree), base);
        }
        Some("load-cast") => {
            let (store, key) = open(&args[2]);
            let dtype = orbax::DType::from_name(&args[3]).expect("a dtype name");
            let target = orbax::Target::from(blocking::pytree_metadata(&store, &key, &options).expect("metadata"));
            let options = LoadOptions { target: Some(target.unsharded().with_dtype(dtype)), ..Default::default() };
            reset_peak();
            let base = status_kib("VmRSS:");
            let start = Instant::now();
            let tree = blocking::load_pytree(&store, &key, &options).expect("load");
            report("load-cast", start.elapsed().as_secs_f64(), data_bytes(&tree), base);
        }
        Some("metadata") => {
            let (store, key) = open(&args[2]);
            let start = Instant::now();
            let meta = blocking::pytree_metadata(&store, &key, &options).expect("metadata");
            report("metadata", start.elapsed().as_secs_f64(), meta.leaves.len() as u64, status_kib("VmRSS:"));
        }
        _ => {
            eprintln!("usage: bench (load PATH | save IN OUT | metadata PATH | load-cast PATH DTYPE)");
            std::process::exit(2);
        }
    }
}
