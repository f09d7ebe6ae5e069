//! [orbax-rs](https://github.com/orbax-rs/orbax-rs) storage over
//! [Apache OpenDAL](https://opendal.apache.org) operators: `s3`, `gcs`,
//! `azblob`, `fs` and `memory`.
//!
//! [`OpendalStorage`] implements [`orbax_storage::Storage`]. Operators made
//! by [`OpendalStorage::open`] carry OpenDAL's `TimeoutLayer` (a stalled
//! request fails with an error naming its object) and `RetryLayer` (OpenDAL
//! does not retry without it); operators passed to [`OpendalStorage::new`]
//! are used as given.
//!
//! ```no_run
//! use orbax_opendal::OpendalStorage;
//! use orbax_storage::remote::{RemoteOptions, Service};
//!
//! let options = RemoteOptions { endpoint: Some("http://127.0.0.1:4443".into()), anonymous: true, ..Default::default() };
//! let store = OpendalStorage::open(Service::Gcs, "bucket", &options)?;
//! # Ok::<(), orbax_storage::StorageError>(())
//! ```
#![deny(missing_docs)]

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{services, Entry, EntryMode, ErrorKind as DalKind, Operator};
use orbax_storage::remote::{get_ranges_parallel, RemoteOptions, Service};
use orbax_storage::{
    validate_key, Capabilities, ListResult, ObjectMeta, ObjectWriter, PutMode, Result, Storage, StorageError,
};

pub use opendal;

/// A [`Storage`] over an OpenDAL [`Operator`].
#[derive(Clone)]
pub struct OpendalStorage {
    op: Operator,
    description: String,
    concurrency: usize,
    part_size: usize,
    bulk_delete: bool,
    conditional_create: bool,
}

impl fmt::Debug for OpendalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "opendal {}", self.description)
    }
}

impl OpendalStorage {
    /// Wraps an operator. `description` names it in errors (e.g. `gs://bucket`).
    pub fn new(op: Operator, description: impl Into<String>, options: &RemoteOptions) -> Self {
        OpendalStorage {
            description: description.into(),
            concurrency: options.concurrency.max(1),
            part_size: options.part_size,
            bulk_delete: true,
            conditional_create: op.info().capability().write_with_if_not_exists,
            op,
        }
    }

    /// Opens `bucket` of `service` (for [`Service::Fs`] a directory;
    /// [`Service::Memory`] makes a new empty store) with retry and timeout
    /// layers from `options`. [`Service::Http`] is not offered.
    pub fn open(service: Service, bucket: &str, options: &RemoteOptions) -> Result<Self> {
        let description = match service {
            Service::Fs => bucket.to_string(),
            _ => format!("{}://{bucket}", service.scheme()),
        };
        let fail = |source: opendal::Error| StorageError::Backend { key: description.clone(), source: source.into() };
        let op = match service {
            Service::S3 => Operator::new(s3(bucket, options)).map_err(fail)?,
            Service::Gcs => Operator::new(gcs(bucket, options)).map_err(fail)?,
            Service::Azure => Operator::new(azblob(bucket, options)).map_err(fail)?,
            Service::Fs => Operator::new(fs(bucket)?).map_err(fail)?,
            Service::Memory => Operator::new(services::Memory::default()).map_err(fail)?,
            Service::Http => {
                return Err(StorageError::NotSupported { operation: "http", store: "the OpenDAL backend".into() })
            }
        };
        let op = op
            .layer(TimeoutLayer::new().with_timeout(options.timeout).with_io_timeout(options.timeout))
            .layer(RetryLayer::new().with_max_times(options.max_retries).with_jitter());
        let mut store = Self::new(op, description, options);
        // GCS deletes one object per request: OpenDAL's batch delete uses the
        // JSON batch endpoint, which fake-gcs-server (our test server) lacks.
        store.bulk_delete = service != Service::Gcs;
        // OpenDAL's fs service checks for the file and then renames over it:
        // two racing creates both succeed, so it is not a put-if-absent.
        store.conditional_create &= service != Service::Fs;
        Ok(store)
    }

    /// The wrapped operator.
    pub fn operator(&self) -> &Operator {
        &self.op
    }

