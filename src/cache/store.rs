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

use super::error::{CacheError, Result};
use crate::fs::error::IoContext;

use super::key::KeyInputs;
use super::manifest::{is_hash, Entry, Manifest};
use super::materialize::{unique, Materialized};
use super::memo::HashMemo;
use super::output::{output_files, OutputFile};
use crate::fs::copy::{clone_or_copy, note_object};

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| CacheError::Layout {
        path: path.to_owned(),
        what: "a cache file needs a parent folder".to_owned(),
    })?;
    std::fs::create_dir_all(dir).at("create", dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp).at("create", &tmp)?;
        f.write_all(bytes).at("write", &tmp)?;
        f.sync_all().at("write", &tmp)?;
    }
    std::fs::rename(&tmp, path).at("replace", path)?;
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
    /// Where the output was materialized and the identity of its files then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub materialized: Option<Materialized>,
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
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).at("create cache directory", &dir)?;
        }
        let root = root.canonicalize().at("read", root)?;
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
        let lock_path = cache.root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at("open", &lock_path)?;
        if lock.try_lock().is_err() {
            waiting();
            lock.lock().at("lock", &lock_path)?;
        }
        cache._lock = Some(lock);
        let tmp = cache.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).at("read", &tmp)? {
            let path = entry.at("read", &tmp)?.path();
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
        debug_assert!(is_hash(hash), "object names are checked hashes");
        let split = hash.len().min(2);
        self.root
            .join("objects")
            .join(&hash[..split])
            .join(&hash[split..])
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
        let shard = object.parent().expect("objects live in a shard folder");
        std::fs::create_dir_all(shard).at("create", shard)?;
        File::open(file)
            .and_then(|f| f.sync_all())
            .at("write", file)?;
        let mode = if exec { 0o555 } else { 0o444 };
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))
            .at("make read-only", file)?;
        std::fs::rename(file, &object).at("store", &object)?;
        let meta = std::fs::metadata(&object).at("read", &object)?;
        note_object(&meta);
        self.memo.remember(&meta, hash);
        Ok(())
    }

    /// Records the action `key` → `manifest`, whose objects must all be
    /// present (the remote cache calls this after downloading them).
    pub fn record_action(&self, key: &str, manifest: &Manifest) -> Result<()> {
        manifest.validate().map_err(|what| CacheError::Action {
            key: key.to_owned(),
            what,
        })?;
        if !manifest.files.iter().all(|e| self.has_object(e)) {
            return Err(CacheError::Action {
                key: key.to_owned(),
                what: "some of its objects are missing".to_owned(),
            });
        }
        write_atomic(
            &self.action_path(key),
            &serde_json::to_vec_pretty(manifest).expect("manifests serialize"),
        )
    }

    fn action_path(&self, key: &str) -> PathBuf {
        debug_assert!(is_hash(key), "action keys are checked hashes");
        self.root
            .join("actions")
            .join(&key[..key.len().min(2)])
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
        let dir = self.temp_path(label);
        std::fs::create_dir_all(&dir).at("create", &dir)?;
        Ok(dir)
    }

    /// A unique path under `tmp/`, not created: for work that may need no
    /// files at all (a no-op build writes nothing).
    pub fn temp_path(&self, label: &str) -> PathBuf {
        self.root.join("tmp").join(format!(
            "{}-{}-{}",
            sanitize(label),
            std::process::id(),
            unique()
        ))
    }

    /// The output manifest of step `key`, if the action table has it and every
    /// object it names is present with the right size.
    /// An action entry that is unreadable or fails [`Manifest::parse`] is a
    /// miss (the step is rebuilt and the entry replaced).
    pub fn lookup(&self, key: &str) -> Option<Manifest> {
        if !is_hash(key) {
            return None;
        }
        let bytes = std::fs::read(self.action_path(key)).ok()?;
        let manifest = Manifest::parse(&bytes).ok()?;
        let complete = manifest.files.iter().all(|e| self.has_object(e));
        complete.then_some(manifest)
    }

    /// Stores every file of the finished output `dir` (see
    /// [`super::output`]) and records the action `key` → manifest. The
    /// action is written last. A file the step wrote and nothing else links
    /// is moved into the object store; any other (reached through a symlink,
    /// or hardlinked from elsewhere) is only read: the store gets its own copy.
    pub fn ingest(&self, key: &str, dir: &Path) -> Result<Manifest> {
        let mut entries = Vec::new();
        for file in output_files(dir)? {
            let meta = std::fs::metadata(&file.path).at("read", &file.path)?;
            let exec = meta.permissions().mode() & 0o111 != 0;
            if file.linked || meta.nlink() > 1 {
                entries.push(self.store_copy(&file, exec)?);
                continue;
            }
            let (hash, meta) = self.memo.hash_file(&file.path)?;
            let entry = Entry {
                path: file.rel,
                size: meta.size(),
                hash,
                exec,
            };
            if self.has_object(&entry) {
                std::fs::remove_file(&file.path).ok();
            } else {
                self.adopt_object(&entry.hash, &file.path, exec)?;
            }
            entries.push(entry);
        }
        let manifest = Manifest::new(entries);
        self.record_action(key, &manifest)?;
        Ok(manifest)
    }

    /// The entry of an output file that is not the step's own: when the store
    /// lacks its bytes, they are copied (reflinked where possible) and the
    /// copy, hashed again, is what is stored. The original is never moved,
    /// chmodded or written.
    fn store_copy(&self, file: &OutputFile, exec: bool) -> Result<Entry> {
        let (hash, meta) = self.memo.hash_file(&file.path)?;
        let mut entry = Entry {
            path: file.rel.clone(),
            size: meta.size(),
            hash,
            exec,
        };
        if self.has_object(&entry) {
            return Ok(entry);
        }
        let copy = self.temp_path("copy");
        clone_or_copy(&file.path, &copy)?;
        let size = std::fs::metadata(&copy).at("read", &copy)?.size();
        // The original may have changed since it was hashed: the copy is
        // what is stored, so its hash is the one recorded.
        entry.hash = super::memo::hash_file_uncached(&copy, size)?;
        entry.size = size;
        if self.has_object(&entry) {
            std::fs::remove_file(&copy).ok();
        } else {
            self.adopt_object(&entry.hash, &copy, exec)?;
        }
        Ok(entry)
    }

    /// The record of what `step` of `recipe` was last built from.
    /// A record that is unreadable or names something that is not a hash is
    /// treated as absent.
    pub fn record(&self, recipe: &str, step: &str) -> Option<BuildRecord> {
        let bytes = std::fs::read(self.record_path(recipe, step)).ok()?;
        serde_json::from_slice::<BuildRecord>(&bytes)
            .ok()
            .filter(|r| is_hash(&r.key) && is_hash(&r.output))
    }

    /// Stores the record of the latest build of `step`.
    pub fn write_record(&self, recipe: &str, step: &str, record: &BuildRecord) -> Result<()> {
        write_atomic(
            &self.record_path(recipe, step),
            &serde_json::to_vec_pretty(record).expect("records serialize"),
        )
    }

    /// Re-hashes every object and checks every action's manifest; returns one
    /// line per problem (empty when the cache is sound). Nothing under the
    /// cache is trusted: a stray file, a symlink, an unreadable or malformed
    /// action is a problem, never followed. With `repair`, what is wrong is
    /// removed (the next build rebuilds or restores it) and each line says so.
    pub fn verify(&self, repair: bool) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let fix = |path: &Path, line: String, problems: &mut Vec<String>| -> Result<()> {
            if repair {
                std::fs::remove_file(path).at("remove", path)?;
                problems.push(format!("{line} (removed)"));
            } else {
                problems.push(line);
            }
            Ok(())
        };
        for object in self.objects()? {
            let Some(hash) = &object.hash else {
                let line = format!("stray file {} is not an object", object.path.display());
                fix(&object.path, line, &mut problems)?;
                continue;
            };
            let size = std::fs::metadata(&object.path)
                .at("read", &object.path)?
                .size();
            let actual = super::memo::hash_file_uncached(&object.path, size)?;
            if &actual != hash {
                let line = format!("object {hash} is corrupt (its bytes hash to {actual})");
                fix(&object.path, line, &mut problems)?;
            }
        }
        for action in self.actions()? {
            let manifest = match action.manifest {
                Ok(m) => m,
                Err(why) => {
                    let line = format!("action file {} is corrupt: {why}", action.path.display());
                    fix(&action.path, line, &mut problems)?;
                    continue;
                }
            };
            let key = action.key.unwrap_or_default();
            let mut bad = Vec::new();
            for e in &manifest.files {
                match std::fs::metadata(self.object_path(&e.hash)) {
                    Ok(m) if m.size() == e.size => {}
                    Ok(m) => bad.push(format!(
                        "action {key}: object {} has {} bytes, expected {}",
                        e.hash,
                        m.size(),
                        e.size
                    )),
                    Err(_) => bad.push(format!("action {key}: object {} is missing", e.hash)),
                }
            }
            if let Some(first) = bad.first().cloned() {
                problems.extend(bad.into_iter().skip(1));
                fix(&action.path, first, &mut problems)?;
            }
        }
        Ok(problems)
    }

    /// Every file under `objects/`, with its hash when it is a well-formed
    /// object (a regular file at `ab/cdef…` spelling a hash).
    fn objects(&self) -> Result<Vec<CacheFile>> {
        let dir = self.root.join("objects");
        Ok(cache_files(&dir)?
            .into_iter()
            .map(|(rel, regular)| {
                let hash = rel.replace('/', "");
                let well_formed = regular && rel.len() == 65 && rel.as_bytes()[2] == b'/';
                CacheFile {
                    path: dir.join(&rel),
                    hash: (well_formed && is_hash(&hash)).then_some(hash),
                }
            })
            .collect())
    }

    /// Every file under `actions/`, each with its key and manifest or why it
    /// is not a valid action entry.
    fn actions(&self) -> Result<Vec<ActionFile>> {
        let dir = self.root.join("actions");
        let mut out = Vec::new();
        for (rel, regular) in cache_files(&dir)? {
            let path = dir.join(&rel);
            let key = rel
                .split_once('/')
                .and_then(|(prefix, file)| Some((prefix, file.strip_suffix(".json")?)))
                .filter(|(prefix, key)| {
                    is_hash(key) && key.starts_with(prefix) && prefix.len() == 2
                })
                .map(|(_, key)| key.to_owned());
            let manifest = match (&key, regular) {
                (Some(_), true) => match std::fs::read(&path) {
                    Ok(bytes) => Manifest::parse(&bytes),
                    Err(e) => Err(format!("unreadable: {e}")),
                },
                _ => Err("not an action entry (actions/ab/<key>.json)".to_owned()),
            };
            out.push(ActionFile {
                path,
                key,
                manifest,
            });
        }
        Ok(out)
    }

    /// Removes actions that no build record references, objects that no kept
    /// action references, interrupted remote downloads, and anything under
    /// `actions/` or `objects/` that is not a valid entry. Only files inside
    /// the cache are removed; symlinks there are removed, never followed.
    /// Returns (actions, objects, bytes) that were (or, with `dry_run`,
    /// would be) removed.
    pub fn gc(&self, dry_run: bool) -> Result<(usize, usize, u64)> {
        let mut live_keys = std::collections::HashSet::new();
        let records = self.root.join("records");
        for (rel, regular) in cache_files(&records)? {
            let Ok(bytes) = std::fs::read(records.join(&rel)) else {
                continue;
            };
            if !regular {
                continue;
            }
            if let Ok(r) = serde_json::from_slice::<BuildRecord>(&bytes) {
                live_keys.insert(r.key);
            }
        }
        let remove = |path: &Path| -> Result<()> {
            if !dry_run {
                std::fs::remove_file(path).at("remove", path)?;
            }
            Ok(())
        };
        let mut live_objects = std::collections::HashSet::new();
        let mut dead_actions = 0;
        for action in self.actions()? {
            match (action.key, action.manifest) {
                (Some(key), Ok(manifest)) if live_keys.contains(&key) => {
                    live_objects.extend(manifest.files.into_iter().map(|e| e.hash));
                }
                _ => {
                    dead_actions += 1;
                    remove(&action.path)?;
                }
            }
        }
        let (mut dead_objects, mut bytes) = (0, 0);
        let partial = self.root.join("partial");
        let partial_downloads = cache_files(&partial)?
            .into_iter()
            .map(|(rel, _)| CacheFile {
                path: partial.join(rel),
                hash: None,
            });
        for object in self.objects()?.into_iter().chain(partial_downloads) {
            if object
                .hash
                .as_ref()
                .is_some_and(|h| live_objects.contains(h))
            {
                continue;
            }
            dead_objects += 1;
            bytes += std::fs::symlink_metadata(&object.path)
                .at("read", &object.path)?
                .size();
            remove(&object.path)?;
        }
        Ok((dead_actions, dead_objects, bytes))
    }
}

