//! Everything in a merge's output folder besides the tensors: config.json,
//! tokenizer files, `mergekit_config.yml` and the README model card.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::config::MergeConfig;
use super::plan::MergePlan;
use super::MergeOptions;
use crate::fs::files::{link_or_copy, read_json, write_json};

/// Tokenizer and generation files copied from the donor, as mergekit does.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// Writes config.json from the donor's, with the output dtype, layer count and
/// vocabulary size.
fn write_config(plan: &MergePlan, out: &Path) -> Result<()> {
    let donor = &plan.models[plan.config_donor];
    let mut config = donor.config.clone();
    let Some(obj) = config.as_object_mut() else {
        bail!("model `{}`: config.json is not an object", donor.name);
    };
    if let Some(dtype) = plan.torch_dtype {
        obj.insert("torch_dtype".into(), json!(dtype.torch_name()));
    }
    if plan.out_layers > 0 {
        for key in ["num_hidden_layers", "n_layer", "num_layers"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), json!(plan.out_layers));
            }
        }
    }
    if let Some(rows) = plan.vocab_rows {
        if obj.contains_key("vocab_size") {
            obj.insert("vocab_size".into(), json!(rows));
        }
    }
    if obj.contains_key("layer_types") {
        obj.insert("layer_types".into(), layer_types(plan)?);
    }
    write_json(&out.join("config.json"), &config)
}

/// `layer_types` (transformers 5: each layer's attention, `sliding_attention`
/// or `full_attention`, as Gemma, Qwen2 and Mistral configs list them) for the
/// output's layers: each output layer keeps the type of the layer it is made
/// from, so a slice that renumbers layers keeps their attention pattern.
fn layer_types(plan: &MergePlan) -> Result<serde_json::Value> {
    plan.layer_sources
        .iter()
        .map(|&(m, layer)| {
            let model = &plan.models[m];
            match model.config["layer_types"].get(layer) {
                Some(t) => Ok(t.clone()),
                None => bail!(
                    "model `{}`: config.json's `layer_types` has no entry for layer {layer}",
                    model.name
                ),
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(serde_json::Value::Array)
}

fn builtin_chat_template(name: &str) -> Option<&'static str> {
    match name {
        "chatml" => Some(
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        ),
        _ => None,
    }
}

/// Copies the donor's tokenizer files and applies `chat_template`.
fn write_tokenizer(config: &MergeConfig, plan: &MergePlan, out: &Path) -> Result<()> {
    let donor = &plan.models[plan.tokenizer_donor];
    match &plan.union {
        Some(union) => union.vocab.write_tokenizer(&donor.dir, out)?,
        None => {
            for file in TOKENIZER_FILES {
                let src = donor.dir.join(file);
                if src.is_file() {
                    link_or_copy(&src, &out.join(file))?;
                }
            }
        }
    }
    let Some(template) = &config.chat_template else {
        return Ok(());
    };
    let text = match builtin_chat_template(template) {
        Some(t) => t.to_owned(),
        None if template.len() >= 20 && template.contains('{') => template.clone(),
        None => bail!(
            "`chat_template: {template}` is neither a built-in template (chatml) nor Jinja text"
        ),
    };
    let path = out.join("tokenizer_config.json");
    let mut tc = if path.is_file() {
        read_json(&path)?
    } else {
        json!({})
    };
    if let Some(obj) = tc.as_object_mut() {
        obj.insert("chat_template".into(), json!(text));
    }
    // The copied file may be a hardlink to the donor's: replace, never edit in place.
    let _ = std::fs::remove_file(&path);
    write_json(&path, &tc)
}

/// The README model card, in mergekit's layout, with the seed recorded.
fn card(config: &MergeConfig, plan: &MergePlan, title: &str, seed: u64) -> String {
    let (pretty, url) = plan.method.reference();
    let models = config.referenced_models();
    let base = config.base_model.as_ref().map(|b| b.name.as_str());
    let is_hub = |name: &str| {
        !name.starts_with('/') && !name.starts_with('.') && name.matches('/').count() == 1
    };
    let mut text = String::from("---\n");
    let hub: Vec<&str> = models
        .iter()
        .map(|m| m.name.as_str())
        .filter(|n| is_hub(n))
        .collect();
    if !hub.is_empty() {
        text.push_str("base_model:\n");
        for m in &hub {
            text.push_str(&format!("- {m}\n"));
        }
    }
    text.push_str("library_name: transformers\ntags:\n- mergekit\n- merge\n- yibuild\n---\n");
    text.push_str(&format!("# {title}\n\nThis is a merge of pre-trained language models created with yibuild (a mergekit-compatible merge engine).\n\n## Merge Details\n### Merge Method\n\n"));
    text.push_str(&format!(
        "This model was merged using the [{pretty}]({url}) merge method"
    ));
    match base {
        Some(b) if plan.method != super::method::Method::Slerp => {
            text.push_str(&format!(" using {b} as a base.\n\n"))
        }
        _ => text.push_str(".\n\n"),
    }
    text.push_str("### Models Merged\n\nThe following models were included in the merge:\n");
    for m in models
        .iter()
        .filter(|m| Some(m.name.as_str()) != base || plan.method == super::method::Method::Slerp)
    {
        text.push_str(&format!("* {}\n", m.name));
    }
    text.push_str(&format!(
        "\n### Configuration\n\nRandom seed for DARE/DELLA masks: {seed}.\n\nThe following YAML configuration was used to produce this model:\n\n```yaml\n{}\n```\n",
        config.text.trim_end()
    ));
    text
}

/// Writes config.json, then what mergekit-yaml's output flags ask for:
/// tokenizer files (`copy_tokenizer`; a union vocabulary always), and
/// `mergekit_config.yml` with the README.md card (`write_model_card`).
pub fn write_metadata(
    config: &MergeConfig,
    plan: &MergePlan,
    out: &Path,
    opts: &MergeOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    write_config(plan, out)?;
    if opts.copy_tokenizer || plan.union.is_some() {
        write_tokenizer(config, plan, out)?;
    } else if config.chat_template.is_some() {
        log("warning: `chat_template` is not written: --no-copy-tokenizer leaves the output without a tokenizer (as mergekit does)");
    }
    if !opts.write_model_card {
        return Ok(());
    }
    write_text(&out.join("mergekit_config.yml"), &config.text)?;
    let title = opts.title.clone().unwrap_or_else(|| {
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "merge".into())
    });
    write_text(
        &out.join("README.md"),
        &card(config, plan, &title, opts.seed),
    )
}

/// Writes a text file, naming it in the error (a full disk says which file).
fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
