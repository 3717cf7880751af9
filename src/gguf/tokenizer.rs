//! Embeds a Hugging Face tokenizer as GGUF vocabulary metadata, the way
//! llama.cpp's `convert_hf_to_gguf.py` does:
//!
//! * `llama` (SentencePiece): from `tokenizer.model` when present (pieces,
//!   scores and types read from its protobuf), else from a `tokenizer.json`
//!   BPE model with `byte_fallback` (Llama/Yi/Mistral exports).
//! * `gpt2` (byte-level BPE): from `tokenizer.json`, with its merges and a
//!   `tokenizer.ggml.pre` name recognised from the pre-tokenizer.
//!
//! Then the special token ids, `add_bos`/`add_eos`, and the chat template from
//! `tokenizer_config.json` (falling back to `config.json` ids), padded with
//! `[PADn]` tokens up to the model's vocabulary size.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::arch::Arch;
use super::file::{Value, ValueType};
use crate::fs::files::read_json;

/// GGUF token types (equal to SentencePiece's piece types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    /// An ordinary piece.
    Normal = 1,
    /// The unknown token.
    Unknown = 2,
    /// A special/control token (`<s>`).
    Control = 3,
    /// A user-added token matched literally.
    UserDefined = 4,
    /// Padding that no text produces.
    Unused = 5,
    /// A `<0xNN>` byte-fallback token.
    Byte = 6,
}

/// The vocabulary to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    /// `llama` or `gpt2`.
    pub model: &'static str,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    /// Token texts by id.
    pub tokens: Vec<String>,
    /// SentencePiece scores (`llama` only).
    pub scores: Option<Vec<f32>>,
    /// Token types by id.
    pub types: Vec<TokenType>,
    /// BPE merges as `"a b"` (`gpt2` only).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.add_space_prefix`, when known.
    pub add_space_prefix: Option<bool>,
}

/// Reads the tokenizer of the model folder `dir` and returns its GGUF keys,
/// padded to `vocab_size` tokens (the embedding rows), with the differences
/// `arch`'s converter class makes: Gemma writes `add_space_prefix` false;
/// Phi-3 (`Phi3MiniModel.set_vocab`) scores padding −10000, gives the
/// tokens of `tokenizer.json`'s `added_tokens` score −1000 and type
/// user-defined (control when special), and writes no `add_space_prefix`.
pub fn vocab_metadata(
    dir: &Path,
    arch: Arch,
    vocab_size: usize,
    config: &Json,
) -> Result<Vec<(String, Value)>> {
    let mut vocab = if dir.join("tokenizer.model").is_file() {
        read_sentencepiece(&dir.join("tokenizer.model"))?
    } else if dir.join("tokenizer.json").is_file() {
        read_tokenizer_json(&dir.join("tokenizer.json"))?
    } else {
        bail!(
            "{}: no tokenizer.model or tokenizer.json; GGUF files must embed a tokenizer",
            dir.display()
        );
    };
    if vocab.tokens.len() > vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model has only {vocab_size} embedding rows",
            dir.display(),
            vocab.tokens.len()
        );
    }
    let phi3 = arch == Arch::Phi3 && vocab.model == "llama";
    for i in vocab.tokens.len()..vocab_size {
        vocab.tokens.push(format!("[PAD{i}]"));
        vocab.types.push(TokenType::Unused);
        if let Some(s) = vocab.scores.as_mut() {
            s.push(if phi3 { -10000.0 } else { -1000.0 });
        }
    }
    if phi3 {
        phi3_added_tokens(dir, &mut vocab)?;
    }
    if matches!(arch, Arch::Gemma2 | Arch::Gemma3) && vocab.model == "llama" {
        vocab.add_space_prefix = Some(false);
    }
    let tok_config = match dir.join("tokenizer_config.json") {
        p if p.is_file() => read_json(&p)?,
        _ => Json::Null,
    };
    let mut kv: Vec<(String, Value)> = vec![
        (
            "tokenizer.ggml.model".into(),
            Value::String(vocab.model.into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            Value::String(vocab.pre.clone()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::strings(vocab.tokens.iter().cloned()),
        ),
    ];
    if let Some(scores) = &vocab.scores {
        kv.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(
                ValueType::F32,
                scores.iter().map(|s| Value::F32(*s)).collect(),
            ),
        ));
    }
    kv.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(
            ValueType::I32,
            vocab.types.iter().map(|t| Value::I32(*t as i32)).collect(),
        ),
    ));
    if vocab.model == "gpt2" {
        kv.push((
            "tokenizer.ggml.merges".into(),
            Value::strings(vocab.merges.iter().cloned()),
        ));
    }
    let index: HashMap<&str, usize> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    for (role, key) in [
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("sep", "seperator_token_id"),
        ("pad", "padding_token_id"),
    ] {
        if let Some(id) = special_id(role, &tok_config, config, &index, vocab_size) {
            kv.push((format!("tokenizer.ggml.{key}"), Value::U32(id as u32)));
        }
    }
    for flag in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = tok_config.get(flag).and_then(Json::as_bool) {
            kv.push((format!("tokenizer.ggml.{flag}"), Value::Bool(b)));
        }
    }
    if let Some(b) = vocab.add_space_prefix {
        kv.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
    }
    kv.extend(chat_templates(dir, &tok_config)?);
    Ok(kv)
}

