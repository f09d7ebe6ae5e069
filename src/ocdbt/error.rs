//! The error type of the OCDBT layer.

use crate::storage::StorageError;
use crate::ErrorKind;

/// Errors of the OCDBT layer.
///
/// Every variant names the storage key of the file it concerns (e.g.
/// `ckpt/state/manifest.ocdbt` or `ckpt/state/d/00c3a0f5...`); those about an
/// encoded object also name the kind of object and its byte offset in that
/// file (0 for manifests).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcdbtError {
    /// The CRC-32C stored at the end of a manifest or node does not match its bytes.
    #[error(
        "{file}: {object} at offset {offset}: stored CRC-32C {stored:#010x} does not match the computed {computed:#010x}"
    )]
    Checksum {
        /// The file holding the object.
        file: String,
        /// What the object is (`manifest`, `B+tree node`, `version tree node`).
        object: &'static str,
        /// Byte offset of the object in `file`.
        offset: u64,
        /// The checksum stored in the object.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// An object ends before its content does.
    #[error("{file}: {object} at offset {offset} is truncated: {what}")]
    Truncated {
        /// The file holding the object.
        file: String,
        /// What the object is.
        object: &'static str,
        /// Byte offset of the object in `file`.
        offset: u64,
        /// What was being read when the bytes ran out.
        what: String,
    },
    /// An object is structurally invalid.
    #[error("{file}: {object} at offset {offset} is corrupt: {what}")]
    Corrupt {
        /// The file holding the object.
        file: String,
        /// What the object is.
        object: &'static str,
        /// Byte offset of the object in `file`.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A count or size beyond what this reader accepts.
    #[error("{file}: {object} at offset {offset}: {what} is {value}, more than the maximum of {max}")]
    Limit {
        /// The file holding the object.
        file: String,
        /// What the object is.
        object: &'static str,
        /// Byte offset of the object in `file`.
        offset: u64,
        /// The quantity that is too large.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// An object written in a newer format version.
    #[error("{file}: {object} at offset {offset} has format version {found}; the maximum supported version is 0")]
    Version {
        /// The file holding the object.
        file: String,
        /// What the object is.
        object: &'static str,
        /// Byte offset of the object in `file`.
        offset: u64,
        /// The version found.
        found: u64,
    },
    /// A valid construct this reader does not handle (e.g. a pre-release encoding).
    #[error("{file}: {object} at offset {offset} is not supported: {what}")]
    Unsupported {
        /// The file holding the object.
        file: String,
        /// What the object is.
        object: &'static str,
        /// Byte offset of the object in `file`.
        offset: u64,
        /// What is not supported.
        what: String,
    },
    /// A byte range that does not lie within the value it was requested from.
    #[error("{location}: bytes {start}..{end} requested from a value of {size} bytes")]
    RangeOutOfBounds {
        /// The database and key (see [`crate::kvstore::KvSource::describe`]).
        location: String,
        /// First byte requested.
        start: u64,
        /// One past the last byte requested.
        end: u64,
        /// The value's length.
        size: u64,
    },
    /// A data file path that would resolve outside the database or is not a valid key.
    #[error("{file}: data file path {path:?} is unsafe: {reason}")]
    UnsafePath {
        /// The file whose data file table holds the path.
        file: String,
        /// The path (lossily decoded if it is not UTF-8).
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A manifest, numbered manifest or generation the database does not have.
    #[error("{file}: {what}")]
    NotFound {
        /// The manifest (or the database prefix) that was looked in.
        file: String,
        /// What is missing.
        what: String,
    },
    /// A key that is not UTF-8 where a string key is required.
    #[error("{database}: key {key} is not valid UTF-8")]
    KeyNotUtf8 {
        /// The database prefix.
        database: String,
        /// The key, with invalid bytes escaped.
        key: String,
    },
    /// A writer was given something it cannot write (a duplicate or too long
    /// key, an invalid option), or was used after a failed write.
    #[error("{database}: {what}")]
    InvalidArgument {
        /// The database prefix.
        database: String,
        /// What is wrong.
        what: String,
    },
    /// A storage operation failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl OcdbtError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OcdbtError::Checksum { .. } => ErrorKind::Checksum,
            OcdbtError::Truncated { .. } => ErrorKind::Truncated,
            OcdbtError::Corrupt { .. } => ErrorKind::Corrupt,
            OcdbtError::Version { .. } | OcdbtError::Unsupported { .. } => ErrorKind::Unsupported,
            OcdbtError::RangeOutOfBounds { .. } => ErrorKind::InvalidArgument,
            OcdbtError::Limit { .. } => ErrorKind::Limit,
            OcdbtError::UnsafePath { .. } => ErrorKind::UnsafePath,
            OcdbtError::NotFound { .. } => ErrorKind::NotFound,
            OcdbtError::KeyNotUtf8 { .. } => ErrorKind::Unsupported,
            OcdbtError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            OcdbtError::Storage(e) => e.kind(),
        }
    }
}
