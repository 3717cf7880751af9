//! What a tokenizer folder and a model folder say about the vocabulary, and
//! the checks that they agree: token count vs embedding and lm_head rows vs
//! config `vocab_size`, special tokens present and in range.
//!
//! The numbers are kept apart on purpose: a padded vocabulary (more rows than
//! tokens, as in Qwen2.5 or Yi) is valid and must stay padded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::convert::load_tokenizer_json;
use crate::fs::files::read_json;
use crate::tensor::ModelTensors;

/// The tokenizer files a model folder may carry; a tokenizer swap replaces
/// all of them (mergekit's `_copy_tokenizer` list, minus generation_config).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// The special-token roles checked and reported, in display order.
pub const SPECIAL_ROLES: &[&str] = &["bos_token", "eos_token", "pad_token", "unk_token"];

/// A token of `tokenizer.json`'s `added_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    /// Its id.
    pub id: u32,
    /// Its text.
    pub content: String,
    /// Whether it is a special (control) token.
    pub special: bool,
}

/// The vocabulary of a tokenizer folder, read from `tokenizer.json`,
/// `tokenizer_config.json` and `special_tokens_map.json`.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// The folder it was read from.
    pub dir: PathBuf,
    /// Token text → id, model vocabulary and added tokens together.
    pub ids: BTreeMap<String, u32>,
    /// The `added_tokens` entries, by id.
    pub added: Vec<AddedToken>,
    /// Special-token role (`bos_token`, ...) → its text, for the roles set.
    pub specials: BTreeMap<String, String>,
    /// `chat_template` from tokenizer_config.json or chat_template.jinja.
    pub chat_template: Option<String>,
}

impl Vocab {
    /// Reads the tokenizer in `dir`: its `tokenizer.json`, or one converted
    /// from a SentencePiece BPE `tokenizer.model` when that is all there is.
    pub fn read(dir: &Path) -> Result<Vocab> {
        let path = dir.join("tokenizer.json");
        let (json, _) = load_tokenizer_json(dir)?;
        let mut ids = BTreeMap::new();
        match json.pointer("/model/vocab") {
            Some(Json::Object(map)) => {
                for (token, id) in map {
                    let id = id.as_u64().with_context(|| {
                        format!("{}: id of token {token:?} is not a number", path.display())
                    })?;
                    ids.insert(token.clone(), id as u32);
                }
            }
            // Unigram: a list of [piece, score] whose position is the id.
            Some(Json::Array(list)) => {
                for (id, entry) in list.iter().enumerate() {
                    if let Some(token) = entry.get(0).and_then(Json::as_str) {
                        ids.insert(token.to_owned(), id as u32);
                    }
                }
            }
            _ => bail!("{}: no `model.vocab`", path.display()),
        }
        let mut added = Vec::new();
        for entry in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(content)) = (entry["id"].as_u64(), entry["content"].as_str())
            else {
                bail!("{}: an added token lacks `id` or `content`", path.display());
            };
            ids.insert(content.to_owned(), id as u32);
            added.push(AddedToken {
                id: id as u32,
                content: content.to_owned(),
                special: entry["special"].as_bool().unwrap_or(false),
            });
        }
        added.sort_by_key(|t| t.id);
        let config = optional_json(&dir.join("tokenizer_config.json"))?;
        let map = optional_json(&dir.join("special_tokens_map.json"))?;
        let mut specials = BTreeMap::new();
        for role in SPECIAL_ROLES {
            let text = token_text(&config[*role]).or_else(|| token_text(&map[*role]));
            if let Some(text) = text {
                specials.insert(role.to_string(), text);
            }
        }
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja)?)
        } else {
            config["chat_template"].as_str().map(str::to_owned)
        };
        Ok(Vocab {
            dir: dir.to_path_buf(),
            ids,
            added,
            specials,
            chat_template,
        })
    }

    /// Number of ids the tokenizer can produce: highest id + 1 (what the
    /// embedding must have rows for).
    pub fn len(&self) -> usize {
        self.ids.values().max().map_or(0, |m| *m as usize + 1)
    }

    /// True for a tokenizer without tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of `token`, if it is a single token.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// Token text by id (`None` for ids no token has), for all ids below [`len`](Self::len).
    pub fn by_id(&self) -> Vec<Option<&str>> {
        let mut out = vec![None; self.len()];
        for (token, id) in &self.ids {
            out[*id as usize] = Some(token.as_str());
        }
        out
    }

    /// Each special-token role with its text and id (`None` when the text is
    /// not in the vocabulary).
    pub fn special_ids(&self) -> Vec<(&str, &str, Option<u32>)> {
        self.specials
            .iter()
            .map(|(role, text)| (role.as_str(), text.as_str(), self.id(text)))
            .collect()
    }
}

/// A special token's text, written either as a string or as an AddedToken
/// object (`{"content": "<s>", ...}`).
fn token_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    }
}

fn optional_json(path: &Path) -> Result<Json> {
    if path.is_file() {
        read_json(path)
    } else {
        Ok(Json::Null)
    }
}

/// Names of the input-embedding tensor in the architectures yibuild knows.
pub const EMBED_NAMES: &[&str] = &[
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "model.language_model.embed_tokens.weight",
];

