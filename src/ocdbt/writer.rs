//! Writing a new database in one pass, the way Orbax has TensorStore write
//! one: large values are streamed into data files as they arrive, the
//! B+tree is built bottom-up when the writer is finished, and
//! `manifest.ocdbt` is written last, so the database only exists once all
//! of it is in place.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::btree::{MAX_INLINE_VALUE_BYTES, MAX_NODE_ENTRIES};
use super::codec::{BTREE_NODE_MAGIC, MANIFEST_MAGIC};
use super::data_file_table::DataFile;
use super::encode::{
    encode_envelope, encode_interior_body, encode_leaf_body, encode_manifest_body, varint_len, ChildIn, LeafEntryIn,
    LeafValueIn,
};
use super::manifest::{Compression, Config, ManifestKind, ZSTD_LEVELS};
use super::version_tree::{NodeRef, Statistics, VersionInfo};
use super::OcdbtError;
use crate::storage::{join_key, object_writer, validate_key, ObjectWriter, PutMode, Storage, StorageError};

/// Longest key.
const MAX_KEY_BYTES: usize = 65535;
/// Where new data files go, relative to the database.
const DATA_FILE_DIR: &str = "d/";
/// Values at least this long go to the object writer as they are; shorter
/// values and encoded nodes are collected first.
const DIRECT_WRITE_BYTES: usize = 64 << 10;
/// Collected bytes are written once there are this many.
const WRITE_BUFFER_BYTES: usize = 4 << 20;
/// An upper bound of a node body's bytes outside its entries and table
/// paths: height, `num_entries` (≤ 2^20, 3 bytes) and `num_files` (10).
const NODE_OVERHEAD_BYTES: u64 = 1 + 3 + 10;
/// An upper bound of a data file table's bytes per file besides its path:
/// three varint16 lengths.
const TABLE_BYTES_PER_FILE: u64 = 3 * 3;

/// How a [`DatabaseWriter`] lays out the database. The default is what Orbax
/// 0.12.8 configures TensorStore with.
///
/// ```
/// let mut options = orbax::ocdbt::WriterOptions::default();
/// options.target_data_file_size = Some(400 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterOptions {
    /// Values up to this many bytes are stored in the B+tree leaves, longer
    /// ones in data files (default 1024; at most 1 MiB).
    pub max_inline_value_bytes: u32,
    /// Nodes are split so that their decoded size stays at or below this
    /// (default 100,000,000; 0: no limit). A node always holds at least one
    /// entry (two for interior nodes), even if that is larger.
    pub max_decoded_node_bytes: u32,
    /// Log2 of the version tree's arity, recorded in the config (default 4; 1..=16).
    pub version_tree_arity_log2: u8,
    /// How the manifest and B+tree nodes are compressed (default zstd level
    /// 0). Values are never compressed.
    pub compression: Compression,
    /// A new data file is started when appending a value would make the
    /// current one larger than this (default 2 GiB; `None` or `Some(0)`: no
    /// limit). A larger value gets a data file of its own, and the B+tree
    /// nodes always go into the last data file.
    pub target_data_file_size: Option<u64>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_inline_value_bytes: 1024,
            max_decoded_node_bytes: 100_000_000,
            version_tree_arity_log2: 4,
            compression: Compression::Zstd { level: 0 },
            target_data_file_size: Some(2 << 30),
        }
    }
}

/// What [`DatabaseWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteSummary {
    /// Number of keys in the database.
    pub num_keys: u64,
    /// Height of the B+tree root (0: the root is a leaf, or there are no keys).
    pub root_height: u8,
    /// Statistics of the B+tree, as recorded in the manifest.
    pub statistics: Statistics,
    /// Storage keys of the data files written, in the order they were started.
    pub data_files: Vec<String>,
    /// Storage key of the manifest.
    pub manifest: String,
    /// Bytes written: data files and manifest.
    pub bytes_written: u64,
}

/// Where a key's value went.
enum Value {
    /// Kept for the leaf.
    Inline(Bytes),
    /// In data file `file` (an index into [`DatabaseWriter::files`]).
    OutOfLine { file: usize, offset: u64, length: u64 },
}

/// The data file being appended to.
struct OpenFile {
    /// Index into [`DatabaseWriter::files`].
    index: usize,
    /// Storage key.
    key: String,
    writer: Box<dyn ObjectWriter>,
    /// Bytes appended, including those still in `buffer`.
    size: u64,
    /// Appended bytes not yet handed to `writer`.
    buffer: Vec<u8>,
}

