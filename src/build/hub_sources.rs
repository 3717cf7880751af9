//! The Hub sources of one build, in the order that keeps mistakes cheap:
//!
//! 1. [`HubFetch::resolve`]: pin each source (from `yibuild.lock`, or by asking
//!    the Hub once, or offline from the Hub cache) and fetch its small files
//!    (configs, tokenizers, the safetensors index);
//! 2. [`HubFetch::preflight_views`]: folders where every source looks complete
//!    to the pre-flight checks: real small files, and shards that hold their
//!    real safetensors header followed by a hole (sparse, no disk used), so
//!    shapes, layer counts and vocabularies are validated from a few kilobytes;
//! 3. [`HubFetch::fetch_weights`]: only then the weights.
//!
//! A pinned source's digest is derived from its lock entry, never from its bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::fs::size::human_bytes;
use crate::hub::api::HubClient;
use crate::hub::download::{self, RemoteFile, Transfer};
use crate::hub::layout::RepoCache;
use crate::hub::lock::{LockEntry, LockFile, LockedFile, LOCK_VERSION};
use crate::hub::select;
use crate::hub::HubConfig;
use crate::recipe::{Recipe, SourceSpec};

/// A pinned Hub source and where its files live in the Hub cache.
#[derive(Debug, Clone)]
pub struct Pinned {
    /// The lock entry.
    pub entry: LockEntry,
    /// The repository's folder in the Hub cache.
    pub cache: RepoCache,
}

impl Pinned {
    /// The snapshot folder of the pinned commit.
    pub fn snapshot(&self) -> PathBuf {
        self.cache.snapshot(&self.entry.commit)
    }

    /// Locked files not yet in the Hub cache.
    pub fn missing(&self) -> Vec<(&str, &LockedFile)> {
        self.entry
            .files
            .iter()
            .filter(|(p, f)| {
                self.cache
                    .cached_file(&self.entry.commit, p, f.size)
                    .is_none()
            })
            .map(|(p, f)| (p.as_str(), f))
            .collect()
    }

    /// Bytes still to download.
    pub fn missing_bytes(&self) -> u64 {
        self.missing().iter().map(|(_, f)| f.size).sum()
    }

    fn remote<'a>(&'a self, path: &'a str, file: &'a LockedFile) -> RemoteFile<'a> {
        RemoteFile {
            repo: &self.entry.repo,
            commit: &self.entry.commit,
            path,
            file,
        }
    }
}

/// What `plan` can say about a Hub source without the network.
#[derive(Debug, Clone)]
pub enum HubSourceState {
    /// Pinned (by the lock or the Hub cache); `missing_bytes` are still to fetch.
    Pinned(Pinned),
    /// Neither in the lock nor in the Hub cache: sizes are unknown until resolved.
    Unresolved,
}

/// Pins a Hub source without the network: its lock entry, or what the Hub
/// cache holds for its revision.
pub fn pin_offline(recipe: &Recipe, name: &str, config: &HubConfig) -> Result<HubSourceState> {
    let Some(SourceSpec::Hub { repo, revision }) = recipe.source(name).map(|s| &s.spec) else {
        bail!("`{name}` is not a Hub source");
    };
    let cache = RepoCache::new(&config.cache_dir, repo);
    let lock = LockFile::load(&LockFile::path(&recipe.dir))?;
    let entry = match lock.sources.get(name) {
        Some(e) if e.pins(repo, revision) => Some(e.clone()),
        _ => entry_from_cache(&cache, repo, revision),
    };
    Ok(match entry {
        Some(entry) => HubSourceState::Pinned(Pinned { entry, cache }),
        None => HubSourceState::Unresolved,
    })
}

/// A lock entry for `repo@revision` built from the Hub cache alone: the
/// commit from `refs/`, each needed file's etag from its snapshot symlink.
fn entry_from_cache(cache: &RepoCache, repo: &str, revision: &str) -> Option<LockEntry> {
    let commit = cache.read_ref(revision)?;
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(cache.snapshot(&commit)).ok()?.flatten() {
        let path = e.file_name().to_string_lossy().into_owned();
        if !select::needed(&path) {
            continue;
        }
        let target = std::fs::read_link(e.path()).ok()?;
        let etag = target.file_name()?.to_string_lossy().into_owned();
        let size = std::fs::metadata(e.path()).ok()?.len();
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
        let file = match etag.len() {
            64 if hex => LockedFile {
                size,
                sha256: Some(etag),
                blob_id: None,
            },
            40 if hex => LockedFile {
                size,
                sha256: None,
                blob_id: Some(etag),
            },
            _ => return None,
        };
        files.insert(path, file);
    }
    let mut entry = LockEntry {
        repo: repo.to_owned(),
        revision: revision.to_owned(),
        commit,
        files,
    };
    let snapshot = cache.snapshot(&entry.commit);
    narrow_to_index(&mut entry, &snapshot).ok()?;
    (!entry.files.is_empty()).then_some(entry)
}

