//! An in-memory [`Storage`], for tests and for checkpoints that never touch disk.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::RwLock;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{validate_key, Capabilities, ListResult, ObjectMeta, PutMode, Result, Storage, StorageError};

/// A store that keeps every object in a sorted in-process map.
#[derive(Debug, Default)]
pub struct InMemory {
    objects: RwLock<BTreeMap<String, (Bytes, SystemTime)>>,
}

impl InMemory {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn below(prefix: &str) -> String {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        }
    }
}

#[async_trait]
impl Storage for InMemory {
    async fn get(&self, key: &str) -> Result<Bytes> {
        validate_key(key)?;
        let objects = self.objects.read().expect("lock");
        objects.get(key).map(|(b, _)| b.clone()).ok_or_else(|| StorageError::NotFound { key: key.to_string() })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let data = self.get(key).await?;
        let size = data.len() as u64;
        if range.end > size || range.start > range.end {
            return Err(StorageError::OutOfRange { key: key.to_string(), start: range.start, end: range.end, size });
        }
        Ok(data.slice(range.start as usize..range.end as usize))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        let objects = self.objects.read().expect("lock");
        let (data, modified) = objects.get(key).ok_or_else(|| StorageError::NotFound { key: key.to_string() })?;
        Ok(ObjectMeta { key: key.to_string(), size: data.len() as u64, last_modified: Some(*modified) })
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        validate_key(key)?;
        let mut objects = self.objects.write().expect("lock");
        if mode == PutMode::Create && objects.contains_key(key) {
            return Err(StorageError::AlreadyExists { key: key.to_string() });
        }
        objects.insert(key.to_string(), (data, SystemTime::now()));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.objects.write().expect("lock").remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let below = Self::below(prefix);
        let objects = self.objects.read().expect("lock");
        Ok(objects
            .range(below.clone()..)
            .take_while(|(k, _)| k.starts_with(&below))
            .map(|(k, (d, t))| ObjectMeta { key: k.clone(), size: d.len() as u64, last_modified: Some(*t) })
            .collect())
    }

    async fn list_with_delimiter(&self, prefix: &str) -> Result<ListResult> {
        let below = Self::below(prefix);
        let mut result = ListResult::default();
        for meta in self.list(prefix).await? {
            let rest = &meta.key[below.len()..];
            match rest.find('/') {
                Some(i) => {
                    let sub = format!("{below}{}", &rest[..i]);
                    if result.prefixes.last() != Some(&sub) {
                        result.prefixes.push(sub);
                    }
                }
                None => result.objects.push(meta),
            }
        }
        result.prefixes.dedup();
        Ok(result)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { atomic_rename: true, conditional_create: true, atomic_replace: true }
    }

    async fn replace_prefix(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (Self::below(from), Self::below(to));
        let mut objects = self.objects.write().expect("lock");
        let old: Vec<String> =
            objects.range(to.clone()..).take_while(|(k, _)| k.starts_with(&to)).map(|(k, _)| k.clone()).collect();
        let new: Vec<String> =
            objects.range(from.clone()..).take_while(|(k, _)| k.starts_with(&from)).map(|(k, _)| k.clone()).collect();
        if new.is_empty() {
            return Err(StorageError::NotFound { key: from });
        }
        for key in old {
            objects.remove(&key);
        }
        for key in new {
            let value = objects.remove(&key).expect("listed");
            objects.insert(format!("{to}{}", &key[from.len()..]), value);
        }
        Ok(())
    }

    async fn rename_prefix(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (Self::below(from), Self::below(to));
        let mut objects = self.objects.write().expect("lock");
        let moved: Vec<String> =
            objects.range(from.clone()..).take_while(|(k, _)| k.starts_with(&from)).map(|(k, _)| k.clone()).collect();
        if moved.is_empty() {
            return Err(StorageError::NotFound { key: from });
        }
        for key in moved {
            let value = objects.remove(&key).expect("listed");
            objects.insert(format!("{to}{}", &key[from.len()..]), value);
        }
        Ok(())
    }
}
