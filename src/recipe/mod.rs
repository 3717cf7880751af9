//! Recipes: the YAML files that describe a build, parsed with positions so every
//! error names its file, line and column.
//!
//! A recipe is validated as a whole (schema, references, cycles) before anything
//! runs. A plain mergekit config (top-level `merge_method`, or a multi-document
//! mergekit-multi file) is accepted as a recipe of merge steps.

pub mod graph;
pub mod matrix;
pub mod resources;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::card::RecipeFacts;
use crate::steps::{self, ParseContext, Step};
use crate::syntax::diag::{did_you_mean, Diag, RecipeError};
use crate::syntax::fields::{expect_str, Fields};
use crate::syntax::yaml::{Node, Span, Value};
pub use matrix::{Expansion, ParseOptions};
pub use source::{Source, SourceSpec};

/// The recipe format version this yibuild reads.
pub const RECIPE_VERSION: i64 = 1;

/// One step of a recipe.
#[derive(Debug)]
pub struct StepDef {
    /// The step's name.
    pub name: String,
    /// Where the step is declared.
    pub span: Span,
    /// Its implementation.
    pub step: Box<dyn Step>,
    /// `resources:`, what the step asks a cluster scheduler for.
    pub resources: resources::Resources,
}

/// A parsed and validated recipe.
#[derive(Debug)]
pub struct Recipe {
    /// `name`: the output folder and card title.
    pub name: String,
    /// The recipe file.
    pub file: PathBuf,
    /// The directory relative paths resolve against.
    pub dir: PathBuf,
    /// The recipe text, for cards and error rendering.
    pub text: String,
    /// `card:` facts the tool cannot infer.
    pub card: serde_json::Map<String, serde_json::Value>,
    /// Sources in the order written.
    pub sources: Vec<Source>,
    /// Steps in the order written.
    pub steps: Vec<StepDef>,
    /// Default targets (`default:`; all leaves when absent).
    pub default: Vec<String>,
    /// The steps a `matrix:` expanded, with their instances (see [`matrix`]).
    pub matrices: Vec<Expansion>,
}

const TOP_KEYS: &[&str] = &["yibuild", "name", "card", "sources", "steps", "default"];
const CARD_KEYS: &[&str] = &[
    "license",
    "license_name",
    "license_link",
    "language",
    "prompt_template",
    "stop_strings",
    "summary",
    "notes",
    "running",
    "tags",
    "pipeline_tag",
    "library_name",
    "base_model",
];
// `matrix` is consumed by [`matrix::expand`] before a step is parsed; it is
// listed so that a misspelt `matrx:` gets a "did you mean".
const STEP_COMMON_KEYS: &[&str] = &["seed", "description", "matrix", "resources"];

impl Recipe {
    /// Reads, parses and validates the recipe (or mergekit config) at `file`.
    pub fn load(file: &Path) -> Result<Recipe, RecipeError> {
        Recipe::load_with(file, &ParseOptions::default())
    }

