//! Materialized outputs: `build/<recipe>/<step>/` made of hardlinks to cache
//! objects, and the cheap check that notices when one was edited.
//!
//! A hardlink is the object: an in-place edit of a file under `build/` (root
//! ignores the 0444 mode) edits the object and every output sharing it. So
//! materialization records each file's identity (device, inode, size, mtime)
//! in the step's build record, and every later build compares them (one
//! `stat` per file, no reads). A difference means the file or its object was
//! touched: the objects are re-hashed, a corrupt one is deleted (the step is
//! then rebuilt or restored from the remote cache) and the output is
//! materialized again from verified objects. Objects themselves are checked
//! by identity against the hash memo, which knows each stored object's
//! identity; one the memo does not know is hashed once.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::{CacheError, Result};
use crate::fs::error::IoContext;
use serde::{Deserialize, Serialize};

use super::manifest::{Entry, Manifest};
use super::store::Cache;
use crate::fs::copy::note_object;

/// The identity of one materialized file when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl Stamp {
    /// The identity of the file with metadata `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
        }
    }
}

/// Where a step's output was materialized and what its files looked like then
/// (one stamp per manifest entry, in manifest order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Materialized {
    /// The output directory (or file), absolute.
    pub dest: PathBuf,
    /// One stamp per manifest entry.
    pub stamps: Vec<Stamp>,
}

/// What the next build has to do about a cached step's materialized output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputState {
    /// Every file is as materialized and its objects are sound: nothing to do.
    Intact,
    /// The output is missing, elsewhere or edited, but the objects are sound:
    /// materialize it again.
    Stale,
    /// Objects were found corrupt (they are deleted): the step must be
    /// rebuilt or restored. The text says what was wrong.
    Damaged(String),
}

fn entry_path(dest: &Path, e: &Entry) -> PathBuf {
    if e.path.is_empty() {
        dest.to_path_buf()
    } else {
        dest.join(&e.path)
    }
}

impl Cache {
    /// Whether the object of `entry` is sound: checked by identity against
    /// the memo; an object the memo does not know is hashed once (and
    /// remembered). A corrupt object is deleted; returns false then.
    pub fn object_sound(&self, entry: &Entry) -> Result<bool> {
        let path = self.object_path(&entry.hash);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(false);
        };
        if meta.size() == entry.size
            && self.memo().known(&meta).as_deref() == Some(entry.hash.as_str())
        {
            note_object(&meta);
            return Ok(true);
        }
        let (hash, meta) = self.memo().hash_file(&path)?;
        if hash == entry.hash && meta.size() == entry.size {
            note_object(&meta);
            return Ok(true);
        }
        std::fs::remove_file(&path).at("remove corrupt object", &path)?;
        Ok(false)
    }

    /// Checks a cached step's output at `dest` against what `previous`
    /// recorded when it was materialized (see the module doc).
    pub fn output_state(
        &self,
        manifest: &Manifest,
        dest: &Path,
        previous: Option<&Materialized>,
    ) -> Result<OutputState> {
        let stamps = previous
            .filter(|m| m.dest == dest && m.stamps.len() == manifest.files.len())
            .map(|m| &m.stamps);
        let mut intact = stamps.is_some();
        for (i, e) in manifest.files.iter().enumerate() {
            let current = std::fs::symlink_metadata(entry_path(dest, e)).ok();
            let unchanged = match (stamps, &current) {
                (Some(s), Some(meta)) => meta.is_file() && Stamp::of(meta) == s[i],
                _ => false,
            };
            if unchanged {
                note_object(current.as_ref().expect("checked above"));
                continue;
            }
            intact = false;
            if !self.object_sound(e)? {
                return Ok(OutputState::Damaged(format!(
                    "its cached file `{}` was changed in place",
                    e.path
                )));
            }
        }
        Ok(if intact {
            OutputState::Intact
        } else {
            OutputState::Stale
        })
    }

    /// Makes `dest` a directory (or, for a single-file artifact, a file) with
    /// the artifact's files, hardlinked from the object store (copied across
    /// filesystems), and returns what it made. `dest` is replaced
    /// atomically: a reader never sees a mix.
    pub fn materialize(&self, manifest: &Manifest, dest: &Path) -> Result<Materialized> {
        let parent = dest.parent().ok_or_else(|| CacheError::Layout {
            path: dest.to_owned(),
            what: "an output destination needs a parent folder".to_owned(),
        })?;
        std::fs::create_dir_all(parent).at("create", parent)?;
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let staging = parent.join(format!(".{name}.tmp-{}-{}", std::process::id(), unique()));
        let single = manifest.files.len() == 1 && manifest.files[0].path.is_empty();
        if !single {
            std::fs::create_dir_all(&staging).at("create", &staging)?;
        }
        for e in &manifest.files {
            let target = entry_path(&staging, e);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).at("create", dir)?;
            }
            let object = self.object_path(&e.hash);
            if std::fs::hard_link(&object, &target).is_err() {
                std::fs::copy(&object, &target).at("write", &target)?;
            }
        }
        if dest.exists() || dest.is_symlink() {
            let old = parent.join(format!(".{name}.old-{}-{}", std::process::id(), unique()));
            std::fs::rename(dest, &old).at("move aside", dest)?;
            std::fs::rename(&staging, dest).at("create", dest)?;
            std::fs::remove_dir_all(&old)
                .or_else(|_| std::fs::remove_file(&old))
                .ok();
        } else {
            std::fs::rename(&staging, dest).at("create", dest)?;
        }
        let mut stamps = Vec::with_capacity(manifest.files.len());
        for e in &manifest.files {
            let path = entry_path(dest, e);
            let meta = std::fs::symlink_metadata(&path).at("read", &path)?;
            note_object(&meta);
            stamps.push(Stamp::of(&meta));
        }
        Ok(Materialized {
            dest: dest.to_path_buf(),
            stamps,
        })
    }
}

/// A number unique within this process, for staging names.
pub(super) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}
