//! Planning a merge: open every input's config and tensor index, check them
//! against the configuration, and produce one job per output tensor.
//!
//! Everything here reads only headers and JSON, so every problem (missing
//! shard, truncated file, shape or layer-count mismatch, missing parameter) is
//! found and reported together, with the model and tensor it concerns, before
//! any tensor data is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::config::{
    MergeConfig, ModelRef, OutputSlice, SliceSource, TokenEntry, TokenRule, TokenizerSource,
};
use super::method::{BaseRole, Method, ParamDefault, ParamSpec};
use super::params::{lookup, ParamValue, Parameters};
use super::rng::MaskStream;
use super::typed::{Globals, ModelParams, Table};
use crate::tensor::{DType, ModelTensors};
use crate::tokenizer::union::{union_vocab, TokenSource, TokenSpec, UnionVocab};

/// An opened input model.
#[derive(Debug)]
pub struct InputModel {
    /// The reference as written in the config.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Its config.json.
    pub config: Json,
    /// Its tensors, memory-mapped.
    pub tensors: ModelTensors,
    /// Number of transformer layers.
    pub layers: usize,
}

/// One input of an output tensor.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// Index into [`MergePlan::models`].
    pub model: usize,
    /// The input tensor's name in that model.
    pub tensor: String,
    /// Resolved per-model parameters.
    pub params: ModelParams,
    /// The random stream for this model's masks in this tensor.
    pub stream: MaskStream,
}

/// Everything needed to produce one output tensor.
#[derive(Debug, Clone)]
pub struct TensorJob {
    /// Output tensor name.
    pub name: String,
    /// Output shape (embedding rows may be cropped from the inputs').
    pub shape: Vec<usize>,
    /// Output storage type.
    pub dtype: DType,
    /// Inputs in config order (the base included).
    pub inputs: Vec<JobInput>,
    /// Index into `inputs` of the base model.
    pub base: Option<usize>,
    /// Resolved global parameters.
    pub globals: Globals,
    /// The inputs' rows are read re-indexed to the union vocabulary
    /// ([`MergePlan::union`]) rather than straight from storage.
    pub remapped: bool,
}

impl TensorJob {
    /// Rows of the output seen as a matrix (1 for 1-D tensors).
    pub fn rows(&self) -> usize {
        if self.shape.len() <= 1 {
            1
        } else {
            self.shape[0]
        }
    }

    /// Elements per row.
    pub fn row_len(&self) -> usize {
        let n: usize = self.shape.iter().product();
        n / self.rows().max(1)
    }

    /// Indexes of the inputs that are not the base.
    pub fn others(&self) -> Vec<usize> {
        (0..self.inputs.len())
            .filter(|i| Some(*i) != self.base)
            .collect()
    }
}

/// A validated merge: the models, the output tensors and the output metadata.
#[derive(Debug)]
pub struct MergePlan {
    /// The method.
    pub method: Method,
    /// Opened input models.
    pub models: Vec<InputModel>,
    /// One job per output tensor, in write order.
    pub jobs: Vec<TensorJob>,
    /// Index of the model whose config.json the output starts from.
    pub config_donor: usize,
    /// Index of the model whose tokenizer files are copied.
    pub tokenizer_donor: usize,
    /// Output layer count (sum of slice lengths).
    pub out_layers: usize,
    /// For each output layer, the model (index into [`MergePlan::models`])
    /// and layer it is made from: the slice's base, or its first source.
    pub layer_sources: Vec<(usize, usize)>,
    /// Output embedding rows, when the model has embeddings.
    pub vocab_rows: Option<usize>,
    /// The output `torch_dtype`.
    pub torch_dtype: Option<DType>,
    /// The union vocabulary, with `tokenizer_source: union`.
    pub union: Option<PlanUnion>,
}

/// A union vocabulary (`tokenizer_source: union`) and how its model numbering
/// (base first) maps to [`MergePlan::models`].
#[derive(Debug)]
pub struct PlanUnion {
    /// The vocabulary and every model's row sources.
    pub vocab: UnionVocab,
    /// Union model index → index into [`MergePlan::models`].
    pub members: Vec<usize>,
}

impl PlanUnion {
    /// The union's index of plan model `model`.
    pub fn member(&self, model: usize) -> usize {
        self.members
            .iter()
            .position(|m| *m == model)
            .expect("every merged model is a member of the union")
    }

