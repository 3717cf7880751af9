//! Freshness without building: for `plan`, `status` and `explain`, what each
//! step's key would be now, whether the cache has it, and if not, which input
//! or parameter changed since the step was last built.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::build::hub_sources::{pin_offline, HubSourceState};
use crate::build::keys::{files_read, key_inputs};
use crate::build::plan::Plan;
use crate::cache::remote::RemoteCache;
use crate::cache::BuildRecord;
use crate::cache::{Cache, KeyInputs, Manifest};
use crate::hub::{HubConfig, HubOptions};
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
        /// Every reason, in a stable order.
        reasons: Vec<StaleReason>,
        /// Whether it was ever built by this recipe.
        built_before: bool,
    },
}

impl State {
    /// One word for `status`: fresh, remote, stale (built before, now out of
    /// date) or missing (never built by this recipe).
    pub fn word(&self) -> &'static str {
        match self {
            State::Fresh { .. } => "fresh",
            State::Remote { .. } => "remote",
            State::Stale {
                built_before: true, ..
            } => "stale",
            State::Stale { .. } => "missing",
        }
    }

    /// Whether the output exists, locally or remotely: nothing will run.
    pub fn is_available(&self) -> bool {
        !matches!(self, State::Stale { .. })
    }
}

/// The state of every step in `plan`, in plan order. Sources that cannot be
/// read are described in the reasons of the steps that need them. With a
/// `remote` cache that may be read, local misses are looked up there (one
/// small request each; a remote that fails is asked nothing more).
pub fn analyze(plan: &Plan, cache: &Cache, remote: Option<&RemoteCache>) -> Vec<(String, State)> {
    let recipe = plan.recipe;
    let mut remote = remote.filter(|r| r.settings().mode.reads());
    let mut artifacts: BTreeMap<String, Artifact> = BTreeMap::new();
    let mut missing: BTreeMap<String, String> = BTreeMap::new();
    for name in &plan.order {
        if let Some(src) = recipe.source(name) {
            if src.hub_repo().is_some() {
                match hub_artifact(recipe, name) {
                    Ok(a) => {
                        artifacts.insert(name.clone(), a);
                    }
                    Err(why) => {
                        missing.insert(name.clone(), why);
                    }
                }
                continue;
            }
            match src.locate() {
                Ok(path) => match cache.memo().manifest(&path) {
                    Ok(m) => {
                        artifacts.insert(name.clone(), Artifact::from_manifest(path, &m));
                    }
                    Err(e) => {
                        missing.insert(name.clone(), format!("cannot be read: {e:#}"));
                    }
                },
                Err(e) => {
                    missing.insert(name.clone(), format!("is not available: {e}"));
                }
            }
        }
    }
    cache.memo().save().ok();
    let mut out = Vec::new();
    for name in &plan.order {
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
                            Artifact::from_manifest(Default::default(), &manifest),
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
                        reasons: stale_reasons(
                            record.as_ref(),
                            &key,
                            &inputs,
                            &files_read(step, &artifacts),
                        ),
                        key: Some(key),
                        built_before: record.is_some(),
                    },
                }
            }
            None => {
                let reasons = plan
                    .inputs(name)
                    .into_iter()
                    .filter(|i| !artifacts.contains_key(i))
                    .map(|i| match missing.get(&i).cloned() {
                        Some(why) => StaleReason::InputUnavailable { input: i, why },
                        None => StaleReason::InputPending { input: i },
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
        Ok(HubSourceState::Pinned(p)) => Ok(Artifact::from_lock(p.snapshot(), &p.entry)),
        Ok(HubSourceState::Unresolved) => Err(
            "is not pinned yet (not in yibuild.lock nor the Hub cache); `yibuild fetch` pins it"
                .to_owned(),
        ),
        Err(e) => Err(format!("cannot be pinned: {e:#}")),
    }
}

/// Why a step must run: one variant per kind of cause, each carrying what
/// changed. Shown by `-v`, `plan`, `status` and `explain` through its
/// `Display`, and serialized with a stable `reason` tag in `--json` output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StaleReason {
    /// This recipe never built the step.
    NeverBuilt,
    /// The step was built with the current key but its output is no longer in
    /// the cache (gc, another cache directory, or a damaged entry removed).
    OutputGone,
    /// The cached output (or its materialized copy) was found damaged; the
    /// damaged objects were removed.
    OutputDamaged {
        /// What was wrong.
        why: String,
    },
    /// The cache format changed.
    CacheFormatChanged {
        /// The format of the last build.
        old: u32,
        /// The current format.
        new: u32,
    },
    /// The step's kind changed.
    KindChanged {
        /// The kind of the last build.
        old: String,
        /// The current kind.
        new: String,
    },
    /// The kind's implementation version changed (a new yibuild).
    ImplementationChanged {
        /// The step kind.
        kind: String,
        /// The version of the last build.
        old: u32,
        /// The current version.
        new: u32,
    },
    /// A parameter was changed, added (`old` absent) or removed (`new` absent).
    ParameterChanged {
        /// The parameter's dotted path in the step's normalized parameters.
        parameter: String,
        /// Its value in the last build.
        #[serde(skip_serializing_if = "Option::is_none")]
        old: Option<Json>,
        /// Its value now.
        #[serde(skip_serializing_if = "Option::is_none")]
        new: Option<Json>,
    },
    /// The part of an input the step reads has other content.
    InputChanged {
        /// The input's name.
        input: String,
        /// Its digest in the last build.
        old: String,
        /// Its digest now.
        new: String,
        /// The files (relative paths) that differ, when the last build
        /// recorded them.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        files: Vec<String>,
    },
    /// The step reads an input it did not read before.
    InputAdded {
        /// The input's name.
        input: String,
    },
    /// The step no longer reads an input.
    InputRemoved {
        /// The input's name.
        input: String,
    },
    /// An input cannot be read now (a missing source, an unpinned Hub repo).
    InputUnavailable {
        /// The input's name.
        input: String,
        /// What is wrong with it.
        why: String,
    },
    /// An input is itself going to be rebuilt, so this step's key is not
    /// known yet.
    InputPending {
        /// The input's name.
        input: String,
    },
}

