//! Running one step in this process: into a fresh temporary directory, whose
//! contents the cache then takes in. The executor runs steps this way; so
//! does a Slurm job's `yibuild exec-step` on a compute node.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::build::options::BuildOptions;
use crate::cache::{Cache, Manifest};
use crate::recipe::{Recipe, StepDef};
use crate::steps::{Artifact, StepContext};

/// Runs one step into a fresh temporary directory and stores its output
/// (here, or in a Slurm job's `yibuild exec-step`).
pub fn run_step(
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
    let result = step
        .step
        .run(&ctx)
        .and_then(|()| Ok(cache.ingest(key, &out)?));
    std::fs::remove_dir_all(&tmp).ok();
    result
}
