//! `yibuild merge CONFIG OUT`: the drop-in for `mergekit-yaml CONFIG OUT`.
//!
//! [`MergekitArgs`] accepts every option of mergekit-yaml (mergekit's
//! `options.py`, `MergeOptions` and `add_merge_options`, at a6e4028), so a
//! command line pasted from a model card runs unchanged. The options that
//! change the output are honoured: `--out-shard-size` (mergekit's size syntax,
//! [`parse_shard_size`]), `--copy-tokenizer`, `--write-model-card`,
//! `--allow-crimes`, `--random-seed`, `--num-threads`/`-j`, and
//! `--transformers-cache` (where Hub models are downloaded). The performance
//! options mergekit needs for its own memory model are accepted and named once
//! as ignored ([`MergekitArgs::ignored_note`]); `--no-safe-serialization`
//! (pickled `.bin` output) is refused.
//!
//! Model references are local folders (relative to the working directory,
//! then to the config's) or Hugging Face Hub ids (`org/name[@revision]`),
//! fetched into the standard Hub cache as a recipe's `hf://` sources are:
//! pinned, small files first, a pre-flight check of every config and tensor
//! header, then the weights. Nothing is written next to the config: the pins
//! (a recipe's `yibuild.lock`) live in a scratch folder beside `OUT` that is
//! removed at the end.
//!
//! The output folder is the one mergekit-yaml writes: `model.safetensors`, or
//! `model-0000i-of-0000N.safetensors` shards with `model.safetensors.index.json`;
//! `config.json`; the donor's tokenizer files; `README.md` and
//! `mergekit_config.yml`. It appears only when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::build::error::InputError;
use crate::build::hub_sources::HubFetch;
use crate::hub::HubConfig;
use crate::merge::{self, MergeConfig, MergeOptions};
use crate::recipe::source::parse_hub;
use crate::recipe::{Recipe, Source};

