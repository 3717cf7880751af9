//! What the merge knows about each decoder architecture, from mergekit's
//! architecture definitions (`mergekit/_data/architectures/*.json` at
//! a6e4028): the tensors every layer must have, the fused projections whose
//! parts a parameter filter must not name, and which architectures are not
//! text decoders at all.
//!
//! The merge itself is architecture-independent: every tensor is merged by
//! name, layers are found by their index ([`super::plan::split_layer`]), so a
//! Gemma layer's four norms, Qwen3's `q_norm`/`k_norm`, Qwen2's biases and
//! Phi-3's fused `qkv_proj`/`gate_up_proj` are sliced, renumbered and merged
//! like any other layer tensor, whole. What this module adds is the checks:
//!
//! - a model of a known architecture must have every tensor of its layers
//!   (a Gemma 2 checkpoint without `pre_feedforward_layernorm` is broken);
//! - models must share `architectures[0]` and their tensor layout (the
//!   per-layer tensor names and the tensors outside the layers, the output
//!   head aside) unless the configuration allows crimes, as mergekit's
//!   `--allow-crimes` does;
//! - a `filter:` naming part of a fused projection (`v_proj`, `up_proj` in a
//!   Phi-3 merge) is refused: as a substring it would set the parameter of the
//!   whole fused tensor, q and k rows included;
//! - Phi-3's fused tensors must have the rows the config implies;
//! - multimodal models (vision or audio towers) are refused with what is
//!   supported. Mixture-of-experts decoders (Mixtral, Qwen2-MoE, Qwen3-MoE)
//!   are merged tensor-wise, expert by expert, as mergekit's `mixtral.json`
//!   does, so their experts must match in number.
//!
//! Architectures outside the table are merged by tensor name as before, with
//! the layout check only.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::config::MergeConfig;
use super::params::{Parameters, Setting};
use super::plan::{split_layer, InputModel};

/// A fused projection: one tensor holding the rows of several unfused ones.
#[derive(Debug)]
pub struct Fused {
    /// Its name within a layer (`self_attn.qkv_proj.weight`).
    pub tensor: &'static str,
    /// The unfused projections it holds (`q_proj`, `k_proj`, `v_proj`).
    pub parts: &'static [&'static str],
}

impl Fused {
    /// The projection's own name (`qkv_proj`).
    pub fn short_name(&self) -> &'static str {
        let stem = self.tensor.trim_end_matches(".weight");
        stem.rsplit('.').next().unwrap_or(stem)
    }
}

/// A decoder architecture the merge recognises by `architectures[0]`.
#[derive(Debug)]
pub struct Architecture {
    /// How people name it (`Gemma 2`).
    pub label: &'static str,
    /// The `architectures[0]` values it goes by.
    pub names: &'static [&'static str],
    /// Tensors every layer has, after `model.layers.N.`.
    pub layer: &'static [&'static str],
    /// Its fused projections.
    pub fused: &'static [Fused],
}

