//! GGUF files as a [`WeightSource`]: llama.cpp tensor names mapped back to
//! Hugging Face ones, the Q/K row permutation of the `llama` converter
//! undone, rows dequantized on demand, and the hyperparameters read from the
//! `<arch>.*` metadata (`llama`, `qwen2`, `qwen3`, `gemma2`, `gemma3`,
//! `phi3`, as llama.cpp's `convert_hf_to_gguf.py` writes them).
//!
//! The `llama` converter reorders the output rows of `q_proj`/`k_proj` inside
//! each head from rotate-half to adjacent pairs: GGUF row `h·hd + 2i + s`
//! holds HF row `h·hd + s·hd/2 + i` (see the GGUF reference notes, section
//! 2.4). Gemma's converter stores RMSNorm weights with the 1 of `x·(1 + w)`
//! already added, so the config it gives has no norm offset. Phi-3 keeps
//! `attn_qkv` and `ffn_up` (gate and up stacked) fused, as Hugging Face does.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::model::{Activation, ModelConfig, RopeScaling, WeightSource};
use crate::gguf::{dequantize, GgufFile, TensorEntry};
use crate::hf::config::{LayerTypes, Yarn};

/// The llama.cpp architectures this reader understands.
const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"];

/// A GGUF model read through its memory map.
pub struct GgufWeights {
    file: GgufFile,
    arch: String,
    head_dim: usize,
}

/// How an HF tensor is stored in a GGUF of llama.cpp architecture `arch`:
/// its name and whether its rows are permuted per head.
fn gguf_name(arch: &str, hf: &str) -> Option<(String, bool)> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.to_owned(), false));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (part, suffix) = part.rsplit_once('.')?;
    let llama = arch == "llama";
    let gemma = arch.starts_with("gemma");
    let phi3 = arch == "phi3";
    let (gguf, permuted) = match (part, suffix) {
        ("input_layernorm", "weight") => ("attn_norm", false),
        ("post_attention_layernorm", "weight") if gemma => ("post_attention_norm", false),
        ("post_attention_layernorm", "weight") => ("ffn_norm", false),
        ("pre_feedforward_layernorm", "weight") if gemma => ("ffn_norm", false),
        ("post_feedforward_layernorm", "weight") if gemma => ("post_ffw_norm", false),
        ("self_attn.q_norm", "weight") => ("attn_q_norm", false),
        ("self_attn.k_norm", "weight") => ("attn_k_norm", false),
        ("self_attn.qkv_proj", "weight") if phi3 => ("attn_qkv", false),
        ("self_attn.q_proj", _) if !phi3 => ("attn_q", llama),
        ("self_attn.k_proj", _) if !phi3 => ("attn_k", llama),
        ("self_attn.v_proj", _) if !phi3 => ("attn_v", false),
        ("self_attn.o_proj", _) => ("attn_output", false),
        ("mlp.gate_up_proj", "weight") if phi3 => ("ffn_up", false),
        ("mlp.gate_proj", _) if !phi3 => ("ffn_gate", false),
        ("mlp.up_proj", _) if !phi3 => ("ffn_up", false),
        ("mlp.down_proj", _) => ("ffn_down", false),
        _ => return None,
    };
    // Permuted biases are not written by any converter this reads.
    if suffix == "bias" && permuted {
        return None;
    }
    Some((format!("blk.{layer}.{gguf}.{suffix}"), permuted))
}

/// The GGUF row holding HF row `r` of a per-head permuted projection.
fn permuted_row(r: usize, head_dim: usize) -> usize {
    let (head, within) = (r / head_dim, r % head_dim);
    let half = head_dim / 2;
    let (s, i) = (within / half, within % half);
    head * head_dim + 2 * i + s
}

impl GgufWeights {
    /// Opens `path` and reads the model configuration from its metadata.
    pub fn open(path: &Path) -> Result<(GgufWeights, ModelConfig)> {
        let file = GgufFile::open(path).with_context(|| format!("{}", path.display()))?;
        let cfg = config(&file).with_context(|| format!("{}", path.display()))?;
        let arch = cfg.architecture.trim_end_matches(" (GGUF)").to_owned();
        Ok((
            GgufWeights {
                file,
                arch,
                head_dim: cfg.head_dim,
            },
            cfg,
        ))
    }

