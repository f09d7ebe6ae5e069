//! Where a checkpoint is: URLs and paths to `(store, key)`.
//!
//! Everything that takes a checkpoint path (the CLI, [`open`]) accepts:
//!
//! | form | store | default backend |
//! | --- | --- | --- |
//! | `/a/b`, `a/b`, `file:///a/b` | the local directory holding `b` | [`LocalFileSystem`] (atomic rename) |
//! | `s3://bucket/prefix` | Amazon S3 or an S3-compatible server | `object_store` |
//! | `gs://bucket/prefix` | Google Cloud Storage | OpenDAL |
//! | `az://container/prefix` | Azure Blob Storage | `object_store` |
//! | `memory://name/prefix` | a process-wide in-memory store called `name` | [`InMemory`] |
//! | `http(s)://host/prefix` | a read-only web server | `object_store` |
//!
//! GCS defaults to OpenDAL because `object_store` writes through GCS's XML
//! API, which no local GCS server implements, so only OpenDAL's GCS writes
//! are tested. [`Backend`] (the `backend` option, `ORBAX_STORAGE_BACKEND`,
//! the CLI's `--backend`) overrides the choice.
//!
//! Settings ([`RemoteOptions`]) come from the usual environment variables of
//! each service ([`env_options`]), then from explicit `name=value` options,
//! which win. An `http://` endpoint implies `allow_http`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use crate::storage::remote::{RemoteOptions, Service};
use crate::storage::{InMemory, LocalFileSystem, Storage};
use crate::{Error, Result};

/// Which implementation serves a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The core crate's own [`LocalFileSystem`] / [`InMemory`] (file and memory only).
    Native,
    /// The `orbax-object-store` crate (cargo feature `object-store`).
    ObjectStore,
    /// The `orbax-opendal` crate (cargo feature `opendal`).
    OpenDal,
}

impl std::str::FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Backend> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "native" => Ok(Backend::Native),
            "object_store" | "objectstore" => Ok(Backend::ObjectStore),
            "opendal" => Ok(Backend::OpenDal),
            _ => Err(Error::InvalidArgument(format!("unknown storage backend {s:?} (native, object_store, opendal)"))),
        }
    }
}

impl Backend {
    /// The backend used for `service` unless overridden.
    pub fn default_for(service: Service) -> Backend {
        match service {
            Service::Fs | Service::Memory => Backend::Native,
            Service::Gcs => Backend::OpenDal,
            Service::S3 | Service::Azure | Service::Http => Backend::ObjectStore,
        }
    }
}

/// A parsed location: which service, which bucket (or directory), and the
/// key prefix of the checkpoint inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The service.
    pub service: Service,
    /// Bucket or container; for local paths the parent directory; for HTTP
    /// the base URL (`https://host`); for memory the store's name.
    pub bucket: String,
    /// The key of the checkpoint (or root) in that store; may be empty for a bucket root.
    pub path: String,
}

/// How [`open`] builds a store.
#[derive(Debug, Clone, Default)]
pub struct LocationOptions {
    /// The implementation; `None` means `ORBAX_STORAGE_BACKEND` if set, else [`Backend::default_for`].
    pub backend: Option<Backend>,
    /// Explicit `name=value` settings (see [`crate::storage::remote::OPTION_NAMES`]), applied after the environment.
    pub options: Vec<(String, String)>,
}

