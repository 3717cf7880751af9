//! The one reader of a Hugging Face `config.json`.
//!
//! transformers 4 and transformers 5 write the same model differently:
//!
//! | what | transformers 4 | transformers 5 |
//! |---|---|---|
//! | rotary base | top-level `rope_theta` | `rope_parameters.rope_theta` |
//! | rotary scaling | `rope_scaling: {type \| rope_type, factor, ...}` | the same keys inside `rope_parameters` |
//! | storage type | `torch_dtype` | `dtype` |
//! | per-layer attention | (none) | `layer_types: [full_attention \| sliding_attention, ...]` |
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
/// Qwen2), validated: counts positive, heads a multiple of key/value heads,
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
    /// The attention window of the layers that use one (`sliding_window`
    /// when `layer_types` names a sliding layer, or when `use_sliding_window`
    /// is true or absent).
    pub sliding_window: Option<usize>,
    /// `attention_bias`.
    pub attention_bias: bool,
    /// `mlp_bias`.
    pub mlp_bias: bool,
    /// `hidden_act`, when written.
    pub hidden_act: Option<String>,
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
}

/// transformers' own defaults for keys a config.json may leave out, for the
/// architectures whose configuration classes were checked (transformers 5.24
/// `LlamaConfig`, `MistralConfig`, `Qwen2Config`; the 4.x classes agree).
/// For any other architecture a missing key is an error, never a guess.
#[derive(Debug, Clone, Copy)]
struct ArchDefaults {
    /// `rope_theta` when neither layout gives one (10000 for all three).
    rope_theta: f64,
    /// `rms_norm_eps` (1e-6 for all three).
    rms_eps: f64,
    /// `num_key_value_heads`: `None` means "equal to the head count" (Llama);
    /// Mistral's default is 8 and Qwen2's 32.
    kv_heads: Option<usize>,
    /// `tie_word_embeddings` (false for all three).
    tie_embeddings: bool,
}

fn arch_defaults(architecture: &str) -> Option<ArchDefaults> {
    let kv_heads = match architecture {
        "LlamaForCausalLM" | "llama" => None,
        "MistralForCausalLM" | "mistral" => Some(8),
        "Qwen2ForCausalLM" | "qwen2" => Some(32),
        _ => return None,
    };
    Some(ArchDefaults {
        rope_theta: 10000.0,
        rms_eps: 1e-6,
        kv_heads,
        tie_embeddings: false,
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
        let head_dim = explicit_head_dim.unwrap_or(hidden / heads);
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
        let (rope_theta, rope_scaling) = self.rope(defaults, max_positions, head_dim)?;
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
            rope_theta,
            rope_scaling,
            tie_embeddings,
            sliding_window: self.sliding_window(layers)?,
            attention_bias: top.boolean("attention_bias")?.unwrap_or(false),
            mlp_bias: top.boolean("mlp_bias")?.unwrap_or(false),
            hidden_act: top.string("hidden_act")?.map(str::to_owned),
        })
    }

    /// The window of the layers that use sliding attention, if any do.
    fn sliding_window(&self, layers: usize) -> Result<Option<usize>> {
        let top = self.top();
        let window = top.count("sliding_window")?;
        let sliding = match top.get("layer_types") {
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
                let mut any = false;
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        Some("full_attention") => {}
                        Some("sliding_attention") => any = true,
                        _ => {
                            return Err(top.err(
                                "layer_types",
                                format!(
                                    "entry {i} is {t}; yibuild understands full_attention \
                                     and sliding_attention"
                                ),
                            ))
                        }
                    }
                }
                any
            }
            None => top.boolean("use_sliding_window")?.unwrap_or(true),
        };
        match (sliding, window) {
            (true, Some(0)) => Err(top.err("sliding_window", "is 0")),
            (true, Some(w)) => Ok(Some(w)),
            (true, None) if top.get("layer_types").is_some() => Err(top.err(
                "sliding_window",
                "is missing but `layer_types` names sliding_attention layers",
            )),
            _ => Ok(None),
        }
    }

    /// The rotary base and scaling from whichever layout the file uses.
    fn rope(
        &self,
        defaults: Option<ArchDefaults>,
        max_positions: usize,
        head_dim: usize,
    ) -> Result<(f64, RopeScaling)> {
        let top = self.top();
        let path = self.path.display();
        let v5 = self.object("rope_parameters")?;
        let v4 = self.object("rope_scaling")?;
        let top_theta = top.positive_number("rope_theta")?;
        let (theta, scaling) = match v5 {
            Some(params) => {
                for nested in ["full_attention", "sliding_attention"] {
                    if params.get(nested).is_some() {
                        return Err(params.err(
                            nested,
                            "(rotary settings per layer type) is not supported by yibuild",
                        ));
                    }
                }
                let theta = params.positive_number("rope_theta")?;
                if let (Some(a), Some(b)) = (theta, top_theta) {
                    if a != b {
                        bail!("{path}: `rope_parameters.rope_theta` ({a}) and `rope_theta` ({b}) disagree");
                    }
                }
                if let Some(old) = &v4 {
                    for (key, value) in old.map {
                        if let Some(new) = params.get(key) {
                            if new != value && key != "type" {
                                bail!(
                                    "{path}: `rope_parameters.{key}` ({new}) and \
                                     `rope_scaling.{key}` ({value}) disagree"
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
        let scaling = match scaling {
            None => RopeScaling::None,
            Some(obj) => parse_scaling(&obj, max_positions, head_dim)?,
        };
        Ok((theta, scaling))
    }
}

/// One rotary-scaling object (`rope_scaling` or `rope_parameters`).
fn parse_scaling(obj: &Obj, max_positions: usize, head_dim: usize) -> Result<RopeScaling> {
    for key in obj.map.keys() {
        if !ROPE_KEYS.contains(&key.as_str()) {
            return Err(obj.err(key, "is not a rotary setting yibuild understands"));
        }
    }
    if let Some(p) = obj.number("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(obj.err(
                "partial_rotary_factor",
                format!("is {p}; only full rotary embeddings (1.0) are supported"),
            ));
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
                short_factor: obj.numbers("short_factor", head_dim / 2)?,
                long_factor: obj.numbers("long_factor", head_dim / 2)?,
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
                    json!({"full_attention": {"rope_theta": 1e4}}),
                ),
                "per layer type",
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
