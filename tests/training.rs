//! The training `Checkpointer`: policies over a simulated loop, resuming
//! after a process is killed mid-save, and stores without atomic rename.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use orbax::storage::{Capabilities, InMemory, ListResult, LocalFileSystem, ObjectMeta, PutMode, Storage, StorageError};
use orbax::training::preservation::{AnyPreservation, BestN, EveryNSteps, LatestN, MetricMode};
use orbax::training::save_decision::{AnySave, FixedInterval, Preemption, SpecificSteps};
use orbax::training::{Checkpointer, CheckpointerOptions, StepNameFormat, StepSave};
use orbax::{Array, DType, ErrorKind, LoadOptions, PyTree};
use serde_json::json;

/// The state of step `step`: a few arrays whose values depend on the step.
fn state(step: u64, leaves: usize, elements: usize) -> PyTree {
    PyTree::Dict(
        (0..leaves)
            .map(|i| {
                let data: Vec<u8> =
                    (0..elements).flat_map(|j| ((step * 1000 + i as u64) as f32 + j as f32).to_le_bytes()).collect();
                let array = Array::new(DType::Float32, vec![elements as u64], data).unwrap();
                (format!("w{i:02}"), PyTree::Array(array))
            })
            .collect(),
    )
}

/// An in-memory store that, like an object store, cannot rename: saves
/// are written in place and `commit_success.txt` marks them complete.
#[derive(Debug, Default)]
struct NoRename(InMemory);

#[async_trait]
impl Storage for NoRename {
    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.0.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, StorageError> {
        self.0.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.0.head(key).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        self.0.put(key, data, mode).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.0.list(prefix).await
    }
    async fn list_with_delimiter(&self, prefix: &str) -> Result<ListResult, StorageError> {
        self.0.list_with_delimiter(prefix).await
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { atomic_rename: false, conditional_create: true, atomic_replace: false }
    }
}

fn steps(ckpt: &mut Checkpointer) -> Vec<u64> {
    ckpt.checkpoints().unwrap().iter().map(|c| c.step).collect()
}

/// 100 steps saved every 5 (plus step 42), keeping the latest 3 and every
/// 25th; on disk, in memory and on a store without rename.
#[test]
fn hundred_step_loop_keeps_exactly_the_policy_steps() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn Storage>> =
        vec![Arc::new(LocalFileSystem::new(dir.path())), Arc::new(InMemory::new()), Arc::new(NoRename::default())];
    for store in stores {
        let options = CheckpointerOptions {
            save_decision: Arc::new(AnySave(vec![Box::new(FixedInterval(5)), Box::new(SpecificSteps([42].into()))])),
            preservation: Arc::new(AnyPreservation(vec![Box::new(LatestN(3)), Box::new(EveryNSteps::new(25))])),
            ..Default::default()
        };
        let mut ckpt = Checkpointer::open(store.clone(), "run", options).unwrap();
        let mut saved = Vec::new();
        for step in 0..100 {
            let tree = state(step, 2, 16);
            // Alternate async and synchronous saves.
            let started = if step % 2 == 0 {
                ckpt.save_async(step, &tree, StepSave::default()).unwrap()
            } else {
                ckpt.save(step, &tree, StepSave::default()).unwrap()
            };
            if started {
                saved.push(step);
            }
        }
        ckpt.wait().unwrap();
        let mut expected: Vec<u64> = (0..100).step_by(5).collect();
        expected.insert(9, 42);
        assert_eq!(saved, expected, "{store:?}");
        assert_eq!(steps(&mut ckpt), [0, 25, 50, 75, 85, 90, 95], "{store:?}");
        // What is stored is exactly that: a fresh Checkpointer sees the same steps.
        ckpt.close().unwrap();
        let mut reopened = Checkpointer::open(store.clone(), "run", CheckpointerOptions::default()).unwrap();
        assert_eq!(steps(&mut reopened), [0, 25, 50, 75, 85, 90, 95], "{store:?}");
        let names: Vec<String> = orbax::blocking::block_on(orbax::layout::list_steps(store.as_ref(), "run"))
            .unwrap()
            .into_iter()
            .map(|d| d.dir)
            .collect();
        assert_eq!(names, ["0", "25", "50", "75", "85", "90", "95"], "{store:?}: no leftovers");
        for step in [0, 50, 95] {
            assert_eq!(reopened.load(Some(step), &LoadOptions::default()).unwrap(), state(step, 2, 16));
        }
        assert_eq!(reopened.latest().unwrap().unwrap().step, 95);
    }
}