/// Phi-3's converter: SentencePiece user-defined pieces count as normal,
/// then every `added_tokens` entry of `tokenizer.json` inside the vocabulary
/// replaces its id with score −1000, user-defined or (special) control.
fn phi3_added_tokens(dir: &Path, vocab: &mut Vocab) -> Result<()> {
    for ty in &mut vocab.types {
        if *ty == TokenType::UserDefined {
            *ty = TokenType::Normal;
        }
    }
    vocab.add_space_prefix = None;
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(());
    }
    let json = read_json(&path)?;
    for (id, text, special) in added_tokens(&json) {
        if id >= vocab.tokens.len() {
            continue;
        }
        vocab.tokens[id] = text.to_owned();
        if let Some(scores) = vocab.scores.as_mut() {
            scores[id] = -1000.0;
        }
        vocab.types[id] = if special {
            TokenType::Control
        } else {
            TokenType::UserDefined
        };
    }
    Ok(())
}

/// `tokenizer.json`'s `added_tokens` as (id, text, special); entries
/// without an id or text are skipped.
fn added_tokens(json: &Json) -> impl Iterator<Item = (usize, &str, bool)> {
    json.get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let id = t.get("id").and_then(Json::as_u64)?;
            let text = t.get("content").and_then(Json::as_str)?;
            let special = t.get("special").and_then(Json::as_bool) == Some(true);
            Some((id as usize, text, special))
        })
}

/// The id of the `role` special token: `tokenizer_config.json`'s `<role>_token`
/// text looked up in the vocabulary, else `config.json`'s `<role>_token_id`.
fn special_id(
    role: &str,
    tok_config: &Json,
    config: &Json,
    index: &HashMap<&str, usize>,
    vocab_size: usize,
) -> Option<usize> {
    let text = match tok_config.get(format!("{role}_token")) {
        Some(Json::String(s)) => Some(s.as_str()),
        Some(Json::Object(o)) => o.get("content").and_then(Json::as_str),
        _ => None,
    };
    if let Some(id) = text.and_then(|t| index.get(t)) {
        return Some(*id);
    }
    let id = match config.get(format!("{role}_token_id"))? {
        Json::Array(a) => a.first()?.as_u64()?,
        v => v.as_u64()?,
    } as usize;
    (id < vocab_size).then_some(id)
}

/// `tokenizer.chat_template` (and `tokenizer.chat_template.<name>` for named ones).
fn chat_templates(dir: &Path, tok_config: &Json) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    match tok_config.get("chat_template") {
        Some(Json::String(t)) => {
            out.push(("tokenizer.chat_template".into(), Value::String(t.clone())))
        }
        Some(Json::Array(list)) => {
            for entry in list {
                let (Some(name), Some(t)) = (
                    entry.get("name").and_then(Json::as_str),
                    entry.get("template").and_then(Json::as_str),
                ) else {
                    continue;
                };
                let key = if name == "default" {
                    "tokenizer.chat_template".to_owned()
                } else {
                    format!("tokenizer.chat_template.{name}")
                };
                out.push((key, Value::String(t.to_owned())));
            }
        }
        _ => {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                let t = std::fs::read_to_string(&jinja)
                    .with_context(|| format!("cannot read {}", jinja.display()))?;
                out.push(("tokenizer.chat_template".into(), Value::String(t)));
            }
        }
    }
    Ok(out)
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && u8::from_str_radix(&t[3..5], 16).is_ok()
}

