//! The one reader of a Hugging Face `config.json`.
//!
//! transformers 4 and transformers 5 write the same model differently:
//!
//! | what | transformers 4 | transformers 5 |
//! |---|---|---|
//! | rotary base | top-level `rope_theta` | `rope_parameters.rope_theta` |
//! | rotary scaling | `rope_scaling: {type \| rope_type, factor, ...}` | the same keys inside `rope_parameters` |
//! | storage type | `torch_dtype` | `dtype` |
//! | per-layer attention | implied by the architecture | `layer_types: [full_attention \| sliding_attention, ...]` |
//! | Gemma 3 local rotary base | `rope_local_base_freq` | `rope_parameters.sliding_attention.rope_theta` (then `full_attention` holds the global settings) |
//! | partial rotary | top-level `partial_rotary_factor` | inside `rope_parameters` |
//!
//! Every step that needs a hyperparameter (eval, GGUF conversion, inspect)
//! reads it here, so a file is understood the same way everywhere. A value
//! this reader does not understand (an unknown `rope_type`, a `rope_theta`
//! written as a string, two layouts that disagree) is an error naming the
//! file and the key; a missing key takes a default only where transformers
//! itself defines one for that architecture (see [`ArchDefaults`]).

use std::fmt::Display;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value as Json};

/// Which transformers major version's layout a config.json uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Top-level `rope_theta` / `rope_scaling` (or neither).
    Transformers4,
    /// A `rope_parameters` object.
    Transformers5,
}

/// YaRN scaling as transformers reads it; the `Option` fields keep whether
/// the file gave the value, because llama.cpp's converter writes only those.
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    /// Stretch factor (`factor`, or `max_position_embeddings /
    /// original_max_position_embeddings` when absent, as transformers does).
    pub factor: f64,
    /// Context the model was trained on (`original_max_position_embeddings`,
    /// transformers' default: `max_position_embeddings`).
    pub original_max_positions: usize,
    /// `beta_fast` as written (transformers' default 32).
    pub beta_fast: Option<f64>,
    /// `beta_slow` as written (transformers' default 1).
    pub beta_slow: Option<f64>,
    /// `attention_factor` as written.
    pub attention_factor: Option<f64>,
    /// `mscale` as written (DeepSeek-style attention factor).
    pub mscale: Option<f64>,
    /// `mscale_all_dim` as written.
    pub mscale_all_dim: Option<f64>,
}

impl Yarn {
    /// Rotations above which a dimension is extrapolated.
    pub fn beta_fast(&self) -> f64 {
        self.beta_fast.unwrap_or(32.0)
    }

    /// Rotations below which a dimension is interpolated.
    pub fn beta_slow(&self) -> f64 {
        self.beta_slow.unwrap_or(1.0)
    }

    /// The multiplier on cos and sin: `attention_factor` when given, else
    /// derived from `factor` (and `mscale` / `mscale_all_dim`) as in
    /// transformers' `_compute_yarn_parameters`.
    pub fn attention_factor(&self) -> f64 {
        let mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        match (self.attention_factor, self.mscale, self.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                mscale(self.factor, m) / mscale(self.factor, all)
            }
            _ => mscale(self.factor, 1.0),
        }
    }
}

/// How the rotary frequencies are stretched for long contexts, with the
/// parameters of each `rope_type` transformers implements.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `default`: plain RoPE.
    None,
    /// `linear`: position interpolation, every frequency divided by `factor`.
    Linear {
        /// Stretch factor.
        factor: f64,
    },
    /// `dynamic`: NTK-aware scaling; the base grows once a window is longer
    /// than `max_position_embeddings` (transformers' threshold).
    Dynamic {
        /// Stretch factor.
        factor: f64,
    },
    /// `yarn`.
    Yarn(Yarn),
    /// `llama3` (Llama 3.1): low frequencies divided by `factor`, high ones
    /// kept, a smooth ramp between.
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
    /// `longrope` (Phi-3 style): per-dimension factors, the long set beyond
    /// the original context.
    Longrope {
        /// Factors used up to `original_max_positions` (`head_dim / 2`).
        short_factor: Vec<f64>,
        /// Factors used beyond it (`head_dim / 2`).
        long_factor: Vec<f64>,
        /// Context the model was trained on.
        original_max_positions: usize,
        /// The multiplier on cos and sin (given, or derived as transformers does).
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// The `rope_type` name.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::None => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn(_) => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Longrope { .. } => "longrope",
        }
    }
}

/// The hyperparameters of a decoder-only transformer (Llama, Mistral, Yi,
/// Qwen2/3, Gemma 2/3, Phi-3), validated: counts positive, heads a multiple of key/value heads,
/// numbers finite and in range.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// `architectures[0]` (or `model_type` when there is no list).
    pub architecture: String,
    /// Which layout the file uses.
    pub layout: Layout,
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `head_dim` (transformers' default: `hidden_size // num_attention_heads`).
    pub head_dim: usize,
    /// Whether the file writes `head_dim` itself.
    pub head_dim_explicit: bool,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `rms_norm_eps`.
    pub rms_eps: f64,
    /// The rotary base, from either layout.
    pub rope_theta: f64,
    /// The rotary scaling, from either layout.
    pub rope_scaling: RopeScaling,
    /// `tie_word_embeddings`.
    pub tie_embeddings: bool,
    /// The attention window of the layers that use one; `None` when no layer
    /// slides (see [`DecoderConfig::layer_types`]).
    pub sliding_window: Option<usize>,
    /// Per layer, whether it attends to every earlier token or to the last
    /// `sliding_window` ones: `layer_types` when written, else what the
    /// architecture implies (Mistral and Phi-3: every layer when a window is
    /// set; Qwen2/3: layers from `max_window_layers` on when
    /// `use_sliding_window`; Gemma 2: even layers; Gemma 3: all but every
    /// `sliding_window_pattern`-th; Llama: none).
    pub layer_types: LayerTypes,
    /// Qwen2/3 `use_sliding_window` (false when absent).
    pub use_sliding_window: bool,
    /// Qwen2/3 `max_window_layers`: layers below it never slide.
    pub max_window_layers: Option<usize>,
    /// `attention_bias`.
    pub attention_bias: bool,
    /// `mlp_bias`.
    pub mlp_bias: bool,
    /// `hidden_act`, when written.
    pub hidden_act: Option<String>,
    /// The MLP activation the model runs: Gemma's `hidden_activation`, else
    /// `hidden_act`, else the architecture's default; `None` when neither is
    /// written nor known.
    pub activation: Option<String>,
    /// Gemma's `query_pre_attn_scalar`: attention scores are scaled by its
    /// inverse square root instead of `head_dim`'s.
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2's `attn_logit_softcapping`: scores become `c·tanh(s/c)`.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2's `final_logit_softcapping`: logits become `c·tanh(l/c)`.
    pub final_logit_softcapping: Option<f64>,
    /// The rotary base of sliding layers when it differs from the global one
    /// (Gemma 3's `rope_local_base_freq`, or transformers 5's
    /// `rope_parameters.sliding_attention.rope_theta`); sliding layers never
    /// use [`DecoderConfig::rope_scaling`] then.
    pub rope_local_theta: Option<f64>,
    /// `partial_rotary_factor` (top level or in the rotary settings): the
    /// fraction of each head that is rotated (Phi-4-mini: 0.75).
    pub partial_rotary_factor: f64,
    /// The declared storage type (`dtype` or `torch_dtype`).
    pub dtype: Option<String>,
}

