//! The decoder description the forward passes need: hyperparameters from
//! `config.json` (read by [`crate::hf::config`]) turned into the facts a
//! layer needs (norm style, attention scale and window, rotary tables,
//! activation), and [`WeightSource`], the one interface through which a
//! backend reads weights by Hugging Face tensor name.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Result};

use crate::hf::config::{AttentionKind, ConfigFile, DecoderConfig, LayerTypes};
use crate::tensor::ModelTensors;

/// Architectures the forward pass runs: the Llama family (RMSNorm,
/// rotate-half RoPE, GQA attention, SiLU-gated MLP) and the variations of
/// Qwen2/3, Gemma 2/3 and Phi-3 (see the README's design notes).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "YiForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
];

pub use crate::hf::config::RopeScaling;

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu`: `x·σ(x)`.
    Silu,
    /// `gelu_pytorch_tanh`: GELU with the tanh approximation.
    GeluTanh,
}

/// The hyperparameters of a decoder, as the forward pass uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
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
    /// Dimensions of each head that RoPE rotates (`head_dim ×
    /// partial_rotary_factor`).
    pub rotary_dim: usize,
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
    /// The unscaled rotary base of sliding layers, when it differs (Gemma 3).
    pub rope_local_theta: Option<f64>,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `tie_word_embeddings`: the output head is the embedding.
    pub tie_embeddings: bool,
    /// The attention window of sliding layers, when any layer slides.
    pub sliding_window: Option<usize>,
    /// Per layer: full or sliding attention.
    pub layer_types: LayerTypes,
    /// Added to every stored RMSNorm weight: 1 for Gemma's `x·(1 + w)`
    /// norms as Hugging Face stores them, 0 otherwise (and for GGUF, whose
    /// converter adds the 1).
    pub norm_offset: f32,
    /// Gemma's four norms per layer: the attention and MLP outputs are
    /// normalized before joining the residual stream.
    pub sandwich_norms: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// The factor the embeddings are multiplied by (Gemma: √hidden in the
    /// model's dtype).
    pub embed_scale: Option<f32>,
    /// The factor attention scores are multiplied by.
    pub attn_scale: f32,
    /// Scores become `c·tanh(s/c)` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Logits become `c·tanh(l/c)` (Gemma 2).
    pub final_softcap: Option<f32>,
    /// The MLP activation.
    pub activation: Activation,
}

impl ModelConfig {
    /// Reads `config.json` of a model folder (either transformers layout),
    /// refusing architectures the forward pass does not implement.
    pub fn from_dir(dir: &Path) -> Result<ModelConfig> {
        ModelConfig::from_file(&ConfigFile::read(dir)?)
    }

    /// [`ModelConfig::from_dir`] for an already read file.
    pub fn from_file(file: &ConfigFile) -> Result<ModelConfig> {
        let architecture = file.architecture()?.unwrap_or("(none)");
        if !SUPPORTED_ARCHITECTURES.contains(&architecture) {
            let why = match architecture {
                "Gemma3ForConditionalGeneration" => {
                    " (a vision-language checkpoint; its text model's tensors live under                      `language_model`, which the eval step does not read)"
                }
                "MixtralForCausalLM" | "Qwen2MoeForCausalLM" | "Qwen3MoeForCausalLM" => {
                    " (mixture-of-experts layers are not implemented)"
                }
                _ => "",
            };
            bail!(
                "{}: unsupported architecture `{architecture}`{why}: the eval step runs {}",
                file.path().display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            );
        }
        ModelConfig::from_decoder(file.decoder()?)
    }