/// Reads a `tokenizer.json` BPE model (with or without byte fallback).
pub fn read_tokenizer_json(path: &Path) -> Result<Vocab> {
    let json = read_json(path)?;
    let model = json.get("model").context("no `model` object")?;
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("");
    if kind != "BPE" {
        bail!(
            "{}: tokenizer model type `{kind}` is not supported (GGUF conversion handles BPE; \
             SentencePiece models need their tokenizer.model)",
            path.display()
        );
    }
    let vocab_map = model
        .get("vocab")
        .and_then(Json::as_object)
        .with_context(|| format!("{}: BPE model without `vocab`", path.display()))?;
    let mut by_id: Vec<Option<String>> = Vec::new();
    let mut put = |id: usize, text: &str| {
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some(text.to_owned());
    };
    for (text, id) in vocab_map {
        put(id.as_u64().context("non-integer vocab id")? as usize, text);
    }
    let mut added: HashMap<usize, bool> = HashMap::new();
    for (id, text, special) in added_tokens(&json) {
        put(id, text);
        added.insert(id, special);
    }
    let merges: Vec<String> = model
        .get("merges")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) => Some(
                pair.iter()
                    .filter_map(Json::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        })
        .collect();
    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let unk = model.get("unk_token").and_then(Json::as_str);
    let mut tokens = Vec::with_capacity(by_id.len());
    let mut types = Vec::with_capacity(by_id.len());
    for (id, text) in by_id.into_iter().enumerate() {
        let Some(text) = text else {
            tokens.push(format!("[PAD{id}]"));
            types.push(TokenType::Unused);
            continue;
        };
        let ty = match added.get(&id) {
            Some(true) => TokenType::Control,
            Some(false) => TokenType::UserDefined,
            None if Some(text.as_str()) == unk => TokenType::Unknown,
            None if byte_fallback && is_byte_token(&text) => TokenType::Byte,
            None => TokenType::Normal,
        };
        let ty = if byte_fallback && ty == TokenType::Control && Some(text.as_str()) == unk {
            TokenType::Unknown
        } else {
            ty
        };
        tokens.push(text);
        types.push(ty);
    }
    if byte_fallback {
        // SentencePiece-style vocabulary: llama.cpp's SPM tokenizer merges the
        // pair whose result scores highest, so give each merge result the
        // negated rank of its merge (earlier merges win, as in BPE).
        let mut rank: HashMap<String, usize> = HashMap::new();
        for (r, m) in merges.iter().enumerate() {
            if let Some((a, b)) = m.split_once(' ') {
                rank.entry(format!("{a}{b}")).or_insert(r);
            }
        }
        let scores = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| match ty {
                TokenType::Normal => rank.get(t).map_or(0.0, |r| -(*r as f32)),
                TokenType::UserDefined | TokenType::Control => -1000.0,
                _ => 0.0,
            })
            .collect();
        return Ok(Vocab {
            model: "llama",
            pre: "default".into(),
            tokens,
            scores: Some(scores),
            types,
            merges: Vec::new(),
            add_space_prefix: Some(spm_adds_space_prefix(&json)),
        });
    }
    Ok(Vocab {
        model: "gpt2",
        pre: bpe_pre_name(json.get("pre_tokenizer")).into(),
        tokens,
        scores: None,
        types,
        merges,
        add_space_prefix: None,
    })
}

/// Whether a SentencePiece-style tokenizer.json prepends `▁` to the text
/// (a `Prepend` normalizer, or a `Metaspace` pre-tokenizer that prepends).
fn spm_adds_space_prefix(json: &Json) -> bool {
    let text = json.to_string();
    if text.contains("\"Prepend\"") {
        return true;
    }
    match json.get("pre_tokenizer") {
        Some(p) if p.get("type").and_then(Json::as_str) == Some("Metaspace") => {
            p.get("prepend_scheme").and_then(Json::as_str) != Some("never")
                && p.get("add_prefix_space").and_then(Json::as_bool) != Some(false)
        }
        _ => false,
    }
}

