//! File helpers shared by steps that pass most of a model folder through
//! unchanged: cache objects are hardlinked, anything else (a user's source) is
//! reflinked or copied, never linked (see the rule in [`crate::cache`]).

use std::path::Path;

use anyhow::{Context, Result};

use crate::fs::copy::{clone_or_copy, is_object};
use crate::fs::error::{IoContext, IoError};

/// Makes `dst` (which must not exist) have the bytes of `src`. A cache object
/// (an earlier step's materialized output) is hardlinked: free, and the cache
/// owns it. Anything else gets its own copy, a reflink where the filesystem
/// supports it, so the output shares nothing with the user's file. A symlink
/// (as in a Hub cache snapshot) is followed: `dst` gets the target's bytes,
/// never the link.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    let resolved = std::fs::canonicalize(src);
    let src = resolved.as_deref().unwrap_or(src);
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if is_object(&meta) && std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    Ok(clone_or_copy(src, dst)?)
}

/// Links every file of the model folder `src` (recursively) into `dst`, except
/// the relative paths for which `skip` returns true.
pub fn link_tree(src: &Path, dst: &Path, skip: &dyn Fn(&str) -> bool) -> Result<()> {
    link_tree_at(src, dst, "", skip)
}

fn link_tree_at(src: &Path, dst: &Path, rel: &str, skip: &dyn Fn(&str) -> bool) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .with_context(|| format!("cannot read {}", src.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if skip(&rel_path) {
            continue;
        }
        let target = dst.join(&name);
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            link_tree_at(&entry.path(), &target, &rel_path, skip)?;
        } else {
            link_or_copy(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Writes JSON the way Hugging Face tools do (two-space indent, trailing
/// newline). A file already at `path` is unlinked first, never written
/// through: it may be a hardlink to a cache object passed through by
/// [`link_or_copy`].
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads and parses a JSON file, naming it in errors.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Feeds every byte of the file at `path` to `consume`, 1 MiB at a time, and
/// returns the byte count: how a large file is hashed without holding it.
pub fn read_chunks(path: &Path, mut consume: impl FnMut(&[u8])) -> Result<u64, IoError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).at("read", path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).at("read", path)?;
        if n == 0 {
            return Ok(total);
        }
        consume(&buf[..n]);
        total += n as u64;
    }
}

/// Lowercase hex sha256 of the file at `path` (what `SHA256SUMS`, the Hub's
/// LFS ids and lock entries use), streamed.
pub fn sha256_file(path: &Path) -> Result<String, IoError> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    read_chunks(path, |chunk| hasher.update(chunk))?;
    Ok(format!("{:x}", hasher.finalize()))
}
