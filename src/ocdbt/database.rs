//! Reading a database through [`Storage`]: the manifest, the version tree
//! and the whole B+tree of one generation, then values on demand.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt};

use super::btree::{decode_btree_node, BtreeEntries, LeafValue};
use super::codec::Origin;
use super::data_file_table::DataFile;
use super::manifest::{decode_manifest, Config, Manifest, ManifestKind};
use super::version_tree::{decode_version_tree_node, VersionInfo, VersionNodeRef, VersionTreeNode};
use super::OcdbtError;
use crate::kvstore::{KvError, KvSource};
use crate::storage::{join_key, key_basename, Storage, StorageError};

/// Nodes fetched and decoded together (per tree level) while opening.
const NODE_BATCH: usize = 256;
/// Largest read issued by [`Database::verify_values`].
const VERIFY_READ_BYTES: u64 = 64 << 20;
/// Data files checked concurrently by [`Database::verify_values`].
const VERIFY_CONCURRENCY: usize = 4;
/// Longest full key.
const MAX_KEY_BYTES: usize = 65535;

/// Bounds on what opening and reading a database may cost. Defaults follow
/// `format-spec/07-reader-safety.md` §2.2.
///
/// ```
/// let mut limits = orbax::ocdbt::Limits::default();
/// limits.max_value_bytes = 1 << 30;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest manifest file, in bytes (default 16 MiB).
    pub max_manifest_bytes: u64,
    /// Largest encoded B+tree or version-tree node, in bytes (default 256 MiB).
    pub max_node_bytes: u64,
    /// Largest decompressed body of a manifest or node, in bytes (default 256 MiB).
    pub max_decoded_bytes: u64,
    /// Largest out-of-line value read whole, in bytes (default 4 GiB).
    pub max_value_bytes: u64,
    /// Most keys (leaf entries) of one generation, and most generations (default 2^28).
    pub max_keys: u64,
    /// Most encoded node bytes read to open one generation (default 16 GiB).
    pub max_total_node_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 16 << 20,
            max_node_bytes: 256 << 20,
            max_decoded_bytes: 256 << 20,
            max_value_bytes: 4 << 30,
            max_keys: 1 << 28,
            max_total_node_bytes: 16 << 30,
        }
    }
}

/// Where the value of a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRef {
    /// Stored inside the B+tree leaf.
    Inline(Bytes),
    /// A byte range of a data file.
    OutOfLine {
        /// The storage key of the data file (database prefix included).
        file: Arc<str>,
        /// Offset of the value in the file.
        offset: u64,
        /// Length of the value.
        length: u64,
    },
}

impl ValueRef {
    /// Length of the value in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ValueRef::Inline(bytes) => bytes.len() as u64,
            ValueRef::OutOfLine { length, .. } => *length,
        }
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One generation of an OCDBT database, opened for reading.
///
/// Opening reads the manifest and every B+tree node of the generation and
/// keeps a sorted index from key to [`ValueRef`]; values are read on demand,
/// several at a time with one coalesced request per data file
/// ([`get_many`](Database::get_many)).
///
/// ```no_run
/// # async fn example() -> Result<(), orbax::ocdbt::OcdbtError> {
/// use std::sync::Arc;
/// use orbax::ocdbt::Database;
/// use orbax::storage::LocalFileSystem;
///
/// let store = Arc::new(LocalFileSystem::new("/checkpoints"));
/// let db = Database::open(store, "step_100/state").await?;
/// println!("generation {} with {} keys", db.generation().generation, db.len());
/// let metadata = db.get(b"params.w/zarr.json").await?;
/// # let _ = metadata;
/// # Ok(())
/// # }
/// ```
pub struct Database {
    store: Arc<dyn Storage>,
    prefix: String,
    manifest_file: String,
    limits: Limits,
    manifest: Manifest,
    version: VersionInfo,
    index: Vec<(Box<[u8]>, ValueRef)>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("prefix", &self.prefix)
            .field("manifest_file", &self.manifest_file)
            .field("generation", &self.version.generation)
            .field("keys", &self.index.len())
            .finish()
    }
}

/// A node to read while walking the B+tree.
struct PendingNode {
    /// Storage key of its data file.
    file: Arc<str>,
    /// Base path of that file: the transitive path of the node's own table.
    base_path: Vec<u8>,
    offset: u64,
    length: u64,
    /// Implicit key prefix given by the parent.
    prefix: Vec<u8>,
    /// The parent entry's full key, a lower bound of the node's keys.
    lower_bound: Vec<u8>,
}

/// I/O shared by opening and the version-tree walk.
struct Io<'a> {
    store: &'a dyn Storage,
    prefix: &'a str,
    limits: &'a Limits,
}