/// llama.cpp's name for a byte-level BPE pre-tokenizer: plain GPT-2 byte
/// level, or the Llama-3 / Qwen2 split regexes; `default` otherwise.
fn bpe_pre_name(pre: Option<&Json>) -> &'static str {
    let Some(pre) = pre else { return "default" };
    if pre.get("type").and_then(Json::as_str) == Some("ByteLevel") {
        return if pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true) {
            "gpt-2"
        } else {
            "default"
        };
    }
    let text = pre.to_string();
    if text.contains(r"\\p{N}{1,3}") && text.contains(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)") {
        "llama-bpe"
    } else if text.contains(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)") && text.contains(r"\\p{N}|") {
        "qwen2"
    } else {
        "default"
    }
}

/// Reads SentencePiece's `tokenizer.model` (a protobuf `ModelProto`): field 1
/// holds the pieces (`piece` 1, `score` 2, `type` 3), field 3 the normalizer
/// spec whose field 3 is `add_dummy_prefix`.
pub fn read_sentencepiece(path: &Path) -> Result<Vocab> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad =
        |what: &str| anyhow::anyhow!("{}: malformed SentencePiece model ({what})", path.display());
    let mut tokens = Vec::new();
    let mut scores = Vec::new();
    let mut types = Vec::new();
    let mut add_dummy_prefix = true;
    for field in proto_fields(&bytes).map_err(&bad)? {
        match field {
            (1, ProtoValue::Bytes(piece)) => {
                let (mut text, mut score, mut ty) = (String::new(), 0.0f32, 1u64);
                for f in proto_fields(piece).map_err(&bad)? {
                    match f {
                        (1, ProtoValue::Bytes(b)) => {
                            text = String::from_utf8(b.to_vec())
                                .map_err(|_| bad("piece is not UTF-8"))?
                        }
                        (2, ProtoValue::Fixed32(v)) => score = f32::from_bits(v),
                        (3, ProtoValue::Varint(v)) => ty = v,
                        _ => {}
                    }
                }
                let ty = match ty {
                    2 => TokenType::Unknown,
                    3 => TokenType::Control,
                    4 => TokenType::UserDefined,
                    5 => TokenType::Unused,
                    6 => TokenType::Byte,
                    _ => TokenType::Normal,
                };
                tokens.push(text);
                scores.push(score);
                types.push(ty);
            }
            (3, ProtoValue::Bytes(spec)) => {
                for f in proto_fields(spec).map_err(&bad)? {
                    if let (3, ProtoValue::Varint(v)) = f {
                        add_dummy_prefix = v != 0;
                    }
                }
            }
            _ => {}
        }
    }
    if tokens.is_empty() {
        return Err(bad("no pieces"));
    }
    // Tokens added on top of the SentencePiece model (added_tokens.json).
    let added = path.with_file_name("added_tokens.json");
    if added.is_file() {
        let map = read_json(&added)?;
        let mut extra: Vec<(usize, String)> = map
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(t, id)| Some((id.as_u64()? as usize, t.clone())))
            .collect();
        extra.sort();
        for (id, text) in extra {
            if id == tokens.len() {
                tokens.push(text);
                scores.push(-1000.0);
                types.push(TokenType::UserDefined);
            }
        }
    }
    Ok(Vocab {
        model: "llama",
        pre: "default".into(),
        tokens,
        scores: Some(scores),
        types,
        merges: Vec::new(),
        add_space_prefix: Some(add_dummy_prefix),
    })
}

