//! The Slurm executor: each step that is not a cache hit runs as an `srun`
//! job of `yibuild exec-step`, which builds exactly that step on a compute
//! node and stores its output in the shared cache.
//!
//! The coordinator (the `yibuild` the user started) keeps everything else:
//! the plan, DAG order, `--jobs`, the memory budget, the cache lock, build
//! records and materialized outputs. The worker never takes the cache lock:
//! [`Cache::ingest`](crate::cache::Cache::ingest) moves objects in by rename
//! and writes the action entry last, which is safe next to a running build.
//! A job's exit status is never trusted on its own: the coordinator marks a
//! step built only once the action entry for its key is in the cache with
//! every object it names.
//!
//! Before the first job, every request is checked against the partition's
//! nodes ([`nodes`]); while a job waits in the queue, its pending reason is
//! watched ([`pending`]): no request can leave the build waiting forever.
//!
//! `srun` rather than `sbatch --wait`: srun blocks until the job ends, passes
//! the exit code through, streams output, and costs about 40 ms per job where
//! `sbatch --wait` costs at least 2 s (its first poll). Killing srun cancels
//! its job; that is how a coordinator that dies takes its jobs with it.

pub mod cancel;
mod job;
pub mod nodes;
pub mod pending;
pub mod resources;
pub mod worker;

use std::collections::BTreeMap;

use crate::build::options::{BuildOptions, SlurmConfig};
use crate::build::plan::Plan;
use crate::syntax::diag::RecipeError;

pub use job::run_step;
pub use nodes::Fitted;
pub use resources::JobRequest;

/// The jobs a build would submit: each planned step's request, fitted to
/// its partition's nodes.
#[derive(Debug, Clone)]
pub struct Jobs {
    /// By step name.
    pub steps: BTreeMap<String, Fitted>,
    /// Why the requests are as written, unchecked, when `sinfo` did not
    /// answer (no Slurm on this host, a controller that is down).
    pub unchecked: Option<String>,
}

/// What each step the build of `opts.targets` plans would ask Slurm for
/// (for the build and for `yibuild plan --executor slurm`). A request that
/// no node of its partition can run is a recipe error (exit 2) naming the
/// step, before any job is submitted.
pub fn requests(
    plan: &Plan,
    config: &SlurmConfig,
    opts: &BuildOptions,
) -> Result<Jobs, RecipeError> {
    let recipe = plan.recipe;
    let requests: BTreeMap<String, JobRequest> = plan
        .steps()
        .map(|s| {
            let request = JobRequest::for_step(s, config, opts.device, opts.mem_budget);
            (s.name.clone(), request)
        })
        .collect();
    match nodes::query() {
        Ok(nodes) => Ok(Jobs {
            steps: nodes::fit_all(recipe, &requests, &nodes)?,
            unchecked: None,
        }),
        Err(why) => Ok(Jobs {
            steps: requests
                .into_iter()
                .map(|(name, request)| {
                    let fitted = Fitted {
                        request,
                        lowered: Vec::new(),
                    };
                    (name, fitted)
                })
                .collect(),
            unchecked: Some(why),
        }),
    }
}
