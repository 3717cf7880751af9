//! The Llama-family model description the forward passes need: hyperparameters
//! from `config.json` (including the `rope_scaling` variants), the rotary
//! frequency tables they imply, and [`WeightSource`], the one interface through
//! which a backend reads weights by Hugging Face tensor name.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use crate::tensor::ModelTensors;

/// Architectures whose forward pass is the Llama one (RMSNorm, rotate-half
/// RoPE, GQA attention without biases, SiLU-gated MLP).
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "YiForCausalLM"];

/// How `rope_scaling` stretches the rotary frequencies for long contexts, with
/// the parameters of each variant as Hugging Face transformers reads them.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Stretch factor.
        factor: f64,
    },
    /// NTK-aware dynamic scaling: the base grows once a window is longer than
    /// `original_max_positions`.
    Dynamic {
        /// Stretch factor.
        factor: f64,
        /// Context the model was trained on.
        original_max_positions: usize,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth
    /// ramp between.
    Llama3 {
        /// Stretch factor.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are fully scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context the model was trained on.
        original_max_positions: usize,
    },
    /// YaRN: per-dimension ramp between interpolation and extrapolation plus an
    /// attention temperature applied to cos/sin.
    Yarn {
        /// Stretch factor.
        factor: f64,
        /// Context the model was trained on.
        original_max_positions: usize,
        /// Rotations above which a dimension is extrapolated.
        beta_fast: f64,
        /// Rotations below which a dimension is interpolated.
        beta_slow: f64,
        /// Multiplier on cos and sin.
        attention_factor: f64,
    },
}

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
    /// `num_key_value_heads` (defaults to `heads`).
    pub kv_heads: usize,
    /// `head_dim` (defaults to `hidden / heads`).
    pub head_dim: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `rms_norm_eps`.
    pub rms_eps: f32,
    /// `rope_theta` (default 10000).
    pub rope_theta: f64,
    /// `rope_scaling`.
    pub rope_scaling: RopeScaling,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `tie_word_embeddings` (default false): the output head is the embedding.
    pub tie_embeddings: bool,
    /// `sliding_window` (Mistral), when set.
    pub sliding_window: Option<usize>,
}

fn get_usize(cfg: &Json, key: &str) -> Option<usize> {
    cfg.get(key).and_then(Json::as_u64).map(|v| v as usize)
}

fn get_f64(cfg: &Json, key: &str) -> Option<f64> {
    cfg.get(key).and_then(Json::as_f64)
}

impl LlamaConfig {
    /// Reads `config.json` of a model folder.
    pub fn from_dir(dir: &Path) -> Result<LlamaConfig> {
        let path = dir.join("config.json");
        let cfg = crate::steps::files::read_json(&path)?;
        LlamaConfig::from_json(&cfg).with_context(|| format!("{}", path.display()))
    }