impl Io<'_> {
    /// Storage key of `file`, named in a table of the object at `referrer`.
    fn resolve(&self, file: &DataFile, referrer: &Origin<'_>) -> Result<Arc<str>, OcdbtError> {
        Ok(Arc::from(join_key(self.prefix, &file.path(referrer)?)))
    }

    async fn read_manifest(&self, file: &str) -> Result<Manifest, OcdbtError> {
        let origin = Origin { file, object: "manifest", offset: 0 };
        let size = self.store.head(file).await?.size;
        if size > self.limits.max_manifest_bytes {
            return Err(origin.limit("manifest size", size, self.limits.max_manifest_bytes));
        }
        let bytes = self.store.get(file).await?;
        decode_manifest(&bytes, origin, self.limits.max_decoded_bytes)
    }

    /// The manifest holding the version tree: `manifest.ocdbt`, or the newest
    /// `manifest.<16 hex>` of a numbered database. Returns its key too.
    async fn latest_manifest(&self) -> Result<(String, Manifest), OcdbtError> {
        let file = join_key(self.prefix, "manifest.ocdbt");
        let manifest = self.read_manifest(&file).await?;
        if manifest.config.manifest_kind == ManifestKind::Single {
            return Ok((file, manifest));
        }
        // A writer deletes old numbered manifests: if the newest one vanishes
        // between listing and reading, list once more.
        let mut attempts = 0;
        let (generation, numbered, manifest) = loop {
            let Some((generation, numbered)) = self.newest_numbered_manifest().await? else {
                return Err(OcdbtError::NotFound {
                    file,
                    what: "the manifest kind is numbered but there is no manifest.<16 hex digits> file".into(),
                });
            };
            attempts += 1;
            match self.read_manifest(&numbered).await {
                Err(OcdbtError::Storage(StorageError::NotFound { .. })) if attempts < 2 => continue,
                result => break (generation, numbered, result?),
            }
        };
        let origin = Origin { file: &numbered, object: "manifest", offset: 0 };
        if manifest.config.manifest_kind != ManifestKind::Single {
            return Err(origin.corrupt("a numbered manifest must have manifest_kind single"));
        }
        let latest = manifest.versions.last().map_or(0, |v| v.generation);
        if latest != generation {
            return Err(origin.corrupt(format!("latest generation is {latest}, expected {generation} from the name")));
        }
        Ok((numbered, manifest))
    }

    /// The largest generation among the `manifest.<16 hex digits>` files, with its key.
    async fn newest_numbered_manifest(&self) -> Result<Option<(u64, String)>, OcdbtError> {
        let listing = self.store.list_with_delimiter(self.prefix).await?;
        Ok(listing
            .objects
            .iter()
            .filter_map(|o| {
                let suffix = key_basename(&o.key).strip_prefix("manifest.")?;
                let valid = suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit());
                let generation = u64::from_str_radix(suffix, 16).ok().filter(|g| valid && *g != 0)?;
                Some((generation, o.key.clone()))
            })
            .max())
    }

    /// Reads `length` bytes at `origin.offset` of `origin.file`.
    async fn read_object(&self, origin: &Origin<'_>, length: u64) -> Result<Bytes, OcdbtError> {
        if length > self.limits.max_node_bytes {
            return Err(origin.limit("encoded node length", length, self.limits.max_node_bytes));
        }
        let bytes = self.store.get_range(origin.file, origin.offset..origin.offset + length).await?;
        check_length(origin, &bytes, length)?;
        Ok(bytes)
    }

    /// Reads the version-tree node `node`, referenced from `referrer`, and
    /// checks it is what the reference promised.
    async fn read_version_node(
        &self,
        node: &VersionNodeRef,
        referrer: &Origin<'_>,
        arity_log2: u8,
    ) -> Result<(Arc<str>, VersionTreeNode), OcdbtError> {
        let file = self.resolve(&node.node.file, referrer)?;
        let origin = Origin { file: &file, object: "version tree node", offset: node.node.offset };
        let bytes = self.read_object(&origin, node.node.length).await?;
        let (height, decoded) = decode_version_tree_node(
            &bytes,
            origin,
            &node.node.file.base_path,
            arity_log2,
            self.limits.max_decoded_bytes,
        )?;
        if height != node.height {
            return Err(origin.corrupt(format!("height is {height}, expected {}", node.height)));
        }
        if decoded.latest_generation() != node.generation {
            return Err(origin.corrupt(format!(
                "latest generation is {}, expected {}",
                decoded.latest_generation(),
                node.generation
            )));
        }
        Ok((file, decoded))
    }

    /// Fetches the nodes of `batch`, one coalesced request per data file,
    /// all files concurrently.
    async fn fetch_nodes(&self, batch: &[PendingNode]) -> Result<Vec<Bytes>, OcdbtError> {
        let mut by_file: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, node) in batch.iter().enumerate() {
            if node.length > self.limits.max_node_bytes {
                let origin = Origin { file: &node.file, object: "B+tree node", offset: node.offset };
                return Err(origin.limit("encoded node length", node.length, self.limits.max_node_bytes));
            }
            by_file.entry(&node.file).or_default().push(i);
        }
        let reads = by_file.into_iter().map(|(file, indices)| async move {
            let ranges: Vec<Range<u64>> =
                indices.iter().map(|&i| batch[i].offset..batch[i].offset + batch[i].length).collect();
            let fetched = self.store.get_ranges(file, &ranges).await?;
            Ok::<_, OcdbtError>((indices, fetched))
        });
        let mut out = vec![Bytes::new(); batch.len()];
        for (indices, fetched) in futures::future::try_join_all(reads).await? {
            for (i, bytes) in indices.into_iter().zip(fetched) {
                let node = &batch[i];
                let origin = Origin { file: &node.file, object: "B+tree node", offset: node.offset };
                check_length(&origin, &bytes, node.length)?;
                out[i] = bytes;
            }
        }
        Ok(out)
    }

    /// Reads the whole B+tree of `version` into a sorted key → value index.
    async fn load_index(
        &self,
        version: &VersionInfo,
        manifest_file: &str,
    ) -> Result<Vec<(Box<[u8]>, ValueRef)>, OcdbtError> {
        let Some(root) = &version.root else {
            return Ok(Vec::new());
        };
        let manifest_origin = Origin { file: manifest_file, object: "manifest", offset: 0 };
        let mut level = vec![PendingNode {
            file: self.resolve(&root.file, &manifest_origin)?,
            base_path: root.file.base_path.clone(),
            offset: root.offset,
            length: root.length,
            prefix: Vec::new(),
            lower_bound: Vec::new(),
        }];
        let mut height = version.root_height;
        let mut index: Vec<(Box<[u8]>, ValueRef)> = Vec::new();
        let mut total_bytes = 0u64;
        loop {
            let mut next = Vec::new();
            for batch in level.chunks(NODE_BATCH) {
                let fetched = self.fetch_nodes(batch).await?;
                for (pending, bytes) in batch.iter().zip(fetched) {
                    total_bytes += bytes.len() as u64;
                    let origin = Origin { file: &pending.file, object: "B+tree node", offset: pending.offset };
                    if total_bytes > self.limits.max_total_node_bytes {
                        return Err(origin.limit("total B+tree bytes", total_bytes, self.limits.max_total_node_bytes));
                    }
                    self.decode_into(pending, &bytes, origin, height, &mut index, &mut next)?;
                }
            }
            if height == 0 {
                break;
            }
            height -= 1;
            level = next;
        }
        if let Some(i) = index.windows(2).position(|w| w[0].0 >= w[1].0) {
            let origin = Origin { file: manifest_file, object: "manifest", offset: 0 };
            return Err(origin.corrupt(format!(
                "the B+tree of generation {} lists key {} out of order",
                version.generation,
                String::from_utf8_lossy(&index[i + 1].0)
            )));
        }
        Ok(index)
    }

    /// Decodes one fetched node, appending its values to `index` (leaf) or its
    /// children to `next` (interior).
    fn decode_into(
        &self,
        pending: &PendingNode,
        bytes: &Bytes,
        origin: Origin<'_>,
        height: u8,
        index: &mut Vec<(Box<[u8]>, ValueRef)>,
        next: &mut Vec<PendingNode>,
    ) -> Result<(), OcdbtError> {
        let node = decode_btree_node(bytes, origin, &pending.base_path, self.limits.max_decoded_bytes)?;
        if node.height != height {
            return Err(origin.corrupt(format!("height is {}, expected {height}", node.height)));
        }
        let full_key = |stored: &[u8]| -> Result<Vec<u8>, OcdbtError> {
            let len = pending.prefix.len() + stored.len();
            if len > MAX_KEY_BYTES {
                return Err(origin.limit("full key length", len as u64, MAX_KEY_BYTES as u64));
            }
            Ok([&pending.prefix[..], stored].concat())
        };
        let mut files: Vec<Option<Arc<str>>> = vec![None; node.files.len()];
        let mut file_key = |i: usize| -> Result<Arc<str>, OcdbtError> {
            if let Some(key) = &files[i] {
                return Ok(key.clone());
            }
            let key = self.resolve(&node.files[i], &origin)?;
            files[i] = Some(key.clone());
            Ok(key)
        };
        let first_key = match &node.entries {
            BtreeEntries::Leaf(entries) => entries.first().map(|e| &e.key),
            BtreeEntries::Interior(entries) => entries.first().map(|e| &e.key),
        };
        if let Some(first) = first_key {
            if full_key(first)? < pending.lower_bound {
                return Err(origin.corrupt("first key is less than the parent entry's key"));
            }
        }
        match &node.entries {
            BtreeEntries::Leaf(entries) => {
                if (index.len() + entries.len()) as u64 > self.limits.max_keys {
                    return Err(origin.limit(
                        "number of keys",
                        (index.len() + entries.len()) as u64,
                        self.limits.max_keys,
                    ));
                }
                for entry in entries {
                    let value = match &entry.value {
                        LeafValue::Inline(bytes) => ValueRef::Inline(bytes.clone()),
                        LeafValue::OutOfLine { file, offset, length } => {
                            ValueRef::OutOfLine { file: file_key(*file)?, offset: *offset, length: *length }
                        }
                    };
                    index.push((full_key(&entry.key)?.into_boxed_slice(), value));
                }
            }
            BtreeEntries::Interior(entries) => {
                if (next.len() + entries.len()) as u64 > self.limits.max_keys {
                    return Err(origin.limit(
                        "number of nodes",
                        (next.len() + entries.len()) as u64,
                        self.limits.max_keys,
                    ));
                }
                for entry in entries {
                    let lower_bound = full_key(&entry.key)?;
                    next.push(PendingNode {
                        file: file_key(entry.file)?,
                        base_path: node.files[entry.file].base_path.clone(),
                        offset: entry.offset,
                        length: entry.length,
                        prefix: lower_bound[..pending.prefix.len() + entry.subtree_common_prefix_length].to_vec(),
                        lower_bound,
                    });
                }
            }
        }
        Ok(())
    }
}

