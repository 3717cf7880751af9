//! Content hashing of files and directories, memoized by file identity so that
//! a no-op rebuild over hundreds of gigabytes of sources reads none of their bytes.
//!
//! The memo maps (device, inode, size, mtime in ns) to the file's blake3. Any
//! change to those four re-hashes the file; a touched but unchanged file gets
//! the same hash again, so nothing downstream rebuilds.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::Result;
use crate::fs::error::IoContext;

use super::manifest::{Entry, Manifest};
use super::store::write_atomic;

/// Files larger than this are hashed with memory mapping on all cores.
const MMAP_THRESHOLD: u64 = 16 << 20;

/// The persistent (dev, inode, size, mtime) → blake3 table.
#[derive(Debug)]
pub struct HashMemo {
    path: PathBuf,
    table: Mutex<HashMap<String, String>>,
    dirty: Mutex<bool>,
}

fn identity(meta: &std::fs::Metadata) -> String {
    format!(
        "{}:{}:{}:{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
    )
}

/// Hex blake3 of a file's bytes, without the memo.
pub fn hash_file_uncached(path: &Path, size: u64) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        hasher.update_mmap_rayon(path).at("read", path)?;
    } else {
        hasher.update_mmap(path).at("read", path)?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

impl HashMemo {
    /// Loads the memo stored at `path` (an absent or unreadable file is an empty memo).
    pub fn load(path: &Path) -> HashMemo {
        let mut table: HashMap<String, String> = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // The memo is cache content like any other: a value that is not a
        // hash would become an object path.
        table.retain(|_, hash| super::manifest::is_hash(hash));
        HashMemo {
            path: path.to_path_buf(),
            table: Mutex::new(table),
            dirty: Mutex::new(false),
        }
    }

    /// Writes the memo back if it changed.
    pub fn save(&self) -> Result<()> {
        let mut dirty = self.dirty.lock().unwrap();
        if *dirty {
            let table = self.table.lock().unwrap();
            let sorted: std::collections::BTreeMap<_, _> = table.iter().collect();
            write_atomic(
                &self.path,
                &serde_json::to_vec(&sorted).expect("a string map serializes"),
            )?;
            *dirty = false;
        }
        Ok(())
    }

    /// Remembers that the file with metadata `meta` has hash `hash`.
    pub fn remember(&self, meta: &std::fs::Metadata, hash: &str) {
        self.table
            .lock()
            .unwrap()
            .insert(identity(meta), hash.to_owned());
        *self.dirty.lock().unwrap() = true;
    }

    /// The hash the memo knows for the file with metadata `meta`, if any.
    pub fn known(&self, meta: &std::fs::Metadata) -> Option<String> {
        self.table.lock().unwrap().get(&identity(meta)).cloned()
    }

    /// The hash of one file, from the memo when its identity is unchanged.
    pub fn hash_file(&self, path: &Path) -> Result<(String, std::fs::Metadata)> {
        let meta = std::fs::metadata(path).at("read", path)?;
        if let Some(h) = self.table.lock().unwrap().get(&identity(&meta)) {
            return Ok((h.clone(), meta));
        }
        let hash = hash_file_uncached(path, meta.size())?;
        self.remember(&meta, &hash);
        Ok((hash, meta))
    }

    /// The manifest of a source: a file or a directory tree. Every file a step
    /// may read is in it, dotfiles included (an index may name a dotfile
    /// shard); only git's own store (`.git`) and the Hub client's download
    /// bookkeeping (`.cache/huggingface` at the top) are left out, see
    /// [`list_source_files`].
    pub fn manifest(&self, root: &Path) -> Result<Manifest> {
        let meta = std::fs::metadata(root).at("read", root)?;
        if meta.is_file() {
            let (hash, meta) = self.hash_file(root)?;
            return Ok(Manifest::new(vec![Entry {
                path: String::new(),
                size: meta.size(),
                hash,
                exec: meta.permissions().mode() & 0o111 != 0,
            }]));
        }
        let mut files = Vec::new();
        for rel in list_source_files(root)? {
            let (hash, meta) = self.hash_file(&root.join(&rel))?;
            files.push(Entry {
                path: rel,
                size: meta.size(),
                hash,
                exec: meta.permissions().mode() & 0o111 != 0,
            });
        }
        Ok(Manifest::new(files))
    }
}

/// Relative `/`-separated paths of every regular file under `root`, sorted,
/// skipping names that start with `.`.
pub fn list_files(root: &Path) -> Result<Vec<String>> {
    walk_files(root, &|name, _| name.starts_with('.'))
}

/// The files of a source folder that are part of its identity: every regular
/// file except those under `.git` (git's object store: a model never reads it,
/// and it can be as large as the model again) and the top-level
/// `.cache/huggingface` (download bookkeeping `huggingface-cli download
/// --local-dir` rewrites on every download).
pub fn list_source_files(root: &Path) -> Result<Vec<String>> {
    walk_files(root, &|name, rel| {
        name == ".git" || rel == ".cache/huggingface"
    })
}

/// Relative paths of the regular files under `root`, sorted, leaving out every
/// entry for which `skip(name, relative path)` is true (and, for a folder,
/// everything in it).
fn walk_files(root: &Path, skip: &dyn Fn(&str, &str) -> bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).at("read", &dir)? {
            let entry = entry.at("read", &dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel_path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if skip(&name, &rel_path) {
                continue;
            }
            let ty = std::fs::metadata(entry.path())
                .at("read", &entry.path())?
                .file_type();
            if ty.is_dir() {
                stack.push((entry.path(), rel_path));
            } else if ty.is_file() {
                out.push(rel_path);
            }
        }
    }
    out.sort();
    Ok(out)
}
