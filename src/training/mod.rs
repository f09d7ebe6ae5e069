//! Checkpointing in a training loop, like Orbax's v1
//! `orbax.checkpoint.training.Checkpointer` (a `CheckpointManager` below):
//! one step directory per saved step under a root, saves in the background
//! decided by a [`SaveDecisionPolicy`], old steps deleted after each commit
//! as a [`PreservationPolicy`] decides, resume from [`Checkpointer::latest`].
//!
//! The root is what Orbax writes: step directories named by a
//! [`StepNameFormat`], each a checkpoint with the items (`state` for
//! [`Checkpointer::save`]) plus a JSON item `metrics` when metrics are
//! given, and `metadata/_ROOT_METADATA` with the root's custom metadata.
//! Orbax's `CheckpointManager` and `training.Checkpointer` open roots we
//! write, and we open theirs.

pub mod preservation;
pub mod save_decision;
mod step_name;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::api::{blocking, list_checkpoints, Checkpoint, Checkpointable, LoadOptions};
use crate::error::{Error, Result};
use crate::layout::{list_steps, TMP_MARKER};
use crate::pyjson::{to_string, JsonStyle};
use crate::pytree::PyTree;
use crate::save::{now_ns, save_step, SaveOptions, TaskHandle};
use crate::storage::{join_key, PutMode, Storage, StorageError};
use crate::ErrorKind;

pub use preservation::PreservationPolicy;
pub use save_decision::{DecisionContext, SaveDecisionPolicy};
pub use step_name::StepNameFormat;

/// The root metadata file, relative to the root (`CheckpointManager`'s `metadata/_ROOT_METADATA`).
pub const ROOT_METADATA_FILE: &str = "metadata/_ROOT_METADATA";

/// A committed step, as policies and callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The step.
    pub step: u64,
    /// Its directory name under the root.
    pub dir: String,
    /// When it was saved (commit time read from `_CHECKPOINT_METADATA`, or
    /// the save's start for steps saved by this process), ns since the epoch.
    pub time_ns: i64,
    /// Its metrics, if saved with any.
    pub metrics: Option<Value>,
}

/// Configuration of a [`Checkpointer`].
#[derive(Debug, Clone)]
pub struct CheckpointerOptions {
    /// When to save; Orbax's default saves initially, continuously and on preemption.
    pub save_decision: Arc<dyn SaveDecisionPolicy>,
    /// What to keep; the default keeps everything.
    pub preservation: Arc<dyn PreservationPolicy>,
    /// How step directories are named.
    pub step_name_format: StepNameFormat,
    /// Custom metadata of the whole root, written once to `metadata/_ROOT_METADATA`.
    pub custom_metadata: Option<Map<String, Value>>,
    /// Delete leftovers of unfinished saves when opening.
    pub cleanup_tmp_directories: bool,
    /// Layout of each step (OCDBT, zarr version, ...); `overwrite` and
    /// `custom_metadata` are set per save.
    pub save_options: SaveOptions,
}

impl Default for CheckpointerOptions {
    fn default() -> Self {
        CheckpointerOptions {
            save_decision: Arc::new(save_decision::default_policy()),
            preservation: Arc::new(preservation::PreserveAll),
            step_name_format: StepNameFormat::default(),
            custom_metadata: None,
            cleanup_tmp_directories: false,
            save_options: SaveOptions::default(),
        }
    }
}

/// Per-save arguments of [`Checkpointer::save`].
#[derive(Debug, Clone, Default)]
pub struct StepSave {
    /// Save whatever the save-decision policy says.
    pub force: bool,
    /// Replace an existing checkpoint of the step (otherwise an error).
    pub overwrite: bool,
    /// Metrics of the step (saved as the JSON item `metrics`; [`preservation::BestN`] ranks by them).
    pub metrics: Option<Value>,
    /// Custom metadata of the step (`_CHECKPOINT_METADATA.custom_metadata`).
    pub custom_metadata: Map<String, Value>,
}

