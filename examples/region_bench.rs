//! Measures region reads: bytes fetched, peak bytes held before decoding,
//! and time, for one device's shard of a many-chunk array versus the whole
//! array, with and without a `max_bytes_in_flight` bound.
//!
//! `cargo run --release --example region_bench [DIR]` saves a 64 MiB float32
//! array (chunk_byte_size 1 MiB, zstd) under DIR (default: a temporary
//! directory) in the OCDBT and per-file layouts, then reads it.

use std::sync::Arc;
use std::time::Instant;

use orbax::storage::{LocalFileSystem, Storage};
use orbax::{Array, Checkpoint, DType, KeyEntry, KeyPath, LoadOptions, PyTree, SaveOptions, StorageOptions};

fn main() -> orbax::Result<()> {
    let dir = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(|| {
        let d = std::env::temp_dir().join(format!("orbax-region-bench-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the directory");
        d
    });
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(&dir));
    let (rows, cols) = (4096u64, 4096u64);
    let mut x = 1u32;
    let data = (0..rows * cols)
        .flat_map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((x >> 16) as f32).to_le_bytes()
        })
        .collect();
    let array = Array::new(DType::Float32, vec![rows, cols], data).map_err(orbax::Error::InvalidArgument)?;
    let tree = PyTree::Dict(vec![("w".into(), PyTree::Array(array))]);
    let key = KeyPath(vec![KeyEntry::Key("w".into())]);
    println!("layout  region             bound      fetched    peak       chunks  seconds");
    for use_ocdbt in [true, false] {
        let path = if use_ocdbt { "ocdbt" } else { "files" };
        let options = SaveOptions {
            use_ocdbt,
            overwrite: true,
            storage: StorageOptions { chunk_byte_size: Some(1 << 20), ..Default::default() },
            ..Default::default()
        };
        orbax::blocking::block_on(orbax::save_pytree(&store, path, &tree, &options))?;
        let item = orbax::blocking::block_on(async {
            Checkpoint::open(&store, path, &LoadOptions::default()).await?.pytree(None).await
        })?;
        let shard = [rows / 8..rows / 4, 0..cols];
        let whole = [0..rows, 0..cols];
        for (name, region) in [("1/8 rows (a shard)", &shard), ("whole", &whole)] {
            for bound in [None, Some(4u64 << 20), Some(1 << 20)] {
                let start = Instant::now();
                let (_, stats) = orbax::blocking::block_on(item.read_region(&key, region, bound))?;
                println!(
                    "{path:<7} {name:<18} {:<10} {:<10} {:<10} {:<7} {:.3}",
                    bound.map_or("none".into(), |b| format!("{} MiB", b >> 20)),
                    stats.bytes_fetched,
                    stats.peak_bytes_in_flight,
                    stats.chunks_decoded,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