    /// `key` as errors name it: the store and the key (`gs://bucket/key`).
    fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.description)
    }

    fn dir(prefix: &str) -> Result<String> {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Ok("/".to_string());
        }
        validate_key(prefix)?;
        Ok(format!("{prefix}/"))
    }

    /// Metadata of listed files, `concurrency` at a time: listings of some
    /// services (fs) carry neither size nor time, and those are asked for.
    async fn metas(&self, entries: Vec<Entry>) -> Result<Vec<ObjectMeta>> {
        let lookups = entries.into_iter().map(|entry| {
            let this = self.clone();
            async move {
                let meta = entry.metadata();
                match meta.last_modified() {
                    Some(_) => Ok(object_meta(entry.path().to_string(), meta)),
                    None => this.head(entry.path()).await,
                }
            }
        });
        let mut out: Vec<ObjectMeta> = stream::iter(lookups).buffered(self.concurrency).try_collect().await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

fn s3(bucket: &str, options: &RemoteOptions) -> services::S3 {
    let region = options
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_string());
    let mut b = services::S3::default().bucket(bucket).region(&region);
    if let Some(endpoint) = &options.endpoint {
        b = b.endpoint(endpoint);
    }
    if let Some(v) = &options.access_key_id {
        b = b.access_key_id(v);
    }
    if let Some(v) = &options.secret_access_key {
        b = b.secret_access_key(v);
    }
    if let Some(v) = &options.session_token {
        b = b.session_token(v);
    }
    if options.anonymous {
        b = b.skip_signature().disable_ec2_metadata();
    }
    b
}

fn gcs(bucket: &str, options: &RemoteOptions) -> services::Gcs {
    let mut b = services::Gcs::default().bucket(bucket);
    if let Some(endpoint) = &options.endpoint {
        b = b.endpoint(endpoint);
    }
    if let Some(path) = &options.service_account_path {
        b = b.credential_path(path);
    }
    if options.anonymous {
        b = b.skip_signature().disable_vm_metadata().disable_config_load();
    }
    b
}

fn azblob(container: &str, options: &RemoteOptions) -> services::Azblob {
    let mut b = services::Azblob::default().container(container);
    match (&options.endpoint, &options.account_name) {
        (Some(endpoint), _) => b = b.endpoint(endpoint),
        (None, Some(account)) => b = b.endpoint(&format!("https://{account}.blob.core.windows.net")),
        (None, None) => {}
    }
    if let Some(v) = &options.account_name {
        b = b.account_name(v);
    }
    if let Some(v) = &options.account_key {
        b = b.account_key(v);
    }
    if options.anonymous {
        b = b.skip_signature();
    }
    b
}

/// A directory store whose unfinished writes go to a sibling directory
/// (same filesystem, so finishing is a rename; outside the root, so
/// listings never show them).
fn fs(dir: &str) -> Result<services::Fs> {
    let root = Path::new(dir);
    let name = root.file_name().and_then(|n| n.to_str()).unwrap_or("root");
    let temp = root.with_file_name(format!(".{name}.orbax-opendal-tmp"));
    for d in [root, temp.as_path()] {
        std::fs::create_dir_all(d).map_err(|source| StorageError::Io { key: d.display().to_string(), source })?;
    }
    Ok(services::Fs::default().root(dir).atomic_write_dir(&temp.to_string_lossy()))
}

/// Converts an OpenDAL error about `key` into a [`StorageError`].
fn map_error(key: &str, error: opendal::Error) -> StorageError {
    let key = key.to_string();
    match error.kind() {
        DalKind::NotFound => StorageError::NotFound { key },
        DalKind::AlreadyExists | DalKind::ConditionNotMatch => StorageError::AlreadyExists { key },
        _ => StorageError::Backend { key, source: error.into() },
    }
}

fn object_meta(key: String, meta: &opendal::Metadata) -> ObjectMeta {
    ObjectMeta { key, size: meta.content_length(), last_modified: meta.last_modified().map(SystemTime::from) }
}