/// Manages the steps of one root in a training loop.
///
/// It is a blocking API for the training loop's thread: its methods return
/// an error (rather than block a runtime thread) when called from async
/// code. At most one save runs at a time; a save's errors surface on the
/// next [`Checkpointer::save`], [`Checkpointer::wait`] or
/// [`Checkpointer::close`]. Dropping a `Checkpointer` waits for the save in
/// flight and prints its error, if any, on stderr; call `close` to get it.
///
/// In a multi-process job every process opens a `Checkpointer` on the same
/// root with [`SaveOptions::multiprocess`](crate::SaveOptions::multiprocess)
/// set in [`CheckpointerOptions::save_options`] and calls the same methods
/// for the same steps; each step is saved by all together (see
/// [`crate::multiprocess`]), and process 0 alone writes the root metadata,
/// cleans up unfinished saves and deletes steps. The save decision must come
/// out the same in every process: use step-based policies (fixed interval,
/// specific steps, initial) or raise the preemption flag at the same step
/// everywhere; time-based decisions may differ between processes and then
/// stall the save at a barrier until it times out.
///
/// ```no_run
/// use std::sync::Arc;
/// use orbax::storage::{LocalFileSystem, Storage};
/// use orbax::training::{preservation::LatestN, save_decision::FixedInterval, Checkpointer, CheckpointerOptions, StepSave};
/// # fn train(state: &mut orbax::PyTree) {}
/// let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new("/ckpts"));
/// let options = CheckpointerOptions {
///     save_decision: Arc::new(FixedInterval(1000)),
///     preservation: Arc::new(LatestN(3)),
///     ..Default::default()
/// };
/// let mut ckpt = Checkpointer::open(store, "run1", options)?;
/// let (mut state, start) = match ckpt.latest()? {
///     Some(latest) => (ckpt.load(Some(latest.step), &Default::default())?, latest.step + 1),
///     None => (orbax::PyTree::None, 0),
/// };
/// for step in start..10_000 {
///     train(&mut state);
///     ckpt.save_async(step, &state, StepSave::default())?;
/// }
/// ckpt.close()?;
/// # Ok::<(), orbax::Error>(())
/// ```
#[derive(Debug)]
pub struct Checkpointer {
    store: Arc<dyn Storage>,
    root: String,
    options: CheckpointerOptions,
    checkpoints: Vec<CheckpointInfo>,
    /// The save in flight; it returns the committed steps after its garbage collection.
    in_flight: Option<TaskHandle<Vec<CheckpointInfo>>>,
    /// The error of a save that finished while nobody was waiting.
    failed: Option<Error>,
    preemption: Arc<AtomicBool>,
}

/// Runs a future of this crate from the training loop's thread.
fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::InvalidArgument(
            "training::Checkpointer is a blocking API; call it outside async code (e.g. in spawn_blocking)".into(),
        ));
    }
    blocking::block_on(future)
}

impl Checkpointer {
    /// Opens (or starts) the root at `root` in `store`: writes the root
    /// metadata if given and absent, removes leftovers of unfinished saves
    /// if asked, and reads the committed steps.
    pub fn open(store: Arc<dyn Storage>, root: &str, options: CheckpointerOptions) -> Result<Checkpointer> {
        let root = root.trim_end_matches('/').to_string();
        let mut checkpointer = Checkpointer {
            store,
            root,
            options,
            checkpoints: Vec::new(),
            in_flight: None,
            failed: None,
            preemption: Arc::new(AtomicBool::new(false)),
        };
        block_on(checkpointer.initialize())?;
        Ok(checkpointer)
    }

    /// Whether this process manages the root: always, unless it is a
    /// non-primary process of a multi-process job, which saves its share of
    /// each step but leaves root metadata, cleanup and deletions to process 0.
    fn is_primary(&self) -> bool {
        self.options.save_options.multiprocess.as_ref().is_none_or(|mp| mp.is_primary())
    }