#[test]
fn best_n_by_metrics_preemption_and_step_names() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let options = CheckpointerOptions {
        save_decision: Arc::new(AnySave(vec![Box::new(FixedInterval(10)), Box::new(Preemption)])),
        preservation: Arc::new(BestN {
            metric: "loss".into(),
            mode: MetricMode::Min,
            n: Some(2),
            keep_checkpoints_without_metrics: true,
        }),
        step_name_format: StepNameFormat { prefix: Some("ckpt".into()), fixed_length: Some(4) },
        custom_metadata: Some(json!({"run": "best"}).as_object().unwrap().clone()),
        ..Default::default()
    };
    let mut ckpt = Checkpointer::open(store.clone(), "root", options).unwrap();
    let losses = [0.9, 0.3, 0.5, 0.1, 0.7, 0.2];
    for step in 0..60u64 {
        let metrics = (step % 10 == 0 && step != 20).then(|| json!({"loss": losses[step as usize / 10]}));
        let args = StepSave {
            metrics,
            custom_metadata: json!({"s": step}).as_object().unwrap().clone(),
            ..Default::default()
        };
        ckpt.save_async(step, &state(step, 1, 4), args).unwrap();
    }
    ckpt.preemption_flag().store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(ckpt.save(63, &state(63, 1, 4), StepSave::default()).unwrap(), "a raised preemption flag saves");
    // Best two by loss (30: 0.1, 50: 0.2), plus 20 and 63 (no metrics).
    assert_eq!(steps(&mut ckpt), [20, 30, 50, 63]);
    let dirs: Vec<String> = ckpt.checkpoints().unwrap().iter().map(|c| c.dir.clone()).collect();
    assert_eq!(dirs, ["ckpt_0020", "ckpt_0030", "ckpt_0050", "ckpt_0063"]);
    assert_eq!(ckpt.checkpoints().unwrap()[1].metrics, Some(json!({"loss": 0.1})));
    assert_eq!(ckpt.root_metadata().unwrap(), json!({"run": "best"}).as_object().cloned());
    let step30 = ckpt.checkpoint(Some(30)).unwrap();
    assert_eq!(step30.metadata().unwrap().custom_metadata["s"], 30);
    // Saving a step again is refused unless overwriting; deleting works.
    let e = ckpt.save(30, &state(1, 1, 4), StepSave { force: true, ..Default::default() }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    ckpt.save(30, &state(1, 1, 4), StepSave { force: true, overwrite: true, ..Default::default() }).unwrap();
    assert_eq!(ckpt.load(Some(30), &LoadOptions::default()).unwrap(), state(1, 1, 4));
    ckpt.delete(63).unwrap();
    assert_eq!(ckpt.latest().unwrap().unwrap().step, 50);
    let e = ckpt.load(Some(63), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no committed step 63"), "{e}");
    ckpt.close().unwrap();
}

#[test]
fn a_failed_background_save_surfaces_on_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
    let mut ckpt = Checkpointer::open(store, "run", CheckpointerOptions::default()).unwrap();
    // An item name Orbax cannot store fails inside the background save.
    let items = vec![("_bad".to_string(), orbax::Checkpointable::Json(json!(1)))];
    assert!(ckpt.save_checkpointables_async(1, &items, StepSave { force: true, ..Default::default() }).unwrap());
    let e = ckpt.wait().unwrap_err();
    assert!(e.to_string().contains("not a valid item name"), "{e}");
    assert!(ckpt.checkpoints().unwrap().is_empty());
    ckpt.close().unwrap();
}

const CHILD_ENV: &str = "ORBAX_TRAINING_CHILD_ROOT";
const CHILD_UNTIL_ENV: &str = "ORBAX_TRAINING_CHILD_UNTIL";
const LEAVES: usize = 8;
const ELEMENTS: usize = 16 * 1024;