/// Which layers attend through the sliding window, without a list per layer
/// unless the file writes one (a config claiming billions of layers must not
/// allocate for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerTypes {
    /// As written in `layer_types`.
    Listed(Vec<AttentionKind>),
    /// Layers `from..` slide, except those `l` with `(l + 1) % every == 0`
    /// when `full_every` is given (Gemma's global layers).
    Sliding {
        /// The first layer that may slide.
        from: usize,
        /// The period of full-attention layers among them.
        full_every: Option<usize>,
    },
    /// No layer slides.
    Full,
}

impl LayerTypes {
    /// The kind of layer `l`.
    pub fn kind(&self, l: usize) -> AttentionKind {
        let sliding = match self {
            LayerTypes::Listed(kinds) => kinds.get(l) == Some(&AttentionKind::Sliding),
            LayerTypes::Sliding { from, full_every } => {
                l >= *from && full_every.is_none_or(|p| !(l + 1).is_multiple_of(p))
            }
            LayerTypes::Full => false,
        };
        if sliding {
            AttentionKind::Sliding
        } else {
            AttentionKind::Full
        }
    }

    /// How many of the first `layers` layers slide (counted, not listed).
    pub fn sliding_count(&self, layers: usize) -> usize {
        match self {
            LayerTypes::Listed(kinds) => kinds
                .iter()
                .take(layers)
                .filter(|k| **k == AttentionKind::Sliding)
                .count(),
            LayerTypes::Sliding { from, full_every } => {
                let candidates = layers.saturating_sub(*from);
                // Full layers among them: l in from..layers with (l + 1) % p == 0.
                let full = full_every.map_or(0, |p| layers / p - (*from).min(layers) / p);
                candidates - full
            }
            LayerTypes::Full => 0,
        }
    }

    /// Whether any of the first `layers` layers slides.
    fn any(&self, layers: usize) -> bool {
        match self {
            LayerTypes::Listed(kinds) => kinds.contains(&AttentionKind::Sliding),
            // Of two consecutive candidates at least one slides unless every
            // layer is full.
            _ => (0..layers)
                .skip(match self {
                    LayerTypes::Sliding { from, .. } => *from,
                    _ => layers,
                })
                .take(2)
                .any(|l| self.kind(l) == AttentionKind::Sliding),
        }
    }
}

/// Which keys a layer attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Every earlier position (`full_attention`).
    Full,
    /// Positions `q - k < sliding_window` (`sliding_attention`).
    Sliding,
}

impl DecoderConfig {
    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Dimensions of each head that are rotated: `head_dim ×
    /// partial_rotary_factor`, truncated as transformers does.
    pub fn rotary_dim(&self) -> usize {
        rotary_dim(self.head_dim, self.partial_rotary_factor)
    }

    /// Whether layer `l` attends through the sliding window.
    pub fn is_sliding(&self, l: usize) -> bool {
        self.layer_types.kind(l) == AttentionKind::Sliding
    }
}

fn rotary_dim(head_dim: usize, partial: f64) -> usize {
    (head_dim as f64 * partial) as usize
}

/// transformers' own defaults for keys a config.json may leave out, for the
/// architectures whose configuration classes were checked (transformers 5.25
/// `LlamaConfig`, `MistralConfig`, `Qwen2Config`, `Qwen3Config`,
/// `Gemma2Config`, `Gemma3TextConfig`, `Phi3Config`; the 4.x classes agree).
/// For any other architecture a missing key is an error, never a guess.
#[derive(Debug, Clone, Copy)]
struct ArchDefaults {
    /// `rope_theta` when neither layout gives one (the global base for Gemma 3).
    rope_theta: f64,
    /// `rms_norm_eps`.
    rms_eps: f64,
    /// `num_key_value_heads`: `None` means "equal to the head count".
    kv_heads: Option<usize>,
    /// `head_dim`: `None` means `hidden_size / num_attention_heads`.
    head_dim: Option<usize>,
    /// `tie_word_embeddings`.
    tie_embeddings: bool,
    /// `hidden_act` (`hidden_activation` for Gemma).
    activation: &'static str,
    /// `sliding_window` when the key is absent.
    sliding_window: Option<usize>,
    /// Which layers slide when `layer_types` is not written.
    sliding: SlidingRule,
    /// `query_pre_attn_scalar`.
    query_pre_attn_scalar: Option<f64>,
    /// `attn_logit_softcapping` and `final_logit_softcapping`.
    softcapping: (Option<f64>, Option<f64>),
    /// `rope_local_base_freq` (Gemma 3).
    rope_local_theta: Option<f64>,
    /// `original_max_position_embeddings` as a class attribute (Phi-3), which
    /// transformers copies over the rotary settings' own value.
    original_max_positions: Option<usize>,
}

/// How an architecture places sliding layers when `layer_types` is absent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SlidingRule {
    /// Never (Llama ignores `sliding_window`).
    Never,
    /// Every layer when `sliding_window` is set (Mistral, Phi-3).
    All,
    /// Layers `max_window_layers..` when `use_sliding_window` (Qwen2/3).
    Qwen,
    /// Layers `l` with `(l + 1) % pattern != 0` (Gemma 2: 2; Gemma 3:
    /// `sliding_window_pattern`, default 6).
    Pattern(usize),
}

/// What transformers does for architectures yibuild has no class for
/// (Yi's remote code): a window applies to every layer unless
/// `use_sliding_window` is false.
const UNKNOWN_SLIDING: SlidingRule = SlidingRule::All;