#[async_trait]
impl Storage for OpendalStorage {
    async fn get(&self, key: &str) -> Result<Bytes> {
        validate_key(key)?;
        Ok(self.op.read(key).await.map_err(|e| map_error(&self.url(key), e))?.to_bytes())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        validate_key(key)?;
        let out_of_range =
            |size| StorageError::OutOfRange { key: self.url(key), start: range.start, end: range.end, size };
        if range.start >= range.end {
            let size = self.head(key).await?.size;
            return if range.start > size || range.start > range.end {
                Err(out_of_range(size))
            } else {
                Ok(Bytes::new())
            };
        }
        match self.op.read_with(key).range(range.clone()).await {
            Ok(buffer) if buffer.len() as u64 == range.end - range.start => Ok(buffer.to_bytes()),
            Ok(_) => Err(out_of_range(self.head(key).await?.size)),
            Err(e) if e.kind() == DalKind::NotFound => Err(map_error(&self.url(key), e)),
            Err(e) => {
                // Servers refuse a range past the end (416) in ways OpenDAL
                // reports differently per service; tell that apart from a
                // failed request.
                let size = self.head(key).await?.size;
                if range.end > size {
                    Err(out_of_range(size))
                } else {
                    Err(map_error(&self.url(key), e))
                }
            }
        }
    }

    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        get_ranges_parallel(self, key, ranges, self.concurrency).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        let meta = self.op.stat(key).await.map_err(|e| map_error(&self.url(key), e))?;
        if meta.mode() != EntryMode::FILE {
            return Err(StorageError::NotFound { key: self.url(key) });
        }
        Ok(object_meta(key.to_string(), &meta))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        validate_key(key)?;
        let create = mode == PutMode::Create;
        let native = self.op.info().capability().write_with_if_not_exists;
        // Without native support the condition is checked first (racy; the
        // capabilities say so).
        if create && !native && self.op.exists(key).await.map_err(|e| map_error(&self.url(key), e))? {
            return Err(StorageError::AlreadyExists { key: self.url(key) });
        }
        self.op
            .write_with(key, data)
            .if_not_exists(create && native)
            .await
            .map_err(|e| map_error(&self.url(key), e))?;
        Ok(())
    }

    async fn put_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        validate_key(key)?;
        let writer = self
            .op
            .writer_with(key)
            .chunk(self.part_size)
            .concurrent(self.concurrency)
            .await
            .map_err(|e| map_error(&self.url(key), e))?;
        Ok(Box::new(StreamingWriter { writer: Some(writer), key: self.url(key), written: 0 }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.op.delete(key).await.map_err(|e| map_error(&self.url(key), e))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let keys: Vec<String> = self.list(prefix).await?.into_iter().map(|o| o.key).collect();
        if self.bulk_delete {
            return self.op.delete_iter(keys).await.map_err(|e| map_error(&self.url(prefix), e));
        }
        let deletes = keys.into_iter().map(|key| {
            let this = self.clone();
            async move { this.delete(&key).await }
        });
        stream::iter(deletes).buffer_unordered(self.concurrency).try_collect::<Vec<()>>().await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let dir = Self::dir(prefix)?;
        let entries = match self.op.list_with(&dir).recursive(true).await {
            Err(e) if e.kind() == DalKind::NotFound => Vec::new(),
            other => other.map_err(|e| map_error(&self.url(prefix), e))?,
        };
        self.metas(entries.into_iter().filter(|e| e.metadata().mode() == EntryMode::FILE).collect()).await
    }

    async fn list_with_delimiter(&self, prefix: &str) -> Result<ListResult> {
        let dir = Self::dir(prefix)?;
        let entries = match self.op.list(&dir).await {
            Err(e) if e.kind() == DalKind::NotFound => Vec::new(),
            other => other.map_err(|e| map_error(&self.url(prefix), e))?,
        };
        let mut prefixes = Vec::new();
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.path();
            if path == dir || path.is_empty() || path == "/" {
                continue;
            }
            match entry.metadata().mode() {
                EntryMode::DIR => prefixes.push(path.trim_end_matches('/').to_string()),
                EntryMode::FILE => files.push(entry),
                _ => {}
            }
        }
        let objects = self.metas(files).await?;
        prefixes.sort();
        Ok(ListResult { objects, prefixes })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { atomic_rename: false, conditional_create: self.conditional_create, atomic_replace: false }
    }
}

/// An OpenDAL [`opendal::Writer`]: multipart (block list on Azure) in parts
/// of `part_size`, `concurrency` in flight; small objects are one write.
struct StreamingWriter {
    writer: Option<opendal::Writer>,
    key: String,
    written: u64,
}

#[async_trait]
impl ObjectWriter for StreamingWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        let writer = self.writer.as_mut().expect("a writer is only taken by finish");
        writer.write(data).await.map_err(|e| map_error(&self.key, e))
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let mut writer = self.writer.take().expect("a writer is only taken by finish");
        writer.close().await.map_err(|e| map_error(&self.key, e))?;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for StreamingWriter {
    /// An abandoned upload is aborted in the background so the service
    /// drops its parts (nothing was ever visible under the key).
    fn drop(&mut self) {
        if let (Some(mut writer), Ok(runtime)) = (self.writer.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = writer.abort().await;
            });
        }
    }
}
