//! What a finished step left in its output directory, as the cache stores it:
//! regular files only, dotfiles included, symlinks resolved to their targets'
//! bytes and never followed for anything but reading.
//!
//! A step (a `run` command above all) may leave a symlink where a file or
//! folder should be: `ln -s "$YIBUILD_IN_BASE" "$YIBUILD_OUT/model"`. The
//! link's target is the user's data; storing the output must not move, chmod
//! or delete it. So every file reached through a link is marked `linked` and
//! the cache copies its bytes; only files the step wrote itself may be moved
//! into the object store. A link to something that does not exist, a loop of
//! links, and anything that is not a file or a folder (a fifo, a socket) are
//! errors naming the path.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::{CacheError, Result};
use crate::fs::error::IoContext;

/// One file of a step's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Path relative to the output root, `/`-separated.
    pub rel: String,
    /// Where its bytes are: in the output, or a symlink's resolved target.
    pub path: PathBuf,
    /// Whether it was reached through a symlink (its bytes belong to someone else).
    pub linked: bool,
}

/// Every file under the output directory `root`, sorted by `rel`.
pub fn output_files(root: &Path) -> Result<Vec<OutputFile>> {
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    let meta = std::fs::metadata(root).at("read", root)?;
    visited.insert((meta.dev(), meta.ino()));
    walk(root, "", false, &mut visited, &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    linked: bool,
    visited: &mut HashSet<(u64, u64)>,
    out: &mut Vec<OutputFile>,
) -> Result<()> {
    for entry in std::fs::read_dir(dir).at("read", dir)? {
        let entry = entry.at("read", dir)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(CacheError::Output {
                path: format!("{rel}/{}", entry.file_name().to_string_lossy()),
                what: format!("has a name that is not UTF-8 ({:?})", entry.file_name()),
            });
        };
        let rel_path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let path = entry.path();
        let mut meta = std::fs::symlink_metadata(&path).at("read", &path)?;
        let (mut path, mut linked) = (path, linked);
        if meta.file_type().is_symlink() {
            let target = std::fs::canonicalize(&path).map_err(|_| CacheError::Output {
                path: rel_path.clone(),
                what: format!(
                    "is a symlink to {}, which does not exist",
                    std::fs::read_link(&path).unwrap_or_default().display()
                ),
            })?;
            meta = std::fs::metadata(&target).at("read", &target)?;
            (path, linked) = (target, true);
        }
        if meta.is_dir() {
            if !visited.insert((meta.dev(), meta.ino())) {
                return Err(CacheError::Output {
                    path: rel_path,
                    what: "leads back into a folder already stored (a symlink loop)".to_owned(),
                });
            }
            walk(&path, &rel_path, linked, visited, out)?;
        } else if meta.is_file() {
            out.push(OutputFile {
                rel: rel_path,
                path,
                linked,
            });
        } else {
            return Err(CacheError::Output {
                path: rel_path,
                what: "is not a regular file or folder".to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn dotfiles_are_kept_and_links_are_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let (out, src) = (tmp.path().join("out"), tmp.path().join("src"));
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(out.join(".hidden"), b"h").unwrap();
        std::fs::write(out.join("sub/a"), b"a").unwrap();
        std::fs::write(src.join("w"), b"w").unwrap();
        symlink(&src, out.join("model")).unwrap();
        symlink("sub/a", out.join("alias")).unwrap();
        let files = output_files(&out).unwrap();
        let rels: Vec<(&str, bool)> = files.iter().map(|f| (f.rel.as_str(), f.linked)).collect();
        assert_eq!(
            rels,
            [
                (".hidden", false),
                ("alias", true),
                ("model/w", true),
                ("sub/a", false)
            ]
        );
        assert_eq!(files[2].path, src.join("w").canonicalize().unwrap());
    }

    #[test]
    fn loops_and_dangling_links_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        symlink(&out, out.join("again")).unwrap();
        let err = output_files(&out).unwrap_err().to_string();
        assert!(err.contains("`again`") && err.contains("loop"), "{err}");
        std::fs::remove_file(out.join("again")).unwrap();
        symlink("/nonexistent/x", out.join("gone")).unwrap();
        let err = format!("{:#}", output_files(&out).unwrap_err());
        assert!(
            err.contains("`gone`") && err.contains("does not exist"),
            "{err}"
        );
    }
}