    fn entry(&self, hf: &str) -> Result<(&TensorEntry, bool)> {
        let (name, permuted) =
            gguf_name(&self.arch, hf).with_context(|| format!("no GGUF name for tensor `{hf}`"))?;
        let entry = self
            .file
            .tensor(&name)
            .with_context(|| format!("GGUF tensor `{name}` is missing"))?;
        Ok((entry, permuted))
    }
}

/// A 1-D F32 tensor of the file (Phi-3's rope factors) as `f64`s.
fn factors(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f64>> {
    let entry = file
        .tensor(name)
        .with_context(|| format!("GGUF tensor `{name}` is missing"))?;
    let n = entry.desc.numel() as usize;
    if n != len {
        bail!("GGUF tensor `{name}` has {n} values; rope.dimension_count / 2 = {len} are needed");
    }
    Ok(dequantize(entry.desc.ty, file.tensor_bytes(entry), n)
        .into_iter()
        .map(f64::from)
        .collect())
}

/// The hyperparameters in a GGUF's `<arch>.*` metadata, checked the way the
/// config.json reader checks them (counts positive, heads a multiple of the
/// key/value heads) and against the tensors the file actually holds. Where
/// llama.cpp fixes a value in code rather than metadata (Gemma's layer
/// pattern, Gemma 3's local rotary base, the attention scale of Gemma's 27B
/// models) this does as llama.cpp does.
fn config(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("(none)");
    if !GGUF_ARCHITECTURES.contains(&arch) {
        bail!(
            "unsupported GGUF architecture `{arch}`: the eval step runs {}",
            GGUF_ARCHITECTURES.join(", ")
        );
    }
    if file.tensor("rope_freqs.weight").is_some() {
        bail!("GGUF with `rope_freqs.weight` (llama3 rope scaling) is not supported; evaluate the Hugging Face folder instead");
    }
    let u = |key: &str| -> Result<Option<usize>> {
        match file.get(&format!("{arch}.{key}")) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .with_context(|| format!("metadata `{arch}.{key}` is not an integer")),
        }
    };
    let f = |key: &str| -> Result<Option<f64>> {
        match file.get(&format!("{arch}.{key}")) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => bail!("metadata `{arch}.{key}` is not a finite number"),
            },
        }
    };
    let req = |key: &str| -> Result<usize> {
        match u(key)? {
            None => bail!("metadata `{arch}.{key}` is missing"),
            Some(0) => bail!("metadata `{arch}.{key}` is 0; it must be at least 1"),
            Some(n) => Ok(n),
        }
    };
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = match u("attention.head_count_kv")? {
        Some(0) => bail!("metadata `{arch}.attention.head_count_kv` is 0; it must be at least 1"),
        Some(n) => n,
        None => heads,
    };
    if heads % kv_heads != 0 {
        bail!("metadata `{arch}.attention.head_count` ({heads}) is not a multiple of `{arch}.attention.head_count_kv` ({kv_heads})");
    }
    let rope_dims = u("rope.dimension_count")?;
    let head_dim = match u("attention.key_length")? {
        Some(k) => k,
        None if arch == "llama" => rope_dims.unwrap_or(hidden / heads),
        None => hidden / heads,
    };
    let rotary_dim = rope_dims.unwrap_or(head_dim);
    if head_dim == 0 || rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
        bail!("the head dimension is {head_dim} with {rotary_dim} rotated; rotary embeddings need an even, positive number no larger than the head");
    }
    let layers = req("block_count")?;
    let present = file
        .tensors
        .iter()
        .filter(|t| t.desc.name.starts_with("blk.") && t.desc.name.ends_with(".attn_norm.weight"))
        .count();
    if present != layers {
        bail!("metadata `{arch}.block_count` is {layers} but the file holds {present} blocks");
    }
    let embd = file
        .tensor("token_embd.weight")
        .context("GGUF tensor `token_embd.weight` is missing")?;
    let vocab = match u("vocab_size")? {
        Some(v) => v,
        None => *embd.desc.ne.get(1).unwrap_or(&0) as usize,
    };
    let max_positions = req("context_length")?;
    let scaling_f = |key: &str| -> Result<f64> {
        f(key)?
            .filter(|x| *x > 0.0)
            .with_context(|| format!("metadata `{arch}.{key}` is missing or not positive"))
    };
    let original = u("rope.scaling.original_context_length")?
        .filter(|n| *n > 0)
        .unwrap_or(max_positions);
    let scaling_type = file
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(|v| v.as_str());
    let rope_scaling = match scaling_type {
        _ if file.tensor("rope_factors_long.weight").is_some() => RopeScaling::Longrope {
            short_factor: factors(file, "rope_factors_short.weight", rotary_dim / 2)?,
            long_factor: factors(file, "rope_factors_long.weight", rotary_dim / 2)?,
            original_max_positions: original,
            attention_factor: scaling_f("rope.scaling.attn_factor")?,
        },
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: scaling_f("rope.scaling.factor")?,
        },
        Some("yarn") => {
            if f("rope.scaling.yarn_ext_factor")?.is_some_and(|e| e != 1.0) {
                bail!(
                    "metadata `{arch}.rope.scaling.yarn_ext_factor` other than 1 is not supported"
                );
            }
            RopeScaling::Yarn(Yarn {
                factor: scaling_f("rope.scaling.factor")?,
                original_max_positions: original,
                beta_fast: f("rope.scaling.yarn_beta_fast")?,
                beta_slow: f("rope.scaling.yarn_beta_slow")?,
                attention_factor: f("rope.scaling.yarn_attn_factor")?,
                mscale: None,
                mscale_all_dim: None,
            })
        }
        Some(other) => bail!("GGUF rope scaling `{other}` is not supported (none, linear, yarn)"),
    };
    let rope_theta = match f("rope.freq_base")? {
        Some(t) if t > 0.0 => t,
        Some(t) => bail!("metadata `{arch}.rope.freq_base` is {t}; it must be positive"),
        // llama.cpp's own default when the key is absent.
        None => 10000.0,
    };
    let gemma = arch.starts_with("gemma");
    // llama.cpp: Gemma 2 slides on even layers, Gemma 3 on all but every
    // sixth; Phi-3 on every layer when a window is written.
    let window = u("attention.sliding_window")?.filter(|w| *w > 0);
    let layer_types = match (arch, window) {
        (_, None) => LayerTypes::Full,
        ("gemma2", _) => LayerTypes::Sliding {
            from: 0,
            full_every: Some(2),
        },
        ("gemma3", _) => LayerTypes::Sliding {
            from: 0,
            full_every: Some(6),
        },
        ("phi3", _) => LayerTypes::Sliding {
            from: 0,
            full_every: None,
        },
        _ => LayerTypes::Full,
    };
    // llama.cpp scales Gemma's 27B models (46 and 62 layers) by the hidden
    // width per head instead of the head dimension.
    let scalar = match (arch, layers) {
        ("gemma2", 46) | ("gemma3", 62) => hidden / heads,
        _ => head_dim,
    };
    let cap =
        |key: &str| -> Result<Option<f32>> { Ok(f(key)?.filter(|c| *c > 0.0).map(|c| c as f32)) };
    Ok(ModelConfig {
        architecture: format!("{arch} (GGUF)"),
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        rotary_dim,
        intermediate: req("feed_forward_length")?,
        vocab,
        rms_eps: f("attention.layer_norm_rms_epsilon")?
            .filter(|e| *e > 0.0)
            .with_context(|| {
                format!(
                    "metadata `{arch}.attention.layer_norm_rms_epsilon` is missing or not positive"
                )
            })? as f32,
        rope_theta,
        rope_scaling,
        rope_local_theta: (arch == "gemma3").then_some(10000.0),
        max_positions,
        tie_embeddings: file.tensor("output.weight").is_none(),
        sliding_window: window,
        layer_types,
        norm_offset: 0.0,
        sandwich_norms: gemma,
        qk_norm: matches!(arch, "qwen3" | "gemma3"),
        embed_scale: gemma.then(|| (hidden as f32).sqrt()),
        attn_scale: 1.0 / (scalar as f32).sqrt(),
        attn_softcap: cap("attn_logit_softcapping")?,
        final_softcap: cap("final_logit_softcapping")?,
        activation: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
    })
}

