//! Resumable, parallel, verified downloads of one file into the Hub cache.
//!
//! A file is split into fixed-size chunks fetched by ranged GETs on several
//! connections at once and written in place into `blobs/{etag}.incomplete`.
//! How far each chunk got is kept in `blobs/{etag}.incomplete.parts`, so a
//! dropped connection resumes where it stopped (in this run, or the next one
//! after a crash). An `.incomplete` file without that record is one a
//! sequential downloader (Python's `huggingface_hub`) left: its length is
//! taken as a finished prefix. The bytes are verified (sha256 for LFS files,
//! the git blob sha1 otherwise) before the file is renamed into `blobs/` and
//! linked from the snapshot; a mismatch discards them and downloads again.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::fs::files::{read_chunks, sha256_file};

use super::api::HubClient;
use super::layout::RepoCache;
use super::lock::LockedFile;

/// Attempts per chunk before giving up (each resumes where the last stopped).
const CHUNK_ATTEMPTS: usize = 5;
/// Whole-file attempts when the verified hash does not match.
const VERIFY_ATTEMPTS: usize = 2;
/// Write granularity, and how often progress is saved.
const BUFFER: usize = 1 << 20;
const SAVE_EVERY: u64 = 16 << 20;

/// How to download: connections and chunk size.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Ranged requests in flight at once for one file.
    pub connections: usize,
    /// Bytes per chunk (the unit of parallelism).
    pub chunk_size: u64,
}

/// One file of one commit of one repository.
#[derive(Debug, Clone, Copy)]
pub struct RemoteFile<'a> {
    /// `org/name`.
    pub repo: &'a str,
    /// The commit sha.
    pub commit: &'a str,
    /// Path in the repository.
    pub path: &'a str,
    /// Its pinned size and hashes.
    pub file: &'a LockedFile,
}

impl RemoteFile<'_> {
    fn describe(&self) -> String {
        format!("hf://{}@{}/{}", self.repo, &self.commit[..12], self.path)
    }
}

/// The saved progress of an `.incomplete` file: bytes done per chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Parts {
    size: u64,
    chunk_size: u64,
    done: Vec<u64>,
}

impl Parts {
    fn chunk(&self, i: usize) -> std::ops::Range<u64> {
        let start = i as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }

    fn fresh(size: u64, chunk_size: u64, prefix: u64) -> Parts {
        let n = size.div_ceil(chunk_size).max(1) as usize;
        let mut p = Parts {
            size,
            chunk_size,
            done: vec![0; n],
        };
        for i in 0..n {
            let r = p.chunk(i);
            p.done[i] = prefix.saturating_sub(r.start).min(r.end - r.start);
        }
        p
    }

    fn load(path: &Path, incomplete: &Path, size: u64, chunk_size: u64) -> Parts {
        let saved: Option<Parts> = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match saved {
            Some(p) if p.size == size && p.chunk_size == chunk_size => p,
            Some(_) => Parts::fresh(size, chunk_size, 0),
            None => {
                let prefix = std::fs::metadata(incomplete)
                    .map_or(0, |m| m.len())
                    .min(size);
                Parts::fresh(size, chunk_size, prefix)
            }
        }
    }
}

