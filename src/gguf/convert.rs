//! Hugging Face model folder → GGUF plan: the llama.cpp metadata from
//! `config.json`, the HF → GGUF tensor names, their shapes checked against
//! the config, and the byte transforms (Q/K permutation, Gemma's norm + 1,
//! Phi-3's generated LongRoPE factor tensors). What each architecture maps
//! to is in [`super::arch`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

pub use super::arch::Arch;
use super::file::Value;
use crate::fs::files::read_json;
use crate::hf::config::{ConfigFile, DecoderConfig, RopeScaling};
use crate::tensor::ModelTensors;

/// The hyperparameters llama.cpp needs: the validated `config.json` (either
/// transformers layout) and the architecture it converts to.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    /// Target architecture.
    pub arch: Arch,
    /// The decoder hyperparameters.
    pub config: DecoderConfig,
}

impl HParams {
    /// Reads and checks `config.json` of the model folder `dir`, refusing
    /// architectures and rotary scalings llama.cpp would run differently
    /// from transformers. Returns the raw document too (the tokenizer
    /// metadata reads its special-token ids).
    pub fn read(dir: &Path) -> Result<(HParams, Json)> {
        let path = dir.join("config.json");
        let raw = read_json(&path)?;
        let file = ConfigFile::from_json(&path, raw.clone())?;
        let arch = match file.architecture()? {
            Some(class) => Arch::from_hf(class, &path)?,
            None => bail!("{}: no `architectures` entry", path.display()),
        };
        let config = file.decoder()?;
        let refuse = |why: &str| -> Result<()> {
            bail!(
                "{}: rope_type `{}` {why}; yibuild refuses to write a GGUF llama.cpp would run differently",
                path.display(),
                config.rope_scaling.name()
            )
        };
        match &config.rope_scaling {
            RopeScaling::None | RopeScaling::Linear { .. } | RopeScaling::Yarn(_) => {}
            // transformers changes nothing up to max_position_embeddings, the
            // context the GGUF declares; llama.cpp has no dynamic scaling.
            RopeScaling::Dynamic { .. } => {}
            RopeScaling::Llama3 { .. } => {
                refuse("needs a generated `rope_freqs` tensor, which yibuild does not write yet")?
            }
            RopeScaling::Longrope { .. } if arch == Arch::Phi3 => {}
            RopeScaling::Longrope { .. } => refuse(&format!(
                "has per-dimension factors that llama.cpp's {} architecture does not read",
                arch.name()
            ))?,
        }
        if config.partial_rotary_factor != 1.0 && arch != Arch::Phi3 {
            bail!(
                "{}: `partial_rotary_factor` {} is only converted for Phi-3 models; llama.cpp's {} \
                 architecture rotates whole heads",
                path.display(),
                config.partial_rotary_factor,
                arch.name()
            );
        }
        Ok((HParams { arch, config }, raw))
    }

    /// Rotary dimensions as the converter computes them: `head_dim` (Llama:
    /// `hidden / heads` unless `head_dim` is written), and for Phi-3
    /// `int(partial_rotary_factor × hidden) // heads`.
    fn rope_dims(&self) -> usize {
        let c = &self.config;
        match self.arch {
            Arch::Phi3 => (c.partial_rotary_factor * c.hidden as f64) as usize / c.heads,
            _ => c.head_dim,
        }
    }