impl std::fmt::Display for StaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StaleReason::NeverBuilt => write!(f, "never built"),
            StaleReason::OutputGone => {
                write!(f, "its cached output is gone (gc or a new cache dir)")
            }
            StaleReason::OutputDamaged { why } => write!(f, "its cached output is damaged: {why}"),
            StaleReason::CacheFormatChanged { old, new } => {
                write!(f, "the cache format changed ({old} → {new})")
            }
            StaleReason::KindChanged { old, new } => {
                write!(f, "the step kind changed (`{old}` → `{new}`)")
            }
            StaleReason::ImplementationChanged { kind, old, new } => write!(
                f,
                "the `{kind}` implementation changed (version {old} → {new})"
            ),
            StaleReason::ParameterChanged {
                parameter,
                old,
                new,
            } => match (old, new) {
                (Some(old), Some(new)) => write!(
                    f,
                    "parameter `{parameter}` changed: {} → {}",
                    brief(old),
                    brief(new)
                ),
                (None, Some(new)) => {
                    write!(f, "parameter `{parameter}` was added ({})", brief(new))
                }
                (Some(old), None) => {
                    write!(
                        f,
                        "parameter `{parameter}` was removed (was {})",
                        brief(old)
                    )
                }
                (None, None) => write!(f, "parameter `{parameter}` changed"),
            },
            StaleReason::InputChanged {
                input,
                old,
                new,
                files,
            } => {
                write!(f, "input `{input}` changed")?;
                match files.as_slice() {
                    [] => {}
                    [one] => write!(f, " (file `{one}`)")?,
                    [first, rest @ ..] => write!(f, " (`{first}` and {} more files)", rest.len())?,
                }
                write!(f, " (content {} → {})", short(old), short(new))
            }
            StaleReason::InputAdded { input } => write!(f, "input `{input}` was added"),
            StaleReason::InputRemoved { input } => write!(f, "input `{input}` was removed"),
            StaleReason::InputUnavailable { input, why } => write!(f, "source `{input}` {why}"),
            StaleReason::InputPending { input } => write!(f, "input `{input}` will be rebuilt"),
        }
    }
}