/// Drops safetensors files the index does not name (a repository may also
/// hold a consolidated copy of the same weights), once the index is local.
fn narrow_to_index(entry: &mut LockEntry, snapshot: &Path) -> Result<()> {
    const INDEX: &str = "model.safetensors.index.json";
    if !entry.files.contains_key(INDEX) {
        return Ok(());
    }
    let index = crate::fs::files::read_json(&snapshot.join(INDEX))?;
    let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
        bail!(
            "{}: missing `weight_map` object",
            snapshot.join(INDEX).display()
        );
    };
    let listed: std::collections::BTreeSet<&str> =
        map.values().filter_map(|v| v.as_str()).collect();
    for shard in &listed {
        if !entry.files.contains_key(*shard) {
            bail!(
                "hf://{}@{}: {INDEX} names shard `{shard}`, which the repository does not have",
                entry.repo,
                entry.commit
            );
        }
    }
    entry
        .files
        .retain(|p, _| !p.ends_with(".safetensors") || listed.contains(p.as_str()));
    Ok(())
}

/// The Hub sources of a build, pinned.
pub struct HubFetch<'a> {
    config: &'a HubConfig,
    client: Option<HubClient>,
    /// Pinned sources by name.
    pub sources: BTreeMap<String, Pinned>,
}

