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
use crate::steps::files::read_json;
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

/// The hyperparameters llama.cpp needs, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    /// Target architecture.
    pub arch: Arch,
    /// `max_position_embeddings`.
    pub context_length: u64,
    /// `hidden_size`.
    pub n_embd: usize,
    /// `num_hidden_layers`.
    pub n_layer: usize,
    /// `intermediate_size`.
    pub n_ff: usize,
    /// `num_attention_heads`.
    pub n_head: usize,
    /// `num_key_value_heads` (defaults to `n_head`).
    pub n_head_kv: usize,
    /// `head_dim` (defaults to `n_embd / n_head`).
    pub head_dim: usize,
    /// `rope_theta` (default 10000).
    pub rope_theta: f64,
    /// `rms_norm_eps`.
    pub rms_eps: f64,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `rope_scaling`: type, factor, original context length.
    pub rope_scaling: Option<(String, f64, Option<u64>)>,
}

fn req_usize(config: &Json, key: &str, path: &Path) -> Result<usize> {
    config
        .get(key)
        .and_then(Json::as_u64)
        .map(|v| v as usize)
        .with_context(|| format!("{}: missing or non-integer `{key}`", path.display()))
}

impl HParams {
    /// Reads and checks `config.json` of the model folder `dir`.
    pub fn read(dir: &Path) -> Result<(HParams, Json)> {
        let path = dir.join("config.json");
        let config = read_json(&path)?;
        let archs: Vec<&str> = config
            .get("architectures")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let arch = match archs.first().copied() {
            Some("LlamaForCausalLM" | "MistralForCausalLM" | "YiForCausalLM") => Arch::Llama,
            Some("Qwen2ForCausalLM") => Arch::Qwen2,
            Some(other) => bail!(
                "{}: architecture `{other}` cannot be converted to GGUF by yibuild \
                 (supported: LlamaForCausalLM, MistralForCausalLM, YiForCausalLM, Qwen2ForCausalLM)",
                path.display()
            ),
            None => bail!("{}: no `architectures` entry", path.display()),
        };
        let n_embd = req_usize(&config, "hidden_size", &path)?;
        let n_head = req_usize(&config, "num_attention_heads", &path)?;
        let n_head_kv = config
            .get("num_key_value_heads")
            .and_then(Json::as_u64)
            .map_or(n_head, |v| v as usize);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            bail!(
                "{}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}",
                path.display()
            );
        }
        let head_dim = config
            .get("head_dim")
            .and_then(Json::as_u64)
            .map_or(n_embd / n_head, |v| v as usize);
        let rope_scaling = match config.get("rope_scaling") {
            Some(Json::Object(s)) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("");
                match kind {
                    "linear" | "yarn" => Some((
                        kind.to_owned(),
                        s.get("factor").and_then(Json::as_f64).unwrap_or(1.0),
                        s.get("original_max_position_embeddings")
                            .and_then(Json::as_u64),
                    )),
                    "default" | "" => None,
                    other => bail!(
                        "{}: rope_scaling type `{other}` is not supported for GGUF conversion \
                         (supported: linear, yarn)",
                        path.display()
                    ),
                }
            }
            _ => None,
        };
        let hp = HParams {
            arch,
            context_length: req_usize(&config, "max_position_embeddings", &path)? as u64,
            n_embd,
            n_layer: req_usize(&config, "num_hidden_layers", &path)?,
            n_ff: req_usize(&config, "intermediate_size", &path)?,
            n_head,
            n_head_kv,
            head_dim,
            rope_theta: config
                .get("rope_theta")
                .and_then(Json::as_f64)
                .unwrap_or(10000.0),
            rms_eps: config
                .get("rms_norm_eps")
                .and_then(Json::as_f64)
                .with_context(|| format!("{}: missing `rms_norm_eps`", path.display()))?,
            vocab_size: req_usize(&config, "vocab_size", &path)?,
            rope_scaling,
        };
        Ok((hp, config))
    }

    /// The `<arch>.*` and `general.architecture` keys.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let a = self.arch.name();
        let mut kv = vec![
            ("general.architecture".to_owned(), Value::String(a.into())),
            (
                format!("{a}.context_length"),
                Value::U32(self.context_length as u32),
            ),
            (
                format!("{a}.embedding_length"),
                Value::U32(self.n_embd as u32),
            ),
            (format!("{a}.block_count"), Value::U32(self.n_layer as u32)),
            (
                format!("{a}.feed_forward_length"),
                Value::U32(self.n_ff as u32),
            ),
            (
                format!("{a}.attention.head_count"),
                Value::U32(self.n_head as u32),
            ),
            (
                format!("{a}.attention.head_count_kv"),
                Value::U32(self.n_head_kv as u32),
            ),
            (
                format!("{a}.rope.freq_base"),
                Value::F32(self.rope_theta as f32),
            ),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                Value::F32(self.rms_eps as f32),
            ),
            (
                format!("{a}.rope.dimension_count"),
                Value::U32(self.head_dim as u32),
            ),
            (
                format!("{a}.vocab_size"),
                Value::U32(self.vocab_size as u32),
            ),
        ];
        if self.head_dim != self.n_embd / self.n_head {
            kv.push((
                format!("{a}.attention.key_length"),
                Value::U32(self.head_dim as u32),
            ));
            kv.push((
                format!("{a}.attention.value_length"),
                Value::U32(self.head_dim as u32),
            ));
        }
        if let Some((kind, factor, original)) = &self.rope_scaling {
            kv.push((
                format!("{a}.rope.scaling.type"),
                Value::String(kind.clone()),
            ));
            kv.push((
                format!("{a}.rope.scaling.factor"),
                Value::F32(*factor as f32),
            ));
            if let Some(o) = original {
                kv.push((
                    format!("{a}.rope.scaling.original_context_length"),
                    Value::U32(*o as u32),
                ));
            }
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
    let (e, ff, v) = (hp.n_embd, hp.n_ff, hp.vocab_size);
    let (q, kv) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
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
                    .filter(|l| *l < hp.n_layer)
                    .with_context(|| format!("{dir}: tensor `{other}` names layer `{idx}` but the model has {} layers", hp.n_layer))?;
                    let permute_q = (hp.arch == Arch::Llama).then_some(hp.n_head);
                    let permute_k = (hp.arch == Arch::Llama).then_some(hp.n_head_kv);
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
    if attn_v != hp.n_layer || !out.iter().any(|t| t.name == "token_embd.weight") {
        bail!(
            "{dir}: expected token_embd and {} attn_v tensors, found {} attn_v tensors",
            hp.n_layer,
            attn_v
        );
    }
    Ok(out)
}
