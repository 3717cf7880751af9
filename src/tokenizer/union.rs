//! Union vocabularies for merges (`tokenizer_source: union`, or
//! `tokenizer: {source: union, tokens: [...]}`): the output vocabulary is the
//! base model's plus every other model's tokens, and each model's embedding
//! and lm_head rows are re-indexed to it before the merge method runs.
//!
//! Order (deterministic): the base's tokens keep their ids; then, model by
//! model in recipe order, each token the output lacks, in that model's id
//! order; then the extra `tokens`. A model's tokens with ids at or above its
//! config `vocab_size` are ignored, as mergekit strips them.
//!
//! Default rows follow mergekit (reference/mergekit.md §2.5): a model that has
//! the token uses its own row; otherwise a token only one model has takes that
//! model's row, a token the base has takes the base's row, a token several
//! non-base models have takes their mean, and a token no model has is zero.
//! Padding rows up to `pad_to_multiple_of` take the mean of the model's real
//! rows.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};

use super::convert::load_tokenizer_json;
use super::resize::mean_rows;
use super::vocab::Vocab;
use crate::fs::files::{link_or_copy, read_json, write_json};
use crate::tensor::ModelTensors;

/// Where one output row of one model's re-indexed embedding comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RowSource {
    /// The model's own row.
    Own(u32),
    /// Row `row` of model `model` (index into the union's models, base first).
    Model {
        /// Which model.
        model: usize,
        /// Which of its rows.
        row: u32,
    },
    /// The mean of these (model, row) pairs.
    Mean(Vec<(usize, u32)>),
    /// A token no model has: zeros.
    Zero,
    /// A padding row past the last token: the mean of the model's real rows.
    PadMean,
}

/// The union vocabulary and, for every input model, the source of each
/// output row.
#[derive(Debug, Clone)]
pub struct UnionVocab {
    /// Output id → token (`None` for an id the base vocabulary leaves unused).
    pub tokens: Vec<Option<String>>,
    /// Output rows: the token count rounded up to `pad_to_multiple_of`.
    pub rows: usize,
    /// Per model (base first, then the others in the order given), one
    /// [`RowSource`] per output row.
    pub sources: Vec<Vec<RowSource>>,
    /// Number of real (non-padding) rows of each model, for [`RowSource::PadMean`].
    pub real_rows: Vec<usize>,
    /// Tokens appended after the base vocabulary, in id order.
    pub appended: Vec<AppendedToken>,
}

/// A token of the union that the base vocabulary lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedToken {
    /// Its output id.
    pub id: u32,
    /// Its text.
    pub token: String,
    /// It was an added token (or listed in the recipe), not a model-vocabulary
    /// token, in the model it came from.
    pub added: bool,
    /// It was a special added token.
    pub special: bool,
}

/// A token the recipe lists under `tokenizer.tokens`: added if missing, with
/// an optional rule for its embedding row (mergekit's per-token overrides).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    /// The token text.
    pub token: String,
    /// Where its row comes from; `None` keeps the default rules.
    pub source: Option<TokenSource>,
    /// Apply `source` to every model, even those that have the token.
    pub force: bool,
}

impl TokenSpec {
    /// A token to add with the default row rules.
    pub fn plain(token: &str) -> TokenSpec {
        TokenSpec {
            token: token.to_owned(),
            source: None,
            force: false,
        }
    }
}

/// An override for a token's embedding row.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// That model's row of the same token (`source: MODEL`).
    Model(usize),
    /// That model's row of another token, by text
    /// (`{kind: model_token, model, token}`).
    ModelToken(usize, String),
    /// That model's row `id` (`{kind: model_token, model, token_id}`).
    ModelTokenId(usize, u32),
    /// Zeros (`{kind: zero}`).
    Zero,
}

/// A model's tokens below its config `vocab_size`.
struct ModelVocab {
    ids: BTreeMap<String, u32>,
    limit: usize,
}

