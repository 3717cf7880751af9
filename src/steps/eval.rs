//! `eval`: perplexity and passkey retrieval of a model, written to
//! `results.json` (see [`crate::eval::results`] for the schema).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{input_ref, Device, InputRef, ParseContext, Reads, Step, StepContext};
use crate::eval::gguf_weights::GgufWeights;
use crate::eval::model::{check_weights, ModelConfig, WeightSource};
use crate::eval::passkey::{passkey, PasskeySpec};
use crate::eval::perplexity::{perplexity, PerplexitySpec, Protocol};
use crate::eval::results::{
    EvalResults, ModelInfo, PerplexitySection, TextInfo, Timing, RESULTS_VERSION,
};
use crate::eval::{open_backend, Backend};
use crate::fs::files::write_json;
use crate::syntax::diag::RecipeError;
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;
use crate::tensor::ModelTensors;

/// Perplexity parameters and the text source they read.
#[derive(Debug, Clone)]
struct PerplexityParams {
    text: InputRef,
    spec: PerplexitySpec,
}

/// An `eval` step.
#[derive(Debug, Clone)]
pub struct Eval {
    model: InputRef,
    tokenizer: Option<InputRef>,
    /// `device:` as written, or `--device` for `auto`.
    requested: Device,
    /// The device that runs the step, resolved at parse time (see
    /// [`crate::eval::resolve_device`]): part of the key, so that a result of
    /// one device is never reused where another was asked for.
    device: Device,
    allow_long_context: bool,
    perplexity: Option<PerplexityParams>,
    passkey: Option<PasskeySpec>,
}

fn device_name(d: Device) -> &'static str {
    match d {
        Device::Auto => "auto",
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
    }
}

/// The longest window (perplexity `context`, passkey length) a recipe may
/// ask for: 16Mi tokens, beyond any released model's context. Longer values
/// are typos that would otherwise try to allocate terabytes.
pub const MAX_WINDOW: u64 = 1 << 24;

/// Passkey trials per length a recipe may ask for.
pub const MAX_TRIALS: u64 = 100_000;

/// Distractor keys per passkey trial a recipe may ask for (there are 90,000
/// five-digit keys; each trial draws distinct ones).
pub const MAX_DISTRACTORS: u64 = 1_000;

/// An optional count between 1 and `max` (named `limit` in the error).
fn bounded(f: &Fields, key: &str, max: u64, limit: &str) -> Result<Option<usize>, RecipeError> {
    let span = || f.opt(key).map_or(f.node().span, |n| n.span);
    match f.opt_u64(key)? {
        Some(0) => Err(f
            .diag()
            .error(span(), format!("`{key}` must be at least 1"))),
        Some(v) if v > max => Err(f.diag().error(
            span(),
            format!("`{key}` is {v}, more than {max} (limit {limit})"),
        )),
        v => Ok(v.map(|v| v as usize)),
    }
}

/// An optional count of at least 1 with no bound beyond `usize`.
fn positive(f: &Fields, key: &str) -> Result<Option<usize>, RecipeError> {
    bounded(f, key, usize::MAX as u64, "usize::MAX")
}

