//! The `yibuild` command line: parses arguments, calls the library, prints.
//!
//! Exit codes: 0 success, 1 a step failed (or another runtime error), 2 a bad
//! recipe, bad input or bad usage.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use yibuild::build::error::{BuildError, InputError};
use yibuild::build::options::{BuildOptions, Executor};
use yibuild::build::project::{ProjectConfig, RemoteOverrides};
use yibuild::cli::commands::{self, Transfer};
use yibuild::cli::merge::{DropInOptions, MergekitArgs};
use yibuild::hub::{HubConfig, HubOptions};
use yibuild::recipe::{ParseOptions, Recipe};
use yibuild::steps::Device;
use yibuild::syntax::diag::RecipeError;

/// Invocations shown by `--help` and in usage errors.
const USAGE: &str = "yibuild [OPTIONS] RECIPE [STEP]...
       yibuild [OPTIONS] RECIPE -- STEP...
       yibuild [OPTIONS] COMMAND [ARGS]...";

/// Real invocations, after the options in `--help`.
const EXAMPLES: &str = "Examples:
  yibuild recipe.yaml                  build the recipe's default targets
  yibuild recipe.yaml q4km ppl         build two steps and what they need
  yibuild recipe.yaml -- merge         build a step named like a command
  yibuild plan recipe.yaml             show what would run and why
  yibuild merge config.yml ./merged    mergekit-yaml config.yml ./merged, the same files
  yibuild completions bash             a completion script for bash";

/// A declarative build system for language models.
#[derive(Parser)]
#[command(
    name = "yibuild",
    version,
    subcommand_negates_reqs = true,
    override_usage = USAGE,
    after_help = EXAMPLES,
    subcommand_value_name = "COMMAND"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The recipe to build (a yibuild recipe or a mergekit config).
    #[arg(required = true, value_name = "RECIPE")]
    recipe: Option<PathBuf>,
    /// Steps to build, with what they need (default: the recipe's `default:`);
    /// put them after `--` when one is named like a command.
    #[arg(value_name = "STEP")]
    steps: Vec<String>,
    #[command(flatten)]
    common: Common,
}

/// A recipe and steps of it.
#[derive(Args)]
struct RecipeSteps {
    /// The recipe file (a yibuild recipe or a mergekit config).
    #[arg(value_name = "RECIPE")]
    recipe: PathBuf,
    /// Steps to select, with what they need (default: the recipe's `default:`).
    #[arg(value_name = "STEP")]
    steps: Vec<String>,
}

/// A recipe.
#[derive(Args)]
struct RecipeArg {
    /// The recipe file (a yibuild recipe or a mergekit config).
    #[arg(value_name = "RECIPE")]
    recipe: PathBuf,
}

