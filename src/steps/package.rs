//! `package`: a release folder with the model, its quantizations, a generated
//! model card, `SHA256SUMS` and `build-report.json`, optionally as one archive.
//!
//! Every byte of the release is a function of the inputs and the recipe facts,
//! so two builds anywhere give identical folders and archives.
//!
//! Layout: the model's files at the top level (as on the Hub), a quantize
//! step's GGUF files beside them, and a `run` step's output (an exl2, GPTQ or
//! AWQ model folder) in a subfolder named after the step or by `path:`, so
//! its `config.json` never meets the model's. The recipe file itself is
//! included under its own name, and `mergekit_config.yml` is rewritten in
//! the form mergekit runs ([`crate::merge::portable`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde_json::{json, Map, Value as Json};

use super::{input_ref, InputRef, ParseContext, Step, StepContext};
use crate::cache::memo::list_files;
use crate::card::RecipeFacts;
use crate::card::{self, CardInput, EvalSummary, QuantFile};
use crate::eval::results::read_results;
use crate::fs::files::{link_or_copy, link_tree, read_json, sha256_file};
use crate::syntax::diag::RecipeError;
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;

/// One entry of `quantized:`: a step name, or `{step: NAME, path: DIR}` to
/// put its output in the subfolder `DIR`.
#[derive(Debug, Clone)]
struct Quantized {
    input: InputRef,
    /// `path:` as written.
    path: Option<String>,
}

impl Quantized {
    /// Parses a name or a `{step, path}` mapping.
    fn parse(f: &Fields, node: &Node) -> Result<Quantized, RecipeError> {
        if node.as_map().is_none() {
            return Ok(Quantized {
                input: input_ref(f.diag(), node, "quantized")?,
                path: None,
            });
        }
        let entry = Fields::new(f.diag(), node, "a `quantized` entry", &["step", "path"])?;
        entry.finish()?;
        let path = entry.opt_str("path")?;
        if let (Some(p), Some(n)) = (&path, entry.opt("path")) {
            if let Err(why) = crate::fs::names::check_component("`path`", p) {
                return Err(f
                    .diag()
                    .error(n.span, format!("{why}; name one folder of the release")));
            }
        }
        Ok(Quantized {
            input: input_ref(f.diag(), entry.req("step")?, "step")?,
            path,
        })
    }

    /// The subfolder of the release this entry's output goes to: its `path:`,
    /// else a `run` step's name; `None` puts the files at the top level (a
    /// quantize step's GGUF files, as Hub repos lay them out).
    fn folder(&self, facts: &RecipeFacts) -> Option<String> {
        let is_run = facts
            .steps
            .iter()
            .any(|(n, kind, _)| *n == self.input.name && kind == "run");
        self.path
            .clone()
            .or_else(|| is_run.then(|| self.input.name.clone()))
    }

    /// Its part of the step key: the name, or `{step, path}`.
    fn param(&self) -> Json {
        match &self.path {
            None => json!(self.input.name),
            Some(p) => json!({"step": self.input.name, "path": p}),
        }
    }
}

/// A `package` step.
#[derive(Debug, Clone)]
pub struct Package {
    model: InputRef,
    quantized: Vec<Quantized>,
    evals: Vec<InputRef>,
    card: Map<String, Json>,
    archive: bool,
    facts: Option<RecipeFacts>,
}

/// A list of references (or one) under `key`.
pub(super) fn refs(f: &Fields, key: &str) -> Result<Vec<InputRef>, RecipeError> {
    match f.opt(key) {
        None => Ok(Vec::new()),
        Some(n) => match n.as_seq() {
            Some(items) => items.iter().map(|i| input_ref(f.diag(), i, key)).collect(),
            None => Ok(vec![input_ref(f.diag(), n, key)?]),
        },
    }
}

impl Package {
    /// Parses `{model, quantized: [steps or {step, path}], evals: [steps],
    /// card: {...}, archive: tar|none}`.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<Package, RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("package step `{}`", cx.step),
            &["model", "quantized", "evals", "card", "archive"],
        )?;
        f.finish()?;
        let archive = match f.opt_str("archive")?.as_deref() {
            None | Some("none") => false,
            Some("tar") => true,
            Some(other) => {
                return Err(cx.diag.error(
                    f.req("archive")?.span,
                    format!("`archive` must be `tar` or `none`, found `{other}`"),
                ))
            }
        };
        let card = match f.opt("card") {
            Some(n) if n.as_map().is_some() => n.to_json().as_object().cloned().unwrap_or_default(),
            Some(n) => {
                return Err(cx
                    .diag
                    .error(n.span, "`card` must be a mapping of card fields"))
            }
            None => Map::new(),
        };
        Ok(Package {
            model: input_ref(cx.diag, f.req("model")?, "model")?,
            quantized: match f.opt("quantized") {
                None => Vec::new(),
                Some(n) => match n.as_seq() {
                    Some(items) => items
                        .iter()
                        .map(|i| Quantized::parse(&f, i))
                        .collect::<Result<_, _>>()?,
                    None => vec![Quantized::parse(&f, n)?],
                },
            },
            evals: refs(&f, "evals")?,
            card,
            archive,
            facts: None,
        })
    }
}