enum ProtoValue<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// The top-level fields of a protobuf message (fixed64 fields are skipped).
fn proto_fields(mut b: &[u8]) -> Result<Vec<(u64, ProtoValue<'_>)>, &'static str> {
    fn varint(b: &mut &[u8]) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long")
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => ProtoValue::Varint(varint(&mut b)?),
            1 => {
                b = b.get(8..).ok_or("truncated fixed64")?;
                continue;
            }
            2 => {
                let len = varint(&mut b)? as usize;
                if len > b.len() {
                    return Err("truncated field");
                }
                let (v, rest) = b.split_at(len);
                b = rest;
                ProtoValue::Bytes(v)
            }
            5 => {
                let v = b.get(..4).ok_or("truncated fixed32")?;
                b = &b[4..];
                ProtoValue::Fixed32(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
            }
            _ => return Err("unknown wire type"),
        };
        out.push((field, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A Llama/Yi-style tokenizer.json: BPE with byte fallback and Metaspace.
    fn spm_json(dir: &Path) {
        let mut vocab = serde_json::Map::new();
        let mut tokens = vec!["<unk>".to_owned(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(["▁", "a", "b", "▁a", "ab"].map(String::from));
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(i));
        }
        let added: Vec<_> = (0..3)
            .map(|i| json!({"id": i, "content": tokens[i], "special": true}))
            .collect();
        let tok = json!({
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}]},
            "pre_tokenizer": null,
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "vocab": vocab,
                      "merges": ["▁ a", "a b"]}
        });
        std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    }

    #[test]
    fn byte_fallback_bpe_becomes_a_llama_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        spm_json(dir.path());
        let v = read_tokenizer_json(&dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(v.model, "llama");
        assert_eq!(v.types[0], TokenType::Unknown);
        assert_eq!(v.types[1], TokenType::Control);
        assert_eq!(v.types[3], TokenType::Byte);
        assert_eq!(v.types[3 + 256], TokenType::Normal);
        let scores = v.scores.unwrap();
        assert_eq!(scores[3 + 256 + 3], 0.0, "▁a comes from merge 0");
        assert_eq!(scores[3 + 256 + 4], -1.0, "ab comes from merge 1");
        assert_eq!(v.add_space_prefix, Some(true));
        let kv = vocab_metadata(
            dir.path(),
            Arch::Llama,
            270,
            &json!({"bos_token_id": 1, "eos_token_id": 2}),
        )
        .unwrap();
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("tokenizer.ggml.model"),
            Some(Value::String("llama".into()))
        );
        assert_eq!(get("tokenizer.ggml.bos_token_id"), Some(Value::U32(1)));
        match get("tokenizer.ggml.tokens") {
            Some(Value::Array(_, t)) => assert_eq!(t[269], Value::String("[PAD269]".into())),
            other => panic!("{other:?}"),
        }
        let err = vocab_metadata(dir.path(), Arch::Llama, 100, &json!({})).unwrap_err();
        assert!(
            err.to_string()
                .contains("264 tokens but the model has only 100 embedding rows"),
            "{err}"
        );
    }

    fn proto_field(field: u64, wire: u64, payload: &[u8], out: &mut Vec<u8>) {
        out.push(((field << 3) | wire) as u8);
        if wire == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
    }

    #[test]
    fn sentencepiece_model_pieces_scores_and_types_are_read() {
        let mut model = Vec::new();
        for (text, score, ty) in [
            ("<unk>", 0.0f32, 2u8),
            ("<s>", 0.0, 3),
            ("▁the", -1.5, 1),
            ("<0x0A>", 0.0, 6),
        ] {
            let mut piece = Vec::new();
            proto_field(1, 2, text.as_bytes(), &mut piece);
            proto_field(2, 5, &score.to_le_bytes(), &mut piece);
            proto_field(3, 0, &[ty], &mut piece);
            proto_field(1, 2, &piece, &mut model);
        }
        let mut normalizer = Vec::new();
        proto_field(3, 0, &[0], &mut normalizer);
        proto_field(3, 2, &normalizer, &mut model);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.model");
        std::fs::write(&path, &model).unwrap();
        let v = read_sentencepiece(&path).unwrap();
        assert_eq!(v.tokens, ["<unk>", "<s>", "▁the", "<0x0A>"]);
        assert_eq!(v.scores.unwrap(), [0.0, 0.0, -1.5, 0.0]);
        assert_eq!(
            v.types,
            [
                TokenType::Unknown,
                TokenType::Control,
                TokenType::Normal,
                TokenType::Byte
            ]
        );
        assert_eq!(v.add_space_prefix, Some(false));
        std::fs::write(&path, &model[..model.len() - 3]).unwrap();
        let err = read_sentencepiece(&path).unwrap_err();
        assert!(
            err.to_string().contains("malformed SentencePiece model"),
            "{err}"
        );
    }
}
