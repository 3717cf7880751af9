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
//! `srun` rather than `sbatch --wait`: srun blocks until the job ends, passes
//! the exit code through, streams output, and costs about 40 ms per job where
//! `sbatch --wait` costs at least 2 s (its first poll). Killing srun cancels
//! its job; that is how a coordinator that dies takes its jobs with it.

pub mod cancel;
mod job;
pub mod resources;
pub mod worker;

use std::collections::BTreeMap;

use crate::build::options::{BuildOptions, SlurmConfig};
use crate::recipe::Recipe;

pub use job::run_step;
pub use resources::JobRequest;

/// What each step of `recipe` would ask Slurm for, by step name (for
/// `yibuild plan --executor slurm`).
pub fn requests(
    recipe: &Recipe,
    config: &SlurmConfig,
    opts: &BuildOptions,
) -> BTreeMap<String, JobRequest> {
    recipe
        .steps
        .iter()
        .map(|s| {
            let request = JobRequest::for_step(s, config, opts.device, opts.mem_budget);
            (s.name.clone(), request)
        })
        .collect()
}