impl OpenFile {
    /// Appends `data` and returns its offset in the file.
    async fn append(&mut self, data: Bytes) -> Result<u64, OcdbtError> {
        let offset = self.size;
        let length = data.len();
        if length >= DIRECT_WRITE_BYTES {
            self.flush().await?;
            self.writer.write(data).await?;
        } else {
            self.buffer.extend_from_slice(&data);
            if self.buffer.len() >= WRITE_BUFFER_BYTES {
                self.flush().await?;
            }
        }
        self.size += length as u64;
        Ok(offset)
    }

    async fn flush(&mut self) -> Result<(), OcdbtError> {
        if !self.buffer.is_empty() {
            self.writer.write(Bytes::from(std::mem::take(&mut self.buffer))).await?;
        }
        Ok(())
    }

    /// Writes what is left and makes the file visible; returns its key and size.
    async fn finish(mut self) -> Result<(String, u64), OcdbtError> {
        self.flush().await?;
        self.writer.finish().await?;
        Ok((self.key, self.size))
    }
}

/// A B+tree node that has been written.
struct WrittenNode {
    /// Index of the first key of its subtree (into the sorted entries).
    first: usize,
    /// Index of the last key of its subtree.
    last: usize,
    /// Length of its implicit prefix: the bytes all keys of its subtree share
    /// (0 for the root).
    prefix: usize,
    /// Index into [`DatabaseWriter::files`].
    file: usize,
    offset: u64,
    length: u64,
    statistics: Statistics,
}

/// The size of one entry for deciding where to split nodes.
struct EntrySize {
    /// Upper bound of its bytes as the first entry of a node.
    first: u64,
    /// Upper bound of its bytes after the previous entry.
    next: u64,
    /// The data file it references, if any.
    file: Option<usize>,
}

/// Writes a new OCDBT database: one generation, a single `manifest.ocdbt`,
/// as Orbax 0.12.8 has TensorStore write the arrays of a checkpoint item.
///
/// Values longer than [`WriterOptions::max_inline_value_bytes`] are appended
/// to the current data file (`d/<32 hex digits>`) as [`put`](Self::put)
/// receives them, through the store's streaming writer; shorter values and
/// all keys stay in memory until [`finish`](Self::finish) sorts the keys,
/// writes the B+tree nodes after the values and then the manifest. Until
/// then no manifest exists, so readers do not see a half-written database;
/// dropping the writer (or a failed `finish`) can leave finished data files
/// behind, which nothing references.
///
/// ```no_run
/// # async fn example() -> Result<(), orbax::ocdbt::OcdbtError> {
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use orbax::ocdbt::{DatabaseWriter, WriterOptions};
/// use orbax::storage::LocalFileSystem;
///
/// let store = Arc::new(LocalFileSystem::new("/checkpoints"));
/// let mut writer = DatabaseWriter::create(store, "step_100/state", WriterOptions::default()).await?;
/// writer.put(b"w/zarr.json", Bytes::from_static(b"{}")).await?;
/// writer.put(b"w/c/0", Bytes::from(vec![0u8; 4096])).await?;
/// let summary = writer.finish().await?;
/// println!("{} keys in {} data files", summary.num_keys, summary.data_files.len());
/// # Ok(())
/// # }
/// ```
pub struct DatabaseWriter {
    store: Arc<dyn Storage>,
    prefix: String,
    options: WriterOptions,
    config: Config,
    entries: Vec<(Box<[u8]>, Value)>,
    /// Every data file started or referenced, by index.
    files: Vec<DataFile>,
    /// Indices of the files of other writers that values reference.
    referenced: HashMap<DataFile, usize>,
    current: Option<OpenFile>,
    /// Keys and sizes of the finished data files.
    finished: Vec<(String, u64)>,
    /// Set while an operation that can leave the writer inconsistent runs;
    /// still set after it failed.
    broken: bool,
}

impl fmt::Debug for DatabaseWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseWriter")
            .field("prefix", &self.prefix)
            .field("keys", &self.entries.len())
            .field("data_files", &self.files.len())
            .finish()
    }
}

