//! [orbax-rs](https://github.com/orbax-rs/orbax-rs) storage over the
//! [`object_store`] crate: Amazon S3 (and S3-compatible servers), Google
//! Cloud Storage, Azure Blob Storage, a local directory, memory and
//! read-only HTTP.
//!
//! [`ObjectStoreStorage`] implements [`orbax_storage::Storage`]:
//! whole-object puts (conditional `PutMode::Create` where the service
//! enforces it), ranged reads coalesced and fetched in parallel, streamed
//! multipart uploads with bounded memory, bulk deletes, and listings. Every
//! error names the object it concerns.
//!
//! ```no_run
//! use orbax_object_store::ObjectStoreStorage;
//! use orbax_storage::remote::{RemoteOptions, Service};
//!
//! let options = RemoteOptions { endpoint: Some("http://127.0.0.1:5000".into()), allow_http: true, ..Default::default() };
//! let store = ObjectStoreStorage::open(Service::S3, "bucket", &options)?;
//! # Ok::<(), orbax_storage::StorageError>(())
//! ```
#![deny(missing_docs)]

mod writer;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, RetryConfig};
use orbax_storage::remote::{get_ranges_parallel, RemoteOptions, Service};
use orbax_storage::{
    validate_key, Capabilities, ListResult, ObjectMeta, ObjectWriter, PutMode, Result, Storage, StorageError,
};

pub use object_store;

/// A [`Storage`] over any [`ObjectStore`].
pub struct ObjectStoreStorage {
    store: Arc<dyn ObjectStore>,
    description: String,
    capabilities: Capabilities,
    concurrency: usize,
    part_size: usize,
}

impl fmt::Debug for ObjectStoreStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "object_store {}", self.description)
    }
}

impl ObjectStoreStorage {
    /// Wraps an already configured store. `description` names it in errors
    /// (e.g. `s3://bucket`); `conditional_create` says whether the service
    /// enforces `PutMode::Create`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        description: impl Into<String>,
        conditional_create: bool,
        options: &RemoteOptions,
    ) -> Self {
        ObjectStoreStorage {
            store,
            description: description.into(),
            capabilities: Capabilities { atomic_rename: false, conditional_create, atomic_replace: false },
            concurrency: options.concurrency.max(1),
            part_size: options.part_size,
        }
    }

    /// Opens `bucket` of `service` (for [`Service::Fs`] a directory, for
    /// [`Service::Http`] the base URL; [`Service::Memory`] makes a new empty
    /// store). Settings left unset in `options` come from the environment
    /// the way `object_store`'s `from_env` builders read it.
    pub fn open(service: Service, bucket: &str, options: &RemoteOptions) -> Result<Self> {
        let description = match service {
            Service::Fs | Service::Http => bucket.to_string(),
            _ => format!("{}://{bucket}", service.scheme()),
        };
        let fail =
            |source: object_store::Error| StorageError::Backend { key: description.clone(), source: source.into() };
        let client = client_options(options);
        let retry = retry_config(options);
        let (store, conditional): (Arc<dyn ObjectStore>, bool) = match service {
            Service::S3 => (Arc::new(s3(bucket, options, client, retry).build().map_err(fail)?), true),
            Service::Gcs => (Arc::new(gcs(bucket, options, client, retry).build().map_err(fail)?), true),
            Service::Azure => (Arc::new(azure(bucket, options, client, retry).build().map_err(fail)?), true),
            Service::Fs => {
                std::fs::create_dir_all(bucket).map_err(|source| StorageError::Io { key: bucket.into(), source })?;
                (Arc::new(object_store::local::LocalFileSystem::new_with_prefix(bucket).map_err(fail)?), true)
            }
            Service::Memory => (Arc::new(object_store::memory::InMemory::new()), true),
            Service::Http => {
                // An explicit http:// URL is consent to plain HTTP.
                let http = object_store::http::HttpBuilder::new()
                    .with_url(bucket)
                    .with_client_options(client.with_allow_http(options.allow_http || bucket.starts_with("http://")))
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?;
                (Arc::new(http), false)
            }
        };
        Ok(Self::new(store, description, conditional, options))
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key as an `object_store` path, byte for byte: `Path::from` would
    /// percent-encode characters such as `%`, `[` or `#`, and listings would
    /// then return keys that differ from the ones written.
    /// `key` as errors name it: the store and the key (`s3://bucket/key`).
    fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.description)
    }

    fn path(&self, key: &str) -> Result<Path> {
        validate_key(key)?;
        Path::parse(key).map_err(|_| StorageError::InvalidKey {
            key: key.to_string(),
            reason: "empty segment or control character (object_store paths cannot hold them)",
        })
    }

    fn prefix(&self, prefix: &str) -> Result<Option<Path>> {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Ok(None);
        }
        self.path(prefix).map(Some)
    }
}

