//! The Llama-family model description the forward passes need: hyperparameters
//! from `config.json` (read by [`crate::hf::config`]), the rotary
//! frequency tables they imply, and [`WeightSource`], the one interface through
//! which a backend reads weights by Hugging Face tensor name.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Result};

use crate::hf::config::{ConfigFile, DecoderConfig};
use crate::tensor::ModelTensors;

/// Architectures whose forward pass is the Llama one (RMSNorm, rotate-half
/// RoPE, GQA attention without biases, SiLU-gated MLP).
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "YiForCausalLM"];

pub use crate::hf::config::RopeScaling;

/// The hyperparameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `architectures[0]`.
    pub architecture: String,
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `head_dim`.
    pub head_dim: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `rms_norm_eps`.
    pub rms_eps: f32,
    /// The rotary base (`rope_theta` of either config layout).
    pub rope_theta: f64,
    /// The rotary scaling (`rope_scaling` or `rope_parameters`).
    pub rope_scaling: RopeScaling,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `tie_word_embeddings`: the output head is the embedding.
    pub tie_embeddings: bool,
    /// The attention window of sliding-attention layers, when any has one.
    pub sliding_window: Option<usize>,
}

impl LlamaConfig {
    /// Reads `config.json` of a model folder (either transformers layout),
    /// refusing architectures whose forward pass differs from Llama's.
    pub fn from_dir(dir: &Path) -> Result<LlamaConfig> {
        LlamaConfig::from_file(&ConfigFile::read(dir)?)
    }

    /// [`LlamaConfig::from_dir`] for an already read file.
    pub fn from_file(file: &ConfigFile) -> Result<LlamaConfig> {
        let architecture = file.architecture()?.unwrap_or("(none)");
        if !SUPPORTED_ARCHITECTURES.contains(&architecture) {
            bail!(
                "{}: unsupported architecture `{architecture}`: the eval step runs Llama-family \
                 decoders only ({})",
                file.path().display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            );
        }
        LlamaConfig::from_decoder(file.decoder()?)
    }

    /// The eval view of validated hyperparameters, refusing what the forward
    /// pass does not implement (biases, activations other than SiLU).
    pub fn from_decoder(d: DecoderConfig) -> Result<LlamaConfig> {
        let file = d.path.display();
        for (flag, set) in [
            ("attention_bias", d.attention_bias),
            ("mlp_bias", d.mlp_bias),
        ] {
            if set {
                bail!(
                    "{file}: `{flag}: true` is not supported (Llama-family linears have no bias)"
                );
            }
        }
        if let Some(act) = d.hidden_act.as_deref().filter(|a| *a != "silu") {
            bail!("{file}: `hidden_act: {act}` is not supported (expected silu)");
        }
        Ok(LlamaConfig {
            architecture: d.architecture,
            hidden: d.hidden,
            layers: d.layers,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            intermediate: d.intermediate,
            vocab: d.vocab,
            rms_eps: d.rms_eps as f32,
            rope_theta: d.rope_theta,
            rope_scaling: d.rope_scaling,
            max_positions: d.max_positions,
            tie_embeddings: d.tie_embeddings,
            sliding_window: d.sliding_window,
        })
    }

    /// Width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The rotary inverse frequencies (`head_dim / 2` of them) and the factor
    /// cos/sin are multiplied by, for a window of `seq_len` positions (only
    /// dynamic and longrope scaling depend on it).
    pub fn rope_frequencies(&self, seq_len: usize) -> (Vec<f64>, f64) {
        let d = self.head_dim as f64;
        let base_freqs = |base: f64| -> Vec<f64> {
            (0..self.head_dim / 2)
                .map(|i| 1.0 / base.powf(2.0 * i as f64 / d))
                .collect()
        };
        match &self.rope_scaling {
            RopeScaling::None => (base_freqs(self.rope_theta), 1.0),
            &RopeScaling::Linear { factor } => (
                base_freqs(self.rope_theta)
                    .into_iter()
                    .map(|f| f / factor)
                    .collect(),
                1.0,
            ),
            &RopeScaling::Dynamic { factor } => {
                let mut base = self.rope_theta;
                if seq_len > self.max_positions {
                    let grow = factor * seq_len as f64 / self.max_positions as f64 - (factor - 1.0);
                    base *= grow.powf(d / (d - 2.0));
                }
                (base_freqs(base), 1.0)
            }
            &RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                let old = original_max_positions as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let freqs = base_freqs(self.rope_theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            RopeScaling::Yarn(yarn) => {
                let (base, factor) = (self.rope_theta, yarn.factor);
                let correction_dim = |rotations: f64| {
                    d * (yarn.original_max_positions as f64
                        / (rotations * 2.0 * std::f64::consts::PI))
                        .ln()
                        / (2.0 * base.ln())
                };
                let low = correction_dim(yarn.beta_fast()).floor().max(0.0);
                let mut high = correction_dim(yarn.beta_slow()).ceil().min(d - 1.0);
                if low == high {
                    high += 0.001;
                }
                let freqs = base_freqs(base)
                    .into_iter()
                    .enumerate()
                    .map(|(i, extrapolated)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        extrapolated / factor * (1.0 - keep) + extrapolated * keep
                    })
                    .collect();
                (freqs, yarn.attention_factor())
            }
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                original_max_positions,
                attention_factor,
            } => {
                let ext = if seq_len > *original_max_positions {
                    long_factor
                } else {
                    short_factor
                };
                let freqs = base_freqs(self.rope_theta)
                    .into_iter()
                    .zip(ext)
                    .map(|(f, e)| f / e)
                    .collect();
                (freqs, *attention_factor)
            }
        }
    }
}

