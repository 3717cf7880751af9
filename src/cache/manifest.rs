//! Output manifests: the list of files an artifact consists of, and its digest.
//!
//! Everything read back from a cache, local or remote, passes
//! [`Manifest::parse`]: a manifest is data from a shared bucket or a disk
//! anyone may have edited, and its paths and hashes become file names.

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

/// The largest file size a manifest may name (1 PiB): anything larger is
/// corruption, not a model.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// Whether `text` is a blake3 digest as the cache writes it: 64 lowercase hex digits.
pub fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// Reads a manifest from JSON and checks it (see [`Manifest::validate`]);
    /// the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks what a manifest from outside this process must satisfy before
    /// any of it becomes a path: every path relative and normal (each
    /// component passes [`crate::fs::names::component_problem`]), sorted, unique
    /// and no file inside another; the empty path only as the single file of
    /// a one-file artifact; hashes 64 lowercase hex digits; sizes at most
    /// [`MAX_FILE_SIZE`].
    pub fn validate(&self) -> Result<(), String> {
        let single = self.files.len() == 1 && self.files[0].path.is_empty();
        for (i, e) in self.files.iter().enumerate() {
            if !(single && e.path.is_empty()) {
                if let Some(why) = crate::fs::names::relative_path_problem(&e.path) {
                    return Err(format!(
                        "path `{}` is not allowed: {why}",
                        e.path.escape_debug()
                    ));
                }
            }
            if !is_hash(&e.hash) {
                return Err(format!(
                    "`{}` of `{}` is not a blake3 hash",
                    e.hash.escape_debug(),
                    e.path.escape_debug()
                ));
            }
            if e.size > MAX_FILE_SIZE {
                return Err(format!(
                    "`{}` claims {} bytes",
                    e.path.escape_debug(),
                    e.size
                ));
            }
            if let Some(prev) = i.checked_sub(1).map(|j| &self.files[j].path) {
                if prev >= &e.path {
                    return Err(format!(
                        "paths `{prev}` and `{}` are out of order or repeated",
                        e.path
                    ));
                }
            }
        }
        let paths: std::collections::HashSet<&str> =
            self.files.iter().map(|e| e.path.as_str()).collect();
        for e in &self.files {
            let mut dirs = e.path.match_indices('/').map(|(i, _)| &e.path[..i]);
            if let Some(dir) = dirs.find(|d| paths.contains(d)) {
                return Err(format!("`{}` is inside the file `{dir}`", e.path));
            }
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    fn with(path: &str, hash: &str) -> Vec<u8> {
        format!(r#"{{"files":[{{"path":"{path}","size":1,"hash":"{hash}"}}]}}"#).into_bytes()
    }

    #[test]
    fn sound_manifests_parse() {
        assert!(Manifest::parse(&with("", H)).is_ok());
        assert!(Manifest::parse(&with("a/b.json", H)).is_ok());
    }

    #[test]
    fn hostile_manifests_are_refused() {
        for path in [
            "../../x",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "./a",
            "a\\u0000b",
        ] {
            assert!(Manifest::parse(&with(path, H)).is_err(), "{path}");
        }
        for hash in [
            "a",
            "../../../etc/hostname",
            &H.to_uppercase(),
            &format!("{H}0"),
        ] {
            let err = Manifest::parse(&with("x", hash)).unwrap_err();
            assert!(err.contains("not a blake3 hash"), "{err}");
        }
        let truncated = &with("x", H)[..30];
        assert!(Manifest::parse(truncated)
            .unwrap_err()
            .contains("not a manifest"));
        let nested = format!(
            r#"{{"files":[{{"path":"a","size":1,"hash":"{H}"}},{{"path":"a/b","size":1,"hash":"{H}"}}]}}"#
        );
        assert!(Manifest::parse(nested.as_bytes()).is_err());
        let huge = format!(
            r#"{{"files":[{{"path":"a","size":{},"hash":"{H}"}}]}}"#,
            u64::MAX
        );
        assert!(Manifest::parse(huge.as_bytes()).is_err());
    }
}