impl WeightSource for GgufWeights {
    fn shape(&self, name: &str) -> Option<(usize, usize)> {
        let (entry, _) = self.entry(name).ok()?;
        let ne = &entry.desc.ne;
        Some(match ne.len() {
            1 => (ne[0] as usize, 1),
            _ => (ne[1..].iter().product::<u64>() as usize, ne[0] as usize),
        })
    }

    fn read_rows(&self, name: &str, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        let (entry, permuted) = self.entry(name)?;
        let ty = entry.desc.ty;
        let bytes = self.file.tensor_bytes(entry);
        if entry.desc.ne.len() == 1 {
            let all = dequantize(ty, bytes, entry.desc.numel() as usize);
            out.copy_from_slice(&all[rows]);
            return Ok(());
        }
        let row_len = entry.desc.ne[0] as usize;
        let row_bytes = ty
            .bytes_for(row_len)
            .with_context(|| format!("`{name}`: rows of {row_len} are not whole {ty} blocks"))?;
        if !permuted {
            let data = &bytes[rows.start * row_bytes..rows.end * row_bytes];
            out.copy_from_slice(&dequantize(ty, data, rows.len() * row_len));
            return Ok(());
        }
        for (r, o) in rows.zip(out.chunks_mut(row_len)) {
            let g = permuted_row(r, self.head_dim);
            let row = dequantize(ty, &bytes[g * row_bytes..(g + 1) * row_bytes], row_len);
            o.copy_from_slice(&row);
        }
        Ok(())
    }

