//! Moving one object between the local object store and the bucket:
//! downloads in parallel ranges that resume after an interruption and are
//! verified with blake3 before use; uploads in multipart chunks with a bounded
//! number in flight, skipped when the bucket already has the object.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, WriteMultipart};

use super::RemoteError;
use crate::cache::{Cache, Entry};

/// Size of one download range and one upload part. S3 allows parts of 5 MiB
/// to 5 GiB and at most 10 000 of them: 64 MiB parts cover objects up to
/// 625 GiB, far beyond a 5 GB safetensors shard.
pub const PART_SIZE: u64 = 64 << 20;

/// Ranges downloaded, or parts uploaded, at once per object.
pub const CONCURRENCY: usize = 4;

/// Objects up to this size are uploaded with a single PUT.
const SINGLE_PUT_LIMIT: u64 = 16 << 20;

/// Downloads `entry` from `remote` into the cache's object store and returns
/// the bytes fetched (less than the size when resuming). The object is
/// assembled under `partial/`, range by range; the ranges already written by
/// an interrupted download are kept. It enters the object store only once its
/// blake3 matches; a mismatch is [`RemoteError::Corrupt`] and the partial
/// file is discarded.
pub async fn download(
    store: &dyn ObjectStore,
    remote: &StorePath,
    cache: &Cache,
    entry: &Entry,
) -> Result<u64, RemoteError> {
    // One download per object at a time, across threads and processes (two
    // steps' outputs often share files; workers on one node share a cache).
    let partial = cache.partial_path(&entry.hash);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(partial.with_extension("lock"))
        .map_err(local)?;
    lock.lock().map_err(local)?;
    if cache.has_object(entry) {
        return Ok(0);
    }
    let result = match assemble(store, remote, cache, entry).await {
        // Ranges kept from an earlier attempt may be what is wrong (a local
        // disk problem): try once more from nothing before blaming the bucket.
        Err(RemoteError::Corrupt(_)) if cache.partial_path(&entry.hash).exists() => {
            discard_partial(cache, entry);
            assemble(store, remote, cache, entry).await
        }
        other => other,
    };
    if result.is_ok() {
        std::fs::remove_file(partial.with_extension("lock")).ok();
    }
    result
}

fn discard_partial(cache: &Cache, entry: &Entry) {
    let partial = cache.partial_path(&entry.hash);
    std::fs::remove_file(partial.with_extension("parts")).ok();
    std::fs::remove_file(partial).ok();
}

/// One attempt of [`download`]; the partial file is kept on a mismatch only
/// when earlier ranges were reused.
async fn assemble(
    store: &dyn ObjectStore,
    remote: &StorePath,
    cache: &Cache,
    entry: &Entry,
) -> Result<u64, RemoteError> {
    let meta = store.head(remote).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            RemoteError::Corrupt(format!("object {} is missing from the bucket", entry.hash))
        }
        e => RemoteError::Unreachable(e.into()),
    })?;
    if meta.size != entry.size {
        return Err(RemoteError::Corrupt(format!(
            "object {} has {} bytes in the bucket, expected {}",
            entry.hash, meta.size, entry.size
        )));
    }
    let partial = cache.partial_path(&entry.hash);
    let parts_log = partial.with_extension("parts");
    let done: BTreeSet<u64> = std::fs::read_to_string(&parts_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&partial)
        .map_err(local)?;
    file.set_len(entry.size).map_err(local)?;
    let log = Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&parts_log)
            .map_err(local)?,
    );
    let todo: Vec<u64> = (0..entry.size.div_ceil(PART_SIZE))
        .filter(|i| !done.contains(i))
        .collect();
    let fetched = futures_util::stream::iter(todo)
        .map(|index| fetch_range(store, remote, &file, &log, entry.size, index))
        .buffer_unordered(CONCURRENCY)
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await?;
    drop(file);
    let actual = blake3::Hasher::new()
        .update_mmap_rayon(&partial)
        .map_err(local)?
        .finalize()
        .to_hex()
        .to_string();
    if actual != entry.hash {
        if done.is_empty() {
            discard_partial(cache, entry);
        }
        return Err(RemoteError::Corrupt(format!(
            "object {} in the bucket hashes to {actual}",
            entry.hash
        )));
    }
    std::fs::remove_file(&parts_log).ok();
    cache
        .adopt_object(&entry.hash, &partial, entry.exec)
        .map_err(|e| RemoteError::Local(e.into()))?;
    Ok(fetched)
}

/// Fetches range `index` into its place in `file` and notes it in the parts
/// log.
async fn fetch_range(
    store: &dyn ObjectStore,
    remote: &StorePath,
    file: &File,
    log: &Mutex<File>,
    size: u64,
    index: u64,
) -> Result<u64, RemoteError> {
    let start = index * PART_SIZE;
    let end = (start + PART_SIZE).min(size);
    let options = GetOptions {
        range: Some((start..end).into()),
        ..Default::default()
    };
    let mut body = store
        .get_opts(remote, options)
        .await
        .map_err(|e| RemoteError::Unreachable(e.into()))?
        .into_stream();
    let mut offset = start;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| RemoteError::Unreachable(e.into()))?;
        if offset + chunk.len() as u64 > end {
            return Err(RemoteError::Corrupt(format!(
                "{remote}: the bucket sent more than the {} bytes asked for",
                end - start
            )));
        }
        file.write_all_at(&chunk, offset).map_err(local)?;
        offset += chunk.len() as u64;
    }
    if offset != end {
        return Err(RemoteError::Corrupt(format!(
            "{remote}: the bucket sent {} of the {} bytes asked for",
            offset - start,
            end - start
        )));
    }
    // No fsync per range: a range logged but lost in a crash fails the
    // blake3 check, and `download` then starts over.
    writeln!(log.lock().expect("parts log lock"), "{index}").map_err(local)?;
    Ok(end - start)
}

/// Uploads the local file `path` of `size` bytes to `remote` unless the
/// bucket already has an object of that size there (objects are named by
/// their content, so that is the same object). Returns the bytes sent. Memory
/// stays within about `(CONCURRENCY + 1) × PART_SIZE`.
pub async fn upload(
    store: &dyn ObjectStore,
    remote: &StorePath,
    path: &Path,
    size: u64,
) -> anyhow::Result<u64> {
    match store.head(remote).await {
        Ok(meta) if meta.size == size => return Ok(0),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if size <= SINGLE_PUT_LIMIT {
        let bytes = std::fs::read(path)?;
        store.put(remote, bytes.into()).await?;
        return Ok(size);
    }
    let mut writer =
        WriteMultipart::new_with_chunk_size(store.put_multipart(remote).await?, PART_SIZE as usize);
    let sent = async {
        let mut file = File::open(path)?;
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return anyhow::Ok(());
            }
            writer.wait_for_capacity(CONCURRENCY).await?;
            writer.write(&buf[..n]);
        }
    }
    .await;
    match sent {
        Ok(()) => {
            writer.finish().await?;
            Ok(size)
        }
        Err(e) => {
            writer.abort().await.ok();
            Err(e)
        }
    }
}

fn local(e: std::io::Error) -> RemoteError {
    RemoteError::Local(e.into())
}