const LLAMA_LAYER: &[&str] = &[
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

const QWEN2_LAYER: &[&str] = &[
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

const QWEN3_LAYER: &[&str] = &[
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_proj.weight",
    "self_attn.k_norm.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

const GEMMA2_LAYER: &[&str] = &[
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "post_feedforward_layernorm.weight",
];

const GEMMA3_LAYER: &[&str] = &[
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_proj.weight",
    "self_attn.k_norm.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "post_feedforward_layernorm.weight",
];

const PHI3_LAYER: &[&str] = &[
    "input_layernorm.weight",
    "self_attn.qkv_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_up_proj.weight",
    "mlp.down_proj.weight",
];

/// Phi-3's fused projections.
const PHI3_FUSED: &[Fused] = &[
    Fused {
        tensor: "self_attn.qkv_proj.weight",
        parts: &["q_proj", "k_proj", "v_proj"],
    },
    Fused {
        tensor: "mlp.gate_up_proj.weight",
        parts: &["gate_proj", "up_proj"],
    },
];

/// The attention tensors of a mixture-of-experts layer; the experts are
/// compared across models by the layout check.
const MOE_ATTENTION: &[&str] = &[
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
];

/// Every architecture the merge recognises.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        label: "Llama",
        names: &["LlamaForCausalLM", "LLaMaForCausalLM"],
        layer: LLAMA_LAYER,
        fused: &[],
    },
    Architecture {
        label: "Mistral",
        names: &["MistralForCausalLM"],
        layer: LLAMA_LAYER,
        fused: &[],
    },
    Architecture {
        label: "Qwen2",
        names: &["Qwen2ForCausalLM"],
        layer: QWEN2_LAYER,
        fused: &[],
    },
    Architecture {
        label: "Qwen3",
        names: &["Qwen3ForCausalLM"],
        layer: QWEN3_LAYER,
        fused: &[],
    },
    Architecture {
        label: "Gemma",
        names: &["GemmaForCausalLM"],
        layer: LLAMA_LAYER,
        fused: &[],
    },
    Architecture {
        label: "Gemma 2",
        names: &["Gemma2ForCausalLM"],
        layer: GEMMA2_LAYER,
        fused: &[],
    },
    Architecture {
        label: "Gemma 3 (text)",
        names: &["Gemma3ForCausalLM"],
        layer: GEMMA3_LAYER,
        fused: &[],
    },
    Architecture {
        label: "Phi-3",
        names: &["Phi3ForCausalLM"],
        layer: PHI3_LAYER,
        fused: PHI3_FUSED,
    },
    Architecture {
        label: "Mixtral",
        names: &["MixtralForCausalLM"],
        layer: MOE_ATTENTION,
        fused: &[],
    },
    Architecture {
        label: "Qwen2-MoE",
        names: &["Qwen2MoeForCausalLM"],
        layer: MOE_ATTENTION,
        fused: &[],
    },
    Architecture {
        label: "Qwen3-MoE",
        names: &["Qwen3MoeForCausalLM"],
        layer: MOE_ATTENTION,
        fused: &[],
    },
];

/// Tensor name parts that belong to a multimodal model's non-text towers.
const TOWERS: &[&str] = &[
    "vision_tower",
    "vision_model",
    "multi_modal_projector",
    "visual.",
    "audio_tower",
];

/// The supported architectures, for error messages.
pub fn supported_list() -> String {
    let labels: Vec<&str> = ARCHITECTURES.iter().map(|a| a.label).collect();
    format!(
        "{} (mixture-of-experts models expert by expert); other text decoders are merged by tensor name",
        labels.join(", ")
    )
}

/// `architectures[0]` of a config.json, if it names one.
pub fn architecture_name(config: &Json) -> Option<&str> {
    config["architectures"].get(0).and_then(Json::as_str)
}

/// The table entry for an `architectures[0]` value.
pub fn lookup(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.names.contains(&name))
}

/// The per-layer tensor names (without `model.layers.N.`) and the tensors
/// outside the layers, the output head aside: what must agree between models
/// for a merge to pair every tensor with its counterpart.
fn layout(model: &InputModel) -> BTreeSet<String> {
    model
        .tensors
        .names()
        .iter()
        .filter(|n| n.as_str() != "lm_head.weight")
        .map(|n| match split_layer(n) {
            Some((prefix, _, suffix)) => format!("{prefix}N{suffix}"),
            None => n.clone(),
        })
        .collect()
}

/// Why a model cannot be merged at all: a multimodal model.
fn unsupported(model: &InputModel) -> Option<String> {
    let arch = architecture_name(&model.config).unwrap_or("an unnamed architecture");
    let tower = model
        .tensors
        .names()
        .iter()
        .find(|n| TOWERS.iter().any(|t| n.contains(t)));
    if tower.is_none() && !arch.ends_with("ForConditionalGeneration") {
        return None;
    }
    let what = tower.map_or(String::new(), |t| format!(" (tensor `{t}`)"));
    Some(format!(
        "model `{}` is {arch}, a multimodal model{what}: yibuild merges text decoders only: {}; \
         merge its text model instead",
        model.name,
        supported_list()
    ))
}

/// The problems of one model of a known architecture: missing layer tensors
/// and fused projections whose rows do not match its config.
fn check_known(model: &InputModel, arch: &Architecture, problems: &mut Vec<String>) {
    let names: BTreeSet<&str> = model.tensors.names().iter().map(String::as_str).collect();
    let prefix = model
        .tensors
        .names()
        .iter()
        .find_map(|n| split_layer(n).map(|(p, _, _)| p.to_owned()))
        .unwrap_or_else(|| "model.layers.".to_owned());
    'layers: for layer in 0..model.layers {
        for t in arch.layer {
            let name = format!("{prefix}{layer}.{t}");
            if !names.contains(name.as_str()) {
                problems.push(format!(
                    "model `{}` ({}) has no tensor `{name}`: every {} layer has `{t}`",
                    model.name, arch.names[0], arch.label
                ));
                break 'layers;
            }
        }
    }
    let config = &model.config;
    let num = |k: &str| config.get(k).and_then(Json::as_u64).map(|n| n as usize);
    let (Some(hidden), Some(heads), Some(intermediate)) = (
        num("hidden_size"),
        num("num_attention_heads"),
        num("intermediate_size"),
    ) else {
        return;
    };
    let kv = num("num_key_value_heads").unwrap_or(heads);
    let head_dim = num("head_dim").unwrap_or(hidden / heads.max(1));
    for f in arch.fused {
        let rows = match f.parts.len() {
            3 => (heads + 2 * kv) * head_dim,
            _ => 2 * intermediate,
        };
        let name = format!("{prefix}0.{}", f.tensor);
        if let Some(info) = model.tensors.info(&name) {
            if info.shape.first() != Some(&rows) {
                problems.push(format!(
                    "model `{}`: `{name}` has shape {:?}, but its config implies {rows} rows ({} fused)",
                    model.name,
                    info.shape,
                    f.parts.join(" + ")
                ));
            }
        }
    }
}

