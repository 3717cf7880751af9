//! An I/O error that says what was being done and to which path: the leaf
//! of every file error the layers above report.

use std::path::{Path, PathBuf};

/// An I/O error with its action and path (`cannot write build/x/y: No space
/// left on device`).
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct IoError {
    /// What was being done (`read`, `create`, `write`, `map`, …).
    pub action: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// The system's answer.
    #[source]
    pub source: std::io::Error,
}

/// Attaches an action and a path to an I/O result.
pub trait IoContext<T> {
    /// The error, if any, as an [`IoError`] about `path`.
    fn at(self, action: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError {
            action,
            path: path.to_owned(),
            source,
        })
    }
}