    /// Builds the union of the models' vocabularies, `donor` (the base) first,
    /// resolving the model names in `tokens`.
    fn build(
        models: &[InputModel],
        index: &BTreeMap<String, usize>,
        donor: usize,
        tokens: &[TokenEntry],
        pad_to_multiple_of: Option<usize>,
    ) -> Result<PlanUnion> {
        let members: Vec<usize> = std::iter::once(donor)
            .chain((0..models.len()).filter(|m| *m != donor))
            .collect();
        let member = |r: &ModelRef| -> Result<usize> {
            let Some(m) = index.get(&r.name) else {
                bail!(
                    "`tokenizer.tokens` names model `{}`, which is not part of the merge",
                    r.name
                );
            };
            Ok(members.iter().position(|x| x == m).unwrap_or(0))
        };
        let specs = tokens
            .iter()
            .map(|t| {
                let source = match &t.source {
                    None => None,
                    Some(TokenRule::Zero) => Some(TokenSource::Zero),
                    Some(TokenRule::Model(r)) => Some(TokenSource::Model(member(r)?)),
                    Some(TokenRule::ModelToken(r, tok)) => {
                        Some(TokenSource::ModelToken(member(r)?, tok.clone()))
                    }
                    Some(TokenRule::ModelTokenId(r, id)) => {
                        Some(TokenSource::ModelTokenId(member(r)?, *id))
                    }
                };
                Ok(TokenSpec {
                    token: t.token.clone(),
                    source,
                    force: t.force,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let others: Vec<&Path> = members[1..]
            .iter()
            .map(|m| models[*m].dir.as_path())
            .collect();
        let vocab = union_vocab(&models[donor].dir, &others, &specs, pad_to_multiple_of)
            .context("building the union vocabulary")?;
        Ok(PlanUnion { vocab, members })
    }
}

/// Splits `model.layers.12.mlp.up_proj.weight` into
/// (`model.layers.`, 12, `.mlp.up_proj.weight`).
pub fn split_layer(name: &str) -> Option<(&str, usize, &str)> {
    let mut pos = 0;
    let mut prev = "";
    for seg in name.split('.') {
        if !seg.is_empty()
            && seg.bytes().all(|b| b.is_ascii_digit())
            && matches!(prev, "layers" | "h" | "blocks" | "block" | "layer")
        {
            let index = seg.parse().ok()?;
            return Some((&name[..pos], index, &name[pos + seg.len()..]));
        }
        pos += seg.len() + 1;
        prev = seg;
    }
    None
}

/// Whether a tensor is an embedding matrix whose rows are vocabulary entries.
pub fn is_embedding(name: &str) -> bool {
    name.ends_with("embed_tokens.weight")
        || name == "lm_head.weight"
        || name.ends_with("wte.weight")
        || name.ends_with("embed_out.weight")
        || name.ends_with("word_embeddings.weight")
}

/// Whether a tensor outside the layers comes before them (embeddings) rather
/// than after (final norm, output head).
fn is_pre_layer(name: &str) -> bool {
    (name.contains("embed") && !name.contains("embed_out"))
        || name.split('.').any(|s| s == "wte" || s == "wpe")
}

fn layer_count(config: &Json, tensors: &ModelTensors) -> usize {
    ["num_hidden_layers", "n_layer", "num_layers"]
        .iter()
        .find_map(|k| config.get(*k).and_then(Json::as_u64))
        .map(|n| n as usize)
        .unwrap_or_else(|| {
            tensors
                .names()
                .iter()
                .filter_map(|n| split_layer(n).map(|(_, i, _)| i + 1))
                .max()
                .unwrap_or(0)
        })
}

/// Problems found while planning, reported together.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, msg: String) {
        if !self.0.contains(&msg) {
            self.0.push(msg);
        }
    }

    fn check(self) -> Result<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => bail!("{}", self.0[0]),
            n => {
                let shown: Vec<String> =
                    self.0.iter().take(25).map(|p| format!("  - {p}")).collect();
                let more = if n > 25 {
                    format!("\n  ... and {} more", n - 25)
                } else {
                    String::new()
                };
                bail!(
                    "{n} problems with the merge inputs:\n{}{more}",
                    shown.join("\n")
                )
            }
        }
    }
}