fn crash_options() -> CheckpointerOptions {
    CheckpointerOptions {
        save_decision: Arc::new(FixedInterval(1)),
        preservation: Arc::new(LatestN(3)),
        cleanup_tmp_directories: true,
        ..Default::default()
    }
}

/// The training loop the child process runs: resume from the latest step
/// (checking its state), then save every step in the background.
fn child_loop(root: &Path, until: u64) {
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(root));
    let mut ckpt = Checkpointer::open(store, "run", crash_options()).unwrap();
    let start = match ckpt.latest().unwrap() {
        Some(latest) => {
            let loaded = ckpt.load(None, &LoadOptions::default()).unwrap();
            assert_eq!(loaded, state(latest.step, LEAVES, ELEMENTS), "resumed state of step {}", latest.step);
            println!("resumed {}", latest.step);
            latest.step + 1
        }
        None => {
            println!("resumed none");
            0
        }
    };
    for step in start..until {
        ckpt.save_async(step, &state(step, LEAVES, ELEMENTS), StepSave::default()).unwrap();
    }
    ckpt.close().unwrap();
    println!("done");
}

/// A training process is killed (SIGKILL) at various points and restarted:
/// every restart resumes from the last committed step, whose state is
/// intact, and no committed step is lost except by the policy.
#[test]
fn killed_training_resumes_from_the_last_committed_step() {
    if let (Some(root), Some(until)) = (std::env::var_os(CHILD_ENV), std::env::var_os(CHILD_UNTIL_ENV)) {
        return child_loop(Path::new(&root), until.to_str().unwrap().parse().unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let spawn = |until: u64| {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "killed_training_resumes_from_the_last_committed_step",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(CHILD_UNTIL_ENV, until.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The child's lines up to the one saying where it resumed; the rest stay in the pipe.
    let resumed_line = |child: &mut std::process::Child| {
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // The test harness may print "test <name> ... " on the same line.
        while !line.contains("resumed ") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the child ended without saying where it resumed");
        }
        let at = line.find("resumed ").unwrap();
        (line[at..].trim_end().to_string(), out)
    };
    let committed = || {
        let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
        let ckpt = Checkpointer::open(store, "run", CheckpointerOptions::default());
        let mut ckpt = ckpt.unwrap();
        let list = steps(&mut ckpt);
        for &step in &list {
            let loaded = ckpt.load(Some(step), &LoadOptions::default()).unwrap();
            assert_eq!(loaded, state(step, LEAVES, ELEMENTS), "committed step {step} is intact");
        }
        list
    };
    let mut latest: Option<u64> = None;
    let mut kills_mid_run = 0;
    for round in 0..8u64 {
        let mut child = spawn(1_000_000);
        let (line, _out) = resumed_line(&mut child);
        let expected = latest.map_or("resumed none".to_string(), |s| format!("resumed {s}"));
        assert_eq!(line, expected, "round {round}: the restart resumes from the last committed step");
        std::thread::sleep(Duration::from_millis(40 + 60 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let list = committed();
        assert!(list.len() <= 4, "round {round}: the policy keeps 3 (a 4th only until its deletion): {list:?}");
        assert!(list.windows(2).all(|w| w[1] == w[0] + 1), "round {round}: consecutive steps kept: {list:?}");
        let now = list.last().copied();
        assert!(now >= latest, "round {round}: committed step {latest:?} was lost (now {now:?})");
        if now > latest {
            kills_mid_run += 1;
        }
        latest = now;
    }
    assert!(kills_mid_run > 0, "the child must commit some steps before it is killed");
    // A final run to completion resumes once more and ends cleanly.
    let until = latest.map_or(0, |s| s + 1) + 3;
    let mut child = spawn(until);
    let (line, out) = resumed_line(&mut child);
    assert_eq!(line, latest.map_or("resumed none".to_string(), |s| format!("resumed {s}")));
    let rest: Vec<String> = out.lines().map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    assert!(rest.iter().any(|l| l == "done"), "{rest:?}");
    assert_eq!(committed(), [until - 3, until - 2, until - 1]);
}
