//! Settings and helpers shared by the cloud backends (`orbax-object-store`,
//! `orbax-opendal`): where a bucket is, how to authenticate, and how hard to
//! push it (parallelism, part size, retries, timeouts).

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::{coalesce_ranges, slice_coalesced, Result, Storage, COALESCE_GAP};

/// The object stores a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Amazon S3 and S3-compatible servers (`s3://bucket/prefix`).
    S3,
    /// Google Cloud Storage (`gs://bucket/prefix`).
    Gcs,
    /// Azure Blob Storage (`az://container/prefix`).
    Azure,
    /// A local directory (`file:///path` or a plain path).
    Fs,
    /// A process-wide in-memory store (`memory://name/prefix`).
    Memory,
    /// A read-only HTTP(S) server (`https://host/path`).
    Http,
}

impl Service {
    /// The URL scheme, as written before `://`.
    pub fn scheme(self) -> &'static str {
        match self {
            Service::S3 => "s3",
            Service::Gcs => "gs",
            Service::Azure => "az",
            Service::Fs => "file",
            Service::Memory => "memory",
            Service::Http => "https",
        }
    }
}

/// How to reach and drive one bucket. Fields left `None` fall back to the
/// backend's usual environment variables and credential chain
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`; see `docs/storage.md`). `Debug` masks
/// the secrets.
#[derive(Clone, PartialEq)]
pub struct RemoteOptions {
    /// The service endpoint, e.g. `http://127.0.0.1:5000` for a local S3 server.
    pub endpoint: Option<String>,
    /// The region (S3).
    pub region: Option<String>,
    /// Access key id (S3).
    pub access_key_id: Option<String>,
    /// Secret access key (S3).
    pub secret_access_key: Option<String>,
    /// Session token (S3).
    pub session_token: Option<String>,
    /// Storage account name (Azure).
    pub account_name: Option<String>,
    /// Storage account key (Azure).
    pub account_key: Option<String>,
    /// Path to a service-account JSON file (GCS).
    pub service_account_path: Option<String>,
    /// Allow plain `http://` endpoints.
    pub allow_http: bool,
    /// Send unsigned requests (public buckets, local emulators).
    pub anonymous: bool,
    /// Requests one operation may have in flight (ranged reads, multipart parts).
    pub concurrency: usize,
    /// Size of the parts of a streamed (multipart) upload, and of the
    /// memory one streaming writer holds per part in flight.
    pub part_size: usize,
    /// Retries of a failed request (timeouts, 5xx, connection errors).
    pub max_retries: usize,
    /// Time one request may take before it fails with an error naming its object.
    pub timeout: Duration,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            account_name: None,
            account_key: None,
            service_account_path: None,
            allow_http: false,
            anonymous: false,
            concurrency: 16,
            part_size: 16 << 20,
            max_retries: 5,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mask = |secret: &Option<String>| secret.as_ref().map(|_| "***");
        f.debug_struct("RemoteOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &mask(&self.secret_access_key))
            .field("session_token", &mask(&self.session_token))
            .field("account_name", &self.account_name)
            .field("account_key", &mask(&self.account_key))
            .field("service_account_path", &self.service_account_path)
            .field("allow_http", &self.allow_http)
            .field("anonymous", &self.anonymous)
            .field("concurrency", &self.concurrency)
            .field("part_size", &self.part_size)
            .field("max_retries", &self.max_retries)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The option names [`RemoteOptions::set`] accepts.
pub const OPTION_NAMES: &[&str] = &[
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "account_name",
    "account_key",
    "service_account_path",
    "allow_http",
    "anonymous",
    "concurrency",
    "part_size",
    "max_retries",
    "timeout",
    "connect_timeout",
];

impl RemoteOptions {
    /// Sets one option by name (see [`OPTION_NAMES`]); durations are seconds
    /// (fractions allowed), booleans `true`/`false`/`1`/`0`, sizes bytes.
    pub fn set(&mut self, name: &str, value: &str) -> std::result::Result<(), String> {
        let text = || Some(value.to_string());
        let bad = |what: &str| format!("option {name}={value:?}: expected {what}");
        let flag = || match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            _ => Err(bad("true or false")),
        };
        let count = |min: usize| value.parse::<usize>().ok().filter(|&n| n >= min).ok_or_else(|| bad("a count"));
        let seconds = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad("a positive number of seconds"))
        };
        match name {
            "endpoint" => self.endpoint = text(),
            "region" => self.region = text(),
            "access_key_id" => self.access_key_id = text(),
            "secret_access_key" => self.secret_access_key = text(),
            "session_token" => self.session_token = text(),
            "account_name" => self.account_name = text(),
            "account_key" => self.account_key = text(),
            "service_account_path" => self.service_account_path = text(),
            "allow_http" => self.allow_http = flag()?,
            "anonymous" => self.anonymous = flag()?,
            "concurrency" => self.concurrency = count(1)?,
            "part_size" => self.part_size = count(MIN_PART_SIZE)?,
            "max_retries" => self.max_retries = count(0)?,
            "timeout" => self.timeout = seconds()?,
            "connect_timeout" => self.connect_timeout = seconds()?,
            _ => return Err(format!("unknown storage option {name:?} (known: {})", OPTION_NAMES.join(", "))),
        }
        Ok(())
    }

    /// Applies `name=value` pairs in order (later ones win).
    pub fn with_pairs<'a>(
        mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> std::result::Result<Self, String> {
        for (name, value) in pairs {
            self.set(name, value)?;
        }
        Ok(self)
    }
}

/// S3's minimum multipart part size (every part but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// Reads several ranges of one object the way the cloud backends do:
/// ranges within [`COALESCE_GAP`] of each other are merged, and the merged
/// requests run `concurrency` at a time. Results come back in the order asked.
pub async fn get_ranges_parallel<S: Storage + ?Sized>(
    store: &S,
    key: &str,
    ranges: &[Range<u64>],
    concurrency: usize,
) -> Result<Vec<Bytes>> {
    let merged = coalesce_ranges(ranges, COALESCE_GAP);
    let fetched: Vec<Bytes> = stream::iter(merged.iter().cloned().map(|range| store.get_range(key, range)))
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(slice_coalesced(ranges, &merged, &fetched))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_reject() {
        let o = RemoteOptions::default()
            .with_pairs([("endpoint", "http://127.0.0.1:5000"), ("allow_http", "true"), ("timeout", "0.5")])
            .unwrap();
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(o.allow_http);
        assert_eq!(o.timeout, Duration::from_millis(500));
        let mut o = RemoteOptions::default();
        assert!(o.set("colour", "red").unwrap_err().contains("unknown storage option"));
        assert!(o.set("allow_http", "maybe").is_err());
        assert!(o.set("part_size", "1024").is_err(), "parts below S3's 5 MiB minimum are rejected");
        assert!(o.set("timeout", "-1").is_err());
        o.set("secret_access_key", "s3cr3t").unwrap();
        assert!(!format!("{o:?}").contains("s3cr3t"), "Debug masks secrets");
    }
}
