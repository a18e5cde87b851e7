//! Errors of the quantizer: each says what went wrong and where.

/// A quantizer error.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// An impossible option or input.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file exists but is not what it should be.
    #[error("{path}: {what}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// The FP engine refused the model or failed.
    #[error(transparent)]
    Runtime(#[from] edadm_runtime::RuntimeError),
    /// Serialising tensors failed.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
}

impl From<edadm_format::WriteError> for QuantError {
    fn from(e: edadm_format::WriteError) -> Self {
        match e {
            edadm_format::WriteError::Io { path, source } => {
                QuantError::Io { path: path.display().to_string(), source }
            }
            other => QuantError::Invalid(other.to_string()),
        }
    }
}

/// Result with [`QuantError`].
pub type Result<T, E = QuantError> = std::result::Result<T, E>;
