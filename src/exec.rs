//! The executor: runs a recipe's plan with the cache, in parallel up to
//! `--jobs`, within `--mem-budget`.
//!
//! For each step, in dependency order: compute its key from its parameters and
//! the content digests of its inputs; if the action table has the key, take the
//! output from the cache; otherwise run the step into a fresh directory, move
//! the output into the cache, and record the action. Outputs are materialized
//! into `build/<recipe>/<step>/` by hardlink; a cached step whose output is
//! still as materialized is not touched (a no-op rebuild writes nothing), one
//! whose output was edited is repaired (see [`crate::cache::materialize`]).
//! A failed step stops its dependents; unrelated branches finish.
//!
//! With a remote cache, a local miss is looked up remotely and, on a hit,
//! downloaded instead of built; what is built is uploaded in the background
//! while the build goes on, and the build waits for the uploads at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cache::remote::{RemoteCache, RemoteError, RemoteSettings};
use crate::cache::{BuildRecord, Cache, KeyInputs, Manifest, OutputState, CACHE_FORMAT};
use crate::freshness::{stale_reasons, StaleReason};
use crate::graph::BuildGraph;
use crate::hub::download::human_bytes;
use crate::hub::{HubConfig, HubFetch, HubOptions};
use crate::recipe::{suggest, Recipe, StepDef};
use crate::report::{Reporter, StepStatus, Summary};
use crate::steps::{Artifact, Device, Reads, StepContext};

/// How to run a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The cache directory.
    pub cache_dir: PathBuf,
    /// Where outputs are materialized (`build/` by default).
    pub build_dir: PathBuf,
    /// Steps that may run at once.
    pub jobs: usize,
    /// Threads each step may use.
    pub threads: usize,
    /// Memory the running steps together should stay under, in bytes.
    pub mem_budget: u64,
    /// `--device`.
    pub device: Device,
    /// Steps to build (with their dependencies); empty means the defaults.
    pub targets: Vec<String>,
    /// `--offline`, `--update-lock` and progress bars for Hub sources.
    pub hub: HubOptions,
    /// The shared remote cache, if one is configured.
    pub remote: Option<RemoteSettings>,
    /// Where steps that are not cache hits run.
    pub executor: Executor,
}

/// Where steps run (`--executor`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Executor {
    /// In this process.
    #[default]
    Local,
    /// As Slurm jobs (see [`crate::slurm`]).
    Slurm(crate::slurm::SlurmConfig),
}

/// An error in what the user asked for (unknown target, missing source, a
/// pre-flight failure): reported before anything runs, exit code 2.
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// The targets to build: those named, or the recipe's defaults, or all leaves.
pub fn select_targets(
    recipe: &Recipe,
    graph: &BuildGraph,
    named: &[String],
) -> Result<Vec<String>> {
    if named.is_empty() {
        return Ok(if recipe.default.is_empty() {
            graph.leaves(recipe)
        } else {
            recipe.default.clone()
        });
    }
    let mut selected = Vec::new();
    for t in named {
        if let Some(steps) = recipe.resolve_target(t) {
            selected.extend(steps);
        } else {
            let names = recipe.steps.iter().map(|s| s.name.as_str());
            let hint = suggest(
                crate::recipe::diag::RecipeError::file(&recipe.file, ""),
                t,
                names,
            )
            .help
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
            return Err(InputError(format!(
                "recipe {} has no step `{t}`{hint}",
                recipe.file.display()
            ))
            .into());
        }
    }
    Ok(selected)
}

/// The paths of a step's source inputs (step inputs are not built yet).
fn source_inputs(step: &StepDef, sources: &BTreeMap<String, PathBuf>) -> BTreeMap<String, PathBuf> {
    step.step
        .inputs()
        .into_iter()
        .filter_map(|i| sources.get(&i.name).map(|p| (i.name, p.clone())))
        .collect()
}