/// Makes `remote` available in the Hub cache and returns its snapshot path:
/// nothing is downloaded when its blob is already there. A download that
/// fails its check is retried, and `retried` told why.
pub fn fetch_file(
    client: &HubClient,
    cache: &RepoCache,
    remote: RemoteFile,
    transfer: Transfer,
    progress: &(dyn Fn(u64) + Sync),
    retried: &dyn Fn(&str),
) -> Result<PathBuf> {
    let etag = remote.file.etag();
    let _lock = cache.lock_blob(etag)?;
    let blob = cache.blob(etag);
    if !std::fs::metadata(&blob).is_ok_and(|m| m.len() == remote.file.size) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            download_blob(client, cache, remote, transfer, progress)?;
            let incomplete = cache.incomplete(etag);
            match verify(&incomplete, remote.file) {
                Ok(()) => break,
                Err(e) if attempt < VERIFY_ATTEMPTS => {
                    std::fs::remove_file(&incomplete).ok();
                    std::fs::remove_file(parts_path(&incomplete)).ok();
                    retried(&format!(
                        "warning: {}: {e:#}; downloading it again",
                        remote.describe()
                    ));
                }
                Err(e) => {
                    std::fs::remove_file(&incomplete).ok();
                    std::fs::remove_file(parts_path(&incomplete)).ok();
                    return Err(e.context(format!("{} is corrupt", remote.describe())));
                }
            }
        }
        let incomplete = cache.incomplete(etag);
        std::fs::rename(&incomplete, &blob)
            .with_context(|| format!("cannot move {} into place", incomplete.display()))?;
        std::fs::remove_file(parts_path(&incomplete)).ok();
    }
    cache.link(remote.commit, remote.path, etag)
}

fn parts_path(incomplete: &Path) -> PathBuf {
    let mut s = incomplete.as_os_str().to_owned();
    s.push(".parts");
    PathBuf::from(s)
}

/// Downloads every missing byte of `remote` into its `.incomplete` file.
fn download_blob(
    client: &HubClient,
    cache: &RepoCache,
    remote: RemoteFile,
    transfer: Transfer,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let incomplete = cache.incomplete(remote.file.etag());
    std::fs::create_dir_all(incomplete.parent().expect("blobs dir"))?;
    let parts_file = parts_path(&incomplete);
    let size = remote.file.size;
    let parts = Parts::load(&parts_file, &incomplete, size, transfer.chunk_size.max(1));
    crate::cache::store::write_atomic(&parts_file, &serde_json::to_vec(&parts)?)?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&incomplete)
        .with_context(|| format!("cannot write {}", incomplete.display()))?;
    progress(parts.done.iter().sum());
    let pending: Vec<usize> = (0..parts.done.len())
        .filter(|&i| parts.done[i] < parts.chunk(i).end - parts.chunk(i).start)
        .collect();
    let state = Mutex::new(parts);
    let next = Mutex::new(pending.into_iter());
    let failed = AtomicBool::new(false);
    let errors = Mutex::new(Vec::new());
    let workers = transfer.connections.clamp(1, 64);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let Some(i) = next.lock().unwrap().next() else {
                    return;
                };
                if let Err(e) = fetch_chunk(client, remote, &out, &state, &parts_file, i, progress)
                {
                    failed.store(true, Ordering::Relaxed);
                    errors.lock().unwrap().push(e);
                }
            });
        }
    });
    let parts = state.into_inner().unwrap();
    crate::cache::store::write_atomic(&parts_file, &serde_json::to_vec(&parts)?)?;
    if let Some(e) = errors.into_inner().unwrap().into_iter().next() {
        return Err(e);
    }
    out.set_len(size)?;
    out.sync_all()?;
    Ok(())
}

fn save(parts: &Parts, path: &Path) {
    if let Ok(bytes) = serde_json::to_vec(parts) {
        crate::cache::store::write_atomic(path, &bytes).ok();
    }
}