fn arch_defaults(architecture: &str) -> Option<ArchDefaults> {
    let llama = ArchDefaults {
        rope_theta: 10000.0,
        rms_eps: 1e-6,
        kv_heads: None,
        head_dim: None,
        tie_embeddings: false,
        activation: "silu",
        sliding_window: None,
        sliding: SlidingRule::Never,
        query_pre_attn_scalar: None,
        softcapping: (None, None),
        rope_local_theta: None,
        original_max_positions: None,
    };
    let gemma2 = ArchDefaults {
        kv_heads: Some(4),
        head_dim: Some(256),
        tie_embeddings: true,
        activation: "gelu_pytorch_tanh",
        sliding_window: Some(4096),
        sliding: SlidingRule::Pattern(2),
        query_pre_attn_scalar: Some(256.0),
        softcapping: (Some(50.0), Some(30.0)),
        ..llama
    };
    Some(match architecture {
        "LlamaForCausalLM" | "llama" => llama,
        "MistralForCausalLM" | "mistral" => ArchDefaults {
            kv_heads: Some(8),
            sliding_window: Some(4096),
            sliding: SlidingRule::All,
            ..llama
        },
        "Qwen2ForCausalLM" | "qwen2" => ArchDefaults {
            kv_heads: Some(32),
            sliding_window: Some(4096),
            sliding: SlidingRule::Qwen,
            ..llama
        },
        "Qwen3ForCausalLM" | "qwen3" => ArchDefaults {
            kv_heads: Some(32),
            head_dim: Some(128),
            sliding_window: Some(4096),
            sliding: SlidingRule::Qwen,
            ..llama
        },
        "Gemma2ForCausalLM" | "gemma2" => gemma2,
        "Gemma3ForCausalLM" | "gemma3_text" => ArchDefaults {
            rope_theta: 1_000_000.0,
            sliding: SlidingRule::Pattern(6),
            softcapping: (None, None),
            rope_local_theta: Some(10000.0),
            ..gemma2
        },
        "Phi3ForCausalLM" | "phi3" => ArchDefaults {
            rms_eps: 1e-5,
            sliding: SlidingRule::All,
            original_max_positions: Some(4096),
            ..llama
        },
        _ => return None,
    })
}

/// Counts above this cannot be stored by GGUF (u32 fields) and belong to no
/// model; refusing them keeps every later multiplication in range.
const MAX_COUNT: u64 = u32::MAX as u64;

/// The keys a rotary-scaling object may hold; anything else is not understood.
const ROPE_KEYS: &[&str] = &[
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "original_max_position_embeddings",
    "low_freq_factor",
    "high_freq_factor",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
    "truncate",
    "short_factor",
    "long_factor",
    "partial_rotary_factor",
];

/// A JSON object of the file (the top level or a nested one), with typed
/// getters whose errors name the file and the dotted key.
struct Obj<'a> {
    path: &'a Path,
    prefix: &'static str,
    map: &'a Map<String, Json>,
}

impl<'a> Obj<'a> {
    fn err(&self, key: &str, what: impl Display) -> anyhow::Error {
        anyhow!("{}: `{}{key}` {what}", self.path.display(), self.prefix)
    }

    /// The value of `key`; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Json> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn count(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= MAX_COUNT => Ok(Some(n as usize)),
                Some(n) => Err(self.err(key, format!("is {n}, more than any model can have"))),
                None => Err(self.err(key, format!("must be a whole number, found {v}"))),
            },
        }
    }

    fn positive(&self, key: &str) -> Result<usize> {
        match self.count(key)? {
            None => Err(self.err(key, "is missing")),
            Some(0) => Err(self.err(key, "is 0; it must be at least 1")),
            Some(n) => Ok(n),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.err(key, format!("must be a number, found {v}"))),
            },
        }
    }

    fn positive_number(&self, key: &str) -> Result<Option<f64>> {
        match self.number(key)? {
            Some(x) if x <= 0.0 => Err(self.err(key, format!("is {x}; it must be positive"))),
            other => Ok(other),
        }
    }

    /// A positive number that may be written as `null` (switched off); absent
    /// means `default`.
    fn nullable_positive(&self, key: &str, default: Option<f64>) -> Result<Option<f64>> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Json::Null) => Ok(None),
            Some(_) => self.positive_number(key),
        }
    }

    /// The object under `key` of `rope_parameters`, for transformers 5's
    /// per-layer-type rotary settings.
    fn nested(&self, key: &'static str) -> Result<Option<Obj<'a>>> {
        let prefix = match key {
            "full_attention" => "rope_parameters.full_attention.",
            _ => "rope_parameters.sliding_attention.",
        };
        match self.get(key) {
            None => Ok(None),
            Some(Json::Object(map)) => Ok(Some(Obj {
                path: self.path,
                prefix,
                map,
            })),
            Some(v) => Err(self.err(key, format!("must be an object, found {v}"))),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("must be true or false, found {v}"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("must be a string, found {v}"))),
        }
    }

    fn numbers(&self, key: &str, len: usize) -> Result<Vec<f64>> {
        let Some(v) = self.get(key) else {
            return Err(self.err(key, "is missing"));
        };
        let list: Option<Vec<f64>> = v.as_array().and_then(|items| {
            items
                .iter()
                .map(|x| x.as_f64().filter(|x| x.is_finite()))
                .collect()
        });
        match list {
            Some(l) if l.len() == len => Ok(l),
            Some(l) => Err(self.err(
                key,
                format!("has {} values; head_dim / 2 = {len} are needed", l.len()),
            )),
            None => Err(self.err(key, format!("must be a list of numbers, found {v}"))),
        }
    }
}

/// A parsed `config.json`, remembering where it came from so every error
/// can name it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    map: Map<String, Json>,
}

impl ConfigFile {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<ConfigFile> {
        let path = dir.join("config.json");
        let json = crate::fs::files::read_json(&path)?;
        ConfigFile::from_json(&path, json)
    }

