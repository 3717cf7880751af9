//! How a build runs: the options every command that builds shares, and where
//! steps run.

use std::path::PathBuf;

use crate::cache::remote::RemoteSettings;
use crate::eval::Device;
use crate::hub::HubOptions;

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
    /// As Slurm jobs (see [`crate::build::slurm`]).
    Slurm(SlurmConfig),
}

/// Project-wide Slurm settings: the `slurm:` section of `.yibuild.yaml` and
/// `--retries`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmConfig {
    /// Partition for steps whose `resources:` name none.
    pub partition: Option<String>,
    /// `--account` for every job.
    pub account: Option<String>,
    /// Time limit for steps whose `resources:` set none.
    pub time: Option<String>,
    /// Extra `srun` options for every job (`--qos=…`, `--constraint=…`).
    pub srun_args: Vec<String>,
    /// How many times a failed job is submitted again.
    pub retries: u32,
    /// A cache directory local to each node (relative paths are relative to
    /// `.yibuild.yaml`). With it, nodes need not share a filesystem with the
    /// submit host: workers fetch their inputs from the remote cache into it
    /// and upload their outputs, which the coordinator then downloads.
    pub node_cache: Option<std::path::PathBuf>,
}