/// Makes the sources among `plan` available and runs every planned step's
/// pre-flight check, in the order that keeps mistakes cheap: local sources are
/// located, Hub sources pinned (`yibuild.lock`) and their small files and
/// safetensors headers fetched, the pre-flight checks run, and only then are
/// Hub weights downloaded. Local sources are hashed (memoized); a Hub source's
/// digest comes from its lock entry. Errors about the inputs are [`InputError`]s.
pub fn prepare_sources(
    recipe: &Recipe,
    plan: &[String],
    cache: &Cache,
    hub: &HubConfig,
    log: &dyn Fn(&str, &str),
) -> Result<BTreeMap<String, Artifact>> {
    let mut paths = BTreeMap::new();
    for name in plan {
        if let Some(src) = recipe.source(name).filter(|s| s.hub_repo().is_none()) {
            let path = src
                .locate()
                .map_err(|e| InputError(format!("source `{name}`: {e}")))?;
            paths.insert(name.clone(), path);
        }
    }
    let fetch =
        HubFetch::resolve(recipe, plan, hub, log).map_err(|e| InputError(format!("{e:#}")))?;
    // Created only if a Hub source needs a view: a no-op build writes nothing.
    let tmp = cache.temp_path("preflight");
    let views = fetch
        .preflight_views(&tmp)
        .map_err(|e| InputError(format!("{e:#}")));
    let checked = views.and_then(|views| {
        let mut all = paths.clone();
        all.extend(views);
        for name in plan {
            if let Some(step) = recipe.step(name) {
                step.step
                    .preflight(&source_inputs(step, &all))
                    .map_err(|e| InputError(format!("step `{name}`: {e:#}")))?;
            }
        }
        Ok(())
    });
    std::fs::remove_dir_all(&tmp).ok();
    checked?;
    fetch.fetch_weights(log)?;
    let mut artifacts = BTreeMap::new();
    for (name, path) in paths {
        let manifest = cache
            .memo()
            .manifest(&path)
            .with_context(|| format!("cannot hash source `{name}`"))?;
        artifacts.insert(name, Artifact::from_manifest(path, &manifest));
    }
    for (name, pinned) in &fetch.sources {
        artifacts.insert(
            name.clone(),
            Artifact::from_lock(pinned.snapshot(), &pinned.entry),
        );
    }
    cache.memo().save()?;
    Ok(artifacts)
}

/// Pinned Hub sources whose every consumer in `plan` is already cached: they
/// are not downloaded (a CI runner with the yibuild cache but an empty Hub
/// cache fetches nothing). Their artifacts carry the lock digest and the
/// snapshot path, which no step will read. Also returns the steps found
/// cached (locally or remotely), which need no pre-flight check. Both are
/// empty for recipes without Hub sources.
fn hub_sources_not_needed(
    recipe: &Recipe,
    graph: &BuildGraph,
    plan: &[String],
    cache: &Cache,
    remote: Option<&RemoteCache>,
    hub: &HubConfig,
) -> (BTreeMap<String, Artifact>, BTreeSet<String>) {
    let mut out = BTreeMap::new();
    let has_hub = plan
        .iter()
        .any(|n| recipe.source(n).is_some_and(|s| s.hub_repo().is_some()));
    if hub.update_lock || !has_hub {
        return (out, BTreeSet::new());
    }
    let fresh: BTreeSet<String> = crate::freshness::analyze(recipe, plan, cache, remote)
        .into_iter()
        .filter(|(_, s)| s.is_available())
        .map(|(n, _)| n)
        .collect();
    for name in plan {
        if recipe.source(name).and_then(|s| s.hub_repo()).is_none() {
            continue;
        }
        let consumers_fresh = plan
            .iter()
            .filter(|s| recipe.step(s).is_some() && graph.inputs(s).contains(name))
            .all(|s| fresh.contains(s));
        if !consumers_fresh {
            continue;
        }
        if let Ok(crate::hub::HubSourceState::Pinned(p)) =
            crate::hub::pin_offline(recipe, name, hub)
        {
            out.insert(name.clone(), Artifact::from_lock(p.snapshot(), &p.entry));
        }
    }
    (out, fresh)
}