    /// [`Recipe::load`] with options from the command line (`--max-variants`).
    pub fn load_with(file: &Path, opts: &ParseOptions) -> Result<Recipe, RecipeError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| RecipeError::file(file, format!("cannot read recipe: {e}")))?;
        Recipe::parse_with(file, &text, opts)
    }

    /// Parses recipe text as if read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Recipe, RecipeError> {
        Recipe::parse_with(file, text, &ParseOptions::default())
    }

    /// [`Recipe::parse`] with options from the command line.
    pub fn parse_with(file: &Path, text: &str, opts: &ParseOptions) -> Result<Recipe, RecipeError> {
        let diag = Diag::new(file, text);
        let docs = crate::syntax::yaml::parse_documents(text)
            .map_err(|e| diag.error(e.span, format!("invalid YAML: {}", e.message)))?;
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let dir = dir.canonicalize().unwrap_or(dir);
        let Some(first) = docs.first() else {
            return Err(RecipeError::file(file, "the recipe is empty"));
        };
        let mut recipe = if first.get("merge_method").is_some()
            || first.get("slices").is_some() && first.get("yibuild").is_none()
        {
            let mut r = mergekit_recipe(&docs, &diag, &dir)?;
            r.name = file
                .file_stem()
                .map(|s| {
                    s.to_string_lossy().replace(
                        |c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)),
                        "_",
                    )
                })
                .unwrap_or_else(|| "merged".to_owned());
            crate::fs::names::check_component(
                "the recipe name taken from the config file's name",
                &r.name,
            )
            .map_err(|e| RecipeError::file(file, format!("{e}; rename the file")))?;
            r
        } else {
            if docs.len() > 1 {
                return Err(
                    diag.error(docs[1].span, "a recipe is one YAML document; found several")
                );
            }
            native_recipe(first, &diag, &dir, opts)?
        };
        recipe.file = file.to_path_buf();
        recipe.text = text.to_owned();
        crate::recipe::graph::check_references(&recipe, &diag)?;
        let facts = recipe.facts();
        for s in &mut recipe.steps {
            s.step.bind(&facts);
        }
        Ok(recipe)
    }

    /// The facts steps are bound to (see [`RecipeFacts`]).
    pub fn facts(&self) -> RecipeFacts {
        RecipeFacts {
            name: self.name.clone(),
            digest: self.digest(),
            card: self.card.clone(),
            sources: self
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.describe()))
                .collect(),
            steps: self
                .steps
                .iter()
                .map(|s| (s.name.clone(), s.step.kind().to_owned(), s.step.params()))
                .collect(),
            mermaid: crate::recipe::graph::BuildGraph::new(self)
                .to_mermaid(self, crate::recipe::graph::Detail::Sweeps),
            text: self.text.clone(),
            file_name: self.file.file_name().map_or_else(
                || "recipe.yaml".to_owned(),
                |n| n.to_string_lossy().into_owned(),
            ),
        }
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The steps a target name selects: the step itself; every instance of an
    /// expanded step for its plain name or `name[*]`; and for `name[a=v]` the
    /// instances with those values (a subset of the axes may be given). None
    /// when nothing matches.
    pub fn resolve_target(&self, name: &str) -> Option<Vec<String>> {
        if self.step(name).is_some() {
            return Some(vec![name.to_owned()]);
        }
        let (base, filter) = match name.split_once('[') {
            Some((base, rest)) => (base, Some(rest.strip_suffix(']')?)),
            None => (name, None),
        };
        let expansion = self.matrices.iter().find(|e| e.step == base)?;
        let wanted: Vec<(&str, &str)> = match filter {
            None | Some("*") => Vec::new(),
            Some(f) => f
                .split(',')
                .map(|kv| kv.split_once('='))
                .collect::<Option<_>>()?,
        };
        let selected: Vec<String> = expansion
            .instances
            .iter()
            .filter(|i| {
                wanted.iter().all(|(axis, value)| {
                    i.values
                        .iter()
                        .any(|(a, v)| a == axis && crate::syntax::json_text(v) == *value)
                })
            })
            .map(|i| i.name.clone())
            .collect();
        (!selected.is_empty()).then_some(selected)
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// A digest of what the recipe means (not its formatting): name, card,
    /// sources as written, and each step's kind, version, inputs and parameters.
    pub fn digest(&self) -> String {
        let steps: Vec<_> = self
            .steps
            .iter()
            .map(|s| json!({"name": s.name, "kind": s.step.kind(), "version": s.step.version(), "params": s.step.params()}))
            .collect();
        let sources: Vec<_> = self
            .sources
            .iter()
            .map(|s| json!([s.name, s.describe()]))
            .collect();
        let doc = json!({"name": self.name, "card": self.card, "sources": sources, "steps": steps, "default": self.default});
        blake3::hash(crate::cache::canonical_json(&doc).as_bytes())
            .to_hex()
            .to_string()
    }
}