/// An out-of-line value to check in [`Database::verify_values`] or [`Database::verify_value_extents`].
struct StoredValue<'a> {
    key: &'a [u8],
    offset: u64,
    length: u64,
}

fn check_length(origin: &Origin<'_>, bytes: &Bytes, expected: u64) -> Result<(), OcdbtError> {
    if bytes.len() as u64 != expected {
        return Err(origin.truncated(format!("read {} bytes, expected {expected}", bytes.len())));
    }
    Ok(())
}

impl Database {
    /// Opens the latest generation of the database whose `manifest.ocdbt` is
    /// at `prefix` in `store`.
    pub async fn open(store: Arc<dyn Storage>, prefix: &str) -> Result<Database, OcdbtError> {
        Database::open_with(store, prefix, None, Limits::default()).await
    }

    /// Opens generation `generation` (which may be an old one, reached
    /// through the version tree).
    pub async fn open_at(store: Arc<dyn Storage>, prefix: &str, generation: u64) -> Result<Database, OcdbtError> {
        Database::open_with(store, prefix, Some(generation), Limits::default()).await
    }

    /// Opens `generation` (the latest if `None`) with explicit `limits`.
    pub async fn open_with(
        store: Arc<dyn Storage>,
        prefix: &str,
        generation: Option<u64>,
        limits: Limits,
    ) -> Result<Database, OcdbtError> {
        let prefix = prefix.trim_end_matches('/').to_string();
        let io = Io { store: store.as_ref(), prefix: &prefix, limits: &limits };
        let (manifest_file, manifest) = io.latest_manifest().await?;
        // A decoded single-kind manifest has at least one inline version.
        let latest = manifest
            .versions
            .last()
            .cloned()
            .ok_or_else(|| Origin { file: &manifest_file, object: "manifest", offset: 0 }.corrupt("no versions"))?;
        let version = match generation {
            None => latest,
            Some(g) if g == latest.generation => latest,
            Some(g) => find_version(&io, &manifest, &manifest_file, g).await?,
        };
        let index = io.load_index(&version, &manifest_file).await?;
        Ok(Database { store, prefix, manifest_file, limits, manifest, version, index })
    }

