//! The key-value view zarr arrays are read through.
//!
//! An Orbax item stores its arrays either inside one OCDBT database
//! ([`crate::ocdbt::Database`]) or as plain files below the item directory
//! ([`DirectoryKv`]). Both implement [`KvSource`], so the zarr layer does not
//! know which one it reads.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::ocdbt::OcdbtError;
use crate::storage::{join_key, Storage, StorageError};
use crate::ErrorKind;

/// Errors of a key-value source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// From a plain storage directory.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// From an OCDBT database.
    #[error(transparent)]
    Ocdbt(#[from] OcdbtError),
}

impl KvError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KvError::Storage(e) => e.kind(),
            KvError::Ocdbt(e) => e.kind(),
        }
    }
}

/// Read access to values by key. A missing key is `Ok(None)`, not an error.
#[async_trait]
pub trait KvSource: Send + Sync + std::fmt::Debug {
    /// The whole value of `key`.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError>;

    /// `range` of the value of `key`.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, KvError>;

    /// The length of the value of `key`, without reading it.
    async fn value_len(&self, key: &str) -> Result<Option<u64>, KvError>;

    /// Several whole values; implementations batch and coalesce the reads.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, KvError>;

    /// Every key that starts with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, KvError>;

    /// Where `key` lives, for error messages (e.g. `ckpt/state/a/zarr.json`
    /// or `ckpt/state (OCDBT) key a/zarr.json`).
    fn describe(&self, key: &str) -> String;
}

/// Keys as files below a storage prefix: the `use_ocdbt=False` layout.
#[derive(Debug, Clone)]
pub struct DirectoryKv {
    store: Arc<dyn Storage>,
    prefix: String,
}

impl DirectoryKv {
    /// Keys resolve to `prefix/<key>` in `store`.
    pub fn new(store: Arc<dyn Storage>, prefix: &str) -> Self {
        DirectoryKv { store, prefix: prefix.trim_end_matches('/').to_string() }
    }
}

fn missing_is_none<T>(r: Result<T, StorageError>) -> Result<Option<T>, KvError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl KvSource for DirectoryKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        missing_is_none(self.store.get(&join_key(&self.prefix, key)).await)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, KvError> {
        missing_is_none(self.store.get_range(&join_key(&self.prefix, key), range).await)
    }

    async fn value_len(&self, key: &str) -> Result<Option<u64>, KvError> {
        missing_is_none(self.store.head(&join_key(&self.prefix, key)).await.map(|m| m.size))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, KvError> {
        let reads = keys.iter().map(|k| self.get(k));
        futures::future::try_join_all(reads).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let base = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let objects = self.store.list(&join_key(&self.prefix, dir)).await?;
        Ok(objects.into_iter().map(|o| o.key[base..].to_string()).filter(|k| k.starts_with(prefix)).collect())
    }

    fn describe(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }
}
