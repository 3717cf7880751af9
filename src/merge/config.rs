//! A mergekit configuration, parsed with positions for errors.
//!
//! The schema is mergekit's `MergeConfiguration` (see the reference in
//! `spec/reference/mergekit.md` §2): `merge_method`, exactly one of `models` and
//! `slices`, `base_model`, `parameters` at every level, `dtype`, `out_dtype`,
//! `tokenizer_source` or `tokenizer`, `chat_template`. Unknown keys, unknown
//! methods and misspelt parameter names are errors with a "did you mean" hint
//! (mergekit silently ignores misspelt parameters).

use crate::syntax::diag::{did_you_mean, Diag, RecipeError};
use crate::syntax::fields::{expect_str, Fields};
use crate::syntax::yaml::{Node, Span, Value};
use crate::tensor::DType;

use super::method::{Method, LEGACY_PARAMS};
use super::params::{parameters_json, parse_parameters, Parameters};

/// A reference to an input model: `path[@revision]`, or in a recipe the name of
/// a source or step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// The reference as written (`org/name@rev`, `./models/x`, `tess`): the key
    /// under which the caller provides the model's folder.
    pub name: String,
    /// Where it was written.
    pub span: Span,
}

/// One input of an output slice.
#[derive(Debug, Clone)]
pub struct SliceSource {
    /// The model.
    pub model: ModelRef,
    /// Layers `[start, end)` taken from it; `None` means all of them.
    pub layer_range: Option<(usize, usize)>,
    /// Per-source parameters (where `models[].parameters` land).
    pub parameters: Parameters,
}

/// A run of output layers made from the same layers of several models.
#[derive(Debug, Clone)]
pub struct OutputSlice {
    /// The inputs, in config order.
    pub sources: Vec<SliceSource>,
    /// A slice-level base model overriding the top-level one.
    pub base_model: Option<ModelRef>,
    /// Slice-level parameters.
    pub parameters: Parameters,
}

/// Where the output tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// The base model's (or the first model's) tokenizer; mergekit's default.
    Base,
    /// The union of every model's vocabulary.
    Union,
    /// One model's tokenizer.
    Model(ModelRef),
}

/// A token listed under `tokenizer.tokens` (mergekit's per-token settings),
/// with its model references by name; the plan turns it into a
/// [`crate::tokenizer::union::TokenSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEntry {
    /// The token text (added to the union vocabulary if missing).
    pub token: String,
    /// Where its embedding row comes from; `None` keeps the default rules.
    pub source: Option<TokenRule>,
    /// Apply `source` to every model, even those that have the token.
    pub force: bool,
}

/// A `tokenizer.tokens.<token>.source` setting.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenRule {
    /// `source: MODEL`: that model's row of the same token.
    Model(ModelRef),
    /// `{kind: model_token, model, token}`: that model's row of another token.
    ModelToken(ModelRef, String),
    /// `{kind: model_token, model, token_id}`: that model's row by id.
    ModelTokenId(ModelRef, u32),
    /// `{kind: zero}`: zeros.
    Zero,
}

/// A parsed mergekit configuration.
#[derive(Debug, Clone)]
pub struct MergeConfig {
    /// The method.
    pub method: Method,
    /// The output slices; a `models:` config is one slice of whole models.
    pub slices: Vec<OutputSlice>,
    /// True when written with `models:` (whole models, base appended).
    pub whole_models: bool,
    /// The top-level base model.
    pub base_model: Option<ModelRef>,
    /// Top-level parameters.
    pub parameters: Parameters,
    /// `dtype`: the storage type mergekit would do the math in; here it only
    /// sets the output type when `out_dtype` is absent (math is always f32).
    pub dtype: Option<DType>,
    /// `out_dtype`: the output storage type.
    pub out_dtype: Option<DType>,
    /// Output tokenizer.
    pub tokenizer: TokenizerSource,
    /// Span of the tokenizer setting, for errors.
    pub tokenizer_span: Span,
    /// `tokenizer.tokens` (union vocabularies only).
    pub tokens: Vec<TokenEntry>,
    /// `tokenizer.pad_to_multiple_of` (union vocabularies only).
    pub pad_to_multiple_of: Option<usize>,
    /// `chat_template`: a built-in name or literal Jinja.
    pub chat_template: Option<String>,
    /// `allow_crimes` (a yibuild key, mergekit's `--allow-crimes` option in
    /// the configuration): merge models of different architectures or
    /// tensor layouts. `yibuild merge --allow-crimes` sets it too.
    pub allow_crimes: bool,
    /// The config text, written verbatim to `mergekit_config.yml`.
    pub text: String,
    /// The config as JSON (for step keys).
    pub json: serde_json::Value,
}

