//! Building a `tokenizer.json` from a SentencePiece BPE `tokenizer.model`
//! (Llama, Yi, Mistral repos that ship only the slow tokenizer), the way
//! transformers' `LlamaConverter` does: the pieces become the BPE vocabulary,
//! merges are every split of a piece into two pieces, ordered by the piece's
//! score, and spaces become `▁` with a dummy prefix.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};

use super::spm::{read_spm_model, SpmModel, MODEL_TYPE_BPE};
use crate::fs::files::read_json;

/// The `tokenizer.json` of the folder `dir`: the file itself, or one converted
/// from its `tokenizer.model` (then the flag is true).
pub fn load_tokenizer_json(dir: &Path) -> Result<(Json, bool)> {
    let path = dir.join("tokenizer.json");
    if path.is_file() {
        return Ok((read_json(&path)?, false));
    }
    let spm = dir.join("tokenizer.model");
    if !spm.is_file() {
        bail!("{}: no tokenizer.json or tokenizer.model", dir.display());
    }
    let model = read_spm_model(&std::fs::read(&spm)?)
        .with_context(|| format!("{} is not a SentencePiece model", spm.display()))?;
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.is_file() {
        read_json(&config_path)?
    } else {
        json!({})
    };
    let json = spm_to_tokenizer_json(&model, &config)
        .with_context(|| format!("cannot convert {}", spm.display()))?;
    Ok((json, true))
}

/// Converts a SentencePiece BPE model; `tokenizer_config` supplies
/// `add_bos_token` / `add_eos_token` (defaults true / false, as
/// `LlamaTokenizer`) and the bos/eos token texts.
pub fn spm_to_tokenizer_json(model: &SpmModel, tokenizer_config: &Json) -> Result<Json> {
    if model.model_type != MODEL_TYPE_BPE {
        bail!(
            "SentencePiece model_type {} is not BPE; yibuild converts only BPE models \
             (Llama, Yi, Mistral); save a tokenizer.json with transformers first",
            model.model_type
        );
    }
    let ids: HashMap<&str, usize> = model
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.as_str(), i))
        .collect();
    let vocab: serde_json::Map<String, Json> = model
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.clone(), json!(i)))
        .collect();
    let mut merges: Vec<(f32, String)> = Vec::new();
    for piece in &model.pieces {
        let mut local: Vec<(usize, usize, String)> = piece
            .piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.piece.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?, format!("{l} {r}")))
            })
            .collect();
        local.sort();
        merges.extend(local.into_iter().map(|(_, _, m)| (piece.score, m)));
    }
    // Stable: merges of equal score keep piece order, as in the converter.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    let added: Vec<Json> = model
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.kind, 2..=4))
        .map(|(i, p)| {
            json!({"id": i, "content": p.piece, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": p.kind != 4})
        })
        .collect();
    let unk = model
        .pieces
        .iter()
        .find(|p| p.kind == 2)
        .map(|p| p.piece.clone());
    let mut normalizers = Vec::new();
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if model.add_dummy_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": post_processor(tokenizer_config, &ids),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": model.byte_fallback,
            "ignore_merges": false, "vocab": vocab,
            "merges": merges.into_iter().map(|(_, m)| m).collect::<Vec<_>>()}
    }))
}

/// `TemplateProcessing` adding bos/eos as `add_bos_token`/`add_eos_token` say.
fn post_processor(config: &Json, ids: &HashMap<&str, usize>) -> Json {
    let text = |key: &str, default: &str| -> String {
        match &config[key] {
            Json::String(s) => s.clone(),
            Json::Object(o) => o
                .get("content")
                .and_then(Json::as_str)
                .unwrap_or(default)
                .to_owned(),
            _ => default.to_owned(),
        }
    };
    let mut specials = serde_json::Map::new();
    let mut wrap = |flag: &str, default_on: bool, key: &str, default: &str| -> Option<String> {
        let on = config[flag].as_bool().unwrap_or(default_on);
        let token = text(key, default);
        let id = *ids.get(token.as_str())?;
        on.then(|| {
            specials.insert(
                token.clone(),
                json!({"id": token, "ids": [id], "tokens": [token]}),
            );
            token
        })
    };
    let bos = wrap("add_bos_token", true, "bos_token", "<s>");
    let eos = wrap("add_eos_token", false, "eos_token", "</s>");
    let sequence = |seq: &str, type_id: u32| {
        let mut items = Vec::new();
        items.extend(
            bos.iter()
                .map(|t| json!({"SpecialToken": {"id": t, "type_id": type_id}})),
        );
        items.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        items.extend(
            eos.iter()
                .map(|t| json!({"SpecialToken": {"id": t, "type_id": type_id}})),
        );
        items
    };
    let single = sequence("A", 0);
    let mut pair = single.clone();
    pair.extend(sequence("B", 1));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::SpmTokenizer;

    #[test]
    fn converted_model_matches_the_fixture_tokenizer_json() {
        let dir = tempfile::tempdir().unwrap();
        let spm = SpmTokenizer {
            vocab: 400,
            extra: vec!["<|im_end|>".to_owned()],
        };
        spm.write(dir.path()).unwrap();
        let (fixture, converted_flag) = load_tokenizer_json(dir.path()).unwrap();
        assert!(!converted_flag);
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let (converted, converted_flag) = load_tokenizer_json(dir.path()).unwrap();
        assert!(converted_flag);
        assert_eq!(converted["model"]["merges"], fixture["model"]["merges"]);
        assert_eq!(converted["model"]["vocab"], fixture["model"]["vocab"]);
        assert_eq!(converted["added_tokens"], fixture["added_tokens"]);
        let load =
            |j: &Json| tokenizers::Tokenizer::from_bytes(serde_json::to_vec(j).unwrap()).unwrap();
        let (a, b) = (load(&fixture), load(&converted));
        for text in ["the state of kansas", " Hello  world<|im_end|>", "émigré ½"] {
            let (ea, eb) = (a.encode(text, true).unwrap(), b.encode(text, true).unwrap());
            assert_eq!(ea.get_ids(), eb.get_ids(), "{text}");
            assert_eq!(b.decode(eb.get_ids(), true).unwrap(), text);
        }
    }

    #[test]
    fn unigram_models_are_refused() {
        let model = SpmModel {
            pieces: vec![],
            model_type: 1,
            byte_fallback: false,
            add_dummy_prefix: true,
        };
        let err = spm_to_tokenizer_json(&model, &json!({})).unwrap_err();
        assert!(err.to_string().contains("model_type 1 is not BPE"), "{err}");
    }
}
