//! Freshness without building: for `plan`, `status` and `explain`, what each
//! step's key would be now, whether the cache has it, and if not, which input
//! or parameter changed since the step was last built.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::cache::remote::RemoteCache;
use crate::cache::{Cache, KeyInputs, Manifest};
use crate::exec::key_inputs;
use crate::graph::BuildGraph;
use crate::hub::{pin_offline, HubConfig, HubOptions, HubSourceState};
use crate::recipe::Recipe;
use crate::steps::Artifact;

/// The state of one step as things stand.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// The cache holds the output for the current key.
    Fresh {
        /// The current key.
        key: String,
    },
    /// The remote cache holds the output for the current key.
    Remote {
        /// The current key.
        key: String,
        /// Bytes to download (objects the local cache already has excluded).
        bytes: u64,
        /// The remote's output manifest, to download without asking again.
        manifest: Manifest,
    },
    /// Must be built; `reasons` says why (never built, or what changed).
    Stale {
        /// The current key, when all inputs are known.
        key: Option<String>,
        /// One clause per reason.
        reasons: Vec<String>,
        /// Whether it was ever built by this recipe.
        built_before: bool,
    },
}

impl State {
    /// Whether the output exists, locally or remotely: nothing will run.
    pub fn is_available(&self) -> bool {
        !matches!(self, State::Stale { .. })
    }
}

/// The state of every step in `plan`, in plan order. Sources that cannot be
/// read are described in the reasons of the steps that need them. With a
/// `remote` cache that may be read, local misses are looked up there (one
/// small request each; a remote that fails is asked nothing more).
pub fn analyze(
    recipe: &Recipe,
    plan: &[String],
    cache: &Cache,
    remote: Option<&RemoteCache>,
) -> Vec<(String, State)> {
    let mut remote = remote.filter(|r| r.settings().mode.reads());
    let mut artifacts: BTreeMap<String, Artifact> = BTreeMap::new();
    let mut missing: BTreeMap<String, String> = BTreeMap::new();
    for name in plan {
        if let Some(src) = recipe.source(name) {
            if src.hub_repo().is_some() {
                match hub_artifact(recipe, name) {
                    Ok(a) => {
                        artifacts.insert(name.clone(), a);
                    }
                    Err(why) => {
                        missing.insert(name.clone(), format!("source `{name}` {why}"));
                    }
                }
                continue;
            }
            match src.locate() {
                Ok(path) => match cache.memo().manifest(&path) {
                    Ok(m) => {
                        artifacts.insert(
                            name.clone(),
                            Artifact {
                                path,
                                digest: m.digest(),
                            },
                        );
                    }
                    Err(e) => {
                        missing.insert(
                            name.clone(),
                            format!("source `{name}` cannot be read: {e:#}"),
                        );
                    }
                },
                Err(e) => {
                    missing.insert(
                        name.clone(),
                        format!("source `{name}` is not available: {e}"),
                    );
                }
            }
        }
    }
    cache.memo().save().ok();
    let graph = BuildGraph::new(recipe);
    let mut out = Vec::new();
    for name in plan {
        let Some(step) = recipe.step(name) else {
            continue;
        };
        let record = cache.record(&recipe.name, name);
        let state = match key_inputs(step, &artifacts) {
            Some(inputs) => {
                let key = inputs.key();
                let remote_hit = || match remote?.lookup(&key) {
                    Ok(hit) => hit,
                    Err(_) => {
                        remote = None;
                        None
                    }
                };
                let local = cache.lookup(&key);
                let found = local.clone().or_else(remote_hit);
                match found {
                    Some(manifest) => {
                        artifacts.insert(
                            name.clone(),
                            Artifact {
                                path: Default::default(),
                                digest: manifest.digest(),
                            },
                        );
                        if local.is_some() {
                            State::Fresh { key }
                        } else {
                            let bytes = manifest
                                .files
                                .iter()
                                .filter(|e| !cache.has_object(e))
                                .map(|e| e.size)
                                .sum();
                            State::Remote {
                                key,
                                bytes,
                                manifest,
                            }
                        }
                    }
                    None => State::Stale {
                        reasons: match &record {
                            Some(r) if r.key == key => {
                                vec!["its cached output is gone (gc or a new cache dir)".to_owned()]
                            }
                            Some(r) => changes(&r.inputs, &inputs),
                            None => vec!["never built".to_owned()],
                        },
                        key: Some(key),
                        built_before: record.is_some(),
                    },
                }
            }
            None => {
                let reasons = graph
                    .inputs(name)
                    .into_iter()
                    .filter(|i| !artifacts.contains_key(i))
                    .map(|i| match missing.get(&i) {
                        Some(why) => why.clone(),
                        None => format!("input `{i}` will be rebuilt"),
                    })
                    .collect();
                State::Stale {
                    key: None,
                    reasons,
                    built_before: record.is_some(),
                }
            }
        };
        out.push((name.clone(), state));
    }
    out
}

