//! Storage for [orbax-rs](https://github.com/orbax-rs/orbax-rs): bytes by
//! key, ranged reads, listing and the primitives atomic commit needs.
//!
//! The trait is shaped like an object store, not a filesystem: keys are
//! `/`-separated strings relative to the store's root, there are no
//! directories (a "directory" is a key prefix), objects are written whole,
//! and ranged reads are the primary way to read. That is what S3, GCS and
//! Azure offer, so cloud backends (in `backends/`) implement it directly,
//! while the local filesystem and memory stores here implement the same
//! contract. Everything above this layer (OCDBT, zarr, Orbax metadata) only
//! sees this trait.
//!
//! Keys are validated before any backend sees them ([`validate_key`]): a key
//! that came from checkpoint metadata can never name something outside the
//! store's root.

#![deny(missing_docs)]

pub mod buffer;
mod error_kind;
mod fs;
mod memory;
pub mod remote;

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use error_kind::ErrorKind;

pub use fs::LocalFileSystem;
pub use memory::InMemory;

/// Ranges closer than this many bytes are fetched with one request by
/// [`Storage::get_ranges`]'s default implementation.
pub const COALESCE_GAP: u64 = 1024 * 1024;

/// Errors of the storage layer. Every variant names the key it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist.
    #[error("{key}: not found")]
    NotFound {
        /// The key that was asked for.
        key: String,
    },
    /// A conditional create found the object already present.
    #[error("{key}: already exists")]
    AlreadyExists {
        /// The key that was to be created.
        key: String,
    },
    /// A ranged read went past the end of the object.
    #[error("{key}: bytes {start}..{end} requested but the object has only {size} bytes")]
    OutOfRange {
        /// The object.
        key: String,
        /// First byte requested.
        start: u64,
        /// One past the last byte requested.
        end: u64,
        /// The object's actual size.
        size: u64,
    },
    /// The key is malformed or would escape the store's root.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The backend cannot perform this operation.
    #[error("{operation} is not supported by {store}")]
    NotSupported {
        /// The operation, e.g. `"rename"`.
        operation: &'static str,
        /// The store's description.
        store: String,
    },
    /// A local I/O error.
    #[error("{key}: {source}")]
    Io {
        /// The object or prefix involved.
        key: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error reported by a remote backend.
    #[error("{key}: {source}")]
    Backend {
        /// The object or prefix involved.
        key: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::NotFound { .. } => ErrorKind::NotFound,
            StorageError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            StorageError::OutOfRange { .. } => ErrorKind::Truncated,
            StorageError::InvalidKey { .. } => ErrorKind::UnsafePath,
            StorageError::NotSupported { .. } => ErrorKind::Unsupported,
            StorageError::Io { .. } | StorageError::Backend { .. } => ErrorKind::Io,
        }
    }
}

/// Result type of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What a listing or `head` says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The full key, relative to the store's root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, where the backend reports one.
    pub last_modified: Option<SystemTime>,
}

/// One level of a listing: the objects directly under a prefix and the
/// "sub-directories" (common prefixes) below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListResult {
    /// Objects whose key is `prefix/<name>` with no further `/`.
    pub objects: Vec<ObjectMeta>,
    /// Keys `prefix/<name>` that have objects below them, without a trailing `/`.
    pub prefixes: Vec<String>,
}

/// How [`Storage::put`] treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it.
    Overwrite,
    /// Fail with [`StorageError::AlreadyExists`] if it exists (put-if-absent).
    Create,
}

/// What a backend can guarantee; the commit protocol chooses by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// [`Storage::rename_prefix`] atomically renames a whole prefix (POSIX directories).
    pub atomic_rename: bool,
    /// [`PutMode::Create`] is enforced by the backend, not emulated.
    pub conditional_create: bool,
    /// [`Storage::replace_prefix`] swaps a prefix's contents atomically.
    pub atomic_replace: bool,
}

/// Writes one object in pieces (multipart upload on object stores, a
/// temporary file on disk). Nothing is visible under the key until
/// [`finish`](ObjectWriter::finish) succeeds; dropping the writer without
/// finishing leaves no object.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// Makes the object visible, atomically, with everything written so far.
    async fn finish(self: Box<Self>) -> Result<()>;

    /// Bytes written so far.
    fn written(&self) -> u64;
}

/// The [`ObjectWriter`] of stores without a streaming upload: collects the
/// pieces and puts the object whole on `finish`.
pub struct BufferedWriter {
    store: Arc<dyn Storage>,
    key: String,
    parts: Vec<Bytes>,
    written: u64,
}

impl BufferedWriter {
    /// A writer that will put `key` into `store`.
    pub fn new(store: Arc<dyn Storage>, key: &str) -> Self {
        BufferedWriter { store, key: key.to_string(), parts: Vec::new(), written: 0 }
    }
}

/// A writer for `key`: the store's streaming writer where it has one
/// ([`Storage::put_writer`]), otherwise a [`BufferedWriter`].
pub async fn object_writer(store: &Arc<dyn Storage>, key: &str) -> Result<Box<dyn ObjectWriter>> {
    match store.put_writer(key).await {
        Err(StorageError::NotSupported { .. }) => {
            validate_key(key)?;
            Ok(Box::new(BufferedWriter::new(store.clone(), key)))
        }
        other => other,
    }
}