    /// The storage prefix of the database (without a trailing `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The storage key of the manifest the version tree was read from.
    pub fn manifest_file(&self) -> &str {
        &self.manifest_file
    }

    /// The database configuration.
    pub fn config(&self) -> &Config {
        &self.manifest.config
    }

    /// The generation that was opened.
    pub fn generation(&self) -> &VersionInfo {
        &self.version
    }

    /// Every generation the database still records, oldest first (reads
    /// the version-tree nodes).
    pub async fn versions(&self) -> Result<Vec<VersionInfo>, OcdbtError> {
        let io = Io { store: self.store.as_ref(), prefix: &self.prefix, limits: &self.limits };
        let arity_log2 = self.manifest.config.version_tree_arity_log2;
        let mut out: Vec<VersionInfo> = Vec::new();
        // (file of the referring object, what it is, its offset, the reference)
        let mut stack: Vec<(Arc<str>, &'static str, u64, VersionNodeRef)> = Vec::new();
        let manifest_file: Arc<str> = Arc::from(self.manifest_file.as_str());
        for node in self.manifest.version_nodes.iter().rev() {
            stack.push((manifest_file.clone(), "manifest", 0, node.clone()));
        }
        while let Some((referrer_file, object, referrer_offset, node)) = stack.pop() {
            let referrer = Origin { file: &referrer_file, object, offset: referrer_offset };
            let (file, decoded) = io.read_version_node(&node, &referrer, arity_log2).await?;
            match decoded {
                VersionTreeNode::Leaf(versions) => out.extend(versions),
                VersionTreeNode::Interior(children) => {
                    for child in children.into_iter().rev() {
                        stack.push((file.clone(), "version tree node", node.node.offset, child));
                    }
                }
            }
            if out.len() as u64 + stack.len() as u64 > self.limits.max_keys {
                return Err(referrer.limit("number of generations", out.len() as u64, self.limits.max_keys));
            }
        }
        out.extend(self.manifest.versions.iter().cloned());
        if let Some(w) = out.windows(2).find(|w| w[0].generation >= w[1].generation) {
            let origin = Origin { file: &self.manifest_file, object: "manifest", offset: 0 };
            return Err(
                origin.corrupt(format!("version tree lists generation {} after {}", w[1].generation, w[0].generation))
            );
        }
        Ok(out)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if the generation has no keys.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every key, sorted bytewise.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.index.iter().map(|(k, _)| &k[..])
    }

    /// Every key with its value location, sorted by key.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &ValueRef)> {
        self.index.iter().map(|(k, v)| (&k[..], v))
    }