impl DatabaseWriter {
    /// Starts a database at `prefix` in `store`. Fails with
    /// [`StorageError::AlreadyExists`] if `prefix/manifest.ocdbt` exists, and
    /// with [`OcdbtError::InvalidArgument`] for options TensorStore would
    /// not accept.
    pub async fn create(store: Arc<dyn Storage>, prefix: &str, options: WriterOptions) -> Result<Self, OcdbtError> {
        let prefix = prefix.trim_end_matches('/').to_string();
        let invalid = |what: String| OcdbtError::InvalidArgument { database: prefix.clone(), what };
        if u64::from(options.max_inline_value_bytes) > MAX_INLINE_VALUE_BYTES {
            return Err(invalid(format!(
                "max_inline_value_bytes {} is more than {MAX_INLINE_VALUE_BYTES}",
                options.max_inline_value_bytes
            )));
        }
        if !(1..=16).contains(&options.version_tree_arity_log2) {
            return Err(invalid(format!(
                "version_tree_arity_log2 {} is outside 1..=16",
                options.version_tree_arity_log2
            )));
        }
        if let Compression::Zstd { level } = options.compression {
            if !ZSTD_LEVELS.contains(&level) {
                return Err(invalid(format!("zstd level {level} is outside {ZSTD_LEVELS:?}")));
            }
        }
        let manifest = join_key(&prefix, "manifest.ocdbt");
        match store.head(&manifest).await {
            Ok(_) => return Err(StorageError::AlreadyExists { key: manifest }.into()),
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let config = Config {
            uuid: random_bytes(),
            manifest_kind: ManifestKind::Single,
            max_inline_value_bytes: options.max_inline_value_bytes,
            max_decoded_node_bytes: options.max_decoded_node_bytes,
            version_tree_arity_log2: options.version_tree_arity_log2,
            compression: options.compression,
        };
        Ok(DatabaseWriter {
            store,
            prefix,
            options,
            config,
            entries: Vec::new(),
            files: Vec::new(),
            referenced: HashMap::new(),
            current: None,
            finished: Vec::new(),
            broken: false,
        })
    }

    /// The configuration the manifest will record.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds `key` with `value`. Values longer than `max_inline_value_bytes`
    /// are appended to the current data file right away (rolling over to a
    /// new one when it would grow beyond `target_data_file_size`); shorter
    /// ones are kept in memory. Keys may come in any order; a key longer than
    /// 65535 bytes is an [`OcdbtError::InvalidArgument`], and so is a key
    /// added twice, reported by [`finish`](Self::finish).
    pub async fn put(&mut self, key: &[u8], value: Bytes) -> Result<(), OcdbtError> {
        self.check_usable()?;
        self.check_key(key)?;
        let value = if value.len() as u64 <= u64::from(self.options.max_inline_value_bytes) {
            // A copy, so that a small slice does not keep a large buffer alive.
            Value::Inline(Bytes::copy_from_slice(&value))
        } else {
            self.broken = true;
            let length = value.len() as u64;
            let file = self.file_with_room(length).await?;
            let offset = file.append(value).await?;
            let index = file.index;
            self.broken = false;
            Value::OutOfLine { file: index, offset, length }
        };
        self.entries.push((key.into(), value));
        Ok(())
    }

    /// Adds `key` with a value another writer already stored: `length` bytes
    /// at `offset` of the data file `relative_path` below `base_path`, both
    /// relative to this database (e.g. `ocdbt.process_0/` and `d/<hex>`, as
    /// Orbax's merge of per-process databases references their values). The
    /// value is neither read nor copied; it stays out of line whatever its
    /// length. Paths must be safe relative keys.
    pub fn put_reference(
        &mut self,
        key: &[u8],
        base_path: &str,
        relative_path: &str,
        offset: u64,
        length: u64,
    ) -> Result<(), OcdbtError> {
        self.check_usable()?;
        self.check_key(key)?;
        let path = format!("{base_path}{relative_path}");
        if relative_path.is_empty() || validate_key(&path).is_err() || path.contains("//") {
            return Err(self.invalid(format!("{path:?} is not a safe data file path")));
        }
        let file =
            DataFile { base_path: base_path.as_bytes().to_vec(), relative_path: relative_path.as_bytes().to_vec() };
        let index = match self.referenced.get(&file) {
            Some(&index) => index,
            None => {
                self.files.push(file.clone());
                self.referenced.insert(file, self.files.len() - 1);
                self.files.len() - 1
            }
        };
        self.entries.push((key.into(), Value::OutOfLine { file: index, offset, length }));
        Ok(())
    }

    /// Writes the B+tree, finishes the data files and writes
    /// `manifest.ocdbt` (generation 1, committed now), which must not exist
    /// yet. A database without keys gets a manifest whose root is missing.
    pub async fn finish(mut self) -> Result<WriteSummary, OcdbtError> {
        self.check_usable()?;
        self.broken = true;
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(self.invalid(format!("duplicate key {}", describe_key(&pair[0].0))));
        }
        let version = if entries.is_empty() {
            VersionInfo {
                generation: 1,
                commit_time_ns: 0,
                root_height: 0,
                statistics: Statistics::default(),
                root: None,
            }
        } else {
            self.write_tree(&entries).await?
        };
        if let Some(file) = self.current.take() {
            self.finished.push(file.finish().await?);
        }
        let version = VersionInfo { commit_time_ns: now_ns(), ..version };
        let manifest = join_key(&self.prefix, "manifest.ocdbt");
        let body = encode_manifest_body(&self.config, std::slice::from_ref(&version));
        let encoded = encode_envelope(MANIFEST_MAGIC, &body, self.options.compression)
            .map_err(|source| StorageError::Io { key: manifest.clone(), source })?;
        let manifest_bytes = encoded.len() as u64;
        self.store.put(&manifest, Bytes::from(encoded), PutMode::Create).await?;
        Ok(WriteSummary {
            num_keys: entries.len() as u64,
            root_height: version.root_height,
            statistics: version.statistics,
            bytes_written: self.finished.iter().map(|(_, size)| size).sum::<u64>() + manifest_bytes,
            data_files: self.finished.into_iter().map(|(key, _)| key).collect(),
            manifest,
        })
    }

