//! The `yibuild` command line: parses arguments, calls the library, prints.
//!
//! Exit codes: 0 success, 1 a step failed (or another runtime error), 2 a bad
//! recipe, bad input or bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use yibuild::commands::{self, Transfer};
use yibuild::exec::{BuildOptions, Executor, InputError};
use yibuild::hub::HubOptions;
use yibuild::project::{ProjectConfig, RemoteOverrides};
use yibuild::recipe::diag::RecipeError;
use yibuild::recipe::{ParseOptions, Recipe};
use yibuild::steps::Device;

/// A declarative build system for language models.
#[derive(Parser)]
#[command(name = "yibuild", version, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The recipe to build.
    #[arg(required = true)]
    recipe: Option<PathBuf>,
    /// Steps to build (with their dependencies); the recipe's defaults when omitted.
    steps: Vec<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct Common {
    /// JSON Lines events on stdout instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// Steps that may run at once.
    #[arg(short = 'j', long, global = true)]
    jobs: Option<usize>,
    /// Threads each step may use (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Memory budget for running steps, e.g. 2GiB.
    #[arg(long, global = true, default_value = "2GiB", value_parser = commands::parse_size)]
    mem_budget: u64,
    /// The cache directory.
    #[arg(
        long,
        global = true,
        env = "YIBUILD_CACHE_DIR",
        default_value = "cache"
    )]
    cache_dir: PathBuf,
    /// Where outputs are materialized.
    #[arg(
        long,
        global = true,
        env = "YIBUILD_BUILD_DIR",
        default_value = "build"
    )]
    build_dir: PathBuf,
    /// Device for GPU-capable steps: cpu, cuda or auto.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Only errors and the summary.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Rebuild reasons and step notes.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Use only yibuild.lock and the local Hub cache, never the network
    /// (also HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    offline: bool,
    /// Resolve Hub revisions again and rewrite their yibuild.lock entries.
    #[arg(long, global = true)]
    update_lock: bool,
    /// The most instances one step's `matrix:` may expand to.
    #[arg(long, global = true, default_value_t = yibuild::recipe::matrix::DEFAULT_MAX_VARIANTS)]
    max_variants: usize,
    /// Shared remote cache, s3://bucket/prefix (or `remote_cache.url` in .yibuild.yaml).
    #[arg(long, global = true, env = "YIBUILD_REMOTE_CACHE")]
    remote_cache: Option<String>,
    /// What builds may do with the remote cache: read-write, read or push-only.
    #[arg(long, global = true, env = "YIBUILD_REMOTE_CACHE_MODE")]
    remote_cache_mode: Option<String>,
    /// Endpoint of an S3-compatible store other than AWS (MinIO, R2, Ceph).
    #[arg(long, global = true, env = "YIBUILD_REMOTE_CACHE_ENDPOINT")]
    remote_cache_endpoint: Option<String>,
    /// Fail instead of building locally when the remote cache cannot be used.
    #[arg(long, global = true)]
    remote_cache_required: bool,
    /// Where steps run: local, or slurm (one srun job per step); default from
    /// `executor:` in .yibuild.yaml, else local.
    #[arg(long, global = true, env = "YIBUILD_EXECUTOR", value_parser = ["local", "slurm"])]
    executor: Option<String>,
    /// Times a failed Slurm job is submitted again (default from .yibuild.yaml, else 0).
    #[arg(long, global = true)]
    retries: Option<u32>,
}