    /// The keys that start with `prefix`, sorted.
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let start = self.index.partition_point(|(k, _)| &k[..] < prefix);
        self.index[start..].iter().map(|(k, _)| &k[..]).take_while(move |k| k.starts_with(prefix))
    }

    /// Where the value of `key` is, if the key exists.
    pub fn value_ref(&self, key: &[u8]) -> Option<&ValueRef> {
        self.index.binary_search_by(|(k, _)| k[..].cmp(key)).ok().map(|i| &self.index[i].1)
    }

    fn location(&self, key: &[u8]) -> String {
        self.describe(&String::from_utf8_lossy(key))
    }

    fn check_value_size(&self, key: &[u8], length: u64) -> Result<(), OcdbtError> {
        if length > self.limits.max_value_bytes {
            return Err(OcdbtError::Limit {
                file: self.location(key),
                object: "value",
                offset: 0,
                what: "value length",
                value: length,
                max: self.limits.max_value_bytes,
            });
        }
        Ok(())
    }

    /// The value of `key`, or `None` if the key does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, OcdbtError> {
        Ok(self.get_many(&[key]).await?.pop().flatten())
    }

    /// Bytes `range` of the value of `key`, or `None` if the key does not exist.
    pub async fn get_range(&self, key: &[u8], range: Range<u64>) -> Result<Option<Bytes>, OcdbtError> {
        let Some(value) = self.value_ref(key) else {
            return Ok(None);
        };
        if range.start > range.end || range.end > value.len() {
            return Err(OcdbtError::RangeOutOfBounds {
                location: self.location(key),
                start: range.start,
                end: range.end,
                size: value.len(),
            });
        }
        self.check_value_size(key, range.end - range.start)?;
        match value {
            // Lossless: inline values are at most 1 MiB.
            ValueRef::Inline(bytes) => Ok(Some(bytes.slice(range.start as usize..range.end as usize))),
            ValueRef::OutOfLine { file, offset, .. } => {
                if range.is_empty() {
                    return Ok(Some(Bytes::new()));
                }
                let bytes = self.store.get_range(file, offset + range.start..offset + range.end).await?;
                let origin = Origin { file, object: "value", offset: offset + range.start };
                check_length(&origin, &bytes, range.end - range.start)?;
                Ok(Some(bytes))
            }
        }
    }

    /// The values of several keys (`None` for missing keys), in the order
    /// given. Out-of-line values are read with one coalesced
    /// [`Storage::get_ranges`] call per data file, all files concurrently.
    pub async fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Bytes>>, OcdbtError> {
        let mut out: Vec<Option<Bytes>> = vec![None; keys.len()];
        let mut by_file: BTreeMap<&Arc<str>, Vec<(usize, Range<u64>)>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            match self.value_ref(key.as_ref()) {
                None => {}
                Some(ValueRef::Inline(bytes)) => out[i] = Some(bytes.clone()),
                Some(ValueRef::OutOfLine { length: 0, .. }) => out[i] = Some(Bytes::new()),
                Some(ValueRef::OutOfLine { file, offset, length }) => {
                    self.check_value_size(key.as_ref(), *length)?;
                    by_file.entry(file).or_default().push((i, *offset..offset + length));
                }
            }
        }
        let reads = by_file.into_iter().map(|(file, wanted)| async move {
            let ranges: Vec<Range<u64>> = wanted.iter().map(|(_, r)| r.clone()).collect();
            let fetched = self.store.get_ranges(file, &ranges).await?;
            Ok::<_, OcdbtError>((file, wanted, fetched))
        });
        for (file, wanted, fetched) in futures::future::try_join_all(reads).await? {
            for ((i, range), bytes) in wanted.into_iter().zip(fetched) {
                let origin = Origin { file, object: "value", offset: range.start };
                check_length(&origin, &bytes, range.end - range.start)?;
                out[i] = Some(bytes);
            }
        }
        Ok(out)
    }

    /// Reads every out-of-line value (in pieces of at most 64 MiB) and
    /// reports every problem found: missing data files, values that extend
    /// past the end of their file, read errors. Manifest and node checksums
    /// were already verified when the database was opened; values carry no
    /// checksum of their own.
    pub async fn verify_values(&self) -> Vec<OcdbtError> {
        self.verify(true).await
    }

    /// Like [`verify_values`](Self::verify_values) without reading the
    /// values: one size lookup per data file finds missing files and values
    /// that extend past the end of theirs. For callers that read the values
    /// anyway (`orbax verify` decodes every leaf).
    pub async fn verify_value_extents(&self) -> Vec<OcdbtError> {
        self.verify(false).await
    }

    async fn verify(&self, read: bool) -> Vec<OcdbtError> {
        let mut by_file: BTreeMap<&Arc<str>, Vec<StoredValue<'_>>> = BTreeMap::new();
        for (key, value) in &self.index {
            if let ValueRef::OutOfLine { file, offset, length } = value {
                by_file.entry(file).or_default().push(StoredValue { key, offset: *offset, length: *length });
            }
        }
        let checks = by_file.into_iter().map(|(file, values)| self.verify_file(file, values, read));
        stream::iter(checks).buffer_unordered(VERIFY_CONCURRENCY).concat().await
    }

    async fn verify_file(&self, file: &str, values: Vec<StoredValue<'_>>, read: bool) -> Vec<OcdbtError> {
        let size = match self.store.head(file).await {
            Ok(meta) => meta.size,
            Err(e) => return vec![e.into()],
        };
        let mut problems = Vec::new();
        let mut pieces: Vec<Range<u64>> = Vec::new();
        for StoredValue { key, offset, length } in values {
            if offset + length > size {
                problems.push(OcdbtError::Truncated {
                    file: file.to_string(),
                    object: "value",
                    offset,
                    what: format!(
                        "the value of key {} needs bytes {offset}..{} but the file has {size} bytes",
                        String::from_utf8_lossy(key),
                        offset + length
                    ),
                });
                continue;
            }
            if !read {
                continue;
            }
            let mut start = offset;
            while start < offset + length {
                let end = (start + VERIFY_READ_BYTES).min(offset + length);
                pieces.push(start..end);
                start = end;
            }
        }
        pieces.sort_by_key(|r| r.start);
        let mut batch: Vec<Range<u64>> = Vec::new();
        let mut batch_bytes = 0;
        for piece in pieces {
            batch_bytes += piece.end - piece.start;
            batch.push(piece);
            if batch_bytes >= VERIFY_READ_BYTES {
                problems.extend(self.read_pieces(file, &std::mem::take(&mut batch)).await);
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            problems.extend(self.read_pieces(file, &batch).await);
        }
        problems
    }

    async fn read_pieces(&self, file: &str, ranges: &[Range<u64>]) -> Option<OcdbtError> {
        match self.store.get_ranges(file, ranges).await {
            Ok(fetched) => ranges.iter().zip(&fetched).find_map(|(r, bytes)| {
                let origin = Origin { file, object: "value", offset: r.start };
                check_length(&origin, bytes, r.end - r.start).err()
            }),
            Err(e) => Some(e.into()),
        }
    }
}