impl<'a> HubFetch<'a> {
    /// Pins the Hub sources among `names` and downloads their small files.
    /// Writes `yibuild.lock` when an entry is new or moved.
    pub fn resolve(
        recipe: &Recipe,
        names: &[String],
        config: &'a HubConfig,
        log: &dyn Fn(&str, &str),
    ) -> Result<HubFetch<'a>> {
        let lock_path = LockFile::path(&recipe.dir);
        let mut lock = LockFile::load(&lock_path)?;
        let client = (!config.offline).then(|| HubClient::new(config));
        let mut fetch = HubFetch {
            config,
            client,
            sources: BTreeMap::new(),
        };
        let mut changed = false;
        for name in names {
            let Some(SourceSpec::Hub { repo, revision }) = recipe.source(name).map(|s| &s.spec)
            else {
                continue;
            };
            let cache = RepoCache::new(&config.cache_dir, repo);
            let locked = lock
                .sources
                .get(name)
                .filter(|e| e.pins(repo, revision) && !config.update_lock);
            let pinned = match (locked, &fetch.client) {
                (Some(entry), _) => Pinned {
                    entry: entry.clone(),
                    cache,
                },
                (None, Some(client)) => {
                    log(name, &format!("resolving hf://{repo}@{revision}"));
                    let remote = client.revision(repo, revision)?;
                    cache.write_ref(revision, &remote.commit)?;
                    let mut pinned = Pinned {
                        entry: LockEntry {
                            repo: repo.clone(),
                            revision: revision.clone(),
                            commit: remote.commit,
                            files: remote
                                .files
                                .into_iter()
                                .filter(|(p, _)| select::needed(p))
                                .collect(),
                        },
                        cache,
                    };
                    if !pinned.entry.files.contains_key("config.json") {
                        bail!(
                            "hf://{repo}@{revision} has no config.json; is it a model repository?"
                        );
                    }
                    fetch.fetch_small_of(name, &pinned, log)?;
                    let snapshot = pinned.snapshot();
                    narrow_to_index(&mut pinned.entry, &snapshot)?;
                    changed = true;
                    pinned
                }
                (None, None) if config.update_lock => {
                    bail!("--update-lock needs the network, but the Hub is offline (--offline or HF_HUB_OFFLINE)")
                }
                (None, None) => match entry_from_cache(&cache, repo, revision) {
                    Some(entry) => {
                        changed = true;
                        Pinned { entry, cache }
                    }
                    None => bail!(
                        "source `{name}`: hf://{repo}@{revision} is not pinned in {} and not in the \
                         Hub cache {}, and the Hub is offline (--offline or HF_HUB_OFFLINE=1); run \
                         `yibuild fetch` with network access first",
                        lock_path.display(),
                        config.cache_dir.display()
                    ),
                },
            };
            lock.sources.insert(name.clone(), pinned.entry.clone());
            fetch.sources.insert(name.clone(), pinned);
        }
        let before = lock.sources.len();
        lock.sources
            .retain(|n, _| recipe.source(n).is_some_and(|s| s.hub_repo().is_some()));
        if changed || lock.sources.len() != before {
            lock.version = LOCK_VERSION;
            lock.save(&lock_path)?;
        }
        fetch.fetch_small(log)?;
        Ok(fetch)
    }

    /// Fails when offline and something is missing from the Hub cache,
    /// naming every missing file.
    fn require_online(&self, small_only: bool) -> Result<()> {
        if self.client.is_some() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for (name, p) in &self.sources {
            for (path, f) in p.missing() {
                if !small_only || select::is_small(path) {
                    lines.push(format!(
                        "  {name}: hf://{}@{}/{path} ({})",
                        p.entry.repo,
                        &p.entry.commit[..12],
                        human_bytes(f.size)
                    ));
                }
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        bail!(
            "the Hub is offline (--offline or HF_HUB_OFFLINE=1) and {} file(s) are not in the Hub cache {}:\n{}",
            lines.len(),
            self.config.cache_dir.display(),
            lines.join("\n")
        )
    }

    fn transfer(&self) -> Transfer {
        Transfer {
            connections: self.config.connections,
            chunk_size: self.config.chunk_size,
        }
    }

    fn fetch_small_of(&self, name: &str, pinned: &Pinned, log: &dyn Fn(&str, &str)) -> Result<()> {
        let client = self.client.as_ref().expect("online");
        for (path, file) in pinned.missing() {
            if select::is_small(path) {
                log(name, &format!("fetching {path}"));
                download::fetch_file(
                    client,
                    &pinned.cache,
                    pinned.remote(path, file),
                    self.transfer(),
                    &|_| {},
                    &|why| log(name, why),
                )?;
            }
        }
        Ok(())
    }

    /// Downloads the small files (configs, tokenizers, index) of every source.
    pub fn fetch_small(&self, log: &dyn Fn(&str, &str)) -> Result<()> {
        self.require_online(true)?;
        for (name, pinned) in &self.sources {
            if self.client.is_some() {
                self.fetch_small_of(name, pinned, log)?;
            }
        }
        Ok(())
    }

    /// A folder per source that pre-flight checks can read as if complete:
    /// the snapshot when nothing is missing, otherwise a folder under `tmp`
    /// with links to the small files and, for each missing shard, a sparse
    /// file of the right size that starts with the shard's real header.
    pub fn preflight_views(&self, tmp: &Path) -> Result<BTreeMap<String, PathBuf>> {
        self.require_online(false)?;
        let mut views = BTreeMap::new();
        for (name, pinned) in &self.sources {
            let missing = pinned.missing();
            if missing.is_empty() {
                views.insert(name.clone(), pinned.snapshot());
                continue;
            }
            let client = self.client.as_ref().expect("online when files are missing");
            let view = tmp.join(name);
            std::fs::create_dir_all(&view)?;
            for (path, file) in &pinned.entry.files {
                let dest = view.join(path);
                if let Some(cached) =
                    pinned
                        .cache
                        .cached_file(&pinned.entry.commit, path, file.size)
                {
                    std::os::unix::fs::symlink(cached.canonicalize()?, &dest)?;
                    continue;
                }
                let header = download::fetch_header(client, pinned.remote(path, file))?;
                let f = std::fs::File::create(&dest)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
                std::io::Write::write_all(&mut &f, &header)?;
                f.set_len(file.size)?;
            }
            views.insert(name.clone(), view);
        }
        Ok(views)
    }

    /// Bytes still to download over all sources.
    pub fn missing_bytes(&self) -> u64 {
        self.sources.values().map(Pinned::missing_bytes).sum()
    }

    /// Downloads every missing file (the weights), with a progress bar.
    pub fn fetch_weights(&self, log: &dyn Fn(&str, &str)) -> Result<u64> {
        self.require_online(false)?;
        let Some(client) = &self.client else {
            return Ok(0);
        };
        let total = self.missing_bytes();
        if total == 0 {
            return Ok(0);
        }
        let bar = if self.config.progress {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>20} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ({eta})",
            )
            .expect("valid template"),
        );
        for (name, pinned) in &self.sources {
            for (path, file) in pinned.missing() {
                let size = human_bytes(file.size);
                log(name, &format!("downloading {path} ({size})"));
                bar.set_message(name.clone());
                let start = bar.position();
                let progress = |n: u64| bar.inc(n);
                download::fetch_file(
                    client,
                    &pinned.cache,
                    pinned.remote(path, file),
                    self.transfer(),
                    &progress,
                    &|why| log(name, why),
                )?;
                // Retried or resumed bytes may be reported twice; the file counts once.
                bar.set_position(start + file.size);
            }
        }
        bar.finish_and_clear();
        Ok(total)
    }
}