/// The reasons as one line, `; `-separated, for human output.
pub fn join_reasons(reasons: &[StaleReason]) -> String {
    reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A value as JSON, cut to its first 60 characters when longer (a whole chat
/// template is no use in a one-line reason; `--json` carries it whole).
fn brief(value: &Json) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Why a step whose current key is `key` must run, given what it was last
/// built from (`record`): the one place stale reasons are decided, for builds
/// and for `plan`, `status` and `explain`. `files` are the files of each input
/// the step reads now, to name the ones that changed.
pub fn stale_reasons(
    record: Option<&BuildRecord>,
    key: &str,
    inputs: &KeyInputs,
    files: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<StaleReason> {
    match record {
        None => vec![StaleReason::NeverBuilt],
        Some(r) if r.key == key => vec![StaleReason::OutputGone],
        Some(r) => changes(&r.inputs, inputs, &r.files, files),
    }
}

/// What changed between the key components of the last build and now, one
/// reason each, naming the exact parameter or input with old and new values.
fn changes(
    old: &KeyInputs,
    new: &KeyInputs,
    old_files: &BTreeMap<String, BTreeMap<String, String>>,
    new_files: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<StaleReason> {
    let mut out = Vec::new();
    if old.format != new.format {
        out.push(StaleReason::CacheFormatChanged {
            old: old.format,
            new: new.format,
        });
    }
    if old.kind != new.kind {
        out.push(StaleReason::KindChanged {
            old: old.kind.clone(),
            new: new.kind.clone(),
        });
    } else if old.version != new.version {
        out.push(StaleReason::ImplementationChanged {
            kind: new.kind.clone(),
            old: old.version,
            new: new.version,
        });
    }
    diff_json("", &old.params, &new.params, &mut out);
    for (name, digest) in &new.inputs {
        match old.inputs.get(name) {
            None => out.push(StaleReason::InputAdded {
                input: name.clone(),
            }),
            Some(d) if d != digest => out.push(StaleReason::InputChanged {
                input: name.clone(),
                old: d.clone(),
                new: digest.clone(),
                files: changed_files(old_files.get(name), new_files.get(name)),
            }),
            _ => {}
        }
    }
    for name in old.inputs.keys().filter(|n| !new.inputs.contains_key(*n)) {
        out.push(StaleReason::InputRemoved {
            input: name.clone(),
        });
    }
    out
}

/// The paths whose content differs between two file lists of an input; empty
/// when the old list was not recorded.
fn changed_files(
    old: Option<&BTreeMap<String, String>>,
    new: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    let (Some(old), Some(new)) = (old, new) else {
        return Vec::new();
    };
    let mut paths: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|p| old.get(*p) != new.get(*p))
        .map(|p| {
            if p.is_empty() {
                "(the file)".to_owned()
            } else {
                p.clone()
            }
        })
        .collect();
    paths.dedup();
    paths
}

fn diff_json(path: &str, old: &Json, new: &Json, out: &mut Vec<StaleReason>) {
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
                    (x, y) => out.push(StaleReason::ParameterChanged {
                        parameter: join(k),
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
            }
        }
        (Json::Array(a), Json::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_json(&join(&i.to_string()), x, y, out);
            }
        }
        _ if old != new => out.push(StaleReason::ParameterChanged {
            parameter: path.to_owned(),
            old: Some(old.clone()),
            new: Some(new.clone()),
        }),
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
        let none = BTreeMap::new();
        let c: Vec<String> = changes(&mk(32768), &mk(16384), &none, &none)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            c,
            vec![
                "parameter `files.config.json.set.max_position_embeddings` changed: 32768 → 16384"
            ]
        );
    }

    fn key_inputs(version: u32, params: Json, inputs: &[(&str, &str)]) -> KeyInputs {
        KeyInputs {
            format: 2,
            kind: "eval".into(),
            version,
            params,
            inputs: inputs
                .iter()
                .map(|(n, d)| (n.to_string(), d.repeat(64)))
                .collect(),
        }
    }

    fn record(inputs: KeyInputs, files: &[(&str, &[(&str, &str)])]) -> BuildRecord {
        BuildRecord {
            key: inputs.key(),
            inputs,
            files: files
                .iter()
                .map(|(n, fs)| {
                    let fs = fs.iter().map(|(p, id)| (p.to_string(), id.to_string()));
                    (n.to_string(), fs.collect())
                })
                .collect(),
            output: "0".repeat(64),
            materialized: None,
        }
    }

    /// Every variant: how it is decided, shown and tagged in `--json`.
    #[test]
    fn each_reason_is_decided_shown_and_tagged() {
        let now = key_inputs(
            3,
            json!({"context": 128, "text": "wiki"}),
            &[("m", "b"), ("t", "c")],
        );
        let files = BTreeMap::from([(
            "m".to_owned(),
            BTreeMap::from([
                ("config.json".to_owned(), "1:x".to_owned()),
                ("model.safetensors".to_owned(), "9:new".to_owned()),
            ]),
        )]);
        let check = |reasons: Vec<StaleReason>, shown: &[&str], tags: &[&str]| {
            let text: Vec<String> = reasons.iter().map(ToString::to_string).collect();
            assert_eq!(text, shown);
            let json: Vec<Json> = reasons
                .iter()
                .map(|r| serde_json::to_value(r).unwrap())
                .collect();
            let got: Vec<&str> = json.iter().map(|j| j["reason"].as_str().unwrap()).collect();
            assert_eq!(got, tags);
        };
        check(
            stale_reasons(None, &now.key(), &now, &files),
            &["never built"],
            &["never_built"],
        );
        let same = record(now.clone(), &[]);
        check(
            stale_reasons(Some(&same), &now.key(), &now, &files),
            &["its cached output is gone (gc or a new cache dir)"],
            &["output_gone"],
        );
        let mut old = key_inputs(
            2,
            json!({"context": 64, "seed": 1}),
            &[("m", "a"), ("x", "d")],
        );
        old.format = 1;
        old.kind = "quantize".into();
        let before = record(
            old,
            &[(
                "m",
                &[("config.json", "1:x"), ("model.safetensors", "9:old")],
            )],
        );
        check(
            stale_reasons(Some(&before), &now.key(), &now, &files),
            &[
                "the cache format changed (1 → 2)",
                "the step kind changed (`quantize` → `eval`)",
                "parameter `context` changed: 64 → 128",
                "parameter `seed` was removed (was 1)",
                "parameter `text` was added (\"wiki\")",
                &format!(
                    "input `m` changed (file `model.safetensors`) (content {} → {})",
                    "a".repeat(12),
                    "b".repeat(12)
                ),
                "input `t` was added",
                "input `x` was removed",
            ],
            &[
                "cache_format_changed",
                "kind_changed",
                "parameter_changed",
                "parameter_changed",
                "parameter_changed",
                "input_changed",
                "input_added",
                "input_removed",
            ],
        );
        let older = record(
            key_inputs(2, now.params.clone(), &[("m", "b"), ("t", "c")]),
            &[],
        );
        check(
            stale_reasons(Some(&older), &now.key(), &now, &files),
            &["the `eval` implementation changed (version 2 → 3)"],
            &["implementation_changed"],
        );
        check(
            vec![
                StaleReason::OutputDamaged {
                    why: "its cached file `a` was changed in place".into(),
                },
                StaleReason::InputUnavailable {
                    input: "wiki".into(),
                    why: "is not available: no such file".into(),
                },
                StaleReason::InputPending {
                    input: "merged".into(),
                },
            ],
            &[
                "its cached output is damaged: its cached file `a` was changed in place",
                "source `wiki` is not available: no such file",
                "input `merged` will be rebuilt",
            ],
            &["output_damaged", "input_unavailable", "input_pending"],
        );
        let long = StaleReason::ParameterChanged {
            parameter: "chat_template".into(),
            old: Some(json!("x".repeat(100))),
            new: None,
        };
        assert!(long.to_string().ends_with("…)"), "{long}");
        assert_eq!(
            serde_json::to_value(&long).unwrap()["old"],
            json!("x".repeat(100))
        );
    }
}