#[derive(Args, Clone)]
struct Common {
    /// JSON Lines events on stdout instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// Steps that may run at once (for `yibuild merge`: its threads, as
    /// mergekit's -j).
    #[arg(short = 'j', long, global = true)]
    jobs: Option<usize>,
    /// Threads each step may use (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Memory budget for running steps, e.g. 2GiB.
    #[arg(long, global = true, default_value = "2GiB", value_parser = yibuild::fs::size::parse_size)]
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
    /// Rebuild reasons and step notes (may be repeated, as mergekit's -v).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
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
                    return Err(InputError::Unusable(
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
    Fetch(RecipeSteps),
    /// Show what would run and why, without running it.
    Plan(RecipeSteps),
    /// Fresh, stale or missing, per step.
    Status(RecipeArg),
    /// Which input or parameter changed since a step last built.
    Explain {
        #[command(flatten)]
        recipe: RecipeArg,
        /// The step to explain.
        #[arg(value_name = "STEP")]
        step: String,
    },
    /// Print the table of a sweep's report steps (after building them).
    Report(RecipeArg),
    /// The DAG as DOT or mermaid.
    Graph {
        #[command(flatten)]
        recipe: RecipeArg,
        /// dot or mermaid.
        #[arg(long, default_value = "dot")]
        format: String,
    },
    /// Merge models from a mergekit config: a drop-in for `mergekit-yaml CONFIG OUT`,
    /// with its options.
    Merge {
        /// The mergekit configuration (YAML): models are local folders or Hub ids.
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
        /// The output folder (created; must be absent or empty).
        #[arg(value_name = "OUT")]
        out: PathBuf,
        #[command(flatten)]
        mergekit: MergekitArgs,
    },
    /// Build the releases of the recipe's publish steps and upload them to the Hugging Face Hub.
    Publish {
        /// The recipe file.
        #[arg(value_name = "RECIPE")]
        recipe: PathBuf,
        /// Publish steps to run (all of the recipe's when omitted).
        #[arg(value_name = "STEP")]
        steps: Vec<String>,
        /// Only list what would be uploaded: nothing is sent, created or committed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Describe a model folder (architecture, dtype, parameters, vocab sizes, specials, template) or a .gguf file.
    Inspect {
        /// A model folder or a .gguf file.
        #[arg(value_name = "MODEL")]
        path: PathBuf,
    },
    /// Write a model card for an existing model folder (stdout, or README.md with --write).
    Card {
        /// The model folder.
        #[arg(value_name = "DIR")]
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
    Clean {
        /// Remove only this recipe's outputs (default: the whole build directory).
        #[arg(value_name = "RECIPE")]
        recipe: Option<PathBuf>,
    },
    /// Print a shell completion script (see the README for where it goes).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `yibuild man > yibuild.1`.
    Man,
    /// Build exactly one planned step into the cache: what a Slurm job runs.
    #[command(hide = true)]
    ExecStep {
        #[command(flatten)]
        recipe: RecipeArg,
        /// The step to build.
        #[arg(value_name = "STEP")]
        step: String,
        /// The key the coordinator computed; the step is not run if it differs.
        #[arg(long)]
        key: String,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Upload the recipe's locally cached outputs to the remote cache.
    Push(RecipeSteps),
    /// Download the recipe's outputs the remote cache holds.
    Pull(RecipeSteps),
}

fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(Device::Auto),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda),
        _ => Err(format!("`{s}` is not a device (cpu, cuda or auto)")),
    }
}

/// For `yibuild RECIPE NAME...` where NAME is also a command (`yibuild
/// recipe.yaml merge`): the recipe and that name. clap reads NAME as the
/// command; the user most likely meant a step.
fn command_after_recipe(cmd: &clap::Command, args: &[OsString]) -> Option<(String, String)> {
    let takes_value = |arg: &clap::Arg| !arg.is_positional() && arg.get_action().takes_values();
    let longs: Vec<&str> = cmd
        .get_arguments()
        .filter(|a| takes_value(a))
        .filter_map(|a| a.get_long())
        .collect();
    let shorts: Vec<char> = cmd
        .get_arguments()
        .filter(|a| takes_value(a))
        .filter_map(|a| a.get_short())
        .collect();
    let is_command = |s: &str| cmd.find_subcommand(s).is_some();
    let mut recipe: Option<String> = None;
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(word) = words.next() {
        if word == "--" {
            return None;
        }
        if let Some(long) = word.strip_prefix("--") {
            if !long.contains('=') && longs.contains(&long) {
                words.next();
            }
            continue;
        }
        if let Some(short) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            if chars.next().is_some_and(|c| shorts.contains(&c)) && chars.next().is_none() {
                words.next();
            }
            continue;
        }
        match &recipe {
            None if is_command(&word) => return None,
            None => recipe = Some(word.into_owned()),
            Some(r) if is_command(&word) => return Some((r.clone(), word.into_owned())),
            Some(_) => {}
        }
    }
    None
}

/// The error for a step name read as a command, with the way out.
fn command_after_recipe_error((recipe, name): &(String, String)) -> String {
    format!(
        "`{name}` after the recipe `{recipe}` is read as the `yibuild {name}` command, not as a step\n  \
         hint: to build a step named `{name}`, put the steps after `--`: yibuild {recipe} -- {name}"
    )
}

/// Prints clap's error, without its tip to pass an unknown option "as a
/// value" after `--`: that would make a mistyped or unsupported option a
/// step name or a path.
fn print_usage_error(e: &clap::Error) {
    if e.kind() != clap::error::ErrorKind::UnknownArgument {
        e.print().ok();
        return;
    }
    let styled = e.render();
    let text = if yibuild::cli::term::stderr_color() {
        styled.ansi().to_string()
    } else {
        styled.to_string()
    };
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.contains("as a value, use")) {
        if !(line.trim().is_empty() && out.ends_with("\n\n")) {
            out.push_str(line);
            out.push('\n');
        }
    }
    eprint!("{out}");
}