fn model_vocab(dir: &Path, vocab: &Vocab) -> Result<ModelVocab> {
    let config = read_json(&dir.join("config.json"))?;
    let limit = config
        .get("vocab_size")
        .or_else(|| config.pointer("/text_config/vocab_size"))
        .and_then(Json::as_u64)
        .map_or(vocab.len(), |v| v as usize);
    let ids = vocab
        .ids
        .iter()
        .filter(|(_, id)| (**id as usize) < limit)
        .map(|(t, id)| (t.clone(), *id))
        .collect();
    Ok(ModelVocab { ids, limit })
}

/// Builds the union of the vocabularies of `base` and `others` (model folders
/// with tokenizer.json and config.json), plus the tokens the recipe lists
/// (`tokenizer.tokens`, as `specs`),
/// padded to a multiple of `pad_to_multiple_of`. Models are numbered base
/// first, then `others` in order (the numbering [`TokenSource`] uses).
pub fn union_vocab(
    base: &Path,
    others: &[&Path],
    specs: &[TokenSpec],
    pad_to_multiple_of: Option<usize>,
) -> Result<UnionVocab> {
    let dirs: Vec<&Path> = std::iter::once(base)
        .chain(others.iter().copied())
        .collect();
    let vocabs: Vec<Vocab> = dirs.iter().map(|d| Vocab::read(d)).collect::<Result<_>>()?;
    let models: Vec<ModelVocab> = dirs
        .iter()
        .zip(&vocabs)
        .map(|(d, v)| model_vocab(d, v).with_context(|| format!("{}", d.display())))
        .collect::<Result<_>>()?;
    if vocabs[0].len() > models[0].limit {
        bail!(
            "{}: the base tokenizer has {} tokens but config vocab_size is {}; \
             fix the base model before a union merge",
            base.display(),
            vocabs[0].len(),
            models[0].limit
        );
    }
    let mut tokens: Vec<Option<String>> = vocabs[0]
        .by_id()
        .into_iter()
        .map(|t| t.map(str::to_owned))
        .collect();
    let mut index: BTreeMap<String, u32> = models[0].ids.clone();
    let mut appended = Vec::new();
    let mut append = |token: &str, added: Option<bool>, tokens: &mut Vec<Option<String>>| {
        if index.contains_key(token) {
            return;
        }
        let id = tokens.len() as u32;
        index.insert(token.to_owned(), id);
        tokens.push(Some(token.to_owned()));
        appended.push(AppendedToken {
            id,
            token: token.to_owned(),
            added: added.is_some(),
            special: added.unwrap_or(false),
        });
    };
    for (vocab, model) in vocabs.iter().zip(&models).skip(1) {
        let special: BTreeMap<u32, bool> = vocab.added.iter().map(|a| (a.id, a.special)).collect();
        let mut by_id: Vec<(&u32, &String)> = model.ids.iter().map(|(t, i)| (i, t)).collect();
        by_id.sort();
        for (id, token) in by_id {
            append(token, special.get(id).copied(), &mut tokens);
        }
    }
    for spec in specs {
        append(&spec.token, Some(false), &mut tokens);
    }
    let real = tokens.len();
    let rows = pad_to_multiple_of.map_or(real, |m| real.div_ceil(m.max(1)) * m.max(1));
    let mut sources: Vec<Vec<RowSource>> = (0..models.len())
        .map(|m| {
            (0..rows)
                .map(|row| match tokens.get(row) {
                    None => RowSource::PadMean,
                    Some(None) if m == 0 => RowSource::Own(row as u32),
                    Some(None) => RowSource::Model {
                        model: 0,
                        row: row as u32,
                    },
                    Some(Some(token)) => default_row(&models, m, token),
                })
                .collect()
        })
        .collect();
    for spec in specs {
        let Some(source) = &spec.source else {
            continue;
        };
        let row = index[&spec.token] as usize;
        let rule = override_row(&models, &dirs, &spec.token, source)?;
        for (m, model) in models.iter().enumerate() {
            if spec.force || !model.ids.contains_key(&spec.token) {
                sources[m][row] = rule.clone();
            }
        }
    }
    Ok(UnionVocab {
        tokens,
        rows,
        sources,
        real_rows: models.iter().map(|m| m.limit).collect(),
        appended,
    })
}