/// Every `filter:` string of the configuration's parameters.
fn filters(config: &MergeConfig) -> Vec<&str> {
    let levels = std::iter::once(&config.parameters)
        .chain(config.slices.iter().map(|s| &s.parameters))
        .chain(
            config
                .slices
                .iter()
                .flat_map(|s| &s.sources)
                .map(|s| &s.parameters),
        );
    let mut out = Vec::new();
    for params in levels {
        collect_filters(params, &mut out);
    }
    out
}

fn collect_filters<'p>(params: &'p Parameters, out: &mut Vec<&'p str>) {
    for p in params {
        if let Setting::Conditional(list) = &p.setting {
            out.extend(list.iter().filter_map(|c| c.filter.as_deref()));
        }
    }
}

/// Checks the models of a merge against their architectures: unsupported
/// (multimodal) models, missing layer tensors, fused projections, filters
/// that name part of a fused projection, and, unless `allow_crimes`, models
/// of different architectures or tensor layouts. Returns every problem.
pub fn check(models: &[InputModel], config: &MergeConfig) -> Vec<String> {
    let mut problems: Vec<String> = models.iter().filter_map(unsupported).collect();
    if !problems.is_empty() {
        return problems;
    }
    for model in models {
        // The output's `layer_types` is built from the inputs' entries.
        if let Some(types) = model.config["layer_types"].as_array() {
            if types.len() != model.layers {
                problems.push(format!(
                    "model `{}`: config.json's `layer_types` lists {} layers, the model has {}",
                    model.name,
                    types.len(),
                    model.layers
                ));
            }
        }
        if let Some(arch) = architecture_name(&model.config).and_then(lookup) {
            check_known(model, arch, &mut problems);
            for filter in filters(config) {
                if let Some(f) = arch.fused.iter().find(|f| {
                    !filter.contains(f.short_name()) && f.parts.iter().any(|p| filter.contains(p))
                }) {
                    let message = format!(
                        "`filter: {filter}` names part of {}'s fused `{}`: a parameter applies to \
                         a whole tensor, so filter on `{}` (or `{}`) instead",
                        arch.label,
                        f.tensor,
                        f.short_name(),
                        f.tensor.split('.').next().unwrap_or(f.tensor),
                    );
                    if !problems.contains(&message) {
                        problems.push(message);
                    }
                }
            }
        }
    }
    if !problems.is_empty() || config.allow_crimes {
        return problems;
    }
    let named: Vec<(&InputModel, &str)> = models
        .iter()
        .filter_map(|m| architecture_name(&m.config).map(|a| (m, a)))
        .collect();
    if named.iter().any(|(_, a)| *a != named[0].1) {
        let list: Vec<String> = named
            .iter()
            .map(|(m, a)| format!("`{}` is {a}", m.name))
            .collect();
        problems.push(format!(
            "the models mix architectures ({}); set `allow_crimes: true` in the merge configuration \
             (--allow-crimes for `yibuild merge`) to merge them anyway, as mergekit's --allow-crimes",
            list.join(", ")
        ));
        return problems;
    }
    let first = &models[0];
    let reference = layout(first);
    for model in &models[1..] {
        let other = layout(model);
        if other == reference {
            continue;
        }
        let describe = |set: &BTreeSet<String>, without: &BTreeSet<String>| {
            set.difference(without).next().cloned()
        };
        let mut parts = Vec::new();
        if let Some(n) = describe(&reference, &other) {
            parts.push(format!(
                "`{}` has `{n}`, `{}` does not",
                first.name, model.name
            ));
        }
        if let Some(n) = describe(&other, &reference) {
            parts.push(format!(
                "`{}` has `{n}`, `{}` does not",
                model.name, first.name
            ));
        }
        problems.push(format!(
            "models `{}` and `{}` ({}) have different tensor layouts: {}; set `allow_crimes: true` \
             (--allow-crimes for `yibuild merge`) to merge them anyway",
            first.name,
            model.name,
            architecture_name(&first.config).unwrap_or("no `architectures`"),
            parts.join("; ")
        ));
    }
    problems
}