fn open_model(name: &str, dir: &Path) -> Result<InputModel> {
    if !dir.is_dir() {
        bail!("model `{name}`: {} is not a directory", dir.display());
    }
    let config_path = dir.join("config.json");
    let config = crate::fs::files::read_json(&config_path)
        .map_err(|e| anyhow::anyhow!("model `{name}`: {e:#}"))?;
    let tensors = ModelTensors::open(dir).map_err(|e| anyhow::anyhow!("model `{name}`: {e:#}"))?;
    let layers = layer_count(&config, &tensors);
    Ok(InputModel {
        name: name.to_owned(),
        dir: dir.to_path_buf(),
        config,
        tensors,
        layers,
    })
}

/// One output slice resolved against the opened models.
struct ResolvedSlice<'c> {
    slice: &'c OutputSlice,
    /// (model index, first layer, source) per input.
    sources: Vec<(usize, usize, &'c SliceSource)>,
    base: Option<usize>,
    len: usize,
}

struct Planner<'c> {
    config: &'c MergeConfig,
    models: Vec<InputModel>,
    index: BTreeMap<String, usize>,
    problems: Problems,
    seed: u64,
    jobs: Vec<TensorJob>,
    union: Option<PlanUnion>,
    /// Whether the output has [`HEAD`] (the config donor has one).
    head: bool,
    layer_sources: Vec<(usize, usize)>,
}

/// The output head of a model whose embeddings are not tied.
const HEAD: &str = "lm_head.weight";

/// Sources appended for a base model listed nowhere else; they have no parameters.
fn appended_base(base: &ModelRef) -> SliceSource {
    SliceSource {
        model: base.clone(),
        layer_range: None,
        parameters: Vec::new(),
    }
}

impl<'c> Planner<'c> {
    fn model(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn resolve_slice(
        &mut self,
        slice: &'c OutputSlice,
        extra: Option<&'c SliceSource>,
    ) -> Option<ResolvedSlice<'c>> {
        let base_ref = slice
            .base_model
            .as_ref()
            .or(self.config.base_model.as_ref());
        let mut sources = Vec::new();
        let mut ranges = Vec::new();
        for src in slice.sources.iter().chain(extra) {
            let m = self.model(&src.model.name)?;
            let layers = self.models[m].layers;
            let (start, end) = src.layer_range.unwrap_or((0, layers));
            if end > layers {
                self.problems.add(format!(
                    "model `{}` has {layers} layers but `layer_range` asks for [{start}, {end}]",
                    src.model.name
                ));
                return None;
            }
            ranges.push((src.model.name.as_str(), end - start));
            sources.push((m, start, src));
        }
        let len = ranges[0].1;
        if let Some((name, n)) = ranges.iter().find(|(_, n)| *n != len) {
            self.problems.add(format!(
                "layer counts differ within a slice: `{}` contributes {len} layers, `{name}` {n}",
                ranges[0].0
            ));
            return None;
        }
        let base =
            base_ref.and_then(|b| sources.iter().position(|(_, _, s)| s.model.name == b.name));
        if let (Some(b), None) = (base_ref, base) {
            if self.config.method.base_role() != BaseRole::Input {
                self.problems.add(format!(
                    "base model `{}` is not among the sources of a slice",
                    b.name
                ));
                return None;
            }
        }
        Some(ResolvedSlice {
            slice,
            sources,
            base,
            len,
        })
    }

    fn check_method_inputs(&mut self, s: &ResolvedSlice) {
        let method = self.config.method;
        let others = s.sources.len() - usize::from(s.base.is_some());
        let name = method.name();
        let problem = match method {
            _ if method.base_role() == BaseRole::Required && s.base.is_none() => {
                Some(format!("merge method `{name}` needs a `base_model`"))
            }
            Method::Slerp | Method::Nearswap if others != 1 => Some(format!(
                "merge method `{name}` takes a base model and exactly one other model, found {others} others"
            )),
            Method::Nuslerp if others != 2 => Some(format!(
                "merge method `nuslerp` takes exactly two models besides the base, found {others}"
            )),
            Method::ModelStock if others < 2 => Some(format!(
                "merge method `model_stock` needs at least two models besides the base, found {others}"
            )),
            Method::Passthrough if s.sources.len() != 1 => Some(format!(
                "merge method `passthrough` takes exactly one model per slice, found {}",
                s.sources.len()
            )),
            _ => None,
        };
        if let Some(p) = problem {
            self.problems.add(p);
        }
    }

