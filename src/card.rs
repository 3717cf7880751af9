//! The model card (README.md) of a release: Hugging Face front matter plus a
//! body written from what the build knows.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value as Json};

use crate::eval::results::EvalResults;
use crate::tensor::ModelTensors;

/// What a step may know about the whole recipe (see `Step::bind`): the
/// facts a model card is written from. Only [`RecipeFacts::text`] carries
/// formatting and comments; a step that keeps it (the package, which ships
/// the recipe) reruns when they change, and nothing else does.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecipeFacts {
    /// The recipe's `name`.
    pub name: String,
    /// The recipe's digest (`Recipe::digest`).
    pub digest: String,
    /// The `card:` section.
    pub card: serde_json::Map<String, serde_json::Value>,
    /// Sources: name and where they come from (`hf://…` or the path as written).
    pub sources: Vec<(String, String)>,
    /// Steps: name, kind, and parameters.
    pub steps: Vec<(String, String, serde_json::Value)>,
    /// The DAG as a mermaid flowchart, one node per sweep.
    pub mermaid: String,
    /// The recipe file's text as written (comments and all): the card shows
    /// it and the release ships it, so that "Reproduce" has a file to run.
    pub text: String,
    /// The recipe file's name (`capybara-tess.yaml`), the name it has in the
    /// release.
    pub file_name: String,
}

/// One evaluation's results, as read from an eval step's `results.json`
/// (its wall-clock `timing` cleared, so the card is reproducible).
#[derive(Debug, Clone)]
pub struct EvalSummary {
    /// The eval step's name.
    pub step: String,
    /// The parsed results.
    pub results: EvalResults,
}

/// One quantized file (or folder) of the release.
#[derive(Debug, Clone)]
pub struct QuantFile {
    /// File name in the release; a folder's ends in `/`.
    pub file: String,
    /// Size in bytes (a folder's files together).
    pub size: u64,
    /// The step that made it.
    pub step: String,
    /// What kind of quantization it is.
    pub format: QuantFormat,
}

/// The format of a quantized file or folder, for the card's table and tags.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantFormat {
    /// A GGUF file of the given type (`Q4_K_M`, from its name).
    Gguf(String),
    /// A model folder whose `config.json` declares a `quantization_config`
    /// (exllamav2's exl2, GPTQ, AWQ): its `quant_method`, `bits` (for exl2 the
    /// average bits per weight) and exl2's `head_bits`.
    Folder {
        /// `quant_method`.
        method: String,
        /// `bits`.
        bits: Option<f64>,
        /// `head_bits` (exl2: bits of the output layer).
        head_bits: Option<f64>,
    },
    /// Anything else: shown without a type.
    Unknown,
}

/// The format of a release file by its name: GGUF files carry their type
/// as the last `-` or `.` part of the stem (`name-Q8_0.gguf`).
pub fn file_format(file: &str) -> QuantFormat {
    match file.strip_suffix(".gguf") {
        Some(stem) => QuantFormat::Gguf(stem.rsplit(['-', '.']).next().unwrap_or(stem).to_owned()),
        None => QuantFormat::Unknown,
    }
}

/// The format of a quantized model folder, from the `quantization_config`
/// of its `config.json` (exllamav2 writes `{quant_method: "exl2", bits: 4.65,
/// head_bits: 6, ...}` there).
pub fn folder_format(dir: &Path) -> QuantFormat {
    let config: Json = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Json::Null);
    let q = &config["quantization_config"];
    match q["quant_method"].as_str() {
        Some(method) => QuantFormat::Folder {
            method: method.to_owned(),
            bits: q["bits"].as_f64(),
            head_bits: q["head_bits"].as_f64(),
        },
        None => QuantFormat::Unknown,
    }
}