    /// Reads the hyperparameters from a parsed `config.json`, refusing
    /// architectures whose forward pass differs from Llama's.
    pub fn from_json(cfg: &Json) -> Result<LlamaConfig> {
        let architecture = cfg
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Json::as_str)
            .or_else(|| cfg.get("model_type").and_then(Json::as_str))
            .unwrap_or("(none)")
            .to_owned();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            bail!(
                "unsupported architecture `{architecture}`: the eval step runs Llama-family \
                 decoders only ({})",
                SUPPORTED_ARCHITECTURES.join(", ")
            );
        }
        let req = |key: &str| {
            get_usize(cfg, key)
                .filter(|&v| v > 0)
                .with_context(|| format!("`{key}` is missing or not a positive integer"))
        };
        let hidden = req("hidden_size")?;
        let heads = req("num_attention_heads")?;
        let kv_heads = get_usize(cfg, "num_key_value_heads").unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            bail!("`num_attention_heads` ({heads}) is not a multiple of `num_key_value_heads` ({kv_heads})");
        }
        let head_dim = get_usize(cfg, "head_dim").unwrap_or(hidden / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("head dimension {head_dim} must be even and positive");
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if cfg.get(flag).and_then(Json::as_bool) == Some(true) {
                bail!("`{flag}: true` is not supported (Llama-family linears have no bias)");
            }
        }
        if let Some(act) = cfg.get("hidden_act").and_then(Json::as_str) {
            if act != "silu" {
                bail!("`hidden_act: {act}` is not supported (expected silu)");
            }
        }
        let max_positions = req("max_position_embeddings")?;
        Ok(LlamaConfig {
            architecture,
            hidden,
            layers: req("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            intermediate: req("intermediate_size")?,
            vocab: req("vocab_size")?,
            rms_eps: get_f64(cfg, "rms_norm_eps").unwrap_or(1e-6) as f32,
            rope_theta: get_f64(cfg, "rope_theta").unwrap_or(10000.0),
            rope_scaling: parse_rope_scaling(cfg.get("rope_scaling"), max_positions)?,
            max_positions,
            tie_embeddings: cfg
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            sliding_window: get_usize(cfg, "sliding_window"),
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
    /// dynamic scaling depends on it).
    pub fn rope_frequencies(&self, seq_len: usize) -> (Vec<f64>, f64) {
        let d = self.head_dim as f64;
        let base_freqs = |base: f64| -> Vec<f64> {
            (0..self.head_dim / 2)
                .map(|i| 1.0 / base.powf(2.0 * i as f64 / d))
                .collect()
        };
        match self.rope_scaling {
            RopeScaling::None => (base_freqs(self.rope_theta), 1.0),
            RopeScaling::Linear { factor } => (
                base_freqs(self.rope_theta)
                    .into_iter()
                    .map(|f| f / factor)
                    .collect(),
                1.0,
            ),
            RopeScaling::Dynamic {
                factor,
                original_max_positions,
            } => {
                let mut base = self.rope_theta;
                if seq_len > original_max_positions {
                    let grow =
                        factor * seq_len as f64 / original_max_positions as f64 - (factor - 1.0);
                    base *= grow.powf(d / (d - 2.0));
                }
                (base_freqs(base), 1.0)
            }
            RopeScaling::Llama3 {
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
            RopeScaling::Yarn {
                factor,
                original_max_positions,
                beta_fast,
                beta_slow,
                attention_factor,
            } => {
                let base = self.rope_theta;
                let correction_dim = |rotations: f64| {
                    d * (original_max_positions as f64 / (rotations * 2.0 * std::f64::consts::PI))
                        .ln()
                        / (2.0 * base.ln())
                };
                let low = correction_dim(beta_fast).floor().max(0.0);
                let mut high = correction_dim(beta_slow).ceil().min(d - 1.0);
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
                (freqs, attention_factor)
            }
        }
    }
}

fn parse_rope_scaling(node: Option<&Json>, max_positions: usize) -> Result<RopeScaling> {
    let Some(obj) = node.filter(|n| !n.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let factor = || {
        get_f64(obj, "factor")
            .filter(|f| *f > 0.0)
            .context("`rope_scaling.factor` is missing or not positive")
    };
    let original = get_usize(obj, "original_max_position_embeddings");
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor()?,
            original_max_positions: original.unwrap_or(max_positions),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get_f64(obj, "low_freq_factor").unwrap_or(1.0),
            high_freq_factor: get_f64(obj, "high_freq_factor").unwrap_or(4.0),
            original_max_positions: original.context(
                "`rope_scaling.original_max_position_embeddings` is required for llama3",
            )?,
        },
        "yarn" => {
            let factor = factor()?;
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match (
                get_f64(obj, "attention_factor"),
                get_f64(obj, "mscale"),
                get_f64(obj, "mscale_all_dim"),
            ) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                _ => mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original_max_positions: original.unwrap_or(max_positions),
                beta_fast: get_f64(obj, "beta_fast").unwrap_or(32.0),
                beta_slow: get_f64(obj, "beta_slow").unwrap_or(1.0),
                attention_factor,
            }
        }
        other => bail!(
            "`rope_scaling` type `{other}` is not supported (none, linear, dynamic, llama3, yarn)"
        ),
    })
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
        self.read_rows_into(name, rows, out)
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
/// so a forward pass never fails half-way.
pub fn check_weights(cfg: &LlamaConfig, weights: &dyn WeightSource) -> Result<()> {
    let (h, q, kv, ff, v) = (
        cfg.hidden,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate,
        cfg.vocab,
    );
    let mut expected: Vec<(String, (usize, usize))> = vec![
        ("model.embed_tokens.weight".into(), (v, h)),
        ("model.norm.weight".into(), (h, 1)),
    ];
    if !cfg.tie_embeddings {
        expected.push(("lm_head.weight".into(), (v, h)));
    }
    for l in 0..cfg.layers {
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
            expected.push((layer_tensor(l, what), shape));
        }
    }
    for (name, shape) in expected {
        match weights.shape(&name) {
            None => bail!("tensor `{name}` is missing"),
            Some(found) if found != shape => {
                bail!("tensor `{name}` has shape {found:?}, config.json implies {shape:?}")
            }
            Some(_) => {}
        }
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
    use serde_json::json;

    fn base() -> Json {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
               "vocab_size": 320, "max_position_embeddings": 4096, "rope_theta": 10000.0})
    }

    #[test]
    fn rejects_unsupported_architecture() {
        let mut cfg = base();
        cfg["architectures"] = json!(["GPT2LMHeadModel"]);
        let err = LlamaConfig::from_json(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("unsupported architecture `GPT2LMHeadModel`"),
            "{err}"
        );
    }

    #[test]
    fn rope_variants_follow_transformers() {
        let plain = LlamaConfig::from_json(&base()).unwrap();
        let (f, scale) = plain.rope_frequencies(100);
        assert_eq!(f.len(), 8);
        assert_eq!((f[0], scale), (1.0, 1.0));
        assert!((f[1] - 10000f64.powf(-2.0 / 16.0)).abs() < 1e-15);

        let mut cfg = base();
        cfg["rope_scaling"] = json!({"type": "linear", "factor": 4.0});
        let lin = LlamaConfig::from_json(&cfg)
            .unwrap()
            .rope_frequencies(100)
            .0;
        assert_eq!(lin[1], f[1] / 4.0);

        cfg["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        let dynamic = LlamaConfig::from_json(&cfg).unwrap();
        assert_eq!(dynamic.rope_frequencies(4096).0, f);
        let base2 = 10000.0 * (2.0f64 * 8192.0 / 4096.0 - 1.0).powf(16.0 / 14.0);
        assert!((dynamic.rope_frequencies(8192).0[1] - base2.powf(-2.0 / 16.0)).abs() < 1e-15);

        cfg["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let l3 = LlamaConfig::from_json(&cfg).unwrap().rope_frequencies(10).0;
        // wavelength 2π < 64/4 is kept; the lowest frequency (wavelength > 64) is divided.
        assert_eq!(l3[0], f[0]);
        assert_eq!(l3[7], f[7] / 8.0);

        cfg["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 1024});
        let (y, att) = LlamaConfig::from_json(&cfg).unwrap().rope_frequencies(10);
        assert!((att - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        assert_eq!(y[0], f[0]);
        assert!((y[7] - f[7] / 4.0).abs() < 1e-18);

        cfg["rope_scaling"] = json!({"type": "su", "factor": 4.0});
        let err = LlamaConfig::from_json(&cfg).unwrap_err().to_string();
        assert!(err.contains("`su` is not supported"), "{err}");
    }
}