impl Common {
    fn build_options(&self, targets: Vec<String>) -> anyhow::Result<BuildOptions> {
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let project = ProjectConfig::discover(&std::env::current_dir()?)?;
        let remote = project.remote_settings(&RemoteOverrides {
            url: self.remote_cache.clone(),
            mode: self.remote_cache_mode.clone(),
            endpoint: self.remote_cache_endpoint.clone(),
            required: self.remote_cache_required,
        })?;
        let executor = match self.executor.as_deref().or(project.executor.as_deref()) {
            Some("slurm") => {
                let mut config = project.slurm.unwrap_or_default();
                config.retries = self.retries.unwrap_or(config.retries);
                if config.node_cache.is_some() && !remote.as_ref().is_some_and(|r| r.mode.writes())
                {
                    return Err(InputError(
                        "slurm.node_cache moves step outputs through the remote cache: configure \
                         one that builds may write (--remote-cache, mode read-write)"
                            .to_owned(),
                    )
                    .into());
                }
                Executor::Slurm(config)
            }
            _ => Executor::Local,
        };
        Ok(BuildOptions {
            cache_dir: self.cache_dir.clone(),
            build_dir: self.build_dir.clone(),
            jobs: self.jobs.unwrap_or(threads),
            threads,
            mem_budget: self.mem_budget,
            device: self.device,
            targets,
            hub: HubOptions {
                offline: self.offline,
                update_lock: self.update_lock,
                progress: !self.json && !self.quiet,
            },
            remote,
            executor,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Pin and download the Hub sources a build needs, without building.
    Fetch { recipe: PathBuf, steps: Vec<String> },
    /// Show what would run and why, without running it.
    Plan { recipe: PathBuf, steps: Vec<String> },
    /// Fresh, stale or missing, per step.
    Status { recipe: PathBuf },
    /// Which input or parameter changed since a step last built.
    Explain { recipe: PathBuf, step: String },
    /// Print the table of a sweep's report steps (after building them).
    Report { recipe: PathBuf },
    /// The DAG as DOT or mermaid.
    Graph {
        recipe: PathBuf,
        /// dot or mermaid.
        #[arg(long, default_value = "dot")]
        format: String,
    },
    /// Merge models from a mergekit config: a drop-in for `mergekit-yaml CONFIG OUT`.
    Merge {
        config: PathBuf,
        out: PathBuf,
        /// Seed of the DARE/DELLA masks.
        #[arg(long, default_value_t = yibuild::merge::DEFAULT_SEED)]
        random_seed: u64,
    },
    /// Describe a model folder (architecture, dtype, parameters, vocab sizes, specials, template) or a .gguf file.
    Inspect { path: PathBuf },
    /// Write a model card for an existing model folder (stdout, or README.md with --write).
    Card {
        dir: PathBuf,
        /// Write DIR/README.md instead of printing.
        #[arg(long)]
        write: bool,
    },
    /// Move a recipe's outputs between the local and the remote cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Re-hash every cache object and check every action.
    Verify {
        /// Remove what is corrupt (the next build rebuilds or restores it).
        #[arg(long)]
        repair: bool,
    },
    /// Remove cache entries no build references (dry run unless --yes).
    Gc {
        /// Actually delete.
        #[arg(long)]
        yes: bool,
    },
    /// Remove materialized outputs under the build directory.
    Clean { recipe: Option<PathBuf> },
    /// Build exactly one planned step into the cache: what a Slurm job runs.
    #[command(hide = true)]
    ExecStep {
        recipe: PathBuf,
        step: String,
        /// The key the coordinator computed; the step is not run if it differs.
        #[arg(long)]
        key: String,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Upload the recipe's locally cached outputs to the remote cache.
    Push { recipe: PathBuf, steps: Vec<String> },
    /// Download the recipe's outputs the remote cache holds.
    Pull { recipe: PathBuf, steps: Vec<String> },
}

fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(Device::Auto),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda),
        _ => Err(format!("`{s}` is not a device (cpu, cuda or auto)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(e) = err.downcast_ref::<RecipeError>() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            eprintln!("error: {err:#}");
            if err.downcast_ref::<InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let c = cli.common;
    let parse_opts = ParseOptions {
        max_variants: c.max_variants,
        device: c.device,
    };
    let load = |path: &std::path::Path| -> anyhow::Result<Recipe> {
        Ok(Recipe::load_with(path, &parse_opts)?)
    };
    let print = |s: String| {
        print!("{s}");
        Ok(ExitCode::SUCCESS)
    };
    match cli.command {
        Some(Command::Plan { recipe, steps }) => {
            let opts = c.build_options(steps)?;
            let recipe = load(&recipe)?;
            let jobs = match &opts.executor {
                Executor::Slurm(config) => {
                    let jobs = yibuild::slurm::requests(&recipe, config, &opts)?;
                    if let Some(why) = &jobs.unchecked {
                        eprintln!("warning: Slurm requests not checked against the nodes: {why}");
                    }
                    Some(jobs)
                }
                Executor::Local => None,
            };
            print(commands::plan(&recipe, &opts, c.json, jobs.as_ref())?)
        }
        Some(Command::ExecStep { recipe, step, key }) => {
            // The coordinator already checked the recipe, with its own
            // --max-variants; here it only has to be read again.
            let unlimited = ParseOptions {
                max_variants: usize::MAX,
                device: c.device,
            };
            let recipe = Recipe::load_with(&recipe, &unlimited)?;
            yibuild::slurm::worker::exec_step(&recipe, &step, &key, &c.build_options(Vec::new())?)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Fetch { recipe, steps }) => {
            let opts = c.build_options(steps)?;
            print(commands::fetch(&load(&recipe)?, &opts, c.verbose)?)
        }
        Some(Command::Status { recipe }) => {
            print(commands::status(&load(&recipe)?, &c.cache_dir, c.json)?)
        }
        Some(Command::Explain { recipe, step }) => print(commands::explain(
            &load(&recipe)?,
            &c.cache_dir,
            &step,
            c.json,
        )?),
        Some(Command::Report { recipe }) => print(commands::report(&load(&recipe)?, &c.build_dir)?),
        Some(Command::Graph { recipe, format }) => {
            print(commands::graph(&load(&recipe)?, &format)?)
        }
        Some(Command::Merge {
            config,
            out,
            random_seed,
        }) => {
            let opts = yibuild::merge::MergeOptions {
                seed: random_seed,
                threads: c
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                mem_budget: c.mem_budget,
                ..Default::default()
            };
            let verbose = c.verbose;
            let log = |line: &str| {
                if verbose {
                    eprintln!("{:>12} {line}", "Note");
                }
            };
            yibuild::merge::merge_config_file(&config, &out, &opts, &log)?;
            eprintln!("{:>12} {}", "Merged", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Inspect { path }) => print(commands::inspect(&path)?),
        Some(Command::Card { dir, write }) => {
            let card = yibuild::card::card_for_folder(&dir)?;
            if !write {
                return print(card);
            }
            let readme = dir.join("README.md");
            std::fs::write(&readme, card)?;
            eprintln!("{:>12} {}", "Wrote", readme.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Cache { action }) => {
            let (recipe, steps, direction) = match action {
                CacheAction::Push { recipe, steps } => (recipe, steps, Transfer::Push),
                CacheAction::Pull { recipe, steps } => (recipe, steps, Transfer::Pull),
            };
            let opts = c.build_options(steps)?;
            print(commands::cache_transfer(&load(&recipe)?, &opts, direction)?)
        }
        Some(Command::Verify { repair }) => {
            let problems = commands::verify(&c.cache_dir, repair)?;
            for p in &problems {
                match repair {
                    true => eprintln!("{:>12} {p}", "Repaired"),
                    false => eprintln!("error: {p}"),
                }
            }
            if problems.is_empty() || repair {
                eprintln!(
                    "{:>12} cache {} is sound",
                    "Verified",
                    c.cache_dir.display()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
        Some(Command::Gc { yes }) => print(format!("{}\n", commands::gc(&c.cache_dir, yes)?)),
        Some(Command::Clean { recipe }) => {
            let recipe = recipe.as_deref().map(&load).transpose()?;
            let removed = commands::clean(&c.build_dir, recipe.as_ref())?;
            eprintln!("{:>12} {}", "Removed", removed.display());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let recipe = load(&cli.recipe.expect("clap requires a recipe"))?;
            let opts = c.build_options(cli.steps)?;
            let summary = commands::build(&recipe, &opts, c.json, c.verbose, c.quiet)?;
            Ok(if yibuild::slurm::cancel::requested() {
                ExitCode::from(130)
            } else if summary.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