    /// The value of a parameter for one input tensor, by mergekit's precedence.
    fn resolve(
        &self,
        levels: &[&Parameters],
        spec: &ParamSpec,
        tensor: &str,
        t: f64,
    ) -> Option<ParamValue> {
        levels
            .iter()
            .find_map(|p| lookup(p, spec.name, tensor, t))
            .or(match spec.default {
                ParamDefault::Num(x) => Some(ParamValue::Num(x)),
                ParamDefault::Bool(b) => Some(ParamValue::Bool(b)),
                ParamDefault::Required | ParamDefault::Unset => None,
            })
    }

    /// Builds the job for one output tensor from one input tensor per source.
    fn add_job(&mut self, s: &ResolvedSlice, out_name: String, inputs: Vec<String>, t: f64) {
        let method = self.config.method;
        let mut shapes = Vec::new();
        let mut job_inputs = Vec::new();
        let mut occurrences: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, ((m, _, src), tensor)) in s.sources.iter().zip(&inputs).enumerate() {
            let model = &self.models[*m];
            let Some(info) = model.tensors.info(tensor) else {
                self.problems.add(format!(
                    "model `{}` has no tensor `{tensor}` (needed for output `{out_name}`)",
                    model.name
                ));
                return;
            };
            shapes.push((model.name.clone(), info.shape.clone(), info.dtype));
            // The base of a method that weighs it like any input needs its
            // parameters like any input (mergekit fails without them too).
            let exempt = Some(i) == s.base && method.base_role() != BaseRole::Input;
            let mut params = Table::new();
            let levels = [
                &src.parameters,
                &s.slice.parameters,
                &self.config.parameters,
            ];
            for spec in method.model_params() {
                match self.resolve(&levels, spec, tensor, t) {
                    Some(v) => {
                        params.insert(spec.name, v);
                    }
                    None if spec.default == ParamDefault::Required && !exempt => {
                        self.problems.add(format!(
                            "missing required parameter `{}` for model `{}` (tensor `{tensor}`)",
                            spec.name, model.name
                        ));
                    }
                    None => {}
                }
            }
            let occurrence = occurrences.entry(src.model.name.as_str()).or_default();
            job_inputs.push(JobInput {
                model: *m,
                tensor: tensor.clone(),
                params: ModelParams::from_table(&params),
                stream: MaskStream::new(self.seed, &out_name, &src.model.name, *occurrence),
            });
            *occurrence += 1;
        }
        let mut globals = Table::new();
        let mut missing = false;
        for spec in method.global_params() {
            let levels = [&s.slice.parameters, &self.config.parameters];
            match self.resolve(&levels, spec, &out_name, t) {
                Some(v) => {
                    globals.insert(spec.name, v);
                }
                None if spec.default == ParamDefault::Required => {
                    missing = true;
                    self.problems.add(format!(
                        "missing required parameter `{}` for tensor `{out_name}`",
                        spec.name
                    ));
                }
                None => {}
            }
        }
        let Some(globals) = Globals::from_table(method, &globals) else {
            if !missing {
                self.problems.add(format!(
                    "tensor `{out_name}`: the parameters of `{}` are incomplete",
                    method.name()
                ));
            }
            return;
        };
        let Some(shape) = self.output_shape(&out_name, &shapes, s.base) else {
            return;
        };
        let remapped = self.union.is_some() && is_embedding(&out_name) && shape.len() == 2;
        let job = TensorJob {
            dtype: self
                .config
                .out_dtype
                .or(self.config.dtype)
                .unwrap_or(shapes[s.base.unwrap_or(0)].2),
            name: out_name,
            shape,
            inputs: job_inputs,
            base: s.base,
            globals,
            remapped,
        };
        if let Err(e) = super::methods::validate(method, &job) {
            self.problems.add(format!("tensor `{}`: {e}", job.name));
            return;
        }
        self.jobs.push(job);
    }

    /// The output shape: all inputs must agree, except embedding rows, which are
    /// cropped to the base's rows (or the smallest, without a base), or are
    /// the union vocabulary's rows.
    fn output_shape(
        &mut self,
        name: &str,
        shapes: &[(String, Vec<usize>, DType)],
        base: Option<usize>,
    ) -> Option<Vec<usize>> {
        let reference = base.unwrap_or(0);
        let (ref_name, ref_shape, _) = &shapes[reference];
        let mut out = ref_shape.clone();
        let embedding = is_embedding(name) && ref_shape.len() == 2;
        if embedding && base.is_none() {
            out[0] = shapes.iter().map(|(_, s, _)| s[0]).min().unwrap_or(out[0]);
        }
        if let (true, Some(union)) = (embedding, &self.union) {
            out[0] = union.vocab.rows;
        }
        let mut ok = true;
        for (model, shape, _) in shapes {
            let fits = if embedding && self.union.is_some() {
                shape.len() == 2 && shape[1] == out[1]
            } else if embedding {
                shape.len() == 2 && shape[1] == out[1] && shape[0] >= out[0]
            } else {
                shape == ref_shape
            };
            if !fits {
                self.problems.add(format!(
                    "shape mismatch for tensor `{name}`: model `{model}` has {shape:?}, `{ref_name}` has {ref_shape:?}"
                ));
                ok = false;
            }
        }
        ok.then_some(out)
    }

    /// Plans the tensors outside the layers (embeddings before, norms and head
    /// after) from the sources of one slice.
    fn plan_outer(&mut self, s: &ResolvedSlice, pre: bool) {
        let mut names: Vec<String> = Vec::new();
        for (m, _, _) in std::iter::once(&s.sources[s.base.unwrap_or(0)]).chain(&s.sources) {
            for n in self.models[*m].tensors.names() {
                if split_layer(n).is_none()
                    && is_pre_layer(n) == pre
                    && !names.contains(n)
                    && (n != HEAD || self.head)
                {
                    names.push(n.clone());
                }
            }
        }
        // Tied embeddings: never invent a head the config donor lacks (its
        // config says the head is the embedding matrix), never drop one it
        // has (models with tied embeddings give their embedding matrix).
        if !pre && self.head && !names.iter().any(|n| n == HEAD) {
            names.push(HEAD.to_owned());
        }
        for name in names {
            let inputs: Vec<String> = s
                .sources
                .iter()
                .map(|(m, _, _)| {
                    let t = &self.models[*m].tensors;
                    if t.info(&name).is_none() && name == HEAD {
                        // Tied embeddings: the head is the embedding matrix.
                        if let Some(e) = t
                            .names()
                            .iter()
                            .find(|n| n.ends_with("embed_tokens.weight"))
                        {
                            return e.clone();
                        }
                    }
                    name.clone()
                })
                .collect();
            self.add_job(s, name, inputs, 0.0);
        }
    }

    fn plan_layers(&mut self, s: &ResolvedSlice, offset: usize) {
        let (ref_model, ref_start, _) = s.sources[s.base.unwrap_or(0)];
        for j in 0..s.len {
            self.layer_sources.push((ref_model, ref_start + j));
            let t = if s.len > 1 {
                j as f64 / (s.len - 1) as f64
            } else {
                1.0
            };
            let layer_names: Vec<(String, String)> = self.models[ref_model]
                .tensors
                .names()
                .iter()
                .filter_map(|n| {
                    let (prefix, i, suffix) = split_layer(n)?;
                    (i == ref_start + j).then(|| (prefix.to_owned(), suffix.to_owned()))
                })
                .collect();
            if layer_names.is_empty() {
                self.problems.add(format!(
                    "model `{}` has no tensors for layer {}",
                    self.models[ref_model].name,
                    ref_start + j
                ));
                continue;
            }
            for (prefix, suffix) in layer_names {
                let inputs = s
                    .sources
                    .iter()
                    .map(|(_, start, _)| format!("{prefix}{}{suffix}", start + j))
                    .collect();
                self.add_job(s, format!("{prefix}{}{suffix}", offset + j), inputs, t);
            }
        }
    }
}