/// Everything the card is written from.
#[derive(Debug, Clone)]
pub struct CardInput<'a> {
    /// Recipe facts.
    pub facts: &'a RecipeFacts,
    /// The step whose model is released.
    pub model_step: &'a str,
    /// `card:` overrides given on the package step.
    pub overrides: &'a Map<String, Json>,
    /// Quantized files.
    pub quants: Vec<QuantFile>,
    /// Evaluations.
    pub evals: Vec<EvalSummary>,
    /// How a sweep chose the model, when a `select` step did.
    pub sweep: Option<String>,
    /// Parameter count of the released model (for bits per weight).
    pub parameters: Option<u64>,
    /// The model's own chat template (`tokenizer_config.json`), used when the
    /// recipe's card names none.
    pub chat_template: Option<String>,
    /// Stop strings from the model's `generation_config.json`.
    pub stop_strings: Vec<String>,
    /// `(file, sha256)` of the release files other than the card itself.
    pub checksums: Vec<(String, String)>,
    /// The recipe's file in the release, which "Reproduce" runs.
    pub recipe_file: Option<String>,
    /// The model's architecture and its own settings ([`model_details`]).
    pub model_details: Vec<(String, String)>,
}

/// The Hub ids among the recipe's sources (`base_model`).
pub fn hub_ids(facts: &RecipeFacts) -> Vec<String> {
    facts
        .sources
        .iter()
        .filter_map(|(_, d)| d.strip_prefix("hf://"))
        .map(|d| d.split('@').next().unwrap_or(d).to_owned())
        .collect()
}

/// The recipe's `card:` section with the package step's overrides applied.
fn card_fields(input: &CardInput) -> Map<String, Json> {
    let mut card = input.facts.card.clone();
    for (k, v) in input.overrides {
        card.insert(k.clone(), v.clone());
    }
    card
}

/// The merge steps' parameters (`{config, seed}`), in recipe order.
fn merge_steps(facts: &RecipeFacts) -> impl Iterator<Item = (&str, &Json)> {
    facts
        .steps
        .iter()
        .filter(|(_, kind, _)| kind == "merge")
        .map(|(name, _, p)| (name.as_str(), p))
}

/// The YAML front matter as JSON (emitted as YAML by [`render`]).
pub fn front_matter(input: &CardInput) -> Map<String, Json> {
    let facts = input.facts;
    let card = card_fields(input);
    let mut fm = Map::new();
    for key in ["license", "license_name", "license_link", "language"] {
        if let Some(v) = card.get(key) {
            fm.insert(key.to_owned(), v.clone());
        }
    }
    let bases = match card.get("base_model") {
        Some(v) => v.clone(),
        None => json!(hub_ids(facts)),
    };
    let merge_methods: Vec<String> = merge_steps(facts)
        .filter_map(|(_, p)| p.pointer("/config/merge_method").and_then(Json::as_str))
        .map(str::to_owned)
        .collect();
    if bases.as_array().is_some_and(|a| !a.is_empty()) || bases.is_string() {
        fm.insert("base_model".to_owned(), bases);
        // The Hub's model tree: a merge of its bases, or quantizations of
        // them; a patched or re-tokenized copy is neither, and the Hub infers
        // the relation itself then.
        let relation = match (merge_methods.is_empty(), input.quants.is_empty()) {
            (false, _) => Some("merge"),
            (true, false) => Some("quantized"),
            (true, true) => None,
        };
        if let Some(relation) = relation {
            fm.insert("base_model_relation".to_owned(), json!(relation));
        }
    }
    fm.insert(
        "library_name".to_owned(),
        card.get("library_name")
            .cloned()
            .unwrap_or(json!("transformers")),
    );
    let mut tags: Vec<Json> = vec![json!("yibuild")];
    if !merge_methods.is_empty() {
        tags.extend([json!("merge"), json!("mergekit")]);
        tags.extend(merge_methods.iter().map(|m| json!(m)));
    }
    for q in &input.quants {
        match &q.format {
            QuantFormat::Gguf(_) => tags.push(json!("gguf")),
            QuantFormat::Folder { method, .. } => tags.push(json!(method)),
            QuantFormat::Unknown => {}
        }
    }
    if let Some(Json::Array(extra)) = card.get("tags") {
        tags.extend(extra.iter().cloned());
    }
    let mut seen = std::collections::BTreeSet::new();
    tags.retain(|t| seen.insert(t.to_string()));
    fm.insert("tags".to_owned(), Json::Array(tags));
    fm.insert(
        "pipeline_tag".to_owned(),
        card.get("pipeline_tag")
            .cloned()
            .unwrap_or(json!("text-generation")),
    );
    if let Some(index) = model_index(input) {
        fm.insert("model-index".to_owned(), index);
    }
    fm
}

