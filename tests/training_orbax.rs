//! Roots shared with real Orbax (the Python in `ORBAX_TS_PYTHON`, Orbax
//! 0.12.8 under `./test.sh`): a `CheckpointManager` root and a v1
//! `training.Checkpointer` root written by Orbax are read and extended by
//! our `Checkpointer`, then Orbax reads every step back.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use orbax::storage::{LocalFileSystem, Storage};
use orbax::training::preservation::{AnyPreservation, BestN, CustomSteps, LatestN, MetricMode};
use orbax::training::{Checkpointer, CheckpointerOptions, StepNameFormat, StepSave};
use orbax::{Array, Checkpointable, DType, LoadOptions, PyTree};
use serde_json::{json, Value};
use support::orbax_python;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/training_orbax/roots.py");

fn orbax_py(python: &std::ffi::OsStr, mode: &str, root: &Path) -> Value {
    let output = Command::new(python).arg(SCRIPT).arg(mode).arg(root).output().expect("run ORBAX_TS_PYTHON");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{mode} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    if mode.starts_with("read") {
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the script prints JSON")
    } else {
        Value::Null
    }
}

/// The tree roots.py saves at `step`: `w` float32 (2, 3) = arange + step, `b` int32 (4,) = step.
fn tree(step: u64) -> PyTree {
    let w: Vec<u8> = (0..6).flat_map(|i| (i as f32 + step as f32).to_le_bytes()).collect();
    let b: Vec<u8> = (0..4).flat_map(|_| (step as i32).to_le_bytes()).collect();
    PyTree::Dict(vec![
        ("b".into(), PyTree::Array(Array::new(DType::Int32, vec![4], b).unwrap())),
        ("w".into(), PyTree::Array(Array::new(DType::Float32, vec![2, 3], w).unwrap())),
    ])
}

#[test]
fn orbax_checkpoint_manager_root_is_read_extended_and_read_back() {
    let Some(python) = orbax_python("training_orbax") else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("m");
    orbax_py(&python, "write_manager", &root);

    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
    let options = CheckpointerOptions {
        preservation: Arc::new(LatestN(3)),
        step_name_format: StepNameFormat { prefix: Some("ckpt".into()), fixed_length: Some(4) },
        ..Default::default()
    };
    let mut ckpt = Checkpointer::open(store, "m", options).unwrap();
    let seen: Vec<(u64, Option<Value>)> =
        ckpt.checkpoints().unwrap().iter().map(|c| (c.step, c.metrics.clone())).collect();
    assert_eq!(seen, [(1, Some(json!({"loss": 1.0}))), (2, Some(json!({"loss": 0.5})))]);
    assert_eq!(ckpt.root_metadata().unwrap(), json!({"run": "orbax"}).as_object().cloned());
    assert_eq!(ckpt.load(None, &LoadOptions::default()).unwrap(), tree(2));
    for step in [3, 4] {
        let items = vec![("default".to_string(), Checkpointable::PyTree(tree(step)))];
        let args = StepSave { force: true, metrics: Some(json!({"loss": 1.0 / step as f64})), ..Default::default() };
        ckpt.save_checkpointables(step, &items, args).unwrap();
    }
    ckpt.close().unwrap();
    assert!(!root.join("ckpt_0001").exists(), "LatestN(3) deleted step 1");

    let read = orbax_py(&python, "read_manager", &root);
    assert_eq!(read["steps"], json!([2, 3, 4]), "{read}");
    assert_eq!(read["latest"], 4, "{read}");
    for step in [2, 3, 4] {
        assert_eq!(read[step.to_string()]["ok"], true, "step {step}: {read}");
        assert_eq!(read[step.to_string()]["metrics"], json!({"loss": 1.0 / step as f64}), "step {step}: {read}");
    }
}

#[test]
fn orbax_training_checkpointer_root_is_read_extended_and_read_back() {
    let Some(python) = orbax_python("training_orbax") else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    orbax_py(&python, "write_training", &root);

    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
    let best =
        BestN { metric: "loss".into(), mode: MetricMode::Min, n: Some(2), keep_checkpoints_without_metrics: true };
    let options = CheckpointerOptions {
        preservation: Arc::new(AnyPreservation(vec![Box::new(best), Box::new(CustomSteps([0].into()))])),
        ..Default::default()
    };
    let mut ckpt = Checkpointer::open(store, "t", options).unwrap();
    let seen: Vec<u64> = ckpt.checkpoints().unwrap().iter().map(|c| c.step).collect();
    assert_eq!(seen, [0, 10]);
    assert_eq!(ckpt.load(Some(10), &LoadOptions::default()).unwrap(), tree(10));
    for step in [20, 30] {
        let args = StepSave {
            force: true,
            metrics: Some(json!({"loss": 1.0 / (step + 1) as f64})),
            custom_metadata: json!({"by": "orbax-rs"}).as_object().unwrap().clone(),
            ..Default::default()
        };
        assert!(ckpt.save(step, &tree(step), args).unwrap());
    }
    ckpt.close().unwrap();

    // Best two by loss (20, 30) plus step 0: step 10 is gone.
    let read = orbax_py(&python, "read_training", &root);
    assert_eq!(read["steps"], json!([0, 20, 30]), "{read}");
    assert_eq!(read["metadata"], json!({"run": "orbax"}), "{read}");
    for step in [0, 20, 30] {
        assert_eq!(read[step.to_string()]["ok"], true, "step {step}: {read}");
        assert_eq!(read[step.to_string()]["metrics"], json!({"loss": 1.0 / (step + 1) as f64}), "{read}");
    }
    // Our step metadata is Orbax's, modulo timestamps.
    let ours: Value = serde_json::from_slice(&std::fs::read(root.join("30/_CHECKPOINT_METADATA")).unwrap()).unwrap();
    let theirs: Value = serde_json::from_slice(&std::fs::read(root.join("0/_CHECKPOINT_METADATA")).unwrap()).unwrap();
    assert_eq!(ours["item_handlers"], theirs["item_handlers"]);
    assert_eq!(ours["metrics"], theirs["metrics"]);
    assert_eq!(ours["custom_metadata"], json!({"by": "orbax-rs"}));
    assert_eq!(std::fs::read(root.join("30/metrics/metrics")).unwrap(), br#"{"loss": 0.03225806451612903}"#);
}
