//! `quantize`: a Hugging Face model folder → GGUF files that llama.cpp loads,
//! one per requested type, named `<name>-<TYPE>.gguf` (`name` defaults to the
//! recipe's name): `quantize: {model, format: gguf, type: Q4_K_M | [..],
//! imatrix: <source or step>, name: <file stem>}`.
//!
//! The conversion (config, tokenizer, tensor plan) is done once and shared by
//! every type; tensors stream from the safetensors mmap through a local thread
//! pool of `ctx.threads` into each file. See [`crate::gguf::pipeline`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{input_ref, InputRef, ParseContext, Step, StepContext};
use crate::gguf::imatrix::Imatrix;
use crate::gguf::mixture::Preset;
use crate::gguf::pipeline::Conversion;
use crate::syntax::diag::{did_you_mean, RecipeError};
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;

/// A `quantize` step.
#[derive(Debug, Clone)]
pub struct Quantize {
    model: InputRef,
    presets: Vec<Preset>,
    imatrix: Option<InputRef>,
    name: Option<String>,
}

impl Quantize {
    /// Parses the step body.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<Quantize, RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("quantize step `{}`", cx.step),
            &["model", "format", "type", "imatrix", "name"],
        )?;
        f.finish()?;
        let model = input_ref(cx.diag, f.req("model")?, "model")?;
        if let Some(fmt) = f.opt("format") {
            if fmt.as_str() != Some("gguf") {
                return Err(cx.diag.error(
                    fmt.span,
                    "`format` must be `gguf` (the only format quantize writes)",
                ));
            }
        }
        let type_node = f.req("type")?;
        let names = f.opt_str_list("type")?;
        if names.is_empty() {
            return Err(cx
                .diag
                .error(type_node.span, "`type` lists no quantization type"));
        }
        let spans: Vec<_> = match type_node.as_seq() {
            Some(items) => items.iter().map(|n| n.span).collect(),
            None => vec![type_node.span],
        };
        let mut presets = Vec::new();
        for (name, span) in names.iter().zip(spans) {
            let Some(p) = Preset::parse(name) else {
                let mut err = cx
                    .diag
                    .error(span, format!("unknown GGUF quantization type `{name}`"));
                let upper = name.to_ascii_uppercase();
                err = match did_you_mean(&upper, Preset::names()) {
                    Some(s) => err.with_help(format!("did you mean `{s}`?")),
                    None => err.with_help(format!(
                        "known types: {}",
                        Preset::names().collect::<Vec<_>>().join(", ")
                    )),
                };
                return Err(err);
            };
            if presets.contains(&p) {
                return Err(cx
                    .diag
                    .error(span, format!("type `{}` is listed twice", p.name())));
            }
            presets.push(p);
        }
        let imatrix = f
            .opt("imatrix")
            .map(|n| input_ref(cx.diag, n, "imatrix"))
            .transpose()?;
        let name = f.opt_str("name")?;
        if let Some(n) = &name {
            if n.is_empty() || n.contains('/') || n.starts_with('.') {
                return Err(cx.diag.error(
                    f.req("name")?.span,
                    "`name` must be a plain file stem (no `/`, not starting with `.`)",
                ));
            }
        }
        Ok(Quantize {
            model,
            presets,
            imatrix,
            name,
        })
    }

    /// The output file name for `preset` given the recipe name.
    pub fn file_name(&self, recipe_name: &str, preset: Preset) -> String {
        let stem = self
            .name
            .as_deref()
            .unwrap_or(recipe_name)
            .replace('/', "-");
        format!("{stem}-{}.gguf", preset.name())
    }
}

/// The imatrix file inside an input artifact: the file itself, or the only
/// `.dat`/`.gguf` file of a directory.
fn imatrix_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "dat" || e == "gguf"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("{}: no .dat or .gguf imatrix file inside", path.display()),
        _ => bail!("{}: several imatrix candidates: {found:?}", path.display()),
    }
}

impl Step for Quantize {
    fn kind(&self) -> &'static str {
        "quantize"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<InputRef> {
        let mut v = vec![self.model.clone()];
        v.extend(self.imatrix.clone());
        v
    }

    /// Without `name:`, files and `general.name` take the recipe's name, which
    /// must then be part of the key.
    fn bind(&mut self, recipe: &crate::card::RecipeFacts) {
        self.name.get_or_insert_with(|| recipe.name.clone());
    }

    fn params(&self) -> serde_json::Value {
        let types: Vec<&str> = self.presets.iter().map(|p| p.name()).collect();
        json!({
            "model": self.model.name,
            "format": "gguf",
            "type": types,
            "imatrix": self.imatrix.as_ref().map(|i| &i.name),
            "name": self.name,
        })
    }

    fn memory_estimate(&self, ctx: &StepContext) -> u64 {
        // A window of 2 slabs per thread: 16 MiB of f32 in, up to 16 MiB out.
        (ctx.threads.max(1) as u64) * 2 * (32 << 20) + (128 << 20)
    }

    fn preflight(&self, sources: &BTreeMap<String, PathBuf>) -> Result<()> {
        if let Some(dir) = sources.get(&self.model.name) {
            Conversion::open(dir, &self.model.name)
                .with_context(|| format!("quantize input `{}`", self.model.name))?;
        }
        if let Some(path) = self.imatrix.as_ref().and_then(|i| sources.get(&i.name)) {
            Imatrix::load(&imatrix_file(path)?)?;
        }
        Ok(())
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let model_dir = &ctx.input(&self.model.name)?.path;
        let stem = self.name.as_deref().unwrap_or(ctx.recipe_name);
        let conversion = Conversion::open(model_dir, stem)?;
        let imatrix = match &self.imatrix {
            Some(i) => Some((
                Imatrix::load(&imatrix_file(&ctx.input(&i.name)?.path)?)?,
                i.name.as_str(),
            )),
            None => None,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(ctx.threads.max(1))
            .build()
            .context("cannot start the quantization thread pool")?;
        let mut written: Vec<PathBuf> = Vec::new();
        for preset in &self.presets {
            let path = ctx.out_dir.join(self.file_name(ctx.recipe_name, *preset));
            (ctx.log)(&format!("writing {}", path.display()));
            let result = conversion.write(
                &path,
                *preset,
                imatrix.as_ref().map(|(m, n)| (m, *n)),
                &pool,
                ctx.log,
            );
            match result {
                Ok(w) => {
                    let types: Vec<String> =
                        w.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
                    (ctx.log)(&format!(
                        "{}: {:.1} MiB ({})",
                        path.file_name().unwrap_or_default().to_string_lossy(),
                        w.bytes as f64 / (1 << 20) as f64,
                        types.join(", ")
                    ));
                    written.push(w.path);
                }
                Err(e) => {
                    for p in &written {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(e.context(format!("quantizing to {}", preset.name())));
                }
            }
        }
        Ok(())
    }
}
