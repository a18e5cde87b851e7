//! Errors of the runtime: everything a model file, a session request or an input can get wrong,
//! said with the node or value it concerns.

use edadm_format::FormatError;
use edadm_kernels::DispatchError;

/// A runtime error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The file is not a valid `.edq` file.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The kernel tier requested with `EDADM_KERNELS` is unknown or not available.
    #[error(transparent)]
    Kernels(#[from] DispatchError),
    /// The graph uses an op, configuration or bit width this build cannot run.
    #[error("node {node:?}: {what} is not supported by this runtime")]
    Unsupported {
        /// The node.
        node: String,
        /// What is not supported.
        what: String,
    },
    /// Shapes do not fit together at a node, for the requested batch and size.
    #[error("node {node:?}: {detail}")]
    Shape {
        /// The node.
        node: String,
        /// What does not fit.
        detail: String,
    },
    /// The session request itself is impossible (batch 0, a size the model cannot take, ...).
    #[error("invalid session: {0}")]
    Session(String),
    /// An input handed to `run` is wrong (length, timestep outside a table, ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// The model lacks what a sampler needs (the noise schedule), or sampler options are impossible.
    #[error("sampler: {0}")]
    Sampler(String),
    /// A backend that this build or machine does not have.
    #[error("backend {backend} is not available: {reason}")]
    BackendUnavailable {
        /// The backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
}

/// Results of this crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
