//! `tokenizer`: give a model another tokenizer, chat template or stop tokens,
//! checking the vocabulary against the embedding rows first and resizing the
//! embeddings only when the recipe says how.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value as Json};

use super::{input_ref, InputRef, ParseContext, Step, StepContext};
use crate::fs::files::{link_or_copy, link_tree, read_json, write_json};
use crate::syntax::diag::RecipeError;
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;
use crate::tokenizer::convert::load_tokenizer_json;
use crate::tokenizer::resize::{resize_embeddings, target_rows, ResizePolicy};
use crate::tokenizer::templates::{literal_markers, resolve_template};
use crate::tokenizer::vocab::{
    check_config_ids, check_special_tokens, id_drift, ModelRows, Vocab, EMBED_NAMES, HEAD_NAMES,
    TOKENIZER_FILES,
};
use crate::tokenizer::{prove_loads, STOP_STRINGS_FILE};

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
    /// Swap even when the new tokenizer gives shared tokens other ids.
    allow_vocab_mismatch: bool,
}

impl TokenizerStep {
    /// Parses `{model, from, chat_template, extra_eos, resize,
    /// pad_to_multiple_of, allow_vocab_mismatch}`.
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
                "allow_vocab_mismatch",
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
                let text = crate::syntax::fields::expect_str(cx.diag, n, "chat_template")?;
                Some(resolve_template(&text).map_err(|e| cx.diag.error(n.span, format!("{e:#}")))?)
            }
        };
        let resize = match f.opt("resize") {
            None => None,
            Some(n) => {
                let text = crate::syntax::fields::expect_str(cx.diag, n, "resize")?;
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
                return Err(cx
                    .diag
                    .error(n.span, "`pad_to_multiple_of` must be at least 1"));
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
        let allow_vocab_mismatch = f.opt_bool("allow_vocab_mismatch")?.unwrap_or(false);
        if let (true, None) = (allow_vocab_mismatch, &from) {
            return Err(cx.diag.error(
                f.req("allow_vocab_mismatch")?.span,
                "`allow_vocab_mismatch` applies to a tokenizer swap: add `from`",
            ));
        }
        Ok(TokenizerStep {
            model,
            from,
            chat_template,
            extra_eos,
            resize,
            pad_to_multiple_of,
            allow_vocab_mismatch,
        })
    }
}

/// Adds the ids of the `extra_eos` strings that are single tokens to
/// `eos_token_id` (as a list), which transformers, llama.cpp's converter and
/// vLLM all stop on. A generation config written from scratch starts from
/// the model config's token ids, as transformers' `from_model_config` does.
fn add_extra_eos(generation: &mut Json, config: &Json, vocab: &Vocab, extra_eos: &[String]) {
    if generation.as_object().is_some_and(|g| g.is_empty()) {
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if !config[key].is_null() {
                generation[key] = config[key].clone();
            }
        }
    }
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
    for id in extra_eos.iter().filter_map(|t| vocab.id(t)).map(u64::from) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    generation["eos_token_id"] = json!(ids);
}