    /// Wraps an already parsed document read from `path`.
    pub fn from_json(path: &Path, json: Json) -> Result<ConfigFile> {
        match json {
            Json::Object(map) => Ok(ConfigFile {
                path: path.to_path_buf(),
                map,
            }),
            _ => bail!("{}: not a JSON object", path.display()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn top(&self) -> Obj<'_> {
        Obj {
            path: &self.path,
            prefix: "",
            map: &self.map,
        }
    }

    /// The object under `key` (`rope_parameters` or `rope_scaling`), if any.
    fn object(&self, key: &'static str) -> Result<Option<Obj<'_>>> {
        let top = self.top();
        match top.get(key) {
            None => Ok(None),
            Some(Json::Object(map)) => Ok(Some(Obj {
                path: &self.path,
                prefix: if key == "rope_parameters" {
                    "rope_parameters."
                } else {
                    "rope_scaling."
                },
                map,
            })),
            Some(v) => Err(top.err(key, format!("must be an object, found {v}"))),
        }
    }

    /// `architectures[0]`, else `model_type`; `None` when the file has neither.
    pub fn architecture(&self) -> Result<Option<&str>> {
        let top = self.top();
        match top.get("architectures") {
            None => top.string("model_type"),
            Some(Json::Array(items)) => match items.first() {
                None => top.string("model_type"),
                Some(Json::String(s)) => Ok(Some(s)),
                Some(other) => Err(top.err(
                    "architectures",
                    format!("must list class names, found {other}"),
                )),
            },
            Some(v) => Err(top.err("architectures", format!("must be a list, found {v}"))),
        }
    }

    /// `model_type`, when written.
    pub fn model_type(&self) -> Result<Option<&str>> {
        self.top().string("model_type")
    }

    /// The declared storage type: `dtype` (transformers 5) or `torch_dtype`
    /// (transformers 4); an error when both are written and disagree.
    pub fn dtype(&self) -> Result<Option<&str>> {
        let top = self.top();
        match (top.string("dtype")?, top.string("torch_dtype")?) {
            (Some(a), Some(b)) if a != b => Err(anyhow!(
                "{}: `dtype` ({a}) and `torch_dtype` ({b}) disagree",
                self.path.display()
            )),
            (a, b) => Ok(a.or(b)),
        }
    }

    /// Which layout the file uses.
    pub fn layout(&self) -> Layout {
        match self.top().get("rope_parameters") {
            Some(_) => Layout::Transformers5,
            None => Layout::Transformers4,
        }
    }

    /// The decoder hyperparameters, validated.
    pub fn decoder(&self) -> Result<DecoderConfig> {
        let top = self.top();
        let architecture = self
            .architecture()?
            .ok_or_else(|| {
                anyhow!(
                    "{}: neither `architectures` nor `model_type` is given",
                    self.path.display()
                )
            })?
            .to_owned();
        let defaults = arch_defaults(&architecture);
        let no_default = |key: &str| {
            top.err(
                key,
                format!(
                    "is missing, and transformers' default for `{architecture}` is not \
                     known to yibuild; write it in config.json"
                ),
            )
        };
        let hidden = top.positive("hidden_size")?;
        let layers = top.positive("num_hidden_layers")?;
        let heads = top.positive("num_attention_heads")?;
        let kv_heads = match (top.count("num_key_value_heads")?, defaults) {
            (Some(0), _) => {
                return Err(top.err("num_key_value_heads", "is 0; it must be at least 1"))
            }
            (Some(n), _) => n,
            (None, Some(d)) => d.kv_heads.unwrap_or(heads),
            (None, None) => return Err(no_default("num_key_value_heads")),
        };
        if heads % kv_heads != 0 {
            return Err(top.err(
                "num_attention_heads",
                format!("({heads}) is not a multiple of `num_key_value_heads` ({kv_heads})"),
            ));
        }
        let explicit_head_dim = top.count("head_dim")?;
        let head_dim = explicit_head_dim
            .or(defaults.and_then(|d| d.head_dim))
            .unwrap_or(hidden / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(top.err(
                "head_dim",
                format!("is {head_dim}; rotary embeddings need an even, positive head dimension"),
            ));
        }
        if (heads as u64) * (head_dim as u64) > MAX_COUNT {
            bail!(
                "{}: num_attention_heads × head_dim = {heads} × {head_dim} is beyond any model",
                self.path.display()
            );
        }
        let max_positions = top.positive("max_position_embeddings")?;
        let rope = self.rope(defaults, max_positions, head_dim)?;
        let rms_eps = match (top.positive_number("rms_norm_eps")?, defaults) {
            (Some(e), _) => e,
            (None, Some(d)) => d.rms_eps,
            (None, None) => return Err(no_default("rms_norm_eps")),
        };
        let tie_embeddings = match (top.boolean("tie_word_embeddings")?, defaults) {
            (Some(t), _) => t,
            (None, Some(d)) => d.tie_embeddings,
            (None, None) => return Err(no_default("tie_word_embeddings")),
        };
        let hidden_act = top.string("hidden_act")?.map(str::to_owned);
        let activation = match defaults {
            // Gemma's MLP reads `hidden_activation`; `hidden_act` is legacy.
            Some(d) if d.activation == "gelu_pytorch_tanh" => top
                .string("hidden_activation")?
                .unwrap_or(d.activation)
                .to_owned(),
            _ => match (&hidden_act, defaults) {
                (Some(a), _) => a.clone(),
                (None, Some(d)) => d.activation.to_owned(),
                (None, None) => top
                    .string("hidden_activation")?
                    .map(str::to_owned)
                    .unwrap_or_default(),
            },
        };
        let (attn_cap, final_cap) = defaults.map_or((None, None), |d| d.softcapping);
        let windows = self.windows(defaults, layers)?;
        Ok(DecoderConfig {
            path: self.path.clone(),
            architecture,
            layout: self.layout(),
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            head_dim_explicit: explicit_head_dim.is_some(),
            intermediate: top.positive("intermediate_size")?,
            vocab: top.positive("vocab_size")?,
            max_positions,
            rms_eps,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            tie_embeddings,
            sliding_window: windows.window,
            layer_types: windows.kinds,
            use_sliding_window: windows.use_sliding_window,
            max_window_layers: windows.max_window_layers,
            attention_bias: top.boolean("attention_bias")?.unwrap_or(false),
            mlp_bias: top.boolean("mlp_bias")?.unwrap_or(false),
            hidden_act,
            activation: (!activation.is_empty()).then_some(activation),
            query_pre_attn_scalar: match top.positive_number("query_pre_attn_scalar")? {
                Some(s) => Some(s),
                None => defaults.and_then(|d| d.query_pre_attn_scalar),
            },
            attn_logit_softcapping: top.nullable_positive("attn_logit_softcapping", attn_cap)?,
            final_logit_softcapping: top.nullable_positive("final_logit_softcapping", final_cap)?,
            rope_local_theta: rope.local_theta,
            partial_rotary_factor: rope.partial,
            dtype: self.dtype()?.map(str::to_owned),
        })
    }

    /// Which layers slide and by how much.
    fn windows(&self, defaults: Option<ArchDefaults>, layers: usize) -> Result<Windows> {
        let top = self.top();
        let use_sliding_window = top.boolean("use_sliding_window")?;
        let max_window_layers = top.count("max_window_layers")?;
        let window = match top.map.get("sliding_window") {
            // An explicit null switches the window off, whatever the default.
            Some(Json::Null) => None,
            Some(_) => top.count("sliding_window")?,
            None => defaults.and_then(|d| d.sliding_window),
        };
        let rule = defaults.map_or(UNKNOWN_SLIDING, |d| d.sliding);
        let kinds = match top.get("layer_types") {
            Some(v) => {
                let types = v
                    .as_array()
                    .ok_or_else(|| top.err("layer_types", format!("must be a list, found {v}")))?;
                if types.len() != layers {
                    return Err(top.err(
                        "layer_types",
                        format!(
                            "names {} layers but `num_hidden_layers` is {layers}",
                            types.len()
                        ),
                    ));
                }
                let listed = types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| match t.as_str() {
                        Some("full_attention") => Ok(AttentionKind::Full),
                        Some("sliding_attention") => Ok(AttentionKind::Sliding),
                        _ => Err(top.err(
                            "layer_types",
                            format!(
                                "entry {i} is {t}; yibuild understands full_attention \
                                 and sliding_attention"
                            ),
                        )),
                    })
                    .collect::<Result<_>>()?;
                LayerTypes::Listed(listed)
            }
            None if window.is_none() => LayerTypes::Full,
            None => {
                let rule = match (rule, top.count("sliding_window_pattern")?) {
                    (SlidingRule::Pattern(_), Some(0)) => {
                        return Err(top.err("sliding_window_pattern", "is 0"))
                    }
                    (SlidingRule::Pattern(_), Some(p)) => SlidingRule::Pattern(p),
                    (rule, _) => rule,
                };
                match rule {
                    SlidingRule::Never => LayerTypes::Full,
                    SlidingRule::All if use_sliding_window == Some(false) => LayerTypes::Full,
                    SlidingRule::All => LayerTypes::Sliding {
                        from: 0,
                        full_every: None,
                    },
                    SlidingRule::Qwen if use_sliding_window == Some(true) => LayerTypes::Sliding {
                        from: max_window_layers.unwrap_or(28),
                        full_every: None,
                    },
                    SlidingRule::Qwen => LayerTypes::Full,
                    SlidingRule::Pattern(p) => LayerTypes::Sliding {
                        from: 0,
                        full_every: Some(p),
                    },
                }
            }
        };
        let any = kinds.any(layers);
        let window = match (any, window) {
            (true, Some(0)) => return Err(top.err("sliding_window", "is 0")),
            (true, Some(w)) => Some(w),
            (true, None) => {
                return Err(top.err(
                    "sliding_window",
                    "is missing but `layer_types` names sliding_attention layers",
                ))
            }
            (false, _) => None,
        };
        Ok(Windows {
            window,
            kinds,
            use_sliding_window: use_sliding_window.unwrap_or(false),
            max_window_layers,
        })
    }

    /// The rotary settings from whichever layout the file uses.
    fn rope(
        &self,
        defaults: Option<ArchDefaults>,
        max_positions: usize,
        head_dim: usize,
    ) -> Result<Rope> {
        let top = self.top();
        let path = self.path.display();
        let v5 = self.object("rope_parameters")?;
        let v4 = self.object("rope_scaling")?;
        let top_theta = top.positive_number("rope_theta")?;
        let mut local_theta = top.positive_number("rope_local_base_freq")?;
        let (theta, scaling) = match v5 {
            Some(params) => {
                let params = match params.nested("full_attention")? {
                    None => params,
                    Some(full) => {
                        // transformers 5 per-layer-type settings (Gemma 3).
                        for key in params.map.keys() {
                            if key != "full_attention" && key != "sliding_attention" {
                                return Err(params.err(
                                    key,
                                    "is beside per-layer-type rotary settings; yibuild \
                                     expects only full_attention and sliding_attention",
                                ));
                            }
                        }
                        if let Some(local) = params.nested("sliding_attention")? {
                            let kind = parse_scaling(&local, max_positions, head_dim, None)?;
                            if kind != RopeScaling::None {
                                return Err(local.err(
                                    "rope_type",
                                    format!(
                                        "is `{}`; yibuild supports scaling only on \
                                         full_attention layers",
                                        kind.name()
                                    ),
                                ));
                            }
                            let t = local.positive_number("rope_theta")?;
                            if let (Some(a), Some(b)) = (t, local_theta) {
                                if a != b {
                                    bail!("{path}: `rope_parameters.sliding_attention.rope_theta` ({a}) and `rope_local_base_freq` ({b}) disagree");
                                }
                            }
                            local_theta = t.or(local_theta);
                        }
                        full
                    }
                };
                if params.get("sliding_attention").is_some() {
                    return Err(params.err(
                        "sliding_attention",
                        "is given without `rope_parameters.full_attention`",
                    ));
                }
                let theta = params.positive_number("rope_theta")?;
                if let (Some(a), Some(b)) = (theta, top_theta) {
                    if a != b {
                        bail!(
                            "{path}: `{}rope_theta` ({a}) and `rope_theta` ({b}) disagree",
                            params.prefix
                        );
                    }
                }
                if let Some(old) = &v4 {
                    for (key, value) in old.map {
                        if let Some(new) = params.get(key) {
                            if new != value && key != "type" {
                                bail!(
                                    "{path}: `{}{key}` ({new}) and \
                                     `rope_scaling.{key}` ({value}) disagree",
                                    params.prefix
                                );
                            }
                        }
                    }
                }
                (theta.or(top_theta), Some(params))
            }
            None => (top_theta, v4),
        };
        let theta = match (theta, defaults) {
            (Some(t), _) => t,
            (None, Some(d)) => d.rope_theta,
            (None, None) => bail!(
                "{path}: no `rope_theta` (neither top-level nor in `rope_parameters`), and \
                 transformers' default for this architecture is not known to yibuild"
            ),
        };
        // transformers copies a top-level (or class-default) original context
        // over the rotary settings' own.
        let original = top
            .count("original_max_position_embeddings")?
            .or(defaults.and_then(|d| d.original_max_positions));
        if original == Some(0) {
            return Err(top.err("original_max_position_embeddings", "is 0"));
        }
        let top_partial = top.positive_number("partial_rotary_factor")?;
        let in_obj = match &scaling {
            Some(obj) => obj.positive_number("partial_rotary_factor")?,
            None => None,
        };
        if let (Some(a), Some(b)) = (in_obj, top_partial) {
            if a != b {
                bail!("{path}: `partial_rotary_factor` in the rotary settings ({a}) and at the top level ({b}) disagree");
            }
        }
        let partial = in_obj.or(top_partial).unwrap_or(1.0);
        let rotary = rotary_dim(head_dim, partial);
        if partial > 1.0 || rotary == 0 || !rotary.is_multiple_of(2) {
            return Err(top.err(
                "partial_rotary_factor",
                format!(
                    "is {partial}: head_dim {head_dim} × {partial} = {rotary} rotated \
                     dimensions; an even, positive number no larger than head_dim is needed"
                ),
            ));
        }
        let scaling = match scaling {
            None => RopeScaling::None,
            Some(obj) => parse_scaling(&obj, max_positions, rotary, original)?,
        };
        Ok(Rope {
            theta,
            scaling,
            local_theta: local_theta.or(defaults.and_then(|d| d.rope_local_theta)),
            partial,
        })
    }
}

/// The rotary settings of a file.
struct Rope {
    theta: f64,
    scaling: RopeScaling,
    local_theta: Option<f64>,
    partial: f64,
}

/// The sliding-window settings of a file.
struct Windows {
    window: Option<usize>,
    kinds: LayerTypes,
    use_sliding_window: bool,
    max_window_layers: Option<usize>,
}

/// One rotary-scaling object (`rope_scaling` or `rope_parameters`).
/// `rotary` is the number of rotated dimensions per head;
/// `original_override` the top-level `original_max_position_embeddings` that overrides the object's.
fn parse_scaling(
    obj: &Obj,
    max_positions: usize,
    rotary: usize,
    original_override: Option<usize>,
) -> Result<RopeScaling> {
    for key in obj.map.keys() {
        if !ROPE_KEYS.contains(&key.as_str()) {
            return Err(obj.err(key, "is not a rotary setting yibuild understands"));
        }
    }
    if obj.boolean("truncate")? == Some(false) {
        return Err(obj.err("truncate", "is false; only the default (true) is supported"));
    }
    let kind = match (obj.string("rope_type")?, obj.string("type")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(obj.err("rope_type", format!("(`{a}`) and `type` (`{b}`) disagree")))
        }
        (a, b) => a.or(b).unwrap_or("default"),
    };
    let factor = || -> Result<f64> {
        obj.positive_number("factor")?
            .ok_or_else(|| obj.err("factor", format!("is required for rope_type `{kind}`")))
    };
    let original = || -> Result<usize> {
        if let Some(n) = original_override {
            return Ok(n);
        }
        match obj.count("original_max_position_embeddings")? {
            Some(0) => Err(obj.err("original_max_position_embeddings", "is 0")),
            Some(n) => Ok(n),
            None => Ok(max_positions),
        }
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic { factor: factor()? },
        "yarn" => {
            let original_max_positions = original()?;
            let factor = match obj.positive_number("factor")? {
                Some(f) => f,
                None => max_positions as f64 / original_max_positions as f64,
            };
            RopeScaling::Yarn(Yarn {
                factor,
                original_max_positions,
                beta_fast: obj.positive_number("beta_fast")?,
                beta_slow: obj.positive_number("beta_slow")?,
                attention_factor: obj.positive_number("attention_factor")?,
                mscale: obj.number("mscale")?,
                mscale_all_dim: obj.number("mscale_all_dim")?,
            })
        }
        "llama3" => {
            let required = |key: &str| -> Result<f64> {
                obj.positive_number(key)?
                    .ok_or_else(|| obj.err(key, "is required for rope_type `llama3`"))
            };
            let (low, high) = (required("low_freq_factor")?, required("high_freq_factor")?);
            if high <= low {
                return Err(obj.err(
                    "high_freq_factor",
                    format!("({high}) must be larger than `low_freq_factor` ({low})"),
                ));
            }
            RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_positions: original()?,
            }
        }
        "longrope" => {
            let original_max_positions = original()?;
            let factor = match obj.positive_number("factor")? {
                Some(f) => f,
                None => max_positions as f64 / original_max_positions as f64,
            };
            let derived = if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / (original_max_positions as f64).ln()).sqrt()
            };
            RopeScaling::Longrope {
                short_factor: obj.numbers("short_factor", rotary / 2)?,
                long_factor: obj.numbers("long_factor", rotary / 2)?,
                original_max_positions,
                attention_factor: obj.positive_number("attention_factor")?.unwrap_or(derived),
            }
        }
        other => {
            let key = if obj.get("rope_type").is_some() {
                "rope_type"
            } else {
                "type"
            };
            return Err(obj.err(
                key,
                format!(
                    "is `{other}`, which yibuild does not understand \
                     (default, linear, dynamic, yarn, llama3, longrope)"
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v4() -> Json {
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 128, "vocab_size": 320, "max_position_embeddings": 4096,
               "rope_theta": 5000000.0, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"})
    }

    /// The same model as transformers 5 writes it.
    fn v5() -> Json {
        let mut c = v4();
        let obj = c.as_object_mut().unwrap();
        obj.shift_remove("rope_theta");
        obj.shift_remove("torch_dtype");
        obj.insert("dtype".into(), json!("bfloat16"));
        obj.insert("head_dim".into(), json!(16));
        obj.insert(
            "rope_parameters".into(),
            json!({"rope_theta": 5000000.0, "rope_type": "default"}),
        );
        c
    }

    fn read(json: Json) -> Result<DecoderConfig> {
        ConfigFile::from_json(Path::new("m/config.json"), json)?.decoder()
    }

    fn err(json: Json) -> String {
        format!("{:#}", read(json).unwrap_err())
    }

    #[test]
    fn both_layouts_give_the_same_model() {
        let a = read(v4()).unwrap();
        let b = read(v5()).unwrap();
        assert_eq!(a.layout, Layout::Transformers4);
        assert_eq!(b.layout, Layout::Transformers5);
        assert_eq!(a.rope_theta, 5e6);
        assert_eq!(b.rope_theta, 5e6);
        assert_eq!((a.head_dim, b.head_dim), (16, 16));
        assert!(!a.head_dim_explicit && b.head_dim_explicit);
        assert_eq!(
            (a.rope_scaling.clone(), a.rms_eps, a.kv_heads),
            (b.rope_scaling.clone(), b.rms_eps, b.kv_heads)
        );
        let f = |j: Json| ConfigFile::from_json(Path::new("c"), j).unwrap();
        assert_eq!(f(v4()).dtype().unwrap(), Some("bfloat16"));
        assert_eq!(f(v5()).dtype().unwrap(), Some("bfloat16"));
        let mut both = v5();
        both["torch_dtype"] = json!("float16");
        assert!(f(both)
            .dtype()
            .unwrap_err()
            .to_string()
            .contains("disagree"));
    }

    #[test]
    fn every_rope_type_is_read_from_either_layout() {
        let cases = [
            (json!({"rope_type": "default"}), RopeScaling::None),
            (
                json!({"type": "linear", "factor": 4.0}),
                RopeScaling::Linear { factor: 4.0 },
            ),
            (
                json!({"rope_type": "dynamic", "factor": 2.0}),
                RopeScaling::Dynamic { factor: 2.0 },
            ),
            (
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}),
                RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_positions: 1024,
                },
            ),
            (
                json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                       "beta_fast": 16.0}),
                RopeScaling::Yarn(Yarn {
                    factor: 4.0,
                    original_max_positions: 1024,
                    beta_fast: Some(16.0),
                    beta_slow: None,
                    attention_factor: None,
                    mscale: None,
                    mscale_all_dim: None,
                }),
            ),
        ];
        for (scaling, want) in cases {
            let mut old = v4();
            old["rope_scaling"] = scaling.clone();
            assert_eq!(read(old).unwrap().rope_scaling, want, "{scaling}");
            let mut new = v5();
            let mut params = scaling.clone();
            params["rope_theta"] = json!(5e6);
            new["rope_parameters"] = params;
            let got = read(new).unwrap();
            assert_eq!((got.rope_scaling, got.rope_theta), (want, 5e6), "{scaling}");
        }
        // YaRN without factor or original context: transformers' derivations.
        let mut c = v5();
        c["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 1e4,
                                      "original_max_position_embeddings": 1024});
        let RopeScaling::Yarn(y) = read(c).unwrap().rope_scaling else {
            panic!()
        };
        assert_eq!(y.factor, 4.0);
        assert!((y.attention_factor() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        assert_eq!((y.beta_fast(), y.beta_slow()), (32.0, 1.0));

        let mut c = v5();
        c["rope_parameters"] = json!({"rope_type": "longrope", "rope_theta": 1e4,
            "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8],
            "original_max_position_embeddings": 1024});
        match read(c).unwrap().rope_scaling {
            RopeScaling::Longrope {
                attention_factor,
                original_max_positions,
                ..
            } => {
                assert_eq!(original_max_positions, 1024);
                let want = (1.0 + 4f64.ln() / 1024f64.ln()).sqrt();
                assert!((attention_factor - want).abs() < 1e-15);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_theta_takes_transformers_default_only_where_known() {
        let mut c = v4();
        c.as_object_mut().unwrap().shift_remove("rope_theta");
        assert_eq!(read(c.clone()).unwrap().rope_theta, 10000.0);
        c["architectures"] = json!(["YiForCausalLM"]);
        let e = format!("{:#}", read(c).unwrap_err());
        assert!(e.contains("no `rope_theta`"), "{e}");
        let mut c = v4();
        c.as_object_mut()
            .unwrap()
            .shift_remove("num_key_value_heads");
        c["architectures"] = json!(["MistralForCausalLM"]);
        c["num_attention_heads"] = json!(16);
        c["hidden_size"] = json!(256);
        assert_eq!(read(c).unwrap().kv_heads, 8);
    }

    #[test]
    fn what_is_not_understood_is_an_error_naming_file_and_key() {
        let with = |key: &str, value: Json| {
            let mut c = v4();
            c[key] = value;
            err(c)
        };
        let cases = [
            (
                with("rope_theta", json!("5e6")),
                "m/config.json: `rope_theta` must be a number, found \"5e6\"",
            ),
            (
                with("rope_scaling", json!({"type": "su", "factor": 2.0})),
                "`rope_scaling.type` is `su`, which yibuild does not understand",
            ),
            (
                with("rope_scaling", json!({"type": "linear"})),
                "`rope_scaling.factor` is required for rope_type `linear`",
            ),
            (
                with("rope_scaling", json!({"type": "linear", "factor": -1.0})),
                "`rope_scaling.factor` is -1; it must be positive",
            ),
            (
                with(
                    "rope_scaling",
                    json!({"type": "linear", "factor": 2.0, "wobble": 1}),
                ),
                "`rope_scaling.wobble` is not a rotary setting",
            ),
            (
                with(
                    "rope_scaling",
                    json!({"rope_type": "llama3", "factor": 8.0}),
                ),
                "`rope_scaling.low_freq_factor` is required",
            ),
            (
                with("num_attention_heads", json!(0)),
                "`num_attention_heads` is 0",
            ),
            (
                with("num_key_value_heads", json!(3)),
                "(4) is not a multiple of `num_key_value_heads` (3)",
            ),
            (
                with("num_key_value_heads", json!(0)),
                "`num_key_value_heads` is 0",
            ),
            (
                with("num_hidden_layers", json!(100_000_000_000u64)),
                "is 100000000000, more than any model can have",
            ),
            (
                with("num_hidden_layers", json!(2.5)),
                "`num_hidden_layers` must be a whole number",
            ),
            (with("hidden_size", json!(2)), "`head_dim` is 0"),
            (with("head_dim", json!(15)), "`head_dim` is 15"),
            (with("rms_norm_eps", json!(0.0)), "`rms_norm_eps` is 0"),
            (
                with("layer_types", json!(["full_attention"])),
                "`layer_types` names 1 layers but `num_hidden_layers` is 2",
            ),
            (
                with("layer_types", json!(["full_attention", "chunked"])),
                "entry 1 is \"chunked\"",
            ),
            (
                with("architectures", json!("LlamaForCausalLM")),
                "`architectures` must be a list",
            ),
            (
                with(
                    "rope_parameters",
                    json!({"rope_type": "default", "rope_theta": 1e4}),
                ),
                "`rope_parameters.rope_theta` (10000) and `rope_theta` (5000000) disagree",
            ),
            (
                with(
                    "rope_parameters",
                    json!({"full_attention": {"rope_theta": 5e6},
                           "sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
                ),
                "`rope_parameters.sliding_attention.rope_type` is `linear`",
            ),
            (
                with("partial_rotary_factor", json!(0.2)),
                "16 × 0.2 = 3 rotated",
            ),
            (
                with(
                    "rope_parameters",
                    json!({"rope_type": "yarn", "factor": 2.0, "truncate": false}),
                ),
                "`rope_parameters.truncate` is false",
            ),
            (
                with(
                    "rope_parameters",
                    json!({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
                ),
                "`rope_parameters.short_factor` has 1 values; head_dim / 2 = 8",
            ),
        ];
        for (got, want) in cases {
            assert!(got.contains(want), "expected {want:?} in {got:?}");
        }
        let mut c = v5();
        c["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        c["rope_parameters"] = json!({"rope_type": "linear", "factor": 3.0, "rope_theta": 5e6});
        assert!(err(c)
            .contains("`rope_parameters.factor` (3.0) and `rope_scaling.factor` (2.0) disagree"));
    }

    /// A config of `architecture` with only the keys every decoder needs.
    fn minimal(architecture: &str) -> Json {
        json!({"architectures": [architecture], "hidden_size": 64, "num_hidden_layers": 6,
               "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 320,
               "max_position_embeddings": 4096})
    }

    #[test]
    fn each_architecture_takes_transformers_5_defaults() {
        let d = read(minimal("Gemma2ForCausalLM")).unwrap();
        assert_eq!((d.kv_heads, d.head_dim, d.tie_embeddings), (4, 256, true));
        assert_eq!(d.activation.as_deref(), Some("gelu_pytorch_tanh"));
        assert_eq!(d.query_pre_attn_scalar, Some(256.0));
        assert_eq!(
            (d.attn_logit_softcapping, d.final_logit_softcapping),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(d.sliding_window, Some(4096));
        let sliding: Vec<bool> = (0..6).map(|l| d.is_sliding(l)).collect();
        assert_eq!(sliding, [true, false, true, false, true, false]);
        // An explicit null switches soft-capping off.
        let mut c = minimal("Gemma2ForCausalLM");
        c["attn_logit_softcapping"] = Json::Null;
        assert_eq!(read(c).unwrap().attn_logit_softcapping, None);

        let d = read(minimal("Gemma3ForCausalLM")).unwrap();
        assert_eq!((d.rope_theta, d.rope_local_theta), (1e6, Some(1e4)));
        assert_eq!(d.attn_logit_softcapping, None);
        let sliding: Vec<bool> = (0..6).map(|l| d.is_sliding(l)).collect();
        assert_eq!(sliding, [true, true, true, true, true, false]);
        let mut c = minimal("Gemma3ForCausalLM");
        c["sliding_window_pattern"] = json!(2);
        c["rope_local_base_freq"] = json!(20000.0);
        c["rope_scaling"] = json!({"rope_type": "linear", "factor": 8.0});
        let d = read(c).unwrap();
        assert!(d.is_sliding(0) && !d.is_sliding(1));
        assert_eq!(d.rope_local_theta, Some(20000.0));
        assert_eq!(d.rope_scaling, RopeScaling::Linear { factor: 8.0 });
        // transformers 5 nests the same per layer type.
        let mut c = minimal("Gemma3ForCausalLM");
        c["rope_parameters"] = json!({
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}});
        let e = read(c).unwrap();
        assert_eq!(
            (e.rope_theta, e.rope_local_theta, e.rope_scaling),
            (1e6, Some(20000.0), d.rope_scaling)
        );

        let mut c = minimal("Qwen3ForCausalLM");
        c["num_attention_heads"] = json!(32);
        let d = read(c).unwrap();
        assert_eq!((d.kv_heads, d.head_dim, d.sliding_window), (32, 128, None));
        let mut c = minimal("Qwen2ForCausalLM");
        c["num_key_value_heads"] = json!(2);
        c["use_sliding_window"] = json!(true);
        c["sliding_window"] = json!(32);
        c["max_window_layers"] = json!(4);
        let d = read(c).unwrap();
        let sliding: Vec<bool> = (0..6).map(|l| d.is_sliding(l)).collect();
        assert_eq!(sliding, [false, false, false, false, true, true]);
        assert_eq!(d.sliding_window, Some(32));

        let mut c = minimal("MistralForCausalLM");
        c["num_key_value_heads"] = json!(2);
        assert_eq!(read(c.clone()).unwrap().sliding_window, Some(4096));
        c["sliding_window"] = Json::Null;
        assert_eq!(read(c).unwrap().sliding_window, None);
        let mut c = minimal("LlamaForCausalLM");
        c["sliding_window"] = json!(16);
        assert_eq!(read(c).unwrap().sliding_window, None, "Llama ignores it");

        let mut c = minimal("Phi3ForCausalLM");
        c["partial_rotary_factor"] = json!(0.75);
        c["rope_scaling"] = json!({"type": "longrope", "short_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 2.0],
            "long_factor": vec![1.0; 6], "original_max_position_embeddings": 99});
        let d = read(c).unwrap();
        assert_eq!((d.rms_eps, d.rotary_dim()), (1e-5, 12));
        let RopeScaling::Longrope {
            original_max_positions,
            ..
        } = d.rope_scaling
        else {
            panic!("{:?}", d.rope_scaling)
        };
        // Phi3Config's class default (4096) overrides the object's value.
        assert_eq!(original_max_positions, 4096);

        let mut c = minimal("MixtralForCausalLM");
        c["num_key_value_heads"] = json!(2);
        c["rope_theta"] = json!(1e6);
        c["rms_norm_eps"] = json!(1e-5);
        assert!(err(c).contains("`tie_word_embeddings` is missing, and transformers' default for `MixtralForCausalLM` is not known"));
    }

    #[test]
    fn sliding_window_follows_layer_types() {
        let mut c = v5();
        c["sliding_window"] = json!(64);
        c["layer_types"] = json!(["full_attention", "full_attention"]);
        assert_eq!(read(c.clone()).unwrap().sliding_window, None);
        c["layer_types"] = json!(["sliding_attention", "full_attention"]);
        assert_eq!(read(c.clone()).unwrap().sliding_window, Some(64));
        c.as_object_mut().unwrap().shift_remove("layer_types");
        c["use_sliding_window"] = json!(false);
        assert_eq!(read(c).unwrap().sliding_window, None);
    }
}