/// The recipe error in `err`'s chain, if any: printed as it renders itself,
/// with its place in the file (a build error wraps one transparently).
fn recipe_error(err: &anyhow::Error) -> Option<&RecipeError> {
    err.chain().find_map(|e| {
        e.downcast_ref::<RecipeError>()
            .or(match e.downcast_ref::<BuildError>() {
                Some(BuildError::Recipe(r)) => Some(r),
                _ => None,
            })
    })
}

/// Whether `err` is about what the user asked for (exit code 2).
fn is_input_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<InputError>() || matches!(e.downcast_ref::<BuildError>(), Some(BuildError::Input(_)))
    })
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let collision = command_after_recipe(&Cli::command(), &args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = e.exit_code();
            print_usage_error(&e);
            if let (Some(c), true) = (&collision, e.use_stderr()) {
                eprintln!("note: {}", command_after_recipe_error(c));
            }
            return ExitCode::from(code as u8);
        }
    };
    if let (Some(c), Some(_), Some(_)) = (&collision, &cli.recipe, &cli.command) {
        eprintln!("error: {}", command_after_recipe_error(c));
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(e) = recipe_error(&err) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            eprintln!("error: {err:#}");
            if is_input_error(&err) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// `yibuild merge`: mergekit-yaml's options mapped onto the drop-in, one
/// line for the options it ignores, a note about the GPU when one was asked
/// for, and a byte progress bar on a terminal.
fn merge_command(
    c: &Common,
    config: &Path,
    out: &Path,
    args: &MergekitArgs,
) -> anyhow::Result<ExitCode> {
    let quiet = c.quiet && !args.no_quiet;
    if let Some(note) = args.ignored_note() {
        eprintln!("note: {note}");
    }
    if args.wants_cuda() || c.device == Device::Cuda {
        match yibuild::eval::cuda::probe() {
            Ok(()) => eprintln!(
                "note: a CUDA device is present, but `yibuild merge` computes on the CPU \
                 (f32 on every core); the GPU is not used"
            ),
            Err(e) => eprintln!("note: no GPU is usable ({e:#}); merging on the CPU"),
        }
    }
    let threads = c
        .jobs
        .or(c.threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut merge = args.merge_options(threads, c.mem_budget)?;
    let bar = (!quiet && yibuild::cli::term::stderr_bars()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>12} [{bar:27}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix("Merging");
        bar
    });
    if let Some(bar) = bar.clone() {
        merge.progress = Some(yibuild::merge::Progress(std::sync::Arc::new(
            move |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        )));
    }
    let mut hub = HubConfig::from_env(HubOptions {
        offline: c.offline,
        update_lock: false,
        progress: !quiet,
    });
    if let Some(dir) = &args.transformers_cache {
        hub.cache_dir = dir.clone();
    }
    let opts = DropInOptions {
        merge,
        allow_crimes: args.allow_crimes,
        hub,
    };
    let verbose = c.verbose > 0;
    let say = |line: String| match &bar {
        Some(bar) => bar.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    };
    let log = |line: &str| match line.strip_prefix("warning: ") {
        Some(w) => say(format!("warning: {w}")),
        None if verbose => say(format!("{:>12} {line}", "Note")),
        None => {}
    };
    let result = yibuild::cli::merge::merge_command(config, out, &opts, &log);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    result?;
    if !quiet {
        eprintln!("{:>12} {}", "Merged", out.display());
    }
    Ok(ExitCode::SUCCESS)
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
        Some(Command::Plan(RecipeSteps { recipe, steps })) => {
            let opts = c.build_options(steps)?;
            let recipe = load(&recipe)?;
            print(commands::plan(&recipe, &opts, c.json)?)
        }
        Some(Command::ExecStep {
            recipe: RecipeArg { recipe },
            step,
            key,
        }) => {
            // The coordinator already checked the recipe, with its own
            // --max-variants; here it only has to be read again.
            let unlimited = ParseOptions {
                max_variants: usize::MAX,
                device: c.device,
            };
            let recipe = Recipe::load_with(&recipe, &unlimited)?;
            yibuild::build::slurm::worker::exec_step(
                &recipe,
                &step,
                &key,
                &c.build_options(Vec::new())?,
                &|line| println!("{line}"),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Fetch(RecipeSteps { recipe, steps })) => {
            let opts = c.build_options(steps)?;
            print(commands::fetch(&load(&recipe)?, &opts, c.verbose > 0)?)
        }
        Some(Command::Status(RecipeArg { recipe })) => {
            print(commands::status(&load(&recipe)?, &c.cache_dir, c.json)?)
        }
        Some(Command::Explain {
            recipe: RecipeArg { recipe },
            step,
        }) => print(commands::explain(
            &load(&recipe)?,
            &c.cache_dir,
            &step,
            c.json,
        )?),
        Some(Command::Report(RecipeArg { recipe })) => {
            print(commands::report(&load(&recipe)?, &c.build_dir)?)
        }
        Some(Command::Graph {
            recipe: RecipeArg { recipe },
            format,
        }) => print(commands::graph(&load(&recipe)?, &format)?),
        Some(Command::Merge {
            config,
            out,
            mergekit,
        }) => merge_command(&c, &config, &out, &mergekit),
        Some(Command::Completions { shell }) => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "yibuild", &mut out);
            print(String::from_utf8(out)?)
        }
        Some(Command::Man) => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            print(String::from_utf8(out)?)
        }
        Some(Command::Publish {
            recipe,
            steps,
            dry_run,
        }) => {
            let recipe = load(&recipe)?;
            let opts = c.build_options(Vec::new())?;
            match commands::publish(
                &recipe,
                opts,
                &steps,
                dry_run,
                c.json,
                c.quiet,
                c.verbose > 0,
            )? {
                Some(text) => print(text),
                None => Ok(ExitCode::from(1)),
            }
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
                CacheAction::Push(RecipeSteps { recipe, steps }) => (recipe, steps, Transfer::Push),
                CacheAction::Pull(RecipeSteps { recipe, steps }) => (recipe, steps, Transfer::Pull),
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
            let summary = commands::build(&recipe, &opts, c.json, c.verbose > 0, c.quiet)?;
            Ok(if yibuild::build::slurm::cancel::requested() {
                ExitCode::from(130)
            } else if summary.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arguments without help text, as "command path: argument".
    fn without_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if arg
                .get_help()
                .is_none_or(|h| h.to_string().trim().is_empty())
            {
                out.push(format!("{path}: {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            without_help(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn the_command_line_is_consistent_and_every_argument_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        without_help(&cmd, "yibuild", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn a_command_after_the_recipe_is_found_past_options_and_their_values() {
        let cmd = Cli::command();
        let find = |line: &str| {
            let args: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
            command_after_recipe(&cmd, &args)
        };
        let hit = |recipe: &str, name: &str| Some((recipe.to_owned(), name.to_owned()));
        assert_eq!(find("yibuild r.yaml merge"), hit("r.yaml", "merge"));
        assert_eq!(find("yibuild r.yaml a gc"), hit("r.yaml", "gc"));
        // `plan` is the value of --cache-dir here, not the command.
        assert_eq!(
            find("yibuild -j 2 --cache-dir plan r.yaml status"),
            hit("r.yaml", "status")
        );
        assert_eq!(
            find("yibuild --cache-dir=c -vq r.yaml gc"),
            hit("r.yaml", "gc")
        );
        assert_eq!(find("yibuild --json plan r.yaml merge"), None);
        assert_eq!(find("yibuild r.yaml -- merge"), None);
        assert_eq!(find("yibuild r.yaml a b"), None);
    }
}