    async fn initialize(&mut self) -> Result<()> {
        if !self.is_primary() {
            self.checkpoints = list_root(&self.store, &self.root, Some(&self.options.step_name_format)).await?;
            return Ok(());
        }
        if let Some(custom) = &self.options.custom_metadata {
            let key = join_key(&self.root, ROOT_METADATA_FILE);
            let document = json!({ "internal_metadata": {}, "custom_metadata": custom });
            let text = Bytes::from(to_string(&document, JsonStyle::Python));
            match self.store.put(&key, text, PutMode::Create).await {
                Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.options.cleanup_tmp_directories {
            cleanup_unfinished(&self.store, &self.root).await?;
        }
        self.checkpoints = list_root(&self.store, &self.root, Some(&self.options.step_name_format)).await?;
        Ok(())
    }

    /// The root's key prefix in the store.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The flag a preemption handler raises (a relaxed atomic store is safe
    /// in a signal handler); [`save_decision::Preemption`] then saves.
    pub fn preemption_flag(&self) -> Arc<AtomicBool> {
        self.preemption.clone()
    }

    /// Takes the outcome of a save that has finished, without blocking.
    fn collect_finished(&mut self) {
        if self.in_flight.as_ref().is_some_and(TaskHandle::is_finished) {
            if let Err(e) = self.wait_in_flight() {
                self.failed = Some(e);
            }
        }
    }

    /// Waits for the save in flight and takes its outcome.
    fn wait_in_flight(&mut self) -> Result<()> {
        let Some(handle) = self.in_flight.take() else { return Ok(()) };
        match handle.wait() {
            Ok(checkpoints) => {
                self.checkpoints = checkpoints;
                Ok(())
            }
            Err(e) => {
                // The save or its garbage collection stopped part-way: what
                // is on storage is the truth.
                if let Ok(list) = block_on(list_root(&self.store, &self.root, Some(&self.options.step_name_format))) {
                    self.checkpoints = list;
                }
                Err(e)
            }
        }
    }

    /// Waits for the save in flight; returns its error, or that of an
    /// earlier save nobody waited for.
    pub fn wait(&mut self) -> Result<()> {
        let result = self.wait_in_flight();
        match self.failed.take() {
            Some(e) => Err(e),
            None => result,
        }
    }

    /// Whether a save is still running.
    pub fn is_saving_in_progress(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// The committed steps, by step (a save still running is not among them).
    pub fn checkpoints(&mut self) -> Result<&[CheckpointInfo]> {
        self.collect_finished();
        Ok(&self.checkpoints)
    }

    /// The latest committed step.
    pub fn latest(&mut self) -> Result<Option<CheckpointInfo>> {
        Ok(self.checkpoints()?.last().cloned())
    }

    /// The key prefix of a step's directory.
    pub fn step_path(&self, step: u64) -> String {
        match self.checkpoints.iter().find(|c| c.step == step) {
            Some(c) => join_key(&self.root, &c.dir),
            None => join_key(&self.root, &self.options.step_name_format.build_name(step)),
        }
    }

    /// Whether the save-decision policy would save `step` now.
    pub fn should_save(&mut self, step: u64) -> bool {
        self.collect_finished();
        let context = DecisionContext {
            is_saving_in_progress: self.is_saving_in_progress(),
            reached_preemption: self.preemption.load(Ordering::Relaxed),
        };
        let now = CheckpointInfo { step, dir: String::new(), time_ns: now_ns(), metrics: None };
        self.options.save_decision.should_save(&now, &self.checkpoints, &context)
    }

    /// Saves `tree` as the `state` item of `step` if the policy (or
    /// `args.force`) says so, and waits for the commit. Returns whether it saved.
    pub fn save(&mut self, step: u64, tree: &PyTree, args: StepSave) -> Result<bool> {
        let saved = self.save_async(step, tree, args)?;
        self.wait()?;
        Ok(saved)
    }

    /// Like [`Checkpointer::save`], but returns once `tree` is copied; the
    /// commit and garbage collection run in the background.
    pub fn save_async(&mut self, step: u64, tree: &PyTree, args: StepSave) -> Result<bool> {
        self.start_save(step, args, || vec![("state".to_string(), Checkpointable::PyTree(tree.clone()))])
    }

    /// Saves named items as `step` (see [`Checkpointer::save`]).
    pub fn save_checkpointables(
        &mut self,
        step: u64,
        items: &[(String, Checkpointable)],
        args: StepSave,
    ) -> Result<bool> {
        let saved = self.save_checkpointables_async(step, items, args)?;
        self.wait()?;
        Ok(saved)
    }

    /// Saves named items as `step` in the background (see [`Checkpointer::save_async`]).
    pub fn save_checkpointables_async(
        &mut self,
        step: u64,
        items: &[(String, Checkpointable)],
        args: StepSave,
    ) -> Result<bool> {
        self.start_save(step, args, || items.to_vec())
    }

    fn start_save(
        &mut self,
        step: u64,
        args: StepSave,
        capture: impl FnOnce() -> Vec<(String, Checkpointable)>,
    ) -> Result<bool> {
        if !args.force && !self.should_save(step) {
            return Ok(false);
        }
        self.wait()?;
        let path = self.step_path(step);
        if let Some(existing) = self.checkpoints.iter().position(|c| c.step == step) {
            if !args.overwrite {
                return Err(Error::Storage(StorageError::AlreadyExists { key: path }));
            }
            if self.is_primary() {
                block_on(delete_step_dir(&self.store, &path))?;
            }
            self.checkpoints.remove(existing);
        } else {
            block_on(refuse_foreign_step(&self.store, &path))?;
        }
        let items = capture();
        let time_ns = now_ns();
        let dir = crate::storage::key_basename(&path).to_string();
        let save_options =
            SaveOptions { overwrite: true, custom_metadata: args.custom_metadata, ..self.options.save_options.clone() };
        let (store, root, previous) = (self.store.clone(), self.root.clone(), self.checkpoints.clone());
        let preservation = self.options.preservation.clone();
        let metrics = args.metrics;
        let primary = self.is_primary();
        self.in_flight = Some(TaskHandle::spawn(format!("save of {path}"), move || async move {
            save_step(&store, &path, &items, metrics.as_ref(), &save_options).await?;
            let mut all = previous;
            all.push(CheckpointInfo { step, dir, time_ns, metrics });
            all.sort_by_key(|c| c.step);
            if primary {
                collect_garbage(&store, &root, all, preservation.as_ref()).await
            } else {
                Ok(preserved(all, preservation.as_ref()).0)
            }
        }));
        Ok(true)
    }

    /// Loads the PyTree of `step` (`None`: the latest), with `options`
    /// passed to the loader (item choice, and targets where supported).
    pub fn load(&mut self, step: Option<u64>, options: &LoadOptions) -> Result<PyTree> {
        let path = self.existing_step_path(step)?;
        block_on(crate::load_pytree(&self.store, &path, options))
    }

    /// Loads every item of `step` (`None`: the latest).
    pub fn load_checkpointables(
        &mut self,
        step: Option<u64>,
        options: &LoadOptions,
    ) -> Result<Vec<(Option<String>, Checkpointable)>> {
        let path = self.existing_step_path(step)?;
        block_on(crate::load_checkpointables(&self.store, &path, options))
    }

    /// Opens `step` (`None`: the latest) for metadata and partial reads.
    pub fn checkpoint(&mut self, step: Option<u64>) -> Result<Checkpoint> {
        let path = self.existing_step_path(step)?;
        block_on(Checkpoint::open(&self.store, &path, &LoadOptions::default()))
    }

    fn existing_step_path(&mut self, step: Option<u64>) -> Result<String> {
        let checkpoints = self.checkpoints()?;
        let found = match step {
            None => checkpoints.last(),
            Some(step) => checkpoints.iter().find(|c| c.step == step),
        };
        let what = match step {
            None => "no committed steps".to_string(),
            Some(step) => format!("no committed step {step}"),
        };
        let dir = found.map(|c| c.dir.clone()).ok_or(Error::NotACheckpoint { path: self.root.clone(), what })?;
        Ok(join_key(&self.root, &dir))
    }

    /// The root's custom metadata (`metadata/_ROOT_METADATA`), if written.
    pub fn root_metadata(&self) -> Result<Option<Map<String, Value>>> {
        block_on(read_root_metadata(&self.store, &self.root))
    }

    /// Deletes `step` (after the save in flight).
    pub fn delete(&mut self, step: u64) -> Result<()> {
        self.wait()?;
        let path = self.existing_step_path(Some(step))?;
        if self.is_primary() {
            block_on(delete_step_dir(&self.store, &path))?;
        }
        self.checkpoints.retain(|c| c.step != step);
        Ok(())
    }

    /// Re-reads the committed steps from storage.
    pub fn reload(&mut self) -> Result<()> {
        self.wait()?;
        self.checkpoints = block_on(list_root(&self.store, &self.root, Some(&self.options.step_name_format)))?;
        Ok(())
    }

    /// Waits for the save in flight and returns its error, if any.
    pub fn close(mut self) -> Result<()> {
        self.wait()
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if self.in_flight.is_none() && self.failed.is_none() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            if let Err(e) = self.wait() {
                eprintln!("orbax: a save of {} failed and the Checkpointer was dropped: {e}", self.root);
            }
        }
        // On a runtime thread the save keeps running; its handle reports its error.
    }
}

/// The committed steps of `root`, by step. With a `format`, only
/// directories named in it count (as in Orbax); otherwise any step name.
pub async fn list_root(
    store: &Arc<dyn Storage>,
    root: &str,
    format: Option<&StepNameFormat>,
) -> Result<Vec<CheckpointInfo>> {
    Ok(list_checkpoints(store, root)
        .await?
        .into_iter()
        .filter(|s| format.is_none_or(|f| f.parse_name(&s.dir.dir) == Some(s.dir.step)))
        .map(|s| CheckpointInfo {
            step: s.dir.step,
            dir: s.dir.dir,
            time_ns: s.time_ns.unwrap_or(0),
            metrics: s.metrics,
        })
        .collect())
}

/// Deletes what `policy` does not preserve among `checkpoints` (committed
/// steps of `root`, by step); returns the kept ones.
pub async fn collect_garbage(
    store: &Arc<dyn Storage>,
    root: &str,
    checkpoints: Vec<CheckpointInfo>,
    policy: &dyn PreservationPolicy,
) -> Result<Vec<CheckpointInfo>> {
    let (kept, doomed) = preserved(checkpoints, policy);
    for checkpoint in doomed {
        delete_step_dir(store, &join_key(root, &checkpoint.dir)).await?;
    }
    Ok(kept)
}

/// Splits `checkpoints` into those `policy` preserves and the others.
fn preserved(
    checkpoints: Vec<CheckpointInfo>,
    policy: &dyn PreservationPolicy,
) -> (Vec<CheckpointInfo>, Vec<CheckpointInfo>) {
    let keep = policy.should_preserve(&checkpoints);
    let (kept, doomed): (Vec<_>, Vec<_>) = checkpoints.into_iter().zip(keep).partition(|(_, keep)| *keep);
    (kept.into_iter().map(|(c, _)| c).collect(), doomed.into_iter().map(|(c, _)| c).collect())
}

/// Deletes a step directory so that no crash leaves a step that looks
/// complete: where prefixes rename atomically it is first renamed to an
/// unfinished-save name, elsewhere its `commit_success.txt` goes first.
pub async fn delete_step_dir(store: &Arc<dyn Storage>, path: &str) -> Result<()> {
    if store.capabilities().atomic_rename {
        let doomed = format!("{path}{TMP_MARKER}-deleting");
        store.delete_prefix(&doomed).await?;
        store.rename_prefix(path, &doomed).await?;
        store.delete_prefix(&doomed).await?;
    } else {
        store.delete(&join_key(path, "commit_success.txt")).await?;
        store.delete_prefix(path).await?;
    }
    Ok(())
}

/// Deletes the leftovers of unfinished saves under `root`: directories with
/// an unfinished-save name, and on stores without atomic rename step
/// directories without `commit_success.txt`. Returns their names.
pub async fn cleanup_unfinished(store: &Arc<dyn Storage>, root: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in list_steps(store.as_ref(), root).await? {
        let path = join_key(root, &dir.dir);
        let leftover = !dir.committed || {
            let opened = Checkpoint::open(store, &path, &LoadOptions::default()).await;
            matches!(opened, Err(e) if e.kind() == ErrorKind::Uncommitted)
        };
        if leftover {
            store.delete_prefix(&path).await?;
            removed.push(dir.dir);
        }
    }
    Ok(removed)
}

/// A new step may replace only the leftovers of an unfinished save at its
/// path, never a checkpoint this root does not list (e.g. one it cannot read).
async fn refuse_foreign_step(store: &Arc<dyn Storage>, path: &str) -> Result<()> {
    let listing = store.list_with_delimiter(path).await?;
    if listing.objects.is_empty() && listing.prefixes.is_empty() {
        return Ok(());
    }
    match Checkpoint::open(store, path, &LoadOptions::default()).await {
        Err(e) if e.kind() == ErrorKind::Uncommitted => Ok(()),
        _ => Err(Error::Storage(StorageError::AlreadyExists { key: path.to_string() })),
    }
}

/// Reads `metadata/_ROOT_METADATA`'s `custom_metadata`.
pub async fn read_root_metadata(store: &Arc<dyn Storage>, root: &str) -> Result<Option<Map<String, Value>>> {
    let key = join_key(root, ROOT_METADATA_FILE);
    let bytes = match store.get(&key).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let document: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Structure { path: key.clone(), what: format!("invalid JSON: {e}") })?;
    match document.get("custom_metadata") {
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        None | Some(Value::Null) => Ok(Some(Map::new())),
        Some(_) => Err(Error::Structure { path: key, what: "custom_metadata is not an object".into() }),
    }
}
