//! Crash consistency of saves: an `orbax convert` process writing a
//! checkpoint is killed (SIGKILL) at many points, and after each kill a
//! reader must see either no checkpoint or a complete one — and, when the
//! save was overwriting, the old checkpoint or the new one, never neither
//! and never a mix.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbax::storage::{LocalFileSystem, Storage};
use orbax::{blocking, Array, DType, LoadOptions, PyTree, SaveOptions};

const KILL_POINTS: u32 = 24;

fn tree(seed: u8, leaves: usize) -> PyTree {
    PyTree::Dict(
        (0..leaves)
            .map(|i| {
                let data: Vec<u8> =
                    (0..32 * 1024).map(|j| (j as u8).wrapping_mul(seed).wrapping_add(i as u8)).collect();
                (format!("w{i:04}"), PyTree::Array(Array::new(DType::Float32, vec![8192], data).unwrap()))
            })
            .collect(),
    )
}

fn store(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(LocalFileSystem::new(dir))
}

/// What a reader sees at `name`: `None` if no committed checkpoint, else the tree.
fn read(dir: &Path, name: &str) -> Option<PyTree> {
    let store = store(dir);
    match blocking::load_pytree(&store, name, &LoadOptions::default()) {
        Ok(tree) => Some(tree),
        Err(e) if e.kind() == orbax::ErrorKind::NotFound => None,
        Err(e) => panic!("a reader found a broken checkpoint at {name}: {e}"),
    }
}

fn convert(src: &Path, dst: &Path, overwrite: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orbax"));
    cmd.arg("convert").arg(src).arg(dst);
    if overwrite {
        cmd.arg("--overwrite");
    }
    cmd
}

#[test]
fn killed_saves_leave_nothing_or_a_complete_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let new_tree = tree(3, 160);
    let old_tree = tree(7, 40);
    let save = |name: &str, t: &PyTree| {
        blocking::block_on(orbax::save_pytree(&store(dir.path()), name, t, &SaveOptions::default())).unwrap()
    };
    save("source", &new_tree);
    save("old", &old_tree);

    // How long an uninterrupted save takes, fresh and overwriting (the
    // slowest of two runs each), so kill points span each save and beyond.
    let time = |overwrite: bool| {
        (0..2)
            .map(|k| {
                let name = format!("timing_{overwrite}_{k}");
                if overwrite {
                    save(&name, &old_tree);
                }
                let start = Instant::now();
                assert!(convert(&dir.path().join("source"), &dir.path().join(&name), overwrite)
                    .status()
                    .unwrap()
                    .success());
                start.elapsed()
            })
            .max()
            .unwrap()
    };
    let fresh_full = time(false);
    let overwrite_full = time(true);
    let (mut absent, mut complete, mut old_seen, mut new_seen) = (0, 0, 0, 0);
    for i in 0..KILL_POINTS {
        let fraction = 2.0 * f64::from(i) / f64::from(KILL_POINTS);
        let delay = fresh_full.mul_f64(fraction);

        // A fresh save killed part-way.
        let fresh = format!("fresh{i}");
        let mut child = convert(&dir.path().join("source"), &dir.path().join(&fresh), false).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        match read(dir.path(), &fresh) {
            None => absent += 1,
            Some(t) => {
                assert_eq!(t, new_tree, "kill after {delay:?}: a committed checkpoint must be complete");
                complete += 1;
            }
        }

        // An overwriting save killed part-way: the old or the new tree, never neither.
        let target = format!("overwrite{i}");
        save(&target, &old_tree);
        let delay = overwrite_full.mul_f64(fraction);
        let mut child = convert(&dir.path().join("source"), &dir.path().join(&target), true).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        match read(dir.path(), &target) {
            None => panic!("kill after {delay:?}: the overwritten checkpoint vanished"),
            Some(t) if t == old_tree => old_seen += 1,
            Some(t) => {
                assert_eq!(t, new_tree, "kill after {delay:?}: neither the old nor the new tree");
                new_seen += 1;
            }
        }

        // A save into the same place after the crash succeeds (leftovers are cleaned up).
        if i % 6 == 0 {
            assert!(convert(&dir.path().join("source"), &dir.path().join(&fresh), true).status().unwrap().success());
            assert_eq!(read(dir.path(), &fresh), Some(new_tree.clone()));
        }
    }
    eprintln!(
        "full saves: fresh {fresh_full:?}, overwrite {overwrite_full:?}; fresh: {absent} interrupted, {complete} \
         complete; overwrite: {old_seen} old, {new_seen} new"
    );
    assert!(absent > 0 && complete > 0, "kill points must fall both inside and after the save");
    assert!(old_seen > 0 && new_seen > 0, "kill points must fall both inside and after the overwrite");
    assert!(fresh_full > Duration::from_millis(1));
}
