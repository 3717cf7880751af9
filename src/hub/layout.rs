//! The Hub cache layout shared with Python's `huggingface_hub`:
//!
//! ```text
//! models--{org}--{name}/
//!   blobs/{etag}                  content (etag = sha256 for LFS files, git blob sha1 otherwise)
//!   blobs/{etag}.incomplete       a download in progress
//!   refs/{revision}               the commit sha a branch or tag pointed to
//!   snapshots/{commit}/{path}     relative symlink to ../../blobs/{etag}
//! .locks/models--{org}--{name}/{etag}.lock
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One repository's folder in the Hub cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
    folder: String,
}

/// Whether `rev` is a full commit sha (40 lowercase hex digits).
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40
        && rev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl RepoCache {
    /// The cache folder of model repository `repo` (`org/name`) under `cache_dir`.
    pub fn new(cache_dir: &Path, repo: &str) -> RepoCache {
        RepoCache {
            root: cache_dir.to_path_buf(),
            folder: format!("models--{}", repo.replace('/', "--")),
        }
    }

    /// `models--{org}--{name}/`.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.folder)
    }

    /// The content file named by its etag.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir().join("blobs").join(etag)
    }

    /// Where a download of `etag` accumulates before it is verified.
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir().join("blobs").join(format!("{etag}.incomplete"))
    }

    /// The snapshot folder of `commit`.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir().join("snapshots").join(commit)
    }

    /// The commit `refs/{revision}` records, if any.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_owned());
        }
        let text = std::fs::read_to_string(self.dir().join("refs").join(revision)).ok()?;
        let sha = text.trim();
        is_commit(sha).then(|| sha.to_owned())
    }

    /// Records that `revision` points at `commit`.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if is_commit(revision) {
            return Ok(());
        }
        let path = self.dir().join("refs").join(revision);
        Ok(crate::cache::store::write_atomic(&path, commit.as_bytes())?)
    }

    /// The file `path` of `commit`, if the snapshot has it and its blob is
    /// `size` bytes long (a symlink into `blobs/`, or a plain file written by
    /// another tool).
    pub fn cached_file(&self, commit: &str, path: &str, size: u64) -> Option<PathBuf> {
        let file = self.snapshot(commit).join(path);
        let meta = std::fs::metadata(&file).ok()?;
        (meta.is_file() && meta.len() == size).then_some(file)
    }

    /// Links `snapshots/{commit}/{path}` to `blobs/{etag}` (relative symlink).
    pub fn link(&self, commit: &str, path: &str, etag: &str) -> Result<PathBuf> {
        let file = self.snapshot(commit).join(path);
        let parent = file.parent().expect("snapshot paths have a parent");
        std::fs::create_dir_all(parent)?;
        let depth = path.split('/').count() - 1;
        let mut target = PathBuf::from("../..");
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        if file.is_symlink() || file.exists() {
            std::fs::remove_file(&file).ok();
        }
        std::os::unix::fs::symlink(&target, &file)
            .with_context(|| format!("cannot link {}", file.display()))?;
        Ok(file)
    }

    /// Takes the per-blob download lock (`.locks/…/{etag}.lock`), waiting for
    /// another process downloading the same blob.
    pub fn lock_blob(&self, etag: &str) -> Result<File> {
        let dir = self.root.join(".locks").join(&self.folder);
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{etag}.lock")))?;
        file.lock().context("cannot lock a Hub cache blob")?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_links_resolve_to_blobs_and_refs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoCache::new(dir.path(), "org/model");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.blob("x").parent().unwrap()).unwrap();
        std::fs::write(repo.blob("abc"), b"hello").unwrap();
        let linked = repo.link(sha, "sub/dir/f.json", "abc").unwrap();
        assert_eq!(std::fs::read(&linked).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(&linked).unwrap(),
            PathBuf::from("../../../../blobs/abc")
        );
        assert!(repo.cached_file(sha, "sub/dir/f.json", 5).is_some());
        assert!(repo.cached_file(sha, "sub/dir/f.json", 6).is_none());
        assert_eq!(repo.read_ref("main"), None);
        repo.write_ref("main", sha).unwrap();
        assert_eq!(repo.read_ref("main").as_deref(), Some(sha));
        assert!(dir.path().join("models--org--model/refs/main").is_file());
    }
}