    fn invalid(&self, what: String) -> OcdbtError {
        OcdbtError::InvalidArgument { database: self.prefix.clone(), what }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), OcdbtError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(self.invalid(format!(
                "key {} is {} bytes long, more than 65535",
                describe_key(key),
                key.len()
            )));
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<(), OcdbtError> {
        if self.broken {
            return Err(self.invalid("an earlier write to this database failed".into()));
        }
        Ok(())
    }

    /// The data file to append `length` more bytes to: the current one,
    /// unless that would grow it beyond the target size.
    async fn file_with_room(&mut self, length: u64) -> Result<&mut OpenFile, OcdbtError> {
        let target = self.options.target_data_file_size.filter(|t| *t > 0);
        let file = match (self.current.take(), target) {
            (Some(file), Some(target)) if file.size > 0 && file.size.saturating_add(length) > target => {
                self.finished.push(file.finish().await?);
                self.open_file().await?
            }
            (Some(file), _) => file,
            (None, _) => self.open_file().await?,
        };
        Ok(self.current.insert(file))
    }

    /// Starts a data file with a fresh random name.
    async fn open_file(&mut self) -> Result<OpenFile, OcdbtError> {
        let hex: String = random_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{DATA_FILE_DIR}{hex}");
        let key = join_key(&self.prefix, &name);
        let writer = object_writer(&self.store, &key).await?;
        self.files.push(DataFile { base_path: Vec::new(), relative_path: name.into_bytes() });
        Ok(OpenFile { index: self.files.len() - 1, key, writer, size: 0, buffer: Vec::new() })
    }

    /// Frames and appends one encoded node body.
    /// (Takes only what it needs, not `&self`: a shared borrow held across
    /// the write would make the save future need `DatabaseWriter: Sync`, and
    /// object writers are only `Send`.)
    async fn append_node(compression: Compression, file: &mut OpenFile, body: &[u8]) -> Result<(u64, u64), OcdbtError> {
        let encoded = encode_envelope(BTREE_NODE_MAGIC, body, compression)
            .map_err(|source| StorageError::Io { key: file.key.clone(), source })?;
        let length = encoded.len() as u64;
        let offset = file.append(Bytes::from(encoded)).await?;
        Ok((offset, length))
    }

