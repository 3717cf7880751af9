//! The model card (README.md) of a release: Hugging Face front matter plus a
//! body written from what the build knows.

use serde_json::{json, Map, Value as Json};

use crate::recipe::RecipeFacts;

/// One evaluation's results, as read from an eval step's `results.json`.
#[derive(Debug, Clone)]
pub struct EvalSummary {
    /// The eval step's name.
    pub step: String,
    /// The parsed results.
    pub results: Json,
}

/// One quantized file of the release.
#[derive(Debug, Clone)]
pub struct QuantFile {
    /// File name in the release.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
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

/// The YAML front matter as JSON (emitted as YAML by [`render`]).
pub fn front_matter(input: &CardInput) -> Map<String, Json> {
    let facts = input.facts;
    let mut card = facts.card.clone();
    for (k, v) in input.overrides {
        card.insert(k.clone(), v.clone());
    }
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
    let merge_methods: Vec<String> = facts
        .steps
        .iter()
        .filter(|(_, kind, _)| kind == "merge")
        .filter_map(|(_, _, p)| {
            p.pointer("/config/merge_method")
                .and_then(Json::as_str)
                .map(str::to_owned)
        })
        .collect();
    if bases.as_array().is_some_and(|a| !a.is_empty()) || bases.is_string() {
        fm.insert("base_model".to_owned(), bases);
        let relation = if merge_methods.is_empty() {
            "quantized"
        } else {
            "merge"
        };
        fm.insert("base_model_relation".to_owned(), json!(relation));
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
    if !input.quants.is_empty() {
        tags.push(json!("gguf"));
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
    fm
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

/// The whole README.md.
pub fn render(input: &CardInput) -> String {
    let facts = input.facts;
    let fm = front_matter(input);
    let mut out = format!(
        "---\n{}---\n\n# {}\n\n",
        to_yaml(&Json::Object(fm), 0),
        facts.name
    );
    let summary = input
        .overrides
        .get("summary")
        .or_else(|| facts.card.get("summary"))
        .and_then(Json::as_str);
    match summary {
        Some(s) => out.push_str(&format!("{s}\n\n")),
        None => out.push_str(&format!(
            "Built with [yibuild](https://github.com/) from a recipe of {} sources and {} steps.\n\n",
            facts.sources.len(),
            facts.steps.len()
        )),
    }
    out.push_str("## Sources\n\n| name | from |\n|---|---|\n");
    for (name, from) in &facts.sources {
        out.push_str(&format!("| {name} | {from} |\n"));
    }
    out.push_str("\n## Lineage\n\n```mermaid\n");
    out.push_str(&facts.mermaid);
    out.push_str("```\n\n");
    if let Some(sweep) = &input.sweep {
        out.push_str(&format!("## Sweep\n\n{sweep}\n\n"));
    }
    if !input.quants.is_empty() {
        out.push_str("## Quantizations\n\n| file | size |\n|---|---|\n");
        for q in &input.quants {
            out.push_str(&format!(
                "| {} | {:.1} MiB |\n",
                q.file,
                q.size as f64 / (1 << 20) as f64
            ));
        }
        out.push('\n');
    }
    if !input.evals.is_empty() {
        out.push_str("## Evaluation\n\n");
        for e in &input.evals {
            out.push_str(&format!(
                "### {}\n\n```json\n{}\n```\n\n",
                e.step,
                serde_json::to_string_pretty(&e.results).unwrap_or_default()
            ));
        }
    }
    for key in ["notes"] {
        if let Some(text) = input
            .overrides
            .get(key)
            .or_else(|| facts.card.get(key))
            .and_then(Json::as_str)
        {
            out.push_str(&format!("## Notes\n\n{text}\n\n"));
        }
    }
    out.push_str(&format!(
        "## Reproduce\n\n```sh\nyibuild {}.yaml\n```\n\nyibuild {} · recipe digest `{}`\n",
        facts.name,
        env!("CARGO_PKG_VERSION"),
        facts.digest
    ));
    out
}
