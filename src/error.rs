//! The error type of the PyTree API: one variant per lower layer, plus the
//! failures that only make sense at the checkpoint level.

use crate::kvstore::KvError;
use crate::metadata::MetadataError;
use crate::multiprocess::CoordinationError;
use crate::ocdbt::OcdbtError;
use crate::storage::StorageError;
use crate::zarr::ZarrError;
use crate::ErrorKind;

/// Errors of the PyTree API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the storage layer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// From the OCDBT layer.
    #[error(transparent)]
    Ocdbt(#[from] OcdbtError),
    /// From the zarr layer.
    #[error(transparent)]
    Zarr(#[from] ZarrError),
    /// From Orbax metadata parsing.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// From the coordination of a multi-process save.
    #[error(transparent)]
    Coordination(#[from] CoordinationError),
    /// The path holds no checkpoint (or not the expected kind of thing).
    #[error("{path}: not an Orbax checkpoint: {what}")]
    NotACheckpoint {
        /// The path.
        path: String,
        /// What was found instead.
        what: String,
    },
    /// The checkpoint's save never finished.
    #[error("{path}: refusing to read an unfinished checkpoint: {reason} (allow_uncommitted reads it anyway)")]
    Uncommitted {
        /// The checkpoint directory.
        path: String,
        /// Why it counts as unfinished.
        reason: String,
    },
    /// The requested item does not exist, or the choice is ambiguous.
    #[error("{path}: {what}")]
    Item {
        /// The checkpoint.
        path: String,
        /// What went wrong, with the items that exist.
        what: String,
    },
    /// The tree structure recorded in the metadata is inconsistent.
    #[error("{path}: {what}")]
    Structure {
        /// The metadata file.
        path: String,
        /// What is inconsistent.
        what: String,
    },
    /// A failure while reading one leaf.
    #[error("leaf {keypath}: {source}")]
    Leaf {
        /// The leaf's JAX keystr.
        keypath: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// The caller asked for something the checkpoint cannot give.
    #[error("{0}")]
    InvalidArgument(String),
    /// Background work (an async save or load) ended without a result.
    #[error("the {what} ended without a result: {reason}")]
    Background {
        /// The work, e.g. `save of run/7`.
        what: String,
        /// Why.
        reason: String,
    },
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Storage(e) => Error::Storage(e),
            KvError::Ocdbt(e) => Error::Ocdbt(e),
        }
    }
}

impl Error {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Storage(e) => e.kind(),
            Error::Ocdbt(e) => e.kind(),
            Error::Zarr(e) => e.kind(),
            Error::Metadata(e) => e.kind(),
            Error::Coordination(e) => e.kind(),
            Error::NotACheckpoint { .. } => ErrorKind::NotFound,
            Error::Uncommitted { .. } => ErrorKind::Uncommitted,
            Error::Item { .. } | Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Structure { .. } => ErrorKind::Corrupt,
            Error::Leaf { source, .. } => source.kind(),
            Error::Background { .. } => ErrorKind::Io,
        }
    }

    /// Wraps this error with the keystr of the leaf being read.
    pub fn at_leaf(self, keypath: &crate::KeyPath) -> Error {
        Error::Leaf { keypath: keypath.to_string(), source: Box::new(self) }
    }
}

/// Result type of the PyTree API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