/// The row a [`TokenSource`] names, checked against that model's vocabulary.
fn override_row(
    models: &[ModelVocab],
    dirs: &[&Path],
    token: &str,
    source: &TokenSource,
) -> Result<RowSource> {
    let (model, wanted) = match source {
        TokenSource::Zero => return Ok(RowSource::Zero),
        TokenSource::Model(m) => (*m, token),
        TokenSource::ModelToken(m, other) => (*m, other.as_str()),
        TokenSource::ModelTokenId(m, id) => {
            let limit = models.get(*m).map_or(0, |v| v.limit);
            if *id as usize >= limit {
                bail!("token {token:?}: source row {id} is outside model {m}'s {limit} rows");
            }
            return Ok(RowSource::Model {
                model: *m,
                row: *id,
            });
        }
    };
    let Some(vocab) = models.get(model) else {
        bail!("token {token:?}: source model {model} is not part of the merge");
    };
    match vocab.ids.get(wanted) {
        Some(row) => Ok(RowSource::Model { model, row: *row }),
        None => bail!(
            "token {token:?}: source model {} has no token {wanted:?}",
            dirs[model].display()
        ),
    }
}

/// mergekit's rule for model `m`'s row of `token`.
fn default_row(models: &[ModelVocab], m: usize, token: &str) -> RowSource {
    if let Some(id) = models[m].ids.get(token) {
        return RowSource::Own(*id);
    }
    let holders: Vec<(usize, u32)> = models
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.ids.get(token).map(|id| (i, *id)))
        .collect();
    match holders.as_slice() {
        [] => RowSource::Zero,
        [(model, row)] => RowSource::Model {
            model: *model,
            row: *row,
        },
        [(0, row), ..] => RowSource::Model {
            model: 0,
            row: *row,
        },
        _ => RowSource::Mean(holders),
    }
}

/// Rows `rows` of model `model`'s tensor `tensor` re-indexed to the union
/// vocabulary, as f32 (`rows.len() × width`). `models` are the opened tensors
/// of every model in the union's order; the range lets the merge engine work
/// in bounded chunks.
pub fn remap_rows(
    union: &UnionVocab,
    model: usize,
    models: &[&ModelTensors],
    tensor: &str,
    rows: Range<usize>,
) -> Result<Vec<f32>> {
    let width = models[model].require(tensor)?.row_len();
    let mut out = vec![0f32; rows.len() * width];
    let mut pad_mean: Option<Vec<f32>> = None;
    let read = |m: usize, row: u32| -> Result<Vec<f32>> {
        let r = row as usize;
        Ok(models[m].read_rows_f32(tensor, r..r + 1)?)
    };
    for (dst, row) in out.chunks_exact_mut(width).zip(rows) {
        match &union.sources[model][row] {
            RowSource::Own(r) => dst.copy_from_slice(&read(model, *r)?),
            RowSource::Model { model: m, row: r } => dst.copy_from_slice(&read(*m, *r)?),
            RowSource::Mean(list) => {
                let mut sum = vec![0f64; width];
                for (m, r) in list {
                    for (s, v) in sum.iter_mut().zip(read(*m, *r)?) {
                        *s += v as f64;
                    }
                }
                for (d, s) in dst.iter_mut().zip(sum) {
                    *d = (s / list.len() as f64) as f32;
                }
            }
            RowSource::Zero => {}
            RowSource::PadMean => {
                if pad_mean.is_none() {
                    let real = union.real_rows[model].min(models[model].require(tensor)?.rows());
                    pad_mean = Some(mean_rows(models[model], tensor, 0..real)?);
                }
                dst.copy_from_slice(pad_mean.as_deref().unwrap_or_default());
            }
        }
    }
    Ok(out)
}

