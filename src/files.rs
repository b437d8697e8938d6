//! Reading the files the sidecar is made of (certificates, keys, bundles,
//! CRLs), with one error type that names the file and says what is wrong
//! with it.

use std::path::{Path, PathBuf};

/// A file that could not be used, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub reason: String,
    /// The key does not belong to the certificate: during a rotation this
    /// is often a moment between two writes, not a mistake.
    pub key_mismatch: bool,
}

impl LoadError {
    pub fn new(path: &Path, reason: impl Into<String>) -> Self {
        LoadError {
            path: path.to_path_buf(),
            reason: reason.into(),
            key_mismatch: false,
        }
    }
}

/// The whole file, or an error naming it.
pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| LoadError::new(path, format!("cannot read: {e}")))
}