/// The key components of `step` given its inputs' artifacts.
pub fn key_inputs(step: &StepDef, artifacts: &BTreeMap<String, Artifact>) -> Option<KeyInputs> {
    let mut inputs = BTreeMap::new();
    for (name, part) in reads_by_input(step) {
        let digest = artifacts.get(&name)?.digest_of(part);
        inputs.insert(name, digest);
    }
    Some(KeyInputs {
        format: CACHE_FORMAT,
        kind: step.step.kind().to_owned(),
        version: step.step.version(),
        params: step.step.params(),
        inputs,
    })
}

/// The files of each input that `step` reads, with their content ids: kept in
/// the step's build record so that a later rebuild can name the files that
/// changed.
pub fn files_read(
    step: &StepDef,
    artifacts: &BTreeMap<String, Artifact>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    reads_by_input(step)
        .into_iter()
        .filter_map(|(name, part)| Some((name.clone(), artifacts.get(&name)?.files_read(part))))
        .collect()
}

/// What the step reads of each input it names (an input named twice, e.g. as
/// model and as tokenizer, is read in full).
fn reads_by_input(step: &StepDef) -> BTreeMap<String, Reads> {
    let mut reads: BTreeMap<String, Reads> = BTreeMap::new();
    for i in step.step.inputs() {
        let both = reads.get(&i.name).map_or(i.reads, |r| r.union(i.reads));
        reads.insert(i.name, both);
    }
    reads
}

/// The file that marks `build/<recipe>/` as made by yibuild: `clean`
/// removes only folders that hold it.
pub const BUILD_MARKER: &str = ".yibuild-output";

/// Creates the recipe's build folder with its [`BUILD_MARKER`], unless it
/// already has one (a no-op rebuild writes nothing).
fn mark_build_dir(dir: &Path) -> Result<()> {
    let marker = dir.join(BUILD_MARKER);
    if !marker.is_file() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(
            &marker,
            "Made by yibuild: `yibuild clean` removes this folder; the cache keeps its contents.\n",
        )
        .with_context(|| format!("cannot write {}", marker.display()))?;
    }
    Ok(())
}

/// Where a step's output is materialized.
pub fn output_dir(opts_build_dir: &Path, recipe: &Recipe, step: &str) -> PathBuf {
    opts_build_dir.join(&recipe.name).join(step)
}

