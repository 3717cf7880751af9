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
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use crate::build::error::{BuildError, InputError};
use crate::build::events::{Reporter, StepStatus, Summary};
use crate::build::freshness::{stale_reasons, StaleReason};
use crate::build::keys::{files_read, key_inputs};
use crate::build::local::run_step;
use crate::build::options::{BuildOptions, Executor};
use crate::build::outputs::{mark_build_dir, publish, remove_staging_debris};
use crate::build::plan::Plan;
use crate::build::remote::Remote;
use crate::build::sources::{hub_sources_not_needed, prepare_sources};
use crate::cache::remote::RemoteError;
use crate::cache::{Cache, KeyInputs, Manifest, OutputState};
use crate::fs::error::IoContext;
use crate::fs::size::human_bytes;
use crate::hub::HubConfig;
use crate::recipe::{Recipe, StepDef};
use crate::steps::{Artifact, StepContext};

/// Builds the selected targets of `recipe`. A step that fails is reported
/// and recorded in the summary; an error is what stops the whole build.
pub fn build(
    recipe: &Recipe,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<Summary, BuildError> {
    let start = Instant::now();
    let plan = Plan::new(recipe, &opts.targets)?;
    let graph = &plan.graph;
    // Every request is checked against Slurm's nodes before anything is
    // downloaded or submitted.
    let slurm_jobs = match &opts.executor {
        Executor::Slurm(config) => {
            let jobs = crate::build::slurm::requests(&plan, config, opts)?;
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
    let (skipped, fresh) = hub_sources_not_needed(&plan, &cache, remote.readable(), &hub);
    let to_prepare: Vec<String> = plan
        .order
        .iter()
        .filter(|n| !skipped.contains_key(*n) && !fresh.contains(*n))
        .cloned()
        .collect();
    let log = |name: &str, line: &str| reporter.note(name, line);
    let mut artifacts = prepare_sources(recipe, &to_prepare, &cache, &hub, &log)?;
    let mut unprepared: BTreeSet<String> = skipped.keys().cloned().collect();
    artifacts.extend(skipped);
    crate::fs::names::check_component("recipe name", &recipe.name).map_err(InputError::Name)?;
    let recipe_build_dir = std::path::absolute(&opts.build_dir)
        .at("resolve", &opts.build_dir)?
        .join(&recipe.name);
    remove_staging_debris(&recipe_build_dir);
    mark_build_dir(&recipe_build_dir)?;

    let mut pending: Vec<&StepDef> = plan.steps().collect();
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

    std::thread::scope(|scope| -> Result<(), BuildError> {
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
                            Executor::Slurm(config) => crate::build::slurm::run_step(
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
                    remote.refused(&step.name, e)?;
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
    Built(anyhow::Result<Manifest>),
    Restored(Result<(Manifest, u64), RemoteError>),
}
