//! Architecture-aware merging: for each decoder architecture (Llama,
//! Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text, Phi-3, Mixtral), TIES and
//! SLERP merges whose tensors, shapes and values equal the formulas computed
//! here in f64; passthrough slices that renumber whole layers (Phi-3's fused
//! projections, Gemma's four norms); tied embeddings that stay tied; and the
//! refusals: mixed architectures or layouts without `allow_crimes`,
//! multimodal models, filters naming part of a fused projection, layers
//! missing a tensor of their architecture. Then the other steps'
//! architecture checks and fields: patch_config, tokenizer swaps, `inspect`
//! and the model card.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::arch::{Arch, ArchModel, ALL};
use common::Project;
use yibuild::merge::{merge_config_file, MergeOptions};
use yibuild::tensor::ModelTensors;

/// Every tensor of a model folder, as f64, with its shape.
fn load(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let t = ModelTensors::open(dir).unwrap();
    t.names()
        .iter()
        .map(|n| {
            let shape = t.info(n).unwrap().shape.clone();
            let values = t.read_f32(n).unwrap().into_iter().map(f64::from).collect();
            (n.clone(), (shape, values))
        })
        .collect()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Writes `config` (with `ROOT/` standing for `root`) and merges it into
/// `root/out-NAME`; returns the output folder or the error.
fn try_merge(root: &Path, name: &str, config: &str) -> anyhow::Result<PathBuf> {
    let path = root.join(format!("{name}.yml"));
    std::fs::write(
        &path,
        config.replace("ROOT/", &format!("{}/", root.display())),
    )
    .unwrap();
    let out = root.join(format!("out-{name}"));
    let opts = MergeOptions {
        threads: 2,
        chunk_elements: Some(500),
        ..MergeOptions::default()
    };
    merge_config_file(&path, &out, &opts, &|_| {})?;
    Ok(out)
}

fn merge(root: &Path, name: &str, config: &str) -> PathBuf {
    try_merge(root, name, config).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

fn merge_error(root: &Path, name: &str, config: &str) -> String {
    match try_merge(root, name, config) {
        Ok(_) => panic!("{name}: the merge was expected to fail"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_close(name: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (e, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{name}[{e}]: got {g}, expected {w}"
        );
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// mergekit's slerp of two whole tensors.
fn slerp(t: f64, v0: &[f64], v1: &[f64]) -> Vec<f64> {
    let norm = |v: &[f64]| dot(v, v).sqrt().max(1e-8);
    let c = dot(v0, v1) / (norm(v0) * norm(v1));
    let (s0, s1) = if c.abs() > 0.9995 {
        (1.0 - t, t)
    } else {
        let th = c.acos();
        (((1.0 - t) * th).sin() / th.sin(), (t * th).sin() / th.sin())
    };
    v0.iter().zip(v1).map(|(a, b)| s0 * a + s1 * b).collect()
}

/// TIES at density 1 (no trimming): sign election on the weighted task
/// vectors, then their sum over the agreeing models divided by those models'
/// weights.
fn ties(base: &[f64], xs: &[&[f64]], w: &[f64]) -> Vec<f64> {
    (0..base.len())
        .map(|e| {
            let d: Vec<f64> = xs
                .iter()
                .zip(w)
                .map(|(x, w)| w * (x[e] - base[e]))
                .collect();
            let s: f64 = d.iter().sum();
            let (mut mixed, mut div) = (0.0, 0.0);
            for (d, w) in d.iter().zip(w) {
                if (s >= 0.0 && *d > 0.0) || (s < 0.0 && *d < 0.0) {
                    mixed += d;
                    div += w;
                }
            }
            base[e] + mixed / if div == 0.0 { 1.0 } else { div }
        })
        .collect()
}

/// A base and two fine-tunes of one architecture under `root`.
fn family(root: &Path, arch: Arch) -> ArchModel {
    let base = ArchModel::new(arch);
    base.write(&root.join("base"));
    base.with_seed(1).write(&root.join("a"));
    base.with_seed(2).write(&root.join("b"));
    base
}

fn names(m: &BTreeMap<String, (Vec<usize>, Vec<f64>)>) -> BTreeSet<String> {
    m.keys().cloned().collect()
}

#[test]
fn ties_and_slerp_of_every_architecture_equal_the_formulas() {
    for arch in ALL {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let model = family(root, arch);
        let base = load(&root.join("base"));
        let (a, b) = (load(&root.join("a")), load(&root.join("b")));
        let expected_names: BTreeSet<String> =
            model.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names(&base), expected_names, "{arch:?} fixture");
        assert_eq!(base.contains_key("lm_head.weight"), !model.tied, "{arch:?}");

        let out = merge(
            root,
            "ties",
            "merge_method: ties\nbase_model: ROOT/base\nmodels:\n  - model: ROOT/a\n    parameters: {weight: 0.6, density: 1.0}\n  - model: ROOT/b\n    parameters: {weight: 0.4, density: 1.0}\n",
        );
        let got = load(&out);
        assert_eq!(names(&got), expected_names, "{arch:?} ties: tensor set");
        for (name, (shape, values)) in &got {
            assert_eq!(shape, &base[name].0, "{arch:?} ties {name}: shape");
            let want = ties(&base[name].1, &[&a[name].1, &b[name].1], &[0.6, 0.4]);
            assert_close(&format!("{arch:?} ties {name}"), values, &want);
        }
        let config = read_json(&out.join("config.json"));
        assert_eq!(config["architectures"][0], model.names().0);
        assert_eq!(config["vocab_size"], model.vocab, "{arch:?}");
        assert_eq!(config["tie_word_embeddings"], model.tied, "{arch:?}");

        // `filter: mlp` matches the MLP projections, not Gemma's feed-forward
        // norms, Phi-3's attention or Mixtral's experts (mergekit's substring rule).
        let out = merge(
            root,
            "slerp",
            "merge_method: slerp\nbase_model: ROOT/base\nmodels:\n  - model: ROOT/base\n  - model: ROOT/a\nparameters:\n  t:\n    - filter: mlp\n      value: 0.7\n    - value: 0.3\n",
        );
        let got = load(&out);
        assert_eq!(names(&got), expected_names, "{arch:?} slerp: tensor set");
        for (name, (shape, values)) in &got {
            assert_eq!(shape, &base[name].0, "{arch:?} slerp {name}: shape");
            let t = if name.contains("mlp") { 0.7 } else { 0.3 };
            let want = slerp(t, &base[name].1, &a[name].1);
            assert_close(&format!("{arch:?} slerp {name}"), values, &want);
        }
    }
}

#[test]
fn passthrough_slices_renumber_whole_layers_with_fused_projections_and_four_norms() {
    for arch in [Arch::Phi3, Arch::Gemma2] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let model = family(root, arch);
        let out = merge(
            root,
            "frank",
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: ROOT/base\n        layer_range: [0, 2]\n  - sources:\n      - model: ROOT/a\n        layer_range: [1, 3]\n",
        );
        let (base, a, got) = (load(&root.join("base")), load(&root.join("a")), load(&out));
        // Output layers 0, 1 are base's 0, 1; output 2, 3 are a's 1, 2.
        let sources = [(&base, 0), (&base, 1), (&a, 1), (&a, 2)];
        let mut expected = BTreeSet::new();
        for (layer, (from, src)) in sources.iter().enumerate() {
            for (suffix, _) in model.layer_tensors() {
                let name = format!("model.layers.{layer}.{suffix}");
                let source = format!("model.layers.{src}.{suffix}");
                assert_eq!(got[&name], from[&source], "{arch:?} {name} ← {source}");
                expected.insert(name);
            }
        }
        for outer in ["model.embed_tokens.weight", "model.norm.weight"] {
            expected.insert(outer.to_owned());
        }
        // The head comes from the last slice's model; it exists exactly
        // when the donor (base) has one: Phi-3 yes, Gemma (tied) no.
        if !model.tied {
            assert_eq!(got["lm_head.weight"], a["lm_head.weight"]);
            expected.insert("lm_head.weight".to_owned());
        }
        assert_eq!(names(&got), expected, "{arch:?}");
        let fused = got.keys().filter(|n| n.contains("qkv_proj")).count();
        assert_eq!(fused, if arch == Arch::Phi3 { 4 } else { 0 });
        let config = read_json(&out.join("config.json"));
        assert_eq!(config["num_hidden_layers"], 4);
        if arch == Arch::Gemma2 {
            // Each output layer keeps the attention type of its source layer.
            assert_eq!(
                config["layer_types"],
                serde_json::json!([
                    "sliding_attention",
                    "full_attention",
                    "full_attention",
                    "sliding_attention"
                ])
            );
        } else {
            assert_eq!(config["rope_parameters"]["rope_type"], "longrope");
            assert_eq!(config["original_max_position_embeddings"], 4096);
        }
    }
}

#[test]
fn the_output_head_exists_exactly_when_the_config_donor_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tied = ArchModel::new(Arch::Qwen2);
    tied.write(&root.join("tied"));
    let untied = ArchModel {
        tied: false,
        seed: 5,
        ..tied.clone()
    };
    untied.write(&root.join("untied"));
    let config = |base: &str, other: &str| {
        format!("merge_method: linear\nbase_model: ROOT/{base}\nmodels:\n  - model: ROOT/{base}\n    parameters: {{weight: 0.25}}\n  - model: ROOT/{other}\n    parameters: {{weight: 0.75}}\n")
    };
    let (t, u) = (load(&root.join("tied")), load(&root.join("untied")));
    // A tied donor: no head is invented, the embeddings are merged.
    let out = merge(root, "tied-base", &config("tied", "untied"));
    let got = load(&out);
    assert!(!got.contains_key("lm_head.weight"));
    let embed = "model.embed_tokens.weight";
    let want: Vec<f64> = t[embed]
        .1
        .iter()
        .zip(&u[embed].1)
        .map(|(x, y)| 0.25 * x + 0.75 * y)
        .collect();
    assert_close(embed, &got[embed].1, &want);
    assert_eq!(
        read_json(&out.join("config.json"))["tie_word_embeddings"],
        true
    );
    // An untied donor keeps its head; the tied model gives its embeddings.
    let out = merge(root, "untied-base", &config("untied", "tied"));
    let got = load(&out);
    let want: Vec<f64> = u["lm_head.weight"]
        .1
        .iter()
        .zip(&t[embed].1)
        .map(|(x, y)| 0.25 * x + 0.75 * y)
        .collect();
    assert_close("lm_head.weight", &got["lm_head.weight"].1, &want);
    assert_eq!(got["lm_head.weight"].0, vec![288, 32]);
}

#[test]
fn padded_vocabularies_keep_the_base_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let base = ArchModel::new(Arch::Qwen2);
    base.write(&root.join("base"));
    // A fine-tune padded further (320 rows): cropped to the base's 288.
    ArchModel {
        vocab: 320,
        seed: 3,
        ..base.clone()
    }
    .write(&root.join("wide"));
    let out = merge(
        root,
        "padded",
        "merge_method: task_arithmetic\nbase_model: ROOT/base\nmodels:\n  - model: ROOT/wide\n    parameters: {weight: 0.5}\n",
    );
    let (b, w, got) = (
        load(&root.join("base")),
        load(&root.join("wide")),
        load(&out),
    );
    let embed = "model.embed_tokens.weight";
    assert_eq!(got[embed].0, vec![288, 32]);
    let want: Vec<f64> = (0..288 * 32)
        .map(|e| b[embed].1[e] + 0.5 * (w[embed].1[e] - b[embed].1[e]))
        .collect();
    assert_close(embed, &got[embed].1, &want);
    assert_eq!(read_json(&out.join("config.json"))["vocab_size"], 288);
    // A fine-tune with fewer rows than the base cannot be aligned.
    ArchModel {
        vocab: 264,
        seed: 4,
        ..base.clone()
    }
    .write(&root.join("narrow"));
    let err = merge_error(
        root,
        "narrow",
        "merge_method: task_arithmetic\nbase_model: ROOT/base\nmodels:\n  - model: ROOT/narrow\n    parameters: {weight: 0.5}\n",
    );
    assert!(
        err.contains("shape mismatch for tensor `model.embed_tokens.weight`")
            && err.contains("[264, 32]"),
        "{err}"
    );
}

#[test]
fn phi3_filters_naming_part_of_a_fused_projection_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    family(root, Arch::Phi3);
    let err = merge_error(
        root,
        "vfilter",
        "merge_method: ties\nbase_model: ROOT/base\nmodels:\n  - model: ROOT/a\n    parameters:\n      density: 1.0\n      weight:\n        - filter: v_proj\n          value: 0.2\n        - value: 0.5\n",
    );
    assert!(
        err.contains("`filter: v_proj` names part of Phi-3's fused `self_attn.qkv_proj.weight`")
            && err.contains("filter on `qkv_proj` (or `self_attn`)"),
        "{err}"
    );
    let err = merge_error(
        root,
        "upfilter",
        "merge_method: slerp\nbase_model: ROOT/base\nmodels:\n  - model: ROOT/base\n  - model: ROOT/a\nparameters:\n  t:\n    - filter: up_proj\n      value: 0.9\n    - value: 0.5\n",
    );
    assert!(err.contains("fused `mlp.gate_up_proj.weight`"), "{err}");
    // A filter on the fused tensor or on the block is fine.
    merge(
        root,
        "qkvfilter",
        "merge_method: slerp\nbase_model: ROOT/base\nmodels:\n  - model: ROOT/base\n  - model: ROOT/a\nparameters:\n  t:\n    - filter: qkv_proj\n      value: 0.9\n    - value: 0.5\n",
    );
}

#[test]
fn a_layer_missing_a_tensor_of_its_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = family(root, Arch::Gemma2);
    let mut tensors = model.with_seed(9).tensor_values();
    tensors.retain(|(n, _, _)| n != "model.layers.1.post_feedforward_layernorm.weight");
    let broken = root.join("broken");
    yibuild::fixtures::write_model_files(
        &broken,
        &model.config(),
        &tensors,
        yibuild::tensor::DType::F32,
        1,
    )
    .unwrap();
    let err = merge_error(
        root,
        "broken",
        "merge_method: linear\nmodels:\n  - model: ROOT/base\n    parameters: {weight: 0.5}\n  - model: ROOT/broken\n    parameters: {weight: 0.5}\n",
    );
    assert!(
        err.contains("(Gemma2ForCausalLM) has no tensor `model.layers.1.post_feedforward_layernorm.weight`: every Gemma 2 layer has `post_feedforward_layernorm.weight`"),
        "{err}"
    );
}