/// `tokenizer_config.json` with `model_max_length` lowered to the model's
/// `max_position_embeddings` when above it (a patched context, or a donor
/// built for a longer one); `None` when nothing changes.
pub(crate) fn capped_max_length(tokenizer_config: &Json, model_config: &Json) -> Option<Json> {
    let limit = model_config["max_position_embeddings"].as_u64()?;
    // transformers writes "no limit" as int(1e30), beyond u64.
    let length = tokenizer_config["model_max_length"].as_f64()?;
    if length <= limit as f64 {
        return None;
    }
    let mut capped = tokenizer_config.clone();
    capped["model_max_length"] = json!(limit);
    Some(capped)
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
        // The generation config the output will have: the source's, else the model's.
        let generation = [tok_dir, model_dir]
            .iter()
            .map(|d| d.join("generation_config.json"))
            .find(|p| p.is_file());
        let config = model_dir.join("config.json");
        for file in generation.iter().chain([&config]) {
            check_config_ids(&read_json(file)?, file, new_rows)?;
        }
        if self.from.is_some() && !self.allow_vocab_mismatch {
            if let Some(drift) = self.drift(model_dir, &vocab) {
                anyhow::bail!(
                    "{drift}\nset `allow_vocab_mismatch: true` in the step to swap anyway \
                     (then fine-tune the embeddings)"
                );
            }
        }
        Ok((vocab, rows, new_rows))
    }

    /// Describes how the ids of tokens the model's own tokenizer shares with
    /// `new` moved, when any did (the model's folder may have no tokenizer).
    fn drift(&self, model_dir: &Path, new: &Vocab) -> Option<String> {
        let old = Vocab::read(model_dir).ok()?;
        let drift = id_drift(&old, new);
        if drift.moved == 0 {
            return None;
        }
        let examples: Vec<String> = drift
            .examples
            .iter()
            .map(|(t, a, b)| format!("{t:?} {a}→{b}"))
            .collect();
        Some(format!(
            "{} of the {} tokens the tokenizers of `{}` and `{}` share have \
             different ids ({}); the embedding rows were trained for the old ids",
            drift.moved,
            drift.shared,
            self.model.name,
            self.tokenizer_input(),
            examples.join(", ")
        ))
    }
}

impl TokenizerStep {
    /// Sets `chat_template` in the output's tokenizer_config.json (the copied
    /// one, else the tokenizer source's), noting template markers that are
    /// not single tokens.
    fn write_chat_template(
        &self,
        ctx: &StepContext,
        tok_dir: &Path,
        vocab: &Vocab,
        template: &str,
    ) -> Result<()> {
        for marker in literal_markers(template) {
            if vocab.id(&marker).is_none() {
                (ctx.log)(&format!(
                    "note: the chat template writes `{marker}`, which is not a single token \
                     of the tokenizer of `{}`; the model will see it as plain text",
                    self.tokenizer_input()
                ));
            }
        }
        let path = ctx.out_dir.join("tokenizer_config.json");
        let source = tok_dir.join("tokenizer_config.json");
        let mut config = match [&path, &source].into_iter().find(|p| p.is_file()) {
            Some(p) => read_json(p)?,
            None => json!({}),
        };
        config["chat_template"] = json!(template);
        // A chat_template.jinja or .json would take precedence in transformers.
        for stale in ["chat_template.jinja", "chat_template.json"] {
            std::fs::remove_file(ctx.out_dir.join(stale)).ok();
        }
        write_json(&path, &config)
    }

    /// Adds the single-token `extra_eos` to the output's
    /// generation_config.json (the copied one, else the model's own) and
    /// lists every string in [`STOP_STRINGS_FILE`], warning about those that
    /// are not single tokens: only a runtime matching text stops on them.
    fn write_extra_eos(&self, ctx: &StepContext, model_dir: &Path, vocab: &Vocab) -> Result<()> {
        let path = ctx.out_dir.join("generation_config.json");
        let source = model_dir.join("generation_config.json");
        let mut generation = match [&path, &source].into_iter().find(|p| p.is_file()) {
            Some(p) => read_json(p)?,
            None => json!({}),
        };
        let config = read_json(&model_dir.join("config.json"))?;
        add_extra_eos(&mut generation, &config, vocab, &self.extra_eos);
        write_json(&path, &generation)?;
        for text in self.extra_eos.iter().filter(|t| vocab.id(t).is_none()) {
            (ctx.log)(&format!(
                "warning: extra_eos `{text}` is not a single token of the tokenizer of `{}`: \
                 generation stops on it only where stop strings are matched as text \
                 (it is listed in {STOP_STRINGS_FILE} and the model card)",
                self.tokenizer_input()
            ));
        }
        let mut stops: Vec<String> = match read_json(&model_dir.join(STOP_STRINGS_FILE)) {
            Ok(j) => serde_json::from_value(j["stop_strings"].clone()).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        for text in &self.extra_eos {
            if !stops.contains(text) {
                stops.push(text.clone());
            }
        }
        write_json(
            &ctx.out_dir.join(STOP_STRINGS_FILE),
            &json!({ "stop_strings": stops }),
        )
    }

    /// Lowers the output's `model_max_length` to the model's
    /// `max_position_embeddings` when above it; returns whether it wrote.
    fn cap_max_length(&self, ctx: &StepContext, model_dir: &Path, tok_dir: &Path) -> Result<bool> {
        let path = ctx.out_dir.join("tokenizer_config.json");
        let source = if path.is_file() {
            path.clone()
        } else if self.from.is_some() {
            tok_dir.join("tokenizer_config.json")
        } else {
            model_dir.join("tokenizer_config.json")
        };
        if !source.is_file() {
            return Ok(false);
        }
        let config = read_json(&model_dir.join("config.json"))?;
        let Some(capped) = capped_max_length(&read_json(&source)?, &config) else {
            return Ok(false);
        };
        (ctx.log)(&format!(
            "tokenizer_config.json: model_max_length lowered to the model's \
             max_position_embeddings ({})",
            capped["model_max_length"]
        ));
        write_json(&path, &capped)?;
        Ok(true)
    }
}

impl Step for TokenizerStep {
    fn kind(&self) -> &'static str {
        "tokenizer"
    }

