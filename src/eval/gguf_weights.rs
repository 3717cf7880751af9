//! GGUF files as a [`WeightSource`]: llama.cpp tensor names mapped back to
//! Hugging Face ones, the Q/K row permutation of the converter undone, rows
//! dequantized on demand, and the hyperparameters read from `llama.*` metadata.
//!
//! The converter reorders the output rows of `q_proj`/`k_proj` inside each
//! head from rotate-half to adjacent pairs: GGUF row `h·hd + 2i + s` holds HF
//! row `h·hd + s·hd/2 + i` (see the GGUF reference notes, section 2.4).

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::model::{LlamaConfig, RopeScaling, WeightSource};
use crate::gguf::{dequantize, GgufFile, TensorEntry};
use crate::hf::config::Yarn;

/// A GGUF model read through its memory map.
pub struct GgufWeights {
    file: GgufFile,
    head_dim: usize,
}

/// How an HF tensor is stored in GGUF: its name and whether its rows are
/// permuted per head.
fn gguf_name(hf: &str) -> Option<(String, bool)> {
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
    let part = part.strip_suffix(".weight")?;
    let (gguf, permuted) = match part {
        "input_layernorm" => ("attn_norm", false),
        "self_attn.q_proj" => ("attn_q", true),
        "self_attn.k_proj" => ("attn_k", true),
        "self_attn.v_proj" => ("attn_v", false),
        "self_attn.o_proj" => ("attn_output", false),
        "post_attention_layernorm" => ("ffn_norm", false),
        "mlp.gate_proj" => ("ffn_gate", false),
        "mlp.up_proj" => ("ffn_up", false),
        "mlp.down_proj" => ("ffn_down", false),
        _ => return None,
    };
    Some((format!("blk.{layer}.{gguf}.weight"), permuted))
}

/// The GGUF row holding HF row `r` of a per-head permuted projection.
fn permuted_row(r: usize, head_dim: usize) -> usize {
    let (head, within) = (r / head_dim, r % head_dim);
    let half = head_dim / 2;
    let (s, i) = (within / half, within % half);
    head * head_dim + 2 * i + s
}

impl GgufWeights {
    /// Opens `path` and reads a Llama configuration from its metadata.
    pub fn open(path: &Path) -> Result<(GgufWeights, LlamaConfig)> {
        let file = GgufFile::open(path).with_context(|| format!("{}", path.display()))?;
        let cfg = config(&file).with_context(|| format!("{}", path.display()))?;
        Ok((
            GgufWeights {
                file,
                head_dim: cfg.head_dim,
            },
            cfg,
        ))
    }

    fn entry(&self, hf: &str) -> Result<(&TensorEntry, bool)> {
        let (name, permuted) =
            gguf_name(hf).with_context(|| format!("no GGUF name for tensor `{hf}`"))?;
        let entry = self
            .file
            .tensor(&name)
            .with_context(|| format!("GGUF tensor `{name}` is missing"))?;
        Ok((entry, permuted))
    }
}

/// The hyperparameters in a GGUF's `llama.*` metadata, checked the way the
/// config.json reader checks them (counts positive, heads a multiple of the
/// key/value heads) and against the tensors the file actually holds.
fn config(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = file
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("(none)");
    if arch != "llama" {
        bail!("unsupported GGUF architecture `{arch}`: the eval step runs llama models only");
    }
    if file.tensor("rope_freqs.weight").is_some() {
        bail!("GGUF with `rope_freqs.weight` (llama3 rope scaling) is not supported; evaluate the Hugging Face folder instead");
    }
    let u = |key: &str| -> Result<Option<usize>> {
        match file.get(&format!("llama.{key}")) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .with_context(|| format!("metadata `llama.{key}` is not an integer")),
        }
    };
    let f = |key: &str| -> Result<Option<f64>> {
        match file.get(&format!("llama.{key}")) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => bail!("metadata `llama.{key}` is not a finite number"),
            },
        }
    };
    let req = |key: &str| -> Result<usize> {
        match u(key)? {
            None => bail!("metadata `llama.{key}` is missing"),
            Some(0) => bail!("metadata `llama.{key}` is 0; it must be at least 1"),
            Some(n) => Ok(n),
        }
    };
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = match u("attention.head_count_kv")? {
        Some(0) => bail!("metadata `llama.attention.head_count_kv` is 0; it must be at least 1"),
        Some(n) => n,
        None => heads,
    };
    if heads % kv_heads != 0 {
        bail!("metadata `llama.attention.head_count` ({heads}) is not a multiple of `llama.attention.head_count_kv` ({kv_heads})");
    }
    let head_dim = u("rope.dimension_count")?.unwrap_or(hidden / heads);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        bail!("the head dimension is {head_dim}; rotary embeddings need an even, positive one");
    }
    let layers = req("block_count")?;
    let present = file
        .tensors
        .iter()
        .filter(|t| t.desc.name.starts_with("blk.") && t.desc.name.ends_with(".attn_norm.weight"))
        .count();
    if present != layers {
        bail!("metadata `llama.block_count` is {layers} but the file holds {present} blocks");
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
            .with_context(|| format!("metadata `llama.{key}` is missing or not positive"))
    };
    let rope_scaling = match file.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: scaling_f("rope.scaling.factor")?,
        },
        Some("yarn") => {
            if f("rope.scaling.yarn_ext_factor")?.is_some_and(|e| e != 1.0) {
                bail!(
                    "metadata `llama.rope.scaling.yarn_ext_factor` other than 1 is not supported"
                );
            }
            RopeScaling::Yarn(Yarn {
                factor: scaling_f("rope.scaling.factor")?,
                original_max_positions: u("rope.scaling.original_context_length")?
                    .filter(|n| *n > 0)
                    .unwrap_or(max_positions),
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
        Some(t) => bail!("metadata `llama.rope.freq_base` is {t}; it must be positive"),
        // llama.cpp's own default when the key is absent.
        None => 10000.0,
    };
    Ok(LlamaConfig {
        architecture: "llama (GGUF)".to_owned(),
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        intermediate: req("feed_forward_length")?,
        vocab,
        rms_eps: f("attention.layer_norm_rms_epsilon")?
            .filter(|e| *e > 0.0)
            .context(
                "metadata `llama.attention.layer_norm_rms_epsilon` is missing or not positive",
            )? as f32,
        rope_theta,
        rope_scaling,
        max_positions,
        tie_embeddings: file.tensor("output.weight").is_none(),
        sliding_window: None,
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
            gguf_name("model.layers.3.self_attn.k_proj.weight"),
            Some(("blk.3.attn_k.weight".to_owned(), true))
        );
        assert_eq!(gguf_name("model.layers.3.mlp.experts.weight"), None);
    }
}