#[test]
fn multimodal_models_are_refused_with_what_is_supported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = family(root, Arch::Gemma3);
    let mut config = model.config();
    config["architectures"] = serde_json::json!(["Gemma3ForConditionalGeneration"]);
    let mut tensors = model.tensor_values();
    tensors.push((
        "model.vision_tower.vision_model.embeddings.patch_embedding.weight".to_owned(),
        vec![4, 4],
        vec![0.5; 16],
    ));
    yibuild::fixtures::write_model_files(
        &root.join("vlm"),
        &config,
        &tensors,
        yibuild::tensor::DType::F32,
        1,
    )
    .unwrap();
    let err = merge_error(
        root,
        "vlm",
        "merge_method: slerp\nbase_model: ROOT/base\nmodels:\n  - model: ROOT/base\n  - model: ROOT/vlm\nparameters: {t: 0.5}\n",
    );
    assert!(
        err.contains("is Gemma3ForConditionalGeneration, a multimodal model (tensor `model.vision_tower.vision_model.embeddings.patch_embedding.weight`)")
            && err.contains("yibuild merges text decoders only: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3 (text), Phi-3, Mixtral"),
        "{err}"
    );
}

#[test]
fn different_layouts_are_refused_unless_crimes_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = family(root, Arch::Llama);
    // A Llama with attention biases (`attention_bias: true`).
    let mut tensors = model.with_seed(6).tensor_values();
    for l in 0..model.layers {
        tensors.push((
            format!("model.layers.{l}.self_attn.q_proj.bias"),
            vec![32],
            vec![0.01; 32],
        ));
    }
    yibuild::fixtures::write_model_files(
        &root.join("biased"),
        &model.config(),
        &tensors,
        yibuild::tensor::DType::F32,
        1,
    )
    .unwrap();
    let config = "merge_method: linear\nmodels:\n  - model: ROOT/base\n    parameters: {weight: 0.5}\n  - model: ROOT/biased\n    parameters: {weight: 0.5}\n";
    let err = merge_error(root, "layout", config);
    assert!(
        err.contains("(LlamaForCausalLM) have different tensor layouts")
            && err.contains("/biased` has `model.layers.N.self_attn.q_proj.bias`, `")
            && err.contains("set `allow_crimes: true`"),
        "{err}"
    );
    // With the opt-in the first model's layout is merged, as mergekit does.
    let out = merge(
        root,
        "layout-crime",
        &format!("{config}allow_crimes: true\n"),
    );
    let got = load(&out);
    assert_eq!(names(&got), names(&load(&root.join("base"))));
}

