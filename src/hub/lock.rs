//! `yibuild.lock`: the commit every Hub source resolved to, and the size and
//! hash of every file a build reads from it. Written next to the recipe,
//! deterministic (sorted keys, stable formatting) so it belongs in version
//! control. A source's content digest is derived from its entry, so a pinned
//! source is never hashed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The lock file format version.
pub const LOCK_VERSION: u32 = 1;

/// The lock file's name, next to the recipe.
pub const LOCK_FILE: &str = "yibuild.lock";

/// One pinned file of a Hub source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedFile {
    /// Size in bytes.
    pub size: u64,
    /// The LFS object id (sha256 of the bytes), for files stored in LFS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The git blob id (sha1 of `blob {size}\0` + bytes); unknown for LFS
    /// files pinned offline from the Hub cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
}

impl LockedFile {
    /// The file's content id for step keys: its size and its blob name.
    pub fn content_id(&self) -> String {
        format!("{}:{}", self.size, self.etag())
    }

    /// The name of the file's blob in the Hub cache: the sha256 for LFS files,
    /// the git blob id otherwise (what the Hub sends as the ETag).
    pub fn etag(&self) -> &str {
        self.sha256
            .as_deref()
            .or(self.blob_id.as_deref())
            .expect("a locked file has a sha256 or a blob id")
    }
}

/// The pinned state of one Hub source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    /// `org/name`.
    pub repo: String,
    /// The revision as the recipe wrote it (branch, tag or commit).
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// Every file the build reads, by path in the repository.
    pub files: BTreeMap<String, LockedFile>,
}

impl LockEntry {
    /// The content digest of the source: blake3 of the canonical encoding of
    /// repository, commit and files (the revision name is left out, so a
    /// branch and a tag on the same commit are the same input).
    pub fn digest(&self) -> String {
        let value = serde_json::json!({
            "repo": self.repo,
            "commit": self.commit,
            "files": self.files,
        });
        blake3::hash(crate::cache::key::canonical_json(&value).as_bytes())
            .to_hex()
            .to_string()
    }

    /// Whether this entry pins `repo@revision`.
    pub fn pins(&self, repo: &str, revision: &str) -> bool {
        self.repo == repo && self.revision == revision
    }
}

/// The whole lock file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LockFile {
    /// [`LOCK_VERSION`].
    pub version: u32,
    /// Entries by source name.
    pub sources: BTreeMap<String, LockEntry>,
}

impl LockFile {
    /// The lock file path for the recipe in `recipe_dir`.
    pub fn path(recipe_dir: &Path) -> PathBuf {
        recipe_dir.join(LOCK_FILE)
    }

    /// Reads the lock at `path`; an absent file is an empty lock.
    pub fn load(path: &Path) -> Result<LockFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LockFile {
                    version: LOCK_VERSION,
                    sources: BTreeMap::new(),
                })
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let lock: LockFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid yibuild lock file (delete it or run with --update-lock)",
                path.display()
            )
        })?;
        if lock.version != LOCK_VERSION {
            bail!(
                "{}: lock format version {} is not supported (this yibuild writes {LOCK_VERSION})",
                path.display(),
                lock.version
            );
        }
        Ok(lock)
    }

    /// Writes the lock atomically, two-space indented with sorted keys.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        Ok(crate::cache::store::write_atomic(path, text.as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(revision: &str) -> LockEntry {
        LockEntry {
            repo: "org/m".into(),
            revision: revision.into(),
            commit: "a".repeat(40),
            files: BTreeMap::from([
                (
                    "model.safetensors".to_owned(),
                    LockedFile {
                        size: 10,
                        sha256: Some("b".repeat(64)),
                        blob_id: Some("c".repeat(40)),
                    },
                ),
                (
                    "config.json".to_owned(),
                    LockedFile {
                        size: 2,
                        sha256: None,
                        blob_id: Some("d".repeat(40)),
                    },
                ),
            ]),
        }
    }

    #[test]
    fn round_trips_sorted_and_digest_ignores_revision_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = LockFile::path(dir.path());
        let lock = LockFile {
            version: LOCK_VERSION,
            sources: BTreeMap::from([
                ("z".to_owned(), entry("main")),
                ("a".to_owned(), entry("v1")),
            ]),
        };
        lock.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.find("\"a\"").unwrap() < text.find("\"z\"").unwrap());
        assert!(text.find("config.json").unwrap() < text.find("model.safetensors").unwrap());
        assert!(!text.contains("\"sha256\": null"));
        assert_eq!(LockFile::load(&path).unwrap(), lock);
        assert_eq!(entry("main").digest(), entry("v1").digest());
        let mut moved = entry("main");
        moved.commit = "e".repeat(40);
        assert_ne!(moved.digest(), entry("main").digest());
        assert_eq!(
            entry("main").files["model.safetensors"].etag(),
            "b".repeat(64)
        );
        assert_eq!(entry("main").files["config.json"].etag(), "d".repeat(40));
    }
}
