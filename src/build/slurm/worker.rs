//! `yibuild exec-step`: what a Slurm job runs on a compute node. It builds
//! exactly one planned step, identified by its key, into the shared cache.
//!
//! The worker trusts nothing it is told except the key. It hashes the step's
//! sources itself (through the shared hash memo), finds its upstream steps'
//! outputs in the cache by their keys, recomputes the step's key, and refuses
//! to run when that differs from the key the coordinator asked for (a source
//! that differs between nodes, another yibuild version). It never takes the
//! cache lock, which the coordinator holds; it never writes the memo or build
//! records. Its output enters the cache through [`Cache::ingest`], which
//! writes the action entry last, so a job killed at any point leaves no entry.
//!
//! With a node-local cache (`slurm.node_cache`) the worker is given the
//! remote cache: it downloads upstream outputs it lacks from there and
//! uploads its own output before it exits, which is how the coordinator,
//! on another filesystem, receives it.
//!
//! It talks to the coordinator through its stdout, which srun forwards: one
//! `yibuild-worker: job ID on NODE` line first, then `yibuild-worker: note …`
//! for progress. Errors go to stderr and end up in the job's log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::build::keys::key_inputs;
use crate::build::local;
use crate::build::options::BuildOptions;
use crate::build::plan::Plan;
use crate::cache::remote::RemoteCache;
use crate::cache::Cache;
use crate::fs::size::human_bytes;
use crate::recipe::{Recipe, StepDef};
use crate::steps::Artifact;

const PREFIX: &str = "yibuild-worker: ";

/// A line of the worker's stdout protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerLine {
    /// The job started on a node.
    Job {
        /// The Slurm job id.
        id: u64,
        /// The node's name.
        node: String,
    },
    /// A progress note from the step.
    Note(String),
}

impl WorkerLine {
    /// Reads a protocol line; `None` for any other output.
    pub(crate) fn parse(line: &str) -> Option<WorkerLine> {
        let rest = line.strip_prefix(PREFIX)?;
        if let Some(note) = rest.strip_prefix("note ") {
            return Some(WorkerLine::Note(note.to_owned()));
        }
        let (id, node) = rest.strip_prefix("job ")?.split_once(" on ")?;
        Some(WorkerLine::Job {
            id: id.parse().ok()?,
            node: node.to_owned(),
        })
    }
}

/// The line as the worker writes it on its standard output.
impl std::fmt::Display for WorkerLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerLine::Job { id, node } => write!(f, "{PREFIX}job {id} on {node}"),
            WorkerLine::Note(line) => write!(f, "{PREFIX}note {line}"),
        }
    }
}

/// Builds step `step_name` of `recipe`, whose key must be `key`, into the
/// cache at `opts.cache_dir`. Succeeds without running when the cache
/// already has the key (a job resubmitted after its output was stored).
pub fn exec_step(
    recipe: &Recipe,
    step_name: &str,
    key: &str,
    opts: &BuildOptions,
    emit: &(dyn Fn(&WorkerLine) + Sync),
) -> Result<()> {
    if let Some(id) = std::env::var("SLURM_JOB_ID")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| "?".to_owned());
        emit(&WorkerLine::Job { id, node });
    }
    let step = recipe
        .step(step_name)
        .ok_or_else(|| anyhow!("recipe {} has no step `{step_name}`", recipe.file.display()))?;
    let cache = Cache::open_unlocked(&opts.cache_dir)?;
    let remote = opts.remote.as_ref().map(RemoteCache::connect).transpose()?;
    let staging = cache.temp_dir(&format!("{step_name}-inputs"))?;
    let result =
        resolve_inputs(recipe, step, &cache, remote.as_ref(), &staging).and_then(|inputs| {
            let actual = key_inputs(step, &inputs)
                .context("internal: an input of the step was not resolved")?
                .key();
            if actual != key {
                bail!(
                    "refusing to build `{step_name}`: the coordinator asked for key {key}, but \
                 this node computes {actual} from the inputs it sees (do the nodes see the \
                 same sources and run the same yibuild?)"
                );
            }
            let manifest = match cache.lookup(key) {
                Some(manifest) => {
                    emit(&WorkerLine::Note("already in the cache".to_owned()));
                    manifest
                }
                None => {
                    let log = |line: &str| emit(&WorkerLine::Note(line.to_owned()));
                    local::run_step(&cache, recipe, step, key, &inputs, opts, &log)?
                }
            };
            if let Some(remote) = &remote {
                let pushed = remote.push(&cache, key, &manifest)?;
                emit(&WorkerLine::Note(format!(
                    "uploaded {} to the remote cache",
                    human_bytes(pushed.bytes)
                )));
            }
            Ok(())
        });
    std::fs::remove_dir_all(&staging).ok();
    result
}

/// The artifacts of `step`'s inputs as this node sees them: sources hashed
/// here, upstream steps found in the cache by their keys (downloaded from
/// `remote` first when this node's cache lacks them) and hardlinked into
/// `staging`.
fn resolve_inputs(
    recipe: &Recipe,
    step: &StepDef,
    cache: &Cache,
    remote: Option<&RemoteCache>,
    staging: &Path,
) -> Result<BTreeMap<String, Artifact>> {
    let plan = Plan::for_step(recipe, &step.name).order;
    let direct: BTreeSet<String> = step.step.inputs().into_iter().map(|i| i.name).collect();
    let mut artifacts = BTreeMap::new();
    for name in plan.iter().filter(|n| **n != step.name) {
        let artifact = if let Some(src) = recipe.source(name) {
            if src.hub_repo().is_some() {
                crate::build::freshness::hub_artifact(recipe, name)
                    .map_err(|why| anyhow!("source `{name}` {why}"))?
            } else {
                let path = src.locate().map_err(|e| anyhow!("source `{name}`: {e}"))?;
                let manifest = cache
                    .memo()
                    .manifest(&path)
                    .with_context(|| format!("cannot hash source `{name}`"))?;
                Artifact::from_manifest(path, &manifest)
            }
        } else {
            let up = recipe
                .step(name)
                .expect("a planned name is a source or a step");
            let up_key = key_inputs(up, &artifacts)
                .context("internal: an upstream input was not resolved")?
                .key();
            let manifest = match (cache.lookup(&up_key), remote) {
                (Some(m), _) => m,
                (None, Some(remote)) => {
                    let m = remote.lookup(&up_key)?.ok_or_else(|| {
                        anyhow!("input step `{name}` (key {up_key}) is not in the remote cache")
                    })?;
                    remote.pull(cache, &up_key, &m)?;
                    m
                }
                (None, None) => bail!("input step `{name}` (key {up_key}) is not in the cache"),
            };
            let path = staging.join(name);
            if direct.contains(name) {
                cache.materialize(&manifest, &path)?;
            }
            Artifact::from_manifest(path, &manifest)
        };
        artifacts.insert(name.clone(), artifact);
    }
    artifacts.retain(|name, _| direct.contains(name));
    Ok(artifacts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines_round_trip() {
        assert_eq!(
            WorkerLine::parse("yibuild-worker: job 17 on node-3"),
            Some(WorkerLine::Job {
                id: 17,
                node: "node-3".to_owned()
            })
        );
        assert_eq!(
            WorkerLine::parse("yibuild-worker: note merged 3/10 tensors"),
            Some(WorkerLine::Note("merged 3/10 tensors".to_owned()))
        );
        assert_eq!(WorkerLine::parse("srun: job 17 queued"), None);
        assert_eq!(WorkerLine::parse("yibuild-worker: job x on n"), None);
    }
}