/// Finds generation `generation` by descending the version tree.
async fn find_version(
    io: &Io<'_>,
    manifest: &Manifest,
    manifest_file: &str,
    generation: u64,
) -> Result<VersionInfo, OcdbtError> {
    if let Some(v) = manifest.versions.iter().find(|v| v.generation == generation) {
        return Ok(v.clone());
    }
    let not_found = || OcdbtError::NotFound {
        file: manifest_file.to_string(),
        what: format!(
            "generation {generation} is not in the database (latest is {})",
            manifest.versions.last().map_or(0, |v| v.generation)
        ),
    };
    let arity_log2 = manifest.config.version_tree_arity_log2;
    let mut candidates: Vec<VersionNodeRef> = manifest.version_nodes.clone();
    let mut referrer_file: Arc<str> = Arc::from(manifest_file);
    let mut referrer_offset = 0;
    let mut object = "manifest";
    // Each step descends one level; heights are validated to decrease.
    loop {
        // Entries are sorted by latest generation: the first one at or after
        // `generation` is the only subtree that can hold it.
        let Some(node) = candidates.iter().find(|n| n.generation >= generation).cloned() else {
            return Err(not_found());
        };
        let referrer = Origin { file: &referrer_file, object, offset: referrer_offset };
        let (file, decoded) = io.read_version_node(&node, &referrer, arity_log2).await?;
        match decoded {
            VersionTreeNode::Leaf(versions) => {
                return versions.into_iter().find(|v| v.generation == generation).ok_or_else(not_found)
            }
            VersionTreeNode::Interior(children) => {
                candidates = children;
                referrer_file = file;
                referrer_offset = node.node.offset;
                object = "version tree node";
            }
        }
    }
}

#[async_trait]
impl KvSource for Database {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        Ok(Database::get(self, key.as_bytes()).await?)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, KvError> {
        Ok(Database::get_range(self, key.as_bytes(), range).await?)
    }