/// A Hub source's artifact without the network: its digest comes from the
/// lock entry (or the Hub cache), so steps' keys are known before any
/// download.
pub(crate) fn hub_artifact(recipe: &Recipe, name: &str) -> Result<Artifact, String> {
    let config = HubConfig::from_env(HubOptions::default());
    match pin_offline(recipe, name, &config) {
        Ok(HubSourceState::Pinned(p)) => Ok(Artifact {
            path: p.snapshot(),
            digest: p.entry.digest(),
        }),
        Ok(HubSourceState::Unresolved) => Err(
            "is not pinned yet (not in yibuild.lock nor the Hub cache); `yibuild fetch` pins it"
                .to_owned(),
        ),
        Err(e) => Err(format!("cannot be pinned: {e:#}")),
    }
}

/// What changed between the key components of the last build and now, one
/// clause each, naming the exact parameter or input with old and new values.
pub fn changes(old: &KeyInputs, new: &KeyInputs) -> Vec<String> {
    let mut out = Vec::new();
    if old.format != new.format {
        out.push(format!(
            "the cache format changed ({} → {})",
            old.format, new.format
        ));
    }
    if old.kind != new.kind {
        out.push(format!(
            "the step kind changed (`{}` → `{}`)",
            old.kind, new.kind
        ));
    } else if old.version != new.version {
        out.push(format!(
            "the `{}` implementation changed (version {} → {})",
            new.kind, old.version, new.version
        ));
    }
    diff_json("", &old.params, &new.params, &mut out);
    for (name, digest) in &new.inputs {
        match old.inputs.get(name) {
            None => out.push(format!("input `{name}` was added")),
            Some(d) if d != digest => out.push(format!(
                "input `{name}` changed (content {} → {})",
                &d[..12],
                &digest[..12]
            )),
            _ => {}
        }
    }
    for name in old.inputs.keys().filter(|n| !new.inputs.contains_key(*n)) {
        out.push(format!("input `{name}` was removed"));
    }
    out
}

fn diff_json(path: &str, old: &Json, new: &Json, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Json::Object(a), Json::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_json(&join(k), x, y, out),
                    (Some(x), None) => {
                        out.push(format!("parameter `{}` was removed (was {x})", join(k)))
                    }
                    (None, Some(y)) => out.push(format!("parameter `{}` was added ({y})", join(k))),
                    (None, None) => {}
                }
            }
        }
        (Json::Array(a), Json::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_json(&join(&i.to_string()), x, y, out);
            }
        }
        _ if old != new => out.push(format!("parameter `{path}` changed: {old} → {new}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_changed_parameter() {
        let mk = |v: i64| KeyInputs {
            format: 1,
            kind: "patch_config".into(),
            version: 1,
            params: json!({"files": {"config.json": {"set": {"max_position_embeddings": v}}}}),
            inputs: BTreeMap::from([("merged".to_owned(), "ab".repeat(32))]),
        };
        let c = changes(&mk(32768), &mk(16384));
        assert_eq!(
            c,
            vec![
                "parameter `files.config.json.set.max_position_embeddings` changed: 32768 → 16384"
            ]
        );
    }
}
