//! A merge configuration that mergekit itself can run: the recipe's names for
//! models (`tess`, `merged`) replaced by what mergekit can load.
//!
//! A recipe's merge step names its models by recipe alias, and the merge
//! step's own `mergekit_config.yml` keeps those aliases, because its output
//! must depend only on its key (a renamed local path must not rerun a 34B
//! merge). A release ships the portable form instead:
//!
//! - a Hub source `hf://org/name[@rev]` becomes `org/name[@rev]`, the
//!   reference syntax mergekit resolves on the Hub;
//! - a local source becomes its path as the recipe writes it, relative to
//!   the recipe's directory;
//! - another step's output becomes the folder yibuild materializes it in,
//!   `build/<recipe>/<step>`, relative to the same directory.
//!
//! So `mergekit-yaml mergekit_config.yml OUT` run from the recipe's
//! directory, after `yibuild RECIPE`, merges the same models.

use serde_json::Value as Json;

use crate::card::RecipeFacts;

/// Where mergekit finds the model the recipe calls `name`, run from the
/// recipe's directory; `None` for a name that is no source or step.
pub fn mergekit_reference(facts: &RecipeFacts, name: &str) -> Option<String> {
    if let Some((_, from)) = facts.sources.iter().find(|(n, _)| n == name) {
        return Some(from.strip_prefix("hf://").unwrap_or(from).to_owned());
    }
    facts
        .steps
        .iter()
        .any(|(n, _, _)| n == name)
        .then(|| format!("build/{}/{name}", facts.name))
}

/// Keys whose string value names a model in a mergekit configuration.
const MODEL_KEYS: &[&str] = &["model", "base_model"];

/// Keys whose string value names a model unless it is one of mergekit's
/// keywords for a tokenizer (`base`, `union`).
const TOKENIZER_KEYS: &[&str] = &["tokenizer_source", "source"];

/// `config` (a mergekit configuration as JSON) with every model reference
/// that is a recipe name replaced by [`mergekit_reference`]. Everything else,
/// parameters and key order included, is kept.
pub fn portable_config(config: &Json, facts: &RecipeFacts) -> Json {
    let resolve = |v: &Json| -> Option<Json> {
        v.as_str()
            .and_then(|name| mergekit_reference(facts, name))
            .map(Json::String)
    };
    match config {
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| {
                    let keyword = matches!(v.as_str(), Some("base" | "union"));
                    let replaced = if MODEL_KEYS.contains(&k.as_str())
                        || (TOKENIZER_KEYS.contains(&k.as_str()) && !keyword)
                    {
                        resolve(v)
                    } else if k == "models" {
                        // `models: [a, b]`, the short form of `- model: a`.
                        v.as_array().map(|items| {
                            Json::Array(
                                items
                                    .iter()
                                    .map(|i| {
                                        resolve(i).unwrap_or_else(|| portable_config(i, facts))
                                    })
                                    .collect(),
                            )
                        })
                    } else {
                        None
                    };
                    (
                        k.clone(),
                        replaced.unwrap_or_else(|| portable_config(v, facts)),
                    )
                })
                .collect(),
        ),
        Json::Array(items) => {
            Json::Array(items.iter().map(|i| portable_config(i, facts)).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> RecipeFacts {
        RecipeFacts {
            name: "Capy".into(),
            digest: String::new(),
            card: Default::default(),
            sources: vec![
                ("yi".into(), "hf://chargoddard/Yi-34B-200K-Llama".into()),
                ("tess".into(), "hf://migtissera/Tess-34B-v1.4@abc123".into()),
                ("local".into(), "./models/ft".into()),
                ("base".into(), "./models/base".into()),
            ],
            steps: vec![("patched".into(), "patch_config".into(), json!({}))],
            mermaid: String::new(),
            text: String::new(),
            file_name: "r.yaml".into(),
        }
    }

    #[test]
    fn aliases_become_hub_ids_paths_and_build_folders() {
        let config = json!({
            "merge_method": "dare_ties",
            "base_model": "yi",
            "models": [
                {"model": "yi"},
                {"model": "tess", "parameters": {"weight": 0.5, "density": 0.6}},
                {"model": "patched", "parameters": {"weight": 0.5}},
            ],
            "tokenizer_source": "base",
            "dtype": "bfloat16",
        });
        let out = portable_config(&config, &facts());
        assert_eq!(
            out,
            json!({
                "merge_method": "dare_ties",
                "base_model": "chargoddard/Yi-34B-200K-Llama",
                "models": [
                    {"model": "chargoddard/Yi-34B-200K-Llama"},
                    {"model": "migtissera/Tess-34B-v1.4@abc123", "parameters": {"weight": 0.5, "density": 0.6}},
                    {"model": "build/Capy/patched", "parameters": {"weight": 0.5}},
                ],
                "tokenizer_source": "base",
                "dtype": "bfloat16",
            })
        );
    }

    #[test]
    fn slices_short_model_lists_and_tokenizer_models() {
        let config = json!({
            "merge_method": "slerp",
            "slices": [{"sources": [
                {"model": "local", "layer_range": [0, 4]},
                {"model": "base", "layer_range": [0, 4]},
            ]}],
            "models": ["local", "unknown"],
            "tokenizer": {"source": "union", "tokens": {"<x>": {"source": {"kind": "model_token", "model": "local"}}}},
            "tokenizer_source": "local",
        });
        let out = portable_config(&config, &facts());
        assert_eq!(out["slices"][0]["sources"][0]["model"], "./models/ft");
        assert_eq!(out["slices"][0]["sources"][1]["model"], "./models/base");
        assert_eq!(out["models"], json!(["./models/ft", "unknown"]));
        assert_eq!(out["tokenizer"]["source"], "union", "a keyword stays");
        assert_eq!(
            out["tokenizer"]["tokens"]["<x>"]["source"]["model"],
            "./models/ft"
        );
        assert_eq!(out["tokenizer_source"], "./models/ft");
    }
}