fn client_options(options: &RemoteOptions) -> ClientOptions {
    ClientOptions::new()
        .with_timeout(options.timeout)
        .with_connect_timeout(options.connect_timeout)
        .with_allow_http(options.allow_http)
}

fn retry_config(options: &RemoteOptions) -> RetryConfig {
    RetryConfig {
        max_retries: options.max_retries,
        retry_timeout: options.timeout * (options.max_retries as u32 + 1),
        ..RetryConfig::default()
    }
}

fn s3(
    bucket: &str,
    options: &RemoteOptions,
    client: ClientOptions,
    retry: RetryConfig,
) -> object_store::aws::AmazonS3Builder {
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_client_options(client)
        .with_retry(retry)
        .with_allow_http(options.allow_http);
    if let Some(endpoint) = &options.endpoint {
        b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
    }
    if let Some(region) = &options.region {
        b = b.with_region(region);
    }
    if let Some(v) = &options.access_key_id {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = &options.secret_access_key {
        b = b.with_secret_access_key(v);
    }
    if let Some(v) = &options.session_token {
        b = b.with_token(v);
    }
    if options.anonymous {
        b = b.with_skip_signature(true);
    }
    b
}

fn gcs(
    bucket: &str,
    options: &RemoteOptions,
    client: ClientOptions,
    retry: RetryConfig,
) -> object_store::gcp::GoogleCloudStorageBuilder {
    let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(bucket)
        .with_client_options(client)
        .with_retry(retry);
    if let Some(path) = &options.service_account_path {
        b = b.with_service_account_path(path);
    }
    match (&options.endpoint, options.anonymous) {
        // An emulator without OAuth: a service-account document that sets the
        // base URL and disables token fetches. (`with_skip_signature` would
        // still ask the GCE metadata server for a token before writes.)
        (Some(endpoint), true) => {
            let document = serde_json::json!({
                "gcs_base_url": endpoint,
                "disable_oauth": true,
                "client_email": "",
                "private_key": "",
                "private_key_id": "",
            });
            b = b.with_service_account_key(document.to_string());
        }
        (Some(endpoint), false) => b = b.with_base_url(endpoint),
        (None, true) => b = b.with_skip_signature(true),
        (None, false) => {}
    }
    b
}

fn azure(
    container: &str,
    options: &RemoteOptions,
    client: ClientOptions,
    retry: RetryConfig,
) -> object_store::azure::MicrosoftAzureBuilder {
    let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_container_name(container)
        .with_client_options(client)
        .with_retry(retry)
        .with_allow_http(options.allow_http);
    if let Some(endpoint) = &options.endpoint {
        b = b.with_endpoint(endpoint.clone());
    }
    if let Some(v) = &options.account_name {
        b = b.with_account(v);
    }
    if let Some(v) = &options.account_key {
        b = b.with_access_key(v);
    }
    if options.anonymous {
        b = b.with_skip_signature(true);
    }
    b
}

/// Converts an `object_store` error about `key` into a [`StorageError`].
pub(crate) fn map_error(key: &str, error: object_store::Error) -> StorageError {
    let key = key.to_string();
    match error {
        object_store::Error::NotFound { .. } => StorageError::NotFound { key },
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StorageError::AlreadyExists { key }
        }
        other => StorageError::Backend { key, source: other.into() },
    }
}