/// Fetches chunk `i`, retrying from where the last attempt stopped.
fn fetch_chunk(
    client: &HubClient,
    remote: RemoteFile,
    out: &File,
    state: &Mutex<Parts>,
    parts_file: &Path,
    i: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let range = state.lock().unwrap().chunk(i);
    let mut last_error = None;
    for attempt in 0..CHUNK_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 * attempt as u64));
        }
        let done = state.lock().unwrap().done[i];
        let start = range.start + done;
        if start >= range.end {
            return Ok(());
        }
        let mut body =
            match client.download(remote.repo, remote.commit, remote.path, start..range.end) {
                Ok(b) => b.into_reader(),
                Err(e) if super::api::is_retryable(&e) => {
                    last_error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
        let mut buf = vec![0u8; BUFFER];
        let mut offset = start;
        let mut unsaved = 0u64;
        let result: Result<()> = loop {
            if offset >= range.end {
                break Ok(());
            }
            let want = ((range.end - offset) as usize).min(BUFFER);
            match body.read(&mut buf[..want]) {
                Ok(0) => {
                    break Err(anyhow!(
                        "connection closed after {} of {} bytes",
                        offset - range.start,
                        range.end - range.start
                    ))
                }
                Ok(n) => {
                    out.write_all_at(&buf[..n], offset)?;
                    offset += n as u64;
                    unsaved += n as u64;
                    progress(n as u64);
                    let mut st = state.lock().unwrap();
                    st.done[i] = offset - range.start;
                    if unsaved >= SAVE_EVERY {
                        out.sync_data()?;
                        save(&st, parts_file);
                        unsaved = 0;
                    }
                }
                Err(e) => break Err(anyhow!(e)),
            }
        };
        out.sync_data()?;
        save(&state.lock().unwrap(), parts_file);
        match result {
            Ok(()) => return Ok(()),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| anyhow!("no attempt made"))
        .context(format!(
            "{}: download of bytes {}..{} failed {CHUNK_ATTEMPTS} times",
            remote.describe(),
            range.start,
            range.end
        )))
}

/// Checks the size and hash of a downloaded file against its lock entry.
pub fn verify(path: &Path, file: &LockedFile) -> Result<()> {
    let len = std::fs::metadata(path)?.len();
    if len != file.size {
        bail!("size is {len} bytes, expected {}", file.size);
    }
    let (expected, actual, what) = match (&file.sha256, &file.blob_id) {
        (Some(sha), _) => (sha.clone(), sha256_file(path)?, "sha256"),
        (None, Some(blob)) => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            read_chunks(path, |chunk| h.update(chunk))?;
            (blob.clone(), hex(&h.finalize()), "git blob id")
        }
        (None, None) => bail!("the lock has no hash for it"),
    };
    if expected != actual {
        bail!("{what} mismatch: expected {expected}, got {actual}");
    }
    Ok(())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads the safetensors header of `remote` (two small ranged GETs: the
/// 8-byte length, then the JSON header) without touching any tensor data.
pub fn fetch_header(client: &HubClient, remote: RemoteFile) -> Result<Vec<u8>> {
    let read = |range: std::ops::Range<u64>| -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity((range.end - range.start) as usize);
        client
            .download(remote.repo, remote.commit, remote.path, range.clone())?
            .into_reader()
            .take(range.end - range.start)
            .read_to_end(&mut v)?;
        if v.len() as u64 != range.end - range.start {
            bail!("{}: short read of its header", remote.describe());
        }
        Ok(v)
    };
    if remote.file.size < 8 {
        bail!(
            "{}: {} bytes is too small for safetensors",
            remote.describe(),
            remote.file.size
        );
    }
    let mut bytes = read(0..8)?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > 100 << 20 || 8 + n > remote.file.size {
        bail!(
            "{}: not a safetensors file (header length {n} for a {}-byte file)",
            remote.describe(),
            remote.file.size
        );
    }
    bytes.extend(read(8..8 + n)?);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequential_prefix_counts_as_done_chunks() {
        let p = Parts::fresh(25, 10, 13);
        assert_eq!(p.done, vec![10, 3, 0]);
        assert_eq!(p.chunk(2), 20..25);
        assert_eq!(Parts::fresh(0, 10, 0).done, vec![0]);
    }

    #[test]
    fn verifies_git_blob_ids_and_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello\n").unwrap();
        // `git hash-object` of "hello\n".
        let git = LockedFile {
            size: 6,
            sha256: None,
            blob_id: Some("ce013625030ba8dba906f756967f9e9ca394464a".into()),
        };
        verify(&f, &git).unwrap();
        let lfs = LockedFile {
            size: 6,
            sha256: Some("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03".into()),
            blob_id: None,
        };
        verify(&f, &lfs).unwrap();
        std::fs::write(&f, b"hellO\n").unwrap();
        let err = verify(&f, &lfs).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
    }
}