/// A recipe merging `base` with `ft` (a source each), with `extra` added to
/// the merge configuration.
fn recipe(p: &Project, extra: &str) {
    p.write(
        "recipe.yaml",
        &format!("yibuild: 1\nname: crimes\nsources:\n  base: ./models/base\n  ft: ./models/ft\nsteps:\n  merged:\n    merge:\n      merge_method: slerp\n      base_model: base\n      models:\n        - model: base\n        - model: ft\n      parameters: {{t: 0.5}}\n{extra}default: [merged]\n"),
    );
}

#[test]
fn a_recipe_mixing_architectures_exits_2_naming_both_unless_allow_crimes() {
    let p = Project::new();
    ArchModel::new(Arch::Llama).write(&p.path("models/base"));
    let mistral = ArchModel {
        seed: 1,
        ..ArchModel::new(Arch::Mistral)
    };
    mistral.write(&p.path("models/ft"));
    recipe(&p, "");
    let o = p.run(&["recipe.yaml"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "the models mix architectures (`base` is LlamaForCausalLM, `ft` is MistralForCausalLM)"
        ) && err.contains("set `allow_crimes: true` in the merge configuration"),
        "{err}"
    );
    assert!(!p.path("build/crimes/merged").exists());
    recipe(&p, "      allow_crimes: true\n");
    let o = p.run(&["recipe.yaml"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = p.path("build/crimes/merged");
    assert!(out.join("model.safetensors").is_file());
    assert_eq!(
        read_json(&out.join("config.json"))["architectures"][0],
        "LlamaForCausalLM"
    );
    // A Qwen2 among Llamas is refused the same way by `yibuild merge`.
    ArchModel::new(Arch::Qwen2).write(&p.path("models/qwen"));
    p.write(
        "config.yml",
        "merge_method: linear\nmodels:\n  - model: models/base\n    parameters: {weight: 0.5}\n  - model: models/qwen\n    parameters: {weight: 0.5}\n",
    );
    let o = p.run(&["merge", "config.yml", "qwen-out"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`models/base` is LlamaForCausalLM, `models/qwen` is Qwen2ForCausalLM")
            && err.contains("--allow-crimes for `yibuild merge`"),
        "{err}"
    );
    assert!(!p.path("qwen-out").exists());
}

/// Builds `recipe.yaml` (steps under `steps:`, sources `models/<name>`) and
/// returns (exit code, stderr).
fn build(p: &Project, sources: &[&str], steps: &str) -> (i32, String) {
    let sources: String = sources
        .iter()
        .map(|s| format!("  {s}: ./models/{s}\n"))
        .collect();
    p.write(
        "recipe.yaml",
        &format!("yibuild: 1\nname: arch\nsources:\n{sources}steps:\n{steps}"),
    );
    let o = p.run(&["recipe.yaml"]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn patch_config_keeps_each_architecture_readable() {
    let p = Project::new();
    ArchModel::new(Arch::Phi3).write(&p.path("models/phi"));
    ArchModel::new(Arch::Qwen2).write(&p.path("models/qwen"));
    ArchModel::new(Arch::Gemma2).write(&p.path("models/gemma"));
    ArchModel::new(Arch::Gemma3).write(&p.path("models/gemma3"));
    let mut longrope = ArchModel::new(Arch::Llama).config();
    longrope["rope_parameters"] = serde_json::json!({"rope_type": "longrope", "rope_theta": 10000.0,
        "short_factor": [1.0, 1.0, 1.0, 1.0], "long_factor": [1.0, 2.0, 3.0, 4.0]});
    ArchModel::new(Arch::Llama).write(&p.path("models/llama"));
    std::fs::write(
        p.path("models/llama/config.json"),
        serde_json::to_vec_pretty(&longrope).unwrap(),
    )
    .unwrap();

    // Phi-3: a longer context keeps the original one; softcapping numbers on Gemma.
    let (code, err) = build(
        &p,
        &["phi", "gemma"],
        "  long:\n    patch_config: {model: phi, set: {max_position_embeddings: 262144}}\n  capped:\n    patch_config: {model: gemma, set: {final_logit_softcapping: 25.0}}\n",
    );
    assert_eq!(code, 0, "{err}");
    let long = read_json(&p.path("build/arch/long/config.json"));
    assert_eq!(long["max_position_embeddings"], 262144);
    assert_eq!(long["original_max_position_embeddings"], 4096);
    let capped = read_json(&p.path("build/arch/capped/config.json"));
    assert_eq!(capped["final_logit_softcapping"], 25.0);

    let cases = [
        // Factor lists must cover rotary dims / 2 = 4.
        (
            "phi",
            "set: {rope_parameters.long_factor: [1.0, 2.0]}",
            "the patched config.json is not valid for Phi3ForCausalLM",
            "long_factor",
        ),
        // A model whose longrope context falls back to max_position_embeddings.
        (
            "llama",
            "set: {max_position_embeddings: 8192}",
            "changes the longrope context the model was trained on (`original_max_position_embeddings`) from 2048 to 8192",
            "write `original_max_position_embeddings: 2048` too",
        ),
        (
            "qwen",
            "set: {use_sliding_window: true}",
            "Qwen2ForCausalLM: `use_sliding_window` is true but `sliding_window` is not a window size",
            "",
        ),
        (
            "qwen",
            "set: {use_sliding_window: true, sliding_window: 64}",
            "`max_window_layers` (3) is not below `num_hidden_layers` (3): no layer would slide",
            "",
        ),
        // Soft-capping is a number or null, never a string (Gemma 3 has
        // null, which the type check alone lets anything replace).
        (
            "gemma3",
            "set: {final_logit_softcapping: \"30\"}",
            "the patched config.json is not valid for Gemma3ForCausalLM",
            "final_logit_softcapping",
        ),
    ];
    for (model, patch, message, detail) in cases {
        let (code, err) = build(
            &p,
            &[model],
            &format!("  bad:\n    patch_config: {{model: {model}, {patch}}}\n"),
        );
        assert_eq!(code, 1, "{model} {patch}: {err}");
        assert!(
            err.contains(message) && err.contains(detail),
            "{model} {patch}: {err}"
        );
    }
    // Qwen2 sliding window switched on consistently is accepted.
    let (code, err) = build(
        &p,
        &["qwen"],
        "  sliding:\n    patch_config: {model: qwen, set: {use_sliding_window: true, sliding_window: 64, max_window_layers: 1}}\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn tokenizer_swaps_accept_padded_rows_and_resize_the_tied_matrix() {
    let p = Project::new();
    // Qwen2: 288 embedding rows for 264 tokens; the swap keeps the padding.
    ArchModel::new(Arch::Qwen2).write(&p.path("models/qwen"));
    ArchModel::new(Arch::Gemma2).write(&p.path("models/gemma"));
    ArchModel {
        tokenizer_vocab: 300,
        ..ArchModel::new(Arch::Gemma2)
    }
    .write(&p.path("models/big"));
    let (code, err) = build(
        &p,
        &["qwen", "gemma", "big"],
        "  swapped:\n    tokenizer: {model: qwen, from: gemma}\n",
    );
    assert_eq!(code, 0, "{err}");
    let out = load(&p.path("build/arch/swapped"));
    assert_eq!(out["model.embed_tokens.weight"].0, vec![288, 32]);
    assert!(!out.contains_key("lm_head.weight"));
    // Gemma (tied, 264 rows) with a 300-token tokenizer: an error naming
    // the single matrix, then `resize: pad` grows that matrix alone.
    let (code, err) = build(
        &p,
        &["gemma", "big"],
        "  grown:\n    tokenizer: {model: gemma, from: big}\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the new tokenizer has 300 tokens but the model has 264 rows in `model.embed_tokens.weight` (tied)"),
        "{err}"
    );
    let (code, err) = build(
        &p,
        &["gemma", "big"],
        "  grown:\n    tokenizer: {model: gemma, from: big, resize: pad}\n",
    );
    assert_eq!(code, 0, "{err}");
    let out = load(&p.path("build/arch/grown"));
    let before = load(&p.path("models/gemma"));
    let embed = "model.embed_tokens.weight";
    assert_eq!(out[embed].0, vec![300, 32]);
    assert_eq!(out[embed].1[..264 * 32], before[embed].1[..]);
    assert!(!out.contains_key("lm_head.weight"));
    assert_eq!(
        read_json(&p.path("build/arch/grown/config.json"))["vocab_size"],
        300
    );
}

#[test]
fn inspect_shows_each_architectures_own_settings() {
    let p = Project::new();
    for (arch, lines) in [
        (
            Arch::Gemma2,
            &[
                "rope scaling:   default (theta 10000)",
                "sliding window: 512 tokens on 2 of 3 layers",
                "attention soft-capping: 50",
                "final logit soft-capping: 30",
                "tied embeddings: yes",
            ][..],
        ),
        (
            Arch::Phi3,
            &[
                "context:        131072",
                "rope scaling:   longrope (theta 10000, trained context 4096)",
                "tied embeddings: no",
            ][..],
        ),
        (
            Arch::Qwen2,
            &[
                "rope scaling:   default (theta 1000000)",
                "tied embeddings: yes",
            ][..],
        ),
    ] {
        let dir = p.path(&format!("models/{arch:?}"));
        ArchModel::new(arch).write(&dir);
        let o = p.run(&["inspect", dir.to_str().unwrap()]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{out}");
        for line in lines {
            assert!(
                out.lines().any(|l| l == *line),
                "{arch:?}: no `{line}` in\n{out}"
            );
        }
        assert_eq!(
            out.contains("soft-capping"),
            arch == Arch::Gemma2,
            "{arch:?}: {out}"
        );
    }
}

#[test]
fn the_card_lists_the_architecture_settings() {
    let p = Project::new();
    ArchModel::new(Arch::Gemma2).write(&p.path("models/gemma"));
    let o = p.run(&["card", "models/gemma"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let card = String::from_utf8_lossy(&o.stdout);
    for row in [
        "## Model details",
        "| architecture | Gemma2ForCausalLM |",
        "| sliding window | 512 tokens on 2 of 3 layers |",
        "| attention soft-capping | 50 |",
        "| final logit soft-capping | 30 |",
        "| tied embeddings | yes |",
    ] {
        assert!(card.contains(row), "no `{row}` in\n{card}");
    }
}
