//! The merge engine: mergekit-compatible configurations, every mergekit merge
//! method, streamed tensor by tensor in bounded memory on all cores, with
//! bit-reproducible output.
//!
//! - [`config`] parses a mergekit YAML configuration (with spans for errors).
//! - [`plan`] opens the inputs' headers, validates everything and plans one
//!   job per output tensor, before any tensor data is read.
//! - [`engine`] runs the jobs in row chunks sized from the memory budget and
//!   streams the output through [`crate::tensor::ShardedWriter`].
//! - `methods` holds the math, [`rng`] the counter-based mask randomness and
//!   [`select`] the exact streaming top-k used by TIES and breadcrumbs.
//!
//! # Deviations from mergekit 0.1.x
//!
//! - Math runs in `f32` with `f64` tensor-wide reductions and one cast to the
//!   output type; `dtype` only chooses the output type when `out_dtype` is
//!   absent (mergekit computes in `dtype`, lossy in bf16).
//! - DARE/DELLA masks come from [`rng`] (keyed by seed, tensor, model and
//!   element; keep probabilities quantized to 1/65536), not torch's global
//!   generator: reproducible across threads, chunk sizes, machines and
//!   config edits, but not bit-equal to mergekit's masks.
//! - TIES/breadcrumbs keep exactly k entries with ties at the threshold
//!   broken by position ([`select`]); mergekit's argsort breaks them arbitrarily.
//! - Bugs fixed: breadcrumbs no longer zeroes tensors where `gamma·numel < 1`;
//!   linear with `normalize` and weights summing to zero is an error instead of
//!   a division by zero; karcher honours per-model `weight` (default 1);
//!   a model listed twice stays two inputs (mergekit collapses them, #214);
//!   DELLA rows of one element get rank 0 instead of NaN; donors and model
//!   lists follow config order (base first) instead of Python set order.
//! - Stricter checks, all before any tensor is read: unknown or misspelt
//!   parameter names (except the legacy no-ops `int8_mask`, `embed_slerp`),
//!   per-model values of global parameters (such as `t`), non-embedding shape
//!   mismatches (mergekit's GTA silently skips such a model), layer ranges,
//!   missing parameters; NaN or infinity in an input is an error.
//! - `rescale` also accepts `l1` and `inverse_density` (the DARE paper's
//!   `1/density`).
//! - Tensors are written in Hugging Face order (embeddings, layers, head), not
//!   alphabetically; `vocab_size` is set to the output embedding rows.
//! - `tokenizer_source: union` (and `tokenizer:`) re-indexes every model's
//!   embedding and head rows to the union vocabulary
//!   ([`crate::tokenizer::union`]) as the rows are read, chunk by chunk, so
//!   the method sees aligned rows; `tokenizer.tokens` and
//!   `pad_to_multiple_of` are accepted only with `source: union` (mergekit
//!   also permutes embeddings to a `base` or model tokenizer plus `tokens`).
//! - Not supported yet (each a clear error): LoRA references, `modules:`,
//!   multi-document configs, `nuslerp_row_wise` without flattening, built-in
//!   chat templates other than `chatml`, `arcee_fusion`.

pub mod arch;
pub mod config;
pub mod engine;
pub mod method;
mod methods;
mod output;
pub mod params;
pub mod plan;
pub mod portable;
pub mod rng;
pub mod select;
pub mod typed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use config::{MergeConfig, ModelRef, TokenizerSource};
pub use method::Method;
pub use plan::MergePlan;

use crate::syntax::diag::{Diag, RecipeError};
use crate::tensor::DEFAULT_MAX_SHARD_SIZE;

/// The DARE/DELLA seed when none is given (recorded in the model card).
pub const DEFAULT_SEED: u64 = 0;

/// The default `--mem-budget`: 2 GiB.
pub const DEFAULT_MEM_BUDGET: u64 = 2 << 30;

/// How to run a merge. `seed` changes the tensor bytes; `max_shard_size`,
/// `copy_tokenizer`, `write_model_card` and `title` change the files written
/// (mergekit-yaml's output flags); the rest only changes how it runs.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Seed of the DARE/DELLA masks.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// Peak memory to stay under, in bytes.
    pub mem_budget: u64,
    /// Elements per chunk (derived from the budget when `None`).
    pub chunk_elements: Option<usize>,
    /// Largest output shard in bytes.
    pub max_shard_size: u64,
    /// Copy the donor's tokenizer files (`--copy-tokenizer`, mergekit's default).
    /// A union vocabulary (`tokenizer_source: union`) is written regardless, as
    /// mergekit does.
    pub copy_tokenizer: bool,
    /// Write README.md and `mergekit_config.yml` (`--write-model-card`,
    /// mergekit's default; mergekit writes both or neither).
    pub write_model_card: bool,
    /// The model card's title; the output folder's name when `None`.
    pub title: Option<String>,
    /// Told the output bytes written so far and the total, as tensors stream out.
    pub progress: Option<Progress>,
}