fn native_recipe(
    doc: &Node,
    diag: &Diag,
    dir: &Path,
    opts: &ParseOptions,
) -> Result<Recipe, RecipeError> {
    let f = Fields::new(diag, doc, "the recipe", TOP_KEYS)?;
    f.finish()?;
    let version = f.req("yibuild")?;
    if version.value != Value::Int(RECIPE_VERSION) {
        return Err(diag.error(
            version.span,
            format!(
                "unsupported recipe version {}: this yibuild reads `yibuild: {RECIPE_VERSION}`",
                version.to_json()
            ),
        ));
    }
    let name = f.req_str("name")?;
    if crate::fs::names::component_problem(&name).is_some() || name.starts_with('.') {
        return Err(diag.error(
            f.req("name")?.span,
            format!("`name` must be a non-empty name without `/`, found `{name}`"),
        ));
    }
    let card = match f.opt("card") {
        Some(node) => {
            let c = Fields::new(diag, node, "`card`", CARD_KEYS)?;
            c.finish()?;
            node.to_json().as_object().cloned().unwrap_or_default()
        }
        None => serde_json::Map::new(),
    };
    let mut sources = Vec::new();
    if let Some(node) = f.opt("sources") {
        let Some(entries) = node.as_map() else {
            return Err(diag.error(
                node.span,
                "`sources` must be a mapping of names to paths or hf:// ids",
            ));
        };
        for (k, v) in entries {
            let name = expect_str(diag, k, "sources")?;
            check_name(diag, k, &name)?;
            sources.push(Source::parse(&name, v, diag, dir)?);
        }
    }
    let steps_node = f.req("steps")?;
    let Some(entries) = steps_node.as_map() else {
        return Err(diag.error(
            steps_node.span,
            "`steps` must be a mapping of step names to steps",
        ));
    };
    for (k, v) in entries {
        let name = expect_str(diag, k, "steps")?;
        check_name(diag, k, &name)?;
        step_kind(&name, k.span, v, diag)?;
        if sources.iter().any(|s| s.name == name) {
            return Err(diag.error(
                k.span,
                format!("`{name}` is both a source and a step; names must be unique"),
            ));
        }
    }
    let (expanded, matrices) = matrix::expand(entries, diag, opts)?;
    for s in &expanded {
        crate::fs::names::check_component("step instance name", &s.name)
            .map_err(|e| diag.error(s.span, e))?;
    }
    let steps = expanded
        .into_iter()
        .map(|s| parse_step(&s.name, s.span, &s.body, diag, opts.device))
        .collect::<Result<Vec<_>, _>>()?;
    let mut recipe = Recipe {
        name,
        file: PathBuf::new(),
        dir: dir.to_path_buf(),
        text: String::new(),
        card,
        sources,
        steps,
        default: Vec::new(),
        matrices,
    };
    let written = f.opt_str_list("default")?;
    if let Some(node) = f.opt("default") {
        let items: Vec<&Node> = node.as_seq().map_or(vec![node], |s| s.iter().collect());
        for (target, item) in written.iter().zip(items) {
            let Some(selected) = recipe.resolve_target(target) else {
                let err = diag.error(
                    item.span,
                    format!("default target `{target}` is not a step"),
                );
                return Err(suggest(
                    err,
                    target,
                    recipe.steps.iter().map(|s| s.name.as_str()),
                ));
            };
            recipe.default.extend(selected);
        }
    }
    Ok(recipe)
}

fn check_name(diag: &Diag, node: &Node, name: &str) -> Result<(), RecipeError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(diag.error(
            node.span,
            format!("invalid name `{name}`: use letters, digits, `-`, `_` and `.`"),
        ))
    }
}

/// Adds a "did you mean" hint naming the closest candidate, if any is close.
pub fn suggest<'a>(
    err: RecipeError,
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> RecipeError {
    match did_you_mean(word, candidates) {
        Some(s) => err.with_help(format!("did you mean `{s}`?")),
        None => err,
    }
}

/// Checks a step's keys (one kind, common keys) and returns its kind and body.
fn step_kind<'a>(
    name: &str,
    span: Span,
    node: &'a Node,
    diag: &Diag,
) -> Result<(&'static str, &'a Node), RecipeError> {
    let Some(entries) = node.as_map() else {
        return Err(diag.error(
            node.span,
            format!(
                "step `{name}` must be a mapping with one step kind, found {}",
                node.type_name()
            ),
        ));
    };
    let mut kind: Option<(&'static str, &'a Node)> = None;
    for (k, v) in entries {
        let key = k.as_str().unwrap_or_default();
        if let Some(known) = steps::KINDS.iter().find(|kind| **kind == key) {
            if let Some((first, _)) = kind {
                return Err(diag.error(k.span, format!("step `{name}` has two kinds, `{first}` and `{key}`; a step has exactly one")));
            }
            kind = Some((known, v));
        } else if !STEP_COMMON_KEYS.contains(&key) {
            let err = diag.error(k.span, format!("unknown key `{key}` in step `{name}`"));
            let all = steps::KINDS.iter().chain(STEP_COMMON_KEYS).copied();
            return Err(match did_you_mean(key, all) {
                Some(s) => err.with_help(format!("did you mean `{s}`?")),
                None => err.with_help(format!(
                    "a step has one kind ({}) and optionally {}",
                    steps::KINDS.join(", "),
                    STEP_COMMON_KEYS.join(", ")
                )),
            });
        }
    }
    kind.ok_or_else(|| {
        diag.error(
            span,
            format!(
                "step `{name}` has no kind; expected one of: {}",
                steps::KINDS.join(", ")
            ),
        )
    })
}