/// Parses a URL or a local path.
pub fn parse(url: &str) -> Result<Location> {
    let bad = |why: &str| Error::InvalidArgument(format!("{url}: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return local(url);
    };
    let service = match scheme.to_ascii_lowercase().as_str() {
        "s3" | "s3a" => Service::S3,
        "gs" | "gcs" => Service::Gcs,
        "az" | "azure" | "abfs" => Service::Azure,
        "file" => return local(rest),
        "memory" => Service::Memory,
        "http" | "https" => Service::Http,
        other => return Err(bad(&format!("unknown URL scheme {other:?} (s3, gs, az, file, memory, http, https)"))),
    };
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() && service != Service::Memory {
        return Err(bad("the URL names no bucket"));
    }
    let bucket = match service {
        Service::Http => format!("{scheme}://{bucket}"),
        _ => bucket.to_string(),
    };
    Ok(Location { service, bucket, path: path.trim_matches('/').to_string() })
}

fn local(path: &str) -> Result<Location> {
    let p = Path::new(path);
    let abs = p
        .canonicalize()
        .or_else(|_| std::path::absolute(p))
        .map_err(|e| Error::InvalidArgument(format!("{path}: {e}")))?;
    let parent = abs.parent().unwrap_or(Path::new("/"));
    let name = abs.file_name().and_then(|n| n.to_str()).unwrap_or("");
    Ok(Location { service: Service::Fs, bucket: parent.to_string_lossy().into_owned(), path: name.to_string() })
}

/// The settings of `service` found in the environment:
///
/// * S3: `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`, `AWS_REGION` /
///   `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
///   `AWS_ALLOW_HTTP`, `AWS_SKIP_SIGNATURE` (anonymous);
/// * GCS: `STORAGE_EMULATOR_HOST` (endpoint, anonymous), `GOOGLE_APPLICATION_CREDENTIALS` /
///   `GOOGLE_SERVICE_ACCOUNT` (service-account file);
/// * Azure: `AZURE_STORAGE_ENDPOINT`, `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
///   `AZURE_ALLOW_HTTP`, `AZURE_SKIP_SIGNATURE`.
///
/// Each backend's own credential chain (profiles, instance metadata, ...)
/// still applies to what is left unset.
pub fn env_options(service: Service) -> Vec<(String, String)> {
    let vars: &[(&str, &[&str])] = match service {
        Service::S3 => &[
            ("endpoint", &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            ("region", &["AWS_REGION", "AWS_DEFAULT_REGION"]),
            ("access_key_id", &["AWS_ACCESS_KEY_ID"]),
            ("secret_access_key", &["AWS_SECRET_ACCESS_KEY"]),
            ("session_token", &["AWS_SESSION_TOKEN"]),
            ("allow_http", &["AWS_ALLOW_HTTP"]),
            ("anonymous", &["AWS_SKIP_SIGNATURE"]),
        ],
        Service::Gcs => &[
            ("service_account_path", &["GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT"]),
            ("endpoint", &["STORAGE_EMULATOR_HOST"]),
        ],
        Service::Azure => &[
            ("endpoint", &["AZURE_STORAGE_ENDPOINT"]),
            ("account_name", &["AZURE_STORAGE_ACCOUNT_NAME"]),
            ("account_key", &["AZURE_STORAGE_ACCOUNT_KEY"]),
            ("allow_http", &["AZURE_ALLOW_HTTP"]),
            ("anonymous", &["AZURE_SKIP_SIGNATURE"]),
        ],
        Service::Fs | Service::Memory | Service::Http => &[],
    };
    let mut out = Vec::new();
    for (name, candidates) in vars {
        if let Some(value) = candidates.iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty())) {
            if *name == "endpoint" && service == Service::Gcs {
                // The emulator variable is a bare host:port in Google's client libraries.
                let endpoint = if value.contains("://") { value } else { format!("http://{value}") };
                out.push(("endpoint".to_string(), endpoint));
                out.push(("anonymous".to_string(), "true".to_string()));
            } else {
                out.push((name.to_string(), value));
            }
        }
    }
    out
}

/// The [`RemoteOptions`] for `service`: defaults, then the environment, then `explicit`.
pub fn remote_options(service: Service, explicit: &[(String, String)]) -> Result<RemoteOptions> {
    let env = env_options(service);
    let pairs = env.iter().chain(explicit).map(|(k, v)| (k.as_str(), v.as_str()));
    let mut options = RemoteOptions::default().with_pairs(pairs).map_err(Error::InvalidArgument)?;
    if options.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) {
        options.allow_http = true;
    }
    Ok(options)
}

/// Opens the store a URL or path names; returns it with the key of the
/// location inside it.
pub fn open(url: &str, options: &LocationOptions) -> Result<(Arc<dyn Storage>, String)> {
    let location = parse(url)?;
    let backend = match options.backend {
        Some(backend) => backend,
        None => match std::env::var("ORBAX_STORAGE_BACKEND") {
            Ok(name) if !name.is_empty() => name.parse()?,
            _ => Backend::default_for(location.service),
        },
    };
    let store = open_store(&location, backend, options)?;
    Ok((store, location.path))
}