#[async_trait]
impl ObjectWriter for BufferedWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        self.parts.push(data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        let data = match self.parts.len() {
            1 => self.parts.into_iter().next().expect("one part"),
            _ => Bytes::from(self.parts.concat()),
        };
        self.store.put(&self.key, data, PutMode::Overwrite).await
    }

    fn written(&self) -> u64 {
        self.written
    }
}

/// An object-store-shaped key-value storage.
///
/// Required methods are the primitives every backend has; [`get_ranges`]
/// has a coalescing default that backends may override.
///
/// [`get_ranges`]: Storage::get_ranges
#[async_trait]
pub trait Storage: Debug + Send + Sync {
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// Reads `range` of an object. Reading past its end is
    /// [`StorageError::OutOfRange`], never a short read.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// Reads several ranges of one object, in the order given.
    ///
    /// The default merges ranges that lie within [`COALESCE_GAP`] of each
    /// other into one [`get_range`](Storage::get_range) call and slices the
    /// result.
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let merged = coalesce_ranges(ranges, COALESCE_GAP);
        let mut fetched = Vec::with_capacity(merged.len());
        for range in &merged {
            fetched.push(self.get_range(key, range.clone()).await?);
        }
        Ok(slice_coalesced(ranges, &merged, &fetched))
    }

    /// Size and modification time of an object.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Writes a whole object atomically: readers see the old object or the
    /// new one, never a mix.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()>;

    /// A writer that streams one object into place (see [`ObjectWriter`]).
    /// Stores without streaming uploads return [`StorageError::NotSupported`]
    /// (the default); use [`object_writer`], which falls back to buffering.
    async fn put_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Err(StorageError::NotSupported { operation: "streaming write", store: format!("{self:?} (for {key})") })
    }

    /// Deletes an object. Deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Deletes every object below `prefix/`. The default lists and deletes
    /// one by one; backends override it with bulk deletes.
    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        for object in self.list(prefix).await? {
            self.delete(&object.key).await?;
        }
        Ok(())
    }

    /// Every object below `prefix/` (all levels), sorted by key. An empty
    /// prefix lists the whole store.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// The objects and sub-prefixes directly below `prefix/`, each sorted.
    async fn list_with_delimiter(&self, prefix: &str) -> Result<ListResult>;

    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Atomically replaces everything below `to/` with what is below `from/`:
    /// a reader sees the old objects or the new ones, never neither. Only
    /// backends with [`Capabilities::atomic_replace`] implement it.
    async fn replace_prefix(&self, from: &str, to: &str) -> Result<()> {
        let _ = to;
        Err(StorageError::NotSupported { operation: "atomic replace", store: format!("{self:?} (for {from})") })
    }

    /// Atomically renames every object below `from/` to the same name below
    /// `to/`. Only backends with [`Capabilities::atomic_rename`] implement it.
    async fn rename_prefix(&self, from: &str, to: &str) -> Result<()> {
        let _ = to;
        Err(StorageError::NotSupported { operation: "rename", store: format!("{self:?} (for {from})") })
    }
}

/// Checks that `key` is a relative, `/`-separated key that cannot escape the
/// store's root: not empty, no leading `/`, no `.` or `..` segment, no
/// backslash and no NUL.
pub fn validate_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        Some("empty key")
    } else if key.starts_with('/') {
        Some("absolute path")
    } else if key.contains('\0') {
        Some("NUL byte")
    } else if key.contains('\\') {
        Some("backslash")
    } else if key.split('/').any(|segment| segment == ".." || segment == ".") {
        Some("'.' or '..' path segment")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StorageError::InvalidKey { key: key.to_string(), reason }),
        None => Ok(()),
    }
}

/// Joins a prefix and a relative name with one `/` (an empty prefix adds nothing).
pub fn join_key(prefix: &str, name: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        name.to_string()
    } else if name.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// The last `/`-separated segment of a key.
pub fn key_basename(key: &str) -> &str {
    let key = key.trim_end_matches('/');
    key.rsplit('/').next().unwrap_or(key)
}

/// Merges ranges (in any order) whose gaps are at most `gap` bytes; the
/// result is sorted and disjoint.
pub fn coalesce_ranges(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
    sorted.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for range in sorted {
        match merged.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(gap) => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// Cuts each requested range out of the coalesced fetches that cover it.
pub fn slice_coalesced(requested: &[Range<u64>], merged: &[Range<u64>], fetched: &[Bytes]) -> Vec<Bytes> {
    requested
        .iter()
        .map(|r| {
            if r.start >= r.end {
                return Bytes::new();
            }
            let i = merged.partition_point(|m| m.end < r.end);
            let m = &merged[i];
            fetched[i].slice((r.start - m.start) as usize..(r.end - m.start) as usize)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_are_rejected() {
        for bad in ["", "/etc/passwd", "a/../../b", "..", "a/./b", "a\\b", "a\0b"] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b", "state/manifest.ocdbt", "a//b", "..a/b..", "ключ/zarr.json"] {
            validate_key(good).unwrap();
        }
    }

    #[test]
    fn coalescing_merges_near_ranges_and_slices_back() {
        let requested = [10..20, 0..5, 5000..5010, 15..30];
        let merged = coalesce_ranges(&requested, 100);
        assert_eq!(merged, vec![0..30, 5000..5010]);
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        let fetched: Vec<Bytes> =
            merged.iter().map(|m| Bytes::copy_from_slice(&data[m.start as usize..m.end as usize])).collect();
        let out = slice_coalesced(&requested, &merged, &fetched);
        for (r, b) in requested.iter().zip(&out) {
            assert_eq!(&b[..], &data[r.start as usize..r.end as usize]);
        }
    }
}
