//! `orbax ls --keep-*`, `orbax gc` and `orbax rm` on a managed root.

use std::process::Command;
use std::sync::Arc;

use orbax::storage::{LocalFileSystem, Storage};
use orbax::training::{Checkpointer, CheckpointerOptions, StepSave};
use orbax::PyTree;
use serde_json::Value;

fn orbax(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orbax")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn ls_marks_gc_deletes_rm_removes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
    let mut ckpt = Checkpointer::open(store, "run", CheckpointerOptions::default()).unwrap();
    for step in 0..7 {
        ckpt.save(step, &PyTree::Dict(vec![]), StepSave { force: true, ..Default::default() }).unwrap();
    }
    ckpt.close().unwrap();
    let root = dir.path().join("run");
    let root = root.to_str().unwrap();
    let dirs = || {
        let mut d: Vec<String> =
            std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        d.sort_by_key(|n| n.parse::<u64>().unwrap());
        d
    };

    let (ok, stdout, _) = orbax(&["ls", root, "--keep-latest", "2", "--keep-every", "4", "--json"]);
    assert!(ok);
    let listed: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let keep: Vec<bool> = listed.iter().map(|s| s["keep"].as_bool().unwrap()).collect();
    assert_eq!(keep, [true, false, false, false, true, true, true]);
    let (ok, table, _) = orbax(&["ls", root, "--keep-latest", "2"]);
    assert!(
        ok && table.starts_with("KEEP  STEP") && table.contains("\nkeep  6") && table.contains("\n-     0"),
        "{table}"
    );

    let (ok, stdout, _) = orbax(&["gc", root, "--keep-latest", "2", "--keep-every", "4", "--dry-run"]);
    assert!(ok);
    assert_eq!(stdout, "would delete 1\nwould delete 2\nwould delete 3\n");
    assert_eq!(dirs().len(), 7, "a dry run deletes nothing");
    let (ok, stdout, _) = orbax(&["gc", root, "--keep-latest", "2", "--keep-every", "4"]);
    assert!(ok);
    assert_eq!(stdout, "deleted 1\ndeleted 2\ndeleted 3\n");
    assert_eq!(dirs(), ["0", "4", "5", "6"]);

    let (ok, stdout, _) = orbax(&["rm", root, "5"]);
    assert!(ok, "{stdout}");
    assert_eq!(dirs(), ["0", "4", "6"]);
    let (ok, _, stderr) = orbax(&["rm", root, "5"]);
    assert!(!ok && stderr.contains("no committed step 5"), "{stderr}");
    let (ok, _, stderr) = orbax(&["gc", root]);
    assert!(!ok && stderr.contains("gc needs a policy"), "{stderr}");
}