    /// Writes the leaves and interior nodes of the (sorted, non-empty)
    /// `entries` to the last data file and returns the version they make.
    async fn write_tree(&mut self, entries: &[(Box<[u8]>, Value)]) -> Result<VersionInfo, OcdbtError> {
        let mut file = match self.current.take() {
            Some(file) => file,
            None => self.open_file().await?,
        };
        let max_node_bytes = match self.options.max_decoded_node_bytes {
            0 => u64::MAX,
            max => u64::from(max),
        };
        let key = |i: usize| key_at(entries, i);

        let sizes = leaf_entry_sizes(entries, self.files.len());
        let ranges = split(&sizes, |f| self.file_table_bytes(f), max_node_bytes, 1);
        let root = ranges.len() == 1;
        let mut level = Vec::with_capacity(ranges.len());
        for range in ranges {
            let prefix = if root { 0 } else { common_prefix_len(key(range.start), key(range.end - 1)) };
            let mut statistics = Statistics { num_keys: range.len() as u64, ..Statistics::default() };
            let leaf: Vec<LeafEntryIn<'_>> = entries[range.clone()]
                .iter()
                .map(|(key, value)| {
                    let value = match value {
                        Value::Inline(bytes) => LeafValueIn::Inline(bytes),
                        Value::OutOfLine { file, offset, length } => {
                            statistics.num_indirect_value_bytes += length;
                            LeafValueIn::OutOfLine { file: &self.files[*file], offset: *offset, length: *length }
                        }
                    };
                    LeafEntryIn { key: &key[prefix..], value }
                })
                .collect();
            let (offset, length) =
                Self::append_node(self.options.compression, &mut file, &encode_leaf_body(&leaf)).await?;
            statistics.num_tree_bytes = length;
            level.push(WrittenNode {
                first: range.start,
                last: range.end - 1,
                prefix,
                file: file.index,
                offset,
                length,
                statistics,
            });
        }

        let mut height = 0u8;
        while level.len() > 1 {
            height = height.checked_add(1).ok_or_else(|| self.invalid("the B+tree would be taller than 255".into()))?;
            let sizes = interior_entry_sizes(&level, entries, self.files.len());
            let ranges = split(&sizes, |f| self.file_table_bytes(f), max_node_bytes, 2);
            let root = ranges.len() == 1;
            let mut next = Vec::with_capacity(ranges.len());
            for range in ranges {
                let children = &level[range];
                let (first, last) = (children[0].first, children[children.len() - 1].last);
                let prefix = if root { 0 } else { common_prefix_len(key(first), key(last)) };
                let mut statistics = Statistics::default();
                let node: Vec<ChildIn<'_>> = children
                    .iter()
                    .map(|child| {
                        statistics.num_keys += child.statistics.num_keys;
                        statistics.num_tree_bytes += child.statistics.num_tree_bytes;
                        statistics.num_indirect_value_bytes += child.statistics.num_indirect_value_bytes;
                        ChildIn {
                            key: &key(child.first)[prefix..],
                            subtree_common_prefix_length: child.prefix - prefix,
                            file: &self.files[child.file],
                            offset: child.offset,
                            length: child.length,
                            statistics: child.statistics,
                        }
                    })
                    .collect();
                let (offset, length) =
                    Self::append_node(self.options.compression, &mut file, &encode_interior_body(height, &node))
                        .await?;
                statistics.num_tree_bytes += length;
                next.push(WrittenNode { first, last, prefix, file: file.index, offset, length, statistics });
            }
            level = next;
        }
        self.current = Some(file);

        let mut roots = level.into_iter();
        match (roots.next(), roots.next()) {
            (Some(root), None) => Ok(VersionInfo {
                generation: 1,
                commit_time_ns: 0,
                root_height: height,
                statistics: root.statistics,
                root: Some(NodeRef { file: self.files[root.file].clone(), offset: root.offset, length: root.length }),
            }),
            _ => Err(self.invalid("internal error: the B+tree has no single root".into())),
        }
    }

    /// Upper bound of the bytes data file `index` takes in a node's table.
    fn file_table_bytes(&self, index: usize) -> u64 {
        let path = self.files.get(index).map_or(0, |f| f.base_path.len() + f.relative_path.len());
        TABLE_BYTES_PER_FILE + path as u64
    }
}

/// Key `i` of the sorted entries.
fn key_at(entries: &[(Box<[u8]>, Value)], i: usize) -> &[u8] {
    &entries[i].0
}

/// The key as a Rust string literal, or as a byte string literal if it is not UTF-8.
fn describe_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(key) => format!("{key:?}"),
        Err(_) => format!("b\"{}\"", key.escape_ascii()),
    }
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Upper bounds of the key columns' bytes for a key of `len` bytes sharing
/// `shared` bytes with the previous key: (as the first key, after the previous one).
fn key_sizes(len: usize, shared: usize) -> (u64, u64) {
    let (len, shared) = (len as u64, shared as u64);
    (varint_len(len) + len, varint_len(shared) + varint_len(len - shared) + len - shared)
}

/// Sizes of the sorted `entries` as leaf entries; `num_files` bounds the table indices.
fn leaf_entry_sizes(entries: &[(Box<[u8]>, Value)], num_files: usize) -> Vec<EntrySize> {
    let id_bytes = varint_len(num_files as u64);
    entries
        .iter()
        .enumerate()
        .map(|(i, (key, value))| {
            let shared = i.checked_sub(1).map_or(0, |p| common_prefix_len(&entries[p].0, key));
            let (first, next) = key_sizes(key.len(), shared);
            let (value_bytes, file) = match value {
                Value::Inline(bytes) => (varint_len(bytes.len() as u64) + 1 + bytes.len() as u64, None),
                Value::OutOfLine { file, offset, length } => {
                    (varint_len(*length) + 1 + id_bytes + varint_len(*offset), Some(*file))
                }
            };
            EntrySize { first: first + value_bytes, next: next + value_bytes, file }
        })
        .collect()
}