/// Writes the recipe as written into the release under its own file name
/// (`recipe-NAME` if a release file already has that name) and returns the
/// name used.
fn write_recipe(facts: &RecipeFacts, out: &Path) -> Result<String> {
    let name = if out.join(&facts.file_name).exists() {
        format!("recipe-{}", facts.file_name)
    } else {
        facts.file_name.clone()
    };
    crate::fs::names::check_component("the recipe file name", &name).map_err(anyhow::Error::msg)?;
    std::fs::write(out.join(&name), &facts.text)
        .with_context(|| format!("cannot write {}", out.join(&name).display()))?;
    Ok(name)
}

/// Replaces the model's `mergekit_config.yml` (recipe aliases) with one
/// mergekit can run (Hub ids and paths), when the model has one.
fn portable_mergekit_config(facts: &RecipeFacts, out: &Path) -> Result<()> {
    let path = out.join("mergekit_config.yml");
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let docs = crate::syntax::yaml::parse_documents(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message))?;
    let Some(config) = docs.first() else {
        return Ok(());
    };
    let portable = crate::merge::portable::portable_config(&config.to_json(), facts);
    // The file is a hardlink to a cache object: replace it, never write through.
    std::fs::remove_file(&path)?;
    std::fs::write(&path, card::to_yaml(&portable, 0))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a tar of `dir` with sorted entries, zero times and fixed modes.
fn write_archive(dir: &Path, files: &[String], dest: &Path, prefix: &str) -> Result<()> {
    let mut builder = tar::Builder::new(std::fs::File::create(dest)?);
    builder.mode(tar::HeaderMode::Deterministic);
    for rel in files {
        let mut header = tar::Header::new_gnu();
        let meta = std::fs::metadata(dir.join(rel))?;
        header.set_size(meta.len());
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder.append_data(
            &mut header,
            format!("{prefix}/{rel}"),
            std::fs::File::open(dir.join(rel))?,
        )?;
    }
    builder.into_inner()?.sync_all()?;
    Ok(())
}

/// `build-report.json`: the yibuild version, the recipe and its digest, the
/// sources as pinned, every step with its kind and parameters, the package's
/// model and quantizations with their content digests, and the device kinds
/// evals ran on. No wall-clock timings or host names: the release is
/// byte-reproducible, and timings live in the build's event stream (`--json`)
/// instead. Eval outputs carry their own timings, so their digests vary run to
/// run and are left out; their results are in the card.
fn build_report(
    facts: &RecipeFacts,
    ctx: &StepContext,
    evals: &[InputRef],
    devices: &BTreeSet<String>,
) -> Json {
    let digests: BTreeMap<&String, &String> = ctx
        .inputs
        .iter()
        .filter(|(k, _)| !evals.iter().any(|e| &e.name == *k))
        .map(|(k, a)| (k, &a.digest))
        .collect();
    let steps: Vec<Json> = facts
        .steps
        .iter()
        .map(|(n, k, p)| {
            let mut p = p.clone();
            if let Some(o) = p.as_object_mut() {
                o.remove("recipe");
            }
            json!({"name": n, "kind": k, "params": p})
        })
        .collect();
    json!({
        "yibuild": env!("CARGO_PKG_VERSION"),
        "recipe": facts.name,
        "recipe_digest": facts.digest,
        "sources": facts.sources.iter().map(|(n, d)| json!({"name": n, "from": d})).collect::<Vec<_>>(),
        "steps": steps,
        "inputs": digests,
        "eval_devices": devices,
    })
}