impl Eval {
    /// Parses `{model, device, tokenizer, allow_long_context, perplexity: {text,
    /// context, stride, protocol, max_tokens}, passkey: {lengths, trials, seed,
    /// distractors}}`.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<Eval, RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("eval step `{}`", cx.step),
            &[
                "model",
                "device",
                "tokenizer",
                "allow_long_context",
                "perplexity",
                "passkey",
            ],
        )?;
        f.finish()?;
        let requested = match f.opt_str("device")?.as_deref() {
            None | Some("auto") => Device::Auto,
            Some("cpu") => Device::Cpu,
            Some("cuda") => Device::Cuda,
            Some(other) => {
                return Err(cx.diag.error(
                    f.req("device")?.span,
                    format!("`device` must be auto, cpu or cuda, found `{other}`"),
                ))
            }
        };
        let perplexity = f
            .opt("perplexity")
            .map(|n| parse_perplexity(n, cx))
            .transpose()?;
        let passkey = f.opt("passkey").map(|n| parse_passkey(n, cx)).transpose()?;
        if perplexity.is_none() && passkey.is_none() {
            return Err(cx.diag.error(
                node.span,
                format!(
                    "eval step `{}` measures nothing: add `perplexity` or `passkey`",
                    cx.step
                ),
            ));
        }
        Ok(Eval {
            model: input_ref(cx.diag, f.req("model")?, "model")?,
            tokenizer: f
                .opt("tokenizer")
                .map(|n| Ok(input_ref(cx.diag, n, "tokenizer")?.reading(Reads::TOKENIZER)))
                .transpose()?,
            requested: match requested {
                Device::Auto => cx.device,
                d => d,
            },
            device: crate::eval::resolve_device(requested, cx.device),
            allow_long_context: f.opt_bool("allow_long_context")?.unwrap_or(false),
            perplexity,
            passkey,
        })
    }

    /// The longest window any measurement runs.
    fn longest_window(&self) -> usize {
        let ppl = self.perplexity.as_ref().map_or(0, |p| p.spec.context);
        let pk = self
            .passkey
            .as_ref()
            .and_then(|p| p.lengths.iter().max().copied())
            .unwrap_or(0);
        ppl.max(pk)
    }

    /// Peak memory of the longest window. Weights are mapped, not copied: the
    /// peak is the activations of the longest window (hidden states,
    /// projections, MLP, and the copies the parallel GEMM and attention make)
    /// plus the logits chunk.
    fn window_bytes(&self, cfg: Option<&ModelConfig>) -> u64 {
        let per_row = cfg.map_or(8192 * 24, |c| {
            [
                (6, c.hidden),
                (3, c.q_dim()),
                (2, c.kv_dim()),
                (4, c.intermediate),
            ]
            .iter()
            .fold(0u64, |sum, &(n, d)| {
                sum.saturating_add((d as u64).saturating_mul(n))
            })
        });
        let rows = self.longest_window() as u64 + 64;
        rows.saturating_mul(per_row)
            .saturating_mul(4)
            .saturating_add((128 << 20) + (64 << 20))
    }

    /// Refuses windows the model was not built for, unless overridden, and
    /// windows whose activations cannot fit in this machine's memory.
    fn check_context(&self, cfg: &ModelConfig) -> Result<()> {
        let longest = self.longest_window();
        let need = self.window_bytes(Some(cfg));
        let have = physical_memory();
        if need > have {
            bail!(
                "a window of {longest} tokens needs about {} GiB of memory for activations, \
                 more than this machine's {} GiB",
                need >> 30,
                have >> 30
            );
        }
        if longest > cfg.max_positions && !self.allow_long_context {
            bail!(
                "a window of {longest} tokens exceeds the model's max_position_embeddings ({}); \
                 set `allow_long_context: true` in the eval step to measure it anyway",
                cfg.max_positions
            );
        }
        if let Some(w) = cfg.sliding_window.filter(|&w| longest > w) {
            bail!("a window of {longest} tokens exceeds the model's sliding_window ({w}), which the eval step does not implement");
        }
        Ok(())
    }
}

/// Total physical memory in bytes (`u64::MAX` when the system does not say).
fn physical_memory() -> u64 {
    // SAFETY: sysconf only reads system constants.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page as u64)
}

fn parse_perplexity(node: &Node, cx: &ParseContext) -> Result<PerplexityParams, RecipeError> {
    let f = Fields::new(
        cx.diag,
        node,
        format!("`perplexity` of step `{}`", cx.step),
        &["text", "context", "stride", "protocol", "max_tokens"],
    )?;
    f.finish()?;
    let protocol = match f.opt_str("protocol")? {
        None => Protocol::LlamaCpp,
        Some(name) => Protocol::parse(&name).ok_or_else(|| {
            cx.diag
                .error(
                    f.opt("protocol").map_or(node.span, |n| n.span),
                    format!("unknown perplexity protocol `{name}`"),
                )
                .with_help("expected `llama.cpp` or `strided`")
        })?,
    };
    let stride = bounded(&f, "stride", MAX_WINDOW, "MAX_WINDOW")?;
    if stride.is_some() && protocol == Protocol::LlamaCpp {
        return Err(cx.diag.error(
            f.req("stride")?.span,
            "`stride` applies to the `strided` protocol only",
        ));
    }
    Ok(PerplexityParams {
        text: input_ref(cx.diag, f.req("text")?, "text")?,
        spec: PerplexitySpec {
            protocol,
            context: bounded(&f, "context", MAX_WINDOW, "MAX_WINDOW")?.unwrap_or(512),
            stride,
            max_tokens: positive(&f, "max_tokens")?,
        },
    })
}

