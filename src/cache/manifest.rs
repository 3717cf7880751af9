//! Output manifests: the list of files an artifact consists of, and its digest.

use serde::{Deserialize, Serialize};

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the artifact root, `/`-separated. Empty when the
    /// artifact is a single file.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex blake3 of the bytes.
    pub hash: String,
    /// Whether the file is executable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
}

/// The files of an artifact, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Manifest {
    /// Entries sorted by path.
    pub files: Vec<Entry>,
}

impl Manifest {
    /// Builds a manifest, sorting the entries.
    pub fn new(mut files: Vec<Entry>) -> Manifest {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest { files }
    }

    /// The artifact digest: hex blake3 of the sorted (path, size, hash, exec) list.
    pub fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for e in &self.files {
            h.update(e.path.as_bytes());
            h.update(&[0]);
            h.update(&e.size.to_le_bytes());
            h.update(e.hash.as_bytes());
            h.update(&[e.exec as u8]);
        }
        h.finalize().to_hex().to_string()
    }

    /// Total size in bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|e| e.size).sum()
    }
}