fn parse_step(
    name: &str,
    span: Span,
    node: &Node,
    diag: &Diag,
    device: crate::steps::Device,
) -> Result<StepDef, RecipeError> {
    let (kind, body) = step_kind(name, span, node, diag)?;
    let seed = match node.get("seed") {
        None => None,
        Some(n) => match n.value {
            Value::Int(i) if i >= 0 => Some(i as u64),
            _ => {
                return Err(diag.error(
                    n.span,
                    format!(
                        "`seed` must be a non-negative integer, found {}",
                        n.type_name()
                    ),
                ))
            }
        },
    };
    let resources = match node.get("resources") {
        Some(n) => resources::Resources::parse(diag, n)?,
        None => Default::default(),
    };
    let cx = ParseContext {
        diag,
        step: name,
        seed,
        device,
    };
    Ok(StepDef {
        name: name.to_owned(),
        span,
        step: steps::parse(kind, body, &cx)?,
        resources,
    })
}

/// A mergekit config (one document) or mergekit-multi file (one per `name:`d
/// document) as a recipe: model references become sources (a local folder when
/// the path exists next to the config, a Hub repo otherwise).
fn mergekit_recipe(docs: &[Node], diag: &Diag, dir: &Path) -> Result<Recipe, RecipeError> {
    let multi = docs.len() > 1;
    let mut steps: Vec<StepDef> = Vec::new();
    for doc in docs {
        let name = if multi {
            let Some(n) = doc.get("name") else {
                return Err(diag.error(
                    doc.span,
                    "each document of a mergekit-multi file needs a `name`",
                ));
            };
            let name = expect_str(diag, n, "name")?;
            crate::fs::names::check_component("mergekit-multi document name", &name)
                .map_err(|e| diag.error(n.span, e))?;
            name
        } else {
            "merged".to_owned()
        };
        let body = Node {
            value: Value::Map(
                doc.as_map()
                    .unwrap_or_default()
                    .iter()
                    .filter(|(k, _)| !(multi && k.as_str() == Some("name")))
                    .cloned()
                    .collect(),
            ),
            span: doc.span,
        };
        let cx = ParseContext {
            diag,
            step: &name,
            seed: None,
            device: crate::steps::Device::Auto,
        };
        steps.push(StepDef {
            name: name.clone(),
            span: doc.span,
            step: steps::parse("merge", &body, &cx)?,
            resources: Default::default(),
        });
    }
    let step_names: BTreeSet<String> = steps.iter().map(|s| s.name.clone()).collect();
    let mut sources: BTreeMap<String, Source> = BTreeMap::new();
    for s in &steps {
        for input in s.step.inputs() {
            if step_names.contains(&input.name) || sources.contains_key(&input.name) {
                continue;
            }
            let local = dir.join(&input.name);
            let spec = match source::parse_hub(&input.name) {
                Some(hub) if !local.exists() => hub,
                _ => SourceSpec::Local {
                    written: input.name.clone(),
                    path: local,
                },
            };
            sources.insert(
                input.name.clone(),
                Source {
                    name: input.name.clone(),
                    spec,
                    span: input.span,
                },
            );
        }
    }
    let last = steps.last().map(|s| s.name.clone()).into_iter().collect();
    Ok(Recipe {
        name: "merged".to_owned(),
        file: PathBuf::new(),
        dir: dir.to_path_buf(),
        text: String::new(),
        card: serde_json::Map::new(),
        sources: sources.into_values().collect(),
        steps,
        default: last,
        matrices: Vec::new(),
    })
}