    async fn value_len(&self, key: &str) -> Result<Option<u64>, KvError> {
        Ok(self.value_ref(key.as_bytes()).map(ValueRef::len))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, KvError> {
        Ok(Database::get_many(self, keys).await?)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        self.keys_with_prefix(prefix.as_bytes())
            .map(|key| {
                String::from_utf8(key.to_vec()).map_err(|_| {
                    KvError::from(OcdbtError::KeyNotUtf8 {
                        database: self.prefix.clone(),
                        key: key.escape_ascii().to_string(),
                    })
                })
            })
            .collect()
    }

    fn describe(&self, key: &str) -> String {
        let prefix = if self.prefix.is_empty() { "." } else { &self.prefix };
        format!("{prefix} (OCDBT) key {key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocdbt::codec::tests::{envelope, varint};
    use crate::ocdbt::codec::{BTREE_NODE_MAGIC, MANIFEST_MAGIC, VERSION_NODE_MAGIC};
    use crate::storage::{InMemory, PutMode};
    use crate::ErrorKind;

    const ARITY_LOG2: u8 = 1;
    const TABLE: &[u8] = &[1, 3, 0, b'd', b'/', b'f'];

    /// A leaf node whose keys and (inline) values are `pairs`.
    fn leaf_node(pairs: &[(&[u8], &[u8])]) -> Bytes {
        let mut b = vec![0, 0];
        b.extend(varint(pairs.len() as u64));
        b.extend(vec![0u8; pairs.len() - 1]);
        pairs.iter().for_each(|(k, _)| b.extend(varint(k.len() as u64)));
        pairs.iter().for_each(|(k, _)| b.extend(*k));
        pairs.iter().for_each(|(_, v)| b.extend(varint(v.len() as u64)));
        b.extend(vec![0u8; pairs.len()]);
        pairs.iter().for_each(|(_, v)| b.extend(*v));
        envelope(BTREE_NODE_MAGIC, &b, false)
    }

    /// A version leaf-entry array: (generation, root offset, root length).
    fn version_leaves(versions: &[(u64, u64, u64)]) -> Vec<u8> {
        let n = versions.len();
        let mut b = varint(n as u64);
        versions.iter().for_each(|v| b.extend(varint(v.0)));
        b.extend(vec![0u8; 2 * n]); // heights, file ids
        versions.iter().for_each(|v| b.extend(varint(v.1)));
        versions.iter().for_each(|v| b.extend(varint(v.2)));
        b.extend(vec![1u8; 3 * n]);
        versions.iter().for_each(|v| b.extend((v.0 * 1000).to_le_bytes()));
        b
    }

    /// A version interior-entry array: (generation, offset, length, num_generations[, height]).
    fn version_refs(refs: &[(u64, u64, u64, u64)], heights: Option<&[u8]>) -> Vec<u8> {
        let mut b = varint(refs.len() as u64);
        refs.iter().for_each(|r| b.extend(varint(r.0)));
        b.extend(vec![0u8; refs.len()]);
        refs.iter().for_each(|r| b.extend(varint(r.1)));
        refs.iter().for_each(|r| b.extend(varint(r.2)));
        refs.iter().for_each(|r| b.extend(varint(r.3)));
        refs.iter().for_each(|r| b.extend(r.0.to_le_bytes()));
        if let Some(h) = heights {
            b.extend(h);
        }
        b
    }

    /// Five generations with arity 2: generation 5 inline; 1..=4 behind a
    /// height-1 version node with two leaf children. Generation g has keys
    /// `k1..=kg`, key `k<i>` holding `v<i>@<g>`.
    async fn five_generation_db() -> Arc<dyn Storage> {
        let mut file: Vec<u8> = Vec::new();
        let mut roots = Vec::new();
        for g in 1..=5u64 {
            let keys: Vec<Vec<u8>> = (1..=g).map(|i| format!("k{i}").into_bytes()).collect();
            let values: Vec<Vec<u8>> = (1..=g).map(|i| format!("v{i}@{g}").into_bytes()).collect();
            let pairs: Vec<(&[u8], &[u8])> = keys.iter().zip(&values).map(|(k, v)| (&k[..], &v[..])).collect();
            let node = leaf_node(&pairs);
            roots.push((g, file.len() as u64, node.len() as u64));
            file.extend(&node[..]);
        }
        let mut leaf_refs = Vec::new();
        for pair in [&roots[0..2], &roots[2..4]] {
            let mut body = vec![ARITY_LOG2, 0];
            body.extend(TABLE);
            body.extend(version_leaves(pair));
            let node = envelope(VERSION_NODE_MAGIC, &body, true);
            leaf_refs.push((pair[1].0, file.len() as u64, node.len() as u64, 2));
            file.extend(&node[..]);
        }
        let mut body = vec![ARITY_LOG2, 1];
        body.extend(TABLE);
        body.extend(version_refs(&leaf_refs, None));
        let interior = envelope(VERSION_NODE_MAGIC, &body, false);
        let interior_ref = (4, file.len() as u64, interior.len() as u64, 4);
        file.extend(&interior[..]);

        let mut manifest = vec![0u8; 16];
        manifest.extend([0, 100, 100, ARITY_LOG2, 0]);
        manifest.extend(TABLE);
        manifest.extend(version_leaves(&roots[4..]));
        manifest.extend(version_refs(&[interior_ref], Some(&[1])));
        let store = InMemory::new();
        store.put("db/d/f", Bytes::from(file), PutMode::Overwrite).await.unwrap();
        store.put("db/manifest.ocdbt", envelope(MANIFEST_MAGIC, &manifest, true), PutMode::Overwrite).await.unwrap();
        Arc::new(store)
    }

    #[tokio::test]
    async fn old_generations_through_version_tree_nodes() {
        let store = five_generation_db().await;
        let db = Database::open(store.clone(), "db/").await.unwrap();
        assert_eq!(db.prefix(), "db");
        assert_eq!(db.generation().generation, 5);
        assert_eq!(db.generation().commit_time_ns, 5000);
        assert_eq!(db.len(), 5);
        assert_eq!(db.get(b"k3").await.unwrap().unwrap(), "v3@5");
        let versions = db.versions().await.unwrap();
        assert_eq!(versions.iter().map(|v| v.generation).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        for g in 1..=5u64 {
            let old = Database::open_at(store.clone(), "db", g).await.unwrap();
            assert_eq!(old.generation().generation, g);
            assert_eq!(old.len() as u64, g);
            assert_eq!(old.get(format!("k{g}").as_bytes()).await.unwrap().unwrap(), format!("v{g}@{g}"));
        }
        let err = Database::open_at(store, "db", 6).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("db/manifest.ocdbt: generation 6"), "{err}");
    }

    #[tokio::test]
    async fn corrupt_version_node_is_reported_when_reached() {
        let store = five_generation_db().await;
        let mut file = store.get("db/d/f").await.unwrap().to_vec();
        let last = file.len() - 1;
        file[last] ^= 1; // the CRC of the interior version node
        store.put("db/d/f", Bytes::from(file), PutMode::Overwrite).await.unwrap();
        // The latest generation does not need the version tree.
        let db = Database::open(store.clone(), "db").await.unwrap();
        let err = db.versions().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert!(err.to_string().starts_with("db/d/f: version tree node at offset"), "{err}");
        assert_eq!(Database::open_at(store, "db", 2).await.unwrap_err().kind(), ErrorKind::Checksum);
    }

    #[tokio::test]
    async fn keys_prefix_listing_and_ranges() {
        let db = Database::open(five_generation_db().await, "db").await.unwrap();
        assert_eq!(db.keys_with_prefix(b"k").count(), 5);
        assert_eq!(db.keys_with_prefix(b"k4").collect::<Vec<_>>(), [b"k4"]);
        assert_eq!(db.keys_with_prefix(b"x").count(), 0);
        assert_eq!(KvSource::list(&db, "k").await.unwrap().len(), 5);
        assert_eq!(db.get_range(b"k2", 1..3).await.unwrap().unwrap(), "2@");
        assert_eq!(db.get_range(b"k2", 0..9).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(db.get(b"nope").await.unwrap(), None);
        assert_eq!(KvSource::describe(&db, "k1"), "db (OCDBT) key k1");
        let many = db.get_many(&["k5", "zz", "k1"]).await.unwrap();
        assert_eq!(many, [Some(Bytes::from("v5@5")), None, Some(Bytes::from("v1@5"))]);
        assert!(db.verify_values().await.is_empty());
    }

    /// An interior node of `height`: entries (key, subtree_common_prefix_length, offset, length) into `d/f`.
    fn interior_node(height: u8, entries: &[(&[u8], u8, u64, u64)]) -> Bytes {
        let mut b = vec![height];
        b.extend(TABLE);
        b.extend(varint(entries.len() as u64));
        b.extend(vec![0u8; entries.len() - 1]);
        entries.iter().for_each(|e| b.extend(varint(e.0.len() as u64)));
        entries.iter().for_each(|e| b.push(e.1));
        entries.iter().for_each(|e| b.extend(e.0));
        b.extend(vec![0u8; entries.len()]);
        entries.iter().for_each(|e| b.extend(varint(e.2)));
        entries.iter().for_each(|e| b.extend(varint(e.3)));
        b.extend(vec![0u8; 3 * entries.len()]);
        envelope(BTREE_NODE_MAGIC, &b, false)
    }

    /// A database whose data file `d/f` holds `leaves` followed by the root
    /// made by `root(offsets and lengths of the leaves)`, of height `height`.
    async fn tree_db(leaves: &[Bytes], height: u8, root: impl FnOnce(&[(u64, u64)]) -> Bytes) -> Arc<dyn Storage> {
        let mut file = Vec::new();
        let mut refs = Vec::new();
        for leaf in leaves {
            refs.push((file.len() as u64, leaf.len() as u64));
            file.extend(&leaf[..]);
        }
        let root = root(&refs);
        let root_ref = (file.len() as u64, root.len() as u64);
        file.extend(&root[..]);
        let mut manifest = vec![0u8; 16];
        manifest.extend([0, 100, 100, 4, 0]);
        manifest.extend(TABLE);
        let mut versions = version_leaves(&[(1, root_ref.0, root_ref.1)]);
        versions[2] = height;
        manifest.extend(versions);
        manifest.push(0);
        let store = InMemory::new();
        store.put("db/d/f", Bytes::from(file), PutMode::Overwrite).await.unwrap();
        store.put("db/manifest.ocdbt", envelope(MANIFEST_MAGIC, &manifest, false), PutMode::Overwrite).await.unwrap();
        Arc::new(store)
    }

    #[tokio::test]
    async fn subtree_common_prefixes_are_applied() {
        let leaves = [leaf_node(&[(b"b", b"1"), (b"c", b"2")]), leaf_node(&[(b"x", b"3")])];
        let store =
            tree_db(&leaves, 1, |r| interior_node(1, &[(b"ab", 1, r[0].0, r[0].1), (b"x", 0, r[1].0, r[1].1)])).await;
        let db = Database::open(store, "db").await.unwrap();
        assert_eq!(db.keys().collect::<Vec<_>>(), [&b"ab"[..], b"ac", b"x"]);
        assert_eq!(db.get(b"ac").await.unwrap().unwrap(), "2");
    }

    #[tokio::test]
    async fn tree_structure_errors() {
        let cases: Vec<(Arc<dyn Storage>, &str)> = vec![
            // The child's first key is below the parent entry's key.
            (
                tree_db(&[leaf_node(&[(b"a", b"1")])], 1, |r| interior_node(1, &[(b"m", 0, r[0].0, r[0].1)])).await,
                "first key is less than",
            ),
            // A leaf where a height-1 node is expected.
            (
                tree_db(&[leaf_node(&[(b"a", b"1")])], 2, |r| interior_node(2, &[(b"a", 0, r[0].0, r[0].1)])).await,
                "height is 0, expected 1",
            ),
            // The root's height differs from the manifest's root_height.
            (tree_db(&[], 1, |_| leaf_node(&[(b"a", b"1")])).await, "height is 0, expected 1"),
            // Sibling subtrees overlap.
            (
                tree_db(&[leaf_node(&[(b"a", b"1"), (b"c", b"2")]), leaf_node(&[(b"b", b"3")])], 1, |r| {
                    interior_node(1, &[(b"a", 0, r[0].0, r[0].1), (b"b", 0, r[1].0, r[1].1)])
                })
                .await,
                "out of order",
            ),
        ];
        for (store, message) in cases {
            let err = Database::open(store, "db").await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
            assert!(err.to_string().contains(message), "{err}");
            assert!(err.to_string().starts_with("db/"), "{err}");
        }
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let leaves = [leaf_node(&[(b"a", b"12345"), (b"b", b"1")])];
        let store = tree_db(&leaves, 1, |r| interior_node(1, &[(b"a", 0, r[0].0, r[0].1)])).await;
        let limits = Limits { max_keys: 1, ..Limits::default() };
        let err = Database::open_with(store.clone(), "db", None, limits).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Limit);
        let limits = Limits { max_node_bytes: 20, ..Limits::default() };
        let err = Database::open_with(store.clone(), "db", None, limits).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Limit);
        let limits = Limits { max_total_node_bytes: 60, ..Limits::default() };
        let err = Database::open_with(store, "db", None, limits).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Limit);
        assert!(err.to_string().contains("total B+tree bytes"), "{err}");
    }

    #[tokio::test]
    async fn non_utf8_keys_are_listed_as_errors() {
        let store = tree_db(&[], 0, |_| leaf_node(&[(b"a", b"1"), (b"b\xff", b"2")])).await;
        let db = Database::open(store, "db").await.unwrap();
        assert_eq!(db.get(b"b\xff").await.unwrap().unwrap(), "2");
        assert_eq!(KvSource::list(&db, "a").await.unwrap(), ["a"]);
        let err = KvSource::list(&db, "").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains(r"b\xff"), "{err}");
    }
}