    /// The eval view of validated hyperparameters, refusing what the forward
    /// pass does not implement (other activations).
    pub fn from_decoder(d: DecoderConfig) -> Result<ModelConfig> {
        let file = d.path.display();
        let activation = match d.activation.as_deref() {
            Some("silu") => Activation::Silu,
            Some("gelu_pytorch_tanh") => Activation::GeluTanh,
            Some(other) => {
                bail!("{file}: activation `{other}` is not supported (silu, gelu_pytorch_tanh)")
            }
            None => bail!(
                "{file}: `hidden_act` is missing and `{}` has no known default",
                d.architecture
            ),
        };
        let gemma = matches!(
            d.architecture.as_str(),
            "Gemma2ForCausalLM" | "Gemma3ForCausalLM"
        );
        let embed_scale = gemma.then(|| {
            let s = (d.hidden as f32).sqrt();
            match d.dtype.as_deref() {
                Some("bfloat16") => half::bf16::from_f32(s).to_f32(),
                Some("float16") => half::f16::from_f32(s).to_f32(),
                _ => s,
            }
        });
        let scalar = d.query_pre_attn_scalar.unwrap_or(d.head_dim as f64);
        Ok(ModelConfig {
            hidden: d.hidden,
            layers: d.layers,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            rotary_dim: d.rotary_dim(),
            intermediate: d.intermediate,
            vocab: d.vocab,
            rms_eps: d.rms_eps as f32,
            rope_theta: d.rope_theta,
            rope_scaling: d.rope_scaling,
            rope_local_theta: d.rope_local_theta,
            max_positions: d.max_positions,
            tie_embeddings: d.tie_embeddings,
            sliding_window: d.sliding_window,
            layer_types: d.layer_types,
            norm_offset: if gemma { 1.0 } else { 0.0 },
            sandwich_norms: gemma,
            qk_norm: matches!(
                d.architecture.as_str(),
                "Qwen3ForCausalLM" | "Gemma3ForCausalLM"
            ),
            embed_scale,
            attn_scale: (1.0 / scalar.sqrt()) as f32,
            attn_softcap: d.attn_logit_softcapping.map(|c| c as f32),
            final_softcap: d.final_logit_softcapping.map(|c| c as f32),
            activation,
            architecture: d.architecture,
        })
    }

    /// The attention window of layer `l`, if it slides.
    pub fn window(&self, l: usize) -> Option<usize> {
        match self.layer_types.kind(l) {
            AttentionKind::Sliding => self.sliding_window,
            _ => None,
        }
    }

    /// Width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The rotary inverse frequencies of sliding layers with their own base
    /// (unscaled), or `None` when they use the global ones.
    pub fn local_rope_frequencies(&self) -> Option<Vec<f64>> {
        self.rope_local_theta.map(|t| self.base_freqs(t))
    }