    /// The `<arch>.*` and `general.architecture` keys, in the order and with
    /// the values llama.cpp's `convert_hf_to_gguf.py` writes them (see
    /// [`super::arch`] for the version):
    ///
    /// * `llama`: context/embedding/feed-forward length, block and head
    ///   counts, rope base, RMS epsilon, rope scaling, `rope.dimension_count`,
    ///   `vocab_size`, key/value length (`LlamaModel`).
    /// * `qwen2`, `qwen3`, `gemma3`: `TextModel`'s generic keys (block count
    ///   first, rope scaling of the global layers, `rope.freq_base`, for
    ///   Gemma 3 `rope.freq_base_swa`, epsilon, key/value length when
    ///   config.json writes `head_dim`); Gemma 3 adds
    ///   `final_logit_softcapping` when set and `attention.sliding_window`.
    /// * `gemma2`: no rotary key at all, key/value length, both soft-capping
    ///   values and `attention.sliding_window`.
    /// * `phi3`: `rope.scaling.original_context_length`, the partial
    ///   `rope.dimension_count`, `attention.sliding_window` (0 when none) and,
    ///   with LongRoPE factors, `rope.scaling.attn_factor`
    ///   `sqrt(1 + ln(s) / ln(original))` for `s = context / original` > 1.
    ///   No `rope.scaling.type`: Phi3MiniModel does not write one.
    pub fn metadata(&self) -> Result<Vec<(String, Value)>> {
        let a = self.arch.name();
        let c = &self.config;
        let path = c.path.display();
        let u = |key: &str, v: usize| (format!("{a}.{key}"), Value::U32(v as u32));
        let f = |key: &str, v: f64| (format!("{a}.{key}"), Value::F32(v as f32));
        let mut kv = vec![("general.architecture".to_owned(), Value::String(a.into()))];
        // LlamaModel's and Gemma2Model's first six keys, in their order.
        let sizes = [
            u("context_length", c.max_positions),
            u("embedding_length", c.hidden),
            u("block_count", c.layers),
            u("feed_forward_length", c.intermediate),
            u("attention.head_count", c.heads),
            u("attention.head_count_kv", c.kv_heads),
        ];
        let window = || {
            c.sliding_window.with_context(|| {
                format!("{path}: {a} needs `sliding_window` (llama.cpp's attention.sliding_window)")
            })
        };
        match self.arch {
            Arch::Llama => {
                kv.extend(sizes);
                kv.extend([
                    f("rope.freq_base", c.rope_theta),
                    f("attention.layer_norm_rms_epsilon", c.rms_eps),
                    u("rope.dimension_count", c.head_dim),
                    u("vocab_size", c.vocab),
                    u("attention.key_length", c.head_dim),
                    u("attention.value_length", c.head_dim),
                ]);
                kv.extend(self.rope_scaling());
            }
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => {
                kv.extend([
                    u("block_count", c.layers),
                    u("context_length", c.max_positions),
                    u("embedding_length", c.hidden),
                    u("feed_forward_length", c.intermediate),
                    u("attention.head_count", c.heads),
                    u("attention.head_count_kv", c.kv_heads),
                ]);
                kv.extend(self.rope_scaling());
                kv.push(f("rope.freq_base", c.rope_theta));
                if let Some(local) = c.rope_local_theta {
                    kv.push(f("rope.freq_base_swa", local));
                }
                kv.push(f("attention.layer_norm_rms_epsilon", c.rms_eps));
                if c.head_dim_explicit {
                    kv.push(u("attention.key_length", c.head_dim));
                    kv.push(u("attention.value_length", c.head_dim));
                }
                if self.arch == Arch::Gemma3 {
                    if let Some(cap) = c.final_logit_softcapping {
                        kv.push(f("final_logit_softcapping", cap));
                    }
                    kv.push(u("attention.sliding_window", window()?));
                }
            }
            Arch::Gemma2 => {
                let cap = |v: Option<f64>, key: &str| {
                    v.with_context(|| format!("{path}: gemma2 needs `{key}`"))
                };
                kv.extend(sizes);
                kv.extend([
                    f("attention.layer_norm_rms_epsilon", c.rms_eps),
                    u("attention.key_length", c.head_dim),
                    u("attention.value_length", c.head_dim),
                    f(
                        "attn_logit_softcapping",
                        cap(c.attn_logit_softcapping, "attn_logit_softcapping")?,
                    ),
                    f(
                        "final_logit_softcapping",
                        cap(c.final_logit_softcapping, "final_logit_softcapping")?,
                    ),
                    u("attention.sliding_window", window()?),
                ]);
            }
            Arch::Phi3 => {
                let RopeScaling::Longrope {
                    original_max_positions,
                    ..
                } = &c.rope_scaling
                else {
                    bail!(
                        "{path}: phi3 needs LongRoPE settings with `original_max_position_embeddings` \
                         (found rope_type `{}`)",
                        c.rope_scaling.name()
                    );
                };
                let original = *original_max_positions;
                kv.extend([
                    u("context_length", c.max_positions),
                    u("rope.scaling.original_context_length", original),
                    u("embedding_length", c.hidden),
                    u("feed_forward_length", c.intermediate),
                    u("block_count", c.layers),
                    u("attention.head_count", c.heads),
                    u("attention.head_count_kv", c.kv_heads),
                    f("attention.layer_norm_rms_epsilon", c.rms_eps),
                    u("rope.dimension_count", self.rope_dims()),
                    f("rope.freq_base", c.rope_theta),
                    u("attention.sliding_window", c.sliding_window.unwrap_or(0)),
                ]);
                let scale = c.max_positions as f64 / original as f64;
                let attn = if scale > 1.0 {
                    (1.0 + scale.ln() / (original as f64).ln()).sqrt()
                } else {
                    1.0
                };
                kv.push(f("rope.scaling.attn_factor", attn));
            }
        }
        Ok(kv)
    }

