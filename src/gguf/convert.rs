//! Hugging Face Llama-family model folder → GGUF plan: the llama.cpp
//! metadata from `config.json`, the HF → GGUF tensor names, their shapes
//! checked against the config, and which rows the Q/K permutation moves.
//!
//! Supported: `LlamaForCausalLM` (Llama, Yi-Llama, Mistral-as-Llama),
//! `MistralForCausalLM` and `YiForCausalLM` as architecture `llama`;
//! `Qwen2ForCausalLM` as `qwen2` (attention biases, no permutation).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::file::Value;
use crate::fs::files::read_json;
use crate::hf::config::{ConfigFile, DecoderConfig, RopeScaling};
use crate::tensor::ModelTensors;

/// The llama.cpp architecture a model converts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: rotary in adjacent pairs, so Q/K rows are permuted.
    Llama,
    /// `qwen2`: NeoX rotary (no permutation), q/k/v biases.
    Qwen2,
}

impl Arch {
    /// The `general.architecture` string and metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

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
            Some("LlamaForCausalLM" | "MistralForCausalLM" | "YiForCausalLM") => Arch::Llama,
            Some("Qwen2ForCausalLM") => Arch::Qwen2,
            Some(other) => bail!(
                "{}: architecture `{other}` cannot be converted to GGUF by yibuild \
                 (supported: LlamaForCausalLM, MistralForCausalLM, YiForCausalLM, Qwen2ForCausalLM)",
                path.display()
            ),
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
            RopeScaling::Longrope { .. } => {
                refuse("has per-dimension factors that llama.cpp's llama and qwen2 architectures do not read")?
            }
        }
        Ok((HParams { arch, config }, raw))
    }

    /// The `<arch>.*` and `general.architecture` keys, the same keys and
    /// values llama.cpp's `convert_hf_to_gguf.py` writes (its `TextModel` and
    /// `LlamaModel` `set_gguf_parameters`, with the config loaded by
    /// transformers ≥ 4.45, which gives every Llama config a `head_dim`):
    ///
    /// * both: context/embedding/feed-forward length, block and head counts,
    ///   `rope.freq_base` (from either layout), the RMS epsilon, and the rope
    ///   scaling keys: `linear` → type + factor; `yarn` → type, factor,
    ///   original context length, and `yarn_attn_factor`, `yarn_beta_fast`,
    ///   `yarn_beta_slow` when the config writes them; `dynamic` → none.
    /// * `llama` adds `vocab_size`, `rope.dimension_count` and
    ///   `attention.key_length` / `value_length`; `qwen2` writes the latter
    ///   two only when config.json has `head_dim`.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let a = self.arch.name();
        let c = &self.config;
        let u = |key: &str, v: usize| (format!("{a}.{key}"), Value::U32(v as u32));
        let f = |key: &str, v: f64| (format!("{a}.{key}"), Value::F32(v as f32));
        let mut kv = vec![
            ("general.architecture".to_owned(), Value::String(a.into())),
            u("context_length", c.max_positions),
            u("embedding_length", c.hidden),
            u("block_count", c.layers),
            u("feed_forward_length", c.intermediate),
            u("attention.head_count", c.heads),
            u("attention.head_count_kv", c.kv_heads),
            f("rope.freq_base", c.rope_theta),
            f("attention.layer_norm_rms_epsilon", c.rms_eps),
        ];
        if self.arch == Arch::Llama {
            kv.push(u("rope.dimension_count", c.head_dim));
            kv.push(u("vocab_size", c.vocab));
        }
        if self.arch == Arch::Llama || c.head_dim_explicit {
            kv.push(u("attention.key_length", c.head_dim));
            kv.push(u("attention.value_length", c.head_dim));
        }
        let scaling_type = |t: &str| {
            (
                format!("{a}.rope.scaling.type"),
                Value::String(t.to_owned()),
            )
        };
        match &c.rope_scaling {
            RopeScaling::Linear { factor } => {
                kv.push(scaling_type("linear"));
                kv.push(f("rope.scaling.factor", *factor));
            }
            RopeScaling::Yarn(y) => {
                kv.push(scaling_type("yarn"));
                kv.push(f("rope.scaling.factor", y.factor));
                kv.push(u(
                    "rope.scaling.original_context_length",
                    y.original_max_positions,
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

/// One tensor of the output: where it comes from and how it is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// HF (safetensors) name.
    pub source: String,
    /// Dimensions in ggml order (`ne[0]` = row length).
    pub ne: Vec<u64>,
    /// For attn_q/attn_k of `llama`: the head count whose rows are permuted.
    pub permute_heads: Option<usize>,
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

/// Maps every tensor of `model` to its GGUF name and checks its shape against
/// the config. Tensors keep the model's file order; rotary caches are dropped.
pub fn plan_tensors(hp: &HParams, model: &ModelTensors) -> Result<Vec<PlannedTensor>> {
    let dir = model.dir().display();
    let c = &hp.config;
    let (e, ff, v) = (c.hidden, c.intermediate, c.vocab);
    let (q, kv) = (c.q_dim(), c.kv_dim());
    let mut out = Vec::new();
    for hf in model.names() {
        if hf.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        let info = model.require(hf)?;
        let (name, shape, permute, layer): (String, Vec<usize>, Option<usize>, Option<usize>) =
            match hf.as_str() {
                "model.embed_tokens.weight" => ("token_embd.weight".into(), vec![v, e], None, None),
                "model.norm.weight" => ("output_norm.weight".into(), vec![e], None, None),
                "lm_head.weight" => ("output.weight".into(), vec![v, e], None, None),
                other => {
                    let Some(rest) = other.strip_prefix("model.layers.") else {
                        bail!(
                            "{dir}: tensor `{other}` has no GGUF name for architecture {}",
                            hp.arch.name()
                        );
                    };
                    let (idx, part) = rest.split_once('.').unwrap_or((rest, ""));
                    let layer: usize = idx
                    .parse()
                    .ok()
                    .filter(|l| *l < c.layers)
                    .with_context(|| format!("{dir}: tensor `{other}` names layer `{idx}` but config.json declares {} layers", c.layers))?;
                    let permute_q = (hp.arch == Arch::Llama).then_some(c.heads);
                    let permute_k = (hp.arch == Arch::Llama).then_some(c.kv_heads);
                    let (short, shape, permute) = match part {
                        "input_layernorm.weight" => ("attn_norm.weight", vec![e], None),
                        "post_attention_layernorm.weight" => ("ffn_norm.weight", vec![e], None),
                        "self_attn.q_proj.weight" => ("attn_q.weight", vec![q, e], permute_q),
                        "self_attn.k_proj.weight" => ("attn_k.weight", vec![kv, e], permute_k),
                        "self_attn.v_proj.weight" => ("attn_v.weight", vec![kv, e], None),
                        "self_attn.o_proj.weight" => ("attn_output.weight", vec![e, q], None),
                        "self_attn.q_proj.bias" => ("attn_q.bias", vec![q], permute_q),
                        "self_attn.k_proj.bias" => ("attn_k.bias", vec![kv], permute_k),
                        "self_attn.v_proj.bias" => ("attn_v.bias", vec![kv], None),
                        "mlp.gate_proj.weight" => ("ffn_gate.weight", vec![ff, e], None),
                        "mlp.up_proj.weight" => ("ffn_up.weight", vec![ff, e], None),
                        "mlp.down_proj.weight" => ("ffn_down.weight", vec![e, ff], None),
                        _ => bail!(
                            "{dir}: tensor `{other}` has no GGUF name for architecture {}",
                            hp.arch.name()
                        ),
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
        out.push(PlannedTensor {
            name,
            source: hf.clone(),
            ne,
            permute_heads: permute,
            layer,
        });
    }
    let attn_v = out
        .iter()
        .filter(|t| t.name.ends_with("attn_v.weight"))
        .count();
    if attn_v != c.layers || !out.iter().any(|t| t.name == "token_embd.weight") {
        bail!(
            "{dir}: config.json declares {} layers; expected token_embd and {} attn_v tensors, \
             found {attn_v} attn_v tensors",
            c.layers,
            c.layers,
        );
    }
    Ok(out)
}