/// A file under `objects/` or `partial/`; `hash` is None for anything that is
/// not a well-formed object.
struct CacheFile {
    path: PathBuf,
    hash: Option<String>,
}

/// A file under `actions/`.
struct ActionFile {
    path: PathBuf,
    key: Option<String>,
    manifest: Result<Manifest, String>,
}

/// Every non-directory under the cache directory `dir` as (relative path,
/// whether it is a regular file), without following symlinks: a link in the
/// cache is listed as itself, never entered.
fn cache_files(dir: &Path) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).at("read", &d)?,
        };
        for entry in entries {
            let entry = entry.at("read", &d)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ty = entry.file_type().at("read", &entry.path())?;
            if ty.is_dir() {
                stack.push((entry.path(), rel_path));
            } else {
                out.push((rel_path, ty.is_file()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Makes `path` and, for a real directory, everything in it writable by the
/// owner, so that debris can be removed. Symlinks are neither followed nor
/// changed.
fn make_writable(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        return;
    }
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

/// A name safe to use as one path component: characters outside a small set
/// become `_`, and a name the name gate refuses (`.`, `..`, empty) gets a `_`
/// in front.
fn sanitize(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | ',') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match crate::fs::names::component_problem(&safe) {
        None => safe,
        Some(_) => format!("_{safe}"),
    }
}
