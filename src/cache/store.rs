//! The on-disk cache: content-addressed objects, the action table (step key →
//! output manifest), per-recipe build records, and the lock.
//!
//! Layout under the cache directory:
//!
//! ```text
//! objects/ab/cdef…   read-only files named by their blake3
//! actions/ab/<key>.json   the output manifest of the step with that key
//! records/<recipe>/<step>.json   what the step was last built from (for explain/status)
//! tmp/   outputs of running steps; anything here at startup is debris of a killed build
//! partial/<hash>   objects being downloaded from the remote cache (kept to resume)
//! memo.json   file-identity → blake3 memo
//! lock   held exclusively by a running build
//! ```
//!
//! Crash safety: objects are written to `tmp/`, fsynced, then renamed into place;
//! the action entry is written (temp, fsync, rename) only after every object it
//! names is durable. A build killed at any point leaves no action that names a
//! missing or partial object.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::key::KeyInputs;
use super::manifest::{Entry, Manifest};
use super::memo::{list_files, HashMemo};

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename onto {}", path.display()))?;
    if let Ok(d) = File::open(dir) {
        d.sync_all().ok();
    }
    Ok(())
}

/// What a step was last built from, per recipe and step name.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuildRecord {
    /// The step key.
    pub key: String,
    /// The key's components.
    pub inputs: KeyInputs,
    /// The files of each input the step read, with their content ids (empty
    /// in records written before yibuild kept them).
    #[serde(default)]
    pub files: BTreeMap<String, BTreeMap<String, String>>,
    /// Digest of the output.
    pub output: String,
}

