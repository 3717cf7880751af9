//! `yibuild inspect MODEL`: the numbers a user checks before and after
//! tokenizer surgery — architecture (with its specific settings: rotary
//! scaling, sliding window, soft-capping, tied embeddings), dtype, parameter count, the three
//! vocabulary sizes, special tokens, stop tokens and the chat template.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::spm::read_spm_model;
use super::templates::builtin_name;
use super::vocab::{ModelRows, Vocab};
use crate::fs::files::read_json;
use crate::hf::config::ConfigFile;
use crate::hf::details::architecture_details;
use crate::tensor::ModelTensors;

/// A plain-text report on the Hugging Face model folder `dir`, one fact per
/// line, ending with `warning:` lines for vocabulary sizes that disagree.
pub fn inspect_model(dir: &Path) -> Result<String> {
    let config = read_json(&dir.join("config.json"))?;
    let tensors = ModelTensors::open(dir)?;
    let rows = ModelRows::from_parts(&config, &tensors)?;
    let mut out = String::new();
    let arch = config["architectures"][0].as_str().unwrap_or("?");
    let model_type = config["model_type"].as_str().unwrap_or("?");
    writeln!(out, "model:          {}", dir.display())?;
    writeln!(out, "architecture:   {arch} ({model_type})")?;

    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut params = 0usize;
    for name in tensors.names() {
        let info = tensors.require(name)?;
        *dtypes.entry(info.dtype.to_string()).or_default() += 1;
        params += info.numel();
    }
    let dtypes: Vec<String> = dtypes
        .iter()
        .map(|(d, n)| format!("{d} ({n} tensors)"))
        .collect();
    let file = ConfigFile::from_json(&dir.join("config.json"), config.clone())?;
    // Architectures the config reader does not know get the generic lines only.
    if let Ok(decoder) = file.decoder() {
        for (label, value) in architecture_details(&decoder) {
            writeln!(out, "{:<15} {value}", format!("{label}:"))?;
        }
    }
    let declared = file.dtype()?.unwrap_or("unset");
    writeln!(
        out,
        "dtype:          {} (config dtype: {declared})",
        dtypes.join(", ")
    )?;
    writeln!(
        out,
        "parameters:     {params} ({}) in {} tensors",
        human_count(params),
        tensors.names().len()
    )?;

    let vocab = Vocab::read(dir).ok();
    let config_vocab = rows
        .config_vocab
        .map_or("unset".to_owned(), |v| v.to_string());
    let head = match &rows.head {
        Some((name, n)) => format!("{n} ({name})"),
        None => "tied".to_owned(),
    };
    let tokens = vocab.as_ref().map(Vocab::len);
    writeln!(
        out,
        "vocab:          tokenizer {} | config vocab_size {config_vocab} | embedding rows {} ({}) | lm_head rows {head}",
        tokens.map_or("none".to_owned(), |t| t.to_string()),
        rows.embed.1,
        rows.embed.0
    )?;
    let spm = dir.join("tokenizer.model");
    if spm.is_file() {
        let model = read_spm_model(&std::fs::read(&spm)?)?;
        writeln!(
            out,
            "tokenizer.model: {} SentencePiece pieces",
            model.pieces.len()
        )?;
    }
    if let Some(vocab) = &vocab {
        let specials: Vec<String> = vocab
            .special_ids()
            .iter()
            .map(|(role, text, id)| {
                let id = id.map_or("missing".to_owned(), |i| i.to_string());
                format!("{role} {text:?}={id}")
            })
            .collect();
        writeln!(out, "special tokens: {}", specials.join(", "))?;
        let special_added = vocab.added.iter().filter(|t| t.special).count();
        writeln!(
            out,
            "added tokens:   {} ({special_added} special)",
            vocab.added.len()
        )?;
    }
    let generation = dir.join("generation_config.json");
    if generation.is_file() {
        let g = read_json(&generation)?;
        let mut line = format!("eos_token_id {}", g["eos_token_id"]);
        if let Some(stops) = g.get("stop_strings") {
            write!(line, ", stop_strings {stops}")?;
        }
        writeln!(out, "generation:     {line}")?;
    }
    let template = vocab.as_ref().and_then(|v| v.chat_template.as_deref());
    let template = match template {
        None => "none".to_owned(),
        Some(t) => match builtin_name(t) {
            Some(name) => format!("{name} (builtin)"),
            None => format!(
                "custom, {} chars: {}",
                t.len(),
                t.lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(60)
                    .collect::<String>()
            ),
        },
    };
    writeln!(out, "chat template:  {template}")?;
    for warning in warnings(tokens, &rows) {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(out)
}

/// Disagreements between the vocabulary sizes that would break the model.
fn warnings(tokens: Option<usize>, rows: &ModelRows) -> Vec<String> {
    let mut out = Vec::new();
    let embed = rows.embed.1;
    if let Some(t) = tokens.filter(|t| *t > embed) {
        out.push(format!(
            "tokenizer has {t} tokens but the embedding only {embed} rows"
        ));
    }
    if let Some(c) = rows.config_vocab.filter(|c| *c != embed) {
        out.push(format!(
            "config vocab_size {c} differs from the {embed} embedding rows"
        ));
    }
    if let Some((name, n)) = rows.head.as_ref().filter(|(_, n)| *n != embed) {
        out.push(format!("`{name}` has {n} rows, the embedding {embed}"));
    }
    out
}

/// 34.4B, 6.1M, 980K: the parameter count the way model cards write it.
fn human_count(n: usize) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e9 => format!("{:.1}B", n / 1e9),
        _ if n >= 1e6 => format!("{:.1}M", n / 1e6),
        _ if n >= 1e3 => format!("{:.1}K", n / 1e3),
        _ => format!("{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{SpmTokenizer, TinyLlama};
    use crate::fs::files::write_json;

    #[test]
    fn reports_sizes_specials_and_template() {
        let dir = tempfile::tempdir().unwrap();
        let model = TinyLlama {
            vocab: 384,
            ..Default::default()
        };
        model.write(dir.path()).unwrap();
        let spm = SpmTokenizer {
            extra: vec!["<|im_end|>".to_owned()],
            ..Default::default()
        };
        spm.write(dir.path()).unwrap();
        let mut config = read_json(&dir.path().join("tokenizer_config.json")).unwrap();
        config["chat_template"] = super::super::templates::builtin("orca-vicuna")
            .unwrap()
            .into();
        write_json(&dir.path().join("tokenizer_config.json"), &config).unwrap();
        let report = inspect_model(dir.path()).unwrap();
        let body: Vec<&str> = report.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "architecture:   LlamaForCausalLM (llama)",
                "layers:         2 (hidden 64, 4 heads, 2 key/value heads, head dim 16)",
                "context:        2048",
                "rope scaling:   default (theta 10000)",
                "tied embeddings: no",
                "dtype:          bfloat16 (21 tensors) (config dtype: bfloat16)",
                // 2 × 384×64 embeddings + 2 × 36992 per layer + 64 final norm.
                "parameters:     123200 (123.2K) in 21 tensors",
                "vocab:          tokenizer 321 | config vocab_size 384 | embedding rows 384 (model.embed_tokens.weight) | lm_head rows 384 (lm_head.weight)",
                "tokenizer.model: 321 SentencePiece pieces",
                "special tokens: bos_token \"<s>\"=1, eos_token \"</s>\"=2, pad_token \"<unk>\"=0, unk_token \"<unk>\"=0",
                "added tokens:   4 (3 special)",
                "generation:     eos_token_id 2",
                "chat template:  orca-vicuna (builtin)",
            ]
        );
    }

    #[test]
    fn warns_when_sizes_disagree() {
        let dir = tempfile::tempdir().unwrap();
        TinyLlama::default().write(dir.path()).unwrap();
        let mut config = read_json(&dir.path().join("config.json")).unwrap();
        config["vocab_size"] = 32000.into();
        crate::fs::files::write_json(&dir.path().join("config.json"), &config).unwrap();
        SpmTokenizer {
            vocab: 330,
            extra: vec![],
        }
        .write(dir.path())
        .unwrap();
        let report = inspect_model(dir.path()).unwrap();
        assert!(
            report.contains("warning: tokenizer has 330 tokens but the embedding only 320 rows\n"),
            "{report}"
        );
        assert!(
            report
                .contains("warning: config vocab_size 32000 differs from the 320 embedding rows\n"),
            "{report}"
        );
    }
}