    fn storage(&self) -> String {
        let mut kinds: Vec<&str> = self.file.tensors.iter().map(|t| t.desc.ty.name()).collect();
        kinds.sort();
        kinds.dedup();
        kinds.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_the_converters_inverse() {
        // The converter: new row h·hd + 2i + s = old row h·hd + s·hd/2 + i.
        let hd = 8;
        let mut converter = vec![0; 2 * hd];
        for h in 0..2 {
            for i in 0..hd / 2 {
                for s in 0..2 {
                    converter[h * hd + 2 * i + s] = h * hd + s * hd / 2 + i;
                }
            }
        }
        for r in 0..2 * hd {
            assert_eq!(converter[permuted_row(r, hd)], r);
        }
        assert_eq!(
            gguf_name("llama", "model.layers.3.self_attn.k_proj.weight"),
            Some(("blk.3.attn_k.weight".to_owned(), true))
        );
        assert_eq!(
            gguf_name("llama", "model.layers.3.mlp.experts.weight"),
            None
        );
        let names = |arch: &str, hf: &str| gguf_name(arch, hf).map(|(n, _)| n);
        assert_eq!(
            names("qwen2", "model.layers.0.self_attn.q_proj.bias").as_deref(),
            Some("blk.0.attn_q.bias")
        );
        assert_eq!(
            names("gemma2", "model.layers.1.post_attention_layernorm.weight").as_deref(),
            Some("blk.1.post_attention_norm.weight")
        );
        assert_eq!(
            names("gemma3", "model.layers.1.pre_feedforward_layernorm.weight").as_deref(),
            Some("blk.1.ffn_norm.weight")
        );
        assert_eq!(
            names("llama", "model.layers.1.post_attention_layernorm.weight").as_deref(),
            Some("blk.1.ffn_norm.weight")
        );
        assert_eq!(
            names("phi3", "model.layers.2.mlp.gate_up_proj.weight").as_deref(),
            Some("blk.2.ffn_up.weight")
        );
        assert_eq!(names("phi3", "model.layers.2.mlp.up_proj.weight"), None);
        assert_eq!(
            names("qwen3", "model.layers.0.self_attn.k_norm.weight").as_deref(),
            Some("blk.0.attn_k_norm.weight")
        );
    }
}