/// Builds the selected targets of `recipe`.
pub fn build(recipe: &Recipe, opts: &BuildOptions, reporter: &dyn Reporter) -> Result<Summary> {
    let start = Instant::now();
    let graph = BuildGraph::new(recipe);
    let targets = select_targets(recipe, &graph, &opts.targets)?;
    let plan = graph.plan(recipe, &targets);
    // Every request is checked against Slurm's nodes before anything is
    // downloaded or submitted.
    let slurm_jobs = match &opts.executor {
        Executor::Slurm(config) => {
            let jobs = crate::slurm::requests(recipe, config, opts)?;
            if let Some(why) = &jobs.unchecked {
                reporter.warning(&format!(
                    "Slurm requests are submitted unchecked against the partitions' nodes: {why}"
                ));
            }
            jobs.steps
        }
        Executor::Local => BTreeMap::new(),
    };

    let cache = Cache::open_locked(&opts.cache_dir, &|| reporter.waiting_for_lock())?;
    let remote = Remote::connect(opts.remote.as_ref(), reporter)?;
    let hub = HubConfig::from_env(opts.hub);
    let (skipped, fresh) =
        hub_sources_not_needed(recipe, &graph, &plan, &cache, remote.readable(), &hub);
    let to_prepare: Vec<String> = plan
        .iter()
        .filter(|n| !skipped.contains_key(*n) && !fresh.contains(*n))
        .cloned()
        .collect();
    let log = |name: &str, line: &str| reporter.note(name, line);
    let mut artifacts = prepare_sources(recipe, &to_prepare, &cache, &hub, &log)?;
    let mut unprepared: BTreeSet<String> = skipped.keys().cloned().collect();
    artifacts.extend(skipped);
    crate::names::check_component("recipe name", &recipe.name).map_err(InputError)?;
    let recipe_build_dir = std::path::absolute(&opts.build_dir)?.join(&recipe.name);
    remove_staging_debris(&recipe_build_dir);
    mark_build_dir(&recipe_build_dir)?;

    let mut pending: Vec<&StepDef> = plan.iter().filter_map(|n| recipe.step(n)).collect();
    reporter.planned(pending.len());
    let mut summary = Summary::default();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut running: BTreeMap<String, u64> = BTreeMap::new();
    // Remote lookups, once per key; steps whose remote entry was refused.
    let mut remote_hits: BTreeMap<String, Option<Manifest>> = BTreeMap::new();
    let mut refused: BTreeSet<String> = BTreeSet::new();
    // Steps whose cached output was found damaged, and what was wrong.
    let mut damaged: BTreeMap<String, String> = BTreeMap::new();
    let (tx, rx) = mpsc::channel::<Finished>();

    std::thread::scope(|scope| -> Result<()> {
        let (upload_tx, upload_rx) = mpsc::channel::<(String, String, Manifest)>();
        let uploader = remote.writable().map(|r| {
            let cache = &cache;
            scope.spawn(move || {
                for (name, key, manifest) in upload_rx {
                    r.upload(cache, &name, &key, &manifest);
                }
            })
        });
        loop {
            let mut i = 0;
            while i < pending.len() {
                let step = pending[i];
                let inputs = graph.inputs(&step.name);
                if let Some(bad) = inputs.iter().find(|n| failed.contains(*n)) {
                    pending.remove(i);
                    let why = format!("not built because its input `{bad}` failed");
                    reporter.finished(&step.name, StepStatus::Failed, "", 0.0, Some(&why));
                    failed.insert(step.name.clone());
                    summary.failed.push(step.name.clone());
                    continue;
                }
                let Some(key_inputs) = key_inputs(step, &artifacts) else {
                    i += 1;
                    continue;
                };
                let key = key_inputs.key();
                let dest = recipe_build_dir.join(&step.name);
                let cached = match cache.lookup(&key) {
                    Some(manifest) => {
                        let record = cache.record(&recipe.name, &step.name);
                        let digest = manifest.digest();
                        let previous = record
                            .as_ref()
                            .filter(|r| r.key == key && r.output == digest)
                            .and_then(|r| r.materialized.as_ref());
                        match cache.output_state(&manifest, &dest, previous)? {
                            OutputState::Intact => Some((manifest, false)),
                            OutputState::Stale => Some((manifest, true)),
                            OutputState::Damaged(why) => {
                                reporter.warning(&format!(
                                    "step `{}`: {why}; its damaged cache objects were removed and it is built again",
                                    step.name
                                ));
                                damaged.insert(step.name.clone(), why);
                                // A Hub source skipped because this step was
                                // cached is needed now.
                                let needed: Vec<String> = graph
                                    .inputs(&step.name)
                                    .into_iter()
                                    .filter(|i| unprepared.remove(i))
                                    .collect();
                                artifacts
                                    .extend(prepare_sources(recipe, &needed, &cache, &hub, &log)?);
                                None
                            }
                        }
                    }
                    None => None,
                };
                if let Some((manifest, stale)) = cached {
                    pending.remove(i);
                    // An intact output is left alone: a no-op rebuild writes nothing.
                    if stale {
                        let files = files_read(step, &artifacts);
                        publish(
                            &cache, recipe, step, &dest, &key, key_inputs, files, &manifest,
                        )?;
                    }
                    artifacts.insert(step.name.clone(), Artifact::from_manifest(dest, &manifest));
                    reporter.finished(&step.name, StepStatus::Cached, &key, 0.0, None);
                    summary.cached.push(step.name.clone());
                    continue;
                }
                let remote_hit = match remote.readable() {
                    Some(_) if refused.contains(&step.name) => None,
                    Some(_) => remote_hits
                        .entry(key.clone())
                        .or_insert_with(|| remote.lookup(&key))
                        .clone(),
                    None => None,
                };
                if running.len() >= opts.jobs.max(1) {
                    i += 1;
                    continue;
                }
                if let (Some(manifest), Some(r)) = (remote_hit, remote.readable()) {
                    pending.remove(i);
                    running.insert(step.name.clone(), 0);
                    reporter.started(&step.name);
                    let tx = tx.clone();
                    let cache = &cache;
                    scope.spawn(move || {
                        let started = Instant::now();
                        let result = r
                            .pull(cache, &key, &manifest)
                            .map(|bytes| (manifest, bytes));
                        tx.send(Finished {
                            name: step.name.clone(),
                            key,
                            key_inputs,
                            outcome: Outcome::Restored(result),
                            seconds: started.elapsed().as_secs_f64(),
                        })
                        .ok();
                    });
                    continue;
                }
                let step_inputs: BTreeMap<String, Artifact> = step
                    .step
                    .inputs()
                    .into_iter()
                    .map(|i| (i.name.clone(), artifacts[&i.name].clone()))
                    .collect();
                let mem = {
                    let probe = StepContext {
                        name: &step.name,
                        recipe_name: &recipe.name,
                        inputs: &step_inputs,
                        out_dir: Path::new(""),
                        threads: opts.threads,
                        mem_budget: opts.mem_budget,
                        device: opts.device,
                        log: &|_: &str| {},
                    };
                    step.step.memory_estimate(&probe)
                };
                let used: u64 = running.values().sum();
                // Slurm jobs each get their own budget (`--mem`), and Slurm
                // keeps every node within its memory.
                let per_job = opts.executor != Executor::Local;
                if !running.is_empty() && !per_job && used + mem > opts.mem_budget {
                    i += 1;
                    continue;
                }
                pending.remove(i);
                running.insert(step.name.clone(), mem);
                let reasons = match damaged.get(&step.name) {
                    Some(why) => vec![StaleReason::OutputDamaged { why: why.clone() }],
                    None => stale_reasons(
                        cache.record(&recipe.name, &step.name).as_ref(),
                        &key,
                        &key_inputs,
                        &files_read(step, &artifacts),
                    ),
                };
                reporter.dirty(&step.name, &reasons);
                reporter.started(&step.name);
                let tx = tx.clone();
                let cache = &cache;
                let remote_cache = remote.usable();
                let slurm_job = slurm_jobs.get(&step.name);
                scope.spawn(move || {
                    let started = Instant::now();
                    let result =
                        std::panic::catch_unwind(AssertUnwindSafe(|| match &opts.executor {
                            Executor::Local => {
                                let log = |line: &str| reporter.note(&step.name, line);
                                run_step(cache, recipe, step, &key, &step_inputs, opts, &log)
                            }
                            Executor::Slurm(config) => crate::slurm::run_step(
                                cache,
                                remote_cache,
                                recipe,
                                step,
                                &key,
                                opts,
                                config,
                                slurm_job.expect("every planned step has a request"),
                                reporter,
                            ),
                        }))
                        .unwrap_or_else(|panic| {
                            let msg = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            Err(anyhow::anyhow!("internal error (panic): {msg}"))
                        });
                    tx.send(Finished {
                        name: step.name.clone(),
                        key,
                        key_inputs,
                        outcome: Outcome::Built(result),
                        seconds: started.elapsed().as_secs_f64(),
                    })
                    .ok();
                });
            }
            if running.is_empty() {
                break;
            }
            let done = rx.recv().expect("a running step reports back");
            running.remove(&done.name);
            let step = recipe.step(&done.name).expect("planned step exists");
            let (manifest, status) = match done.outcome {
                Outcome::Built(Ok(manifest)) => {
                    upload_tx
                        .send((step.name.clone(), done.key.clone(), manifest.clone()))
                        .ok();
                    (manifest, StepStatus::Built)
                }
                Outcome::Restored(Ok((manifest, bytes))) => {
                    reporter.note(
                        &step.name,
                        &format!("downloaded {} from the remote cache", human_bytes(bytes)),
                    );
                    (manifest, StepStatus::Restored)
                }
                Outcome::Restored(Err(e)) => {
                    remote.refused(&step.name, &e)?;
                    refused.insert(step.name.clone());
                    let needed: Vec<String> = graph
                        .inputs(&step.name)
                        .into_iter()
                        .filter(|i| unprepared.remove(i))
                        .collect();
                    artifacts.extend(prepare_sources(recipe, &needed, &cache, &hub, &log)?);
                    pending.push(step);
                    continue;
                }
                Outcome::Built(Err(e)) => {
                    reporter.finished(
                        &step.name,
                        StepStatus::Failed,
                        &done.key,
                        done.seconds,
                        Some(&format!("{e:#}")),
                    );
                    failed.insert(step.name.clone());
                    summary.failed.push(step.name.clone());
                    continue;
                }
            };
            let dest = recipe_build_dir.join(&step.name);
            publish(
                &cache,
                recipe,
                step,
                &dest,
                &done.key,
                done.key_inputs,
                files_read(step, &artifacts),
                &manifest,
            )?;
            artifacts.insert(step.name.clone(), Artifact::from_manifest(dest, &manifest));
            reporter.finished(&step.name, status, &done.key, done.seconds, None);
            match status {
                StepStatus::Restored => {
                    summary.cached.push(step.name.clone());
                    summary.remote.push(step.name.clone());
                }
                _ => summary.built.push(step.name.clone()),
            }
        }
        drop(upload_tx);
        if let Some(uploader) = uploader {
            uploader.join().expect("the uploader does not panic");
        }
        Ok(())
    })?;
    remote.finish()?;
    cache.memo().save()?;
    summary.seconds = start.elapsed().as_secs_f64();
    reporter.done(&summary);
    Ok(summary)
}