/// Perplexity rounded for display and metadata (4 decimals).
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// `model-index`: one result per perplexity measured on the released model
/// itself. Local text names are not Hub dataset ids, so the dataset is named
/// by its recipe name as both `type` and `name`.
fn model_index(input: &CardInput) -> Option<Json> {
    let results: Vec<Json> = input
        .evals
        .iter()
        .filter(|e| e.results.model.name == input.model_step)
        .filter_map(|e| e.results.perplexity.as_ref())
        .map(|p| {
            json!({
                "task": {"type": "text-generation"},
                "dataset": {"type": p.text.name, "name": p.text.name},
                "metrics": [{
                    "type": "perplexity",
                    "value": round4(p.result.perplexity),
                    "name": format!("Perplexity (context {}, {})", p.result.context, p.result.protocol.name()),
                }],
            })
        })
        .collect();
    if results.is_empty() {
        return None;
    }
    Some(json!([{"name": input.facts.name, "results": results}]))
}

/// The paper (or documentation) of a merge method, when known.
pub fn method_link(method: &str) -> Option<(&'static str, &'static str)> {
    Some(match method {
        "linear" => ("Model soups", "https://arxiv.org/abs/2203.05482"),
        "task_arithmetic" => ("Task arithmetic", "https://arxiv.org/abs/2212.04089"),
        "ties" => ("TIES-Merging", "https://arxiv.org/abs/2306.01708"),
        "dare_ties" | "dare_linear" => ("DARE", "https://arxiv.org/abs/2311.03099"),
        "breadcrumbs" | "breadcrumbs_ties" => {
            ("Model Breadcrumbs", "https://arxiv.org/abs/2312.06795")
        }
        "model_stock" => ("Model Stock", "https://arxiv.org/abs/2403.19522"),
        "della" | "della_linear" => ("DELLA-Merging", "https://arxiv.org/abs/2406.11617"),
        "sce" => ("SCE", "https://arxiv.org/abs/2408.07990"),
        "slerp" => ("SLERP (Shoemake)", "https://en.wikipedia.org/wiki/Slerp"),
        "karcher" | "nuslerp" | "multislerp" | "ram" | "nearswap" | "passthrough" => (
            "mergekit documentation",
            "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
        ),
        _ => return None,
    })
}

/// Emits JSON as block-style YAML that `yaml.safe_load` reads back to the same value.
pub fn to_yaml(value: &Json, indent: usize) -> String {
    let pad = " ".repeat(indent);
    match value {
        Json::Object(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| match v {
                Json::Object(m) if !m.is_empty() => {
                    format!("{pad}{}:\n{}", scalar(&json!(k)), to_yaml(v, indent + 2))
                }
                Json::Array(a) if !a.is_empty() => {
                    format!("{pad}{}:\n{}", scalar(&json!(k)), to_yaml(v, indent))
                }
                _ => format!("{pad}{}: {}\n", scalar(&json!(k)), scalar(v)),
            })
            .collect(),
        Json::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| match v {
                Json::Object(m) if !m.is_empty() => {
                    let inner = to_yaml(v, indent + 2);
                    format!("{pad}- {}", &inner[indent + 2..])
                }
                Json::Array(a) if !a.is_empty() => format!("{pad}-\n{}", to_yaml(v, indent + 2)),
                _ => format!("{pad}- {}\n", scalar(v)),
            })
            .collect(),
        other => format!("{pad}{}\n", scalar(other)),
    }
}

fn scalar(v: &Json) -> String {
    match v {
        Json::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./ ".contains(c))
                && !s.starts_with(' ')
                && !s.ends_with(' ')
                && s.parse::<f64>().is_err()
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~"
                );
            if plain {
                s.clone()
            } else {
                Json::String(s.clone()).to_string()
            }
        }
        Json::Object(_) => "{}".to_owned(),
        Json::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