fn parse_passkey(node: &Node, cx: &ParseContext) -> Result<PasskeySpec, RecipeError> {
    let f = Fields::new(
        cx.diag,
        node,
        format!("`passkey` of step `{}`", cx.step),
        &["lengths", "trials", "seed", "distractors"],
    )?;
    f.finish()?;
    let lengths_node = f.req("lengths")?;
    let items = match lengths_node.as_seq() {
        Some(items) => items.to_vec(),
        None => vec![lengths_node.clone()],
    };
    let lengths = items
        .iter()
        .map(|n| match n.as_f64() {
            Some(v) if v > MAX_WINDOW as f64 && v.fract() == 0.0 => Err(cx.diag.error(
                n.span,
                format!("passkey length {v} is more than {MAX_WINDOW} tokens (limit MAX_WINDOW)"),
            )),
            Some(v) if v >= 1.0 && v.fract() == 0.0 => Ok(v as usize),
            _ => Err(cx.diag.error(
                n.span,
                "passkey `lengths` must be positive integers (tokens)",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PasskeySpec {
        lengths,
        trials: bounded(&f, "trials", MAX_TRIALS, "MAX_TRIALS")?.unwrap_or(10),
        seed: f.opt_u64("seed")?.unwrap_or(0),
        distractors: bounded(&f, "distractors", MAX_DISTRACTORS, "MAX_DISTRACTORS")?.unwrap_or(9),
    })
}

/// The model's weights, whatever their format: a Hugging Face folder, a
/// `.gguf` file, or a folder holding exactly one `.gguf` (a quantize step's
/// output).
fn open_weights(path: &Path) -> Result<(Box<dyn WeightSource>, ModelConfig, &'static str)> {
    if path.is_dir() && path.join("config.json").is_file() {
        let cfg = ModelConfig::from_dir(path)?;
        let tensors = ModelTensors::open(path)?;
        return Ok((Box::new(tensors), cfg, "safetensors"));
    }
    let gguf = if path.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        found.sort();
        match found.len() {
            1 => found.remove(0),
            0 => bail!(
                "{}: neither a Hugging Face model folder (no config.json) nor a folder with a .gguf file",
                path.display()
            ),
            _ => bail!(
                "{}: several .gguf files ({}); evaluate one quantization per eval step",
                path.display(),
                found
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    } else {
        path.to_path_buf()
    };
    let (weights, cfg) = GgufWeights::open(&gguf)?;
    Ok((Box::new(weights), cfg, "gguf"))
}

/// The tokenizer.json of a model folder or a path to one.
fn tokenizer_file(path: &Path) -> Result<PathBuf> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        bail!(
            "{} has no tokenizer.json; give the eval step `tokenizer: <model or source>`",
            path.display()
        );
    }
    Ok(file)
}

/// The BOS id the tokenizer prepends when encoding with special tokens, if any.
fn bos_id(tok: &tokenizers::Tokenizer) -> Result<Option<u32>> {
    let with = tok
        .encode("a", true)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let without = tok
        .encode("a", false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let (with, without) = (with.get_ids(), without.get_ids());
    Ok((with.len() == without.len() + 1 && with[1..] == *without).then(|| with[0]))
}

impl Step for Eval {
    fn kind(&self) -> &'static str {
        "eval"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<InputRef> {
        // The model's own tokenizer is read only when no other is named.
        let model_reads = match self.tokenizer {
            Some(_) => Reads::MODEL,
            None => Reads::MODEL.union(Reads::TOKENIZER),
        };
        let mut v = vec![self.model.clone().reading(model_reads)];
        v.extend(self.tokenizer.clone());
        v.extend(self.perplexity.as_ref().map(|p| p.text.clone()));
        v
    }

    fn params(&self) -> serde_json::Value {
        json!({
            "model": self.model.name,
            "tokenizer": self.tokenizer.as_ref().map(|t| &t.name),
            "device": device_name(self.device),
            "allow_long_context": self.allow_long_context,
            "perplexity": self.perplexity.as_ref().map(|p| json!({
                "text": p.text.name,
                "protocol": p.spec.protocol.name(),
                "context": p.spec.context,
                "stride": p.spec.stride,
                "max_tokens": p.spec.max_tokens,
            })),
            "passkey": self.passkey.as_ref().map(|p| json!({
                "lengths": p.lengths, "trials": p.trials, "seed": p.seed, "distractors": p.distractors,
            })),
        })
    }

    fn memory_estimate(&self, ctx: &StepContext) -> u64 {
        let cfg = ctx
            .inputs
            .get(&self.model.name)
            .and_then(|m| ModelConfig::from_dir(&m.path).ok());
        self.window_bytes(cfg.as_ref())
    }

    fn preflight(&self, sources: &BTreeMap<String, PathBuf>) -> Result<()> {
        if let Some(path) = sources.get(&self.model.name) {
            if path.join("config.json").is_file() {
                let cfg = ModelConfig::from_dir(path)
                    .with_context(|| format!("model `{}`", self.model.name))?;
                self.check_context(&cfg)
                    .with_context(|| format!("model `{}`", self.model.name))?;
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let started = Instant::now();
        let model = ctx.input(&self.model.name)?;
        let (weights, cfg, format) =
            open_weights(&model.path).with_context(|| format!("model `{}`", self.model.name))?;
        self.check_context(&cfg)
            .with_context(|| format!("model `{}`", self.model.name))?;
        check_weights(&cfg, weights.as_ref())
            .with_context(|| format!("model `{}` ({})", self.model.name, model.path.display()))?;

        let tok_input = self.tokenizer.as_ref().unwrap_or(&self.model);
        let tok_path = tokenizer_file(&ctx.input(&tok_input.name)?.path)?;
        let tok_bytes = std::fs::read(&tok_path)
            .with_context(|| format!("cannot read {}", tok_path.display()))?;
        let tok = tokenizers::Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        let encode = |text: &str| -> Result<Vec<u32>> {
            Ok(tok
                .encode(text, true)
                .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
                .get_ids()
                .to_vec())
        };
        if let (Device::Auto, Device::Cpu, Some(why)) =
            (self.requested, self.device, crate::eval::no_gpu_reason())
        {
            (ctx.log)(&format!("eval: no usable GPU ({why}); running on the CPU"));
        }
        let backend = open_backend(self.device, &cfg, weights.as_ref(), ctx.threads)?;
        let mut timing = Timing {
            load_seconds: started.elapsed().as_secs_f64(),
            device: backend.device(),
            ..Timing::default()
        };

        let perplexity = match &self.perplexity {
            None => None,
            Some(p) => Some(self.run_perplexity(ctx, p, backend.as_ref(), &tok, &mut timing)?),
        };
        let passkey = match &self.passkey {
            None => None,
            Some(spec) => {
                let t = Instant::now();
                let r = passkey(backend.as_ref(), &encode, spec, ctx.log)?;
                timing.passkey_seconds = Some(t.elapsed().as_secs_f64());
                Some(r)
            }
        };
        let results = EvalResults {
            version: RESULTS_VERSION,
            model: ModelInfo {
                name: self.model.name.clone(),
                digest: model.digest.clone(),
                format: format.to_owned(),
                storage: weights.storage(),
                architecture: cfg.architecture.clone(),
                max_position_embeddings: cfg.max_positions,
            },
            tokenizer: TextInfo {
                name: tok_input.name.clone(),
                digest: blake3::hash(&tok_bytes).to_hex().to_string(),
                bytes: tok_bytes.len(),
            },
            device: backend.kind().to_owned(),
            perplexity,
            passkey,
            timing,
        };
        results.check_finite()?;
        write_json(
            &ctx.out_dir.join("results.json"),
            &serde_json::to_value(&results)?,
        )?;
        Ok(())
    }
}

impl Eval {
    fn run_perplexity(
        &self,
        ctx: &StepContext,
        p: &PerplexityParams,
        backend: &dyn Backend,
        tok: &tokenizers::Tokenizer,
        timing: &mut Timing,
    ) -> Result<PerplexitySection> {
        let text_input = ctx.input(&p.text.name)?;
        if !text_input.path.is_file() {
            bail!(
                "perplexity text `{}` ({}) is not a file",
                p.text.name,
                text_input.path.display()
            );
        }
        let bytes = std::fs::read(&text_input.path)
            .with_context(|| format!("cannot read {}", text_input.path.display()))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| anyhow::anyhow!("perplexity text `{}` is not UTF-8 ({e})", p.text.name))?;
        let tokens = tok
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("tokenizing `{}`: {e}", p.text.name))?
            .get_ids()
            .to_vec();
        let t = Instant::now();
        let result = perplexity(backend, &tokens, bos_id(tok)?, &p.spec, ctx.log)
            .with_context(|| format!("perplexity of `{}` on `{}`", self.model.name, p.text.name))?;
        let seconds = t.elapsed().as_secs_f64();
        timing.perplexity_seconds = Some(seconds);
        timing.perplexity_tokens_per_second =
            Some(result.tokens_processed as f64 / seconds.max(1e-9));
        Ok(PerplexitySection {
            text: TextInfo {
                name: p.text.name.clone(),
                digest: text_input.digest.clone(),
                bytes: bytes.len(),
            },
            result,
        })
    }
}
