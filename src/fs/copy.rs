//! Giving a file its own copy of another file's bytes (a reflink where the
//! filesystem can share extents, a plain copy otherwise), and knowing which
//! inodes belong to the cache, the only files yibuild may hardlink.
//!
//! A hardlink shares everything with its original: an edit through either
//! name changes both, and a chmod of one is a chmod of the other. That is
//! fine between cache objects and the outputs materialized from them (the
//! cache owns both); it is never fine for a user's file.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::{LazyLock, Mutex};

use crate::fs::error::{IoContext, IoError};

/// `FICLONE` (`_IOW(0x94, 9, int)`): make the destination share the source's
/// extents (btrfs, XFS, bcachefs, ZFS 2.2); ext4 answers EOPNOTSUPP.
const FICLONE: u64 = 0x4004_9409;

/// Creates `dst` (which must not exist) with the bytes of `src`: a reflink
/// when the filesystem supports it, a copy otherwise. `dst` gets `src`'s
/// permission bits plus write for the owner; `src` is only read.
pub fn clone_or_copy(src: &Path, dst: &Path) -> Result<(), IoError> {
    let mut from = File::open(src).at("read", src)?;
    let mode = from.metadata().at("read", src)?.permissions().mode() & 0o777 | 0o200;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dst)
        .at("create", dst)?;
    // SAFETY: both descriptors are open for the duration of the call; the
    // ioctl reads only them.
    let cloned = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE as _, from.as_raw_fd()) } == 0;
    if !cloned {
        std::io::copy(&mut from, &mut to).at("write", dst)?;
    }
    Ok(())
}

/// (device, inode) of every cache object this process stored, checked or
/// materialized.
static OBJECTS: LazyLock<Mutex<HashSet<(u64, u64)>>> = LazyLock::new(Default::default);

/// Notes that the file with `meta` is a cache object (or a materialized link
/// to one), which steps may hardlink.
pub fn note_object(meta: &std::fs::Metadata) {
    OBJECTS
        .lock()
        .expect("object registry lock")
        .insert((meta.dev(), meta.ino()));
}

/// Whether the file with `meta` is a cache object this process knows of.
pub fn is_object(meta: &std::fs::Metadata) -> bool {
    OBJECTS
        .lock()
        .expect("object registry lock")
        .contains(&(meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_independent_and_the_source_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        std::fs::write(&src, b"weights").unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&src).unwrap();
        clone_or_copy(&src, &dst).unwrap();
        std::fs::write(&dst, b"changed").unwrap();
        let after = std::fs::metadata(&src).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), b"weights");
        assert_eq!(after.nlink(), 1);
        assert_eq!(after.mode(), before.mode());
        assert_ne!(std::fs::metadata(&dst).unwrap().ino(), after.ino());
        assert!(clone_or_copy(&src, &dst).is_err(), "dst exists");
    }
}