/// A `card:` text field (overrides first).
fn card_text<'c>(card: &'c Map<String, Json>, key: &str) -> Option<&'c str> {
    card.get(key).and_then(Json::as_str)
}

/// "Merge details": method with its paper, base model, models with weight
/// and density, and the seed, per merge step.
fn merge_section(facts: &RecipeFacts) -> String {
    let mut out = String::new();
    for (name, params) in merge_steps(facts) {
        let config = &params["config"];
        let method = config["merge_method"].as_str().unwrap_or("?");
        out.push_str(&format!("## Merge details (`{name}`)\n\n"));
        match method_link(method) {
            Some((title, url)) => {
                out.push_str(&format!("- Method: `{method}` ([{title}]({url}))\n"))
            }
            None => out.push_str(&format!("- Method: `{method}`\n")),
        }
        if let Some(base) = config["base_model"].as_str() {
            out.push_str(&format!("- Base model: `{base}`\n"));
        }
        if let Some(seed) = params["seed"].as_u64() {
            out.push_str(&format!("- Seed: {seed}\n"));
        }
        if let Some(models) = config["models"].as_array() {
            out.push_str("\n| model | weight | density |\n|---|---|---|\n");
            for m in models {
                let (model, p) = match m {
                    Json::String(s) => (s.as_str(), &Json::Null),
                    other => (other["model"].as_str().unwrap_or("?"), &other["parameters"]),
                };
                let cell = |k: &str| match &p[k] {
                    Json::Null => "–".to_owned(),
                    v => v.to_string(),
                };
                out.push_str(&format!(
                    "| `{model}` | {} | {} |\n",
                    cell("weight"),
                    cell("density")
                ));
            }
        }
        out.push('\n');
    }
    out
}

/// A Markdown code fence longer than any run of backticks in `text`.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

/// "Recipe" and "Reproduce": the recipe as written, and how to build it
/// again from the copy in the release.
fn recipe_section(input: &CardInput) -> String {
    let facts = input.facts;
    let text = facts.text.trim_matches('\n');
    let fence = fence_for(text);
    let mut out = format!("## Recipe\n\n{fence}yaml\n{text}\n{fence}\n\n## Reproduce\n\n");
    if let Some(file) = &input.recipe_file {
        out.push_str(&format!(
            "The recipe is in this release as `{file}`:\n\n```sh\nyibuild {file}\n```\n\n"
        ));
    }
    let local: Vec<String> = facts
        .sources
        .iter()
        .filter(|(_, from)| !from.starts_with("hf://"))
        .map(|(_, from)| format!("`{from}`"))
        .collect();
    if !local.is_empty() {
        out.push_str(&format!(
            "Its local sources ({}) are paths relative to the recipe's folder.\n\n",
            local.join(", ")
        ));
    }
    out.push_str(&format!(
        "yibuild {} · recipe digest `{}`\n\n",
        env!("CARGO_PKG_VERSION"),
        facts.digest
    ));
    out
}

/// The step an evaluated model was quantized from, if it is a quantize step.
fn quantized_from<'f>(facts: &'f RecipeFacts, step: &str) -> Option<&'f str> {
    facts
        .steps
        .iter()
        .find(|(n, k, _)| n == step && k == "quantize")
        .and_then(|(_, _, p)| p["model"].as_str())
}

/// Perplexity of `eval` minus that of the unquantized model's eval on the
/// same text, protocol and context, when the model is a quantization.
fn perplexity_delta(input: &CardInput, eval: &EvalSummary) -> Option<f64> {
    let parent = quantized_from(input.facts, &eval.results.model.name)?;
    let mine = eval.results.perplexity.as_ref()?;
    input
        .evals
        .iter()
        .filter(|e| e.results.model.name == parent)
        .filter_map(|e| e.results.perplexity.as_ref())
        .find(|p| {
            p.text.name == mine.text.name
                && p.result.protocol == mine.result.protocol
                && p.result.context == mine.result.context
        })
        .map(|p| mine.result.perplexity - p.result.perplexity)
}

