//! What can go wrong reading or writing tensors, naming the file and what
//! is wrong with it.

use std::path::{Path, PathBuf};

use crate::fs::error::IoError;

/// An error of the tensor layer.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// A file or folder that cannot be opened, mapped, read or written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A file whose contents do not follow its format (a truncated shard,
    /// an index without `weight_map`, a shard outside the model folder).
    #[error("{}: {what}", path.display())]
    Format {
        /// The file or model folder.
        path: PathBuf,
        /// What is wrong, in words.
        what: String,
    },
    /// A tensor the model does not have.
    #[error("{}: has no tensor `{name}`", dir.display())]
    Missing {
        /// The model folder.
        dir: PathBuf,
        /// The tensor asked for.
        name: String,
    },
    /// An element type yibuild does not compute with.
    #[error("unsupported tensor dtype {0} (expected BF16, F16 or F32)")]
    UnsupportedDtype(String),
    /// The streaming writer was fed differently from its plan: a bug in the
    /// caller, never the user's input.
    #[error("internal: {0}")]
    Internal(String),
}

/// A result of the tensor layer.
pub type Result<T, E = TensorError> = std::result::Result<T, E>;

impl TensorError {
    /// A format error about `path`.
    pub fn format(path: &Path, what: impl Into<String>) -> TensorError {
        TensorError::Format {
            path: path.to_owned(),
            what: what.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::error::IoContext;

    #[test]
    fn a_full_disk_names_the_file_and_the_cause() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let err: TensorError = Err::<(), _>(full)
            .at("write", Path::new("out/model-00001-of-00002.safetensors"))
            .unwrap_err()
            .into();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(
            chain.starts_with("cannot write out/model-00001-of-00002.safetensors: "),
            "{chain}"
        );
        assert!(chain.contains("No space left on device"), "{chain}");
    }
}