const TOP_KEYS: &[&str] = &[
    "merge_method",
    "models",
    "slices",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "name",
    "allow_crimes",
];

fn parse_model_ref(diag: &Diag, node: &Node, key: &str) -> Result<ModelRef, RecipeError> {
    let name = match &node.value {
        Value::Str(s) => s.clone(),
        Value::Map(_) => {
            let f = Fields::new(
                diag,
                node,
                format!("`{key}`"),
                &["model", "lora", "override_architecture"],
            )?;
            f.finish()?;
            if let Some(lora) = f.opt("lora") {
                return Err(diag.error(lora.span, "LoRA model references are not supported"));
            }
            let inner = f.req("model")?;
            match &inner.value {
                Value::Str(s) => s.clone(),
                _ => {
                    let m = Fields::new(diag, inner, "`model`", &["path", "revision"])?;
                    m.finish()?;
                    let path = m.req_str("path")?;
                    match m.opt_str("revision")? {
                        Some(rev) => format!("{path}@{rev}"),
                        None => path,
                    }
                }
            }
        }
        _ => {
            return Err(diag.error(
                node.span,
                format!(
                    "`{key}` must be a model path or name, found {}",
                    node.type_name()
                ),
            ))
        }
    };
    if name.contains('+') {
        return Err(diag
            .error(
                node.span,
                format!("`{name}`: LoRA model references (`model+lora`) are not supported"),
            )
            .with_help("merge the adapter into its model first"));
    }
    if name.matches('@').count() > 1 || name.starts_with('@') || name.is_empty() {
        return Err(diag.error(
            node.span,
            format!("`{name}` is not a valid model reference"),
        ));
    }
    Ok(ModelRef {
        name,
        span: node.span,
    })
}

fn parse_dtype(diag: &Diag, f: &Fields, key: &str) -> Result<Option<DType>, RecipeError> {
    let Some(node) = f.opt(key) else {
        return Ok(None);
    };
    let text = expect_str(diag, node, key)?;
    DType::parse(text.strip_prefix("torch.").unwrap_or(&text))
        .map(Some)
        .ok_or_else(|| {
            diag.error(
                node.span,
                format!("`{key}`: unknown dtype `{text}` (expected bfloat16, float16 or float32)"),
            )
        })
}

fn parse_layer_range(diag: &Diag, node: &Node) -> Result<(usize, usize), RecipeError> {
    let bad = || {
        diag.error(
            node.span,
            "`layer_range` must be two integers [start, end] with start < end",
        )
    };
    let items = node.as_seq().ok_or_else(bad)?;
    let nums: Vec<usize> = items
        .iter()
        .map(|n| match n.value {
            Value::Int(i) if i >= 0 => Ok(i as usize),
            _ => Err(bad()),
        })
        .collect::<Result<_, _>>()?;
    match nums[..] {
        [a, b] if a < b => Ok((a, b)),
        _ => Err(bad()),
    }
}

fn parse_source(
    diag: &Diag,
    node: &Node,
    slices: bool,
    method: Method,
) -> Result<SliceSource, RecipeError> {
    let keys: &'static [&'static str] = if slices {
        &["model", "layer_range", "parameters"]
    } else {
        &["model", "parameters"]
    };
    let f = Fields::new(
        diag,
        node,
        if slices {
            "a slice source"
        } else {
            "a `models` entry"
        },
        keys,
    )?;
    f.finish()?;
    let layer_range = if slices {
        Some(parse_layer_range(diag, f.req("layer_range")?)?)
    } else {
        None
    };
    Ok(SliceSource {
        model: parse_model_ref(diag, f.req("model")?, "model")?,
        layer_range,
        parameters: parse_parameters(diag, f.opt("parameters"), &|n| method.param_kind(n))?,
    })
}