/// "Evaluation": one row per perplexity and passkey length, labelled with
/// the evaluated model's name.
fn eval_section(input: &CardInput) -> String {
    if input.evals.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "## Evaluation\n\n| model | metric | text | protocol | context | value | Δ vs unquantized |\n|---|---|---|---|---|---|---|\n",
    );
    for e in &input.evals {
        let r = &e.results;
        if let Some(p) = &r.perplexity {
            let delta = perplexity_delta(input, e).map_or("–".to_owned(), |d| format!("{d:+.4}"));
            out.push_str(&format!(
                "| `{}` | perplexity | `{}` | {} | {} | {:.4} ± {:.4} | {delta} |\n",
                r.model.name,
                p.text.name,
                p.result.protocol.name(),
                p.result.context,
                p.result.perplexity,
                p.result.perplexity_uncertainty
            ));
        }
        if let Some(pk) = &r.passkey {
            for l in &pk.lengths {
                out.push_str(&format!(
                    "| `{}` | passkey (1 of {}) | – | – | {} | {}/{} ({:.0}%) | – |\n",
                    r.model.name,
                    pk.candidates,
                    l.length,
                    l.correct,
                    l.trials,
                    100.0 * l.accuracy
                ));
            }
        }
    }
    let devices: std::collections::BTreeSet<&str> = input
        .evals
        .iter()
        .map(|e| e.results.device.as_str())
        .collect();
    out.push_str(&format!(
        "\nComputed by yibuild's eval step on {}; protocols as named (llama.cpp: non-overlapping windows scoring their second half).\n\n",
        devices.into_iter().collect::<Vec<_>>().join(", ")
    ));
    out
}

/// "Quantizations": file, type, size, bits per weight, perplexity delta.
fn quant_section(input: &CardInput) -> String {
    if input.quants.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "## Quantizations\n\n| file | type | size | bits per weight | perplexity Δ |\n|---|---|---|---|---|\n",
    );
    for q in &input.quants {
        let measured = || {
            input
                .parameters
                .filter(|&n| n > 0)
                .map_or("–".to_owned(), |n| {
                    format!("{:.2}", q.size as f64 * 8.0 / n as f64)
                })
        };
        // A folder's own config states its bits per weight (exl2's `bits` is
        // the average the converter targeted); a GGUF's is measured.
        let (kind, bpw) = match &q.format {
            QuantFormat::Gguf(t) => (t.clone(), measured()),
            QuantFormat::Folder {
                method,
                bits,
                head_bits,
            } => (
                match head_bits {
                    Some(h) => format!("{method} (head {h} bits)"),
                    None => method.clone(),
                },
                bits.map_or_else(measured, |b| format!("{b:.2}")),
            ),
            QuantFormat::Unknown => ("–".to_owned(), measured()),
        };
        let delta = input
            .evals
            .iter()
            .filter(|e| e.results.model.name == q.step)
            .find_map(|e| perplexity_delta(input, e))
            .map_or("–".to_owned(), |d| format!("{d:+.4}"));
        out.push_str(&format!(
            "| `{}` | {kind} | {:.2} MiB | {bpw} | {delta} |\n",
            q.file,
            q.size as f64 / (1 << 20) as f64
        ));
    }
    out.push('\n');
    out
}

