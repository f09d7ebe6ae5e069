//! Saves and loads that run in the background, like Orbax's
//! `save_pytree_async` / `load_pytree_async`.
//!
//! A background save first *captures* the data: it copies what it will
//! write before returning, so the caller may change or drop its own tree
//! right away. The copy is all the caller waits for (see `BENCHMARKS.md`);
//! encoding, writing and the commit run on the crate's shared runtime.
//!
//! The result arrives on a [`TaskHandle`]. Errors are never swallowed: they
//! are returned by [`TaskHandle::wait`] / [`TaskHandle::join`], and if the
//! handle was dropped first the task still runs to the end and prints its
//! error on stderr. Dropping a handle never cancels the work; a process that
//! exits before a save commits leaves only an unfinished save behind
//! (nothing that looks complete), so wait for the handle before exiting.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::api::{blocking, Checkpointable, LoadOptions};
use crate::error::{Error, Result};
use crate::pytree::PyTree;
use crate::save::{save_checkpointables, save_pytree, SaveOptions};
use crate::storage::Storage;

/// The pending result of work running in the background.
#[must_use = "a background save's errors surface only on its handle (or on stderr once dropped)"]
#[derive(Debug)]
pub struct TaskHandle<T> {
    what: String,
    thread: Option<std::thread::JoinHandle<()>>,
    result: oneshot::Receiver<Result<T>>,
}

impl<T: Send + 'static> TaskHandle<T> {
    /// Runs the future `work` makes on a thread of its own, driven by the
    /// crate's shared runtime (the future need not be `Send`: it never
    /// leaves that thread). `what` names the work in messages ("save of run/7").
    pub(crate) fn spawn<F, W>(what: String, work: W) -> TaskHandle<T>
    where
        F: Future<Output = Result<T>>,
        W: FnOnce() -> F + Send + 'static,
    {
        let (sender, result) = oneshot::channel();
        let name = what.clone();
        let spawned = std::thread::Builder::new().name("orbax-background".into()).spawn(move || {
            if let Err(Err(e)) = sender.send(blocking::block_on(work())) {
                eprintln!("orbax: the {name} failed after its handle was dropped: {e}");
            }
        });
        match spawned {
            Ok(thread) => TaskHandle { what, thread: Some(thread), result },
            Err(e) => {
                // The sender went into the closure that never ran: report the
                // failure through a fresh channel.
                let (sender, result) = oneshot::channel();
                let reason = format!("could not start a thread: {e}");
                let _ = sender.send(Err(Error::Background { what: what.clone(), reason }));
                TaskHandle { what, thread: None, result }
            }
        }
    }

    /// Whether the work has finished (successfully or not); never blocks.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(std::thread::JoinHandle::is_finished)
    }

    /// What the work is, e.g. `save of run/7`.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Waits for the result from async code.
    pub async fn join(self) -> Result<T> {
        let what = self.what;
        self.result.await.unwrap_or_else(|_| Err(Error::Background { what, reason: "it panicked".into() }))
    }

    /// Waits for the result from synchronous code. Returns an error instead
    /// of blocking when called on a Tokio runtime thread (use [`TaskHandle::join`] there).
    pub fn wait(self) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InvalidArgument(format!(
                "waiting for the {} would block a Tokio runtime thread; use join().await",
                self.what
            )));
        }
        let TaskHandle { what, thread, mut result } = self;
        let panicked = thread.is_some_and(|t| t.join().is_err());
        match result.try_recv() {
            Ok(outcome) => outcome,
            Err(_) => {
                let reason = if panicked { "it panicked" } else { "it stopped without a result" };
                Err(Error::Background { what, reason: reason.into() })
            }
        }
    }
}

/// Like [`save_pytree`], but returns once `tree` is copied; the save runs
/// in the background and its outcome arrives on the handle.
pub fn save_pytree_async(store: &Arc<dyn Storage>, path: &str, tree: &PyTree, options: &SaveOptions) -> TaskHandle<()> {
    let (store, path, tree, options) = (store.clone(), path.to_string(), tree.clone(), options.clone());
    TaskHandle::spawn(
        format!("save of {path}"),
        move || async move { save_pytree(&store, &path, &tree, &options).await },
    )
}

/// Like [`save_checkpointables`], but returns once `items` are copied.
pub fn save_checkpointables_async(
    store: &Arc<dyn Storage>,
    path: &str,
    items: &[(String, Checkpointable)],
    options: &SaveOptions,
) -> TaskHandle<()> {
    let (store, path, items, options) = (store.clone(), path.to_string(), items.to_vec(), options.clone());
    TaskHandle::spawn(format!("save of {path}"), move || async move {
        save_checkpointables(&store, &path, &items, &options).await
    })
}

/// Like [`crate::load_pytree`], running in the background.
pub fn load_pytree_async(store: &Arc<dyn Storage>, path: &str, options: &LoadOptions) -> TaskHandle<PyTree> {
    let (store, path, options) = (store.clone(), path.to_string(), options.clone());
    TaskHandle::spawn(
        format!("load of {path}"),
        move || async move { crate::load_pytree(&store, &path, &options).await },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::InMemory;
    use crate::{Array, DType, ErrorKind};

    fn tree(v: f32) -> PyTree {
        let data: Vec<u8> = (0..64).flat_map(|i| (v + i as f32).to_le_bytes()).collect();
        PyTree::Dict(vec![("w".into(), PyTree::Array(Array::new(DType::Float32, vec![64], data).unwrap()))])
    }

    #[test]
    fn save_then_load_in_background() {
        let store: Arc<dyn Storage> = Arc::new(InMemory::new());
        let mut original = tree(1.0);
        let handle = save_pytree_async(&store, "ck", &original, &SaveOptions::default());
        // The caller may change its tree at once: the save wrote the captured copy.
        original = tree(2.0);
        handle.wait().unwrap();
        let loaded = load_pytree_async(&store, "ck", &LoadOptions::default()).wait().unwrap();
        assert_eq!(loaded, tree(1.0));
        assert_ne!(loaded, original);
    }

    #[test]
    fn errors_surface_on_the_handle() {
        let store: Arc<dyn Storage> = Arc::new(InMemory::new());
        save_pytree_async(&store, "ck", &tree(1.0), &SaveOptions::default()).wait().unwrap();
        let handle = save_pytree_async(&store, "ck", &tree(1.0), &SaveOptions::default());
        let e = handle.wait().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        let e = load_pytree_async(&store, "missing", &LoadOptions::default()).wait().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn wait_refuses_to_block_a_runtime_thread() {
        let store: Arc<dyn Storage> = Arc::new(InMemory::new());
        let result = blocking::block_on(async {
            let handle = save_pytree_async(&store, "ck", &tree(1.0), &SaveOptions::default());
            let e = save_pytree_async(&store, "ck2", &tree(1.0), &SaveOptions::default()).wait().unwrap_err();
            assert!(e.to_string().contains("join().await"), "{e}");
            handle.join().await
        });
        result.unwrap();
    }
}