/// Sizes of the nodes of one level as interior entries.
fn interior_entry_sizes(level: &[WrittenNode], entries: &[(Box<[u8]>, Value)], num_files: usize) -> Vec<EntrySize> {
    let key = |i: usize| key_at(entries, i);
    let id_bytes = varint_len(num_files as u64);
    level
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let k = key(node.first);
            let shared = i.checked_sub(1).map_or(0, |p| common_prefix_len(key(level[p].first), k));
            let (first, next) = key_sizes(k.len(), shared);
            let s = &node.statistics;
            let reference = varint_len(k.len() as u64)
                + id_bytes
                + varint_len(node.offset)
                + varint_len(node.length)
                + varint_len(s.num_keys)
                + varint_len(s.num_tree_bytes)
                + varint_len(s.num_indirect_value_bytes);
            EntrySize { first: first + reference, next: next + reference, file: Some(node.file) }
        })
        .collect()
}

/// Splits entries into consecutive nodes of at most `max_bytes` decoded
/// bytes and [`MAX_NODE_ENTRIES`] entries, each with at least `min_entries`
/// entries (when there are that many) whatever their size. `file_bytes`
/// bounds the table bytes of a referenced file.
///
/// A first greedy pass counts the nodes needed; the second pass fills the
/// same number of nodes with equal shares of the entries, so that the last
/// node is not a small remainder.
fn split(
    sizes: &[EntrySize],
    file_bytes: impl Fn(usize) -> u64,
    max_bytes: u64,
    min_entries: usize,
) -> Vec<Range<usize>> {
    let greedy = pack(sizes, &file_bytes, max_bytes, min_entries, |_, _| u64::MAX);
    // remaining[i]: bytes of the entries from i on.
    let mut remaining = vec![0u64; sizes.len() + 1];
    for i in (0..sizes.len()).rev() {
        remaining[i] = remaining[i + 1].saturating_add(sizes[i].next);
    }
    let nodes = greedy.len() as u64;
    pack(sizes, &file_bytes, max_bytes, min_entries, |start, done| {
        remaining[start].div_ceil(nodes.saturating_sub(done).max(1))
    })
}

/// Packs entries into consecutive nodes: a node ends before the entry that
/// would take it beyond `max_bytes` or [`MAX_NODE_ENTRIES`] entries, or
/// once its entries' bytes reach `target(first entry, nodes so far)`, but
/// never before it has `min_entries` entries; a last node with fewer
/// entries than that takes entries from, or is merged into, the one before.
fn pack(
    sizes: &[EntrySize],
    file_bytes: &impl Fn(usize) -> u64,
    max_bytes: u64,
    min_entries: usize,
    target: impl Fn(usize, u64) -> u64,
) -> Vec<Range<usize>> {
    let n = sizes.len();
    let max_entries = MAX_NODE_ENTRIES as usize;
    let mut ranges = Vec::new();
    let mut files = HashSet::new();
    let mut start = 0;
    while start < n {
        let target = target(start, ranges.len() as u64);
        files.clear();
        let new_file_bytes = |file: Option<usize>, files: &mut HashSet<usize>| match file {
            Some(f) if files.insert(f) => file_bytes(f),
            _ => 0,
        };
        let mut size = NODE_OVERHEAD_BYTES + sizes[start].first + new_file_bytes(sizes[start].file, &mut files);
        let mut entry_bytes = sizes[start].next;
        let mut end = start + 1;
        while end < n && end - start < max_entries {
            let added = sizes[end].next + sizes[end].file.filter(|f| !files.contains(f)).map_or(0, file_bytes);
            if end - start >= min_entries && (entry_bytes >= target || size.saturating_add(added) > max_bytes) {
                break;
            }
            new_file_bytes(sizes[end].file, &mut files);
            size = size.saturating_add(added);
            entry_bytes = entry_bytes.saturating_add(sizes[end].next);
            end += 1;
        }
        let short = min_entries.saturating_sub(n - end);
        if end < n && short > 0 {
            if end - start >= min_entries + short {
                end -= short;
            } else {
                end = n;
            }
        }
        ranges.push(start..end);
        start = end;
    }
    ranges
}

/// Nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// 16 random bytes: two SipHash digests keyed by the standard library's
/// OS-seeded [`RandomState`], of the time, a counter and the process id.
fn random_bytes() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(count);
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.write_usize(i);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocdbt::btree::{decode_btree_node, BtreeEntries};
    use crate::ocdbt::codec::{decode_envelope, Origin};
    use crate::ocdbt::manifest::decode_manifest;
    use crate::storage::InMemory;

    fn uniform(n: usize, size: u64) -> Vec<EntrySize> {
        (0..n).map(|_| EntrySize { first: size + 5, next: size, file: Some(0) }).collect()
    }

    fn estimate(sizes: &[EntrySize], range: &Range<usize>) -> u64 {
        NODE_OVERHEAD_BYTES
            + 50
            + sizes[range.start].first
            + sizes[range.start + 1..range.end].iter().map(|s| s.next).sum::<u64>()
    }

    #[test]
    fn split_keeps_nodes_within_the_limit_and_balanced() {
        let sizes = uniform(1000, 10);
        let ranges = split(&sizes, |_| 50, 1000, 1);
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(1000));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        for range in &ranges {
            assert!(estimate(&sizes, range) <= 1000, "{range:?}");
        }
        let lengths: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
        let (min, max) = (lengths.iter().min().unwrap(), lengths.iter().max().unwrap());
        assert!(max - min <= 2, "{lengths:?}");
        assert_eq!(split(&sizes, |_| 50, u64::MAX, 1), vec![0..1000]);
    }

    #[test]
    fn split_honours_minimum_entries() {
        // Every entry alone exceeds the limit: leaves get one entry each,
        // interior nodes two (three at the end rather than a lone one).
        let sizes = uniform(7, 100);
        assert_eq!(split(&sizes, |_| 0, 50, 1).len(), 7);
        let ranges = split(&sizes, |_| 0, 50, 2);
        assert_eq!(ranges, vec![0..2, 2..4, 4..7]);
        let ranges = split(&uniform(5, 10), |_| 0, 2 * 10 + 5 + NODE_OVERHEAD_BYTES + 10, 2);
        assert!(ranges.iter().all(|r| r.len() >= 2), "{ranges:?}");
        assert_eq!(split(&uniform(1, 10), |_| 0, 1, 2), vec![0..1]);
    }

    #[test]
    fn split_respects_the_entry_limit() {
        let n = MAX_NODE_ENTRIES as usize + 5;
        let sizes: Vec<EntrySize> = (0..n).map(|_| EntrySize { first: 2, next: 1, file: None }).collect();
        let ranges = split(&sizes, |_| 0, u64::MAX, 1);
        assert_eq!(ranges.len(), 2);
        assert!(ranges.iter().all(|r| r.len() <= MAX_NODE_ENTRIES as usize));
    }

    #[test]
    fn keys_are_described_readably() {
        assert_eq!(describe_key(b"a/b"), r#""a/b""#);
        assert_eq!(describe_key("ключ".as_bytes()), r#""ключ""#);
        assert_eq!(describe_key(&[0xff, b'a', 0]), r#"b"\xffa\x00""#);
    }

    #[test]
    fn random_bytes_differ() {
        let a = random_bytes();
        let b = random_bytes();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
    }

    /// Walks the tree below `node`, checking heights, node sizes, implicit
    /// prefixes and statistics; returns the subtree's statistics and keys.
    async fn walk(
        store: &InMemory,
        node: &NodeRef,
        height: u8,
        prefix: Vec<u8>,
        max_decoded: usize,
        keys: &mut Vec<Vec<u8>>,
        excluded: &mut usize,
    ) -> Statistics {
        let file = format!("db/{}", String::from_utf8_lossy(&node.file.relative_path));
        let bytes = store.get_range(&file, node.offset..node.offset + node.length).await.unwrap();
        let origin = Origin { file: &file, object: "B+tree node", offset: node.offset };
        let body = decode_envelope(&bytes, BTREE_NODE_MAGIC, origin, 1 << 30).unwrap();
        let decoded = decode_btree_node(&bytes, origin, b"", 1 << 30).unwrap();
        assert_eq!(decoded.height, height);
        let mut stats = Statistics { num_tree_bytes: node.length, ..Statistics::default() };
        match decoded.entries {
            BtreeEntries::Leaf(entries) => {
                assert!(body.len() <= max_decoded || entries.len() == 1, "leaf of {} bytes", body.len());
                for entry in entries {
                    keys.push([prefix.as_slice(), &entry.key].concat());
                    stats.num_keys += 1;
                    if let crate::ocdbt::btree::LeafValue::OutOfLine { length, .. } = entry.value {
                        stats.num_indirect_value_bytes += length;
                    }
                }
            }
            BtreeEntries::Interior(entries) => {
                assert!(body.len() <= max_decoded || entries.len() <= 3, "node of {} bytes", body.len());
                assert!(entries.len() >= 2);
                for entry in entries {
                    *excluded += entry.subtree_common_prefix_length;
                    let child_prefix = [prefix.as_slice(), &entry.key[..entry.subtree_common_prefix_length]].concat();
                    let child =
                        NodeRef { file: decoded.files[entry.file].clone(), offset: entry.offset, length: entry.length };
                    let first = keys.len();
                    let s = Box::pin(walk(store, &child, height - 1, child_prefix, max_decoded, keys, excluded)).await;
                    assert_eq!(keys[first], [prefix.as_slice(), &entry.key].concat(), "child starts at its key");
                    stats.num_keys += s.num_keys;
                    stats.num_tree_bytes += s.num_tree_bytes;
                    stats.num_indirect_value_bytes += s.num_indirect_value_bytes;
                }
            }
        }
        stats
    }

    #[tokio::test]
    async fn nodes_are_split_by_size_with_real_prefixes_and_statistics() {
        let memory = Arc::new(InMemory::new());
        let store: Arc<dyn Storage> = memory.clone();
        let max = 700;
        let options = WriterOptions { max_decoded_node_bytes: max, max_inline_value_bytes: 20, ..Default::default() };
        let mut writer = DatabaseWriter::create(store.clone(), "db", options).await.unwrap();
        let mut expected = Vec::new();
        for i in (0..3000u32).rev() {
            let key = format!("group_{}/item_{i:05}/chunk", i % 7).into_bytes();
            writer.put(&key, Bytes::from(vec![i as u8; (i % 40) as usize])).await.unwrap();
            expected.push(key);
        }
        expected.sort();
        let summary = writer.finish().await.unwrap();
        let manifest = memory.get("db/manifest.ocdbt").await.unwrap();
        let origin = Origin { file: "db/manifest.ocdbt", object: "manifest", offset: 0 };
        let manifest = decode_manifest(&manifest, origin, 1 << 20).unwrap();
        let version = &manifest.versions[0];
        assert!(version.root_height >= 2);
        let mut keys = Vec::new();
        let mut excluded = 0;
        let root = version.root.as_ref().unwrap();
        let stats = walk(&memory, root, version.root_height, Vec::new(), max as usize, &mut keys, &mut excluded).await;
        assert_eq!(keys, expected);
        assert_eq!(stats, version.statistics);
        assert_eq!(stats, summary.statistics);
        assert!(excluded > 0, "children leave out their common prefixes");
    }

    /// A store whose streaming writes fail.
    #[derive(Debug, Default)]
    struct FailingWrites(InMemory);

    struct FailingWriter;

    #[async_trait::async_trait]
    impl ObjectWriter for FailingWriter {
        async fn write(&mut self, _: Bytes) -> crate::storage::Result<()> {
            Err(StorageError::Io { key: "x".into(), source: std::io::Error::other("disk full") })
        }
        async fn finish(self: Box<Self>) -> crate::storage::Result<()> {
            Ok(())
        }
        fn written(&self) -> u64 {
            0
        }
    }

    #[async_trait::async_trait]
    impl Storage for FailingWrites {
        async fn get(&self, key: &str) -> crate::storage::Result<Bytes> {
            self.0.get(key).await
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> crate::storage::Result<Bytes> {
            self.0.get_range(key, range).await
        }
        async fn head(&self, key: &str) -> crate::storage::Result<crate::storage::ObjectMeta> {
            self.0.head(key).await
        }
        async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> crate::storage::Result<()> {
            self.0.put(key, data, mode).await
        }
        async fn put_writer(&self, _: &str) -> crate::storage::Result<Box<dyn ObjectWriter>> {
            Ok(Box::new(FailingWriter))
        }
        async fn delete(&self, key: &str) -> crate::storage::Result<()> {
            self.0.delete(key).await
        }
        async fn list(&self, prefix: &str) -> crate::storage::Result<Vec<crate::storage::ObjectMeta>> {
            self.0.list(prefix).await
        }
        async fn list_with_delimiter(&self, prefix: &str) -> crate::storage::Result<crate::storage::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        fn capabilities(&self) -> crate::storage::Capabilities {
            self.0.capabilities()
        }
    }

    #[tokio::test]
    async fn a_failed_write_poisons_the_writer_and_no_manifest_is_written() {
        let store: Arc<dyn Storage> = Arc::new(FailingWrites::default());
        let mut writer = DatabaseWriter::create(store.clone(), "db", WriterOptions::default()).await.unwrap();
        writer.put(b"small", Bytes::from_static(b"inline")).await.unwrap();
        let err = writer.put(b"large", Bytes::from(vec![0u8; 1 << 20])).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
        assert!(err.to_string().contains("disk full"), "{err}");
        let err = writer.put(b"more", Bytes::new()).await.unwrap_err();
        assert!(err.to_string().contains("an earlier write to this database failed"), "{err}");
        assert!(writer.finish().await.is_err());
        assert!(store.head("db/manifest.ocdbt").await.is_err());

        // Buffered bytes that fail when the nodes are flushed.
        let mut writer = DatabaseWriter::create(store.clone(), "db", WriterOptions::default()).await.unwrap();
        writer.put(b"large", Bytes::from(vec![0u8; 2000])).await.unwrap();
        assert_eq!(writer.finish().await.unwrap_err().kind(), crate::ErrorKind::Io);
        assert!(store.head("db/manifest.ocdbt").await.is_err());
    }
}
