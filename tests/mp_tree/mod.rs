//! The tree the multi-process tests save: 8 devices (ids 0..8), process `p`
//! of 4 holding devices `2p` and `2p + 1`.

#![allow(dead_code)] // each test target uses part of it

use std::sync::Arc;

use orbax::metadata::{PartitionSpecEntry, Sharding};
use orbax::sharded::{device_regions, ShardedArray};
use orbax::storage::Storage;
use orbax::{Array, DType, ErrorKind, LoadOptions, PyTree};

/// The number of processes.
pub const PROCESSES: usize = 4;

pub fn mesh(shape: &[u64], names: &[&str], spec: Vec<PartitionSpecEntry>) -> Sharding {
    Sharding::Named {
        mesh_shape: shape.to_vec(),
        axis_names: names.iter().map(|n| n.to_string()).collect(),
        axis_types: None,
        partition_spec: spec,
        device_ids: (0..8).collect(),
        memory_kind: None,
    }
}

pub fn axis(name: &str) -> PartitionSpecEntry {
    PartitionSpecEntry::Axis(name.into())
}

/// Pseudo-random f32 values (so chunks do not compress below the inline limit).
pub fn noise(shape: Vec<u64>, seed: u32) -> Array {
    let n: u64 = shape.iter().product();
    let data = (0..n as u32)
        .flat_map(|i| {
            let h = (i ^ seed).wrapping_mul(2654435761).rotate_left(13).wrapping_mul(40503);
            (h as f32 / 7.0).to_le_bytes()
        })
        .collect();
    Array::new(DType::Float32, shape, data).unwrap()
}

/// The global arrays and their shardings (name, array, sharding).
pub fn globals() -> Vec<(&'static str, Array, Sharding)> {
    vec![
        ("x", noise(vec![16, 300], 1), mesh(&[8], &["x"], vec![axis("x"), PartitionSpecEntry::None])),
        // Replicated across processes: devices 0 and 4 hold the same rows.
        ("r", noise(vec![8, 30], 2), mesh(&[2, 4], &["a", "b"], vec![axis("b")])),
        ("rep", noise(vec![5], 3), mesh(&[8], &["x"], vec![])),
    ]
}

/// Process `p`'s tree: its devices' shards (all but `drop` devices), plus whole leaves.
pub fn tree_of(p: usize, drop: &[i64]) -> PyTree {
    let mine = |d: i64| d as usize / 2 == p && !drop.contains(&d);
    let mut leaves: Vec<(String, PyTree)> = globals()
        .into_iter()
        .map(|(name, array, sharding)| {
            let regions: Vec<_> =
                device_regions(&sharding, array.shape()).unwrap().into_iter().filter(|(d, _)| mine(*d)).collect();
            (name.to_string(), PyTree::Sharded(ShardedArray::from_array(&array, Some(sharding), &regions).unwrap()))
        })
        .collect();
    leaves.push(("host".into(), PyTree::Array(noise(vec![40, 20], 4))));
    leaves.push(("n".into(), PyTree::Scalar(9i64.into())));
    leaves.push(("s".into(), PyTree::String("four processes".into())));
    PyTree::Dict(leaves)
}

pub fn expected() -> PyTree {
    let mut leaves: Vec<(String, PyTree)> =
        globals().into_iter().map(|(name, array, _)| (name.to_string(), PyTree::Array(array))).collect();
    leaves.push(("host".into(), PyTree::Array(noise(vec![40, 20], 4))));
    leaves.push(("n".into(), PyTree::Scalar(9i64.into())));
    leaves.push(("s".into(), PyTree::String("four processes".into())));
    PyTree::Dict(leaves)
}

/// Asserts that nothing at `path` loads as a checkpoint (a failed save left
/// nothing, or only an unfinished save).
pub async fn assert_not_committed(store: &Arc<dyn Storage>, path: &str) {
    let err = orbax::load_pytree(store, path, &LoadOptions::default()).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NotFound | ErrorKind::Uncommitted), "{err}");
}