/// The embedding rows of a batch's tokens, one `hidden`-wide row per token,
/// read through `weights` (both backends start a forward pass here).
pub fn embed_tokens(
    weights: &dyn WeightSource,
    cfg: &LlamaConfig,
    batch: &super::Batch,
) -> Result<Vec<f32>> {
    let hidden = cfg.hidden;
    let mut h = vec![0.0f32; batch.rows() * hidden];
    for (i, t) in batch.tokens().enumerate() {
        let t = t as usize;
        if t >= cfg.vocab {
            bail!(
                "token id {t} is outside the model's vocabulary of {}",
                cfg.vocab
            );
        }
        weights.read_rows(
            "model.embed_tokens.weight",
            t..t + 1,
            &mut h[i * hidden..(i + 1) * hidden],
        )?;
    }
    Ok(h)
}

/// Read access to a model's weights by Hugging Face tensor name
/// (`model.layers.0.self_attn.q_proj.weight`), decoded to `f32` a block of
/// rows at a time, so backends never need a whole model in `f32`.
///
/// Formats other than safetensors (GGUF) implement this by mapping names and
/// undoing any row permutation their converter applied.
pub trait WeightSource: Sync {
    /// `(rows, row_len)` of a matrix, or `(len, 1)` for a vector; `None` if absent.
    fn shape(&self, name: &str) -> Option<(usize, usize)>;

    /// Decodes rows `rows` of `name` into `out` (`rows.len() * row_len` values).
    fn read_rows(&self, name: &str, rows: Range<usize>, out: &mut [f32]) -> Result<()>;

    /// What the weights are stored as, for results (`bfloat16`, `Q8_0`, ...).
    fn storage(&self) -> String;
}

impl WeightSource for ModelTensors {
    fn shape(&self, name: &str) -> Option<(usize, usize)> {
        let info = self.info(name)?;
        Some((info.rows(), info.row_len()))
    }

    fn read_rows(&self, name: &str, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        Ok(self.read_rows_into(name, rows, out)?)
    }

    fn storage(&self) -> String {
        let mut kinds: Vec<String> = self
            .names()
            .iter()
            .filter_map(|n| self.info(n))
            .map(|i| i.dtype.torch_name().to_owned())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds.join("+")
    }
}

/// The tensor names of layer `l`, in Hugging Face spelling.
pub fn layer_tensor(l: usize, what: &str) -> String {
    format!("model.layers.{l}.{what}.weight")
}

