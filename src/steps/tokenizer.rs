//! `tokenizer`: give a model another tokenizer, chat template or stop tokens,
//! checking the vocabulary against the embedding rows first and resizing the
//! embeddings only when the recipe says how.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value as Json};

use super::files::{link_or_copy, link_tree, read_json, write_json};
use super::{input_ref, InputRef, ParseContext, Step, StepContext};
use crate::recipe::diag::RecipeError;
use crate::recipe::fields::Fields;
use crate::recipe::yaml::Node;
use crate::tokenizer::resize::{resize_embeddings, target_rows, ResizePolicy};
use crate::tokenizer::templates::resolve_template;
use crate::tokenizer::vocab::{check_special_tokens, ModelRows, Vocab, TOKENIZER_FILES};
use crate::tokenizer::prove_loads;

/// A `tokenizer` step: the model folder with the tokenizer files of `from`
/// (or its own), an optional chat template and extra end-of-sequence tokens;
/// weights are hardlinked unless a resize rewrites the embedding shards.
#[derive(Debug, Clone)]
pub struct TokenizerStep {
    model: InputRef,
    from: Option<InputRef>,
    /// Resolved, validated Jinja text.
    chat_template: Option<String>,
    extra_eos: Vec<String>,
    resize: Option<ResizePolicy>,
    pad_to_multiple_of: Option<usize>,
}

impl TokenizerStep {
    /// Parses `{model, from, chat_template, extra_eos, resize, pad_to_multiple_of}`.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<TokenizerStep, RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("tokenizer step `{}`", cx.step),
            &[
                "model",
                "from",
                "chat_template",
                "extra_eos",
                "resize",
                "pad_to_multiple_of",
            ],
        )?;
        f.finish()?;
        let model = input_ref(cx.diag, f.req("model")?, "model")?;
        let from = f
            .opt("from")
            .map(|n| input_ref(cx.diag, n, "from"))
            .transpose()?;
        let chat_template = match f.opt("chat_template") {
            None => None,
            Some(n) => {
                let text = crate::recipe::fields::expect_str(cx.diag, n, "chat_template")?;
                Some(
                    resolve_template(&text)
                        .map_err(|e| cx.diag.error(n.span, format!("{e:#}")))?,
                )
            }
        };
        let resize = match f.opt("resize") {
            None => None,
            Some(n) => {
                let text = crate::recipe::fields::expect_str(cx.diag, n, "resize")?;
                Some(ResizePolicy::parse(&text).ok_or_else(|| {
                    cx.diag
                        .error(n.span, format!("unknown resize policy `{text}`"))
                        .with_help("expected `pad` or `truncate`")
                })?)
            }
        };
        let pad_to_multiple_of = f.opt_u64("pad_to_multiple_of")?.map(|m| m as usize);
        if let Some(n) = f.opt("pad_to_multiple_of") {
            if pad_to_multiple_of == Some(0) {
                return Err(cx.diag.error(n.span, "`pad_to_multiple_of` must be at least 1"));
            }
            if resize.is_none() {
                return Err(cx
                    .diag
                    .error(n.span, "`pad_to_multiple_of` changes the embedding rows")
                    .with_help("add `resize: pad` (or `resize: truncate`)"));
            }
        }
        let extra_eos = f.opt_str_list("extra_eos")?;
        if from.is_none() && chat_template.is_none() && extra_eos.is_empty() && resize.is_none() {
            return Err(cx.diag.error(
                node.span,
                format!(
                    "tokenizer step `{}` changes nothing: add `from`, `chat_template`, \
                     `extra_eos` or `resize`",
                    cx.step
                ),
            ));
        }
        Ok(TokenizerStep {
            model,
            from,
            chat_template,
            extra_eos,
            resize,
            pad_to_multiple_of,
        })
    }
}

/// Adds the ids of `extra_eos` tokens to `eos_token_id` (as a list) and the
/// strings that are not single tokens to `stop_strings`, which transformers'
/// `generate` honours and the model card lists.
fn add_extra_eos(generation: &mut Json, vocab: &Vocab, extra_eos: &[String]) {
    let mut ids: Vec<u64> = match &generation["eos_token_id"] {
        Json::Number(n) => n.as_u64().into_iter().collect(),
        Json::Array(list) => list.iter().filter_map(Json::as_u64).collect(),
        _ => vocab
            .specials
            .get("eos_token")
            .and_then(|t| vocab.id(t))
            .map(u64::from)
            .into_iter()
            .collect(),
    };
    let mut stops: Vec<String> = generation["stop_strings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    for text in extra_eos {
        match vocab.id(text) {
            Some(id) if !ids.contains(&u64::from(id)) => ids.push(id.into()),
            Some(_) => {}
            None if !stops.contains(text) => stops.push(text.clone()),
            None => {}
        }
    }
    generation["eos_token_id"] = json!(ids);
    if !stops.is_empty() {
        generation["stop_strings"] = json!(stops);
    }
}