/// Opens the store of a parsed location with a given backend.
pub fn open_store(location: &Location, backend: Backend, options: &LocationOptions) -> Result<Arc<dyn Storage>> {
    match location.service {
        Service::Memory => memory_store(&location.bucket, backend, options),
        service => new_store(service, &location.bucket, backend, options),
    }
}

fn new_store(service: Service, bucket: &str, backend: Backend, options: &LocationOptions) -> Result<Arc<dyn Storage>> {
    match (backend, service) {
        (Backend::Native, Service::Fs) => Ok(Arc::new(LocalFileSystem::new(bucket))),
        (Backend::Native, Service::Memory) => Ok(Arc::new(InMemory::new())),
        (Backend::Native, _) => Err(Error::InvalidArgument(format!(
            "the native backend serves only local paths and memory://, not {}://",
            service.scheme()
        ))),
        #[cfg(feature = "object-store")]
        (Backend::ObjectStore, _) => {
            let remote = remote_options(service, &options.options)?;
            Ok(Arc::new(orbax_object_store::ObjectStoreStorage::open(service, bucket, &remote)?))
        }
        #[cfg(feature = "opendal")]
        (Backend::OpenDal, _) => {
            let remote = remote_options(service, &options.options)?;
            Ok(Arc::new(orbax_opendal::OpendalStorage::open(service, bucket, &remote)?))
        }
        #[allow(unreachable_patterns)]
        (other, _) => {
            let _ = options;
            Err(Error::InvalidArgument(format!("this build of orbax has no {other:?} backend (cargo feature)")))
        }
    }
}

/// The `memory://` stores of this process, by (name, backend).
type MemoryStores = Mutex<HashMap<(String, Backend), Arc<dyn Storage>>>;

/// `memory://name` stores live as long as the process, one per (name, backend).
fn memory_store(name: &str, backend: Backend, options: &LocationOptions) -> Result<Arc<dyn Storage>> {
    static STORES: OnceLock<MemoryStores> = OnceLock::new();
    let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = (name.to_string(), backend);
    if let Some(store) = stores.get(&key) {
        return Ok(store.clone());
    }
    let store = new_store(Service::Memory, name, backend, options)?;
    stores.insert(key, store.clone());
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let l = parse("s3://bucket/run1/1000/").unwrap();
        assert_eq!((l.service, l.bucket.as_str(), l.path.as_str()), (Service::S3, "bucket", "run1/1000"));
        let l = parse("gs://b").unwrap();
        assert_eq!((l.service, l.path.as_str()), (Service::Gcs, ""));
        let l = parse("az://c/x").unwrap();
        assert_eq!((l.service, l.bucket.as_str()), (Service::Azure, "c"));
        let l = parse("https://example.com/ckpt/7").unwrap();
        assert_eq!((l.bucket.as_str(), l.path.as_str()), ("https://example.com", "ckpt/7"));
        let l = parse("file:///tmp/x/ckpt").unwrap();
        assert_eq!((l.service, l.bucket.as_str(), l.path.as_str()), (Service::Fs, "/tmp/x", "ckpt"));
        assert_eq!(parse("/tmp/x/ckpt").unwrap(), l);
        assert!(parse("ftp://h/x").unwrap_err().to_string().contains("unknown URL scheme"));
        assert!(parse("s3:///x").unwrap_err().to_string().contains("no bucket"));
    }

    #[test]
    fn explicit_options_win_and_http_endpoints_allow_http() {
        let explicit = vec![("endpoint".to_string(), "http://127.0.0.1:1".to_string())];
        let o = remote_options(Service::Azure, &explicit).unwrap();
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert!(o.allow_http);
        let bad = vec![("colour".to_string(), "red".to_string())];
        assert!(remote_options(Service::S3, &bad).is_err());
    }

    #[test]
    fn memory_urls_share_a_store_per_name() {
        let (a, key) = open("memory://shared/x", &LocationOptions::default()).unwrap();
        let (b, _) = open("memory://shared/y", &LocationOptions::default()).unwrap();
        assert_eq!(key, "x");
        assert!(Arc::ptr_eq(&a, &b));
        let (c, _) = open("memory://other", &LocationOptions::default()).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn backends_parse() {
        assert_eq!("object-store".parse::<Backend>().unwrap(), Backend::ObjectStore);
        assert_eq!("OpenDAL".parse::<Backend>().unwrap(), Backend::OpenDal);
        assert!("s4".parse::<Backend>().is_err());
    }
}