    fn base_freqs(&self, base: f64) -> Vec<f64> {
        let d = self.rotary_dim as f64;
        (0..self.rotary_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / d))
            .collect()
    }

    /// The rotary inverse frequencies (`rotary_dim / 2` of them) and the
    /// factor cos/sin are multiplied by, for a window of `seq_len` positions
    /// (only dynamic and longrope scaling depend on it).
    pub fn rope_frequencies(&self, seq_len: usize) -> (Vec<f64>, f64) {
        let d = self.rotary_dim as f64;
        let base_freqs = |base: f64| self.base_freqs(base);
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
    cfg: &ModelConfig,
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
    if let Some(scale) = cfg.embed_scale {
        h.iter_mut().for_each(|x| *x *= scale);
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

/// The bias of a linear of layer `l` (present in Qwen2, or with
/// `attention_bias` / `mlp_bias`).
pub fn layer_bias(l: usize, what: &str) -> String {
    format!("model.layers.{l}.{what}.bias")
}

/// Phi-3's fused projections seen as the separate ones every other
/// architecture stores: `q_proj`/`k_proj`/`v_proj` are row ranges of
/// `qkv_proj`, `gate_proj`/`up_proj` the halves of `gate_up_proj`. Every
/// other name passes through, so the backends know one set of names.
pub struct Unfused<'w> {
    inner: &'w dyn WeightSource,
    q: usize,
    kv: usize,
    ff: usize,
}

impl<'w> Unfused<'w> {
    /// The view of `inner` for a model shaped like `cfg`.
    pub fn new(cfg: &ModelConfig, inner: &'w dyn WeightSource) -> Unfused<'w> {
        Unfused {
            inner,
            q: cfg.q_dim(),
            kv: cfg.kv_dim(),
            ff: cfg.intermediate,
        }
    }

    /// The fused tensor and row range holding `name`, when `name` is a part
    /// of a fused projection that the weights store fused.
    fn part(&self, name: &str) -> Option<(String, Range<usize>)> {
        let (prefix, what) = name
            .rsplit_once(".self_attn.")
            .or(name.rsplit_once(".mlp."))?;
        let (fused, rows) = match what {
            "q_proj.weight" => ("self_attn.qkv_proj", 0..self.q),
            "k_proj.weight" => ("self_attn.qkv_proj", self.q..self.q + self.kv),
            "v_proj.weight" => ("self_attn.qkv_proj", self.q + self.kv..self.q + 2 * self.kv),
            "gate_proj.weight" => ("mlp.gate_up_proj", 0..self.ff),
            "up_proj.weight" => ("mlp.gate_up_proj", self.ff..2 * self.ff),
            _ => return None,
        };
        let fused = format!("{prefix}.{fused}.weight");
        self.inner.shape(&fused).map(|_| (fused, rows))
    }
}

impl WeightSource for Unfused<'_> {
    fn shape(&self, name: &str) -> Option<(usize, usize)> {
        if let Some(shape) = self.inner.shape(name) {
            return Some(shape);
        }
        let (fused, rows) = self.part(name)?;
        let (n, k) = self.inner.shape(&fused)?;
        (n >= rows.end).then_some((rows.len(), k))
    }

    fn read_rows(&self, name: &str, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        if self.inner.shape(name).is_some() {
            return self.inner.read_rows(name, rows, out);
        }
        match self.part(name) {
            Some((fused, part)) => {
                self.inner
                    .read_rows(&fused, part.start + rows.start..part.start + rows.end, out)
            }
            None => self.inner.read_rows(name, rows, out),
        }
    }

    fn storage(&self) -> String {
        self.inner.storage()
    }
}

/// Checks that `weights` (seen through [`Unfused`]) holds every tensor `cfg`
/// needs with the right shape, so a forward pass never fails half-way.
/// Layers are checked one at a time and nothing is allocated per layer, so a
/// config claiming more layers than the weights hold fails at the first
/// missing one, however large the claim. Biases are optional; when present
/// their length is checked.
pub fn check_weights(cfg: &ModelConfig, weights: &dyn WeightSource) -> Result<()> {
    let weights = &Unfused::new(cfg, weights);
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
    let linears = [
        ("self_attn.q_proj", (q, h)),
        ("self_attn.k_proj", (kv, h)),
        ("self_attn.v_proj", (kv, h)),
        ("self_attn.o_proj", (h, q)),
        ("mlp.gate_proj", (ff, h)),
        ("mlp.up_proj", (ff, h)),
        ("mlp.down_proj", (h, ff)),
    ];
    let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
    if cfg.sandwich_norms {
        norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
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
        for what in &norms {
            check(&layer_tensor(l, what), (h, 1))?;
        }
        if cfg.qk_norm {
            check(&layer_tensor(l, "self_attn.q_norm"), (cfg.head_dim, 1))?;
            check(&layer_tensor(l, "self_attn.k_norm"), (cfg.head_dim, 1))?;
        }
        for (what, shape) in linears {
            check(&layer_tensor(l, what), shape)?;
            let bias = layer_bias(l, what);
            if weights.shape(&bias).is_some() {
                check(&bias, (shape.0, 1))?;
            }
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
pub fn lm_head_name(cfg: &ModelConfig) -> &'static str {
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

    fn from_json(cfg: &Json) -> Result<ModelConfig> {
        ModelConfig::from_file(&ConfigFile::from_json(
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