impl UnionVocab {
    /// Writes the union tokenizer into `out`: the base's tokenizer files with
    /// the appended tokens added to tokenizer.json (added tokens of other
    /// models stay added tokens; their ordinary tokens join `model.vocab`, so
    /// the base's own tokenization of any text is unchanged). Like mergekit,
    /// the output is a fast tokenizer only: no tokenizer.model, whose pieces
    /// would no longer match.
    pub fn write_tokenizer(&self, base: &Path, out: &Path) -> Result<()> {
        for file in super::vocab::TOKENIZER_FILES {
            let src = base.join(file);
            if src.is_file()
                && !matches!(
                    *file,
                    "tokenizer.json" | "tokenizer.model" | "tokenizer_config.json"
                )
            {
                link_or_copy(&src, &out.join(file))?;
            }
        }
        let (mut json, _) = load_tokenizer_json(base)?;
        let config_path = base.join("tokenizer_config.json");
        let mut config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            json!({})
        };
        for AppendedToken {
            id,
            token,
            added,
            special,
        } in &self.appended
        {
            if *added {
                let entry = json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special});
                if let Some(list) = json["added_tokens"].as_array_mut() {
                    list.push(entry.clone());
                }
                if let Some(decoder) = config["added_tokens_decoder"].as_object_mut() {
                    let mut entry = entry;
                    if let Some(fields) = entry.as_object_mut() {
                        fields.shift_remove("id");
                    }
                    decoder.insert(id.to_string(), entry);
                }
            } else {
                match json.pointer_mut("/model/vocab") {
                    Some(Json::Object(map)) => {
                        map.insert(token.clone(), json!(id));
                    }
                    Some(Json::Array(list)) if list.len() == *id as usize => {
                        list.push(json!([token, -100.0]));
                    }
                    _ => bail!(
                        "{}: cannot append token {token:?} to this tokenizer's vocabulary",
                        base.display()
                    ),
                }
            }
        }
        write_json(&out.join("tokenizer.json"), &json)?;
        write_json(&out.join("tokenizer_config.json"), &config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{SpmTokenizer, TinyLlama};

    /// A model with `rows` embedding rows, weights from `seed`, and the given
    /// SentencePiece tokenizer.
    fn model(dir: &Path, rows: usize, seed: u64, spm: SpmTokenizer) {
        TinyLlama {
            vocab: rows,
            seed,
            ..Default::default()
        }
        .write(dir)
        .unwrap();
        spm.write(dir).unwrap();
    }

    fn row(t: &ModelTensors, name: &str, r: usize) -> Vec<f32> {
        t.read_rows_f32(name, r..r + 1).unwrap()
    }

    #[test]
    fn union_merge_rows_follow_mergekit_defaults() {
        let root = tempfile::tempdir().unwrap();
        let (base, a, b) = (
            root.path().join("base"),
            root.path().join("a"),
            root.path().join("b"),
        );
        model(&base, 320, 1, SpmTokenizer::default());
        let chat = vec!["<|im_start|>".to_owned(), "<|im_end|>".to_owned()];
        model(
            &a,
            322,
            2,
            SpmTokenizer {
                vocab: 320,
                extra: chat,
            },
        );
        // B: ten more merges, one shared chat token, and a padded embedding
        // whose padding must not count as tokens.
        let spm = SpmTokenizer {
            vocab: 330,
            extra: vec!["<|im_end|>".to_owned()],
        };
        model(&b, 336, 3, spm);
        let mut config = read_json(&b.join("config.json")).unwrap();
        config["vocab_size"] = json!(331);
        write_json(&b.join("config.json"), &config).unwrap();

        let union =
            union_vocab(&base, &[&a, &b], &[TokenSpec::plain("<|tool|>")], Some(16)).unwrap();
        assert_eq!(union.tokens.len(), 333);
        assert_eq!(union.rows, 336);
        assert_eq!(union.tokens[320].as_deref(), Some("<|im_start|>"));
        assert_eq!(union.tokens[321].as_deref(), Some("<|im_end|>"));
        let b_vocab = Vocab::read(&b).unwrap();
        // B's extra merges shift its single characters: the first token the
        // union appends from B is B's first merge past the base's, and "e" has
        // different ids in the base and in B.
        let b_merge = union.tokens[322].clone().unwrap();
        let b_row = b_vocab.id(&b_merge).unwrap();
        assert!(Vocab::read(&base).unwrap().id(&b_merge).is_none());
        let e_base = Vocab::read(&base).unwrap().id("e").unwrap();
        let e_b = b_vocab.id("e").unwrap();
        assert_ne!(e_base, e_b);
        assert_eq!(union.tokens[332].as_deref(), Some("<|tool|>"));

        let (src_base, src_a, src_b) = (&union.sources[0], &union.sources[1], &union.sources[2]);
        assert_eq!(src_base[5], RowSource::Own(5));
        assert_eq!(src_base[320], RowSource::Model { model: 1, row: 320 });
        assert_eq!(src_base[321], RowSource::Mean(vec![(1, 321), (2, 330)]));
        assert_eq!(
            src_base[322],
            RowSource::Model {
                model: 2,
                row: b_row
            }
        );
        assert_eq!(union.sources[2][e_base as usize], RowSource::Own(e_b));
        assert_eq!(src_a[321], RowSource::Own(321));
        assert_eq!(src_b[321], RowSource::Own(330));
        assert_eq!(src_b[320], RowSource::Model { model: 1, row: 320 });
        assert_eq!(src_b[332], RowSource::Zero);
        assert_eq!(src_a[335], RowSource::PadMean);

        let tensors: Vec<ModelTensors> = [&base, &a, &b]
            .iter()
            .map(|d| ModelTensors::open(d).unwrap())
            .collect();
        let refs: Vec<&ModelTensors> = tensors.iter().collect();
        let name = "lm_head.weight";
        let remapped: Vec<Vec<f32>> = (0..3)
            .map(|m| remap_rows(&union, m, &refs, name, 0..336).unwrap())
            .collect();
        let out_row = |m: usize, r: usize| remapped[m][r * 64..(r + 1) * 64].to_vec();
        // Shared tokens keep each model's own row.
        for (m, t) in tensors.iter().enumerate() {
            assert_eq!(out_row(m, 7), row(t, name, 7), "model {m}");
        }
        assert_ne!(out_row(0, 7), out_row(1, 7));
        let e = e_base as usize;
        assert_eq!(out_row(2, e), row(&tensors[2], name, e_b as usize));
        assert_eq!(out_row(0, e), row(&tensors[0], name, e));
        // A token only one model has: that model's row, for every model.
        for m in 0..3 {
            assert_eq!(out_row(m, 320), row(&tensors[1], name, 320));
            assert_eq!(out_row(m, 322), row(&tensors[2], name, b_row as usize));
        }
        assert_eq!(out_row(2, 321), row(&tensors[2], name, 330));
        let mean: Vec<f32> = row(&tensors[1], name, 321)
            .iter()
            .zip(row(&tensors[2], name, 330))
            .map(|(x, y)| ((*x as f64 + y as f64) / 2.0) as f32)
            .collect();
        assert_eq!(out_row(0, 321), mean);
        assert_eq!(out_row(2, 332), vec![0.0; 64]);
        // Padding: the mean of B's 331 real rows, not of its 336 stored rows.
        assert_eq!(
            out_row(2, 335),
            mean_rows(&tensors[2], name, 0..331).unwrap()
        );
        // A window gives the same rows as the whole.
        let window = remap_rows(&union, 2, &refs, name, 318..324).unwrap();
        assert_eq!(window, remapped[2][318 * 64..324 * 64].to_vec());
    }

    #[test]
    fn token_overrides_follow_source_and_force() {
        let root = tempfile::tempdir().unwrap();
        let (base, a) = (root.path().join("base"), root.path().join("a"));
        model(&base, 320, 1, SpmTokenizer::default());
        let chat = vec!["<|im_start|>".to_owned(), "<|im_end|>".to_owned()];
        model(
            &a,
            322,
            2,
            SpmTokenizer {
                vocab: 320,
                extra: chat,
            },
        );
        let specs = [
            // Base lacks it: take the base's `</s>` row instead of A's.
            TokenSpec {
                token: "<|im_end|>".into(),
                source: Some(TokenSource::ModelToken(0, "</s>".into())),
                force: false,
            },
            // Forced: every model, A included, takes zeros.
            TokenSpec {
                token: "<|im_start|>".into(),
                source: Some(TokenSource::Zero),
                force: true,
            },
            TokenSpec {
                token: "<|new|>".into(),
                source: Some(TokenSource::ModelTokenId(1, 321)),
                force: false,
            },
        ];
        let union = union_vocab(&base, &[&a], &specs, None).unwrap();
        let end = Vocab::read(&base).unwrap().id("</s>").unwrap();
        assert_eq!(
            union.sources[0][321],
            RowSource::Model { model: 0, row: end }
        );
        assert_eq!(union.sources[1][321], RowSource::Own(321));
        assert_eq!(union.sources[0][320], RowSource::Zero);
        assert_eq!(union.sources[1][320], RowSource::Zero);
        assert_eq!(union.tokens[322].as_deref(), Some("<|new|>"));
        assert_eq!(
            union.sources[0][322],
            RowSource::Model { model: 1, row: 321 }
        );

        let bad = [TokenSpec {
            token: "<|x|>".into(),
            source: Some(TokenSource::ModelToken(1, "<|nope|>".into())),
            force: false,
        }];
        let err = union_vocab(&base, &[&a], &bad, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no token \"<|nope|>\""), "{err}");
    }

    #[test]
    fn union_tokenizer_loads_and_keeps_base_tokenization() {
        let root = tempfile::tempdir().unwrap();
        let (base, a, out) = (
            root.path().join("base"),
            root.path().join("a"),
            root.path().join("out"),
        );
        model(&base, 320, 1, SpmTokenizer::default());
        let spm = SpmTokenizer {
            vocab: 330,
            extra: vec!["<|im_end|>".to_owned()],
        };
        model(&a, 331, 2, spm);
        std::fs::create_dir_all(&out).unwrap();
        let mut config = read_json(&base.join("tokenizer_config.json")).unwrap();
        config["added_tokens_decoder"] = json!({"0": {"content": "<unk>", "special": true}});
        write_json(&base.join("tokenizer_config.json"), &config).unwrap();
        let union = union_vocab(&base, &[&a], &[], None).unwrap();
        union.write_tokenizer(&base, &out).unwrap();
        let config = read_json(&out.join("tokenizer_config.json")).unwrap();
        assert_eq!(
            config["added_tokens_decoder"]["330"],
            json!({"content": "<|im_end|>", "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": false})
        );
        assert_eq!(config["added_tokens_decoder"].as_object().unwrap().len(), 2);
        assert!(!out.join("tokenizer.model").exists());
        crate::tokenizer::prove_loads(&out).unwrap();
        let new = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let old = tokenizers::Tokenizer::from_file(base.join("tokenizer.json")).unwrap();
        assert_eq!(new.get_vocab_size(true), 331);
        let text = "the great state of kansas";
        assert_eq!(
            new.encode(text, false).unwrap().get_ids(),
            old.encode(text, false).unwrap().get_ids()
        );
        let ids = new.encode("hi<|im_end|>", false).unwrap();
        assert_eq!(ids.get_ids().last(), Some(&330));
        assert_eq!(Vocab::read(&out).unwrap().len(), union.rows);
    }
}