/// mergekit-yaml's options, with its spellings and defaults. Boolean options
/// come in mergekit's `--x/--no-x` pairs (the last one given wins); `-v`,
/// `-q/--quiet`, `--device` and `-j` are yibuild's global options of the same
/// meaning (`-j/--jobs` is the merge's thread count here, like mergekit's `-j`).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "mergekit-yaml options")]
pub struct MergekitArgs {
    /// Size of each output shard: a number of bytes with an optional K, M or B
    /// (10^3, 10^6, 10^9) suffix, as mergekit reads it; 0 for a single file
    /// [default: 5B].
    #[arg(long, value_name = "SIZE", value_parser = parse_shard_size)]
    pub out_shard_size: Option<u64>,
    /// Seed of the DARE/DELLA masks [default: 0].
    #[arg(long, value_name = "N")]
    pub random_seed: Option<u64>,
    /// Threads for the merge (the same as -j).
    #[arg(long, value_name = "N")]
    pub num_threads: Option<usize>,
    /// Allow mixing architectures (refused otherwise, as mergekit does).
    #[arg(long, overrides_with = "no_allow_crimes")]
    pub allow_crimes: bool,
    /// Refuse to mix architectures (the default).
    #[arg(long, overrides_with = "allow_crimes", hide = true)]
    pub no_allow_crimes: bool,
    /// Copy the tokenizer files to the output (the default).
    #[arg(long, overrides_with = "no_copy_tokenizer")]
    pub copy_tokenizer: bool,
    /// Do not copy tokenizer files (a `tokenizer_source: union` vocabulary is
    /// still written, as mergekit does).
    #[arg(long, overrides_with = "copy_tokenizer")]
    pub no_copy_tokenizer: bool,
    /// Write README.md and mergekit_config.yml (the default).
    #[arg(long, overrides_with = "no_write_model_card")]
    pub write_model_card: bool,
    /// Write neither README.md nor mergekit_config.yml.
    #[arg(long, overrides_with = "write_model_card")]
    pub no_write_model_card: bool,
    /// Save safetensors (the default, and the only format yibuild writes).
    #[arg(long, overrides_with = "no_safe_serialization")]
    pub safe_serialization: bool,
    /// Pickled .bin output: refused, yibuild writes safetensors only.
    #[arg(long, overrides_with = "safe_serialization", hide = true)]
    pub no_safe_serialization: bool,
    /// Where Hugging Face Hub models are downloaded (instead of HF_HUB_CACHE).
    #[arg(long, value_name = "DIR")]
    pub transformers_cache: Option<PathBuf>,
    /// Merge on the GPU: yibuild merges on the CPU and says whether a GPU is there.
    #[arg(long, overrides_with = "no_cuda")]
    pub cuda: bool,
    /// Do not use the GPU (the default).
    #[arg(long, overrides_with = "cuda", hide = true)]
    pub no_cuda: bool,
    /// Alias for --cuda --low-cpu-memory --read-to-gpu --multi-gpu.
    #[arg(long)]
    pub gpu_rich: bool,
    /// Accepted; ignored (inputs are memory-mapped safetensors).
    #[arg(long, overrides_with = "no_lazy_unpickle")]
    pub lazy_unpickle: bool,
    /// Accepted; ignored.
    #[arg(long, overrides_with = "lazy_unpickle", hide = true)]
    pub no_lazy_unpickle: bool,
    /// Accepted; ignored (memory is bounded by --mem-budget).
    #[arg(long, overrides_with = "no_low_cpu_memory")]
    pub low_cpu_memory: bool,
    /// Accepted; ignored.
    #[arg(long, overrides_with = "low_cpu_memory", hide = true)]
    pub no_low_cpu_memory: bool,
    /// Accepted; ignored (the merge runs on the CPU).
    #[arg(long, overrides_with = "no_read_to_gpu")]
    pub read_to_gpu: bool,
    /// Accepted; ignored.
    #[arg(long, overrides_with = "read_to_gpu", hide = true)]
    pub no_read_to_gpu: bool,
    /// Accepted; ignored (the merge runs on the CPU).
    #[arg(long, overrides_with = "no_multi_gpu")]
    pub multi_gpu: bool,
    /// Accepted; ignored.
    #[arg(long, overrides_with = "multi_gpu", hide = true)]
    pub no_multi_gpu: bool,
    /// Accepted; ignored (shards are always written as tensors stream out).
    #[arg(long, overrides_with = "no_async_write")]
    pub async_write: bool,
    /// Accepted; ignored.
    #[arg(long, overrides_with = "async_write", hide = true)]
    pub no_async_write: bool,
    /// Accepted; ignored (one writer thread streams every shard).
    #[arg(long, value_name = "N")]
    pub write_threads: Option<usize>,
    /// Accepted; ignored (merged tensors never share storage).
    #[arg(long, overrides_with = "no_clone_tensors")]
    pub clone_tensors: bool,
    /// Accepted; ignored.
    #[arg(long, overrides_with = "clone_tensors", hide = true)]
    pub no_clone_tensors: bool,
    /// Accepted; ignored (yibuild runs no code from model repositories).
    #[arg(long, overrides_with = "no_trust_remote_code")]
    pub trust_remote_code: bool,
    /// Accepted; ignored.
    #[arg(long, overrides_with = "trust_remote_code", hide = true)]
    pub no_trust_remote_code: bool,
    /// Accepted; ignored (LoRA references are not supported).
    #[arg(long, value_name = "DIR")]
    pub lora_merge_cache: Option<PathBuf>,
    /// Accepted; ignored (LoRA references are not supported).
    #[arg(long, value_name = "DTYPE")]
    pub lora_merge_dtype: Option<String>,
    /// Show progress (the default; undoes -q).
    #[arg(long)]
    pub no_quiet: bool,
}

/// Parses mergekit's shard size syntax (`parse_kmb`): digits, optionally
/// followed by `K`, `M` or `B` (either case) for 10^3, 10^6 or 10^9. `G` is
/// also read as 10^9, since people write it; `0` means no sharding (mergekit
/// skips the size check when it is 0).
pub fn parse_shard_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_lowercase() {
                'k' => 1_000,
                'm' => 1_000_000,
                'b' | 'g' => 1_000_000_000,
                _ => 0,
            };
            (&t[..i], scale)
        }
        _ => (t, 1),
    };
    let n = (scale != 0 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse::<u64>().ok())
        .flatten()
        .and_then(|n| n.checked_mul(scale));
    match n {
        Some(0) => Ok(u64::MAX),
        Some(n) => Ok(n),
        None => Err(format!(
            "`{text}` is not a shard size: write whole bytes with an optional K, M or B \
             suffix (decimal, as mergekit reads it: 500M = 500,000,000 bytes, 5B = 5,000,000,000)"
        )),
    }
}

impl MergekitArgs {
    /// Whether the GPU was asked for (`--cuda` or `--gpu-rich`).
    pub fn wants_cuda(&self) -> bool {
        self.cuda || self.gpu_rich
    }