struct Finished {
    name: String,
    key: String,
    key_inputs: KeyInputs,
    outcome: Outcome,
    seconds: f64,
}

/// How a step that left the queue ended: run here, or downloaded.
enum Outcome {
    Built(Result<Manifest>),
    Restored(Result<(Manifest, u64), RemoteError>),
}

/// The remote cache as one build uses it. The first time it cannot be
/// reached it is turned off for the rest of the build with one warning (or,
/// with `required`, the build fails).
struct Remote<'a> {
    cache: Option<RemoteCache>,
    off: AtomicBool,
    failure: std::sync::Mutex<Option<String>>,
    reporter: &'a dyn Reporter,
}

impl<'a> Remote<'a> {
    /// Connects to the configured remote; one that cannot be used is a
    /// warning and a local build, or an error when it is required.
    fn connect(
        settings: Option<&RemoteSettings>,
        reporter: &'a dyn Reporter,
    ) -> Result<Remote<'a>> {
        let cache = match settings.map(RemoteCache::connect) {
            None => None,
            Some(Ok(remote)) => Some(remote),
            Some(Err(e)) if settings.is_some_and(|s| s.required) => {
                return Err(e.context("the remote cache is required (--remote-cache-required)"))
            }
            Some(Err(e)) => {
                reporter.warning(&format!("{e:#}; building without it"));
                None
            }
        };
        Ok(Remote {
            cache,
            off: AtomicBool::new(false),
            failure: Default::default(),
            reporter,
        })
    }

    fn usable(&self) -> Option<&RemoteCache> {
        self.cache
            .as_ref()
            .filter(|_| !self.off.load(Ordering::Relaxed))
    }

    /// The remote, if hits may be restored from it.
    fn readable(&self) -> Option<&RemoteCache> {
        self.usable().filter(|r| r.settings().mode.reads())
    }

    /// The remote, if built outputs may be uploaded to it.
    fn writable(&self) -> Option<&Self> {
        self.usable()
            .filter(|r| r.settings().mode.writes())
            .map(|_| self)
    }

    /// The remote's manifest for `key`; errors are reported and read as a miss.
    fn lookup(&self, key: &str) -> Option<Manifest> {
        let r = self.readable()?;
        match r.lookup(key) {
            Ok(hit) => hit,
            Err(RemoteError::Corrupt(what)) => {
                self.reporter.warning(&format!(
                    "remote cache {}: {what}; ignored",
                    r.settings().url
                ));
                None
            }
            Err(e) => {
                self.unreachable(&e.to_string());
                None
            }
        }
    }

    /// A restore of `step` failed: report it; the step is built here instead.
    fn refused(&self, step: &str, e: &RemoteError) -> Result<()> {
        match e {
            RemoteError::Corrupt(what) => self.reporter.warning(&format!(
                "step `{step}`: the remote cache's entry is damaged ({what}); it was not used and the step is built here"
            )),
            RemoteError::Unreachable(_) => self.unreachable(&e.to_string()),
            RemoteError::Local(e) => return Err(anyhow::anyhow!("{e:#}")),
        }
        Ok(())
    }

    /// Uploads a built step, reporting the outcome as a note or a warning.
    fn upload(&self, cache: &Cache, step: &str, key: &str, manifest: &Manifest) {
        let Some(r) = self.usable() else {
            return;
        };
        match r.push(cache, key, manifest) {
            Ok(p) => self.reporter.note(
                step,
                &format!("uploaded {} to the remote cache", human_bytes(p.bytes)),
            ),
            Err(e) => self.unreachable(&format!("{e:#}")),
        }
    }

    fn unreachable(&self, why: &str) {
        if self.off.swap(true, Ordering::Relaxed) {
            return;
        }
        let url = self
            .cache
            .as_ref()
            .map_or("", |r| r.settings().url.as_str());
        *self.failure.lock().expect("remote failure lock") = Some(why.to_owned());
        self.reporter.warning(&format!(
            "remote cache {url} failed ({why}); the rest of the build does not use it"
        ));
    }

    /// Fails the build if the remote was required and failed during it.
    fn finish(&self) -> Result<()> {
        let required = self.cache.as_ref().is_some_and(|r| r.settings().required);
        match self.failure.lock().expect("remote failure lock").take() {
            Some(why) if required => Err(anyhow::anyhow!(
                "the remote cache is required (--remote-cache-required) and failed: {why}"
            )),
            _ => Ok(()),
        }
    }
}

