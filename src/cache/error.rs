//! What can go wrong storing, finding and materializing cache entries,
//! naming the file and what is wrong with it.

use std::path::PathBuf;

use crate::fs::error::IoError;

/// An error of the cache layer.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or folder that cannot be read, created, written or removed
    /// (a full disk says so here, with the path).
    #[error(transparent)]
    Io(#[from] IoError),
    /// A step's output holds something the cache cannot store as it is (a
    /// symlink leaving the output, a device file).
    #[error("output `{path}` {what}")]
    Output {
        /// The path inside the output.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// An entry the cache refuses to record (a manifest naming something
    /// that is not a hash, objects that are missing).
    #[error("cannot record action {key}: {what}")]
    Action {
        /// The action's key.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// Another cache's contents where this one expected its own.
    #[error("{}: {what}", path.display())]
    Layout {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// A result of the cache layer.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