/// Checks that `weights` holds every tensor `cfg` needs with the right shape,
/// so a forward pass never fails half-way. Layers are checked one at a time
/// and nothing is allocated per layer, so a config claiming more layers than
/// the weights hold fails at the first missing one, however large the claim.
pub fn check_weights(cfg: &LlamaConfig, weights: &dyn WeightSource) -> Result<()> {
    let (h, q, kv, ff, v) = (
        cfg.hidden,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate,
        cfg.vocab,
    );
    let check = |name: &str, shape: (usize, usize)| -> Result<()> {
        match weights.shape(name) {
            None => bail!("tensor `{name}` is missing"),
            Some(found) if found != shape => {
                bail!("tensor `{name}` has shape {found:?}, the config implies {shape:?}")
            }
            Some(_) => Ok(()),
        }
    };
    check("model.embed_tokens.weight", (v, h))?;
    check("model.norm.weight", (h, 1))?;
    if !cfg.tie_embeddings {
        check("lm_head.weight", (v, h))?;
    }
    for l in 0..cfg.layers {
        if weights.shape(&layer_tensor(l, "input_layernorm")).is_none() && l > 0 {
            bail!(
                "the config declares {} layers but the weights hold {l} \
                 (`{}` is missing)",
                cfg.layers,
                layer_tensor(l, "input_layernorm")
            );
        }
        for (what, shape) in [
            ("input_layernorm", (h, 1)),
            ("post_attention_layernorm", (h, 1)),
            ("self_attn.q_proj", (q, h)),
            ("self_attn.k_proj", (kv, h)),
            ("self_attn.v_proj", (kv, h)),
            ("self_attn.o_proj", (h, q)),
            ("mlp.gate_proj", (ff, h)),
            ("mlp.up_proj", (ff, h)),
            ("mlp.down_proj", (h, ff)),
        ] {
            check(&layer_tensor(l, what), shape)?;
        }
    }
    if weights
        .shape(&layer_tensor(cfg.layers, "input_layernorm"))
        .is_some()
    {
        bail!(
            "the config declares {} layers but the weights hold more (`{}` exists)",
            cfg.layers,
            layer_tensor(cfg.layers, "input_layernorm")
        );
    }
    Ok(())
}

/// The output head's tensor name: `lm_head.weight`, or the embedding when tied.
pub fn lm_head_name(cfg: &LlamaConfig) -> &'static str {
    if cfg.tie_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as Json};

    fn from_json(cfg: &Json) -> Result<LlamaConfig> {
        LlamaConfig::from_file(&ConfigFile::from_json(
            Path::new("config.json"),
            cfg.clone(),
        )?)
    }

    fn base() -> Json {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
               "vocab_size": 320, "max_position_embeddings": 4096, "rope_theta": 10000.0})
    }

    #[test]
    fn rejects_unsupported_architecture() {
        let mut cfg = base();
        cfg["architectures"] = json!(["GPT2LMHeadModel"]);
        let err = from_json(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("unsupported architecture `GPT2LMHeadModel`"),
            "{err}"
        );
    }

    #[test]
    fn rope_variants_follow_transformers() {
        let plain = from_json(&base()).unwrap();
        let (f, scale) = plain.rope_frequencies(100);
        assert_eq!(f.len(), 8);
        assert_eq!((f[0], scale), (1.0, 1.0));
        assert!((f[1] - 10000f64.powf(-2.0 / 16.0)).abs() < 1e-15);

        let mut cfg = base();
        cfg["rope_scaling"] = json!({"type": "linear", "factor": 4.0});
        let lin = from_json(&cfg).unwrap().rope_frequencies(100).0;
        assert_eq!(lin[1], f[1] / 4.0);

        cfg["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        let dynamic = from_json(&cfg).unwrap();
        assert_eq!(dynamic.rope_frequencies(4096).0, f);
        let base2 = 10000.0 * (2.0f64 * 8192.0 / 4096.0 - 1.0).powf(16.0 / 14.0);
        assert!((dynamic.rope_frequencies(8192).0[1] - base2.powf(-2.0 / 16.0)).abs() < 1e-15);

        cfg["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let l3 = from_json(&cfg).unwrap().rope_frequencies(10).0;
        // wavelength 2π < 64/4 is kept; the lowest frequency (wavelength > 64) is divided.
        assert_eq!(l3[0], f[0]);
        assert_eq!(l3[7], f[7] / 8.0);

        cfg["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 1024});
        let (y, att) = from_json(&cfg).unwrap().rope_frequencies(10);
        assert!((att - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        assert_eq!(y[0], f[0]);
        assert!((y[7] - f[7] / 4.0).abs() < 1e-18);

        cfg["rope_scaling"] = json!({"rope_type": "longrope", "original_max_position_embeddings": 1024,
            "short_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0],
            "long_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 8.0]});
        let long = from_json(&cfg).unwrap();
        let (short, att) = long.rope_frequencies(1024);
        assert_eq!((short[0], short[7]), (f[0], f[7] / 2.0));
        assert!((att - (1.0 + 4f64.ln() / 1024f64.ln()).sqrt()).abs() < 1e-15);
        assert_eq!(long.rope_frequencies(1025).0[7], f[7] / 8.0);

        cfg["rope_scaling"] = json!({"type": "su", "factor": 4.0});
        let err = from_json(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("`su`, which yibuild does not understand"),
            "{err}"
        );
    }
}