/// Names of the output-head tensor (absent when embeddings are tied).
pub const HEAD_NAMES: &[&str] = &["lm_head.weight", "embed_out.weight", "output.weight"];

/// The vocabulary-sized numbers of a model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRows {
    /// config.json `vocab_size` (or `text_config.vocab_size`).
    pub config_vocab: Option<usize>,
    /// The embedding tensor's name and rows.
    pub embed: (String, usize),
    /// The output head's name and rows, if not tied.
    pub head: Option<(String, usize)>,
}

impl ModelRows {
    /// Reads config.json and the tensor index of the model in `dir`.
    pub fn read(dir: &Path) -> Result<ModelRows> {
        let config = read_json(&dir.join("config.json"))?;
        let tensors = ModelTensors::open(dir)?;
        ModelRows::from_parts(&config, &tensors)
    }

    /// The numbers from an already-parsed config and opened tensors.
    pub fn from_parts(config: &Json, tensors: &ModelTensors) -> Result<ModelRows> {
        let config_vocab = config
            .get("vocab_size")
            .or_else(|| config.pointer("/text_config/vocab_size"))
            .and_then(Json::as_u64)
            .map(|v| v as usize);
        let find = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| tensors.info(n).map(|i| (n.to_string(), i.rows())))
        };
        let Some(embed) = find(EMBED_NAMES) else {
            bail!(
                "{}: no embedding tensor (looked for {})",
                tensors.dir().display(),
                EMBED_NAMES.join(", ")
            );
        };
        Ok(ModelRows {
            config_vocab,
            embed,
            head: find(HEAD_NAMES),
        })
    }

    /// The embedding (and head) row count, which must agree between them.
    pub fn rows(&self) -> Result<usize> {
        if let Some((head, rows)) = &self.head {
            if *rows != self.embed.1 {
                bail!(
                    "`{}` has {} rows but `{head}` has {rows}; the model itself is inconsistent",
                    self.embed.0,
                    self.embed.1
                );
            }
        }
        Ok(self.embed.1)
    }

    /// "model.embed_tokens.weight and lm_head.weight", for messages.
    pub fn tensor_names(&self) -> String {
        match &self.head {
            Some((head, _)) => format!("`{}` and `{head}`", self.embed.0),
            None => format!("`{}` (tied)", self.embed.0),
        }
    }
}

/// Checks that the special tokens of `vocab` exist and fit in `rows`, and
/// that every added token's id is below `rows`.
pub fn check_special_tokens(vocab: &Vocab, rows: usize) -> Result<()> {
    for (role, text, id) in vocab.special_ids() {
        match id {
            None => bail!(
                "{}: {role} `{text}` is not a token of its tokenizer.json",
                vocab.dir.display()
            ),
            Some(id) if id as usize >= rows => bail!(
                "{}: {role} `{text}` has id {id}, outside the model's {rows} embedding rows",
                vocab.dir.display()
            ),
            Some(_) => {}
        }
    }
    if let Some(t) = vocab.added.iter().find(|t| t.id as usize >= rows) {
        bail!(
            "{}: added token `{}` has id {}, outside the model's {rows} embedding rows",
            vocab.dir.display(),
            t.content,
            t.id
        );
    }
    Ok(())
}

/// How a tokenizer swap re-labels the rows: of the tokens both vocabularies
/// have, how many keep their id, and the first few that move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdDrift {
    /// Tokens in both vocabularies.
    pub shared: usize,
    /// Shared tokens whose id differs.
    pub moved: usize,
    /// Up to three examples: (token, old id, new id), in token order.
    pub examples: Vec<(String, u32, u32)>,
}

/// Compares the ids of `old` (the model's own tokenizer) and `new`. The
/// embedding rows were trained for the old ids, so any moved token means the
/// model will read the new tokenizer's ids as other tokens.
pub fn id_drift(old: &Vocab, new: &Vocab) -> IdDrift {
    let mut drift = IdDrift {
        shared: 0,
        moved: 0,
        examples: Vec::new(),
    };
    for (token, old_id) in &old.ids {
        let Some(new_id) = new.id(token) else {
            continue;
        };
        drift.shared += 1;
        if new_id != *old_id {
            drift.moved += 1;
            if drift.examples.len() < 3 {
                drift.examples.push((token.clone(), *old_id, new_id));
            }
        }
    }
    drift
}

/// Checks that the token ids a config file names (`bos_token_id`,
/// `eos_token_id` as a number or list, `pad_token_id`) are below `rows`;
/// `file` names the file in the error.
pub fn check_config_ids(config: &Json, file: &Path, rows: usize) -> Result<()> {
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        let ids: Vec<u64> = match &config[key] {
            Json::Number(n) => n.as_u64().into_iter().collect(),
            Json::Array(list) => list.iter().filter_map(Json::as_u64).collect(),
            _ => continue,
        };
        if let Some(id) = ids.iter().find(|id| **id as usize >= rows) {
            bail!(
                "{}: {key} {id} is outside the model's {rows} embedding rows",
                file.display()
            );
        }
    }
    Ok(())
}