/// A callback for a progress display: `(bytes written, total bytes)`.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            seed: DEFAULT_SEED,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_budget: DEFAULT_MEM_BUDGET,
            chunk_elements: None,
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            copy_tokenizer: true,
            write_model_card: true,
            title: None,
            progress: None,
        }
    }
}

/// Parses the single mergekit configuration document in `text` (from `file`).
pub fn parse_config(file: &Path, text: &str) -> Result<MergeConfig, RecipeError> {
    let diag = Diag::new(file, text);
    let docs =
        crate::syntax::yaml::parse_documents(text).map_err(|e| diag.error(e.span, e.message))?;
    match docs.as_slice() {
        [doc] => MergeConfig::parse(&diag, doc, text),
        [] => Err(RecipeError::file(file, "the merge configuration is empty")),
        _ => Err(RecipeError::file(
            file,
            "multi-document (mergekit-multi) configurations are not supported by `yibuild merge` yet",
        )),
    }
}

/// Validates a merge without reading tensor data: every model's config and
/// tensor index against the configuration. `models` maps each reference as
/// written to its folder.
pub fn preflight(
    config: &MergeConfig,
    models: &BTreeMap<String, PathBuf>,
    seed: u64,
) -> Result<MergePlan> {
    MergePlan::build(config, models, seed)
}

/// Merges into `out`, an existing empty directory.
pub fn merge(
    config: &MergeConfig,
    models: &BTreeMap<String, PathBuf>,
    out: &Path,
    opts: &MergeOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let plan = preflight(config, models, opts.seed)?;
    log(&format!(
        "merging {} tensors ({:.2} GB) from {} models with {}",
        plan.jobs.len(),
        plan.output_bytes() as f64 / 1e9,
        plan.models.len(),
        config.method.name()
    ));
    let engine = engine::EngineOptions {
        threads: opts.threads,
        mem_budget: opts.mem_budget,
        chunk_elements: opts.chunk_elements,
        max_shard_size: opts.max_shard_size,
        progress: opts.progress.clone(),
    };
    engine::run(&plan, out, &engine, log)?;
    output::write_metadata(config, &plan, out, opts, log)
}

/// Resolves a model reference of a plain config file to a local folder:
/// relative to the working directory, then to the config's directory (the
/// order mergekit-yaml, which opens paths as given, effectively uses).
pub fn local_model(name: &str, config_dir: &Path) -> Option<PathBuf> {
    [PathBuf::from(name), config_dir.join(name)]
        .into_iter()
        .find(|p| p.is_dir())
}

/// `mergekit-yaml CONFIG OUT` over local folders only: every model reference
/// must be a folder (see [`local_model`]). `yibuild merge`, which also
/// fetches Hub models, is [`crate::cli::merge`].
pub fn merge_config_file(
    config_path: &Path,
    out: &Path,
    opts: &MergeOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = parse_config(config_path, &text)?;
    let config_dir = config_path.parent().unwrap_or(Path::new("."));
    let mut models = BTreeMap::new();
    for r in config.referenced_models() {
        let Some(dir) = local_model(&r.name, config_dir) else {
            bail!("model `{}`: no such local directory", r.name);
        };
        models.insert(r.name.clone(), dir);
    }
    merge_to_folder(&config, &models, out, opts, log)
}

/// Fails unless `out` is absent or an empty directory (mergekit-yaml would
/// mix its files into whatever is there; a drop-in that refuses is safer).
pub fn check_output_folder(out: &Path) -> Result<()> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "output directory {} already exists and is not empty",
            out.display()
        );
    }
    Ok(())
}

/// Merges into the folder `out`, which appears only when complete: the model
/// is written into a temporary sibling directory that is renamed at the end
/// and removed on failure. The card's title is `out`'s name unless
/// `opts.title` says otherwise (never the temporary name).
pub fn merge_to_folder(
    config: &MergeConfig,
    models: &BTreeMap<String, PathBuf>,
    out: &Path,
    opts: &MergeOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    check_output_folder(out)?;
    preflight(config, models, opts.seed)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = folder_name(out);
    let tmp = parent.join(format!(".{name}.yibuild-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let opts = MergeOptions {
        title: opts.title.clone().or(Some(name)),
        ..opts.clone()
    };
    let result = merge(config, models, &tmp, &opts, log).and_then(|()| {
        if out.exists() {
            std::fs::remove_dir(out)?;
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move the output to {}", out.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The last component of `path` as mergekit's card title uses it
/// (`os.path.basename`), resolving `.` and a trailing `..` first.
fn folder_name(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut clean = PathBuf::new();
    for c in absolute.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            c => clean.push(c),
        }
    }
    clean
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merge".to_owned())
}
