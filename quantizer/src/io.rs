//! Atomic output files.

use std::io::Write;
use std::path::Path;

use crate::error::{QuantError, Result};

/// Writes `bytes` to `path` through edadm's one atomic writer
/// ([`edadm_format::write_file_atomic`]): a new temporary file, synced and renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    edadm_format::write_file_atomic(path, |w, tmp| {
        w.write_all(bytes).map_err(|source| QuantError::Io { path: tmp.display().to_string(), source })
    })
}