fn parse_slice(diag: &Diag, node: &Node, method: Method) -> Result<OutputSlice, RecipeError> {
    let f = Fields::new(
        diag,
        node,
        "a slice",
        &["sources", "base_model", "parameters", "residual_weight"],
    )?;
    f.finish()?;
    let sources_node = f.req("sources")?;
    let sources = sources_node
        .as_seq()
        .ok_or_else(|| diag.error(sources_node.span, "`sources` must be a list"))?
        .iter()
        .map(|n| parse_source(diag, n, true, method))
        .collect::<Result<Vec<_>, _>>()?;
    if sources.is_empty() {
        return Err(diag.error(sources_node.span, "a slice needs at least one source"));
    }
    Ok(OutputSlice {
        sources,
        base_model: f
            .opt("base_model")
            .map(|n| parse_model_ref(diag, n, "base_model"))
            .transpose()?,
        parameters: parse_parameters(diag, f.opt("parameters"), &|n| method.param_kind(n))?,
    })
}

/// The tokenizer settings of a merge configuration.
struct TokenizerSettings {
    source: TokenizerSource,
    span: Span,
    tokens: Vec<TokenEntry>,
    pad_to_multiple_of: Option<usize>,
}

fn parse_tokenizer(diag: &Diag, f: &Fields) -> Result<TokenizerSettings, RecipeError> {
    let from_value = |node: &Node, key: &str| -> Result<TokenizerSource, RecipeError> {
        Ok(match node.as_str() {
            Some("union") => TokenizerSource::Union,
            Some("base") => TokenizerSource::Base,
            _ => TokenizerSource::Model(parse_model_ref(diag, node, key)?),
        })
    };
    let plain = |source, span| TokenizerSettings {
        source,
        span,
        tokens: Vec::new(),
        pad_to_multiple_of: None,
    };
    match (f.opt("tokenizer_source"), f.opt("tokenizer")) {
        (Some(a), Some(_)) => Err(diag.error(
            a.span,
            "`tokenizer_source` and `tokenizer` are mutually exclusive",
        )),
        (Some(n), None) => Ok(plain(from_value(n, "tokenizer_source")?, n.span)),
        (None, Some(n)) => {
            let t = Fields::new(
                diag,
                n,
                "`tokenizer`",
                &["source", "tokens", "pad_to_multiple_of"],
            )?;
            t.finish()?;
            // mergekit's `tokenizer:` section defaults to the union vocabulary.
            let (source, span) = match t.opt("source") {
                Some(s) => (from_value(s, "source")?, s.span),
                None => (TokenizerSource::Union, n.span),
            };
            if source != TokenizerSource::Union {
                for key in ["tokens", "pad_to_multiple_of"] {
                    if let Some(extra) = t.opt(key) {
                        return Err(diag.error(
                            extra.span,
                            format!("`tokenizer.{key}` is only supported with `source: union`"),
                        ));
                    }
                }
            }
            let pad = t.opt_u64("pad_to_multiple_of")?;
            if let (Some(0), Some(node)) = (pad, t.opt("pad_to_multiple_of")) {
                return Err(diag.error(node.span, "`pad_to_multiple_of` must be at least 1"));
            }
            let tokens = match t.opt("tokens") {
                Some(node) => parse_tokens(diag, node)?,
                None => Vec::new(),
            };
            Ok(TokenizerSettings {
                source,
                span,
                tokens,
                pad_to_multiple_of: pad.map(|p| p as usize),
            })
        }
        (None, None) => Ok(plain(TokenizerSource::Base, Span::default())),
    }
}