    /// One line naming the options given that change nothing here, and why;
    /// `None` when there are none.
    pub fn ignored_note(&self) -> Option<String> {
        let groups: [(&[(&str, bool)], &str); 4] = [
            (
                &[
                    ("--lazy-unpickle", self.lazy_unpickle),
                    ("--low-cpu-memory", self.low_cpu_memory),
                    ("--read-to-gpu", self.read_to_gpu),
                    ("--multi-gpu", self.multi_gpu),
                    ("--gpu-rich", self.gpu_rich),
                    ("--async-write", self.async_write),
                    ("--write-threads", self.write_threads.is_some()),
                ],
                "yibuild streams memory-mapped tensors in chunks within --mem-budget on the CPU and writes shards as it goes",
            ),
            (
                &[("--clone-tensors", self.clone_tensors)],
                "merged tensors never share storage",
            ),
            (
                &[("--trust-remote-code", self.trust_remote_code)],
                "yibuild runs no code from model repositories",
            ),
            (
                &[
                    ("--lora-merge-cache", self.lora_merge_cache.is_some()),
                    ("--lora-merge-dtype", self.lora_merge_dtype.is_some()),
                ],
                "LoRA references are not supported",
            ),
        ];
        let parts: Vec<String> = groups
            .iter()
            .filter_map(|(flags, why)| {
                let given: Vec<&str> = flags.iter().filter(|f| f.1).map(|f| f.0).collect();
                (!given.is_empty()).then(|| format!("{} ({why})", given.join(", ")))
            })
            .collect();
        (!parts.is_empty()).then(|| format!("ignoring {}", parts.join("; ")))
    }

    /// The merge options these flags ask for. `threads` is the thread count
    /// when `--num-threads` is not given.
    pub fn merge_options(
        &self,
        threads: usize,
        mem_budget: u64,
    ) -> Result<MergeOptions, InputError> {
        if self.no_safe_serialization {
            return Err(InputError::Setting {
                place: "--no-safe-serialization".to_owned(),
                why: "asks for pickled .bin files; yibuild writes safetensors only".to_owned(),
            });
        }
        Ok(MergeOptions {
            seed: self.random_seed.unwrap_or(merge::DEFAULT_SEED),
            threads: self.num_threads.unwrap_or(threads).max(1),
            mem_budget,
            max_shard_size: self
                .out_shard_size
                .unwrap_or(crate::tensor::DEFAULT_MAX_SHARD_SIZE),
            copy_tokenizer: !self.no_copy_tokenizer,
            write_model_card: !self.no_write_model_card,
            ..MergeOptions::default()
        })
    }
}

/// What `yibuild merge` is given besides the config and the output folder.
pub struct DropInOptions {
    /// How to merge and what to write.
    pub merge: MergeOptions,
    /// `--allow-crimes`: merge models of different architectures or tensor
    /// layouts (sets the configuration's `allow_crimes`).
    pub allow_crimes: bool,
    /// Where and how Hub models are fetched.
    pub hub: HubConfig,
}

/// `yibuild merge CONFIG OUT`: resolves every model reference (a local folder
/// or a Hub id), checks the inputs before any weight is downloaded or read,
/// and merges into `out`. `log` gets progress notes; lines that start with
/// `warning: ` are warnings.
pub fn merge_command(
    config_path: &Path,
    out: &Path,
    opts: &DropInOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut config = merge::parse_config(config_path, &text)?;
    config.allow_crimes |= opts.allow_crimes;
    // A merge the inputs cannot make is bad input (exit 2), named by the config.
    let refused = |cause| InputError::File {
        path: config_path.to_owned(),
        cause,
    };
    merge::check_output_folder(out).map_err(|cause| InputError::File {
        path: out.to_owned(),
        cause,
    })?;
    let config_dir = config_path.parent().unwrap_or(Path::new("."));
    let mut models = BTreeMap::new();
    let mut hub = Vec::new();
    for r in config.referenced_models() {
        if let Some(dir) = merge::local_model(&r.name, config_dir) {
            models.insert(r.name.clone(), dir);
        } else if let Some(spec) = parse_hub(&r.name) {
            hub.push(Source {
                name: r.name.clone(),
                spec,
                span: r.span,
            });
        } else {
            return Err(InputError::Model {
                name: r.name.clone(),
                cause: anyhow::anyhow!(
                    "no such local directory, and not a Hugging Face Hub id \
                     (org/name or org/name@revision)"
                ),
            }
            .into());
        }
    }
    if !hub.is_empty() {
        let scratch = scratch_folder(out);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        let fetched = fetch_hub_models(&config, hub, &models, &scratch, opts, &refused, log);
        std::fs::remove_dir_all(&scratch).ok();
        models.extend(fetched?);
    } else {
        merge::preflight(&config, &models, opts.merge.seed).map_err(refused)?;
    }
    merge::merge_to_folder(&config, &models, out, &opts.merge, log)
}