impl TokenizerStep {
    /// The input whose tokenizer the output gets.
    fn tokenizer_input(&self) -> &str {
        &self.from.as_ref().unwrap_or(&self.model).name
    }

    /// Reads the new vocabulary and the model's rows and decides the output
    /// rows; every mismatch the recipe does not resolve is an error here.
    fn check(&self, model_dir: &Path, tok_dir: &Path) -> Result<(Vocab, ModelRows, usize)> {
        let tok_name = self.tokenizer_input();
        let vocab = Vocab::read(tok_dir).with_context(|| format!("tokenizer of `{tok_name}`"))?;
        let rows =
            ModelRows::read(model_dir).with_context(|| format!("model `{}`", self.model.name))?;
        let new_rows = target_rows(vocab.len(), &rows, self.resize, self.pad_to_multiple_of)
            .with_context(|| {
                format!(
                    "tokenizer of `{tok_name}` does not fit model `{}`",
                    self.model.name
                )
            })?;
        check_special_tokens(&vocab, new_rows)
            .with_context(|| format!("tokenizer of `{tok_name}`"))?;
        Ok((vocab, rows, new_rows))
    }
}

/// Writes `value` to `path`, first unlinking whatever is there: the file may
/// be a hardlink into an input, which must never change.
fn replace_json(path: &Path, value: &Json) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot replace {}", path.display()))
        }
        _ => {}
    }
    write_json(path, value)
}

impl Step for TokenizerStep {
    fn kind(&self) -> &'static str {
        "tokenizer"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<InputRef> {
        let mut inputs = vec![self.model.clone()];
        inputs.extend(self.from.clone());
        inputs
    }

    fn params(&self) -> Json {
        json!({
            "model": self.model.name,
            "from": self.from.as_ref().map(|f| &f.name),
            "chat_template": self.chat_template,
            "extra_eos": self.extra_eos,
            "resize": self.resize.map(ResizePolicy::name),
            "pad_to_multiple_of": self.pad_to_multiple_of,
        })
    }

    fn preflight(&self, sources: &BTreeMap<String, PathBuf>) -> Result<()> {
        let Some(model_dir) = sources.get(&self.model.name) else {
            return Ok(());
        };
        let tok_name = self.tokenizer_input();
        let Some(tok_dir) = sources.get(tok_name) else {
            return Ok(());
        };
        self.check(model_dir, tok_dir).map(|_| ())
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let model_dir = &ctx.input(&self.model.name)?.path;
        let tok_dir = match &self.from {
            Some(from) => &ctx.input(&from.name)?.path,
            None => model_dir,
        };
        let tok_name = self.tokenizer_input();
        // Every check before the first byte is written.
        let (vocab, rows, new_rows) = self.check(model_dir, tok_dir)?;

        let mut written: BTreeSet<String> = BTreeSet::new();
        if new_rows != rows.rows()? || rows.config_vocab != Some(new_rows) {
            (ctx.log)(&format!(
                "resizing {} from {} to {new_rows} rows",
                rows.tensor_names(),
                rows.embed.1
            ));
            written.extend(resize_embeddings(model_dir, ctx.out_dir, new_rows)?);
        }
        if self.from.is_some() {
            for file in TOKENIZER_FILES.iter().chain(&["generation_config.json"]) {
                let src = tok_dir.join(file);
                if src.is_file() {
                    link_or_copy(&src, &ctx.out_dir.join(file))?;
                    written.insert(file.to_string());
                }
            }
        }
        if let Some(template) = &self.chat_template {
            let path = ctx.out_dir.join("tokenizer_config.json");
            let mut config = if path.is_file() {
                read_json(&path)?
            } else {
                read_json(&tok_dir.join("tokenizer_config.json")).unwrap_or_else(|_| json!({}))
            };
            config["chat_template"] = json!(template);
            // A chat_template.jinja would take precedence in transformers.
            std::fs::remove_file(ctx.out_dir.join("chat_template.jinja")).ok();
            std::fs::remove_file(ctx.out_dir.join("chat_template.json")).ok();
            replace_json(&path, &config)?;
            written.extend(["tokenizer_config.json", "chat_template.jinja", "chat_template.json"].map(String::from));
        }
        if !self.extra_eos.is_empty() {
            let out = ctx.out_dir.join("generation_config.json");
            let mut generation = [out.as_path(), &model_dir.join("generation_config.json")]
                .iter()
                .find(|p| p.is_file())
                .map(|p| read_json(p))
                .transpose()?
                .unwrap_or_else(|| json!({}));
            add_extra_eos(&mut generation, &vocab, &self.extra_eos);
            replace_json(&out, &generation)?;
            written.insert("generation_config.json".to_owned());
        }
        let replaced_tokenizer = self.from.is_some();
        link_tree(model_dir, ctx.out_dir, &|rel| {
            written.contains(rel) || (replaced_tokenizer && TOKENIZER_FILES.contains(&rel))
        })?;
        prove_loads(ctx.out_dir).with_context(|| format!("tokenizer of `{tok_name}`"))
    }
}
