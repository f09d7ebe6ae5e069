//! The error type of the metadata layer.

use crate::ErrorKind;

/// A metadata file that could not be parsed. Every variant names the file
/// (the path the caller passed in) and says what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The file is not valid JSON.
    #[error("{file}: invalid JSON: {source}")]
    Json {
        /// The file.
        file: String,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// Valid JSON (or msgpack) that violates the file's schema.
    #[error("{file}: {what}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong, naming the entry.
        what: String,
    },
    /// The legacy msgpack `checkpoint` file is not valid msgpack.
    #[error("{file}: invalid msgpack: {what}")]
    Msgpack {
        /// The file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// A size, count or nesting depth beyond what the reader accepts.
    #[error("{file}: {what}")]
    Limit {
        /// The file.
        file: String,
        /// Which limit was exceeded.
        what: String,
    },
    /// A well-formed value this implementation cannot represent (a dtype
    /// outside the supported table, a Python `bytes` leaf).
    #[error("{file}: unsupported: {what}")]
    Unsupported {
        /// The file.
        file: String,
        /// What is not supported.
        what: String,
    },
}

impl MetadataError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MetadataError::Json { .. } | MetadataError::Invalid { .. } | MetadataError::Msgpack { .. } => {
                ErrorKind::Corrupt
            }
            MetadataError::Limit { .. } => ErrorKind::Limit,
            MetadataError::Unsupported { .. } => ErrorKind::Unsupported,
        }
    }

    pub(crate) fn invalid(file: &str, what: impl Into<String>) -> Self {
        MetadataError::Invalid { file: file.to_string(), what: what.into() }
    }

    pub(crate) fn limit(file: &str, what: impl Into<String>) -> Self {
        MetadataError::Limit { file: file.to_string(), what: what.into() }
    }
}