/// An open cache directory.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    memo: HashMemo,
    _lock: Option<File>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root` without locking it: for
    /// read-only commands (plan, status, explain).
    pub fn open_unlocked(root: &Path) -> Result<Cache> {
        for sub in ["objects", "actions", "records", "tmp", "partial"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create cache directory {}", root.display()))?;
        }
        let root = root.canonicalize()?;
        Ok(Cache {
            memo: HashMemo::load(&root.join("memo.json")),
            root,
            _lock: None,
        })
    }

    /// Opens the cache and takes its exclusive lock, waiting for another build
    /// that holds it (`waiting` is called once if so). Debris of killed builds
    /// in `tmp/` is removed once the lock is held.
    pub fn open_locked(root: &Path, waiting: &dyn Fn()) -> Result<Cache> {
        let mut cache = Cache::open_unlocked(root)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache.root.join("lock"))?;
        if lock.try_lock().is_err() {
            waiting();
            lock.lock().context("cannot lock the cache")?;
        }
        cache._lock = Some(lock);
        let tmp = cache.root.join("tmp");
        for entry in std::fs::read_dir(&tmp)? {
            let path = entry?.path();
            make_writable(&path);
            std::fs::remove_dir_all(&path)
                .or_else(|_| std::fs::remove_file(&path))
                .ok();
        }
        // The memo may have changed while we waited for the lock.
        cache.memo = HashMemo::load(&cache.root.join("memo.json"));
        Ok(cache)
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file-hash memo.
    pub fn memo(&self) -> &HashMemo {
        &self.memo
    }

    /// Where the object with blake3 `hash` lives (read-only; it may not exist).
    pub fn object_path(&self, hash: &str) -> PathBuf {
        self.root.join("objects").join(&hash[..2]).join(&hash[2..])
    }

    /// Whether the object store has `entry`'s file with the right size.
    pub fn has_object(&self, entry: &Entry) -> bool {
        std::fs::metadata(self.object_path(&entry.hash)).is_ok_and(|m| m.size() == entry.size)
    }

    /// Where a download of object `hash` is assembled; it survives a killed
    /// build so the download can resume.
    pub fn partial_path(&self, hash: &str) -> PathBuf {
        self.root.join("partial").join(hash)
    }

    /// Moves a complete file whose blake3 the caller has verified to be `hash`
    /// into the object store, read-only.
    pub fn adopt_object(&self, hash: &str, file: &Path, exec: bool) -> Result<()> {
        let object = self.object_path(hash);
        std::fs::create_dir_all(object.parent().unwrap())?;
        File::open(file)?.sync_all()?;
        let mode = if exec { 0o555 } else { 0o444 };
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(file, &object)
            .with_context(|| format!("cannot store {}", object.display()))?;
        self.memo.remember(&std::fs::metadata(&object)?, hash);
        Ok(())
    }

    /// Records the action `key` → `manifest`, whose objects must all be
    /// present (the remote cache calls this after downloading them).
    pub fn record_action(&self, key: &str, manifest: &Manifest) -> Result<()> {
        anyhow::ensure!(
            manifest.files.iter().all(|e| self.has_object(e)),
            "cannot record action {key}: some of its objects are missing"
        );
        write_atomic(
            &self.action_path(key),
            &serde_json::to_vec_pretty(manifest)?,
        )
    }

    fn action_path(&self, key: &str) -> PathBuf {
        self.root
            .join("actions")
            .join(&key[..2])
            .join(format!("{key}.json"))
    }

    fn record_path(&self, recipe: &str, step: &str) -> PathBuf {
        self.root
            .join("records")
            .join(sanitize(recipe))
            .join(format!("{}.json", sanitize(step)))
    }

    /// A fresh empty directory under `tmp/` for a step to write into.
    pub fn temp_dir(&self, label: &str) -> Result<PathBuf> {
        let dir = self.root.join("tmp").join(format!(
            "{}-{}-{}",
            sanitize(label),
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The output manifest of step `key`, if the action table has it and every
    /// object it names is present with the right size.
    pub fn lookup(&self, key: &str) -> Option<Manifest> {
        let bytes = std::fs::read(self.action_path(key)).ok()?;
        let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
        let complete = manifest.files.iter().all(|e| self.has_object(e));
        complete.then_some(manifest)
    }

    /// Moves every file of the finished output `dir` into the object store and
    /// records the action `key` → manifest. The action is written last.
    pub fn ingest(&self, key: &str, dir: &Path) -> Result<Manifest> {
        let mut entries = Vec::new();
        for rel in list_files(dir)? {
            let path = dir.join(&rel);
            let (hash, meta) = self.memo.hash_file(&path)?;
            let exec = meta.permissions().mode() & 0o111 != 0;
            let entry = Entry {
                path: rel,
                size: meta.size(),
                hash,
                exec,
            };
            if self.has_object(&entry) {
                std::fs::remove_file(&path).ok();
            } else {
                self.adopt_object(&entry.hash, &path, exec)?;
            }
            entries.push(entry);
        }
        let manifest = Manifest::new(entries);
        self.record_action(key, &manifest)?;
        Ok(manifest)
    }

    /// Makes `dest` a directory (or, for a single-file artifact, a file) with the
    /// artifact's files, hardlinked from the object store (copied across
    /// filesystems). `dest` is replaced atomically: a reader never sees a mix.
    pub fn materialize(&self, manifest: &Manifest, dest: &Path) -> Result<()> {
        let parent = dest.parent().context("destination has no parent")?;
        std::fs::create_dir_all(parent)?;
        let staging = parent.join(format!(
            ".{}.tmp-{}-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id(),
            unique()
        ));
        let single = manifest.files.len() == 1 && manifest.files[0].path.is_empty();
        if single {
            link_or_copy_object(&self.object_path(&manifest.files[0].hash), &staging)?;
        } else {
            std::fs::create_dir_all(&staging)?;
            for e in &manifest.files {
                let target = staging.join(&e.path);
                std::fs::create_dir_all(target.parent().unwrap())?;
                link_or_copy_object(&self.object_path(&e.hash), &target)?;
            }
        }
        if dest.exists() || dest.is_symlink() {
            let old = parent.join(format!(
                ".{}.old-{}-{}",
                dest.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id(),
                unique()
            ));
            std::fs::rename(dest, &old)?;
            std::fs::rename(&staging, dest)?;
            std::fs::remove_dir_all(&old)
                .or_else(|_| std::fs::remove_file(&old))
                .ok();
        } else {
            std::fs::rename(&staging, dest)?;
        }
        Ok(())
    }

    /// The record of what `step` of `recipe` was last built from.
    pub fn record(&self, recipe: &str, step: &str) -> Option<BuildRecord> {
        let bytes = std::fs::read(self.record_path(recipe, step)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores the record of the latest build of `step`.
    pub fn write_record(&self, recipe: &str, step: &str, record: &BuildRecord) -> Result<()> {
        write_atomic(
            &self.record_path(recipe, step),
            &serde_json::to_vec_pretty(record)?,
        )
    }

    /// Re-hashes every object and checks every action's manifest; returns one
    /// line per problem (empty when the cache is sound).
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for (hash, path) in self.objects()? {
            let size = std::fs::metadata(&path)?.size();
            let actual = super::memo::hash_file_uncached(&path, size)?;
            if actual != hash {
                problems.push(format!(
                    "object {hash} is corrupt (its bytes hash to {actual})"
                ));
            }
        }
        for (key, manifest) in self.actions()? {
            for e in &manifest.files {
                match std::fs::metadata(self.object_path(&e.hash)) {
                    Ok(m) if m.size() == e.size => {}
                    Ok(m) => problems.push(format!(
                        "action {key}: object {} has {} bytes, expected {}",
                        e.hash,
                        m.size(),
                        e.size
                    )),
                    Err(_) => problems.push(format!("action {key}: object {} is missing", e.hash)),
                }
            }
        }
        Ok(problems)
    }

    /// Every object: (hash, path).
    fn objects(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for rel in list_files(&self.root.join("objects"))? {
            let hash = rel.replace('/', "");
            out.push((hash, self.root.join("objects").join(&rel)));
        }
        Ok(out)
    }

    /// Every action: (key, manifest). Unreadable entries are skipped.
    fn actions(&self) -> Result<Vec<(String, Manifest)>> {
        let mut out = Vec::new();
        for rel in list_files(&self.root.join("actions"))? {
            let Some(key) = rel.rsplit('/').next().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            let bytes = std::fs::read(self.root.join("actions").join(&rel))?;
            if let Ok(m) = serde_json::from_slice(&bytes) {
                out.push((key.to_owned(), m));
            }
        }
        Ok(out)
    }

    /// Removes actions that no build record references, objects that no kept
    /// action references, and interrupted remote downloads. Returns (actions, objects, bytes) that were (or, with
    /// `dry_run`, would be) removed.
    pub fn gc(&self, dry_run: bool) -> Result<(usize, usize, u64)> {
        let mut live_keys = std::collections::HashSet::new();
        for rel in list_files(&self.root.join("records"))? {
            let bytes = std::fs::read(self.root.join("records").join(&rel))?;
            if let Ok(r) = serde_json::from_slice::<BuildRecord>(&bytes) {
                live_keys.insert(r.key);
            }
        }
        let mut live_objects = std::collections::HashSet::new();
        let mut dead_actions = 0;
        for (key, manifest) in self.actions()? {
            if live_keys.contains(&key) {
                live_objects.extend(manifest.files.into_iter().map(|e| e.hash));
            } else {
                dead_actions += 1;
                if !dry_run {
                    std::fs::remove_file(self.action_path(&key))?;
                }
            }
        }
        let (mut dead_objects, mut bytes) = (0, 0);
        let partial_downloads = list_files(&self.root.join("partial"))?
            .into_iter()
            .map(|rel| (String::new(), self.root.join("partial").join(rel)));
        for (hash, path) in self.objects()?.into_iter().chain(partial_downloads) {
            if !live_objects.contains(&hash) {
                dead_objects += 1;
                bytes += std::fs::metadata(&path)?.size();
                if !dry_run {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok((dead_actions, dead_objects, bytes))
    }
}

fn link_or_copy_object(object: &Path, target: &Path) -> Result<()> {
    if std::fs::hard_link(object, target).is_err() {
        std::fs::copy(object, target)
            .with_context(|| format!("cannot copy {} to {}", object.display(), target.display()))?;
    }
    Ok(())
}

fn make_writable(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(path) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
        let mut perms = meta.permissions();
        perms.set_mode(perms.mode() | 0o200);
        std::fs::set_permissions(path, perms).ok();
    }
}

/// A name safe to use as one path component.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | ',') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}
