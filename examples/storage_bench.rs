//! Throughput probe of a store named by URL (not a test):
//!
//! ```text
//! storage_bench URL MIB CONCURRENCY [NAME=VALUE ...]
//! ```
//!
//! Streams one MIB-MiB object through `put_writer` (multipart above
//! `part_size`), reads it whole, then reads 64 scattered 256 KiB ranges (too
//! far apart to coalesce) with `get_ranges`, with `concurrency` requests in
//! flight. Prints one JSON line per phase with seconds and MiB/s. Store
//! settings come from the environment and the NAME=VALUE options
//! (`docs/storage.md`).

use std::time::Instant;

use bytes::Bytes;
use orbax::location::{open, LocationOptions};
use orbax::storage::object_writer;

fn report(phase: &str, concurrency: usize, bytes: usize, seconds: f64) {
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "{{\"phase\": \"{phase}\", \"concurrency\": {concurrency}, \"mib\": {mib:.1}, \"seconds\": {seconds:.3}, \"mib_per_s\": {:.1}}}",
        mib / seconds
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: storage_bench URL MIB CONCURRENCY [NAME=VALUE ...]");
        std::process::exit(2);
    }
    let mib: usize = args[2].parse().expect("MIB");
    let concurrency: usize = args[3].parse().expect("CONCURRENCY");
    let mut options: Vec<(String, String)> = vec![("concurrency".into(), concurrency.to_string())];
    for pair in &args[4..] {
        let (k, v) = pair.split_once('=').expect("NAME=VALUE");
        options.push((k.into(), v.into()));
    }
    let (store, key) = open(&args[1], &LocationOptions { backend: None, options }).expect("open");
    let object = format!("{key}/bench-object");
    let size = mib << 20;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let piece: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let start = Instant::now();
        let mut writer = object_writer(&store, &object).await.expect("writer");
        for _ in 0..mib {
            writer.write(Bytes::from(piece.clone())).await.expect("write");
        }
        writer.finish().await.expect("finish");
        report("streamed_put", concurrency, size, start.elapsed().as_secs_f64());

        let start = Instant::now();
        let data = store.get(&object).await.expect("get");
        assert_eq!(data.len(), size);
        report("get", concurrency, size, start.elapsed().as_secs_f64());

        let stride = (size / 64) as u64;
        let ranges: Vec<_> = (0..64u64).map(|i| i * stride..i * stride + (256 << 10).min(stride)).collect();
        let start = Instant::now();
        let parts = store.get_ranges(&object, &ranges).await.expect("get_ranges");
        let bytes: usize = parts.iter().map(|p| p.len()).sum();
        report("get_ranges_64", concurrency, bytes, start.elapsed().as_secs_f64());
        store.delete(&object).await.expect("delete");
    });
}