    /// `TextModel`'s rope scaling keys: `linear` → type + factor; `yarn` →
    /// type, factor, original context length, and `yarn_attn_factor`,
    /// `yarn_beta_fast`, `yarn_beta_slow` when the config writes them;
    /// `dynamic` → none.
    fn rope_scaling(&self) -> Vec<(String, Value)> {
        let a = self.arch.name();
        let f = |key: &str, v: f64| (format!("{a}.{key}"), Value::F32(v as f32));
        let scaling_type = |t: &str| {
            (
                format!("{a}.rope.scaling.type"),
                Value::String(t.to_owned()),
            )
        };
        let mut kv = Vec::new();
        match &self.config.rope_scaling {
            RopeScaling::Linear { factor } => {
                kv.push(scaling_type("linear"));
                kv.push(f("rope.scaling.factor", *factor));
            }
            RopeScaling::Yarn(y) => {
                kv.push(scaling_type("yarn"));
                kv.push(f("rope.scaling.factor", y.factor));
                kv.push((
                    format!("{a}.rope.scaling.original_context_length"),
                    Value::U32(y.original_max_positions as u32),
                ));
                for (key, value) in [
                    ("rope.scaling.yarn_attn_factor", y.attention_factor),
                    ("rope.scaling.yarn_beta_fast", y.beta_fast),
                    ("rope.scaling.yarn_beta_slow", y.beta_slow),
                ] {
                    if let Some(v) = value {
                        kv.push(f(key, v));
                    }
                }
            }
            _ => {}
        }
        kv
    }
}

/// Where a tensor's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A tensor of the model's safetensors, by name.
    Hf(String),
    /// Values the converter generates from config.json (Phi-3's LongRoPE
    /// factors), with the key they come from.
    Generated(&'static str, Vec<f32>),
}

/// One tensor of the output: where it comes from and how it is laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// Where the values come from.
    pub source: Source,
    /// Dimensions in ggml order (`ne[0]` = row length).
    pub ne: Vec<u64>,
    /// For attn_q/attn_k of `llama`: the head count whose rows are permuted.
    pub permute_heads: Option<usize>,
    /// Added to every value after reading (Gemma's norms: 1).
    pub shift: f32,
    /// Block index for `blk.N.*` tensors.
    pub layer: Option<usize>,
}

impl PlannedTensor {
    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.ne[0] as usize
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.ne[1..].iter().product::<u64>() as usize
    }

    /// The source tensor's name, or the config key generated values come from.
    pub fn source_name(&self) -> &str {
        match &self.source {
            Source::Hf(name) => name,
            Source::Generated(key, _) => key,
        }
    }

    /// The source row that becomes output row `r` (the Q/K permutation:
    /// within each head, rows `[first half | second half]` are interleaved).
    pub fn source_row(&self, r: usize) -> usize {
        match self.permute_heads {
            None => r,
            Some(heads) => {
                let hd = self.rows() / heads;
                let (h, w) = (r / hd, r % hd);
                h * hd + (w % 2) * (hd / 2) + w / 2
            }
        }
    }
}