/// `tokenizer.tokens`: a mapping from token text to `{source, force}`.
fn parse_tokens(diag: &Diag, node: &Node) -> Result<Vec<TokenEntry>, RecipeError> {
    let Some(map) = node.as_map() else {
        return Err(diag.error(
            node.span,
            "`tokenizer.tokens` must map each token to its settings",
        ));
    };
    let mut out = Vec::new();
    for (key, settings) in map {
        let Some(token) = key.as_str() else {
            return Err(diag.error(key.span, "a token must be a string"));
        };
        let mut entry = TokenEntry {
            token: token.to_owned(),
            source: None,
            force: false,
        };
        if settings.value != Value::Null {
            let f = Fields::new(
                diag,
                settings,
                format!("token `{token}`"),
                &["source", "force"],
            )?;
            f.finish()?;
            entry.force = f.opt_bool("force")?.unwrap_or(false);
            entry.source = f
                .opt("source")
                .map(|s| parse_token_rule(diag, s))
                .transpose()?;
            if entry.force && entry.source.is_none() {
                return Err(diag.error(
                    settings.span,
                    format!("token `{token}`: `force` needs a `source`"),
                ));
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// A token's `source`: a model reference, `{kind: model_token, model,
/// token | token_id}` or `{kind: zero}`.
fn parse_token_rule(diag: &Diag, node: &Node) -> Result<TokenRule, RecipeError> {
    if node.get("kind").is_none() {
        return Ok(TokenRule::Model(parse_model_ref(diag, node, "source")?));
    }
    let f = Fields::new(
        diag,
        node,
        "`source`",
        &["kind", "model", "token", "token_id"],
    )?;
    f.finish()?;
    match f.req_str("kind")?.as_str() {
        "zero" => Ok(TokenRule::Zero),
        "model_token" => {
            let model = parse_model_ref(diag, f.req("model")?, "model")?;
            match (f.opt_str("token")?, f.opt_u64("token_id")?) {
                (Some(t), None) => Ok(TokenRule::ModelToken(model, t)),
                (None, Some(id)) => Ok(TokenRule::ModelTokenId(model, id as u32)),
                _ => Err(diag.error(
                    node.span,
                    "`kind: model_token` needs exactly one of `token` and `token_id`",
                )),
            }
        }
        other => Err(diag.error(
            f.req("kind")?.span,
            format!("unknown token source kind `{other}` (expected `model_token` or `zero`)"),
        )),
    }
}

impl MergeConfig {
    /// Parses a mergekit config mapping; `text` is the file's text, kept for
    /// `mergekit_config.yml`.
    pub fn parse(diag: &Diag, node: &Node, text: &str) -> Result<MergeConfig, RecipeError> {
        let f = Fields::new(diag, node, "the merge configuration", TOP_KEYS)?;
        f.finish()?;
        let method_node = f.req("merge_method")?;
        let method_name = expect_str(diag, method_node, "merge_method")?;
        if matches!(
            method_name.as_str(),
            "arcee_fusion" | "consensus_ta" | "consensus_ties"
        ) {
            return Err(diag.error(
                method_node.span,
                format!("merge method `{method_name}` is not supported yet"),
            ));
        }
        let method = Method::parse(&method_name).ok_or_else(|| {
            let names = Method::ALL.iter().map(|(n, _)| *n);
            let err = diag.error(
                method_node.span,
                format!("unknown merge method `{method_name}`"),
            );
            let normalized = method_name.replace('-', "_").to_ascii_lowercase();
            match did_you_mean(&normalized, names.clone()) {
                Some(s) => err.with_help(format!("did you mean `{s}`?")),
                None => err.with_help(format!(
                    "expected one of: {}",
                    names.collect::<Vec<_>>().join(", ")
                )),
            }
        })?;
        let base_model = f
            .opt("base_model")
            .map(|n| parse_model_ref(diag, n, "base_model"))
            .transpose()?;
        let (slices, whole_models) = match (f.opt("models"), f.opt("slices")) {
            (Some(m), None) => {
                let items = m
                    .as_seq()
                    .ok_or_else(|| diag.error(m.span, "`models` must be a list"))?;
                let sources = items
                    .iter()
                    .map(|n| {
                        if n.as_str().is_some() {
                            // `- model_name` without parameters.
                            Ok(SliceSource {
                                model: parse_model_ref(diag, n, "model")?,
                                layer_range: None,
                                parameters: Vec::new(),
                            })
                        } else {
                            parse_source(diag, n, false, method)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if sources.is_empty() && base_model.is_none() {
                    return Err(diag.error(m.span, "`models` is empty"));
                }
                let slice = OutputSlice {
                    sources,
                    base_model: None,
                    parameters: Vec::new(),
                };
                (vec![slice], true)
            }
            (None, Some(s)) => {
                let items = s
                    .as_seq()
                    .ok_or_else(|| diag.error(s.span, "`slices` must be a list"))?;
                let slices = items
                    .iter()
                    .map(|n| parse_slice(diag, n, method))
                    .collect::<Result<Vec<_>, _>>()?;
                if slices.is_empty() {
                    return Err(diag.error(s.span, "`slices` is empty"));
                }
                (slices, false)
            }
            (Some(m), Some(_)) => {
                return Err(diag.error(m.span, "give either `models` or `slices`, not both"))
            }
            (None, None) => {
                return Err(diag.error(
                    node.span,
                    "the merge configuration needs `models` or `slices`",
                ))
            }
        };
        let tokenizer = parse_tokenizer(diag, &f)?;
        let config = MergeConfig {
            method,
            slices,
            whole_models,
            base_model,
            parameters: parse_parameters(diag, f.opt("parameters"), &|n| method.param_kind(n))?,
            dtype: parse_dtype(diag, &f, "dtype")?,
            out_dtype: parse_dtype(diag, &f, "out_dtype")?,
            tokenizer: tokenizer.source,
            tokenizer_span: tokenizer.span,
            tokens: tokenizer.tokens,
            pad_to_multiple_of: tokenizer.pad_to_multiple_of,
            chat_template: f.opt_str("chat_template")?,
            allow_crimes: f.opt_bool("allow_crimes")?.unwrap_or(false),
            text: text.to_owned(),
            json: serde_json::Value::Null,
        };
        let config = MergeConfig {
            json: config.normalized_json(node.to_json()),
            ..config
        };
        config.check_parameter_names(diag)?;
        Ok(config)
    }

    /// `json` (the config as written) with every `parameters:` mapping in
    /// typed form, so that the spellings of one value (`1`, `1.0`, `"1"`)
    /// give one step key.
    fn normalized_json(&self, mut json: serde_json::Value) -> serde_json::Value {
        fn set(entry: &mut serde_json::Value, params: &Parameters) {
            if entry.get("parameters").is_some() {
                entry["parameters"] = parameters_json(params);
            }
        }
        set(&mut json, &self.parameters);
        let list = if self.whole_models {
            "models"
        } else {
            "slices"
        };
        let Some(entries) = json.get_mut(list).and_then(|v| v.as_array_mut()) else {
            return json;
        };
        if self.whole_models {
            for (entry, source) in entries.iter_mut().zip(&self.slices[0].sources) {
                set(entry, &source.parameters);
            }
            return json;
        }
        for (entry, slice) in entries.iter_mut().zip(&self.slices) {
            set(entry, &slice.parameters);
            if let Some(sources) = entry.get_mut("sources").and_then(|v| v.as_array_mut()) {
                for (s, source) in sources.iter_mut().zip(&slice.sources) {
                    set(s, &source.parameters);
                }
            }
        }
        json
    }

    /// Every distinct model the config references, in first-mention order
    /// (base model first), so donors and card lists are deterministic.
    pub fn referenced_models(&self) -> Vec<&ModelRef> {
        fn push<'a>(m: &'a ModelRef, out: &mut Vec<&'a ModelRef>) {
            if !out.iter().any(|o| o.name == m.name) {
                out.push(m);
            }
        }
        let mut out: Vec<&ModelRef> = Vec::new();
        if let Some(b) = &self.base_model {
            push(b, &mut out);
        }
        for s in &self.slices {
            if let Some(b) = &s.base_model {
                push(b, &mut out);
            }
            for src in &s.sources {
                push(&src.model, &mut out);
            }
        }
        if let TokenizerSource::Model(m) = &self.tokenizer {
            push(m, &mut out);
        }
        out
    }

    /// Rejects parameter names the method does not read, and per-model
    /// settings of parameters that are only read globally.
    fn check_parameter_names(&self, diag: &Diag) -> Result<(), RecipeError> {
        let model_names: Vec<&str> = self.method.model_params().iter().map(|p| p.name).collect();
        let global_names: Vec<&str> = self.method.global_params().iter().map(|p| p.name).collect();
        let known = |name: &str| {
            model_names.contains(&name)
                || global_names.contains(&name)
                || LEGACY_PARAMS.contains(&name)
        };
        let unknown = |p: &super::params::NamedSetting| {
            let all = model_names.iter().chain(&global_names).copied();
            let err = diag.error(
                p.span,
                format!(
                    "merge method `{}` has no parameter `{}`",
                    self.method.name(),
                    p.name
                ),
            );
            match did_you_mean(&p.name, all) {
                Some(s) => err.with_help(format!("did you mean `{s}`?")),
                None => err.with_help(format!(
                    "its parameters are: {}",
                    model_names
                        .iter()
                        .chain(&global_names)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        };
        let levels =
            std::iter::once(&self.parameters).chain(self.slices.iter().map(|s| &s.parameters));
        for params in levels {
            if let Some(p) = params.iter().find(|p| !known(&p.name)) {
                return Err(unknown(p));
            }
        }
        for source in self.slices.iter().flat_map(|s| &s.sources) {
            for p in &source.parameters {
                if !known(&p.name) {
                    return Err(unknown(p));
                }
                if global_names.contains(&p.name.as_str()) {
                    return Err(diag
                        .error(
                            p.span,
                            format!(
                                "`{}` is a global parameter of `{}`: a per-model value has no effect",
                                p.name,
                                self.method.name()
                            ),
                        )
                        .with_help("move it to the top-level or slice `parameters`"));
                }
            }
        }
        Ok(())
    }
}