    fn version(&self) -> u32 {
        // 2: extra_eos no longer writes `stop_strings` to
        // generation_config.json; model_max_length is capped.
        2
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
            "allow_vocab_mismatch": self.allow_vocab_mismatch,
        })
    }

    /// A resize holds the resized embedding and head of one shard in memory
    /// (until the streaming writer lands); a plain swap only links files.
    fn memory_estimate(&self, ctx: &StepContext) -> u64 {
        const BASE: u64 = 256 << 20;
        let Some(model) = ctx.inputs.get(&self.model.name) else {
            return BASE;
        };
        let Ok(tensors) = crate::tensor::ModelTensors::open(&model.path) else {
            return BASE;
        };
        let vocab_tensors: u64 = EMBED_NAMES
            .iter()
            .chain(HEAD_NAMES)
            .filter_map(|n| tensors.info(n))
            .map(|i| i.range.len() as u64)
            .sum();
        // Resized copies plus a margin for growth.
        BASE + if self.resize.is_some() {
            2 * vocab_tensors
        } else {
            0
        }
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

        if let Some(drift) = self
            .from
            .as_ref()
            .and_then(|_| self.drift(model_dir, &vocab))
        {
            // Only reached with `allow_vocab_mismatch: true`.
            (ctx.log)(&format!("warning: {drift}"));
        }
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
        if !tok_dir.join("tokenizer.json").is_file() {
            // Slow-tokenizer-only repos (older Llama and Yi): every consumer
            // downstream reads tokenizer.json, so write the converted one.
            let (json, _) = load_tokenizer_json(tok_dir)?;
            write_json(&ctx.out_dir.join("tokenizer.json"), &json)?;
            written.insert("tokenizer.json".to_owned());
            (ctx.log)(&format!(
                "wrote tokenizer.json converted from the tokenizer.model of `{tok_name}`"
            ));
        }
        if let Some(template) = &self.chat_template {
            self.write_chat_template(ctx, tok_dir, &vocab, template)?;
            written.extend(
                [
                    "tokenizer_config.json",
                    "chat_template.jinja",
                    "chat_template.json",
                ]
                .map(String::from),
            );
        }
        if !self.extra_eos.is_empty() {
            self.write_extra_eos(ctx, model_dir, &vocab)?;
            written.extend(["generation_config.json", STOP_STRINGS_FILE].map(String::from));
        }
        if self.cap_max_length(ctx, model_dir, tok_dir)? {
            written.insert("tokenizer_config.json".to_owned());
        }
        let replaced_tokenizer = self.from.is_some();
        link_tree(model_dir, ctx.out_dir, &|rel| {
            written.contains(rel) || (replaced_tokenizer && TOKENIZER_FILES.contains(&rel))
        })?;
        prove_loads(ctx.out_dir).with_context(|| format!("tokenizer of `{tok_name}`"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::fixtures::{SpmTokenizer, TinyLlama};
    use crate::steps::Artifact;
    use crate::syntax::diag::Diag;
    use crate::syntax::yaml::parse_documents;
    use crate::tensor::ModelTensors;
    use crate::tokenizer::templates::builtin;

    fn parse(yaml: &str) -> Result<TokenizerStep, RecipeError> {
        let diag = Diag::new(Path::new("recipe.yaml"), yaml);
        let node = parse_documents(yaml).unwrap().remove(0);
        TokenizerStep::parse(
            &node,
            &ParseContext {
                diag: &diag,
                step: "final",
                seed: None,
                device: crate::steps::Device::Auto,
            },
        )
    }

    /// Runs `step` with inputs `model` and `donor` (when named) into a fresh
    /// directory under `root`.
    fn run(step: &TokenizerStep, root: &Path, inputs: &[(&str, &Path)]) -> Result<PathBuf> {
        run_logged(step, root, inputs).map(|(out, _)| out)
    }

    /// [`run`], also returning the lines the step logged.
    fn run_logged(
        step: &TokenizerStep,
        root: &Path,
        inputs: &[(&str, &Path)],
    ) -> Result<(PathBuf, Vec<String>)> {
        // The inputs stand for earlier steps' outputs: cache objects, which a
        // step may hardlink (a source's files would be copied).
        for (_, dir) in inputs {
            for rel in crate::cache::memo::list_files(dir)? {
                crate::fs::copy::note_object(&dir.join(rel).metadata()?);
            }
        }
        let inputs: BTreeMap<String, Artifact> = inputs
            .iter()
            .map(|(n, p)| {
                let artifact = Artifact {
                    path: p.to_path_buf(),
                    ..Default::default()
                };
                (n.to_string(), artifact)
            })
            .collect();
        let out = root.join("out");
        std::fs::create_dir_all(&out)?;
        let lines = std::sync::Mutex::new(Vec::new());
        let log = |line: &str| lines.lock().unwrap().push(line.to_owned());
        step.run(&StepContext {
            name: "final",
            recipe_name: "test",
            inputs: &inputs,
            out_dir: &out,
            threads: 1,
            mem_budget: 1 << 30,
            device: crate::steps::Device::Cpu,
            log: &log,
        })?;
        Ok((out, lines.into_inner().unwrap()))
    }

    /// A model with the default SentencePiece tokenizer and a folder
    /// holding only the SentencePiece tokenizer `spm` (plus a config, as a
    /// model repo has): ids of shared tokens agree.
    fn setup(root: &Path, model: TinyLlama, spm: SpmTokenizer) -> (PathBuf, PathBuf) {
        let model_dir = root.join("model");
        model.write(&model_dir).unwrap();
        SpmTokenizer::default().write(&model_dir).unwrap();
        let donor = root.join("donor");
        std::fs::create_dir_all(&donor).unwrap();
        spm.write(&donor).unwrap();
        (model_dir, donor)
    }

    fn same_file(a: &Path, b: &Path) -> bool {
        let (a, b) = (a.metadata().unwrap(), b.metadata().unwrap());
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }

    const SWAP: &str = "model: merged\nfrom: yi-llama\n";

    #[test]
    fn swap_between_compatible_tokenizers_links_weights() {
        let root = tempfile::tempdir().unwrap();
        let (model, donor) = setup(root.path(), TinyLlama::default(), SpmTokenizer::default());
        // The model already has this vocabulary; the donor's files differ in
        // their settings (a 200K context, as in Yi-34B-200K-Llama).
        SpmTokenizer::default().write(&model).unwrap();
        let mut config = read_json(&donor.join("tokenizer_config.json")).unwrap();
        config["model_max_length"] = json!(200000);
        write_json(&donor.join("tokenizer_config.json"), &config).unwrap();
        std::fs::remove_file(model.join("tokenizer.model")).unwrap();
        let step = parse(SWAP).unwrap();
        let (out, log) = run_logged(
            &step,
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap();
        // The donor's 200K context is capped to the model's 2048 positions.
        assert_eq!(
            log,
            [
                "tokenizer_config.json: model_max_length lowered to the model's \
              max_position_embeddings (2048)"
            ]
        );
        for file in ["tokenizer.json", "tokenizer.model"] {
            assert_eq!(
                std::fs::read(out.join(file)).unwrap(),
                std::fs::read(donor.join(file)).unwrap(),
                "{file}"
            );
        }
        config["model_max_length"] = json!(2048);
        assert_eq!(
            read_json(&out.join("tokenizer_config.json")).unwrap(),
            config
        );
        assert_eq!(
            read_json(&donor.join("tokenizer_config.json")).unwrap()["model_max_length"],
            200000,
            "the input changed"
        );
        assert!(same_file(
            &out.join("model.safetensors"),
            &model.join("model.safetensors")
        ));
        assert_eq!(
            std::fs::read(out.join("config.json")).unwrap(),
            std::fs::read(model.join("config.json")).unwrap()
        );
        let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        assert_eq!(tok.token_to_id("<0x0A>"), Some(13));
    }

    #[test]
    fn too_many_tokens_is_refused_naming_both_sizes() {
        let root = tempfile::tempdir().unwrap();
        let spm = SpmTokenizer {
            extra: vec!["<|im_start|>".into(), "<|im_end|>".into()],
            ..Default::default()
        };
        let (model, donor) = setup(root.path(), TinyLlama::default(), spm);
        let step = parse(SWAP).unwrap();
        let err = run(
            &step,
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("does not fit model `merged`"), "{msg}");
        assert!(msg.contains("322 tokens"), "{msg}");
        assert!(
            msg.contains("320 rows in `model.embed_tokens.weight` and `lm_head.weight`"),
            "{msg}"
        );
        assert!(msg.contains("resize: pad"), "{msg}");
        assert_eq!(
            std::fs::read_dir(root.path().join("out")).unwrap().count(),
            0
        );
        // preflight reports the same before any step runs.
        let sources = BTreeMap::from([
            ("merged".to_owned(), model.clone()),
            ("yi-llama".to_owned(), donor.clone()),
        ]);
        let err = step.preflight(&sources).unwrap_err();
        assert!(format!("{err:#}").contains("322 tokens"));
    }

    #[test]
    fn resize_pad_adds_mean_rows_to_a_multiple() {
        let root = tempfile::tempdir().unwrap();
        let spm = SpmTokenizer {
            extra: vec!["<|im_start|>".into(), "<|im_end|>".into()],
            ..Default::default()
        };
        let base = TinyLlama {
            shards: 3,
            ..Default::default()
        };
        let (model, donor) = setup(root.path(), base, spm);
        let step =
            parse("model: merged\nfrom: yi-llama\nresize: pad\npad_to_multiple_of: 64\n").unwrap();
        let out = run(
            &step,
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap();
        let before = ModelTensors::open(&model).unwrap();
        let after = ModelTensors::open(&out).unwrap();
        assert_eq!(
            read_json(&out.join("config.json")).unwrap()["vocab_size"],
            384
        );
        for name in ["model.embed_tokens.weight", "lm_head.weight"] {
            let info = after.require(name).unwrap();
            assert_eq!(info.shape, vec![384, 64]);
            let old = before.bytes(name).unwrap();
            let new = after.bytes(name).unwrap();
            assert_eq!(&new[..old.len()], old, "{name}: existing rows changed");
            let old_f32 = before.read_f32(name).unwrap();
            let mean: Vec<f32> = (0..64)
                .map(|c| (0..320).map(|r| old_f32[r * 64 + c] as f64).sum::<f64>() / 320.0)
                .map(|m| m as f32)
                .collect();
            let mut expected = Vec::new();
            crate::tensor::DType::BF16.encode_into(&mean, &mut expected);
            for row in 320..384 {
                assert_eq!(
                    &new[row * 128..(row + 1) * 128],
                    &expected[..],
                    "{name} row {row}"
                );
            }
        }
        for name in before.names() {
            if !name.contains("embed_tokens") && !name.contains("lm_head") {
                assert_eq!(
                    before.bytes(name).unwrap(),
                    after.bytes(name).unwrap(),
                    "{name}"
                );
                assert_eq!(
                    before.require(name).unwrap().shard,
                    after.require(name).unwrap().shard
                );
            }
        }
        // Shards without embedding rows are hardlinked, the others rewritten.
        let linked: Vec<bool> = after
            .shard_paths()
            .zip(before.shard_paths())
            .map(|(a, b)| same_file(a, b))
            .collect();
        assert_eq!(linked, [false, true, false]);
        let index = read_json(&out.join("model.safetensors.index.json")).unwrap();
        let on_disk: u64 = after
            .names()
            .iter()
            .map(|n| after.bytes(n).unwrap().len() as u64)
            .sum();
        assert_eq!(index["metadata"]["total_size"], on_disk);
    }

    #[test]
    fn padded_vocabulary_is_preserved() {
        let root = tempfile::tempdir().unwrap();
        let padded = TinyLlama {
            vocab: 384,
            ..Default::default()
        };
        let (model, donor) = setup(root.path(), padded, SpmTokenizer::default());
        let out = run(
            &parse(SWAP).unwrap(),
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap();
        assert_eq!(
            ModelTensors::open(&out)
                .unwrap()
                .require("lm_head.weight")
                .unwrap()
                .shape,
            vec![384, 64]
        );
        // pad never shrinks either.
        let root = tempfile::tempdir().unwrap();
        let (model, donor) = setup(
            root.path(),
            TinyLlama {
                vocab: 384,
                ..Default::default()
            },
            SpmTokenizer::default(),
        );
        let step =
            parse("model: merged\nfrom: yi-llama\nresize: pad\npad_to_multiple_of: 128\n").unwrap();
        let out = run(
            &step,
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap();
        assert!(same_file(
            &out.join("model.safetensors"),
            &model.join("model.safetensors")
        ));
    }

    #[test]
    fn truncate_drops_only_unused_rows() {
        let root = tempfile::tempdir().unwrap();
        let spm = SpmTokenizer {
            extra: vec!["<|a|>".into(), "<|b|>".into(), "<|c|>".into()],
            ..Default::default()
        };
        let padded = TinyLlama {
            vocab: 384,
            tie_embeddings: true,
            ..Default::default()
        };
        let (model, donor) = setup(root.path(), padded, spm);
        let step =
            parse("model: merged\nfrom: yi-llama\nresize: truncate\npad_to_multiple_of: 8\n")
                .unwrap();
        let out = run(
            &step,
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap();
        let before = ModelTensors::open(&model).unwrap();
        let after = ModelTensors::open(&out).unwrap();
        let name = "model.embed_tokens.weight";
        assert_eq!(after.require(name).unwrap().shape, vec![328, 64]);
        assert_eq!(
            after.bytes(name).unwrap(),
            &before.bytes(name).unwrap()[..328 * 128]
        );
        assert_eq!(
            read_json(&out.join("config.json")).unwrap()["vocab_size"],
            328
        );
    }

    #[test]
    fn template_and_extra_eos_without_touching_inputs() {
        let root = tempfile::tempdir().unwrap();
        let spm = SpmTokenizer {
            extra: vec!["<|im_end|>".into()],
            ..Default::default()
        };
        let model = TinyLlama {
            vocab: 384,
            ..Default::default()
        };
        let (model, donor) = setup(root.path(), model, spm);
        let donor_config = std::fs::read(donor.join("tokenizer_config.json")).unwrap();
        let model_generation = std::fs::read(model.join("generation_config.json")).unwrap();
        let step = parse(
            "model: merged\nfrom: yi-llama\nchat_template: orca-vicuna\nextra_eos: [\"<|im_end|>\", \"</s>\", \"\\n###\"]\n",
        )
        .unwrap();
        let out = run(
            &step,
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap();
        let config = read_json(&out.join("tokenizer_config.json")).unwrap();
        assert_eq!(config["chat_template"], builtin("orca-vicuna").unwrap());
        assert_eq!(config["tokenizer_class"], "LlamaTokenizer");
        let generation = read_json(&out.join("generation_config.json")).unwrap();
        assert_eq!(generation["eos_token_id"], json!([2, 320]));
        assert!(generation.get("stop_strings").is_none(), "{generation}");
        assert_eq!(
            read_json(&out.join(STOP_STRINGS_FILE)).unwrap()["stop_strings"],
            json!(["<|im_end|>", "</s>", "\n###"])
        );
        assert_eq!(generation["bos_token_id"], 1);
        assert_eq!(
            std::fs::read(donor.join("tokenizer_config.json")).unwrap(),
            donor_config
        );
        assert_eq!(
            std::fs::read(model.join("generation_config.json")).unwrap(),
            model_generation
        );
    }

    #[test]
    fn template_only_edits_the_models_own_tokenizer() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("model");
        TinyLlama::default().write(&model).unwrap();
        let before = std::fs::read(model.join("tokenizer_config.json")).unwrap();
        let step =
            parse("model: merged\nchat_template: llama3\nextra_eos: '<|eot_id|>'\n").unwrap();
        let (out, log) = run_logged(&step, root.path(), &[("merged", &model)]).unwrap();
        let config = read_json(&out.join("tokenizer_config.json")).unwrap();
        assert_eq!(config["chat_template"], builtin("llama3").unwrap());
        assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
        let generation = read_json(&out.join("generation_config.json")).unwrap();
        // `<|eot_id|>` is no token of this tokenizer: no id to stop on, and
        // no `stop_strings`, which would break transformers' generate().
        assert_eq!(generation["eos_token_id"], json!([2]));
        assert!(generation.get("stop_strings").is_none(), "{generation}");
        assert_eq!(
            read_json(&out.join(STOP_STRINGS_FILE)).unwrap(),
            json!({"stop_strings": ["<|eot_id|>"]})
        );
        assert!(log
            .iter()
            .any(|l| l.starts_with("warning: extra_eos `<|eot_id|>` is not a single token")));
        assert!(same_file(
            &out.join("tokenizer.json"),
            &model.join("tokenizer.json")
        ));
        assert_eq!(
            std::fs::read(model.join("tokenizer_config.json")).unwrap(),
            before
        );
        assert_eq!(log.len(), 5, "{log:?}");
    }

    #[test]
    fn byte_level_tokenizer_into_a_sentencepiece_model() {
        let root = tempfile::tempdir().unwrap();
        let (spm_model, _) = setup(root.path(), TinyLlama::default(), SpmTokenizer::default());
        SpmTokenizer::default().write(&spm_model).unwrap();
        let donor = root.path().join("bpe");
        TinyLlama::default().write(&donor).unwrap();
        let inputs = [("merged", spm_model.as_path()), ("bpe", donor.as_path())];
        let err = run(
            &parse("model: merged\nfrom: bpe\n").unwrap(),
            &root.path().join("refused"),
            &inputs,
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "38 of the 41 tokens the tokenizers of `merged` and `bpe` share have different ids \
             (\"a\" 300→100, \"b\" 317→101, \"c\" 310→102); the embedding rows were trained \
             for the old ids\nset `allow_vocab_mismatch: true` in the step to swap anyway (then \
             fine-tune the embeddings)"
        );
        assert_eq!(
            std::fs::read_dir(root.path().join("refused/out"))
                .unwrap()
                .count(),
            0,
            "nothing written"
        );
        let step =
            parse("model: merged\nfrom: bpe\nchat_template: chatml\nallow_vocab_mismatch: true\n")
                .unwrap();
        assert_eq!(step.params()["allow_vocab_mismatch"], true);
        let (out, log) = run_logged(
            &step,
            root.path(),
            &[("merged", &spm_model), ("bpe", &donor)],
        )
        .unwrap();
        assert_eq!(
            log,
            [
                "warning: 38 of the 41 tokens the tokenizers of `merged` and `bpe` share have \
                 different ids (\"a\" 300→100, \"b\" 317→101, \"c\" 310→102); the embedding rows \
                 were trained for the old ids",
                "note: the chat template writes `<|im_start|>`, which is not a single token of \
                 the tokenizer of `bpe`; the model will see it as plain text",
                "note: the chat template writes `<|im_end|>`, which is not a single token of \
                 the tokenizer of `bpe`; the model will see it as plain text",
            ]
        );
        assert!(
            !out.join("tokenizer.model").exists(),
            "stale SentencePiece model kept"
        );
        let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        assert_eq!(tok.get_vocab_size(true), 320);
        assert_eq!(tok.token_to_id("\u{2581}t"), None);
    }

    #[test]
    fn sentencepiece_only_donor_gets_a_converted_tokenizer_json() {
        let root = tempfile::tempdir().unwrap();
        let (model, donor) = setup(root.path(), TinyLlama::default(), SpmTokenizer::default());
        let reference = tokenizers::Tokenizer::from_file(donor.join("tokenizer.json")).unwrap();
        std::fs::remove_file(donor.join("tokenizer.json")).unwrap();
        let out = run(
            &parse(SWAP).unwrap(),
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap();
        let converted = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let text = "the merged model reads this";
        assert_eq!(
            converted.encode(text, true).unwrap().get_ids(),
            reference.encode(text, true).unwrap().get_ids()
        );
        assert!(out.join("tokenizer.model").is_file());
    }

    #[test]
    fn tokenizer_that_does_not_load_fails_the_step() {
        let root = tempfile::tempdir().unwrap();
        let (model, donor) = setup(root.path(), TinyLlama::default(), SpmTokenizer::default());
        let mut json = read_json(&donor.join("tokenizer.json")).unwrap();
        json["model"]["merges"] = json!(["\u{2581} nonexistent"]);
        write_json(&donor.join("tokenizer.json"), &json).unwrap();
        let err = run(
            &parse(SWAP).unwrap(),
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("does not load"), "{err:#}");
    }

    #[test]
    fn missing_special_token_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let (model, donor) = setup(root.path(), TinyLlama::default(), SpmTokenizer::default());
        let mut config = read_json(&donor.join("tokenizer_config.json")).unwrap();
        config["eos_token"] = json!("<|endoftext|>");
        write_json(&donor.join("tokenizer_config.json"), &config).unwrap();
        let err = run(
            &parse(SWAP).unwrap(),
            root.path(),
            &[("merged", &model), ("yi-llama", &donor)],
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("eos_token `<|endoftext|>` is not a token"),
            "{err:#}"
        );
        let mut generation = read_json(&model.join("generation_config.json")).unwrap();
        generation["eos_token_id"] = json!([2, 32000]);
        write_json(&model.join("generation_config.json"), &generation).unwrap();
        let step = parse("model: merged\nextra_eos: '</s>'\n").unwrap();
        let err = run(&step, &root.path().join("again"), &[("merged", &model)]).unwrap_err();
        assert!(
            format!("{err:#}").ends_with(
                "generation_config.json: eos_token_id 32000 is outside the model's 320 embedding rows"
            ),
            "{err:#}"
        );
    }

    #[test]
    fn recipe_errors_point_at_the_value() {
        let err = parse("model: m\nchat_template: orca_vicuna\n").unwrap_err();
        assert_eq!(err.span.line, 2);
        assert!(
            err.message.contains("did you mean `orca-vicuna`"),
            "{}",
            err.message
        );
        let err = parse("model: m\nfrom: t\npad_to_multiple_of: 64\n").unwrap_err();
        assert!(
            err.message.contains("changes the embedding rows"),
            "{}",
            err.message
        );
        let err = parse("model: m\nresize: grow\n").unwrap_err();
        assert!(err.message.contains("unknown resize policy `grow`"));
        let err = parse("model: m\n").unwrap_err();
        assert!(err.message.contains("changes nothing"));
        let err =
            parse("model: m\nchat_template: chatml\nallow_vocab_mismatch: true\n").unwrap_err();
        assert_eq!(err.span.line, 3);
        assert!(err.message.contains("add `from`"), "{}", err.message);
        let err = parse("model: m\nform: t\n").unwrap_err();
        assert_eq!(err.help.as_deref(), Some("did you mean `from`?"));
    }
}