impl Step for Package {
    fn kind(&self) -> &'static str {
        "package"
    }

    fn version(&self) -> u32 {
        // 2: run outputs in subfolders, the recipe file and a portable
        // mergekit_config.yml in the release, the recipe as written in the card.
        // 3: the card's "Model details" (architecture settings).
        3
    }

    fn inputs(&self) -> Vec<InputRef> {
        let mut v = vec![self.model.clone()];
        v.extend(self.quantized.iter().map(|q| q.input.clone()));
        v.extend(self.evals.iter().cloned());
        v
    }

    fn params(&self) -> Json {
        let names = |v: &[InputRef]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        json!({
            "model": self.model.name,
            "quantized": self.quantized.iter().map(Quantized::param).collect::<Vec<_>>(),
            "evals": names(&self.evals),
            "card": self.card,
            "archive": self.archive,
            "recipe": self.facts,
        })
    }

    fn bind(&mut self, recipe: &RecipeFacts) {
        self.facts = Some(recipe.clone());
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let facts = self
            .facts
            .as_ref()
            .context("internal: package step not bound to its recipe")?;
        let out = ctx.out_dir;
        let model = &ctx.input(&self.model.name)?.path;
        link_tree(model, out, &|rel| {
            rel == "README.md" || rel == super::select::SELECTION_FILE
        })?;
        let sweep = match read_json(&model.join(super::select::SELECTION_FILE)) {
            Ok(selection) => Some(super::select::card_paragraph(&selection)),
            Err(_) => None,
        };
        let mut quants = Vec::new();
        for q in &self.quantized {
            let dir = &ctx.input(&q.input.name)?.path;
            let step = &q.input.name;
            match q.folder(facts) {
                Some(folder) => {
                    let dest = out.join(&folder);
                    if dest.exists() {
                        bail!("the output of `{step}` goes to the folder `{folder}/`, which collides with another release file; give it another `path:`");
                    }
                    std::fs::create_dir(&dest)?;
                    link_tree(dir, &dest, &|_| false)?;
                    let mut size = 0;
                    for rel in list_files(&dest)? {
                        size += std::fs::metadata(dest.join(rel))?.len();
                    }
                    quants.push(QuantFile {
                        file: format!("{folder}/"),
                        size,
                        step: step.clone(),
                        format: card::folder_format(&dest),
                    });
                }
                None => {
                    for rel in list_files(dir)? {
                        let name = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
                        if out.join(&name).exists() {
                            bail!("quantized file `{name}` from `{step}` collides with another release file; give `{step}` a `path:` to put it in a folder");
                        }
                        link_or_copy(&dir.join(&rel), &out.join(&name))?;
                        quants.push(QuantFile {
                            size: std::fs::metadata(out.join(&name))?.len(),
                            format: card::file_format(&name),
                            file: name,
                            step: step.clone(),
                        });
                    }
                }
            }
        }
        // The model's mergekit config first: a recipe that is itself a
        // mergekit config named `mergekit_config.yml` is then kept beside it.
        portable_mergekit_config(facts, out)?;
        let recipe_file = write_recipe(facts, out)?;
        let mut evals = Vec::new();
        for e in &self.evals {
            let path = ctx.input(&e.name)?.path.join("results.json");
            let mut results = read_results(&path)
                .with_context(|| format!("eval step `{}` has no usable results.json", e.name))?;
            // Wall-clock figures differ run to run; the release must not.
            results.timing = Default::default();
            evals.push(EvalSummary {
                step: e.name.clone(),
                results,
            });
        }
        let devices: BTreeSet<String> = evals.iter().map(|e| e.results.device.clone()).collect();
        let mut files = list_files(out)?;
        files.sort();
        let checksums: Vec<(String, String)> = files
            .par_iter()
            .map(|rel| Ok((rel.clone(), sha256_file(&out.join(rel))?)))
            .collect::<Result<_>>()?;
        let (chat_template, stop_strings) = card::folder_prompt(model);
        let input = CardInput {
            facts,
            model_step: &self.model.name,
            overrides: &self.card,
            quants,
            evals,
            sweep,
            parameters: card::parameter_count(model).ok(),
            chat_template,
            stop_strings,
            checksums,
            recipe_file: Some(recipe_file),
            model_details: card::model_details(model),
        };
        std::fs::write(out.join("README.md"), card::render(&input))?;
        crate::fs::files::write_json(
            &out.join("build-report.json"),
            &build_report(facts, ctx, &self.evals, &devices),
        )?;
        let mut files = list_files(out)?;
        files.sort();
        let sums: Vec<String> = files
            .par_iter()
            .map(|rel| Ok(format!("{}  {rel}\n", sha256_file(&out.join(rel))?)))
            .collect::<Result<_>>()?;
        std::fs::write(out.join("SHA256SUMS"), sums.concat())?;
        if self.archive {
            let mut all = list_files(out)?;
            all.sort();
            let archive = out.join(format!("{}.tar", facts.name));
            write_archive(out, &all, &archive, &facts.name)?;
        }
        Ok(())
    }
}