fn object_meta(key: String, meta: &object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta { key, size: meta.size, last_modified: Some(SystemTime::from(meta.last_modified)) }
}

#[async_trait]
impl Storage for ObjectStoreStorage {
    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let result = self.store.get(&path).await.map_err(|e| map_error(&self.url(key), e))?;
        result.bytes().await.map_err(|e| map_error(&self.url(key), e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        if range.start >= range.end {
            let size = self.head(key).await?.size;
            if range.start > size || range.start > range.end {
                return Err(StorageError::OutOfRange { key: self.url(key), start: range.start, end: range.end, size });
            }
            return Ok(Bytes::new());
        }
        let options = GetOptions { range: Some(range.clone().into()), ..GetOptions::default() };
        match self.store.get_opts(&path, options).await {
            Ok(result) => {
                let size = result.meta.size;
                if result.range != range {
                    return Err(StorageError::OutOfRange {
                        key: self.url(key),
                        start: range.start,
                        end: range.end,
                        size,
                    });
                }
                result.bytes().await.map_err(|e| map_error(&self.url(key), e))
            }
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound { key: self.url(key) }),
            Err(error) => {
                // A range past the end is refused by the server (416) or by
                // the client; tell that apart from a failed request.
                let size = self.head(key).await?.size;
                if range.end > size {
                    Err(StorageError::OutOfRange { key: self.url(key), start: range.start, end: range.end, size })
                } else {
                    Err(map_error(&self.url(key), error))
                }
            }
        }
    }

    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        get_ranges_parallel(self, key, ranges, self.concurrency).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let meta = self.store.head(&path).await.map_err(|e| map_error(&self.url(key), e))?;
        Ok(object_meta(key.to_string(), &meta))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let path = self.path(key)?;
        let mode = match mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::Create if self.capabilities.conditional_create => object_store::PutMode::Create,
            PutMode::Create => {
                return Err(StorageError::NotSupported {
                    operation: "conditional create",
                    store: format!("{self:?} (for {key})"),
                })
            }
        };
        let options = PutOptions { mode, ..PutOptions::default() };
        self.store.put_opts(&path, data.into(), options).await.map_err(|e| map_error(&self.url(key), e))?;
        Ok(())
    }

    async fn put_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(key)?;
        Ok(Box::new(writer::MultipartWriter::new(
            self.store.clone(),
            path,
            self.url(key),
            self.part_size,
            self.concurrency,
        )))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_error(&self.url(key), e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let root = self.prefix(prefix)?;
        let locations = self.store.list(root.as_ref()).map_ok(|meta| meta.location).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map_error(&self.url(prefix), e)),
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.prefix(prefix)?;
        let mut out: Vec<ObjectMeta> = self
            .store
            .list(root.as_ref())
            .map_ok(|meta| object_meta(meta.location.to_string(), &meta))
            .try_collect()
            .await
            .map_err(|e| map_error(&self.url(prefix), e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn list_with_delimiter(&self, prefix: &str) -> Result<ListResult> {
        let root = self.prefix(prefix)?;
        let listing =
            self.store.list_with_delimiter(root.as_ref()).await.map_err(|e| map_error(&self.url(prefix), e))?;
        let mut objects: Vec<ObjectMeta> =
            listing.objects.iter().map(|meta| object_meta(meta.location.to_string(), meta)).collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        let mut prefixes: Vec<String> = listing.common_prefixes.iter().map(Path::to_string).collect();
        prefixes.sort();
        Ok(ListResult { objects, prefixes })
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}