/// Phi-3's `rope_factors_long.weight` and `rope_factors_short.weight`: the
/// LongRoPE factors as F32 vectors, which the converter writes before the
/// model's own tensors; their length must be half the rotary dimensions.
fn generated_tensors(hp: &HParams) -> Result<Vec<PlannedTensor>> {
    let c = &hp.config;
    let RopeScaling::Longrope {
        short_factor,
        long_factor,
        ..
    } = &c.rope_scaling
    else {
        return Ok(Vec::new());
    };
    let half = hp.rope_dims() / 2;
    if long_factor.len() != half || short_factor.len() != half {
        bail!(
            "{}: LongRoPE factors must have {half} values (rotary dimensions / 2), found {} long and {} short",
            c.path.display(),
            long_factor.len(),
            short_factor.len()
        );
    }
    let tensor = |name: &str, key: &'static str, values: &[f64]| PlannedTensor {
        name: name.to_owned(),
        source: Source::Generated(key, values.iter().map(|v| *v as f32).collect()),
        ne: vec![half as u64],
        permute_heads: None,
        shift: 0.0,
        layer: None,
    };
    Ok(vec![
        tensor("rope_factors_long.weight", "long_factor", long_factor),
        tensor("rope_factors_short.weight", "short_factor", short_factor),
    ])
}

/// Maps every tensor of `model` to its GGUF name and checks its shape against
/// the config. Tensors keep the model's file order after any generated ones;
/// rotary caches (and Gemma 2's `lm_head`) are dropped as the converter does.
pub fn plan_tensors(hp: &HParams, model: &ModelTensors) -> Result<Vec<PlannedTensor>> {
    let dir = model.dir().display();
    let c = &hp.config;
    let arch = hp.arch;
    let (e, v) = (c.hidden, c.vocab);
    let no_name = |hf: &str| {
        anyhow::anyhow!(
            "{dir}: tensor `{hf}` has no GGUF name for architecture {}",
            arch.name()
        )
    };
    let mut out = generated_tensors(hp)?;
    for hf in model.names() {
        if hf.ends_with("rotary_emb.inv_freq") || (hf == "lm_head.weight" && arch.drops_lm_head()) {
            continue;
        }
        let info = model.require(hf)?;
        let (name, shape, permute, layer): (String, Vec<usize>, Option<usize>, Option<usize>) =
            match hf.as_str() {
                "model.embed_tokens.weight" => ("token_embd.weight".into(), vec![v, e], None, None),
                "model.norm.weight" => ("output_norm.weight".into(), vec![e], None, None),
                "lm_head.weight" => ("output.weight".into(), vec![v, e], None, None),
                other => {
                    let rest = other
                        .strip_prefix("model.layers.")
                        .ok_or_else(|| no_name(other))?;
                    let (idx, part) = rest.split_once('.').unwrap_or((rest, ""));
                    let layer: usize = idx
                        .parse()
                        .ok()
                        .filter(|l| *l < c.layers)
                        .with_context(|| format!("{dir}: tensor `{other}` names layer `{idx}` but config.json declares {} layers", c.layers))?;
                    let (short, rule) = arch.layer_tensor(part).ok_or_else(|| no_name(other))?;
                    let shape = match rule(c) {
                        (n, 0) => vec![n],
                        (rows, cols) => vec![rows, cols],
                    };
                    let permute = match short {
                        "attn_q.weight" | "attn_q.bias" if arch.permutes_qk() => Some(c.heads),
                        "attn_k.weight" | "attn_k.bias" if arch.permutes_qk() => Some(c.kv_heads),
                        _ => None,
                    };
                    (format!("blk.{layer}.{short}"), shape, permute, Some(layer))
                }
            };
        if shape.len() == 1 && permute.is_some() {
            bail!("{dir}: `{hf}`: attention biases of llama-architecture models are not supported");
        }
        if info.shape != shape {
            bail!(
                "{dir}: tensor `{hf}` has shape {:?} but config.json implies {shape:?}",
                info.shape
            );
        }
        let ne: Vec<u64> = if shape.len() == 1 {
            vec![shape[0] as u64]
        } else {
            shape.iter().rev().map(|&d| d as u64).collect()
        };
        let shift = if hf.ends_with("norm.weight") {
            arch.norm_shift()
        } else {
            0.0
        };
        out.push(PlannedTensor {
            name,
            source: Source::Hf(hf.clone()),
            ne,
            permute_heads: permute,
            shift,
            layer,
        });
    }
    let attention = out
        .iter()
        .filter(|t| t.name.ends_with("attn_v.weight") || t.name.ends_with("attn_qkv.weight"))
        .count();
    if attention != c.layers || !out.iter().any(|t| t.name == "token_embd.weight") {
        bail!(
            "{dir}: config.json declares {} layers; expected token_embd and {} attn_v (or attn_qkv) \
             tensors, found {attention}",
            c.layers,
            c.layers,
        );
    }
    Ok(out)
}
