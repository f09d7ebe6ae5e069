//! The classes of failure every layer's error reports.
//!
//! Each layer (storage, OCDBT, zarr, Orbax metadata, the PyTree API) has its
//! own error enum carrying the file, key and cause. Callers that only need to
//! know *what kind* of problem happened (the CLI's exit codes, the
//! conformance suite's `bad/` cases, retry logic) ask any of them for its
//! [`ErrorKind`]. The string codes are part of the conformance protocol.

use std::fmt;

/// What class of problem an error is, independent of the layer that found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A CRC-32C stored in the format does not match the bytes.
    Checksum,
    /// A file is shorter than its own length field or than a reference into it.
    Truncated,
    /// A file, object or key that the checkpoint refers to does not exist.
    NotFound,
    /// Bytes or JSON that are structurally invalid for the format.
    Corrupt,
    /// A length, count or shape beyond what the reader accepts.
    Limit,
    /// A key or path that would resolve outside the checkpoint directory.
    UnsafePath,
    /// A checkpoint whose save never finished (temporary or partial-save directory).
    Uncommitted,
    /// A valid construct this implementation does not handle.
    Unsupported,
    /// The caller asked for something that does not fit the checkpoint.
    InvalidArgument,
    /// Something already exists where the operation needs to create it.
    AlreadyExists,
    /// An I/O or network failure of the storage backend.
    Io,
}

impl ErrorKind {
    /// The stable snake_case code used by the CLI and `conformance/bad/cases.json`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Checksum => "checksum",
            ErrorKind::Truncated => "truncated",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Limit => "limit",
            ErrorKind::UnsafePath => "unsafe_path",
            ErrorKind::Uncommitted => "uncommitted",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