/// The folder beside `out` that holds the Hub pins and pre-flight views.
fn scratch_folder(out: &Path) -> PathBuf {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map_or("merge".into(), |n| n.to_string_lossy());
    parent.join(format!(".{name}.yibuild-hub-{}", std::process::id()))
}

/// Pins the Hub models, checks the whole merge against their headers (and
/// the local models; a failed check is made an input error by `refused`),
/// then downloads their weights. Returns each Hub model's
/// snapshot folder.
fn fetch_hub_models(
    config: &MergeConfig,
    hub: Vec<Source>,
    local: &BTreeMap<String, PathBuf>,
    scratch: &Path,
    opts: &DropInOptions,
    refused: &dyn Fn(anyhow::Error) -> InputError,
    log: &(dyn Fn(&str) + Sync),
) -> Result<BTreeMap<String, PathBuf>> {
    let names: Vec<String> = hub.iter().map(|s| s.name.clone()).collect();
    // A recipe of sources only, whose directory (where `yibuild.lock` goes)
    // is the scratch folder.
    let recipe = Recipe {
        name: "merge".to_owned(),
        file: PathBuf::new(),
        dir: scratch.to_path_buf(),
        text: String::new(),
        card: serde_json::Map::new(),
        sources: hub,
        steps: Vec::new(),
        default: Vec::new(),
        matrices: Vec::new(),
    };
    let note = |name: &str, line: &str| log(&format!("{name}: {line}"));
    let fetch = HubFetch::resolve(&recipe, &names, &opts.hub, &note).map_err(InputError::Hub)?;
    let mut views = local.clone();
    views.extend(
        fetch
            .preflight_views(&scratch.join("views"))
            .map_err(InputError::Hub)?,
    );
    merge::preflight(config, &views, opts.merge.seed).map_err(refused)?;
    fetch.fetch_weights(&note)?;
    Ok(fetch
        .sources
        .iter()
        .map(|(name, pinned)| (name.clone(), pinned.snapshot()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sizes_read_as_mergekit_parse_kmb_does() {
        assert_eq!(parse_shard_size("5B"), Ok(5_000_000_000));
        assert_eq!(parse_shard_size("1b"), Ok(1_000_000_000));
        assert_eq!(parse_shard_size("500M"), Ok(500_000_000));
        assert_eq!(parse_shard_size("20k"), Ok(20_000));
        assert_eq!(parse_shard_size("12345"), Ok(12_345));
        assert_eq!(parse_shard_size("5G"), Ok(5_000_000_000));
        assert_eq!(parse_shard_size("0"), Ok(u64::MAX));
        for bad in ["", "B", "1.5B", "-1", "5GiB", "5T", "99999999999999B"] {
            let err = parse_shard_size(bad).unwrap_err();
            assert!(err.contains("is not a shard size"), "{bad}: {err}");
        }
    }

    #[test]
    fn ignored_flags_are_named_once_with_their_reason() {
        let args = MergekitArgs {
            lazy_unpickle: true,
            async_write: true,
            trust_remote_code: true,
            ..Default::default()
        };
        assert_eq!(
            args.ignored_note().unwrap(),
            "ignoring --lazy-unpickle, --async-write (yibuild streams memory-mapped tensors in \
             chunks within --mem-budget on the CPU and writes shards as it goes); \
             --trust-remote-code (yibuild runs no code from model repositories)"
        );
        assert_eq!(MergekitArgs::default().ignored_note(), None);
    }

    #[test]
    fn output_flags_become_merge_options_and_pickles_are_refused() {
        let args = MergekitArgs {
            out_shard_size: Some(1_000),
            random_seed: Some(9),
            num_threads: Some(3),
            no_copy_tokenizer: true,
            no_write_model_card: true,
            ..Default::default()
        };
        let o = args.merge_options(8, 1 << 30).unwrap();
        assert_eq!(
            (
                o.max_shard_size,
                o.seed,
                o.threads,
                o.copy_tokenizer,
                o.write_model_card
            ),
            (1_000, 9, 3, false, false)
        );
        let d = MergekitArgs::default().merge_options(8, 1 << 30).unwrap();
        assert_eq!(
            (d.threads, d.copy_tokenizer, d.write_model_card),
            (8, true, true)
        );
        let pickles = MergekitArgs {
            no_safe_serialization: true,
            ..Default::default()
        };
        let err = pickles.merge_options(1, 1).unwrap_err();
        assert!(err.to_string().contains("safetensors only"), "{err}");
    }
}