/// "Prompt template": the recipe's `prompt_template` (builtin name or Jinja)
/// or the model's own, rendered on a sample conversation, and the stop strings.
fn prompt_section(input: &CardInput, card: &Map<String, Json>) -> String {
    use crate::tokenizer::templates::{
        render as render_chat, resolve_template, sample_conversation,
    };
    let template = match card_text(card, "prompt_template") {
        Some(t) => resolve_template(t).ok(),
        None => input.chat_template.clone(),
    };
    let mut stops: Vec<String> = match card.get("stop_strings") {
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(Json::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    for s in &input.stop_strings {
        if !stops.contains(s) {
            stops.push(s.clone());
        }
    }
    let sample =
        template.and_then(|t| render_chat(&t, &sample_conversation(), &Default::default()).ok());
    if sample.is_none() && stops.is_empty() {
        return String::new();
    }
    let mut out = String::from("## Prompt template\n\n");
    if let Some(s) = sample {
        out.push_str(&format!("```text\n{s}\n```\n\n"));
    }
    if !stops.is_empty() {
        let list: Vec<String> = stops.iter().map(|s| format!("`{s}`")).collect();
        out.push_str(&format!("Stop strings: {}\n\n", list.join(", ")));
    }
    out
}

/// The architecture and its specific settings (rotary scaling, sliding
/// window, soft-capping, tied embeddings) of the model folder `dir`, for
/// the card's "Model details"; empty when the config reader does not know
/// the architecture.
pub fn model_details(dir: &Path) -> Vec<(String, String)> {
    let Ok(config) = crate::hf::config::ConfigFile::read(dir).and_then(|c| c.decoder()) else {
        return Vec::new();
    };
    std::iter::once(("architecture".to_owned(), config.architecture.clone()))
        .chain(
            crate::hf::details::architecture_details(&config)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
        )
        .collect()
}

fn details_section(details: &[(String, String)]) -> String {
    if details.is_empty() {
        return String::new();
    }
    let rows: String = details
        .iter()
        .map(|(k, v)| format!("| {k} | {v} |\n"))
        .collect();
    format!("## Model details\n\n| | |\n|---|---|\n{rows}\n")
}

/// The whole README.md.
pub fn render(input: &CardInput) -> String {
    let facts = input.facts;
    let card = card_fields(input);
    let fm = front_matter(input);
    let mut out = format!(
        "---\n{}---\n\n# {}\n\n",
        to_yaml(&Json::Object(fm), 0),
        facts.name
    );
    match card_text(&card, "summary") {
        Some(s) => out.push_str(&format!("{s}\n\n")),
        None => out.push_str(&format!(
            "`{}` built by yibuild from {} sources in {} steps{}.\n\n",
            input.model_step,
            facts.sources.len(),
            facts.steps.len(),
            if input.quants.is_empty() {
                String::new()
            } else {
                format!(", with {} quantized files", input.quants.len())
            }
        )),
    }
    out.push_str(&merge_section(facts));
    out.push_str(&details_section(&input.model_details));
    if let Some(sweep) = &input.sweep {
        out.push_str(&format!("## Sweep\n\n{sweep}\n\n"));
    }
    if !facts.mermaid.is_empty() {
        out.push_str(&format!(
            "## Lineage\n\n```mermaid\n{}```\n\n",
            facts.mermaid
        ));
    }
    out.push_str(&eval_section(input));
    out.push_str(&quant_section(input));
    out.push_str(&prompt_section(input, &card));
    for (key, title) in [("notes", "Notes"), ("running", "Running advice")] {
        if let Some(text) = card_text(&card, key) {
            out.push_str(&format!("## {title}\n\n{text}\n\n"));
        }
    }
    if !facts.text.is_empty() {
        out.push_str(&recipe_section(input));
    }
    if !input.checksums.is_empty() {
        out.push_str("## Checksums (sha256)\n\n```text\n");
        for (file, sum) in &input.checksums {
            out.push_str(&format!("{sum}  {file}\n"));
        }
        out.push_str("```\n");
    }
    out
}

/// Parameter count of a safetensors model folder (the sum of its tensors'
/// element counts), read from the headers only.
pub fn parameter_count(dir: &Path) -> Result<u64> {
    let tensors = ModelTensors::open(dir)?;
    Ok(tensors
        .names()
        .iter()
        .filter_map(|n| tensors.info(n))
        .map(|i| i.numel() as u64)
        .sum())
}

/// What a model folder itself says for its card: its chat template and its
/// stop strings (generation config's, and the tokenizer step's file).
pub fn folder_prompt(dir: &Path) -> (Option<String>, Vec<String>) {
    let read = |f: &str| -> Json {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Json::Null)
    };
    let template = read("tokenizer_config.json")["chat_template"]
        .as_str()
        .map(str::to_owned);
    // Older folders (and other tools) put them in generation_config.json;
    // yibuild's tokenizer step writes its own file.
    let mut stops: Vec<String> = Vec::new();
    for file in [
        "generation_config.json",
        crate::tokenizer::STOP_STRINGS_FILE,
    ] {
        let found = match &read(file)["stop_strings"] {
            Json::Array(a) => a
                .iter()
                .filter_map(Json::as_str)
                .map(str::to_owned)
                .collect(),
            Json::String(s) => vec![s.clone()],
            _ => Vec::new(),
        };
        for s in found {
            if !stops.contains(&s) {
                stops.push(s);
            }
        }
    }
    (template, stops)
}

/// A card for an existing model folder (`yibuild card MODEL_DIR`), for
/// models built before yibuild: the merge details come from its
/// `mergekit_config.yml` when present, the base models are the Hub ids that
/// config names, and the prompt from its tokenizer and generation configs.
pub fn card_for_folder(dir: &Path) -> Result<String> {
    if !dir.join("config.json").is_file() {
        bail!("{} has no config.json: not a model folder", dir.display());
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_owned());
    let config_path = dir.join("mergekit_config.yml");
    let (mut sources, mut steps) = (Vec::new(), Vec::new());
    if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path)?;
        let docs = crate::syntax::yaml::parse_documents(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", config_path.display(), e.message))?;
        let config = docs
            .first()
            .map(|d| d.to_json())
            .with_context(|| format!("{} is empty", config_path.display()))?;
        let mut models: Vec<&str> = config["base_model"].as_str().into_iter().collect();
        if let Some(list) = config["models"].as_array() {
            models.extend(
                list.iter()
                    .filter_map(|m| m.as_str().or(m["model"].as_str())),
            );
        }
        for m in models {
            let hub = !m.starts_with('.') && !m.starts_with('/') && m.matches('/').count() == 1;
            let from = if hub {
                format!("hf://{m}")
            } else {
                m.to_owned()
            };
            if !sources.iter().any(|(n, _)| n == m) {
                sources.push((m.to_owned(), from));
            }
        }
        steps.push((
            "merge".to_owned(),
            "merge".to_owned(),
            json!({ "config": config }),
        ));
    }
    let facts = RecipeFacts {
        name,
        digest: String::new(),
        card: Map::new(),
        sources,
        steps,
        mermaid: String::new(),
        text: String::new(),
        file_name: String::new(),
    };
    let (chat_template, stop_strings) = folder_prompt(dir);
    let overrides = Map::new();
    Ok(render(&CardInput {
        facts: &facts,
        model_step: "model",
        overrides: &overrides,
        quants: Vec::new(),
        evals: Vec::new(),
        sweep: None,
        parameters: parameter_count(dir).ok(),
        chat_template,
        stop_strings,
        checksums: Vec::new(),
        recipe_file: None,
        model_details: model_details(dir),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_model_relation_says_what_the_release_is() {
        let relation = |kinds: &[&str], quants: usize| {
            let facts = RecipeFacts {
                name: "m".into(),
                digest: "d".into(),
                card: Map::new(),
                sources: vec![("base".into(), "hf://org/base".into())],
                steps: kinds
                    .iter()
                    .map(|k| {
                        let params = json!({"config": {"merge_method": "linear"}});
                        (format!("s-{k}"), k.to_string(), params)
                    })
                    .collect(),
                mermaid: String::new(),
                text: String::new(),
                file_name: "r.yaml".into(),
            };
            let input = CardInput {
                facts: &facts,
                model_step: "s",
                overrides: &Map::new(),
                quants: (0..quants)
                    .map(|i| QuantFile {
                        file: format!("m-Q{i}.gguf"),
                        size: 1,
                        step: "q".into(),
                        format: QuantFormat::Gguf(format!("Q{i}")),
                    })
                    .collect(),
                evals: Vec::new(),
                sweep: None,
                parameters: None,
                chat_template: None,
                stop_strings: Vec::new(),
                checksums: Vec::new(),
                recipe_file: None,
                model_details: Vec::new(),
            };
            let fm = front_matter(&input);
            assert_eq!(fm["base_model"], json!(["org/base"]));
            fm.get("base_model_relation").cloned()
        };
        assert_eq!(relation(&["merge"], 1), Some(json!("merge")));
        assert_eq!(relation(&["patch_config"], 2), Some(json!("quantized")));
        assert_eq!(relation(&["patch_config"], 0), None);
    }
}