/// Runs one step into a fresh temporary directory and stores its output
/// (here, or in a Slurm job's `yibuild exec-step`).
pub(crate) fn run_step(
    cache: &Cache,
    recipe: &Recipe,
    step: &StepDef,
    key: &str,
    inputs: &BTreeMap<String, Artifact>,
    opts: &BuildOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Manifest> {
    let tmp = cache.temp_dir(&step.name)?;
    let out = tmp.join("out");
    std::fs::create_dir_all(&out)?;
    let ctx = StepContext {
        name: &step.name,
        recipe_name: &recipe.name,
        inputs,
        out_dir: &out,
        threads: opts.threads,
        mem_budget: opts.mem_budget,
        device: opts.device,
        log,
    };
    let result = step.step.run(&ctx).and_then(|()| cache.ingest(key, &out));
    std::fs::remove_dir_all(&tmp).ok();
    result
}

/// Materializes a finished step and records what it was built from.
#[allow(clippy::too_many_arguments)]
fn publish(
    cache: &Cache,
    recipe: &Recipe,
    step: &StepDef,
    dest: &Path,
    key: &str,
    inputs: KeyInputs,
    files: BTreeMap<String, BTreeMap<String, String>>,
    manifest: &Manifest,
) -> Result<()> {
    let materialized = cache.materialize(manifest, dest)?;
    cache.write_record(
        &recipe.name,
        &step.name,
        &BuildRecord {
            key: key.to_owned(),
            inputs,
            files,
            output: manifest.digest(),
            materialized: Some(materialized),
        },
    )
}

/// Removes staging folders a killed build left in `build/<recipe>/`.
fn remove_staging_debris(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-")) {
            std::fs::remove_dir_all(e.path())
                .or_else(|_| std::fs::remove_file(e.path()))
                .ok();
        }
    }
}
