//! Damaged checkpoints never crash the reader: every file of several real
//! fixtures is truncated and has bytes flipped, and a full verification of
//! each damaged copy must return (an error or a report), never panic or hang.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use orbax::storage::{InMemory, PutMode, Storage};
use orbax::{blocking::block_on, LoadOptions};

const FIXTURES: &[&str] =
    &["v0_12_8_v1_mixed", "v0_12_8_v1_files_zarr2", "v0_5_10_legacy_aggregate", "v0_12_8_v1_chunked_ocdbt_zarr3"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn load(root: &Path, files: &[(String, Vec<u8>)], damaged: usize, bytes: Vec<u8>) -> Arc<dyn Storage> {
    let _ = root;
    let store = InMemory::new();
    block_on(async {
        for (i, (key, data)) in files.iter().enumerate() {
            let data = if i == damaged { bytes.clone() } else { data.clone() };
            store.put(&format!("ckpt/{key}"), Bytes::from(data), PutMode::Overwrite).await.unwrap();
        }
    });
    Arc::new(store)
}

#[test]
fn damaged_fixtures_are_reported_not_crashed_on() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/fixtures");
    let mut runs = 0;
    let mut reported = 0;
    for fixture in FIXTURES {
        let root = base.join(fixture);
        let mut paths = Vec::new();
        files(&root, &mut paths);
        let contents: Vec<(String, Vec<u8>)> = paths
            .iter()
            .map(|p| (p.strip_prefix(&root).unwrap().to_str().unwrap().to_string(), std::fs::read(p).unwrap()))
            .collect();
        for (index, (name, data)) in contents.iter().enumerate() {
            if data.is_empty() {
                continue;
            }
            let step = (data.len() / 24).max(1);
            let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
            for position in (0..data.len()).step_by(step) {
                let mut flipped = data.clone();
                flipped[position] ^= 0x5a;
                variants.push((format!("{name}: byte {position} flipped"), flipped));
            }
            for cut in [0, 1, data.len() / 2, data.len() - 1] {
                variants.push((format!("{name}: truncated to {cut} bytes"), data[..cut].to_vec()));
            }
            for (what, bytes) in variants {
                let store = load(&root, &contents, index, bytes);
                let start = Instant::now();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    block_on(orbax::verify::verify_checkpoint(&store, "ckpt", &LoadOptions::default()))
                }));
                let report = outcome.unwrap_or_else(|_| panic!("{fixture}/{what}: the reader panicked"));
                assert!(start.elapsed() < Duration::from_secs(20), "{fixture}/{what}: took {:?}", start.elapsed());
                runs += 1;
                reported += !report.is_sound() as usize;
            }
        }
    }
    assert!(runs > 100, "only {runs} damaged variants were tried");
    eprintln!("{runs} damaged variants read without a crash; {reported} reported as unsound");
}
