//! TensorStore's OCDBT key-value database (being written).

use crate::ErrorKind;

/// Errors of the OCDBT layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcdbtError {
    /// Placeholder until the reader lands.
    #[error("{0}")]
    Other(String),
}

impl OcdbtError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Corrupt
    }
}
