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
    let u = |key: &str| {
        file.get(&format!("llama.{key}"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    };
    let f = |key: &str| file.get(&format!("llama.{key}")).and_then(|v| v.as_f64());
    let req = |key: &str| u(key).with_context(|| format!("metadata `llama.{key}` is missing"));
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let embd = file
        .tensor("token_embd.weight")
        .context("GGUF tensor `token_embd.weight` is missing")?;
    let vocab = u("vocab_size").unwrap_or(*embd.desc.ne.get(1).unwrap_or(&0) as usize);
    let max_positions = req("context_length")?;
    let rope_scaling = match file.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: f("rope.scaling.factor").context("`llama.rope.scaling.factor` is missing")?,
        },
        Some(other) => bail!("GGUF rope scaling `{other}` is not supported (none, linear)"),
    };
    Ok(LlamaConfig {
        architecture: "llama (GGUF)".to_owned(),
        hidden,
        layers: req("block_count")?,
        heads,
        kv_heads: u("attention.head_count_kv").unwrap_or(heads),
        head_dim: u("rope.dimension_count").unwrap_or(hidden / heads),
        intermediate: req("feed_forward_length")?,
        vocab,
        rms_eps: f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
        rope_theta: f("rope.freq_base").unwrap_or(10000.0),
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