impl MergePlan {
    /// Opens the models (`paths` maps each reference as written to its folder),
    /// validates everything against the configuration and plans every output
    /// tensor. All problems are reported in one error.
    pub fn build(
        config: &MergeConfig,
        paths: &BTreeMap<String, PathBuf>,
        seed: u64,
    ) -> Result<MergePlan> {
        let mut problems = Problems::default();
        let mut models = Vec::new();
        let mut index = BTreeMap::new();
        for r in config.referenced_models() {
            let Some(dir) = paths.get(&r.name) else {
                problems.add(format!("model `{}` was not provided", r.name));
                continue;
            };
            match open_model(&r.name, dir) {
                Ok(m) => {
                    index.insert(r.name.clone(), models.len());
                    models.push(m);
                }
                Err(e) => problems.add(format!("{e:#}")),
            }
        }
        if problems.0.is_empty() {
            for p in super::arch::check(&models, config) {
                problems.add(p);
            }
        }
        let first = config.referenced_models()[0].name.clone();
        let donor_name = config.base_model.as_ref().map_or(first, |b| b.name.clone());
        // The output has an output head exactly when the model whose
        // config.json it gets (with `tie_word_embeddings`) has one.
        let head = index
            .get(&donor_name)
            .is_some_and(|d| models[*d].tensors.info(HEAD).is_some());
        let mut union = None;
        if config.tokenizer == TokenizerSource::Union && problems.0.is_empty() {
            match PlanUnion::build(
                &models,
                &index,
                index[&donor_name],
                &config.tokens,
                config.pad_to_multiple_of,
            ) {
                Ok(u) => union = Some(u),
                Err(e) => problems.add(format!("{e:#}")),
            }
        }
        let mut planner = Planner {
            config,
            models,
            index,
            problems,
            seed,
            jobs: Vec::new(),
            union,
            head,
            layer_sources: Vec::new(),
        };
        let extra = config
            .base_model
            .as_ref()
            .filter(|b| {
                config.whole_models
                    && !config.slices[0]
                        .sources
                        .iter()
                        .any(|s| s.model.name == b.name)
            })
            .map(appended_base);
        let mut resolved = Vec::new();
        let failed_to_open = !planner.problems.0.is_empty();
        if !failed_to_open {
            for (i, slice) in config.slices.iter().enumerate() {
                let extra = if i == 0 { extra.as_ref() } else { None };
                if let Some(r) = planner.resolve_slice(slice, extra) {
                    planner.check_method_inputs(&r);
                    resolved.push(r);
                }
            }
        }
        let mut out_layers = 0;
        if planner.problems.0.is_empty() {
            planner.plan_outer(&resolved[0], true);
            for r in &resolved {
                planner.plan_layers(r, out_layers);
                out_layers += r.len;
            }
            planner.plan_outer(&resolved[resolved.len() - 1], false);
        }
        let Planner {
            models,
            problems,
            jobs,
            index,
            union,
            layer_sources,
            ..
        } = planner;
        problems.check()?;
        let config_donor = index[&donor_name];
        let tokenizer_donor = match &config.tokenizer {
            TokenizerSource::Model(m) => index[&m.name],
            _ => config_donor,
        };
        let vocab_rows = jobs
            .iter()
            .find(|j| j.name.ends_with("embed_tokens.weight") || j.name == "lm_head.weight")
            .map(|j| j.shape[0]);
        Ok(MergePlan {
            method: config.method,
            models,
            jobs,
            config_donor,
            tokenizer_donor,
            out_layers,
            layer_sources,
            vocab_rows,
            torch_dtype: config.out_dtype.or(config.dtype),
            union,
        })
    }

    /// Total bytes of the output tensors.
    pub fn output_bytes(&self) -> u64 {
        self.jobs
            .iter()
            .map(|j| j.shape.iter().product::<usize>() as u64 * j.dtype.size() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_split_at_the_index() {
        assert_eq!(
            split_layer("model.layers.12.mlp.up_proj.weight"),
            Some(("model.layers.", 12, ".mlp.up_proj.weight"))
        );
        assert_eq!(
            split_layer("transformer.h.3.attn.c_attn.weight"),
            Some(("transformer.h.", 3, ".attn.c_attn.weight"))
        );
        assert_eq!(split_layer("model.norm.weight"), None);
        assert!(is_pre_layer("model.embed_tokens.weight"));
        assert!(!is_pre_layer("lm_head.weight"));
    }
}
